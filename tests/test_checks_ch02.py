"""The chapter 2 checks have teeth: the shipped solution passes, planted mistakes fail.

The solution functions come from the nbgrader source notebook itself (setup and
answer cells, executed as a notebook kernel would). Each wrong implementation
is a mistake a student could plausibly make; each must make its check raise
CheckFailed with a message that names what differs.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
import numpy as np
import pytest
from scipy.special import expit

from autograder.checks import ch02_ml_basics as checks
from autograder.compare import CheckFailed
from autograder.guard import ForbiddenCall, static_violations
from tests.notebook_kernel import (
    assert_hidden_tests_call_checks,
    kernel,
    planted,
    solution_namespace,
)

ASSIGNMENT = "ch02_ml_basics"
# The mistake the nbgrader round trip in test_autograder_cli plants: (answer cell, wrong code).
ROUND_TRIP_MISTAKE = ("ch02_precision_recall_f1_answer",
                      "def precision_recall_f1(y_true, y_pred, positive=1):\n"
                      "    import numpy as np\n"
                      "    y_true, y_pred = np.asarray(y_true) == positive, np.asarray(y_pred) == positive\n"
                      "    tp = np.sum(y_true & y_pred)\n"
                      "    p = tp / max(np.sum(y_true), 1)\n"  # precision and recall swapped
                      "    r = tp / max(np.sum(y_pred), 1)\n"
                      "    return p, r, (2 * p * r / (p + r) if p + r else 0.0)\n")

pytestmark = pytest.mark.ch02

NOTEBOOK = Path(__file__).resolve().parents[1] / "solutions" / "ch02_ml_basics" / "ch02_ml_basics.ipynb"
GRADE_IDS = {
    "ch02_linreg_closed_form": ("linreg_closed_form", "linear_regression_closed_form"),
    "ch02_linreg_gd": ("linreg_gd", "linear_regression_gd"),
    "ch02_logreg_gd": ("logreg_gd", "logistic_regression_gd"),
    "ch02_precision_recall_f1": ("precision_recall_f1", "precision_recall_f1"),
    "ch02_top_k_accuracy": ("top_k_accuracy", "top_k_accuracy"),
}


# ----------------------------------------------------------------- helpers

@pytest.fixture(scope="module")
def notebook():
    return nbformat.read(NOTEBOOK, as_version=4)


@pytest.fixture(scope="module")
def solution() -> dict:
    """The namespace left by the notebook's setup and answer cells (the reference solution)."""
    return solution_namespace(NOTEBOOK)


def check_of(grade_id: str):
    return getattr(checks, f"check_{GRADE_IDS[grade_id][0]}")


# ----------------------------------------------------------------- the notebook itself

def test_notebook_grade_ids_call_their_hidden_checks(notebook):
    """The shape shared by every exercise is tested in test_autograder_cli.py; here, the ch02 names."""
    assert_hidden_tests_call_checks(notebook, GRADE_IDS)


@pytest.mark.parametrize("grade_id", list(GRADE_IDS))
def test_solution_passes_check(solution, grade_id):
    check_of(grade_id)(solution[GRADE_IDS[grade_id][1]])


# ----------------------------------------------------------------- the references

@pytest.mark.parametrize("seed", [10, 11, 12])
def test_logistic_check_data_is_not_separable(seed):
    """The convergence check needs a finite optimum: the unpenalised fit must not run off to infinity."""
    X, y = checks._logistic_data(200, 2, seed)
    ref = checks._reference_logistic(X, y)
    assert np.abs(ref.coef_).max() < 10, f"coefficients {ref.coef_} suggest separable data"
    assert 0 < y.mean() < 1


def test_mse_gd_reference_known_answer():
    w, b, losses = checks.mse_gd_reference(np.array([[1.0], [2.0]]), np.array([2.0, 4.0]), 0.1, 1)
    np.testing.assert_allclose(w, [1.0], rtol=1e-12)
    assert b == pytest.approx(0.6, rel=1e-12)
    np.testing.assert_allclose(losses, [10.0], rtol=1e-12)


