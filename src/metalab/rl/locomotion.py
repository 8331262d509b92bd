"""MuJoCo locomotion task families of the MAML paper on gymnasium's v5 environments.

Needs the ``rl`` extra (gymnasium with MuJoCo). Each family wraps gymnasium's environment and
changes the reward only (the dynamics, observations and termination are gymnasium's), with
the rewards of the authors' reference code (github.com/cbfinn/maml_rl, ``rllab/envs/mujoco``):

- :class:`HalfCheetahVelocity`, task ``{"velocity": v}``, ``v ~ U[0, 2]``:
  ``r = -|v_x - v| - 0.05 |a|^2``;
- :class:`HalfCheetahDirection`, task ``{"direction": +1 or -1}`` (forward / backward):
  ``r = direction * v_x - 0.05 |a|^2``;
- :class:`AntDirection`, task ``{"direction": +1 or -1}``:
  ``r = direction * v_x - 0.005 |a|^2 - 0.0005 |clip(contact forces, -1, 1)|^2 + 0.05``,
  episodes ending when the torso leaves ``0.2 <= z <= 1`` (gymnasium's Ant-v5 rule).

``v_x`` is gymnasium's ``info["x_velocity"]`` (the torso's forward velocity). Episodes are
200 steps, as in the paper. :class:`BatchedGymTasks` steps ``episodes`` copies of a family's
environment per task, with the interface of :class:`~metalab.rl.nav2d.BatchedNavigation2D`,
so MAML-RL runs on it unchanged.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor

from metalab.utils.errors import MetalabError, require_positive

try:
    import gymnasium as gym
except ImportError as exc:  # pragma: no cover - depends on the extra
    raise ImportError("metalab.rl.locomotion needs gymnasium with MuJoCo: pip install 'metalab[rl]'") from exc

HORIZON = 200


class _TaskReward(gym.Wrapper):
    """A gymnasium environment whose reward depends on a task; subclasses define both."""

    env_id = ""
    task_key = ""

    def __init__(self, task: dict[str, Any] | None = None, horizon: int = HORIZON):
        super().__init__(gym.make(self.env_id, max_episode_steps=horizon))
        self.horizon = horizon
        self._task: dict[str, Any] | None = None
        if task is not None:
            self.reset_task(task)

    @property
    def task(self) -> dict[str, Any] | None:
        return self._task

    def reset_task(self, task: dict[str, Any]) -> None:
        if not isinstance(task, dict) or self.task_key not in task:
            raise MetalabError(f"a {type(self).__name__} task is a dict {{{self.task_key!r}: ...}}; got {task!r}")
        self._task = dict(task)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        if options and "task" in options:
            self.reset_task(options["task"])
        if self._task is None:
            raise MetalabError(f"{type(self).__name__} has no task: pass reset(options={{'task': ...}}) or reset_task")
        obs, info = self.env.reset(seed=seed, options=options and {k: v for k, v in options.items() if k != "task"})
        return obs, {**info, "task": self._task}

    def step(self, action):
        action = np.clip(np.asarray(action, dtype=np.float64), self.action_space.low, self.action_space.high)
        obs, _, terminated, truncated, info = self.env.step(action.astype(self.action_space.dtype))
        reward = self.task_reward(action, info)
        return obs, reward, terminated, truncated, {**info, "task": self._task}

    def task_reward(self, action: np.ndarray, info: dict[str, Any]) -> float:
        raise NotImplementedError


class HalfCheetahVelocity(_TaskReward):
    """Run at a target forward velocity (MAML paper, section 5.3)."""

    env_id, task_key = "HalfCheetah-v5", "velocity"

    def sample_tasks(self, n: int, generator: torch.Generator) -> list[dict[str, Any]]:
        require_positive(n=n)
        return [{"velocity": v} for v in torch.empty(n, dtype=torch.float64).uniform_(0.0, 2.0, generator=generator).tolist()]

    def task_reward(self, action: np.ndarray, info: dict[str, Any]) -> float:
        return float(-abs(info["x_velocity"] - self._task["velocity"]) - 0.05 * np.sum(action ** 2))


def _directions(n: int, generator: torch.Generator) -> list[dict[str, Any]]:
    require_positive(n=n)
    signs = torch.randint(0, 2, (n,), generator=generator) * 2 - 1
    return [{"direction": float(s)} for s in signs.tolist()]


class HalfCheetahDirection(_TaskReward):
    """Run forward or backward (MAML paper, section 5.3)."""

    env_id, task_key = "HalfCheetah-v5", "direction"

    def sample_tasks(self, n: int, generator: torch.Generator) -> list[dict[str, Any]]:
        return _directions(n, generator)

    def task_reward(self, action: np.ndarray, info: dict[str, Any]) -> float:
        return float(self._task["direction"] * info["x_velocity"] - 0.05 * np.sum(action ** 2))


class AntDirection(_TaskReward):
    """The ant runs forward or backward (MAML paper, section 5.3)."""

    env_id, task_key = "Ant-v5", "direction"

    def sample_tasks(self, n: int, generator: torch.Generator) -> list[dict[str, Any]]:
        return _directions(n, generator)

    def task_reward(self, action: np.ndarray, info: dict[str, Any]) -> float:
        # gymnasium's reward_contact is -5e-4 * sum(clip(cfrc_ext, -1, 1)^2): the reference contact cost
        return float(self._task["direction"] * info["x_velocity"] - 0.005 * np.sum(action ** 2)
                     + info["reward_contact"] + 0.05)


FAMILIES: dict[str, type[_TaskReward]] = {"cheetah-vel": HalfCheetahVelocity, "cheetah-dir": HalfCheetahDirection,
                                          "ant-dir": AntDirection}


class BatchedGymTasks:
    """``episodes`` environments per task, stepped together: the batched interface on gymnasium envs.

    ``success`` ``(T, E)`` records whether an episode's info ever flagged ``success`` (Meta-World).

    Args:
        make: builds one environment of the family (e.g. :class:`HalfCheetahVelocity`, or
            :meth:`metalab.rl.metaworld_tasks.MetaWorldTasks.make_env`).
        tasks: one task per row.
        episodes: episodes (environment copies) per task.
        seed: the environments' reset seeds are ``seed + i``.
    """

    def __init__(self, make: Callable[[], _TaskReward], tasks: list[dict[str, Any]], episodes: int, seed: int = 0,
                 dtype: torch.dtype = torch.float32):
        require_positive(episodes=episodes)
        self.tasks, self.episodes, self.seed, self.dtype = list(tasks), episodes, seed, dtype
        self.envs = [[make() for _ in range(episodes)] for _ in self.tasks]
        for task, row in zip(self.tasks, self.envs):
            for env in row:
                env.reset_task(task)
        first = self.envs[0][0]
        self.horizon = first.horizon
        self.observation_dim = first.observation_space.shape[0]
        self.action_dim = first.action_space.shape[0]
        self.reset()

    def reset(self) -> Tensor:
        obs = [[env.reset(seed=self.seed + i * self.episodes + j)[0] for j, env in enumerate(row)]
               for i, row in enumerate(self.envs)]
        self.running = torch.ones(len(self.tasks), self.episodes, dtype=torch.bool)
        self.success = torch.zeros(len(self.tasks), self.episodes, dtype=torch.bool)  # info["success"] seen
        self.t = 0
        self._obs = torch.as_tensor(np.array(obs), dtype=self.dtype)
        return self._obs.clone()

    def step(self, action: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Like :meth:`BatchedNavigation2D.step`: observation, reward (0 once ended), running-before mask."""
        if self.t >= self.horizon:
            raise MetalabError(f"the episodes are over ({self.horizon} steps); call reset()")
        was_running = self.running.clone()
        reward = torch.zeros(len(self.tasks), self.episodes, dtype=self.dtype)
        actions = action.detach().cpu().numpy()
        for i, row in enumerate(self.envs):
            for j, env in enumerate(row):
                if not was_running[i, j]:
                    continue
                obs, r, terminated, truncated, info = env.step(actions[i, j])  # clipped by the env
                self._obs[i, j] = torch.as_tensor(obs, dtype=self.dtype)
                reward[i, j] = r
                if info.get("success", 0) > 0:
                    self.success[i, j] = True
                if terminated or truncated:
                    self.running[i, j] = False
        self.t += 1
        return self._obs.clone(), reward, was_running
