"""What throughput.py's memory sampler costs the code it watches: steps timed with and without it, interleaved.

    python benchmarks/sampler_cost.py --cache-dir /tmp/mlcache --rows 5w1s-2nd-1step,5w1s-2nd-5step --rounds 3

throughput.py and step_ab.py read the peak resident and live memory with a background thread
(``throughput.PeakRSS``) that wakes every millisecond to read /proc/self/statm and glibc's
``mallinfo2``. On a 2-core CPU it shares the cores with the step's two compute threads, and
``mallinfo2`` holds malloc's locks while it walks the free lists. Before commit d3278f4 the timed
iterations of both scripts ran beside it; since then they run alone and memory is read over one
more iteration (``throughput.measure``). This script measures the difference: per row, for the plain loop
and metalab's default step (both with freed memory retained, as metalab's trainer runs; same
starting weights and batch as throughput.py), one warm-up, then ``--rounds`` rounds of ``--reps``
iterations without the sampler and ``--reps`` with it. Reported: the median seconds per
iteration each way and ``slowdown`` = with / without.

Appends ``throughput`` records (method ``sampler-<implementation>``, setting as throughput.py's
rows, metrics ``seconds_per_iter`` (without), ``seconds_per_iter_sampled`` and ``slowdown``). A
benchmark run by hand: nothing is timed in the test suite.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import records  # noqa: E402
import throughput  # noqa: E402

from metalab.utils.allocator import retain_freed_memory  # noqa: E402

IMPLEMENTATIONS = ("reference retained", "metalab")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    throughput.add_rows_flag(p)
    p.add_argument("--rounds", type=int, default=3, help="rounds of timing without, then with, the sampler")
    p.add_argument("--reps", type=int, default=2, help="iterations each way per round")
    throughput.add_tasks_flag(p)
    records.add_timing_flags(p)
    args = p.parse_args()
    for name, value in (("--rounds", args.rounds), ("--reps", args.reps)):
        if value < 1:
            p.error(f"{name} must be at least 1, got {value}")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    batches = throughput.row_batches(p, args)
    if not retain_freed_memory():
        print("not glibc: freed memory is not retained", file=sys.stderr)

    table = ["| row | implementation | s/iter alone | s/iter with the sampler | slowdown |", "|---|---|---|---|---|"]
    out = []
    for row, batch in batches.items():
        for impl in throughput.implementations(row, batch, chosen=IMPLEMENTATIONS):
            impl.iteration()
            alone, sampled = [], []
            for _ in range(args.rounds):
                alone += throughput.seconds_each(impl, args.reps)
                with throughput.PeakRSS():
                    sampled += throughput.seconds_each(impl, args.reps)
            metrics = {"seconds_per_iter": statistics.median(alone),
                       "seconds_per_iter_sampled": statistics.median(sampled)}
            metrics["slowdown"] = metrics["seconds_per_iter_sampled"] / metrics["seconds_per_iter"]
            table.append(f"| {row.name} | {impl.name} | {metrics['seconds_per_iter']:.3f} | "
                         f"{metrics['seconds_per_iter_sampled']:.3f} | {metrics['slowdown']:.2f} |")
            print(table[-1], flush=True)
            config = {**throughput.row_config(row, args.reps), "rounds": args.rounds, "freed_memory_retained": True,
                      "seconds_alone": alone, "seconds_sampled": sampled}
            out += throughput.row_records("sampler-" + impl.method, throughput.row_setting(row, args.tasks), metrics,
                                          config)
    records.finish("throughput", table, out, args)


if __name__ == "__main__":
    main()
