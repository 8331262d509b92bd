"""The interface every meta-learning method implements, whatever its family."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import torch
from torch import Tensor, nn

from metalab.data.benchmarks import TaskSpec
from metalab.data.episode import Episode, EpisodeBatch
from metalab.func.losses import metric_name, task_metric
from metalab.utils.errors import MetalabError, NonFiniteError

Predictor = Callable[[Tensor], Tensor]
"""An adapted learner: inputs ``(n, *input_shape)`` -> logits ``(n, n_way)`` or predictions."""


@dataclass
class MetaOutput:
    """Result of :meth:`MetaAlgorithm.meta_loss`.

    Attributes:
        loss: scalar meta-loss to back-propagate into the meta-parameters.
        metrics: detached floats for logging, e.g. ``{"loss": 0.4, "accuracy": 0.9}``.
    """

    loss: Tensor
    metrics: dict[str, float]


class MetaAlgorithm(nn.Module):
    """Base of every method: ``meta_loss`` for training, ``adapt`` for evaluation.

    Subclasses set ``name`` (the registry name) and ``Config`` (a dataclass of
    hyper-parameters with defaults), and build their networks in ``__init__`` from the
    :class:`TaskSpec`. Their ``nn.Module`` parameters are the meta-parameters, so the
    trainer optimises ``algorithm.parameters()`` and checkpoints ``state_dict()``.
    """

    name: ClassVar[str]
    Config: ClassVar[type]
    kind: ClassVar[str] = "supervised"
    """``supervised`` (episodes of examples) or ``rl`` (tasks of a meta-RL benchmark)."""

    def __init__(self, spec: TaskSpec, config: Any):
        super().__init__()
        self.spec = spec
        self.config = config

    @property
    def metric(self) -> str:
        """What :meth:`evaluate_episode` returns: ``accuracy``, ``mse`` or (meta-RL) ``return``."""
        return metric_name(self.spec.classification)

    @property
    def device(self) -> torch.device:
        """Where the meta-parameters live (``algorithm.to(device)`` moves them)."""
        return next(self.parameters()).device

    def on_device(self, data: Episode | EpisodeBatch) -> Episode | EpisodeBatch:
        """``data`` moved to :attr:`device`: the trainer and the evaluator feed every episode
        through this, so a method moved to a GPU trains and evaluates there."""
        return data.to(self.device)

    def meta_loss(self, batch: EpisodeBatch) -> MetaOutput:
        raise NotImplementedError

    def meta_gradient(self, batch: EpisodeBatch) -> MetaOutput:
        """Add the gradient of the meta-loss to every meta-parameter's ``.grad``.

        Returns the output with a detached loss. The trainer calls this rather than
        ``meta_loss(batch).loss.backward()`` so that a method may back-propagate task by
        task and free each task's graph early (same gradient, a fraction of the memory).
        """
        out = self.meta_loss(batch)
        out.loss.backward()
        return MetaOutput(out.loss.detach(), out.metrics)

    def adapt(self, episode: Episode, steps: int | None = None) -> Predictor:
        """Adapt to one episode's support set; ``steps`` overrides test-time inner steps."""
        raise NotImplementedError

    @property
    def evaluates_on_threads(self) -> bool:
        """Whether :func:`metalab.evaluate` may adapt to several episodes at once on threads: only
        where adapting and predicting read the method's state and never write it (no module
        whose parameters are swapped in, no recurrent memory kept between calls). Off unless a
        method says so."""
        return False

    def evaluate_episode(self, episode: Episode, steps: int | None = None) -> float:
        """Query accuracy (classification) or MSE (regression) after adapting."""
        predictor = self.adapt(episode, steps)
        with torch.no_grad():
            return task_metric(predictor(episode.query_x), episode.query_y).item()

    def outer_optimizer(self, lr: float) -> torch.optim.Optimizer:
        """The optimiser of the meta-parameters; Adam unless a method's paper says otherwise."""
        return torch.optim.Adam(self.parameters(), lr=lr)

    def hparams(self) -> dict[str, Any]:
        return dataclasses.asdict(self.config)


def finite(loss: Tensor, where: str) -> Tensor:
    """Raise when a meta-loss is not finite instead of silently training on NaN."""
    if not torch.isfinite(loss.detach()).all():
        raise NonFiniteError(
            f"non-finite loss ({loss.detach().item()}) in {where}; lower the learning rates "
            "or check the input data"
        )
    return loss


def check_support(episode: Episode | EpisodeBatch, n_way: int, k_shot: int | None = None) -> None:
    """Every class ``0..n_way-1`` must occur in the support set of a classification episode.

    With ``k_shot``, every class must occur exactly ``k_shot`` times (methods that sum or
    compare per-class features need balanced support sets). Works on one episode or on
    every episode of a batch.
    """
    labels = episode.support_y.reshape(-1, episode.support_y.shape[-1])  # (tasks, n_support)
    if labels.is_floating_point():
        raise MetalabError("this method classifies: the support labels must be integer class ids, got floats")
    for task, row in enumerate(labels):
        counts = torch.bincount(row, minlength=n_way)
        where = f" (episode {task} of the batch)" if labels.shape[0] > 1 else ""
        if counts.numel() > n_way or (counts == 0).any():
            missing = (counts[:n_way] == 0).nonzero().flatten().tolist()
            raise MetalabError(
                f"the support set must hold every label 0..{n_way - 1}{where}; missing {missing}, "
                f"found labels up to {counts.numel() - 1}"
            )
        if k_shot is not None and (counts != k_shot).any():
            raise MetalabError(
                f"every class needs exactly k_shot={k_shot} support examples{where}, got counts "
                f"{counts.tolist()} per label; sample balanced episodes (EpisodeSampler does)"
            )
