"""Generate docs/RESULTS.md from the result records in benchmarks/results/*.jsonl.

    python benchmarks/make_results.py

The same page is written by ``metalab reproduce <table> --records benchmarks/results --page
docs/RESULTS.md``. The newest record of each (benchmark, method, setting, metric, budget) is the
current one; ``budget`` is an optional label of a run made for a same-budget comparison (e.g.
``20min``), so it does not replace the method's main result.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from records import REPO, RESULTS_DIR  # noqa: E402

from metalab.results import write_page  # noqa: E402

OUT = REPO / "docs" / "RESULTS.md"


def main() -> None:
    print(write_page(RESULTS_DIR, OUT, "python benchmarks/make_results.py"))


if __name__ == "__main__":
    main()
