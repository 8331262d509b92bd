"""Meta-training: Adam on the meta-loss, periodic validation, last and best checkpoints."""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from metalab.algorithms.base import MetaAlgorithm
from metalab.data.benchmarks import Benchmark
from metalab.engine.checkpoint import save_checkpoint
from metalab.engine.evaluator import EvalResult, evaluate
from metalab.utils.errors import MetalabError, require_positive


@dataclass(frozen=True)
class TrainConfig:
    """Outer-loop settings.

    Attributes:
        steps: meta-iterations (optimizer steps).
        meta_batch_size: tasks per meta-iteration.
        outer_lr: learning rate of the method's outer optimiser (Adam for most methods,
            plain SGD = Reptile's outer step size epsilon).
        lr_decay_every: multiply the rate by ``lr_decay`` every this many steps (0: never).
        lr_decay: the factor.
        lr_anneal: anneal the rate linearly to 0 over ``steps`` (Reptile); excludes
            ``lr_decay_every``.
        val_every: validate every this many steps (0: only at the end).
        val_episodes: validation episodes (a fixed, seeded set).
        log_every: write averaged training metrics every this many steps.
        grad_clip: clip the meta-gradient norm to this value (``None``: no clipping).
        max_seconds: training-time budget; training stops after the step that exceeds it
            (then validates and checkpoints as at the last step). ``None``: no budget.
        seed: seed of parameter initialisation and of the training episode stream.
    """

    steps: int = 1000
    meta_batch_size: int = 25
    outer_lr: float = 1e-3
    lr_decay_every: int = 0
    lr_decay: float = 0.5
    lr_anneal: bool = False
    val_every: int = 500
    val_episodes: int = 100
    log_every: int = 50
    grad_clip: float | None = None
    max_seconds: float | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        require_positive(steps=self.steps, meta_batch_size=self.meta_batch_size, val_episodes=self.val_episodes, log_every=self.log_every)
        if not self.outer_lr > 0:
            raise MetalabError(f"outer_lr must be positive, got {self.outer_lr}")
        if self.max_seconds is not None and not self.max_seconds > 0:
            raise MetalabError(f"max_seconds must be positive or None, got {self.max_seconds}")
        if self.lr_anneal and self.lr_decay_every:
            raise MetalabError("lr_anneal and lr_decay_every exclude each other; set one of them")


@dataclass
class TrainResult:
    steps: int
    seconds: float
    best: dict[str, Any] | None
    last_val: EvalResult | None


def _better(metric: str, new: float, old: float | None) -> bool:
    if old is None:
        return True
    return new > old if metric == "accuracy" else new < old


class _MetricLog:
    """Averages training metrics over a window and appends them as JSON lines."""

    def __init__(self, path: Path | None):
        self.path, self.sums, self.count = path, {}, 0

    def add(self, metrics: dict[str, float]) -> None:
        for key, value in metrics.items():
            self.sums[key] = self.sums.get(key, 0.0) + value
        self.count += 1

    def write(self, record: dict[str, Any]) -> None:
        if self.path is not None:
            with self.path.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps(record) + "\n")

    def flush(self, step: int, seconds: float) -> dict[str, float]:
        means = {f"train_{k}": v / self.count for k, v in self.sums.items()}
        self.write({"step": step, "seconds": round(seconds, 3), **means})
        self.sums, self.count = {}, 0
        return means


def train(
    algorithm: MetaAlgorithm,
    benchmark: Benchmark,
    config: TrainConfig,
    run_dir: str | Path | None = None,
    progress: bool = True,
    checkpoint_extra: dict[str, Any] | None = None,
) -> TrainResult:
    """Meta-train ``algorithm`` on ``benchmark.train`` for ``config.steps`` meta-iterations.

    Meta-batch ``t`` holds episodes ``t*B .. t*B+B-1`` of the training stream. Every
    ``val_every`` steps (and at the end) the method is evaluated on the fixed validation
    episodes; ``run_dir/last.pt`` and ``run_dir/best.pt`` are written atomically and
    ``run_dir/metrics.jsonl`` receives training and validation metrics.
    """
    run_path = Path(run_dir) if run_dir is not None else None
    if run_path is not None:
        run_path.mkdir(parents=True, exist_ok=True)
    optimizer = algorithm.outer_optimizer(config.outer_lr)
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None
    if config.lr_decay_every:
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, config.lr_decay_every, config.lr_decay)
    elif config.lr_anneal:
        scheduler = torch.optim.lr_scheduler.LinearLR(optimizer, 1.0, 0.0, total_iters=config.steps)
    log = _MetricLog(run_path / "metrics.jsonl" if run_path is not None else None)
    best: dict[str, Any] | None = None
    last_val: EvalResult | None = None
    extra = dict(checkpoint_extra or {}, train=asdict(config))
    start = time.perf_counter()
    algorithm.train()
    bar = tqdm(range(config.steps), desc=f"train {algorithm.name}", disable=not progress, dynamic_ncols=True)
    for step in bar:
        batch = benchmark.train.batch(step, config.meta_batch_size)
        optimizer.zero_grad(set_to_none=True)
        out = algorithm.meta_gradient(batch)
        if config.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(algorithm.parameters(), config.grad_clip)
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        log.add(out.metrics)
        done = step + 1
        out_of_time = config.max_seconds is not None and time.perf_counter() - start >= config.max_seconds
        last = done == config.steps or out_of_time
        if done % config.log_every == 0 or last:
            bar.set_postfix(log.flush(done, time.perf_counter() - start))
        if (config.val_every and done % config.val_every == 0) or last:
            last_val = evaluate(algorithm, benchmark.val, config.val_episodes)
            log.write({"step": done, "seconds": round(time.perf_counter() - start, 3),
                       f"val_{last_val.metric}": last_val.mean, f"val_{last_val.metric}_ci95": last_val.ci95})
            improved = _better(last_val.metric, last_val.mean, best and best["value"])
            if improved:
                best = {"metric": last_val.metric, "value": last_val.mean, "ci95": last_val.ci95, "step": done}
            if run_path is not None:
                state = dict(extra, step=done, best=best, optimizer=optimizer.state_dict(),
                             scheduler=scheduler.state_dict() if scheduler is not None else None)
                save_checkpoint(run_path / "last.pt", algorithm, **state)
                if improved:
                    save_checkpoint(run_path / "best.pt", algorithm, **state)
            if not math.isfinite(last_val.mean):
                raise MetalabError(f"validation {last_val.metric} is not finite at step {done}; lower the learning rates")
        if last:
            break
    bar.close()
    return TrainResult(done, time.perf_counter() - start, best, last_val)
