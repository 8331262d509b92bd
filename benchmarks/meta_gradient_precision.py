"""How far MAML's float32 meta-gradient is from float64, task by task, and why.

    python benchmarks/meta_gradient_precision.py --cache-dir /tmp/mlcache [--rows 5w1s-2nd-1step,...] [--tasks 40] [--nudges 12]

The rows are those of ``benchmarks/throughput.py`` (MAML, max-pooling conv4, Omniglot 1-shot
training episodes with 15 queries per class, inner step 0.4; 5- and 20-way, first and second
order, 1 and 5 inner steps), but each of ``--tasks`` episodes is a meta-batch of its own, so
that one task's error is not averaged away or blamed on the others. Per task, the meta-gradient
(all parameters, flattened) of the block as written in float64
(``metalab.nn.backbones.allow_closed_form(model, False)``) is the reference, and the relative error ``||g - g_ref|| / ||g_ref||``
is measured for:

- ``maml``: metalab's default, the closed-form first block
  (``metalab.nn.backbones.first_block``), activations channels-last, batch norm statistics as
  column means of the channels-last matrix view (in the later blocks behind the max-pool since
  ``ConvBlock.norm_behind_pool`` was added), in float32 (before 2026-12-06 the default was
  channels-first: its records are ``maml-channels-first``'s, and ``maml-channels-last``
  records are this variant then);
- ``maml-as-written``: every block as written, channels-first, in float32;
- ``maml-channels-first``: metalab with ``channels_last=False`` (the closed-form first block,
  channels-first activations, PyTorch's batch-norm kernel), in float32;
- ``maml-float64-nudged``: the block as written in float64, with every weight multiplied once
  (same factors for all tasks) by ``1 + 2**-24 * N(0, 1)``: a change the size of one float32
  rounding, computed without float32 arithmetic.

The closed form in float64 must equal the reference to 1e-9 on every task (else exit 1). For
every task where a float32 variant is more than 1e-3 from the reference, ``--nudges`` float64
runs with differently nudged weights (``maml-float64-nudged``'s and ``--nudges - 1`` more) are
computed, and the float32 meta-gradient's distance to the nearest of them is printed.

What it shows (docs/speed_and_exactness.md, "Conv4's first block"): the float32 errors are not spread around one
level; most tasks sit near rounding (1e-6 at one step) and a few jump by orders of magnitude,
up to tens of percent at 5 inner steps. The float64 run nudged by one rounding jumps on tasks
of its own, as far: the meta-gradient as a function of the weights is discontinuous there (a
max-pool window or ReLU whose choice flips: the only non-smooth operations), and any
perturbation at rounding size, float32 arithmetic in any order included, can land on the other
side. Where a nudged float64 run lands within 1e-4 of a float32 jump, that jump is shown to be
the meta-gradient at a rounding-sized perturbation of the weights: another one-sided gradient,
not an arithmetic error.

Appends ``numerics`` records: setting ``meta-gradient-<throughput setting>``, e.g.
``meta-gradient-2nd-order-1step-5w1s``, per variant the metrics ``meta_grad_rel_err_median``,
``meta_grad_rel_err_p90``, ``meta_grad_rel_err_max``, ``tasks_above_10x_median`` (the
fraction of tasks whose error is over 10 times the variant's median), ``tasks_above_1e-3``,
and for a float32 variant with such tasks ``jumps_reached_by_nudges`` (the fraction of them
that a nudged float64 run came within 1e-4 of).
This is a benchmark run by hand: nothing is timed in the test suite.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import records  # noqa: E402
from first_block import as_written, meta_gradient  # noqa: E402
from throughput import INNER_LR, Row, add_rows_flag, selected_rows  # noqa: E402

import metalab  # noqa: E402
from metalab.algorithms import MAML, make_config  # noqa: E402

MAX_REL_ERR_F64 = 1e-9
JUMP = 10  # tasks_above_10x_median: a task whose error is this many times the median
BIG = 1e-3  # tasks_above_1e-3: a float32 error this large is looked for among nudged float64 meta-gradients
REACHED = 1e-4  # ... and found if one of them is this close to it (relative to the reference's norm)
FLOAT32 = ("maml", "maml-as-written", "maml-channels-first")
VARIANTS = (*FLOAT32, "maml-float64-nudged")


def nudged(algo: MAML, generator: torch.Generator) -> MAML:
    """A copy of ``algo`` with every weight moved by about one float32 rounding."""
    twin = copy.deepcopy(algo)
    with torch.no_grad():
        for p in twin.parameters():
            p.mul_(1 + 2.0 ** -24 * torch.randn(p.shape, generator=generator, dtype=p.dtype))
    return twin


def task_errors(row: Row, bench: metalab.Benchmark, tasks: int, nudges: int
                ) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Per variant, the relative error of each task's meta-gradient against the float64 reference;
    and per float32 variant, for each task whose error is above ``BIG``, the distance (relative to
    the reference's norm) from its meta-gradient to the nearest of ``nudges`` nudged float64 ones."""
    torch.manual_seed(0)
    config = make_config("maml", inner_lr=INNER_LR, inner_steps=row.inner_steps, first_order=row.first_order)
    algo = MAML(bench.spec, config).train()
    channels_first = MAML(bench.spec, dataclasses.replace(config, channels_last=False)).train()
    channels_first.load_state_dict(algo.state_dict())
    exact = copy.deepcopy(algo).double()
    reference = as_written(exact)
    perturbed = [nudged(reference, torch.Generator().manual_seed(seed)) for seed in range(nudges)]
    models = {"maml": algo, "maml-as-written": as_written(channels_first), "maml-channels-first": channels_first,
              "maml-float64-nudged": perturbed[0]}
    errors: dict[str, list[float]] = {v: [] for v in VARIANTS}
    nearest: dict[str, list[float]] = {v: [] for v in FLOAT32}
    for i in range(tasks):
        batch = metalab.EpisodeBatch.stack([bench.train.episode(i)])
        wide = batch.to(torch.float64)
        want = meta_gradient(reference, wide)

        def distance(a: torch.Tensor, b: torch.Tensor) -> float:
            return ((a - b).norm() / want.norm()).item()

        if not distance(meta_gradient(exact, wide), want) <= MAX_REL_ERR_F64:
            sys.exit(f"{row.name}, task {i}: in float64 the closed-form first block's meta-gradient differs from the "
                     f"block as written by more than {MAX_REL_ERR_F64:g}; fix that before reading float32 errors")
        got = {v: meta_gradient(m, wide if v == "maml-float64-nudged" else batch) for v, m in models.items()}
        for variant, g in got.items():
            errors[variant].append(distance(g, want))
        line = f"{row.name} task {i:3d}: " + ", ".join(f"{v} {errors[v][-1]:.1e}" for v in VARIANTS)
        jumped = [v for v in nearest if errors[v][-1] > BIG]
        if jumped:
            others = [got["maml-float64-nudged"]] + [meta_gradient(m, wide) for m in perturbed[1:]]
            for v in jumped:
                nearest[v].append(min(distance(got[v], g) for g in others))
                line += f"; {v} is {nearest[v][-1]:.1e} from the nearest nudged float64 one"
        print(line, flush=True)
    return errors, nearest


