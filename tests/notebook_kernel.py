"""A stand-in for a notebook kernel, so tests can run exercise cells without Jupyter.

Cells run in a ``__main__`` namespace with their source registered in ``linecache``,
as IPython does, so ``inspect.getsource`` (and with it the guard's static look) works
on the functions they define.
"""

from __future__ import annotations

import functools
import linecache
from pathlib import Path

import nbformat
import pytest

SOLUTIONS = Path(__file__).resolve().parents[1] / "solutions"


def notebook_path(assignment: str) -> Path:
    """The nbgrader source notebook of ``assignment``."""
    return SOLUTIONS / assignment / f"{assignment}.ipynb"


@functools.lru_cache(maxsize=None)
def solution_of(assignment: str) -> dict:
    """The reference solution's namespace for ``assignment`` (executed once per test session)."""
    return solution_namespace(notebook_path(assignment))


def assert_checks_hold(assignment: str, checks, tasks, correct: dict, mistakes: dict) -> None:
    """Each task's check gives full marks to the solution and to ``correct[check name]``, and fails
    every planted ``mistakes[check name]`` (pytest params); run it under several course secrets."""
    from autograder.compare import CheckFailed

    solution = solution_of(assignment)
    for task in tasks:
        check = getattr(checks, task.check)
        for fn in (solution[task.name], *correct.get(task.check, ())):
            check(fn)
        for param in mistakes.get(task.check, ()):
            with pytest.raises(CheckFailed):
                check(param.values[0])


def correct(*fns):
    """pytest params for correct implementations written differently from the solution, named after each."""
    return [pytest.param(fn, id=fn.__name__) for fn in fns]


def planted(*cases):
    """pytest params (wrong function, regex its failure message must match), named after the function."""
    return [pytest.param(fn, match, id=fn.__name__) for fn, match in cases]


def switched(fn, name: str, **switch):
    """One planted mistake: ``fn`` (a reference written with switches) called with ``switch``, named ``name``."""
    def wrong(*args, **kwargs):
        return fn(*args, **kwargs, **switch)

    wrong.__name__ = name
    return wrong


def run_cell(source: str, namespace: dict, filename: str, *, keep_source: bool = True) -> None:
    """Execute one cell; ``keep_source=False`` hides its source, as for code built with ``exec``."""
    if keep_source:
        linecache.cache[filename] = (len(source), None, source.splitlines(keepends=True), filename)
    exec(compile(source, filename, "exec"), namespace)  # noqa: S102 - a notebook kernel stand-in


def kernel(*cells: str, keep_source: bool = True) -> dict:
    """A fresh ``__main__`` namespace with ``cells`` executed in order."""
    namespace = {"__name__": "__main__"}
    for i, source in enumerate(cells):
        run_cell(source, namespace, f"<test-kernel-{id(namespace)}-{i}>", keep_source=keep_source)
    return namespace


def solution_namespace(path: Path) -> dict:
    """The namespace left by a source notebook's setup and answer cells (its reference solution)."""
    notebook = nbformat.read(path, as_version=4)
    namespace = {"__name__": "__main__"}
    for i, cell in enumerate(notebook.cells):
        if cell.cell_type == "code" and not cell.metadata.get("nbgrader", {}).get("grade"):
            run_cell(cell.source, namespace, f"<{path.name} cell {i}>")
    return namespace


def assert_hidden_tests_call_checks(notebook, grade_ids: dict[str, tuple[str, str]]) -> None:
    """Each graded cell's hidden part calls ``check_<task>(<function>)``, for ``grade_ids[id] = (task, function)``."""
    graded = {c.metadata["nbgrader"]["grade_id"]: c for c in notebook.cells
              if c.cell_type == "code" and c.metadata.get("nbgrader", {}).get("grade")}
    assert set(graded) == set(grade_ids), f"graded cells {sorted(graded)} != {sorted(grade_ids)}"
    for grade_id, cell in graded.items():
        task, fn = grade_ids[grade_id]
        hidden = cell.source.split("### BEGIN HIDDEN TESTS")[1]
        assert f"check_{task}({fn})" in hidden, f"{grade_id} does not call check_{task}({fn})"
