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

import multiprocessing
import weakref
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor

from metalab.utils.errors import MetalabError, require_non_negative, require_positive

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


class _EnvBlock:
    """Environments stepped one after the other in this process, bookkept in numpy arrays."""

    def __init__(self, make: Callable[[], _TaskReward], tasks: list[dict[str, Any]]):
        self.envs = [make() for _ in tasks]
        for env, task in zip(self.envs, tasks):
            env.reset_task(task)

    def reset(self, seeds: list[int]) -> np.ndarray:
        return np.stack([env.reset(seed=int(seed))[0] for env, seed in zip(self.envs, seeds)])

    def step(self, actions: np.ndarray, running: np.ndarray) -> tuple[np.ndarray, ...]:
        """Step the environments whose ``running`` flag is set: observations (those of the others:
        ``nan``), rewards (0 for the others), ended and success flags."""
        n = len(self.envs)
        obs = np.full((n, *self.envs[0].observation_space.shape), np.nan)
        reward, ended, success = np.zeros(n), np.zeros(n, dtype=bool), np.zeros(n, dtype=bool)
        for k in np.flatnonzero(running):
            obs[k], reward[k], terminated, truncated, info = self.envs[k].step(actions[k])  # clipped by the env
            ended[k] = terminated or truncated
            success[k] = info.get("success", 0) > 0
        return obs, reward, ended, success

    def close(self) -> None:
        for env in self.envs:
            env.close()


