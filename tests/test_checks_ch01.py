"""The chapter 1 checks are fair both ways: correct answers get full marks, planted mistakes fail.

The solution functions are taken from the nbgrader source notebook itself
(setup and answer cells, executed as a notebook kernel would), so these tests
prove that what the course ships passes its own hidden checks. Beside it, each
task has correct implementations written differently (loops, einsum, float32, a
bias column, an early exit...), which must pass too. Every wrong implementation
below is a mistake a student could plausibly make; each must make its check
raise CheckFailed with a message that names what differs.
"""

from __future__ import annotations

import numpy as np
import pytest

from autograder.checks import ch01_perceptron as checks
from autograder.compare import CheckFailed
from autograder.guard import ForbiddenCall, static_violations
from llmcourse.tasks import make_linearly_separable, make_logic_gate
from tests.notebook_kernel import correct, kernel, planted, solution_of

ASSIGNMENT = "ch01_perceptron"
# The mistake the nbgrader round trip in test_autograder_cli plants: (answer cell, wrong code).
ROUND_TRIP_MISTAKE = ("ch01_predict_answer",
                      "def perceptron_predict(X, w, b):\n    return (X @ w + b >= 0).astype(int)\n")

pytestmark = pytest.mark.ch01


def check_of(task):
    return getattr(checks, task.check)


# ----------------------------------------------------------------- the notebook itself

@pytest.mark.parametrize("task", checks.TASKS, ids=lambda t: t.grade_id)
def test_solution_passes_check(task):
    check_of(task)(solution_of(ASSIGNMENT)[task.name])


def test_solution_learns_and_or_but_not_xor():
    converges = solution_of(ASSIGNMENT)["perceptron_converges"]
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


# ----------------------------------------------------------------- correct variants: full marks

def predict_python_loop(X, w, b):
    labels = []
    for row in X:
        s = b
        for xi, wi in zip(row, w):
            s += xi * wi
        labels.append(1 if s > 0 else 0)
    return np.array(labels)


def predict_einsum_bool(X, w, b):
    return np.einsum("nd,d->n", X, w) + b > 0


def predict_float32(X, w, b):
    s = np.asarray(X, dtype=np.float32) @ np.asarray(w, dtype=np.float32) + np.float32(b)
    return (s > 0).astype(np.int32)


def predict_heaviside(X, w, b):
    return np.heaviside(X @ w + b, 0.0)


def predict_list(X, w, b):
    return [int(s > 0) for s in np.dot(X, w) + b]


@pytest.mark.parametrize("fn", correct(predict_python_loop, predict_einsum_bool, predict_float32,
                                       predict_heaviside, predict_list))
def test_check_predict_gives_full_marks_to_correct_variants(fn):
    checks.check_predict(fn)


def fit_pure_python(X, y, *, lr=1.0, epochs=10):
    d = len(X[0])
    w, b, mistakes = [0.0] * d, 0.0, []
    for _ in range(epochs):
        count = 0
        for x, label in zip(X.tolist(), y.tolist()):
            t = 1 if label == 1 else -1
            if t * (sum(wi * xi for wi, xi in zip(w, x)) + b) <= 0:
                w = [wi + lr * t * xi for wi, xi in zip(w, x)]
                b += lr * t
                count += 1
        mistakes.append(count)
    return w, b, mistakes


def fit_bias_column(X, y, *, lr=1.0, epochs=10):
    A = np.hstack([X, np.ones((len(X), 1))])  # (N, d + 1): the bias is one more weight
    t = 2 * np.asarray(y) - 1
    theta = np.zeros(A.shape[1])
    mistakes = np.zeros(epochs, dtype=int)
    for e in range(epochs):
        for a, ti in zip(A, t):
            if ti * (a @ theta) <= 0:
                theta += lr * ti * a
                mistakes[e] += 1
    return theta[:-1], theta[-1], mistakes


