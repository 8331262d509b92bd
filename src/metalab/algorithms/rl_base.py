"""What the meta-RL methods share on the MetaAlgorithm interface.

A meta-RL method learns from its own rollouts with an update of its own (MAML-RL: a TRPO
step, RL²: PPO epochs), :meth:`RLMethod.meta_step`. To the trainer it hands that update as a
gradient, ``.grad = theta_old - theta_new``, applied by plain SGD with rate 1
(:meth:`RLMethod.outer_optimizer`), so checkpoints, resume, logging and data-parallel
averaging work as for every method.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from metalab.algorithms.base import MetaAlgorithm, MetaOutput
from metalab.data.benchmarks import TaskSpec
from metalab.rl.tasks import MakeEnv, TaskBatch
from metalab.utils.errors import MetalabError


RUNS_ON_CPU = ("the meta-RL methods run on the CPU, where their environments step (their policies are small); "
               "train them with --device cpu")


class RLMethod(MetaAlgorithm):
    """Base of the meta-RL methods (``kind = "rl"``, metric ``return``)."""

    kind: ClassVar[str] = "rl"

    def __init__(self, spec: TaskSpec, config: Any):
        super().__init__(spec, config)
        if len(spec.input_shape) != 1 or spec.classification:
            raise MetalabError(f"{self.name} needs a meta-RL benchmark (vector observations, continuous actions); "
                               f"got inputs {spec.input_shape}" + (", classification" if spec.classification else ""))

    @property
    def metric(self) -> str:
        return "return"

    def on_device(self, data: Any) -> Any:
        """Tasks stay as they are; the method must be on the CPU, where the environments step."""
        if self.device.type != "cpu":
            raise MetalabError(RUNS_ON_CPU)
        return data

    def meta_step(self, tasks: list[dict[str, Any]], generator: torch.Generator, make_env: MakeEnv) -> dict[str, float]:
        """Sample on ``tasks`` and update the parameters in place; return the metrics to log."""
        raise NotImplementedError

    def update_loss(self, metrics: dict[str, float]) -> float:
        """The number logged as the training loss of an update."""
        raise NotImplementedError

    def meta_loss(self, batch: Any) -> MetaOutput:
        raise MetalabError(f"{self.name} learns from its own rollouts with an update of its own, not from a loss: "
                           "train it with the trainer (meta_gradient) or meta_step")

    def meta_gradient(self, batch: TaskBatch) -> MetaOutput:
        """Run :meth:`meta_step` on the batch's tasks, then undo it and leave it in ``.grad``."""
        params = list(self.parameters())
        old = nn.utils.parameters_to_vector(params).detach().clone()
        metrics = self.meta_step(batch.tasks, torch.Generator().manual_seed(batch.seed), batch.make_env)
        step = old - nn.utils.parameters_to_vector(params).detach()
        with torch.no_grad():
            nn.utils.vector_to_parameters(old, params)
        offset = 0
        for p in params:
            p.grad = step[offset:offset + p.numel()].view_as(p).clone()
            offset += p.numel()
        loss = self.update_loss(metrics)
        return MetaOutput(torch.tensor(loss), {"loss": loss, **metrics})

    def outer_optimizer(self, lr: float) -> torch.optim.Optimizer:
        """SGD with rate 1, which applies the update :meth:`meta_gradient` leaves in ``.grad``
        (the method's own settings size the update; the trainer's ``outer_lr`` is unused)."""
        return torch.optim.SGD(self.parameters(), lr=1.0)

    def adapt(self, episode: Any, steps: int | None = None):
        raise MetalabError(f"{self.name} adapts by acting on the task: use evaluate_episode(task_episode, steps)")


def episode_score(returns: Tensor, success: Tensor | None, metric: str) -> Tensor:
    """Per task: the mean return of ``returns`` ``(T, E)``, or with ``metric="success"`` the
    fraction of the episodes whose ``success`` ``(T, E)`` flag is set."""
    if metric == "return":
        return returns.mean(-1)
    if success is None:
        raise MetalabError("this environment reports no success flag; score its tasks by return")
    return success.float().mean(-1)
