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
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from metalab import results
from metalab.data.sequences import LabelCode
from metalab.utils.allocator import allocated_bytes

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


def test_task_modes_times_each_method_and_mode_and_explains_what_cannot_run(tmp_path):
    done = run_script("task_modes.py", "--methods", "anil", "--modes", "loop,batched", "--settings", "conv4-5w1s-mb8",
                      "--iters", "1", "--threads", "1", "--channels-first", "--downsample", "pool,stride",
                      "--results-dir", str(tmp_path))
    assert done.returncode == 0, done.stderr
    rows = read_records(tmp_path / "throughput.jsonl")
    assert [(r["method"], r["setting"]) for r in rows] == [
        ("anil-loop-channels-first", "conv4-5w1s-mb8"), ("anil-loop-channels-first-strided", "conv4-5w1s-mb8"),
        ("anil-batched-channels-first", "conv4-5w1s-mb8"), ("anil-batched-channels-first-strided", "conv4-5w1s-mb8")]
    assert all(r["value"] > 0 and r["metric"] == "seconds_per_iter" for r in rows)
    bad = run_script("task_modes.py", "--methods", "reptile", "--modes", "batched", "--settings", "conv4-5w1s-mb8",
                     "--results-dir", str(tmp_path / "bad"))
    assert bad.returncode == 2 and "reptile with task_mode=batched" in bad.stderr
    assert not (tmp_path / "bad").exists()
    unknown = run_script("task_modes.py", "--settings", "conv9", "--results-dir", str(tmp_path / "bad"))
    assert unknown.returncode == 2 and "unknown --settings conv9" in unknown.stderr
    odd = run_script("task_modes.py", "--methods", "maml", "--settings", "conv4-5w1s-mb8", "--downsample", "avg",
                     "--results-dir", str(tmp_path / "bad"))
    assert odd.returncode == 2 and "downsample must be one of" in odd.stderr


def test_plot_curves_draws_the_newest_matching_record_per_method_and_stores_its_command(tmp_path):
    pytest.importorskip("matplotlib")
    from metalab.plot import figure_command

    def rec(method, date, budget, setting="5w1s", value=0.9, curve=((60.0, 0.5), (120.0, 0.6))):
        return results.record("omniglot", method, setting, "accuracy", value, 0.01, None, 120.0, 10, "cmd",
                              budget=budget, val_curve=[list(p) for p in curve], val_setting=setting) | {"date": date}

    rows = [rec("maml", "2026-01-01", "120min"), rec("maml", "2026-01-02", "120min batched", value=0.95),
            rec("anil", "2026-01-01", "120min"), rec("anil", "2026-01-03", "20min"), rec("reptile", "2026-01-01", "120min", "5w5s")]
    results.append(rows, tmp_path / "omniglot.jsonl")
    sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
    try:
        from plot_curves import chosen_records
    finally:
        sys.path.remove(str(REPO_ROOT / "benchmarks"))
    chosen = chosen_records(tmp_path, "omniglot", "5w1s", "120min")
    assert [(r["method"], r["value"], r["budget"]) for r in chosen] == [("anil", 0.9, "120min"),
                                                                         ("maml", 0.95, "120min batched")]
    assert chosen_records(tmp_path, "omniglot", "5w1s", "120min", "5w5s") == []
    variants = chosen_records(tmp_path, "omniglot", "5w1s", "120min", each_budget=True)
    assert [(r["method"], r["budget"]) for r in variants] == [("anil", "120min"), ("maml", "120min"),
                                                              ("maml", "120min batched")]
    unbatched = chosen_records(tmp_path, "omniglot", "5w1s", "120min", each_budget=True, skip=("batched", "x"))
    assert [(r["method"], r["budget"]) for r in unbatched] == [("anil", "120min"), ("maml", "120min")]
    only_batched = chosen_records(tmp_path, "omniglot", "5w1s", "120min", each_budget=True, require=("batched",))
    assert [(r["method"], r["budget"]) for r in only_batched] == [("maml", "120min batched")]
    out = tmp_path / "c.png"
    args = ("--records", str(tmp_path), "--setting", "5w1s", "--budget", "120min", "--out", str(out))
    done = run_script("plot_curves.py", *args)
    assert done.returncode == 0, done.stderr
    assert figure_command(out) == "python benchmarks/plot_curves.py " + " ".join(args)
    narrowed = run_script("plot_curves.py", *args, "--budget-contains", "batched")
    assert narrowed.returncode == 0, narrowed.stderr
    missing = run_script("plot_curves.py", "--records", str(tmp_path), "--setting", "20w1s", "--out", str(tmp_path / "n.png"))
    assert missing.returncode == 2 and "no result records" in missing.stderr and not (tmp_path / "n.png").exists()
    both = run_script("plot_curves.py", "runs/x", "--records", str(tmp_path), "--out", str(tmp_path / "n.png"))
    assert both.returncode == 2 and "not both" in both.stderr


