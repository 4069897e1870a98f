"""Hidden checks for the chapter 1 exercise: the perceptron learning rule.

Reference: ``sklearn.linear_model.Perceptron`` with the settings that make it
the textbook rule (weights start at zero, samples in the given order, a
constant step ``eta0 = lr``, no penalty, no early stopping):

    Perceptron(penalty=None, alpha=0.0, eta0=lr, fit_intercept=True,
               shuffle=False, tol=None, max_iter=epochs)

scikit-learn's SGD loop updates exactly when ``t * (x . w + b) <= 0`` (its
"perceptron" loss has a zero threshold), by ``w += lr * t * x`` and
``b += lr * t``, so its ``coef_`` and ``intercept_`` equal the rule's weights
bit for bit. The per-epoch mistake counts come from replaying scikit-learn one
sample at a time with ``partial_fit`` and counting the samples that changed
the weights.

Every reference is computed live, the student's function is called through
:func:`autograder.guard.call_student` (no scikit-learn, no
``llmcourse.perceptron`` inside it), and the student's code never judges
equality. Random inputs come from :func:`autograder.secret.hidden_rng`: the
published seeds without a course secret, secret-derived ones with it.

Taught in: book/01-history
"""

from __future__ import annotations

import functools

import numpy as np
from sklearn.linear_model import Perceptron

from autograder.compare import (
    assert_close,
    assert_equal,
    assert_scalar,
    describe,
    fail,
    to_array,
    unpack,
)
from autograder.guard import call_student
from autograder.secret import course_secret, hidden_rng, hidden_seed
from autograder.spec import Task
from llmcourse.tasks import make_linearly_separable, make_logic_gate

FORBIDDEN = ("sklearn", "llmcourse.perceptron")
PREDICT, FIT, CONVERGES = TASKS = (
    Task("ch01_predict", "perceptron_predict(X, w, b)", 2, "`(N,)` labels in {0, 1}",
         "`sklearn.linear_model.Perceptron.predict` with the same weights", modules=FORBIDDEN),
    Task("ch01_fit", "perceptron_fit(X, y, *, lr=1.0, epochs=10)", 4,
         "`(w, b, mistakes)`: weights `(d,)`, bias, updates per epoch",
         "`sklearn.linear_model.Perceptron` (textbook settings), replayed sample by sample",
         modules=FORBIDDEN),
    Task("ch01_converges", "perceptron_converges(X, y, *, epochs=100)", 2,
         "`True` iff some epoch makes no update", "the first mistake-free epoch of scikit-learn's run",
         modules=FORBIDDEN),
)


def _call(fn, *args, task: Task, inputs: dict, **kwargs):
    """Call the student's function under the guard, with the task's forbidden modules."""
    return call_student(fn, *args, task=task, inputs=inputs, **kwargs)


GATES = ("AND", "OR", "NAND", "NOR", "XOR", "XNOR")
# perceptron_fit's w and b (entries of order 1): a float32 implementation differs from scikit-learn's
# float64 run by at most 1.0e-6 (measured over 20 course secrets x 7 fit cases, with no update
# decision changed); the float64 variants (loops, a bias column, a sign target) agree bit for bit.
# tol = 10x the float32 spread.
FIT_RTOL, FIT_ATOL = 1e-5, 1e-5


# ----------------------------------------------------------------- helpers

def _sk_perceptron(lr: float, epochs: int, **extra):
    return Perceptron(penalty=None, alpha=0.0, eta0=lr, fit_intercept=True, shuffle=False,
                      tol=None, max_iter=epochs, **extra)


def _data_seed(seed: int, label: str) -> int:
    """:func:`hidden_seed` folded into the range ``llmcourse.tasks`` accepts (itself without a secret)."""
    return hidden_seed(seed, label) % 2**32


def _labels01(value, *, what: str, inputs: dict) -> np.ndarray:
    arr = to_array(value, what=what, inputs=inputs)
    bad = ~np.isin(arr, (0, 1))
    if bad.any():
        seen = np.unique(arr)[:6].tolist()
        fail(f"{what}{describe(inputs)}: labels must be 0 or 1, got values {seen} "
             f"(the rule predicts 1 when x.w + b > 0 and 0 otherwise)")
    return arr


# ----------------------------------------------------------------- references

def reference_predict(X: np.ndarray, w: np.ndarray, b: float) -> np.ndarray:
    """scikit-learn's Perceptron.predict with the weights set by hand: (N,) in {0, 1}."""
    clf = Perceptron()
    clf.coef_ = np.asarray(w, dtype=float).reshape(1, -1)
    clf.intercept_ = np.array([float(b)])
    clf.classes_ = np.array([0, 1])
    return clf.predict(X)


def reference_fit(X, y, lr: float, epochs: int):
    """(w (d,), b) of scikit-learn's Perceptron trained with the textbook settings."""
    clf = _sk_perceptron(lr, epochs).fit(X, y)
    return clf.coef_[0].copy(), float(clf.intercept_[0])


