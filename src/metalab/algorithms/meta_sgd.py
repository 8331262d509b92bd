"""Meta-SGD: the inner learning rates are meta-learned with the initialisation.

Reference: Li, Zhou, Chen & Li, "Meta-SGD: Learning to Learn Quickly for Few-Shot
Learning", arXiv:1707.09835, 2017.

Equations of the paper, mapped to code:
- eq. 2, adaptation ``theta' = theta - alpha (*) grad L_T(theta)`` with ``alpha`` a tensor
  of the same shape as ``theta`` (element-wise product): :class:`metalab.func.PerParameterSGD`
  over ``self.lrs``;
- eq. 3, ``min_{theta, alpha} sum_T L_T(theta')`` on the query sets: the inherited
  ``meta_loss``; ``alpha`` is an ``nn.Parameter`` so the trainer's optimiser updates it with
  ``theta``.
The paper uses one inner step; with ``per_step_lrs`` every inner step has its own learned
rates (as MAML++ does per layer). ``alpha`` starts at ``inner_lr`` everywhere (or, with
``lr_init_range=(lo, hi)``, uniformly at random in that range as in the paper's section 4).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from metalab.algorithms.gradient import GradientConfig, GradientMethod
from metalab.algorithms.registry import register
from metalab.data.benchmarks import TaskSpec
from metalab.func import PerParameterSGD, UpdateRule, params_of
from metalab.utils.errors import MetalabError


@dataclass(frozen=True)
class MetaSGDConfig(GradientConfig):
    """Meta-SGD options; every inner-loop option of :class:`GradientConfig` applies too.

    Attributes:
        per_step_lrs: learn one rate tensor per inner step instead of one for all steps.
        lr_init_range: ``(lo, hi)``: initialise the rates uniformly in this range;
            ``None``: every rate starts at ``inner_lr`` (its first entry if a list).
    """

    per_step_lrs: bool = False
    lr_init_range: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.lr_init_range is not None:
            bounds = self.lr_init_range
            if (not isinstance(bounds, (tuple, list)) or len(bounds) != 2
                    or not all(isinstance(b, (int, float)) and math.isfinite(b) for b in bounds)
                    or not bounds[0] < bounds[1]):
                raise MetalabError(f"lr_init_range must be two finite numbers (lo, hi) with lo < hi, got {bounds!r}")
            object.__setattr__(self, "lr_init_range", (float(bounds[0]), float(bounds[1])))


@register
class MetaSGD(GradientMethod):
    """MAML with a learned learning rate per parameter coordinate."""

    name = "meta_sgd"
    Config = MetaSGDConfig
    task_batched = True
    config: MetaSGDConfig

    def __init__(self, spec: TaskSpec, config: MetaSGDConfig, model: nn.Module | None = None):
        super().__init__(spec, config, model)
        steps = max(config.inner_steps, 1) if config.per_step_lrs else None
        first = config.inner_lr[0] if isinstance(config.inner_lr, tuple) else config.inner_lr
        self.lrs = nn.ParameterList()
        for p in params_of(self.model).values():
            shape = (steps, *p.shape) if steps else p.shape
            if config.lr_init_range is None:
                rate = torch.full(shape, float(first), dtype=p.dtype)
            else:
                rate = torch.empty(shape, dtype=p.dtype).uniform_(*config.lr_init_range)
            self.lrs.append(nn.Parameter(rate))

    def rule(self) -> UpdateRule:
        names = list(params_of(self.model))
        return PerParameterSGD(dict(zip(names, self.lrs)), stepwise=self.config.per_step_lrs)
