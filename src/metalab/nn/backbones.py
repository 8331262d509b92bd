"""Backbones of the MAML and Prototypical Networks papers."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metalab._types import Params
from metalab.nn.batchnorm import (BatchNorm, batch_statistics_norm, channels_last_statistics,
                                  grouped_batch_statistics_norm)
from metalab.nn.pooling import pooled_product


DOWNSAMPLE = ("pool", "stride")
READOUT = ("flatten", "mean")


class SpatialMean(nn.Module):
    """``(N, C, H, W) -> (N, C)``: the mean over positions (global average pooling)."""

    def forward(self, x: Tensor) -> Tensor:
        return x.mean((2, 3))


class ChannelsLast(nn.Module):
    """Lays images out channels-last, the fast memory format of CPU convolutions (when ``enabled``)."""

    def __init__(self, enabled: bool = True):
        super().__init__()
        self.enabled = enabled

    def forward(self, x: Tensor) -> Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.enabled else x


def conv3x3_few_channels(x: Tensor, weight: Tensor, bias: Tensor, stride: int = 1) -> Tensor:
    """3x3 convolution (padding 1, ``stride``) as im2col + one matrix product, output channels-last.

    For 1-3 input channels oneDNN's convolution runs at under 10 GFLOP/s on CPU and
    returns a channels-first tensor (a 1-channel input is both layouts at once), which
    makes every later layer slow; the matrix product is several times faster and its
    output is laid out ``(N, H, W, C)``. Same result as ``F.conv2d(x, weight, bias,
    stride=stride, padding=1)`` up to float rounding (tested).
    """
    cols, size = _patches(x, stride)
    return _conv_of_patches(cols, weight.reshape(weight.shape[0], -1), bias, size)


def _patches(x: Tensor, stride: int = 1) -> tuple[Tensor, tuple[int, int, int]]:
    """The 3x3 patches (padding 1) of ``x`` as rows ``(N * H' * W', C * 9)``, and ``(N, H', W')``.

    The rows of ``F.unfold(x, 3, padding=1, stride=stride)``, columns in its order (channel, kernel row, kernel
    column), built as nine shifted views of the padded image stacked last: written once, in their final layout,
    where unfold writes ``(N, C * 9, H' * W')`` and the rows need a transposing copy of that (equal bit for bit,
    tested).
    """
    n, c, h, w = x.shape
    h, w = (h - 1) // stride + 1, (w - 1) // stride + 1
    padded = F.pad(x, (1, 1, 1, 1)).permute(0, 2, 3, 1)  # (N, H + 2, W + 2, C)
    span_h, span_w = stride * (h - 1) + 1, stride * (w - 1) + 1
    shifted = [padded[:, i:i + span_h:stride, j:j + span_w:stride] for i in range(3) for j in range(3)]
    return torch.stack(shifted, -1).reshape(n * h * w, c * 9), (n, h, w)


def _conv_of_patches(cols: Tensor, filters: Tensor, bias: Tensor | None, size: tuple[int, int, int]) -> Tensor:
    """The convolution of :func:`_patches` rows by ``filters`` ``(out, C * 9)`` plus ``bias`` (none if ``None``), as
    ``(N, out, H', W')`` channels-last."""
    # a contiguous (c*9, out) operand: its gradient is then cols^T @ grad, the fast form of
    # a product with a long inner dimension (the transposed form is several times slower)
    operand = filters.t().contiguous()
    product = cols @ operand if bias is None else torch.addmm(bias, cols, operand)
    return product.view(*size, -1).permute(0, 3, 1, 2)


def first_block(x: Tensor, weight: Tensor, bias: Tensor, norm_weight: Tensor, norm_bias: Tensor, eps: float,
                statistics: tuple[Tensor, Tensor] | None = None, groups: int = 1,
                chunk_bytes: int | None = None) -> tuple[Tensor, tuple[Tensor, Tensor]]:
    """conv 3x3 (padding 1) -> batch norm -> 2x2 max-pool -> ReLU, for 1-3 input channels.

    Batch norm normalises with ``statistics`` ``(mean, var)`` per channel when given (running
    averages, in evaluation), else with the batch's own. Returns the output and the batch's
    ``(mean, var)`` (biased variance; ``statistics`` when given). With ``groups`` (batch
    statistics only) each of ``groups`` equal blocks of consecutive images is normalised with
    its own statistics, returned as ``(groups, channels)``: the tasks of a meta-batch through
    shared weights in one call, each as it would be alone (:meth:`ConvBlock.shared_tasks`). The same function as the
    block written out, computed so that nothing but the convolution's output and the
    max-pool's gradient exists at full resolution:

    - the convolution is im2col + one matrix product (as :func:`conv3x3_few_channels`),
      laid out channels-last, where max-pooling is several times faster; with batch
      statistics it convolves the centred patches (:func:`_centred_statistics`);
    - the batch statistics come in closed form from the ``c * 9`` patch values: mean
      ``W m + b`` and variance ``diag(W S W^T)``, with ``m`` and ``S`` the mean and
      covariance of the patches (a ``c*9`` square matrix), instead of passes over the
      full-resolution output forward and backward;
    - batch norm is, per channel, an affine map of slope ``gamma / sigma``, so it commutes
      with the max-pool where ``gamma >= 0``; for ``gamma < 0`` that channel's filter is
      negated (``max(-z)``) and its slope is ``|gamma| / sigma``. Pooling, normalising and
      the ReLU then run at a quarter of the positions. (At ``gamma = 0`` exactly the block is
      not differentiable in ``gamma``: the plain block pools a constant map and picks any
      element of a window; this takes the ``gamma > 0`` side.)
    - the convolution and max-pool run a chunk of whole images at a time, forward and backward, each
      chunk's full-resolution output at most ``chunk_bytes`` (default :data:`CHUNK_BYTES`;
      :func:`metalab.nn.pooling.pooled_product`): the full-resolution map and its gradient never exist
      for the whole batch at once, and the backward pass keeps only the patches and the pool's indices.
      A batch that fits in one chunk (a support set) runs as the product and ``F.max_pool2d``.

    Differentiable to any order in the parameters (not in ``x``: the first layer's input
    is data). Equal to the plain block in float64 to rounding (tested).
    """
    cols, size = _patches(x)
    filters = weight.reshape(weight.shape[0], -1)
    if groups != 1 and statistics is not None:
        raise ValueError("first_block: groups need batch statistics (statistics=None)")
    sign = _signs(norm_weight)
    # the product is sign * (W p) for patches p: sign * (z - bias) for raw patches, and for centred ones
    # sign * (z - mean), i.e. sign * (z - bias) with the bias standing for the mean
    if statistics is None:  # the batch's: convolve the centred patches, whose output has mean `bias`
        cols, statistics = _centred_statistics(cols, filters, bias, groups)
        offset = bias - bias  # zero, and so is the bias's gradient: batch norm subtracts it again
    else:
        offset = sign * (bias - statistics[0])
    pooled = _pooled_conv_of_patches(cols, filters * sign.unsqueeze(1), size, chunk_bytes or CHUNK_BYTES)
    return _norm_relu(pooled, sign, offset, statistics[1], norm_weight, norm_bias, eps, groups), statistics


#: the default ``chunk_bytes`` of :func:`first_block`: 10 images of 28x28x64 float32 output, a core's L2 cache
#: here (2 MB); measured in docs/speed_and_exactness.md ("The first block a chunk at a time")
CHUNK_BYTES = 2 * 2**20


def _pooled_conv_of_patches(cols: Tensor, filters: Tensor, size: tuple[int, int, int], chunk_bytes: int) -> Tensor:
    """2x2 max-pool of :func:`_conv_of_patches` (no bias), in chunks of whole images of at most ``chunk_bytes``
    of full-resolution output each (one image at least)."""
    n, h, w = size
    images = max(1, chunk_bytes // (h * w * filters.shape[0] * cols.element_size()))
    if images >= n:  # one chunk (a support set): the built-in operations, without pooled_product's Python overhead
        return F.max_pool2d(_conv_of_patches(cols, filters, None, size), 2)
    return pooled_product(cols, filters.t().contiguous(), size, images)


def _signs(gamma: Tensor) -> Tensor:
    """+1 / -1 per channel by the sign of batch norm's scale: piecewise constant, no gradient."""
    return torch.where(gamma >= 0, 1.0, -1.0).to(gamma.dtype)


