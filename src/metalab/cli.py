"""Command line: ``metalab train``, ``metalab eval``, ``metalab plot``, ``metalab list``.

argv is read here and nowhere else. Bad arguments and bad input exit with code 2 and one
``metalab: error: ...`` line.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import torch

from metalab import algorithms, config
from metalab.experiment import ALL_BENCHMARKS, TABLES, build_benchmark, reproduce, run_experiment
from metalab.data.benchmarks import BenchmarkConfig
from metalab.engine import TrainConfig, evaluate, load_checkpoint
from metalab.engine.distributed import DEFAULT_TIMEOUT, DEVICES, Distributed, backend_for, resolve_device
from metalab.utils.allocator import retain_freed_memory
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
    # meta-RL (Finn et al. 2017): meta-iterations of 40 (nav2d) or 20 (MuJoCo) tasks; test tasks, not episodes
    "nav2d": {"k_shot": 1, "steps": 100, "meta_batch_size": 40, "val_every": 25, "eval_steps": [0, 1, 2, 3],
              "val_episodes": 40, "test_episodes": 100},
    "cheetah-vel": {"k_shot": 1, "steps": 100, "meta_batch_size": 20, "val_every": 25, "eval_steps": [0, 1],
                    "val_episodes": 20, "test_episodes": 40},
    "cheetah-dir": {"k_shot": 1, "steps": 100, "meta_batch_size": 20, "val_every": 25, "eval_steps": [0, 1],
                    "val_episodes": 20, "test_episodes": 40},
    "ant-dir": {"k_shot": 1, "steps": 100, "meta_batch_size": 20, "val_every": 25, "eval_steps": [0, 1],
                "val_episodes": 20, "test_episodes": 40},
    **{bench: {"k_shot": 1, "steps": 50, "meta_batch_size": 10, "val_every": 25, "eval_steps": [0, 1],
               "val_episodes": 10, "test_episodes": 50} for bench in ("ml1-reach", "ml10")},
}
MAML_OMNIGLOT_MODEL = {"downsample": "stride", "readout": "mean"}
# Hyper-parameters of the papers that depend on the benchmark (used unless given).
PAPER_HPARAMS: dict[tuple[str, str], dict[str, Any]] = {
    ("maml", "sinusoid"): {"inner_lr": 0.01, "inner_steps": 1},
    ("fomaml", "sinusoid"): {"inner_lr": 0.01, "inner_steps": 1},
    # the MAML code's Omniglot model (cbfinn/maml without --max_pool): stride-2 convolutions, the 2x2 map averaged
    ("maml", "omniglot"): {"inner_lr": 0.4, "inner_steps": 1, "test_inner_steps": 3, **MAML_OMNIGLOT_MODEL},
    ("fomaml", "omniglot"): {"inner_lr": 0.4, "inner_steps": 1, "test_inner_steps": 3, **MAML_OMNIGLOT_MODEL},
    ("anil", "sinusoid"): {"inner_lr": 0.01, "inner_steps": 1},
    ("anil", "omniglot"): {"inner_lr": 0.4, "inner_steps": 1, "test_inner_steps": 3, **MAML_OMNIGLOT_MODEL},
    ("meta_sgd", "sinusoid"): {"inner_steps": 1, "lr_init_range": (0.005, 0.1)},
    ("meta_sgd", "omniglot"): {"inner_steps": 1, "lr_init_range": (0.005, 0.1), **MAML_OMNIGLOT_MODEL},
    # Nichol et al. 2018, appendix: Adam(beta1=0) 1e-3, 5 steps of batch 10; 50 steps at test; the moments
    # carry over from task to task as in the paper's code (benchmarks/results/omniglot.jsonl, "20min persistent Adam");
    # its Omniglot model has stride-2 convolutions and flattens the 2x2x64 map
    ("reptile", "omniglot"): {"inner_lr": 1e-3, "inner_steps": 5, "inner_batch_size": 10, "test_inner_steps": 50,
                               "inner_state": "persistent", "downsample": "stride"},
    # MuJoCo and Meta-World actions live on [-1, 1] already (2D navigation's policy outputs are scaled by 0.1)
    **{(method, bench): {"action_scale": 1.0} for method in ("maml_rl", "rl2")
       for bench in ("cheetah-vel", "cheetah-dir", "ant-dir", "ml1-reach", "ml10")},
}
HPARAM_FLAGS = ("inner_lr", "inner_steps", "test_inner_steps", "first_order", "task_mode")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit code 2
        self.exit(2, f"metalab: error: {message} (see `{self.prog} --help`)\n")


def _registry_name(text: str) -> str:
    """Registry names use underscores; accept the hyphenated spelling of the papers' names."""
    return text.replace("-", "_")


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
    return key.strip(), config.parse_value(value)


