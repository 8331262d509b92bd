"""Seconds to sample one MAML-RL batch of MuJoCo episodes, in-process vs environment worker processes.

    python benchmarks/rollouts.py --workers 0,1,2 [--benchmark cheetah-vel] [--reps 3]

What one meta-iteration of the preset `maml_rl-cheetah-vel` samples twice (before and after
the inner step): 20 tasks x 10 episodes x 200 steps of HalfCheetah-v5 with the 100x100
Gaussian policy, through `metalab.rl.locomotion.BatchedGymTasks` with `workers` processes
(0: the environments step in the training process). It first checks that every worker count
gives the same episodes as in-process, then reports the median over `--reps` of the seconds
per batch (making the environments included: a fresh batch is made per sample, as in
training). Appends `rollouts` records: `<benchmark>-workers<N>` `seconds_per_batch` and, for
N > 0, `speedup` over in-process. Run it on an otherwise idle machine: workers only help when
cores are free.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import records  # noqa: E402

from metalab import build  # noqa: E402
from metalab.algorithms.maml_rl import per_task  # noqa: E402
from metalab.experiment import build_benchmark  # noqa: E402
from metalab.data.benchmarks import BenchmarkConfig  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--benchmark", default="cheetah-vel", choices=("cheetah-vel", "cheetah-dir", "ant-dir", "ml1-reach"))
    p.add_argument("--workers", default="0,1,2", help="worker counts to time (0, in-process, is always run)")
    p.add_argument("--tasks", type=int, default=20)
    p.add_argument("--episodes", type=int, default=10)
    p.add_argument("--reps", type=int, default=3)
    records.add_results_flag(p)
    args = p.parse_args()
    torch.set_num_threads(1)
    counts = sorted({0, *(int(n) for n in args.workers.split(","))})
    seconds, reference = {}, None
    for workers in counts:
        bench = build_benchmark(BenchmarkConfig(args.benchmark, env_workers=workers))
        torch.manual_seed(0)
        policy = build("maml_rl", bench.spec, episodes_per_task=args.episodes, action_scale=1.0)
        batch = bench.train.batch(0, args.tasks)
        times = []
        for rep in range(args.reps + 1):  # the first one also checks the episodes
            start = time.perf_counter()
            params = per_task(policy.params(), len(batch.tasks))  # one policy copy per task, as in training
            episodes = policy.sample(params, batch.tasks, torch.Generator().manual_seed(rep), batch.make_env)
            times.append(time.perf_counter() - start)
            if rep == 0:
                reference = reference or episodes
                if not all(torch.equal(getattr(episodes, f), getattr(reference, f)) for f in ("observations", "rewards")):
                    sys.exit(f"workers={workers} sampled other episodes than in-process: a bug")
        seconds[workers] = statistics.median(times[1:])
        print(f"workers={workers}: {seconds[workers]:.2f} s per batch", flush=True)
    detail = {"setting_detail": f"{args.tasks} tasks x {args.episodes} episodes x horizon, 100x100 policy",
              "reps": args.reps}
    rows = []
    for workers, sec in seconds.items():
        setting = f"{args.benchmark}-workers{workers}"
        rows.append(records.record("rollouts", "maml_rl", setting, "seconds_per_batch", sec, None, None, None, None,
                                   **detail))
        if workers:
            rows.append(records.record("rollouts", "maml_rl", setting, "speedup", seconds[0] / sec, None, None, None,
                                       None, **detail))
    print(records.append("rollouts", rows, args.results_dir))


if __name__ == "__main__":
    main()
