"""Time the autograder: release, and grading one reference-solution submission per exercise.

Run: `.venv/bin/python benchmarks/bench_grading.py` (or `make bench`). Writes
benchmarks/results/grading.json. Budget (DESIGN.md): a reference solution autogrades in <= 60 s.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write  # noqa: E402

from autograder.course import SOLUTIONS, assignments, notebook_names, release  # noqa: E402
from autograder.grading import grade_folder  # noqa: E402


def main() -> None:
    results: dict = {"release_s": {}, "grade_one_solution_s": {}, "score": {}}
    for assignment in assignments():
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            start = time.perf_counter()
            release([assignment], dest=tmp / "rel")
            results["release_s"][assignment] = round(time.perf_counter() - start, 1)
            name = notebook_names(assignment)[0]
            (tmp / "subs" / "reference").mkdir(parents=True)
            shutil.copy(SOLUTIONS / assignment / name, tmp / "subs" / "reference" / name)
            start = time.perf_counter()
            rows = grade_folder(assignment, tmp / "subs", tmp / "out", show_progress=False)
            results["grade_one_solution_s"][assignment] = round(time.perf_counter() - start, 1)
            results["score"][assignment] = f"{sum(r.score for r in rows):g}/{sum(r.max_score for r in rows):g}"
    results["budgets"] = {"grade_one_solution_s": 60}
    write("grading", results)


if __name__ == "__main__":
    main()
