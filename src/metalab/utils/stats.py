"""Statistics for evaluation protocols."""

from __future__ import annotations

import math
from typing import Sequence

import torch


def mean_ci95(values: Sequence[float] | torch.Tensor) -> tuple[float, float]:
    """Mean and half-width of its 95% confidence interval (normal approximation).

    This is the protocol of the few-shot literature: ``1.96 * std / sqrt(n)`` with the
    sample standard deviation over independent test episodes.

    Args:
        values: per-episode metrics, shape ``(n,)``.

    Returns:
        ``(mean, ci95)``; ``ci95`` is ``nan`` when ``n < 2``.
    """
    x = torch.as_tensor(values, dtype=torch.float64).flatten()
    n = x.numel()
    if n == 0:
        raise ValueError("mean_ci95 needs at least one value")
    mean = x.mean().item()
    if n < 2:
        return mean, math.nan
    return mean, 1.96 * x.std(unbiased=True).item() / math.sqrt(n)
