"""Relation Networks.

References: Sung, Yang, Zhang, Xiang, Torr & Hospedales, "Learning to Compare: Relation
Network for Few-Shot Learning", CVPR 2018.

Equations of the paper, mapped to lines:
- the embedding module ``f_phi``: ``encoder``, the conv4 with pooling in the first two
  blocks only (section 3.4; 28x28 Omniglot -> 64 feature maps of 7x7);
- K-shot class features, "element-wise sum over the embedding module outputs of all
  samples from each training class" (section 3.3): :func:`metalab.func.class_sums`;
- eq. 1 (eq. 2 for K shots), ``r_ij = g_phi(C(f(x_i), f(x_j)))`` with ``C`` the
  concatenation of feature maps in depth: ``scores`` pairs every query with every class
  (``(m * n_way, 128, 7, 7)``) and :class:`RelationModule` ``g_phi`` maps each pair to a
  score in [0, 1] (two conv blocks with pooling, a ReLU layer of ``hidden`` units, a
  sigmoid unit; section 3.4);
- eq. 3, ``phi, phi <- argmin sum_i sum_j (r_ij - 1(y_i == y_j))^2``: mean squared error
  to the one-hot labels in ``episode_loss``.

Batch norm keeps running statistics (training: batch statistics of the episode;
evaluation: running averages), as in the authors' code.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metalab.algorithms.metric import MetricMethod
from metalab.algorithms.registry import register
from metalab.data.benchmarks import TaskSpec
from metalab.func import class_sums, one_hot
from metalab.nn import Conv4
from metalab.nn.backbones import ConvBlock
from metalab.utils.errors import MetalabError, require_positive


@dataclass(frozen=True)
class RelationNetConfig:
    """Hyper-parameters of Relation Networks.

    Attributes:
        hidden: units of the relation module's ReLU layer (8 in the paper).
    """

    hidden: int = 8

    def __post_init__(self) -> None:
        require_positive(hidden=self.hidden)


class RelationModule(nn.Module):
    """``g_phi``: (query, class) feature-map pairs ``(p, 2C, H, W)`` -> relation scores ``(p,)`` in [0, 1].

    Two conv blocks (conv 3x3, batch norm, 2x2 max-pool, ReLU), then ReLU layer and sigmoid unit.
    """

    def __init__(self, channels: int, side: int, hidden: int):
        super().__init__()
        self.blocks = nn.Sequential(
            ConvBlock(2 * channels, channels, track_running_stats=True, vmap_safe=False),
            ConvBlock(channels, channels, track_running_stats=True, vmap_safe=False),
            nn.Flatten(),
        )
        side = side // 4
        if side < 1:
            raise MetalabError("the relation module pools twice: its feature maps must be at least 4x4 "
                               "(images of at least 16x16)")
        self.fc = nn.Linear(channels * side * side, hidden)
        self.out = nn.Linear(hidden, 1)

    def forward(self, pairs: Tensor) -> Tensor:
        return self._head(self.blocks(pairs))

    def _head(self, features: Tensor) -> Tensor:
        return torch.sigmoid(self.out(F.relu(self.fc(features)))).squeeze(-1)

    def pairwise(self, query: Tensor, classes: Tensor) -> Tensor:
        """Scores of every (query, class) pair: ``(m, C, H, W)``, ``(n, C, H, W)`` -> ``(m, n)``.

        Equal to ``forward`` on the ``m * n`` concatenated pairs, but the first convolution is
        linear in its input channels (zero padding included), so it runs on the ``m`` queries
        and the ``n`` classes apart and the results are added pair by pair: ``m + n`` instead of
        ``m * n`` convolutions of twice the channels, most of the module's arithmetic.
        """
        first = self.blocks[0]
        params = dict(first.named_parameters())
        weight, c = params["conv.weight"], query.shape[1]
        by_query = F.conv2d(query, weight[:, :c], params["conv.bias"], padding=1)
        by_class = F.conv2d(classes, weight[:, c:], None, padding=1)
        x = (by_query[:, None] + by_class[None]).flatten(0, 1)
        return self._head(self.blocks[1:](first.after_conv(params, x))).view(query.shape[0], classes.shape[0])


@register
class RelationNet(MetricMethod):
    """A learned deep distance: a relation module scores (query, class) feature-map pairs."""

    name = "relation_net"
    Config = RelationNetConfig
    balanced_support = True  # class features are sums over k_shot examples

    def __init__(self, spec: TaskSpec, config: RelationNetConfig):
        if not spec.classification or len(spec.input_shape) != 3:
            raise MetalabError("relation_net classifies images (C, H, W); use it on an image benchmark such as omniglot")
        c, h, w = spec.input_shape
        if h != w:
            raise MetalabError(f"relation_net expects square images, got {h}x{w}")
        super().__init__(spec, config, Conv4(c, image_size=h, track_running_stats=True, pool_blocks=2))
        channels, side, _ = self.encoder.feature_shape
        self.relation = RelationModule(channels, side, config.hidden)

    def scores(self, support: Tensor, support_y: Tensor, query: Tensor, n_way: int) -> Tensor:
        """Flat embeddings ``(n, C*H*W)``, ``(n,)``, ``(m, C*H*W)`` -> ``(m, n_way)`` relation scores."""
        shape = self.encoder.feature_shape
        classes = class_sums(support, support_y, n_way).view(n_way, *shape)
        return self.relation.pairwise(query.view(-1, *shape), classes)

    def episode_loss(self, z: Tensor, n_support: int, support_y: Tensor, query_y: Tensor, n_way: int,
                     *extra: Tensor) -> tuple[Tensor, Tensor]:
        scores = self.scores(z[:n_support], support_y, z[n_support:], n_way)
        return F.mse_loss(scores, one_hot(query_y, n_way, scores.dtype)), scores
