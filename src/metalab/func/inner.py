"""The inner loop: k gradient steps on a task's support loss, with any update rule."""

from __future__ import annotations

from functools import partial
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
    under_vmap: bool = False,
) -> Params:
    """Adapt ``params`` by ``steps`` applications of ``rule`` to the gradients of ``loss_fn``.

    Second order (default): gradients are taken on the graph-connected parameters with a
    graph of their own, so the outer backward pass differentiates through every inner step
    (Hessian-vector products included). First order: gradients are taken at detached
    parameters and enter the update as constants, so d(adapted)/d(theta) is the identity and
    the meta-gradient is the query gradient at the adapted parameters. The gradients are
    detached too, so inputs that depend on other meta-parameters (ANIL's features) do not
    carry a graph into them either. Either way the gradients are taken even under
    ``torch.no_grad`` (evaluation), and a parameter the loss does not use gets a zero gradient.

    Works the same in a Python loop over tasks, on threads and, with ``under_vmap=True``,
    under ``torch.func.vmap``, where the gradients come from ``torch.func.grad_and_value``;
    elsewhere from ``torch.autograd.grad``, the same numbers without functorch's wrapping of
    every operation (faster; see docs/speed_and_exactness.md "The inner loop").

    Args:
        loss_fn: support loss of one task as a function of the parameters.
        params: initial (meta-)parameters.
        rule: the update rule, e.g. :class:`metalab.func.SGD`; it also receives the support
            loss as ``value`` (rules that read it, like :class:`metalab.func.MetaLSTM`).
        steps: number of inner steps (0 returns ``params``).
        first_order: drop second-order terms.
        under_vmap: the call runs inside ``torch.func.vmap`` (``torch.autograd.grad`` cannot).
    """
    grad_fn = partial(grad_and_value, loss_fn, under_vmap=under_vmap)
    state = rule.init(params)
    for step in range(steps):
        if first_order:  # constants: no graph to theta through params or through the inputs
            grads, value = grad_fn({name: p.detach() for name, p in params.items()})
            grads, value = {name: g.detach() for name, g in grads.items()}, value.detach()
        else:
            grads, value = grad_fn(params)
        params, state = rule(params, grads, state, step, value=value)
    return params


def grad_and_value(loss_fn: Callable[[Params], Tensor], params: Params,
                   under_vmap: bool = False) -> tuple[Params, Tensor]:
    """``torch.func.grad_and_value(loss_fn)(params)``; outside ``torch.func.vmap`` (``under_vmap=False``) through
    ``torch.autograd.grad``: a graph of the gradients (``create_graph``) where the parameters carry one, the
    gradients at detached copies of those that do not (all of them under ``torch.no_grad``), zeros for parameters
    the loss does not use."""
    if under_vmap:
        return torch.func.grad_and_value(loss_fn)(params)
    outer = torch.is_grad_enabled()  # under torch.no_grad nothing is connected
    with torch.enable_grad():
        inputs = {name: p if p.requires_grad and outer else p.detach().requires_grad_() for name, p in params.items()}
        value = loss_fn(inputs)
        connected = any(p is params[name] for name, p in inputs.items())
        grads = torch.autograd.grad(value, list(inputs.values()), create_graph=connected, allow_unused=True)
    grads = {name: torch.zeros_like(p) if g is None else g for (name, p), g in zip(inputs.items(), grads)}
    return grads, value if connected else value.detach()
