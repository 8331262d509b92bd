"""Seconds per MAML meta-iteration on conv4 Omniglot: a plain loop, `higher` and metalab side by side.

    python benchmarks/throughput.py --cache-dir /tmp/mlcache

What is measured: one meta-training step (forward, inner loop, query loss, backward to
the meta-parameters; no outer optimiser step) of MAML on the conv4 of Finn et al. 2017
(4 x [conv 3x3 64, batch norm with batch statistics, ReLU, max-pool 2], linear head),
28x28 Omniglot training episodes (1 shot, 15 queries per class, from
``metalab.make_benchmark``), inner SGD with step 0.4, for 8 rows: 5-way with meta-batch 32
and 20-way with meta-batch 16, second and first order, 1 and 5 inner steps. Eight
implementations compute the same meta-gradient in one process:

- ``reference`` (record method ``loop-reference``): the per-task loop a user writes with
  ``torch.autograd.grad`` on a parameter dict and ``torch.func.functional_call``,
  ``(query_loss / T).backward()`` per task, default memory format;
- ``higher`` (record method ``higher``): ``higher.innerloop_ctx`` and ``diffopt.step``, the
  library's documented MAML usage, per-task backward. With ``track_higher_grads=False``
  (first order) `higher` detaches the fast weights, so the query gradient of the fast
  weights is added to the model's gradients by hand (first-order MAML);
- ``reference retained`` (record method ``loop-reference-retained``): the reference again,
  timed after ``metalab.utils.retain_freed_memory()`` (below);
- ``metalab`` (record method ``maml``): ``metalab.algorithms.MAML`` with its defaults
  through ``algo.meta_gradient(batch)`` (default Conv4, which is channels-last since
  2026-12-06: the ``maml`` records before that date are the channels-first layout, and
  ``maml-channels-last`` records are this layout then; ``task_mode="auto"``, which is
  ``threads`` since 2026-12-07: the tasks dealt to one thread per intra-op thread, each on
  one core, per-task backward; the ``maml`` records before that date are the task loop);
- ``metalab loop`` (record method ``maml-loop``): the same with ``task_mode="loop"``, one
  task after another on all the intra-op threads (the default before 2026-12-07);
- ``metalab channels-first`` (record method ``maml-channels-first``): the same with
  ``channels_last=False`` (``Conv4(channels_last=False)``, the default before);
- ``metalab batched channels-last`` (record method ``maml-batched-channels-last``):
  ``task_mode="batched"`` and ``channels_last=True``: the inner loops of a group of tasks
  in one pass of grouped convolutions, each task's query pass on its own, then one
  backward pass through the group's inner loops;
- ``metalab bfloat16`` (record method ``maml-bf16``): metalab's default step under
  ``torch.autocast("cpu", dtype=torch.bfloat16)``, as ``metalab train --autocast bfloat16``
  (``TrainConfig.autocast``) runs it: convolutions and matrix products in bfloat16. Autocast
  leaves float64 tensors alone, so the float64 check below checks its algorithm; its
  float32 error column is the distance of the bfloat16 meta-gradient to float64.

``--implementations`` (comma-separated names as above, ``reference`` among them; default all eight) times
a subset: on a CPU without bfloat16 arithmetic (AVX2 only, e.g. AMD EPYC Zen 3: there the 2048 x 2048
bfloat16 product ran at under 1 GFLOP/s against 96 in float32: ``matmul`` records of commit 14cb70c)
``metalab bfloat16`` takes many times the float32 step, and leaving it out keeps the run short.
``speedup_over_retained_reference`` is recorded only when ``reference retained`` is timed too.

Per row, first for every selected row (before anything is timed): all start from the
same weights and compute the meta-gradient of the same batch in float64; the relative
error ||g - g_ref|| / ||g_ref|| (all parameters flattened) of `higher` and metalab against
the reference must be at most 1e-9, otherwise the script exits with code 1 and times
nothing. The float32 runs' distances to that float64 result are printed and recorded
(``grad_rel_err_float32``) but not checked. A batch's error is mostly its worst task's:
task by task (``benchmarks/meta_gradient_precision.py``) most tasks sit near rounding and a
few jump by orders of magnitude, in float32 in every implementation and in float64 nudged by
one rounding alike. The meta-gradient is discontinuous where a max-pool or ReLU choice flips
(the only non-smooth operations here), and a perturbation at rounding size can land on the
other side; several inner steps at rate 0.4 carry the jump further. Measured (the full table's
records, commit 2965f9f): the reference 1.6e-6 to 1.5e-4 at one step, 4.6e-5 to 2.9e-3 at
five; metalab's default 1.2e-6 to 1.5e-4 at one step, 2.6e-3 to 6.5e-2 at five; channels-last
1.1e-5 to 2.9e-4 and up to 4.4e-3; batched channels-last 9.4e-6 to 3.1e-4 and up to 3.8e-2.

Freed memory: the reference and `higher` are timed first, for every row, with glibc's malloc
as the process has it (blocks above an adaptive threshold come from ``mmap`` and go back on
``free``, and freed heap memory is trimmed back to the system); then
``metalab.utils.retain_freed_memory()`` is called, as ``metalab.train`` and ``metalab train`` /
``eval`` do first (``TrainConfig.release_freed_memory`` turns it off), and every metalab
implementation and the reference again are timed with freed blocks of up to 32 MB, free heap
and emptied thread heaps kept for reuse (process-wide and permanent, hence the order). Records
say which in ``config.freed_memory_retained``; records without that field (before commit
057a2b8) timed everything with glibc's defaults. The ``maml*`` records'
``speedup_over_retained_reference`` is ``reference retained`` / their time: what is left of the
ratio when the loop keeps its memory too.

Then per row and implementation: one warm-up iteration, ``--reps`` timed iterations (zero the gradients,
forward/backward of the whole meta-batch) and one iteration whose memory is read (below); the median is
reported, with ``x reference`` = reference median / median, measured in the same run.
FLOPs are counted once per row by ``torch.utils.flop_counter.FlopCounterMode`` on one
reference iteration (forward, inner gradients, backward; convolutions and matrix products
only) and divided by each implementation's median time (GFLOP/s; same count for all, as
they compute the same thing).

The bound: before the rows, the rate of one large matrix product (2048 x 2048, float32 and
bfloat16, or smaller where a product would take over a second: see ``matmul_gflops``; method ``matmul``, setting
``<size>x<size>-<dtype>``, metric ``gflops_per_s``) and of conv4's dominant convolution
(3x3, 64 -> 64 channels on 75 x 64 x 14 x 14, the second layer on a 5-way 15-query set:
forward, input gradient and weight gradient; method ``conv``) are measured. The convolution
ran at two to three times the matrix product's rate on the machine of commit 2865d65 (about 450
GFLOP/s with 2 threads, near the cores' FMA peak; the 2048 x 2048 product 204-224 in the records);
on the machine of commit cc827c1's table it ran at 199 GFLOP/s (the product 248): the rate moves
with the machine, so compare bounds only within one run. The matrix product is no bound: per row the reference's FLOPs at the convolution's rate give the time of a
meta-iteration that did nothing but arithmetic at the best rate measured on this machine;
``conv-bound`` ``speedup`` = reference time / that time is the speed-up over the reference
that an implementation of the same FLOPs in float32 would reach with no time outside its
convolutions. (Earlier records hold a ``matmul-bound`` at the matrix product's rate instead,
which is not a bound.)

Peak memory: torch's CPU allocations are invisible to tracemalloc, so a background thread
reads the resident set size from /proc/self/statm every 1 ms during one more iteration after the
timed ones; the peak minus the level just before it is reported in MiB. Before that level is read,
``gc.collect()`` runs and glibc's ``malloc_trim(0)`` hands the memory freed by earlier
iterations back to the system, so the baseline is the live memory, not the allocator's
cache. Spikes shorter than 1 ms can be missed. The timed iterations run without the sampler
(since commit d3278f4; ``benchmarks/sampler_cost.py`` measures what it cost them: records before
that commit timed the iterations beside the sampler and read memory over them).

Peak live memory (``peak_live_mib``, since 2026-12-07): the same sampler reads what glibc's malloc
has handed out and not taken back (``mallinfo2``, :func:`metalab.utils.allocator.allocated_bytes`),
the peak above the level before that iteration. It counts the tensors alive at once and
nothing of what the allocator keeps of freed memory (its caches, a heap fragmented by the
implementations timed earlier in the process, ``retain_freed_memory``), so unlike the resident
peak it does not depend on what ran before; it does count allocated but never touched memory
(none of the implementations here allocates such blocks). Each read walks malloc's free lists
under its locks, a small cost to the timed code that grows with the number of free blocks.

Page faults: the minor page faults of the process per timed iteration (``getrusage``). A
fault is the kernel handing the process a fresh zeroed page; glibc returns large freed blocks
to the system (``mmap``/``munmap`` above an adaptive size, heap trimming), so an
implementation whose big temporaries are allocated and freed in a pattern that defeats that
adaptation pays for every page of them again each iteration. Measured with all 8 rows: the
reference at 556k-760k faults per 20-way iteration (2-3 GB of pages), metalab at 35k-55k.
The timed iterations follow the warm-up directly, so with freed memory retained they reuse what it
kept; the ``malloc_trim(0)`` before the memory iteration comes after them. (Records before
commit d3278f4 trimmed before the timed iterations, whose
first one then faulted the kept blocks in again: in the count, and in the median time with
fewer than 3 ``--reps``.)

Appends ``throughput`` records to results/throughput*.jsonl (``--results-dir``): per row, setting
like ``2nd-order-1step-5w1s``, metrics ``seconds_per_iter``, ``gflops_per_s``, ``peak_mib``, ``peak_live_mib``,
``minor_faults_per_iter`` for every implementation, ``speedup`` (reference / metalab) and
``speedup_over_retained_reference`` for the ``maml*`` ones. Quick checks with
``--tasks`` are recorded under settings ending in ``-mb<tasks>``.
This is a benchmark run by hand: nothing is timed in the test suite. For metalab's step and the reference each
timed in fresh processes (no implementation inheriting another's heap), see ``benchmarks/step_ab.py``.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import gc
import os
import resource
import statistics
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
import records  # noqa: E402

import metalab  # noqa: E402
from metalab import EpisodeBatch  # noqa: E402
from metalab.algorithms import MAML, make_config  # noqa: E402
from metalab.engine.trainer import precision  # noqa: E402
from metalab.utils.allocator import allocated_bytes, retain_freed_memory, trim_freed_memory  # noqa: E402

try:
    import higher
except ImportError:
    higher = None

INNER_LR = 0.4
MAX_REL_ERR_F64 = 1e-9


@dataclass(frozen=True)
class Row:
    n_way: int
    meta_batch_size: int
    first_order: bool
    inner_steps: int

    @property
    def order(self) -> str:
        return "1st" if self.first_order else "2nd"

    @property
    def name(self) -> str:  # --rows filter, e.g. 5w1s-2nd-1step
        return f"{self.n_way}w1s-{self.order}-{self.inner_steps}step"

    @property
    def setting(self) -> str:  # record setting, e.g. 2nd-order-1step-5w1s
        return f"{self.order}-order-{self.inner_steps}step-{self.n_way}w1s"


ROWS = [Row(n_way, tasks, first_order, steps)
        for n_way, tasks in ((5, 32), (20, 16)) for first_order in (False, True) for steps in (1, 5)]


def add_rows_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rows", default=None, help="comma-separated rows, e.g. 5w1s-2nd-1step (default: all "
                        f"{len(ROWS)}: {', '.join(r.name for r in ROWS)})")


def selected_rows(parser: argparse.ArgumentParser, names: str | None) -> list[Row]:
    """The rows named by ``--rows`` (all if not given); a usage error (exit 2) names unknown ones."""
    if names is None:
        return list(ROWS)
    unknown = sorted(set(names.split(",")) - {r.name for r in ROWS})
    if unknown:
        parser.error(f"unknown rows {unknown}; choose from {[r.name for r in ROWS]}")
    return [r for r in ROWS if r.name in names.split(",")]


def add_tasks_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tasks", type=int, default=None, help="override the meta-batch size (quick checks)")


def sized_rows(parser: argparse.ArgumentParser, args: argparse.Namespace) -> list[Row]:
    """The rows of ``--rows``, with meta-batch ``--tasks`` where given."""
    rows = selected_rows(parser, args.rows)
    if args.tasks is None:
        return rows
    return [Row(r.n_way, args.tasks, r.first_order, r.inner_steps) for r in rows]


def row_batches(parser: argparse.ArgumentParser, args: argparse.Namespace) -> dict[Row, EpisodeBatch]:
    """The rows of ``--rows`` (meta-batch ``--tasks`` where given), each with its training batch of Omniglot
    episodes (1 shot, 15 queries per class; one benchmark per way)."""
    rows = sized_rows(parser, args)
    benches = {n_way: metalab.make_benchmark(metalab.BenchmarkConfig(
        "omniglot", data_dir=args.data_dir, cache_dir=args.cache_dir, n_way=n_way, k_shot=1, n_query=15,
        train_n_way=n_way, train_k_shot=1, train_n_query=15)) for n_way in sorted({r.n_way for r in rows})}
    return {row: benches[row.n_way].train.batch(0, row.meta_batch_size) for row in rows}


def row_setting(row: Row, tasks: int | None) -> str:
    """A row's record setting; quick checks with ``--tasks`` end in ``-mb<tasks>``."""
    return row.setting if tasks is None else f"{row.setting}-mb{row.meta_batch_size}"