def _norm_relu(pooled: Tensor, sign: Tensor, offset: Tensor, var: Tensor, gamma: Tensor, beta: Tensor, eps: float,
               groups: int = 1) -> Tensor:
    """ReLU(max-pool(batch norm of z)) from ``pooled`` = the 2x2 max-pool of ``sign * (z - bias)`` (channels flipped
    where ``gamma < 0``), with ``offset = sign * (bias - mean)``.

    Batch norm of z is ``slope * signed + shift`` with ``slope = |gamma| / sigma >= 0`` per channel, which commutes
    with the max-pool, so it runs on the pooled map; the offset joins the shift, ``beta + slope * offset``, instead
    of a pass over the full-resolution map. ``offset`` and ``var`` are ``(channels,)`` or, with ``groups`` equal
    blocks of images, ``(groups, channels)``. Few operations on the per-channel vectors: in second-order MAML each
    one is differentiated twice per task and inner step.
    """
    slope = gamma * sign * torch.rsqrt(var + eps)
    shift = torch.addcmul(beta, slope, offset)
    if groups == 1:
        return F.relu(torch.addcmul(shift.view(1, -1, 1, 1), pooled, slope.view(1, -1, 1, 1)))
    pooled = pooled.unflatten(0, (groups, -1))
    return F.relu(torch.addcmul(shift.view(groups, 1, -1, 1, 1), pooled, slope.view(groups, 1, -1, 1, 1)).flatten(0, 1))