def test_bce_gd_reference_gradient_matches_finite_differences():
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(8, 3)), rng.integers(0, 2, size=8)
    w, b = rng.normal(size=3), 0.3

    def loss(w, b):
        z = X @ w + b
        return np.mean(np.logaddexp(0.0, z) - y * z)

    # one step with lr = 1 from (0, 0) gives minus the gradient at zero
    w1, b1, _ = checks.bce_gd_reference(X, y, 1.0, 1)
    eps = 1e-6
    num_w = np.array([(loss(eps * e, 0.0) - loss(-eps * e, 0.0)) / (2 * eps) for e in np.eye(3)])
    np.testing.assert_allclose(-w1, num_w, rtol=1e-6, atol=1e-9)
    assert -b1 == pytest.approx((loss(np.zeros(3), eps) - loss(np.zeros(3), -eps)) / (2 * eps), rel=1e-6)
    assert np.isfinite(loss(w, b))


# ----------------------------------------------------------------- planted mistakes: closed form

def closed_no_intercept(X, y):
    w, *_ = np.linalg.lstsq(X, y, rcond=None)
    return w, 0.0


def closed_normal_equations_uncentred(X, y):
    w = np.linalg.solve(X.T @ X, X.T @ y)
    return w, float(np.mean(y) - np.mean(X, axis=0) @ w)


def closed_bias_is_mean_y(X, y):
    Xc = X - X.mean(axis=0)
    w = np.linalg.solve(Xc.T @ Xc, Xc.T @ (y - y.mean()))
    return w, float(np.mean(y))


def closed_returns_theta(X, y):
    A = np.column_stack([X, np.ones(len(X))])
    theta, *_ = np.linalg.lstsq(A, y, rcond=None)
    return theta, float(theta[-1])


@pytest.mark.parametrize("wrong, match", planted(
    (closed_no_intercept, r"w \(weights\) for N=20, d=1, seed=0: max \|got-want\|"),
    (closed_normal_equations_uncentred, r"w \(weights\) for N=20, d=1, seed=0"),
    (closed_bias_is_mean_y, r"b \(bias\) for N=20, d=1, seed=0"),
    (closed_returns_theta, r"w \(weights\) .*shape \(2,\) but expected \(1,\)"),
))
def test_check_linreg_closed_form_rejects(wrong, match):
    with pytest.raises(CheckFailed, match=match):
        checks.check_linreg_closed_form(wrong)


# ----------------------------------------------------------------- planted mistakes: linear GD

def _linreg_gd(X, y, lr, epochs, *, factor=2.0, mean=True, loss_after=False, sequential=False,
               extra_loss=False):
    n, d = X.shape
    scale = 1.0 / n if mean else 1.0
    w, b, losses = np.zeros(d), 0.0, []
    for _ in range(epochs):
        r = X @ w + b - y
        if not loss_after:
            losses.append(np.mean(r ** 2))
        w = w - lr * factor * scale * (X.T @ r)
        if sequential:
            r = X @ w + b - y
        b = b - lr * factor * scale * np.sum(r)
        if loss_after:
            losses.append(np.mean((X @ w + b - y) ** 2))
    if extra_loss:
        losses.append(np.mean((X @ w + b - y) ** 2))
    return w, b, np.array(losses)


def gd_missing_factor_2(X, y, *, lr=0.01, epochs=100):
    return _linreg_gd(X, y, lr, epochs, factor=1.0)


def gd_sum_not_mean(X, y, *, lr=0.01, epochs=100):
    return _linreg_gd(X, y, lr, epochs, mean=False)


def gd_loss_after_update(X, y, *, lr=0.01, epochs=100):
    return _linreg_gd(X, y, lr, epochs, loss_after=True)


def gd_sequential_bias_update(X, y, *, lr=0.01, epochs=100):
    return _linreg_gd(X, y, lr, epochs, sequential=True)


