"""Writing results into nbgrader's gradebook: one writer, one transaction per submission.

Workers never touch the database. They send their results to the batch's main process,
which is the only writer: for each submission it sets the auto score of every graded cell,
puts the reason for lost points in the comment of the task's answer cell (what nbgrader's
formgrader shows), and records which exact file it graded, all in one commit. Rows cannot
race or get lost, a crash loses at most the submission being written, and a re-run knows
what it can skip. Any SQLAlchemy URL works: ``sqlite:///grades.db``,
``postgresql://user@host/db``.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone

from sqlalchemy import Column, MetaData, String, Table, Text, select

_META = MetaData()
#: which file (by digest) each student's submission was graded from, and the result
GRADED = Table(
    "llmcourse_graded", _META,
    Column("assignment", String(128), primary_key=True),
    Column("student", String(128), primary_key=True),
    Column("digest", String(64), nullable=False),
    Column("graded_at", String(32), nullable=False),
    Column("result", Text, nullable=False),
)


class GradebookWriter:
    """The batch's single connection to the gradebook."""

    def __init__(self, db_url: str, assignment: str, notebook: str):
        from nbgrader.api import Gradebook

        from autograder.course import COURSE_ID

        self.gb = Gradebook(db_url, course_id=COURSE_ID)
        self.assignment, self.notebook = assignment, notebook.removesuffix(".ipynb")
        _META.create_all(self.gb.engine)
        nb = self.gb.find_notebook(self.notebook, assignment)
        self.solution_cells = {c.name for c in nb.solution_cells}

    def previous(self) -> dict[str, tuple[str, dict]]:
        """``{student: (digest, result)}`` for this assignment's earlier runs."""
        rows = self.gb.db.execute(select(GRADED.c.student, GRADED.c.digest, GRADED.c.result)
                                  .where(GRADED.c.assignment == self.assignment)).all()
        return {r.student: (r.digest, json.loads(r.result)) for r in rows}

    def write(self, student: str, digest: str, result: dict) -> None:
        """Store one submission's scores, reasons and digest in a single transaction."""
        from nbgrader.api import MissingEntry

        db = self.gb.db
        try:
            try:
                self.gb.find_student(student)
            except MissingEntry:
                self.gb.add_student(student)
            try:
                self.gb.find_submission(self.assignment, student)
            except MissingEntry:
                self.gb.add_submission(self.assignment, student)
            for row in result["scores"]:
                grade = self.gb.find_grade(row["task"], self.notebook, self.assignment, student)
                grade.auto_score = float(row["score"])
                grade.needs_manual_grade = False
                answer = f"{row['task']}_answer"
                if answer in self.solution_cells:
                    comment = self.gb.find_comment(answer, self.notebook, self.assignment, student)
                    comment.auto_comment = None if row["reason"] == "passed" else row["reason"][:4000]
            db.execute(GRADED.delete().where((GRADED.c.assignment == self.assignment) &
                                             (GRADED.c.student == student)))
            db.execute(GRADED.insert().values(assignment=self.assignment, student=student, digest=digest,
                                              graded_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                                              result=json.dumps(result)))
            db.commit()
        except Exception:
            db.rollback()
            raise

    def scores(self) -> dict[tuple[str, str], float]:
        """``{(student, task): auto score}`` as the gradebook holds them (for consistency checks)."""
        out = {}
        for sub in self.gb.assignment_submissions(self.assignment):
            for nb in sub.notebooks:
                for grade in nb.grades:
                    out[(sub.student.id, grade.name)] = float(grade.auto_score or 0.0)
        return out

    def close(self) -> None:
        self.gb.close()
        self.gb.engine.dispose()
