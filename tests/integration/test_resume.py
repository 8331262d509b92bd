"""A run killed with SIGKILL and resumed logs exactly what an uninterrupted run logs."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from metalab.engine.checkpoint import read_checkpoint
from metalab.utils.errors import MetalabError

RUN = ["train", "maml", "--benchmark", "sinusoid", "--steps", "240", "--meta-batch-size", "5", "--val-every", "80",
       "--val-episodes", "10", "--test-episodes", "20", "--log-every", "10", "--checkpoint-every", "20", "--quiet"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def metalab(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "metalab", *args], capture_output=True, text=True, timeout=600, env=ENV)


def logged(run) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k != "seconds"}
            for line in (run / "metrics.jsonl").read_text().splitlines()]


def checkpoint_step(path) -> int:
    try:
        return read_checkpoint(path)["step"]
    except MetalabError:  # not written yet
        return -1


def test_sigkill_then_resume_gives_the_losses_of_an_uninterrupted_run(tmp_path):
    full, killed = tmp_path / "full", tmp_path / "killed"
    assert metalab(*RUN, "--out", str(full)).returncode == 0
    proc = subprocess.Popen([sys.executable, "-m", "metalab", *RUN, "--out", str(killed)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    deadline = time.monotonic() + 300
    while checkpoint_step(killed / "last.pt") < 100 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    stopped_at = checkpoint_step(killed / "last.pt")
    assert 100 <= stopped_at < 240, "the run must be killed mid-way"
    resumed = metalab("train", "--resume", str(killed), "--quiet")
    assert resumed.returncode == 0, resumed.stderr
    assert logged(killed) == logged(full)
    tests = [json.loads((run / "results.json").read_text())["test"] for run in (full, killed)]
    assert tests[0] == tests[1]
    if importlib.util.find_spec("tensorboard") is not None:  # the events the killed run wrote after its checkpoint are purged
        assert scalars(killed, "train_loss") == scalars(full, "train_loss")
        assert scalars(killed, "val_mse") == scalars(full, "val_mse")


def scalars(run, tag: str) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    return [(e.step, e.value) for e in events.Scalars(tag)]


def test_resume_refuses_another_configuration_and_empty_folders(tmp_path):
    run = tmp_path / "run"
    short = RUN[:4] + ["--steps", "20"] + RUN[6:]
    assert metalab(*short, "--out", str(run)).returncode == 0
    other = [arg if arg != "5" else "6" for arg in short]  # another meta-batch size
    out = metalab(*other, "--resume", str(run))
    assert out.returncode == 2 and "train.meta_batch_size" in out.stderr and "Traceback" not in out.stderr
    again = metalab(*short, "--out", str(run))
    assert again.returncode == 2 and "--resume" in again.stderr
    out = metalab("train", "--resume", str(tmp_path / "nothing"))
    assert out.returncode == 2 and "not a run folder" in out.stderr
    # a longer run continues from the finished one
    longer = metalab("train", "--resume", str(run), "--steps", "40", "--quiet")
    assert longer.returncode == 0, longer.stderr
    assert json.loads((run / "results.json").read_text())["train"]["steps"] == 40
    assert logged(run)[-1]["step"] == 40
    commands = json.loads((run / "config.json").read_text())["commands"]
    assert commands == ["metalab " + " ".join(short + ["--out", str(run)]),
                        f"metalab train --resume {run} --steps 40 --quiet"]


@pytest.mark.parametrize("args, message", [
    (["--steps", "0"], "steps must be a positive integer"),
    (["--outer-lr", "nan"], "outer_lr must be a positive finite number"),
    (["--val-every", "-1"], "val_every must be an integer >= 0"),
])
def test_bad_training_settings_exit_2(args, message, tmp_path):
    out = metalab("train", "maml", "--benchmark", "sinusoid", *args, "--out", str(tmp_path / "r"))
    assert out.returncode == 2 and message in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "r").exists()
