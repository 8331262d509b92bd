"""MAML and first-order MAML.

References: Finn, Abbeel & Levine, "Model-Agnostic Meta-Learning for Fast Adaptation of
Deep Networks", ICML 2017.

Algorithm 2 of the paper, line by line:
- line 5-7, inner update ``theta'_i = theta - alpha * grad L_Ti(f_theta)`` on the support
  set (repeated ``inner_steps`` times): :func:`metalab.func.inner_loop` with
  :class:`metalab.func.SGD` in ``_adapted``;
- line 10, meta-objective ``sum_i L_Ti(f_theta'_i)`` on the query sets: ``meta_loss``
  (mean over the meta-batch; the outer Adam step is the trainer's);
- first-order approximation (section 5.2): ``first_order=True`` treats the inner
  gradients as constants.
Batch norm uses per-task batch statistics (see :mod:`metalab.nn.batchnorm`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from metalab._types import Params
from metalab.algorithms.base import MetaAlgorithm, MetaOutput, Predictor, check_support, finite
from metalab.algorithms.registry import register
from metalab.data.benchmarks import TaskSpec
from metalab.data.episode import Episode, EpisodeBatch
from metalab.func import SGD, TASK_MODES, forward, inner_loop, map_tasks, metric_name, params_of, task_loss, task_metric
from metalab.nn import make_backbone
from metalab.utils.errors import MetalabError


@dataclass(frozen=True)
class MAMLConfig:
    """Hyper-parameters of MAML.

    Attributes:
        inner_lr: inner SGD step size alpha (0.01 sinusoid, 0.4 Omniglot in the paper).
        inner_steps: inner steps during meta-training.
        test_inner_steps: inner steps at evaluation; ``None`` means ``inner_steps``.
        first_order: drop second-order terms (FO-MAML).
        task_mode: ``loop`` or ``vmap`` over the tasks of a meta-batch (same result), or
            ``auto``: vmap for vector inputs (MLP learners: 8x faster on a 2-core CPU)
            and the loop for images (conv learners: vmap 2.3x slower), as measured by
            ``benchmarks/task_modes.py``.
    """

    inner_lr: float = 0.01
    inner_steps: int = 1
    test_inner_steps: int | None = None
    first_order: bool = False
    task_mode: str = "auto"

    def __post_init__(self) -> None:
        if self.task_mode not in TASK_MODES + ("auto",):
            raise MetalabError(f"task_mode must be auto or one of {TASK_MODES}, got {self.task_mode!r}")
        if self.inner_steps < 0 or (self.test_inner_steps is not None and self.test_inner_steps < 0):
            raise MetalabError("inner_steps and test_inner_steps must be >= 0")


@register
class MAML(MetaAlgorithm):
    """Second-order MAML over any backbone from :func:`metalab.nn.make_backbone`."""

    name = "maml"
    Config = MAMLConfig

    def __init__(self, spec: TaskSpec, config: MAMLConfig, model: nn.Module | None = None):
        super().__init__(spec, config)
        mode = config.task_mode
        self.task_mode = ("vmap" if len(spec.input_shape) == 1 else "loop") if mode == "auto" else mode
        if model is None:
            model = make_backbone(spec.input_shape, spec.output_dim, vmap_safe=self.task_mode == "vmap")
        self.model = model

    def _adapted(self, params: Params, support_x: Tensor, support_y: Tensor, steps: int, first_order: bool) -> Params:
        def support_loss(p: Params) -> Tensor:
            return task_loss(forward(self.model, p, support_x), support_y)

        return inner_loop(support_loss, params, SGD(self.config.inner_lr), steps, first_order)

    def meta_loss(self, batch: EpisodeBatch) -> MetaOutput:
        n_way = batch.metas[0].n_way
        if batch.is_classification and n_way != self.spec.output_dim:
            raise MetalabError(
                f"{self.name} has a {self.spec.output_dim}-way output head but got {n_way}-way episodes; "
                "train with --train-n-way equal to --n-way"
            )
        params = params_of(self.model)
        cfg = self.config

        def one_task(sx: Tensor, sy: Tensor, qx: Tensor, qy: Tensor) -> tuple[Tensor, Tensor]:
            adapted = self._adapted(params, sx, sy, cfg.inner_steps, cfg.first_order)
            pred = forward(self.model, adapted, qx)
            return task_loss(pred, qy), task_metric(pred.detach(), qy)

        tensors = (batch.support_x, batch.support_y, batch.query_x, batch.query_y)
        losses, metrics = map_tasks(one_task, tensors, self.task_mode)
        loss = finite(losses.mean(), f"{self.name}.meta_loss")
        return MetaOutput(
            loss, {"loss": loss.item(), metric_name(batch.is_classification): metrics.mean().item()}
        )

    def adapt(self, episode: Episode, steps: int | None = None) -> Predictor:
        if episode.is_classification:
            check_support(episode, self.spec.output_dim)
        if steps is None:
            steps = self.config.test_inner_steps if self.config.test_inner_steps is not None else self.config.inner_steps
        with torch.no_grad():
            params = {name: p.detach() for name, p in params_of(self.model).items()}
            adapted = self._adapted(params, episode.support_x, episode.support_y, steps, first_order=True)

        def predict(x: Tensor) -> Tensor:
            with torch.no_grad():
                return forward(self.model, adapted, x)

        return predict


@dataclass(frozen=True)
class FOMAMLConfig(MAMLConfig):
    __doc__ = MAMLConfig.__doc__
    first_order: bool = field(default=True)


@register
class FOMAML(MAML):
    """First-order MAML: MAML with ``first_order=True`` by default."""

    name = "fomaml"
    Config = FOMAMLConfig
