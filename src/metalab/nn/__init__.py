"""L1 backbones: nn.Modules used through ``torch.func.functional_call``."""

from __future__ import annotations

from metalab.nn.backbones import MLP, Conv4
from metalab.nn.batchnorm import BatchNorm

__all__ = ["MLP", "BatchNorm", "Conv4", "make_backbone"]


def make_backbone(
    input_shape: tuple[int, ...], out_features: int | None, track_running_stats: bool = False, vmap_safe: bool = False,
    channels_last: bool | None = None, downsample: str = "pool", readout: str = "flatten",
):
    """The paper backbone for an input shape: Conv4 for images ``(C, H, W)``, MLP for vectors.

    Args:
        input_shape: one example's shape.
        out_features: head size (``n_way`` or the regression target size); ``None`` for
            an embedding network (metric methods).
        track_running_stats, vmap_safe: batch-norm modes, see :class:`BatchNorm`.
        channels_last: Conv4's layout; ``None``: channels-last when it max-pools, channels-first when
            strided (the faster of each on CPU; see :class:`Conv4`).
        downsample: how Conv4 halves the image, ``"pool"`` or ``"stride"`` (see :class:`Conv4`).
        readout: how Conv4's last feature map becomes the embedding, ``"flatten"`` or ``"mean"``.
    """
    if len(input_shape) == 3:
        c, h, w = input_shape
        if h != w:
            raise ValueError(f"Conv4 expects square images, got {h}x{w}")
        return Conv4(c, image_size=h, out_features=out_features, track_running_stats=track_running_stats,
                     vmap_safe=vmap_safe, channels_last=channels_last, downsample=downsample,
                     readout=readout)
    if len(input_shape) == 1:
        if out_features is None:
            raise ValueError("an MLP backbone for vector inputs needs out_features")
        return MLP((input_shape[0], 40, 40, out_features))
    raise ValueError(f"no default backbone for inputs of shape {input_shape}")