def row_records(method: str, setting: str, metrics: dict[str, float], config: dict) -> list[dict]:
    """One ``throughput`` record per metric of ``method`` on a row's ``setting`` (:func:`row_setting`)."""
    return [records.record("throughput", method, setting, metric, value, None, None, None, None, config=config)
            for metric, value in metrics.items()]


def row_config(row: Row, reps: int) -> dict:
    """What a row's records say about its episodes, inner loop and timing."""
    return {"meta_batch_size": row.meta_batch_size, "n_way": row.n_way, "k_shot": 1, "n_query": 15,
            "inner_steps": row.inner_steps, "first_order": row.first_order, "inner_lr": INNER_LR, "reps": reps,
            "threads": torch.get_num_threads()}


# 1. the reference: conv4 and MAML as a user writes them ---------------------------------
def conv4(n_way: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for in_channels in (1, 64, 64, 64):
        layers += [nn.Conv2d(in_channels, 64, kernel_size=3, padding=1),
                   nn.BatchNorm2d(64, track_running_stats=False), nn.ReLU(), nn.MaxPool2d(2)]
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(64, n_way))


def reference_step(model: nn.Module, batch: EpisodeBatch, row: Row) -> None:
    tasks = len(batch)
    for t in range(tasks):
        params = dict(model.named_parameters())
        for _ in range(row.inner_steps):
            support_loss = F.cross_entropy(functional_call(model, params, batch.support_x[t]), batch.support_y[t])
            grads = torch.autograd.grad(support_loss, list(params.values()), create_graph=not row.first_order)
            params = {name: p - INNER_LR * g for (name, p), g in zip(params.items(), grads)}
        query_loss = F.cross_entropy(functional_call(model, params, batch.query_x[t]), batch.query_y[t])
        (query_loss / tasks).backward()