def _centred_statistics(cols: Tensor, filters: Tensor, bias: Tensor,
                        groups: int = 1) -> tuple[Tensor, tuple[Tensor, Tensor]]:
    """The patch rows ``cols`` minus their mean, and the mean and biased variance per output channel of
    their convolution by ``filters`` and ``bias``; with ``groups``, of each of ``groups`` equal
    blocks of rows (centred by its own mean; statistics ``(groups, channels)``).

    Centring keeps the convolution's operands small. On real Omniglot tasks the closed form's
    float32 meta-gradient has a median error at or below the block as written's
    (tests/unit/test_maml.py; 7 of the 8 rows of benchmarks/meta_gradient_precision.py);
    single tasks' errors jump in every form, and in float64 nudged by one rounding: the
    meta-gradient has discontinuities there (max-pool and ReLU choices), not this computation.
    """
    # in float64: neighbouring pixels are strongly correlated, so for filters whose weights
    # nearly cancel, w S w^T is a small difference of large terms (in float32 that put MAML's
    # meta-gradient on Omniglot 2e-2 off float64; tests/unit/test_backbones.py, test_maml.py)
    wide_cols, wide_filters = cols.to(torch.float64).unflatten(0, (groups, -1)), filters.to(torch.float64)
    mean_cols = wide_cols.mean(1, keepdim=True)  # (groups, 1, c*9)
    centred = wide_cols - mean_cols
    covariance = centred.transpose(1, 2) @ centred / wide_cols.shape[1]  # (groups, c*9, c*9)
    mean = mean_cols.squeeze(1) @ wide_filters.t() + bias.to(torch.float64)
    var = ((wide_filters @ covariance) * wide_filters).sum(-1)
    shape = (-1,) if groups == 1 else (groups, -1)
    return centred.flatten(0, 1).to(cols.dtype), (mean.view(shape).to(cols.dtype), var.view(shape).to(cols.dtype))


def allow_closed_form(module: nn.Module, allowed: bool) -> int:
    """Set :attr:`ConvBlock.allow_closed_form` on every block in ``module``; returns how many.

    ``allow_closed_form(model, False)`` computes Conv4's blocks as written (``F.conv2d``, batch
    norm, pool, ReLU) instead of :func:`first_block` for the first and batch norm behind the pool
    for the others (:meth:`ConvBlock.norm_behind_pool`): the same function, slower, with other
    float32 rounding (benchmarks/meta_gradient_precision.py compares them).
    """
    blocks = [m for m in module.modules() if isinstance(m, ConvBlock)]
    for block in blocks:
        block.allow_closed_form = allowed
    return len(blocks)


