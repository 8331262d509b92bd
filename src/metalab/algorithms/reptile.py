"""Reptile: move the initialisation towards the weights that k inner steps reach on each task.

Reference: Nichol, Achiam & Schulman, "On First-Order Meta-Learning Algorithms",
arXiv:1803.02999, 2018.

The paper, mapped to code:
- Algorithm 1/2, inner loop ``W_i = SGD(L_tau_i, phi, k)``: :meth:`Reptile.adapted_on`,
  ``k = inner_steps`` steps of the rule (``inner_optimizer``: Adam with
  ``beta1 = adam_b1``, or SGD); step j uses minibatch j of the task's data
  (:func:`minibatches`: drawn without replacement and reshuffled when exhausted, as in the
  paper's code). The loop keeps no graph: Reptile is first order by construction.
- Algorithm 2, ``phi <- phi + epsilon * (1/n) sum_i (W_i - phi)``: ``meta_loss`` returns
  the surrogate ``1/2 ||phi - stopgrad(mean_i W_i)||^2``, whose gradient is
  ``phi - mean_i W_i``, and :meth:`Reptile.outer_optimizer` is plain SGD, so the trainer's
  step with ``outer_lr = epsilon`` is exactly the Reptile update (n = ``meta_batch_size``).
- Inner optimiser state: the paper's Algorithm 1 does not say whether Adam's moments
  start afresh on each task. Its code (openai/supervised-reptile) resets only the
  trainable variables between tasks, so Adam's moments and step count carry over from
  task to task through all of meta-training, and evaluation starts from them (without
  keeping what it changes). ``inner_state="fresh"`` (default) starts every task from zero
  moments, in which case beta1 = 0 makes each inner step about ``inner_lr * sign(g)``;
  ``inner_state="persistent"`` follows the code: the state lives in buffers (saved in
  checkpoints), tasks run one after another (``task_mode="loop"``) and ``meta_loss`` in
  training mode advances it.
- Reptile has no support/query split: meta-training adapts on the whole training episode
  (``train_on_query``); evaluation adapts on the support set only, for
  ``test_inner_steps`` steps, from fresh optimiser state (or the carried one, above).

Omniglot hyper-parameters of the paper (Table 3, appendix A), in metalab terms: Adam with
beta1 = 0 (``adam_b1=0.0``), inner rate 1e-3 (``inner_lr``), 5 inner iterations
(``inner_steps=5``) with inner batch 10 (``inner_batch_size=10``) on 10 shots per class
(``train_k_shot + train_n_query = 10``); 50 evaluation iterations (``test_inner_steps=50``)
with batch 5 (1-shot 5-way: the batch is capped at the 5 support examples); outer step size
1.0 annealed linearly to 0 (``TrainConfig(outer_lr=1.0, lr_anneal=True)``); meta-batch 5
(``meta_batch_size=5``).

Transduction: batch norm always normalises with the statistics of the batch it is given
(see :mod:`metalab.nn.batchnorm`), so predicting a whole query set at once uses that set's
statistics: the transductive setting of the paper's reported numbers.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor, nn

from metalab._types import Params
from metalab.algorithms.base import MetaAlgorithm, MetaOutput, Predictor, check_support, finite
from metalab.algorithms.gradient import GradientConfig, GradientMethod
from metalab.algorithms.registry import register
from metalab.data.benchmarks import TaskSpec
from metalab.data.episode import Episode, EpisodeBatch
from metalab.func import SGD, Adam, UpdateRule, grad_and_value, map_tasks, task_loss, task_metric
from metalab.utils.errors import MetalabError, require_positive
from metalab.utils.seeding import make_generator

INNER_OPTIMIZERS = ("adam", "sgd")
INNER_STATES = ("fresh", "persistent")


@dataclass(frozen=True)
class ReptileConfig(GradientConfig):
    """Reptile options; the other inner-loop options are those of :class:`GradientConfig`.

    Attributes:
        inner_lr: inner step size (Adam's or SGD's), or one per inner step; 1e-3 as in the
            paper's Omniglot setting.
        inner_steps: inner steps k during meta-training (5 for Omniglot in the paper).
        inner_optimizer: ``adam`` (the paper's) or ``sgd``.
        adam_b1: Adam's beta1; the paper uses 0.
        inner_batch_size: examples per inner step, drawn without replacement from the
            task's data and reshuffled when exhausted; ``None`` (or a size larger than the
            data): all of the task's data at every step.
        train_on_query: meta-train on the support and query sets of a training episode
            together (Reptile has no support/query split); evaluation always adapts on the
            support set only.
        inner_state: ``fresh``: every task's inner Adam starts from zero moments;
            ``persistent``: the moments and step count carry over from task to task
            through meta-training, as in the paper's code (see the module docstring).

    ``first_order`` is ignored: Reptile is first order by construction.
    """

    inner_lr: float | tuple[float, ...] = 1e-3
    inner_steps: int = 5
    inner_optimizer: str = "adam"
    adam_b1: float = 0.0
    inner_batch_size: int | None = None
    train_on_query: bool = True
    inner_state: str = "fresh"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.inner_optimizer not in INNER_OPTIMIZERS:
            raise MetalabError(f"inner_optimizer must be one of {INNER_OPTIMIZERS}, got {self.inner_optimizer!r}")
        if not 0.0 <= self.adam_b1 < 1.0:
            raise MetalabError(f"adam_b1 must be in [0, 1), got {self.adam_b1}")
        if self.inner_batch_size is not None:
            require_positive(inner_batch_size=self.inner_batch_size)
        if self.inner_state not in INNER_STATES:
            raise MetalabError(f"inner_state must be one of {INNER_STATES}, got {self.inner_state!r}")
        if self.inner_state == "persistent" and self.inner_optimizer != "adam":
            raise MetalabError(f"inner_state='persistent' keeps Adam's moments; inner_optimizer="
                               f"{self.inner_optimizer!r} has none: use inner_optimizer='adam' or inner_state='fresh'")
        if self.inner_state == "persistent" and self.task_mode not in ("auto", "loop"):
            raise MetalabError(f"inner_state='persistent' passes the optimiser state from task to task, so tasks "
                               f"run one after another: use task_mode='loop' (or 'auto'), not {self.task_mode!r}")


def minibatches(n: int, batch_size: int | None, steps: int, seed: int) -> Tensor:
    """Indices ``(steps, b)`` of the examples of each inner step, ``b = min(batch_size, n)``.

    A stream of random permutations of ``0..n-1`` cut into consecutive batches (every
    example once before any repeats, as the paper's ``_mini_batches``); the generator is
    seeded from ``seed`` (the episode's), so the same episode gets the same batches.
    """
    b = n if batch_size is None else min(batch_size, n)
    generator = make_generator(seed)
    epochs = max(1, -(-steps * b // n))
    stream = torch.cat([torch.randperm(n, generator=generator, device="cpu") for _ in range(epochs)])
    return stream[: steps * b].view(steps, b)


@register
class Reptile(GradientMethod):
    """Reptile (batched, Algorithm 2) over any backbone from :func:`metalab.nn.make_backbone`."""

    name = "reptile"
    Config = ReptileConfig
    config: ReptileConfig

    def __init__(self, spec: TaskSpec, config: ReptileConfig, model: nn.Module | None = None):
        super().__init__(spec, config, model)
        self.persistent = config.inner_state == "persistent"
        if self.persistent:
            self.task_mode = "loop"  # the state passes from one task to the next
            m, v, count = self._rule().init(self.fast_params())
            for i, name in enumerate(m):
                self.register_buffer(f"inner_m_{i}", m[name])
                self.register_buffer(f"inner_v_{i}", v[name])
            self.register_buffer("inner_count", count)

    def stored_state(self) -> tuple[Params, Params, Tensor]:
        """The persistent inner Adam state ``(m, v, count)``, keyed like :meth:`fast_params`."""
        names = list(self.fast_params())
        return ({name: getattr(self, f"inner_m_{i}") for i, name in enumerate(names)},
                {name: getattr(self, f"inner_v_{i}") for i, name in enumerate(names)}, self.inner_count)

    def _store(self, state: tuple[Params, Params, Tensor]) -> None:
        (m, v, count), (held_m, held_v, held_count) = state, self.stored_state()
        with torch.no_grad():
            for name in held_m:
                held_m[name].copy_(m[name])
                held_v[name].copy_(v[name])
            held_count.copy_(count)

    def rule(self) -> UpdateRule:
        cfg = self.config
        return Adam(cfg.inner_lr, b1=cfg.adam_b1) if cfg.inner_optimizer == "adam" else SGD(cfg.inner_lr)

    def outer_optimizer(self, lr: float) -> torch.optim.Optimizer:
        """Plain SGD on the surrogate: ``phi <- phi + lr * (mean_i W_i - phi)``."""
        return torch.optim.SGD(self.parameters(), lr=lr)

    def adapted_on(self, params: Params, x: Tensor, y: Tensor, batches: Tensor,
                   state: Any = None) -> tuple[Params, Any]:
        """``params`` after one rule step per row of ``batches`` (indices into ``x``, ``y``), and
        the rule's final state; no graph.

        Args:
            params: initial parameters (detached here).
            x: the task's inputs ``(n, *input_shape)``.
            y: its targets ``(n,)`` labels or ``(n, d)`` regression targets.
            batches: ``(steps, b)`` int64 indices, e.g. from :func:`minibatches`.
            state: the rule's state to start from; ``None``: a fresh one.
        """
        rule = self._rule()
        params = {name: p.detach() for name, p in params.items()}
        if state is None:
            state = rule.init(params)
        for step in range(batches.shape[0]):
            xb, yb = x[batches[step]], y[batches[step]]
            grads, _ = grad_and_value(lambda p: task_loss(self.predict(p, xb), yb), params, self.under_vmap)
            params, state = rule(params, grads, state, step)
        return params, state

    def meta_loss(self, batch: EpisodeBatch) -> MetaOutput:
        self.check_head(batch.metas[0].n_way, batch.is_classification)
        cfg = self.config
        x, y = batch.support_x, batch.support_y
        if cfg.train_on_query:
            x, y = torch.cat([x, batch.query_x], dim=1), torch.cat([y, batch.query_y], dim=1)
        # drawn outside the per-task function, so it stays static-shaped under vmap
        batches = torch.stack([minibatches(x.shape[1], cfg.inner_batch_size, cfg.inner_steps, m.seed)
                               for m in batch.metas]).to(x.device)
        params = self.fast_params()
        state = self.stored_state() if self.persistent else None

        def one_task(x: Tensor, y: Tensor, index: Tensor, qx: Tensor, qy: Tensor) -> tuple[Tensor, ...]:
            nonlocal state  # persistent: task i starts from task i-1's final state (loop mode, in order)
            adapted, end = self.adapted_on(params, x, y, index, state)
            if self.persistent:
                state = end
            pred = self.predict(adapted, qx)
            return (*(adapted[name] for name in params), task_loss(pred, qy), task_metric(pred, qy))

        tensors = (x, y, batches, batch.query_x, batch.query_y)
        *adapted, losses, metrics = map_tasks(one_task, tensors, self.task_mode)
        if self.persistent and self.training:
            self._store(state)
        # d/dphi of 1/2 ||phi - stopgrad(mean_i W_i)||^2 is phi - mean_i W_i: SGD makes it Reptile's step
        surrogate = sum(0.5 * (p - w.mean(0).detach()).square().sum() for p, w in zip(params.values(), adapted))
        loss = finite(surrogate, f"{self.name}.meta_loss")
        # logged: the task loss and metric of W_i on the query set (trained on when train_on_query)
        return replace(self._output(losses.mean(), metrics, batch.is_classification), loss=loss)

    def meta_gradient(self, batch: EpisodeBatch) -> MetaOutput:
        """``meta_loss(batch).loss.backward()``: the inner loops keep no graph to free task by task."""
        return MetaAlgorithm.meta_gradient(self, batch)

    def adapt(self, episode: Episode, steps: int | None = None) -> Predictor:
        if episode.is_classification:
            check_support(episode, self.spec.output_dim)
        x, y = episode.support_x, episode.support_y
        batches = minibatches(x.shape[0], self.config.inner_batch_size, self.test_steps(steps), episode.meta.seed)
        with torch.no_grad():
            state = self.stored_state() if self.persistent else None  # read, never written back
            adapted, _ = self.adapted_on(self.fast_params(), x, y, batches.to(x.device), state)

        def predict(inputs: Tensor) -> Tensor:
            with torch.no_grad():
                return self.predict(adapted, inputs)

        return predict
