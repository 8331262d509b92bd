"""Few-shot classification on Omniglot (Vinyals split): N-way K-shot accuracy ± 95% CI.

    python benchmarks/omniglot.py --method protonet --train-n-way 60 --train-k-shot 1 \
        --train-n-query 5 --steps 20000 --lr-decay-every 2000 --data-dir ../shared/data/omniglot

Meta-trains one model with the given training episodes (validation: 5-way episodes of the
172 validation characters, model selection by validation accuracy), then evaluates the
best checkpoint on 1000 fixed test episodes (15 queries per class) of the 423 test
characters with rotations, for every setting in --settings. Appends records to
<--results-dir>/omniglot.jsonl (default results/), with the training time and steps actually used.

The method is built from its configuration's defaults plus --hparams: for the gradient-based
methods that is the max-pooling conv4; the papers' code models are `--hparams
"...,downsample='stride',readout='mean'"` (MAML, FOMAML, ANIL, Meta-SGD) and
`"...,downsample='stride'"` (Reptile), as the presets and `metalab train` use on Omniglot.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import records  # noqa: E402

from metalab import BenchmarkConfig, TrainConfig, build, evaluate, load_checkpoint, make_benchmark, train  # noqa: E402
from metalab.engine.trainer import AUTOCAST_DTYPES, TrainResult  # noqa: E402
from metalab.config import parse_assignments  # noqa: E402
from metalab.nn.backbones import allow_closed_form, use_channels_last  # noqa: E402
from metalab.utils import derive_seed  # noqa: E402

PAPER = {  # accuracy, Omniglot, as published
    "protonet": {"5w1s": 0.988, "5w5s": 0.997, "20w1s": 0.960, "20w5s": 0.989},  # Snell et al. 2017, Table 1
    "maml": {"5w1s": 0.987, "5w5s": 0.999, "20w1s": 0.958, "20w5s": 0.989},  # Finn et al. 2017, Table 1
    "fomaml": {"5w1s": 0.983, "5w5s": 0.992, "20w1s": 0.892, "20w5s": 0.967},  # Finn et al. 2017, Table 1
    "meta_sgd": {"5w1s": 0.9953, "5w5s": 0.9993, "20w1s": 0.9593, "20w5s": 0.9897},  # Li et al. 2017, Table 1
    # Nichol et al. 2018, Table 1, transductive (batch norm on the query set, as metalab does)
    "reptile": {"5w1s": 0.9768, "5w5s": 0.9948, "20w1s": 0.8943, "20w5s": 0.9712},
    "matching_net": {"5w1s": 0.981, "5w5s": 0.989, "20w1s": 0.938, "20w5s": 0.985},  # Vinyals et al. 2016, Table 1
    # Koch et al. 2015's network in the N-way protocol, as reported by Vinyals et al. 2016, Table 1
    "siamese": {"5w1s": 0.973, "5w5s": 0.984, "20w1s": 0.882, "20w5s": 0.970},
    "relation_net": {"5w1s": 0.996, "5w5s": 0.998, "20w1s": 0.976, "20w5s": 0.991},  # Sung et al. 2018, Table 1
}


# training episodes of the published runs, where the authors state them: the projected time of a run that
# long on this machine is its measured seconds per episode times this
PAPER_EPISODES = {
    "relation_net": 1_000_000,  # Sung et al.'s code release: --episode 1000000, one episode per step
    "maml": 60_000 * 32,  # Finn et al.'s README, Omniglot 5-way: 60000 iterations of 32 tasks
    "fomaml": 60_000 * 32,
}
ANY_WAY = {"protonet", "matching_net", "siamese", "relation_net"}  # no n_way-sized head: any setting from one model
# class features summed over the shots (Sung et al. 2018): a model is trained and evaluated with the same k_shot
SAME_SHOTS = {"relation_net"}


def parse_setting(text: str) -> tuple[int, int]:
    way, shot = text.rstrip("s").split("w")
    return int(way), int(shot)


def logged_result(out: Path) -> TrainResult:
    """The steps, training seconds and best validation of a run, as its metrics log recorded them."""
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    train_rows = [r for r in rows if "train_loss" in r]
    val_rows = [r for r in rows if "val_accuracy" in r]
    if not train_rows or not (out / "best.pt").exists():
        raise SystemExit(f"{out}: no training logged or no best.pt; train it first (drop --eval-only)")
    top = max(val_rows, key=lambda r: r["val_accuracy"], default=None)
    best = top and {"metric": "accuracy", "value": top["val_accuracy"], "ci95": top["val_accuracy_ci95"],
                    "step": top["step"]}
    return TrainResult(train_rows[-1]["step"], train_rows[-1]["seconds"], best, None)


def add_run_flags(p: argparse.ArgumentParser) -> None:
    """``--eval-only`` and ``--resume``: evaluate a run folder as it is, or train it on from its last.pt."""
    p.add_argument("--eval-only", action="store_true",
                   help="skip training: evaluate --out/best.pt of a finished or stopped run; the training steps and "
                        "time recorded are read from its metrics.jsonl")
    p.add_argument("--resume", action="store_true",
                   help="continue the stopped or finished run in --out from its last.pt (same flags; --max-minutes "
                        "and --steps count the whole run, the time before the stop included)")


def train_or_load(p: argparse.ArgumentParser, args: argparse.Namespace, out: Path, algo, bench,
                  cfg: TrainConfig) -> TrainResult:
    """Train (``--resume``: on from ``out/last.pt``), or with ``--eval-only`` read what the run logged."""
    if args.resume and args.eval_only:
        p.error("--resume and --eval-only exclude each other: resume trains on, --eval-only only evaluates")
    if args.resume and not (out / "last.pt").is_file():
        p.error(f"--resume needs --out naming a run folder with last.pt; {str(out)!r} has none")
    if args.eval_only:
        return logged_result(out)
    return train(algo, bench, cfg, out, progress=sys.stderr.isatty(), resume=args.resume)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--method", default="protonet")
    p.add_argument("--data-dir", default="../shared/data/omniglot")
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--split", default="vinyals",
                   help="Omniglot split: vinyals (default), vinyals-trainval, lake or random (characters split at "
                        "random whatever their alphabet, 1100 / 100 / 423: the sizes of Finn et al.'s MAML code, whose "
                        "Omniglot numbers come from such a split); recorded, give the run a --budget-label")
    p.add_argument("--n-way", type=int, default=5, help="validation (and MAML head) ways")
    p.add_argument("--k-shot", type=int, default=1, help="validation shots")
    p.add_argument("--train-n-way", type=int, default=60)
    p.add_argument("--train-k-shot", type=int, default=1)
    p.add_argument("--train-n-query", type=int, default=5)
    p.add_argument("--steps", type=int, default=20000)
    p.add_argument("--meta-batch-size", type=int, default=1)
    p.add_argument("--outer-lr", type=float, default=1e-3)
    p.add_argument("--lr-decay-every", type=int, default=2000)
    p.add_argument("--grad-clip", type=float, default=None, help="clip the meta-gradient norm (Meta-LSTM: 0.25)")
    p.add_argument("--lr-anneal", action="store_true", help="anneal the outer rate linearly to 0 (Reptile)")
    p.add_argument("--max-minutes", type=float, default=None, help="training-time budget (stops early)")
    p.add_argument("--autocast", choices=sorted(AUTOCAST_DTYPES), default=None,
                   help="train under torch.autocast with this dtype (TrainConfig.autocast); evaluation runs as is")
    p.add_argument("--first-block", choices=["closed-form", "as-written"], default="closed-form",
                   help="Conv4's blocks as metalab computes them by default (the first in closed form, batch norm "
                        "behind the pool in the later channels-last ones), or as written "
                        "(metalab.nn.backbones.allow_closed_form; benchmarks/meta_gradient_precision.py)")
    p.add_argument("--layout", choices=["default", "channels-last", "channels-first"], default="default",
                   help="Conv4's memory layout: metalab's default (channels-last with max-pooling, channels-first "
                        "when strided) or forced (metalab.nn.backbones.use_channels_last), e.g. to compare them")
    p.add_argument("--val-every", type=int, default=500)
    p.add_argument("--val-episodes", type=int, default=200)
    p.add_argument("--settings", default="5w1s,5w5s,20w1s,20w5s")
    p.add_argument("--test-episodes", type=int, default=1000)
    p.add_argument("--hparams", default="", help="method hyper-parameters, e.g. inner_lr=0.4,inner_steps=1")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=None)
    p.add_argument("--budget-label", default=None,
                   help="label the records as a same-budget comparison run (e.g. '20 min') so they do not replace "
                        "the method's main result")
    add_run_flags(p)
    records.add_results_flag(p)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out or f"runs/bench-omniglot-{args.method}")
    hparams = parse_assignments(args.hparams)

    def config(n_way: int, k_shot: int) -> BenchmarkConfig:
        return BenchmarkConfig("omniglot", data_dir=args.data_dir, cache_dir=args.cache_dir, split=args.split, n_way=n_way,
                               k_shot=k_shot, train_n_way=args.train_n_way, train_k_shot=args.train_k_shot,
                               train_n_query=args.train_n_query, seed=derive_seed(args.seed, 1))

    bench = make_benchmark(config(args.n_way, args.k_shot))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(args.seed, 0))
        algo = build(args.method, bench.spec, **hparams)
    closed_form = args.first_block == "closed-form"

    def as_asked(model) -> None:  # the layout and first block are not part of a checkpoint
        allow_closed_form(model, closed_form)
        if args.layout != "default":
            use_channels_last(model, args.layout == "channels-last")

    as_asked(algo)
    cfg = TrainConfig(steps=args.steps, meta_batch_size=args.meta_batch_size, outer_lr=args.outer_lr,
                      lr_decay_every=0 if args.lr_anneal else args.lr_decay_every, lr_anneal=args.lr_anneal,
                      val_every=args.val_every, grad_clip=args.grad_clip,
                      val_episodes=args.val_episodes, log_every=50, seed=args.seed,
                      max_seconds=None if args.max_minutes is None else 60 * args.max_minutes,
                      autocast=args.autocast)
    result = train_or_load(p, args, out, algo, bench, cfg)
    print(f"trained {args.method}: {result.steps} steps, {result.seconds:.0f} s, best {result.best}", flush=True)
    best, _ = load_checkpoint(out / "best.pt")
    as_asked(best)
    # the validation curve travels with the records: the results page projects from it the time a run would need
    # to reach the published number
    val_curve = records.val_curve(out)
    rows = []
    for setting in args.settings.split(","):
        n_way, k_shot = parse_setting(setting)
        if n_way != bench.spec.output_dim and args.method not in ANY_WAY:
            print(f"skip {setting}: {args.method} has a {bench.spec.output_dim}-way head", flush=True)
            continue
        if k_shot != args.train_k_shot and args.method in SAME_SHOTS:
            print(f"skip {setting}: {args.method} is evaluated with the shots it was trained with "
                  f"({args.train_k_shot})", flush=True)
            continue
        ev = evaluate(best, make_benchmark(config(n_way, k_shot)).test, args.test_episodes)
        print(f"{setting}: {ev}", flush=True)
        rows.append(records.record(
            "omniglot", args.method, setting, "accuracy", ev.mean, ev.ci95, PAPER.get(args.method, {}).get(setting),
            result.seconds, result.steps, test_episodes=args.test_episodes,
            train_episodes=f"{args.train_n_way}-way {args.train_k_shot}-shot {args.train_n_query}-query "
                           f"x {args.meta_batch_size} per step", best_val_step=result.best and result.best["step"],
            train_episodes_seen=result.steps * args.meta_batch_size, paper_train_episodes=PAPER_EPISODES.get(args.method),
            val_curve=val_curve, val_setting=f"{args.n_way}w{args.k_shot}s",
            **({"autocast": args.autocast} if args.autocast else {}),
            **({} if closed_form else {"first_block": args.first_block}),
            **({} if args.layout == "default" else {"layout": args.layout}),
            **({} if args.split == "vinyals" else {"split": args.split}),
            **({"budget": args.budget_label} if args.budget_label else {})))
    print(records.append("omniglot", rows, args.results_dir))


if __name__ == "__main__":
    main()
