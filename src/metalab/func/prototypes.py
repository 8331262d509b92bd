"""Class prototypes, similarities and per-class reductions shared by the metric-based methods.

Every function works on whole matrices with static shapes (no per-class Python loops,
no data-dependent indexing), so the methods run the same in a loop or under ``vmap``.
"""

from __future__ import annotations

import torch
from torch import Tensor


def one_hot(labels: Tensor, n_way: int, dtype: torch.dtype) -> Tensor:
    """``(n,)`` labels -> ``(n, n_way)`` one-hot, without data-dependent shapes."""
    return (labels[:, None] == torch.arange(n_way, device=labels.device)).to(dtype)


def class_sums(embeddings: Tensor, labels: Tensor, n_way: int) -> Tensor:
    """Sum of the embeddings of each class (Sung et al. 2018, K-shot class features).

    Args:
        embeddings: ``(n, d)`` support embeddings.
        labels: ``(n,)`` labels in ``0..n_way-1``.
        n_way: number of classes.

    Returns:
        ``(n_way, d)``.
    """
    return one_hot(labels, n_way, embeddings.dtype).T @ embeddings


def class_prototypes(embeddings: Tensor, labels: Tensor, n_way: int) -> Tensor:
    """Mean embedding of each class (Snell et al. 2017, eq. 1).

    Args:
        embeddings: ``(n, d)`` support embeddings.
        labels: ``(n,)`` labels in ``0..n_way-1``; every class must occur.
        n_way: number of classes.

    Returns:
        ``(n_way, d)`` prototypes.
    """
    counts = one_hot(labels, n_way, embeddings.dtype).sum(dim=0)
    return class_sums(embeddings, labels, n_way) / counts[:, None]


def squared_euclidean(a: Tensor, b: Tensor) -> Tensor:
    """``(m, d), (n, d) -> (m, n)`` squared Euclidean distances, computed exactly."""
    return (a[:, None, :] - b[None, :, :]).pow(2).sum(dim=-1)


def cosine_similarity(a: Tensor, b: Tensor, eps: float = 1e-8) -> Tensor:
    """``(m, d), (n, d) -> (m, n)`` cosine of the angle between every row of ``a`` and of ``b``.

    A zero row has similarity 0 to everything (its norm is clamped to ``eps``).
    """
    a = a / a.norm(dim=-1, keepdim=True).clamp_min(eps)
    b = b / b.norm(dim=-1, keepdim=True).clamp_min(eps)
    return a @ b.T


def reduce_by_class(scores: Tensor, labels: Tensor, n_way: int, how: str) -> Tensor:
    """Reduce ``(m, n)`` scores against ``n`` labelled examples to ``(m, n_way)`` class scores.

    Args:
        scores: ``(m, n)``, e.g. query-support similarities.
        labels: ``(n,)`` labels of the columns, in ``0..n_way-1``.
        n_way: number of classes.
        how: ``"logsumexp"`` (log of the summed attention mass of a class: Matching
            Networks) or ``"max"`` (the most similar example of a class: Siamese networks).
            A class without examples gets ``-inf``.
    """
    member = one_hot(labels, n_way, torch.bool)  # (n, n_way)
    masked = scores[:, :, None].masked_fill(~member[None], float("-inf"))  # (m, n, n_way)
    if how == "logsumexp":
        return masked.logsumexp(dim=1)
    if how == "max":
        return masked.amax(dim=1)
    raise ValueError(f"how must be 'logsumexp' or 'max', got {how!r}")
