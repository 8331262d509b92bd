"""`metalab plot` figures from run folders (the [plot] extra)."""

import json

import pytest

from metalab import results
from metalab.plot import (figure_command, plot_adaptation_steps, plot_curves, plot_record_curves, plot_shots,
                          validation_curve)
from metalab.utils.errors import MetalabError

pytest.importorskip("matplotlib")
PNG = b"\x89PNG\r\n\x1a\n"


def _run(folder, algorithm="maml", k_shot=1, steps=(0, 1, 5), base=0.5):
    folder.mkdir()
    rows = [{"step": s, "seconds": 6.0 * s, "train_loss": 1.0 / s} for s in (10, 20)]
    rows += [{"step": s, "seconds": 6.0 * s + 1, "val_accuracy": base + s / 100, "val_accuracy_ci95": 0.02}
             for s in (10, 20)]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 3')
    tests = [{"metric": "accuracy", "mean": base + (n or 0) / 50, "ci95": 0.01, "episodes": 100, "steps": n, "seed": 1}
             for n in steps]
    (folder / "results.json").write_text(json.dumps({"algorithm": algorithm, "benchmark": {"k_shot": k_shot},
                                                     "test": tests}))
    return folder


def test_curves_read_validation_rows_and_ignore_a_cut_last_line(tmp_path):
    curve = validation_curve(_run(tmp_path / "a"))
    assert curve.steps == [10, 20] and curve.means == [0.6, 0.7] and curve.minutes == [61 / 60, 121 / 60]


def test_the_three_figures_are_pngs(tmp_path):
    runs = [_run(tmp_path / "a"), _run(tmp_path / "b", k_shot=5, base=0.7), _run(tmp_path / "c", "protonet", 5)]
    for plot, name in ((plot_curves, "c.png"), (plot_adaptation_steps, "s.png"), (plot_shots, "k.png")):
        path = plot(runs, tmp_path / name, "title")
        assert path.read_bytes().startswith(PNG) and path.stat().st_size > 10_000


def test_missing_inputs_are_clear_errors(tmp_path):
    with pytest.raises(MetalabError, match="does not exist"):
        plot_curves([tmp_path / "nothing"], tmp_path / "x.png")
    with pytest.raises(MetalabError, match="--eval-steps"):
        plot_adaptation_steps([_run(tmp_path / "one", steps=(None,))], tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def _record(method, value, curve):
    r = results.record("omniglot", method, "5w1s", "accuracy", value, 0.004, 0.987, 7200.0, 4000, "cmd", budget="120min")
    r["val_curve"] = curve
    return r


def test_record_curves_are_a_png_that_keeps_its_command_for_the_results_page(tmp_path):
    rows = [_record("maml", 0.96, [[600.0, 0.8], [7200.0, 0.95]]), _record("anil", 0.97, [[300.0, 0.7], [7200.0, 0.96]])]
    path = plot_record_curves(rows, tmp_path / "docs" / "r.png", "title", "python benchmarks/plot_curves.py --x 'a b'")
    assert path.read_bytes().startswith(PNG) and path.stat().st_size > 10_000
    assert figure_command(path) == "python benchmarks/plot_curves.py --x 'a b'"
    page = results.write_page(tmp_path / "records", tmp_path / "docs" / "RESULTS.md", "gen").read_text()
    assert "![r](r.png)\n\n`python benchmarks/plot_curves.py --x 'a b'`" in page


def test_a_figure_without_a_command_and_a_file_that_is_no_png_have_none(tmp_path):
    plain = plot_curves([_run(tmp_path / "a")], tmp_path / "plain.png")
    (tmp_path / "fake.png").write_text("not a png")
    assert figure_command(plain) is None and figure_command(tmp_path / "fake.png") is None


def test_records_without_a_curve_or_none_at_all_are_clear_errors(tmp_path):
    with pytest.raises(MetalabError, match="no result records"):
        plot_record_curves([], tmp_path / "x.png")
    with pytest.raises(MetalabError, match="maml 5w1s"):
        plot_record_curves([_record("maml", 0.9, [])], tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_metalab_plot_stores_its_command_line_and_exits_2_on_a_missing_run(tmp_path, capsys):
    from metalab.cli import main

    run, out = _run(tmp_path / "a"), tmp_path / "fig.png"
    assert main(["plot", str(run), "--out", str(out), "--title", "two words"]) == 0
    assert figure_command(out) == f"metalab plot {run} --out {out} --title 'two words'"
    assert main(["plot", str(tmp_path / "gone"), "--out", str(tmp_path / "g.png")]) == 2
    assert "does not exist" in capsys.readouterr().err and not (tmp_path / "g.png").exists()
