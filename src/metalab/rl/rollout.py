"""Batched rollouts: every episode of every task of a meta-batch sampled together."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor


@dataclass(frozen=True)
class Trajectories:
    """Episodes of several tasks, time second to last.

    Attributes:
        observations: ``(T, E, H, obs_dim)`` the observation each action was taken in.
        actions: ``(T, E, H, act_dim)`` the policy's actions (before the environment clips them).
        rewards: ``(T, E, H)``, 0 after an episode ended.
        mask: ``(T, E, H)``, 1.0 for the steps that happened.
        success: ``(T, E)`` whether each episode reached the task's success condition, for
            environments that report one (Meta-World's ``info["success"]``); else ``None``.
    """

    observations: Tensor
    actions: Tensor
    rewards: Tensor
    mask: Tensor
    success: Tensor | None = None

    def episode_returns(self) -> Tensor:
        """Undiscounted return of each episode, ``(T, E)``."""
        return (self.rewards * self.mask).sum(-1)


def rollout(env, act: Callable[[Tensor], Tensor], action_scale: float = 1.0) -> Trajectories:
    """Run ``env`` (a batched environment such as :class:`~metalab.rl.nav2d.BatchedNavigation2D`)
    from ``reset()`` for its horizon, taking ``act(observations (T, E, d)) -> actions (T, E, a)``.

    The actions are stored as the policy produced them; the environment executes
    ``action_scale * action`` (and clips it to its bounds), as rllab's ``normalize`` did for the
    MAML paper's policies, whose outputs live on [-1, 1].
    """
    obs = env.reset()
    observations, actions, rewards, masks = [], [], [], []
    with torch.no_grad():
        for _ in range(env.horizon):
            action = act(obs)
            next_obs, reward, running = env.step(action * action_scale)
            observations.append(obs)
            actions.append(action)
            rewards.append(reward)
            masks.append(running.to(reward.dtype))
            obs = next_obs
            if not env.running.any():
                break
    success = getattr(env, "success", None)
    return Trajectories(torch.stack(observations, -2), torch.stack(actions, -2), torch.stack(rewards, -1),
                        torch.stack(masks, -1), None if success is None else success.clone())