# 2. the same with higher -------------------------------------------------------------------
def higher_step(model: nn.Module, batch: EpisodeBatch, row: Row) -> None:
    tasks = len(batch)
    inner_opt = torch.optim.SGD(model.parameters(), lr=INNER_LR)
    for t in range(tasks):
        with higher.innerloop_ctx(model, inner_opt, copy_initial_weights=False,
                                  track_higher_grads=not row.first_order) as (fmodel, diffopt):
            for _ in range(row.inner_steps):
                diffopt.step(F.cross_entropy(fmodel(batch.support_x[t]), batch.support_y[t]))
            query_loss = F.cross_entropy(fmodel(batch.query_x[t]), batch.query_y[t])
            (query_loss / tasks).backward()
            if row.first_order:  # the fast weights are detached leaves: carry their gradient over
                for p, fast in zip(model.parameters(), fmodel.parameters()):
                    p.grad = fast.grad if p.grad is None else p.grad + fast.grad


# 3. metalab, and all side by side from the same weights -------------------------------
@dataclass
class Implementation:
    name: str  # as printed
    method: str  # as recorded
    step: Callable[[], None]  # forward/backward of the whole meta-batch
    params: list[Tensor]  # whose .grad is the meta-gradient
    retained: bool  # timed after retain_freed_memory(), as metalab's trainer runs (the others before it)

    def iteration(self) -> None:
        for p in self.params:
            p.grad = None
        self.step()

    def meta_gradient(self) -> Tensor:
        self.iteration()
        return torch.cat([(torch.zeros_like(p) if p.grad is None else p.grad).reshape(-1) for p in self.params]).double()


