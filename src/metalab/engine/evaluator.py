"""The evaluation protocol: mean ± 95% CI over a fixed, seeded set of test episodes."""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass

from tqdm.auto import tqdm

from metalab.algorithms.base import MetaAlgorithm
from metalab.data.sampler import TaskSource
from metalab.engine.distributed import SINGLE, Distributed
from metalab.func.tasks import in_task_order, on_threads, task_shares
from metalab.utils.errors import MetalabError, require_positive
from metalab.utils.stats import mean_ci95


@dataclass(frozen=True)
class EvalResult:
    """Summary of one evaluation.

    Attributes:
        metric: ``accuracy`` (fraction in [0, 1]), ``mse``, or for meta-RL ``return`` or
            ``success`` (fraction of episodes).
        mean: mean of the per-episode metric.
        ci95: half-width of the 95% confidence interval of the mean.
        episodes: number of test episodes (episodes ``0..episodes-1`` of the stream).
        steps: test-time adaptation steps (``None``: the method's default).
        seed: the seed of the episode stream.
    """

    metric: str
    mean: float
    ci95: float
    episodes: int
    steps: int | None
    seed: int

    def to_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        scale, unit = (100.0, "%") if self.metric == "accuracy" else (1.0, "")
        steps = "" if self.steps is None else f", {self.steps} steps"
        return (
            f"{self.metric} {self.mean * scale:.2f}{unit} ± {self.ci95 * scale:.2f}{unit} "
            f"({self.episodes} {'tasks' if self.metric in ('return', 'success') else 'episodes'}{steps})"
        )


def evaluate(
    algorithm: MetaAlgorithm,
    source: TaskSource,
    episodes: int,
    steps: int | None = None,
    progress: bool = False,
    desc: str = "eval",
    distributed: Distributed = SINGLE,
    threads: bool | None = None,
) -> EvalResult:
    """Adapt to each of the first ``episodes`` episodes of ``source`` and score its query set.

    The algorithm is put in evaluation mode for the duration (batch norm with running
    statistics uses them) and restored afterwards; episodes are moved to the algorithm's
    device. In a data-parallel run every rank scores
    its share of the episodes and all ranks return the result over all of them.

    ``threads``: score episodes side by side, one per core (:func:`metalab.func.on_threads`;
    the episodes are dealt round-robin to torch's intra-op thread count, each thread's
    operators on one core). ``None`` (default): when the method allows it
    (:attr:`MetaAlgorithm.evaluates_on_threads`); on a GPU the episodes always run one after
    another. Each episode's value is computed as alone, so the result is the same either way
    up to the rounding of the operators' thread count. Episodes are drawn from ``source`` one
    at a time (a source need not be thread-safe). After an error in one episode the other
    threads stop at their next episode and the error is raised.
    """
    require_positive(episodes=episodes)
    allowed = algorithm.evaluates_on_threads
    if threads and not allowed:
        raise MetalabError(
            f"{algorithm.name} cannot score episodes on threads: its adaptation may change shared state (only "
            "methods whose networks run as pure functions can); use threads=False or None")
    indices = distributed.episode_indices(episodes)
    workers = None if (allowed if threads is None else threads) else 1
    shares = task_shares(len(indices), algorithm.device, workers)
    lock, failed = threading.Lock(), threading.Event()
    bar = tqdm(total=len(indices), desc=desc, disable=not progress, leave=False)

    def score(position: int) -> float:
        with lock:
            episode = source.episode(indices[position])
        try:
            value = algorithm.evaluate_episode(algorithm.on_device(episode), steps)
        except BaseException:
            failed.set()
            raise
        with lock:
            bar.update()
        return value

    def share_values(share: range) -> list[float]:
        return [score(position) for position in share if not failed.is_set()]

    was_training = algorithm.training
    algorithm.eval()
    try:
        values = in_task_order(shares, on_threads([lambda share=share: share_values(share) for share in shares]))
    finally:
        algorithm.train(was_training)
        bar.close()
    values = distributed.gather_values(values, episodes)
    mean, ci = mean_ci95(values)
    # a meta-RL stream may score by another measure than the method's default (Meta-World: success)
    return EvalResult(getattr(source, "metric", algorithm.metric), mean, ci, episodes, steps, source.seed)
