"""One source for each task's rules: the checks module's ``TASKS``.

The notebook's graded cells and points, the rule line in each task's Markdown cell, the
exercise page's task table and the guard all follow ``TASKS``; these tests fail when one of
them drifts.
"""

from __future__ import annotations

import copy
import textwrap
from pathlib import Path

import nbformat
import pytest

from autograder import spec
from autograder.compare import CheckFailed
from autograder.guard import ForbiddenCall
from tests.notebook_kernel import kernel, notebook_path

REPO = Path(__file__).resolve().parents[1]
ASSIGNMENTS = spec.assignments()


def _declared(assignment: str) -> tuple:
    try:
        return spec.tasks_of(assignment)
    except TypeError:  # reported by test_notebook_graded_cells_and_points_follow_the_spec
        return ()


ALL_TASKS = [pytest.param(a, t, id=t.grade_id) for a in ASSIGNMENTS for t in _declared(a)]


def _graded(notebook) -> dict:
    return {c.metadata["nbgrader"]["grade_id"]: c for c in notebook.cells
            if c.cell_type == "code" and c.metadata.get("nbgrader", {}).get("grade")}


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_notebook_graded_cells_and_points_follow_the_spec(assignment):
    nb = nbformat.read(notebook_path(assignment), as_version=4)
    graded = _graded(nb)
    tasks = spec.tasks_of(assignment)
    assert list(graded) == [t.grade_id for t in tasks], "graded cells differ from TASKS (or their order)"
    for t in tasks:
        assert float(graded[t.grade_id].metadata["nbgrader"]["points"]) == t.points, t.grade_id
        hidden = graded[t.grade_id].source.split("### BEGIN HIDDEN TESTS")[1]
        assert f"{t.check}({t.name})" in hidden, f"{t.grade_id}'s hidden tests do not call {t.check}({t.name})"


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_notebook_rule_lines_follow_the_spec(assignment):
    nb = nbformat.read(notebook_path(assignment), as_version=4)
    synced = copy.deepcopy(nb)
    assert spec.sync_rules(synced, assignment) == [], (
        "a task's rule line differs from TASKS: run `make release`")
    for t in spec.tasks_of(assignment):
        cell = next(c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id") == f"{t.grade_id}_task")
        assert cell.source.count(spec.RULE_PREFIX) == 1 and t.rule() in cell.source


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_exercise_page_renders_the_spec_table(assignment):
    pages = [p for p in (REPO / "book").glob("*/exercise.md") if f"exercises/{assignment}/" in p.read_text()]
    assert len(pages) == 1, f"expected one exercise page linking {assignment}, found {pages}"
    text = pages[0].read_text()
    assert f'show_task_table("{assignment}")' in text, f"{pages[0]} does not render the task table"
    assert "format_name: myst" in text, f"{pages[0]} must be an executable MyST notebook to render it"


def _uses(dotted: str, is_class: bool) -> dict:
    """A student answer whose source refers to ``dotted`` (a line never reached at run time)."""
    module = dotted if _importable(dotted) else dotted.rsplit(".", 1)[0]
    if not _importable(module):  # a class attribute such as torch.Tensor.unfold
        module = module.rsplit(".", 1)[0]
    use = f"if False:\n    _ = {dotted}\nraise RuntimeError('should have been refused')\n"
    if is_class:
        answer = "class Answer:\n    def __init__(self, *args, **kwargs):\n" + textwrap.indent(use, " " * 8)
    else:
        answer = "def answer(*args, **kwargs):\n" + textwrap.indent(use, " " * 4)
    return kernel(f"import {module}\n", answer)


def _importable(module: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


@pytest.mark.parametrize("assignment, task", ALL_TASKS)
def test_every_forbidden_name_is_enforced_by_its_check(assignment, task):
    import importlib

    check = getattr(importlib.import_module(f"autograder.checks.{assignment}"), task.check)
    is_class = task.name[:1].isupper()
    for dotted in task.forbidden:
        if not _importable(dotted.split(".")[0]):
            continue
        ns = _uses(dotted, is_class)
        answer = ns["Answer" if is_class else "answer"]
        with pytest.raises(CheckFailed) as info:
            check(answer)
        assert info.type is ForbiddenCall or "write it yourself" in str(info.value), (
            f"{task.grade_id}: referring to {dotted} was not refused: {info.value}")
