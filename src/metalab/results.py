"""Result records and the results page generated from them.

A result record is one JSON object per (benchmark, method, setting, metric) measurement with
its provenance (fields: ``../shared/DESIGN.md``, "Results records"; benchmark scripts and
``metalab reproduce`` write them). Records accumulate in ``<dir>/<benchmark>.jsonl``; the
newest record of a (benchmark, method, setting, metric, budget label) is the current one,
and :func:`render` turns the current ones into the markdown of ``docs/RESULTS.md``: one table
per benchmark with the published numbers, the training time used and the command that
produced each row.
"""

from __future__ import annotations

import datetime
import functools
import json
import math
import os
import platform
import subprocess
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch

from metalab.utils.errors import MetalabError
from metalab.utils.io import atomic_write_text

_SOURCE = Path(__file__).resolve().parent


def cpu_description(cpuinfo: str) -> str:
    """The first processor of a ``/proc/cpuinfo`` text: ``"<model name> (family F model M stepping S, <cache>)"``.

    Cloud machines often name their CPU only "Intel(R) Xeon(R) Processor"; the model number and cache size tell
    two generations apart (model 143 is Sapphire Rapids, 207 Emerald Rapids), so that timings from different
    machines do not pass for one series. Fields missing from the text are left out.
    """
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        if not line.strip():
            break  # the end of the first processor's block
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    ids = " ".join(f"{name} {fields[key]}" for key, name in
                   (("cpu family", "family"), ("model", "model"), ("stepping", "stepping")) if fields.get(key))
    details = ", ".join(d for d in (ids, fields.get("cache size") and f"{fields['cache size']} cache") if d)
    name = fields.get("model name") or platform.processor() or "unknown CPU"
    return f"{name} ({details})" if details else name


def machine() -> str:
    """``"<cores> cores, <CPU> (family F model M stepping S, <cache>), torch <version>, <device>, <threads> threads"``."""
    try:
        cpu = cpu_description(Path("/proc/cpuinfo").read_text())
    except OSError:
        cpu = platform.processor() or "unknown CPU"
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    return f"{os.cpu_count()} cores, {cpu}, torch {torch.__version__}, {device}, {torch.get_num_threads()} threads"


