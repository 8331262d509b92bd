"""Meta-LSTM: an LSTM meta-learner is the learner's optimiser and its cell state the learner.

Reference: Ravi & Larochelle, "Optimization as a Model for Few-Shot Learning", ICLR 2017.

The paper, mapped to code:
- eq. 1-3, the cell update ``theta_t = f_t * theta_{t-1} - i_t * grad_t`` with learned input
  and forget gates, one LSTM shared by every coordinate (section 3.3), inputs preprocessed
  as in Andrychowicz et al. (2016): :class:`metalab.func.MetaLSTM`, a pure update rule,
  so any inner loop of the functional core can run it; here it replaces MAML's SGD in
  :class:`GradientMethod`'s inner loop (``rule``);
- the initial cell state ``c_0`` is the learner's initialisation: the backbone's
  parameters, meta-learned with the LSTM (section 3.2);
- Algorithm 1: ``inner_steps`` updates on the support set (``D_train``), then the meta-loss
  is the learner's loss on the query set (``D_test``) with the final cell state,
  back-propagated through the unrolled updates into the LSTM weights and ``c_0``;
- section 3.3, "we ignore the gradients of the gradient and loss inputs": the gradients and
  the loss enter the meta-learner as constants (``first_order=True``, the default; with
  ``first_order=False`` they are differentiated too);
- section 3.4, batch normalisation: the learner's batch norm uses the statistics of the
  batch it is given, in meta-training and meta-testing alike, and keeps no running averages
  across episodes (the paper's fix for information leaking between datasets);
- section 3.3 initialisation: forget-gate bias large (``forget_bias``, so ``f ~ 1``),
  input-gate bias small: ``logit(inner_lr)``, so the first updates are SGD-like with
  rate ``inner_lr`` (the paper draws them from U(4, 6) and U(-5, -4); ``inner_lr=0.01``
  gives -4.6).
Deviations: every update uses the whole support set (the paper iterates over mini-batches
of ``D_train``); the learner is metalab's conv4 (64 channels) rather than the paper's
32-channel network for Mini-ImageNet.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from metalab.algorithms.gradient import GradientConfig, GradientMethod
from metalab.algorithms.registry import register
from metalab.data.benchmarks import TaskSpec
from metalab.func import MetaLSTM, UpdateRule
from metalab.utils.errors import MetalabError


@dataclass(frozen=True)
class MetaLSTMConfig(GradientConfig):
    """Meta-LSTM options; the inner-loop options of :class:`GradientConfig` apply too.

    Attributes:
        inner_lr: the input gate's initial value (its bias starts at ``logit(inner_lr)``).
        inner_steps: learner updates per episode (the LSTM's unrolled length).
        first_order: the gradient and loss inputs are constants (the paper's choice).
        hidden_size: hidden units of the LSTM's first layer (20 in the paper's code).
        forget_bias: the forget gate's initial bias (``sigmoid(5) = 0.993``).
        init_scale: the gate weights ``W_I``, ``W_F`` start uniform in ``[-s, s]``.
    """

    inner_lr: float = 0.01
    inner_steps: int = 5
    first_order: bool = field(default=True)
    hidden_size: int = 20
    forget_bias: float = 5.0
    init_scale: float = 0.01

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.inner_lr, (int, float)) or not 0 < self.inner_lr < 1:
            raise MetalabError(f"meta_lstm's inner_lr is the input gate's initial value: a number in (0, 1), "
                               f"got {self.inner_lr!r}")
        if isinstance(self.hidden_size, bool) or not isinstance(self.hidden_size, int) or self.hidden_size < 1:
            raise MetalabError(f"hidden_size must be a positive integer, got {self.hidden_size!r}")
        for name in ("forget_bias", "init_scale"):
            if not math.isfinite(getattr(self, name)):
                raise MetalabError(f"{name} must be finite, got {getattr(self, name)}")


@register
class MetaLSTMLearner(GradientMethod):
    """A conv4 (or MLP) learner whose updates come from a meta-learned LSTM."""

    name = "meta_lstm"
    Config = MetaLSTMConfig
    config: MetaLSTMConfig

    def __init__(self, spec: TaskSpec, config: MetaLSTMConfig, model: nn.Module | None = None):
        super().__init__(spec, config, model)
        h, s = config.hidden_size, config.init_scale
        cell = nn.LSTMCell(4, h)  # PyTorch's initialisation for layer 1
        with torch.no_grad():
            self.meta_lstm = nn.ParameterDict({
                "weight_ih": nn.Parameter(cell.weight_ih.clone()),
                "weight_hh": nn.Parameter(cell.weight_hh.clone()),
                "bias": nn.Parameter(cell.bias_ih + cell.bias_hh),
                "W_I": nn.Parameter(torch.empty(h + 2).uniform_(-s, s)),
                "b_I": nn.Parameter(torch.tensor(math.log(config.inner_lr / (1 - config.inner_lr)))),
                "W_F": nn.Parameter(torch.empty(h + 2).uniform_(-s, s)),
                "b_F": nn.Parameter(torch.tensor(float(config.forget_bias))),
            })

    def rule(self) -> UpdateRule:
        return MetaLSTM(dict(self.meta_lstm))
