"""Batch grading: plain sequential ``nbgrader autograde`` against this CLI, same submissions, one run.

Run: `.venv/bin/python benchmarks/bench_batch.py [--n 40] [--assignment ch02_ml_basics]`.
Writes benchmarks/results/batch_grading.json: wall time of each, the ratio, peak memory
(the sum of the resident memory of the grader and every process under it, sampled every
0.2 s) and whether the two agree on every score. The class is a mix of correct, wrong and
blank notebooks, as a real one is. Issue 4's target: a ratio of at least 1.8 on 2 cores.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import nbformat  # noqa: E402
from common import write  # noqa: E402

from autograder.course import EXERCISES, SOLUTIONS, Course, notebook_names  # noqa: E402
from autograder.grading import grade_folder  # noqa: E402


class PeakMemory:
    """Sample the summed RSS of this process and all its descendants."""

    def __init__(self, interval: float = 0.2):
        self.interval, self.peak, self._stop = interval, 0, threading.Event()

    @staticmethod
    def _tree_rss(root: int) -> int:
        parents, rss = {}, {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    parents[int(entry)] = int(fh.read().rsplit(")", 1)[1].split()[1])
                with open(f"/proc/{entry}/statm") as fh:
                    rss[int(entry)] = int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
            except (OSError, IndexError, ValueError):
                continue
        members, frontier = {root}, [root]
        while frontier:
            p = frontier.pop()
            for child, parent in parents.items():
                if parent == p and child not in members:
                    members.add(child)
                    frontier.append(child)
        return sum(rss.get(p, 0) for p in members)

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self._tree_rss(os.getpid()))
            time.sleep(self.interval)

    def __enter__(self):
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def make_class(assignment: str, n: int, folder: Path) -> dict[str, str]:
    """``n`` submissions: half correct, a quarter with one wrong answer, a quarter blank."""
    name = notebook_names(assignment)[0]
    solution = nbformat.read(SOLUTIONS / assignment / name, as_version=4)
    answers = {c.metadata["nbgrader"]["grade_id"]: "\n".join(
        line for line in c.source.splitlines() if "### BEGIN SOLUTION" not in line and "### END SOLUTION" not in line)
        for c in solution.cells if c.metadata.get("nbgrader", {}).get("solution")}
    first = sorted(answers)[0]
    kinds = {}
    for i in range(n):
        kind = "correct" if i % 4 in (0, 1) else ("wrong" if i % 4 == 2 else "blank")
        nb = nbformat.read(EXERCISES / assignment / name, as_version=4)
        for c in nb.cells:
            gid = c.metadata.get("nbgrader", {}).get("grade_id")
            if gid in answers and kind != "blank":
                c.source = answers[gid]
                if kind == "wrong" and gid == first:
                    c.source = c.source.replace("return ", "return 0 * ", 1)
        student = f"s{i:03d}"
        (folder / student / assignment).mkdir(parents=True)
        nbformat.write(nb, folder / student / assignment / name)
        kinds[student] = kind
    return kinds


def plain_nbgrader(assignment: str, folder: Path) -> tuple[float, int, dict]:
    """nbgrader autograde over every student, one after another, as nbgrader does it."""
    from nbgrader.api import Gradebook
    from nbgrader.converters import Autograde

    course = Course.create([assignment])
    try:
        course.generate(assignment)
        shutil.copytree(folder, course.root / "submitted")
        with PeakMemory() as mem:
            start = time.perf_counter()
            ok, log = course.run(Autograde, assignment_id=assignment, force=True, create_student=True)
            seconds = time.perf_counter() - start
        if not ok:
            raise RuntimeError(log[-2000:])
        totals = {}
        with Gradebook(course.config.CourseDirectory.db_url, course_id="llmcourse") as gb:
            for sub in gb.assignment_submissions(assignment):
                totals[sub.student.id] = float(sub.score)
        return seconds, mem.peak, totals
    finally:
        course.cleanup()


def this_cli(assignment: str, folder: Path, out: Path, workers: int) -> tuple[float, int, dict]:
    with PeakMemory() as mem:
        start = time.perf_counter()
        rows = grade_folder(assignment, folder, out, workers=workers, show_progress=False, resume=False)
        seconds = time.perf_counter() - start
    totals: dict[str, float] = {}
    for r in rows:
        totals[r.student] = totals.get(r.student, 0.0) + r.score
    return seconds, mem.peak, totals


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=40)
    parser.add_argument("--assignment", default="ch02_ml_basics")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        kinds = make_class(args.assignment, args.n, tmp / "subs")
        ours_s, ours_mem, ours = this_cli(args.assignment, tmp / "subs", tmp / "out", args.workers)
        plain_s, plain_mem, plain = plain_nbgrader(args.assignment, tmp / "subs")
    disagree = sorted(s for s in ours if abs(ours[s] - plain.get(s, -1)) > 1e-9)
    results = {
        "assignment": args.assignment,
        "submissions": args.n,
        "mix": {k: sum(v == k for v in kinds.values()) for k in ("correct", "wrong", "blank")},
        "workers": args.workers,
        "plain_nbgrader_sequential_s": round(plain_s, 1),
        "this_cli_s": round(ours_s, 1),
        "speedup": round(plain_s / ours_s, 2),
        "per_submission_s": {"plain_nbgrader": round(plain_s / args.n, 2), "this_cli": round(ours_s / args.n, 2)},
        "peak_memory_mib": {"plain_nbgrader": round(plain_mem / 2**20), "this_cli": round(ours_mem / 2**20)},
        "scores_agree": not disagree,
        "disagreements": {s: {"this_cli": ours[s], "plain_nbgrader": plain.get(s)} for s in disagree},
        "target_speedup": 1.8,
    }
    write("batch_grading", results)


if __name__ == "__main__":
    main()
