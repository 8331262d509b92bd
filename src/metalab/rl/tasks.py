"""The task-distribution interface of meta-RL environments."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch


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
        """Make ``task`` the environment's current task (for the following ``reset``/``step``)."""
        ...