def _dataclass_flags(parser: argparse.ArgumentParser, section: str, cls: type, skip: Sequence[str]) -> None:
    """One flag per field of ``cls`` (``--field-name``), typed and documented from the dataclass itself."""
    docs = config.field_docs(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        kind, optional = config.field_type(cls, f.name)
        flag = "--" + f.name.replace("_", "-")
        default = "depends on the benchmark" if f.name in BENCHMARK_DEFAULTS["sinusoid"] else f.default
        default = RUN_DEFAULTS.get(section, {}).get(f.name, default)
        help_text = docs.get(f.name, "") + ("" if default is None else f" (default: {default})")
        if kind is bool:
            parser.add_argument(flag, dest=f"{section}.{f.name}", action="store_true", default=argparse.SUPPRESS,
                                help=help_text)
        else:
            parser.add_argument(flag, dest=f"{section}.{f.name}", type=kind, default=argparse.SUPPRESS,
                                metavar=f.name.upper(), help=help_text.replace("%", "%%"))


def _device_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="cpu", metavar="DEVICE",
                        help=f"where to run: {', '.join(DEVICES)} (default cpu). Under torchrun, cuda gives each "
                             "rank the GPU of its LOCAL_RANK and the ranks talk over NCCL (gloo on the CPU)")


def _build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="metalab", description="Meta-train and evaluate few-shot learners.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    t = sub.add_parser("train", help="meta-train a method on a benchmark, then evaluate it",
                       description="Meta-train a method, then evaluate its best checkpoint on the fixed test episodes. "
                                   "Settings come from the defaults, then --preset, then the flags given.")
    t.add_argument("algorithm", nargs="?", type=_registry_name,
                   help="registry name (see `metalab list`; `maml-rl` is read as `maml_rl`); optional with --preset "
                        "or --resume")
    t.add_argument("--preset", help="a named paper setting (see `metalab list --presets`); flags override its fields")
    t.add_argument("--benchmark", dest="benchmark.name", default=argparse.SUPPRESS, metavar="NAME",
                   help=f"one of {list(ALL_BENCHMARKS)} (default sinusoid)")
    _dataclass_flags(t, "benchmark", BenchmarkConfig, skip=("name", "seed"))
    _dataclass_flags(t, "train", TrainConfig, skip=())
    t.add_argument("--max-minutes", type=float, default=argparse.SUPPRESS,
                   help="training-time budget in minutes (sets --max-seconds)")
    t.add_argument("--inner-lr", type=float, help="inner-loop step size (gradient-based methods)")
    t.add_argument("--inner-steps", type=int, help="inner steps in meta-training")
    t.add_argument("--test-inner-steps", type=int, help="inner steps at evaluation")
    t.add_argument("--first-order", action="store_true", default=None, help="first-order meta-gradients")
    t.add_argument("--task-mode", choices=("auto", "loop", "vmap"), help="how tasks of a meta-batch are run")
    t.add_argument("--hparam", action="append", default=[], type=_hparam, metavar="KEY=VALUE",
                   help="any hyper-parameter of the method, e.g. --hparam inner_lr=0.1,0.05 "
                        "(Python literal; repeatable)")
    t.add_argument("--test-episodes", type=int, help="test episodes (default 1000)")
    t.add_argument("--eval-steps", type=_int_list, help="test-time inner steps to report, e.g. 1,5,10")
    t.add_argument("--out", help="run folder (default runs/<algorithm>-<benchmark>-<time>)")
    t.add_argument("--resume", metavar="RUN_DIR",
                   help="continue the killed or finished run in RUN_DIR exactly where its last checkpoint left off "
                        "(with its own settings; --steps and --max-minutes may extend it)")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    _device_flag(t)
    t.add_argument("--dist-timeout", type=float, default=DEFAULT_TIMEOUT, metavar="SECONDS",
                   help="under torchrun: how long a rank waits for the others before the run stops with an error "
                        f"(default {DEFAULT_TIMEOUT:g})")

    e = sub.add_parser("eval", help="evaluate a checkpoint on the fixed test episodes")
    e.add_argument("checkpoint", help="a best.pt or last.pt written by `metalab train`")
    e.add_argument("--episodes", type=int, default=1000, help="test episodes (default 1000)")
    e.add_argument("--eval-steps", type=_int_list, help="test-time inner steps, e.g. 1,5,10")
    e.add_argument("--data-dir", help="override the Omniglot folder stored in the checkpoint")
    e.add_argument("--cache-dir", help="override the cache folder stored in the checkpoint")
    e.add_argument("--out", help="write the results JSON here")
    e.add_argument("--release-freed-memory", action="store_true",
                   help="leave glibc handing freed memory back to the system at once (default: keep blocks of up to "
                        "32 MB for reuse, as training does)")
    e.add_argument("--quiet", action="store_true", help="no progress bar")
    _device_flag(e)

    r = sub.add_parser("reproduce", help="train (or load) every method of a paper table and write it as markdown")
    r.add_argument("table", choices=sorted(TABLES), help="which table")
    r.add_argument("--minutes", type=float, help="training-time budget per method (default: the presets' full length)")
    r.add_argument("--data-dir", help="folder with Omniglot's images_background.zip and images_evaluation.zip")
    r.add_argument("--cache-dir", help="where decoded images are cached (default ~/.cache/metalab)")
    r.add_argument("--out", help="folder of the runs and of <table>.md (default runs/reproduce-<table>); "
                                 "finished runs in it are loaded, killed ones continued")
    r.add_argument("--only", type=lambda text: [n for n in text.split(",") if n], metavar="PRESET,...",
                   help="only these presets of the table (e.g. to train rows in parallel processes into one --out)")
    r.add_argument("--records", help="append one result record per row to <RECORDS>/<benchmark>.jsonl "
                                     "(the repository's: benchmarks/results)")
    r.add_argument("--page", help="with --records: render every record there into this markdown page "
                                  "(the repository's: docs/RESULTS.md)")
    r.add_argument("--quiet", action="store_true", help="no progress bars")
    _device_flag(r)

    pl = sub.add_parser("plot", help="figures of run folders (needs the [plot] extra)")
    pl.add_argument("runs", nargs="+", help="run folders written by `metalab train`")
    pl.add_argument("--kind", choices=("curves", "steps", "shots"), default="curves",
                    help="curves: validation metric vs step and vs wall time; steps: test metric vs test-time "
                         "adaptation steps; shots: test metric vs k_shot, one line per algorithm (default curves)")
    pl.add_argument("--out", required=True, help="the PNG file to write")
    pl.add_argument("--title", default="", help="figure title")

    ls = sub.add_parser("list", help="list algorithms and benchmarks")
    ls.add_argument("--json", action="store_true", help="machine-readable output")
    ls.add_argument("--presets", action="store_true", help="list the named paper settings for --preset")
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


