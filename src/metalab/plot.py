"""Figures of runs: learning curves, accuracy vs adaptation steps, accuracy vs shots (matplotlib, ``[plot]`` extra).

Everything is read from run folders as ``metalab train`` writes them: ``metrics.jsonl``
(validation mean ± 95% CI by step and wall time), ``config.json`` and ``results.json``
(test results per number of test-time adaptation steps), or from benchmark result records
that carry their run's validation curve (``val_curve``), so a figure of the docs can be drawn
again after the run folders are gone. PNGs are written atomically; a figure given the command
that drew it keeps it in a PNG text chunk (``metalab-command``), which the results page shows.
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


def _finish(plt, fig, ax, xlabel: str, ylabel: str, title: str, out: Path, command: str | None = None) -> Path:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    # below the axes: long run labels (a record's budget) placed inside covered the curves and the axis label;
    # the figure grows by the legend's rows and to the legend's width, else tight_layout squeezes the axes
    # (clipping the y label, or narrowing them to a strip beside labels wider than the figure)
    legend = ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16))
    fig.set_figheight(fig.get_figheight() + 0.2 * len(legend.get_texts()))
    fig.canvas.draw()  # the legend's size is known once drawn
    fig.set_figwidth(max(fig.get_figwidth(), legend.get_window_extent().width / fig.dpi + 0.4))
    path = _save(fig, out, command)
    plt.close(fig)
    return path


COMMAND_KEY = "metalab-command"


def _save(fig, path: Path, command: str | None = None) -> Path:
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", metadata={COMMAND_KEY: command} if command else None)
    return atomic_write_bytes(path, buffer.getvalue())


def figure_command(path: Path) -> str | None:
    """The command stored in a PNG written by this module, or None (another PNG, or one drawn without it)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return getattr(image, "text", {}).get(COMMAND_KEY)
    except (OSError, UnidentifiedImageError):
        return None


def plot_curves(runs: list[Path], out: Path, title: str = "", command: str | None = None) -> Path:
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
    path = _save(fig, out, command)
    plt.close(fig)
    return path


def plot_record_curves(records: list[dict[str, Any]], out: Path, title: str = "", command: str | None = None) -> Path:
    """Validation curves carried by result records against training time, each ending at its test result.

    Args:
        records: result records with ``val_curve`` (``[seconds, value]`` pairs of the run's
            validation metric) and ``train_seconds``; one line per record, labelled by method
            (and budget label), with the record's test value ± 95% CI drawn as a square at the
            end of its training time.
        out: the PNG file.
        title: figure title.
        command: the command line that drew the figure, stored in the PNG.

    Raises:
        MetalabError: no records, or a record without a validation curve or training time.
    """
    if not records:
        raise MetalabError("no result records to plot: check the benchmark, setting and budget asked for")
    bare = [f"{r['method']} {r['setting']}" for r in records if not r.get("val_curve") or not r.get("train_seconds")]
    if bare:
        raise MetalabError(f"records without a validation curve (val_curve) or train_seconds: {', '.join(bare)}; "
                           "plot their run folders with `metalab plot` instead")
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=150)
    for r in records:
        ci = r.get("ci95") or 0.0
        label = r["method"] + (f" ({r['budget']})" if r.get("budget") else "") + f": test {r['value']:.4f} ± {ci:.4f}"
        (line,) = ax.plot([t / 60 for t, _ in r["val_curve"]], [v for _, v in r["val_curve"]], marker="o",
                          markersize=3, label=label)
        ax.errorbar([r["train_seconds"] / 60], [r["value"]], yerr=[ci], color=line.get_color(), marker="s", capsize=3)
    metric = records[0]["metric"]
    return _finish(plt, fig, ax, "training time (minutes)", f"validation {metric}; squares: test ± 95% CI",
                   title, out, command)


def _results(run: Path) -> dict[str, Any]:
    path = Path(run) / "results.json"
    if not path.is_file():
        raise MetalabError(f"{path} does not exist: the run has not finished its test evaluation")
    return json.loads(path.read_text(encoding="utf-8"))


def plot_adaptation_steps(runs: list[Path], out: Path, title: str = "", command: str | None = None) -> Path:
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
    return _finish(plt, fig, ax, "test-time adaptation steps", f"test {metric} (± 95% CI)", title, out, command)


def plot_shots(runs: list[Path], out: Path, title: str = "", command: str | None = None) -> Path:
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
    return _finish(plt, fig, ax, "shots per class (k_shot)", f"test {points[0][1]['metric']} (± 95% CI)", title, out,
                   command)


PLOTS = {"curves": plot_curves, "steps": plot_adaptation_steps, "shots": plot_shots}
