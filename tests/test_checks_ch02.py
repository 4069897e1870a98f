"""The chapter 2 checks are fair both ways: correct answers get full marks, planted mistakes fail.

The solution functions come from the nbgrader source notebook itself (setup and answer
cells, executed as a notebook kernel would). Beside it, each task has correct
implementations written differently (loops, einsum, normal equations, QR, torch autograd,
float32, argpartition...), which must pass too. Each wrong implementation is a mistake a
student could plausibly make; each must make its check raise CheckFailed with a message
that names what differs.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.special import expit

from autograder.checks import ch02_ml_basics as checks
from autograder.compare import CheckFailed
from autograder.guard import ForbiddenCall, static_violations
from tests.notebook_kernel import correct, kernel, planted, solution_of

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

pytestmark = [pytest.mark.ch02, pytest.mark.usefixtures("one_thread")]  # small torch runs: one thread


def check_of(task):
    return getattr(checks, task.check)


# ----------------------------------------------------------------- the notebook itself

@pytest.mark.parametrize("task", checks.TASKS, ids=lambda t: t.grade_id)
def test_solution_passes_check(task):
    check_of(task)(solution_of(ASSIGNMENT)[task.name])


# ----------------------------------------------------------------- the references

@pytest.mark.parametrize("seed", [10, 11, 12])
def test_logistic_check_data_is_not_separable(seed):
    """The convergence check needs a finite optimum: the unpenalised fit must not run off to infinity."""
    X, y, _ = checks._convergent_logistic_data(200, 2, seed)
    ref = checks._reference_logistic(X, y)
    assert np.abs(ref.coef_).max() < 10, f"coefficients {ref.coef_} suggest separable data"
    assert 0 < y.mean() < 1


def test_logistic_check_data_converges_under_a_course_secret(monkeypatch):
    """Under a secret the convergence cases still have a finite optimum that 1000 steps reach."""
    public_X = checks._logistic_data(10, 2, 0)[0]
    monkeypatch.setenv("AUTOGRADER_SECRET", "a course secret")
    steps, converge = checks._logreg_gd_cases("a course secret")
    for inputs, X, y, proba in converge:
        w, b, _ = checks.bce_gd_reference(X, y, 1.0, checks.CONVERGED_EPOCHS)
        np.testing.assert_allclose(expit(X @ w + b), proba, rtol=0, atol=checks.PROBA_ATOL / 10, err_msg=inputs)
        assert np.abs(checks._reference_logistic(X, y).coef_).max() < 10, inputs
    assert not np.array_equal(steps[0][1], public_X), "the secret should change the inputs"


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


# ----------------------------------------------------------------- correct variants: full marks

def closed_normal_equations(X, y):
    A = np.column_stack([X, np.ones(len(X))])
    theta = np.linalg.solve(A.T @ A, A.T @ y)
    return theta[:-1], theta[-1]


def closed_pinv(X, y):
    A = np.hstack([X, np.ones((X.shape[0], 1))])
    theta = np.linalg.pinv(A) @ y
    return theta[:-1], float(theta[-1])


def closed_centred(X, y):
    x_mean, y_mean = X.mean(axis=0), y.mean()
    w = np.linalg.lstsq(X - x_mean, y - y_mean, rcond=None)[0]
    return w, y_mean - x_mean @ w


def closed_qr_bias_first(X, y):
    A = np.column_stack([np.ones(len(X)), X])
    Q, R = np.linalg.qr(A)
    theta = np.linalg.solve(R, Q.T @ y)
    return theta[1:], theta[0]


def closed_torch_float32(X, y):
    A = torch.cat([torch.tensor(X, dtype=torch.float32), torch.ones(len(X), 1)], dim=1)
    theta = torch.linalg.lstsq(A, torch.tensor(y, dtype=torch.float32)[:, None]).solution[:, 0]
    return theta[:-1].numpy(), float(theta[-1])


def closed_float32_normal_equations(X, y):
    X, y = X.astype(np.float32), y.astype(np.float32)
    A = np.column_stack([X, np.ones(len(X), dtype=np.float32)])
    theta = np.linalg.solve(A.T @ A, A.T @ y)
    return theta[:-1], theta[-1]


def gd_loop_over_features(X, y, *, lr=0.01, epochs=100):
    n, d = X.shape
    w, b, losses = [0.0] * d, 0.0, []
    for _ in range(epochs):
        r = b - y
        for j in range(d):
            r = r + w[j] * X[:, j]
        losses.append(float(np.sum(r * r)) / n)
        for j in range(d):
            w[j] -= lr * 2.0 * float(np.dot(r, X[:, j])) / n
        b -= lr * 2.0 * float(np.sum(r)) / n
    return np.array(w), b, losses


def gd_einsum_bias_column(X, y, *, lr=0.01, epochs=100):
    A = np.concatenate([X, np.ones((len(X), 1))], axis=1)
    theta = np.zeros(A.shape[1])
    losses = np.empty(epochs)
    for e in range(epochs):
        r = np.einsum("nd,d->n", A, theta) - y
        losses[e] = r @ r / len(y)
        theta -= lr * 2 * np.einsum("nd,n->d", A, r) / len(y)
    return theta[:-1], theta[-1], losses


def gd_float32(X, y, *, lr=0.01, epochs=100):
    X, y = np.asarray(X, dtype=np.float32), np.asarray(y, dtype=np.float32)
    n, d = X.shape
    w, b = np.zeros(d, dtype=np.float32), np.float32(0.0)
    losses = []
    for _ in range(epochs):
        r = X @ w + b - y
        losses.append(np.mean(r ** 2))
        w = w - np.float32(lr) * np.float32(2.0 / n) * (X.T @ r)
        b = b - np.float32(lr) * np.float32(2.0) * np.mean(r)
    return w, b, np.array(losses)


def gd_torch_autograd(X, y, *, lr=0.01, epochs=100):
    X, y = torch.tensor(X), torch.tensor(y)
    w = torch.zeros(X.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros((), dtype=torch.float64, requires_grad=True)
    losses = []
    for _ in range(epochs):
        loss = ((X @ w + b - y) ** 2).mean()
        losses.append(loss.item())
        gw, gb = torch.autograd.grad(loss, [w, b])
        with torch.no_grad():
            w -= lr * gw
            b -= lr * gb
    return w.detach().numpy(), b.item(), losses


def gd_torch_float32(X, y, *, lr=0.01, epochs=100):
    X, y = torch.tensor(X, dtype=torch.float32), torch.tensor(y, dtype=torch.float32)
    w = torch.zeros(X.shape[1], requires_grad=True)
    b = torch.zeros((), requires_grad=True)
    losses = []
    for _ in range(epochs):
        loss = torch.mean((X @ w + b - y) ** 2)
        loss.backward()
        losses.append(loss.item())
        with torch.no_grad():
            w -= lr * w.grad
            b -= lr * b.grad
        w.grad.zero_()
        b.grad.zero_()
    return w.detach().numpy(), b.item(), np.array(losses)


def logreg_loop_over_features(X, y, *, lr=0.1, epochs=100):
    n, d = X.shape
    w, b, losses = [0.0] * d, 0.0, []
    for _ in range(epochs):
        z = np.full(n, b)
        for j in range(d):
            z += w[j] * X[:, j]
        # log(1 + e^z) = max(z, 0) + log(1 + e^-|z|), which never overflows
        losses.append(float(np.mean(np.maximum(z, 0) + np.log1p(np.exp(-np.abs(z))) - y * z)))
        p = 0.5 * (1 + np.tanh(z / 2))  # sigmoid(z)
        for j in range(d):
            w[j] -= lr * float(np.mean((p - y) * X[:, j]))
        b -= lr * float(np.mean(p - y))
    return np.array(w), b, losses


def logreg_float32(X, y, *, lr=0.1, epochs=100):
    X, y = np.asarray(X, dtype=np.float32), np.asarray(y, dtype=np.float32)
    n, d = X.shape
    w, b = np.zeros(d, dtype=np.float32), np.float32(0.0)
    losses = []
    for _ in range(epochs):
        z = X @ w + b
        losses.append(np.mean(np.logaddexp(np.float32(0), z) - y * z))
        p = expit(z)
        w = w - np.float32(lr) * (X.T @ (p - y)) / np.float32(n)
        b = b - np.float32(lr) * np.mean(p - y)
    return w, b, np.array(losses)


def logreg_log_sigmoid_form(X, y, *, lr=0.1, epochs=100):
    """The cross-entropy written with log-sigmoids, each computed stably."""
    n, d = X.shape
    w, b = np.zeros(d), 0.0
    losses = []
    for _ in range(epochs):
        z = X @ w + b
        log_p = -np.logaddexp(0, -z)  # log sigmoid(z)
        log_1mp = -np.logaddexp(0, z)  # log(1 - sigmoid(z))
        losses.append(-np.mean(y * log_p + (1 - y) * log_1mp))
        err = np.exp(log_p) - y
        w, b = w - lr * X.T @ err / n, b - lr * err.mean()
    return w, b, losses


def logreg_torch_autograd(X, y, *, lr=0.1, epochs=100):
    X, y = torch.tensor(X), torch.tensor(y, dtype=torch.float64)
    w = torch.zeros(X.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros((), dtype=torch.float64, requires_grad=True)
    losses = []
    for _ in range(epochs):
        z = X @ w + b
        loss = torch.mean(torch.logaddexp(torch.zeros_like(z), z) - y * z)
        losses.append(loss.item())
        gw, gb = torch.autograd.grad(loss, [w, b])
        with torch.no_grad():
            w -= lr * gw
            b -= lr * gb
    return w.detach().numpy(), b.item(), np.array(losses)


def logreg_softplus_where(X, y, *, lr=0.1, epochs=100):
    A = np.hstack([X, np.ones((len(X), 1))])
    theta = np.zeros(A.shape[1])
    losses = []
    for _ in range(epochs):
        z = A @ theta
        e = np.exp(-np.abs(z))
        losses.append(np.mean(np.where(z > 0, z, 0.0) + np.log1p(e) - y * z))
        p = np.where(z >= 0, 1 / (1 + e), e / (1 + e))
        theta -= lr * A.T @ (p - y) / len(y)
    return theta[:-1], theta[-1], losses


def prf_loops(y_true, y_pred, positive=1):
    tp = fp = fn = 0
    for t, p in zip(y_true, y_pred):
        if p == positive and t == positive:
            tp += 1
        elif p == positive:
            fp += 1
        elif t == positive:
            fn += 1
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


def prf_bincount_f1_from_counts(y_true, y_pred, positive=1):
    t = (np.asarray(y_true) == positive).astype(int)
    p = (np.asarray(y_pred) == positive).astype(int)
    tn, fp, fn, tp = np.bincount(2 * t + p, minlength=4)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * tp / (2 * tp + fp + fn) if tp else 0.0  # the harmonic mean written with counts
    return precision, recall, f1


def prf_float32(y_true, y_pred, positive=1):
    t, p = np.asarray(y_true) == positive, np.asarray(y_pred) == positive
    tp, fp, fn = (np.sum(m, dtype=np.float32) for m in (t & p, ~t & p, t & ~p))
    with np.errstate(invalid="ignore"):
        precision = np.nan_to_num(tp / (tp + fp))
        recall = np.nan_to_num(tp / (tp + fn))
        f1 = np.nan_to_num(2 * precision * recall / (precision + recall))
    return precision, recall, f1


def prf_nan_to_num(y_true, y_pred, positive=1):
    t, p = np.asarray(y_true) == positive, np.asarray(y_pred) == positive
    tp, fp, fn = float(np.sum(t & p)), float(np.sum(~t & p)), float(np.sum(t & ~p))
    with np.errstate(divide="ignore", invalid="ignore"):
        precision, recall = np.divide(tp, tp + fp), np.divide(tp, tp + fn)
        f1 = np.divide(2 * precision * recall, precision + recall)
    return tuple(float(np.nan_to_num(v)) for v in (precision, recall, f1))


def topk_argpartition(y_true, scores, k):
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    return np.mean((top == y_true[:, None]).any(axis=1))


def topk_rank_count(y_true, scores, k):
    true_score = scores[np.arange(len(y_true)), y_true]
    rank = np.sum(scores > true_score[:, None], axis=1)  # classes scored above the true one
    return float(np.mean(rank < k))


def topk_kth_score_threshold(y_true, scores, k):
    kth = np.sort(scores, axis=1)[:, -k]
    return float(np.mean(scores[np.arange(len(y_true)), y_true] >= kth))


def topk_python_loops(y_true, scores, k):
    hits = 0
    for label, row in zip(y_true, scores.tolist()):
        best = sorted(range(len(row)), key=lambda c: row[c], reverse=True)[:k]
        hits += label in best
    return hits / len(y_true)


def topk_torch_float32_mean(y_true, scores, k):
    idx = torch.topk(torch.as_tensor(scores), k, dim=1).indices
    return (idx == torch.as_tensor(y_true)[:, None]).any(dim=1).float().mean()


def topk_float32(y_true, scores, k):
    top = np.argsort(scores, axis=1)[:, ::-1][:, :k]
    return np.mean(np.any(top == y_true[:, None], axis=1), dtype=np.float32)


CORRECT = {
    "check_linreg_closed_form": (closed_normal_equations, closed_pinv, closed_centred, closed_qr_bias_first,
                                 closed_torch_float32, closed_float32_normal_equations),
    "check_linreg_gd": (gd_loop_over_features, gd_einsum_bias_column, gd_float32, gd_torch_autograd,
                        gd_torch_float32),
    "check_logreg_gd": (logreg_loop_over_features, logreg_float32, logreg_log_sigmoid_form,
                        logreg_torch_autograd, logreg_softplus_where),
    "check_precision_recall_f1": (prf_loops, prf_bincount_f1_from_counts, prf_float32, prf_nan_to_num),
    "check_top_k_accuracy": (topk_argpartition, topk_rank_count, topk_kth_score_threshold, topk_python_loops,
                             topk_torch_float32_mean, topk_float32),
}


@pytest.mark.parametrize("fn", correct(*CORRECT["check_linreg_closed_form"]))
def test_check_linreg_closed_form_gives_full_marks_to_correct_variants(fn):
    checks.check_linreg_closed_form(fn)


@pytest.mark.parametrize("fn", correct(*CORRECT["check_linreg_gd"]))
def test_check_linreg_gd_gives_full_marks_to_correct_variants(fn):
    checks.check_linreg_gd(fn)


@pytest.mark.parametrize("fn", correct(*CORRECT["check_logreg_gd"]))
def test_check_logreg_gd_gives_full_marks_to_correct_variants(fn):
    checks.check_logreg_gd(fn)


@pytest.mark.parametrize("fn", correct(*CORRECT["check_precision_recall_f1"]))
def test_check_precision_recall_f1_gives_full_marks_to_correct_variants(fn):
    checks.check_precision_recall_f1(fn)


@pytest.mark.parametrize("fn", correct(*CORRECT["check_top_k_accuracy"]))
def test_check_top_k_accuracy_gives_full_marks_to_correct_variants(fn):
    checks.check_top_k_accuracy(fn)


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


CLOSED_FORM_MISTAKES = planted(
    (closed_no_intercept, r"w \(weights\) for N=20, d=1, seed=0: max \|got-want\|"),
    (closed_normal_equations_uncentred, r"w \(weights\) for N=20, d=1, seed=0"),
    (closed_bias_is_mean_y, r"b \(bias\) for N=20, d=1, seed=0"),
    (closed_returns_theta, r"w \(weights\) .*shape \(2,\) but expected \(1,\)"),
)


@pytest.mark.parametrize("wrong, match", CLOSED_FORM_MISTAKES)
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


LINREG_GD_MISTAKES = planted(
    (gd_missing_factor_2, r"w \(weights\) for N=10, d=2, seed=0, lr=0.05, epochs=1"),
    (gd_sum_not_mean, r"w \(weights\) for N=10, d=2, seed=0, lr=0.05, epochs=1"),
    (gd_loss_after_update, r"losses \(loss before each update\) for N=10"),
    (gd_sequential_bias_update, r"b \(bias\) for N=10, d=2, seed=0, lr=0.05, epochs=1"),
    (gd_one_loss_too_many, r"losses for N=10.*shape \(2,\) but expected \(1,\)"),
)


@pytest.mark.parametrize("wrong, match", LINREG_GD_MISTAKES)
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


LOGREG_GD_MISTAKES = planted(
    (logreg_missing_1_over_n, r"w \(weights\) for N=10, d=2, seed=0, lr=0.5, epochs=1"),
    (logreg_naive_log_sigmoid, r"losses for X=\[1000.0, -1000.0, 500.0\].*expected finite values"),
    (logreg_clipped_probabilities, r"losses \(loss before each update\) for X=\[1000.0"),
    (logreg_labels_pm1, r"w \(weights\) for N=10, d=2, seed=0, lr=0.5, epochs=1"),
    (logreg_sigmoid_sign_flipped, r"w \(weights\) for N=10"),
    (logreg_loss_after_update, r"losses \(loss before each update\) for N=10"),
)


@pytest.mark.parametrize("wrong, match", LOGREG_GD_MISTAKES)
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


PRF_MISTAKES = planted(
    (prf_swapped, r"^precision for N=10, seed=0, positive=1: max \|got-want\|"),
    (prf_arithmetic_f1, r"^f1 for N=10, seed=0, positive=1"),
    (prf_nan_on_empty, r"^precision for case=no predicted positives.*got nan, expected a finite number"),
    (prf_zero_division_error, r"raised ZeroDivisionError: division by zero for case=no predicted positives"),
    (prf_ignores_positive, r"for N=10, seed=0, positive=0"),
)


@pytest.mark.parametrize("wrong, match", PRF_MISTAKES)
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


TOP_K_MISTAKES = planted(
    (topk_ascending, r"top-k accuracy \(a fraction in \[0, 1\]\) for N=\d+, C=\d+, k=1, seed=0"),
    (topk_k_plus_1, r"top-k accuracy \(a fraction in \[0, 1\]\) for N=10, C=3, k=1, seed=0"),
    (topk_axis_0, r"for N=10, C=3, k=1, seed=0"),
    (topk_count_not_fraction, r"top-k accuracy \(a fraction in \[0, 1\]\) for N=10, C=3, k=1.*got [1-9]"),
    (topk_ignores_k, r"top-k accuracy \(a fraction in \[0, 1\]\) for N=10, C=3, k=2, seed=0"),
)


@pytest.mark.parametrize("wrong, match", TOP_K_MISTAKES)
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


def test_guard_lets_numpy_solutions_through():
    for task in checks.TASKS:
        assert static_violations(solution_of(ASSIGNMENT)[task.name], modules=task.modules) == [], task.name


def test_sigmoid_reference_is_stable():
    """The check's own sigmoid must not overflow on the huge logits it feeds students."""
    with np.errstate(all="raise"):
        np.testing.assert_allclose(expit(np.array([-1e5, 0.0, 1e5])), [0.0, 0.5, 1.0])


# ----------------------------------------------------------------- under a course secret

SECRETS = ("course secret A", "another secret", "3")
MISTAKES = {"check_linreg_closed_form": CLOSED_FORM_MISTAKES, "check_linreg_gd": LINREG_GD_MISTAKES,
            "check_logreg_gd": LOGREG_GD_MISTAKES, "check_precision_recall_f1": PRF_MISTAKES,
            "check_top_k_accuracy": TOP_K_MISTAKES}


@pytest.mark.parametrize("secret", SECRETS)
def test_checks_hold_under_several_course_secrets(monkeypatch, secret):
    """With a secret the inputs change; the solution and the correct variants still pass, mistakes fail."""
    monkeypatch.setenv("AUTOGRADER_SECRET", secret)
    for task in checks.TASKS:
        for fn in (solution_of(ASSIGNMENT)[task.name], *CORRECT[task.check]):
            check_of(task)(fn)
        for param in MISTAKES[task.check]:
            with pytest.raises(CheckFailed):
                check_of(task)(param.values[0])
