"""Hidden checks for the chapter 2 exercise: linear and logistic regression, classification metrics.

References, all computed live:

* ``linear_regression_closed_form`` - ``sklearn.linear_model.LinearRegression``;
* ``linear_regression_gd`` - the first steps against full-batch gradient descent on
  the mean squared error written out in this file (loss and gradient formulas),
  then convergence to ``LinearRegression`` after many epochs;
* ``logistic_regression_gd`` - the first steps against the mean binary
  cross-entropy and its gradient written out here, convergence to an
  unpenalised ``LogisticRegression`` (``C=np.inf``; scikit-learn 1.8 deprecated
  ``penalty=None`` in its favour, and both fit the same model), and a finite
  loss when the logits are huge;
* ``precision_recall_f1`` - ``precision_recall_fscore_support(average="binary",
  pos_label=positive, zero_division=0)``;
* ``top_k_accuracy`` - ``top_k_accuracy_score(y_true, scores, k=k, labels=range(C))``.

The student's functions run under the guard with the rules of their task in ``TASKS``.
Random inputs come from :func:`autograder.secret.hidden_rng` (secret-derived when a course
secret is set).

Taught in: book/02-ml-basics
"""

from __future__ import annotations

import functools
import warnings

import numpy as np
from scipy.special import expit
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.metrics import precision_recall_fscore_support, top_k_accuracy_score

from autograder.compare import assert_close, assert_scalar, describe, fail, to_array, unpack
from autograder.guard import call_student
from autograder.secret import course_secret, hidden_rng, hidden_seed
from autograder.spec import Task
from llmcourse.tasks import make_regression

MODELS = ("sklearn", "llmcourse.linear_models")
METRICS = ("sklearn", "llmcourse.metrics")
CLOSED_FORM, LINREG_GD, LOGREG_GD, PRF, TOP_K = TASKS = (
    Task("ch02_linreg_closed_form", "linear_regression_closed_form(X, y)", 2, "`(w, b)`: weights `(d,)`, bias",
         "`sklearn.linear_model.LinearRegression`", modules=MODELS),
    Task("ch02_linreg_gd", "linear_regression_gd(X, y, *, lr=0.01, epochs=100)", 3,
         "`(w, b, losses)`: losses `(epochs,)`, each before its update",
         "the gradient-descent formulas (first steps), then `LinearRegression`", modules=MODELS),
    Task("ch02_logreg_gd", "logistic_regression_gd(X, y, *, lr=0.1, epochs=100)", 4,
         "`(w, b, losses)`: losses `(epochs,)`, each before its update",
         "the gradient-descent formulas (first steps), then an unpenalised `LogisticRegression`",
         modules=MODELS),
    Task("ch02_precision_recall_f1", "precision_recall_f1(y_true, y_pred, positive=1)", 3,
         "`(precision, recall, f1)`, 0.0 for 0/0", "`sklearn.metrics.precision_recall_fscore_support`",
         modules=METRICS),
    Task("ch02_top_k_accuracy", "top_k_accuracy(y_true, scores, k)", 2, "a float in [0, 1]",
         "`sklearn.metrics.top_k_accuracy_score`", modules=METRICS),
)


def _data_seed(seed: int, label: str) -> int:
    """:func:`hidden_seed` folded into the range ``llmcourse.tasks`` accepts (itself without a secret)."""
    return hidden_seed(seed, label) % 2**32


# Tolerances, from the worst case of the correct variants in tests/test_checks_ch02.py over 20 course
# secrets. float64 variants (loops, einsum, lstsq/solve/pinv/QR/centring, torch autograd) stay
# within 6e-12 of the references everywhere; the float32 ones set the tolerances, each with a
# margin of at least 10x: max |got-want| / (atol + rtol |want|) <= 0.1.
# closed form: float32 normal equations and torch's float32 lstsq, up to 3e-4 (w), 3e-3 (b ~ 50)
CLOSED_RTOL, CLOSED_ATOL = 1e-3, 1e-4
# first steps of either descent: float32, up to 5e-7 on w, b and 6e-7 relative on the losses
STEP_RTOL, STEP_ATOL = 1e-5, 1e-6
# linear regression after 500 epochs vs LinearRegression: float32, up to 7e-7 on w, b
CONVERGED_RTOL, CONVERGED_ATOL = 1e-5, 1e-6
# logistic probabilities after 1000 epochs vs LogisticRegression: float64 9.5e-8 (data chosen so
# the formulas reach it to PROBA_ATOL / 10), float32 3.9e-7; tol 25x the float32 spread
CONVERGED_EPOCHS, PROBA_ATOL = 1000, 1e-5
# precision, recall, F1, top-k accuracy: float32 counts or means, up to 9e-8 (ratios are exact in float64)
RATIO_RTOL, RATIO_ATOL = 1e-6, 1e-6


