"""Seconds per meta-iteration of MAML with the tasks in a loop, under torch.func.vmap, or batched.

    python benchmarks/task_modes.py [--device cuda]

Settings: sinusoid (1-40-40-1 MLP, meta-batch 25, 5-shot, 10 query points) and Omniglot-
shaped conv4 (28x28, 5-way 1-shot, 15 queries per class, meta-batch 8), second order, one
inner step. One iteration is ``algo.meta_gradient(batch)``, what the trainer calls. The
fastest mode per learner is metalab's default (`task_mode="auto"`, measured on the CPU; with
`--device cuda` the settings are named `<setting>-cuda`, to choose the GPU's default).
Appends `throughput` records (metric `seconds_per_iter`) to results/throughput.jsonl.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import records  # noqa: E402

from metalab import ClassDataset, EpisodeSampler, SinusoidTasks, TaskSpec, build  # noqa: E402
from metalab.engine.distributed import resolve_device  # noqa: E402


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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    records.add_results_flag(p)
    args = p.parse_args()
    device = resolve_device(args.device)
    suffix = "" if device.type == "cpu" else f"-{device.type}"
    torch.set_num_threads(args.threads)
    images = torch.rand(50, 20, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    omniglot_like = ClassDataset(images, tuple(range(50)), tuple(map(str, range(50))))
    cases = {
        "sinusoid-mlp-mb25": (TaskSpec((1,), 1, False), SinusoidTasks(5, 10).batch(0, 25), 0.01, args.iters * 10),
        "conv4-5w1s-mb8": (TaskSpec((1, 28, 28), 5, True), EpisodeSampler(omniglot_like, 5, 1, 15).batch(0, 8), 0.4, args.iters),
    }
    rows = []
    for setting, (spec, batch, lr, iters) in cases.items():
        for mode in ("loop", "vmap", "batched"):
            torch.manual_seed(0)
            algo = build("maml", spec, inner_lr=lr, task_mode=mode).to(device)
            sec = seconds_per_iter(algo, algo.on_device(batch), iters)
            print(f"{setting}{suffix} {mode}: {sec * 1000:.1f} ms/iter", flush=True)
            rows.append(records.record("throughput", f"maml-{mode}", setting + suffix, "seconds_per_iter", sec, None,
                                       None, None, None, iterations=iters))
    print(records.append("throughput", rows, args.results_dir))


if __name__ == "__main__":
    main()
