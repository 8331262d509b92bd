"""What every gradient-based method shares: the inner-loop options and the meta-loss skeleton.

A gradient-based method adapts ``fast`` parameters by an update rule on a task's support
loss, then scores the adapted learner on the query set. Methods differ only in a few
hooks: which parameters are fast (all for MAML, the head for ANIL), what the rule is
(fixed SGD, learned per-parameter rates for Meta-SGD) and what the inputs are mapped to
before the fast part (ANIL's features).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import Callable

import torch
from torch import Tensor, nn

from metalab._types import Params
from metalab.algorithms.base import MetaAlgorithm, MetaOutput, Predictor, check_support, finite
from metalab.data.benchmarks import TaskSpec
from metalab.data.episode import Episode, EpisodeBatch
from metalab.func import (
    SGD,
    TASK_MODES,
    Clipped,
    UpdateRule,
    forward,
    in_task_order,
    inner_loop,
    map_tasks,
    metric_name,
    on_threads,
    params_of,
    runs_pure,
    task_loss,
    task_metric,
    task_shares,
)
from metalab.nn import make_backbone
from metalab.nn.backbones import DOWNSAMPLE, READOUT
from metalab.utils.errors import MetalabError, require_non_negative


GRADIENT_TASK_MODES = TASK_MODES + ("batched", "auto")


@dataclass(frozen=True)
class GradientConfig:
    """Inner-loop options every gradient-based method honours.

    Attributes:
        inner_lr: inner SGD step size alpha (0.01 sinusoid, 0.4 Omniglot in the MAML
            paper), or one rate per inner step (MAML++), e.g. ``(0.4, 0.2)``.
        inner_steps: inner steps during meta-training.
        test_inner_steps: inner steps at evaluation; ``None`` means ``inner_steps``.
        first_order: treat inner gradients as constants (no second-order terms).
        inner_grad_clip: rescale each inner gradient to at most this global L2 norm
            (``None``: no clipping).
        task_mode: how the tasks of a meta-batch are run (all give the same result):
            ``loop`` one task after another; ``threads`` the loop's tasks dealt round-robin to
            one thread per intra-op thread (``torch.get_num_threads()``), each running its
            tasks on one core (:func:`metalab.func.on_threads`; on a GPU, the loop; the model
            must run as a pure function, as metalab.nn's backbones do, and keep no batch-norm
            running statistics); ``vmap`` through ``torch.func.vmap``;
            ``batched`` the inner loops of all tasks in one pass of the backbone's
            ``functional_tasks`` (grouped convolutions), then each task's query pass on its own
            and one backward pass through all the inner loops (see
            :meth:`GradientMethod._batched_share`; MAML and Meta-SGD with a backbone
            that has ``functional_tasks``; ANIL embeds all tasks in one pass of the shared body,
            see :mod:`metalab.algorithms.anil`); ``auto``: vmap for vector inputs; for the
            default Conv4, batched with ``downsample="stride"`` where the method can batch
            (MAML, first-order MAML and Meta-SGD without inner gradient clipping: the Omniglot
            presets' model) and threads otherwise; the loop for a model you pass. Measured by
            ``benchmarks/task_modes.py`` and ``benchmarks/throughput.py`` on a 2-core CPU (see
            "Loop, vmap, threads or batched over tasks" in docs/speed_and_exactness.md): vmap
            is 12x faster than the loop for the sinusoid MLP; for Conv4 at meta-batch 32 on two
            threads, threads were 1.05-1.56x faster than the loop for MAML, Meta-SGD, ANIL and
            Reptile, batched (its groups on threads) as fast as threads or 8% faster with the
            strided Conv4 and slower with max-pooling, and ANIL's batched form 1.2-2.3x slower
            than its loop.
        channels_last: the default Conv4's layout: ``True`` channels-last (its batch norm then
            computes the statistics as column means of the channels-last matrix view,
            :func:`metalab.nn.batchnorm.batch_statistics_norm`), ``False`` channels-first,
            ``None`` (the default) channels-last with max-pooling and channels-first with
            ``downsample="stride"``, the faster of each (see :class:`metalab.nn.Conv4`; timed by
            ``benchmarks/throughput.py`` and ``benchmarks/first_block.py``). Ignored with
            ``task_mode="vmap"``.
        downsample: how the default Conv4 halves the image: ``"pool"`` (max-pool, the
            default) or ``"stride"`` (stride-2 convolutions: the Omniglot model of the MAML
            and Reptile papers' code, see :class:`metalab.nn.Conv4`). Images only.
        readout: how the default Conv4's last feature map becomes the embedding:
            ``"flatten"`` (the default; Reptile's Omniglot model with ``downsample="stride"``)
            or ``"mean"`` over positions (the MAML code's Omniglot model with
            ``downsample="stride"``). Images only.

    Evaluation (``adapt``) always runs the inner loop without building a graph.
    """

    inner_lr: float | tuple[float, ...] = 0.01
    inner_steps: int = 1
    test_inner_steps: int | None = None
    first_order: bool = False
    inner_grad_clip: float | None = None
    task_mode: str = "auto"
    channels_last: bool | None = None
    downsample: str = "pool"
    readout: str = "flatten"

    def __post_init__(self) -> None:
        if self.task_mode not in GRADIENT_TASK_MODES:
            raise MetalabError(f"task_mode must be one of {GRADIENT_TASK_MODES}, got {self.task_mode!r}")
        if self.downsample not in DOWNSAMPLE:
            raise MetalabError(f"downsample must be one of {DOWNSAMPLE}, got {self.downsample!r}")
        if self.readout not in READOUT:
            raise MetalabError(f"readout must be one of {READOUT}, got {self.readout!r}")
        require_non_negative(inner_steps=self.inner_steps,
                             **({} if self.test_inner_steps is None else {"test_inner_steps": self.test_inner_steps}))
        rates = self.inner_lr if isinstance(self.inner_lr, (tuple, list)) else (self.inner_lr,)
        if not rates or not all(isinstance(r, (int, float)) and math.isfinite(r) for r in rates):
            raise MetalabError(f"inner_lr must be a finite number or a non-empty list of them, got {self.inner_lr!r}")
        if isinstance(self.inner_lr, list):
            object.__setattr__(self, "inner_lr", tuple(self.inner_lr))
        if self.inner_grad_clip is not None and not self.inner_grad_clip > 0:
            raise MetalabError(f"inner_grad_clip must be positive or None, got {self.inner_grad_clip}")


def _add(total: Tensor | None, g: Tensor | None) -> Tensor | None:
    """``total + g``, where either may be missing (``None``)."""
    if g is None or total is None:
        return total if g is None else g
    return total + g


#: a share's summed gradient per meta-parameter (``None``: none reached it) and its tasks' (loss, metric)
ShareResult = tuple[list[Tensor | None], list[tuple[Tensor, Tensor]]]


class GradientMethod(MetaAlgorithm):
    """Meta-loss and adaptation of an inner-loop method; subclasses override the hooks.

    Hooks: :meth:`fast_params` (what the inner loop adapts), :meth:`embed` (inputs to
    the fast part, computed once per task with the meta-parameters), :meth:`predict`
    (the fast part as a function of its parameters) and :meth:`rule` (the update rule).
    The defaults are MAML's: every parameter is fast, inputs go in unchanged, SGD.
    """

    config: GradientConfig
    #: the method's inner rule is element-wise (SGD, per-parameter SGD) and its meta-gradient
    #: is the inherited one, so ``task_mode="batched"`` applies
    task_batched: bool = False

    def __init__(self, spec: TaskSpec, config: GradientConfig, model: nn.Module | None = None):
        super().__init__(spec, config)
        mode = config.task_mode
        unbatched = "vmap" if len(spec.input_shape) == 1 else "loop"
        conv_options = [f"{name}={value!r}" for name, value, default in
                        (("downsample", config.downsample, "pool"), ("readout", config.readout, "flatten"))
                        if value != default]
        if conv_options and model is not None:
            raise MetalabError(f"{', '.join(conv_options)} shape the default Conv4; build the model you pass with "
                               "them instead (metalab.nn.Conv4(..., downsample=..., readout=...))")
        if conv_options and len(spec.input_shape) != 3:
            raise MetalabError(f"{', '.join(conv_options)}: Conv4 options for images; this benchmark's inputs "
                               f"have shape {tuple(spec.input_shape)}")
        default_model = model is None
        strided_default = default_model and config.downsample == "stride"  # the default Conv4, strided
        if model is None:
            model = make_backbone(spec.input_shape, spec.output_dim, vmap_safe=mode == "vmap",
                                  channels_last=config.channels_last, downsample=config.downsample,
                                  readout=config.readout)
        self.model = model
        if mode == "auto":  # see GradientConfig.task_mode
            if strided_default and self.task_batched and self._batchable() is None:
                mode = "batched"
            elif default_model and unbatched == "loop" and self._threadable() is None:
                mode = "threads"
            else:
                mode = unbatched
        elif mode == "batched" and (reason := self._batchable()) is not None:
            raise MetalabError(f"{self.name} cannot run task_mode=batched: {reason}; use task_mode=loop or auto")
        elif mode == "threads" and (reason := self._threadable()) is not None:
            raise MetalabError(f"{self.name} cannot run task_mode=threads: {reason}; use task_mode=loop or auto")
        self.task_mode = mode

    @property
    def under_vmap(self) -> bool:
        """The tasks run inside ``torch.func.vmap`` (inner gradients then come from ``torch.func``)."""
        return self.task_mode == "vmap"

    @property
    def evaluates_on_threads(self) -> bool:
        """Adapting reads the meta-parameters and writes only new tensors; the model must run as a
        pure function of its parameters (:func:`metalab.func.runs_pure`)."""
        return runs_pure(self.model)

    # hooks -----------------------------------------------------------------------------
    def fast_params(self) -> Params:
        return params_of(self.model)

    def embed(self, x: Tensor) -> Tensor:
        return x

    def predict(self, params: Params, x: Tensor) -> Tensor:
        return forward(self.model, params, x)

    def rule(self) -> UpdateRule:
        return SGD(self.config.inner_lr)

    # shared machinery --------------------------------------------------------------------
    def _batchable(self) -> str | None:
        """Why the tasks cannot be run side by side in one pass (``None`` if they can)."""
        if not self.task_batched:
            return "its meta-gradient has no batched form"
        if not callable(getattr(self.model, "functional_tasks", None)):
            return f"its backbone {type(self.model).__name__} has no functional_tasks"
        hooks = ("fast_params", "embed", "predict")
        if any(getattr(type(self), h) is not getattr(GradientMethod, h) for h in hooks):
            return "it adapts part of the network or maps the inputs first"
        if self.config.inner_grad_clip is not None:
            return "inner_grad_clip takes one norm per task"
        return self._running_statistics()

    def _threadable(self) -> str | None:
        """Why the tasks cannot run side by side on threads (``None`` if they can)."""
        if not runs_pure(self.model):
            return (f"its model {type(self.model).__name__} runs through torch.func.functional_call, which swaps "
                    "the module's parameters in place (give it a functional(params, x) method, as metalab.nn's "
                    "backbones have)")
        return self._running_statistics()

    def _running_statistics(self) -> str | None:
        """Why batch norm stops tasks from being batched (``None``: it uses batch statistics only)."""
        if any(getattr(m, "track_running_stats", False) for m in self.model.modules()):
            return "its batch norm keeps running statistics"
        return None

    def _rule(self) -> UpdateRule:
        rule = self.rule()
        return Clipped(rule, self.config.inner_grad_clip) if self.config.inner_grad_clip is not None else rule

    def adapted(self, params: Params, support: Tensor, support_y: Tensor, steps: int, first_order: bool) -> Params:
        """``params`` after ``steps`` inner steps on the (embedded) support set."""

        def support_loss(p: Params) -> Tensor:
            return task_loss(self.predict(p, support), support_y)

        return inner_loop(support_loss, params, self._rule(), steps, first_order, under_vmap=self.under_vmap)

    def test_steps(self, steps: int | None) -> int:
        if steps is not None:
            return steps
        cfg = self.config
        return cfg.test_inner_steps if cfg.test_inner_steps is not None else cfg.inner_steps

    def check_head(self, n_way: int, classification: bool) -> None:
        if classification and n_way != self.spec.output_dim:
            raise MetalabError(
                f"{self.name} has a {self.spec.output_dim}-way output head but got {n_way}-way episodes; "
                "train with --train-n-way equal to --n-way"
            )

    def _task_fn(self, embedded: bool = False) -> Callable[[Tensor, Tensor, Tensor, Tensor], tuple[Tensor, Tensor]]:
        """One task's query loss and metric from its support and query sets (already embedded if ``embedded``)."""
        params = self.fast_params()
        cfg = self.config
        features = (lambda x: x) if embedded else self.embed

        def one_task(sx: Tensor, sy: Tensor, qx: Tensor, qy: Tensor) -> tuple[Tensor, Tensor]:
            adapted = self.adapted(params, features(sx), sy, cfg.inner_steps, cfg.first_order)
            pred = self.predict(adapted, features(qx))
            return task_loss(pred, qy), task_metric(pred.detach(), qy)

        return one_task

    def _output(self, loss: Tensor, metrics: Tensor, classification: bool) -> MetaOutput:
        return MetaOutput(loss, {"loss": loss.item(), metric_name(classification): metrics.mean().item()})

    def meta_loss(self, batch: EpisodeBatch) -> MetaOutput:
        self.check_head(batch.metas[0].n_way, batch.is_classification)
        if self.task_mode == "batched":
            adapted = self._adapted_tasks(batch.support_x, batch.support_y)
            pred = torch.stack([self.predict({name: p[t] for name, p in adapted.items()}, episode.query_x)
                                for t, episode in enumerate(batch.episodes())])
            losses = torch.stack([task_loss(p, y) for p, y in zip(pred, batch.query_y)])
            metrics = torch.stack([task_metric(p.detach(), y) for p, y in zip(pred, batch.query_y)])
            return self._output(finite(losses.mean(), f"{self.name}.meta_loss"), metrics, batch.is_classification)
        tensors = (batch.support_x, batch.support_y, batch.query_x, batch.query_y)
        losses, metrics = map_tasks(self._task_fn(), tensors, self.task_mode)
        loss = finite(losses.mean(), f"{self.name}.meta_loss")
        return self._output(loss, metrics, batch.is_classification)

    def _adapted_tasks(self, support_x: Tensor, support_y: Tensor) -> Params:
        """Every task's adapted parameters, stacked on a leading task dim, from one inner loop.

        The support loss is the sum of the tasks' losses, so its gradient with respect to
        the task-stacked parameters is each task's own gradient.
        """
        cfg, tasks = self.config, support_x.shape[0]
        stacked = {name: p.expand(tasks, *p.shape) for name, p in self.fast_params().items()}

        def support_loss(params: Params) -> Tensor:
            pred = self.model.functional_tasks(params, support_x)
            return task_loss(pred.flatten(0, 1), support_y.flatten(0, 1)) * tasks

        return inner_loop(support_loss, stacked, self._rule(), cfg.inner_steps, cfg.first_order)

    def _batched_share(self, batch: EpisodeBatch, share: range, leaves: list[Tensor]) -> ShareResult:
        """A share's part of the meta-gradient in three passes per group of its tasks, the loop's (tested).

        1. the inner loops of the group's tasks at once (:meth:`_adapted_tasks`), keeping
           their graph;
        2. task by task, the query loss at the adapted parameters (detached) and its
           gradient ``g_t`` with respect to them; each query graph is freed at once;
        3. one backward pass of ``sum_t <adapted_t, g_t>`` through the inner loops, which
           gives ``sum_t (d adapted_t / d theta)^T g_t`` with respect to the meta-parameters.

        A group's support sets hold half as many examples as one query set (at least one
        task per group), so the inner-loop graph kept alive (with its second-order terms)
        stays near one task's query graph: on Omniglot 5-way 1-shot, groups of 7 tasks
        measured 1.2-1.6x the plain loop's peak memory at one inner step
        (``benchmarks/throughput.py``); larger groups are somewhat faster and use more.
        """
        tasks, share = len(batch), list(share)
        group = max(1, batch.query_x.shape[1] // (2 * max(batch.support_x.shape[1], 1)))
        total: list[Tensor | None] = [None] * len(leaves)
        outputs = []
        for start in range(0, len(share), group):
            members = share[start:start + group]
            adapted = self._adapted_tasks(batch.support_x[members], batch.support_y[members])
            grads = {name: torch.empty_like(p) for name, p in adapted.items()}
            for i, t in enumerate(members):
                qx, qy = batch.query_x[t], batch.query_y[t]
                fast = {name: p[i].detach().requires_grad_() for name, p in adapted.items()}
                pred = self.predict(fast, qx)
                loss = finite(task_loss(pred, qy), f"{self.name}.meta_gradient")
                for name, g in zip(fast, torch.autograd.grad(loss / tasks, list(fast.values()))):
                    grads[name][i] = g
                outputs.append((loss.detach(), task_metric(pred.detach(), qy)))
            connected = [name for name, p in adapted.items() if p.requires_grad]
            if connected:
                back = torch.autograd.grad([adapted[name] for name in connected], leaves,
                                           [grads[name] for name in connected], allow_unused=True)
                total = [_add(a, b) for a, b in zip(total, back)]
        return total, outputs

    def _task_share(self, batch: EpisodeBatch, share: range, leaves: list[Tensor]) -> ShareResult:
        """A share's part of the meta-gradient, task by task (the loop's arithmetic)."""
        one_task, n = self._task_fn(), len(batch)
        total: list[Tensor | None] = [None] * len(leaves)
        outputs = []
        for t in share:
            loss, metric = one_task(batch.support_x[t], batch.support_y[t], batch.query_x[t], batch.query_y[t])
            grads = torch.autograd.grad(finite(loss, f"{self.name}.meta_gradient") / n, leaves, allow_unused=True)
            total = [_add(a, b) for a, b in zip(total, grads)]
            outputs.append((loss.detach(), metric))
        return total, outputs

    def _meta_gradient_by_shares(self, batch: EpisodeBatch,
                                 share_gradient: Callable[[EpisodeBatch, range, list[Tensor]], ShareResult]
                                 ) -> MetaOutput:
        """The meta-gradient with the tasks dealt to threads, one core each (on a CPU; one share on a GPU).

        :func:`metalab.func.task_shares` deals the tasks; ``share_gradient`` sums its
        tasks' gradients in order, and the shares' sums are added to ``.grad`` in share
        order, so the result does not depend on which thread finishes first. Peak memory
        holds one share's graph per thread.
        """
        self.check_head(batch.metas[0].n_way, batch.is_classification)
        leaves = [p for p in self.parameters() if p.requires_grad]
        tasks = len(batch)
        shares = task_shares(tasks, batch.support_x.device)
        per_share = on_threads([partial(share_gradient, batch, share, leaves) for share in shares])
        for leaf, *sums in zip(leaves, *(total for total, _ in per_share)):
            for g in sums:  # added to .grad as backward() adds: in place, in the parameter's layout
                if g is not None and leaf.grad is None:
                    leaf.grad = torch.empty_like(leaf).copy_(g)
                elif g is not None:
                    leaf.grad.add_(g)
        losses, metrics = zip(*in_task_order(shares, [outputs for _, outputs in per_share]))
        return self._output(torch.stack(losses).mean(), torch.stack(metrics), batch.is_classification)

    def meta_gradient(self, batch: EpisodeBatch) -> MetaOutput:
        """Back-propagate task by task (loop, threads), or in three passes per group of tasks (batched,
        its groups dealt to threads on a CPU); each query graph is freed at once."""
        if self.task_mode == "batched":
            return self._meta_gradient_by_shares(batch, self._batched_share)
        if self.task_mode == "threads":
            return self._meta_gradient_by_shares(batch, self._task_share)
        if self.task_mode != "loop":
            return super().meta_gradient(batch)
        self.check_head(batch.metas[0].n_way, batch.is_classification)
        one_task, n = self._task_fn(), len(batch)
        losses, metrics = [], []
        for episode in batch.episodes():
            loss, metric = one_task(episode.support_x, episode.support_y, episode.query_x, episode.query_y)
            (finite(loss, f"{self.name}.meta_gradient") / n).backward()
            losses.append(loss.detach())
            metrics.append(metric)
        return self._output(torch.stack(losses).mean(), torch.stack(metrics), batch.is_classification)

    def adapt(self, episode: Episode, steps: int | None = None) -> Predictor:
        if episode.is_classification:
            check_support(episode, self.spec.output_dim)
        steps = self.test_steps(steps)
        with torch.no_grad():  # evaluation keeps no graph: first order, detached parameters
            params = {name: p.detach() for name, p in self.fast_params().items()}
            adapted = self.adapted(params, self.embed(episode.support_x), episode.support_y, steps, first_order=True)

        def predict(x: Tensor) -> Tensor:
            with torch.no_grad():
                return self.predict(adapted, self.embed(x))

        return predict
