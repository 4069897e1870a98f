"""The attack corpus: malicious or broken submissions, graded in one batch, gain nothing.

Each entry is one student's notebook, built from the released chapter-1 exercise. Most
combine a wrong answer with a trick that would make a naive grader pass it; the test asserts
that no task scores more than its honest value, that every lost point has a reason, and that
the batch finished with every other student graded. Entries that are honest apart from a
trick (printing a flood, calling ``sys.exit`` after a correct answer) keep what they earned.

The corpus is graded twice, by the local process pool and by a real Dask cluster (a
``dask scheduler`` and two ``dask worker`` processes), and every test runs on both batches;
the two must write byte-identical ``grades.csv`` files.
"""

from __future__ import annotations

import copy
import csv
import hashlib
import json
import re
from pathlib import Path

import nbformat
import pytest

from autograder.__main__ import main
from autograder.course import EXERCISES, SOLUTIONS
from autograder.gradebook import GradebookWriter
from autograder.limits import isolation
from tests.dask_processes import running_cluster

pytestmark = [pytest.mark.sandbox, pytest.mark.slow]

A = "ch01_perceptron"
NB = f"{A}.ipynb"
TASKS = {"ch01_predict": 2.0, "ch01_fit": 4.0, "ch01_converges": 2.0}
WRONG_PREDICT = ("def perceptron_predict(X, w, b):\n"
                 "    return (np.asarray(X, dtype=float) @ np.asarray(w, dtype=float) + b >= 0).astype(int)\n")


def _solutions() -> dict[str, str]:
    nb = nbformat.read(SOLUTIONS / A / NB, as_version=4)
    out = {}
    for c in nb.cells:
        meta = c.metadata.get("nbgrader", {})
        if meta.get("solution"):
            out[meta["grade_id"]] = "\n".join(line for line in c.source.splitlines()
                                              if "### BEGIN SOLUTION" not in line and "### END SOLUTION" not in line)
    return out


SOLVED = _solutions()


def notebook(**answers: str) -> nbformat.NotebookNode:
    """The released notebook with every answer filled in correctly, except those given."""
    nb = nbformat.read(EXERCISES / A / NB, as_version=4)
    for c in nb.cells:
        gid = c.metadata.get("nbgrader", {}).get("grade_id")
        if gid in SOLVED:
            c.source = answers.get(gid.removesuffix("_answer"), SOLVED[gid])
    return nb


