"""Where a MAML meta-iteration's time goes: torch.profiler's self time per kind of operation.

    python benchmarks/profile_step.py --cache-dir /tmp/mlcache --rows 5w1s-2nd-1step --threads 1

The implementations and rows are those of ``benchmarks/throughput.py`` (the same batch, the
same weights; ``--implementations`` picks among ``reference``, ``higher``, ``metalab``,
``metalab channels-first``, ``metalab batched channels-last`` and ``metalab bfloat16``). Per row
and implementation: one warm-up iteration, then ``--reps`` iterations under
``torch.profiler`` (CPU activity). Every operator's self time (its own time, not its
children's, so the self times add up to the whole) is put into one of the kinds below by its
name, and each kind's seconds per iteration are printed (with its share of the total) and recorded:

- ``convolution``: oneDNN's convolutions and their gradients (``aten::mkldnn_convolution``,
  ``aten::convolution_backward``, ...), and ``im2col`` / ``col2im``;
- ``matmul``: matrix products (``mm``, ``addmm``, ``bmm``, ...): metalab's first convolution
  is one, and the linear head;
- ``max_pool``: max-pooling and its gradient;
- ``batch_norm``: the fused batch-norm kernels (``native_batch_norm`` and its gradients);
  metalab's own batch norm is built from basic operations, which land in ``elementwise``;
- ``relu``: ReLU (``clamp_min``, ``relu``) and its gradient (``threshold_backward``);
- ``elementwise``: arithmetic and reductions (``mul``, ``add``, ``sub``, ``div``, ``sum``,
  ``mean``, ``sqrt``, ...);
- ``memory``: copies, fills and allocation (``copy_``, ``fill_``, ``empty``, ``cat``, ...);
- ``bookkeeping``: views and the autograd engine's own frames (``view``, ``as_strided``,
  ``autograd::...``, ...);
- ``other``: anything else (each such operator's name is printed, so a new kind shows up).

torch.profiler records the operators of the thread that runs it only: metalab's default step deals its tasks to
worker threads when torch has several, so the script asks for ``--threads 1`` with those implementations (a
one-core profile, every implementation on one thread). The profiler adds a fixed cost to every operator call, so the profiled time per iteration
(recorded as ``seconds_per_iter_profiled``) is above ``throughput.py``'s and the shares lean
towards the kinds made of many small calls; compare implementations within one run. Records:
benchmark ``profile``, method as in ``throughput.py`` (``loop-reference``, ``maml``, ...),
setting like ``2nd-order-1step-5w1s`` (``-mb<tasks>`` with ``--tasks``), metrics
``seconds_<kind>`` and their sum ``seconds_per_iter_profiled``. A benchmark run by hand: nothing is timed in the
test suite.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
import records  # noqa: E402
import throughput  # noqa: E402


KINDS = {  # kind: operator names (without the ``aten::`` prefix); the first kind that lists a name takes it
    "convolution": ("mkldnn_convolution", "convolution_backward", "convolution", "_convolution", "conv2d",
                    "im2col", "col2im", "mkldnn_convolution_backward", "_convolution_double_backward"),
    "matmul": ("mm", "addmm", "bmm", "baddbmm", "matmul", "linear", "addmv", "mv"),
    "max_pool": ("max_pool2d_with_indices", "max_pool2d_with_indices_backward", "max_pool2d"),
    "batch_norm": ("native_batch_norm", "native_batch_norm_backward", "batch_norm", "_batch_norm_impl_index",
                   "cudnn_batch_norm", "_native_batch_norm_legit", "_native_batch_norm_legit_no_training",
                   "batch_norm_backward"),
    "relu": ("relu", "relu_", "clamp_min", "clamp_min_", "threshold_backward"),
    "elementwise": ("mul", "mul_", "add", "add_", "sub", "sub_", "div", "div_", "neg", "sum", "mean", "var_mean",
                    "var", "sqrt", "rsqrt", "pow", "reciprocal", "addcmul", "addcmul_", "addcdiv", "where", "exp",
                    "log", "log_softmax", "_log_softmax", "_log_softmax_backward_data", "nll_loss_forward",
                    "nll_loss_backward", "nll_loss", "nll_loss_nd", "cross_entropy_loss", "rsub", "lerp_",
                    "maximum", "minimum", "eq", "ne", "gt", "lt", "ge", "le", "argmax", "max", "masked_fill",
                    "square", "linalg_vector_norm", "norm", "abs", "all", "any", "isfinite", "gather", "scatter"),
    "memory": ("copy_", "fill_", "zero_", "zeros", "zeros_like", "ones_like", "empty", "empty_like",
               "empty_strided", "clone", "contiguous", "_to_copy", "to", "cat", "stack", "index", "index_select",
               "ones", "new_zeros", "new_empty", "new_empty_strided", "resize_", "full", "scalar_tensor", "lift_fresh",
               "_unsafe_view", "constant_pad_nd", "pad", "select_backward", "slice_backward"),
}
BOOKKEEPING_OPS = ("view", "reshape", "as_strided", "as_strided_", "expand", "transpose", "permute", "t",
                   "unsqueeze", "squeeze", "flatten", "select", "slice", "unfold", "split", "unbind", "narrow",
                   "alias", "_reshape_alias", "unflatten", "view_as", "expand_as", "chunk", "result_type",
                   "is_nonzero", "item", "_local_scalar_dense", "numpy_T", "movedim", "mT", "resolve_conj",
                   "resolve_neg", "detach", "detach_")
KIND_OF = {f"aten::{op}": kind for kind, ops in reversed(KINDS.items()) for op in ops}
KIND_OF.update({f"aten::{op}": "bookkeeping" for op in BOOKKEEPING_OPS})
KIND_NAMES = tuple(KINDS) + ("bookkeeping", "other")


#: the implementations whose tasks run on worker threads (task_mode threads or batched) when torch has several threads
ON_WORKER_THREADS = {"metalab", "metalab channels-first", "metalab batched channels-last", "metalab bfloat16"}


def kind_of(name: str) -> str:
    """The kind of a profiler event (an ``aten::`` operator, an autograd frame or anything else)."""
    if name in KIND_OF:
        return KIND_OF[name]
    if name in ("detach", "detach_") or name.startswith(("autograd::", "torch::autograd::")) \
            or name.endswith(("Backward0", "Backward1")):
        return "bookkeeping"
    return "other"


def profile_seconds(impl: throughput.Implementation, reps: int) -> tuple[dict[str, float], dict[str, float]]:
    """Self seconds per iteration of each kind, and of each operator filed under ``other``."""
    impl.iteration()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(reps):
            impl.iteration()
    by_kind: dict[str, float] = defaultdict(float)
    others: dict[str, float] = defaultdict(float)
    for event in prof.key_averages():
        seconds = event.self_cpu_time_total / 1e6 / reps
        kind = kind_of(event.key)
        by_kind[kind] += seconds
        if kind == "other":
            others[event.key] += seconds
    return {kind: by_kind.get(kind, 0.0) for kind in KIND_NAMES}, dict(others)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    throughput.add_rows_flag(p)
    throughput.add_implementations_flag(p, "reference,metalab")
    p.add_argument("--reps", type=int, default=3, help="profiled iterations per implementation")
    throughput.add_tasks_flag(p)
    records.add_timing_flags(p)
    args = p.parse_args()
    chosen = throughput.selected_implementations(p, args.implementations)
    if args.reps < 1:
        p.error(f"--reps must be at least 1, got {args.reps}")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if torch.get_num_threads() > 1 and (threaded := sorted(set(chosen) & ON_WORKER_THREADS)):
        p.error(f"{threaded} run their tasks on worker threads, which torch.profiler does not record (it would "
                "show nothing of them): pass --threads 1 for a one-core profile of every implementation")
    batches = throughput.row_batches(p, args)

    out = []
    for row, batch in batches.items():
        impls = throughput.implementations(row, batch, chosen=chosen)
        setting = throughput.row_setting(row, args.tasks)
        table = [f"{row.name} (meta-batch {row.meta_batch_size}), self seconds per iteration (share):",
                 "| kind | " + " | ".join(impl.name for impl in impls) + " |", "|---" * (len(impls) + 1) + "|"]
        profiled = {impl.name: profile_seconds(impl, args.reps) for impl in impls}
        totals = {name: sum(kinds.values()) for name, (kinds, _) in profiled.items()}
        for kind in KIND_NAMES + ("total",):
            cells = []
            for impl in impls:
                kinds, _ = profiled[impl.name]
                seconds = totals[impl.name] if kind == "total" else kinds[kind]
                cells.append(f"{seconds:.3f} ({seconds / totals[impl.name]:.0%})")
            table.append(f"| {kind} | " + " | ".join(cells) + " |")
        print("\n".join(table), flush=True)
        for impl in impls:
            kinds, others = profiled[impl.name]
            if others:
                print(f"{impl.name}: filed under other: " + ", ".join(
                    f"{name} {seconds * 1e3:.1f} ms" for name, seconds in sorted(others.items(), key=lambda kv: -kv[1])))
            config = throughput.row_config(row, args.reps)
            metrics = {"seconds_per_iter_profiled": totals[impl.name]}
            metrics.update({f"seconds_{kind}": seconds for kind, seconds in kinds.items()})
            out += [records.record("profile", impl.method, setting, metric, value, None, None, None, None,
                                   config=config) for metric, value in metrics.items()]
    if not args.no_record:
        print(records.append("profile", out, args.results_dir))


if __name__ == "__main__":
    main()
