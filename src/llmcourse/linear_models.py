"""Linear and logistic regression from scratch, in NumPy: the models chapter 2 builds.

What it teaches: a model is a parameterised function (here ``X @ w + b``), a loss
measures how wrong it is on the training data, and a training algorithm moves
the parameters to lower the loss. Linear regression has a closed-form answer
(least squares, Legendre 1805 and Gauss 1809) and can also be fitted by
gradient descent (Cauchy 1847); stochastic and mini-batch gradient descent
(Robbins & Monro 1951) use a random part of the data per step. Logistic
regression (Cox 1958) puts a sigmoid on the same linear score and minimises
the binary cross-entropy; it is still a linear classifier (Hastie, Tibshirani &
Friedman 2009, section 4.4).

Every function returns NumPy float64 arrays and never touches global state.
Shapes: X (N, D) features, y (N,) targets, w (D,) weights, b a float.

Taught in: book/02-ml-basics
"""

from __future__ import annotations

import numpy as np

from llmcourse.reproducibility import numpy_rng


def _check_xy(X, y, *, binary: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Validate and convert (N, D) ``X`` and (N,) ``y`` to float64."""
    X = np.asarray(X)
    y = np.asarray(y)
    if X.dtype == object or y.dtype == object:
        raise TypeError("X and y must be numeric arrays, got dtype=object")
    if not (np.issubdtype(X.dtype, np.number) or X.dtype == bool):
        raise TypeError(f"X must be numeric, got dtype {X.dtype}")
    if not (np.issubdtype(y.dtype, np.number) or y.dtype == bool):
        raise TypeError(f"y must be numeric, got dtype {y.dtype}")
    if X.ndim != 2:
        raise ValueError(f"X must have shape (N, D), got shape {X.shape}")
    if y.ndim != 1:
        raise ValueError(f"y must have shape (N,), got shape {y.shape}")
    if X.shape[0] != y.shape[0]:
        raise ValueError(f"X has {X.shape[0]} rows but y has {y.shape[0]} entries")
    if X.shape[0] == 0 or X.shape[1] == 0:
        raise ValueError(f"X must have at least one row and one column, got shape {X.shape}")
    X = X.astype(np.float64)
    y = y.astype(np.float64)
    if not np.all(np.isfinite(X)):
        raise ValueError("X contains NaN or infinite values")
    if not np.all(np.isfinite(y)):
        raise ValueError("y contains NaN or infinite values")
    if binary and not np.all((y == 0) | (y == 1)):
        bad = np.unique(y[(y != 0) & (y != 1)])[:5]
        raise ValueError(f"y must contain only 0 and 1 for logistic regression, found {bad}")
    return X, y


def _check_training(lr, epochs) -> tuple[float, int]:
    if isinstance(lr, bool) or not isinstance(lr, (int, float, np.integer, np.floating)):
        raise TypeError(f"lr must be a number, got {type(lr).__name__}")
    if not (np.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a positive finite number, got {lr}")
    if isinstance(epochs, bool) or not isinstance(epochs, (int, np.integer)) or epochs < 1:
        raise ValueError(f"epochs must be an int >= 1, got {epochs!r}")
    return float(lr), int(epochs)


def linear_regression_closed_form(X, y) -> tuple[np.ndarray, float]:
    """Least-squares weights and intercept, minimising ``mean((X @ w + b - y) ** 2)``.

    Solves the problem for the augmented matrix ``[X, 1]`` with ``np.linalg.lstsq``
    (which also copes with collinear columns, returning the minimum-norm answer).

    Shapes: X (N, D), y (N,) -> w (D,), b float.
    """
    X, y = _check_xy(X, y)
    A = np.hstack([X, np.ones((X.shape[0], 1))])  # (N, D + 1)
    theta, *_ = np.linalg.lstsq(A, y, rcond=None)  # (D + 1,)
    return theta[:-1], float(theta[-1])


def mse_loss(X, y, w, b) -> float:
    """Mean squared error ``mean((X @ w + b - y) ** 2)``. Shapes: X (N, D), y (N,), w (D,)."""
    X, y = _check_xy(X, y)
    w = np.asarray(w, dtype=np.float64)
    if w.shape != (X.shape[1],):
        raise ValueError(f"w must have shape ({X.shape[1]},), got {w.shape}")
    r = X @ w + float(b) - y
    return float(np.mean(r * r))


def linear_regression_gd(X, y, *, lr: float = 0.1, epochs: int = 100):
    """Full-batch gradient descent on the mean squared error, starting from zeros.

    Each epoch is one step: ``r = X @ w + b - y``, ``w -= lr * 2/N * X.T @ r``,
    ``b -= lr * 2/N * sum(r)``.

    Shapes: X (N, D), y (N,) -> w (D,), b float, losses (epochs,) where
    ``losses[i]`` is the training loss *before* update ``i``.
    """
    X, y = _check_xy(X, y)
    lr, epochs = _check_training(lr, epochs)
    n, d = X.shape
    w = np.zeros(d)
    b = 0.0
    losses = np.empty(epochs)
    with np.errstate(over="ignore", invalid="ignore"):  # a too-large lr diverges to inf: allowed
        for i in range(epochs):
            r = X @ w + b - y  # (N,) residuals
            losses[i] = np.mean(r * r)
            w = w - lr * (2.0 / n) * (X.T @ r)  # (D,)
            b = b - lr * (2.0 / n) * float(np.sum(r))
    return w, float(b), losses


def linear_regression_sgd(X, y, *, lr: float = 0.01, epochs: int = 10, batch_size: int = 1,
                          seed: int = 0):
    """Mini-batch stochastic gradient descent on the mean squared error, from zeros.

    Every epoch shuffles the rows (with a generator seeded by ``seed``) and walks
    through them ``batch_size`` at a time; each batch gives one step with the
    gradient of that batch's mean squared error. ``batch_size=1`` is classic
    stochastic gradient descent, ``batch_size=N`` is full-batch gradient descent.

    Shapes: X (N, D), y (N,) -> w (D,), b float, losses (steps,) with
    ``steps = epochs * ceil(N / batch_size)``; ``losses[t]`` is the loss on the
    *whole* training set before step ``t`` (so the curves of different batch
    sizes are comparable).
    """
    X, y = _check_xy(X, y)
    lr, epochs = _check_training(lr, epochs)
    n, d = X.shape
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or not 1 <= batch_size <= n:
        raise ValueError(f"batch_size must be an int in [1, N={n}], got {batch_size!r}")
    rng = numpy_rng(seed)
    steps_per_epoch = -(-n // batch_size)
    losses = np.empty(epochs * steps_per_epoch)
    w = np.zeros(d)
    b = 0.0
    t = 0
    with np.errstate(over="ignore", invalid="ignore"):
        for _ in range(epochs):
            order = rng.permutation(n)
            for start in range(0, n, batch_size):
                idx = order[start:start + batch_size]
                r_all = X @ w + b - y
                losses[t] = np.mean(r_all * r_all)
                r = r_all[idx]  # (B,) residuals of this batch
                w = w - lr * (2.0 / len(idx)) * (X[idx].T @ r)
                b = b - lr * (2.0 / len(idx)) * float(np.sum(r))
                t += 1
    return w, float(b), losses


def sigmoid(z) -> np.ndarray:
    """The logistic function ``1 / (1 + exp(-z))``, computed without overflow.

    Uses ``exp(-log(1 + exp(-z)))`` with ``np.logaddexp``, so ``z = +-1000`` gives
    1.0 and 0.0 (no warnings, no NaN). Shape: any -> same shape, float64.
    """
    z = np.asarray(z, dtype=np.float64)
    return np.exp(-np.logaddexp(0.0, -z))


def binary_cross_entropy_with_logits(z, y) -> float:
    """Mean binary cross-entropy of labels ``y`` in {0, 1} given logits ``z = X @ w + b``.

    ``-[y log sigmoid(z) + (1 - y) log(1 - sigmoid(z))]`` simplifies to
    ``log(1 + exp(z)) - y * z``, computed as ``logaddexp(0, z) - y * z``: finite
    even for ``|z| = 1000``. Shapes: z (N,), y (N,) -> float.
    """
    z = np.asarray(z, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if z.shape != y.shape or z.ndim != 1:
        raise ValueError(f"z and y must both have shape (N,), got {z.shape} and {y.shape}")
    return float(np.mean(np.logaddexp(0.0, z) - y * z))


def logistic_regression_gd(X, y, *, lr: float = 0.1, epochs: int = 100):
    """Full-batch gradient descent on the mean binary cross-entropy, starting from zeros.

    Each epoch: ``z = X @ w + b``, ``g = sigmoid(z) - y``, ``w -= lr * X.T @ g / N``,
    ``b -= lr * mean(g)``. There is no penalty term (the same objective as
    ``sklearn.linear_model.LogisticRegression(C=np.inf)``).

    Shapes: X (N, D), y (N,) in {0, 1} -> w (D,), b float, losses (epochs,) where
    ``losses[i]`` is the training loss *before* update ``i``.
    """
    X, y = _check_xy(X, y, binary=True)
    lr, epochs = _check_training(lr, epochs)
    n, d = X.shape
    w = np.zeros(d)
    b = 0.0
    losses = np.empty(epochs)
    for i in range(epochs):
        z = X @ w + b  # (N,) logits
        losses[i] = np.mean(np.logaddexp(0.0, z) - y * z)
        g = sigmoid(z) - y  # (N,) dLoss/dz times N
        w = w - lr * (X.T @ g) / n
        b = b - lr * float(np.mean(g))
    return w, float(b), losses