def fit_float32(X, y, *, lr=1.0, epochs=10):
    X = np.asarray(X, dtype=np.float32)
    t = np.where(y == 1, 1, -1).astype(np.float32)
    lr = np.float32(lr)
    w, b = np.zeros(X.shape[1], dtype=np.float32), np.float32(0)
    mistakes = []
    for _ in range(epochs):
        n = 0
        for i in range(len(X)):
            if t[i] * (np.dot(X[i], w) + b) <= 0:
                w = w + lr * t[i] * X[i]
                b = b + lr * t[i]
                n += 1
        mistakes.append(n)
    return w, b, mistakes


def fit_sign_target(X, y, *, lr=1.0, epochs=10):
    X = np.asarray(X, dtype=float)
    w, b = np.zeros(X.shape[1]), 0.0
    mistakes = []
    for _ in range(epochs):
        wrong = 0
        for xi, yi in zip(X, y):
            t = np.sign(yi - 0.5)
            if not t * (np.dot(w, xi) + b) > 0:
                w += lr * t * xi
                b += lr * t
                wrong += 1
        mistakes.append(wrong)
    return w, float(b), mistakes


@pytest.mark.parametrize("fn", correct(fit_pure_python, fit_bias_column, fit_float32, fit_sign_target))
def test_check_fit_gives_full_marks_to_correct_variants(fn):
    checks.check_fit(fn)


def converges_via_fit(X, y, *, epochs=100):
    return 0 in list(fit_bias_column(X, y, lr=1.0, epochs=epochs)[2])


def converges_early_exit(X, y, *, epochs=100):
    t = np.where(np.asarray(y) == 1, 1.0, -1.0)
    w, b = np.zeros(X.shape[1]), 0.0
    for _ in range(epochs):
        updated = False
        for xi, ti in zip(X, t):
            if ti * (xi @ w + b) <= 0:
                w, b = w + ti * xi, b + ti
                updated = True
        if not updated:
            return True
    return False


def converges_numpy_bool(X, y, *, epochs=100):
    _, _, mistakes = fit_float32(X, y, lr=1.0, epochs=epochs)
    return np.any(np.asarray(mistakes) == 0)


def converges_margins_before_epoch(X, y, *, epochs=100):
    """An epoch is clean exactly when the weights it starts from put every sample on its side."""
    t = np.where(np.asarray(y) == 1, 1.0, -1.0)
    w, b = np.zeros(X.shape[1]), 0.0
    for _ in range(epochs):
        if np.all(t * (X @ w + b) > 0):
            return True
        for xi, ti in zip(X, t):
            if ti * (xi @ w + b) <= 0:
                w, b = w + ti * xi, b + ti
    return False


@pytest.mark.parametrize("fn", correct(converges_via_fit, converges_early_exit, converges_numpy_bool,
                                       converges_margins_before_epoch))
def test_check_converges_gives_full_marks_to_correct_variants(fn):
    checks.check_converges(fn)


CORRECT = {"check_predict": (predict_python_loop, predict_einsum_bool, predict_float32, predict_heaviside,
                             predict_list),
           "check_fit": (fit_pure_python, fit_bias_column, fit_float32, fit_sign_target),
           "check_converges": (converges_via_fit, converges_early_exit, converges_numpy_bool,
                               converges_margins_before_epoch)}


# ----------------------------------------------------------------- planted mistakes: predict

def predict_ge(X, w, b):
    return (np.asarray(X) @ w + b >= 0).astype(int)


def predict_pm1(X, w, b):
    return np.where(np.asarray(X) @ w + b > 0, 1, -1)


def predict_no_bias(X, w, b):
    return (np.asarray(X) @ w > 0).astype(int)


def predict_column(X, w, b):
    return (np.asarray(X) @ np.reshape(w, (-1, 1)) + b > 0).astype(int)


PREDICT_MISTAKES = planted(
    (predict_ge, r"integers \(scores exactly 0\): \d+ of 30 values differ"),
    (predict_pm1, r"labels must be 0 or 1, got values \[-1"),
    (predict_no_bias, r"values differ"),
    (predict_column, r"shape \(1, 1\) but expected \(1,\)"),
)