# ----------------------------------------------------------------- helpers

def _check_model(result, w_want, b_want, *, task, inputs, rtol, atol, losses_want=None,
                 losses_len=None):
    """Compare a returned (w, b) or (w, b, losses) with the reference."""
    names = ("w", "b") if losses_len is None else ("w", "b", "losses")
    parts = unpack(result, names, what=task, inputs=inputs)
    assert_close(parts[0], w_want, what="w (weights)", inputs=inputs, rtol=rtol, atol=atol)
    b = assert_scalar(parts[1], what="b (bias)", inputs=inputs)
    assert_close(b, b_want, what="b (bias)", inputs=inputs, rtol=rtol, atol=atol)
    if losses_len is None:
        return None
    losses = to_array(parts[2], what="losses", inputs=inputs)
    if losses.shape != (losses_len,):
        fail(f"losses{describe(inputs)}: shape {tuple(losses.shape)} but expected ({losses_len},) "
             f"(one loss per epoch, measured before that epoch's update)")
    if losses_want is not None:
        assert_close(losses, losses_want, what="losses (loss before each update)", inputs=inputs,
                     rtol=rtol, atol=atol)
    return losses


# ----------------------------------------------------------------- references

def mse_gd_reference(X, y, lr: float, epochs: int):
    """Full-batch gradient descent on L = mean((X w + b - y)^2) from zeros: (w, b, losses).

    dL/dw = (2/N) X^T r and dL/db = (2/N) sum(r) with r = X w + b - y; losses[i] is L before step i.
    """
    n, d = X.shape
    w, b, losses = np.zeros(d), 0.0, []
    for _ in range(epochs):
        r = X @ w + b - y
        losses.append(np.mean(r ** 2))
        w, b = w - lr * (2.0 / n) * (X.T @ r), b - lr * 2.0 * np.mean(r)
    return w, b, np.array(losses)


def bce_gd_reference(X, y, lr: float, epochs: int):
    """Full-batch gradient descent on the mean binary cross-entropy from zeros: (w, b, losses).

    With z = X w + b: L = mean(log(1 + e^z) - y z) (computed stably with logaddexp),
    dL/dw = X^T (sigmoid(z) - y) / N and dL/db = mean(sigmoid(z) - y).
    """
    n, d = X.shape
    w, b, losses = np.zeros(d), 0.0, []
    for _ in range(epochs):
        z = X @ w + b
        losses.append(np.mean(np.logaddexp(0.0, z) - y * z))
        r = expit(z) - y
        w, b = w - lr * (X.T @ r) / n, b - lr * np.mean(r)
    return w, b, np.array(losses)


def _logistic_data(n: int, d: int, seed: int):
    """Labels drawn from a logistic model (public ``seed``, or the secret's)."""
    rng = hidden_rng(seed, "ch02.logreg_gd")
    X = rng.normal(size=(n, d))
    logits = X @ rng.normal(size=d) + 0.5 * rng.normal()
    y = (rng.random(n) < expit(logits)).astype(np.int64)
    return X, y


def _reference_logistic(X, y) -> LogisticRegression:
    return LogisticRegression(C=np.inf, tol=1e-12, max_iter=10_000).fit(X, y)


def _convergent_logistic_data(n: int, d: int, seed: int):
    """Logistic data whose unpenalised optimum is finite and reached by 1000 steps of lr = 1.

    Both classes, coefficients below 10 (not separable), and the float64 formulas within a tenth
    of the tolerance of ``LogisticRegression`` after 1000 epochs. The published seeds have these
    properties; under a secret, candidates ``seed + 1000 k`` are tried until one has them.
    Returns X, y and LogisticRegression's probabilities.
    """
    for k in range(50):
        X, y = _logistic_data(n, d, seed + 1000 * k)
        if not 0 < y.mean() < 1:
            continue
        ref = _reference_logistic(X, y)
        proba = ref.predict_proba(X)[:, 1]
        w, b, _ = bce_gd_reference(X, y, 1.0, CONVERGED_EPOCHS)
        if np.abs(ref.coef_).max() < 10 and np.abs(expit(X @ w + b) - proba).max() < PROBA_ATOL / 10:
            return X, y, proba
    raise RuntimeError(f"no convergent logistic data for seed {seed}")  # never seen


