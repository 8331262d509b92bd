"""Prototypical Networks.

References: Snell, Swersky & Zemel, "Prototypical Networks for Few-shot Learning",
NeurIPS 2017.

Equations of the paper, mapped to lines:
- eq. 1, prototype ``c_k = mean of f_phi(x_i) over the support of class k``:
  :func:`metalab.func.class_prototypes` in ``scores``;
- eq. 2, ``p(y=k|x) = softmax(-d(f_phi(x), c_k))`` with squared Euclidean ``d``:
  ``-squared_euclidean`` as logits (``scores``);
- the loss ``J = -log p(y=k|x)`` averaged over the query set: the cross-entropy of
  :meth:`MetricMethod.episode_loss` (Algorithm 1), averaged over the episodes of a meta-batch.
Batch norm keeps running statistics (training mode: batch statistics; evaluation mode:
running averages), as in the authors' code.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from metalab.algorithms.metric import MetricMethod
from metalab.algorithms.registry import register
from metalab.func import class_prototypes, squared_euclidean


@dataclass(frozen=True)
class ProtoNetConfig:
    """Prototypical Networks have no hyper-parameters beyond the backbone and optimiser."""


@register
class ProtoNet(MetricMethod):
    """Nearest class mean in a learned embedding, squared Euclidean distance."""

    name = "protonet"
    Config = ProtoNetConfig

    def scores(self, support: Tensor, support_y: Tensor, query: Tensor, n_way: int) -> Tensor:
        return -squared_euclidean(query, class_prototypes(support, support_y, n_way))
