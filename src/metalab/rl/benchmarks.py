"""The meta-RL benchmarks by name: task streams, the environment family and its dimensions.

``nav2d`` (2D navigation), ``cheetah-vel``, ``cheetah-dir``, ``ant-dir`` (MuJoCo, the ``rl``
extra), ``ml1-reach`` (Meta-World ML1 reach) and ``ml10`` (Meta-World ML10: 10 training
environments, 5 held-out test environments; both the ``metaworld`` extra, train tasks for
training, the benchmark's test tasks for validation and test, scored by the success rate). Train, validation and test
streams draw tasks with seeds derived from the benchmark seed (``seed``, ``seed + 1``,
``seed + 2`` mixed), so they are disjoint streams of the same family (Meta-World: of its
train / test task sets).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from metalab.rl.nav2d import Nav2DTasks, navigation_2d
from metalab.rl.tasks import MakeEnv, RLTaskSource
from metalab.utils.errors import MetalabError, require_non_negative
from metalab.utils.seeding import derive_seed


@dataclass(frozen=True)
class RLBenchmarkParts:
    """What a meta-RL benchmark is made of (the L3 glue wraps it into a ``Benchmark``)."""

    observation_dim: int
    action_dim: int
    train: RLTaskSource
    val: RLTaskSource
    test: RLTaskSource


def _streams(train_dist, test_dist, make_env: MakeEnv, seed: int) -> tuple[RLTaskSource, ...]:
    return (RLTaskSource(train_dist, make_env, derive_seed(seed, 0)),
            RLTaskSource(test_dist, make_env, derive_seed(seed, 1)),
            RLTaskSource(test_dist, make_env, derive_seed(seed, 2)))


def _nav2d(seed: int, workers: int) -> RLBenchmarkParts:
    if workers:
        raise MetalabError("nav2d steps its environments as tensors in the training process; env_workers must be 0")
    return RLBenchmarkParts(2, 2, *_streams(Nav2DTasks(), Nav2DTasks(), navigation_2d, seed))


def _gym_env(make_one: Callable[[], Any], workers: int = 0) -> MakeEnv:
    from metalab.rl.locomotion import BatchedGymTasks

    def make_env(tasks, episodes, dtype, generator):
        start = int(torch.randint(2 ** 31 - 1, (1,), generator=generator))  # seeds of the episodes' resets
        return BatchedGymTasks(make_one, tasks, episodes, seed=start, dtype=dtype, workers=workers)

    return make_env


def _locomotion(name: str) -> Callable[[int, int], RLBenchmarkParts]:
    def build(seed: int, workers: int) -> RLBenchmarkParts:
        try:
            from metalab.rl.locomotion import FAMILIES
        except ImportError:
            raise MetalabError(f"the {name} benchmark needs MuJoCo: pip install 'metalab[rl]'") from None
        family = FAMILIES[name]
        probe = family()
        dims = probe.observation_space.shape[0], probe.action_space.shape[0]
        probe.close()
        return RLBenchmarkParts(*dims, *_streams(family(), family(), _gym_env(family, workers), seed))
    return build


def _metaworld(benchmark: str, env_name: str = "reach-v3") -> Callable[[int, int], RLBenchmarkParts]:
    def build(seed: int, workers: int) -> RLBenchmarkParts:
        try:
            from metalab.rl.metaworld_tasks import MetaWorldTasks
        except ImportError:
            raise MetalabError("the Meta-World benchmarks need metaworld: pip install 'metalab[metaworld]'") from None
        train = MetaWorldTasks(benchmark, env_name, "train", seed)
        test = MetaWorldTasks(benchmark, env_name, "test", seed, source=train.benchmark)
        probe = train.make_env()
        dims = probe.observation_space.shape[0], probe.action_space.shape[0]
        # trained on returns; validated and tested by the success rate, Meta-World's measure
        return RLBenchmarkParts(*dims, RLTaskSource(train, _gym_env(train.make_env, workers), derive_seed(seed, 0)),
                                RLTaskSource(test, _gym_env(test.make_env, workers), derive_seed(seed, 1), "success"),
                                RLTaskSource(test, _gym_env(test.make_env, workers), derive_seed(seed, 2), "success"))
    return build


RL_BENCHMARKS: dict[str, Callable[[int, int], RLBenchmarkParts]] = {
    "nav2d": _nav2d,
    "cheetah-vel": _locomotion("cheetah-vel"),
    "cheetah-dir": _locomotion("cheetah-dir"),
    "ant-dir": _locomotion("ant-dir"),
    "ml1-reach": _metaworld("ML1", "reach-v3"),
    "ml10": _metaworld("ML10"),
}


def rl_benchmark_parts(name: str, seed: int, env_workers: int = 0) -> RLBenchmarkParts:
    """The task streams of benchmark ``name``; ``env_workers``: worker processes that step the
    MuJoCo / Meta-World environments (:class:`metalab.rl.locomotion.BatchedGymTasks`)."""
    try:
        build = RL_BENCHMARKS[name]
    except KeyError:
        raise MetalabError(f"unknown meta-RL benchmark {name!r}; choose one of {sorted(RL_BENCHMARKS)}") from None
    require_non_negative("in-process", env_workers=env_workers)
    return build(seed, env_workers)
