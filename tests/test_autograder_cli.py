"""The autograder end to end: release, batch grading with nbgrader, and the student's self-check."""

from __future__ import annotations

import ast
import csv
import importlib
import re
import shutil
from pathlib import Path

import nbformat
import pytest

from autograder.__main__ import main
from autograder.course import EXERCISES, SOLUTIONS, assignments, notebook_names, release
from autograder.grading import CSV_COLUMNS, find_submissions, tasks_of
from autograder.runner import _free_names

ASSIGNMENTS = assignments()

def _round_trip_mistakes() -> dict[str, tuple[str, str]]:
    """Each chapter's test module names one plausible mistake: (answer cell id, wrong source)."""
    found = {}
    for path in sorted(Path(__file__).parent.glob("test_checks_ch*.py")):
        module = importlib.import_module(f"tests.{path.stem}")
        mistake = getattr(module, "ROUND_TRIP_MISTAKE", None)
        if mistake is not None:
            found[module.ASSIGNMENT] = mistake
    return found


# One plausible mistake per assignment, pasted over one answer cell: the "wrong" student.
WRONG_ANSWERS = _round_trip_mistakes()


def test_every_assignment_has_a_release_and_a_planted_mistake():
    assert {"ch01_perceptron", "ch02_ml_basics"} <= set(ASSIGNMENTS)
    assert set(WRONG_ANSWERS) == set(ASSIGNMENTS), \
        "each assignment needs ROUND_TRIP_MISTAKE and ASSIGNMENT in its tests/test_checks_chNN.py"
    for assignment in ASSIGNMENTS:
        assert (EXERCISES / assignment).is_dir(), f"{assignment} has no release: run `make release`"


@pytest.mark.slow
def test_release_reproduces_the_committed_exercises(tmp_path):
    """exercises/ is exactly what `python -m autograder release` makes from solutions/."""
    release(dest=tmp_path)
    made = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file())
    committed = sorted(p.relative_to(EXERCISES).as_posix() for p in EXERCISES.rglob("*") if p.is_file())
    assert made == committed, "exercises/ has different files than a fresh release: run `make release`"
    for rel in made:
        assert (tmp_path / rel).read_bytes() == (EXERCISES / rel).read_bytes(), \
            f"exercises/{rel} drifted from solutions/: run `make release`"


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_released_notebook_hides_solutions_and_hidden_tests(assignment):
    for name in notebook_names(assignment):
        text = (EXERCISES / assignment / name).read_text()
        for marker in ("BEGIN SOLUTION", "END SOLUTION", "BEGIN HIDDEN TESTS", "autograder.checks"):
            assert marker not in text, f"{assignment}/{name} leaks {marker!r}"
        nb = nbformat.read(EXERCISES / assignment / name, as_version=4)
        answers = [c for c in nb.cells if c.metadata.get("nbgrader", {}).get("solution")]
        assert answers and all("raise NotImplementedError()" in c.source for c in answers)
        assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code")


