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

The student's functions run under :func:`autograder.guard.call_student`: they
may not call scikit-learn or the course's own ``llmcourse.linear_models`` and
``llmcourse.metrics``.

Taught in: book/02-ml-basics
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy.special import expit
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.metrics import precision_recall_fscore_support, top_k_accuracy_score

from autograder.compare import assert_close, assert_scalar, describe, fail, to_array, unpack
from autograder.guard import call_student
from llmcourse.tasks import make_regression

FORBIDDEN = ("sklearn", "llmcourse.linear_models", "llmcourse.metrics")


def _call(fn, *args, task: str, inputs: dict, **kwargs):
    """Call the student's function under the guard, with this chapter's forbidden modules."""
    return call_student(fn, *args, task=task, inputs=inputs, modules=FORBIDDEN, **kwargs)


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
    """Non-separable data: labels drawn from a logistic model, so the unpenalised optimum is finite."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    logits = X @ rng.normal(size=d) + 0.5 * rng.normal()
    y = (rng.random(n) < expit(logits)).astype(np.int64)
    return X, y


def _reference_logistic(X, y) -> LogisticRegression:
    return LogisticRegression(C=np.inf, tol=1e-12, max_iter=10_000).fit(X, y)


# ----------------------------------------------------------------- checks

def check_linreg_closed_form(student_fn) -> None:
    """linear_regression_closed_form(X, y) -> (w, b) equal to LinearRegression's coef_, intercept_."""
    task = "linear_regression_closed_form"
    cases = []
    for seed, (n, d) in enumerate(((20, 1), (50, 3), (100, 5), (12, 6))):
        X, y, _ = make_regression(n, d, noise=0.3, seed=seed)
        cases.append(({"N": n, "d": d, "seed": seed}, X, y))
    rng = np.random.default_rng(7)  # far from the origin: an intercept and centring both matter
    X = 10.0 + rng.normal(size=(40, 2))
    y = 50.0 + X @ np.array([2.0, -3.0]) + 0.5 * rng.normal(size=40)
    cases.append(({"N": 40, "d": 2, "seed": 7, "data": "X around 10, y around 50"}, X, y))
    for inputs, X, y in cases:
        ref = LinearRegression().fit(X, y)
        result = _call(student_fn, X.copy(), y.copy(), task=task, inputs=inputs)
        _check_model(result, ref.coef_, float(ref.intercept_), task=task, inputs=inputs,
                     rtol=1e-6, atol=1e-7)


def check_linreg_gd(student_fn) -> None:
    """linear_regression_gd(X, y, lr=, epochs=) -> (w, b, losses): exact first steps, then LinearRegression."""
    task = "linear_regression_gd"
    for seed, (n, d, lr) in enumerate(((10, 2, 0.05), (30, 3, 0.1), (50, 1, 0.01), (7, 4, 0.2))):
        X, y, _ = make_regression(n, d, noise=0.5, seed=seed)
        y = y + 3.0  # a clear intercept
        for epochs in (1, 3):
            inputs = {"N": n, "d": d, "seed": seed, "lr": lr, "epochs": epochs}
            w, b, losses = mse_gd_reference(X, y, lr, epochs)
            result = _call(student_fn, X.copy(), y.copy(), lr=lr, epochs=epochs, task=task, inputs=inputs)
            _check_model(result, w, b, task=task, inputs=inputs, rtol=1e-7, atol=1e-10,
                         losses_want=losses, losses_len=epochs)
    for seed, (n, d) in enumerate(((200, 3), (100, 1), (150, 5))):
        X, y, _ = make_regression(n, d, noise=0.1, seed=10 + seed)
        inputs = {"N": n, "d": d, "seed": 10 + seed, "lr": 0.1, "epochs": 500}
        ref = LinearRegression().fit(X, y)
        result = _call(student_fn, X.copy(), y.copy(), lr=0.1, epochs=500, task=task, inputs=inputs)
        losses = _check_model(result, ref.coef_, float(ref.intercept_), task=task, inputs=inputs,
                              rtol=1e-5, atol=1e-5, losses_len=500)
        final_mse = float(np.mean((ref.predict(X) - y) ** 2))
        assert_close(losses[-1], final_mse, what="losses[-1] (should approach LinearRegression's "
                     "mean squared error)", inputs=inputs, rtol=1e-4, atol=1e-8)


