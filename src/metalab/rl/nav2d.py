"""2D navigation (Finn, Abbeel & Levine 2017, "Model-Agnostic Meta-Learning", section 5.3).

A point agent starts at the origin; a task is a goal drawn uniformly from the square
``[-0.5, 0.5]^2``. The observation is the agent's position, an action is a displacement
clipped to ``[-0.1, 0.1]`` per coordinate, the horizon is 100 steps. The reward is the
negative **Euclidean** distance to the goal after the move, and an episode ends early when
both coordinates are within 0.01 of the goal.

The paper's text says "negative squared distance"; the authors' reference environment
(``maml_examples/point_env_randgoal.py`` in github.com/cbfinn/maml_rl, which produced Table 4)
uses the Euclidean distance and the 0.01 termination, and so does this module: a policy that
does not move scores about ``-100 * E|g| = -38`` there, in line with Table 4's -40.41 before
adaptation, while the squared distance would give about -17.

:class:`BatchedNavigation2D` steps every episode of every task of a meta-batch at once
(tensors ``(tasks, episodes, 2)``); :class:`metalab.rl.nav2d_env.Navigation2DEnv` is the same
environment for one episode through gymnasium's ``Env`` API.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from metalab.utils.errors import MetalabError, require_positive

GOAL_LOW, GOAL_HIGH = -0.5, 0.5
MAX_ACTION = 0.1
HORIZON = 100
TOLERANCE = 0.01


def sample_goals(n: int, generator: torch.Generator) -> list[dict[str, Any]]:
    """``n`` tasks ``{"goal": (x, y)}``, goals uniform in ``[-0.5, 0.5]^2``."""
    require_positive(n=n)
    goals = torch.empty(n, 2, dtype=torch.float64).uniform_(GOAL_LOW, GOAL_HIGH, generator=generator)
    return [{"goal": (x, y)} for x, y in goals.tolist()]


def goal_tensor(tasks: list[dict[str, Any]], dtype: torch.dtype = torch.float32) -> Tensor:
    """The goals of ``tasks`` as a ``(len(tasks), 2)`` tensor."""
    try:
        goals = torch.tensor([task["goal"] for task in tasks], dtype=dtype)
    except (KeyError, TypeError, ValueError):
        raise MetalabError("a 2D navigation task is a dict {'goal': (x, y)}; got "
                           f"{tasks[:1] if isinstance(tasks, list) else tasks!r}") from None
    if goals.dim() != 2 or goals.shape[1] != 2:
        raise MetalabError(f"2D navigation goals are pairs (x, y); got shape {tuple(goals.shape)}")
    return goals


def step_positions(position: Tensor, action: Tensor, goal: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """One step of the dynamics for any batch shape ``(..., 2)``.

    Returns:
        new position, reward ``-|new position - goal|``, terminated (both coordinates within 0.01).
    """
    moved = position + action.clamp(-MAX_ACTION, MAX_ACTION)
    offset = moved - goal
    reward = -torch.linalg.vector_norm(offset, dim=-1)
    terminated = (offset.abs() < TOLERANCE).all(dim=-1)
    return moved, reward, terminated


class Nav2DTasks:
    """The task distribution of 2D navigation (goals uniform in ``[-0.5, 0.5]^2``)."""

    def sample_tasks(self, n: int, generator: torch.Generator) -> list[dict[str, Any]]:
        return sample_goals(n, generator)


class BatchedNavigation2D:
    """``episodes`` episodes of each of several tasks, stepped together.

    Finished episodes (goal reached) stay where they are, get reward 0 and are marked
    inactive; :meth:`step` returns which episodes were still running before the step, so a
    rollout knows which steps count.

    Args:
        tasks: ``[{"goal": (x, y)}, ...]``, one per task.
        episodes: episodes per task.
        horizon: steps per episode (the paper: 100).
    """

    observation_dim = 2
    action_dim = 2

    def __init__(self, tasks: list[dict[str, Any]], episodes: int, horizon: int = HORIZON,
                 dtype: torch.dtype = torch.float32):
        require_positive(episodes=episodes, horizon=horizon)
        if not tasks:
            raise MetalabError("BatchedNavigation2D needs at least one task")
        self.tasks, self.episodes, self.horizon = list(tasks), episodes, horizon
        self.goals = goal_tensor(self.tasks, dtype).unsqueeze(1)  # (T, 1, 2)
        self.reset()

    def reset(self) -> Tensor:
        """All episodes back at the origin; the observation ``(T, E, 2)``."""
        shape = (len(self.tasks), self.episodes)
        self.position = self.goals.new_zeros(*shape, 2)
        self.running = torch.ones(shape, dtype=torch.bool)
        self.t = 0
        return self.position.clone()

    def step(self, action: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Move every running episode by ``action`` ``(T, E, 2)`` (clipped to [-0.1, 0.1]).

        Returns:
            observation ``(T, E, 2)``, reward ``(T, E)`` (0 for finished episodes), and the
            mask ``(T, E)`` of the episodes that were running before this step.
        """
        if self.t >= self.horizon:
            raise MetalabError(f"the episodes are over ({self.horizon} steps); call reset()")
        if action.shape != self.position.shape:
            raise MetalabError(f"actions must have shape {tuple(self.position.shape)} (tasks, episodes, 2); "
                               f"got {tuple(action.shape)}")
        was_running = self.running
        moved, reward, terminated = step_positions(self.position, action.to(self.position.dtype), self.goals)
        self.position = torch.where(was_running.unsqueeze(-1), moved, self.position)
        reward = torch.where(was_running, reward, torch.zeros_like(reward))
        self.running = was_running & ~terminated
        self.t += 1
        return self.position.clone(), reward, was_running



def navigation_2d(tasks: list[dict[str, Any]], episodes: int, dtype: torch.dtype,
                  generator: torch.Generator) -> BatchedNavigation2D:
    """2D navigation as a :data:`~metalab.rl.tasks.MakeEnv` (deterministic starts: ``generator`` is unused)."""
    return BatchedNavigation2D(tasks, episodes, dtype=dtype)