@pytest.mark.skipif(importlib.util.find_spec("higher") is None,
                    reason="throughput.py compares against `higher`: pip install --no-deps higher==0.2.1")
def test_throughput_checks_then_times_and_records_the_conv_bound(tmp_path, omniglot_dir, omniglot_images,
                                                                 omniglot_cache):
    done = run_script("throughput.py", "--rows", "5w1s-1st-1step", "--tasks", "1", "--reps", "1", "--threads", "1",
                      "--data-dir", str(omniglot_dir), "--cache-dir", str(omniglot_cache),
                      "--results-dir", str(tmp_path))
    assert done.returncode == 0, done.stderr
    rows = read_records(tmp_path / "throughput.jsonl")
    methods = {r["method"] for r in rows}
    assert {"loop-reference", "higher", "loop-reference-retained", "maml", "maml-loop", "maml-channels-first",
            "maml-bf16", "matmul", "conv", "conv-bound"} <= methods
    retained = {r["method"]: r["config"]["freed_memory_retained"] for r in rows if r["metric"] == "seconds_per_iter"}
    assert retained == {"loop-reference": False, "higher": False, "loop-reference-retained": True, "maml": True,
                        "maml-loop": True, "maml-channels-first": True, "maml-batched-channels-last": True,
                        "maml-bf16": True}
    seconds = {r["method"]: r["value"] for r in rows if r["metric"] == "seconds_per_iter"}
    over_retained = next(r["value"] for r in rows if r["method"] == "maml" and
                         r["metric"] == "speedup_over_retained_reference")
    assert over_retained == pytest.approx(seconds["loop-reference-retained"] / seconds["maml"])
    error = {r["method"]: r["config"]["grad_rel_err_float32"] for r in rows if r["metric"] == "seconds_per_iter"}
    assert error["maml"] < 1e-3 < error["maml-bf16"] < 1  # bfloat16 rounding, not a different meta-gradient
    matmul = sorted((r["setting"].split("-") for r in rows if r["method"] == "matmul"), key=lambda sd: sd[1])
    assert [dtype for _, dtype in matmul] == ["bfloat16", "float32"]
    assert all(int(side) in (256, 512, 1024, 2048) and size == f"{side}x{side}" for size, _ in matmul
               for side in [size.split("x")[0]])
    bound = next(r for r in rows if r["method"] == "conv-bound")
    assert bound["setting"] == "1st-order-1step-5w1s-mb1" and bound["value"] > 0
    conv = next(r for r in rows if r["method"] == "conv")
    assert bound["config"]["conv_gflops_per_s"] == conv["value"] > 0
    faults = [r["value"] for r in rows if r["metric"] == "minor_faults_per_iter"]
    assert len(faults) == 8 and all(f >= 0 for f in faults)
    live = {r["method"]: r["value"] for r in rows if r["metric"] == "peak_live_mib"}
    if allocated_bytes() is not None:  # glibc: every implementation's live peak (a task's graph at least)
        assert set(live) == set(seconds) and all(v > 0 for v in live.values())


