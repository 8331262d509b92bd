"""Per-task losses and metrics (static shapes: safe in a loop and under vmap)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def task_loss(pred: Tensor, target: Tensor) -> Tensor:
    """Cross-entropy for integer labels, mean squared error for float targets."""
    if target.is_floating_point():
        return F.mse_loss(pred, target)
    return F.cross_entropy(pred, target)


def task_metric(pred: Tensor, target: Tensor) -> Tensor:
    """Accuracy for integer labels, mean squared error for float targets."""
    if target.is_floating_point():
        return F.mse_loss(pred, target)
    return (pred.argmax(dim=-1) == target).to(pred.dtype).mean()


def metric_name(classification: bool) -> str:
    return "accuracy" if classification else "mse"