def gd_one_loss_too_many(X, y, *, lr=0.01, epochs=100):
    return _linreg_gd(X, y, lr, epochs, extra_loss=True)


@pytest.mark.parametrize("wrong, match", planted(
    (gd_missing_factor_2, r"w \(weights\) for N=10, d=2, seed=0, lr=0.05, epochs=1"),
    (gd_sum_not_mean, r"w \(weights\) for N=10, d=2, seed=0, lr=0.05, epochs=1"),
    (gd_loss_after_update, r"losses \(loss before each update\) for N=10"),
    (gd_sequential_bias_update, r"b \(bias\) for N=10, d=2, seed=0, lr=0.05, epochs=1"),
    (gd_one_loss_too_many, r"losses for N=10.*shape \(2,\) but expected \(1,\)"),
))
def test_check_linreg_gd_rejects(wrong, match):
    with pytest.raises(CheckFailed, match=match):
        checks.check_linreg_gd(wrong)


# ----------------------------------------------------------------- planted mistakes: logistic GD

def _logreg_gd(X, y, lr, epochs, *, per_n=True, loss="stable", labels_pm1=False, sign=1.0,
               loss_after=False):
    n, d = X.shape
    y = np.asarray(y, dtype=float)
    target = 2 * y - 1 if labels_pm1 else y
    w, b, losses = np.zeros(d), 0.0, []

    def bce(z):
        if loss == "stable":
            return np.mean(np.logaddexp(0.0, z) - y * z)
        p = 1.0 / (1.0 + np.exp(-z))
        if loss == "clipped":
            p = np.clip(p, 1e-12, 1 - 1e-12)
        return -np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))

    with np.errstate(all="ignore"):
        for _ in range(epochs):
            z = X @ w + b
            if not loss_after:
                losses.append(bce(z))
            r = 1.0 / (1.0 + np.exp(-sign * z)) - target
            scale = 1.0 / n if per_n else 1.0
            w, b = w - lr * scale * (X.T @ r), b - lr * scale * np.sum(r)
            if loss_after:
                losses.append(bce(X @ w + b))
    return w, b, np.array(losses)


def logreg_missing_1_over_n(X, y, *, lr=0.1, epochs=100):
    return _logreg_gd(X, y, lr, epochs, per_n=False)


def logreg_naive_log_sigmoid(X, y, *, lr=0.1, epochs=100):
    return _logreg_gd(X, y, lr, epochs, loss="naive")


def logreg_clipped_probabilities(X, y, *, lr=0.1, epochs=100):
    return _logreg_gd(X, y, lr, epochs, loss="clipped")


def logreg_labels_pm1(X, y, *, lr=0.1, epochs=100):
    return _logreg_gd(X, y, lr, epochs, labels_pm1=True)


def logreg_sigmoid_sign_flipped(X, y, *, lr=0.1, epochs=100):
    return _logreg_gd(X, y, lr, epochs, sign=-1.0)


def logreg_loss_after_update(X, y, *, lr=0.1, epochs=100):
    return _logreg_gd(X, y, lr, epochs, loss_after=True)


@pytest.mark.parametrize("wrong, match", planted(
    (logreg_missing_1_over_n, r"w \(weights\) for N=10, d=2, seed=0, lr=0.5, epochs=1"),
    (logreg_naive_log_sigmoid, r"losses for X=\[1000.0, -1000.0, 500.0\].*expected finite values"),
    (logreg_clipped_probabilities, r"losses \(loss before each update\) for X=\[1000.0"),
    (logreg_labels_pm1, r"w \(weights\) for N=10, d=2, seed=0, lr=0.5, epochs=1"),
    (logreg_sigmoid_sign_flipped, r"w \(weights\) for N=10"),
    (logreg_loss_after_update, r"losses \(loss before each update\) for N=10"),
))
def test_check_logreg_gd_rejects(wrong, match):
    with pytest.raises(CheckFailed, match=match):
        checks.check_logreg_gd(wrong)


