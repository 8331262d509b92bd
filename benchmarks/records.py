"""Result records (format: ../shared/DESIGN.md, "Results records") and their provenance."""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import torch

from metalab.utils.io import atomic_write_text

RESULTS_DIR = Path(__file__).resolve().parent / "results"
REPO = Path(__file__).resolve().parents[1]


def machine() -> str:
    model = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    return f"{os.cpu_count()} cores, {model}, torch {torch.__version__}, {device}, {torch.get_num_threads()} threads"


def commit() -> str:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True).stdout.strip()

    head = git("rev-parse", "--short=12", "HEAD") or "unknown"
    dirty = git("status", "--porcelain", "--untracked-files=no", "--", "src")
    return head + ("-dirty" if dirty else "")


def command() -> str:
    return "python " + " ".join([os.path.relpath(sys.argv[0], REPO)] + sys.argv[1:])


def record(benchmark: str, method: str, setting: str, metric: str, value: float, ci95: float | None,
           paper: float | None, train_seconds: float | None, steps: int | None, **extra) -> dict:
    """One result record with provenance filled in."""
    return {
        "benchmark": benchmark, "method": method, "setting": setting, "metric": metric,
        "value": value, "ci95": ci95, "paper": paper,
        "train_seconds": None if train_seconds is None else round(train_seconds, 1), "steps": steps,
        "command": command(), "commit": commit(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(), **extra,
    }


def append(benchmark: str, records: list[dict], path: Path | None = None) -> Path:
    """Append records to ``path`` (default ``results/<benchmark>.jsonl``), rewritten atomically."""
    path = path if path is not None else RESULTS_DIR / f"{benchmark}.jsonl"
    old = path.read_text() if path.exists() else ""
    new = "".join(json.dumps(r) + "\n" for r in records)
    return atomic_write_text(path, old + new)
