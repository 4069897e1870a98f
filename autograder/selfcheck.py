"""``python -m autograder check NOTEBOOK``: a student runs the checks of their own notebook.

The notebook is executed top to bottom in a fresh kernel (as the grader will),
and every graded cell is reported as passed or failed with the check's message.
A released notebook holds only the visible checks; the hidden ones run at grading.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import nbformat

from autograder.course import prepare_environment
from autograder.feedback import error_summary


@dataclass
class CellReport:
    task: str
    points: float
    passed: bool
    message: str


def run_checks(path: str | os.PathLike, *, timeout: int = 120) -> list[CellReport]:
    """Execute the notebook and report each graded cell."""
    from jupyter_client import KernelManager
    from nbclient import NotebookClient

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such notebook: {path}")
    try:
        nb = nbformat.read(path, as_version=4)
    except Exception as exc:  # noqa: BLE001
        raise ValueError(f"{path} is not a valid Jupyter notebook: {exc}") from exc
    prepare_environment()
    with tempfile.TemporaryDirectory(prefix="llmcourse-kernel-") as sockets:
        # IPC sockets (files only this user can open), not plain TCP on localhost, which the
        # kernel warns about on every start
        km = KernelManager(kernel_name="python3", transport="ipc", ip=os.path.join(sockets, "kernel"))
        client = NotebookClient(nb, km=km, timeout=timeout, allow_errors=True,
                                resources={"metadata": {"path": str(path.parent.resolve())}})
        try:
            client.execute()
        finally:
            if km.has_kernel and km.is_alive():
                km.shutdown_kernel(now=False)
    reports = []
    for cell in nb.cells:
        meta = cell.metadata.get("nbgrader", {})
        if cell.cell_type == "code" and meta.get("grade"):
            err = error_summary(cell)
            reports.append(CellReport(meta.get("grade_id", "?"), float(meta.get("points", 0)), err is None,
                                      err or "visible checks passed"))
    return reports


def format_table(reports: list[CellReport]) -> str:
    width = max([len("task")] + [len(r.task) for r in reports])
    lines = [f"{'task':<{width}}  points  result  message", "-" * (width + 40)]
    for r in reports:
        msg = r.message if len(r.message) <= 160 else r.message[:157] + "..."
        lines.append(f"{r.task:<{width}}  {r.points:>6g}  {'PASS' if r.passed else 'FAIL':<6}  {msg}")
    passed = sum(r.passed for r in reports)
    lines.append(f"{passed} of {len(reports)} tasks pass their visible checks "
                 f"(hidden checks run when your instructor grades).")
    return "\n".join(lines)
