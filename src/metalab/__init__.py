"""metalab: meta-learning for PyTorch, every family behind one interface.

>>> import metalab
>>> bench = metalab.make_benchmark(metalab.BenchmarkConfig("sinusoid", k_shot=5))
>>> maml = metalab.build("maml", bench.spec, inner_lr=0.01)

The method classes live in :mod:`metalab.algorithms`; ``metalab.MAML`` and
``metalab.MetaSGD`` are the familiar clone/adapt wrappers around any ``nn.Module``
(:mod:`metalab.learner`).
"""

from metalab.algorithms import MetaAlgorithm, MetaOutput, build, names, register
from metalab.data import (
    Benchmark,
    BenchmarkConfig,
    ClassDataset,
    Episode,
    EpisodeBatch,
    EpisodeMeta,
    EpisodeSampler,
    SinusoidTasks,
    TaskSource,
    TaskSpec,
    make_benchmark,
)
from metalab.engine import EvalResult, TrainConfig, evaluate, load_checkpoint, save_checkpoint, train
from metalab.learner import MAML, Learner, MetaSGD
from metalab.utils import MetalabError

__version__ = "0.1.0"

__all__ = [
    "MAML",
    "Benchmark",
    "BenchmarkConfig",
    "ClassDataset",
    "Episode",
    "EpisodeBatch",
    "EpisodeMeta",
    "EpisodeSampler",
    "EvalResult",
    "Learner",
    "MetaAlgorithm",
    "MetaOutput",
    "MetaSGD",
    "MetalabError",
    "SinusoidTasks",
    "TaskSource",
    "TaskSpec",
    "TrainConfig",
    "build",
    "evaluate",
    "load_checkpoint",
    "make_benchmark",
    "names",
    "register",
    "save_checkpoint",
    "train",
]
