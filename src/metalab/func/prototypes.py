"""Class prototypes and distances shared by the metric-based methods."""

from __future__ import annotations

import torch
from torch import Tensor


def one_hot(labels: Tensor, n_way: int, dtype: torch.dtype) -> Tensor:
    """``(n,)`` labels -> ``(n, n_way)`` one-hot, without data-dependent shapes."""
    return (labels[:, None] == torch.arange(n_way, device=labels.device)).to(dtype)


def class_prototypes(embeddings: Tensor, labels: Tensor, n_way: int) -> Tensor:
    """Mean embedding of each class (Snell et al. 2017, eq. 1).

    Args:
        embeddings: ``(n, d)`` support embeddings.
        labels: ``(n,)`` labels in ``0..n_way-1``; every class must occur.
        n_way: number of classes.

    Returns:
        ``(n_way, d)`` prototypes.
    """
    weights = one_hot(labels, n_way, embeddings.dtype)
    return (weights.T @ embeddings) / weights.sum(dim=0)[:, None]


def squared_euclidean(a: Tensor, b: Tensor) -> Tensor:
    """``(m, d), (n, d) -> (m, n)`` squared Euclidean distances, computed exactly."""
    return (a[:, None, :] - b[None, :, :]).pow(2).sum(dim=-1)
