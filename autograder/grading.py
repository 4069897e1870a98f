"""Batch grading: many submissions, in parallel, each in its own sandbox, into one gradebook.

One batch:

1. a temporary nbgrader course holds the assignment; ``generate_assignment`` records its
   graded cells and checksums in the gradebook (SQLite by default, any SQLAlchemy URL);
2. each submission whose file changed since it was last graded (or that was never graded)
   goes to a pool of worker processes; a worker grades it with :func:`autograder.runner.grade_notebook`
   (student code in a limited sandbox, checks in the worker) and renders its feedback page;
3. the main process is the only one that writes the gradebook, one transaction per
   submission, as results arrive;
4. ``grades.csv``, ``summary.json``, ``summary.png`` and ``feedback/<student>.html`` are written.

A submission that cannot be read or graded gets zero for every task and a reason; a worker
that dies is replaced, and the batch always goes on. With ``scheduler``, step 2's jobs run on a
Dask cluster instead (:mod:`autograder.cluster`); the rest of the batch is the same.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import shutil
import warnings
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path

import nbformat

from autograder.course import SOLUTIONS, Course, check_assignment, notebook_names
from autograder.feedback import MATHJAX_FOLDER, mathjax_file
from autograder.jobs import failed_result, grade_submission, load_submission, prepare_worker
from autograder.limits import Limits, isolation
from autograder.reports import CSV_COLUMNS, summarize, write_csv, write_summary
from autograder.runner import TaskResult
from autograder.secret import seeds_note

__all__ = ["CSV_COLUMNS", "GRADER_VERSION", "GradedCell", "TaskResult", "find_submissions", "grade_folder", "tasks_of"]

#: part of every submission's digest: bump it when grading changes, so re-runs re-grade
GRADER_VERSION = "2"


@dataclass(frozen=True)
class GradedCell:
    """One graded cell of the assignment: its grade_id, points and notebook."""

    name: str
    points: float
    notebook: str


def tasks_of(assignment: str, source: Path = SOLUTIONS) -> list[GradedCell]:
    """The graded cells of an assignment, in notebook order."""
    out = []
    for name in notebook_names(assignment, source):
        nb = nbformat.read(source / assignment / name, as_version=4)
        for cell in nb.cells:
            meta = cell.metadata.get("nbgrader", {})
            if meta.get("grade"):
                out.append(GradedCell(meta["grade_id"], float(meta.get("points", 0)), name))
    return out


def find_submissions(folder: Path, assignment: str, notebooks: list[str]) -> dict[str, Path | None]:
    """Map each student to the notebook they submitted (None when it is missing).

    Accepted layouts: ``FOLDER/<student>/<notebook>``, ``FOLDER/<student>/<assignment>/<notebook>``,
    and nbgrader's ``FOLDER/submitted/<student>/<assignment>/<notebook>``.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"submissions folder not found: {folder}")
    if (folder / "submitted").is_dir():
        folder = folder / "submitted"
    found: dict[str, Path | None] = {}
    for student_dir in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        candidates = [student_dir / assignment / notebooks[0], student_dir / notebooks[0]]
        path = next((c for c in candidates if c.is_file() and not c.is_symlink()), None)
        if path is None:
            loose = sorted(student_dir.glob("*.ipynb")) + sorted((student_dir / assignment).glob("*.ipynb"))
            loose = [p for p in loose if p.is_file() and not p.is_symlink()]
            path = loose[0] if len(loose) == 1 else None
        found[student_dir.name] = path
    return found


# ----------------------------------------------------------------------------- one job

def _grade_job(job: dict) -> dict:
    """In a pool worker: read one submission from disk and grade it."""
    raw, problem = load_submission(job["path"], job["source"].notebook)
    done = grade_submission(job["source"], job["student"], raw, problem, limits=job["limits"], hide=job["hide"],
                            worker=prepare_worker([]))
    return {**done, "digest": job["digest"]}


def _check_modules(notebook: Path) -> list[str]:
    """The ``autograder.checks`` modules an assignment's hidden tests import (workers preload them)."""
    import re

    text = notebook.read_text(encoding="utf-8")
    return sorted(set(re.findall(r"from (autograder\.checks\.\w+) import", text)))


def _digest(path: Path | None, source_digest: str) -> str:
    h = hashlib.sha256(f"{GRADER_VERSION}\0{source_digest}\0".encode())
    h.update(path.read_bytes() if path is not None and path.is_file() else b"<missing>")
    return h.hexdigest()


def _rows(student: str, assignment: str, result: dict) -> list[TaskResult]:
    return [TaskResult(s["task"], float(s["score"]), float(s["max_score"]), s["reason"], student, assignment)
            for s in result["scores"]]


# ----------------------------------------------------------------------------- the batch

