"""Classification metrics from scratch: accuracy, precision, recall, F1 and top-k accuracy.

What it teaches: a metric is what we report, not what we train on. Accuracy
is the share of correct predictions; for one "positive" class, precision is
TP / (TP + FP) (how many of the flagged examples are right), recall is
TP / (TP + FN) (how many of the positives were found) and F1 is their harmonic
mean (van Rijsbergen 1979). Top-k accuracy counts a prediction as correct when
the true class is among the k highest scores, the measure used by the ImageNet
challenge with k = 5 (Russakovsky et al. 2015).

Where a ratio has a zero denominator the functions return 0.0, the same as
``sklearn.metrics`` with ``zero_division=0``.

Taught in: book/02-ml-basics
"""

from __future__ import annotations

import numpy as np


def _check_labels(y_true, y_pred) -> tuple[np.ndarray, np.ndarray]:
    y_true = np.asarray(y_true)
    y_pred = np.asarray(y_pred)
    if y_true.ndim != 1 or y_pred.ndim != 1:
        raise ValueError(f"y_true and y_pred must be 1-D (N,), got shapes {y_true.shape} and {y_pred.shape}")
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true and y_pred must have the same shape, got {y_true.shape} and {y_pred.shape}")
    if y_true.size == 0:
        raise ValueError("y_true and y_pred are empty: a metric needs at least one example")
    return y_true, y_pred


def accuracy(y_true, y_pred) -> float:
    """Share of positions where ``y_pred == y_true``. Shapes: (N,), (N,) -> float in [0, 1]."""
    y_true, y_pred = _check_labels(y_true, y_pred)
    return float(np.mean(y_true == y_pred))


def confusion_counts(y_true, y_pred, positive=1) -> tuple[int, int, int, int]:
    """Counts of true positives, false positives, false negatives and true negatives.

    An example is "positive" when its label equals ``positive``; every other
    label is negative (one class against the rest).

    Shapes: (N,), (N,) -> (tp, fp, fn, tn), four ints summing to N.

    >>> confusion_counts([1, 1, 0, 0], [1, 0, 1, 0])
    (1, 1, 1, 1)
    """
    y_true, y_pred = _check_labels(y_true, y_pred)
    t = y_true == positive
    p = y_pred == positive
    tp = int(np.sum(t & p))
    fp = int(np.sum(~t & p))
    fn = int(np.sum(t & ~p))
    tn = int(np.sum(~t & ~p))
    return tp, fp, fn, tn


def precision_recall_f1(y_true, y_pred, positive=1) -> tuple[float, float, float]:
    """Precision TP/(TP+FP), recall TP/(TP+FN) and F1 = 2TP/(2TP+FP+FN) for class ``positive``.

    A zero denominator gives 0.0 (no predicted positives -> precision 0; no true
    positives -> recall 0), as ``precision_recall_fscore_support(average="binary",
    zero_division=0)``. F1 = 2PR/(P+R) whenever both are defined.

    Shapes: (N,), (N,) -> three floats in [0, 1].
    """
    tp, fp, fn, _ = confusion_counts(y_true, y_pred, positive)
    precision = tp / (tp + fp) if tp + fp > 0 else 0.0
    recall = tp / (tp + fn) if tp + fn > 0 else 0.0
    f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn > 0 else 0.0
    return float(precision), float(recall), float(f1)


def confusion_matrix(y_true, y_pred, n_classes: int) -> np.ndarray:
    """Counts ``M[i, j]`` of examples with true class ``i`` predicted as class ``j``.

    Labels must be integers in ``0 .. n_classes - 1``.
    Shapes: (N,), (N,) -> (n_classes, n_classes) int64; rows = truth, columns = prediction.
    """
    y_true, y_pred = _check_labels(y_true, y_pred)
    if isinstance(n_classes, bool) or not isinstance(n_classes, (int, np.integer)) or n_classes < 1:
        raise ValueError(f"n_classes must be an int >= 1, got {n_classes!r}")
    for name, y in (("y_true", y_true), ("y_pred", y_pred)):
        if not np.issubdtype(y.dtype, np.integer):
            raise TypeError(f"{name} must hold integer class labels, got dtype {y.dtype}")
        if y.min() < 0 or y.max() >= n_classes:
            raise ValueError(f"{name} labels must be in [0, {n_classes - 1}], got range [{y.min()}, {y.max()}]")
    M = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(M, (y_true, y_pred), 1)
    return M


def top_k_accuracy(y_true, scores, k: int) -> float:
    """Share of rows whose true class is among the ``k`` highest scores of that row.

    ``scores`` can be probabilities or any unnormalised scores (logits): only the
    order within a row matters. Ties are broken like
    ``sklearn.metrics.top_k_accuracy_score`` (a stable sort, so among equal
    scores the class with the larger index ranks higher). ``k = 1`` is ordinary
    accuracy of the arg-max prediction; ``k = C`` is always 1.0.

    Shapes: y_true (N,) integer labels in ``0 .. C-1``, scores (N, C) -> float in [0, 1].
    """
    y_true = np.asarray(y_true)
    scores = np.asarray(scores)
    if scores.ndim != 2:
        raise ValueError(f"scores must have shape (N, C), got shape {scores.shape}")
    n, c = scores.shape
    if y_true.shape != (n,):
        raise ValueError(f"y_true must have shape ({n},) to match scores {scores.shape}, got {y_true.shape}")
    if n == 0:
        raise ValueError("scores is empty: top-k accuracy needs at least one example")
    if not np.issubdtype(y_true.dtype, np.integer):
        raise TypeError(f"y_true must hold integer class labels, got dtype {y_true.dtype}")
    if y_true.min() < 0 or y_true.max() >= c:
        raise ValueError(f"y_true labels must be in [0, {c - 1}], got range [{y_true.min()}, {y_true.max()}]")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= c:
        raise ValueError(f"k must be an int in [1, C={c}], got {k!r}")
    if not np.all(np.isfinite(scores)):
        raise ValueError("scores contains NaN or infinite values")
    ranked = np.argsort(scores, axis=1, kind="stable")[:, ::-1]  # (N, C), best class first
    hits = np.any(ranked[:, :k] == y_true[:, None], axis=1)  # (N,)
    return float(np.mean(hits))
