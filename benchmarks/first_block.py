"""Seconds per training step of every Conv4 method, with Conv4's first block in closed form and as written.

    python benchmarks/first_block.py --cache-dir /tmp/mlcache [--presets maml-omniglot-5w1s,...] [--threads 1]

Conv4's first block (conv 3x3 -> batch norm -> max-pool -> ReLU on 1-channel 28x28 images)
runs as ``metalab.nn.backbones.first_block``: batch statistics in closed form from the
patches, batch norm behind the max-pool, so that only the convolution's output and the
pool's gradient exist at full resolution. This script measures what that buys each method
that uses Conv4, with the training episodes of its preset (real Omniglot, the preset's
ways, shots, queries and meta-batch size, its hyper-parameters): one training step is
``algo.meta_gradient(batch)``, what the trainer calls (no optimiser step). The gradient-based
presets build the strided Conv4 of the MAML and Reptile code (no max-pool, so no closed form:
their rows measure that nothing changes); the max-pooling MAML step is timed by
``benchmarks/throughput.py``.

Per preset: the algorithm is built, a twin is deep-copied with ``allow_closed_form = False``
on every ``ConvBlock`` (the block as written: ``F.conv2d``, batch norm, pool, ReLU). First
both compute the meta-gradient of the same batch in float64; if they differ by more than
1e-9 (relative norm, all parameters) the script exits with code 1 and times nothing. Then
one warm-up step each and ``--reps`` timed steps, alternating the two; medians are reported.

Appends ``throughput`` records (``--results-dir``): setting = the preset name, method
``<algorithm>-first-block-closed-form`` and ``<algorithm>-first-block-as-written``, metric
``seconds_per_iter``, and ``speedup`` (as written / closed form) for the closed form.
This is a benchmark run by hand: nothing is timed in the test suite.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import records  # noqa: E402

import metalab  # noqa: E402
from metalab.config import load_preset  # noqa: E402
from metalab.nn.backbones import ConvBlock, allow_closed_form  # noqa: E402

PRESETS = ["maml-omniglot-5w1s", "anil-omniglot-5w1s", "meta_sgd-omniglot-5w1s", "reptile-omniglot-5w1s",
           "protonet-omniglot-5w1s", "matching_net-omniglot-5w1s", "relation_net-omniglot-5w1s",
           "siamese-omniglot-5w1s"]
MAX_REL_ERR_F64 = 1e-9


def twins(preset: dict, spec: metalab.TaskSpec, dtype: torch.dtype) -> tuple[metalab.MetaAlgorithm, ...]:
    """The preset's algorithm (closed-form first block) and a copy with the block as written, same weights."""
    torch.manual_seed(0)
    algo = metalab.build(preset["algorithm"], spec, **preset.get("hparams", {})).to(dtype).train()
    return algo, as_written(algo)


def as_written(algo: metalab.MetaAlgorithm) -> metalab.MetaAlgorithm:
    """A copy of ``algo`` (same weights) whose Conv4 blocks are computed as written; exits if it has none."""
    twin = copy.deepcopy(algo)
    if not allow_closed_form(twin, False):
        sys.exit(f"{type(algo).__name__} has no Conv4 block: nothing to compare")
    return twin


def meta_gradient(algo: metalab.MetaAlgorithm, batch: metalab.EpisodeBatch) -> torch.Tensor:
    algo.zero_grad(set_to_none=True)
    algo.meta_gradient(batch)
    return torch.cat([p.grad.reshape(-1) for p in algo.parameters() if p.grad is not None]).double()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--presets", default=",".join(PRESETS), help=f"comma-separated presets (default: {','.join(PRESETS)})")
    p.add_argument("--reps", type=int, default=5, help="timed steps per variant")
    records.add_timing_flags(p)
    args = p.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    names = args.presets.split(",")
    unknown = sorted(set(names) - set(metalab.config.preset_names()))
    if unknown:
        p.error(f"unknown presets {unknown}; `metalab list` shows them")
    if args.reps < 1:
        p.error(f"--reps must be at least 1, got {args.reps}")

    out, table = [], ["| preset | first block pools | closed form s/step | as written s/step | speed-up |",
                      "|---|---|---|---|---|"]
    for name in names:
        preset = load_preset(name)
        bench = metalab.make_benchmark(metalab.BenchmarkConfig(
            **{**preset["benchmark"], "data_dir": args.data_dir, "cache_dir": args.cache_dir}))
        batch = bench.train.batch(0, preset.get("train", {}).get("meta_batch_size", 1))

        exact, written = twins(preset, bench.spec, torch.float64)
        g_closed, g_written = meta_gradient(exact, batch.to(torch.float64)), meta_gradient(
            written, batch.to(torch.float64))
        err = ((g_closed - g_written).norm() / g_written.norm()).item()
        if not err <= MAX_REL_ERR_F64:
            sys.exit(f"refusing to time {name}: in float64 the closed-form first block's meta-gradient differs from "
                     f"the block as written by {err:.1e} (more than {MAX_REL_ERR_F64:g})")

        variants = dict(zip(("closed-form", "as-written"), twins(preset, bench.spec, torch.float32)))
        pools = next(m for m in variants["closed-form"].modules() if isinstance(m, ConvBlock)).pool
        times: dict[str, list[float]] = {v: [] for v in variants}
        for algo in variants.values():  # warm-up
            meta_gradient(algo, batch)
        for _ in range(args.reps):
            for variant, algo in variants.items():
                start = time.perf_counter()
                meta_gradient(algo, batch)
                times[variant].append(time.perf_counter() - start)
        closed, plain = (statistics.median(times[v]) for v in variants)
        table.append(f"| {name} | {'yes' if pools else 'no (strided)'} | {closed:.3f} | {plain:.3f} | "
                     f"{plain / closed:.2f} |")
        print(table[-1], f"(float64 meta-gradients agree to {err:.1e})", flush=True)
        config = {"preset": name, "reps": args.reps, "threads": torch.get_num_threads(),
                  "rel_err_float64": err, "first_block_pools": pools, **preset["benchmark"],
                  **preset.get("train", {})}
        algorithm = preset["algorithm"]
        metrics = {"closed-form": {"seconds_per_iter": closed, "speedup": plain / closed},
                   "as-written": {"seconds_per_iter": plain}}
        out += [records.record("throughput", f"{algorithm}-first-block-{variant}", name, metric, value,
                               None, None, None, None, config=config)
                for variant, values in metrics.items() for metric, value in values.items()]
    print("\n" + "\n".join(table))
    if not args.no_record:
        print(records.append("throughput", out, args.results_dir))


if __name__ == "__main__":
    main()
