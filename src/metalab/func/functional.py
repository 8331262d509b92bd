"""Modules as pure functions of a parameter dict."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from metalab._types import Params


def params_of(module: nn.Module) -> Params:
    """The module's own parameters as a dict (the meta-parameters, graph-connected)."""
    return dict(module.named_parameters())


def forward(module: nn.Module, params: Params, x: Tensor) -> Tensor:
    """``module(x)`` with ``params`` in place of its parameters (buffers are the module's).

    Modules with a ``functional(params, x)`` method (metalab's backbones) and ``nn.Linear``
    are run as pure functions (no attribute swapping: cheaper, and safe in threads);
    others through ``torch.func.functional_call``.
    """
    if type(module) is nn.Linear:
        return F.linear(x, params["weight"], params.get("bias"))
    if runs_pure(module):
        return module.functional(params, x)
    return functional_call(module, params, (x,))


def runs_pure(module: nn.Module) -> bool:
    """Whether :func:`forward` runs ``module`` as a pure function (no parameter swapping,
    so several threads may run it at once with different parameters)."""
    return type(module) is nn.Linear or callable(getattr(module, "functional", None))