def cell(nb, grade_id):
    return next(c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id") == grade_id)


def _deleted_test_cell():
    nb = notebook(ch01_predict=WRONG_PREDICT)
    nb.cells = [c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id") != "ch01_predict"]
    return nb


def _emptied_test_cell():
    nb = notebook(ch01_predict=WRONG_PREDICT)
    cell(nb, "ch01_predict").source = "pass"
    return nb


def _rewritten_metadata():
    nb = notebook(ch01_predict=WRONG_PREDICT)
    test = cell(nb, "ch01_predict")
    test.metadata["nbgrader"].update(points=100, grade=False, locked=False)
    test.source = "pass"
    return nb


def _duplicated_cells():
    nb = notebook(ch01_predict=WRONG_PREDICT)
    i = nb.cells.index(cell(nb, "ch01_predict_answer"))
    fixed = copy.deepcopy(nb.cells[i])
    fixed.source = SOLVED["ch01_predict_answer"]
    test = copy.deepcopy(cell(nb, "ch01_predict"))
    nb.cells[i + 1:i + 1] = [fixed, test, copy.deepcopy(test)]
    return nb


def _reversed_cells():
    nb = notebook()
    nb.cells = nb.cells[::-1]
    return nb


def _other_kernel():
    nb = notebook()
    nb.metadata["kernelspec"] = {"name": "ir", "display_name": "R", "language": "R"}
    return nb


def _vandal(targets: list[str]) -> str:
    lines = [SOLVED["ch01_predict_answer"], "for _path in " + json.dumps(targets) + ":",
             "    for _mode in ('a', 'w'):",
             "        try:",
             "            with open(_path, _mode) as _fh:",
             "                _fh.write('overwritten by a student')",
             "        except OSError:",
             "            pass"]
    return "\n".join(lines) + "\n"


# name -> (notebook or raw bytes builder, {task: most points allowed}, regex a lost point's reason must match)
ATTACKS = {
    "monkeypatch_the_checks_module": (
        lambda ctx: notebook(ch01_predict=WRONG_PREDICT + "import autograder.checks.ch01_perceptron as c\n"
                             "c.check_predict = lambda *a, **k: None\n"),
        {"ch01_predict": 0, "ch01_fit": 0, "ch01_converges": 0}, r"imports autograder"),
    "monkeypatch_numpy_testing": (
        lambda ctx: notebook(ch01_predict=WRONG_PREDICT + "np.testing.assert_allclose = lambda *a, **k: None\n"
                             "np.testing.assert_array_equal = lambda *a, **k: None\n"
                             "np.allclose = lambda *a, **k: True\nnp.array_equal = lambda *a, **k: True\n"),
        {"ch01_predict": 0}, r"expected|differ|label"),
    "monkeypatch_torch_allclose": (
        lambda ctx: notebook(ch01_predict=WRONG_PREDICT + "import torch\ntorch.allclose = lambda *a, **k: True\n"
                             "torch.equal = lambda *a, **k: True\n"),
        {"ch01_predict": 0}, r"expected|differ|label"),
    "assert_helpers_redefined": (
        lambda ctx: notebook(ch01_predict=WRONG_PREDICT + "def assert_close(*a, **k): pass\n"
                             "def assert_equal(*a, **k): pass\nclass CheckFailed(Exception): pass\n"
                             "def fail(*a, **k): pass\n"),
        {"ch01_predict": 0}, r"expected|differ|label"),
    "builtins_patched": (
        lambda ctx: notebook(ch01_predict=WRONG_PREDICT + "import builtins\nbuiltins.AssertionError = Warning\n"),
        {"ch01_predict": 0, "ch01_fit": 0, "ch01_converges": 0}, r"imports builtins"),
    "namespace_builtins_shadowed": (
        lambda ctx: notebook(ch01_predict=WRONG_PREDICT + "isinstance = lambda *a: True\nlen = lambda x: 3\n"
                             "AssertionError = Warning\n"),
        {"ch01_predict": 0}, r"expected|differ|label"),
    "reference_function_patched": (
        lambda ctx: notebook(ch01_predict=WRONG_PREDICT + "import sklearn.linear_model as _lm\n"
                             "_lm.Perceptron.predict = lambda self, X: (np.asarray(X) @ self.coef_.ravel()"
                             " + self.intercept_ >= 0).astype(int)\n"),
        {"ch01_predict": 0}, r"expected|differ|label"),
    "reference_called_through_import_trick": (
        lambda ctx: notebook(ch01_predict="def perceptron_predict(X, w, b):\n"
                             "    lm = __import__('sklearn.linear_model', fromlist=['Perceptron'])\n"
                             "    clf = lm.Perceptron(); clf.coef_ = np.asarray(w).reshape(1, -1)\n"
                             "    clf.intercept_ = np.array([b]); clf.classes_ = np.array([0, 1])\n"
                             "    return clf.predict(X)\n"),
        {"ch01_predict": 0, "ch01_fit": 0, "ch01_converges": 0}, r"uses __import__"),
    "hard_coded_visible_answer": (
        lambda ctx: notebook(ch01_predict="def perceptron_predict(X, w, b):\n    return np.array([1, 0, 0])\n"),
        {"ch01_predict": 0}, r"shape|expected|differ"),
    "object_that_equals_everything": (
        lambda ctx: notebook(ch01_predict="class _Sneaky:\n    shape = (3,)\n    def __eq__(self, other): return True\n"
                             "    def tolist(self): return [1, 0, 0]\n    def __len__(self): return 3\n"
                             "def perceptron_predict(X, w, b):\n    return _Sneaky()\n"),
        {"ch01_predict": 0}, r"_Sneaky|array|number|expected"),
    "hostile_exception_message": (
        lambda ctx: notebook(ch01_predict="class _Bad(Exception):\n    def __str__(self): raise RuntimeError('no')\n"
                             "def perceptron_predict(X, w, b):\n    raise _Bad()\n"),
        {"ch01_predict": 0}, r"_Bad"),
    "sys_exit_after_a_correct_answer": (
        lambda ctx: notebook(ch01_predict=SOLVED["ch01_predict_answer"] + "\nimport sys\nsys.exit(0)\n"),
        {}, r""),
    "os_exit_kills_the_process": (
        lambda ctx: notebook(ch01_fit=SOLVED["ch01_fit_answer"] + "\nimport os\nos._exit(3)\n"),
        {"ch01_fit": 0, "ch01_converges": 0}, r"sandbox"),
    "abort_inside_a_checked_function": (
        lambda ctx: notebook(ch01_converges="def perceptron_converges(X, y, *, epochs=100):\n"
                             "    import os\n    os.abort()\n"),
        {"ch01_converges": 0}, r"SIGABRT|sandbox"),
    "endless_loop": (
        lambda ctx: notebook(ch01_fit="def perceptron_fit(X, y, *, lr=1.0, epochs=10):\n    while True:\n"
                             "        pass\n"),
        {"ch01_fit": 0, "ch01_converges": 0}, r"time limit"),
    "memory_bomb": (
        lambda ctx: notebook(ch01_predict="def perceptron_predict(X, w, b):\n"
                             "    hog = bytearray(10**12)\n    return hog\n"),
        {"ch01_predict": 0}, r"MemoryError|memory"),
    "output_flood": (
        lambda ctx: notebook(ch01_predict=SOLVED["ch01_predict_answer"] + "\nfor _ in range(3000):\n"
                             "    print('x' * 10000)\n"),
        {}, r""),
    "deleted_test_cell": (lambda ctx: _deleted_test_cell(), {"ch01_predict": 0}, r"expected|differ|label"),
    "emptied_test_cell": (lambda ctx: _emptied_test_cell(), {"ch01_predict": 0}, r"expected|differ|label"),
    "rewritten_cell_metadata": (lambda ctx: _rewritten_metadata(), {"ch01_predict": 0}, r"expected|differ|label"),
    "duplicated_cells": (lambda ctx: _duplicated_cells(), {"ch01_predict": 0}, r"expected|differ|label"),
    "reordered_cells": (lambda ctx: _reversed_cells(), {}, r""),
    "wrong_kernel_name": (lambda ctx: _other_kernel(), {}, r""),
    "invalid_json": (lambda ctx: b'{"cells": [ {"cell_type": ', dict.fromkeys(TASKS, 0), r"not a valid Jupyter"),
    "not_a_notebook_at_all": (lambda ctx: b"\x00\x01binary", dict.fromkeys(TASKS, 0), r"not a valid Jupyter"),
    "writes_gradebook_and_other_students": (
        lambda ctx: notebook(ch01_predict=_vandal([str(ctx["out"] / "gradebook.db"), str(ctx["victim"]),
                                                   str(ctx["out"] / "grades.csv")])),
        {}, r""),
    "reads_the_hidden_solutions": (
        lambda ctx: notebook(ch01_predict="def perceptron_predict(X, w, b):\n"
                             f"    text = open({str(SOLUTIONS / A / NB)!r}).read()\n"
                             "    return (np.asarray(X) @ np.asarray(w) + b > 0).astype(int)\n"),
        {"ch01_predict": 0} if isolation().namespaces else {}, r"FileNotFoundError|No such file"),
}


def _grade_corpus(tmp_path_factory, *mode: str) -> dict:
    """Grade the whole corpus (plus an honest student and a victim) with ``mode``'s CLI arguments."""
    subs = tmp_path_factory.mktemp("attack-subs")
    out = tmp_path_factory.mktemp("attack-out")
    victim = subs / "victim" / NB
    ctx = {"out": out, "victim": victim}
    for student, nb in [("honest", notebook()), ("victim", notebook())]:
        (subs / student).mkdir()
        nbformat.write(nb, subs / student / NB)
    for name, (build, _, _) in ATTACKS.items():
        (subs / name).mkdir()
        made = build(ctx)
        if isinstance(made, bytes):
            (subs / name / NB).write_bytes(made)
        else:
            nbformat.write(made, subs / name / NB)
    victim_hash = hashlib.sha256(victim.read_bytes()).hexdigest()
    code = main(["grade", A, str(subs), "--out", str(out), "--quiet", *mode,
                 "--cell-timeout", "8", "--notebook-timeout", "60", "--memory-mb", "3072"])
    with open(out / "grades.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    return {"code": code, "rows": rows, "out": out, "victim": victim, "victim_hash": victim_hash, "mode": mode}


@pytest.fixture(scope="module")
def dask_cluster(tmp_path_factory):
    with running_cluster(tmp_path_factory.mktemp("attack-dask")) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def local_batch(tmp_path_factory):
    return _grade_corpus(tmp_path_factory, "--workers", "2")


@pytest.fixture(scope="module")
def dask_batch(tmp_path_factory, dask_cluster):
    return _grade_corpus(tmp_path_factory, "--scheduler", dask_cluster.address)


@pytest.fixture(scope="module", params=["local", "dask"])
def batch(request):
    """The corpus graded by the local process pool, then by the Dask cluster."""
    return request.getfixturevalue(f"{request.param}_batch")


def _scores(rows, student):
    return {r["task"]: (float(r["score"]), float(r["max_score"]), r["reason"]) for r in rows
            if r["student"] == student}


def test_the_corpus_has_at_least_twenty_distinct_attacks():
    assert len(ATTACKS) >= 20


def test_batch_finishes_and_grades_every_student(batch):
    assert batch["code"] == 0
    students = {r["student"] for r in batch["rows"]}
    assert students == set(ATTACKS) | {"honest", "victim"}
    for student in students:
        assert sorted(_scores(batch["rows"], student)) == sorted(TASKS)
        assert (batch["out"] / "feedback" / f"{student}.html").is_file()


@pytest.mark.parametrize("student", ["honest", "victim"])
def test_honest_students_in_the_same_batch_get_full_marks(batch, student):
    for task, (score, max_score, reason) in _scores(batch["rows"], student).items():
        assert score == max_score == TASKS[task], f"{task}: {reason}"


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_attack_gains_no_illegitimate_points_and_gets_a_reason(batch, attack):
    _, allowed, pattern = ATTACKS[attack]
    scores = _scores(batch["rows"], attack)
    for task, (score, max_score, reason) in scores.items():
        assert max_score == TASKS[task], f"{task}: max score changed to {max_score}"
        cap = allowed.get(task, TASKS[task])
        assert score <= cap, f"{attack}/{task} scored {score} > {cap}: {reason}"
        if task in allowed:
            assert score == 0 and reason != "passed", (task, reason)
            assert re.search(pattern, reason), f"{attack}/{task}: reason {reason!r} should match {pattern!r}"
        if score < max_score:
            assert reason and reason != "passed"


def test_honest_tricks_keep_what_they_earned(batch):
    """Printing a flood, sys.exit after a correct answer, reordering, another kernel: full marks."""
    for attack in ("sys_exit_after_a_correct_answer", "output_flood", "reordered_cells", "wrong_kernel_name",
                   "writes_gradebook_and_other_students"):
        for task, (score, max_score, reason) in _scores(batch["rows"], attack).items():
            assert score == max_score, f"{attack}/{task}: {reason}"
    for task in ("ch01_predict",):  # earned before the process was killed
        assert _scores(batch["rows"], "os_exit_kills_the_process")[task][0] == TASKS[task]
        assert _scores(batch["rows"], "endless_loop")[task][0] == TASKS[task]


def test_students_cannot_touch_the_gradebook_or_other_submissions(batch):
    iso = isolation()
    if not (iso.namespaces or iso.drop_user):
        pytest.skip("this machine allows neither namespaces nor a separate user; the CLI warns about it")
    assert hashlib.sha256(batch["victim"].read_bytes()).hexdigest() == batch["victim_hash"]
    assert "overwritten by a student" not in (batch["out"] / "grades.csv").read_text()


def test_gradebook_matches_the_csv_after_a_batch_with_failures(batch):
    writer = GradebookWriter(f"sqlite:///{batch['out'] / 'gradebook.db'}", A, NB)
    try:
        stored = writer.scores()
        recorded = writer.previous()
    finally:
        writer.close()
    from_csv = {(r["student"], r["task"]): float(r["score"]) for r in batch["rows"]}
    assert stored == from_csv
    assert set(recorded) == {r["student"] for r in batch["rows"]}


def test_feedback_names_the_restored_cells_and_never_shows_hidden_tests(batch):
    page = (batch["out"] / "feedback" / "emptied_test_cell.html").read_text()
    assert "was changed; restored from the source" in page
    assert "was deleted; restored" in (batch["out"] / "feedback" / "deleted_test_cell.html").read_text()
    for path in (batch["out"] / "feedback").glob("*.html"):
        if path.stem == "monkeypatch_the_checks_module":
            continue  # the student's own code names autograder.checks
        text = path.read_text()
        assert "BEGIN HIDDEN" not in text and "autograder.checks" not in text, path.name


def test_summary_reports_mean_and_a_distribution_plot(batch):
    summary = json.loads((batch["out"] / "summary.json").read_text())
    totals = [sum(v[0] for v in _scores(batch["rows"], s).values()) for s in summary["totals"]]
    assert summary["submissions"] == len(ATTACKS) + 2
    assert summary["mean"] == pytest.approx(sum(totals) / len(totals))
    assert (batch["out"] / "summary.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _graded_at(out: Path) -> dict[str, str]:
    import sqlite3

    with sqlite3.connect(out / "gradebook.db") as db:
        return dict(db.execute("SELECT student, graded_at || digest FROM llmcourse_graded"))


def test_regrading_skips_unchanged_submissions(batch):
    """Resume: a second run over the same folder grades nothing again and gives the same CSV."""
    subs = batch["victim"].parent.parent
    before, stamps = (batch["out"] / "grades.csv").read_text(), _graded_at(batch["out"])
    assert main(["grade", A, str(subs), "--out", str(batch["out"]), "--quiet", *batch["mode"]]) == 0
    assert (batch["out"] / "grades.csv").read_text() == before
    assert _graded_at(batch["out"]) == stamps, "unchanged submissions were graded again"


def test_cluster_and_local_grades_of_the_corpus_are_byte_identical(local_batch, dask_batch):
    local, cluster = (b["out"] / "grades.csv" for b in (local_batch, dask_batch))
    assert cluster.read_bytes() == local.read_bytes()