IMPLEMENTATIONS = ("reference", "higher", "reference retained", "metalab", "metalab loop", "metalab channels-first",
                   "metalab batched channels-last", "metalab bfloat16")  # the names of what implementations() returns, in its order


def implementations(row: Row, batch: EpisodeBatch, dtype: torch.dtype = torch.float32,
                    chosen: tuple[str, ...] | list[str] = IMPLEMENTATIONS) -> list[Implementation]:
    """The implementations named in ``chosen`` (all by default), in :data:`IMPLEMENTATIONS`' order."""
    torch.manual_seed(0)
    model = conv4(row.n_way).to(dtype)
    batch = batch.to(dtype)
    twin = copy.deepcopy(model)
    spec = metalab.TaskSpec((1, 28, 28), row.n_way, True)
    config = make_config("maml", inner_lr=INNER_LR, inner_steps=row.inner_steps, first_order=row.first_order)
    algo = MAML(spec, config)  # the defaults: task_mode auto (threads for the default Conv4), default Conv4
    loop = MAML(spec, dataclasses.replace(config, task_mode="loop"))
    channels_first = MAML(spec, dataclasses.replace(config, channels_last=False))
    batched = MAML(spec, dataclasses.replace(config, channels_last=True, task_mode="batched"))
    src = list(model.parameters())
    for learner in (algo, loop, channels_first, batched):
        start_from(learner.to(dtype).train(), model)
    impls = [
        Implementation("reference", "loop-reference", lambda: reference_step(model, batch, row), src, False),
        Implementation("higher", "higher", lambda: higher_step(twin, batch, row), list(twin.parameters()), False),
        Implementation("reference retained", "loop-reference-retained", lambda: reference_step(model, batch, row),
                       src, True),
        Implementation("metalab", "maml", lambda: algo.meta_gradient(batch), list(algo.parameters()), True),
        Implementation("metalab loop", "maml-loop", lambda: loop.meta_gradient(batch), list(loop.parameters()), True),
        Implementation("metalab channels-first", "maml-channels-first", lambda: channels_first.meta_gradient(batch),
                       list(channels_first.parameters()), True),
        Implementation("metalab batched channels-last", "maml-batched-channels-last",
                       lambda: batched.meta_gradient(batch), list(batched.parameters()), True),
        Implementation("metalab bfloat16", "maml-bf16", lambda: bfloat16(algo.meta_gradient, batch),
                       list(algo.parameters()), True),
    ]
    assert tuple(impl.name for impl in impls) == IMPLEMENTATIONS
    return [impl for impl in impls if impl.name in chosen]


