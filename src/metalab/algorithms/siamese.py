"""Siamese networks for one-shot image recognition.

References: Koch, Zemel & Salakhutdinov, "Siamese Neural Networks for One-shot Image
Recognition", ICML Deep Learning Workshop 2015.

Equations of the paper, mapped to lines:
- section 3.1, the twin network: both images go through the same ``encoder`` (weights
  shared), here the conv4 of the other few-shot methods rather than Koch's 105x105 net;
- the similarity ``p = sigmoid(sum_j alpha_j |h1_j - h2_j| + b)`` (L1 distance of the
  twin embeddings weighted by learned ``alpha``): ``_pair_logits`` with ``self.head``
  holding ``alpha`` and ``b`` (logits; the sigmoid is inside the loss);
- section 3.2, the regularised cross-entropy on same/different pairs: binary
  cross-entropy in ``episode_loss`` on pairs drawn from the training episodes by
  :func:`metalab.data.balanced_pairs` (``pair_inputs``) (every image of the episode, support and query, is
  paired once with an image of its class and once with an image of another class, so
  half of the pairs are "same"; seeded from the episode's seed); weight decay, Koch's
  per-layer learning rates and affine distortions are left to the optimiser and data;
- section 4.3, one-shot classification: a query gets the class of the support image it is
  most similar to: ``reduce_by_class(..., "max")`` in ``scores``; with K shots, the most similar of all
  support images.

Batch norm keeps running statistics (training: batch statistics of the episode's images;
evaluation: running averages), as for Prototypical Networks.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metalab.algorithms.metric import MetricMethod
from metalab.algorithms.registry import register
from metalab.data.benchmarks import TaskSpec
from metalab.data.episode import EpisodeBatch
from metalab.data.pairs import balanced_pairs
from metalab.func import reduce_by_class
from metalab.utils.errors import MetalabError
from metalab.utils.seeding import derive_seed

PAIR_STREAM = 0x5A1A  # mixed with the episode seed: the pairs' own random stream
PAIRINGS = ("balanced", "all")


@dataclass(frozen=True)
class SiameseConfig:
    """Hyper-parameters of Siamese networks.

    Attributes:
        pairs: the verification pairs of a training episode. ``balanced`` (default): every
            image once with an image of its class and once with an image of another class
            (Koch et al. draw pairs; these are drawn per episode). ``all``: every pair of the
            episode's distinct images, the "same" and the "different" ones each weighted to
            half of the loss, as the balanced pairs are; the twin embeddings are computed
            once either way, so all pairs cost little more and give many more comparisons.
    """

    pairs: str = "balanced"

    def __post_init__(self) -> None:
        if self.pairs not in PAIRINGS:
            raise MetalabError(f"pairs must be one of {PAIRINGS}, got {self.pairs!r}")


@register
class Siamese(MetricMethod):
    """Twin embedding, weighted L1 distance, sigmoid same/different; classify by the most similar support image."""

    name = "siamese"
    Config = SiameseConfig

    def __init__(self, spec: TaskSpec, config: SiameseConfig):
        super().__init__(spec, config)
        self.head = nn.Linear(self.encoder.embedding_dim, 1)

    def _pair_logits(self, a: Tensor, b: Tensor) -> Tensor:
        """``(..., d)`` twin embeddings (broadcast) -> ``(...)`` logits of "same class"."""
        return self.head((a - b).abs()).squeeze(-1)

    def _all_pairs_loss(self, z: Tensor, labels: Tensor) -> Tensor:
        """Mean binary cross-entropy of the "same" pairs and of the "different" pairs, averaged:
        every pair ``i < j`` of ``z`` ``(n, d)`` (static shapes: masks, no index lists)."""
        logits = self._pair_logits(z[:, None], z[None])  # (n, n)
        same = labels[:, None] == labels[None, :]
        upper = torch.ones_like(same).triu(diagonal=1)
        losses = F.binary_cross_entropy_with_logits(logits, same.to(z.dtype), reduction="none")
        positive, negative = (same & upper).to(z.dtype), (~same & upper).to(z.dtype)
        return 0.5 * ((losses * positive).sum() / positive.sum() + (losses * negative).sum() / negative.sum())

    def scores(self, support: Tensor, support_y: Tensor, query: Tensor, n_way: int) -> Tensor:
        """``(m, n_way)``: the logit of the most similar support image of each class."""
        return reduce_by_class(self._pair_logits(query[:, None], support[None]), support_y, n_way, "max")

    def pair_inputs(self, batch: EpisodeBatch) -> tuple[Tensor, ...]:
        """``left, right, same`` ``(B, 2n)``: balanced pairs of each episode's images, seeded by the episode
        (``pairs="all"``: none, every pair is scored in :meth:`episode_loss`)."""
        if self.config.pairs == "all":
            return ()
        pairs = [balanced_pairs(torch.cat([sy, qy]), torch.Generator().manual_seed(derive_seed(meta.seed, PAIR_STREAM)))
                 for sy, qy, meta in zip(batch.support_y, batch.query_y, batch.metas)]
        return tuple(torch.stack(column) for column in zip(*pairs))

    def episode_loss(self, z: Tensor, n_support: int, support_y: Tensor, query_y: Tensor, n_way: int,
                     *pairs: Tensor) -> tuple[Tensor, Tensor]:
        if pairs:
            left, right, same = pairs
            loss = F.binary_cross_entropy_with_logits(self._pair_logits(z[left], z[right]), same.to(z.dtype))
        else:
            loss = self._all_pairs_loss(z, torch.cat([support_y, query_y]))
        with torch.no_grad():  # the episode's N-way scores, for the logged accuracy
            scores = self.scores(z[:n_support], support_y, z[n_support:], n_way)
        return loss, scores
