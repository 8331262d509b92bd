"""Santoro et al.'s instance accuracy on Omniglot: accuracy at the k-th presentation of a class.

    python benchmarks/mann_instance.py --method mann --classes 5 --data-dir ../shared/data/omniglot
    python benchmarks/mann_instance.py --method lstm --classes 5 --data-dir ../shared/data/omniglot
    python benchmarks/mann_instance.py --method mann --classes 15 --label-length 5   # the paper's 15-class episodes

The protocol of Santoro et al. (2016, "One-shot Learning with Memory-Augmented Neural
Networks", ICML, Tables 1 and 2, Fig. 2): meta-trains the method (``mann`` or its ``lstm``
baseline) on ``omniglot-online`` (Vinyals split, 20x20 images; an episode presents
--classes classes x --instances drawings each in random order, with labels shown one step
late) with RMSprop (lr 1e-4, meta-batches of 16 episodes), selecting the checkpoint by
validation accuracy over all steps of the fixed validation episodes (172 validation
characters). Then evaluates the best checkpoint on 1000 fixed test episodes of the 423 test
characters (with rotations): the accuracy at the 1st, 2nd, 3rd, 4th, 5th and 10th
presentation of a class, mean ± 95% CI over episodes. Appends one record per presentation to
<--results-dir>/mann-instance.jsonl with the training time and steps actually used (setting
``<classes>class-instance<k>``; with string labels ``<classes>class-string<L>x<A>-instance<k>``),
next to the published value where the paper has the setting (5 classes one-hot, Table 1; 15 classes
with 5-character labels over 5 symbols, Table 2).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import records  # noqa: E402
from omniglot import add_run_flags, train_or_load  # noqa: E402

from metalab import BenchmarkConfig, EpisodeBatch, TrainConfig, build, load_checkpoint, make_benchmark  # noqa: E402
from metalab.data.sampler import TaskSource  # noqa: E402
from metalab.data.sequences import presentation_numbers  # noqa: E402
from metalab.config import parse_assignments  # noqa: E402
from metalab.utils import derive_seed  # noqa: E402
from metalab.utils.stats import mean_ci95  # noqa: E402

INSTANCES = (1, 2, 3, 4, 5, 10)
ORDINAL = {1: "1st", 2: "2nd", 3: "3rd"}
# Santoro et al. 2016, accuracy at instances 1, 2, 3, 4, 5, 10, keyed by (method, setting prefix of the records):
# Table 1, one-hot labels, 5 classes per episode; Table 2, five-character string labels over five symbols, 15 classes
# (MANN with LRUA and an LSTM controller; the LSTM baseline). Other settings (15-class one-hot) have no paper value.
PAPER = {
    ("mann", "5class-"): (0.364, 0.828, 0.910, 0.926, 0.949, 0.981),
    ("lstm", "5class-"): (0.244, 0.495, 0.553, 0.610, 0.636, 0.625),
    ("mann", "15class-string5x5-"): (0.001, 0.626, 0.793, 0.866, 0.887, 0.953),
    ("lstm", "15class-string5x5-"): (0.000, 0.022, 0.029, 0.043, 0.056, 0.127),
}


def instance_accuracy(algorithm, source: TaskSource, episodes: int, instances: tuple[int, ...],
                      batch_size: int = 50) -> dict[int, tuple[float, float]]:
    """Mean ± 95% CI over episodes ``0..episodes-1`` of the accuracy at each presentation number."""
    algorithm.eval()
    per_episode: dict[int, list[float]] = {k: [] for k in instances}
    with torch.no_grad():
        for start in range(0, episodes, batch_size):
            batch = EpisodeBatch.stack([source.episode(i) for i in range(start, min(start + batch_size, episodes))])
            correct = (algorithm.predictions(algorithm.sequence_logits(batch)) == batch.query_y).float()  # (B, T)
            shown = presentation_numbers(batch.query_y)
            for k in instances:
                at_k = (shown == k).float()  # every class once per episode
                per_episode[k] += ((correct * at_k).sum(1) / at_k.sum(1)).tolist()
    return {k: mean_ci95(v) for k, v in per_episode.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--method", default="mann", choices=("mann", "lstm"))
    p.add_argument("--data-dir", default="../shared/data/omniglot")
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--split", default="vinyals",
                   help="Omniglot split: vinyals (default), vinyals-trainval, lake or random (characters split at "
                        "random whatever their alphabet, 1100 / 100 / 423: give the run a --label); recorded")
    p.add_argument("--classes", type=int, default=5, help="classes per episode (the paper: 5 or 15)")
    p.add_argument("--instances", type=int, default=10, help="presentations of each class per episode")
    p.add_argument("--jitter-degrees", type=float, default=0.0,
                   help="rotate each training image by a random angle within this many degrees (default: none)")
    p.add_argument("--jitter-pixels", type=float, default=0.0,
                   help="shift each training image by up to this many pixels per axis (default: none)")
    p.add_argument("--label-length", type=int, default=1,
                   help="1: one-hot labels; L > 1: each class gets a random string of L characters per episode "
                        "(the paper's 15-class episodes: 5)")
    p.add_argument("--label-alphabet", type=int, default=5, help="symbols per character of string labels")
    p.add_argument("--steps", type=int, default=100000)
    p.add_argument("--meta-batch-size", type=int, default=16)
    p.add_argument("--outer-lr", type=float, default=1e-4, help="RMSprop learning rate (the paper: 1e-4)")
    p.add_argument("--lr-decay-every", type=int, default=0,
                   help="multiply the learning rate by --lr-decay every this many steps (default 0: constant, "
                        "as in the paper)")
    p.add_argument("--lr-decay", type=float, default=0.5)
    p.add_argument("--grad-clip", type=float, default=None, help="clip the meta-gradient norm (default: no clipping)")
    p.add_argument("--max-minutes", type=float, default=None, help="training-time budget (stops early)")
    p.add_argument("--val-every", type=int, default=1000)
    p.add_argument("--val-episodes", type=int, default=100)
    p.add_argument("--test-episodes", type=int, default=1000)
    p.add_argument("--hparams", default="", help="method hyper-parameters, e.g. controller_size=200,read_heads=4")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=None, help="run folder (default runs/bench-mann-<method>-<classes>class)")
    p.add_argument("--init-from", type=Path, default=None,
                   help="start from the weights of another run's checkpoint (e.g. RUN/best.pt, same method and "
                        "hyper-parameters) instead of a fresh initialisation: fine-tuning, e.g. at a lower --outer-lr; "
                        "the records then count only this run's steps and time")
    p.add_argument("--label", default=None,
                   help="label of a variant's records (e.g. 'key strength' with --hparams key_strength=True), shown "
                        "beside the setting, so they do not replace the default model's records")
    records.add_results_flag(p)
    add_run_flags(p)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out or f"runs/bench-mann-{args.method}-{args.classes}class")
    hparams = parse_assignments(args.hparams)
    instances = tuple(k for k in INSTANCES if k <= args.instances)

    bench = make_benchmark(BenchmarkConfig("omniglot-online", data_dir=args.data_dir, cache_dir=args.cache_dir,
                                           split=args.split, n_way=args.classes, n_query=args.instances,
                                           seed=derive_seed(args.seed, 1), jitter_degrees=args.jitter_degrees,
                                           jitter_pixels=args.jitter_pixels, label_length=args.label_length,
                                           label_alphabet=args.label_alphabet))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(args.seed, 0))
        algo = build(args.method, bench.spec, **hparams)
    if args.init_from is not None and not args.resume:
        if not args.init_from.is_file():
            p.error(f"--init-from {args.init_from}: no such checkpoint (give a run's best.pt or last.pt)")
        start, _ = load_checkpoint(args.init_from)
        if type(start) is not type(algo) or start.config != algo.config or start.spec != algo.spec:
            p.error(f"--init-from {args.init_from} holds a {start.name} model with other settings or episodes than "
                    f"this {args.method} run's ({start.config} vs {algo.config}); pass the same --hparams, "
                    "--classes and label flags")
        algo.load_state_dict(start.state_dict())
    cfg = TrainConfig(steps=args.steps, meta_batch_size=args.meta_batch_size, outer_lr=args.outer_lr,
                      val_every=args.val_every, val_episodes=args.val_episodes, log_every=50,
                      lr_decay_every=args.lr_decay_every, lr_decay=args.lr_decay, grad_clip=args.grad_clip,
                      seed=args.seed,
                      max_seconds=None if args.max_minutes is None else 60 * args.max_minutes)
    result = train_or_load(p, args, out, algo, bench, cfg)
    print(f"trained {args.method}: {result.steps} steps, {result.seconds:.0f} s, best {result.best}", flush=True)
    best, _ = load_checkpoint(out / "best.pt")
    accuracy = instance_accuracy(best, bench.test, args.test_episodes, instances)
    val_curve = records.val_curve(out)  # accuracy over all steps of the validation episodes

    code = bench.spec.labels  # None: one-hot labels
    setting = f"{args.classes}class-" + (f"string{code.length}x{code.alphabet}-" if code else "")
    paper = PAPER.get((args.method, setting))
    print(f"{args.method}, {args.classes} classes, {args.test_episodes} test episodes: accuracy (%) by presentation")
    print("instance " + " ".join(f"{ORDINAL.get(k, f'{k}th'):>13}" for k in instances))
    print("measured " + " ".join(f"{100 * m:6.1f} ± {100 * c:4.1f}" for m, c in accuracy.values()))
    if paper:
        print("paper    " + " ".join(f"{100 * paper[INSTANCES.index(k)]:13.1f}" for k in instances))
    # a class's first presentation can only be guessed: no learner beats guessing among the labels not yet shown
    ceiling = best.code.first_presentation_ceiling(args.classes)  # the model's label code (one-hot: LabelCode(1, n))
    print(f"the 1st instance's ceiling (guessing among the labels not yet shown): {100 * ceiling:.3f}%")
    rows = [records.record(
        "mann-instance", args.method, f"{setting}instance{k}", "accuracy", mean, ci,
        paper and paper[INSTANCES.index(k)], result.seconds, result.steps, test_episodes=args.test_episodes,
        train_episodes=f"{args.classes} classes x {args.instances} instances x {args.meta_batch_size} per step",
        train_episodes_seen=result.steps * args.meta_batch_size, best_val_step=result.best and result.best["step"],
        val_curve=val_curve, val_setting=f"{setting}all-steps",
        **({"train_jitter": f"+-{args.jitter_degrees} degrees, +-{args.jitter_pixels} px"}
           if args.jitter_degrees or args.jitter_pixels else {}),
        **({"lr_schedule": f"{args.outer_lr:g}, x{args.lr_decay:g} every {args.lr_decay_every} steps"}
           if args.lr_decay_every else {}),
        **({"init_from": str(args.init_from)} if args.init_from else {}),
        **({"split": args.split} if args.split != "vinyals" else {}),
        **({"ceiling": ceiling} if k == 1 else {}),
        **({"budget": args.label} if args.label else {}))
        for k, (mean, ci) in accuracy.items()]
    print(records.append("mann-instance", rows, args.results_dir))


if __name__ == "__main__":
    main()