def add_implementations_flag(parser: argparse.ArgumentParser, default: str) -> None:
    parser.add_argument("--implementations", default=default,
                        help=f"comma-separated, from {list(IMPLEMENTATIONS)} (default: {default})")


def selected_implementations(parser: argparse.ArgumentParser, names: str) -> list[str]:
    """The implementations named by ``--implementations``, in :data:`IMPLEMENTATIONS`' order; a usage error (exit 2)
    names unknown ones, and asks for the `higher` library where it is chosen and missing."""
    chosen = names.split(",")
    if unknown := sorted(set(chosen) - set(IMPLEMENTATIONS)):
        parser.error(f"unknown implementations {unknown}; choose from {list(IMPLEMENTATIONS)}")
    if "higher" in chosen and higher is None:
        parser.error("the `higher` implementation needs the library: pip install --no-deps higher==0.2.1")
    return [name for name in IMPLEMENTATIONS if name in chosen]


def start_from(learner: nn.Module, model: nn.Module) -> None:
    """Copy the reference model's weights into a metalab learner (same parameters in the same order)."""
    src, dst = list(model.parameters()), list(learner.parameters())
    assert len(src) == len(dst), f"reference has {len(src)} parameter tensors, metalab {len(dst)}"
    with torch.no_grad():
        for a, b in zip(src, dst):
            assert a.shape == b.shape, f"parameter shapes differ: reference {tuple(a.shape)}, metalab {tuple(b.shape)}"
            b.copy_(a)


