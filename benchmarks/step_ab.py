"""Variants of metalab's MAML step, each timed in fresh processes, interleaved: A/B tests for its defaults.

    python benchmarks/step_ab.py --cache-dir /tmp/mlcache --rows 5w1s-2nd-1step,20w1s-1st-1step \
        --variants reference,default,released --rounds 5

Why a separate script: ``benchmarks/throughput.py`` times eight implementations one after
another in one process, so each inherits the heap, the allocator's adapted thresholds and the
freed memory of those before it, and its one-process medians moved by up to 30% between runs
(the reference against itself 0.75-1.47x in the records of commit 19542e4). Here every
(row, variant, round) is its own Python process (``--child``), which loads the row's batch
(throughput.py's episodes: 1 shot, 15 queries per class, meta-batch 32 at 5-way and 16 at
20-way), starts from the same weights (``torch.manual_seed(0)``, throughput.py's conv4), runs
one warm-up, ``--reps`` timed iterations and one more whose memory is read (throughput.py's
``measure``) and reports its median; rounds go over all rows and variants, in an order rotated
every round, so a drift of the machine falls on all variants alike. Reported per row and variant: the median over the
rounds of the per-process medians, its min-max over the rounds, the peak memory above the
level before that iteration (``peak_mib``, as throughput.py), the peak of the live allocations above
theirs (``peak_live_mib``, as throughput.py), and the process's
high-water resident set (``max_rss_mib``: the dataset, the model and the step together).

Variants (``--variants``, comma-separated):

- ``reference``: throughput.py's plain per-task loop, glibc's malloc as the process starts;
- ``default``: ``metalab.algorithms.MAML`` with its defaults, after
  ``metalab.utils.retain_freed_memory()`` as ``metalab.train`` runs it;
- ``released``: the same without ``retain_freed_memory()`` (``--release-freed-memory``);
- ``threads-cl``, ``threads-cf``, ``batched-cl``, ``batched-cf``, ``loop-cl``: ``task_mode``
  and ``channels_last`` set explicitly (cl: channels-last, cf: channels-first), memory retained.

With ``--baseline CHECKOUT`` (another checkout of this repository, e.g. ``git worktree add /tmp/base <commit>``)
every variant but ``reference`` also runs with that checkout's ``src`` first on ``PYTHONPATH`` (the scripts stay
this checkout's), in the same interleaved rounds: an A/B test of a code change in fresh processes. Those runs are
recorded as method ``fresh-<variant>-baseline`` (config ``baseline_commit``), and the variant's own records get
``speedup_over_baseline`` = the baseline's median / the variant's.

Appends ``throughput`` records (method ``fresh-<variant>``, setting as throughput.py's rows,
metrics ``seconds_per_iter``, ``peak_mib``, ``peak_live_mib``, ``max_rss_mib`` and, with ``reference`` among the
variants, ``speedup`` = reference / variant) to results/throughput*.jsonl. A benchmark run
by hand: nothing is timed in the test suite.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import statistics
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import records  # noqa: E402
import throughput  # noqa: E402

import metalab  # noqa: E402
from metalab.algorithms import MAML, make_config  # noqa: E402
from metalab.utils.allocator import retain_freed_memory  # noqa: E402


@dataclass(frozen=True)
class Variant:
    retain: bool  # retain_freed_memory() before anything else
    overrides: dict | None  # GradientConfig fields over MAML's defaults (None: throughput.py's reference loop)


VARIANTS = {
    "reference": Variant(False, None),
    "default": Variant(True, {}),
    "released": Variant(False, {}),
    "threads-cl": Variant(True, {"task_mode": "threads", "channels_last": True}),
    "threads-cf": Variant(True, {"task_mode": "threads", "channels_last": False}),
    "batched-cl": Variant(True, {"task_mode": "batched", "channels_last": True}),
    "batched-cf": Variant(True, {"task_mode": "batched", "channels_last": False}),
    "loop-cl": Variant(True, {"task_mode": "loop", "channels_last": True}),
}


def child(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Time one variant on one row in this process; print its numbers as one JSON line."""
    variant = VARIANTS[args.variant]
    if variant.retain and not retain_freed_memory():
        print("not glibc: freed memory is not retained", file=sys.stderr)
    (row, batch), = throughput.row_batches(parser, args).items()
    torch.manual_seed(0)
    model = throughput.conv4(row.n_way)
    if variant.overrides is None:
        impl = throughput.Implementation(args.variant, "", lambda: throughput.reference_step(model, batch, row),
                                         list(model.parameters()), variant.retain)
    else:
        config = make_config("maml", inner_lr=throughput.INNER_LR, inner_steps=row.inner_steps,
                             first_order=row.first_order)
        algo = MAML(metalab.TaskSpec((1, 28, 28), row.n_way, True), dataclasses.replace(config, **variant.overrides))
        throughput.start_from(algo.train(), model)
        impl = throughput.Implementation(args.variant, "", lambda: algo.meta_gradient(batch), list(algo.parameters()),
                                         variant.retain)
    measured = throughput.measure(impl, args.reps)
    max_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(json.dumps({"seconds": measured.seconds, "peak_mib": measured.peak_mib, "peak_live_mib": measured.live_mib,
                      "max_rss_mib": max_rss, "metalab": metalab.__file__}))