def summary(errors: list[float], nearest: list[float] | None) -> dict[str, float]:
    ordered = sorted(errors)
    stats = {"meta_grad_rel_err_median": statistics.median(ordered),
             "meta_grad_rel_err_p90": ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))],
             "meta_grad_rel_err_max": ordered[-1],
             "tasks_above_10x_median": sum(e > JUMP * statistics.median(ordered) for e in ordered) / len(ordered),
             "tasks_above_1e-3": sum(e > BIG for e in ordered) / len(ordered)}
    if nearest:
        stats["jumps_reached_by_nudges"] = sum(d <= REACHED for d in nearest) / len(nearest)
    return stats


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_rows_flag(p)
    p.add_argument("--tasks", type=int, default=40, help="training episodes per row, one meta-gradient each")
    p.add_argument("--nudges", type=int, default=12,
                   help="nudged float64 runs searched for each float32 error above 1e-3 (the first is maml-float64-nudged)")
    records.add_timing_flags(p)
    args = p.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    rows = selected_rows(p, args.rows)
    if args.tasks < 1 or args.nudges < 1:
        p.error(f"--tasks and --nudges must be at least 1, got {args.tasks} and {args.nudges}")

    out, table = [], ["| row | variant | median | 90th pct | max | tasks > 10x median | tasks > 1e-3 | of those, "
                      "reached by a nudge |", "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        bench = metalab.make_benchmark(metalab.BenchmarkConfig(
            "omniglot", data_dir=args.data_dir, cache_dir=args.cache_dir, n_way=row.n_way, k_shot=1, n_query=15,
            train_n_way=row.n_way, train_k_shot=1, train_n_query=15))
        errors, nearest = task_errors(row, bench, args.tasks, args.nudges)
        config = {"tasks": args.tasks, "inner_lr": INNER_LR,
                  "threads": torch.get_num_threads(), "nudge": "1 + 2**-24 * N(0, 1) per weight",
                  "nudges": args.nudges}
        for variant in VARIANTS:
            stats = summary(errors[variant], nearest.get(variant))
            cells = [f"{v:.1e}" if "err" in k else f"{v:.0%}" for k, v in stats.items()]
            table.append(f"| {row.name} | {variant} | " + " | ".join(cells + ["–"] * (6 - len(cells))) + " |")
            out += [records.record("numerics", variant, f"meta-gradient-{row.setting}", metric, value, None, None,
                                   None, None, config=config) for metric, value in stats.items()]
    records.finish("numerics", table, out, args)


if __name__ == "__main__":
    main()
