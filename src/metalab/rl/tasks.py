"""The task-distribution interface of meta-RL environments."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Protocol, runtime_checkable

import torch

from metalab.utils.errors import MetalabError, batch_share
from metalab.utils.seeding import derive_seed

# (tasks, episodes per task, dtype, generator) -> a batched task environment with reset(), step(),
# horizon and running: metalab.rl.nav2d.BatchedNavigation2D, metalab.rl.locomotion.BatchedGymTasks
MakeEnv = Callable[[list[dict[str, Any]], int, torch.dtype, torch.Generator], Any]


@runtime_checkable
class TaskDistribution(Protocol):
    """A family of tasks (goals, target velocities, ...) and the switch between them.

    A task is a plain ``dict`` of its parameters (e.g. ``{"goal": (0.2, -0.4)}``); it is kept
    with the episodes sampled on it as their metadata.
    """

    def sample_tasks(self, n: int, generator: torch.Generator) -> list[dict[str, Any]]:
        """``n`` tasks drawn from the family with ``generator`` (seeded: the same tasks again)."""
        ...

    def reset_task(self, task: dict[str, Any]) -> None:
        """Make ``task`` the environment's current task (for the following ``reset``/``step``).

        Gymnasium environments of a family implement it; a pure distribution (such as
        :class:`~metalab.rl.nav2d.Nav2DTasks`, whose batched environment takes the tasks at
        construction) need not.
        """
        ...


@dataclass(frozen=True)
class TaskEpisode:
    """One task to adapt to and be scored on (the evaluation unit of meta-RL benchmarks).

    Attributes:
        task: the task's parameters.
        seed: seed of the episodes sampled on it (the same on every evaluation).
        make_env: builds the batched environment of the family.
        metric: what an evaluation reports: ``return`` (mean episode return) or ``success``
            (fraction of episodes that reached the task's success condition, Meta-World).
    """

    task: dict[str, Any]
    seed: int
    make_env: MakeEnv
    metric: str = "return"


@dataclass(frozen=True)
class TaskBatch:
    """The tasks of one meta-iteration (or a rank's share of them) and the seed of their episodes."""

    tasks: list[dict[str, Any]]
    seed: int
    make_env: MakeEnv

    def __len__(self) -> int:
        return len(self.tasks)


class RLTaskSource:
    """A seeded, index-addressable stream of tasks, as the trainer and evaluator read episodes.

    Task ``i`` is drawn from ``distribution`` with its own seed, so a meta-batch, a rank's share
    of it and a resumed run all see the same tasks; ``batch(step, B)`` holds tasks
    ``step * B .. step * B + B - 1``.
    """

    def __init__(self, distribution: TaskDistribution, make_env: MakeEnv, seed: int, metric: str = "return"):
        if metric not in ("return", "success"):
            raise MetalabError(f"a meta-RL stream is scored by 'return' or 'success', not {metric!r}")
        self.distribution, self.make_env, self.seed, self.metric = distribution, make_env, seed, metric

    def task(self, index: int) -> dict[str, Any]:
        return self.distribution.sample_tasks(1, torch.Generator().manual_seed(derive_seed(self.seed, index)))[0]

    def episode(self, index: int) -> TaskEpisode:
        return TaskEpisode(self.task(index), derive_seed(self.seed, index, 1), self.make_env, self.metric)

    def batch(self, step: int, meta_batch_size: int, first: int = 0, count: int | None = None) -> TaskBatch:
        count = batch_share(meta_batch_size, first, count)
        start = step * meta_batch_size + first
        return TaskBatch([self.task(start + i) for i in range(count)], derive_seed(self.seed, start, 2), self.make_env)