def test_throughput_times_only_the_chosen_implementations(tmp_path, omniglot_dir, omniglot_images, omniglot_cache):
    done = run_script("throughput.py", "--rows", "5w1s-1st-1step", "--tasks", "1", "--reps", "1", "--threads", "1",
                      "--implementations", "metalab,reference", "--data-dir", str(omniglot_dir),
                      "--cache-dir", str(omniglot_cache), "--results-dir", str(tmp_path))
    assert done.returncode == 0, done.stderr
    assert "higher" not in done.stdout and "metalab bfloat16" not in done.stdout
    rows = read_records(tmp_path / "throughput.jsonl")
    timed = {r["method"] for r in rows if r["metric"] == "seconds_per_iter"}
    assert timed == {"loop-reference", "maml"}
    maml = {r["metric"]: r["value"] for r in rows if r["method"] == "maml"}
    assert "speedup_over_retained_reference" not in maml  # the retained reference was not timed
    reference = next(r["value"] for r in rows if r["method"] == "loop-reference" and r["metric"] == "seconds_per_iter")
    assert maml["speedup"] == pytest.approx(reference / maml["seconds_per_iter"])
    for args, message in ((("--implementations", "metalab,fastest"), "unknown implementations ['fastest']"),
                          (("--implementations", "metalab,higher"), "must include reference")):
        bad = run_script("throughput.py", *args, "--results-dir", str(tmp_path / "bad"))
        assert bad.returncode == 2 and message in bad.stderr, bad.stderr
    assert not (tmp_path / "bad").exists()


def test_step_ab_times_each_variant_in_fresh_processes_and_records_the_rounds(tmp_path, omniglot_dir,
                                                                              omniglot_images, omniglot_cache):
    done = run_script("step_ab.py", "--rows", "5w1s-2nd-1step", "--variants", "reference,default,released",
                      "--tasks", "1", "--rounds", "2", "--reps", "1", "--threads", "1", "--data-dir", str(omniglot_dir),
                      "--cache-dir", str(omniglot_cache), "--results-dir", str(tmp_path))
    assert done.returncode == 0, done.stderr
    rows = read_records(tmp_path / "throughput.jsonl")
    seconds = {r["method"]: r for r in rows if r["metric"] == "seconds_per_iter"}
    assert set(seconds) == {"fresh-reference", "fresh-default", "fresh-released"}
    assert {m: r["config"]["freed_memory_retained"] for m, r in seconds.items()} == {
        "fresh-reference": False, "fresh-default": True, "fresh-released": False}
    for r in seconds.values():
        assert r["setting"] == "2nd-order-1step-5w1s-mb1" and len(r["config"]["seconds_per_round"]) == 2
        assert r["value"] == pytest.approx(sorted(r["config"]["seconds_per_round"])[0] / 2
                                           + sorted(r["config"]["seconds_per_round"])[1] / 2)
    speedup = {r["method"]: r["value"] for r in rows if r["metric"] == "speedup"}
    assert speedup == pytest.approx({m: seconds["fresh-reference"]["value"] / seconds[m]["value"]
                                     for m in ("fresh-default", "fresh-released")})
    assert all(r["value"] > 0 for r in rows if r["metric"] == "max_rss_mib")
    if allocated_bytes() is not None:
        assert {r["method"] for r in rows if r["metric"] == "peak_live_mib" and r["value"] > 0} == set(seconds)
    bad = run_script("step_ab.py", "--variants", "default,fastest", "--no-record")
    assert bad.returncode == 2 and "unknown variants ['fastest']" in bad.stderr


