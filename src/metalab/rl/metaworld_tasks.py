"""Meta-World (Yu et al. 2019) ML1 and ML10 through the task-distribution interface.

Needs the ``metaworld`` extra (``metaworld==3.1.1`` with ``mujoco==3.3.0``, installed together).
A benchmark (``ML1`` of one environment such as ``reach-v3``, or ``ML10``) has train and
test tasks (goal and object positions, and in ML10 the environments themselves);
:class:`MetaWorldTasks` draws from one split, and :meth:`MetaWorldTasks.make_env` builds
environments that switch between its tasks with ``reset_task`` — a task is the plain dict
``{"env": name, "index": i}`` (the i-th task of that split), kept with the episodes as their
metadata. Episodes last ``max_path_length`` steps (500) unless ``horizon`` is given; the info
of every step has Meta-World's ``success`` flag.
"""

from __future__ import annotations

from typing import Any

import torch

from metalab.utils.errors import MetalabError, require_positive

try:
    import gymnasium as gym
    import metaworld
except ImportError as exc:  # pragma: no cover - depends on the extra
    raise ImportError("metalab.rl.metaworld_tasks needs Meta-World: pip install 'metalab[metaworld]'") from exc

BENCHMARKS = ("ML1", "ML10")


class MetaWorldTasks:
    """The train or test tasks of a Meta-World benchmark.

    Args:
        benchmark: ``ML1`` or ``ML10``.
        env_name: the environment of ML1 (e.g. ``reach-v3``); ignored by ML10.
        split: ``train`` or ``test``.
        seed: Meta-World's seed of the task parameters (taken modulo 2^32).
        horizon: steps per episode (default: the environment's ``max_path_length``).
        source: the Meta-World benchmark object to draw from, when one of the same ``benchmark``,
            ``env_name`` and ``seed`` is built already (e.g. ``train.benchmark`` for the test split:
            building ML10 takes seconds); ``None`` builds it.
    """

    def __init__(self, benchmark: str = "ML1", env_name: str = "reach-v3", split: str = "train", seed: int = 0,
                 horizon: int | None = None, source: Any = None):
        if benchmark not in BENCHMARKS:
            raise MetalabError(f"unknown Meta-World benchmark {benchmark!r}; choose one of {BENCHMARKS}")
        if split not in ("train", "test"):
            raise MetalabError(f"split must be 'train' or 'test', got {split!r}")
        if horizon is not None:
            require_positive(horizon=horizon)
        seed = seed % 2 ** 32  # Meta-World seeds numpy's RandomState
        if source is not None:
            self.benchmark = source
        elif benchmark == "ML1":
            if env_name not in metaworld.ML1.ENV_NAMES:
                raise MetalabError(f"Meta-World has no ML1 environment {env_name!r}; choose one of "
                                   f"{sorted(metaworld.ML1.ENV_NAMES)}")
            self.benchmark = metaworld.ML1(env_name, seed=seed)
        else:
            self.benchmark = metaworld.ML10(seed=seed)
        self.split, self.horizon = split, horizon
        self.classes = self.benchmark.train_classes if split == "train" else self.benchmark.test_classes
        self.task_list = self.benchmark.train_tasks if split == "train" else self.benchmark.test_tasks

    def __len__(self) -> int:
        return len(self.task_list)

    def sample_tasks(self, n: int, generator: torch.Generator) -> list[dict[str, Any]]:
        """``n`` tasks of the split, uniformly with replacement."""
        require_positive(n=n)
        picks = torch.randint(len(self.task_list), (n,), generator=generator).tolist()
        return [{"env": self.task_list[i].env_name, "index": i} for i in picks]

    def make_env(self) -> "MetaWorldEnv":
        return MetaWorldEnv(self)


class MetaWorldEnv(gym.Env):
    """One Meta-World environment that can take any task of its :class:`MetaWorldTasks`.

    The underlying environment is created per environment name (ML10 mixes several) and kept.
    """

    metadata = {"render_modes": []}

    def __init__(self, tasks: MetaWorldTasks):
        self.tasks = tasks
        self._envs: dict[str, Any] = {}
        self._task: dict[str, Any] | None = None
        first = self._env(tasks.task_list[0].env_name)
        self.observation_space, self.action_space = first.observation_space, first.action_space
        self.horizon = tasks.horizon or first.max_path_length
        self._t = 0

    def _env(self, name: str):
        if name not in self._envs:
            self._envs[name] = self.tasks.classes[name]()
        return self._envs[name]

    @property
    def task(self) -> dict[str, Any] | None:
        return self._task

    def reset_task(self, task: dict[str, Any]) -> None:
        try:
            entry = self.tasks.task_list[task["index"]]
        except (KeyError, IndexError, TypeError):
            raise MetalabError(f"a Meta-World task is {{'env': name, 'index': i}} with i < {len(self.tasks)}; "
                               f"got {task!r}") from None
        if task.get("env", entry.env_name) != entry.env_name:
            raise MetalabError(f"task {task!r}: task {task['index']} of this split is {entry.env_name}")
        self._env(entry.env_name).set_task(entry)
        self._task = {"env": entry.env_name, "index": task["index"]}

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        if options and "task" in options:
            self.reset_task(options["task"])
        if self._task is None:
            raise MetalabError("MetaWorldEnv has no task: pass reset(options={'task': ...}) or call reset_task")
        self._t = 0
        obs, info = self._env(self._task["env"]).reset(seed=seed)
        return obs, {**info, "task": self._task}

    def step(self, action):
        obs, reward, terminated, truncated, info = self._env(self._task["env"]).step(action)
        self._t += 1
        return obs, float(reward), bool(terminated), bool(truncated) or self._t >= self.horizon, \
            {**info, "task": self._task}
