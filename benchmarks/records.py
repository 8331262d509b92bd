"""The benchmark scripts' side of result records (format and rendering: :mod:`metalab.results`)."""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

from metalab import results
from metalab.plot import validation_curve

RESULTS_DIR = Path(__file__).resolve().parent / "results"
REPO = Path(__file__).resolve().parents[1]
results.commit()  # pinned as the benchmark starts: its records name the source it runs, whatever HEAD is at the end


def command() -> str:
    """The running benchmark's command line, relative to the repository root."""
    return "python " + shlex.join([os.path.relpath(sys.argv[0], REPO)] + sys.argv[1:])


def record(benchmark: str, method: str, setting: str, metric: str, value: float, ci95: float | None,
           paper: float | None, train_seconds: float | None, steps: int | None, **extra) -> dict:
    """One result record of this benchmark run, with provenance filled in."""
    return results.record(benchmark, method, setting, metric, value, ci95, paper, train_seconds, steps,
                          command(), **extra)


def add_results_flag(parser) -> None:
    """``--results-dir``: where the script appends its records (a scratch folder keeps a trial run out of results/)."""
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR,
                        help="folder whose <benchmark>.jsonl the records are appended to (default: benchmarks/results)")


def add_timing_flags(parser) -> None:
    """The flags of the scripts that time steps on Omniglot: ``--data-dir``, ``--cache-dir``, ``--threads``,
    ``--results-dir`` and ``--no-record``."""
    parser.add_argument("--data-dir", default="../shared/data/omniglot")
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    add_results_flag(parser)
    parser.add_argument("--no-record", action="store_true")


def append(benchmark: str, records: list[dict], directory: Path = RESULTS_DIR) -> Path:
    """Append records to ``<directory>/<benchmark>.jsonl`` (default: benchmarks/results), rewritten atomically."""
    return results.append(records, directory / f"{benchmark}.jsonl")


def finish(benchmark: str, table: list[str], out: list[dict], args) -> None:
    """Print a timing script's markdown ``table``, then append its records ``out`` unless ``args.no_record`` (to
    ``args.results_dir``) and print where."""
    print("\n" + "\n".join(table))
    if not args.no_record:
        print(append(benchmark, out, args.results_dir))


def val_curve(run: Path) -> list[list[float]]:
    """A run folder's validation curve as ``[seconds, value]`` pairs, the ``val_curve`` a record carries (the
    results page projects from it; ``plot_curves.py --records`` draws it after the run folder is gone)."""
    curve = validation_curve(run)
    return [[round(60 * m, 1), round(a, 5)] for m, a in zip(curve.minutes, curve.means)]
