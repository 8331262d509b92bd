"""Float32 precision of batch normalisation by memory layout and implementation, on Omniglot activations.

    python benchmarks/bn_precision.py --data-dir ../shared/data/omniglot --cache-dir /tmp/mlcache

Why the channels-last MAML step's float32 meta-gradient is far from float64 (throughput
records, `grad_rel_err_float32`) while the channels-first one is not: the first conv4 block's
pre-norm activations of real 5-way 1-shot support sets (5 images; flat background plus
strokes), batch-normalised with batch statistics in float32 by (a) `F.batch_norm` on a
channels-first tensor, (b) `F.batch_norm` on a channels-last tensor, (c) (b) after
subtracting the detached per-channel mean (batch norm does not change under that shift),
(d) `torch.var_mean` and element-wise arithmetic on the channels-last tensor (what metalab's
batch norm did for channels-last inputs after this measurement, and does under vmap), (e)
metalab's `batch_statistics_norm` on the channels-last tensor (two column means of its
`(N*H*W, C)` matrix view, since commit 762f221); each against float64. Also times forward+backward of each on a
(75, 64, 14, 14) channels-last activation (a 5-way query set). Appends `numerics` records:
setting `<implementation>`, metrics `bn_rel_err_float32` (median over `--episodes` support
sets) and `bn_ms_fwd_bwd`.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import records  # noqa: E402

from metalab import BenchmarkConfig, build, make_benchmark  # noqa: E402
from metalab.nn.batchnorm import batch_statistics_norm  # noqa: E402


def native(x, g, b):
    return F.batch_norm(x, None, None, g, b, True)


def centred(x, g, b):
    return F.batch_norm(x - x.detach().mean(dim=(0, 2, 3), keepdim=True), None, None, g, b, True)


def basic_ops(x, g, b, eps=1e-5):
    var, mean = torch.var_mean(x, dim=(0, 2, 3), correction=0, keepdim=True)
    return (x - mean) * (torch.rsqrt(var + eps) * g.view(1, -1, 1, 1)) + b.view(1, -1, 1, 1)


IMPLEMENTATIONS = {  # name: (function, layout)
    "native-channels-first": (native, torch.contiguous_format),
    "native-channels-last": (native, torch.channels_last),
    "centred-channels-last": (centred, torch.channels_last),
    "var-mean-channels-last": (basic_ops, torch.channels_last),
    "two-pass-channels-last": (functools.partial(batch_statistics_norm, eps=1e-5), torch.channels_last),
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default="../shared/data/omniglot")
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--episodes", type=int, default=20)
    p.add_argument("--reps", type=int, default=30)
    records.add_results_flag(p)
    args = p.parse_args()
    torch.set_num_threads(1)
    bench = make_benchmark(BenchmarkConfig("omniglot", data_dir=args.data_dir, cache_dir=args.cache_dir, n_way=5,
                                           k_shot=1, train_n_way=5, train_k_shot=1, train_n_query=15))
    torch.manual_seed(0)
    conv = build("maml", bench.spec).model.body[1].conv.double()  # the first block's convolution, PyTorch's init
    gamma, beta = torch.rand(64, dtype=torch.float64) + 0.5, 0.1 * torch.randn(64, dtype=torch.float64)
    errors: dict[str, list[float]] = {name: [] for name in IMPLEMENTATIONS}
    for index in range(args.episodes):
        with torch.no_grad():
            h = conv(bench.train.episode(index).support_x.double())  # (5, 64, 28, 28) pre-norm activations
            exact = native(h, gamma, beta)
            for name, (fn, layout) in IMPLEMENTATIONS.items():
                got = fn(h.float().contiguous(memory_format=layout), gamma.float(), beta.float())
                errors[name].append(((got.double() - exact).norm() / exact.norm()).item())
    x = torch.randn(75, 64, 14, 14)
    g32, b32 = gamma.float().requires_grad_(), beta.float().requires_grad_()
    rows = []
    for name, (fn, layout) in IMPLEMENTATIONS.items():
        xl = x.contiguous(memory_format=layout).requires_grad_()
        for _ in range(3):
            fn(xl, g32, b32).sum().backward()
        start = time.perf_counter()
        for _ in range(args.reps):
            fn(xl, g32, b32).sum().backward()
        ms = (time.perf_counter() - start) / args.reps * 1000
        err = statistics.median(errors[name])
        print(f"{name:24s} float32 rel. error {err:.1e}   forward+backward {ms:.2f} ms", flush=True)
        extra = {"setting_detail": "first conv4 block, Omniglot 5w1s support sets; timing (75, 64, 14, 14)"}
        rows += [records.record("numerics", "batch_norm", name, "bn_rel_err_float32", err, None, None, None, None,
                                episodes=args.episodes, **extra),
                 records.record("numerics", "batch_norm", name, "bn_ms_fwd_bwd", ms, None, None, None, None,
                                reps=args.reps, **extra)]
    print(records.append("numerics", rows, args.results_dir))


if __name__ == "__main__":
    main()
