import dataclasses
import gc
import json
import re
import subprocess
import sys
import weakref

import pytest
import torch

from metalab import BenchmarkConfig, TrainConfig, build, evaluate, load_checkpoint, make_benchmark, train
from metalab.algorithms import MAML, make_config
from metalab.utils import MetalabError


@pytest.fixture
def sinusoid():
    return make_benchmark(BenchmarkConfig("sinusoid", k_shot=5))


def _maml(spec, **kw):
    torch.manual_seed(0)
    return build("maml", spec, **kw)


def test_evaluation_uses_fixed_episodes_and_reports_a_ci(sinusoid):
    algo = _maml(sinusoid.spec)
    a = evaluate(algo, sinusoid.test, 30, steps=1)
    b = evaluate(algo, sinusoid.test, 30, steps=1)
    assert a == b and a.metric == "mse" and a.episodes == 30 and a.ci95 > 0
    other_run = make_benchmark(BenchmarkConfig("sinusoid", k_shot=5, seed=99))  # another training seed
    assert evaluate(algo, other_run.test, 30, steps=1) == a


def test_trainer_writes_metrics_and_checkpoints(sinusoid, tmp_path):
    algo = _maml(sinusoid.spec)
    cfg = TrainConfig(steps=40, meta_batch_size=4, val_every=20, val_episodes=10, log_every=10)
    result = train(algo, sinusoid, cfg, tmp_path, progress=False, checkpoint_extra={"note": "x"})
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines if "train_loss" in r] == [10, 20, 30, 40]
    assert [r["step"] for r in lines if "val_mse" in r] == [20, 40]
    best, record = load_checkpoint(tmp_path / "best.pt")
    assert record["best"] == result.best and record["note"] == "x" and record["train"]["steps"] == 40
    assert result.best["value"] == min(r["val_mse"] for r in lines if "val_mse" in r)
    _, last = load_checkpoint(tmp_path / "last.pt")
    assert last["step"] == 40 and "optimizer" in last
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave nothing behind


def test_time_budget_stops_training_and_still_validates_and_checkpoints(sinusoid, tmp_path):
    algo = _maml(sinusoid.spec)
    cfg = TrainConfig(steps=10_000, meta_batch_size=2, val_every=5000, val_episodes=5, max_seconds=1e-9)
    result = train(algo, sinusoid, cfg, tmp_path, progress=False)
    assert result.steps == 1 and result.last_val is not None
    _, last = load_checkpoint(tmp_path / "last.pt")
    assert last["step"] == 1
    with pytest.raises(MetalabError, match="max_seconds"):
        TrainConfig(max_seconds=0)


def test_reptile_outer_step_is_sgd_with_linear_annealing(sinusoid):
    torch.manual_seed(0)
    algo = build("reptile", sinusoid.spec, inner_optimizer="sgd", inner_lr=0.01, inner_steps=2)
    cfg = TrainConfig(steps=4, meta_batch_size=2, outer_lr=1.0, lr_anneal=True, val_every=0, val_episodes=2)
    optimizer = algo.outer_optimizer(cfg.outer_lr)
    assert isinstance(optimizer, torch.optim.SGD)
    train(algo, sinusoid, cfg, progress=False)
    with pytest.raises(MetalabError, match="lr_anneal"):
        TrainConfig(lr_anneal=True, lr_decay_every=10)


def test_same_seed_same_training(sinusoid, tmp_path):
    cfg = TrainConfig(steps=15, meta_batch_size=3, val_every=15, val_episodes=5, log_every=5)
    logs = []
    for run in ("a", "b"):
        train(_maml(sinusoid.spec), sinusoid, cfg, tmp_path / run, progress=False)
        logs.append([{k: v for k, v in json.loads(line).items() if k != "seconds"}
                     for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()])
    assert logs[0] == logs[1]


def test_non_finite_meta_loss_is_an_error(sinusoid):
    algo = _maml(sinusoid.spec, inner_lr=1e30)
    with pytest.raises(MetalabError, match="non-finite loss"):
        algo.meta_loss(sinusoid.train.batch(0, 2))


