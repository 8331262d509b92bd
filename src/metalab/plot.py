"""Figures of runs: learning curves, accuracy vs adaptation steps, accuracy vs shots (matplotlib, ``[plot]`` extra).

Everything is read from run folders as ``metalab train`` writes them: ``metrics.jsonl``
(validation mean ± 95% CI by step and wall time), ``config.json`` and ``results.json``
(test results per number of test-time adaptation steps). PNGs are written atomically.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from metalab.utils.errors import MetalabError
from metalab.utils.io import atomic_write_bytes


@dataclass(frozen=True)
class Curve:
    """The validation curve of one run: ``metric`` by ``steps`` and ``minutes``, with 95% CIs."""

    label: str
    metric: str
    steps: list[int]
    minutes: list[float]
    means: list[float]
    ci95: list[float]


def _json_lines(path: Path) -> list[dict[str, Any]]:
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a last line cut by a kill
            break
    return rows


def validation_curve(run: Path) -> Curve:
    """The validation records of ``run/metrics.jsonl``."""
    path = Path(run) / "metrics.jsonl"
    if not path.is_file():
        raise MetalabError(f"{path} does not exist; pass run folders written by `metalab train`")
    val = [r for r in _json_lines(path) if any(k.startswith("val_") for k in r)]
    if not val:
        raise MetalabError(f"{path} has no validation records yet")
    metric = next(k for k in val[0] if k.startswith("val_") and not k.endswith("_ci95"))
    return Curve(Path(run).name, metric[4:], [r["step"] for r in val], [r["seconds"] / 60 for r in val],
                 [r[metric] for r in val], [r[f"{metric}_ci95"] for r in val])


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise MetalabError("plotting needs matplotlib: pip install 'metalab[plot]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _band(ax, x, means, cis, label, marker="o") -> None:
    ax.plot(x, means, marker=marker, markersize=3, label=label)
    ax.fill_between(x, [m - c for m, c in zip(means, cis)], [m + c for m, c in zip(means, cis)], alpha=0.2)


def _finish(plt, fig, ax, xlabel: str, ylabel: str, title: str, out: Path) -> Path:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    path = _save(fig, out)
    plt.close(fig)
    return path


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return atomic_write_bytes(path, buffer.getvalue())


def plot_curves(runs: list[Path], out: Path, title: str = "") -> Path:
    """Validation metric (± 95% CI) of several runs against training step and wall time, side by side."""
    plt = _pyplot()
    curves = [validation_curve(run) for run in runs]
    fig, (by_step, by_time) = plt.subplots(1, 2, figsize=(11, 4.2), dpi=150, sharey=True)
    for c in curves:
        _band(by_step, c.steps, c.means, c.ci95, c.label)
        _band(by_time, c.minutes, c.means, c.ci95, c.label)
    by_step.set_xlabel("meta-iteration")
    by_time.set_xlabel("training time (minutes)")
    by_step.set_ylabel(f"validation {curves[0].metric} (± 95% CI)")
    for ax in (by_step, by_time):
        ax.grid(alpha=0.3)
    by_time.legend(fontsize=8)
    fig.suptitle(title)
    path = _save(fig, out)
    plt.close(fig)
    return path


def _results(run: Path) -> dict[str, Any]:
    path = Path(run) / "results.json"
    if not path.is_file():
        raise MetalabError(f"{path} does not exist: the run has not finished its test evaluation")
    return json.loads(path.read_text(encoding="utf-8"))


def plot_adaptation_steps(runs: list[Path], out: Path, title: str = "") -> Path:
    """Test metric (± 95% CI) against the number of test-time adaptation steps, one line per run."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=150)
    metric = ""
    for run in runs:
        tests = [t for t in _results(run)["test"] if t["steps"] is not None]
        if len(tests) < 2:
            raise MetalabError(f"{run} was evaluated at {len(tests)} numbers of adaptation steps; train or evaluate "
                               "it with --eval-steps 0,1,5,10 for this figure")
        tests.sort(key=lambda t: t["steps"])
        metric = tests[0]["metric"]
        _band(ax, [t["steps"] for t in tests], [t["mean"] for t in tests], [t["ci95"] for t in tests], Path(run).name)
    return _finish(plt, fig, ax, "test-time adaptation steps", f"test {metric} (± 95% CI)", title, out)


def plot_shots(runs: list[Path], out: Path, title: str = "") -> Path:
    """Test metric (± 95% CI) against k_shot: runs of one algorithm form one line."""
    plt = _pyplot()
    lines: dict[str, list[tuple[int, dict]]] = {}
    for run in runs:
        results = _results(run)
        test = next((t for t in results["test"] if t["steps"] is None), results["test"][-1])
        lines.setdefault(results["algorithm"], []).append((results["benchmark"]["k_shot"], test))
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=150)
    for algorithm, points in sorted(lines.items()):
        points.sort(key=lambda p: p[0])
        _band(ax, [k for k, _ in points], [t["mean"] for _, t in points], [t["ci95"] for _, t in points], algorithm)
    return _finish(plt, fig, ax, "shots per class (k_shot)", f"test {points[0][1]['metric']} (± 95% CI)", title, out)


PLOTS = {"curves": plot_curves, "steps": plot_adaptation_steps, "shots": plot_shots}
