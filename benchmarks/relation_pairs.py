"""Relation module on every (query, class) pair: metalab's split first convolution vs concatenated pairs.

    python benchmarks/relation_pairs.py --threads 1

Relation Networks (Sung et al. 2018) score each query against each class by running the
relation module ``g_phi`` on the depth-concatenation of their feature maps. The plain way
builds all ``m * n`` concatenated pairs ``(m * n, 2C, H, W)`` and runs the module on them
(``RelationModule.forward``). metalab's ``RelationModule.pairwise`` uses that the first
convolution is linear in its input channels: it convolves the ``m`` queries and the ``n``
classes apart, with the two halves of the kernel, and adds the results pair by pair, so
``m + n`` convolutions of ``C`` channels replace ``m * n`` of ``2C``.

Per setting (n-way, queries per class), on random feature maps of the Omniglot shape
(64 x 7 x 7, what the relation net's encoder gives for 28x28 images): first both ways
compute the scores and their gradients (module parameters and both inputs) in float64 and
must agree to a relative error of 1e-10 (otherwise exit code 1, nothing timed); then one
warm-up and ``--reps`` timed iterations of forward + backward in float32, each way, and
the medians. Appends ``relation-pairs`` records: ``seconds_per_iter`` of
``relation_net`` (pairwise) and ``relation_net-concatenated``, and ``speedup``
(concatenated / pairwise, measured in the same run). A benchmark run by hand: nothing is
timed in the test suite.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parent))
import records  # noqa: E402

from metalab.algorithms.relation_net import RelationModule  # noqa: E402

CHANNELS, SIDE, HIDDEN = 64, 7, 8
MAX_REL_ERR_F64 = 1e-10


def concatenated(module: RelationModule, query: Tensor, classes: Tensor) -> Tensor:
    """The plain way: all (query, class) pairs concatenated in depth, then the module."""
    m, n = query.shape[0], classes.shape[0]
    pairs = torch.cat([query[:, None].expand(-1, n, -1, -1, -1), classes[None].expand(m, -1, -1, -1, -1)], dim=2)
    return module(pairs.flatten(0, 1)).view(m, n)


def pairwise(module: RelationModule, query: Tensor, classes: Tensor) -> Tensor:
    return module.pairwise(query, classes)


WAYS: dict[str, Callable[[RelationModule, Tensor, Tensor], Tensor]] = {
    "relation_net": pairwise, "relation_net-concatenated": concatenated}


def gradients(way, module: RelationModule, query: Tensor, classes: Tensor) -> tuple[Tensor, Tensor]:
    """Scores and the gradient of their weighted sum w.r.t. the module's parameters and both inputs, flattened."""
    query, classes = query.detach().requires_grad_(), classes.detach().requires_grad_()
    scores = way(module, query, classes)
    weights = torch.linspace(-1, 1, scores.numel(), dtype=scores.dtype).view_as(scores)
    inputs = [*module.parameters(), query, classes]
    grads = torch.autograd.grad((scores * weights).sum(), inputs)
    return scores.detach().flatten(), torch.cat([g.flatten() for g in grads])


def iteration(way, module: RelationModule, query: Tensor, classes: Tensor) -> float:
    query, classes = query.detach().requires_grad_(), classes.detach().requires_grad_()
    start = time.perf_counter()
    way(module, query, classes).sum().backward()
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--settings", default="5x19,20x10",
                   help="n-way x queries per class, comma-separated (default: 5x19,20x10)")
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--threads", type=int, default=1)
    records.add_results_flag(p)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    try:
        settings = [tuple(int(v) for v in s.split("x")) for s in args.settings.split(",")]
        if any(len(s) != 2 or min(s) < 1 for s in settings):
            raise ValueError
    except ValueError:
        p.error(f"--settings {args.settings!r}: give n-way x queries per class, e.g. 5x19,20x10")
    if args.reps < 1:
        p.error("--reps must be at least 1")

    rows = []
    for n_way, per_class in settings:
        m, setting = n_way * per_class, f"{n_way}w-{n_way * per_class}q"
        torch.manual_seed(0)
        module = RelationModule(CHANNELS, SIDE, HIDDEN).double().train()
        query, classes = torch.randn(m, CHANNELS, SIDE, SIDE).double(), torch.randn(n_way, CHANNELS, SIDE, SIDE).double()
        (ref_scores, ref_grads), (scores, grads) = (gradients(way, module, query, classes)
                                                    for way in (concatenated, pairwise))
        errors = [((a - b).norm() / b.norm()).item() for a, b in ((scores, ref_scores), (grads, ref_grads))]
        print(f"{setting}: float64 relative error, scores {errors[0]:.1e}, gradients {errors[1]:.1e}")
        if max(errors) > MAX_REL_ERR_F64:
            sys.exit(f"{setting}: pairwise and concatenated differ by {max(errors):.1e} > {MAX_REL_ERR_F64:.0e}; nothing timed")
        module, query, classes = module.float(), query.float(), classes.float()
        medians = {}
        for name, way in WAYS.items():
            iteration(way, module, query, classes)  # warm-up
            medians[name] = statistics.median(iteration(way, module, query, classes) for _ in range(args.reps))
        speedup = medians["relation_net-concatenated"] / medians["relation_net"]
        print(f"{setting} ({m} x {n_way} pairs): pairwise {medians['relation_net']:.4f} s, "
              f"concatenated {medians['relation_net-concatenated']:.4f} s, speedup {speedup:.2f}x")
        rows += [records.record("relation-pairs", name, setting, "seconds_per_iter", t, None, None, None, None,
                                threads=args.threads, reps=args.reps) for name, t in medians.items()]
        rows.append(records.record("relation-pairs", "relation_net", setting, "speedup", speedup, None, None, None,
                                   None, threads=args.threads, reps=args.reps))
    print("appended to", records.append("relation-pairs", rows, args.results_dir))


if __name__ == "__main__":
    main()