def test_step_ab_runs_a_baseline_checkouts_source_beside_this_ones(tmp_path, omniglot_dir, omniglot_images,
                                                                   omniglot_cache):
    baseline = tmp_path / "baseline"
    shutil.copytree(REPO_ROOT / "src" / "metalab", baseline / "src" / "metalab")  # step_ab checks its runs import it
    done = run_script("step_ab.py", "--rows", "5w1s-1st-1step", "--variants", "reference,default", "--tasks", "1",
                      "--rounds", "1", "--reps", "1", "--threads", "1", "--baseline", str(baseline),
                      "--data-dir", str(omniglot_dir), "--cache-dir", str(omniglot_cache),
                      "--results-dir", str(tmp_path / "records"))
    assert done.returncode == 0, done.stderr
    assert "default@baseline" in done.stdout
    rows = read_records(tmp_path / "records" / "throughput.jsonl")
    seconds = {r["method"]: r for r in rows if r["metric"] == "seconds_per_iter"}
    assert set(seconds) == {"fresh-reference", "fresh-default", "fresh-default-baseline"}
    assert seconds["fresh-default-baseline"]["config"]["baseline"] == str(baseline)
    assert seconds["fresh-default-baseline"]["config"]["baseline_commit"] is None  # a copy, not a git checkout
    over = {r["method"]: r["value"] for r in rows if r["metric"] == "speedup_over_baseline"}
    assert over == pytest.approx({"fresh-default": seconds["fresh-default-baseline"]["value"]
                                  / seconds["fresh-default"]["value"]})
    bad = run_script("step_ab.py", "--baseline", str(tmp_path / "nothing"), "--results-dir", str(tmp_path / "bad"))
    assert bad.returncode == 2 and "has no src/metalab" in bad.stderr
    assert not (tmp_path / "bad").exists()


def test_sampler_cost_times_each_way_in_rounds_and_records_the_slowdown(tmp_path, omniglot_dir, omniglot_images,
                                                                        omniglot_cache):
    done = run_script("sampler_cost.py", "--rows", "5w1s-1st-1step", "--tasks", "1", "--rounds", "2", "--reps", "1",
                      "--threads", "1", "--data-dir", str(omniglot_dir), "--cache-dir", str(omniglot_cache),
                      "--results-dir", str(tmp_path))
    assert done.returncode == 0, done.stderr
    rows = read_records(tmp_path / "throughput.jsonl")
    by = {(r["method"], r["metric"]): r for r in rows}
    assert {m for m, _ in by} == {"sampler-loop-reference-retained", "sampler-maml"}
    for method in ("sampler-loop-reference-retained", "sampler-maml"):
        alone, sampled = by[method, "seconds_per_iter"], by[method, "seconds_per_iter_sampled"]
        assert len(alone["config"]["seconds_alone"]) == len(alone["config"]["seconds_sampled"]) == 2
        assert alone["value"] == pytest.approx(sum(alone["config"]["seconds_alone"]) / 2)
        assert sampled["value"] == pytest.approx(sum(alone["config"]["seconds_sampled"]) / 2)
        assert by[method, "slowdown"]["value"] == pytest.approx(sampled["value"] / alone["value"])
    bad = run_script("sampler_cost.py", "--rounds", "0", "--results-dir", str(tmp_path / "bad"))
    assert bad.returncode == 2 and "--rounds must be at least 1, got 0" in bad.stderr
    assert not (tmp_path / "bad").exists()