def reference_mistakes(X, y, lr: float, epochs: int) -> np.ndarray:
    """Per-epoch update counts: scikit-learn replayed sample by sample with ``partial_fit``."""
    clf = _sk_perceptron(lr, 1)
    classes = np.array([0, 1])
    w, b = np.zeros(X.shape[1]), 0.0
    counts = []
    for _ in range(epochs):
        n_updates = 0
        for i in range(len(X)):
            clf.partial_fit(X[i:i + 1], y[i:i + 1], classes=classes)
            w_new, b_new = clf.coef_[0].copy(), float(clf.intercept_[0])
            if b_new != b or not np.array_equal(w_new, w):
                n_updates += 1
            w, b = w_new, b_new
        counts.append(n_updates)
    return np.array(counts, dtype=np.int64)


def reference_first_clean_epoch(X, y, max_epochs: int) -> int | None:
    """The first epoch (1-based) with zero mistakes within ``max_epochs``, or None.

    An epoch makes no mistake exactly when the weights it starts from put every
    sample strictly on its own side, t * (x . w + b) > 0. Epoch 1 starts from
    zero weights (always a mistake); epoch e > 1 starts from scikit-learn's
    weights after e - 1 epochs (one warm-started epoch per ``fit``).
    """
    t = np.where(np.asarray(y) == 1, 1.0, -1.0)
    clf = _sk_perceptron(1.0, 1, warm_start=True)
    for epoch in range(1, max_epochs + 1):
        if epoch == 1:
            margins = np.zeros(len(X))
        else:
            clf.fit(X, y)
            margins = t * clf.decision_function(X)
        if np.all(margins > 0):
            return epoch
    return None


# ----------------------------------------------------------------- data
# Each case list, with its references, depends only on the course secret: it is built once per
# secret, which the checks pass as the cache key (the inputs are drawn with course_secret()).

@functools.lru_cache(maxsize=4)
def _predict_cases(secret: str | None) -> tuple:
    """(inputs, X, w, b, want labels) for each case."""
    cases = []
    for seed in (0, 1, 2):
        rng = hidden_rng(seed, "ch01.predict")
        for n, d in ((1, 1), (5, 2), (40, 3), (100, 10)):
            X = rng.normal(size=(n, d))
            cases.append(({"N": n, "d": d, "seed": seed}, X, rng.normal(size=d), float(rng.normal())))
        # small integers: many scores are exactly zero, which must give label 0
        X = rng.integers(-2, 3, size=(30, 3)).astype(float)
        cases.append(({"N": 30, "d": 3, "seed": seed, "data": "integers (scores exactly 0)"},
                      X, rng.integers(-1, 2, size=3).astype(float), float(rng.integers(-1, 2))))
    cases.append(({"N": 4, "d": 2, "data": "w = 0, b = 0"}, np.ones((4, 2)), np.zeros(2), 0.0))
    return tuple((*case, reference_predict(*case[1:])) for case in cases)


@functools.lru_cache(maxsize=4)
def _fit_cases(secret: str | None) -> tuple:
    """(inputs, X, y, lr, epochs, want w, want b, want mistakes) for each case."""
    cases = []
    for gate, lr, epochs in (("AND", 1.0, 10), ("OR", 0.5, 6), ("NAND", 1.0, 1)):
        X, y = make_logic_gate(gate)
        cases.append(({"gate": gate, "lr": lr, "epochs": epochs}, X, y, lr, epochs))
    for seed, (n, d, lr, epochs) in enumerate(((12, 2, 1.0, 5), (20, 3, 0.1, 4), (15, 4, 0.37, 3))):
        X, y, _ = make_linearly_separable(n, d, margin=0.05, seed=_data_seed(seed, "ch01.fit"))
        cases.append(({"data": "separable", "N": n, "d": d, "seed": seed, "lr": lr, "epochs": epochs},
                      X, y, lr, epochs))
    rng = hidden_rng(3, "ch01.fit")
    X, y = rng.normal(size=(16, 3)), rng.integers(0, 2, size=16)
    cases.append(({"data": "random labels", "N": 16, "d": 3, "seed": 3, "lr": 1.0, "epochs": 5},
                  X, y, 1.0, 5))
    return tuple((*case, *reference_fit(*case[1:]), reference_mistakes(*case[1:])) for case in cases)


def _separable_with_clean_epoch(n: int, d: int, seed: int):
    """Separable data whose first clean epoch comes within 200 epochs (so a budget one short exists).

    Without a secret the published seed already has one; with a secret, candidates
    ``seed + 1000 k`` are tried in turn, so the case keeps its point under any secret.
    """
    for k in range(50):
        X, y, _ = make_linearly_separable(n, d, margin=0.1, seed=_data_seed(seed + 1000 * k, "ch01.converges"))
        first = reference_first_clean_epoch(X, y, 200)
        if first is not None:
            return X, y, first
    raise RuntimeError(f"no separable data with a clean epoch for seed {seed}")  # never seen


