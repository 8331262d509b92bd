"""What the metric-based methods share: embed an episode once, score queries against the support set.

A metric method is an ``encoder`` plus :meth:`MetricMethod.scores` (support and query
embeddings -> per-class scores of every query). Training embeds support and query in one
pass (they share the batch-norm statistics of the episode, as in the papers' code) and
minimises :meth:`MetricMethod.episode_loss`, cross-entropy of the scores unless a method
says otherwise; adaptation embeds the support set once and scores new inputs against it.
No inner loop, no per-class Python loops: the class reductions of :mod:`metalab.func`.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metalab.algorithms.base import MetaAlgorithm, MetaOutput, Predictor, check_support, finite
from metalab.data.benchmarks import TaskSpec
from metalab.data.episode import Episode, EpisodeBatch
from metalab.func import map_tasks, runs_pure
from metalab.nn import make_backbone
from metalab.utils.errors import MetalabError


class MetricMethod(MetaAlgorithm):
    """Base of Prototypical, Matching, Siamese and Relation networks.

    Subclasses implement :meth:`scores` and may override :meth:`episode_loss` and
    :meth:`pair_inputs`. ``balanced_support``: every class must have exactly ``k_shot``
    support examples (methods that sum per-class features).
    """

    balanced_support: ClassVar[bool] = False

    def __init__(self, spec: TaskSpec, config, encoder: nn.Module | None = None):
        super().__init__(spec, config)
        if not spec.classification:
            raise MetalabError(f"{self.name} is a classifier; use it on a classification benchmark such as omniglot")
        # running statistics: batch statistics in training, running averages in evaluation
        self.encoder = encoder if encoder is not None else make_backbone(spec.input_shape, None,
                                                                         track_running_stats=True)

    @property
    def evaluates_on_threads(self) -> bool:
        """Evaluation only reads the networks (batch norm uses its running statistics); a metalab
        backbone as the encoder (a user's module might keep state between calls)."""
        return runs_pure(self.encoder)

    def scores(self, support: Tensor, support_y: Tensor, query: Tensor, n_way: int) -> Tensor:
        """Embeddings ``(n, d)``, labels ``(n,)``, ``(m, d)`` -> ``(m, n_way)`` class scores (argmax = prediction)."""
        raise NotImplementedError

    def episode_loss(self, z: Tensor, n_support: int, support_y: Tensor, query_y: Tensor, n_way: int,
                     *extra: Tensor) -> tuple[Tensor, Tensor]:
        """Loss of one training episode from its embeddings ``z`` (support first), and the query scores."""
        scores = self.scores(z[:n_support], support_y, z[n_support:], n_way)
        return F.cross_entropy(scores, query_y), scores

    def pair_inputs(self, batch: EpisodeBatch) -> tuple[Tensor, ...]:
        """Extra per-task tensors ``(B, ...)`` passed to :meth:`episode_loss` (none by default)."""
        return ()

    def _n_way(self, episode: Episode | EpisodeBatch) -> int:
        meta = episode.metas[0] if isinstance(episode, EpisodeBatch) else episode.meta
        return meta.n_way or int(episode.support_y.max()) + 1

    def _check(self, episode: Episode | EpisodeBatch, n_way: int) -> None:
        meta = episode.metas[0] if isinstance(episode, EpisodeBatch) else episode.meta
        check_support(episode, n_way, meta.k_shot if self.balanced_support else None)

    def meta_loss(self, batch: EpisodeBatch) -> MetaOutput:
        n_way = self._n_way(batch)
        self._check(batch, n_way)
        n_support = batch.support_x.shape[1]

        def one_task(sx: Tensor, sy: Tensor, qx: Tensor, qy: Tensor, *extra: Tensor) -> tuple[Tensor, Tensor]:
            z = self.encoder(torch.cat([sx, qx]))  # one pass: support and query share BN statistics
            loss, scores = self.episode_loss(z, n_support, sy, qy, n_way, *extra)
            return loss, (scores.detach().argmax(-1) == qy).float().mean()

        # The loop, not vmap: training-mode batch norm updates running statistics in place.
        tensors = (batch.support_x, batch.support_y, batch.query_x, batch.query_y, *self.pair_inputs(batch))
        losses, accuracies = map_tasks(one_task, tensors, "loop")
        loss = finite(losses.mean(), f"{self.name}.meta_loss")
        return MetaOutput(loss, {"loss": loss.item(), "accuracy": accuracies.mean().item()})

    def adapt(self, episode: Episode, steps: int | None = None) -> Predictor:
        n_way = self._n_way(episode)
        self._check(episode, n_way)
        with torch.no_grad():
            support = self.encoder(episode.support_x)

        def predict(x: Tensor) -> Tensor:
            with torch.no_grad():
                return self.scores(support, episode.support_y, self.encoder(x), n_way)

        return predict
