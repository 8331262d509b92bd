"""Learning curves for the docs: ``metalab plot --kind curves`` with the benchmark runs' folders.

    python benchmarks/plot_curves.py runs/bench-omniglot-maml runs/bench-omniglot-anil \
        --out docs/omniglot_5w1s_gradient_curves.png --title "Omniglot 5-way 1-shot"

Validation accuracy (± 95% CI) against meta-iteration and against training wall time, read
from each run folder's ``metrics.jsonl``. Needs matplotlib (``pip install -e ".[plot]"``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from metalab.plot import plot_curves


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--out", required=True, type=Path, help="PNG file")
    p.add_argument("--title", default="")
    args = p.parse_args()
    print(plot_curves(args.runs, args.out, args.title))


if __name__ == "__main__":
    main()
