"""Command line: ``metalab train``, ``metalab eval``, ``metalab list``.

argv is read here and nowhere else. Bad arguments and bad input exit with code 2 and one
``metalab: error: ...`` line.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import torch

from metalab import algorithms
from metalab.data.benchmarks import BENCHMARKS, OMNIGLOT_SPLITS, BenchmarkConfig, make_benchmark
from metalab.engine import TrainConfig, evaluate, load_checkpoint, train
from metalab.utils.errors import MetalabError
from metalab.utils.io import atomic_write_text
from metalab.utils.seeding import derive_seed

# Defaults that differ by benchmark: a short run that finishes in minutes on 2 CPU cores.
# The paper-length settings are in benchmarks/ (see docs/RESULTS.md).
BENCHMARK_DEFAULTS: dict[str, dict[str, Any]] = {
    "sinusoid": {"k_shot": 5, "steps": 5000, "meta_batch_size": 25, "val_every": 1000, "eval_steps": [1, 5, 10]},
    "omniglot": {"k_shot": 1, "steps": 2000, "meta_batch_size": 16, "val_every": 500, "eval_steps": [None]},
    # sequence episodes (Santoro et al. 2016): --n-way classes x --n-query instances; k_shot is unused
    "omniglot-online": {"k_shot": 1, "steps": 2000, "meta_batch_size": 16, "val_every": 500, "eval_steps": [None]},
}
# Hyper-parameters of the papers that depend on the benchmark (used unless given).
PAPER_HPARAMS: dict[tuple[str, str], dict[str, Any]] = {
    ("maml", "sinusoid"): {"inner_lr": 0.01, "inner_steps": 1},
    ("fomaml", "sinusoid"): {"inner_lr": 0.01, "inner_steps": 1},
    ("maml", "omniglot"): {"inner_lr": 0.4, "inner_steps": 1, "test_inner_steps": 3},
    ("fomaml", "omniglot"): {"inner_lr": 0.4, "inner_steps": 1, "test_inner_steps": 3},
    ("anil", "sinusoid"): {"inner_lr": 0.01, "inner_steps": 1},
    ("anil", "omniglot"): {"inner_lr": 0.4, "inner_steps": 1, "test_inner_steps": 3},
    ("meta_sgd", "sinusoid"): {"inner_steps": 1, "lr_init_range": (0.005, 0.1)},
    ("meta_sgd", "omniglot"): {"inner_steps": 1, "lr_init_range": (0.005, 0.1)},
    # Nichol et al. 2018, appendix: Adam(beta1=0) 1e-3, 5 steps of batch 10; 50 steps at test
    ("reptile", "omniglot"): {"inner_lr": 1e-3, "inner_steps": 5, "inner_batch_size": 10, "test_inner_steps": 50},
}
HPARAM_FLAGS = ("inner_lr", "inner_steps", "test_inner_steps", "first_order", "task_mode")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit code 2
        self.exit(2, f"metalab: error: {message} (see `{self.prog} --help`)\n")


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 0:
        raise argparse.ArgumentTypeError(f"expected non-negative integers, got {text!r}")
    return values


def _hparam(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        parsed = ast.literal_eval(value)
    except (ValueError, SyntaxError):
        parsed = value  # a plain string, e.g. inner_optimizer=sgd
    return key.strip(), parsed


def _build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="metalab", description="Meta-train and evaluate few-shot learners.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    t = sub.add_parser("train", help="meta-train a method on a benchmark, then evaluate it")
    t.add_argument("algorithm", nargs="?", help="registry name (see `metalab list`); optional with --resume")
    t.add_argument("--benchmark", default="sinusoid", help=f"one of {sorted(BENCHMARKS)} (default sinusoid)")
    t.add_argument("--data-dir", help="folder with Omniglot's images_background.zip and images_evaluation.zip")
    t.add_argument("--cache-dir", help="where decoded images are cached (default ~/.cache/metalab)")
    t.add_argument("--split", default="vinyals", choices=OMNIGLOT_SPLITS, help="Omniglot split")
    t.add_argument("--n-way", type=int, default=5, help="classes per test episode")
    t.add_argument("--k-shot", type=int, help="support examples per class (default 5 sinusoid, 1 omniglot)")
    t.add_argument("--n-query", type=int, help="query examples per class at test time")
    t.add_argument("--train-n-way", type=int, help="classes per training episode (default: --n-way)")
    t.add_argument("--train-k-shot", type=int, help="support examples per class in training")
    t.add_argument("--train-n-query", type=int, help="query examples per class in training")
    t.add_argument("--inner-lr", type=float, help="inner-loop step size (gradient-based methods)")
    t.add_argument("--inner-steps", type=int, help="inner steps in meta-training")
    t.add_argument("--test-inner-steps", type=int, help="inner steps at evaluation")
    t.add_argument("--first-order", action="store_true", default=None, help="first-order meta-gradients")
    t.add_argument("--task-mode", choices=("auto", "loop", "vmap"), help="how tasks of a meta-batch are run")
    t.add_argument("--hparam", action="append", default=[], type=_hparam, metavar="KEY=VALUE",
                   help="any hyper-parameter of the method, e.g. --hparam inner_lr=0.1,0.05 "
                        "(Python literal; repeatable)")
    t.add_argument("--steps", type=int, help="meta-iterations")
    t.add_argument("--meta-batch-size", type=int, help="tasks per meta-iteration")
    t.add_argument("--outer-lr", type=float, default=1e-3,
                   help="outer learning rate (Adam; Reptile: its step size epsilon) (default 1e-3)")
    t.add_argument("--lr-decay-every", type=int, default=0, help="halve the rate every N steps (0: never)")
    t.add_argument("--lr-anneal", action="store_true", help="anneal the outer rate linearly to 0 (Reptile)")
    t.add_argument("--max-minutes", type=float, help="training-time budget: stop after the step that exceeds it")
    t.add_argument("--val-every", type=int, help="validate every N steps")
    t.add_argument("--val-episodes", type=int, default=100, help="validation episodes (default 100)")
    t.add_argument("--test-episodes", type=int, default=1000, help="test episodes (default 1000)")
    t.add_argument("--eval-steps", type=_int_list, help="test-time inner steps to report, e.g. 1,5,10")
    t.add_argument("--seed", type=int, default=0, help="run seed (initialisation and training episodes)")
    t.add_argument("--grad-clip", type=float, help="clip the meta-gradient norm to this value")
    t.add_argument("--log-every", type=int, default=50, help="average training metrics over N steps (default 50)")
    t.add_argument("--checkpoint-every", type=int, default=100,
                   help="write last.pt every N steps besides validation, what --resume continues from (default 100)")
    t.add_argument("--skip-nonfinite", action="store_true",
                   help="skip a meta-batch with a non-finite loss or gradient instead of stopping")
    t.add_argument("--out", help="run folder (default runs/<algorithm>-<benchmark>-<time>)")
    t.add_argument("--resume", metavar="RUN_DIR",
                   help="continue the killed or finished run in RUN_DIR exactly where its last checkpoint left off "
                        "(with its own settings; --steps and --max-minutes may extend it)")
    t.add_argument("--quiet", action="store_true", help="no progress bar")

    e = sub.add_parser("eval", help="evaluate a checkpoint on the fixed test episodes")
    e.add_argument("checkpoint", help="a best.pt or last.pt written by `metalab train`")
    e.add_argument("--episodes", type=int, default=1000, help="test episodes (default 1000)")
    e.add_argument("--eval-steps", type=_int_list, help="test-time inner steps, e.g. 1,5,10")
    e.add_argument("--data-dir", help="override the Omniglot folder stored in the checkpoint")
    e.add_argument("--cache-dir", help="override the cache folder stored in the checkpoint")
    e.add_argument("--out", help="write the results JSON here")
    e.add_argument("--quiet", action="store_true", help="no progress bar")

    ls = sub.add_parser("list", help="list algorithms and benchmarks")
    ls.add_argument("--json", action="store_true", help="machine-readable output")
    return parser


def _given(args: argparse.Namespace, names: Sequence[str]) -> dict[str, Any]:
    return {n: getattr(args, n) for n in names if getattr(args, n) is not None}


def _evaluate_all(algorithm, benchmark, episodes: int, eval_steps, progress: bool) -> list[dict]:
    results = []
    for steps in eval_steps:
        result = evaluate(algorithm, benchmark.test, episodes, steps, progress=progress, desc="test")
        print(f"test {benchmark.name}: {result}", flush=True)
        results.append(result.to_dict())
    return results


def _run_config(args: argparse.Namespace) -> dict[str, Any]:
    """The resolved settings of a run, as plain data (what config.json holds)."""
    if args.algorithm is None:
        raise MetalabError("name the algorithm to train (see `metalab list`), or continue a run with --resume RUN_DIR")
    defaults = BENCHMARK_DEFAULTS.get(args.benchmark)
    if defaults is None:
        raise MetalabError(f"unknown benchmark {args.benchmark!r}; choose one of {sorted(BENCHMARKS)}")
    bench_cfg = BenchmarkConfig(
        name=args.benchmark,
        data_dir=args.data_dir,
        cache_dir=args.cache_dir,
        split=args.split,
        n_way=args.n_way,
        k_shot=args.k_shot if args.k_shot is not None else defaults["k_shot"],
        n_query=args.n_query,
        train_n_way=args.train_n_way,
        train_k_shot=args.train_k_shot,
        train_n_query=args.train_n_query,
        seed=derive_seed(args.seed, 1),
    )
    train_cfg = TrainConfig(
        steps=args.steps if args.steps is not None else defaults["steps"],
        meta_batch_size=args.meta_batch_size if args.meta_batch_size is not None else defaults["meta_batch_size"],
        outer_lr=args.outer_lr,
        lr_decay_every=args.lr_decay_every,
        lr_anneal=args.lr_anneal,
        max_seconds=None if args.max_minutes is None else 60 * args.max_minutes,
        val_every=args.val_every if args.val_every is not None else defaults["val_every"],
        val_episodes=args.val_episodes,
        log_every=args.log_every,
        grad_clip=args.grad_clip,
        checkpoint_every=args.checkpoint_every,
        skip_nonfinite=args.skip_nonfinite,
        seed=args.seed,
    )
    algorithms.get(args.algorithm)  # unknown names fail before any data is loaded
    hparams = {**PAPER_HPARAMS.get((args.algorithm, args.benchmark), {}), **_given(args, HPARAM_FLAGS), **dict(args.hparam)}
    config = algorithms.make_config(args.algorithm, **hparams)
    eval_steps = args.eval_steps or defaults["eval_steps"]
    if not hasattr(config, "inner_steps"):
        eval_steps = [None]
    return _plain({"algorithm": args.algorithm, "hparams": dataclasses.asdict(config),
                   "benchmark": dataclasses.asdict(bench_cfg), "train": dataclasses.asdict(train_cfg),
                   "eval_steps": eval_steps, "test_episodes": args.test_episodes})


def _plain(data: Any) -> Any:
    """``data`` as JSON would give it back (tuples become lists), so stored and fresh configs compare equal."""
    return json.loads(json.dumps(data))


# settings that may differ when a run is resumed: where the data is, and how long to go on
_RESUME_FREE = {("benchmark", "data_dir"), ("benchmark", "cache_dir"), ("train", "steps"), ("train", "max_seconds")}


def _resumed_config(args: argparse.Namespace, run_dir: Path) -> dict[str, Any]:
    """The stored config of ``run_dir``, checked against the command line when that names the run's settings."""
    path = run_dir / "config.json"
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
        stored = {key: stored[key] for key in ("algorithm", "hparams", "benchmark", "train", "eval_steps", "test_episodes")}
    except FileNotFoundError:
        raise MetalabError(f"{run_dir} is not a run folder (no config.json); pass the --out folder of a "
                           "`metalab train` run") from None
    except (ValueError, KeyError, TypeError):
        raise MetalabError(f"{path} is damaged or from another program; start a new run") from None
    if args.algorithm is not None:
        fresh = _run_config(args)
        changed = sorted(f"{group}.{key}" for group in ("benchmark", "train", "hparams")
                         for key in set(stored[group]) | set(fresh[group])
                         if (group, key) not in _RESUME_FREE and stored[group].get(key) != fresh[group].get(key))
        if fresh["algorithm"] != stored["algorithm"]:
            changed.insert(0, "algorithm")
        if changed:
            raise MetalabError(f"{run_dir} belongs to another configuration ({', '.join(changed)} differ); "
                               "resume with `metalab train --resume RUN_DIR` alone or start a new --out folder")
    for name in ("data_dir", "cache_dir"):
        if getattr(args, name) is not None:
            stored["benchmark"][name] = getattr(args, name)
    if args.steps is not None:
        stored["train"]["steps"] = args.steps
    if args.max_minutes is not None:
        stored["train"]["max_seconds"] = 60 * args.max_minutes
    return stored


