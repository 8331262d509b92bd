"""Meta-training: Adam on the meta-loss, periodic validation, last and best checkpoints."""

from __future__ import annotations

import contextlib
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from metalab.algorithms.base import MetaAlgorithm
from metalab.data.benchmarks import Benchmark
from metalab.engine.checkpoint import read_checkpoint, save_checkpoint
from metalab.engine.distributed import SINGLE, Distributed
from metalab.engine.evaluator import EvalResult, evaluate
from metalab.utils.allocator import retain_freed_memory
from metalab.utils.errors import MetalabError, NonFiniteError, require_non_negative, require_positive
from metalab.utils.io import atomic_write_text


AUTOCAST_DTYPES = {"bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class TrainConfig:
    """Outer-loop settings.

    Attributes:
        steps: meta-iterations (optimizer steps).
        meta_batch_size: tasks per meta-iteration.
        outer_lr: learning rate of the method's outer optimiser (Adam for most methods,
            plain SGD = Reptile's outer step size epsilon).
        lr_decay_every: multiply the rate by ``lr_decay`` every this many steps (0: never).
        lr_decay: the factor.
        lr_anneal: anneal the rate linearly to 0 over ``steps`` (Reptile); excludes
            ``lr_decay_every``.
        val_every: validate every this many steps (0: only at the end).
        val_episodes: validation episodes (a fixed, seeded set).
        log_every: write averaged training metrics every this many steps.
        grad_clip: clip the meta-gradient norm to this value (``None``: no clipping).
        checkpoint_every: also write ``last.pt`` every this many steps (0: only when
            validating); what a killed run resumes from.
        skip_nonfinite: skip a meta-batch whose loss or gradient is not finite (counted as
            ``skipped`` in the log) instead of stopping with an error.
        max_seconds: training-time budget; training stops after the step that exceeds it
            (then validates and checkpoints as at the last step). ``None``: no budget.
        seed: seed of parameter initialisation and of the training episode stream.
        autocast: run every training meta-iteration (inner loops, query passes, meta-gradient)
            under ``torch.autocast`` with this dtype: ``"bfloat16"`` puts convolutions and
            matrix products in bfloat16 (faster on CPUs with bfloat16 instructions and on GPUs;
            meta-gradients about 1e-1 away from float64 for MAML on Omniglot conv4, ``python
            benchmarks/throughput.py``). ``None``: the parameters' dtype. Validation and test
            always run in the parameters' dtype.
        release_freed_memory: leave glibc's malloc handing freed memory back to the system
            at once. By default training first calls
            :func:`metalab.utils.allocator.retain_freed_memory` (process-wide): freed blocks
            of up to 32 MB stay in the process for reuse instead of coming back, task after
            task, as freshly zeroed pages (see "Freed memory" in docs/speed_and_exactness.md).
    """

    steps: int = 1000
    meta_batch_size: int = 25
    outer_lr: float = 1e-3
    lr_decay_every: int = 0
    lr_decay: float = 0.5
    lr_anneal: bool = False
    val_every: int = 500
    val_episodes: int = 100
    log_every: int = 50
    grad_clip: float | None = None
    checkpoint_every: int = 0
    skip_nonfinite: bool = False
    max_seconds: float | None = None
    seed: int = 0
    autocast: str | None = None
    release_freed_memory: bool = False

    def __post_init__(self) -> None:
        require_positive(steps=self.steps, meta_batch_size=self.meta_batch_size, val_episodes=self.val_episodes,
                         log_every=self.log_every)
        require_non_negative("never", val_every=self.val_every, checkpoint_every=self.checkpoint_every,
                             lr_decay_every=self.lr_decay_every)
        if not (isinstance(self.outer_lr, (int, float)) and 0 < self.outer_lr < math.inf):
            raise MetalabError(f"outer_lr must be a positive finite number, got {self.outer_lr!r}")
        if self.grad_clip is not None and not 0 < self.grad_clip < math.inf:
            raise MetalabError(f"grad_clip must be a positive finite number or None, got {self.grad_clip!r}")
        if self.max_seconds is not None and not self.max_seconds > 0:
            raise MetalabError(f"max_seconds must be positive or None, got {self.max_seconds}")
        if self.lr_anneal and self.lr_decay_every:
            raise MetalabError("lr_anneal and lr_decay_every exclude each other; set one of them")
        if self.autocast is not None and self.autocast not in AUTOCAST_DTYPES:
            raise MetalabError(f"autocast must be one of {list(AUTOCAST_DTYPES)} or None, got {self.autocast!r} "
                               "(float16 would need loss scaling, which the trainer does not do)")


@dataclass
class TrainResult:
    steps: int
    seconds: float
    best: dict[str, Any] | None
    last_val: EvalResult | None


def _better(metric: str, new: float, old: float | None) -> bool:
    if old is None:
        return True
    return new > old if metric in ("accuracy", "return", "success") else new < old


def _event_writer(run_path: Path | None, resumed_at: int | None):
    """A TensorBoard writer into ``run_path/tensorboard`` when the ``tensorboard`` extra is installed.

    ``resumed_at``: the step of the checkpoint a resumed run continues from; the events of later
    steps, written by the killed run after that checkpoint, are purged (as metrics.jsonl is truncated).
    """
    if run_path is None:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # the extra is optional: JSON lines only
        return None
    return SummaryWriter(str(run_path / "tensorboard"), purge_step=None if resumed_at is None else resumed_at + 1)


class _MetricLog:
    """Averages training metrics over a window and appends them as JSON lines (and TensorBoard scalars)."""

    def __init__(self, path: Path | None, events=None):
        self.path, self.events, self.sums, self.count = path, events, {}, 0

    def add(self, metrics: dict[str, float]) -> None:
        for key, value in metrics.items():
            self.sums[key] = self.sums.get(key, 0.0) + value
        self.count += 1

    def write(self, record: dict[str, Any]) -> None:
        if self.path is not None:
            try:
                with self.path.open("a", encoding="utf-8") as handle:
                    handle.write(json.dumps(record) + "\n")
            except OSError as exc:
                raise _write_error(self.path, exc) from None
        if self.events is not None:
            for key, value in record.items():
                if key not in ("step", "seconds"):
                    self.events.add_scalar(key, value, record["step"])
            self.events.flush()

    def flush(self, step: int, seconds: float, skipped: int = 0) -> dict[str, float]:
        means = {f"train_{k}": v / self.count for k, v in self.sums.items()} if self.count else {}
        self.write({"step": step, "seconds": round(seconds, 3), **means, **({"skipped": skipped} if skipped else {})})
        self.sums, self.count = {}, 0
        return means

    def truncate_after(self, step: int) -> None:
        """Drop the lines of steps after ``step`` (written after the checkpoint a run resumes from)."""
        if self.path is None or not self.path.exists():
            return
        lines = [line for line in self.path.read_text(encoding="utf-8").splitlines() if line.strip()]
        kept = []
        for line in lines:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:  # a line cut by the kill
                break
            if row.get("step", 0) > step:
                break
            kept.append(line)
        atomic_write_text(self.path, "".join(line + "\n" for line in kept))


# what a resumed run may change: more steps or more time, the allocator
RESUMABLE = ("steps", "max_seconds", "release_freed_memory")


def _restore(run_path: Path, algorithm: MetaAlgorithm, optimizer, scheduler, log: _MetricLog,
             config: TrainConfig) -> dict[str, Any]:
    """Load ``run_path/last.pt`` into the live objects; drop log lines written after it; return its record."""
    path = run_path / "last.pt"
    if not path.is_file():
        raise MetalabError(f"nothing to resume in {run_path}: it has no last.pt (the run stopped before its first "
                           "checkpoint); start it again without --resume")
    record = read_checkpoint(path)
    saved = record.get("train") or {}
    changed = sorted(k for k, v in asdict(config).items() if k not in RESUMABLE and saved.get(k, v) != v)
    if changed:
        raise MetalabError(f"{run_path} belongs to a run with other training settings ({', '.join(changed)} differ); "
                           "resume with the run's own settings or start a new run folder")
    if record["algorithm"] != algorithm.name or record["hparams"] != algorithm.hparams():
        raise MetalabError(f"{run_path} holds a {record['algorithm']} run with other hyper-parameters; resume it with "
                           "its own configuration or start a new run folder")
    algorithm.load_state_dict(record["state_dict"])
    optimizer.load_state_dict(record["optimizer"])
    if scheduler is not None:
        scheduler.load_state_dict(record["scheduler"])
    torch.set_rng_state(record["rng_state"])
    log.sums, log.count = dict(record["log_window"][0]), record["log_window"][1]
    log.truncate_after(record["step"])
    return record


def train(
    algorithm: MetaAlgorithm,
    benchmark: Benchmark,
    config: TrainConfig,
    run_dir: str | Path | None = None,
    progress: bool = True,
    checkpoint_extra: dict[str, Any] | None = None,
    resume: bool = False,
    distributed: Distributed = SINGLE,
) -> TrainResult:
    """Meta-train ``algorithm`` on ``benchmark.train`` for ``config.steps`` meta-iterations.

    Meta-batch ``t`` holds episodes ``t*B .. t*B+B-1`` of the training stream. Every
    ``val_every`` steps (and at the end) the method is evaluated on the fixed validation
    episodes; ``run_dir/last.pt`` (also every ``checkpoint_every`` steps) and
    ``run_dir/best.pt`` are written atomically and ``run_dir/metrics.jsonl`` receives
    training and validation metrics (and ``run_dir/tensorboard`` the same as TensorBoard
    events, when the ``tensorboard`` extra is installed).

    With ``resume``, training continues from ``run_dir/last.pt``: weights, optimiser and
    scheduler states, step, best validation, the partly averaged log window, the torch RNG
    state and the elapsed time are restored and log lines written after that checkpoint are
    dropped, so the continued run logs exactly what an uninterrupted one would have (the
    episode stream is addressed by step, so it needs no state of its own).

    Training runs where the algorithm's parameters are (``algorithm.to(device)`` first for a
    GPU): every batch is moved there (:meth:`MetaAlgorithm.on_device`).

    With ``distributed`` (a data-parallel run, :mod:`metalab.engine.distributed`) each rank
    trains on its share of every meta-batch, the meta-gradients are averaged before the
    step, validation is split across ranks, and only rank 0 writes to ``run_dir`` (every rank
    reads ``last.pt`` to resume).

    Raises:
        MetalabError: a non-finite loss or gradient (unless ``config.skip_nonfinite``: then
            the batch is skipped and counted in the log as ``skipped``), a resume without a
            checkpoint or with other settings.
    """
    run_path = Path(run_dir) if run_dir is not None else None
    if resume and run_path is None:
        raise MetalabError("resume needs the run folder of the run to continue")
    if not config.release_freed_memory:
        retain_freed_memory()
    first_task, tasks = distributed.shard(config.meta_batch_size)
    if run_path is not None and distributed.is_main:
        run_path.mkdir(parents=True, exist_ok=True)
    writes = run_path if distributed.is_main else None  # only rank 0 logs and checkpoints
    optimizer = algorithm.outer_optimizer(config.outer_lr)
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None
    if config.lr_decay_every:
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, config.lr_decay_every, config.lr_decay)
    elif config.lr_anneal:
        scheduler = torch.optim.lr_scheduler.LinearLR(optimizer, 1.0, 0.0, total_iters=config.steps)
    log = _MetricLog(writes / "metrics.jsonl" if writes is not None else None)
    best: dict[str, Any] | None = None
    last_val: EvalResult | None = None
    extra = dict(checkpoint_extra or {}, train=asdict(config))
    first, elapsed, skipped = 0, 0.0, 0
    if resume:
        record = _restore(run_path, algorithm, optimizer, scheduler, log, config)
        first, elapsed, best, skipped = record["step"], record["seconds"], record["best"], record.get("skipped", 0)
    distributed.broadcast_parameters(algorithm)
    log.events = _event_writer(writes, first if resume else None)
    start = time.perf_counter() - elapsed

    def checkpoint(step: int, improved: bool) -> None:
        if writes is None:
            return
        state = dict(extra, step=step, best=best, optimizer=optimizer.state_dict(),
                     scheduler=scheduler.state_dict() if scheduler is not None else None,
                     rng_state=torch.get_rng_state(), log_window=(dict(log.sums), log.count),
                     seconds=time.perf_counter() - start, skipped=skipped)
        for name in ("last.pt", "best.pt") if improved else ("last.pt",):
            try:
                save_checkpoint(run_path / name, algorithm, **state)
            except OSError as exc:  # the atomic write left the previous file as it was
                raise _write_error(run_path / name, exc) from None

    algorithm.train()
    bar = tqdm(range(first, config.steps), desc=f"train {algorithm.name}", disable=not progress, dynamic_ncols=True,
               initial=first, total=config.steps)
    parameters = [p for p in algorithm.parameters() if p.requires_grad]
    device = algorithm.device if config.autocast is not None else torch.device("cpu")  # read once: params stay put
    done = first
    for step in bar:
        batch = algorithm.on_device(benchmark.train.batch(step, config.meta_batch_size, first_task, tasks))
        optimizer.zero_grad(set_to_none=True)
        try:
            with precision(config.autocast, device):
                out, error = algorithm.meta_gradient(batch), None
            _check_gradients(algorithm, step)
        except NonFiniteError as exc:
            out, error = None, exc
        # every rank learns whether any rank's batch was bad, so all skip (or stop on) the same one
        if distributed.average_gradients(parameters, error is not None) and error is None:
            error = NonFiniteError(f"a non-finite loss or meta-gradient on another rank at step {step}")
        if error is not None:
            if not config.skip_nonfinite:
                kept = f"; the last good checkpoint is {run_path / 'last.pt'}" if run_path is not None else ""
                raise MetalabError(f"training stopped at step {step}: {error}{kept}; or skip such batches "
                                   "(skip_nonfinite, --skip-nonfinite)") from None
            optimizer.zero_grad(set_to_none=True)
            skipped += 1
            out = None
        if out is not None:
            if config.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(algorithm.parameters(), config.grad_clip)
            optimizer.step()
            log.add(distributed.average_metrics(out.metrics))
        distributed.average_buffers(algorithm)
        if scheduler is not None:
            scheduler.step()
        done = step + 1
        out_of_time = config.max_seconds is not None and distributed.any(
            time.perf_counter() - start >= config.max_seconds, "agreeing on the time budget")
        last = done == config.steps or out_of_time
        if done % config.log_every == 0 or last:
            bar.set_postfix(log.flush(done, time.perf_counter() - start, skipped))
        validate = (config.val_every and done % config.val_every == 0) or last
        if validate:
            last_val = evaluate(algorithm, benchmark.val, config.val_episodes, distributed=distributed)
            log.write({"step": done, "seconds": round(time.perf_counter() - start, 3),
                       f"val_{last_val.metric}": last_val.mean, f"val_{last_val.metric}_ci95": last_val.ci95})
            if not math.isfinite(last_val.mean):
                raise MetalabError(f"validation {last_val.metric} is not finite at step {done}; lower the learning "
                                   "rates" + (f" (last good checkpoint: {run_path / 'last.pt'})" if run_path else ""))
            improved = _better(last_val.metric, last_val.mean, best and best["value"])
            if improved:
                best = {"metric": last_val.metric, "value": last_val.mean, "ci95": last_val.ci95, "step": done}
            checkpoint(done, improved)
        elif config.checkpoint_every and done % config.checkpoint_every == 0:
            checkpoint(done, False)
        if last:
            break
    bar.close()
    if log.events is not None:
        log.events.close()
    distributed.barrier("waiting for rank 0's last checkpoint")
    return TrainResult(done, time.perf_counter() - start, best, last_val)


def precision(autocast: str | None, device: torch.device) -> contextlib.AbstractContextManager:
    """The number format of a training meta-iteration (``TrainConfig.autocast``): ``torch.autocast``
    on ``device`` with that dtype, or nothing (the parameters' own dtype) for ``None``."""
    if autocast is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=AUTOCAST_DTYPES[autocast])


def _write_error(path: Path, exc: OSError) -> MetalabError:
    return MetalabError(f"could not write {path} ({exc.strerror or exc}); free disk space or use another run folder, "
                        f"then continue with --resume {path.parent}: its checkpoints are the last complete ones")


def _check_gradients(algorithm: MetaAlgorithm, step: int) -> None:
    grads = [p.grad for p in algorithm.parameters() if p.grad is not None]
    if grads and not torch.isfinite(torch.stack([torch.linalg.vector_norm(g) for g in grads])).all():
        raise NonFiniteError(f"non-finite meta-gradient at step {step}; lower the learning rates or clip "
                             "(grad_clip, --grad-clip)")
