"""Linear and logistic regression from scratch against scikit-learn, the analytic gradient, and bad inputs."""

import warnings

import numpy as np
import pytest
from sklearn.linear_model import LinearRegression, LogisticRegression

from llmcourse.linear_models import (
    binary_cross_entropy_with_logits,
    linear_regression_closed_form,
    linear_regression_gd,
    linear_regression_sgd,
    logistic_regression_gd,
    mse_loss,
    sigmoid,
)
from llmcourse.tasks import make_regression

pytestmark = pytest.mark.ch02

SEEDS = [0, 1, 2, 3]


def _overlapping_classes(seed: int, n: int = 300, d: int = 3):
    """Two Gaussian classes that overlap, so the unpenalised logistic optimum is finite."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    w = rng.normal(size=d)
    p = 1.0 / (1.0 + np.exp(-(X @ w + 0.3)))
    y = (rng.random(n) < p).astype(np.int64)
    return X, y


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("n,d", [(50, 1), (200, 3), (30, 8)])
def test_closed_form_matches_sklearn_linear_regression(seed, n, d):
    X, y, _ = make_regression(n, d, noise=0.3, seed=seed)
    w, b = linear_regression_closed_form(X, y)
    ref = LinearRegression().fit(X, y)
    np.testing.assert_allclose(w, ref.coef_, rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(b, ref.intercept_, rtol=1e-9, atol=1e-10)


def test_closed_form_known_answer():
    # points exactly on y = 2x + 1
    X = np.array([[0.0], [1.0], [2.0], [3.0]])
    w, b = linear_regression_closed_form(X, 2 * X[:, 0] + 1)
    np.testing.assert_allclose(w, [2.0], atol=1e-12)
    np.testing.assert_allclose(b, 1.0, atol=1e-12)


@pytest.mark.parametrize("seed", SEEDS)
def test_gd_matches_sklearn_linear_regression(seed):
    X, y, _ = make_regression(200, 4, noise=0.5, seed=seed)
    w, b, losses = linear_regression_gd(X, y, lr=0.1, epochs=2000)
    ref = LinearRegression().fit(X, y)
    np.testing.assert_allclose(w, ref.coef_, rtol=0, atol=1e-8)
    np.testing.assert_allclose(b, ref.intercept_, rtol=0, atol=1e-8)
    assert losses.shape == (2000,)
    assert np.all(np.diff(losses) <= 1e-12), "full-batch GD with a small lr must not increase the loss"


@pytest.mark.parametrize("seed", SEEDS)
def test_gd_first_step_is_analytic_gradient_step(seed):
    X, y, _ = make_regression(40, 3, noise=0.2, seed=seed)
    lr = 0.05
    w1, b1, losses = linear_regression_gd(X, y, lr=lr, epochs=1)
    # from w = 0, b = 0 the residual is -y: dL/dw = -2/N X^T y, dL/db = -2/N sum(y)
    n = len(y)
    np.testing.assert_allclose(w1, lr * 2 / n * X.T @ y, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(b1, lr * 2 / n * y.sum(), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(losses[0], np.mean(y ** 2), rtol=1e-12)


@pytest.mark.parametrize("seed", SEEDS)
def test_gd_loss_history_matches_mse_loss(seed):
    X, y, _ = make_regression(60, 2, noise=0.2, seed=seed)
    w2, b2, losses3 = linear_regression_gd(X, y, lr=0.1, epochs=3)
    w1, b1, _ = linear_regression_gd(X, y, lr=0.1, epochs=2)
    np.testing.assert_allclose(losses3[2], mse_loss(X, y, w1, b1), rtol=1e-12)


def test_gd_diverges_with_too_large_lr():
    X, y, _ = make_regression(100, 2, noise=0.1, seed=0)
    _, _, losses = linear_regression_gd(X, y, lr=5.0, epochs=30)
    assert not np.isfinite(losses[-1]) or losses[-1] > 1e6 * losses[0]


@pytest.mark.parametrize("seed", SEEDS)
def test_sgd_full_batch_matches_gd(seed):
    X, y, _ = make_regression(64, 3, noise=0.2, seed=seed)
    w_gd, b_gd, l_gd = linear_regression_gd(X, y, lr=0.1, epochs=20)
    w_sgd, b_sgd, l_sgd = linear_regression_sgd(X, y, lr=0.1, epochs=20, batch_size=64, seed=seed)
    np.testing.assert_allclose(w_sgd, w_gd, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(b_sgd, b_gd, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(l_sgd, l_gd, rtol=1e-10)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("batch_size", [1, 8, 50])
def test_sgd_approaches_sklearn_linear_regression(seed, batch_size):
    X, y, _ = make_regression(200, 3, noise=0.1, seed=seed)
    w, b, losses = linear_regression_sgd(X, y, lr=0.01, epochs=60, batch_size=batch_size, seed=seed)
    ref = LinearRegression().fit(X, y)
    assert losses.shape == (60 * -(-200 // batch_size),)
    np.testing.assert_allclose(w, ref.coef_, atol=0.05)
    np.testing.assert_allclose(b, ref.intercept_, atol=0.05)


def test_sgd_same_seed_same_result_other_seed_differs():
    X, y, _ = make_regression(50, 2, noise=0.3, seed=0)
    a = linear_regression_sgd(X, y, lr=0.01, epochs=3, batch_size=5, seed=7)
    b = linear_regression_sgd(X, y, lr=0.01, epochs=3, batch_size=5, seed=7)
    c = linear_regression_sgd(X, y, lr=0.01, epochs=3, batch_size=5, seed=8)
    np.testing.assert_array_equal(a[0], b[0])
    assert not np.allclose(a[0], c[0], rtol=0, atol=1e-12)


@pytest.mark.parametrize("seed", SEEDS)
def test_logistic_gd_matches_sklearn_unpenalised_probabilities(seed):
    X, y = _overlapping_classes(seed)
    w, b, losses = logistic_regression_gd(X, y, lr=1.0, epochs=3000)
    ref = LogisticRegression(C=np.inf, tol=1e-12, max_iter=10_000).fit(X, y)  # no penalty
    np.testing.assert_allclose(w, ref.coef_[0], atol=1e-4)
    np.testing.assert_allclose(b, ref.intercept_[0], atol=1e-4)
    np.testing.assert_allclose(sigmoid(X @ w + b), ref.predict_proba(X)[:, 1], atol=1e-5)
    assert np.all(np.diff(losses) <= 1e-12)


@pytest.mark.parametrize("seed", SEEDS)
def test_logistic_gd_first_step_is_analytic_gradient_step(seed):
    X, y = _overlapping_classes(seed, n=30)
    lr = 0.3
    w1, b1, losses = logistic_regression_gd(X, y, lr=lr, epochs=1)
    # at w = 0 every probability is 1/2, so the gradient is X^T (1/2 - y) / N
    n = len(y)
    np.testing.assert_allclose(w1, -lr * X.T @ (0.5 - y) / n, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(b1, -lr * np.mean(0.5 - y), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(losses[0], np.log(2.0), rtol=1e-12)


def test_logistic_loss_matches_direct_formula_on_moderate_logits():
    rng = np.random.default_rng(0)
    z = rng.normal(scale=3, size=50)
    y = (rng.random(50) < 0.5).astype(float)
    p = 1 / (1 + np.exp(-z))
    direct = -np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))
    np.testing.assert_allclose(binary_cross_entropy_with_logits(z, y), direct, rtol=1e-12)


def test_sigmoid_and_loss_are_stable_at_huge_logits():
    z = np.array([-1000.0, 1000.0, 0.0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an overflow warning would fail the test
        s = sigmoid(z)
        wrong = binary_cross_entropy_with_logits(z[:2], np.array([1.0, 0.0]))
        right = binary_cross_entropy_with_logits(z[:2], np.array([0.0, 1.0]))
    np.testing.assert_allclose(s, [0.0, 1.0, 0.5], atol=1e-300)
    np.testing.assert_allclose(wrong, 1000.0, rtol=1e-12)  # each example costs |z| = 1000
    np.testing.assert_allclose(right, 0.0, atol=1e-12)


def test_logistic_gd_is_finite_on_huge_features():
    X = np.array([[1000.0], [-1000.0], [500.0], [-2.0]])
    y = np.array([1, 0, 0, 1])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        w, b, losses = logistic_regression_gd(X, y, lr=1.0, epochs=20)
    assert np.all(np.isfinite(losses)) and np.all(np.isfinite(w)) and np.isfinite(b)


@pytest.mark.parametrize("fn", [linear_regression_closed_form, linear_regression_gd, logistic_regression_gd])
def test_bad_shapes_raise(fn):
    with pytest.raises(ValueError, match=r"shape \(N, D\)"):
        fn(np.ones(5), np.ones(5))
    with pytest.raises(ValueError, match="3 rows but y has 4"):
        fn(np.ones((3, 2)), np.ones(4))
    with pytest.raises(ValueError, match=r"shape \(N,\)"):
        fn(np.ones((3, 2)), np.ones((3, 1)))
    with pytest.raises(ValueError, match="NaN"):
        fn(np.array([[1.0], [np.nan]]), np.array([0, 1]))
    with pytest.raises(TypeError, match="numeric"):
        fn(np.array([["a"], ["b"]]), np.array([0, 1]))


@pytest.mark.parametrize("fn", [linear_regression_gd, logistic_regression_gd, linear_regression_sgd])
def test_bad_hyperparameters_raise(fn):
    X, y = np.ones((4, 2)), np.array([0, 1, 0, 1])
    with pytest.raises(ValueError, match="lr must be a positive"):
        fn(X, y, lr=0.0)
    with pytest.raises(ValueError, match="lr must be a positive"):
        fn(X, y, lr=float("nan"))
    with pytest.raises(ValueError, match="epochs must be an int"):
        fn(X, y, epochs=0)
    with pytest.raises(ValueError, match="epochs must be an int"):
        fn(X, y, epochs=2.5)


def test_sgd_bad_batch_size_raises():
    X, y = np.ones((4, 2)), np.ones(4)
    for bad in (0, 5, 1.5):
        with pytest.raises(ValueError, match=r"batch_size must be an int in \[1, N=4\]"):
            linear_regression_sgd(X, y, batch_size=bad)


def test_logistic_rejects_non_binary_labels():
    with pytest.raises(ValueError, match="only 0 and 1"):
        logistic_regression_gd(np.ones((3, 1)), np.array([0, 1, 2]))


def test_mse_loss_rejects_wrong_weight_shape():
    with pytest.raises(ValueError, match=r"w must have shape \(2,\)"):
        mse_loss(np.ones((3, 2)), np.ones(3), np.ones(3), 0.0)