def bfloat16(step: Callable[[EpisodeBatch], object], batch: EpisodeBatch) -> None:
    """``step(batch)`` as ``metalab train --autocast bfloat16`` runs it (float64 tensors are left alone)."""
    with precision("bfloat16", torch.device("cpu")):
        step(batch)


def relative_errors(impls: list[Implementation], exact: Tensor) -> dict[str, float]:
    """||g - g_exact|| / ||g_exact|| of every implementation's meta-gradient."""
    return {impl.name: ((impl.meta_gradient() - exact).norm() / exact.norm()).item() for impl in impls}


def check(row: Row, batch: EpisodeBatch,
          chosen: tuple[str, ...] | list[str] = IMPLEMENTATIONS) -> dict[str, float]:
    """Same meta-gradient in float64 (exact check), then each float32 run's distance to it, for the ``chosen``
    implementations (the reference first, always).

    Returns the float32 errors (reported, not checked: see the module docstring).
    """
    impls64 = implementations(row, batch, torch.float64, chosen)
    exact = impls64[0].meta_gradient()
    errors64 = relative_errors(impls64[1:], exact)
    bad = {name: err for name, err in errors64.items() if not err <= MAX_REL_ERR_F64}
    if bad:
        sys.exit(f"refusing to time {row.name}: in float64 the meta-gradient of {bad} differs from the reference "
                 f"by more than {MAX_REL_ERR_F64:g}; the implementations do not compute the same thing")
    errors32 = relative_errors(implementations(row, batch, chosen=chosen), exact)
    print(f"{row.name} (meta-batch {row.meta_batch_size}): float64 relative error vs reference: "
          + ", ".join(f"{k} {v:.1e}" for k, v in errors64.items()) + "; float32 vs the float64 result: "
          + ", ".join(f"{k} {v:.1e}" for k, v in errors32.items()), flush=True)
    return errors32


# measurements --------------------------------------------------------------------------------
def count_flops(impl: Implementation) -> int:
    with FlopCounterMode(display=False) as counter:
        impl.iteration()
    return counter.get_total_flops()


PAGE = os.sysconf("SC_PAGE_SIZE")


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


class PeakRSS:
    """Peak resident memory and peak live allocations above their levels at entry, sampled every 1 ms by a
    background thread (live allocations: :func:`metalab.utils.allocator.allocated_bytes`; ``None`` without glibc)."""

    def __enter__(self) -> "PeakRSS":
        gc.collect()
        trim_freed_memory()  # not glibc: the baseline may include freed, cached memory
        self.base = self.peak = rss()
        self.live_base = self.live_peak = allocated_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _read(self) -> None:
        self.peak = max(self.peak, rss())
        if self.live_peak is not None:
            self.live_peak = max(self.live_peak, allocated_bytes())

    def _sample(self) -> None:
        while not self._stop.wait(0.001):
            self._read()

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._read()

    @property
    def mib(self) -> float:
        return (self.peak - self.base) / 2**20

    @property
    def live_mib(self) -> float | None:
        return None if self.live_peak is None else (self.live_peak - self.live_base) / 2**20


def minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


class Measured(NamedTuple):
    seconds: float  # median per iteration
    peak_mib: float  # resident set, above the level before the timed iterations
    live_mib: float | None  # live allocations (malloc's), above the level before them; None without glibc
    faults: float  # minor page faults per iteration


def measure(impl: Implementation, reps: int) -> Measured:
    """Median seconds and minor page faults per iteration over ``reps`` timed iterations after one warm-up, then
    peak MiB (resident and live) over one more iteration under :class:`PeakRSS`: the timed iterations run with
    no sampler beside them (what it costs them: ``benchmarks/sampler_cost.py``)."""
    impl.iteration()
    faults = minor_faults()
    times = seconds_each(impl, reps)
    faults = minor_faults() - faults
    with PeakRSS() as memory:
        impl.iteration()
    return Measured(statistics.median(times), memory.mib, memory.live_mib, faults / reps)


def seconds_each(impl: Implementation, reps: int) -> list[float]:
    """The wall-clock seconds of each of ``reps`` iterations."""
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        impl.iteration()
        times.append(time.perf_counter() - start)
    return times


def mib_cell(value: float | None) -> str:
    return "–" if value is None else f"{value:.0f}"


#: the matrix product's size: MATMUL_SIZE square, or smaller where one product would take over a second
MATMUL_SIZE, MATMUL_START = 2048, 256


def matmul_gflops(dtype: torch.dtype, reps: int) -> tuple[int, float]:
    """The size and GFLOP/s of a large square matrix product, the median of ``reps`` after a warm-up.

    The size doubles from ``MATMUL_START`` up to ``MATMUL_SIZE`` while the next size's product would take under a
    second (eight times the current one's): ``MATMUL_SIZE`` in float32 and in bfloat16 where the CPU has bfloat16
    arithmetic; without it (AVX2-only CPUs, about 0.3 GFLOP/s) a 2048 product takes a minute and the rate is
    measured on a smaller one.
    """
    size = MATMUL_START
    while True:
        a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
        start = time.perf_counter()
        a @ b
        if size >= MATMUL_SIZE or 8 * (time.perf_counter() - start) > 1.0:
            break
        size *= 2
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - start)
    return size, 2 * size**3 / statistics.median(times) / 1e9


CONV_SHAPE = (75, 64, 14, 14)


