"""2x2 max-pooling that keeps only the argmax indices for its backward pass.

``F.max_pool2d`` records ``max_pool2d_with_indices``, whose backward formula keeps the pool's
whole input alive until the backward pass, although the gradient kernel reads only its shape
and memory layout: the values are never looked at, the gradient is scattered by the indices.
In Conv4's first block that input is the largest tensor of the step (the convolution's
full-resolution output, four times the pooled map). :func:`max_pool2x2` keeps the indices and
the input's shape and layout instead, and hands the gradient kernel an uninitialised tensor of
that shape and layout (never written, so its pages are never touched). The backward pass is the same kernel, and is
itself differentiable (its double backward is PyTorch's), so second-order MAML runs through it.
Equal to ``F.max_pool2d(x, 2)`` in value and in first and second derivatives, also under
``torch.func.vmap`` (tested in float64).
"""

from __future__ import annotations

import torch
from torch import Tensor

from metalab.nn.batchnorm import is_channels_last

_WINDOW = [2, 2]


def max_pool2x2(x: Tensor) -> Tensor:
    """``F.max_pool2d(x, 2)`` for ``x`` ``(N, C, H, W)`` whose backward pass keeps only the indices."""
    return _MaxPool2x2.apply(x)[0]


class _MaxPool2x2(torch.autograd.Function):
    generate_vmap_rule = True  # runs under torch.func.vmap too (forward and backward are batched aten ops)

    @staticmethod
    def forward(x: Tensor) -> tuple[Tensor, Tensor]:
        return torch.ops.aten.max_pool2d_with_indices(x, _WINDOW, _WINDOW)

    @staticmethod
    def setup_context(ctx, inputs: tuple[Tensor], output: tuple[Tensor, Tensor]) -> None:
        (x,), (_, indices) = inputs, output
        ctx.save_for_backward(indices)
        ctx.shape, ctx.layout = x.shape, torch.channels_last if is_channels_last(x) else torch.contiguous_format
        ctx.mark_non_differentiable(indices)

    @staticmethod
    def backward(ctx, grad: Tensor, _: Tensor) -> Tensor:
        (indices,) = ctx.saved_tensors
        like = torch.empty(ctx.shape, dtype=grad.dtype, device=grad.device, memory_format=ctx.layout)
        return torch.ops.aten.max_pool2d_with_indices_backward(grad, like, _WINDOW, _WINDOW, [0, 0], [1, 1], False,
                                                               indices)
