"""Experiments from run configurations: train, evaluate, and reproduce whole paper tables.

:func:`run_experiment` is what ``metalab train`` does with a resolved configuration (see
:mod:`metalab.config`); :func:`reproduce` runs every preset of a table under a training-time
budget (or loads the finished runs it finds, continuing the killed ones) and writes the
table as markdown: method x setting, mean ± 95% CI, the published number, the time used.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Callable

import torch

from metalab import algorithms, config, results
from metalab.algorithms.rl_base import RUNS_ON_CPU
from metalab.data.benchmarks import BENCHMARKS, Benchmark, BenchmarkConfig, TaskSpec, make_benchmark
from metalab.engine import TrainConfig, evaluate, load_checkpoint, train
from metalab.engine.distributed import SINGLE, Distributed
from metalab.rl.benchmarks import RL_BENCHMARKS, rl_benchmark_parts
from metalab.utils.errors import MetalabError
from metalab.utils.io import atomic_write_text
from metalab.utils.seeding import derive_seed

TABLES: dict[str, tuple[str, ...]] = {
    "sinusoid": ("maml-sinusoid",),
    "omniglot": ("maml-omniglot-5w1s", "maml-omniglot-5w5s", "fomaml-omniglot-5w1s", "anil-omniglot-5w1s",
                 "meta_sgd-omniglot-5w1s", "reptile-omniglot-5w1s", "reptile-omniglot-5w5s",
                 "protonet-omniglot-5w1s", "protonet-omniglot-5w5s", "protonet-omniglot-20w1s",
                 "protonet-omniglot-20w5s", "matching_net-omniglot-5w1s", "siamese-omniglot-5w1s",
                 "relation_net-omniglot-5w1s", "relation_net-omniglot-5w5s", "meta_lstm-omniglot-5w1s"),
    "mann": ("mann-omniglot-5class", "lstm-omniglot-5class", "mann-omniglot-15class", "lstm-omniglot-15class"),
    "nav2d": ("maml_rl-nav2d", "rl2-nav2d"),
}
SETTINGS = ("algorithm", "hparams", "benchmark", "train", "eval_steps", "test_episodes")


ALL_BENCHMARKS = (*sorted(BENCHMARKS), *sorted(RL_BENCHMARKS))


def build_benchmark(cfg: BenchmarkConfig, progress: bool = False) -> Benchmark:
    """The benchmark ``cfg`` names: supervised (:func:`metalab.data.make_benchmark`) or meta-RL.

    A meta-RL benchmark (:mod:`metalab.rl.benchmarks`) becomes a :class:`Benchmark` whose
    streams yield tasks (``TaskEpisode``/``TaskBatch``), whose spec maps observation vectors to
    actions and whose metric is the episode ``return``; its other fields (``n_way``, ``k_shot``,
    data folders) are unused.
    """
    if cfg.name not in RL_BENCHMARKS:
        if cfg.env_workers:
            raise MetalabError(f"env_workers is for the meta-RL benchmarks on MuJoCo and Meta-World, not {cfg.name}; "
                               "leave it at 0")
        return make_benchmark(cfg, progress)
    parts = rl_benchmark_parts(cfg.name, cfg.seed, cfg.env_workers)
    return Benchmark(cfg.name, TaskSpec((parts.observation_dim,), parts.action_dim, False), "return",
                     parts.train, parts.val, parts.test)


def run_experiment(cfg: dict[str, Any], run_dir: Path, resume: bool = False, progress: bool = False,
                   log: Callable[[str], None] = print, distributed: Distributed = SINGLE,
                   device: torch.device | str = "cpu") -> dict[str, Any]:
    """Train ``cfg`` into ``run_dir`` (or continue it), evaluate the best checkpoint, write results.json.

    Args:
        cfg: a resolved run configuration (``metalab.config.SETTINGS`` keys, plain data).
        run_dir: the run folder (config.json, metrics.jsonl, last.pt, best.pt, results.json).
        resume: continue from ``run_dir/last.pt``.
        progress: progress bars.
        log: where the one-line summaries go.
        distributed: this process's place in a data-parallel run; only rank 0 writes and logs.
        device: where to train and evaluate (:func:`metalab.engine.distributed.resolve_device`
            turns ``--device`` into it); checkpoints load onto any device, so a run may be
            continued on another one.

    Returns:
        The content of ``results.json``.
    """
    bench_cfg = BenchmarkConfig(**cfg["benchmark"])
    train_cfg = TrainConfig(**cfg["train"])
    kind = algorithms.get(cfg["algorithm"]).kind
    if (kind == "rl") != (bench_cfg.name in RL_BENCHMARKS):
        raise MetalabError(f"{cfg['algorithm']} is a {'meta-RL' if kind == 'rl' else 'supervised'} method and "
                           f"{bench_cfg.name} a {'meta-RL' if bench_cfg.name in RL_BENCHMARKS else 'supervised'} "
                           f"benchmark; meta-RL methods ({', '.join(algorithms.names('rl'))}) run on "
                           f"{', '.join(sorted(RL_BENCHMARKS))}")
    device = torch.device(device)
    if kind == "rl" and device.type != "cpu":
        raise MetalabError(RUNS_ON_CPU)
    if kind == "rl" and train_cfg.autocast is not None:
        raise MetalabError(f"autocast is for the few-shot methods; {cfg['algorithm']} trains its policy in float32 "
                           "(its trust-region and PPO steps need the precision); drop --autocast")
    method_config = algorithms.make_config(cfg["algorithm"], **cfg["hparams"])
    source = results.commit()  # before training: the source this run loaded
    benchmark = build_benchmark(bench_cfg, progress)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(train_cfg.seed, 0))
        algorithm = algorithms.get(cfg["algorithm"])(benchmark.spec, method_config).to(device)
    if not distributed.is_main:
        progress, log = False, _silent
    else:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / "config.json", json.dumps(cfg, indent=2))
    result = train(algorithm, benchmark, train_cfg, run_dir, progress=progress,
                   checkpoint_extra={"benchmark": cfg["benchmark"]}, resume=resume, distributed=distributed)
    log(f"trained {cfg['algorithm']} on {bench_cfg.name}: {result.steps} steps in {result.seconds:.1f} s; "
        f"best validation {result.best}")
    best = load_checkpoint(run_dir / "best.pt")[0].to(device)
    tests = []
    for steps in cfg["eval_steps"]:
        test = evaluate(best, benchmark.test, cfg["test_episodes"], steps, progress=progress, desc="test",
                        distributed=distributed)
        log(f"test {benchmark.name}: {test}")
        tests.append(test.to_dict())
    summary = {**{k: cfg[k] for k in ("algorithm", "benchmark", "hparams", "train")},
               "train_seconds": round(result.seconds, 2), "steps": result.steps, "best_val": result.best,
               "test": tests, "checkpoint": str(run_dir / "best.pt"), "commit": source}
    if distributed.is_main:
        atomic_write_text(run_dir / "results.json", json.dumps(summary, indent=2))
    return summary


def _silent(line: str) -> None:
    pass


def preset_run(name: str, minutes: float | None, overrides: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The resolved configuration of preset ``name`` with a time budget and benchmark overrides."""
    preset = config.load_preset(name)
    bench = {**preset["benchmark"], **overrides.get("benchmark", {})}
    train_fields = {**preset["train"], "max_seconds": None if minutes is None else 60 * minutes}
    bench["seed"] = derive_seed(train_fields.get("seed", 0), 1)
    method_config = algorithms.make_config(preset["algorithm"], **preset.get("hparams", {}))
    cfg = {"algorithm": preset["algorithm"], "hparams": dataclasses.asdict(method_config),
           "benchmark": dataclasses.asdict(BenchmarkConfig(**bench)),
           "train": dataclasses.asdict(TrainConfig(**train_fields)),
           "eval_steps": preset.get("eval_steps", [None]), "test_episodes": preset.get("test_episodes", 1000)}
    return json.loads(json.dumps(cfg))  # plain data, as config.json holds it


