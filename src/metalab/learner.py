"""The familiar API of older libraries (learn2learn, higher), as a thin layer over :mod:`metalab.func`.

Wrap any ``nn.Module``, clone a learner per task, adapt it with a support loss and
back-propagate the query loss into the wrapped model's parameters::

    maml = MAML(model, lr=0.4, first_order=False)      # any nn.Module
    opt = torch.optim.Adam(maml.parameters(), 1e-3)
    for batch in tasks:
        opt.zero_grad()
        for x_s, y_s, x_q, y_q in batch:
            learner = maml.clone()
            learner.adapt(criterion(learner(x_s), y_s))   # one inner step, may be called repeatedly
            loss2 = criterion(learner(x_q), y_q)
            loss2.backward()
        opt.step()

Nothing is copied: a :class:`Learner` holds a reference to the wrapped model and a dict of
*fast* parameters, initially the model's own ``nn.Parameter`` objects, and runs the model
with :func:`torch.func.functional_call` on them. ``adapt`` replaces the dict by the output
of the core update rule (:class:`metalab.func.SGD`, :class:`metalab.func.PerParameterSGD`),
so the query loss stays a differentiable function of the model's parameters (and of
Meta-SGD's rates) and its backward pass gives the meta-gradient. The model's parameters
are never modified; its buffers are its own (batch norm running statistics, if tracked,
are updated as in any forward pass).

For the same model, rates and tasks, the meta-gradient is the one of the core algorithms
:class:`metalab.algorithms.MAML` and :class:`metalab.algorithms.MetaSGD` (with the support
and query losses :func:`metalab.func.task_loss`, the per-task losses divided by the
number of tasks, ``task_mode="loop"``): tested to 1e-10 in float64.

References: Finn, Abbeel & Levine, ICML 2017 (MAML); Li et al., arXiv:1707.09835 (Meta-SGD);
Antoniou et al., ICLR 2019 (MAML++, per-step rates); Arnold et al., "learn2learn",
arXiv:2008.12284 (this API).
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Iterator, Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call

from metalab._types import Params
from metalab.func import SGD, PerParameterSGD, UpdateRule, params_of
from metalab.utils.errors import MetalabError


def _check_lr(lr: Any, owner: str) -> float | tuple[float, ...]:
    """``lr`` as a float, or as a tuple of floats (one per inner step)."""

    def number(value: Any) -> bool:
        return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)

    if number(lr):
        return float(lr)
    if isinstance(lr, Sequence) and not isinstance(lr, str) and len(lr) > 0 and all(number(r) for r in lr):
        return tuple(float(r) for r in lr)
    raise MetalabError(
        f"{owner}: lr must be a finite number or a non-empty sequence of them (one rate per "
        f"adaptation step, the last one reused), got {lr!r}"
    )


class Learner:
    """A model with its own fast parameters: what :meth:`MAML.clone` returns.

    Calling the learner runs the wrapped model with the fast parameters
    (``torch.func.functional_call``; buffers stay the model's own). Each :meth:`adapt`
    takes one step of the update rule on a loss, keeping the graph back to the
    meta-parameters (second order) or treating the inner gradients as constants (first
    order), exactly as :func:`metalab.func.inner_loop` does.

    Attributes:
        module: the wrapped model (a reference, never a copy; never modified).
        params: the current fast parameters, ``{name: tensor}`` as in
            ``module.named_parameters()``; initially the model's ``nn.Parameter`` objects.
        rule: the update rule (:class:`metalab.func.SGD` or :class:`metalab.func.PerParameterSGD`).
        step: adaptation steps taken so far (the index of the next step's per-step rate).
        first_order, allow_unused, allow_nograd: the defaults of :meth:`adapt`, see :class:`MAML`.
    """

    def __init__(
        self,
        module: nn.Module,
        params: Params,
        rule: UpdateRule,
        *,
        first_order: bool = False,
        allow_unused: bool = False,
        allow_nograd: bool = False,
        step: int = 0,
        state: Any = None,
    ):
        self.module = module
        self.params = dict(params)
        self.rule = rule
        self.first_order = first_order
        self.allow_unused = allow_unused
        self.allow_nograd = allow_nograd
        self.step = step
        self._state = rule.init(self.params) if state is None else state

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return functional_call(self.module, self.params, args, kwargs)

    def adapt(
        self,
        loss: Tensor,
        first_order: bool | None = None,
        allow_unused: bool | None = None,
        allow_nograd: bool | None = None,
    ) -> None:
        """One step of the update rule on ``loss``: ``theta <- theta - lr_step * grad loss``.

        Args:
            loss: scalar loss computed from this learner's outputs.
            first_order: override the learner's setting for this step: ``True`` takes the
                gradients without a graph (constants), ``False`` differentiates through them.
            allow_unused, allow_nograd: override the learner's settings for this step
                (see :class:`MAML`).

        Raises:
            MetalabError: the loss is not a scalar, has no graph, or does not depend on a
                parameter (unless ``allow_unused``); a parameter does not require grad
                (unless ``allow_nograd``).
        """
        first_order = self.first_order if first_order is None else first_order
        allow_unused = self.allow_unused if allow_unused is None else allow_unused
        allow_nograd = self.allow_nograd if allow_nograd is None else allow_nograd
        if not isinstance(loss, Tensor) or loss.numel() != 1:
            shape = tuple(loss.shape) if isinstance(loss, Tensor) else type(loss).__name__
            raise MetalabError(
                f"adapt expects a scalar loss tensor, got {shape}; reduce it first (e.g. loss.mean())"
            )
        frozen = [name for name, p in self.params.items() if not p.requires_grad]
        if frozen and not allow_nograd:
            raise MetalabError(
                f"parameter(s) {frozen} do not require grad, so adapt cannot differentiate with respect "
                "to them; pass allow_nograd=True (to MAML/MetaSGD, clone or adapt) to keep them fixed, "
                "or set requires_grad=True on them"
            )
        names = [name for name, p in self.params.items() if p.requires_grad]
        if names:
            if not loss.requires_grad:
                raise MetalabError(
                    "the loss passed to adapt has no graph, so it does not depend on the learner's "
                    "parameters; compute it from the learner's output (learner(x)), outside torch.no_grad()"
                )
            # The graph is retained in first order too (learn2learn frees it), so the support
            # loss may still enter the meta-objective; it costs nothing once the loss is dropped.
            grads = torch.autograd.grad(
                loss,
                [self.params[name] for name in names],
                create_graph=not first_order,
                retain_graph=True,
                allow_unused=True,
            )
            unused = [name for name, g in zip(names, grads) if g is None]
            if unused and not allow_unused:
                raise MetalabError(
                    f"the loss passed to adapt does not depend on parameter(s) {unused}; pass "
                    "allow_unused=True (to MAML/MetaSGD, clone or adapt) to treat their gradient as zero"
                )
            grad_dict = {
                name: torch.zeros_like(self.params[name]) if g is None else (g.detach() if first_order else g)
                for name, g in zip(names, grads)
            }
            fast = {name: self.params[name] for name in names}
            new, self._state = self.rule(fast, grad_dict, self._state, self.step,
                                         value=loss.detach() if first_order else loss)
            # parameters that do not require grad (allow_nograd) keep their value and object
            self.params = {name: new.get(name, p) for name, p in self.params.items()}
        self.step += 1

    def clone(self) -> Learner:
        """A new learner starting from the current fast parameters (graph kept, step count too)."""
        return Learner(
            self.module,
            self.params,
            self.rule,
            first_order=self.first_order,
            allow_unused=self.allow_unused,
            allow_nograd=self.allow_nograd,
            step=self.step,
            state=self._state,
        )

    def named_parameters(self) -> Iterator[tuple[str, Tensor]]:
        """``(name, fast parameter)`` pairs, in the order of ``module.named_parameters()``."""
        return iter(list(self.params.items()))

    def parameters(self) -> Iterator[Tensor]:
        """The fast parameters, in the order of ``module.parameters()``."""
        return iter(list(self.params.values()))

    def __repr__(self) -> str:
        return f"Learner({type(self.module).__name__}, rule={self.rule!r}, step={self.step})"


class MAML(nn.Module):
    """MAML (and FO-MAML) around any ``nn.Module``, in the API of learn2learn.

    Example::

        maml = MAML(model, lr=0.4, first_order=False)
        opt = torch.optim.Adam(maml.parameters(), 1e-3)
        for batch in tasks:
            opt.zero_grad()
            for x_s, y_s, x_q, y_q in batch:
                learner = maml.clone()
                learner.adapt(criterion(learner(x_s), y_s))  # may be called repeatedly
                loss2 = criterion(learner(x_q), y_q)
                loss2.backward()
            opt.step()

    ``maml.parameters()`` are the model's parameters (the meta-parameters): ``self.module``
    is the model itself, registered as a submodule, and ``maml(x)`` calls it. The
    meta-gradient equals the core :class:`metalab.algorithms.MAML`'s for the same model,
    rates and losses (see the module docstring).

    Args:
        model: the network; it is never copied and adaptation never changes its parameters.
        lr: inner SGD step size, or one per adaptation step (MAML++): the i-th ``adapt`` of
            a learner uses ``lr[i]``, the last one reused beyond the end.
        first_order: treat the inner gradients as constants (no second-order terms): the
            meta-gradient is then the query gradient at the adapted parameters.
        allow_unused: a parameter that the adaptation loss does not depend on gets a zero
            gradient (it keeps its value); without it ``adapt`` raises a ``MetalabError``
            naming the parameter. A loss with no graph at all (computed under
            ``torch.no_grad()`` or from detached tensors) always raises.
        allow_nograd: parameters with ``requires_grad=False`` are not differentiated and
            keep their value (frozen layers); without it ``adapt`` raises a
            ``MetalabError`` naming them.

    References: Finn, Abbeel & Levine, ICML 2017; Antoniou, Edwards & Storkey, ICLR 2019 (per-step rates).
    """

    def __init__(
        self,
        model: nn.Module,
        lr: float | Sequence[float],
        first_order: bool = False,
        allow_unused: bool = False,
        allow_nograd: bool = False,
    ):
        super().__init__()
        if not isinstance(model, nn.Module):
            raise MetalabError(f"{type(self).__name__} wraps an nn.Module, got {type(model).__name__}")
        self.module = model
        self.lr = _check_lr(lr, type(self).__name__)
        self.first_order = bool(first_order)
        self.allow_unused = bool(allow_unused)
        self.allow_nograd = bool(allow_nograd)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.module(*args, **kwargs)

    def rule(self) -> UpdateRule:
        """The inner update rule of a new learner."""
        return SGD(self.lr)

    def clone(
        self,
        first_order: bool | None = None,
        allow_unused: bool | None = None,
        allow_nograd: bool | None = None,
    ) -> Learner:
        """A learner whose fast parameters are the model's parameters (the graph's leaves).

        The arguments override the wrapper's settings for this learner.
        """
        return Learner(
            self.module,
            params_of(self.module),
            self.rule(),
            first_order=self.first_order if first_order is None else first_order,
            allow_unused=self.allow_unused if allow_unused is None else allow_unused,
            allow_nograd=self.allow_nograd if allow_nograd is None else allow_nograd,
        )

    def extra_repr(self) -> str:
        return f"lr={self.lr}, first_order={self.first_order}"


class MetaSGD(MAML):
    """Meta-SGD around any ``nn.Module``: MAML with a learned rate per parameter coordinate.

    ``self.lrs`` holds one ``nn.Parameter`` per model parameter, of the same shape,
    initialised to ``lr``, so ``parameters()`` yields the model's parameters and then the
    rates, and one outer optimiser learns both. Learners adapt with
    :class:`metalab.func.PerParameterSGD`: ``theta <- theta - alpha (*) grad``. With ``lr``
    a sequence of ``n`` rates, every rate tensor has shape ``(n, *shape)`` (entry ``i``
    initialised to ``lr[i]``) and the i-th ``adapt`` uses entry ``i``, the last one reused
    (learned per-step rates, as the core's ``per_step_lrs``). The meta-gradient, including
    the rates' gradient, equals the core :class:`metalab.algorithms.MetaSGD`'s.

    The arguments and usage are :class:`MAML`'s.

    References: Li, Zhou, Chen & Li, "Meta-SGD", arXiv:1707.09835, 2017, eq. 2-3.
    """

    def __init__(
        self,
        model: nn.Module,
        lr: float | Sequence[float],
        first_order: bool = False,
        allow_unused: bool = False,
        allow_nograd: bool = False,
    ):
        super().__init__(model, lr, first_order, allow_unused, allow_nograd)
        self.stepwise = isinstance(self.lr, tuple)
        rates = self.lr if isinstance(self.lr, tuple) else (self.lr,)
        self._names = list(params_of(model))
        self.lrs = nn.ParameterList()
        for p in params_of(model).values():
            rate = torch.stack([torch.full(p.shape, r, dtype=p.dtype, device=p.device) for r in rates])
            self.lrs.append(nn.Parameter(rate if self.stepwise else rate[0]))

    def rule(self) -> UpdateRule:
        names = list(params_of(self.module))
        if names != self._names:
            raise MetalabError(
                f"the model's parameters changed since MetaSGD was built ({self._names} -> {names}); "
                "build MetaSGD after the model is complete"
            )
        return PerParameterSGD(dict(zip(names, self.lrs)), stepwise=self.stepwise)