class _AutocastSpy(MAML):
    """MAML that notes whether autocast is on when the trainer calls it (training vs validation)."""

    def __init__(self, spec, config):
        super().__init__(spec, config)
        self.seen: list[tuple[str, bool]] = []

    def meta_gradient(self, batch):
        self.seen.append(("train", torch.is_autocast_enabled("cpu")))
        return super().meta_gradient(batch)

    def adapt(self, episode, steps=None):
        self.seen.append(("val", torch.is_autocast_enabled("cpu")))
        return super().adapt(episode, steps)


def test_autocast_runs_the_training_steps_in_bfloat16_and_validation_as_is(sinusoid):
    cfg = TrainConfig(steps=3, meta_batch_size=4, outer_lr=1e-2, val_every=0, val_episodes=2, autocast="bfloat16")
    torch.manual_seed(0)
    spy = _AutocastSpy(sinusoid.spec, make_config("maml"))
    train(spy, sinusoid, cfg, progress=False)
    assert spy.seen == [("train", True)] * 3 + [("val", False)] * 2

    # the same steps by hand under torch.autocast give the same weights, and float32 training does not
    by_hand, plain = _maml(sinusoid.spec), _maml(sinusoid.spec)
    optimizer = by_hand.outer_optimizer(cfg.outer_lr)
    for step in range(cfg.steps):
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            by_hand.meta_gradient(sinusoid.train.batch(step, cfg.meta_batch_size))
        optimizer.step()
    train(plain, sinusoid, dataclasses.replace(cfg, autocast=None), progress=False)
    assert all(torch.equal(a, b) for a, b in zip(spy.parameters(), by_hand.parameters()))
    assert not all(torch.equal(a, b) for a, b in zip(spy.parameters(), plain.parameters()))
    with pytest.raises(MetalabError, match=r"autocast must be one of \['bfloat16'\].*loss scaling"):
        TrainConfig(autocast="float16")


def test_bad_checkpoints_are_clear_errors(tmp_path):
    with pytest.raises(MetalabError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(MetalabError, match="not a metalab checkpoint"):
        load_checkpoint(tmp_path / "junk.pt")


def test_unknown_names_are_clear_errors():
    with pytest.raises(MetalabError, match="unknown algorithm 'mam'"):
        build("mam", make_benchmark(BenchmarkConfig("sinusoid")).spec)
    with pytest.raises(MetalabError, match="has no hyper-parameter"):
        build("protonet", make_benchmark(BenchmarkConfig("sinusoid")).spec, inner_lr=0.1)
    with pytest.raises(MetalabError, match="unknown benchmark"):
        make_benchmark(BenchmarkConfig("mnist"))
    with pytest.raises(MetalabError, match="classifier"):
        build("protonet", make_benchmark(BenchmarkConfig("sinusoid")).spec)


def test_non_finite_loss_stops_training_with_the_last_good_checkpoint_named(sinusoid, tmp_path):
    algo = _maml(sinusoid.spec, inner_lr=1e30)
    cfg = TrainConfig(steps=5, meta_batch_size=2, val_episodes=2)
    with pytest.raises(MetalabError, match=r"training stopped at step 0: non-finite loss.*last\.pt.*skip_nonfinite"):
        train(algo, sinusoid, cfg, tmp_path, progress=False)


def test_skip_nonfinite_skips_and_counts_the_batches(sinusoid, tmp_path):
    algo = _maml(sinusoid.spec, inner_lr=1e30)
    before = {k: v.clone() for k, v in algo.state_dict().items()}
    cfg = TrainConfig(steps=4, meta_batch_size=2, val_every=0, val_episodes=2, log_every=2, skip_nonfinite=True)
    with pytest.raises(MetalabError, match="validation mse is not finite"):
        train(algo, sinusoid, cfg, tmp_path, progress=False)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r.get("skipped") for r in rows if "skipped" in r] == [2, 4]
    assert all(torch.equal(before[k], v) for k, v in algo.state_dict().items())  # no step was taken


