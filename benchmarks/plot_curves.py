"""Learning curves for the docs, from run folders or from the result records.

From run folders (``metalab plot --kind curves``): validation accuracy (± 95% CI) against
meta-iteration and against training wall time, read from each folder's ``metrics.jsonl``:

    python benchmarks/plot_curves.py runs/bench-omniglot-maml runs/bench-omniglot-anil \
        --out docs/omniglot_5w1s_gradient_curves.png --title "Omniglot 5-way 1-shot"

From the records (the run folders need not exist): the validation curve each record carries
(``val_curve``) against training time, ending at the record's test accuracy ± 95% CI. The newest
record of each method with the given benchmark, setting and budget label prefix is drawn (its curve
validated on --val-setting, by default the setting itself):

    python benchmarks/plot_curves.py --records benchmarks/results --benchmark omniglot \
        --setting 5w1s --budget 120min --out docs/omniglot_120min_5w1s_curves.png \
        --title "Omniglot 5-way 1-shot, 120 min on one thread"

The command is stored in the PNG, and the results page shows it under the figure. Needs
matplotlib (``pip install -e ".[plot]"``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from records import command  # noqa: E402

from metalab import results  # noqa: E402
from metalab.plot import plot_curves, plot_record_curves  # noqa: E402
from metalab.utils.errors import MetalabError  # noqa: E402


def chosen_records(directory: Path, benchmark: str, setting: str, budget: str, val_setting: str | None = None,
                   each_budget: bool = False, skip: Sequence[str] = (), require: Sequence[str] = ()) -> list[dict]:
    """The records of ``benchmark``/``setting`` whose budget label starts with ``budget`` (contains none
    of the texts in ``skip`` and every text in ``require``) and that carry a validation curve measured on ``val_setting`` (default:
    ``setting``), one per method (the newest), by method name; with ``each_budget``, one per method and
    budget label (variants of one method side by side)."""
    val_setting = val_setting or setting

    def wanted(label: str) -> bool:
        return (label.startswith(budget) and not any(text in label for text in skip)
                and all(text in label for text in require))

    rows = [r for r in results.load(directory)
            if r["benchmark"] == benchmark and r["setting"] == setting and wanted(r.get("budget") or "")
            and r.get("val_curve") and r.get("val_setting", setting) == val_setting]
    newest: dict[tuple[str, str], dict] = {}
    for r in rows:
        key = (r["method"], (r.get("budget") or "") if each_budget else "")
        if key not in newest or r["date"] > newest[key]["date"]:
            newest[key] = r
    return [newest[k] for k in sorted(newest)]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="*", type=Path, help="run folders written by `metalab train` (without --records)")
    p.add_argument("--records", type=Path, help="a folder of result records (benchmarks/results) to draw from "
                                                "instead of run folders")
    p.add_argument("--benchmark", default="omniglot", help="with --records: the records' benchmark")
    p.add_argument("--setting", help="with --records: the records' setting, e.g. 5w1s")
    p.add_argument("--budget", default="", help="with --records: the budget label prefix, e.g. 120min")
    p.add_argument("--skip-budget", action="append", default=[], metavar="TEXT",
                   help="with --records: leave out the records whose budget label contains TEXT (repeatable), e.g. "
                        "' + 15 min' for fine-tuning runs that share a prefix with the runs they started from")
    p.add_argument("--budget-contains", action="append", default=[], metavar="TEXT",
                   help="with --records: keep only the records whose budget label contains TEXT (repeatable), e.g. "
                        "'random character split' for every method's run on that split, whatever its model")
    p.add_argument("--val-setting", help="with --records: the setting the curves were validated on, where it is not "
                                         "--setting (mann-instance records: 5class-all-steps)")
    p.add_argument("--each-budget", action="store_true",
                   help="with --records: one curve per method and budget label (a method's variants side by side) "
                        "instead of one per method")
    p.add_argument("--out", required=True, type=Path, help="PNG file")
    p.add_argument("--title", default="")
    args = p.parse_args()
    if bool(args.runs) == bool(args.records):
        p.error("give either run folders or --records (with --setting), not both or neither")
    if args.records and not args.setting:
        p.error("--records needs --setting (e.g. --setting 5w1s)")
    try:
        if args.records:
            chosen = chosen_records(args.records, args.benchmark, args.setting, args.budget, args.val_setting,
                                    args.each_budget, args.skip_budget, args.budget_contains)
            print(plot_record_curves(chosen, args.out, args.title, command()))
        else:
            print(plot_curves(args.runs, args.out, args.title, command()))
    except MetalabError as err:
        print(f"plot_curves.py: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
