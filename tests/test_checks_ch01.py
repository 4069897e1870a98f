"""The chapter 1 checks have teeth: the shipped solution passes, planted mistakes fail.

The solution functions are taken from the nbgrader source notebook itself
(setup and answer cells, executed as a notebook kernel would), so these tests
prove that what the course ships passes its own hidden checks. Every wrong
implementation below is a mistake a student could plausibly make; each must
make its check raise CheckFailed with a message that names what differs.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
import numpy as np
import pytest

from autograder.checks import ch01_perceptron as checks
from autograder.compare import CheckFailed
from autograder.guard import ForbiddenCall, static_violations
from llmcourse.tasks import make_linearly_separable, make_logic_gate
from tests.notebook_kernel import kernel, planted, solution_namespace

ASSIGNMENT = "ch01_perceptron"
# The mistake the nbgrader round trip in test_autograder_cli plants: (answer cell, wrong code).
ROUND_TRIP_MISTAKE = ("ch01_predict_answer",
                      "def perceptron_predict(X, w, b):\n    return (X @ w + b >= 0).astype(int)\n")

pytestmark = pytest.mark.ch01

NOTEBOOK = Path(__file__).resolve().parents[1] / "solutions" / "ch01_perceptron" / "ch01_perceptron.ipynb"
GRADE_IDS = {"ch01_predict": "perceptron_predict", "ch01_fit": "perceptron_fit",
             "ch01_converges": "perceptron_converges"}


# ----------------------------------------------------------------- helpers

@pytest.fixture(scope="module")
def notebook():
    return nbformat.read(NOTEBOOK, as_version=4)


@pytest.fixture(scope="module")
def solution() -> dict:
    """The namespace left by the notebook's setup and answer cells (the reference solution)."""
    return solution_namespace(NOTEBOOK)


# ----------------------------------------------------------------- the notebook itself

def test_notebook_grade_ids_call_their_hidden_checks(notebook):
    """The shape shared by every exercise is tested in test_autograder_cli.py; here, the ch01 names."""
    graded = {c.metadata["nbgrader"]["grade_id"]: c for c in notebook.cells
              if c.cell_type == "code" and c.metadata.get("nbgrader", {}).get("grade")}
    assert set(graded) == set(GRADE_IDS), f"graded cells {sorted(graded)} != {sorted(GRADE_IDS)}"
    for grade_id, cell in graded.items():
        task = grade_id.removeprefix("ch01_")
        hidden = cell.source.split("### BEGIN HIDDEN TESTS")[1]
        assert f"check_{task}({GRADE_IDS[grade_id]})" in hidden, f"{grade_id} does not call check_{task}"


def test_solution_passes_every_check(solution):
    checks.check_predict(solution["perceptron_predict"])
    checks.check_fit(solution["perceptron_fit"])
    checks.check_converges(solution["perceptron_converges"])


def test_solution_learns_and_or_but_not_xor(solution):
    converges = solution["perceptron_converges"]
    results = {gate: converges(*make_logic_gate(gate), epochs=100) for gate in checks.GATES}
    assert results == {"AND": True, "OR": True, "NAND": True, "NOR": True, "XOR": False, "XNOR": False}


# ----------------------------------------------------------------- the references

@pytest.mark.parametrize("seed", [0, 1, 2])
def test_partial_fit_replay_matches_fit(seed):
    """Replaying scikit-learn one sample at a time ends where one fit() call ends."""
    X, y, _ = make_linearly_separable(15, 3, margin=0.05, seed=seed)
    clf = checks._sk_perceptron(0.5, 1)
    for _ in range(4):
        for i in range(len(X)):
            clf.partial_fit(X[i:i + 1], y[i:i + 1], classes=np.array([0, 1]))
    w, b = checks.reference_fit(X, y, 0.5, 4)
    np.testing.assert_array_equal(clf.coef_[0], w)
    assert float(clf.intercept_[0]) == b


def test_reference_mistakes_known_answer():
    X, y = make_logic_gate("AND")
    np.testing.assert_array_equal(checks.reference_mistakes(X, y, 1.0, 10), [2, 3, 3, 2, 2, 3, 2, 1, 0, 0])
    assert checks.reference_first_clean_epoch(X, y, 100) == 9
    assert checks.reference_first_clean_epoch(*make_logic_gate("XOR"), 100) is None