def test_check_logreg_gd_rejects_too_few_iterations():
    """A solution that stops early (ignores `epochs` beyond 100) misses LogisticRegression's optimum."""
    def capped(X, y, *, lr=0.1, epochs=100):
        w, b, losses = _logreg_gd(X, y, lr, min(epochs, 20))
        return w, b, np.resize(losses, epochs)

    with pytest.raises(CheckFailed, match=r"probabilities sigmoid\(X w \+ b\) after 1000 epochs"):
        checks.check_logreg_gd(capped)


# ----------------------------------------------------------------- planted mistakes: precision/recall/F1

def _counts(y_true, y_pred, positive):
    t, p = np.asarray(y_true) == positive, np.asarray(y_pred) == positive
    return int(np.sum(t & p)), int(np.sum(~t & p)), int(np.sum(t & ~p))


def _safe(a, b):
    return a / b if b else 0.0


def prf_swapped(y_true, y_pred, positive=1):
    tp, fp, fn = _counts(y_true, y_pred, positive)
    p, r = _safe(tp, tp + fn), _safe(tp, tp + fp)
    return p, r, _safe(2 * p * r, p + r)


def prf_arithmetic_f1(y_true, y_pred, positive=1):
    tp, fp, fn = _counts(y_true, y_pred, positive)
    p, r = _safe(tp, tp + fp), _safe(tp, tp + fn)
    return p, r, (p + r) / 2


def prf_nan_on_empty(y_true, y_pred, positive=1):
    tp, fp, fn = (np.float64(v) for v in _counts(y_true, y_pred, positive))
    with np.errstate(all="ignore"):
        p, r = tp / (tp + fp), tp / (tp + fn)
        return p, r, 2 * p * r / (p + r)


def prf_zero_division_error(y_true, y_pred, positive=1):
    tp, fp, fn = _counts(y_true, y_pred, positive)
    p, r = tp / (tp + fp), tp / (tp + fn)
    return p, r, 2 * p * r / (p + r)


def prf_ignores_positive(y_true, y_pred, positive=1):
    tp, fp, fn = _counts(y_true, y_pred, 1)
    p, r = _safe(tp, tp + fp), _safe(tp, tp + fn)
    return p, r, _safe(2 * p * r, p + r)


@pytest.mark.parametrize("wrong, match", planted(
    (prf_swapped, r"^precision for N=10, seed=0, positive=1: max \|got-want\|"),
    (prf_arithmetic_f1, r"^f1 for N=10, seed=0, positive=1"),
    (prf_nan_on_empty, r"^precision for case=no predicted positives.*got nan, expected a finite number"),
    (prf_zero_division_error, r"raised ZeroDivisionError: division by zero for case=no predicted positives"),
    (prf_ignores_positive, r"for N=10, seed=0, positive=0"),
))
def test_check_precision_recall_f1_rejects(wrong, match):
    with pytest.raises(CheckFailed, match=match):
        checks.check_precision_recall_f1(wrong)


# ----------------------------------------------------------------- planted mistakes: top-k

def topk_ascending(y_true, scores, k):
    top = np.argsort(scores, axis=1)[:, :k]
    return float(np.mean(np.any(top == np.asarray(y_true)[:, None], axis=1)))


def topk_k_plus_1(y_true, scores, k):
    top = np.argsort(-scores, axis=1)[:, :k + 1]
    return float(np.mean(np.any(top == np.asarray(y_true)[:, None], axis=1)))


def topk_axis_0(y_true, scores, k):
    top = np.argsort(-scores, axis=0)[:k]
    return float(np.mean(np.any(top == np.asarray(y_true)[:, None], axis=1)))


def topk_count_not_fraction(y_true, scores, k):
    top = np.argsort(-scores, axis=1)[:, :k]
    return int(np.sum(np.any(top == np.asarray(y_true)[:, None], axis=1)))


def topk_ignores_k(y_true, scores, k):
    return float(np.mean(np.argmax(scores, axis=1) == y_true))