# what a run uses unless the preset or the command line says otherwise
RUN_DEFAULTS = {"train": {"checkpoint_every": 100}, "test_episodes": 1000}


def _run_config(args: argparse.Namespace) -> dict[str, Any]:
    """The resolved settings of a run, as plain data (what config.json holds): defaults < preset < flags."""
    preset = config.load_preset(args.preset) if args.preset else {}
    algorithm = args.algorithm or preset.get("algorithm")
    if algorithm is None:
        raise MetalabError("name the algorithm to train (see `metalab list`), pick a --preset, or continue a run "
                           "with --resume RUN_DIR")
    if args.algorithm and preset and args.algorithm != preset["algorithm"]:
        raise MetalabError(f"preset {args.preset} trains {preset['algorithm']}, not {args.algorithm}; drop one of them")
    given = {key: value for key, value in vars(args).items() if "." in key}
    flags = {section: {k.split(".", 1)[1]: v for k, v in given.items() if k.startswith(section + ".")}
             for section in config.SECTIONS}
    if "max_minutes" in vars(args):
        flags["train"]["max_seconds"] = 60 * args.max_minutes
    bench = {**preset.get("benchmark", {}), **flags["benchmark"]}
    name = bench.setdefault("name", "sinusoid")
    defaults = BENCHMARK_DEFAULTS.get(name)
    if defaults is None:
        raise MetalabError(f"unknown benchmark {name!r}; choose one of {list(ALL_BENCHMARKS)}")
    bench.setdefault("k_shot", defaults["k_shot"])
    train = {"steps": defaults["steps"], "meta_batch_size": defaults["meta_batch_size"],
             "val_every": defaults["val_every"], **({"val_episodes": defaults["val_episodes"]} if "val_episodes" in defaults
                                                   else {}),
             **RUN_DEFAULTS["train"], **preset.get("train", {}), **flags["train"]}
    bench["seed"] = derive_seed(train.get("seed", 0), 1)
    bench_cfg = BenchmarkConfig(**bench)
    train_cfg = TrainConfig(**train)
    algorithms.get(algorithm)  # unknown names fail before any data is loaded
    hparams = {**PAPER_HPARAMS.get((algorithm, name), {}), **preset.get("hparams", {}),
               **_given(args, HPARAM_FLAGS), **dict(args.hparam)}
    method_config = algorithms.make_config(algorithm, **hparams)
    eval_steps = args.eval_steps or preset.get("eval_steps") or defaults["eval_steps"]
    if not hasattr(method_config, "inner_steps"):
        eval_steps = [None]
    test_episodes = (args.test_episodes or preset.get("test_episodes") or defaults.get("test_episodes")
                     or RUN_DEFAULTS["test_episodes"])
    return _plain({"algorithm": algorithm, "hparams": dataclasses.asdict(method_config),
                   "benchmark": dataclasses.asdict(bench_cfg), "train": dataclasses.asdict(train_cfg),
                   "eval_steps": eval_steps, "test_episodes": test_episodes})