def test_profile_step_files_every_operator_under_a_kind_and_records_the_shares(tmp_path, omniglot_dir,
                                                                               omniglot_images, omniglot_cache):
    done = run_script("profile_step.py", "--rows", "5w1s-2nd-1step", "--tasks", "1", "--reps", "1", "--threads", "1",
                      "--implementations", "reference,metalab", "--data-dir", str(omniglot_dir),
                      "--cache-dir", str(omniglot_cache), "--results-dir", str(tmp_path))
    assert done.returncode == 0, done.stderr
    rows = read_records(tmp_path / "profile.jsonl")
    assert {r["method"] for r in rows} == {"loop-reference", "maml"}
    assert {r["setting"] for r in rows} == {"2nd-order-1step-5w1s-mb1"}
    for method in ("loop-reference", "maml"):
        value = {r["metric"]: r["value"] for r in rows if r["method"] == method}
        total = value.pop("seconds_per_iter_profiled")
        share = {k.removeprefix("seconds_"): v / total for k, v in value.items()}
        assert set(share) == {"convolution", "matmul", "max_pool", "batch_norm", "relu", "elementwise", "memory",
                              "bookkeeping", "other"}
        assert sum(share.values()) == pytest.approx(1.0)
        assert share["convolution"] > 0.1 and share["other"] < 0.05, (method, share)
        if method == "loop-reference":  # torch's fused batch norm; metalab's is made of basic operations
            assert share["batch_norm"] > 0.05, share
    bad = run_script("profile_step.py", "--implementations", "reference,nope", "--results-dir", str(tmp_path / "bad"))
    assert bad.returncode == 2 and "unknown implementations ['nope']" in bad.stderr
    assert not (tmp_path / "bad").exists()
    threaded = run_script("profile_step.py", "--threads", "2", "--implementations", "reference,metalab",
                          "--results-dir", str(tmp_path / "bad"))
    assert threaded.returncode == 2 and "pass --threads 1" in threaded.stderr and "['metalab']" in threaded.stderr


def test_first_block_checks_then_times_both_ways_and_records_the_speedup(tmp_path, omniglot_dir, omniglot_images,
                                                                        omniglot_cache):
    done = run_script("first_block.py", "--presets", "siamese-omniglot-5w1s", "--reps", "1", "--threads", "1",
                      "--data-dir", str(omniglot_dir), "--cache-dir", str(omniglot_cache),
                      "--results-dir", str(tmp_path))
    assert done.returncode == 0, done.stderr
    rows = read_records(tmp_path / "throughput.jsonl")
    assert {(r["method"], r["metric"]) for r in rows} == {
        ("siamese-first-block-closed-form", "seconds_per_iter"), ("siamese-first-block-closed-form", "speedup"),
        ("siamese-first-block-closed-form", "speedup_over_other_layout"),
        ("siamese-first-block-as-written", "seconds_per_iter"),
        ("siamese-first-block-closed-form-channels-first", "seconds_per_iter")}
    assert all(r["setting"] == "siamese-omniglot-5w1s" and r["value"] > 0 for r in rows)
    assert rows[0]["config"]["first_block_pools"] and rows[0]["config"]["rel_err_float64"] <= 1e-9
    bad = run_script("first_block.py", "--presets", "no-such-preset", "--results-dir", str(tmp_path / "bad"))
    assert bad.returncode == 2 and "unknown presets ['no-such-preset']" in bad.stderr


def test_meta_gradient_precision_records_the_float32_error_distribution_of_each_variant(
        tmp_path, omniglot_dir, omniglot_images, omniglot_cache):
    done = run_script("meta_gradient_precision.py", "--rows", "5w1s-1st-1step", "--tasks", "2", "--nudges", "2",
                      "--threads", "1",
                      "--data-dir", str(omniglot_dir), "--cache-dir", str(omniglot_cache),
                      "--results-dir", str(tmp_path))
    assert done.returncode == 0, done.stderr
    rows = read_records(tmp_path / "numerics.jsonl")
    metrics = ["meta_grad_rel_err_median", "meta_grad_rel_err_p90", "meta_grad_rel_err_max", "tasks_above_10x_median",
               "tasks_above_1e-3"]  # no jumps_reached_by_nudges: one step, two tasks, no error above 1e-3
    assert sorted((r["method"], r["metric"]) for r in rows) == sorted(
        (v, m) for v in ("maml", "maml-as-written", "maml-channels-first", "maml-float64-nudged") for m in metrics)
    assert all(r["setting"] == "meta-gradient-1st-order-1step-5w1s" and r["config"]["tasks"] == 2 for r in rows)
    value = {(r["method"], r["metric"]): r["value"] for r in rows}
    for variant in ("maml", "maml-as-written", "maml-channels-first", "maml-float64-nudged"):  # float32 (or one rounding) away
        assert 0 < value[variant, "meta_grad_rel_err_median"] <= value[variant, "meta_grad_rel_err_max"] < 1e-2
    bad = run_script("meta_gradient_precision.py", "--rows", "5w1s-3rd-1step", "--results-dir", str(tmp_path / "bad"))
    assert bad.returncode == 2 and "unknown rows ['5w1s-3rd-1step']" in bad.stderr


