"""Each exercise task's rules, declared once.

Every ``autograder.checks`` module declares its tasks as a :class:`Task` tuple named
``TASKS``. Everything else comes from there:

* the **guard**: a check passes its :class:`Task` to :func:`autograder.guard.call_student`
  or :func:`~autograder.guard.run_probe`, which forbid exactly ``task.modules`` and
  ``task.callables``;
* the **notebook**: the task's Markdown cell (grade id ``<grade_id>_task``) holds the line
  :meth:`Task.rule`, written there by ``python -m autograder release`` (:func:`sync_rules`);
* the **exercise page**: ``book/NN-*/exercise.md`` renders :func:`task_table` when the book is
  built.

A test fails when the notebook's graded cells, points or rule lines disagree with ``TASKS``.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
from dataclasses import dataclass

RULE_PREFIX = "**Not allowed in this task:**"


@dataclass(frozen=True)
class Task:
    """One graded task of an exercise.

    ``grade_id`` is the nbgrader id of the task's test cell (``ch04_conv2d_loops``); its
    check is ``check_<grade_id without the chapter prefix>``. ``signature`` is what the
    student writes (``conv2d_loops(x, weight, bias=None, stride=1, padding=0)``).
    ``modules`` and ``callables`` are the only things the guard forbids: modules by dotted
    prefix (``sklearn`` forbids ``sklearn.linear_model``), callables by dotted name.
    """

    grade_id: str
    signature: str
    points: int
    returns: str
    reference: str
    modules: tuple[str, ...] = ()
    callables: tuple[str, ...] = ()

    def __post_init__(self):
        if not re.fullmatch(r"ch\d\d_\w+", self.grade_id):
            raise ValueError(f"grade_id must look like ch04_conv2d_loops, got {self.grade_id!r}")
        if not re.fullmatch(r"\w+\(.*\)", self.signature):
            raise ValueError(f"signature must look like name(args), got {self.signature!r}")
        if not (isinstance(self.points, int) and self.points > 0):
            raise ValueError(f"points must be a positive int, got {self.points!r}")
        for group in (self.modules, self.callables):
            if not isinstance(group, tuple) or not all(isinstance(x, str) and x for x in group):
                raise ValueError(f"modules and callables must be tuples of dotted names, got {group!r}")

    @property
    def name(self) -> str:
        """The function (or class) the student writes: ``conv2d_loops``."""
        return self.signature.split("(", 1)[0]

    @property
    def check(self) -> str:
        """The name of the hidden check: ``check_conv2d_loops``."""
        return "check_" + self.grade_id.split("_", 1)[1]

    @property
    def forbidden(self) -> tuple[str, ...]:
        return self.modules + self.callables

    def rule(self) -> str:
        """The sentence the notebook and the exercise page show (and the guard enforces)."""
        if not self.forbidden:
            return f"{RULE_PREFIX} nothing - any library may be used."
        names = ", ".join(f"`{x}`" for x in self.forbidden)
        return (f"{RULE_PREFIX} {names}. The grader reads your code and watches what it calls; "
                f"a task that uses any of these scores 0.")


def tasks_of(assignment: str) -> tuple[Task, ...]:
    """The ``TASKS`` declared by ``autograder.checks.<assignment>``."""
    module = importlib.import_module(f"autograder.checks.{assignment}")
    tasks = getattr(module, "TASKS", None)
    if not isinstance(tasks, tuple) or not all(isinstance(t, Task) for t in tasks):
        raise TypeError(f"autograder.checks.{assignment} must declare TASKS, a tuple of spec.Task")
    return tasks


def assignments() -> list[str]:
    """Every assignment that has a checks module (``_name`` modules are shared helpers)."""
    import autograder.checks

    return sorted(info.name for info in pkgutil.iter_modules(autograder.checks.__path__)
                  if not info.name.startswith("_"))


def task_table(assignment: str) -> str:
    """Markdown: a table of the tasks (function, what it returns, points, reference), then what each forbids."""
    tasks = tasks_of(assignment)
    rows = ["| task (grade id) | you write | it returns | points | checked against |",
            "| --- | --- | --- | --- | --- |"]
    for t in tasks:
        rows.append(f"| `{t.grade_id}` | `{t.signature}` | {t.returns} | {t.points} | {t.reference} |")
    total = sum(t.points for t in tasks)
    rules = [f"- `{t.name}`: " + (", ".join(f"`{x}`" for x in t.forbidden) or "nothing") for t in tasks]
    return ("\n".join(rows) + f"\n\n{len(tasks)} tasks, {total} points in all. Not allowed in each task "
            "(the grader's whole list):\n\n" + "\n".join(rules))


def show_task_table(assignment: str):
    """The task table and rules as a rich Markdown output (for the book's exercise pages)."""
    from IPython.display import Markdown

    return Markdown(task_table(assignment))


def sync_rules(notebook, assignment: str) -> list[str]:
    """Write each task's :meth:`Task.rule` line into its Markdown cell; return the grade ids changed.

    The line goes at the end of the cell whose grade id is ``<grade_id>_task``, replacing any
    earlier rule line. Raises ``ValueError`` when a task has no such cell.
    """
    cells = {c.metadata.get("nbgrader", {}).get("grade_id"): c for c in notebook.cells
             if c.cell_type == "markdown"}
    changed = []
    for task in tasks_of(assignment):
        cell = cells.get(f"{task.grade_id}_task")
        if cell is None:
            raise ValueError(f"{assignment}: no Markdown cell with grade id {task.grade_id}_task for the rule")
        kept = [line for line in cell.source.rstrip().split("\n") if not line.startswith(RULE_PREFIX)]
        while kept and not kept[-1].strip():
            kept.pop()
        new = "\n".join(kept) + "\n\n" + task.rule()
        if new != cell.source:
            cell.source = new
            changed.append(task.grade_id)
    return changed
