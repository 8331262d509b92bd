"""2D navigation as a gymnasium environment (needs the ``rl`` extra: ``pip install 'metalab[rl]'``).

The dynamics, reward and termination are those of :mod:`metalab.rl.nav2d` (shared code);
this class adds gymnasium's ``Env`` API for one episode at a time and the task switch of
:class:`~metalab.rl.tasks.TaskDistribution`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from metalab.rl.nav2d import HORIZON, MAX_ACTION, goal_tensor, sample_goals, step_positions
from metalab.utils.errors import MetalabError

try:
    import gymnasium as gym
except ImportError as exc:  # pragma: no cover - depends on the extra
    raise ImportError("metalab.rl.nav2d_env needs gymnasium: pip install 'metalab[rl]'") from exc


class Navigation2DEnv(gym.Env):
    """The MAML paper's point navigation: observation the position, action a clipped displacement.

    ``reset(options={"task": task})`` (or :meth:`reset_task`) sets the goal; episodes are
    truncated after ``horizon`` steps and terminate when the goal is reached.
    """

    metadata = {"render_modes": []}

    def __init__(self, task: dict[str, Any] | None = None, horizon: int = HORIZON):
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, shape=(2,), dtype=np.float32)
        self.action_space = gym.spaces.Box(-MAX_ACTION, MAX_ACTION, shape=(2,), dtype=np.float32)
        self.horizon = horizon
        self._goal = None if task is None else goal_tensor([task], torch.float64)[0]
        self._position = torch.zeros(2, dtype=torch.float64)
        self._t = 0

    # the task distribution
    def sample_tasks(self, n: int, generator: torch.Generator) -> list[dict[str, Any]]:
        return sample_goals(n, generator)

    def reset_task(self, task: dict[str, Any]) -> None:
        self._goal = goal_tensor([task], torch.float64)[0]

    @property
    def task(self) -> dict[str, Any] | None:
        return None if self._goal is None else {"goal": tuple(self._goal.tolist())}

    # gymnasium's API
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        if options and "task" in options:
            self.reset_task(options["task"])
        if self._goal is None:  # no task given: draw one from the environment's seeded generator
            self.reset_task({"goal": tuple(self.np_random.uniform(-0.5, 0.5, size=2))})
        self._position = torch.zeros(2, dtype=torch.float64)
        self._t = 0
        return self._position.numpy().astype(np.float32), {"task": self.task}

    def step(self, action):
        if self._goal is None:
            raise MetalabError("call reset() before step()")
        moved, reward, terminated = step_positions(self._position, torch.as_tensor(action, dtype=torch.float64),
                                                   self._goal)
        self._position, self._t = moved, self._t + 1
        return (moved.numpy().astype(np.float32), float(reward), bool(terminated), self._t >= self.horizon,
                {"task": self.task})