@pytest.mark.parametrize("layout, split", [("default", "vinyals"), ("channels-first", "random")])
def test_omniglot_benchmark_trains_tests_and_records(tmp_path, omniglot_dir, omniglot_images, omniglot_cache, layout,
                                                     split):
    done = run_script("omniglot.py", "--method", "protonet", "--data-dir", str(omniglot_dir), "--cache-dir",
                      str(omniglot_cache), "--settings", "5w1s", "--train-n-way", "5", "--steps", "2",
                      "--val-every", "1", "--val-episodes", "2", "--test-episodes", "4", "--threads", "1",
                      "--out", str(tmp_path / "run"), "--results-dir", str(tmp_path / "results"), "--autocast",
                      "bfloat16", "--layout", layout, "--split", split)
    assert done.returncode == 0, done.stderr
    (row,) = read_records(tmp_path / "results" / "omniglot.jsonl")
    assert row["autocast"] == "bfloat16" and row.get("layout") == (None if layout == "default" else layout)
    assert row.get("split") == (None if split == "vinyals" else split)
    assert (row["method"], row["setting"], row["metric"], row["steps"]) == ("protonet", "5w1s", "accuracy", 2)
    assert 0 <= row["value"] <= 1 and row["ci95"] > 0 and row["paper"] is not None
    assert [t for t, _ in row["val_curve"]] == sorted(t for t, _ in row["val_curve"]) and len(row["val_curve"]) == 2


@pytest.mark.parametrize("classes, labels, prefix, paper, split", [
    (5, (), "5class-", (0.244, 0.495, 0.553, 0.610, 0.636, 0.625), "vinyals"),  # Santoro et al. Table 1
    (15, ("--label-length", "5"), "15class-string5x5-", (0.0, 0.022, 0.029, 0.043, 0.056, 0.127), "random"),  # Table 2
])
def test_mann_instance_benchmark_records_every_presentation(tmp_path, omniglot_dir, omniglot_images, omniglot_cache,
                                                            classes, labels, prefix, paper, split):
    done = run_script("mann_instance.py", "--method", "lstm", "--classes", str(classes), *labels, "--split", split,
                      "--data-dir",
                      str(omniglot_dir), "--cache-dir", str(omniglot_cache), "--steps", "2", "--meta-batch-size", "2",
                      "--val-every", "1", "--val-episodes", "2", "--test-episodes", "4", "--threads", "1",
                      "--lr-decay-every", "1", "--out", str(tmp_path / "run"),
                      "--results-dir", str(tmp_path / "results"))
    assert done.returncode == 0, done.stderr
    rows = read_records(tmp_path / "results" / "mann-instance.jsonl")
    assert all(r["lr_schedule"] == "0.0001, x0.5 every 1 steps" for r in rows)
    assert all(r.get("split") == (None if split == "vinyals" else split) for r in rows)
    last = torch.load(tmp_path / "run" / "last.pt", weights_only=False)  # the rate halved after each of the 2 steps
    assert [g["lr"] for g in last["optimizer"]["param_groups"]] == [pytest.approx(0.25e-4)]
    assert [r["setting"] for r in rows] == [f"{prefix}instance{k}" for k in (1, 2, 3, 4, 5, 10)]
    assert all(r["method"] == "lstm" and 0 <= r["value"] <= 1 and r["steps"] == 2 for r in rows)
    assert tuple(r["paper"] for r in rows) == paper  # the published value of the same protocol, beside each
    # the 1st instance can only be guessed: its record states the best guesser's accuracy
    code = LabelCode(5, 5) if labels else LabelCode(1, classes)
    assert rows[0]["ceiling"] == code.first_presentation_ceiling(classes) and all("ceiling" not in r for r in rows[1:])
    # the validation curve (accuracy over all steps, every step) travels with each record
    assert all(len(r["val_curve"]) == 2 and r["val_setting"] == f"{prefix}all-steps" for r in rows)


