"""Meta-RL through the command line: `metalab train maml_rl|rl2 --benchmark nav2d`."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
SMALL = ["--benchmark", "nav2d", "--meta-batch-size", "4", "--val-every", "2", "--val-episodes", "3",
         "--test-episodes", "4", "--log-every", "1", "--checkpoint-every", "1", "--quiet"]


def metalab(*args: str, launcher=(sys.executable, "-m", "metalab")) -> subprocess.CompletedProcess:
    return subprocess.run([*launcher, *args], capture_output=True, text=True, timeout=600, env=ENV)


def logged(run) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k != "seconds"}
            for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_maml_rl_trains_and_reports_the_return_after_0_to_3_steps(tmp_path):
    # spelled as in the papers: `maml-rl` is the registry's maml_rl
    done = metalab("train", "maml-rl", *SMALL, "--steps", "2", "--hparam", "episodes_per_task=5",
                   "--out", str(tmp_path / "run"))
    assert done.returncode == 0, done.stderr
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["algorithm"] == "maml_rl"
    assert [(t["metric"], t["steps"], t["episodes"]) for t in results["test"]] == [("return", s, 4) for s in range(4)]
    rows = logged(tmp_path / "run")
    assert {"train_return_pre", "train_return_post", "train_kl"} <= set(rows[0]) and "val_return" in rows[-1]


def test_rl2_resumes_exactly_with_its_ppo_optimizer_state(tmp_path):
    full, split = tmp_path / "full", tmp_path / "split"
    assert metalab("train", "rl2", *SMALL, "--steps", "4", "--out", str(full)).returncode == 0
    assert metalab("train", "rl2", *SMALL, "--steps", "2", "--out", str(split)).returncode == 0
    again = metalab("train", "--resume", str(split), "--steps", "4", "--quiet")
    assert again.returncode == 0, again.stderr
    assert logged(split) == logged(full)


def test_maml_rl_runs_data_parallel_with_the_tasks_split_over_ranks(tmp_path):
    torchrun = (sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "metalab")
    done = metalab("train", "maml_rl", *SMALL, "--steps", "2", "--hparam", "episodes_per_task=4",
                   "--out", str(tmp_path / "dual"), launcher=torchrun)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("results:") == 1
    results = json.loads((tmp_path / "dual" / "results.json").read_text())
    assert [t["episodes"] for t in results["test"]] == [4, 4, 4, 4]


def test_mujoco_environments_stepped_by_worker_processes_give_the_same_run(tmp_path):
    pytest.importorskip("mujoco")
    runs = []
    for workers in ("0", "2"):
        run = tmp_path / f"workers{workers}"
        done = metalab("train", "maml_rl", "--benchmark", "cheetah-vel", "--env-workers", workers, "--steps", "2",
                       "--meta-batch-size", "2", "--val-every", "2", "--val-episodes", "2", "--test-episodes", "2",
                       "--log-every", "1", "--hparam", "episodes_per_task=2", "--hparam", "action_scale=1.0",
                       "--quiet", "--out", str(run))
        assert done.returncode == 0, done.stderr
        runs.append(run)
    assert logged(runs[0]) == logged(runs[1])
    tests = [json.loads((run / "results.json").read_text())["test"] for run in runs]
    assert tests[0] == tests[1] and [t["steps"] for t in tests[0]] == [0, 1]


@pytest.mark.parametrize("args, message", [
    (["train", "maml", "--benchmark", "nav2d", "--steps", "1"], "maml is a supervised method"),
    (["train", "rl2", "--benchmark", "sinusoid", "--steps", "1"], "rl2 is a meta-RL method"),
    (["train", "maml_rl", "--benchmark", "nav2d", "--steps", "1", "--hparam", "max_kl=0"], "max_kl"),
    (["train", "maml_rl", "--benchmark", "nav2d", "--steps", "1", "--env-workers", "2"], "env_workers must be 0"),
    (["train", "maml", "--benchmark", "sinusoid", "--steps", "1", "--env-workers", "2"], "not sinusoid"),
])
def test_mismatched_methods_and_benchmarks_exit_2(tmp_path, args, message):
    done = metalab(*args, "--out", str(tmp_path / "x"))
    assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr
