"""Learning curves: validation metric (± 95% CI) against training wall time, several runs on one figure.

    python benchmarks/plot_curves.py runs/bench-omniglot-maml runs/bench-omniglot-anil \
        --out docs/omniglot_5w1s_curves.png --title "Omniglot 5-way 1-shot"

Reads each run folder's ``metrics.jsonl`` (written by the trainer) and labels the curve
with the folder name. Needs matplotlib (``pip install -e ".[plot]"``).
"""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

from metalab.utils.io import atomic_write_bytes


def validation_curve(run: Path) -> tuple[str, list[float], list[float], list[float]]:
    """``(metric, minutes, means, ci95s)`` of the validation records of one run folder."""
    path = run / "metrics.jsonl"
    if not path.exists():
        raise SystemExit(f"error: {path} does not exist; pass run folders written by the trainer")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    val = [r for r in rows if any(k.startswith("val_") for k in r)]
    if not val:
        raise SystemExit(f"error: {path} has no validation records")
    metric = next(k for k in val[0] if k.startswith("val_") and not k.endswith("_ci95"))
    return (metric[4:], [r["seconds"] / 60 for r in val], [r[metric] for r in val],
            [r[f"{metric}_ci95"] for r in val])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--out", required=True, type=Path, help="PNG file")
    p.add_argument("--title", default="")
    args = p.parse_args()
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SystemExit("error: plotting needs matplotlib: pip install matplotlib") from None
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=150)
    metric = ""
    for run in args.runs:
        metric, minutes, means, cis = validation_curve(run)
        ax.plot(minutes, means, marker="o", markersize=3, label=run.name)
        ax.fill_between(minutes, [m - c for m, c in zip(means, cis)], [m + c for m, c in zip(means, cis)], alpha=0.2)
    ax.set_xlabel("training time (minutes)")
    ax.set_ylabel(f"validation {metric} (± 95% CI)")
    ax.set_title(args.title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    print(atomic_write_bytes(args.out, buffer.getvalue()))


if __name__ == "__main__":
    main()
