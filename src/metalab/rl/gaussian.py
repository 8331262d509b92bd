"""Diagonal Gaussian policies' log-density and KL divergence (batched, any leading shape)."""

from __future__ import annotations

import math

from torch import Tensor


def log_prob(actions: Tensor, mean: Tensor, log_std: Tensor) -> Tensor:
    """``log N(actions; mean, diag(exp(log_std))^2)`` summed over the last (action) dim."""
    z = (actions - mean) / log_std.exp()
    return (-0.5 * z * z - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)


def kl(mean_p: Tensor, log_std_p: Tensor, mean_q: Tensor, log_std_q: Tensor) -> Tensor:
    """``KL(p || q)`` of diagonal Gaussians, summed over the last dim."""
    return (log_std_q - log_std_p + ((2 * log_std_p).exp() + (mean_p - mean_q) ** 2)
            / (2 * (2 * log_std_q).exp()) - 0.5).sum(-1)
