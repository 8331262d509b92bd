"""Seconds per meta-iteration of gradient-based methods with the tasks in a loop, under torch.func.vmap, or batched.

    python benchmarks/task_modes.py [--device cuda]
    python benchmarks/task_modes.py --methods anil --modes loop,batched --settings conv4-5w1s-mb8,conv4-5w5s-mb8 \
        --threads 1 [--channels-first] [--downsample pool,stride]

Settings: sinusoid (1-40-40-1 MLP, meta-batch 25, 5-shot, 10 query points) and Omniglot-
shaped conv4 (28x28, 5-way 1-shot or 5-shot, 15 queries per class, meta-batch 8, or 32 as
in the MAML presets), second
order, one inner step. One iteration is ``algo.meta_gradient(batch)``, what the trainer
calls. The fastest mode per learner is metalab's default (`task_mode="auto"`, measured on the
CPU; with `--device cuda` the settings are named `<setting>-cuda`, to choose the GPU's
default). `--downsample stride` builds conv4 with stride-2 convolutions instead of max-pooling
(the papers' Omniglot model, see metalab.nn.Conv4). Conv4 is channels-last (metalab's default
since 2026-12-06) unless `--channels-first`. Appends `throughput` records (method
`<method>-<mode>[-channels-last|-channels-first][-strided]`, metric `seconds_per_iter`) to
results/throughput*.jsonl; conv4 records with no layout suffix are from before 2026-12-06, when
the default, and so the unsuffixed layout, was channels-first.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import records  # noqa: E402

from metalab import ClassDataset, EpisodeSampler, SinusoidTasks, TaskSpec, build  # noqa: E402
from metalab.engine.distributed import resolve_device  # noqa: E402
from metalab.utils.errors import MetalabError  # noqa: E402


def seconds_per_iter(algo, batch, iters: int) -> float:
    def synchronize() -> None:  # GPU work is asynchronous: time it to its end
        if algo.device.type == "cuda":
            torch.cuda.synchronize(algo.device)

    for _ in range(2):  # warm-up
        algo.meta_gradient(batch)
    synchronize()
    start = time.perf_counter()
    for _ in range(iters):
        algo.zero_grad(set_to_none=True)
        algo.meta_gradient(batch)
    synchronize()
    return (time.perf_counter() - start) / iters


def _omniglot_like(k_shot: int, meta_batch: int):
    images = torch.rand(50, 20, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    data = ClassDataset(images, tuple(range(50)), tuple(map(str, range(50))))
    return TaskSpec((1, 28, 28), 5, True), EpisodeSampler(data, 5, k_shot, 15).batch(0, meta_batch), 0.4, 1


# setting -> (spec, batch, inner lr, iterations per --iters)
SETTINGS = {
    "sinusoid-mlp-mb25": lambda: (TaskSpec((1,), 1, False), SinusoidTasks(5, 10).batch(0, 25), 0.01, 10),
    "conv4-5w1s-mb8": lambda: _omniglot_like(1, 8),
    "conv4-5w5s-mb8": lambda: _omniglot_like(5, 8),
    "conv4-5w1s-mb32": lambda: _omniglot_like(1, 32),  # the MAML presets' meta-batch
    "conv4-5w5s-mb32": lambda: _omniglot_like(5, 32),
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--methods", default="maml", help="comma-separated gradient-based methods (default maml)")
    p.add_argument("--modes", default="loop,vmap,batched", help="comma-separated task modes")
    p.add_argument("--settings", default="sinusoid-mlp-mb25,conv4-5w1s-mb8",
                   help=f"comma-separated, of {', '.join(SETTINGS)}")
    layout = p.add_mutually_exclusive_group()
    layout.add_argument("--channels-last", dest="channels_last", action="store_true", default=True,
                        help="build conv4 channels-last (the default)")
    layout.add_argument("--channels-first", dest="channels_last", action="store_false",
                        help="build conv4 channels-first")
    p.add_argument("--downsample", default="pool",
                   help="comma-separated conv4 downsampling modes to time: pool (max-pool), stride (stride-2 convs)")
    records.add_results_flag(p)
    args = p.parse_args()
    settings = args.settings.split(",")
    unknown = [s for s in settings if s not in SETTINGS]
    if unknown:
        p.error(f"unknown --settings {', '.join(unknown)}; choose from {', '.join(SETTINGS)}")
    device = resolve_device(args.device)
    suffix = "" if device.type == "cpu" else f"-{device.type}"
    torch.set_num_threads(args.threads)
    rows = []
    for setting in settings:
        spec, batch, lr, scale = SETTINGS[setting]()
        conv = len(spec.input_shape) == 3
        layout = {"channels_last": args.channels_last} if conv else {}
        for method, mode, downsample in itertools.product(args.methods.split(","), args.modes.split(","),
                                                          args.downsample.split(",") if conv else ["pool"]):
            torch.manual_seed(0)
            try:
                algo = build(method, spec, inner_lr=lr, task_mode=mode, downsample=downsample, **layout).to(device)
            except MetalabError as err:  # nothing is recorded: the records are written at the end
                p.error(f"{method} with task_mode={mode}, downsample={downsample} on {setting}: {err}")
            iters = args.iters * scale
            sec = seconds_per_iter(algo, algo.on_device(batch), iters)
            label = (f"{method}-{mode}" + (("-channels-last" if args.channels_last else "-channels-first") if conv
                                            else "") + ("-strided" if downsample == "stride" else ""))
            print(f"{setting}{suffix} {label}: {sec * 1000:.1f} ms/iter", flush=True)
            rows.append(records.record("throughput", label, setting + suffix, "seconds_per_iter", sec, None,
                                       None, None, None, iterations=iters))
    print(records.append("throughput", rows, args.results_dir))


if __name__ == "__main__":
    main()
