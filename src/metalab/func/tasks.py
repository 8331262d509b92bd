"""Run a per-task function over a meta-batch: a Python loop or ``torch.func.vmap``.

Both give the same result (tested); per-task functions therefore use static shapes only.
On CPU the loop is usually the faster of the two for convolutional learners.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor

TASK_MODES = ("loop", "vmap")


def map_tasks(fn: Callable[..., tuple[Tensor, ...]], tensors: Sequence[Tensor], mode: str = "loop") -> tuple[Tensor, ...]:
    """``fn`` applied to the i-th slice of every tensor, outputs stacked on dim 0.

    Args:
        fn: per-task function returning a tuple of tensors.
        tensors: batched inputs, each ``(B, ...)``.
        mode: ``"loop"`` or ``"vmap"``.
    """
    if mode == "vmap":
        return tuple(torch.func.vmap(fn)(*tensors))
    if mode != "loop":
        raise ValueError(f"task mode must be one of {TASK_MODES}, got {mode!r}")
    outputs = [fn(*(t[i] for t in tensors)) for i in range(tensors[0].shape[0])]
    return tuple(torch.stack(column) for column in zip(*outputs))
