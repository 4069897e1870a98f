"""Metrics from scratch against sklearn.metrics, known answers and edge cases."""

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, precision_recall_fscore_support, top_k_accuracy_score
from sklearn.metrics import confusion_matrix as sk_confusion_matrix

from llmcourse.metrics import (
    accuracy,
    confusion_counts,
    confusion_matrix,
    precision_recall_f1,
    top_k_accuracy,
)

pytestmark = pytest.mark.ch02

SEEDS = [0, 1, 2, 3, 4]


def _sk_prf(y_true, y_pred, positive=1):
    p, r, f, _ = precision_recall_fscore_support(y_true, y_pred, average="binary", pos_label=positive,
                                                 zero_division=0)
    return p, r, f


def test_confusion_counts_known_answer():
    y_true = [1, 1, 1, 0, 0, 0, 0]
    y_pred = [1, 1, 0, 1, 0, 0, 0]
    assert confusion_counts(y_true, y_pred) == (2, 1, 1, 3)
    assert confusion_counts(y_true, y_pred, positive=0) == (3, 1, 1, 2)


def test_precision_recall_f1_known_answer():
    # tp = 2, fp = 1, fn = 1 -> P = R = 2/3, F1 = 2/3
    p, r, f = precision_recall_f1([1, 1, 1, 0, 0], [1, 1, 0, 1, 0])
    np.testing.assert_allclose([p, r, f], [2 / 3, 2 / 3, 2 / 3], rtol=1e-15)
    # tp = 1, fp = 0, fn = 3 -> P = 1, R = 1/4, F1 = 2/5
    p, r, f = precision_recall_f1([1, 1, 1, 1, 0], [1, 0, 0, 0, 0])
    np.testing.assert_allclose([p, r, f], [1.0, 0.25, 0.4], rtol=1e-15)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("n,p_pos", [(10, 0.5), (200, 0.1), (57, 0.8)])
def test_precision_recall_f1_matches_sklearn(seed, n, p_pos):
    rng = np.random.default_rng(seed)
    y_true = (rng.random(n) < p_pos).astype(int)
    y_pred = (rng.random(n) < 0.5).astype(int)
    np.testing.assert_allclose(precision_recall_f1(y_true, y_pred), _sk_prf(y_true, y_pred), rtol=1e-12, atol=0)


@pytest.mark.parametrize("seed", SEEDS)
def test_one_vs_rest_multiclass_matches_sklearn(seed):
    rng = np.random.default_rng(seed)
    y_true = rng.integers(0, 4, size=80)
    y_pred = np.where(rng.random(80) < 0.6, y_true, rng.integers(0, 4, size=80))
    ps, rs, fs, _ = precision_recall_fscore_support(y_true, y_pred, labels=range(4), average=None,
                                                    zero_division=0)
    for c in range(4):
        np.testing.assert_allclose(precision_recall_f1(y_true, y_pred, positive=c), (ps[c], rs[c], fs[c]),
                                   rtol=1e-12, err_msg=f"class {c}")


@pytest.mark.parametrize("y_true,y_pred,name", [
    ([1, 0, 1, 0], [0, 0, 0, 0], "no predicted positives"),
    ([0, 0, 0, 0], [1, 0, 1, 0], "no true positives in the data"),
    ([0, 0, 0, 0], [0, 0, 0, 0], "no positives anywhere"),
    ([1, 1, 1], [1, 1, 1], "all positive and right"),
    ([1, 0, 1], [0, 1, 0], "all wrong"),
])
def test_precision_recall_f1_edge_cases_match_sklearn(y_true, y_pred, name):
    np.testing.assert_allclose(precision_recall_f1(y_true, y_pred), _sk_prf(y_true, y_pred),
                               rtol=0, atol=0, err_msg=name)


def test_no_predicted_positives_gives_zero_precision():
    p, r, f = precision_recall_f1([1, 0, 1], [0, 0, 0])
    assert (p, r, f) == (0.0, 0.0, 0.0)


def test_string_labels_and_positive_argument():
    y_true = ["spam", "ham", "spam", "spam"]
    y_pred = ["spam", "spam", "ham", "spam"]
    np.testing.assert_allclose(precision_recall_f1(y_true, y_pred, positive="spam"),
                               _sk_prf(y_true, y_pred, positive="spam"), rtol=1e-12)


@pytest.mark.parametrize("seed", SEEDS)
def test_accuracy_matches_sklearn(seed):
    rng = np.random.default_rng(seed)
    y_true = rng.integers(0, 5, size=101)
    y_pred = rng.integers(0, 5, size=101)
    assert accuracy(y_true, y_pred) == pytest.approx(accuracy_score(y_true, y_pred), abs=1e-15)


