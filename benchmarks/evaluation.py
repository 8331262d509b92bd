"""Seconds per test episode of metalab.evaluate on real Omniglot: episodes one after another or on threads.

    python benchmarks/evaluation.py --cache-dir /tmp/mlcache
    python benchmarks/evaluation.py --methods maml,protonet --settings 5w1s --episodes 100 --reps 3

Every method is built as in its 120-minute Omniglot runs (MAML, FOMAML, Meta-SGD and ANIL:
strided Conv4, 3 test steps; Reptile: 50 test steps of Adam on batches of 10; the metric
methods: their defaults), with untrained weights (the arithmetic of adapting and scoring does
not depend on what was learned), and scores the first ``--episodes`` test episodes of the
Vinyals split (15 queries per class), once with ``threads=False`` (one episode at a time, on
torch's ``--threads`` intra-op threads) and once with ``threads=True`` (one episode per thread,
one core each), alternating, ``--reps`` times; the median is kept. Both must give the same
accuracy up to rounding (checked: the script stops if the means differ by more than 0.5 points).
An episode's operators round differently on one core than on several, and over Reptile's 50
test steps that can flip a near-tie prediction (seen: 2 of 7500 query images); the records
carry both means (``accuracy_loop``, ``accuracy_threads``). Appends ``evaluation`` records (method
``<method>-loop`` / ``<method>-threads``, metric ``seconds_per_episode``; method ``<method>``,
metric ``speedup`` = loop time / threads time) to results/evaluation.jsonl.
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import records  # noqa: E402

from metalab import BenchmarkConfig, build, evaluate, make_benchmark  # noqa: E402
from metalab.algorithms.registry import get  # noqa: E402
from metalab.utils.errors import MetalabError  # noqa: E402

# the hyper-parameters of the 120-minute Omniglot runs (benchmarks/results/omniglot.jsonl) that shape the arithmetic
STRIDED = {"inner_lr": 0.4, "inner_steps": 1, "test_inner_steps": 3, "downsample": "stride", "readout": "mean"}
HPARAMS = {"maml": STRIDED, "fomaml": STRIDED, "meta_sgd": STRIDED, "anil": STRIDED,
           "reptile": {"inner_batch_size": 10, "test_inner_steps": 50, "inner_state": "persistent"}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--methods", default="maml,anil,meta_sgd,reptile,protonet,matching_net,relation_net,siamese")
    p.add_argument("--settings", default="5w1s,5w5s", help="comma-separated <n>w<k>s")
    p.add_argument("--episodes", type=int, default=200)
    p.add_argument("--reps", type=int, default=3)
    records.add_timing_flags(p)
    args = p.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if torch.get_num_threads() < 2:
        p.error("threads need at least two cores: set --threads 2 or more")
    settings = args.settings.split(",")
    if bad := [s for s in settings if not re.fullmatch(r"\d+w\d+s", s)]:
        p.error(f"--settings {', '.join(bad)}: write each as <n>w<k>s, e.g. 5w1s")
    methods = args.methods.split(",")
    try:
        for method in methods:
            get(method)
    except MetalabError as err:
        p.error(f"--methods: {err}")
    rows = []
    for setting in settings:
        n_way, k_shot = (int(part) for part in setting[:-1].split("w"))
        bench = make_benchmark(BenchmarkConfig("omniglot", data_dir=args.data_dir, cache_dir=args.cache_dir,
                                               n_way=n_way, k_shot=k_shot, n_query=15))
        for method in methods:
            torch.manual_seed(0)
            algo = build(method, bench.spec, **HPARAMS.get(method, {}))
            if not algo.evaluates_on_threads:  # nothing is recorded: the records are written at the end
                p.error(f"--methods: {method} does not score episodes on threads (it may keep state between them)")
            evaluate(algo, bench.test, 4, threads=False)  # warm-up
            times: dict[bool, list[float]] = {False: [], True: []}
            means: dict[bool, float] = {}
            for _ in range(args.reps):
                for threads in (False, True):
                    start = time.perf_counter()
                    means[threads] = evaluate(algo, bench.test, args.episodes, threads=threads).mean
                    times[threads].append((time.perf_counter() - start) / args.episodes)
            if abs(means[True] - means[False]) > 0.005:
                sys.exit(f"{method} {setting}: threads and the loop gave different accuracies: {means[True]:.4f} "
                         f"and {means[False]:.4f}")
            loop, threaded = (statistics.median(times[t]) for t in (False, True))
            print(f"{setting} {method}: loop {loop * 1000:.1f} ms/episode, threads {threaded * 1000:.1f} "
                  f"({loop / threaded:.2f}x; accuracy {means[False]:.4f} / {means[True]:.4f})", flush=True)
            common = dict(episodes=args.episodes, reps=args.reps, threads=torch.get_num_threads(),
                          accuracy_loop=means[False], accuracy_threads=means[True])
            rows += [records.record("evaluation", f"{method}-loop", setting, "seconds_per_episode", loop, None, None,
                                    None, None, **common),
                     records.record("evaluation", f"{method}-threads", setting, "seconds_per_episode", threaded, None,
                                    None, None, None, **common),
                     records.record("evaluation", method, setting, "speedup", loop / threaded, None, None, None, None,
                                    **common)]
    if not args.no_record:
        print(records.append("evaluation", rows, args.results_dir))


if __name__ == "__main__":
    main()
