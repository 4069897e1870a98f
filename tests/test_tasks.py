import numpy as np
import pytest

from llmcourse.tasks import (
    make_2d_classification,
    make_arithmetic,
    make_digit_strings,
    make_linearly_separable,
    make_logic_gate,
    make_regression,
)


def test_logic_gate_known_answers():
    X, y = make_logic_gate("xor")
    np.testing.assert_array_equal(X, [[0, 0], [0, 1], [1, 0], [1, 1]])
    np.testing.assert_array_equal(y, [0, 1, 1, 0])
    np.testing.assert_array_equal(make_logic_gate("AND")[1], np.logical_and(X[:, 0], X[:, 1]).astype(int))
    with pytest.raises(ValueError, match="unknown gate"):
        make_logic_gate("IMPLIES")


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_linearly_separable_respects_margin_and_labels(seed):
    X, y, (w, b) = make_linearly_separable(80, 3, margin=0.2, seed=seed)
    assert X.shape == (80, 3) and y.shape == (80,)
    scores = X @ w + b
    assert np.all(np.abs(scores) >= 0.2)
    np.testing.assert_array_equal(y, (scores > 0).astype(int))


def test_regression_recovers_its_weights_without_noise():
    X, y, (w, b) = make_regression(50, 4, noise=0.0, seed=3)
    coef, *_ = np.linalg.lstsq(np.column_stack([X, np.ones(50)]), y, rcond=None)
    np.testing.assert_allclose(coef, np.append(w, b), atol=1e-10)


@pytest.mark.parametrize("kind", ["blobs", "moons", "circles", "xor", "spirals"])
def test_2d_classification_is_balanced_and_seeded(kind):
    X, y = make_2d_classification(kind, 100, noise=0.05, seed=4)
    assert X.shape == (100, 2) and np.bincount(y).tolist() == [50, 50]
    X2, _ = make_2d_classification(kind, 100, noise=0.05, seed=4)
    np.testing.assert_array_equal(X, X2)


def test_digit_strings_targets_follow_the_task():
    for task, op in [("copy", lambda s: s), ("reverse", lambda s: s[::-1]), ("sort", lambda s: "".join(sorted(s)))]:
        for src, tgt in make_digit_strings(task, 20, min_len=2, max_len=6, seed=1):
            assert 2 <= len(src) <= 6 and src.isdigit() and tgt == op(src)


def test_arithmetic_answers_are_correct():
    for question, answer in make_arithmetic(50, max_value=20, ops="+-*", seed=2):
        assert question.endswith("=")
        assert eval(question[:-1]) == int(answer)  # noqa: S307 - our own generated digits


def test_task_builders_reject_bad_sizes():
    with pytest.raises(ValueError):
        make_regression(0)
    with pytest.raises(ValueError):
        make_2d_classification("moons", n=1)
    with pytest.raises(ValueError):
        make_digit_strings("rotate")
    with pytest.raises(ValueError):
        make_arithmetic(5, ops="/")
