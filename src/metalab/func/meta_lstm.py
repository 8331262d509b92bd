"""The Meta-LSTM update rule of Ravi & Larochelle (2017) as a pure function of its weights.

The learner's parameters are the cell state of an LSTM that reads, for every parameter
coordinate, the preprocessed gradient and loss. One set of LSTM weights serves every
coordinate (the paper's parameter sharing, section 3.3), so the coordinates are simply the
batch dimension of the LSTM. Per coordinate, with ``theta_{t-1}`` the cell state:

- layer 1, a standard LSTM cell (``weight_ih``, ``weight_hh``, ``bias``) on
  ``x_t = [pre(grad_t), pre(loss_t)]`` (4 numbers): hidden state ``h_t``;
- input gate ``i_t = sigmoid(W_I [h_t, theta_{t-1}, i_{t-1}] + b_I)`` (eq. 2);
- forget gate ``f_t = sigmoid(W_F [h_t, theta_{t-1}, f_{t-1}] + b_F)`` (eq. 3);
- cell update ``theta_t = f_t * theta_{t-1} + i_t * c~_t`` with ``c~_t = -grad_t`` (eq. 1).

With ``i_t = alpha`` and ``f_t = 1`` this is SGD with rate ``alpha`` (the paper's remark
after eq. 1); ``input_gate``/``forget_gate`` fix the gates to constants to make that
exact. ``pre`` is the preprocessing of Andrychowicz et al. (2016) the paper adopts (section
3.3): ``x -> (log(|x|)/p, sign(x))`` if ``|x| >= e^-p``, else ``(-1, e^p x)``, ``p = 10``.

References: Ravi & Larochelle, "Optimization as a Model for Few-Shot Learning", ICLR 2017.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, NamedTuple

import torch
from torch import Tensor

from metalab._types import Params
from metalab.utils.errors import MetalabError

META_LSTM_WEIGHTS = ("weight_ih", "weight_hh", "bias", "W_I", "b_I", "W_F", "b_F")


def preprocess(x: Tensor, p: float = 10.0) -> Tensor:
    """``(..., ) -> (..., 2)``: log-magnitude and sign, linear near zero (Andrychowicz et al. 2016).

    Written as ``(log(max(|x|, e^-p)) / p, clamp(e^p x, -1, 1))``, which is the two-branch
    definition exactly (both branches meet at ``|x| = e^-p``) with finite gradients everywhere.
    """
    magnitude = torch.log(x.abs().clamp(min=math.exp(-p))) / p
    direction = (x * math.exp(p)).clamp(-1.0, 1.0)
    return torch.stack([magnitude, direction], dim=-1)


class MetaLSTMState(NamedTuple):
    """Per-coordinate recurrent state: layer 1's ``(h, c)`` ``(P, hidden)``, last gates ``(P,)``."""

    h: Tensor
    c: Tensor
    input_gate: Tensor
    forget_gate: Tensor


def _flat(tensors: Params) -> Tensor:
    return torch.cat([t.reshape(-1) for t in tensors.values()])


def _unflat(flat: Tensor, like: Params) -> Params:
    out, start = {}, 0
    for name, t in like.items():
        out[name] = flat[start:start + t.numel()].view_as(t)
        start += t.numel()
    return out


@dataclass(frozen=True)
class MetaLSTM:
    """The update rule; ``weights`` maps :data:`META_LSTM_WEIGHTS` to tensors.

    Shapes, with ``H`` the hidden size: ``weight_ih (4H, 4)``, ``weight_hh (4H, H)``,
    ``bias (4H,)`` (layer 1, rows in the gate order input, forget, output, cell; note that
    ``torch.nn.LSTMCell`` orders them input, forget, cell, output), ``W_I`` and ``W_F (H + 2,)``, ``b_I`` and ``b_F`` scalars. The rule needs
    the support loss: :func:`metalab.func.inner_loop` passes it as ``value``.

    Args:
        weights: the meta-learner's parameters (graph-connected during meta-training).
        input_gate, forget_gate: constants replacing the computed gates (``None``: learned).
        p: the preprocessing constant.
    """

    weights: Mapping[str, Tensor]
    input_gate: float | None = None
    forget_gate: float | None = None
    p: float = 10.0

    def init(self, params: Params) -> MetaLSTMState:
        n = sum(t.numel() for t in params.values())
        ref = self.weights["weight_hh"]
        zeros = ref.new_zeros(n, ref.shape[1])
        return MetaLSTMState(zeros, zeros, ref.new_zeros(n), ref.new_zeros(n))

    def __call__(self, params: Params, grads: Params, state: MetaLSTMState, step: int,
                 value: Tensor | None = None) -> tuple[Params, MetaLSTMState]:
        if value is None:
            raise MetalabError("the Meta-LSTM rule reads the loss: call it with value=<support loss>")
        w = self.weights
        theta, grad = _flat(params), _flat(grads)
        x = torch.cat([preprocess(grad, self.p), preprocess(value.reshape(1), self.p).expand(grad.shape[0], 2)], 1)
        # layer 1, an LSTM cell with its gates stored in the order (i, f, o, g): one sigmoid over the first
        # three blocks (the rule runs on every coordinate, so this cell is most of a Meta-LSTM step)
        gates = torch.addmm(torch.addmm(w["bias"], x, w["weight_ih"].t()), state.h, w["weight_hh"].t())
        hidden = state.h.shape[1]
        i1, f1, o1 = torch.sigmoid(gates[:, :3 * hidden]).chunk(3, dim=1)
        c1 = torch.addcmul(f1 * state.c, i1, torch.tanh(gates[:, 3 * hidden:]))
        h1 = o1 * torch.tanh(c1)
        i = self._gate(self.input_gate, w["W_I"], w["b_I"], h1, theta, state.input_gate)
        f = self._gate(self.forget_gate, w["W_F"], w["b_F"], h1, theta, state.forget_gate)
        new = f * theta - i * grad
        return _unflat(new, params), MetaLSTMState(h1, c1, i, f)

    @staticmethod
    def _gate(fixed: float | None, weight: Tensor, bias: Tensor, h: Tensor, theta: Tensor, last: Tensor) -> Tensor:
        if fixed is not None:
            return torch.full_like(theta, fixed)
        inputs = torch.cat([h, theta.unsqueeze(1), last.unsqueeze(1)], dim=1)
        return torch.sigmoid(inputs @ weight + bias)
