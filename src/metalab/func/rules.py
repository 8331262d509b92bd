"""Inner-loop update rules, in the style of optax: pure functions of (params, grads, state).

A rule has ``init(params) -> state`` and ``__call__(params, grads, state, step, value=None)
-> (params, state)``; ``step`` is the inner step index, so per-step hyper-parameters (as in
MAML++) are a property of the rule, not of the loop, and ``value`` is the loss the gradients
are of (optional, as optax's extra arguments: a learned rule such as the Meta-LSTM reads it). Rules never modify tensors in place,
so every one of them is differentiable (second-order meta-gradients) and works under
``torch.func.vmap``. Compose with :class:`Clipped` for gradient clipping.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Protocol, Sequence

import torch
from torch import Tensor

from metalab._types import Params


class UpdateRule(Protocol):
    def init(self, params: Params) -> Any: ...

    def __call__(self, params: Params, grads: Params, state: Any, step: int,
                 value: Tensor | None = None) -> tuple[Params, Any]: ...


def per_step(value: float | Sequence[float], step: int) -> float:
    """``value`` itself, or its entry for inner step ``step`` (the last one reused beyond its end)."""
    if isinstance(value, (int, float)):
        return float(value)
    return float(value[min(step, len(value) - 1)])


@dataclass(frozen=True)
class SGD:
    """``theta <- theta - lr_t * g``; ``lr`` is one rate or one rate per inner step."""

    lr: float | Sequence[float]

    def init(self, params: Params) -> None:
        return None

    def __call__(self, params: Params, grads: Params, state: None, step: int,
                 value: Tensor | None = None) -> tuple[Params, None]:
        lr = per_step(self.lr, step)
        return {name: p - lr * grads[name] for name, p in params.items()}, state


@dataclass(frozen=True)
class PerParameterSGD:
    """``theta <- theta - alpha (*) g`` with one (learnable) rate tensor per parameter (Meta-SGD).

    ``lrs[name]`` broadcasts against ``params[name]``: a tensor of the same shape gives a
    rate per coordinate, a scalar tensor a rate per parameter tensor. With
    ``lrs[name]`` of shape ``(steps, *shape)`` and ``stepwise=True`` every inner step has
    its own rates (MAML++'s per-step rates, learned).
    """

    lrs: Mapping[str, Tensor]
    stepwise: bool = False

    def init(self, params: Params) -> None:
        return None

    def __call__(self, params: Params, grads: Params, state: None, step: int,
                 value: Tensor | None = None) -> tuple[Params, None]:
        def rate(name: str) -> Tensor:
            lr = self.lrs[name]
            return lr[min(step, lr.shape[0] - 1)] if self.stepwise else lr

        return {name: p - rate(name) * grads[name] for name, p in params.items()}, state


@dataclass(frozen=True)
class Adam:
    """Adam (Kingma & Ba 2015) as a pure rule, with bias correction; Reptile's inner optimiser.

    ``b1=0`` is the setting of Nichol et al. (2018) for Omniglot and Mini-ImageNet. The
    bias correction is folded into the step size (the paper's section 2 formulation, also
    TensorFlow's), so ``eps`` is the paper's "epsilon hat"; ``torch.optim.Adam`` adds eps
    after the correction and differs by O(eps).

    The state is ``(m, v, count)``: the moments and the number of steps they have seen (a
    scalar tensor, as optax's ``count``), which sets the bias correction. ``step`` only
    picks the rate of a per-step ``lr``, so a state carried over from earlier tasks (see
    Reptile's ``inner_state="persistent"``) keeps its own bias correction.
    """

    lr: float | Sequence[float] = 1e-3
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8

    def init(self, params: Params) -> tuple[Params, Params, Tensor]:
        zeros = {name: torch.zeros_like(p) for name, p in params.items()}
        first = next(iter(params.values()))
        return zeros, dict(zeros), torch.zeros((), dtype=first.dtype, device=first.device)

    def __call__(self, params: Params, grads: Params, state: tuple[Params, Params, Tensor], step: int,
                 value: Tensor | None = None):
        m, v, count = state
        m = {k: self.b1 * m[k] + (1 - self.b1) * g for k, g in grads.items()}
        v = {k: self.b2 * v[k] + (1 - self.b2) * g * g for k, g in grads.items()}
        count = count + 1
        lr = per_step(self.lr, step) * (1 - self.b2**count).sqrt() / (1 - self.b1**count)
        new = {k: p - lr * m[k] / (v[k].sqrt() + self.eps) for k, p in params.items()}
        return new, (m, v, count)


def global_norm(tensors: Params) -> Tensor:
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(t) for t in tensors.values()]))


@dataclass(frozen=True)
class Clipped:
    """Rescale the gradients to global L2 norm at most ``max_norm``, then apply ``rule``.

    The rescaling is a smooth function of the gradients (no branch on data), so it is
    differentiated through like the rest of the inner loop.
    """

    rule: UpdateRule
    max_norm: float

    def init(self, params: Params) -> Any:
        return self.rule.init(params)

    def __call__(self, params: Params, grads: Params, state: Any, step: int,
                 value: Tensor | None = None) -> tuple[Params, Any]:
        scale = torch.clamp(self.max_norm / (global_norm(grads) + 1e-6), max=1.0)
        return self.rule(params, {k: g * scale for k, g in grads.items()}, state, step, value=value)
