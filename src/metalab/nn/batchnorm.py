"""Batch normalisation that is exact under ``torch.func.vmap`` when asked to be.

Under ``torch.func.vmap`` the built-in batch-norm kernel gives wrong second-order
meta-gradients, while ``var_mean`` + arithmetic differentiates exactly to any order. The
built-in kernel is exact outside vmap (checked against finite differences in the tests)
and faster on CPU, so ``vmap_safe`` selects the basic-ops version only for learners that
are run under vmap.

Adaptation behaviour (explicit, as in the MAML reference code): with
``track_running_stats=False`` every forward pass normalises with the statistics of the
batch it is given, in training and in evaluation alike, so an adapted learner uses the
per-task statistics of its support set while adapting and of its query set when
predicting. With ``track_running_stats=True`` (metric methods) training uses batch
statistics and updates running averages, and evaluation mode uses the running averages.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def batch_statistics_norm(x: Tensor, weight: Tensor, bias: Tensor, eps: float) -> Tensor:
    """Batch norm of ``x`` ``(N, C, *)`` with its own statistics (no running averages).

    ``F.batch_norm`` for channels-first inputs; for channels-last ones two column means of the (N*H*W, C) view and
    element-wise arithmetic: PyTorch's channels-last CPU kernel computes the statistics with
    far less float32 precision (``python benchmarks/bn_precision.py``, records in
    ``benchmarks/results/numerics.jsonl``): on the same meta-batches of the throughput table's
    one-step rows it put channels-last MAML meta-gradients 3.8e-4..1.2e-2 (relative) from
    float64, the channels-first ones 8.3e-6..1.5e-4 (``grad_rel_err_float32`` of commit
    df3c604's records in ``benchmarks/results/throughput*.jsonl``).
    """
    if not is_channels_last(x):
        return F.batch_norm(x, None, None, weight, bias, True, 0.0, eps)
    return _channels_last_norm(x, weight, bias, eps)[0]


def is_channels_last(x: Tensor) -> bool:
    """Whether ``x`` ``(N, C, *)`` is laid out channels-last (and not also contiguous, as with one channel)."""
    return x.dim() >= 3 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)


def _channels_last_norm(x: Tensor, weight: Tensor, bias: Tensor, eps: float,
                        groups: int = 1) -> tuple[Tensor, Tensor, Tensor]:
    """Batch statistics norm of a channels-last ``x`` ``(N, C, *)`` as a ``(N * prod(*), C)`` matrix view;
    returns the output (channels-last) and the batch's mean and biased variance ``(C,)``. With
    ``groups``, each block of ``N / groups`` consecutive rows is normalised with its own statistics,
    returned as ``(groups, C)``.

    Two passes, mean then centred squares, each a column mean of a contiguous matrix: at float32
    rounding like ``torch.var_mean`` (relative error 2.2e-7 vs 9.6e-8 on Omniglot first-block
    activations) and faster than it on channels-last tensors (it reduces over non-adjacent dims):
    forward and backward of a (75, 64, 14, 14) map on one thread 7.3 ms against 15.4 ms (``python
    benchmarks/bn_precision.py``, ``numerics`` records of commit 5c0769a); the centred matrix is reused for the output. A bfloat16 or
    float16 ``x`` (a convolution's output under ``torch.autocast``) is normalised in float32: the
    statistics, the output and the running averages they move are float32.
    """
    rows = x.movedim(1, -1)  # (N, *, C): a contiguous view of channels-last memory
    centred, mean, var = _centred_columns(rows, groups)
    out = centred * (torch.rsqrt(var + eps) * weight) + bias
    shape = (x.shape[1],) if groups == 1 else (groups, x.shape[1])
    return out.view(rows.shape).movedim(-1, 1), mean.view(shape), var.view(shape)


def channels_last_statistics(x: Tensor) -> tuple[Tensor, Tensor]:
    """The mean and biased variance ``(C,)`` of a channels-last ``x`` ``(N, C, *)`` over every dim but ``C``,
    computed as :func:`batch_statistics_norm` computes them (float32 for a bfloat16 or float16 ``x``).

    Differentiated by :class:`_ColumnStatistics`: two passes over ``x`` backward, where autograd through the
    two-pass forward makes several and keeps the centred copy of ``x`` alive for them.
    """
    rows = x.movedim(1, -1)
    return _ColumnStatistics.apply(_at_least_float32(rows.reshape(-1, rows.shape[-1])))


class _ColumnStatistics(torch.autograd.Function):
    """The column means and biased variances ``(C,)`` of a ``(rows, C)`` matrix (two passes: means, then mean
    centred squares, as :func:`_centred_columns`).

    The gradient is ``(g_mean + 2 g_var (x - mean)) / rows``, made of differentiable operations on the saved matrix
    and mean (an output, so second order differentiates through it): any order, tested against finite differences
    in float64 (gradcheck and gradgradcheck).
    """

    generate_vmap_rule = True  # forward and backward are batched aten ops

    @staticmethod
    def forward(matrix: Tensor) -> tuple[Tensor, Tensor]:
        _, mean, var = _centred_columns(matrix, 1)
        return mean.view(-1), var.view(-1)

    @staticmethod
    def setup_context(ctx, inputs: tuple[Tensor], output: tuple[Tensor, Tensor]) -> None:
        ctx.save_for_backward(inputs[0], output[0])

    @staticmethod
    def backward(ctx, grad_mean: Tensor, grad_var: Tensor) -> Tensor:
        matrix, mean = ctx.saved_tensors
        rows = matrix.shape[0]
        return torch.addcmul(grad_mean / rows, matrix - mean, grad_var * (2 / rows))


def _centred_columns(rows: Tensor, groups: int) -> tuple[Tensor, Tensor, Tensor]:
    """``rows`` ``(N, *, C)`` as ``(groups, rows per group, C)`` minus its column means, the column means and the
    mean centred squares (``(groups, 1, C)``); in float32 for bfloat16 / float16 ``rows`` (autocast)."""
    matrix = _at_least_float32(rows.reshape(groups, -1, rows.shape[-1]))
    mean = matrix.mean(1, keepdim=True)
    centred = matrix - mean
    return centred, mean, (centred * centred).mean(1, keepdim=True)


def _at_least_float32(x: Tensor) -> Tensor:
    """``x`` in float32 where it is bfloat16 or float16 (a convolution's output under autocast: normalised in
    float32), else ``x`` itself."""
    return x.float() if x.element_size() < 4 else x


def grouped_batch_statistics_norm(x: Tensor, groups: int, weight: Tensor, bias: Tensor, eps: float) -> Tensor:
    """Batch norm of ``x`` ``(groups * N, C, *)`` with the statistics of each block of ``N`` consecutive rows.

    The same as :func:`batch_statistics_norm` of every block on its own, concatenated: the
    tasks of a meta-batch pass through shared weights in one call and each is normalised
    with its own statistics, as it would be alone (channels-last: two column means per block
    as in :func:`batch_statistics_norm`; otherwise ``var_mean`` and element-wise arithmetic).
    """
    if is_channels_last(x):
        return _channels_last_norm(x, weight, bias, eps, groups)[0]
    blocks = x.unflatten(0, (groups, -1))
    var, mean = torch.var_mean(blocks, dim=[1, *range(3, blocks.dim())], keepdim=True, correction=0)
    shape = (1, 1, -1) + (1,) * (x.dim() - 2)
    return ((blocks - mean) * (torch.rsqrt(var + eps) * weight.view(shape)) + bias.view(shape)).flatten(0, 1)


def _normalise(x: Tensor, var: Tensor, mean: Tensor, weight: Tensor, bias: Tensor, eps: float) -> Tensor:
    shape = (1, -1) + (1,) * (x.dim() - 2)
    scale = torch.rsqrt(var + eps) * weight
    return (x - mean.view(shape)) * scale.view(shape) + bias.view(shape)


class BatchNorm(nn.Module):
    """Normalises over every dim but the channel dim 1; input ``(N, C, *)``."""

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float = 0.1,
        track_running_stats: bool = False,
        vmap_safe: bool = False,
    ):
        super().__init__()
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.track_running_stats, self.vmap_safe = track_running_stats, vmap_safe
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        if track_running_stats:
            self.register_buffer("running_mean", torch.zeros(num_features))
            self.register_buffer("running_var", torch.ones(num_features))

    def forward(self, x: Tensor) -> Tensor:
        return self.functional(x, self.weight, self.bias)

    def functional(self, x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
        """Batch norm with the given affine parameters (running statistics are this module's)."""
        if not self.vmap_safe:
            if not self.track_running_stats:
                return batch_statistics_norm(x, weight, bias, self.eps)
            if self.training and is_channels_last(x):  # the kernel's channels-last statistics are imprecise (above)
                out, mean, var = _channels_last_norm(x, weight, bias, self.eps)
                self.update_running_stats(mean, var, x.numel() // x.shape[1])
                return out
            return F.batch_norm(x, self.running_mean, self.running_var, weight, bias, self.training, self.momentum,
                                self.eps)
        dims = [0] + list(range(2, x.dim()))
        if self.training or not self.track_running_stats:
            var, mean = torch.var_mean(x, dim=dims, correction=0)
            if self.training and self.track_running_stats:
                self.update_running_stats(mean, var, x.numel() // x.shape[1])
        else:
            var, mean = self.running_var, self.running_mean
        return _normalise(x, var, mean, weight, bias, self.eps)

    def update_running_stats(self, mean: Tensor, var: Tensor, n: int) -> None:
        """Moves the running averages towards a batch's ``mean`` and biased ``var`` over ``n`` values
        per channel (the variance unbiased first, as ``F.batch_norm`` does)."""
        with torch.no_grad():
            self.running_mean.lerp_(mean.detach(), self.momentum)
            self.running_var.lerp_(var.detach() * n / max(n - 1, 1), self.momentum)

    def extra_repr(self) -> str:
        return (f"{self.num_features}, eps={self.eps}, track_running_stats={self.track_running_stats}, "
                f"vmap_safe={self.vmap_safe}")
