"""Backbones of the MAML and Prototypical Networks papers."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from metalab.nn.batchnorm import BatchNorm


class ChannelsLast(nn.Module):
    """Lays images out channels-last, the fast memory format of CPU convolutions (when ``enabled``)."""

    def __init__(self, enabled: bool = True):
        super().__init__()
        self.enabled = enabled

    def forward(self, x: Tensor) -> Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.enabled else x


def conv_block(in_channels: int, out_channels: int, track_running_stats: bool, vmap_safe: bool) -> nn.Sequential:
    """conv 3x3 (padding 1) -> batch norm -> ReLU -> 2x2 max-pool."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1),
        BatchNorm(out_channels, track_running_stats=track_running_stats, vmap_safe=vmap_safe),
        nn.ReLU(),
        nn.MaxPool2d(2),
    )


class Conv4(nn.Module):
    """Four conv blocks of ``hidden`` channels, flattened (``body``), then an optional linear ``head``.

    On 28x28 Omniglot the spatial size goes 28 -> 14 -> 7 -> 3 -> 1, so the embedding has
    ``hidden`` (64) features.

    Args:
        in_channels: image channels (1 for Omniglot).
        image_size: input height and width.
        hidden: channels of every block.
        out_features: size of the linear head; ``None`` returns the embedding.
        track_running_stats, vmap_safe: see :class:`metalab.nn.BatchNorm`.

    Shapes: ``(N, in_channels, H, W) -> (N, out_features or embedding)``.

    References: Finn et al. 2017 (MAML), section 5.2; Snell et al. 2017, section 3.
    """

    def __init__(
        self,
        in_channels: int = 1,
        image_size: int = 28,
        hidden: int = 64,
        out_features: int | None = None,
        track_running_stats: bool = False,
        vmap_safe: bool = False,
    ):
        super().__init__()
        self.vmap_safe = vmap_safe
        self.body = nn.Sequential(
            ChannelsLast(enabled=not vmap_safe),
            conv_block(in_channels, hidden, track_running_stats, vmap_safe),
            *(conv_block(hidden, hidden, track_running_stats, vmap_safe) for _ in range(3)),
            nn.Flatten(),
        )
        side = image_size
        for _ in range(4):
            side //= 2
        if side < 1:
            raise ValueError(f"Conv4 needs images of at least 16x16, got {image_size}x{image_size}")
        self.embedding_dim = hidden * side * side
        self.head = nn.Linear(self.embedding_dim, out_features) if out_features is not None else None

    def forward(self, x: Tensor) -> Tensor:
        z = self.body(x)
        return self.head(z) if self.head is not None else z


class MLP(nn.Module):
    """Fully connected ReLU network; ``sizes=(1, 40, 40, 1)`` is MAML's sinusoid regressor.

    ``body`` holds every layer but the last (with its ReLU), ``head`` the last linear layer.

    Shapes: ``(N, sizes[0]) -> (N, sizes[-1])``.
    """

    def __init__(self, sizes: Sequence[int] = (1, 40, 40, 1)):
        super().__init__()
        if len(sizes) < 2:
            raise ValueError(f"an MLP needs at least input and output sizes, got {tuple(sizes)}")
        layers: list[nn.Module] = []
        for a, b in zip(sizes[:-2], sizes[1:-1]):
            layers += [nn.Linear(a, b), nn.ReLU()]
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(sizes[-2], sizes[-1])

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))