def _plain(data: Any) -> Any:
    """``data`` as JSON would give it back (tuples become lists), so stored and fresh configs compare equal."""
    return json.loads(json.dumps(data))


# settings that may differ when a run is resumed: where the data is, how the environments are stepped, and how long
# to go on
_RESUME_FREE = {("benchmark", "data_dir"), ("benchmark", "cache_dir"), ("benchmark", "env_workers"), ("train", "steps"),
                ("train", "max_seconds")}


def _resumed_config(args: argparse.Namespace, run_dir: Path) -> dict[str, Any]:
    """The stored config of ``run_dir``, checked against the command line when that names the run's settings."""
    path = run_dir / "config.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        stored = {key: data[key] for key in ("algorithm", "hparams", "benchmark", "train", "eval_steps", "test_episodes")}
        stored["commands"] = list(data.get("commands", []))
    except FileNotFoundError:
        raise MetalabError(f"{run_dir} is not a run folder (no config.json); pass the --out folder of a "
                           "`metalab train` run") from None
    except (ValueError, KeyError, TypeError):
        raise MetalabError(f"{path} is damaged or from another program; start a new run") from None
    if args.algorithm is not None or args.preset is not None:
        fresh = _run_config(args)
        changed = sorted(f"{group}.{key}" for group in ("benchmark", "train", "hparams")
                         for key in set(stored[group]) | set(fresh[group])
                         if (group, key) not in _RESUME_FREE and stored[group].get(key) != fresh[group].get(key))
        if fresh["algorithm"] != stored["algorithm"]:
            changed.insert(0, "algorithm")
        if changed:
            raise MetalabError(f"{run_dir} belongs to another configuration ({', '.join(changed)} differ); "
                               "resume with `metalab train --resume RUN_DIR` alone or start a new --out folder")
    for key, value in vars(args).items():  # the settings a resumed run may change
        if tuple(key.split(".", 1)) in _RESUME_FREE:
            section, name = key.split(".", 1)
            stored[section][name] = value
    if "max_minutes" in vars(args):
        stored["train"]["max_seconds"] = 60 * args.max_minutes
    return stored


