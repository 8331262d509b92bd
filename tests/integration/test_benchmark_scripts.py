"""The benchmark scripts under benchmarks/ run end to end at toy sizes and write well-formed records.

They are run by hand for the numbers in docs/RESULTS.md, so nothing else exercises them
between two recordings; a script that broke since its last record would only be found by
the next person who needs it. Here each one runs in a subprocess, as documented, at the
smallest sizes it accepts, into a scratch --results-dir (benchmarks/results is never
touched), and its records are read back.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from metalab import results

from tests.conftest import REPO_ROOT


def run_script(name: str, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO_ROOT / "benchmarks" / name), *args], capture_output=True,
                          text=True, timeout=timeout, cwd=REPO_ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"})


def read_records(path: Path) -> list[dict]:
    """The records of the one file a script wrote, read and checked by metalab.results.load."""
    assert [p.name for p in path.parent.glob("*.jsonl")] == [path.name]
    return results.load(path.parent)


def test_relation_pairs_records_both_ways_and_their_ratio(tmp_path):
    done = run_script("relation_pairs.py", "--settings", "2x3,3x1", "--reps", "2", "--results-dir", str(tmp_path))
    assert done.returncode == 0, done.stderr
    assert "float64 relative error" in done.stdout
    rows = read_records(tmp_path / "relation-pairs.jsonl")
    by_key = {(r["method"], r["setting"], r["metric"]): r["value"] for r in rows}
    assert len(rows) == len(by_key) == 6
    for setting in ("2w-6q", "3w-3q"):
        pairwise = by_key["relation_net", setting, "seconds_per_iter"]
        plain = by_key["relation_net-concatenated", setting, "seconds_per_iter"]
        assert pairwise > 0 and plain > 0
        assert by_key["relation_net", setting, "speedup"] == pytest.approx(plain / pairwise)
    assert all(r["command"].startswith("python benchmarks/relation_pairs.py --settings 2x3,3x1") for r in rows)


def test_relation_pairs_bad_settings_exit_2(tmp_path):
    done = run_script("relation_pairs.py", "--settings", "5", "--results-dir", str(tmp_path))
    assert done.returncode == 2 and "--settings '5'" in done.stderr
    assert not (tmp_path / "relation-pairs.jsonl").exists()


@pytest.mark.skipif(importlib.util.find_spec("higher") is None,
                    reason="throughput.py compares against `higher`: pip install --no-deps higher==0.2.1")
def test_throughput_checks_then_times_and_records_the_matmul_bound(tmp_path, omniglot_dir, omniglot_images,
                                                                   omniglot_cache):
    done = run_script("throughput.py", "--rows", "5w1s-1st-1step", "--tasks", "1", "--reps", "1", "--threads", "1",
                      "--data-dir", str(omniglot_dir), "--cache-dir", str(omniglot_cache),
                      "--results-dir", str(tmp_path))
    assert done.returncode == 0, done.stderr
    rows = read_records(tmp_path / "throughput.jsonl")
    methods = {r["method"] for r in rows}
    assert {"loop-reference", "higher", "maml", "matmul", "matmul-bound"} <= methods
    bound = next(r for r in rows if r["method"] == "matmul-bound")
    assert bound["setting"] == "1st-order-1step-5w1s-mb1" and bound["value"] > 0


def test_omniglot_benchmark_trains_tests_and_records(tmp_path, omniglot_dir, omniglot_images, omniglot_cache):
    done = run_script("omniglot.py", "--method", "protonet", "--data-dir", str(omniglot_dir), "--cache-dir",
                      str(omniglot_cache), "--settings", "5w1s", "--train-n-way", "5", "--steps", "2",
                      "--val-every", "1", "--val-episodes", "2", "--test-episodes", "4", "--threads", "1",
                      "--out", str(tmp_path / "run"), "--results-dir", str(tmp_path / "results"))
    assert done.returncode == 0, done.stderr
    (row,) = read_records(tmp_path / "results" / "omniglot.jsonl")
    assert (row["method"], row["setting"], row["metric"], row["steps"]) == ("protonet", "5w1s", "accuracy", 2)
    assert 0 <= row["value"] <= 1 and row["ci95"] > 0 and row["paper"] is not None


def test_mann_instance_benchmark_records_every_presentation(tmp_path, omniglot_dir, omniglot_images, omniglot_cache):
    done = run_script("mann_instance.py", "--method", "lstm", "--data-dir", str(omniglot_dir), "--cache-dir",
                      str(omniglot_cache), "--steps", "2", "--meta-batch-size", "2", "--val-every", "1",
                      "--val-episodes", "2", "--test-episodes", "4", "--threads", "1",
                      "--out", str(tmp_path / "run"), "--results-dir", str(tmp_path / "results"))
    assert done.returncode == 0, done.stderr
    rows = read_records(tmp_path / "results" / "mann-instance.jsonl")
    assert [r["setting"] for r in rows] == [f"5class-instance{k}" for k in (1, 2, 3, 4, 5, 10)]
    assert all(r["method"] == "lstm" and 0 <= r["value"] <= 1 and r["steps"] == 2 for r in rows)
