"""2x2 max-pool of a convolution written as patches times filters, computed a few images at a time.

Conv4's first block convolves 1-3 channels as a matrix product of 3x3 patch rows by the
filters (:func:`metalab.nn.backbones.conv3x3_few_channels`) and max-pools the result. Written
as two operations, the product's full-resolution map (four times the pooled one: 15 MB for a
5-way 15-query set of 28x28 images) exists at once, ``F.max_pool2d`` keeps it alive for the
backward pass, and the backward pass builds its gradient at full resolution too (zeroed, then
scattered to by the indices) before the product's gradient reads it. :func:`pooled_product`
does both directions a chunk of images at a time, so the full-resolution map and its gradient
only ever exist a chunk at a time (small enough for a core's cache), and keeps nothing for the
backward pass but its inputs and the pool's indices.

Its backward pass is made of differentiable operations (the pool's gradient kernel and matrix
products), so second-order MAML differentiates through it, and it runs under
``torch.func.vmap`` (tested in float64 against the two operations written out).
"""

from __future__ import annotations

import torch
from torch import Tensor

_WINDOW = [2, 2]


def pooled_product(cols: Tensor, operand: Tensor, size: tuple[int, int, int], images: int) -> Tensor:
    """``F.max_pool2d(map, 2)`` of ``map = (cols @ operand)`` viewed as ``(N, C, H, W)`` channels-last.

    Args:
        cols: ``(N * H * W, K)`` rows, image by image, position by position (e.g. 3x3 patches).
        operand: ``(K, C)``, e.g. the filters transposed.
        size: ``(N, H, W)``.
        images: how many images each chunk holds (at least 1; the last chunk may hold fewer).

    Returns the pooled map ``(N, C, H // 2, W // 2)``, channels-last. Differentiable to any order in
    ``cols`` and ``operand``.
    """
    n, h, w = size
    if cols.shape[0] != n * h * w:
        raise ValueError(f"pooled_product: {cols.shape[0]} rows of cols for size {tuple(size)}")
    if images < 1:
        raise ValueError(f"pooled_product: images must be at least 1, got {images}")
    return _PooledProduct.apply(cols, operand, tuple(size), images)[0]


class _PooledProduct(torch.autograd.Function):
    generate_vmap_rule = True  # forward and backward are batched aten ops

    @staticmethod
    def forward(cols: Tensor, operand: Tensor, size: tuple[int, int, int], images: int) -> tuple[Tensor, ...]:
        _, h, w = size
        pooled, indices = [], []
        for chunk in cols.split(images * h * w):
            full = (chunk @ operand).view(-1, h, w, operand.shape[-1]).permute(0, 3, 1, 2)
            p, i = torch.ops.aten.max_pool2d_with_indices(full, _WINDOW, _WINDOW)
            pooled.append(p)
            indices.append(i)
        # each chunk's indices an output of its own (kept for the backward pass, which reads them chunk by chunk):
        # no copy of them all into one tensor
        return (pooled[0] if len(pooled) == 1 else torch.cat(pooled)), *indices

    @staticmethod
    def setup_context(ctx, inputs: tuple, output: tuple[Tensor, ...]) -> None:
        cols, operand, size, images = inputs
        ctx.save_for_backward(cols, operand, *output[1:])
        ctx.size, ctx.images = size, images
        ctx.mark_non_differentiable(*output[1:])
        ctx.set_materialize_grads(False)  # no zeros for the indices' (never used) gradients

    @staticmethod
    def backward(ctx, grad: Tensor, *_: Tensor) -> tuple[Tensor | None, Tensor | None, None, None]:
        cols, operand, *indices = ctx.saved_tensors
        if grad is None:
            return None, None, None, None
        _, h, w = ctx.size
        channels, rows = operand.shape[-1], ctx.images * h * w
        # the products in the forward pass's precision (under autocast, bfloat16 of float32 inputs), as autocast's
        # own product differentiates; each chunk's gradient back in its input's dtype before they are summed
        low = grad.dtype
        low_operand = operand.to(low)
        grad_cols, grad_operand = [], None
        for chunk, g, i in zip(cols.split(rows), grad.split(ctx.images), indices, strict=True):
            # the pool's gradient kernel reads only the shape and layout of the pool's input: an uninitialised one
            like = torch.empty((g.shape[0], channels, h, w), dtype=low, device=g.device,
                               memory_format=torch.channels_last)
            full = torch.ops.aten.max_pool2d_with_indices_backward(g, like, _WINDOW, _WINDOW, [0, 0], [1, 1], False, i)
            full = full.permute(0, 2, 3, 1).reshape(-1, channels)  # a view of the channels-last gradient
            if ctx.needs_input_grad[0]:
                grad_cols.append((full @ low_operand.t()).to(cols.dtype))
            if ctx.needs_input_grad[1]:
                part = (chunk.to(low).t() @ full).to(operand.dtype)
                grad_operand = part if grad_operand is None else grad_operand + part
        grad_cols = (grad_cols[0] if len(grad_cols) == 1 else torch.cat(grad_cols)) if grad_cols else None
        return grad_cols, grad_operand, None, None