def setting_name(benchmark: dict[str, Any], steps: int | None) -> str:
    """``5w1s`` for classification episodes, ``5class`` for sequences, ``5shot-10steps`` for regression."""
    if benchmark["name"] == "omniglot-online":
        return f"{benchmark['n_way']}class"
    if benchmark["name"] == "sinusoid":
        return f"{benchmark['k_shot']}shot" + ("" if steps is None else f"-{steps}steps")
    if benchmark["name"] in RL_BENCHMARKS:
        return "trial" if steps is None else f"{steps}steps"
    return f"{benchmark['n_way']}w{benchmark['k_shot']}s"


def _format(metric: str, value: float | None) -> str:
    if value is None:
        return "–"
    return f"{100 * value:.2f}%" if metric == "accuracy" else f"{value:.3f}"


def reproduce(table: str, out: Path, minutes: float | None, overrides: dict[str, dict[str, Any]],
              progress: bool = False, log: Callable[[str], None] = print, records_dir: Path | None = None,
              page: Path | None = None, command: str | None = None, only: list[str] | None = None,
              device: torch.device | str = "cpu") -> Path:
    """Run (or load, or continue) every preset of ``table`` and write ``out/<table>.md``.

    A preset whose run folder ``out/<preset>`` already holds results of the same settings is
    loaded, one with a checkpoint but no results is resumed, others are trained from scratch
    for ``minutes`` each (``None``: the preset's full length).

    Args:
        records_dir: if given, one result record per row of the table is appended to
            ``records_dir/<benchmark>.jsonl`` (:mod:`metalab.results`; with the budget label
            ``<minutes>min`` when ``minutes`` is given).
        page: if given (with ``records_dir``), the results page rendered from every record of
            ``records_dir`` is written there (``docs/RESULTS.md`` of the repository).
        command: the command line written into the records and the page.
        only: run (or load) only these presets of the table, e.g. to train its rows in parallel
            processes into the same ``out``; the table then holds just those rows.
        device: where the runs train and evaluate (see :func:`run_experiment`).
    """
    if table not in TABLES:
        raise MetalabError(f"unknown table {table!r}; choose one of {sorted(TABLES)}")
    if page is not None and records_dir is None:
        raise MetalabError("a results page is rendered from result records: give a records folder with it")
    command = command or f"metalab reproduce {table}"
    rows = []
    names = TABLES[table]
    if only:
        unknown = sorted(set(only) - set(names))
        if unknown:
            raise MetalabError(f"table {table} has no preset {unknown}; its presets are {list(names)}")
        names = tuple(n for n in names if n in only)
    for number, name in enumerate(names, 1):
        cfg = preset_run(name, minutes, overrides)
        run_dir = out / name
        summary = _finished(run_dir, cfg)
        if summary is None:
            resume = (run_dir / "last.pt").exists() and _same(run_dir, cfg)
            if (run_dir / "last.pt").exists() and not resume:
                raise MetalabError(f"{run_dir} holds a run with other settings; remove it or pick another --out")
            log(f"[{number}/{len(names)}] {'continuing' if resume else 'training'} {name}")
            summary = run_experiment(cfg, run_dir, resume=resume, progress=progress, log=log, device=device)
        else:
            log(f"[{number}/{len(names)}] loaded {name} from {run_dir / 'results.json'}")
        paper = config.load_preset(name).get("paper")
        for test in summary["test"]:
            published = paper.get(str(test["steps"])) if isinstance(paper, dict) else paper
            rows.append((summary["algorithm"], setting_name(summary["benchmark"], test["steps"]), test,
                         published, summary["train_seconds"], summary["steps"], summary["benchmark"]["name"],
                         summary.get("commit")))
    lines = [f"# Reproduction: {table}", "",
             f"`metalab reproduce {table}`" + (f" with {minutes:g} minutes of training per method" if minutes else
                                                " at the presets' full length") + "; test episodes as in each preset.",
             "", "| method | setting | test ± 95% CI | paper | train time | steps |", "|---|---|---|---|---|---|"]
    for method, setting, test, published, seconds, steps, _, _ in rows:
        metric = test["metric"]
        lines.append(f"| {method} | {setting} | {_format(metric, test['mean'])} ± {_format(metric, test['ci95'])} | "
                     f"{_format(metric, published)} | {seconds / 60:.1f} min | {steps} |")
    path = atomic_write_text(out / f"{table}.md", "\n".join(lines) + "\n")
    log(path.read_text())
    if records_dir is not None:
        budget = {} if minutes is None else {"budget": f"{minutes:g}min"}
        written = results.append_by_benchmark(
            [results.record(bench, method, setting, test["metric"], test["mean"], test["ci95"], published, seconds,
                            steps, command, source_commit=source, test_episodes=test["episodes"], **budget)
             for method, setting, test, published, seconds, steps, bench, source in rows], records_dir)
        log("records: " + ", ".join(map(str, written)))
        if page is not None:
            log(f"results page: {results.write_page(records_dir, page, command)}")
    return path


def _same(run_dir: Path, cfg: dict[str, Any]) -> bool:
    try:
        stored = json.loads((run_dir / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return all(stored.get(k) == cfg[k] for k in SETTINGS)


def _finished(run_dir: Path, cfg: dict[str, Any]) -> dict[str, Any] | None:
    if not (run_dir / "results.json").exists() or not _same(run_dir, cfg):
        return None
    summary = json.loads((run_dir / "results.json").read_text(encoding="utf-8"))
    return summary if "steps" in summary else None

