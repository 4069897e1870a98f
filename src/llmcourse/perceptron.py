"""Rosenblatt's perceptron: the first neural network that learned its weights from examples.

A perceptron computes a weighted sum of its inputs plus a bias and fires (outputs 1)
when the sum is positive. Its learning rule is mistake-driven: visit the examples one
at a time and, whenever one lands on the wrong side of the line (or exactly on it),
move the weights towards it. If the classes can be separated by a hyperplane the rule
stops making mistakes after a finite number of updates (Novikoff 1962); if they
cannot, as for XOR, it never settles (Minsky & Papert 1969).

With labels t in {-1, +1}, one step on example x is

    if t * (x . w + b) <= 0:   w += lr * t * x,   b += lr * t

starting from w = 0, b = 0. This is exactly the update of scikit-learn's
``Perceptron(penalty=None, alpha=0, eta0=lr, fit_intercept=True, shuffle=False,
tol=None, max_iter=epochs)``, so both give the same weights.

Source: F. Rosenblatt, "The perceptron: a probabilistic model for information
storage and organization in the brain", Psychological Review 65(6), 1958.

Taught in: book/01-history
"""

from __future__ import annotations

import numpy as np

__all__ = ["perceptron_predict", "perceptron_fit", "perceptron_converges"]


def _check_X(X) -> np.ndarray:
    X = np.asarray(X)
    if X.dtype == bool or not np.issubdtype(X.dtype, np.number):
        raise TypeError(f"X must be a numeric array, got dtype {X.dtype}")
    if X.ndim != 2:
        raise ValueError(f"X must have shape (N, D), got shape {X.shape}")
    if X.shape[0] == 0 or X.shape[1] == 0:
        raise ValueError(f"X must have at least one row and one column, got shape {X.shape}")
    X = X.astype(np.float64)
    if not np.all(np.isfinite(X)):
        raise ValueError("X contains NaN or infinite values")
    return X


def _check_y(y, n: int) -> np.ndarray:
    y = np.asarray(y)
    if y.shape != (n,):
        raise ValueError(f"y must have shape ({n},) to match X, got shape {y.shape}")
    if not np.issubdtype(y.dtype, np.number) and y.dtype != bool:
        raise TypeError(f"y must hold the labels 0 and 1, got dtype {y.dtype}")
    bad = ~np.isin(y, (0, 1))
    if bad.any():
        raise ValueError(f"y must contain only the labels 0 and 1, got {np.unique(y[bad])[:5]}")
    return y.astype(np.int64)


def _check_positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return int(value)


def perceptron_predict(X, w, b) -> np.ndarray:
    """Labels of a perceptron with weights ``w`` and bias ``b``.

    Shapes:
        X: (N, D) inputs; w: (D,) weights; b: a scalar bias.
        returns: (N,) int64 labels, 1 where ``X @ w + b > 0`` and 0 elsewhere.

    >>> perceptron_predict([[0, 0], [1, 1]], [1.0, 1.0], -1.5)
    array([0, 1])
    """
    X = _check_X(X)
    w = np.asarray(w, dtype=np.float64)
    if w.shape != (X.shape[1],):
        raise ValueError(f"w must have shape ({X.shape[1]},) to match X of shape {X.shape}, "
                         f"got {w.shape}")
    if np.ndim(b) != 0:
        raise ValueError(f"b must be a scalar, got shape {np.shape(b)}")
    return (X @ w + float(b) > 0).astype(np.int64)


def perceptron_fit(X, y, *, lr: float = 1.0, epochs: int = 10):
    """Train a perceptron with Rosenblatt's mistake-driven rule.

    The weights start at zero. Each epoch visits the samples in the given order;
    a sample with target t = +1 (label 1) or t = -1 (label 0) is a *mistake* when
    ``t * (x . w + b) <= 0`` (a point exactly on the line counts as wrong), and
    only then the weights move: ``w += lr * t * x``, ``b += lr * t``.

    Shapes:
        X: (N, D) inputs; y: (N,) labels in {0, 1}.
        returns: w (D,) float64, b float, and ``mistakes``: a list of ``epochs``
        ints, the number of updates made in each epoch.

    Args:
        lr: learning rate (> 0). With zero initial weights it only rescales w and b,
            so it never changes the predictions or the mistakes.
        epochs: number of passes over the data (>= 1). There is no early stop: the
            mistakes list always has ``epochs`` entries.
    """
    X = _check_X(X)
    y = _check_y(y, X.shape[0])
    if isinstance(lr, bool) or not isinstance(lr, (int, float, np.integer, np.floating)):
        raise TypeError(f"lr must be a number, got {type(lr).__name__}")
    if not (np.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a finite number > 0, got {lr}")
    epochs = _check_positive_int(epochs, "epochs")

    t = np.where(y == 1, 1.0, -1.0)  # (N,) targets in {-1, +1}
    w = np.zeros(X.shape[1], dtype=np.float64)
    b = 0.0
    mistakes: list[int] = []
    for _ in range(epochs):
        count = 0
        for x_i, t_i in zip(X, t, strict=True):
            if t_i * (float(x_i @ w) + b) <= 0.0:
                step = float(lr) * t_i
                w += step * x_i
                b += step
                count += 1
        mistakes.append(count)
    return w, b, mistakes


def perceptron_converges(X, y, *, epochs: int = 100) -> bool:
    """True iff the perceptron rule reaches an epoch with zero mistakes within ``epochs``.

    An epoch without a mistake means every sample is on its correct side, so the
    training data are separated. False does not prove that no separating line exists;
    for separable data the rule needs at most (R / margin)^2 updates (Novikoff 1962).

    Shapes: X (N, D), y (N,) labels in {0, 1}.
    """
    _, _, mistakes = perceptron_fit(X, y, lr=1.0, epochs=epochs)
    return 0 in mistakes