def _with_answer(assignment: str, grade_id: str, source: str):
    nb = nbformat.read(SOLUTIONS / assignment / notebook_names(assignment)[0], as_version=4)
    cells = [c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id") == grade_id]
    assert len(cells) == 1, f"{assignment} has no answer cell {grade_id}"
    cells[0].source = source
    return nb


@pytest.fixture(scope="module", params=ASSIGNMENTS)
def graded(request, tmp_path_factory):
    """Grade four students once per assignment: correct, blank, wrong and broken."""
    assignment = request.param
    name = notebook_names(assignment)[0]
    subs = tmp_path_factory.mktemp(f"subs-{assignment}")
    out = tmp_path_factory.mktemp(f"out-{assignment}")
    for student in ("correct", "blank", "broken"):
        (subs / student).mkdir()
    shutil.copy(SOLUTIONS / assignment / name, subs / "correct" / name)
    shutil.copy(EXERCISES / assignment / name, subs / "blank" / name)
    (subs / "broken" / name).write_text('{"cells": [ this is not JSON')
    wrong_dir = subs / "wrong" / assignment  # nbgrader's <student>/<assignment>/ layout
    wrong_dir.mkdir(parents=True)
    grade_id, source = WRONG_ANSWERS[assignment]
    nbformat.write(_with_answer(assignment, grade_id, source), wrong_dir / name)
    code = main(["grade", assignment, str(subs), "--out", str(out), "--quiet"])
    with open(out / "grades.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    return assignment, out, rows, code


def _scores(rows, student):
    return {r["task"]: (float(r["score"]), float(r["max_score"]), r["reason"]) for r in rows
            if r["student"] == student}


@pytest.mark.slow
def test_grading_exits_zero_and_writes_one_row_per_student_and_task(graded):
    assignment, out, rows, code = graded
    assert code == 0
    tasks = [t.name for t in tasks_of(assignment)]
    assert list(rows[0].keys()) == CSV_COLUMNS
    for student in ("correct", "blank", "wrong", "broken"):
        assert sorted(_scores(rows, student)) == sorted(tasks)
        assert (out / "feedback" / f"{student}.html").is_file()
    assert (out / "gradebook.db").is_file()


@pytest.mark.slow
def test_solution_gets_full_marks(graded):
    _, _, rows, _ = graded
    for task, (score, max_score, reason) in _scores(rows, "correct").items():
        assert max_score > 0 and score == max_score, f"{task}: {reason}"


@pytest.mark.slow
def test_blank_release_gets_zero_with_a_reason(graded):
    _, _, rows, _ = graded
    for task, (score, _, reason) in _scores(rows, "blank").items():
        assert score == 0, task
        assert "not answered yet" in reason, reason


@pytest.mark.slow
def test_wrong_answer_loses_only_that_task(graded):
    assignment, _, rows, _ = graded
    grade_id = WRONG_ANSWERS[assignment][0].removesuffix("_answer")
    scores = _scores(rows, "wrong")
    score, _, reason = scores.pop(grade_id)
    assert score == 0 and reason and reason != "passed"
    assert re.search(r"differ|expected|got", reason), reason
    for task, (score, max_score, reason) in scores.items():
        assert score == max_score, f"{task}: {reason}"


@pytest.mark.slow
def test_invalid_json_gets_zero_and_the_batch_goes_on(graded):
    _, out, rows, _ = graded
    for score, _, reason in _scores(rows, "broken").values():
        assert score == 0 and "not a valid Jupyter notebook" in reason
    assert "not a valid Jupyter notebook" in (out / "feedback" / "broken.html").read_text()


@pytest.mark.slow
def test_feedback_shows_reasons_but_never_hidden_tests(graded):
    _, out, rows, _ = graded
    for page in (out / "feedback").glob("*.html"):
        text = page.read_text()
        assert "llmcourse-summary" in text
        for leak in ("BEGIN HIDDEN", "autograder.checks", "check_"):
            assert leak not in text, f"{page.name} shows hidden test code ({leak!r})"
    wrong = (out / "feedback" / "wrong.html").read_text()
    reason = [r["reason"] for r in rows if r["student"] == "wrong" and float(r["score"]) == 0][0]
    assert reason.split(":")[0] in wrong


def test_find_submissions_accepts_three_layouts(tmp_path):
    for path in ("a/x.ipynb", "b/hw/x.ipynb", "c/anything.ipynb"):
        (tmp_path / path).parent.mkdir(parents=True)
        (tmp_path / path).write_text("{}")
    (tmp_path / "d").mkdir()
    found = find_submissions(tmp_path, "hw", ["x.ipynb"])
    assert found["a"].name == "x.ipynb" and found["b"].parent.name == "hw"
    assert found["c"].name == "anything.ipynb" and found["d"] is None
    nb_layout = tmp_path / "nb" / "submitted" / "s1" / "hw"
    nb_layout.mkdir(parents=True)
    (nb_layout / "x.ipynb").write_text("{}")
    assert list(find_submissions(tmp_path / "nb", "hw", ["x.ipynb"])) == ["s1"]


def test_cli_reports_unknown_assignment_clearly(tmp_path, capsys):
    assert main(["grade", "ch99_nope", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "unknown assignment 'ch99_nope'" in capsys.readouterr().err
    assert main(["check", str(tmp_path / "missing.ipynb")]) == 2


@pytest.mark.slow
def test_check_command_shows_the_student_only_the_table(tmp_path):
    """No kernel chatter (such as the warning about unencrypted TCP) above the table."""
    import subprocess
    import sys

    name = notebook_names("ch01_perceptron")[0]
    shutil.copy(EXERCISES / "ch01_perceptron" / name, tmp_path / name)
    done = subprocess.run([sys.executable, "-m", "autograder", "check", str(tmp_path / name)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 1, done.stderr
    text = done.stdout + done.stderr
    assert text.startswith("task "), text[:500]
    assert "WARNING" not in text and "TCP" not in text, text[:500]


@pytest.mark.slow
@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_check_command_prints_a_table_for_solution_and_blank(assignment, tmp_path, capsys):
    name = notebook_names(assignment)[0]
    tasks = [t.name for t in tasks_of(assignment)]
    shutil.copy(SOLUTIONS / assignment / name, tmp_path / name)
    assert main(["check", str(tmp_path / name)]) == 0
    out = capsys.readouterr().out
    assert all(re.search(rf"{t}\s+\S+\s+PASS", out) for t in tasks), out
    shutil.copy(EXERCISES / assignment / name, tmp_path / name)
    assert main(["check", str(tmp_path / name)]) == 1
    out = capsys.readouterr().out
    assert all(re.search(rf"{t}\s+\S+\s+FAIL", out) for t in tasks), out
    assert f"0 of {len(tasks)} tasks pass" in out


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_source_notebook_has_the_exercise_shape(assignment):
    """DESIGN.md's exercise shape: per task an answer cell and a graded test cell with hidden checks."""
    nb = nbformat.read(SOLUTIONS / assignment / notebook_names(assignment)[0], as_version=4)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), "outputs are stored"
    metas = [c.metadata.get("nbgrader", {}) for c in nb.cells]
    ids = [m["grade_id"] for m in metas if m]
    assert len(ids) == len(set(ids)), f"{assignment}: duplicate grade ids"
    graded = [c for c, m in zip(nb.cells, metas) if m.get("grade")]
    answers = [c for c, m in zip(nb.cells, metas) if m.get("solution")]
    assert graded and len(answers) == len(graded), "one answer cell per graded cell"
    for cell in graded:
        meta = cell.metadata["nbgrader"]
        assert meta["grade_id"].startswith(assignment[:5]) and meta.get("points", 0) > 0, meta["grade_id"]
        assert cell.source.startswith('"""'), f"{meta['grade_id']} must open with a one-line docstring"
        assert "### BEGIN HIDDEN TESTS" in cell.source and "check_" in cell.source.split("### BEGIN HIDDEN TESTS")[1]
    defined = set()
    for cell in answers:
        defined |= {n.name for n in ast.parse(cell.source.replace("### BEGIN SOLUTION", "").replace(
            "### END SOLUTION", "")).body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
    for cell in graded:
        hidden = cell.source.split("### BEGIN HIDDEN TESTS")[1].replace("### END HIDDEN TESTS", "")
        free = _free_names(hidden)
        assert free <= defined, (f"{cell.metadata['nbgrader']['grade_id']}: the hidden tests run in the grader "
                                 f"and may only use names the answer cells define, not {sorted(free - defined)}")
    for cell in answers:
        head = cell.source.split("### BEGIN SOLUTION")[0]
        assert head.startswith(("def ", "class ")) and '"""' in head, "signature and docstring must sit outside the solution"
