"""Data-parallel meta-training with torch.distributed (gloo, 2 CPU processes)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from metalab import BenchmarkConfig, build, make_benchmark

WORKER = Path(__file__).with_name("dist_worker.py")
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
TRAIN = ["train", "maml", "--benchmark", "sinusoid", "--meta-batch-size", "4", "--val-every", "20",
         "--val-episodes", "10", "--test-episodes", "21", "--log-every", "10", "--checkpoint-every", "10", "--quiet"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ranks(world: int, *args: str) -> list[subprocess.Popen]:
    """``world`` worker processes joined in one gloo group (no torchrun agent in between)."""
    port = free_port()
    return [subprocess.Popen([sys.executable, str(WORKER), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, env={**ENV, "RANK": str(r), "WORLD_SIZE": str(world), "LOCAL_RANK": str(r),
                                             "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
            for r in range(world)]


def torchrun(*args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "metalab",
               *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=600, env=ENV)


def metalab(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "metalab", *args], capture_output=True, text=True, timeout=600, env=ENV)


def logged(run: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k != "seconds"}
            for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_two_processes_with_half_batches_equal_one_process_in_float64(tmp_path):
    one, two = tmp_path / "one.pt", tmp_path / "two.pt"
    for world, out in ((1, one), (2, two)):
        procs = ranks(world, "train", str(out))
        for p in procs:
            _, err = p.communicate(timeout=300)
            assert p.returncode == 0, err
    a, b = torch.load(one), torch.load(two)
    assert a.keys() == b.keys()
    for name in a:
        assert a[name].dtype == torch.float64
        torch.testing.assert_close(b[name], a[name], rtol=0, atol=1e-10, msg=name)
    torch.manual_seed(0)  # the parameters moved away from the initialisation in 3 steps
    init = build("maml", make_benchmark(BenchmarkConfig("sinusoid", k_shot=5, seed=3)).spec).double().state_dict()
    assert max((a[k] - init[k]).abs().max().item() for k in a) > 1e-4


def rank0_of_a_failing_pair(tmp_path: Path, mode: str) -> tuple[int, str, float]:
    """Rank 0's exit code, stderr and seconds when rank 1 dies or hangs at its second step (4 s timeout)."""
    procs = ranks(2, mode, str(tmp_path / "never.pt"), "4")
    started = time.monotonic()
    _, err = procs[0].communicate(timeout=120)
    elapsed = time.monotonic() - started
    procs[1].kill()
    procs[1].communicate()
    return procs[0].returncode, err, elapsed


@pytest.mark.parametrize("mode", ["die", "hang"])
def test_a_rank_that_dies_or_hangs_stops_the_others_with_a_clear_error(tmp_path, mode):
    code, err, elapsed = rank0_of_a_failing_pair(tmp_path, mode)
    assert code == 2, err
    assert "averaging the meta-gradients failed" in err and "rank 0/2" in err and "Traceback" not in err
    assert elapsed < 60
    assert not (tmp_path / "never.pt").exists()


@pytest.mark.slow
def test_a_rank_whose_peer_hangs_exits_with_its_error_every_time(tmp_path):
    """40 runs of the hang case (about 5 minutes). Before metalab kept the failed collectives' tensors
    (``metalab.engine.distributed._FAILED_CALLS``), gloo's worker thread aborted rank 0 at interpreter exit
    ("terminate called without an active exception", exit -6 instead of 2); this test then failed at its first run."""
    codes = []
    for _ in range(40):
        code, err, _ = rank0_of_a_failing_pair(tmp_path, "hang")
        codes.append(code)
        assert code == 2, (codes, err)


def test_torchrun_train_matches_one_process_and_resumes_either_way(tmp_path):
    single, dual, dual_resumed, single_resumed = (tmp_path / n for n in ("single", "dual", "dual_resumed", "single_resumed"))
    done = torchrun(*TRAIN, "--steps", "40", "--out", str(dual))
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("results:") == 1  # only rank 0 reports
    assert metalab(*TRAIN, "--steps", "40", "--out", str(single)).returncode == 0
    assert json.loads((dual / "config.json").read_text())["world_size"] == 2
    for a, b in zip(logged(dual), logged(single), strict=True):
        assert a.keys() == b.keys() and all(a[k] == pytest.approx(b[k], rel=1e-4) for k in a)
    test = [json.loads((run / "results.json").read_text())["test"] for run in (dual, single)]
    assert [t["episodes"] for t in test[0]] == [21, 21, 21]  # split 11 + 10 over the ranks, gathered
    assert [t["mean"] for t in test[0]] == pytest.approx([t["mean"] for t in test[1]], rel=1e-4)
    # a distributed run's checkpoint continues under torchrun (exactly) and in one process (to rounding)
    for run, launch in ((dual_resumed, torchrun), (single_resumed, metalab)):
        first = torchrun(*TRAIN, "--steps", "20", "--out", str(run))
        assert first.returncode == 0, first.stderr
        again = launch("train", "--resume", str(run), "--steps", "40", "--quiet")
        assert again.returncode == 0, again.stderr
    assert logged(dual_resumed) == logged(dual)
    for a, b in zip(logged(single_resumed), logged(dual), strict=True):
        assert a.keys() == b.keys() and all(a[k] == pytest.approx(b[k], rel=1e-4) for k in a)


def test_two_nodes_joined_by_torchrun_rendezvous_train_like_one_process(tmp_path):
    """Multi-node launch: two torchrun agents (one process each) meet through the c10d rendezvous of the docs."""
    two_nodes, single = tmp_path / "two_nodes", tmp_path / "single"
    endpoint = f"127.0.0.1:{free_port()}"
    agents = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1",
                                "--node_rank", str(node), "--rdzv_backend", "c10d", "--rdzv_endpoint", endpoint,
                                "--rdzv_id", "metalab-test", "-m", "metalab", *TRAIN, "--steps", "20",
                                "--out", str(two_nodes)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
              for node in (0, 1)]
    outputs = [agent.communicate(timeout=600) for agent in agents]
    for agent, (_, err) in zip(agents, outputs):
        assert agent.returncode == 0, err
    assert sum(out.count("results:") for out, _ in outputs) == 1  # only the global rank 0 reports
    assert json.loads((two_nodes / "config.json").read_text())["world_size"] == 2
    assert metalab(*TRAIN, "--steps", "20", "--out", str(single)).returncode == 0
    for a, b in zip(logged(two_nodes), logged(single), strict=True):
        assert a.keys() == b.keys() and all(a[k] == pytest.approx(b[k], rel=1e-4) for k in a)


def test_torchrun_errors_are_clear(tmp_path):
    odd = torchrun(*TRAIN[:4], "--meta-batch-size", "5", "--steps", "2", "--out", str(tmp_path / "odd"), "--quiet")
    assert odd.returncode != 0 and "meta_batch_size=5 does not split evenly over 2 processes" in odd.stderr
    nameless = torchrun(*TRAIN, "--steps", "2")
    assert nameless.returncode != 0 and "--out" in nameless.stderr