# ----------------------------------------------------------------- cases
# Each case list, with its references, depends only on the course secret: it is built once per
# secret, which the checks pass as the cache key (the inputs are drawn with course_secret()).

@functools.lru_cache(maxsize=4)
def _closed_form_cases(secret: str | None) -> tuple:
    """(inputs, X, y, want w, want b)."""
    cases = []
    for seed, (n, d) in enumerate(((20, 1), (50, 3), (100, 5), (12, 6))):
        X, y, _ = make_regression(n, d, noise=0.3, seed=_data_seed(seed, "ch02.linreg_closed_form"))
        cases.append(({"N": n, "d": d, "seed": seed}, X, y))
    rng = hidden_rng(7, "ch02.linreg_closed_form")  # far from the origin: an intercept and centring both matter
    X = 10.0 + rng.normal(size=(40, 2))
    y = 50.0 + X @ np.array([2.0, -3.0]) + 0.5 * rng.normal(size=40)
    cases.append(({"N": 40, "d": 2, "seed": 7, "data": "X around 10, y around 50"}, X, y))
    fits = [LinearRegression().fit(X, y) for _, X, y in cases]
    return tuple((*case, ref.coef_, float(ref.intercept_)) for case, ref in zip(cases, fits))


@functools.lru_cache(maxsize=4)
def _linreg_gd_cases(secret: str | None) -> tuple:
    """(inputs, X, y, lr, epochs, want w, want b, want losses or None, want final loss or None)."""
    cases = []
    for seed, (n, d, lr) in enumerate(((10, 2, 0.05), (30, 3, 0.1), (50, 1, 0.01), (7, 4, 0.2))):
        X, y, _ = make_regression(n, d, noise=0.5, seed=_data_seed(seed, "ch02.linreg_gd"))
        y = y + 3.0  # a clear intercept
        for epochs in (1, 3):
            inputs = {"N": n, "d": d, "seed": seed, "lr": lr, "epochs": epochs}
            cases.append((inputs, X, y, lr, epochs, *mse_gd_reference(X, y, lr, epochs), None))
    for seed, (n, d) in enumerate(((200, 3), (100, 1), (150, 5))):
        X, y, _ = make_regression(n, d, noise=0.1, seed=_data_seed(10 + seed, "ch02.linreg_gd"))
        inputs = {"N": n, "d": d, "seed": 10 + seed, "lr": 0.1, "epochs": 500}
        ref = LinearRegression().fit(X, y)
        final_mse = float(np.mean((ref.predict(X) - y) ** 2))
        cases.append((inputs, X, y, 0.1, 500, ref.coef_, float(ref.intercept_), None, final_mse))
    return tuple(cases)


@functools.lru_cache(maxsize=4)
def _logreg_gd_cases(secret: str | None) -> tuple:
    """Steps: (inputs, X, y, lr, epochs, want w, want b, want losses); convergence: (inputs, X, y, proba)."""
    steps, converge = [], []
    for seed, (n, d, lr) in enumerate(((10, 2, 0.5), (40, 3, 1.0), (25, 1, 0.1))):
        X, y = _logistic_data(n, d, seed)
        for epochs in (1, 3):
            inputs = {"N": n, "d": d, "seed": seed, "lr": lr, "epochs": epochs}
            steps.append((inputs, X, y, lr, epochs, *bce_gd_reference(X, y, lr, epochs)))
    for seed, (n, d) in enumerate(((200, 2), (300, 3), (150, 1))):
        inputs = {"N": n, "d": d, "seed": 10 + seed, "lr": 1.0, "epochs": CONVERGED_EPOCHS}
        converge.append((inputs, *_convergent_logistic_data(n, d, 10 + seed)))
    return tuple(steps), tuple(converge)


