"""The CLI end to end, in subprocesses, as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from metalab import results as records_of

REPO = Path(__file__).resolve().parents[2]


def metalab(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "metalab", *args], capture_output=True, text=True, timeout=timeout)


def test_list_names_every_algorithm_and_benchmark():
    out = metalab("list", "--json")
    assert out.returncode == 0, out.stderr
    listing = json.loads(out.stdout)
    assert {"maml", "fomaml", "protonet"} <= set(listing["algorithms"])
    assert {"sinusoid", "omniglot"} <= set(listing["benchmarks"])


def test_maml_on_sinusoid_learns_to_adapt(tmp_path):
    run = tmp_path / "run"
    out = metalab("train", "maml", "--benchmark", "sinusoid", "--steps", "1500", "--meta-batch-size", "10",
                  "--val-every", "500", "--val-episodes", "50", "--test-episodes", "200",
                  "--eval-steps", "0,10", "--out", str(run), "--quiet")
    assert out.returncode == 0, out.stderr
    results = json.loads((run / "results.json").read_text())
    mse = {r["steps"]: r["mean"] for r in results["test"]}
    assert mse[10] < 0.6 * mse[0], mse
    assert {"config.json", "metrics.jsonl", "best.pt", "last.pt", "results.json"} <= {p.name for p in run.iterdir()}
    # `metalab eval` of the checkpoint scores the same fixed episodes, every time
    again = metalab("eval", str(run / "best.pt"), "--episodes", "200", "--eval-steps", "10",
                    "--out", str(tmp_path / "eval.json"))
    assert again.returncode == 0, again.stderr
    evaluated = json.loads((tmp_path / "eval.json").read_text())["test"][0]
    assert evaluated["mean"] == pytest.approx(mse[10], rel=1e-6)
    # the run names the source it trained with; its records carry that commit
    assert results["commit"] == records_of.commit()
    written = subprocess.run([sys.executable, str(REPO / "benchmarks" / "run_records.py"), str(run), "--results-dir",
                              str(tmp_path / "records")], capture_output=True, text=True, timeout=120)
    assert written.returncode == 0, written.stderr
    rows = [json.loads(line) for line in (tmp_path / "records" / "sinusoid.jsonl").read_text().splitlines()]
    assert [(r["setting"], r["value"], r["commit"]) for r in rows] == [
        (f"{t['steps']}steps", t["mean"], results["commit"]) for t in results["test"]]


def test_protonet_on_real_omniglot_beats_chance_on_held_out_characters(tmp_path, omniglot_dir, omniglot_images, omniglot_cache):
    run = tmp_path / "pn"
    out = metalab("train", "protonet", "--benchmark", "omniglot", "--data-dir", str(omniglot_dir),
                  "--cache-dir", str(omniglot_cache), "--n-way", "5", "--k-shot", "1", "--train-n-way", "20",
                  "--train-n-query", "5", "--meta-batch-size", "1", "--steps", "150", "--val-every", "150",
                  "--val-episodes", "20", "--test-episodes", "100", "--out", str(run), "--quiet")
    assert out.returncode == 0, out.stderr
    results = json.loads((run / "results.json").read_text())
    accuracy = results["test"][0]["mean"]
    assert accuracy > 0.8, accuracy  # chance is 0.2 on 5-way episodes of the 423 test characters


@pytest.mark.parametrize("method", ["matching_net", "relation_net"])
def test_metric_method_on_real_omniglot_beats_chance_on_held_out_characters(method, tmp_path, omniglot_dir,
                                                                            omniglot_images, omniglot_cache):
    run = tmp_path / method
    out = metalab("train", method, "--benchmark", "omniglot", "--data-dir", str(omniglot_dir),
                  "--cache-dir", str(omniglot_cache), "--n-way", "5", "--k-shot", "1", "--train-n-way", "5",
                  "--train-n-query", "10", "--meta-batch-size", "1", "--steps", "150", "--val-every", "150",
                  "--val-episodes", "20", "--test-episodes", "100", "--out", str(run), "--quiet")
    assert out.returncode == 0, out.stderr
    accuracy = json.loads((run / "results.json").read_text())["test"][0]["mean"]
    assert accuracy > 0.6, accuracy  # chance 0.2; 150 steps reach 0.74 (matching) and 0.81 (relation)


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "mam"], "unknown algorithm 'mam'"),
        (["train", "maml", "--benchmark", "mnist"], "unknown benchmark 'mnist'"),
        (["train", "maml", "--benchmark", "omniglot"], "--data-dir"),
        (["train", "maml", "--benchmark", "omniglot", "--data-dir", "/nonexistent/omniglot"], "/nonexistent/omniglot"),
        (["train", "protonet", "--benchmark", "sinusoid"], "classifier"),
        (["train", "maml", "--steps", "0"], "steps must be a positive integer"),
        (["train", "maml", "--steps", "ten"], "invalid int value"),
        (["train", "maml", "--autocast", "float16"], "autocast must be one of ['bfloat16']"),
        (["train", "maml_rl", "--benchmark", "nav2d", "--autocast", "bfloat16"], "autocast is for the few-shot"),
        (["train", "protonet", "--inner-lr", "0.1", "--benchmark", "sinusoid"], "no hyper-parameter"),
        (["eval", "/nonexistent/best.pt"], "does not exist"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_bad_input_exits_2_with_one_clear_line(args, message, tmp_path):
    out = metalab(*args, "--out", str(tmp_path / "r")) if args[0] == "train" else metalab(*args)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("metalab: error:") and message in lines[0], out.stderr
    assert not (tmp_path / "r").exists()  # nothing half-written


def test_too_many_ways_for_the_split_is_a_clear_error(omniglot_dir, omniglot_images, omniglot_cache, tmp_path):
    out = metalab("train", "protonet", "--benchmark", "omniglot", "--data-dir", str(omniglot_dir),
                  "--cache-dir", str(omniglot_cache), "--n-way", "5000", "--out", str(tmp_path / "r"))
    assert out.returncode == 2 and "n_way=5000 is larger than" in out.stderr
    out = metalab("train", "protonet", "--benchmark", "omniglot", "--data-dir", str(omniglot_dir),
                  "--cache-dir", str(omniglot_cache), "--k-shot", "10", "--n-query", "15", "--out", str(tmp_path / "r"))
    assert out.returncode == 2 and "k_shot + n_query = 25 exceeds the 20 samples" in out.stderr
    assert not (tmp_path / "r").exists()


def test_a_corrupt_checkpoint_is_a_clear_error(tmp_path):
    (tmp_path / "best.pt").write_bytes(b"\x80\x04 half a pickle")
    out = metalab("eval", str(tmp_path / "best.pt"))
    assert out.returncode == 2 and "not a metalab checkpoint" in out.stderr and "Traceback" not in out.stderr


def test_mann_on_real_omniglot_sequences_end_to_end(tmp_path, omniglot_dir, omniglot_cache):
    run = tmp_path / "mann"
    out = metalab("train", "mann", "--benchmark", "omniglot-online", "--data-dir", str(omniglot_dir),
                  "--cache-dir", str(omniglot_cache), "--n-way", "5", "--n-query", "4", "--meta-batch-size", "4",
                  "--steps", "20", "--val-every", "20", "--val-episodes", "10", "--test-episodes", "30",
                  "--out", str(run), "--quiet")
    assert out.returncode == 0, out.stderr
    test = json.loads((run / "results.json").read_text())["test"][0]
    assert test["metric"] == "accuracy" and 0.0 <= test["mean"] <= 1.0 and test["episodes"] == 30
    again = metalab("eval", str(run / "best.pt"), "--episodes", "30", "--out", str(tmp_path / "eval.json"))
    assert again.returncode == 0, again.stderr
    assert json.loads((tmp_path / "eval.json").read_text())["test"][0]["mean"] == pytest.approx(test["mean"], rel=1e-6)
    released = metalab("eval", str(run / "best.pt"), "--episodes", "30", "--release-freed-memory", "--out",
                       str(tmp_path / "released.json"))  # the allocator changes no number
    assert released.returncode == 0, released.stderr
    assert json.loads((tmp_path / "released.json").read_text()) == json.loads((tmp_path / "eval.json").read_text())


def test_a_preset_with_overrides_and_the_preset_list(tmp_path):
    listed = metalab("list", "--presets", "--json")
    assert listed.returncode == 0 and "maml-sinusoid" in json.loads(listed.stdout)
    run = tmp_path / "preset"
    out = metalab("train", "--preset", "maml-sinusoid", "--steps", "30", "--val-every", "30", "--val-episodes", "5",
                  "--test-episodes", "20", "--hparam", "inner_lr=0.02", "--out", str(run), "--quiet")
    assert out.returncode == 0, out.stderr
    config = json.loads((run / "config.json").read_text())
    assert config["algorithm"] == "maml" and config["benchmark"]["k_shot"] == 5  # from the preset
    assert config["train"]["steps"] == 30 and config["train"]["meta_batch_size"] == 25  # overridden / preset
    assert config["hparams"]["inner_lr"] == 0.02 and config["eval_steps"] == [1, 5, 10]
    for args, message in [(["--preset", "nope"], "unknown preset 'nope'"),
                          (["protonet", "--preset", "maml-sinusoid"], "preset maml-sinusoid trains maml"),
                          (["--preset", "maml-sinusoid", "--steps", "ten"], "invalid int value")]:
        bad = metalab("train", *args, "--out", str(tmp_path / "bad"))
        assert bad.returncode == 2 and message in bad.stderr and "Traceback" not in bad.stderr, bad.stderr


def test_reproduce_writes_the_table_and_loads_finished_runs(tmp_path):
    out = tmp_path / "repro"
    first = metalab("reproduce", "sinusoid", "--minutes", "0.05", "--out", str(out), "--quiet")
    assert first.returncode == 0, first.stderr
    table = (out / "sinusoid.md").read_text()
    for steps, paper in ((1, "0.670"), (5, "0.380"), (10, "0.350")):
        assert f"| maml | 5shot-{steps}steps |" in table and f"| {paper} |" in table
    again = metalab("reproduce", "sinusoid", "--minutes", "0.05", "--out", str(out), "--quiet")
    assert again.returncode == 0 and "loaded maml-sinusoid" in again.stdout
    assert (out / "sinusoid.md").read_text() == table
    bad = metalab("reproduce", "imagenet", "--out", str(out))
    assert bad.returncode == 2 and "invalid choice" in bad.stderr
    bad = metalab("reproduce", "sinusoid", "--only", "maml-omniglot-5w1s", "--out", str(out))
    assert bad.returncode == 2 and "has no preset ['maml-omniglot-5w1s']" in bad.stderr
    only = metalab("reproduce", "sinusoid", "--minutes", "0.05", "--only", "maml-sinusoid", "--out", str(out), "--quiet")
    assert only.returncode == 0 and "loaded maml-sinusoid" in only.stdout


def test_reproduce_appends_records_and_renders_the_results_page(tmp_path):
    out, records, page = tmp_path / "repro", tmp_path / "records", tmp_path / "docs" / "RESULTS.md"
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "curves.png").write_bytes(b"png")
    args = ("reproduce", "sinusoid", "--minutes", "0.05", "--out", str(out), "--quiet", "--records", str(records))
    done = metalab(*args, "--page", str(page))
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in (records / "sinusoid.jsonl").read_text().splitlines()]
    assert [(r["method"], r["setting"], r["metric"], r["paper"]) for r in rows] == [
        ("maml", "5shot-1steps", "mse", 0.67), ("maml", "5shot-5steps", "mse", 0.38), ("maml", "5shot-10steps", "mse", 0.35)]
    results = json.loads((out / "maml-sinusoid" / "results.json").read_text())
    assert [r["value"] for r in rows] == [t["mean"] for t in results["test"]]
    assert all(r["budget"] == "0.05min" and r["steps"] == results["steps"] and r["command"].startswith(
        "metalab reproduce sinusoid --minutes 0.05") for r in rows)
    text = page.read_text()
    assert "| maml | 5shot-10steps (0.05min) | mse |" in text and "![curves](curves.png)" in text
    assert "Generated by `metalab reproduce sinusoid" in text
    assert all(r["commit"] == results["commit"] == records_of.commit() for r in rows)
    # loading the finished run appends the same numbers again, with the commit the run names (here one of an
    # older source), and the page keeps one row per setting
    (out / "maml-sinusoid" / "results.json").write_text(json.dumps({**results, "commit": "0123456789ab"}))
    again = metalab(*args, "--page", str(page))
    assert again.returncode == 0 and len((records / "sinusoid.jsonl").read_text().splitlines()) == 6
    loaded = [json.loads(line) for line in (records / "sinusoid.jsonl").read_text().splitlines()[3:]]
    assert [r["commit"] for r in loaded] == ["0123456789ab"] * 3
    assert page.read_text().count("| maml | 5shot-10steps (0.05min) |") == 1
    alone = metalab("reproduce", "sinusoid", "--out", str(out), "--page", str(page))
    assert alone.returncode == 2 and "--records" in alone.stderr