def conv_gflops(reps: int) -> float:
    """GFLOP/s of conv4's second convolution on ``CONV_SHAPE``: forward and both gradients, median of ``reps``."""
    x = torch.randn(CONV_SHAPE, requires_grad=True)
    weight = torch.randn(64, CONV_SHAPE[1], 3, 3, requires_grad=True)
    grad = torch.randn(CONV_SHAPE[0], 64, *CONV_SHAPE[2:])

    def forward_backward() -> None:
        torch.autograd.grad(F.conv2d(x, weight, padding=1), (x, weight), grad)

    forward_backward()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        forward_backward()
        times.append(time.perf_counter() - start)
    flops = 3 * 2 * CONV_SHAPE[0] * CONV_SHAPE[2] * CONV_SHAPE[3] * 64 * CONV_SHAPE[1] * 9
    return flops / statistics.median(times) / 1e9


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_rows_flag(p)
    p.add_argument("--reps", type=int, default=5, help="timed iterations per implementation")
    add_implementations_flag(p, ",".join(IMPLEMENTATIONS))
    add_tasks_flag(p)
    records.add_timing_flags(p)
    args = p.parse_args()
    chosen = selected_implementations(p, args.implementations)
    if "reference" not in chosen:
        p.error("--implementations must include reference: every ratio is to its time")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    batches = row_batches(p, args)
    rows = list(batches)

    # correctness of every row first: nothing is timed if one meta-gradient is wrong
    errors = {row: check(row, batches[row], chosen) for row in rows}

    # what the machine does when arithmetic is all there is: the matrix product (float32 against bfloat16) and
    # conv4's convolution, whose rate bounds the rows
    matmul = {dtype: matmul_gflops(dtype, max(args.reps, 5)) for dtype in (torch.float32, torch.bfloat16)}
    names = {dtype: str(dtype).removeprefix("torch.") for dtype in matmul}
    conv = conv_gflops(max(args.reps, 5) * 4)
    print("large matmul: " + ", ".join(f"{names[d]} {v:.0f} GFLOP/s ({n}x{n})" for d, (n, v) in matmul.items())
          + f"; conv4's 64-channel convolution, forward and backward: float32 {conv:.0f} GFLOP/s")
    out = [records.record("throughput", "matmul", f"{n}x{n}-{names[dtype]}",
                          "gflops_per_s", value, None, None, None, None,
                          config={"reps": max(args.reps, 5),
                                  "threads": torch.get_num_threads()})
           for dtype, (n, value) in matmul.items()]
    out.append(records.record("throughput", "conv", "64ch-3x3-" + "x".join(map(str, CONV_SHAPE)) + "-float32",
                              "gflops_per_s", conv, None, None, None, None,
                              config={"reps": max(args.reps, 5) * 4,
                                      "threads": torch.get_num_threads()}))

    table = ["| row | implementation | s/iter | x reference | GFLOP/s | peak MiB | peak live MiB | page faults/iter | "
             "float32 grad error |", "|---|---|---|---|---|---|---|---|---|"]
    # glibc's allocator as the process starts for the reference and `higher`; then freed memory retained
    # (process-wide, permanent), as metalab's trainer runs, for metalab and the reference again
    flops, results = {}, {}
    for retained in (False, True):
        if retained and not retain_freed_memory():
            print("not glibc: freed memory is not retained; the retained rows run as the others", file=sys.stderr)
        for row in rows:
            impls = [impl for impl in implementations(row, batches[row], chosen=chosen) if impl.retained == retained]
            if not retained:
                flops[row] = count_flops(impls[0])
            results.update({(row, impl.name): (impl, measure(impl, args.reps)) for impl in impls})
    for row in rows:
        ref_seconds, setting = results[row, "reference"][1].seconds, row_setting(row, args.tasks)
        for name in chosen:
            impl, (seconds, mib, live, faults) = results[row, name]
            err = errors[row].get(impl.name, 0.0)
            table.append(f"| {row.name} | {impl.name} | {seconds:.3f} | {ref_seconds / seconds:.2f} | "
                         f"{flops[row] / seconds / 1e9:.1f} | {mib:.0f} | {mib_cell(live)} | {faults:.0f} | {err:.1e} |")
            print(table[-1], flush=True)
            config = {**row_config(row, args.reps), "gflop_per_iter": flops[row] / 1e9, "grad_rel_err_float32": err,
                      "max_rel_err_float64": MAX_REL_ERR_F64, "freed_memory_retained": impl.retained}
            metrics = {"seconds_per_iter": seconds, "gflops_per_s": flops[row] / seconds / 1e9, "peak_mib": mib,
                       **({} if live is None else {"peak_live_mib": live}), "minor_faults_per_iter": faults}
            if impl.method.startswith("maml"):
                metrics["speedup"] = ref_seconds / seconds
                if "reference retained" in chosen:
                    metrics["speedup_over_retained_reference"] = (results[row, "reference retained"][1].seconds
                                                                  / seconds)
            out += row_records(impl.method, setting, metrics, config)
        # the reference's FLOPs all at the convolution's rate: nothing but arithmetic at the best rate measured
        seconds = flops[row] / (conv * 1e9)
        table.append(f"| {row.name} | float32 conv bound | {seconds:.3f} | {ref_seconds / seconds:.2f} | {conv:.1f} | "
                     "– | – | – | – |")
        print(table[-1], flush=True)
        out.append(records.record("throughput", "conv-bound", setting, "speedup", ref_seconds / seconds, None, None,
                                  None, None, config={"gflop_per_iter": flops[row] / 1e9, "conv_gflops_per_s": conv,
                                                      "threads": torch.get_num_threads()}))
    records.finish("throughput", table, out, args)


if __name__ == "__main__":
    main()