@functools.lru_cache(maxsize=4)
def _prf_cases(secret: str | None) -> tuple:
    """(inputs, y_true, y_pred, positive, want (precision, recall, f1))."""
    cases = []
    for seed, n in enumerate((10, 50, 200)):
        rng = hidden_rng(seed, "ch02.precision_recall_f1")
        y_true = rng.integers(0, 2, size=n)
        # right 60% of the time, otherwise a guess biased towards 1: precision != recall
        y_pred = np.where(rng.random(n) < 0.6, y_true, (rng.random(n) < 0.7).astype(np.int64))
        for positive in (1, 0):
            cases.append(({"N": n, "seed": seed, "positive": positive}, y_true, y_pred, positive))
    edge = {
        "no predicted positives": ([1, 0, 1, 0, 1], [0, 0, 0, 0, 0]),
        "no actual positives": ([0, 0, 0, 0], [1, 0, 1, 0]),
        "no positives at all": ([0, 0, 0], [0, 0, 0]),
        "all correct": ([1, 0, 1, 1], [1, 0, 1, 1]),
        "all wrong": ([1, 0, 1, 0], [0, 1, 0, 1]),
        "precision 1, recall 1/3": ([1, 1, 1, 0, 0, 0], [1, 0, 0, 0, 0, 0]),
    }
    for name, (t, p) in edge.items():
        cases.append(({"case": name, "y_true": t, "y_pred": p, "positive": 1}, np.array(t), np.array(p), 1))
    cases.append(({"case": "positive=0, no predicted zeros", "y_true": [0, 1, 1], "y_pred": [1, 1, 1],
                   "positive": 0}, np.array([0, 1, 1]), np.array([1, 1, 1]), 0))
    return tuple((*case, precision_recall_fscore_support(case[1], case[2], average="binary", pos_label=case[3],
                                                        zero_division=0)[:3]) for case in cases)


@functools.lru_cache(maxsize=4)
def _top_k_cases(secret: str | None) -> tuple:
    """(inputs, y_true, scores, k, want)."""
    cases = []
    for seed in (0, 1, 2):
        rng = hidden_rng(seed, "ch02.top_k_accuracy")
        for n, c in ((10, 3), (50, 5), (100, 10), (7, 4), (1, 5), (60, 3)):
            scores = rng.normal(size=(n, c))  # continuous: no ties
            y_true = rng.integers(0, c, size=n)
            for k in sorted({1, 2, c - 1, c}):
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # k >= C warns; the answer is still 1.0
                    want = top_k_accuracy_score(y_true, scores, k=k, labels=np.arange(c))
                cases.append(({"N": n, "C": c, "k": k, "seed": seed}, y_true, scores, k, float(want)))
    return tuple(cases)


# ----------------------------------------------------------------- checks

def check_linreg_closed_form(student_fn) -> None:
    """linear_regression_closed_form(X, y) -> (w, b) equal to LinearRegression's coef_, intercept_."""
    for inputs, X, y, w, b in _closed_form_cases(course_secret()):
        result = call_student(student_fn, X.copy(), y.copy(), task=CLOSED_FORM, inputs=inputs)
        _check_model(result, w, b, task=CLOSED_FORM.name, inputs=inputs, rtol=CLOSED_RTOL, atol=CLOSED_ATOL)


def check_linreg_gd(student_fn) -> None:
    """linear_regression_gd(X, y, lr=, epochs=) -> (w, b, losses): exact first steps, then LinearRegression."""
    for inputs, X, y, lr, epochs, w, b, losses, final_mse in _linreg_gd_cases(course_secret()):
        result = call_student(student_fn, X.copy(), y.copy(), lr=lr, epochs=epochs, task=LINREG_GD, inputs=inputs)
        if final_mse is None:  # the first steps, against the formulas
            _check_model(result, w, b, task=LINREG_GD.name, inputs=inputs, rtol=STEP_RTOL, atol=STEP_ATOL,
                         losses_want=losses, losses_len=epochs)
            continue
        got = _check_model(result, w, b, task=LINREG_GD.name, inputs=inputs, rtol=CONVERGED_RTOL,
                           atol=CONVERGED_ATOL, losses_len=epochs)
        assert_close(got[-1], final_mse, what="losses[-1] (should approach LinearRegression's "
                     "mean squared error)", inputs=inputs, rtol=CONVERGED_RTOL, atol=CONVERGED_ATOL)