# ----------------------------------------------------------------- planted mistakes: predict

def predict_ge(X, w, b):
    return (np.asarray(X) @ w + b >= 0).astype(int)


def predict_pm1(X, w, b):
    return np.where(np.asarray(X) @ w + b > 0, 1, -1)


def predict_no_bias(X, w, b):
    return (np.asarray(X) @ w > 0).astype(int)


def predict_column(X, w, b):
    return (np.asarray(X) @ np.reshape(w, (-1, 1)) + b > 0).astype(int)


@pytest.mark.parametrize("wrong, match", planted(
    (predict_ge, r"integers \(scores exactly 0\): \d+ of 30 values differ"),
    (predict_pm1, r"labels must be 0 or 1, got values \[-1"),
    (predict_no_bias, r"values differ"),
    (predict_column, r"shape \(1, 1\) but expected \(1,\)"),
))
def test_check_predict_rejects(wrong, match):
    with pytest.raises(CheckFailed, match=match):
        checks.check_predict(wrong)


# ----------------------------------------------------------------- planted mistakes: fit

def _perceptron(X, y, lr, epochs, *, strict=False, bias=True, shuffle=False, cumulative=False,
                use_lr=True, count="updates"):
    X = np.asarray(X, dtype=float)
    t = np.where(np.asarray(y) == 1, 1.0, -1.0)
    w, b, mistakes, total = np.zeros(X.shape[1]), 0.0, [], 0
    rng = np.random.default_rng(0)
    step = lr if use_lr else 1.0
    for _ in range(epochs):
        order = rng.permutation(len(X)) if shuffle else range(len(X))
        n = 0
        for i in order:
            score = X[i] @ w + (b if bias else 0.0)
            if (t[i] * score < 0) if strict else (t[i] * score <= 0):
                w = w + step * t[i] * X[i]
                if bias:
                    b = b + step * t[i]
                n += 1
        total += n
        if count == "errors after epoch":
            n = int(np.sum((X @ w + b > 0) != (t > 0)))
        mistakes.append(total if cumulative else n)
    return w, b, mistakes


def fit_strict(X, y, *, lr=1.0, epochs=10):
    return _perceptron(X, y, lr, epochs, strict=True)


def fit_no_bias(X, y, *, lr=1.0, epochs=10):
    return _perceptron(X, y, lr, epochs, bias=False)


def fit_shuffled(X, y, *, lr=1.0, epochs=10):
    return _perceptron(X, y, lr, epochs, shuffle=True)


def fit_cumulative_mistakes(X, y, *, lr=1.0, epochs=10):
    return _perceptron(X, y, lr, epochs, cumulative=True)


def fit_ignores_lr(X, y, *, lr=1.0, epochs=10):
    return _perceptron(X, y, lr, epochs, use_lr=False)


def fit_counts_errors_after_epoch(X, y, *, lr=1.0, epochs=10):
    return _perceptron(X, y, lr, epochs, count="errors after epoch")


def fit_returns_two(X, y, *, lr=1.0, epochs=10):
    return _perceptron(X, y, lr, epochs)[:2]


@pytest.mark.parametrize("wrong, match", planted(
    (fit_strict, r"w \(weights\) for gate=AND.*got 0"),
    (fit_no_bias, r"w \(weights\) for gate=AND.*got 0, expected 3"),
    (fit_shuffled, r"w \(weights\) for gate=AND"),
    (fit_cumulative_mistakes, r"mistakes \(updates per epoch\).*values differ"),
    (fit_ignores_lr, r"w \(weights\) for gate=OR, lr=0.5"),
    (fit_counts_errors_after_epoch, r"mistakes \(updates per epoch\)"),
    (fit_returns_two, r"expected a tuple \(w, b, mistakes\), got a tuple of length 2"),
))
def test_check_fit_rejects(wrong, match):
    with pytest.raises(CheckFailed, match=match):
        checks.check_fit(wrong)


