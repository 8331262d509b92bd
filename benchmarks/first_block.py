"""Seconds per training step of every Conv4 method: first block in closed form or as written, and the layout.

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

Per preset: the algorithm is built (metalab's default Conv4 layout: channels-last with
max-pooling, channels-first when strided; before 2026-12-06 always channels-first), a twin is
deep-copied with ``allow_closed_form = False`` on every ``ConvBlock`` (the block as written:
``F.conv2d``, batch norm, pool, ReLU, same layout; the switch also turns off batch norm behind
the pool in the later channels-last blocks, ``ConvBlock.norm_behind_pool``, so records from the
commit that added it on measure both together), and a third copy is laid out the other way
(``metalab.nn.backbones.use_channels_last``; closed-form first block). First all three compute
the meta-gradient of the same batch in float64; if the others differ from the block as written
by more than 1e-8 (relative norm, all parameters; Reptile's many inner Adam steps carry the two
layouts' different summation orders to 1.7e-9) the script exits with code 1 and times nothing.
Then one warm-up step each and ``--reps`` timed steps, alternating them; medians are reported.

Appends ``throughput`` records (``--results-dir``): setting = the preset name, method
``<algorithm>-first-block-closed-form``, ``<algorithm>-first-block-as-written`` and
``<algorithm>-first-block-closed-form-channels-first`` or ``-channels-last`` (the layout the
default does not use), metric ``seconds_per_iter``; for the closed form also ``speedup`` (as
written / closed form) and ``speedup_over_other_layout`` (other layout / closed form). Records
before 2026-12-06 have no other-layout variant and their closed form and as written are
channels-first.
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
from metalab.nn.backbones import ConvBlock, allow_closed_form, use_channels_last  # noqa: E402

PRESETS = ["maml-omniglot-5w1s", "anil-omniglot-5w1s", "meta_sgd-omniglot-5w1s", "reptile-omniglot-5w1s",
           "protonet-omniglot-5w1s", "matching_net-omniglot-5w1s", "relation_net-omniglot-5w1s",
           "siamese-omniglot-5w1s"]
MAX_REL_ERR_F64 = 1e-8


def variants(preset: dict, spec: metalab.TaskSpec, dtype: torch.dtype) -> dict[str, metalab.MetaAlgorithm]:
    """The preset's algorithm (closed-form first block, default layout), a copy with the block as
    written and a copy laid out the other way (named by its layout), same weights."""
    torch.manual_seed(0)
    algo = metalab.build(preset["algorithm"], spec, **preset.get("hparams", {})).to(dtype).train()
    other = copy.deepcopy(algo)
    to_channels_last = not next(m for m in algo.modules() if isinstance(m, ConvBlock)).channels_last
    use_channels_last(other, to_channels_last)
    layout = "channels-last" if to_channels_last else "channels-first"
    return {"closed-form": algo, "as-written": as_written(algo), f"closed-form-{layout}": other}


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

    out, table = [], ["| preset | first block pools | closed form s/step | as written s/step | speed-up "
                      "| other layout | its s/step | default layout's speed-up |", "|---|---|---|---|---|---|---|---|"]
    for name in names:
        preset = load_preset(name)
        bench = metalab.make_benchmark(metalab.BenchmarkConfig(
            **{**preset["benchmark"], "data_dir": args.data_dir, "cache_dir": args.cache_dir}))
        batch = bench.train.batch(0, preset.get("train", {}).get("meta_batch_size", 1))

        grads = {v: meta_gradient(algo, batch.to(torch.float64))
                 for v, algo in variants(preset, bench.spec, torch.float64).items()}
        written = grads["as-written"]
        errors = {v: ((g - written).norm() / written.norm()).item() for v, g in grads.items() if v != "as-written"}
        bad = {v: e for v, e in errors.items() if not e <= MAX_REL_ERR_F64}
        if bad:
            sys.exit(f"refusing to time {name}: in float64 the meta-gradient of {bad} differs from the block as "
                     f"written by more than {MAX_REL_ERR_F64:g}")
        err = max(errors.values())

        timed = variants(preset, bench.spec, torch.float32)
        pools = next(m for m in timed["closed-form"].modules() if isinstance(m, ConvBlock)).pool
        times: dict[str, list[float]] = {v: [] for v in timed}
        for algo in timed.values():  # warm-up
            meta_gradient(algo, batch)
        for _ in range(args.reps):
            for variant, algo in timed.items():
                start = time.perf_counter()
                meta_gradient(algo, batch)
                times[variant].append(time.perf_counter() - start)
        other_name = list(timed)[2]
        closed, plain, other = (statistics.median(t) for t in times.values())
        table.append(f"| {name} | {'yes' if pools else 'no (strided)'} | {closed:.3f} | {plain:.3f} | "
                     f"{plain / closed:.2f} | {other_name.removeprefix('closed-form-')} | {other:.3f} | "
                     f"{other / closed:.2f} |")
        print(table[-1], f"(float64 meta-gradients agree to {err:.1e})", flush=True)
        config = {"preset": name, "reps": args.reps, "threads": torch.get_num_threads(),
                  "rel_err_float64": err, "first_block_pools": pools, **preset["benchmark"],
                  **preset.get("train", {})}
        algorithm = preset["algorithm"]
        metrics = {"closed-form": {"seconds_per_iter": closed, "speedup": plain / closed,
                                   "speedup_over_other_layout": other / closed},
                   "as-written": {"seconds_per_iter": plain},
                   other_name: {"seconds_per_iter": other}}
        out += [records.record("throughput", f"{algorithm}-first-block-{variant}", name, metric, value,
                               None, None, None, None, config=config)
                for variant, values in metrics.items() for metric, value in values.items()]
    records.finish("throughput", table, out, args)


if __name__ == "__main__":
    main()