def check_logreg_gd(student_fn) -> None:
    """logistic_regression_gd(X, y, lr=, epochs=) -> (w, b, losses): exact steps, convergence, stability."""
    task = LOGREG_GD.name
    steps, converge = _logreg_gd_cases(course_secret())
    for inputs, X, y, lr, epochs, w, b, losses in steps:
        result = call_student(student_fn, X.copy(), y.copy(), lr=lr, epochs=epochs, task=LOGREG_GD, inputs=inputs)
        _check_model(result, w, b, task=task, inputs=inputs, rtol=STEP_RTOL, atol=STEP_ATOL,
                     losses_want=losses, losses_len=epochs)
    for inputs, X, y, proba_want in converge:
        result = call_student(student_fn, X.copy(), y.copy(), lr=1.0, epochs=CONVERGED_EPOCHS, task=LOGREG_GD,
                       inputs=inputs)
        w, b, _ = unpack(result, ("w", "b", "losses"), what=task, inputs=inputs)
        w = to_array(w, what="w (weights)", inputs=inputs).astype(float)
        if w.shape != (X.shape[1],):
            fail(f"w (weights){describe(inputs)}: shape {tuple(w.shape)} but expected ({X.shape[1]},)")
        b = assert_scalar(b, what="b (bias)", inputs=inputs)
        with np.errstate(all="ignore"):
            proba = expit(X @ w + b)
        assert_close(proba, proba_want, what=f"probabilities sigmoid(X w + b) after {CONVERGED_EPOCHS} epochs "
                     "(vs unpenalised LogisticRegression)", inputs=inputs, rtol=0, atol=PROBA_ATOL)
    # huge logits: after one step the scores are in the hundreds of thousands
    X = np.array([[1000.0], [-1000.0], [500.0]])
    y = np.array([1, 0, 0])
    inputs = {"X": X.ravel().tolist(), "y": y.tolist(), "lr": 1.0, "epochs": 3}
    w, b, losses = bce_gd_reference(X, y, 1.0, 3)
    with np.errstate(all="ignore"):
        result = call_student(student_fn, X.copy(), y.copy(), lr=1.0, epochs=3, task=LOGREG_GD, inputs=inputs)
    parts = unpack(result, ("w", "b", "losses"), what=task, inputs=inputs)
    got = to_array(parts[2], what="losses", inputs=inputs).astype(float)
    if got.shape == (3,) and not np.all(np.isfinite(got)):
        fail(f"losses{describe(inputs)}: got {got.tolist()}, expected finite values "
             f"{np.round(losses, 3).tolist()}: with logits this large sigmoid(z) rounds to exactly 0 or 1, "
             f"so log(p) or log(1 - p) is -inf (and 0 * -inf is nan); compute the loss from z "
             f"directly, e.g. np.mean(np.logaddexp(0, z) - y * z)")
    _check_model(result, w, b, task=task, inputs=inputs, rtol=STEP_RTOL, atol=STEP_ATOL,
                 losses_want=losses, losses_len=3)


def check_precision_recall_f1(student_fn) -> None:
    """precision_recall_f1(y_true, y_pred, positive=) -> (p, r, f1) equal to scikit-learn's binary scores."""
    for inputs, y_true, y_pred, positive, want in _prf_cases(course_secret()):
        result = call_student(student_fn, y_true.copy(), y_pred.copy(), positive=positive, task=PRF, inputs=inputs)
        parts = unpack(result, ("precision", "recall", "f1"), what=PRF.name, inputs=inputs)
        for name, got, ref in zip(("precision", "recall", "f1"), parts, want):
            value = assert_scalar(got, what=name, inputs=inputs)
            assert_close(value, float(ref), what=name, inputs=inputs, rtol=RATIO_RTOL, atol=RATIO_ATOL)


def check_top_k_accuracy(student_fn) -> None:
    """top_k_accuracy(y_true, scores, k) -> fraction of rows whose true class is among the k highest scores."""
    for inputs, y_true, scores, k, want in _top_k_cases(course_secret()):
        got = call_student(student_fn, y_true.copy(), scores.copy(), k, task=TOP_K, inputs=inputs)
        value = assert_scalar(got, what="top-k accuracy", inputs=inputs)
        assert_close(value, want, what="top-k accuracy (a fraction in [0, 1])", inputs=inputs,
                     rtol=RATIO_RTOL, atol=RATIO_ATOL)


__all__ = ["TASKS", "check_linreg_closed_form", "check_linreg_gd", "check_logreg_gd",
           "check_precision_recall_f1", "check_top_k_accuracy",
           "mse_gd_reference", "bce_gd_reference"]