def _serve(conn, make: Callable[[], _TaskReward], tasks: list[dict[str, Any]]) -> None:
    """A worker process: owns an :class:`_EnvBlock` and answers ``(command, *args)`` until told to
    close or until its parent is gone (the pipe ends)."""
    block = _EnvBlock(make, tasks)
    try:
        while True:
            try:
                command, *args = conn.recv()
            except (EOFError, OSError):
                return
            if command == "close":
                return
            try:
                conn.send(("ok", getattr(block, command)(*args)))
            except Exception as exc:  # the parent raises it with the worker's message
                conn.send(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        block.close()


class _WorkerBlock:
    """An :class:`_EnvBlock` in a worker process (forked: ``make`` needs no pickling)."""

    def __init__(self, make: Callable[[], _TaskReward], tasks: list[dict[str, Any]], index: int):
        context = multiprocessing.get_context("fork")
        self.conn, child = context.Pipe()
        self.index = index
        self.process = context.Process(target=_serve, args=(child, make, tasks), daemon=True,
                                       name=f"metalab-env-worker-{index}")
        self.process.start()
        child.close()

    def send(self, command: str, *args: Any) -> None:
        try:
            self.conn.send((command, *args))
        except (BrokenPipeError, OSError):
            raise self._gone() from None

    def receive(self) -> Any:
        try:
            status, value = self.conn.recv()
        except (EOFError, OSError):
            raise self._gone() from None
        if status == "error":
            raise MetalabError(f"environment worker {self.index}: {value}")
        return value

    def _gone(self) -> MetalabError:
        return MetalabError(f"environment worker {self.index} died (exit code {self.process.exitcode}); "
                            "run with fewer env_workers (--env-workers) or 0 to step the environments in-process")

    def close(self) -> None:
        try:
            self.conn.send(("close",))
        except (BrokenPipeError, OSError):
            pass
        self.process.join(timeout=10)
        if self.process.is_alive():
            self.process.kill()
        self.conn.close()


class _LocalBlock(_EnvBlock):
    """:class:`_EnvBlock` with the worker's send/receive calls: the command runs on receive."""

    def send(self, command: str, *args: Any) -> None:
        self._pending = (command, args)

    def receive(self) -> Any:
        command, args = self._pending
        return getattr(self, command)(*args)


class BatchedGymTasks:
    """``episodes`` environments per task, stepped together: the batched interface on gymnasium envs.

    ``success`` ``(T, E)`` records whether an episode's info ever flagged ``success`` (Meta-World).
    With ``workers``, the ``T * E`` environments are split into that many contiguous blocks,
    each stepped by a worker process (forked from this one) while the others step theirs: the
    same episodes as in-process, in parallel. The workers end with :meth:`close` (or when this
    object is collected, or this process ends).

    Args:
        make: builds one environment of the family (e.g. :class:`HalfCheetahVelocity`, or
            :meth:`metalab.rl.metaworld_tasks.MetaWorldTasks.make_env`).
        tasks: one task per row.
        episodes: episodes (environment copies) per task.
        seed: the environments' reset seeds are ``seed + i``.
        workers: worker processes (0: step every environment in this process).
    """

    def __init__(self, make: Callable[[], _TaskReward], tasks: list[dict[str, Any]], episodes: int, seed: int = 0,
                 dtype: torch.dtype = torch.float32, workers: int = 0):
        require_positive(episodes=episodes)
        require_non_negative("in-process", workers=workers)
        self.tasks, self.episodes, self.seed, self.dtype = list(tasks), episodes, seed, dtype
        per_env = [task for task in self.tasks for _ in range(episodes)]  # flat index i * episodes + j
        probe = make()
        self.horizon = probe.horizon
        self.observation_dim = probe.observation_space.shape[0]
        self.action_dim = probe.action_space.shape[0]
        probe.close()
        parts = min(workers, len(per_env))
        if parts:
            bounds = [len(per_env) * k // parts for k in range(parts + 1)]
            self.blocks = [_WorkerBlock(make, per_env[a:b], k) for k, (a, b) in enumerate(zip(bounds, bounds[1:]))]
            self._finalizer = weakref.finalize(self, _close_all, self.blocks)
        else:
            bounds = [0, len(per_env)]
            self.blocks = [_LocalBlock(make, per_env)]
        self.bounds = bounds
        self.reset()

    def _run(self, command: str, *columns: np.ndarray) -> list[Any]:
        """``command`` on every block at once, each given its slice of ``columns``; their answers."""
        for block, a, b in zip(self.blocks, self.bounds, self.bounds[1:]):
            block.send(command, *(c[a:b] for c in columns))
        return [block.receive() for block in self.blocks]

    def reset(self) -> Tensor:
        seeds = np.arange(len(self.tasks) * self.episodes) + self.seed
        obs = np.concatenate(self._run("reset", seeds))
        shape = (len(self.tasks), self.episodes)
        self.running = torch.ones(shape, dtype=torch.bool)
        self.success = torch.zeros(shape, dtype=torch.bool)  # info["success"] seen
        self.t = 0
        self._obs = torch.as_tensor(obs, dtype=self.dtype).view(*shape, -1)
        return self._obs.clone()

    def step(self, action: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Like :meth:`BatchedNavigation2D.step`: observation, reward (0 once ended), running-before mask."""
        if self.t >= self.horizon:
            raise MetalabError(f"the episodes are over ({self.horizon} steps); call reset()")
        was_running = self.running.clone()
        running = was_running.flatten().numpy()
        actions = action.detach().cpu().to(torch.float64).reshape(running.shape[0], -1).numpy()
        obs, reward, ended, success = (np.concatenate(column) for column in zip(*self._run("step", actions, running)))
        shape = self.running.shape
        stepped = torch.as_tensor(running).view(shape)
        self._obs[stepped] = torch.as_tensor(obs, dtype=self.dtype).view(*shape, -1)[stepped]
        self.success |= torch.as_tensor(success).view(shape)
        self.running &= ~torch.as_tensor(ended).view(shape)
        self.t += 1
        return self._obs.clone(), torch.as_tensor(reward, dtype=self.dtype).view(shape), was_running

    def close(self) -> None:
        """End the worker processes (nothing to do in-process)."""
        if hasattr(self, "_finalizer"):
            self._finalizer()


def _close_all(blocks: list[_WorkerBlock]) -> None:
    for block in blocks:
        block.close()
