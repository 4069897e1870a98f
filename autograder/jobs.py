"""One grading job, in whichever process runs it: a local pool's worker or a Dask worker.

A job is one submission's bytes against the instructor's :class:`~autograder.runner.AssignmentSource`;
its result is plain data (scores, reasons, notes, the rendered feedback page) that the batch's
single writer stores. The pieces here are shared by :mod:`autograder.grading` (a process pool on
this machine) and :mod:`autograder.cluster` (Dask workers anywhere):

* :func:`prepare_worker` - once per grading process: claim a sandbox slot (it picks the sandbox's
  user id, so no two processes on one machine run student code as the same user) and import
  the checks;
* :func:`load_submission` - the file's bytes, or why there are none;
* :func:`grade_submission` - grade and render, in this process, with the sandbox as its child;
* :func:`failed_result` - the zero-with-a-reason result of a job that could not be run.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import asdict, replace
from pathlib import Path

from autograder.limits import Limits
from autograder.reports import feedback_page

_WORKER: dict = {}  # this grading process's sandbox slot (and the open file that holds it)
MAX_SLOTS = 1000  # grading processes on one machine; slot i's sandbox runs as uid SANDBOX_UID_BASE + i


def _claim_slot() -> int:
    """The lowest sandbox slot that no other grading process on this machine holds.

    A slot is a lock on a file in a folder only this user can open; it is released when the
    process exits, however it exits.
    """
    import fcntl
    import stat
    import tempfile

    folder = Path(tempfile.gettempdir()) / f"llmcourse-grader-slots-{os.getuid()}"
    folder.mkdir(mode=0o700, exist_ok=True)
    info = folder.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise RuntimeError(f"{folder} must be a directory that only uid {os.getuid()} can open")
    for i in range(MAX_SLOTS):
        fh = open(folder / f"{i}.lock", "a")  # noqa: SIM115 - held open for the life of the process
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.close()
            continue
        _WORKER["slot"] = fh
        return i
    raise RuntimeError(f"more than {MAX_SLOTS} grading processes on this machine")


def prepare_worker(preload: list[str] | tuple[str, ...]) -> int:
    """Claim this process's sandbox slot (once) and import what grading needs; the slot."""
    import importlib
    import sys

    if "index" not in _WORKER:
        warnings.filterwarnings("ignore")
        _WORKER["index"] = _claim_slot()
    for module in ["autograder.runner", "nbgrader.utils", *preload]:
        if module not in sys.modules:
            try:
                importlib.import_module(module)
            except ImportError:
                pass
    from autograder.reports import _exporter

    _exporter()
    return _WORKER["index"]


def load_submission(path: str | None, notebook: str) -> tuple[bytes | None, str]:
    """A submitted file's bytes, or ``(None, why there are none)``."""
    if path is None:
        return None, f"no submission found (expected {notebook})"
    try:
        return Path(path).read_bytes(), ""
    except OSError as exc:
        return None, f"the submission could not be read: {exc}"


def grade_submission(source, student: str, raw: bytes | None, problem: str, *, limits: Limits, hide: list[str],
                     worker: int) -> dict:
    """Grade one submission's bytes against ``source`` and render its feedback page.

    ``raw`` is None when there is nothing to grade, and ``problem`` says why. Returns
    ``{"student", "page", "seconds", "result": {"scores", "notes"}}``.
    """
    from autograder.runner import grade_notebook, zero

    if raw is None:
        graded = zero(source, problem)
    else:
        graded = grade_notebook(source, raw, limits=limits, worker=worker, hide=hide)
    return _plain(source, student, graded)


def failed_result(job: dict, reason: str) -> dict:
    """The result of a job that could not be run: zero for every task, with ``reason``."""
    from autograder.runner import zero

    return {**_plain(job["source"], job["student"], zero(job["source"], reason), render=False),
            "digest": job["digest"], "seconds": 0.0}


def _plain(source, student: str, graded, *, render: bool = True) -> dict:
    rows = [replace(s, student=student, assignment=source.assignment) for s in graded.scores]
    try:
        page = feedback_page(student, source.assignment, rows, graded.notes, graded.notebook if render else None)
    except Exception as exc:  # noqa: BLE001 - a page that cannot render is not a lost grade
        page = feedback_page(student, source.assignment, rows, graded.notes + [f"(notebook not shown: {exc})"], None)
    return {"student": student, "page": page, "seconds": graded.seconds,
            "result": {"scores": [asdict(s) for s in graded.scores], "notes": graded.notes}}