BASELINE = "@baseline"  # the suffix of a variant's label when it runs the --baseline checkout's source


def run_child(args: argparse.Namespace, row: throughput.Row, label: str) -> dict:
    variant, baseline = label.removesuffix(BASELINE), label.endswith(BASELINE)
    cmd = [sys.executable, __file__, "--child", "--variant", variant, "--rows", row.name, "--reps", str(args.reps),
           "--data-dir", args.data_dir]
    for flag, value in (("--cache-dir", args.cache_dir), ("--threads", args.threads), ("--tasks", args.tasks)):
        if value is not None:
            cmd += [flag, str(value)]
    env = dict(os.environ)
    if baseline:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(args.baseline / "src"), env.get("PYTHONPATH")]))
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode:
        sys.exit(f"{' '.join(cmd)} failed (exit {done.returncode}):\n{done.stderr}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    source = Path(result["metalab"]).resolve()
    if baseline and not source.is_relative_to((args.baseline / "src").resolve()):
        sys.exit(f"{label} imported metalab from {source}, not from the --baseline checkout {args.baseline}")
    return result


def baseline_commit(checkout: Path) -> str | None:
    """The commit a --baseline checkout is at, or None where it is not a git checkout."""
    done = subprocess.run(["git", "-C", str(checkout), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                          text=True)
    return done.stdout.strip() if done.returncode == 0 else None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    throughput.add_rows_flag(p)
    p.add_argument("--variants", default="reference,default,released",
                   help=f"comma-separated, from {', '.join(VARIANTS)}")
    p.add_argument("--rounds", type=int, default=5, help="fresh processes per row and variant")
    p.add_argument("--reps", type=int, default=5, help="timed iterations per process")
    p.add_argument("--baseline", type=Path, default=None,
                   help="another checkout (with src/metalab): every variant but reference also runs its source")
    throughput.add_tasks_flag(p)
    records.add_timing_flags(p)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--variant", choices=list(VARIANTS), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.child:
        child(p, args)
        return
    variants = args.variants.split(",")
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        p.error(f"unknown variants {unknown}; choose from {list(VARIANTS)}")
    for name, value in (("--rounds", args.rounds), ("--reps", args.reps)):
        if value < 1:
            p.error(f"{name} must be at least 1, got {value}")
    commit = None
    if args.baseline is not None:
        if not (args.baseline / "src" / "metalab" / "__init__.py").is_file():
            p.error(f"--baseline {args.baseline} has no src/metalab: pass a checkout of this repository "
                    "(e.g. git worktree add /tmp/base <commit>)")
        commit = baseline_commit(args.baseline)
        variants += [v + BASELINE for v in variants if v != "reference"]
    rows = throughput.sized_rows(p, args)
    runs: dict[tuple[throughput.Row, str], list[dict]] = {(row, v): [] for row in rows for v in variants}
    for r in range(args.rounds):
        for row in rows:
            for v in variants[r % len(variants):] + variants[:r % len(variants)]:
                runs[row, v].append(run_child(args, row, v))
                print(f"round {r + 1}: {row.name} {v}: {runs[row, v][-1]['seconds']:.3f} s", flush=True)

    table = ["| row | variant | s/iter (median of rounds) | min-max | x reference | peak MiB | peak live MiB | "
             "max RSS MiB |", "|---|---|---|---|---|---|---|---|"]
    out = []
    for row in rows:
        medians = {v: statistics.median(run["seconds"] for run in runs[row, v]) for v in variants}
        for v in variants:
            seconds = [run["seconds"] for run in runs[row, v]]
            metrics = {"seconds_per_iter": medians[v],
                       "peak_mib": statistics.median(run["peak_mib"] for run in runs[row, v]),
                       "max_rss_mib": statistics.median(run["max_rss_mib"] for run in runs[row, v])}
            if all(run["peak_live_mib"] is not None for run in runs[row, v]):
                metrics["peak_live_mib"] = statistics.median(run["peak_live_mib"] for run in runs[row, v])
            if "reference" in medians and v != "reference":
                metrics["speedup"] = medians["reference"] / medians[v]
            if v + BASELINE in medians:
                metrics["speedup_over_baseline"] = medians[v + BASELINE] / medians[v]
            ratio = f"{metrics['speedup']:.2f}" if "speedup" in metrics else "–"
            table.append(f"| {row.name} | {v} | {medians[v]:.3f} | {min(seconds):.3f}-{max(seconds):.3f} | {ratio} | "
                         f"{metrics['peak_mib']:.0f} | {throughput.mib_cell(metrics.get('peak_live_mib'))} | "
                         f"{metrics['max_rss_mib']:.0f} |")
            variant = VARIANTS[v.removesuffix(BASELINE)]
            config = {**throughput.row_config(row, args.reps), "rounds": args.rounds, "fresh_processes": True,
                      "freed_memory_retained": variant.retain, "overrides": variant.overrides,
                      "seconds_per_round": seconds}
            if v.endswith(BASELINE):
                config |= {"baseline": str(args.baseline), "baseline_commit": commit}
            method = "fresh-" + v.replace(BASELINE, "-baseline")
            out += throughput.row_records(method, throughput.row_setting(row, args.tasks), metrics, config)
    records.finish("throughput", table, out, args)


if __name__ == "__main__":
    main()
