"""Run a per-task function over a meta-batch: a Python loop, ``torch.func.vmap`` or threads.

All give the same result (tested); per-task functions therefore use static shapes only.
On CPU the loop is usually faster than vmap for convolutional learners, and threads (the
loop's tasks shared out among one thread per core, see :func:`on_threads`) faster than
the loop.
"""

from __future__ import annotations

import threading
from functools import partial
from typing import Callable, Sequence, TypeVar

import torch
from torch import Tensor

TASK_MODES = ("loop", "vmap", "threads")
T = TypeVar("T")


def task_shares(tasks: int, device: torch.device | None = None, workers: int | None = None) -> list[range]:
    """Tasks ``0..tasks-1`` dealt round-robin to ``workers`` (default: torch's intra-op thread
    count, at most one per task): worker ``w`` gets ``w, w + workers, ...``. A fixed deal, so
    sums over each share, then over the shares in order, round the same way every time. On a
    device other than the CPU (``device``), one share: the tasks run in a loop there."""
    if device is not None and torch.device(device).type != "cpu":
        return [range(tasks)]
    workers = max(1, min(torch.get_num_threads() if workers is None else workers, tasks))
    return [range(w, tasks, workers) for w in range(workers)]


def in_task_order(shares: Sequence[range], per_share: Sequence[Sequence[T]]) -> list[T]:
    """Per-task results back in task order from the per-share lists of :func:`task_shares`' deal."""
    ordered: list = [None] * sum(len(share) for share in shares)
    for share, results in zip(shares, per_share):
        for task, result in zip(share, results):
            ordered[task] = result
    return ordered


def on_threads(jobs: Sequence[Callable[[], T]]) -> list[T]:
    """Run every job on its own thread, each thread's torch operators on one core; results in order
    (a single job runs on the calling thread, with its intra-op threads).

    The tasks of a meta-batch are small for a CPU's cores: a 5-image support pass or a
    75-image query pass of Conv4 splits poorly over intra-op threads. Running whole tasks
    side by side, one core each, keeps every core busy with large enough pieces (autograd
    runs a CPU backward pass on the thread that asks for it, and operators release the
    GIL). The jobs must not share mutable state: metalab's backbones and ``nn.Linear`` run
    as pure functions of their parameters (:func:`metalab.func.forward`), whereas
    ``torch.func.functional_call`` swaps a module's parameters in place, and batch norm's
    running statistics are updated in place.

    Grad mode, inference mode and CPU autocast are thread-local in torch and are carried to
    the threads; torch's intra-op thread count is restored afterwards. When every job has
    ended, the first job's exception (in job order), if any, is raised here.
    """
    if len(jobs) <= 1:
        return [job() for job in jobs]
    grad, inference = torch.is_grad_enabled(), torch.is_inference_mode_enabled()
    autocast, dtype = torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")
    threads = torch.get_num_threads()
    results: list = [None] * len(jobs)
    errors: list[BaseException | None] = [None] * len(jobs)

    def run(i: int) -> None:
        try:
            torch.set_num_threads(1)
            with (torch.inference_mode(inference), torch.set_grad_enabled(grad),
                  torch.autocast("cpu", dtype=dtype, enabled=autocast)):
                results[i] = jobs[i]()
        except BaseException as error:  # raised in the caller's thread below
            errors[i] = error

    workers = [threading.Thread(target=run, args=(i,), name=f"metalab-task-share-{i}") for i in range(len(jobs))]
    try:
        for worker in workers:
            worker.start()
    finally:
        for worker in workers:
            if worker.ident is not None:
                worker.join()
        torch.set_num_threads(threads)
    for error in errors:
        if error is not None:
            raise error
    return results


def map_tasks(fn: Callable[..., tuple[Tensor, ...]], tensors: Sequence[Tensor], mode: str = "loop") -> tuple[Tensor, ...]:
    """``fn`` applied to the i-th slice of every tensor, outputs stacked on dim 0.

    Args:
        fn: per-task function returning a tuple of tensors.
        tensors: batched inputs, each ``(B, ...)``.
        mode: ``"loop"``, ``"vmap"`` or ``"threads"`` (the loop's tasks shared out among
            threads by :func:`task_shares` and :func:`on_threads`; on a GPU, the loop).
    """
    if mode == "vmap":
        return tuple(torch.func.vmap(fn)(*tensors))
    if mode not in ("loop", "threads"):
        raise ValueError(f"task mode must be one of {TASK_MODES}, got {mode!r}")
    tasks = tensors[0].shape[0]

    def run(share: Sequence[int]) -> list[tuple[Tensor, ...]]:
        return [fn(*(t[i] for t in tensors)) for i in share]

    shares = task_shares(tasks, tensors[0].device) if mode == "threads" else [range(tasks)]
    outputs = in_task_order(shares, on_threads([partial(run, share) for share in shares]))
    return tuple(torch.stack(column) for column in zip(*outputs))
