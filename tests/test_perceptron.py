"""The perceptron rule against scikit-learn's Perceptron, the logic gates, and bad inputs."""

import numpy as np
import pytest
from sklearn.linear_model import Perceptron

from llmcourse.perceptron import perceptron_converges, perceptron_fit, perceptron_predict
from llmcourse.tasks import make_linearly_separable, make_logic_gate

pytestmark = pytest.mark.ch01

ATOL = 1e-12  # both sides add the same float64 terms in the same order


def _sklearn(lr: float, epochs: int) -> Perceptron:
    return Perceptron(penalty=None, alpha=0.0, eta0=lr, fit_intercept=True, shuffle=False,
                      tol=None, max_iter=epochs)


def _random_problem(seed: int, n: int, d: int, separable: bool):
    if separable:
        X, y, _ = make_linearly_separable(n, d, margin=0.05, seed=seed)
    else:
        rng = np.random.default_rng(seed)
        X = rng.normal(size=(n, d))
        y = (rng.random(n) < 0.5).astype(np.int64)
    return X, y


CASES = [  # (seed, n, d, lr, epochs, separable)
    (0, 40, 2, 1.0, 5, True),
    (1, 100, 5, 0.1, 10, True),
    (2, 64, 3, 0.5, 7, False),
    (3, 25, 10, 2.0, 3, False),
    (4, 120, 1, 1.0, 8, True),
]


@pytest.mark.parametrize("seed,n,d,lr,epochs,separable", CASES)
def test_perceptron_fit_matches_sklearn(seed, n, d, lr, epochs, separable):
    X, y = _random_problem(seed, n, d, separable)
    w, b, mistakes = perceptron_fit(X, y, lr=lr, epochs=epochs)
    ref = _sklearn(lr, epochs).fit(X, y)
    assert w.shape == (d,)
    assert len(mistakes) == epochs
    np.testing.assert_allclose(w, ref.coef_[0], rtol=0, atol=ATOL, err_msg=f"coef, seed={seed}")
    np.testing.assert_allclose(b, ref.intercept_[0], rtol=0, atol=ATOL,
                               err_msg=f"intercept, seed={seed}")
    np.testing.assert_array_equal(perceptron_predict(X, w, b), ref.predict(X))


@pytest.mark.parametrize("seed,n,d,lr,epochs,separable", CASES)
def test_perceptron_mistakes_match_sklearn_partial_fit(seed, n, d, lr, epochs, separable):
    """Replay sklearn one sample at a time: a sample is a mistake iff sklearn's weights moved."""
    X, y = _random_problem(seed, n, d, separable)
    _, _, mistakes = perceptron_fit(X, y, lr=lr, epochs=epochs)
    ref = _sklearn(lr, 1)
    w_prev, b_prev = np.zeros(d), 0.0
    want = []
    for _ in range(epochs):
        count = 0
        for i in range(n):
            ref.partial_fit(X[i:i + 1], y[i:i + 1], classes=[0, 1])
            w_now, b_now = ref.coef_[0].copy(), float(ref.intercept_[0])
            count += int(b_now != b_prev or not np.array_equal(w_now, w_prev))
            w_prev, b_prev = w_now, b_now
        want.append(count)
    assert mistakes == want, f"mistakes per epoch differ for seed={seed}: {mistakes} vs {want}"


def test_perceptron_fit_known_answer_and():
    """Hand-traced: AND from zero weights with lr=1."""
    X, y = make_logic_gate("AND")
    w, b, mistakes = perceptron_fit(X, y, lr=1.0, epochs=1)
    # (0,0): 0 <= 0 wrong (t=-1) -> w=(0,0), b=-1; (0,1): -1, t=-1, right;
    # (1,0): right; (1,1): -1, t=+1 wrong -> w=(1,1), b=0.
    np.testing.assert_array_equal(w, [1.0, 1.0])
    assert b == 0.0
    assert mistakes == [2]


