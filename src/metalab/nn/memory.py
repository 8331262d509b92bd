"""External memory with content-based reads and least-recently-used writes, as pure functions.

References: Santoro, Bartunov, Botvinick, Wierstra & Lillicrap, "One-shot Learning with
Memory-Augmented Neural Networks", ICML 2016, sections 3.1 (reads) and 3.2 (Least Recently
Used Access, LRUA).

Every function maps tensors to new tensors (no in-place update of anything that may need a
gradient) and is batched over a leading dim ``B`` (the episodes of a meta-batch). Shapes:
``N`` memory slots of width ``W``, ``H`` heads (one key per head is used both to write and to
read, as in the paper). Static shapes throughout: a stable sort and ``argmin`` select a fixed number
of slots, nothing depends on the values' sizes.

The equations, numbered as in the paper:

- (2) cosine similarity ``K(k_t, M_t(i)) = k_t . M_t(i) / (||k_t|| ||M_t(i)||)`` and
  (3) read weights ``w^r_t(i) = softmax_i K(k_t, M_t(i))``: :func:`cosine_read_weights`;
- (4) read vector ``r_t = sum_i w^r_t(i) M_t(i)``: :func:`read`;
- (5) usage ``w^u_t = gamma w^u_{t-1} + w^r_t + w^w_t``: :func:`update_usage`;
- least-used weights ``w^lu_t(i) = 1 if w^u_t(i) <= m(w^u_t, n) else 0`` (``m(v, n)`` the
  ``n``-th smallest element, ``n`` the number of reads): :func:`least_used`;
- write weights ``w^w_t = sigmoid(alpha) w^r_{t-1} + (1 - sigmoid(alpha)) w^lu_{t-1}``:
  :func:`lrua_write_weights`;
- "prior to writing to memory, the least used memory location is set to zero", then
  ``M_t(i) = M_{t-1}(i) + w^w_t(i) k_t``: :func:`write`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from metalab.utils.errors import MetalabError


def _norm(x: Tensor, eps: float) -> Tensor:
    # clamped before the square root: an all-zero slot (fresh or just erased) gets a finite,
    # zero gradient instead of the 0/0 of ||x|| at x = 0
    return (x * x).sum(dim=-1).clamp_min(eps * eps).sqrt()


def cosine_read_weights(keys: Tensor, memory: Tensor, strength: Tensor | None = None, eps: float = 1e-6) -> Tensor:
    """Content addressing, eqs. (2)-(3): softmax over slots of the cosine similarity.

    Args:
        keys: ``(B, H, W)`` one key per head.
        memory: ``(B, N, W)``.
        strength: optional ``(B, H, 1)`` key strengths ``beta >= 0`` multiplying the similarity
            before the softmax, as in the Neural Turing Machine's content addressing (Graves et
            al. 2014, eq. 5); ``None``: ``beta = 1``, Santoro et al.'s eq. (3).
        eps: floor of the norms; an all-zero slot has similarity 0 with every key.

    Returns:
        ``(B, H, N)`` read weights, non-negative, summing to 1 over the slots.
    """
    dots = keys @ memory.transpose(1, 2)  # (B, H, N)
    similarity = dots / (_norm(keys, eps).unsqueeze(-1) * _norm(memory, eps).unsqueeze(-2))
    if strength is not None:
        similarity = strength * similarity
    return similarity.softmax(dim=-1)


def read(weights: Tensor, memory: Tensor) -> Tensor:
    """Eq. (4): ``r = sum_i w(i) M(i)`` for every head.

    Args:
        weights: ``(B, H, N)``.
        memory: ``(B, N, W)``.

    Returns:
        ``(B, H, W)``.
    """
    return weights @ memory


def _least_used_slots(usage: Tensor, n: int) -> Tensor:
    """``(B, n)`` indices of the ``n`` least-used slots, least used first, ties to the lower index.

    Ties are the rule, not the exception: slots never written have exactly equal usage. ``topk``
    leaves their order to its implementation, which can differ with the batch size, so an
    episode's slots (and, through them, its gradient) could depend on the episodes beside it; a
    stable sort picks the same slots for an episode in any batch (and agrees with ``argmin``,
    which returns the first minimum, in :func:`write`).
    """
    if not 1 <= n <= usage.shape[-1]:
        raise MetalabError(f"picking the least-used slots needs 1 <= n_reads <= {usage.shape[-1]} slots, got n_reads={n}")
    return usage.detach().argsort(dim=-1, stable=True)[..., :n]


def least_used(usage: Tensor, n_reads: int) -> Tensor:
    """The least-used weights ``w^lu``: 1.0 at the ``n_reads`` least-used slots, else 0.

    The paper marks every slot whose usage is at most the ``n``-th smallest; this marks
    exactly ``n`` of them (ties to the lower slot index), which keeps the number of slots
    written fixed. No gradient flows through the selection (it is piecewise constant).

    Args:
        usage: ``(B, N)`` usage weights ``w^u``.
        n_reads: ``n``, the number of read heads; ``1 <= n_reads <= N``.

    Returns:
        ``(B, N)`` of 0.0 and 1.0, in ``usage``'s dtype.
    """
    return torch.zeros_like(usage, requires_grad=False).scatter(-1, _least_used_slots(usage, n_reads), 1.0)


def least_used_per_head(usage: Tensor, n_heads: int) -> Tensor:
    """One least-used slot per head: head ``h``'s row is 1.0 at the ``(h + 1)``-th least-used slot.

    The rows together mark the slots of :func:`least_used` ``(usage, n_heads)``, but each head
    writes a slot of its own instead of every head writing to all of them (as in Deleu's
    ``ntm-one-shot`` re-implementation; the paper's single ``w^lu`` leaves it open).

    Args:
        usage: ``(B, N)`` usage weights ``w^u``.
        n_heads: ``H``; ``1 <= n_heads <= N``.

    Returns:
        ``(B, H, N)`` one-hot rows, in ``usage``'s dtype.
    """
    return F.one_hot(_least_used_slots(usage, n_heads), usage.shape[-1]).to(usage.dtype)


def lrua_write_weights(gate_logit: Tensor, prev_read: Tensor, prev_least_used: Tensor) -> Tensor:
    """LRUA write weights: ``sigmoid(alpha) w^r_{t-1} + (1 - sigmoid(alpha)) w^lu_{t-1}``.

    The gate chooses between updating the slots read at the previous step (binding the
    label that arrives one step late to the sample stored there) and the least-used slots
    (storing something new).

    Args:
        gate_logit: ``(B, H, 1)`` ``alpha`` of each head.
        prev_read: ``(B, H, N)`` read weights of the previous step, ``w^r_{t-1}``.
        prev_least_used: ``w^lu_{t-1}``: ``(B, N)`` shared by the heads (:func:`least_used`) or
            ``(B, H, N)``, a row per head (:func:`least_used_per_head`).

    Returns:
        ``(B, H, N)`` write weights.
    """
    gate = torch.sigmoid(gate_logit)
    if prev_least_used.dim() == 2:
        prev_least_used = prev_least_used.unsqueeze(1)
    return gate * prev_read + (1.0 - gate) * prev_least_used


def write(memory: Tensor, write_weights: Tensor, keys: Tensor, prev_usage: Tensor) -> Tensor:
    """Zero the least-used slot, then add every head's key: ``M_t = M'_{t-1} + sum_h w^w_h (x) k_h``.

    The slot zeroed is the single one of smallest previous usage (``argmin w^u_{t-1}``), as in
    the paper, not the whole least-used set.

    Args:
        memory: ``(B, N, W)`` ``M_{t-1}``.
        write_weights: ``(B, H, N)``.
        keys: ``(B, H, W)``.
        prev_usage: ``(B, N)`` ``w^u_{t-1}``.

    Returns:
        ``(B, N, W)`` ``M_t``.
    """
    erased = F.one_hot(prev_usage.detach().argmin(dim=-1), memory.shape[1]).to(memory.dtype)  # (B, N)
    return memory * (1.0 - erased).unsqueeze(-1) + write_weights.transpose(1, 2) @ keys


def update_usage(usage: Tensor, read_weights: Tensor, write_weights: Tensor, gamma: float) -> Tensor:
    """Eq. (5) summed over heads: ``w^u_t = gamma w^u_{t-1} + sum_h w^r_h + sum_h w^w_h``.

    Args:
        usage: ``(B, N)`` ``w^u_{t-1}``.
        read_weights: ``(B, H, N)`` ``w^r_t``.
        write_weights: ``(B, H, N)`` ``w^w_t``.
        gamma: decay in ``[0, 1]``.

    Returns:
        ``(B, N)`` ``w^u_t``.
    """
    return gamma * usage + read_weights.sum(dim=1) + write_weights.sum(dim=1)
