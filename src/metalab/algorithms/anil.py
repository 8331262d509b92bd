"""ANIL: Almost No Inner Loop.

Reference: Raghu, Raghu, Bengio & Vinyals, "Rapid Learning or Feature Reuse? Towards
Understanding the Effectiveness of MAML", ICLR 2020.

Section 4 of the paper: the network is split into a body ``f_phi`` and a head
``w``; the inner loop adapts only the head, ``w'_i = w - alpha grad_w L_Ti(w, f_phi)``,
and the outer loop meta-learns both ``phi`` and ``w`` through the adapted head
(second order unless ``first_order``). Because the body is not adapted, its features of
a task's support and query sets are computed once (``embed``) and the inner loop runs on
the linear head alone, which is why ANIL is much cheaper than MAML.

The backbone must have ``body`` and ``head`` sub-modules (both default backbones do).

``task_mode="batched"`` embeds the support sets of all the meta-batch's tasks in one pass
of the body, and their query sets in another (the backbone's ``embed_tasks``: the tasks
share the body, and batch norm keeps each task's own statistics), then adapts each task's
head on its features; the same meta-gradient as the task loop (tested), with the body's
graph of the whole meta-batch alive until the backward pass. On a 2-core CPU it is about 3x
slower than the loop (``benchmarks/task_modes.py --methods anil --modes loop,batched``), so
it is meant for GPUs; the default stays the loop.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from metalab._types import Params
from metalab.algorithms.base import MetaAlgorithm, MetaOutput, finite
from metalab.algorithms.gradient import GradientConfig, GradientMethod
from metalab.algorithms.registry import register
from metalab.data.benchmarks import TaskSpec
from metalab.data.episode import EpisodeBatch
from metalab.func import forward, params_of
from metalab.utils.errors import MetalabError


@dataclass(frozen=True)
class ANILConfig(GradientConfig):
    __doc__ = GradientConfig.__doc__


@register
class ANIL(GradientMethod):
    """MAML with the inner loop restricted to the head; the body is meta-learned only."""

    name = "anil"
    Config = ANILConfig

    def __init__(self, spec: TaskSpec, config: ANILConfig, model: nn.Module | None = None):
        super().__init__(spec, config, model)
        if not isinstance(getattr(self.model, "head", None), nn.Module) or not hasattr(self.model, "body"):
            raise MetalabError("anil needs a backbone with `body` and `head` sub-modules (Conv4 and MLP have them)")

    def fast_params(self) -> Params:
        return params_of(self.model.head)

    def embed(self, x: Tensor) -> Tensor:
        return self.model.body(x)

    def predict(self, params: Params, x: Tensor) -> Tensor:
        return forward(self.model.head, params, x)

    def _batchable(self) -> str | None:
        if not callable(getattr(self.model, "embed_tasks", None)):
            return f"its backbone {type(self.model).__name__} has no embed_tasks"
        return self._running_statistics()

    def meta_loss(self, batch: EpisodeBatch) -> MetaOutput:
        if self.task_mode != "batched":
            return super().meta_loss(batch)
        self.check_head(batch.metas[0].n_way, batch.is_classification)
        one_task = self._task_fn(embedded=True)
        support, query = self.model.embed_tasks(batch.support_x), self.model.embed_tasks(batch.query_x)
        losses, metrics = zip(*map(one_task, support, batch.support_y, query, batch.query_y))
        loss = finite(torch.stack(losses).mean(), f"{self.name}.meta_loss")
        return self._output(loss, torch.stack(metrics), batch.is_classification)

    def meta_gradient(self, batch: EpisodeBatch) -> MetaOutput:
        if self.task_mode != "batched":
            return super().meta_gradient(batch)
        return MetaAlgorithm.meta_gradient(self, batch)  # one backward pass through the shared body
