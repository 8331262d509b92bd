"""`metalab plot` figures from run folders (the [plot] extra)."""

import json

import pytest

from metalab.plot import plot_adaptation_steps, plot_curves, plot_shots, validation_curve
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
