"""Meta-iterations per second of data-parallel MAML on Omniglot: 1 process vs N under torchrun.

    python benchmarks/scaling.py --data-dir ../shared/data/omniglot --processes 1,2

Runs the real command line, `metalab train maml --benchmark omniglot` (5-way 1-shot, 15 queries
per class, second order, one inner step, meta-batch --meta-batch-size split over the processes,
one thread per process), once in a plain process and once per process count under
`torchrun --standalone --nproc_per_node N`. The time per meta-iteration is read from the
runs' metrics.jsonl (training seconds between the first and the last logged step, so start-up,
data loading and the final evaluation are excluded). Appends `scaling` records: `<N>proc`
`seconds_per_iter`, and for N > 1 `efficiency` = (time with 1 process / time with N) / N.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import records  # noqa: E402


def seconds_per_iter(run: Path) -> float:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if "train_loss" in r]
    first, last = train[0], train[-1]
    return (last["seconds"] - first["seconds"]) / (last["step"] - first["step"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default="../shared/data/omniglot")
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--processes", default="1,2", help="process counts to time, e.g. 1,2 (1 is always run)")
    p.add_argument("--meta-batch-size", type=int, default=8)
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--log-every", type=int, default=5)
    records.add_results_flag(p)
    args = p.parse_args()
    counts = sorted({1, *(int(n) for n in args.processes.split(","))})
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    timings: dict[int, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in counts:
            run = Path(tmp) / f"{n}proc"
            launch = [sys.executable, "-m", "metalab"] if n == 1 else [
                sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(n), "-m", "metalab"]
            cmd = [*launch, "train", "maml", "--benchmark", "omniglot", "--data-dir", args.data_dir,
                   "--n-way", "5", "--k-shot", "1", "--train-n-way", "5", "--train-n-query", "15",
                   "--meta-batch-size", str(args.meta_batch_size), "--steps", str(args.steps),
                   "--log-every", str(args.log_every), "--val-every", "0", "--val-episodes", "10",
                   "--test-episodes", "10", "--eval-steps", "1", "--out", str(run), "--quiet"]
            if args.cache_dir:
                cmd += ["--cache-dir", args.cache_dir]
            done = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if done.returncode:
                sys.exit(f"{' '.join(cmd)} failed:\n{done.stderr}")
            timings[n] = seconds_per_iter(run)
            print(f"{n} process(es): {timings[n]:.3f} s per meta-iteration", flush=True)
    extra = {"meta_batch_size": args.meta_batch_size, "setting_detail": "omniglot 5w1s 15q, 2nd order, 1 step",
             "threads_per_process": 1}
    rows = []
    for n, sec in timings.items():
        rows.append(records.record("scaling", "maml", f"{n}proc", "seconds_per_iter", sec, None, None, None,
                                   args.steps, **extra))
        if n > 1:
            rows.append(records.record("scaling", "maml", f"{n}proc", "efficiency", timings[1] / sec / n, None, None,
                                       None, args.steps, **extra))
            print(f"{n} processes: speed-up {timings[1] / sec:.2f}, efficiency {timings[1] / sec / n:.2f}")
    print(records.append("scaling", rows, args.results_dir))


if __name__ == "__main__":
    main()