# ----------------------------------------------------------------- planted mistakes: converges

def converges_always(X, y, *, epochs=100):
    return True


def converges_if_final_weights_separate(X, y, *, epochs=100):
    w, b, _ = _perceptron(X, y, 1.0, epochs)
    return bool(np.all((X @ w + b > 0) == (np.asarray(y) == 1)))


def converges_one_epoch_short(X, y, *, epochs=100):
    _, _, mistakes = _perceptron(X, y, 1.0, epochs - 1)
    return 0 in mistakes


def converges_returns_int(X, y, *, epochs=100):
    _, _, mistakes = _perceptron(X, y, 1.0, epochs)
    return int(0 in mistakes)


@pytest.mark.parametrize("wrong, match", planted(
    (converges_always, r"gate=XOR.*returned True, expected False"),
    (converges_if_final_weights_separate, r"epochs=8: returned True, expected False"),
    (converges_one_epoch_short, r"epochs=9: returned False, expected True \(epoch 9"),
    (converges_returns_int, r"expected True or False, got int"),
))
def test_check_converges_rejects(wrong, match):
    with pytest.raises(CheckFailed, match=match):
        checks.check_converges(wrong)


# ----------------------------------------------------------------- the guard

SETUP = "import numpy as np\n"
SKLEARN_FIT_BODY = """
    clf = {name}(penalty=None, alpha=0.0, eta0=lr, shuffle=False, tol=None, max_iter=epochs).fit(X, y)
    return clf.coef_[0], float(clf.intercept_[0]), [0] * epochs
"""


def test_guard_catches_direct_sklearn_import():
    ns = kernel(SETUP, "def perceptron_fit(X, y, *, lr=1.0, epochs=10):\n"
                "    from sklearn.linear_model import Perceptron\n" + SKLEARN_FIT_BODY.format(name="Perceptron"))
    with pytest.raises(ForbiddenCall, match=r"perceptron_fit imports from sklearn\.linear_model"):
        checks.check_fit(ns["perceptron_fit"])


def test_guard_catches_alias_imported_at_top_level():
    ns = kernel(SETUP + "from sklearn.linear_model import Perceptron as P\n",
                "def perceptron_fit(X, y, *, lr=1.0, epochs=10):" + SKLEARN_FIT_BODY.format(name="P"))
    with pytest.raises(ForbiddenCall, match=r"perceptron_fit uses P \(from sklearn\)"):
        checks.check_fit(ns["perceptron_fit"])


def test_guard_catches_sklearn_in_a_helper():
    ns = kernel(SETUP + "import sklearn.linear_model as lm\n",
                "def _train(X, y, lr, epochs):\n"
                "    return lm.Perceptron(eta0=lr, shuffle=False, tol=None, max_iter=epochs).fit(X, y)\n",
                "def perceptron_predict(X, w, b):\n"
                "    return (np.asarray(X) @ w + b > 0).astype(int)\n",
                "def perceptron_converges(X, y, *, epochs=100):\n"
                "    clf = _train(X, y, 1.0, epochs)\n"
                "    return bool(np.all(perceptron_predict(X, clf.coef_[0], clf.intercept_[0]) == y))\n")
    with pytest.raises(ForbiddenCall, match=r"_train uses lm\.Perceptron \(from sklearn\)"):
        checks.check_converges(ns["perceptron_converges"])


def test_guard_catches_sklearn_at_run_time_without_source():
    ns = kernel(SETUP, "def perceptron_fit(X, y, *, lr=1.0, epochs=10):\n"
                "    mod = __import__('sklearn.linear_model', fromlist=['Perceptron'])\n"
                + SKLEARN_FIT_BODY.format(name="mod.Perceptron"), keep_source=False)
    fn = ns["perceptron_fit"]
    assert static_violations(fn, modules=["sklearn"]) == [], "the static look should see no source here"
    with pytest.raises(ForbiddenCall, match=r"your code called sklearn"):
        checks.check_fit(fn)


def test_guard_lets_numpy_solutions_through(solution):
    for name in GRADE_IDS.values():
        assert static_violations(solution[name], modules=checks.FORBIDDEN) == [], name
