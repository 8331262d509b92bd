"""The evaluation protocol: mean ± 95% CI over a fixed, seeded set of test episodes."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from tqdm.auto import tqdm

from metalab.algorithms.base import MetaAlgorithm
from metalab.data.sampler import TaskSource
from metalab.engine.distributed import SINGLE, Distributed
from metalab.utils.errors import require_positive
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
) -> EvalResult:
    """Adapt to each of the first ``episodes`` episodes of ``source`` and score its query set.

    The algorithm is put in evaluation mode for the duration (batch norm with running
    statistics uses them) and restored afterwards; episodes are moved to the algorithm's
    device. In a data-parallel run every rank scores
    its share of the episodes and all ranks return the result over all of them.
    """
    require_positive(episodes=episodes)
    was_training = algorithm.training
    algorithm.eval()
    values = []
    try:
        for index in tqdm(distributed.episode_indices(episodes), desc=desc, disable=not progress, leave=False):
            values.append(algorithm.evaluate_episode(algorithm.on_device(source.episode(index)), steps))
    finally:
        algorithm.train(was_training)
    values = distributed.gather_values(values, episodes)
    mean, ci = mean_ci95(values)
    # a meta-RL stream may score by another measure than the method's default (Meta-World: success)
    return EvalResult(getattr(source, "metric", algorithm.metric), mean, ci, episodes, steps, source.seed)
