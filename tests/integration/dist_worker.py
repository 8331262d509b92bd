"""One rank of the data-parallel tests (tests/integration/test_distributed.py launches two).

    RANK=r WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=p python dist_worker.py MODE OUT [TIMEOUT [DEVICE]]

MODE ``train``: MAML on sinusoid episodes in float64, 3 meta-iterations of a meta-batch of 4
(split over the ranks; one process when WORLD_SIZE=1); rank 0 saves the parameters to OUT.
MODE ``die`` / ``hang``: rank 1 exits / stops answering when it fetches its step-2 tasks;
rank 0 must stop with a clear error (exit code 2, the message on stderr).
DEVICE (default ``cpu``, gloo) may be ``cuda``: each rank on the GPU of its LOCAL_RANK, NCCL
(tests/integration/test_gpu.py).
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass

import torch

from metalab import BenchmarkConfig, TrainConfig, build, make_benchmark, train
from metalab.data.benchmarks import Benchmark
from metalab.data.sampler import TaskSource
from metalab.engine.distributed import Distributed, backend_for, resolve_device
from metalab.utils.errors import MetalabError


@dataclass
class Float64(TaskSource):
    """The episodes of ``source`` in float64; in the fault modes, rank 1 fails at step 2."""

    source: TaskSource
    fail: str = ""
    fail_at: int = -1

    def __post_init__(self) -> None:
        self.seed = self.source.seed

    def episode(self, index: int):
        if index == self.fail_at:
            if self.fail == "die":
                os._exit(3)
            time.sleep(600)
        e = self.source.episode(index)
        return e.to(torch.float64)


def main() -> int:
    mode, out = sys.argv[1], sys.argv[2]
    timeout = float(sys.argv[3]) if len(sys.argv) > 3 else 60.0
    world, local_rank = int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(sys.argv[4] if len(sys.argv) > 4 else "cpu", local_rank, world)
    torch.set_num_threads(1)
    try:
        with Distributed.join(world, timeout, backend_for(device), local_rank) as distributed:  # ranks leave together
            bench = make_benchmark(BenchmarkConfig("sinusoid", k_shot=5, seed=3))
            fail = mode if mode in ("die", "hang") and distributed.rank == 1 else ""
            train_source = Float64(bench.train, fail, 2 * 4 + 2 if fail else -1)
            wrapped = Benchmark(bench.name, bench.spec, bench.metric, train_source,
                                Float64(bench.val), Float64(bench.test))
            torch.manual_seed(0)
            model = build("maml", bench.spec, inner_lr=0.01, inner_steps=1).double().to(device)
            cfg = TrainConfig(steps=3 if mode == "train" else 6, meta_batch_size=4, val_every=0, val_episodes=3,
                              log_every=1)
            train(model, wrapped, cfg, None, progress=False, distributed=distributed)
            if distributed.is_main:
                torch.save({k: v.detach().cpu().clone() for k, v in model.state_dict().items()}, out)
            return 0
    except MetalabError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2


if __name__ == "__main__":
    sys.exit(main())
