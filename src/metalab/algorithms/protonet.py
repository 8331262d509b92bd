"""Prototypical Networks.

References: Snell, Swersky & Zemel, "Prototypical Networks for Few-shot Learning",
NeurIPS 2017.

Equations of the paper, mapped to lines:
- eq. 1, prototype ``c_k = mean of f_phi(x_i) over the support of class k``:
  :func:`metalab.func.class_prototypes` in ``_logits``;
- eq. 2, ``p(y=k|x) = softmax(-d(f_phi(x), c_k))`` with squared Euclidean ``d``:
  ``-squared_euclidean`` as logits;
- the loss ``J = -log p(y=k|x)`` averaged over the query set: ``cross_entropy`` in
  ``meta_loss`` (Algorithm 1), averaged over the episodes of a meta-batch.
Batch norm keeps running statistics (training mode: batch statistics; evaluation mode:
running averages), as in the authors' code.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from metalab.algorithms.base import MetaAlgorithm, MetaOutput, Predictor, check_support, finite
from metalab.algorithms.registry import register
from metalab.data.benchmarks import TaskSpec
from metalab.data.episode import Episode, EpisodeBatch
from metalab.func import class_prototypes, map_tasks, squared_euclidean
from metalab.nn import make_backbone
from metalab.utils.errors import MetalabError


@dataclass(frozen=True)
class ProtoNetConfig:
    """Prototypical Networks have no hyper-parameters beyond the backbone and optimiser."""


@register
class ProtoNet(MetaAlgorithm):
    """Nearest class mean in a learned embedding, squared Euclidean distance."""

    name = "protonet"
    Config = ProtoNetConfig

    def __init__(self, spec: TaskSpec, config: ProtoNetConfig):
        super().__init__(spec, config)
        if not spec.classification:
            raise MetalabError("protonet is a classifier; use it on a classification benchmark such as omniglot")
        self.encoder = make_backbone(spec.input_shape, None, track_running_stats=True)

    def _logits(self, support: Tensor, support_y: Tensor, query: Tensor, n_way: int) -> Tensor:
        prototypes = class_prototypes(support, support_y, n_way)
        return -squared_euclidean(query, prototypes)

    def meta_loss(self, batch: EpisodeBatch) -> MetaOutput:
        n_way = batch.metas[0].n_way
        n_support = batch.support_x.shape[1]

        def one_task(sx: Tensor, sy: Tensor, qx: Tensor, qy: Tensor) -> tuple[Tensor, Tensor]:
            z = self.encoder(torch.cat([sx, qx]))  # one pass: support and query share BN statistics
            logits = self._logits(z[:n_support], sy, z[n_support:], n_way)
            return F.cross_entropy(logits, qy), (logits.detach().argmax(-1) == qy).float().mean()

        # The loop, not vmap: training-mode batch norm updates running statistics in place.
        tensors = (batch.support_x, batch.support_y, batch.query_x, batch.query_y)
        losses, accuracies = map_tasks(one_task, tensors, "loop")
        loss = finite(losses.mean(), "protonet.meta_loss")
        return MetaOutput(loss, {"loss": loss.item(), "accuracy": accuracies.mean().item()})

    def adapt(self, episode: Episode, steps: int | None = None) -> Predictor:
        n_way = episode.meta.n_way or int(episode.support_y.max()) + 1
        check_support(episode, n_way)
        with torch.no_grad():
            prototypes = class_prototypes(self.encoder(episode.support_x), episode.support_y, n_way)

        def predict(x: Tensor) -> Tensor:
            with torch.no_grad():
                return -squared_euclidean(self.encoder(x), prototypes)

        return predict