@pytest.mark.parametrize("wrong, match", planted(
    (topk_ascending, r"top-k accuracy \(a fraction in \[0, 1\]\) for N=\d+, C=\d+, k=1, seed=0"),
    (topk_k_plus_1, r"top-k accuracy \(a fraction in \[0, 1\]\) for N=10, C=3, k=1, seed=0"),
    (topk_axis_0, r"for N=10, C=3, k=1, seed=0"),
    (topk_count_not_fraction, r"top-k accuracy \(a fraction in \[0, 1\]\) for N=10, C=3, k=1.*got [1-9]"),
    (topk_ignores_k, r"top-k accuracy \(a fraction in \[0, 1\]\) for N=10, C=3, k=2, seed=0"),
))
def test_check_top_k_accuracy_rejects(wrong, match):
    with pytest.raises(CheckFailed, match=match):
        checks.check_top_k_accuracy(wrong)


# ----------------------------------------------------------------- the guard

SETUP = "import numpy as np\n"


def test_guard_catches_direct_sklearn_import():
    ns = kernel(SETUP, "def linear_regression_closed_form(X, y):\n"
                "    from sklearn.linear_model import LinearRegression\n"
                "    m = LinearRegression().fit(X, y)\n"
                "    return m.coef_, float(m.intercept_)\n")
    with pytest.raises(ForbiddenCall, match=r"linear_regression_closed_form imports from sklearn\.linear_model"):
        checks.check_linreg_closed_form(ns["linear_regression_closed_form"])


def test_guard_catches_alias_imported_at_top_level():
    ns = kernel(SETUP + "import sklearn.metrics as skm\n",
                "def precision_recall_f1(y_true, y_pred, positive=1):\n"
                "    p, r, f, _ = skm.precision_recall_fscore_support(\n"
                "        y_true, y_pred, average='binary', pos_label=positive, zero_division=0)\n"
                "    return p, r, f\n")
    with pytest.raises(ForbiddenCall, match=r"precision_recall_f1 uses skm(\.precision_recall_fscore_support)? "
                                            r"\(from sklearn\)"):
        checks.check_precision_recall_f1(ns["precision_recall_f1"])


def test_guard_catches_sklearn_in_a_helper():
    ns = kernel(SETUP + "from sklearn.metrics import top_k_accuracy_score as tk\n",
                "def _score(y_true, scores, k):\n"
                "    return tk(y_true, scores, k=k, labels=np.arange(scores.shape[1]))\n",
                "def top_k_accuracy(y_true, scores, k):\n"
                "    return float(_score(y_true, scores, k))\n")
    with pytest.raises(ForbiddenCall, match=r"_score uses tk \(from sklearn\)"):
        checks.check_top_k_accuracy(ns["top_k_accuracy"])


def test_guard_catches_sklearn_at_run_time_without_source():
    ns = kernel(SETUP, "def logistic_regression_gd(X, y, *, lr=0.1, epochs=100):\n"
                "    lm = __import__('sklearn.linear_model', fromlist=['LogisticRegression'])\n"
                "    m = lm.LogisticRegression(C=np.inf).fit(X, y)\n"
                "    return m.coef_[0], float(m.intercept_[0]), np.zeros(epochs)\n", keep_source=False)
    fn = ns["logistic_regression_gd"]
    assert static_violations(fn, modules=["sklearn"]) == [], "the static look should see no source here"
    with pytest.raises(ForbiddenCall, match=r"your code called sklearn"):
        checks.check_logreg_gd(fn)


def test_guard_lets_numpy_solutions_through(solution):
    for _, name in GRADE_IDS.values():
        assert static_violations(solution[name], modules=checks.FORBIDDEN) == [], name


def test_sigmoid_reference_is_stable():
    """The check's own sigmoid must not overflow on the huge logits it feeds students."""
    with np.errstate(all="raise"):
        np.testing.assert_allclose(expit(np.array([-1e5, 0.0, 1e5])), [0.0, 0.5, 1.0])