def grade_folder(assignment: str, folder: Path, out: Path, *, source: Path = SOLUTIONS, workers: int | None = None,
                 db_url: str | None = None, limits: Limits | None = None, resume: bool = True,
                 show_progress: bool = True, warn=print, scheduler: str | None = None,
                 cluster_timeout: float = 300.0, on_result=None) -> list[TaskResult]:
    """Grade every submission in ``folder``; write ``out/grades.csv``, ``summary.*``, ``feedback/``.

    ``db_url`` defaults to ``sqlite:///OUT/gradebook.db``. With ``resume``, a submission whose file
    is unchanged since the gradebook last recorded it is not graded again. With ``scheduler`` (a
    Dask scheduler's address, a scheduler file, or ``local:N``) the jobs run on that Dask cluster
    (:mod:`autograder.cluster`) instead of ``workers`` local processes; everything else is the same.
    ``on_result``, if given, is called with each finished job's plain data once it is written.
    """
    from autograder.gradebook import GradebookWriter
    from autograder.runner import AssignmentSource
    from llmcourse.progress import progress

    warnings.filterwarnings("ignore", module="nbgrader.*")
    check_assignment(assignment, source)
    tasks = tasks_of(assignment, source)
    if not tasks:
        raise ValueError(f"assignment {assignment!r} has no graded cells")
    if workers is not None and workers < 1:
        raise ValueError(f"--workers must be at least 1, got {workers}")
    if workers is not None and scheduler is not None:
        raise ValueError("--workers is for grading on this machine; with --scheduler the cluster's workers grade")
    workers = workers or os.cpu_count() or 1
    limits = limits or Limits()
    notebook = notebook_names(assignment, source)[0]
    submissions = find_submissions(Path(folder), assignment, notebook_names(assignment, source))
    out = Path(out).resolve()
    (out / "feedback" / MATHJAX_FOLDER).mkdir(parents=True, exist_ok=True)
    shutil.copyfile(mathjax_file(), out / "feedback" / MATHJAX_FOLDER / "tex-svg.js")
    db_url = db_url or f"sqlite:///{out / 'gradebook.db'}"
    preload = sorted({m for m in _check_modules(source / assignment / notebook)})
    pool = cluster = None
    if scheduler is None:
        for line in isolation().warnings(limits):
            warn(f"warning: {line}")
        pool = _pool(min(workers, max(len(submissions), 1)), preload)
    else:
        from autograder.cluster import DaskGrader

        cluster = DaskGrader.connect(scheduler, preload, limits=limits, wait=cluster_timeout, warn=warn)
    warn(seeds_note())
    course = Course.create([assignment], source=source, db_url=db_url)
    try:
        release = course.generate(assignment)
        src = AssignmentSource.load(assignment, course.root / "source" / assignment / notebook, release / notebook)
        source_digest = hashlib.sha256((source / assignment / notebook).read_bytes()
                                       + seeds_note().encode()).hexdigest()  # a new secret re-grades
        writer = GradebookWriter(db_url, assignment, notebook)
        hide = sorted({str(out), str(Path(folder).resolve()), str(course.root), str(Path(source).resolve())})
        try:
            previous = writer.previous() if resume else {}
            results: dict[str, list[TaskResult]] = {}
            jobs = []
            for student, path in submissions.items():
                digest = _digest(path, source_digest)
                old = previous.get(student)
                if old and old[0] == digest and (out / "feedback" / f"{student}.html").is_file():
                    results[student] = _rows(student, assignment, old[1])
                    continue
                jobs.append({"source": src, "student": student, "path": str(path) if path else None,
                             "digest": digest, "limits": limits, "hide": hide})
            bar = progress(total=len(jobs), desc=f"grading {assignment}", disable=not show_progress)
            finished = cluster.grade(jobs, src) if cluster else _run_jobs(jobs, workers, preload, pool)
            ungraded = 0
            for done in finished:
                ungraded += not done["digest"]  # stored without a digest: the next run grades it again
                writer.write(done["student"], done["digest"], done["result"])
                (out / "feedback" / f"{done['student']}.html").write_text(done["page"], encoding="utf-8")
                results[done["student"]] = _rows(done["student"], assignment, done["result"])
                bar.update(1)
                if on_result is not None:
                    on_result(done)
            bar.close()
            if ungraded:
                warn(f"warning: {ungraded} submission(s) could not be graded (their reason says why); "
                     f"run the same command again to grade them")
        finally:
            writer.close()
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
        if cluster is not None:
            cluster.close()
        course.cleanup()
    rows = [r for student in sorted(results) for r in results[student]]
    write_csv(rows, out / "grades.csv")
    write_summary(summarize(assignment, rows), out)
    return rows


def _pool(workers: int, preload: list[str]) -> ProcessPoolExecutor:
    """Worker processes, started at once so their imports overlap with the batch's set-up."""
    ctx = multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=prepare_worker, initargs=(preload,))
    for _ in range(workers):  # spawn them all now, not at the first submit
        pool.submit(int)
    return pool


def _run_jobs(jobs: list[dict], workers: int, preload: list[str], first_pool: ProcessPoolExecutor | None = None,
              fn=None):
    """Yield each job's result as it finishes; a worker that dies is replaced and the batch goes on.

    When a worker dies, the jobs that were running in the pool are suspects: each is retried
    alone in a fresh one-worker pool, so only the job that kills its worker again is given up.
    """
    fn = fn or _grade_job
    pending = {j["student"]: j for j in jobs}
    suspects: list[str] = []
    while pending:
        for student in suspects:  # one at a time, so a second death names the culprit
            with _pool(1, preload) as pool:
                try:
                    result = pool.submit(fn, pending[student]).result()
                except BrokenProcessPool:
                    result = failed_result(pending[student], "grader error: the grading worker died twice "
                                                             "on this submission")
                except Exception as exc:  # noqa: BLE001 - a grader bug is one student's reason
                    result = failed_result(pending[student], f"grader error: {type(exc).__name__}: {exc}")
            pending.pop(student)
            yield result
        suspects = []
        if not pending:
            break
        pool, first_pool = first_pool or _pool(min(workers, len(pending)), preload), None
        with pool:
            futures = {pool.submit(fn, job): student for student, job in pending.items()}
            while futures:
                done, _ = wait(futures, return_when=FIRST_COMPLETED)
                broken = False
                for fut in done:
                    student = futures.pop(fut)
                    try:
                        result = fut.result()
                    except BrokenProcessPool:
                        broken = True
                        suspects.append(student)
                        continue
                    except Exception as exc:  # noqa: BLE001 - a grader bug is one student's reason
                        result = failed_result(pending[student], f"grader error: {type(exc).__name__}: {exc}")
                    pending.pop(student)
                    yield result
                if broken:
                    break