def _train(args: argparse.Namespace) -> int:
    # a single process unless launched by torchrun, which sets WORLD_SIZE (and RANK, MASTER_ADDR, ...)
    world_size, local_rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(args.device, local_rank, world_size)
    with Distributed.join(world_size, args.dist_timeout, backend_for(device), local_rank) as distributed:
        return _train_in(args, distributed, device)  # (leaving the block: ranks leave together)


def _train_in(args: argparse.Namespace, distributed: Distributed, device: torch.device) -> int:
    if distributed.active and args.out is None and args.resume is None:
        raise MetalabError("under torchrun, name the run folder with --out so that every rank uses the same one")
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
    # config.json keeps the command lines that started and continued the run
    cfg["commands"] = [*cfg.get("commands", []), " ".join(["metalab", *args.argv])]
    progress = not args.quiet and sys.stderr.isatty()
    if distributed.active:
        cfg["world_size"] = distributed.world_size
    run_experiment(cfg, run_dir, resume=args.resume is not None, progress=progress,
                   log=lambda line: print(line, flush=True), distributed=distributed, device=device)
    if distributed.is_main:
        print(f"results: {run_dir / 'results.json'}")
    return 0


def _reproduce(args: argparse.Namespace) -> int:
    overrides = {"benchmark": {k: v for k, v in (("data_dir", args.data_dir), ("cache_dir", args.cache_dir)) if v}}
    if args.page and not args.records:
        raise MetalabError("--page renders the result records of --records: give --records too")
    reproduce(args.table, Path(args.out or f"runs/reproduce-{args.table}"), args.minutes, overrides,
              progress=not args.quiet and sys.stderr.isatty(), log=lambda line: print(line, flush=True),
              records_dir=args.records and Path(args.records), page=args.page and Path(args.page),
              command=" ".join(["metalab", *args.argv]), only=args.only, device=resolve_device(args.device))
    return 0


def _eval(args: argparse.Namespace) -> int:
    device = resolve_device(args.device)
    if not args.release_freed_memory:
        retain_freed_memory()
    algorithm, record = load_checkpoint(args.checkpoint)
    algorithm.to(device)  # a meta-RL method refuses anything but the CPU when it evaluates
    fields = dict(record["benchmark"])
    for name in ("data_dir", "cache_dir"):
        if getattr(args, name) is not None:
            fields[name] = getattr(args, name)
    progress = not args.quiet and sys.stderr.isatty()
    benchmark = build_benchmark(BenchmarkConfig(**fields), progress)
    eval_steps = args.eval_steps or [None]
    tests = _evaluate_all(algorithm, benchmark, args.episodes, eval_steps, progress)
    if args.out:
        atomic_write_text(args.out, json.dumps({"checkpoint": args.checkpoint, "test": tests}, indent=2))
    return 0


def _plot(args: argparse.Namespace) -> int:
    from metalab.plot import PLOTS

    command = "metalab " + shlex.join(args.argv)
    print(PLOTS[args.kind]([Path(run) for run in args.runs], Path(args.out), args.title, command))
    return 0


def _list(args: argparse.Namespace) -> int:
    if args.presets:
        presets = {name: config.load_preset(name)["description"] for name in config.preset_names()}
        if args.json:
            print(json.dumps(presets))
        else:
            for name, description in presets.items():
                print(f"{name}: {description}")
        return 0
    listing = {"algorithms": algorithms.names(), "benchmarks": list(ALL_BENCHMARKS), "presets": config.preset_names()}
    if args.json:
        print(json.dumps(listing))
    else:
        for key, values in listing.items():
            print(f"{key}: {', '.join(values)}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _build_parser().parse_args(argv)
    args.argv = argv
    try:
        if args.command != "train" and int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise MetalabError(f"only `metalab train` runs under torchrun; run `metalab {args.command}` in one process")
        return {"train": _train, "eval": _eval, "reproduce": _reproduce, "plot": _plot,
                "list": _list}[args.command](args)
    except MetalabError as exc:
        print(f"metalab: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("metalab: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