def test_resume_drops_log_lines_after_the_checkpoint_and_a_line_cut_by_the_kill(sinusoid, tmp_path):
    cfg = TrainConfig(steps=20, meta_batch_size=2, val_every=10, val_episodes=3, log_every=5)
    train(_maml(sinusoid.spec), sinusoid, cfg, tmp_path / "full", progress=False)
    short = TrainConfig(**{**cfg.__dict__, "steps": 10})
    train(_maml(sinusoid.spec), sinusoid, short, tmp_path / "cut", progress=False)
    with (tmp_path / "cut" / "metrics.jsonl").open("a") as handle:  # written after the checkpoint, then killed
        handle.write(json.dumps({"step": 15, "seconds": 1.0, "train_loss": 9.0}) + "\n" + '{"step": 2')
    train(_maml(sinusoid.spec), sinusoid, cfg, tmp_path / "cut", progress=False, resume=True)

    def rows(run):
        return [{k: v for k, v in json.loads(line).items() if k != "seconds"}
                for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]

    assert rows("cut") == rows("full")


def test_resume_with_other_settings_or_without_a_checkpoint_is_an_error(sinusoid, tmp_path):
    cfg = TrainConfig(steps=4, meta_batch_size=2, val_episodes=2)
    with pytest.raises(MetalabError, match="no last.pt"):
        train(_maml(sinusoid.spec), sinusoid, cfg, tmp_path, progress=False, resume=True)
    train(_maml(sinusoid.spec), sinusoid, cfg, tmp_path, progress=False)
    with pytest.raises(MetalabError, match="outer_lr differ"):
        train(_maml(sinusoid.spec), sinusoid, TrainConfig(steps=4, meta_batch_size=2, val_episodes=2, outer_lr=0.1),
              tmp_path, progress=False, resume=True)
    with pytest.raises(MetalabError, match="other hyper-parameters"):
        train(_maml(sinusoid.spec, inner_lr=0.5), sinusoid, cfg, tmp_path, progress=False, resume=True)


FULL_DISK = """
import resource, signal, sys
from metalab import BenchmarkConfig, TrainConfig, build, make_benchmark, train
from metalab.utils.errors import MetalabError
bench = make_benchmark(BenchmarkConfig("sinusoid"))
cfg = TrainConfig(steps=20, meta_batch_size=2, val_every=10, val_episodes=2, log_every=5)
run = sys.argv[1]
train(build("maml", bench.spec), bench, TrainConfig(**{**cfg.__dict__, "steps": 10}), run, progress=False)
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # exceeding the limit is then an OSError, as on a full disk
resource.setrlimit(resource.RLIMIT_FSIZE, (2000, resource.RLIM_INFINITY))
try:
    train(build("maml", bench.spec), bench, cfg, run, progress=False, resume=True)
except MetalabError as exc:
    print(exc)
    sys.exit(2)
"""


