"""Result records from a finished `metalab train` run folder (its results.json and config.json).

    python benchmarks/run_records.py runs/maml_rl-cheetah-vel [--paper 1=-11.68,...] [--method pretrained] \
        [--budget-label '300 iterations']

One record per test entry: benchmark = the run's benchmark, method = its algorithm (or the
label --method gives, e.g. `pretrained` for maml_rl trained with inner_steps=0), setting
`<k>steps` for an evaluation after k adaptation steps (`trial` for RL²'s last episode, the
bare `k_shot`-way setting for classifiers), metric and mean ± 95% CI from results.json, the
training time and steps used, and as command the command lines that produced the run (from
config.json). A meta-RL run scored by success rate also gets a `test` record: the success
after its last evaluated step. Appends to benchmarks/results/<benchmark>.jsonl.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import records  # noqa: E402

from metalab import results  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", help="a run folder written by `metalab train`")
    p.add_argument("--paper", default="", help="published numbers by setting, e.g. 0steps=-40.41,1steps=-11.68")
    p.add_argument("--method", help="the method label of the records (default: the run's algorithm)")
    p.add_argument("--budget-label", help="label the records as a run of another budget or setting (e.g. "
                                          "'300 iterations'), so that they keep rows of their own")
    records.add_results_flag(p)
    args = p.parse_args()
    run = Path(args.run)
    try:
        summary = json.loads((run / "results.json").read_text())
        config = json.loads((run / "config.json").read_text())
    except (OSError, ValueError) as exc:
        sys.exit(f"run_records: {run} is not a finished run folder ({exc})")
    paper = {k: float(v) for k, v in (kv.split("=") for kv in args.paper.split(",") if kv)}
    bench = summary["benchmark"]
    command = " ; ".join(config.get("commands") or ["(command not recorded)"])
    rows = []
    for test in summary["test"]:
        steps = test["steps"]
        if steps is not None:
            setting = f"{steps}steps"
        elif test["metric"] in ("return", "success"):
            setting = "trial"
        else:
            setting = f"{bench['n_way']}w{bench['k_shot']}s"
        rows.append((setting, test))
    if rows and rows[-1][1]["metric"] == "success":
        rows.append(("test", rows[-1][1]))
    out = [results.record(bench["name"], args.method or summary["algorithm"], setting, test["metric"], test["mean"], test["ci95"],
                          paper.get(setting), summary["train_seconds"], summary["steps"], command,
                          source_commit=summary.get("commit"), test_episodes=test["episodes"], run=str(run),
                          **({"budget": args.budget_label} if args.budget_label else {}))
           for setting, test in rows]
    print(records.append(bench["name"], out, args.results_dir))


if __name__ == "__main__":
    main()
