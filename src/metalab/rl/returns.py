"""Returns, advantages and the linear feature baseline of policy-gradient meta-RL.

Trajectories are batched tensors with time last: rewards ``(..., H)`` and a mask ``(..., H)``
that is 1 where a step happened (0 after an episode ended early), observations
``(..., H, obs_dim)``. Everything is vectorised over the leading dims; a reference loop is
in the tests.
"""

from __future__ import annotations

import torch
from torch import Tensor

from metalab.utils.errors import MetalabError


def _check_discount(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise MetalabError(f"{name} must be in [0, 1], got {value!r}")


def discounted_returns(rewards: Tensor, mask: Tensor, gamma: float) -> Tensor:
    """Returns-to-go ``R_t = sum_{k >= t} gamma^(k-t) r_k`` over the steps that happened.

    Args:
        rewards: ``(..., H)``.
        mask: ``(..., H)``, 1 for steps that happened.
        gamma: discount in ``[0, 1]``.

    Returns:
        ``(..., H)``, 0 where ``mask`` is 0.
    """
    _check_discount("gamma", gamma)
    return _discounted_sums(rewards * mask, gamma) * mask


def gae(rewards: Tensor, values: Tensor, mask: Tensor, gamma: float, lam: float) -> Tensor:
    """Generalised advantage estimates (Schulman et al. 2016) ``A_t = sum_k (gamma lam)^k delta_{t+k}``.

    ``delta_t = r_t + gamma V_{t+1} - V_t`` with ``V_{t+1} = 0`` after the last step that
    happened (an episode that ended, or the horizon). ``lam = 1`` gives ``R_t - V_t``.

    Args:
        rewards, values, mask: ``(..., H)``.

    Returns:
        ``(..., H)``, 0 where ``mask`` is 0.
    """
    _check_discount("gamma", gamma)
    _check_discount("lam", lam)
    values = values * mask
    next_values = torch.cat([values[..., 1:], torch.zeros_like(values[..., :1])], dim=-1)
    deltas = (rewards + gamma * next_values - values) * mask
    return _discounted_sums(deltas, gamma * lam) * mask


def _discounted_sums(x: Tensor, factor: float) -> Tensor:
    """``out_t = sum_{k >= t} factor^(k-t) x_k`` along the last dim."""
    out = torch.zeros_like(x)
    running = torch.zeros_like(x[..., 0])
    for t in range(x.shape[-1] - 1, -1, -1):
        running = x[..., t] + factor * running
        out[..., t] = running
    return out


class LinearFeatureBaseline:
    """The value baseline of Duan et al. 2016 (rllab) used by MAML-RL: ridge regression of
    the returns on ``[o, o^2, t, t^2, t^3, 1]`` (``o`` the observation clipped to [-10, 10],
    ``t`` the step index / 100), fitted per task on the steps that happened.

    Args:
        reg: ridge coefficient; multiplied by 10 (up to 5 times) while the solution is not finite.
    """

    def __init__(self, reg: float = 1e-5):
        self.reg = reg
        self.weights: Tensor | None = None

    @staticmethod
    def features(observations: Tensor) -> Tensor:
        """``(..., H, d)`` -> ``(..., H, 2d + 4)``."""
        o = observations.clamp(-10.0, 10.0)
        t = torch.arange(o.shape[-2], dtype=o.dtype, device=o.device) / 100.0
        t = t.view(*([1] * (o.dim() - 2)), -1, 1).expand(*o.shape[:-1], 1)
        return torch.cat([o, o * o, t, t * t, t ** 3, torch.ones_like(t)], dim=-1)

    def fit(self, observations: Tensor, returns: Tensor, mask: Tensor) -> "LinearFeatureBaseline":
        """Least squares on the masked steps of ``observations`` ``(N, H, d)``, ``returns`` ``(N, H)``."""
        feats = self.features(observations)[mask.bool()].double()
        targets = returns[mask.bool()].double()
        if feats.shape[0] == 0:
            raise MetalabError("the baseline needs at least one step to fit")
        gram, rhs = feats.T @ feats, feats.T @ targets
        reg = self.reg
        for _ in range(6):
            try:
                weights = torch.linalg.solve(gram + reg * torch.eye(gram.shape[0], dtype=gram.dtype), rhs)
            except torch.linalg.LinAlgError:  # singular: more ridge
                weights = None
            if weights is not None and torch.isfinite(weights).all():
                self.weights = weights
                return self
            reg *= 10.0
        raise MetalabError(f"the baseline's least squares has no finite solution even with ridge {reg / 10:g}; "
                           "check the observations and returns for inf/NaN")

    def predict(self, observations: Tensor, mask: Tensor) -> Tensor:
        """Baseline values ``(N, H)``, 0 where ``mask`` is 0."""
        if self.weights is None:
            raise MetalabError("fit the baseline before predicting")
        values = self.features(observations).double() @ self.weights
        return values.to(observations.dtype) * mask