@functools.cache
def commit(source: Path = _SOURCE) -> str:
    """The git commit of metalab's source (``-dirty`` if ``src`` has changes); ``unknown`` outside a checkout.

    ``source`` is the folder whose checkout is read (metalab's package folder). Computed once per process, at the
    first call: a long run calls it when it starts, so that its records name the source it loaded and not a HEAD
    that moved while it trained.
    """
    def git(*args: str) -> str:
        try:
            done = subprocess.run(["git", *args], cwd=source, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return ""
        return done.stdout.strip() if done.returncode == 0 else ""

    head = git("rev-parse", "--short=12", "HEAD")
    if not head:
        return "unknown"
    return head + ("-dirty" if git("status", "--porcelain", "--untracked-files=no", "--", ".") else "")


def record(benchmark: str, method: str, setting: str, metric: str, value: float, ci95: float | None,
           paper: float | None, train_seconds: float | None, steps: int | None, command: str,
           source_commit: str | None = None, **extra: Any) -> dict[str, Any]:
    """One result record with its provenance (commit, date, machine) filled in.

    ``source_commit``: the commit of the source that produced the measurement when it is not this process's
    (:func:`commit`), e.g. the one a run folder's ``results.json`` names.
    """
    return {
        "benchmark": benchmark, "method": method, "setting": setting, "metric": metric,
        "value": value, "ci95": ci95, "paper": paper,
        "train_seconds": None if train_seconds is None else round(train_seconds, 1), "steps": steps,
        "command": command, "commit": source_commit or commit(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(), **extra,
    }


# a records file that would grow past this many bytes is first moved to ``<stem>-from-<first date>.jsonl``
ROLLOVER_BYTES = 1_000_000


def append(records: Iterable[dict[str, Any]], path: Path) -> Path:
    """Append records to the JSON-lines file ``path``, rewritten atomically (created if missing).

    If the file would grow past :data:`ROLLOVER_BYTES`, its old records are moved (atomically) to
    ``<stem>-from-<date of its first record>.jsonl`` beside it and ``path`` starts afresh, so no
    records file grows without bound; :func:`load` reads both, and the newest record of a key is
    chosen by date, not by file.
    """
    path = Path(path)
    old = path.read_text(encoding="utf-8") if path.exists() else ""
    new = "".join(json.dumps(r) + "\n" for r in records)
    if old.strip() and len((old + new).encode("utf-8")) > ROLLOVER_BYTES:
        _move_aside(old, path)
        old = ""
    return atomic_write_text(path, old + new)


def _move_aside(text: str, path: Path) -> None:
    """Write the JSON lines ``text`` beside ``path`` as ``<stem>-from-<first date>.jsonl`` files of at most
    :data:`ROLLOVER_BYTES` each (more than one only for a file that grew past the limit before it existed)."""
    chunk: list[str] = []
    for line in [*text.strip().splitlines(), None]:
        if chunk and (line is None or len("".join(chunk + [line]).encode("utf-8")) > ROLLOVER_BYTES):
            first = json.loads(chunk[0].removesuffix("\n"))["date"][:10]
            target, n = path.with_name(f"{path.stem}-from-{first}.jsonl"), 2
            while target.exists():
                target, n = path.with_name(f"{path.stem}-from-{first}-{n}.jsonl"), n + 1
            atomic_write_text(target, "".join(chunk))
            chunk = []
        if line is not None:
            chunk.append(line + "\n")


def append_by_benchmark(records: Iterable[dict[str, Any]], directory: Path) -> list[Path]:
    """Append each record to ``directory/<its benchmark>.jsonl``; the files written, in order."""
    grouped: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        grouped.setdefault(r["benchmark"], []).append(r)
    return [append(rows, Path(directory) / f"{bench}.jsonl") for bench, rows in grouped.items()]


def load(directory: Path) -> list[dict[str, Any]]:
    """Every record of ``directory/*.jsonl``.

    Raises:
        MetalabError: a line that is not a JSON object with the record fields (file and line named).
    """
    records = []
    for path in sorted(Path(directory).glob("*.jsonl")):
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                r = json.loads(line)
            except ValueError as err:
                raise MetalabError(f"{path}:{number} is not a JSON line ({err}); fix or remove it") from None
            missing = [k for k in ("benchmark", "method", "setting", "metric", "value", "command", "date")
                       if not isinstance(r, dict) or k not in r]
            if missing:
                raise MetalabError(f"{path}:{number} is not a result record: missing {', '.join(missing)}")
            records.append(r)
    return records


# a run's validation curve is fitted from this fraction of its training time on: the steep start is left out
PROJECTION_FIT_FROM = 0.25
# a projection beyond this multiple of the run's own time extrapolates a nearly flat curve: not shown as a time
PROJECTION_MAX_FACTOR = 100.0


def power_law_exponent(seconds: Iterable[float], errors: Iterable[float],
                       fit_from: float = PROJECTION_FIT_FROM) -> float | None:
    """The exponent ``b`` of ``error ≈ a · t^(-b)``, fitted by least squares to ``log error`` against ``log t``.

    Args:
        seconds: training time of each point of a validation curve.
        errors: the validation error (1 - accuracy) at those times.
        fit_from: only points at or after this fraction of the last time are fitted.

    Returns:
        ``b`` (positive while the error falls), or None when fewer than three points with a
        positive time and error are left to fit.
    """
    points = [(t, e) for t, e in zip(seconds, errors) if t > 0 and e > 0]
    if not points:
        return None
    start = fit_from * max(t for t, _ in points)
    logs = [(math.log(t), math.log(e)) for t, e in points if t >= start]
    if len(logs) < 3:
        return None
    mean_x = sum(x for x, _ in logs) / len(logs)
    mean_y = sum(y for _, y in logs) / len(logs)
    var_x = sum((x - mean_x) ** 2 for x, _ in logs)
    if var_x == 0:
        return None
    return -sum((x - mean_x) * (y - mean_y) for x, y in logs) / var_x


def projected_seconds(seconds: float, error: float, target_error: float, exponent: float | None) -> float | None:
    """When ``error`` reached after ``seconds`` falls to ``target_error`` if it keeps falling as ``t^(-exponent)``.

    ``seconds`` itself when the target is already met; None when the error does not fall
    (no exponent, or one that is not positive) or the target is 0.
    """
    if error <= target_error:
        return seconds
    if exponent is None or exponent <= 0 or target_error <= 0:
        return None
    return seconds * (error / target_error) ** (1 / exponent)


def _projections(rows: list[dict[str, Any]]) -> list[str]:
    """Lines projecting, for each accuracy below its published number, the training time that would reach it.

    A row whose 95% interval already holds the published number gets no line: it is not measurably below it
    (e.g. 82.78% ± 1.05% against the paper's 82.80%). A row whose record states a ``ceiling`` (the highest
    accuracy any learner can reach in its setting) below the published number gets a line saying so instead of a
    time: no training reaches it (e.g. a class's first presentation with string labels, 0.03% against 0.10%).
    The ceiling belongs to the setting, not to a run: records that predate the field take it from another
    record of the same benchmark and setting that states it.
    """
    ceilings = {(r["benchmark"], r["setting"]): r["ceiling"] for r in rows if r.get("ceiling") is not None}
    lines = []
    for r in rows:
        curve, paper = r.get("val_curve"), r.get("paper")
        if r["metric"] != "accuracy" or not curve or paper is None or not r.get("train_seconds"):
            continue
        if r["value"] + (r.get("ci95") or 0.0) >= paper:
            continue
        ceiling = ceilings.get((r["benchmark"], r["setting"]))
        if ceiling is not None and paper > ceiling:  # e.g. a label guessed before it was ever shown
            lines.append(f"- {r['method']} {_label(r)}: no projection: the published {_fmt('accuracy', paper)} is above "
                         f"{_fmt('accuracy', ceiling)}, the most any learner can reach in this setting")
            continue
        exponent = power_law_exponent([t for t, _ in curve], [1 - a for _, a in curve])
        when = projected_seconds(r["train_seconds"], 1 - r["value"], 1 - paper, exponent)
        setting = _label(r)
        reached = f"{_fmt('accuracy', r['value'])} after {r['train_seconds'] / 60:.1f} min"
        if when is None:
            text = f"no projection: the validation error did not fall over the fitted part ({reached})"
        elif when > PROJECTION_MAX_FACTOR * r["train_seconds"]:
            text = (f"no projection: the validation error barely falls (b = {exponent:.2f}), so reaching "
                    f"{_fmt('accuracy', paper)} would take over {PROJECTION_MAX_FACTOR:.0f}x this run's time ({reached})")
        else:
            text = f"{when / 3600:.1f} h to {_fmt('accuracy', paper)} (b = {exponent:.2f}; {reached})"
        lines.append(f"- {r['method']} {setting}: {text}")
    return lines


def _label(r: dict[str, Any]) -> str:
    """A record's setting as the page shows it: with its budget label, if any."""
    return r["setting"] + (f" ({r['budget']})" if r.get("budget") else "")


def _fmt(metric: str, value: float | None) -> str:
    """Accuracies as percentages; other values with 3 decimals, or 2 significant digits below 0.01
    (relative errors of 1e-6 must not print as 0.000)."""
    if value is None:
        return "–"
    if metric == "accuracy":
        return f"{100 * value:.2f}%"
    return f"{value:.1e}" if 0 < abs(value) < 0.01 else f"{value:.3f}"


def _setting_key(setting: str) -> tuple:
    digits = "".join(c if c.isdigit() else " " for c in setting).split()
    return tuple(int(d) for d in digits), setting


def current(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The newest record of each (benchmark, method, setting, metric, budget), sorted for display."""
    latest: dict[tuple, dict[str, Any]] = {}
    for r in records:
        key = (r["benchmark"], r["method"], r["setting"], r["metric"], r.get("budget"))
        if key not in latest or r["date"] >= latest[key]["date"]:
            latest[key] = r
    return sorted(latest.values(), key=lambda r: (r["benchmark"], r["method"], r["metric"], _setting_key(r["setting"]),
                                                  r.get("budget") or ""))


def render(records: Iterable[dict[str, Any]], generator: str, plots: Mapping[str, str | None] | None = None) -> str:
    """The results page: one table per benchmark of the current records, their commands, the plots.

    Args:
        records: result records (all of them: the newest of each key is shown).
        generator: the command that regenerates the page (named at its top).
        plots: image file names to show under "Learning curves" (relative to the page), each with
            the command that drew it (None where the image does not say).
    """
    lines = [
        "# Results",
        "",
        f"Generated by `{generator}` from the result records in `benchmarks/results/*.jsonl`; do not edit by hand.",
        "Each row is the newest record of its (benchmark, method, setting, metric, budget label); the command that produced it",
        "is listed under the table. Accuracy is the mean over the test episodes ± the half-width of its 95%",
        "confidence interval; `paper` is the published number for the same setting.",
    ]
    by_bench: dict[str, list[dict[str, Any]]] = {}
    for r in current(records):
        by_bench.setdefault(r["benchmark"], []).append(r)
    for bench, rows in by_bench.items():
        lines += ["", f"## {bench}", "", "| method | setting | metric | value ± 95% CI | paper | train time | steps | commit |",
                  "|---|---|---|---|---|---|---|---|"]
        commands: dict[tuple[str, str], list[str]] = {}  # (command, machine): what it produced
        for r in rows:
            ci = "" if r.get("ci95") is None else f" ± {_fmt(r['metric'], r['ci95'])}"
            train = "–" if r.get("train_seconds") is None else f"{r['train_seconds'] / 60:.1f} min"
            setting = _label(r)
            lines.append(f"| {r['method']} | {setting} | {r['metric']} | {_fmt(r['metric'], r['value'])}{ci} | "
                         f"{_fmt(r['metric'], r.get('paper'))} | {train} | {r.get('steps') or '–'} | {r.get('commit', '–')} |")
            what = commands.setdefault((r["command"], r.get("machine", "unknown")), [])
            what.append(f"{r['method']} {setting}")
            if r.get("train_episodes"):
                what.append(f"training episodes: {r['train_episodes']}")
        projected: dict[tuple, list[str]] = {}
        for r in rows:
            if r.get("paper_train_episodes") and r.get("train_episodes_seen"):
                run = (r["method"], r["train_episodes_seen"], r["train_seconds"], r["paper_train_episodes"])
                projected.setdefault(run, []).append(_label(r))
        if projected:
            lines += ["", "Projected training time at the published run's length (measured seconds per training "
                      "episode × the paper's training episodes):", ""]
            lines += [f"- {method} ({', '.join(settings)}): {seconds / seen * paper / 3600:.0f} h for {paper:,} "
                      f"episodes ({seen:,} episodes took {seconds / 60:.1f} min here)"
                      for (method, seen, seconds, paper), settings in sorted(projected.items())]
        reaching = _projections(rows)
        if reaching:
            lines += ["", "Projected training time to the published number, where a row is below it by more than its 95% "
                      "interval: the time at which "
                      "this run's test error would equal the paper's if it kept falling as t^(-b), with b fitted to "
                      f"the run's validation error from {PROJECTION_FIT_FROM:.0%} of its training time on (log-log "
                      "least squares; a power law without a floor, so an optimistic projection). Plots of the curves "
                      "are under Learning curves.", ""] + reaching
        # each command names the machine it ran on: timings from two machines must not pass for one series
        machines = {m: i for i, m in enumerate(sorted({machine for _, machine in commands}), 1)}
        lines += ["", "Commands (run from the repository root), each with the machine it ran on:", ""]
        for (command, machine), what in commands.items():
            lines.append(f"- `{command}` → {', '.join(sorted(set(what)))} (machine {machines[machine]})")
        lines += ["", "Machines:", ""] + [f"{i}. {m}" for m, i in machines.items()]
    if plots:
        lines += ["", "## Learning curves", "",
                  "Validation accuracy against training time, drawn from the runs' `metrics.jsonl` by",
                  "`metalab plot <run folders> --out docs/<name>.png`, or from the validation curves that result records",
                  "carry by `python benchmarks/plot_curves.py --records ...`; the command is under each figure that",
                  "stored it:", ""]
        for name, drawn_by in sorted(plots.items()):
            lines.append(f"![{Path(name).stem}]({name})")
            if drawn_by:
                lines += ["", f"`{drawn_by}`", ""]
    return "\n".join(lines) + "\n"


def write_page(records_dir: Path, page: Path, generator: str) -> Path:
    """Render every record of ``records_dir`` into ``page`` (atomically), showing the PNGs beside it."""
    page = Path(page)
    from metalab.plot import figure_command

    plots = {p.name: figure_command(p) for p in page.parent.glob("*.png")} if page.parent.is_dir() else {}
    return atomic_write_text(page, render(load(records_dir), generator, plots))
