"""Inner-loop update rules, in the style of optax: pure functions of (params, grads, state).

A rule has ``init(params) -> state`` and ``__call__(params, grads, state, step) ->
(params, state)``; ``step`` is the inner step index, so per-step hyper-parameters (as in
MAML++) are a property of the rule, not of the loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, Sequence

from metalab._types import Params


class UpdateRule(Protocol):
    def init(self, params: Params) -> Any: ...

    def __call__(self, params: Params, grads: Params, state: Any, step: int) -> tuple[Params, Any]: ...


@dataclass(frozen=True)
class SGD:
    """``theta <- theta - lr_t * g``; ``lr`` is one rate or one rate per inner step.

    With a sequence shorter than the number of steps the last rate is reused.
    """

    lr: float | Sequence[float]

    def rate(self, step: int) -> float:
        if isinstance(self.lr, (int, float)):
            return float(self.lr)
        return float(self.lr[min(step, len(self.lr) - 1)])

    def init(self, params: Params) -> None:
        return None

    def __call__(self, params: Params, grads: Params, state: None, step: int) -> tuple[Params, None]:
        lr = self.rate(step)
        return {name: p - lr * grads[name] for name, p in params.items()}, state
