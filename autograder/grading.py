"""Batch grading: every submission in a folder gets a score per task, a reason and feedback.

Steps for one batch:
1. a temporary nbgrader course holds the assignment's source; ``generate_assignment``
   records its graded cells and checksums in a fresh gradebook;
2. each submission is validated, copied to ``submitted/<student>/<assignment>/``
   and run through nbgrader ``autograde`` (cells time-limited; errors don't stop later cells);
3. scores come from the gradebook, reasons from the graded cells' error outputs;
4. ``generate_feedback`` renders the notebook, and a per-task table is put on top.

A submission that cannot be read or graded gets zero for every task and a reason;
the batch always goes on. The seam for parallel grading is :func:`grade_submission`,
which grades one student in a course that already holds the generated assignment.
"""

from __future__ import annotations

import csv
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

import nbformat

from autograder.course import SOLUTIONS, Course, check_assignment, notebook_names
from autograder.feedback import error_summary, insert_summary, standalone_page, summary_table

CSV_COLUMNS = ["student", "assignment", "task", "score", "max_score", "reason"]


@dataclass(frozen=True)
class Task:
    """One graded cell of the assignment: its grade_id and points."""

    name: str
    points: float
    notebook: str


@dataclass
class TaskResult:
    student: str
    assignment: str
    task: str
    score: float
    max_score: float
    reason: str


def tasks_of(assignment: str, source: Path = SOLUTIONS) -> list[Task]:
    """The graded cells of an assignment, in notebook order."""
    out = []
    for name in notebook_names(assignment, source):
        nb = nbformat.read(source / assignment / name, as_version=4)
        for cell in nb.cells:
            meta = cell.metadata.get("nbgrader", {})
            if meta.get("grade"):
                out.append(Task(meta["grade_id"], float(meta.get("points", 0)), name))
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
        path = next((c for c in candidates if c.is_file()), None)
        if path is None:
            loose = sorted(student_dir.glob("*.ipynb")) + sorted((student_dir / assignment).glob("*.ipynb"))
            path = loose[0] if len(loose) == 1 else None
        found[student_dir.name] = path
    return found


def _zeros(student: str, assignment: str, tasks: list[Task], reason: str) -> list[TaskResult]:
    return [TaskResult(student, assignment, t.name, 0.0, t.points, reason) for t in tasks]


def grade_submission(course: Course, assignment: str, student: str, path: Path | None,
                     tasks: list[Task], feedback_dir: Path) -> list[TaskResult]:
    """Autograde one student's notebook inside ``course`` and write their feedback page."""
    from nbgrader.api import Gradebook
    from nbgrader.converters import Autograde, GenerateFeedback

    feedback_dir.mkdir(parents=True, exist_ok=True)
    page = feedback_dir / f"{student}.html"

    def give_up(reason: str) -> list[TaskResult]:
        rows = _zeros(student, assignment, tasks, reason)
        page.write_text(standalone_page(student, assignment, rows, reason), encoding="utf-8")
        return rows

    if path is None:
        return give_up(f"no submission found (expected {tasks[0].notebook if tasks else 'a notebook'})")
    try:
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is a reason, not a crash
        return give_up(f"not a valid Jupyter notebook: {type(exc).__name__}: {str(exc)[:300]}")

    target = course.root / "submitted" / student / assignment
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    nbformat.write(nb, target / tasks[0].notebook)
    ok, log = course.run(Autograde, assignment_id=assignment, student_id=student, force=True,
                         create_student=True)
    if not ok:
        last = [line for line in log.strip().splitlines() if line.strip()][-1:] or ["unknown error"]
        return give_up(f"autograding failed: {last[0][:300]}")

    scores: dict[str, tuple[float, float]] = {}
    with Gradebook(course.config.CourseDirectory.db_url) as gb:
        submission = gb.find_submission(assignment, student)
        for snb in submission.notebooks:
            for grade in snb.grades:
                scores[grade.name] = (float(grade.score or 0.0), float(grade.max_score or 0.0))

    reasons: dict[str, str] = {}
    for nb_name in {t.notebook for t in tasks}:
        graded = nbformat.read(course.root / "autograded" / student / assignment / nb_name, as_version=4)
        for cell in graded.cells:
            meta = cell.metadata.get("nbgrader", {})
            if meta.get("grade") and cell.cell_type == "code":
                reasons[meta["grade_id"]] = error_summary(cell) or ""

    rows = []
    for t in tasks:
        score, max_score = scores.get(t.name, (0.0, t.points))
        if t.name not in scores:
            reason = "graded cell missing from the submission"
        elif score >= max_score:
            reason = "passed"
        else:
            reason = reasons.get(t.name) or "no error reported, but the cell did not pass"
        rows.append(TaskResult(student, assignment, t.name, score, max_score, reason))

    ok, log = course.run(GenerateFeedback, assignment_id=assignment, student_id=student, force=True)
    rendered = course.root / "feedback" / student / assignment / tasks[0].notebook.replace(".ipynb", ".html")
    fragment = summary_table(student, assignment, rows)
    if ok and rendered.is_file():
        page.write_text(insert_summary(rendered.read_text(encoding="utf-8"), fragment), encoding="utf-8")
    else:
        page.write_text(standalone_page(student, assignment, rows, "The notebook could not be rendered."),
                        encoding="utf-8")
    return rows


def write_csv(rows: list[TaskResult], path: Path) -> None:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(CSV_COLUMNS)
        for r in rows:
            writer.writerow([r.student, r.assignment, r.task, f"{r.score:g}", f"{r.max_score:g}", r.reason])


def grade_folder(assignment: str, folder: Path, out: Path, *, source: Path = SOLUTIONS,
                 show_progress: bool = True) -> list[TaskResult]:
    """Grade every submission in ``folder``; write ``out/grades.csv``, ``out/feedback/``, ``out/gradebook.db``."""
    from llmcourse.progress import progress

    warnings.filterwarnings("ignore", module="nbgrader.*")  # SQLAlchemy session notes from nbgrader
    check_assignment(assignment, source)
    tasks = tasks_of(assignment, source)
    if not tasks:
        raise ValueError(f"assignment {assignment!r} has no graded cells")
    submissions = find_submissions(Path(folder), assignment, notebook_names(assignment, source))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    course = Course.create([assignment], source=source)
    rows: list[TaskResult] = []
    try:
        course.generate(assignment)
        for student, path in progress(list(submissions.items()), desc=f"grading {assignment}",
                                      disable=not show_progress):
            try:
                rows += grade_submission(course, assignment, student, path, tasks, out / "feedback")
            except Exception as exc:  # noqa: BLE001 - the batch goes on, whatever happens
                rows += _zeros(student, assignment, tasks, f"grader error: {type(exc).__name__}: {exc}")
        write_csv(rows, out / "grades.csv")
        shutil.copyfile(course.root / "gradebook.db", out / "gradebook.db")
    finally:
        course.cleanup()
    return rows
