"""What a student reads after grading: their own cells, readable formulas, reasons that point at their line."""

from __future__ import annotations

import re
from dataclasses import replace

import nbformat
import pytest

from autograder.course import EXERCISES, SOLUTIONS
from autograder.feedback import mathjax_file, summary_table
from autograder.grading import TaskResult
from autograder.reports import feedback_page
from autograder.runner import AssignmentSource, grade_notebook
from tests.test_grading_attacks import NB, A, notebook

SOURCE = AssignmentSource.load(A, SOLUTIONS / A / NB, EXERCISES / A / NB)


def _grade(nb) -> tuple:
    graded = grade_notebook(SOURCE, nbformat.writes(nb).encode())
    rows = [replace(s, student="ada", assignment=A) for s in graded.scores]
    return graded, feedback_page("ada", A, rows, graded.notes, graded.notebook)


@pytest.mark.sandbox
def test_feedback_keeps_the_students_markdown_and_renders_math_offline():
    nb = notebook()
    nb.cells.insert(3, nbformat.v4.new_markdown_cell("My note: the score is $x \\cdot w + b$, **bold**."))
    graded, page = _grade(nb)
    assert all(s.score == s.max_score for s in graded.scores), graded.scores
    assert "My note: the score is" in page and "<strong>bold</strong>" in page
    assert '<script src="mathjax/tex-svg.js"' in page, "the page must load MathJax from beside it"
    assert "cdnjs.cloudflare.com/ajax/libs/mathjax/2" not in page
    assert mathjax_file().endswith("tex-svg.js")


def test_score_table_header_cells_are_separate_and_padded():
    table = summary_table("ada", A, [TaskResult("ch01_fit", 0.0, 4.0, "w differs", "ada", A)])
    assert re.search(r"<th [^>]*padding[^>]*>task</th>\s+<th [^>]*>score</th>\s+<th [^>]*>reason</th>", table)
    assert re.search(r"<td [^>]*padding[^>]*>ch01_fit</td>\s+<td", table)


@pytest.mark.sandbox
def test_forbidden_name_reason_says_which_function_uses_what():
    predict = ("from sklearn.utils import check_array\n"
               "def perceptron_predict(X, w, b):\n"
               "    return (check_array(X) @ w + b > 0).astype(int)\n")
    graded, _ = _grade(notebook(ch01_predict=predict))
    reason = next(s.reason for s in graded.scores if s.task == "ch01_predict")
    assert "perceptron_predict uses check_array" in reason and "without sklearn" in reason, reason


@pytest.mark.sandbox
def test_course_code_the_notebook_provides_may_use_what_the_student_may_not():
    """llmcourse.datasets uses scikit-learn; a student who calls it has not called scikit-learn."""
    predict = ("from llmcourse.datasets import load_digits\n"
               "def perceptron_predict(X, w, b):\n"
               "    assert len(load_digits().y_test) > 0\n"
               "    return (np.asarray(X) @ w + b > 0).astype(int)\n")
    graded, _ = _grade(notebook(ch01_predict=predict))
    score = next(s for s in graded.scores if s.task == "ch01_predict")
    assert score.score == score.max_score, score.reason
