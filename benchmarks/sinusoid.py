"""MAML on sinusoid regression (Finn et al. 2017, section 5.1): MSE after 1 / 5 / 10 steps.

    python benchmarks/sinusoid.py --steps 70000

Meta-trains MAML (1-40-40-1 MLP, one inner SGD step of 0.01, Adam 1e-3, meta-batch 25,
K-shot support and 10 query points per training task), then evaluates the best-validation
checkpoint on 1000 fixed test tasks with 100 query points each, after 1, 5 and 10 SGD
steps of 0.01 on the K support points. Appends records to <--results-dir>/sinusoid.jsonl (default results/).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import records  # noqa: E402

from metalab import BenchmarkConfig, TrainConfig, build, evaluate, load_checkpoint, make_benchmark, train  # noqa: E402
from metalab.utils import derive_seed  # noqa: E402

PAPER_MSE = {1: 0.67, 5: 0.38, 10: 0.35}  # 5-shot, as quoted in the project's issue 2


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--method", default="maml", choices=["maml", "fomaml"])
    p.add_argument("--steps", type=int, default=70000)
    p.add_argument("--meta-batch-size", type=int, default=25)
    p.add_argument("--k-shot", type=int, default=5)
    p.add_argument("--inner-lr", type=float, default=0.01)
    p.add_argument("--inner-steps", type=int, default=1)
    p.add_argument("--outer-lr", type=float, default=1e-3)
    p.add_argument("--test-episodes", type=int, default=1000)
    p.add_argument("--eval-steps", default="1,5,10")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="runs/bench-sinusoid")
    records.add_results_flag(p)
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    bench = make_benchmark(BenchmarkConfig("sinusoid", k_shot=args.k_shot, seed=derive_seed(args.seed, 1)))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(args.seed, 0))
        algo = build(args.method, bench.spec, inner_lr=args.inner_lr, inner_steps=args.inner_steps)
    cfg = TrainConfig(steps=args.steps, meta_batch_size=args.meta_batch_size, outer_lr=args.outer_lr,
                      val_every=max(args.steps // 20, 1), val_episodes=200, log_every=100, seed=args.seed)
    result = train(algo, bench, cfg, args.out, progress=sys.stderr.isatty())
    best, _ = load_checkpoint(Path(args.out) / "best.pt")
    rows = []
    for steps in [0] + [int(s) for s in args.eval_steps.split(",")]:
        ev = evaluate(best, bench.test, args.test_episodes, steps)
        print(f"{args.k_shot}-shot, {steps} steps: {ev}", flush=True)
        rows.append(records.record(
            "sinusoid", args.method, f"{args.k_shot}shot-{steps}steps", "mse", ev.mean, ev.ci95,
            PAPER_MSE.get(steps) if args.k_shot == 5 else None, result.seconds, args.steps,
            test_episodes=args.test_episodes, best_val_step=result.best and result.best["step"]))
    print(records.append("sinusoid", rows, args.results_dir))


if __name__ == "__main__":
    main()