def use_channels_last(module: nn.Module, enabled: bool) -> int:
    """Lay every Conv4 in ``module`` out channels-last (``enabled``) or channels-first; returns
    how many blocks were set.

    The layout of an existing model (same weights, same function; other float32 rounding and
    speed): what ``Conv4(channels_last=...)`` chooses at construction. Blocks built
    ``vmap_safe`` stay channels-first.
    """
    for m in module.modules():
        if isinstance(m, Conv4):
            m.body[0].enabled = enabled and not m.vmap_safe
    blocks = [m for m in module.modules() if isinstance(m, ConvBlock)]
    for block in blocks:
        block.channels_last = enabled and not block.norm.vmap_safe
    return len(blocks)


def sub_params(params: Params, prefix: str) -> Params:
    """The entries of ``params`` under ``prefix.``, with the prefix removed."""
    start = len(prefix) + 1
    return {name[start:]: p for name, p in params.items() if name.startswith(prefix + ".")}


class ConvBlock(nn.Module):
    """conv 3x3 (padding 1, ``stride`` 1 or 2) -> batch norm -> 2x2 max-pool (if ``pool``) -> ReLU.

    The paper's order is conv -> BN -> ReLU -> pool; ReLU and max-pool commute (both are
    monotone, element-wise vs. window max, and ties break the same way), so pooling first
    gives the same output and gradients with a quarter of the ReLU work. With
    ``channels_last`` the first convolution of few channels runs as im2col + matmul and
    the block keeps the channels-last layout (see :class:`Conv4`). A first block (1-3 input
    channels) that pools runs as :func:`first_block` (:meth:`closed_form`), in either layout
    and with batch or running statistics; a later channels-last block that pools normalises
    the pooled map (:meth:`norm_behind_pool`).
    """

    def __init__(self, in_channels: int, out_channels: int, track_running_stats: bool, vmap_safe: bool,
                 channels_last: bool = False, pool: bool = True, stride: int = 1):
        super().__init__()
        self.pool, self.stride = pool, stride
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, stride=stride)
        self.norm = BatchNorm(out_channels, track_running_stats=track_running_stats, vmap_safe=vmap_safe)
        self.channels_last = channels_last and not vmap_safe
        self.allow_closed_form = True  # False: compute the block as written (allow_closed_form() sets a whole model)

    def functional(self, params: Params, x: Tensor) -> Tensor:
        """The block with ``params`` (``conv.weight``, ``conv.bias``, ``norm.weight``, ``norm.bias``)."""
        if self.closed_form(x):
            norm = self.norm
            running = norm.track_running_stats and not norm.training
            out, (mean, var) = first_block(x, params["conv.weight"], params["conv.bias"], params["norm.weight"],
                                           params["norm.bias"], norm.eps,
                                           (norm.running_mean, norm.running_var) if running else None)
            if norm.track_running_stats and norm.training:
                norm.update_running_stats(mean, var, x.numel() // x.shape[1])
            return out if self.channels_last else out.contiguous()
        if self.norm_behind_pool(x):
            return self._norm_behind_pool(params, x)
        return self.after_conv(params, self._conv(params, x))

    def closed_form(self, x: Tensor) -> bool:
        """Whether :func:`first_block` computes this block on ``x``: few input channels,
        max-pooling, not ``vmap_safe`` (vmap gets the basic-ops batch norm) and
        ``allow_closed_form`` (True unless set otherwise)."""
        return (self.allow_closed_form and x.shape[1] <= 3 and self.pool and self.stride == 1
                and not self.norm.vmap_safe)

    def norm_behind_pool(self, x: Tensor) -> bool:
        """Whether :meth:`functional` pools before batch norm on ``x``: a later block (more than 3 input
        channels) that max-pools, channels-last, not ``vmap_safe``, ``allow_closed_form``."""
        return (self.allow_closed_form and x.shape[1] > 3 and self.pool and self.channels_last
                and not self.norm.vmap_safe)

    def _norm_behind_pool(self, params: Params, x: Tensor) -> Tensor:
        """The block with batch norm moved behind the max-pool, as :func:`first_block` does.

        Batch norm is, per channel, the affine map ``z -> slope * z + shift``; where ``gamma < 0``
        the channel's filter is negated, so every slope is ``|gamma| / sigma >= 0`` and the map
        commutes with the max-pool. Only the convolution, its statistics (two column means of the
        channels-last output, as :func:`~metalab.nn.batchnorm.batch_statistics_norm`) and the
        pool's gradient run at full resolution; the normalisation and its gradient run on the
        pooled map, a quarter of the positions. With batch statistics the convolution's bias
        cancels (exactly zero gradient); the running averages move with the batch's statistics
        of the block as written; evaluation normalises with them.
        """
        norm, bias, gamma = self.norm, params["conv.bias"], params["norm.weight"]
        sign = _signs(gamma)
        signed = F.conv2d(x, params["conv.weight"] * sign.view(-1, 1, 1, 1), None, padding=1)  # sign * (z - bias)
        if norm.track_running_stats and not norm.training:
            var = norm.running_var
            offset = sign * (bias - norm.running_mean)
        else:
            signed_mean, var = channels_last_statistics(signed)  # signed_mean = sign * (mean - bias)
            offset = (bias - bias) - signed_mean  # the bias cancels, its gradient exactly zero
            if norm.track_running_stats:
                norm.update_running_stats(sign * signed_mean + bias, var, signed.numel() // signed.shape[1])
        return _norm_relu(F.max_pool2d(signed, 2), sign, offset, var, gamma, params["norm.bias"], norm.eps)

    def _conv(self, params: Params, x: Tensor) -> Tensor:
        weight, bias = params["conv.weight"], params["conv.bias"]
        if self.channels_last and x.shape[1] <= 3:
            return conv3x3_few_channels(x, weight, bias, self.stride)
        return F.conv2d(x, weight, bias, stride=self.stride, padding=1)

    def after_conv(self, params: Params, x: Tensor) -> Tensor:
        """The rest of the block on the convolution's output ``x``: batch norm, pool, ReLU."""
        return self._pool_relu(self.norm.functional(x, params["norm.weight"], params["norm.bias"]))

    def _pool_relu(self, x: Tensor) -> Tensor:
        return F.relu(F.max_pool2d(x, 2) if self.pool else x)

    def _needs_batch_statistics(self, what: str) -> None:
        if self.norm.track_running_stats:
            raise ValueError(f"{what} needs batch norm with batch statistics (track_running_stats=False)")

    def shared_tasks(self, x: Tensor, tasks: int) -> Tensor:
        """The block with its own parameters on ``tasks`` equal blocks of rows of ``x``, each normalised alone.

        ``x`` is ``(tasks * N, C, H, W)``: one convolution over all rows, batch norm with
        each block's statistics (:func:`~metalab.nn.batchnorm.grouped_batch_statistics_norm`).
        """
        self._needs_batch_statistics("shared_tasks")
        params = dict(self.named_parameters())
        if self.closed_form(x):
            out = first_block(x, params["conv.weight"], params["conv.bias"], params["norm.weight"],
                              params["norm.bias"], self.norm.eps, groups=tasks)[0]
            return out if self.channels_last else out.contiguous()
        x = grouped_batch_statistics_norm(self._conv(params, x), tasks, params["norm.weight"], params["norm.bias"],
                                          self.norm.eps)
        return self._pool_relu(x)

    def functional_tasks(self, params: Params, x: Tensor, tasks: int) -> Tensor:
        """The block for ``tasks`` tasks at once, each with its own parameters.

        ``params`` have a leading task dim; ``x`` is ``(N, tasks * C, H, W)`` with task
        ``t``'s channels at ``t*C:(t+1)*C``. The convolution is grouped by task and batch
        norm over the ``tasks * C`` channels is batch norm per task and channel.
        """
        self._needs_batch_statistics("functional_tasks")
        weight = params["conv.weight"]
        x = F.conv2d(x, weight.reshape(-1, *weight.shape[2:]), params["conv.bias"].reshape(-1), stride=self.stride,
                     padding=1, groups=tasks)
        x = batch_statistics_norm(x, params["norm.weight"].reshape(-1), params["norm.bias"].reshape(-1), self.norm.eps)
        return self._pool_relu(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.functional(dict(self.named_parameters()), x)


class Conv4(nn.Module):
    """Four conv blocks of ``hidden`` channels, flattened (``body``), then an optional linear ``head``.

    On 28x28 Omniglot the spatial size goes 28 -> 14 -> 7 -> 3 -> 1, so the embedding has
    ``hidden`` (64) features. With ``pool_blocks=2`` only the first two blocks pool (the
    embedding module of Relation Networks): 28 -> 14 -> 7, ``feature_shape`` (64, 7, 7).
    With ``downsample="stride"`` the blocks halve the size with a stride-2 convolution
    instead of a max-pool, as the Omniglot models of the MAML and Reptile papers' code do
    (cbfinn/maml without ``--max_pool``, openai/supervised-reptile ``OmniglotModel``):
    28 -> 14 -> 7 -> 4 -> 2, a 256-feature embedding, and every convolution after the
    first runs on a quarter of the positions. ``readout="mean"`` averages the last feature
    map over its positions instead of flattening it (``hidden`` features): with strides
    that is the MAML code's Omniglot model (``tf.reduce_mean(hidden4, [1, 2])``, the
    64-unit last hidden layer of the paper), Reptile's flattens.

    Args:
        in_channels: image channels (1 for Omniglot).
        image_size: input height and width.
        hidden: channels of every block.
        out_features: size of the linear head; ``None`` returns the embedding.
        track_running_stats, vmap_safe: see :class:`metalab.nn.BatchNorm`.
        pool_blocks: how many blocks (from the first) halve the spatial size, 0 to 4.
        downsample: how those blocks halve it: ``"pool"`` (2x2 max-pool after batch norm,
            the default) or ``"stride"`` (stride-2 convolution, no pooling).
        readout: how the last feature map becomes the embedding: ``"flatten"`` (default)
            or ``"mean"`` over positions.
        channels_last: lay activations out channels-last and compute the first convolution
            as im2col + one matrix product; batch norm then runs as two column means of the
            ``(N*H*W, C)`` view plus element-wise arithmetic (:func:`metalab.nn.batchnorm.batch_statistics_norm`:
            PyTorch's channels-last batch-norm kernel once put float32 meta-gradients on
            Omniglot 4e-4..1e-2 away from float64 at one inner step). ``None`` (the default):
            channels-last when the blocks max-pool, channels-first when they are strided, the
            faster layout of each for whole training steps on a 2-core CPU
            (``benchmarks/throughput.py``, ``benchmarks/first_block.py``,
            ``benchmarks/task_modes.py``). Always channels-first with ``vmap_safe``.

    :meth:`functional` is the network as a pure function of a parameter dict: unlike
    ``torch.func.functional_call`` it does not swap the module's attributes.

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
        channels_last: bool | None = None,
        pool_blocks: int = 4,
        downsample: str = "pool",
        readout: str = "flatten",
    ):
        super().__init__()
        if not 0 <= pool_blocks <= 4:
            raise ValueError(f"pool_blocks must be between 0 and 4, got {pool_blocks}")
        if downsample not in DOWNSAMPLE:
            raise ValueError(f"downsample must be one of {DOWNSAMPLE}, got {downsample!r}")
        if readout not in READOUT:
            raise ValueError(f"readout must be one of {READOUT}, got {readout!r}")
        strided = downsample == "stride"
        self.vmap_safe = vmap_safe
        fast = (not strided if channels_last is None else channels_last) and not vmap_safe
        self.body = nn.Sequential(
            ChannelsLast(enabled=fast),
            *(ConvBlock(in_channels if i == 0 else hidden, hidden, track_running_stats, vmap_safe, fast,
                        pool=i < pool_blocks and not strided, stride=2 if i < pool_blocks and strided else 1)
              for i in range(4)),
            nn.Flatten() if readout == "flatten" else SpatialMean(),
        )
        side = image_size
        for _ in range(pool_blocks):
            side = (side - 1) // 2 + 1 if strided else side // 2
        if side < 1:
            raise ValueError(f"Conv4 with {pool_blocks} pooling blocks needs images of at least "
                             f"{2 ** pool_blocks}x{2 ** pool_blocks}, got {image_size}x{image_size}")
        self.feature_shape = (hidden, side, side)  # the last feature map
        self.embedding_dim = hidden * side * side if readout == "flatten" else hidden
        self.head = nn.Linear(self.embedding_dim, out_features) if out_features is not None else None

    def forward(self, x: Tensor) -> Tensor:
        z = self.body(x)
        return self.head(z) if self.head is not None else z

    def functional(self, params: Params, x: Tensor) -> Tensor:
        """``forward`` with ``params`` (named as in ``named_parameters()``) in place of the parameters."""
        x = self.body[0](x)
        for i in range(1, 5):
            x = self.body[i].functional(sub_params(params, f"body.{i}"), x)
        x = self.body[5](x)
        return F.linear(x, params["head.weight"], params["head.bias"]) if self.head is not None else x

    def functional_tasks(self, params: Params, x: Tensor) -> Tensor:
        """:meth:`functional` of ``T`` tasks in one pass, task ``t`` with parameters ``params[name][t]``.

        ``params`` are named as in ``named_parameters()``, each with a leading task dim
        ``T``; ``x`` is ``(T, N, C, H, W)``; returns ``(T, N, out)``. The tasks are laid
        side by side along the channels and every convolution is grouped by task, so a
        meta-batch's support sets pass through the network in one call per layer instead of
        one per task (the same result as stacking ``functional`` per task: tested). Needs
        batch statistics (``track_running_stats=False``, as MAML uses).
        """
        tasks, n = x.shape[:2]
        h = x.transpose(0, 1).reshape(n, tasks * x.shape[2], *x.shape[3:])
        for i in range(1, 5):
            h = self.body[i].functional_tasks(sub_params(params, f"body.{i}"), h, tasks)
        h = self.body[5](h).reshape(n, tasks, -1).transpose(0, 1)  # task t's channels are t*C:(t+1)*C
        if self.head is None:
            return h
        return torch.baddbmm(params["head.bias"].unsqueeze(1), h, params["head.weight"].transpose(1, 2))

    def embed_tasks(self, x: Tensor) -> Tensor:
        """``body`` of ``T`` tasks' images ``(T, N, C, H, W)`` in one pass -> ``(T, N, embedding_dim)``.

        The tasks share the module's own parameters, so every convolution runs once over
        all ``T * N`` images; batch norm uses each task's own statistics, so the result is
        ``body`` applied to each task alone (tested). What ANIL's batched task mode runs.
        Needs batch statistics (``track_running_stats=False``).
        """
        tasks = x.shape[0]
        h = self.body[0](x.flatten(0, 1))
        for i in range(1, 5):
            h = self.body[i].shared_tasks(h, tasks)
        return self.body[5](h).unflatten(0, (tasks, -1))


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

    def functional(self, params: Params, x: Tensor) -> Tensor:
        """``forward`` with ``params`` (named as in ``named_parameters()``) in place of the parameters."""
        for i in range(0, len(self.body), 2):
            x = F.relu(F.linear(x, params[f"body.{i}.weight"], params[f"body.{i}.bias"]))
        return F.linear(x, params["head.weight"], params["head.bias"])

    def embed_tasks(self, x: Tensor) -> Tensor:
        """``body`` of ``T`` tasks' inputs ``(T, N, in)`` -> ``(T, N, sizes[-2])`` (no statistics: one call)."""
        return self.body(x)

    def functional_tasks(self, params: Params, x: Tensor) -> Tensor:
        """:meth:`functional` of ``T`` tasks in one pass: ``params`` with a leading task dim, ``x`` ``(T, N, in)``."""
        for i in range(0, len(self.body), 2):
            x = F.relu(torch.baddbmm(params[f"body.{i}.bias"].unsqueeze(1), x,
                                     params[f"body.{i}.weight"].transpose(1, 2)))
        return torch.baddbmm(params["head.bias"].unsqueeze(1), x, params["head.weight"].transpose(1, 2))
