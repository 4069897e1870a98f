"""Grading through Dask against the local process pool, and what a whole course would take.

Run: `.venv/bin/python benchmarks/bench_cluster.py [--n 40] [--assignment ch02_ml_basics] [--workers 2]`.
Writes benchmarks/results/cluster_grading.json. In one run, on the same class of N submissions
(half correct, a quarter with one wrong answer, a quarter blank; `bench_batch.make_class`):

* wall time of the local mode (`--workers 2`), of `--scheduler local:2` (the command starts a
  LocalCluster), and of a cluster that is already running (`dask scheduler` and 2
  `dask worker --nthreads 1` processes), and whether all three write the same `grades.csv`;
* the overhead of going through Dask per submission: (cluster - local) / N;
* the fixed cost of a batch (the same command again, with nothing left to grade);
* the single writer's cost per submission (one gradebook transaction and one feedback page);
* the per-job cost (worker-side seconds) of a correct submission of every assignment, through
  the running cluster, and from all of it the projected wall time for 300 students x 13
  exercises on N workers.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench_batch import make_class  # noqa: E402
from common import write  # noqa: E402

from autograder.course import Course, assignments, notebook_names  # noqa: E402
from autograder.gradebook import GradebookWriter  # noqa: E402
from autograder.grading import grade_folder  # noqa: E402
from tests.dask_processes import running_cluster  # noqa: E402

STUDENTS, EXERCISES = 300, 13


def timed(assignment: str, folder: Path, out: Path, **mode) -> tuple[float, list[dict]]:
    """Wall time of one batch, and every finished job's plain data."""
    jobs: list[dict] = []
    start = time.perf_counter()
    grade_folder(assignment, folder, out, show_progress=False, warn=lambda line: None, on_result=jobs.append, **mode)
    return time.perf_counter() - start, jobs


def writer_seconds(assignment: str, jobs: list[dict], folder: Path) -> float:
    """What the client does per result, alone: one gradebook transaction, one feedback page written."""
    notebook = notebook_names(assignment)[0]
    folder.mkdir(parents=True, exist_ok=True)
    db_url = f"sqlite:///{folder / 'gradebook.db'}"
    course = Course.create([assignment], db_url=db_url)
    try:
        course.generate(assignment)
        writer = GradebookWriter(db_url, assignment, notebook)
        try:
            start = time.perf_counter()
            for job in jobs:
                writer.write(job["student"], job["digest"], job["result"])
                (folder / f"{job['student']}.html").write_text(job["page"], encoding="utf-8")
            return (time.perf_counter() - start) / len(jobs)
        finally:
            writer.close()
    finally:
        course.cleanup()


def per_job_costs(address: str, tmp: Path) -> dict:
    """Worker-side seconds of a correct submission of every assignment (two each), through the cluster."""
    costs = {}
    for assignment in assignments():
        folder = tmp / f"each-{assignment}"
        try:
            kinds = make_class(assignment, 2, folder)  # s000 and s001 are both correct
            _, jobs = timed(assignment, folder, tmp / f"each-{assignment}-out", scheduler=address)
        except Exception as exc:  # noqa: BLE001 - an assignment still being written is skipped, and said so
            costs[assignment] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
            continue
        assert set(kinds.values()) == {"correct"}
        costs[assignment] = {"job_s": round(statistics.fmean(j["seconds"] for j in jobs), 2)}
    return costs


def projection(fixed_s: float, job_s: list[float], overhead_s: float, write_s: float) -> dict:
    """Wall time of 300 students x 13 exercises, one batch per exercise, on N one-thread workers.

    Each batch costs its fixed part, then ceil(300 / N) rounds of jobs (the exercise's job cost
    plus Dask's per-job overhead), but never less than the single writer's 300 writes.
    Exercises not yet measured cost the mean of those measured.
    """
    costs = job_s + [statistics.fmean(job_s)] * (EXERCISES - len(job_s))
    out = {}
    for n in (2, 8, 32, 128, 512):
        total = sum(fixed_s + max(math.ceil(STUDENTS / n) * (c + max(overhead_s, 0.0)), STUDENTS * write_s)
                    for c in costs)
        out[f"{n}_workers_h"] = round(total / 3600, 2)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=40)
    parser.add_argument("--assignment", default="ch02_ml_basics")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        make_class(args.assignment, args.n, tmp / "subs")
        local_s, local_jobs = timed(args.assignment, tmp / "subs", tmp / "local", workers=args.workers)
        started_s, _ = timed(args.assignment, tmp / "subs", tmp / "local-cluster",
                             scheduler=f"local:{args.workers}")
        with running_cluster(tmp / "dask", workers=args.workers) as cluster:
            running_s, running_jobs = timed(args.assignment, tmp / "subs", tmp / "cluster", scheduler=cluster.address)
            fixed_s, nothing = timed(args.assignment, tmp / "subs", tmp / "cluster", scheduler=cluster.address)
            assert not nothing, "the re-run graded something again"
            costs = per_job_costs(cluster.address, tmp)
        write_s = writer_seconds(args.assignment, running_jobs, tmp / "writer")
        csvs = {name: (tmp / name / "grades.csv").read_bytes() for name in ("local", "local-cluster", "cluster")}
    overhead_s = (running_s - local_s) / args.n
    measured = [c["job_s"] for c in costs.values() if "job_s" in c]
    results = {
        "assignment": args.assignment,
        "submissions": args.n,
        "workers": args.workers,
        "load_average_1min": {"start": round(load_before, 1), "end": round(os.getloadavg()[0], 1)},
        "wall_s": {"local_pool": round(local_s, 1), "dask_local_N_started_by_the_command": round(started_s, 1),
                   "dask_running_cluster": round(running_s, 1)},
        "grades_csv_identical": len(set(csvs.values())) == 1,
        "dask_overhead_per_submission_s": round(overhead_s, 3),
        "mean_job_s": {"local_pool": round(statistics.fmean(j["seconds"] for j in local_jobs), 2),
                       "dask_running_cluster": round(statistics.fmean(j["seconds"] for j in running_jobs), 2)},
        "batch_fixed_cost_s": round(fixed_s, 1),
        "writer_per_submission_s": round(write_s, 4),
        "correct_submission_job_s": costs,
        "projection": {"students": STUDENTS, "exercises": EXERCISES, "measured_exercises": len(measured),
                       **projection(fixed_s, measured, overhead_s, write_s)},
    }
    write("cluster_grading", results)


if __name__ == "__main__":
    main()
