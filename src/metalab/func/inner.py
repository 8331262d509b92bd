"""The inner loop: k gradient steps on a task's support loss, with any update rule."""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from metalab._types import Params
from metalab.func.rules import UpdateRule


def inner_loop(
    loss_fn: Callable[[Params], Tensor],
    params: Params,
    rule: UpdateRule,
    steps: int,
    first_order: bool = False,
) -> Params:
    """Adapt ``params`` by ``steps`` applications of ``rule`` to the gradients of ``loss_fn``.

    Second order (default): gradients are taken with ``torch.func.grad`` on the
    graph-connected parameters, so the outer backward pass differentiates through every
    inner step (Hessian-vector products included). First order: gradients are taken at
    detached parameters and enter the update as constants, so d(adapted)/d(theta) is the
    identity and the meta-gradient is the query gradient at the adapted parameters. The
    gradients are detached too, so inputs that depend on other meta-parameters (ANIL's
    features) do not carry a graph into them either.

    Works the same in a Python loop over tasks and under ``torch.func.vmap``.

    Args:
        loss_fn: support loss of one task as a function of the parameters.
        params: initial (meta-)parameters.
        rule: the update rule, e.g. :class:`metalab.func.SGD`; it also receives the support
            loss as ``value`` (rules that read it, like :class:`metalab.func.MetaLSTM`).
        steps: number of inner steps (0 returns ``params``).
        first_order: drop second-order terms.
    """
    grad_fn = torch.func.grad_and_value(loss_fn)
    state = rule.init(params)
    for step in range(steps):
        if first_order:  # constants: no graph to theta through params or through the inputs
            grads, value = grad_fn({name: p.detach() for name, p in params.items()})
            grads, value = {name: g.detach() for name, g in grads.items()}, value.detach()
        else:
            grads, value = grad_fn(params)
        params, state = rule(params, grads, state, step, value=value)
    return params
