"""Modules as pure functions of a parameter dict."""

from __future__ import annotations

from torch import Tensor, nn
from torch.func import functional_call

from metalab._types import Params


def params_of(module: nn.Module) -> Params:
    """The module's own parameters as a dict (the meta-parameters, graph-connected)."""
    return dict(module.named_parameters())


def forward(module: nn.Module, params: Params, x: Tensor) -> Tensor:
    """``module(x)`` with ``params`` in place of its parameters (buffers are the module's)."""
    return functional_call(module, params, (x,))
