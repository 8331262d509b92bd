"""ANIL: Almost No Inner Loop.

Reference: Raghu, Raghu, Bengio & Vinyals, "Rapid Learning or Feature Reuse? Towards
Understanding the Effectiveness of MAML", ICLR 2020.

Section 4 of the paper: the network is split into a body ``f_phi`` and a head
``w``; the inner loop adapts only the head, ``w'_i = w - alpha grad_w L_Ti(w, f_phi)``,
and the outer loop meta-learns both ``phi`` and ``w`` through the adapted head
(second order unless ``first_order``). Because the body is not adapted, its features of
a task's support and query sets are computed once (``embed``) and the inner loop runs on
the linear head alone, which is why ANIL is much cheaper than MAML.

The backbone must have ``body`` and ``head`` sub-modules (both default backbones do).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from metalab._types import Params
from metalab.algorithms.gradient import GradientConfig, GradientMethod
from metalab.algorithms.registry import register
from metalab.data.benchmarks import TaskSpec
from metalab.func import forward, params_of
from metalab.utils.errors import MetalabError


@dataclass(frozen=True)
class ANILConfig(GradientConfig):
    __doc__ = GradientConfig.__doc__


@register
class ANIL(GradientMethod):
    """MAML with the inner loop restricted to the head; the body is meta-learned only."""

    name = "anil"
    Config = ANILConfig

    def __init__(self, spec: TaskSpec, config: ANILConfig, model: nn.Module | None = None):
        super().__init__(spec, config, model)
        if not isinstance(getattr(self.model, "head", None), nn.Module) or not hasattr(self.model, "body"):
            raise MetalabError("anil needs a backbone with `body` and `head` sub-modules (Conv4 and MLP have them)")

    def fast_params(self) -> Params:
        return params_of(self.model.head)

    def embed(self, x: Tensor) -> Tensor:
        return self.model.body(x)

    def predict(self, params: Params, x: Tensor) -> Tensor:
        return forward(self.model.head, params, x)
