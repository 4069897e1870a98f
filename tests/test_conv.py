"""The hand-written convolution and pooling agree with torch.nn.functional."""

import pytest
import torch
import torch.nn.functional as F

from llmcourse.conv import (
    avg_pool2d,
    conv2d_im2col,
    conv2d_loops,
    conv_output_size,
    conv_params,
    dense_params,
    im2col,
    max_pool2d,
    pad2d,
    receptive_field,
)

pytestmark = pytest.mark.ch04

CASES = [  # (N, C_in, H, W, C_out, kH, kW, stride, padding)
    (1, 1, 5, 5, 1, 3, 3, 1, 0),
    (2, 3, 7, 6, 4, 3, 3, 2, 1),
    (3, 2, 8, 5, 5, 1, 1, 1, 0),
    (1, 4, 9, 11, 2, 2, 3, (2, 1), (1, 2)),
    (2, 1, 6, 6, 3, 5, 5, 3, 2),
    (1, 2, 4, 4, 1, 4, 4, 1, 0),
]


@pytest.mark.parametrize("fn", [conv2d_loops, conv2d_im2col])
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("with_bias", [True, False])
def test_conv_matches_torch(fn, case, with_bias):
    n, c_in, h, w, c_out, kh, kw, s, p = case
    g = torch.Generator().manual_seed(hash(case) % 1000)
    x = torch.randn(n, c_in, h, w, generator=g, dtype=torch.float64)
    wt = torch.randn(c_out, c_in, kh, kw, generator=g, dtype=torch.float64)
    b = torch.randn(c_out, generator=g, dtype=torch.float64) if with_bias else None
    want = F.conv2d(x, wt, b, stride=s, padding=p)
    got = fn(x, wt, b, stride=s, padding=p)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def test_im2col_matches_unfold():
    x = torch.randn(2, 3, 7, 9, dtype=torch.float64)
    torch.testing.assert_close(im2col(x, (3, 2), (2, 1), (1, 0)),
                               F.unfold(x, (3, 2), stride=(2, 1), padding=(1, 0)))


@pytest.mark.parametrize("k,s", [(2, None), (3, 1), (3, 2), ((2, 3), (1, 2)), (1, None)])
def test_pooling_matches_torch(k, s):
    x = torch.randn(2, 3, 7, 8, dtype=torch.float64)
    torch.testing.assert_close(max_pool2d(x, k, s), F.max_pool2d(x, k, s))
    torch.testing.assert_close(avg_pool2d(x, k, s), F.avg_pool2d(x, k, s))


def test_output_size_formula():
    for h in range(1, 12):
        for k in range(1, 5):
            for s in range(1, 4):
                for p in range(0, 3):
                    if h + 2 * p < k:
                        with pytest.raises(ValueError, match="does not fit"):
                            conv_output_size(h, k, s, p)
                        continue
                    want = F.conv2d(torch.zeros(1, 1, h, h), torch.zeros(1, 1, k, k), stride=s, padding=p).shape[-1]
                    assert conv_output_size(h, k, s, p) == want


def test_known_small_example_and_no_flip():
    x = torch.arange(9.0).reshape(1, 1, 3, 3)
    w = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]])  # picks the top-left of each window
    assert conv2d_loops(x, w).flatten().tolist() == [0.0, 1.0, 3.0, 4.0]


def test_helpers():
    assert pad2d(torch.ones(1, 1, 2, 2), 1).shape == (1, 1, 4, 4)
    assert receptive_field([(3, 1), (3, 1)]) == 5
    assert receptive_field([(3, 1), (2, 2), (3, 1)]) == 8
    assert conv_params(3, 64, 3) == 1792 and dense_params(4, 2) == 10


def test_bad_inputs():
    with pytest.raises(ValueError, match="C_in"):
        conv2d_loops(torch.zeros(1, 2, 4, 4), torch.zeros(1, 3, 3, 3))
    with pytest.raises(ValueError, match=r"\(N, C_in, H, W\)"):
        conv2d_im2col(torch.zeros(2, 4, 4), torch.zeros(1, 2, 3, 3))
    with pytest.raises(ValueError, match="stride"):
        conv2d_loops(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 3, 3), stride=0)
    with pytest.raises(TypeError, match="padding"):
        conv2d_loops(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 3, 3), padding=1.5)
    with pytest.raises(ValueError, match="does not fit"):
        max_pool2d(torch.zeros(1, 1, 2, 2), 3)
