"""Numbers written by hand in the README come from result records."""

from __future__ import annotations

import re
from pathlib import Path

from metalab import results

REPO = Path(__file__).resolve().parents[2]
METHODS = {"MAML": "maml", "first-order MAML": "fomaml", "ANIL": "anil", "Meta-SGD": "meta_sgd", "Reptile": "reptile"}
# (model, split) of a table row -> the budget labels its records may carry
BUDGETS = {
    ("strided", "Vinyals"): {"120min strided"},
    ("strided", "random"): {"120min strided, random character split"},
    ("max-pooling", "Vinyals"): {"120min", "120min batched channels-last", "120min persistent Adam"},
    ("max-pooling", "random"): {"120min persistent Adam, random character split"},
}


def _gradient_table(readme: str) -> list[list[str]]:
    section = readme.split("## Results on Omniglot: the gradient-based family", 1)[1].split("\n## ", 1)[0]
    rows = [line.strip("|").split("|") for line in section.splitlines() if line.startswith("| ")]
    return [[cell.strip() for cell in row] for row in rows[1:]]  # without the header


def test_the_readme_gradient_table_is_the_records():
    records = [r for r in results.load(REPO / "benchmarks" / "results") if r["benchmark"] == "omniglot"]
    rows = _gradient_table((REPO / "README.md").read_text())
    assert len(rows) >= 10
    for method, model, split, *cells, _paper in rows:
        budgets = BUDGETS[(model, split)]
        for setting, cell in zip(("5w1s", "5w5s"), cells):
            if cell == "not run":
                assert not [r for r in records if r["method"] == METHODS[method] and r["setting"] == setting
                            and r.get("budget") in budgets], f"{method} {model} {split} {setting} has a record now"
                continue
            value, ci = (float(v) for v in re.fullmatch(r"([\d.]+) ± ([\d.]+)", cell).groups())
            matches = [r for r in records if r["method"] == METHODS[method] and r["setting"] == setting
                       and r.get("budget") in budgets and round(100 * r["value"], 2) == value
                       and round(100 * r["ci95"], 2) == ci]
            assert matches, f"README row {method} / {model} / {split} / {setting}: no record with {cell}"
