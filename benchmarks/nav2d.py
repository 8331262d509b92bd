"""MAML-RL and RL² on 2D navigation: the return after adaptation, as in Finn et al. 2017, Table 4.

    python benchmarks/nav2d.py --iterations 100 --max-minutes 60
    python benchmarks/nav2d.py --method rl2 --iterations 2000 --max-minutes 30

Meta-trains metalab.algorithms.maml_rl.MAMLRL (Gaussian MLP 100x100, REINFORCE inner step with
the linear feature baseline, TRPO outer step, second order unless --first-order) for
--iterations meta-iterations of --meta-batch-size tasks x 20 episodes (the authors' run behind
Table 4: 20 tasks, inner step 0.5, 100 iterations; at test 40 episodes per step, later steps at
half the rate), logging the mean return before and after adaptation of each
iteration to <out>/metrics.jsonl and saving <out>/policy.pt. Then evaluates on --test-tasks
fresh goals: the mean return of 20 episodes after 0, 1, 2, 3 inner steps, mean ± 95% CI over
the tasks, next to Table 4 (-40.41 / -11.68 / -3.33 / -3.23), and appends `nav2d` records.
Draws <out>/curve.png (return vs meta-iteration) with --plot.

With --method rl2: meta-trains metalab.algorithms.rl2.RL2 (GRU policy whose hidden state
carries across the 2 episodes of a trial, PPO) on one trial per task, --meta-batch-size tasks
per iteration; evaluates one trial per test task and records the return of each episode of
the trial (`episode1`, `episode2`) and their mean (`trial`), ± 95% CI over test tasks.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import records  # noqa: E402

from metalab.algorithms.maml_rl import MAMLRL, MAMLRLConfig  # noqa: E402
from metalab.algorithms.rl2 import RL2, RL2Config  # noqa: E402
from metalab.data import TaskSpec  # noqa: E402
from metalab.rl import Nav2DTasks  # noqa: E402
from metalab.utils import derive_seed  # noqa: E402
from metalab.utils.io import atomic_torch_save, atomic_write_text  # noqa: E402
from metalab.utils.stats import mean_ci95  # noqa: E402

PAPER = (-40.41, -11.68, -3.33, -3.23)  # Finn et al. 2017, Table 4, MAML: after 0, 1, 2, 3 steps


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--method", default="maml_rl", choices=("maml_rl", "rl2"))
    p.add_argument("--iterations", type=int, default=100)
    p.add_argument("--max-minutes", type=float, default=None, help="stop meta-training after this long")
    p.add_argument("--meta-batch-size", type=int, default=20)
    p.add_argument("--test-tasks", type=int, default=100)
    p.add_argument("--first-order", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None, help="run folder (default runs/bench-nav2d-<method>)")
    p.add_argument("--plot", action="store_true", help="draw <out>/curve.png (needs matplotlib)")
    records.add_results_flag(p)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out or f"runs/bench-nav2d-{args.method}")
    out.mkdir(parents=True, exist_ok=True)
    # the authors' run behind Table 4 (maml_examples/test_maml_point.py): inner step 0.5; at test 40
    # episodes per step and later steps at half the rate (as the preset maml_rl-nav2d)
    config = (replace(MAMLRLConfig(), inner_lr=0.5, test_episodes_per_task=40, test_later_lr_scale=0.5,
                      first_order=args.first_order) if args.method == "maml_rl" else RL2Config())
    torch.manual_seed(derive_seed(args.seed, 0))
    nav2d = TaskSpec((2,), 2, False)
    algo = MAMLRL(nav2d, config) if args.method == "maml_rl" else RL2(nav2d, config)
    generator = torch.Generator().manual_seed(derive_seed(args.seed, 1))
    metrics_path = out / "metrics.jsonl"
    lines, start, done = [], time.perf_counter(), 0
    for it in range(args.iterations):
        tasks = Nav2DTasks().sample_tasks(args.meta_batch_size, generator)
        metrics = algo.meta_step(tasks, generator)
        done = it + 1
        lines.append(json.dumps({"step": done, "seconds": round(time.perf_counter() - start, 2), **metrics}))
        atomic_write_text(metrics_path, "\n".join(lines) + "\n")
        print(f"iteration {done}: " + ", ".join(f"{k} {v:.3f}" for k, v in metrics.items()), flush=True)
        if args.max_minutes is not None and time.perf_counter() - start >= 60 * args.max_minutes:
            break
    seconds = time.perf_counter() - start
    atomic_torch_save({"state_dict": algo.state_dict(), "config": asdict(config), "iterations": done}, out / "policy.pt")

    test_generator = torch.Generator().manual_seed(derive_seed(args.seed, 2))
    test_tasks = Nav2DTasks().sample_tasks(args.test_tasks, test_generator)
    extra = {"test_tasks": args.test_tasks, "train_tasks_per_step": args.meta_batch_size}
    rows = []
    if args.method == "maml_rl":
        returns = algo.adaptation_returns(test_tasks, 3, test_generator)  # (tasks, 4)
        settings = [(f"{steps}steps", returns[:, steps], PAPER[steps]) for steps in range(4)]
        extra.update(episodes_per_task=config.episodes_per_task, first_order=config.first_order)
    else:
        returns = algo.trial_returns(test_tasks, test_generator)  # (tasks, episodes)
        settings = [(f"episode{k + 1}", returns[:, k], None) for k in range(returns.shape[1])]
        settings.append(("trial", returns.mean(1), None))
        extra.update(episodes_per_trial=config.episodes_per_trial)
    print(f"{args.method}, 2D navigation, {args.test_tasks} test tasks, {done} meta-iterations in {seconds / 60:.1f} min")
    for setting, values, paper in settings:
        mean, ci = mean_ci95(values.tolist())
        print(f"{setting:>9}: {mean:8.2f} ± {ci:5.2f}" + (f"   (paper {paper})" if paper is not None else ""))
        rows.append(records.record("nav2d", args.method, setting, "return", mean, ci, paper, seconds, done, **extra))
    print(records.append("nav2d", rows, args.results_dir))
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        logged = [json.loads(line) for line in lines]
        fig, ax = plt.subplots(figsize=(5, 3.5), dpi=150)
        curves = ({"return_pre": "before adaptation", "return_post": "after 1 step"} if args.method == "maml_rl" else
                  {k: k.replace("return_episode", "episode ") for k in logged[0] if k.startswith("return_episode")})
        for key, label in curves.items():
            ax.plot([r["step"] for r in logged], [r[key] for r in logged], label=label)
        ax.set_xlabel("meta-iteration")
        ax.set_ylabel("mean episode return")
        ax.set_title(f"{args.method}, 2D navigation (training tasks)")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "curve.png")
        print(out / "curve.png")


if __name__ == "__main__":
    main()
