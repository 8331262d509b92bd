"""Per-sample image jitter: a small random rotation and shift of every image, drawn from a seeded generator.

Santoro et al. (2016, "One-shot Learning with Memory-Augmented Neural Networks", ICML)
augment Omniglot by translating and rotating the character images besides the 90/180/270
degree rotations that make new classes; the paper gives no magnitudes, so they are the
caller's (:class:`~metalab.data.benchmarks.BenchmarkConfig` ``jitter_degrees`` and
``jitter_pixels``, applied to the training episodes of ``omniglot-online``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from metalab.utils.errors import MetalabError


@dataclass(frozen=True)
class Jitter:
    """Rotate each image about its centre by ``U(-degrees, degrees)`` and shift it by ``U(-pixels, pixels)`` per axis.

    Bilinear resampling with zeros outside the image (Omniglot's background is 0 here).
    ``Jitter(0, 0)`` returns the images unchanged.
    """

    degrees: float
    pixels: float

    def __post_init__(self) -> None:
        for name in ("degrees", "pixels"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < math.inf:
                raise MetalabError(f"jitter {name} must be a finite number >= 0, got {value!r}")
        if self.degrees > 180:
            raise MetalabError(f"jitter degrees must be at most 180 (a half turn either way), got {self.degrees}")

    def __bool__(self) -> bool:
        return self.degrees > 0 or self.pixels > 0

    def __call__(self, images: Tensor, generator: torch.Generator) -> Tensor:
        """``images`` ``(N, C, H, W)`` uint8 or float, each jittered; same shape and dtype.

        Draws ``3 N`` numbers from ``generator`` (angle, then the two shifts, per image)
        whatever the magnitudes, so a stream's later draws do not depend on them.
        """
        if images.dim() != 4:
            raise MetalabError(f"jitter takes images of shape (N, C, H, W), got {tuple(images.shape)}")
        u = torch.rand(images.shape[0], 3, generator=generator, dtype=torch.float64) * 2 - 1
        if not self:
            return images
        return shift_rotate(images, u[:, 0] * self.degrees, u[:, 1] * self.pixels, u[:, 2] * self.pixels)


def shift_rotate(images: Tensor, degrees: Tensor, dx: Tensor, dy: Tensor) -> Tensor:
    """Each image rotated counter-clockwise by ``degrees`` about its centre, then moved ``dx`` right and ``dy`` down.

    ``degrees``, ``dx``, ``dy``: ``(N,)``, shifts in pixels. Bilinear, zeros outside; a
    uint8 input is rounded back to uint8. Exact for a zero angle and integer shifts.
    """
    h, w = images.shape[-2:]
    a = torch.deg2rad(degrees.double())
    cos, sin = torch.cos(a), torch.sin(a)
    # affine_grid maps each output pixel to where it samples the input, in coordinates that run
    # from -1 to 1 across the image: the inverse of "rotate by a, then move by (dx, dy)"
    tx, ty = 2 * dx.double() / w, 2 * dy.double() / h
    a00, a01, a10, a11 = cos, -sin * h / w, sin * w / h, cos  # the inverse rotation, in those coordinates
    theta = torch.stack([
        torch.stack([a00, a01, -(a00 * tx + a01 * ty)], dim=1),
        torch.stack([a10, a11, -(a10 * tx + a11 * ty)], dim=1),
    ], dim=1)
    x = images.double()
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    if images.dtype == torch.uint8:
        return out.round().clamp(0, 255).to(torch.uint8)
    return out.to(images.dtype)