@pytest.mark.parametrize("wrong, match", PREDICT_MISTAKES)
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


FIT_MISTAKES = planted(
    (fit_strict, r"w \(weights\) for gate=AND.*got 0"),
    (fit_no_bias, r"w \(weights\) for gate=AND.*got 0, expected 3"),
    (fit_shuffled, r"w \(weights\) for gate=AND"),
    (fit_cumulative_mistakes, r"mistakes \(updates per epoch\).*values differ"),
    (fit_ignores_lr, r"w \(weights\) for gate=OR, lr=0.5"),
    (fit_counts_errors_after_epoch, r"mistakes \(updates per epoch\)"),
    (fit_returns_two, r"expected a tuple \(w, b, mistakes\), got a tuple of length 2"),
)


@pytest.mark.parametrize("wrong, match", FIT_MISTAKES)
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


CONVERGES_MISTAKES = planted(
    (converges_always, r"gate=XOR.*returned True, expected False"),
    (converges_if_final_weights_separate, r"epochs=8: returned True, expected False"),
    (converges_one_epoch_short, r"epochs=9: returned False, expected True \(epoch 9"),
    (converges_returns_int, r"expected True or False, got int"),
)


@pytest.mark.parametrize("wrong, match", CONVERGES_MISTAKES)
def test_check_converges_rejects(wrong, match):
    with pytest.raises(CheckFailed, match=match):
        checks.check_converges(wrong)


def test_check_converges_blames_the_final_weights_only_for_that_mistake():
    """The "final weights classify well" explanation is for that mistake, not for an off-by-one."""
    with pytest.raises(CheckFailed) as short:
        checks.check_converges(converges_one_epoch_short)
    assert "final weights" not in str(short.value)
    assert "the last epoch of the budget counts too" in str(short.value)
    with pytest.raises(CheckFailed) as final:
        checks.check_converges(converges_if_final_weights_separate)
    assert "not whether the final weights classify well" in str(final.value)
    with pytest.raises(CheckFailed) as always:
        checks.check_converges(converges_always)
    assert "final weights" not in str(always.value)  # XOR's final weights do not separate it


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


def test_guard_lets_numpy_solutions_through():
    for task in checks.TASKS:
        assert static_violations(solution_of(ASSIGNMENT)[task.name], modules=task.modules) == [], task.name


# ----------------------------------------------------------------- under a course secret

SECRETS = ("course secret A", "another secret", "3")


@pytest.mark.parametrize("secret", SECRETS)
def test_checks_hold_under_several_course_secrets(monkeypatch, secret):
    """With a secret the inputs change; the solution and the correct variants still pass, mistakes fail."""
    monkeypatch.setenv("AUTOGRADER_SECRET", secret)
    solution = solution_of(ASSIGNMENT)
    mistakes = {"check_predict": PREDICT_MISTAKES, "check_fit": FIT_MISTAKES,
                "check_converges": CONVERGES_MISTAKES}
    for task in checks.TASKS:
        for fn in (solution[task.name], *CORRECT[task.check]):
            check_of(task)(fn)
        for param in mistakes[task.check]:
            with pytest.raises(CheckFailed):
                check_of(task)(param.values[0])


def test_course_secret_changes_the_data_but_keeps_a_budget_one_epoch_short(monkeypatch):
    """Under a secret each separable data set still has a first clean epoch, and a budget one short."""
    public = [c for c in checks._converges_cases(None) if c[0].get("data") == "separable"]
    monkeypatch.setenv("AUTOGRADER_SECRET", SECRETS[0])
    hidden = [c for c in checks._converges_cases(SECRETS[0]) if c[0].get("data") == "separable"]
    assert len(hidden) == len(public) == 6
    assert not np.array_equal(hidden[0][1], public[0][1]), "the secret should change the data"
    for short, full in zip(hidden[::2], hidden[1::2]):  # (inputs, X, y, epochs, first clean epoch)
        assert short[4] is None and full[4] == full[3] == short[3] + 1, (short[0], full[0])