@functools.lru_cache(maxsize=4)
def _converges_cases(secret: str | None) -> tuple:
    """(inputs, X, y, epochs, first clean epoch within epochs or None) for each case."""
    cases = []
    for gate in GATES:
        X, y = make_logic_gate(gate)
        cases.append(({"gate": gate, "epochs": 100}, X, y, 100))
    X, y = make_logic_gate("AND")
    datasets = [({"gate": "AND"}, X, y, reference_first_clean_epoch(X, y, 200))]
    for seed, (n, d) in enumerate(((20, 2), (30, 3), (25, 4))):
        datasets.append(({"data": "separable", "N": n, "d": d, "seed": seed},
                         *_separable_with_clean_epoch(n, d, seed)))
    for name, X, y, first in datasets:
        # epoch 1 starts from zero weights, so first >= 2: one epoch short, the final weights already
        # separate the data, but no epoch was clean
        cases.append(({**name, "epochs": first - 1}, X, y, first - 1))
        cases.append(({**name, "epochs": first}, X, y, first))
    for seed in (0, 1, 2):
        rng = hidden_rng(10 + seed, "ch01.converges.overlapping")
        X = rng.normal(size=(30, 2))
        y = (X[:, 0] + 0.8 * rng.normal(size=30) > 0).astype(np.int64)  # noisy labels: classes overlap
        cases.append(({"data": "overlapping", "N": 30, "d": 2, "seed": 10 + seed, "epochs": 50}, X, y, 50))
    return tuple((*case, reference_first_clean_epoch(*case[1:])) for case in cases)


# ----------------------------------------------------------------- checks

def check_predict(student_fn) -> None:
    """perceptron_predict(X, w, b) -> (N,) labels in {0, 1}, 1 exactly when X @ w + b > 0."""
    for inputs, X, w, b, want in _predict_cases(course_secret()):
        got = _call(student_fn, X.copy(), w.copy(), b, task=PREDICT, inputs=inputs)
        got = _labels01(got, what="perceptron_predict labels", inputs=inputs)
        assert_equal(got, want, what="perceptron_predict labels (1 iff x.w + b > 0)", inputs=inputs)


def check_fit(student_fn) -> None:
    """perceptron_fit(X, y, lr=, epochs=) -> (w, b, mistakes) equal to scikit-learn's Perceptron."""
    for inputs, X, y, lr, epochs, w_want, b_want, m_want in _fit_cases(course_secret()):
        result = _call(student_fn, X.copy(), y.copy(), lr=lr, epochs=epochs, task=FIT, inputs=inputs)
        w, b, mistakes = unpack(result, ("w", "b", "mistakes"), what=FIT.name, inputs=inputs)
        assert_close(w, w_want, what="w (weights)", inputs=inputs, rtol=FIT_RTOL, atol=FIT_ATOL)
        b = assert_scalar(b, what="b (bias)", inputs=inputs)
        assert_close(b, b_want, what="b (bias)", inputs=inputs, rtol=FIT_RTOL, atol=FIT_ATOL)
        assert_equal(to_array(mistakes, what="mistakes (updates per epoch)", inputs=inputs), m_want,
                     what="mistakes (updates per epoch)", inputs=inputs)


def check_converges(student_fn) -> None:
    """perceptron_converges(X, y, epochs=) -> True iff some epoch within `epochs` makes no mistake."""
    task = CONVERGES.name
    for inputs, X, y, epochs, first in _converges_cases(course_secret()):
        want = first is not None
        got = _call(student_fn, X.copy(), y.copy(), epochs=epochs, task=CONVERGES, inputs=inputs)
        if got is None:
            fail(f"{task}{describe(inputs)}: your function returned None (is a `return` missing?)")
        if not isinstance(got, (bool, np.bool_)):
            fail(f"{task}{describe(inputs)}: expected True or False, got {type(got).__name__} {got!r}")
        if bool(got) != want:
            fail(f"{task}{describe(inputs)}: returned {bool(got)}, expected {want} "
                 f"({_why_converges(X, y, epochs, first, bool(got))})")


def _why_converges(X, y, epochs: int, first: int | None, got: bool) -> str:
    """Why the expected answer is right, and the likely mistake behind ``got``."""
    if first is not None:
        why = f"epoch {first} is the first with zero updates"
        return why + (" - the last epoch of the budget counts too" if first == epochs else "")
    why = f"no epoch among the first {epochs} is free of updates"
    w, b = reference_fit(X, y, 1.0, epochs)
    if got and np.array_equal(reference_predict(X, w, b), y):
        why += (f"; after epoch {epochs} the weights do classify every sample correctly, but the question "
                f"is whether some epoch made zero updates, not whether the final weights classify well")
    return why


__all__ = ["TASKS", "check_predict", "check_fit", "check_converges",
           "reference_predict", "reference_fit", "reference_mistakes", "reference_first_clean_epoch"]
