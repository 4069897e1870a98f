import numpy as np
import pytest
import torch

from autograder.compare import CheckFailed, assert_close, assert_equal, assert_scalar, to_array


def test_assert_close_accepts_numpy_torch_and_lists():
    want = np.array([1.0, 2.0, 3.0])
    assert_close(want + 1e-9, want, what="x")
    assert_close(torch.tensor([1.0, 2.0, 3.0]), want, what="x")
    assert_close([1.0, 2.0, 3.0], want, what="x")


def test_assert_close_message_names_input_error_and_index():
    with pytest.raises(CheckFailed) as info:
        assert_close(np.array([1.0, 2.5, 3.0]), np.array([1.0, 2.0, 3.0]), what="w",
                     inputs={"n": 3, "seed": 1}, atol=1e-6, rtol=0)
    msg = str(info.value)
    assert "w differs" not in msg  # phrasing is "w for n=3, seed=1: max |got-want| ..."
    assert "n=3, seed=1" in msg and "0.5" in msg and "[1]" in msg and "atol=1e-06" in msg


def test_assert_close_reports_shape_mismatch_without_broadcasting():
    with pytest.raises(CheckFailed, match=r"shape \(3, 1\) but expected \(3,\)"):
        assert_close(np.zeros((3, 1)), np.zeros(3), what="w")


def test_assert_close_reports_nan_where_reference_is_finite():
    with pytest.raises(CheckFailed, match="overflow"):
        assert_close(np.array([np.nan, 1.0]), np.array([0.5, 1.0]), what="loss")


def test_none_and_non_numbers_get_their_own_sentence():
    with pytest.raises(CheckFailed, match="returned None"):
        to_array(None, what="w")
    with pytest.raises(CheckFailed, match="expected numbers"):
        to_array("abc", what="w")


def test_assert_equal_counts_mismatches():
    with pytest.raises(CheckFailed, match="2 of 4 values differ"):
        assert_equal(np.array([0, 1, 1, 0]), np.array([0, 0, 0, 0]), what="labels")
    assert_equal(np.array([1, 2]), np.array([1, 2]), what="labels")


def test_assert_scalar_requires_one_finite_number():
    assert assert_scalar(np.float64(0.5), what="p") == 0.5
    with pytest.raises(CheckFailed, match="single number"):
        assert_scalar([1.0, 2.0], what="p")
    with pytest.raises(CheckFailed, match="finite"):
        assert_scalar(float("inf"), what="p")