def test_a_full_disk_while_saving_is_a_clear_error_and_keeps_the_previous_checkpoint(tmp_path):
    out = subprocess.run([sys.executable, "-c", FULL_DISK, str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 2, out.stderr
    assert "could not write" in out.stdout and "File too large" in out.stdout and "--resume" in out.stdout
    _, record = load_checkpoint(tmp_path / "last.pt")
    assert record["step"] == 10
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_tensorboard_events_mirror_the_metrics_when_the_extra_is_installed(sinusoid, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    train(_maml(sinusoid.spec), sinusoid, TrainConfig(steps=10, meta_batch_size=2, val_every=5, val_episodes=3,
                                                      log_every=5), tmp_path, progress=False)
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    logged = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    val = [(r["step"], r["val_mse"]) for r in logged if "val_mse" in r]
    assert [(e.step, pytest.approx(e.value)) for e in events.Scalars("val_mse")] == val
    assert [e.step for e in events.Scalars("train_loss")] == [5, 10]


def test_devices_resolve_or_are_refused_with_what_to_do():
    from metalab.engine.distributed import backend_for, resolve_device

    assert resolve_device("cpu") == torch.device("cpu") and backend_for(torch.device("cpu")) == "gloo"
    assert resolve_device("auto") == (torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu"))
    with pytest.raises(MetalabError, match="unknown device 'tpu'; choose one of cpu, cuda, cuda:N, auto"):
        resolve_device("tpu")
    with pytest.raises(MetalabError, match="unknown device"):
        resolve_device("cuda:x")
    if not torch.cuda.is_available():
        with pytest.raises(MetalabError, match="torch sees no CUDA GPU here.*--device cpu"):
            resolve_device("cuda")
    else:
        assert backend_for(resolve_device("cuda")) == "nccl"
        with pytest.raises(MetalabError, match="names one GPU, but 2 processes run"):
            resolve_device("cuda:0", world_size=2)
        with pytest.raises(MetalabError, match="torch sees"):
            resolve_device("cuda", local_rank=torch.cuda.device_count())


def test_a_failed_collective_names_it_and_keeps_what_the_failed_call_held():
    """gloo's worker thread may still hold the failed call's tensor; were the thread to free its Python
    object while the interpreter shut down, the process aborted. The call's exception is kept instead."""
    from metalab.engine import distributed as module

    class Buffer:  # stands in for the tensor handed to all_reduce
        pass

    held = []

    def all_reduce(buffer):
        raise RuntimeError("Timed out waiting 4000ms for recv operation to complete\n(more lines)")

    def average():
        buffer = Buffer()
        held.append(weakref.ref(buffer))
        with module.Distributed(0, 2, 4.0).collective("averaging the meta-gradients"):
            all_reduce(buffer)

    before = len(module._FAILED_CALLS)
    try:
        with pytest.raises(MetalabError) as failed:
            average()
        assert str(failed.value).startswith("rank 0/2: averaging the meta-gradients failed: another rank died or did "
                                            "not answer within 4 s (Timed out waiting 4000ms for recv operation to "
                                            "complete); ")
        del failed
        gc.collect()
        assert held[0]() is not None
    finally:
        del module._FAILED_CALLS[before:]
    gc.collect()
    assert held[0]() is None


def test_episodes_follow_the_method_to_its_device(sinusoid):
    """The trainer and evaluator feed episodes through ``on_device``; ``meta`` stands in for a GPU."""
    algo = _maml(sinusoid.spec)
    batch = sinusoid.train.batch(0, 2)
    assert algo.on_device(batch) == batch.to("cpu") and algo.on_device(batch).support_x.device.type == "cpu"
    moved = algo.to("meta").on_device(batch)
    assert {t.device.type for t in (moved.support_x, moved.support_y, moved.query_x, moved.query_y)} == {"meta"}
    assert moved.metas == batch.metas


def test_meta_rl_methods_stay_on_the_cpu(tmp_path):
    from metalab.algorithms.rl_base import RUNS_ON_CPU
    from metalab.experiment import build_benchmark, run_experiment
    from metalab.cli import main

    nav = build_benchmark(BenchmarkConfig("nav2d"))
    policy = build("maml_rl", nav.spec)
    task = nav.train.batch(0, 1)
    assert policy.on_device(task) is task
    with pytest.raises(MetalabError, match="run on the CPU"):
        policy.to("meta").on_device(task)
    cfg = {"algorithm": "maml_rl", "hparams": {}, "benchmark": {"name": "nav2d"}, "train": {"steps": 1},
           "eval_steps": [0], "test_episodes": 2}
    with pytest.raises(MetalabError, match=re.escape(RUNS_ON_CPU)):
        run_experiment(cfg, tmp_path / "run", device="meta")
    assert not (tmp_path / "run").exists()  # refused before anything is written
    assert main(["train", "maml_rl", "--benchmark", "nav2d", "--device", "nope", "--out", str(tmp_path / "x")]) == 2