def test_mann_instance_benchmark_fine_tunes_from_another_runs_weights(tmp_path, omniglot_dir, omniglot_cache):
    def run(out, *extra):
        return run_script("mann_instance.py", "--method", "lstm", "--classes", "5", "--data-dir", str(omniglot_dir),
                          "--cache-dir", str(omniglot_cache), "--steps", "1", "--meta-batch-size", "2",
                          "--val-every", "1", "--val-episodes", "2", "--test-episodes", "2", "--threads", "1",
                          "--out", str(tmp_path / out), "--results-dir", str(tmp_path / "results"), *extra)

    assert run("first").returncode == 0
    first = torch.load(tmp_path / "first" / "best.pt", weights_only=False)["state_dict"]
    done = run("tuned", "--init-from", str(tmp_path / "first" / "best.pt"), "--outer-lr", "1e-12")
    assert done.returncode == 0, done.stderr
    tuned = torch.load(tmp_path / "tuned" / "last.pt", weights_only=False)["state_dict"]
    # one step at a negligible rate: the weights are still the first run's (a fresh start would differ entirely)
    assert all(torch.allclose(tuned[k], first[k], atol=1e-6) for k in first)
    rows = read_records(tmp_path / "results" / "mann-instance.jsonl")
    assert [r.get("init_from") for r in rows[-6:]] == [str(tmp_path / "first" / "best.pt")] * 6
    other = run("other", "--init-from", str(tmp_path / "first" / "best.pt"), "--hparams", "controller_size=8")
    assert other.returncode == 2 and "other settings" in other.stderr
    missing = run("none", "--init-from", str(tmp_path / "nothing.pt"))
    assert missing.returncode == 2 and "no such checkpoint" in missing.stderr


def test_evaluation_times_both_ways_checks_they_agree_and_records_the_speedup(tmp_path, omniglot_dir, omniglot_images,
                                                                              omniglot_cache):
    common = ("--data-dir", str(omniglot_dir), "--cache-dir", str(omniglot_cache), "--results-dir", str(tmp_path))
    done = run_script("evaluation.py", "--methods", "maml,protonet", "--settings", "5w1s", "--episodes", "3",
                      "--reps", "1", "--threads", "2", *common)
    assert done.returncode == 0, done.stderr
    rows = read_records(tmp_path / "evaluation.jsonl")
    by_key = {(r["method"], r["metric"]): r["value"] for r in rows}
    assert len(rows) == len(by_key) == 6 and {r["setting"] for r in rows} == {"5w1s"}
    for method in ("maml", "protonet"):
        loop, threads = by_key[f"{method}-loop", "seconds_per_episode"], by_key[f"{method}-threads", "seconds_per_episode"]
        assert loop > 0 and threads > 0 and by_key[method, "speedup"] == pytest.approx(loop / threads)
    for bad_args, message in [(("--settings", "5x1"), "--settings 5x1: write each as <n>w<k>s"),
                              (("--methods", "mann"), "mann does not score episodes on threads"),
                              (("--methods", "mamll"), "unknown algorithm 'mamll'"),
                              (("--threads", "1"), "threads need at least two cores")]:
        bad = run_script("evaluation.py", "--episodes", "1", "--reps", "1", "--threads", "2", *common[:4], "--results-dir",
                         str(tmp_path / "bad"), *bad_args)
        assert bad.returncode == 2 and message in bad.stderr, bad.stderr
    assert not (tmp_path / "bad").exists()
