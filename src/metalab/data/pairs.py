"""Balanced same/different pairs for verification training (Siamese networks)."""

from __future__ import annotations

import torch
from torch import Tensor

from metalab.utils.errors import MetalabError


def balanced_pairs(labels: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
    """Two pairs per example: one with another example of its class, one with an example of another class.

    The partners are drawn uniformly (with ``generator``, so the pairs are reproducible);
    exactly half of the pairs are "same", whatever the class sizes.

    Args:
        labels: ``(n,)`` integer labels; every class needs at least two examples and
            there must be at least two classes.
        generator: the random stream (a CPU generator: the pairs are drawn on the CPU and
            returned on ``labels``' device, so they are the same on every device).

    Returns:
        ``left, right`` ``(2n,)`` indices into ``labels`` and ``same`` ``(2n,)`` floats,
        1.0 for the first ``n`` pairs (same class) and 0.0 for the last ``n``.
    """
    device = labels.device
    labels = labels.flatten().cpu()  # the generator is a CPU stream: draw there, whatever the labels' device
    n = labels.numel()
    same_class = labels[:, None] == labels[None, :]
    positive = same_class & ~torch.eye(n, dtype=torch.bool, device="cpu")
    if not positive.any(dim=1).all():
        raise MetalabError("balanced_pairs needs at least two examples of every class (use k_shot + n_query >= 2)")
    if not (~same_class).any(dim=1).all():
        raise MetalabError("balanced_pairs needs at least two classes (n_way >= 2)")
    partner = torch.multinomial(positive.float(), 1, generator=generator).squeeze(1)
    stranger = torch.multinomial((~same_class).float(), 1, generator=generator).squeeze(1)
    index = torch.arange(n, device="cpu")
    left = torch.cat([index, index])
    right = torch.cat([partner, stranger])
    same = torch.cat([torch.ones(n, device="cpu"), torch.zeros(n, device="cpu")])
    return left.to(device), right.to(device), same.to(device)