def test_perceptron_lr_only_rescales():
    X, y = _random_problem(7, 50, 4, True)
    w1, b1, m1 = perceptron_fit(X, y, lr=1.0, epochs=6)
    w3, b3, m3 = perceptron_fit(X, y, lr=0.25, epochs=6)
    np.testing.assert_allclose(w3, 0.25 * w1, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(b3, 0.25 * b1, rtol=1e-12, atol=1e-12)
    assert m1 == m3


@pytest.mark.parametrize("gate", ["AND", "OR", "NAND", "NOR"])
def test_perceptron_learns_linearly_separable_gates(gate):
    X, y = make_logic_gate(gate)
    assert perceptron_converges(X, y, epochs=100)
    w, b, mistakes = perceptron_fit(X, y, epochs=100)
    assert mistakes[-1] == 0
    np.testing.assert_array_equal(perceptron_predict(X, w, b), y)


@pytest.mark.parametrize("gate", ["XOR", "XNOR"])
def test_perceptron_cannot_learn_xor(gate):
    X, y = make_logic_gate(gate)
    assert not perceptron_converges(X, y, epochs=200)
    _, _, mistakes = perceptron_fit(X, y, epochs=200)
    assert min(mistakes) > 0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_perceptron_converges_on_separable_data(seed):
    X, y, _ = make_linearly_separable(80, 3, margin=0.1, seed=seed)
    assert perceptron_converges(X, y, epochs=500)


def test_perceptron_predict_known_answer():
    X = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.5, 0.5]])
    got = perceptron_predict(X, np.array([1.0, 1.0]), -1.0)
    # the point (0.5, 0.5) sits exactly on the line: score 0 is not > 0, so label 0
    np.testing.assert_array_equal(got, [0, 0, 0, 0])
    np.testing.assert_array_equal(perceptron_predict(X, [2.0, 0.0], -1.0), [0, 1, 0, 0])
    assert perceptron_predict(X, [1.0, 1.0], 0.0).dtype == np.int64


@pytest.mark.parametrize("X,y,kwargs,err", [
    (np.zeros((4, 2)), np.array([0, 1, 2, 0]), {}, ValueError),          # label 2
    (np.zeros((4, 2)), np.array([0, 1, -1, 0]), {}, ValueError),         # label -1
    (np.zeros((4, 2)), np.array([0, 1, 1]), {}, ValueError),             # length
    (np.zeros(4), np.array([0, 1, 1, 0]), {}, ValueError),               # 1-D X
    (np.zeros((4, 2, 1)), np.array([0, 1, 1, 0]), {}, ValueError),       # 3-D X
    (np.zeros((0, 2)), np.zeros(0, dtype=int), {}, ValueError),          # empty
    (np.zeros((4, 2)), np.array([0, 1, 1, 0]), {"lr": 0.0}, ValueError),
    (np.zeros((4, 2)), np.array([0, 1, 1, 0]), {"lr": -1.0}, ValueError),
    (np.zeros((4, 2)), np.array([0, 1, 1, 0]), {"lr": float("nan")}, ValueError),
    (np.zeros((4, 2)), np.array([0, 1, 1, 0]), {"epochs": 0}, ValueError),
    (np.zeros((4, 2)), np.array([0, 1, 1, 0]), {"epochs": 2.5}, TypeError),
    (np.array([["a", "b"]] * 4), np.array([0, 1, 1, 0]), {}, TypeError),
    (np.array([[np.nan, 0.0]] * 4), np.array([0, 1, 1, 0]), {}, ValueError),
])
def test_perceptron_fit_rejects_bad_inputs(X, y, kwargs, err):
    with pytest.raises(err):
        perceptron_fit(X, y, **kwargs)


def test_perceptron_predict_rejects_bad_shapes():
    X = np.zeros((3, 2))
    with pytest.raises(ValueError, match=r"w must have shape \(2,\)"):
        perceptron_predict(X, np.zeros(3), 0.0)
    with pytest.raises(ValueError, match="b must be a scalar"):
        perceptron_predict(X, np.zeros(2), np.zeros(2))
    with pytest.raises(ValueError, match=r"shape \(N, D\)"):
        perceptron_predict(np.zeros(3), np.zeros(3), 0.0)


def test_perceptron_converges_rejects_bad_epochs():
    X, y = make_logic_gate("AND")
    with pytest.raises(ValueError):
        perceptron_converges(X, y, epochs=0)
