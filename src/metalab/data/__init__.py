"""L1 data: episodes as data, samplers, datasets and named benchmarks."""

from metalab.data.benchmarks import BENCHMARKS, Benchmark, BenchmarkConfig, TaskSpec, make_benchmark
from metalab.data.dataset import ClassDataset
from metalab.data.episode import Episode, EpisodeBatch, EpisodeMeta
from metalab.data.pairs import balanced_pairs
from metalab.data.sampler import EpisodeSampler, TaskSource
from metalab.data.sequences import SequenceSampler, presentation_numbers
from metalab.data.sinusoid import SinusoidTasks

__all__ = [
    "BENCHMARKS",
    "Benchmark",
    "BenchmarkConfig",
    "ClassDataset",
    "Episode",
    "EpisodeBatch",
    "EpisodeMeta",
    "EpisodeSampler",
    "SequenceSampler",
    "SinusoidTasks",
    "TaskSource",
    "TaskSpec",
    "balanced_pairs",
    "make_benchmark",
    "presentation_numbers",
]