def _train(args: argparse.Namespace) -> int:
    if args.resume is not None:
        run_dir = Path(args.resume)
        if args.out is not None and Path(args.out) != run_dir:
            raise MetalabError("--resume continues the run in its own folder; drop --out")
        cfg = _resumed_config(args, run_dir)
    else:
        cfg = _run_config(args)
        run_dir = Path(args.out or f"runs/{cfg['algorithm']}-{cfg['benchmark']['name']}-{time.strftime('%Y%m%d-%H%M%S')}")
        if (run_dir / "last.pt").exists():
            raise MetalabError(f"{run_dir} already holds a run; continue it with --resume {run_dir} or choose another --out")
    bench_cfg = BenchmarkConfig(**cfg["benchmark"])
    train_cfg = TrainConfig(**cfg["train"])
    config = algorithms.make_config(cfg["algorithm"], **cfg["hparams"])
    progress = not args.quiet and sys.stderr.isatty()
    benchmark = make_benchmark(bench_cfg, progress)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(train_cfg.seed, 0))
        algorithm = algorithms.get(cfg["algorithm"])(benchmark.spec, config)
    run_dir.mkdir(parents=True, exist_ok=True)
    extra = {"benchmark": cfg["benchmark"]}
    atomic_write_text(run_dir / "config.json", json.dumps({**cfg, "argv": sys.argv[1:]}, indent=2))
    result = train(algorithm, benchmark, train_cfg, run_dir, progress=progress, checkpoint_extra=extra,
                   resume=args.resume is not None)
    print(f"trained {cfg['algorithm']} on {bench_cfg.name}: {result.steps} steps in {result.seconds:.1f} s; "
          f"best validation {result.best}", flush=True)
    best, _ = load_checkpoint(run_dir / "best.pt")
    tests = _evaluate_all(best, benchmark, cfg["test_episodes"], cfg["eval_steps"], progress)
    summary = {"algorithm": cfg["algorithm"], "benchmark": cfg["benchmark"], "hparams": cfg["hparams"],
               "train": cfg["train"], "train_seconds": round(result.seconds, 2), "best_val": result.best,
               "test": tests, "checkpoint": str(run_dir / "best.pt")}
    atomic_write_text(run_dir / "results.json", json.dumps(summary, indent=2))
    print(f"results: {run_dir / 'results.json'}")
    return 0


def _eval(args: argparse.Namespace) -> int:
    algorithm, record = load_checkpoint(args.checkpoint)
    fields = dict(record["benchmark"])
    for name in ("data_dir", "cache_dir"):
        if getattr(args, name) is not None:
            fields[name] = getattr(args, name)
    progress = not args.quiet and sys.stderr.isatty()
    benchmark = make_benchmark(BenchmarkConfig(**fields), progress)
    eval_steps = args.eval_steps or [None]
    tests = _evaluate_all(algorithm, benchmark, args.episodes, eval_steps, progress)
    if args.out:
        atomic_write_text(args.out, json.dumps({"checkpoint": args.checkpoint, "test": tests}, indent=2))
    return 0


def _list(args: argparse.Namespace) -> int:
    listing = {"algorithms": algorithms.names(), "benchmarks": sorted(BENCHMARKS)}
    if args.json:
        print(json.dumps(listing))
    else:
        for key, values in listing.items():
            print(f"{key}: {', '.join(values)}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    try:
        return {"train": _train, "eval": _eval, "list": _list}[args.command](args)
    except MetalabError as exc:
        print(f"metalab: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("metalab: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
