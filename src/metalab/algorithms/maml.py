"""MAML and first-order MAML.

References: Finn, Abbeel & Levine, "Model-Agnostic Meta-Learning for Fast Adaptation of
Deep Networks", ICML 2017.

Algorithm 2 of the paper, line by line:
- line 5-7, inner update ``theta'_i = theta - alpha * grad L_Ti(f_theta)`` on the support
  set (repeated ``inner_steps`` times): :meth:`GradientMethod.adapted`, i.e.
  :func:`metalab.func.inner_loop` with :class:`metalab.func.SGD`;
- line 10, meta-objective ``sum_i L_Ti(f_theta'_i)`` on the query sets: ``meta_loss``
  (mean over the meta-batch; the outer Adam step is the trainer's);
- first-order approximation (section 5.2): ``first_order=True`` treats the inner
  gradients as constants.
Batch norm uses per-task batch statistics (see :mod:`metalab.nn.batchnorm`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from metalab.algorithms.gradient import GradientConfig, GradientMethod
from metalab.algorithms.registry import register


@dataclass(frozen=True)
class MAMLConfig(GradientConfig):
    __doc__ = GradientConfig.__doc__


@register
class MAML(GradientMethod):
    """Second-order MAML over any backbone from :func:`metalab.nn.make_backbone`."""

    name = "maml"
    Config = MAMLConfig
    task_batched = True


@dataclass(frozen=True)
class FOMAMLConfig(MAMLConfig):
    __doc__ = MAMLConfig.__doc__
    first_order: bool = field(default=True)


@register
class FOMAML(MAML):
    """First-order MAML: MAML with ``first_order=True`` by default."""

    name = "fomaml"
    Config = FOMAMLConfig