def check_logreg_gd(student_fn) -> None:
    """logistic_regression_gd(X, y, lr=, epochs=) -> (w, b, losses): exact steps, convergence, stability."""
    task = "logistic_regression_gd"
    for seed, (n, d, lr) in enumerate(((10, 2, 0.5), (40, 3, 1.0), (25, 1, 0.1))):
        X, y = _logistic_data(n, d, seed)
        for epochs in (1, 3):
            inputs = {"N": n, "d": d, "seed": seed, "lr": lr, "epochs": epochs}
            w, b, losses = bce_gd_reference(X, y, lr, epochs)
            result = _call(student_fn, X.copy(), y.copy(), lr=lr, epochs=epochs, task=task, inputs=inputs)
            _check_model(result, w, b, task=task, inputs=inputs, rtol=1e-7, atol=1e-10,
                         losses_want=losses, losses_len=epochs)
    for seed, (n, d) in enumerate(((200, 2), (300, 3), (150, 1))):
        X, y = _logistic_data(n, d, 10 + seed)
        inputs = {"N": n, "d": d, "seed": 10 + seed, "lr": 1.0, "epochs": 1000}
        ref = _reference_logistic(X, y)
        result = _call(student_fn, X.copy(), y.copy(), lr=1.0, epochs=1000, task=task, inputs=inputs)
        w, b, _ = unpack(result, ("w", "b", "losses"), what=task, inputs=inputs)
        w = to_array(w, what="w (weights)", inputs=inputs).astype(float)
        if w.shape != (d,):
            fail(f"w (weights){describe(inputs)}: shape {tuple(w.shape)} but expected ({d},)")
        b = assert_scalar(b, what="b (bias)", inputs=inputs)
        with np.errstate(all="ignore"):
            proba = expit(X @ w + b)
        assert_close(proba, ref.predict_proba(X)[:, 1], what="probabilities sigmoid(X w + b) after "
                     "1000 epochs (vs unpenalised LogisticRegression)", inputs=inputs, rtol=0, atol=1e-5)
    # huge logits: after one step the scores are in the hundreds of thousands
    X = np.array([[1000.0], [-1000.0], [500.0]])
    y = np.array([1, 0, 0])
    inputs = {"X": X.ravel().tolist(), "y": y.tolist(), "lr": 1.0, "epochs": 3}
    w, b, losses = bce_gd_reference(X, y, 1.0, 3)
    with np.errstate(all="ignore"):
        result = _call(student_fn, X.copy(), y.copy(), lr=1.0, epochs=3, task=task, inputs=inputs)
    parts = unpack(result, ("w", "b", "losses"), what=task, inputs=inputs)
    got = to_array(parts[2], what="losses", inputs=inputs).astype(float)
    if got.shape == (3,) and not np.all(np.isfinite(got)):
        fail(f"losses{describe(inputs)}: got {got.tolist()}, expected finite values "
             f"{np.round(losses, 3).tolist()}: with logits this large sigmoid(z) rounds to exactly 0 or 1, "
             f"so log(p) or log(1 - p) is -inf (and 0 * -inf is nan); compute the loss from z "
             f"directly, e.g. np.mean(np.logaddexp(0, z) - y * z)")
    _check_model(result, w, b, task=task, inputs=inputs, rtol=1e-7, atol=1e-8,
                 losses_want=losses, losses_len=3)


def check_precision_recall_f1(student_fn) -> None:
    """precision_recall_f1(y_true, y_pred, positive=) -> (p, r, f1) equal to scikit-learn's binary scores."""
    task = "precision_recall_f1"
    cases = []
    for seed, n in enumerate((10, 50, 200)):
        rng = np.random.default_rng(seed)
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
        cases.append(({"case": name, "y_true": t, "y_pred": p, "positive": 1},
                      np.array(t), np.array(p), 1))
    cases.append(({"case": "positive=0, no predicted zeros", "y_true": [0, 1, 1], "y_pred": [1, 1, 1],
                   "positive": 0}, np.array([0, 1, 1]), np.array([1, 1, 1]), 0))
    for inputs, y_true, y_pred, positive in cases:
        want = precision_recall_fscore_support(y_true, y_pred, average="binary", pos_label=positive,
                                               zero_division=0)[:3]
        result = _call(student_fn, y_true.copy(), y_pred.copy(), positive=positive, task=task,
                      inputs=inputs)
        parts = unpack(result, ("precision", "recall", "f1"), what=task, inputs=inputs)
        for name, got, ref in zip(("precision", "recall", "f1"), parts, want):
            value = assert_scalar(got, what=name, inputs=inputs)
            assert_close(value, float(ref), what=name, inputs=inputs, rtol=1e-9, atol=1e-12)


def check_top_k_accuracy(student_fn) -> None:
    """top_k_accuracy(y_true, scores, k) -> fraction of rows whose true class is among the k highest scores."""
    task = "top_k_accuracy"
    shapes = ((10, 3), (50, 5), (100, 10), (7, 4), (1, 5), (60, 3))
    for seed in (0, 1, 2):
        rng = np.random.default_rng(seed)
        for n, c in shapes:
            scores = rng.normal(size=(n, c))  # continuous: no ties
            y_true = rng.integers(0, c, size=n)
            for k in sorted({1, 2, c - 1, c}):
                inputs = {"N": n, "C": c, "k": k, "seed": seed}
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # k >= C warns; the answer is still 1.0
                    want = top_k_accuracy_score(y_true, scores, k=k, labels=np.arange(c))
                got = _call(student_fn, y_true.copy(), scores.copy(), k, task=task, inputs=inputs)
                value = assert_scalar(got, what="top-k accuracy", inputs=inputs)
                assert_close(value, float(want), what="top-k accuracy (a fraction in [0, 1])",
                             inputs=inputs, rtol=1e-9, atol=1e-12)


__all__ = ["check_linreg_closed_form", "check_linreg_gd", "check_logreg_gd",
           "check_precision_recall_f1", "check_top_k_accuracy",
           "mse_gd_reference", "bce_gd_reference"]