@pytest.mark.parametrize("seed", SEEDS)
def test_confusion_matrix_matches_sklearn(seed):
    rng = np.random.default_rng(seed)
    y_true = rng.integers(0, 6, size=90)
    y_pred = rng.integers(0, 6, size=90)
    np.testing.assert_array_equal(confusion_matrix(y_true, y_pred, 6),
                                  sk_confusion_matrix(y_true, y_pred, labels=range(6)))


@pytest.mark.filterwarnings("ignore:'k' .* greater than or equal to 'n_classes'")
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("n,c", [(50, 3), (200, 10), (17, 5)])
def test_top_k_accuracy_matches_sklearn(seed, n, c):
    rng = np.random.default_rng(seed)
    y_true = rng.integers(0, c, size=n)
    y_true[:c] = np.arange(c)  # every class present, as sklearn infers the labels from y_true
    scores = rng.normal(size=(n, c))
    for k in range(1, c + 1):
        want = top_k_accuracy_score(y_true, scores, k=k, labels=np.arange(c))
        assert top_k_accuracy(y_true, scores, k) == pytest.approx(want, abs=1e-15), f"k={k}"


@pytest.mark.parametrize("seed", SEEDS)
def test_top_1_accuracy_is_argmax_accuracy(seed):
    rng = np.random.default_rng(seed)
    scores = rng.normal(size=(64, 7))
    y_true = rng.integers(0, 7, size=64)
    assert top_k_accuracy(y_true, scores, 1) == accuracy(y_true, scores.argmax(axis=1))


def test_top_k_with_k_equal_c_is_one():
    rng = np.random.default_rng(0)
    assert top_k_accuracy(rng.integers(0, 4, size=30), rng.normal(size=(30, 4)), 4) == 1.0


def test_top_k_known_answer():
    scores = np.array([[0.1, 0.7, 0.2],   # ranking 1, 2, 0
                       [0.5, 0.3, 0.2],   # ranking 0, 1, 2
                       [0.2, 0.2, 0.6]])  # ranking 2, then the tie 1 before 0
    y_true = np.array([0, 1, 0])
    assert top_k_accuracy(y_true, scores, 1) == 0.0
    assert top_k_accuracy(y_true, scores, 2) == pytest.approx(1 / 3)
    assert top_k_accuracy(y_true, scores, 3) == 1.0


@pytest.mark.filterwarnings("ignore:'k' .* greater than or equal to 'n_classes'")
def test_top_k_ties_match_sklearn():
    scores = np.array([[0.2, 0.2, 0.6], [0.5, 0.5, 0.0], [1.0, 1.0, 1.0]])
    y_true = np.array([0, 1, 2])
    for k in (1, 2, 3):
        want = top_k_accuracy_score(y_true, scores, k=k, labels=[0, 1, 2])
        assert top_k_accuracy(y_true, scores, k) == pytest.approx(want, abs=0), f"k={k}"


def test_metrics_bad_inputs_raise():
    with pytest.raises(ValueError, match="same shape"):
        accuracy([0, 1], [0, 1, 1])
    with pytest.raises(ValueError, match="1-D"):
        precision_recall_f1(np.zeros((2, 2)), np.zeros((2, 2)))
    with pytest.raises(ValueError, match="empty"):
        confusion_counts([], [])
    with pytest.raises(ValueError, match=r"k must be an int in \[1, C=3\]"):
        top_k_accuracy([0, 1], np.zeros((2, 3)), 4)
    with pytest.raises(ValueError, match=r"k must be an int in \[1, C=3\]"):
        top_k_accuracy([0, 1], np.zeros((2, 3)), 0)
    with pytest.raises(ValueError, match=r"shape \(N, C\)"):
        top_k_accuracy([0, 1], np.zeros(2), 1)
    with pytest.raises(ValueError, match=r"y_true must have shape \(2,\)"):
        top_k_accuracy([0, 1, 2], np.zeros((2, 3)), 1)
    with pytest.raises(ValueError, match=r"labels must be in \[0, 2\]"):
        top_k_accuracy([0, 3], np.zeros((2, 3)), 1)
    with pytest.raises(TypeError, match="integer class labels"):
        top_k_accuracy([0.0, 1.0], np.zeros((2, 3)), 1)
    with pytest.raises(ValueError, match="NaN"):
        top_k_accuracy([0, 1], np.array([[0.0, np.nan], [1.0, 0.0]]), 1)
    with pytest.raises(ValueError, match=r"labels must be in \[0, 3\]"):
        confusion_matrix([0, 4], [0, 1], 4)
