"""LLM.int8()'s decomposition against bitsandbytes (int8_vectorwise_quant, int8_linear_matmul,
Linear8bitLt on CPU), and SmoothQuant's scale migration against its formula."""

from __future__ import annotations

import pytest
import torch

from llmcourse.outliers import (
    int8_vectorwise_matmul,
    llm_int8_linear,
    make_outlier_activations,
    outlier_columns,
    smooth,
    smoothing_factors,
    w8a8_relative_error,
)

torch.set_num_threads(1)
bnb = pytest.importorskip("bitsandbytes")
import bitsandbytes.functional as F  # noqa: E402


def layer(seed, c_in=64, c_out=48):
    g = torch.Generator().manual_seed(seed + 100)
    return torch.randn(c_out, c_in, generator=g) * 0.05, torch.randn(c_out, generator=g) * 0.1


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_outlier_columns_match_bitsandbytes(seed):
    x = make_outlier_activations(20, 64, [3, 17, 40], magnitude=8.0, seed=seed).half().float()
    _, _, cols = F.int8_vectorwise_quant(x.half(), threshold=6.0)
    assert torch.equal(outlier_columns(x, 6.0), cols)
    assert set(cols.tolist()) <= {3, 17, 40}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_vectorwise_codes_and_int32_products_match_bitsandbytes(seed):
    x = make_outlier_activations(20, 64, [], seed=seed).half().float()  # fp16-exact: bnb computes in fp16
    w = layer(seed)[0].half().float()
    ca, sca, _ = F.int8_vectorwise_quant(x.half())
    cb, scb, _ = F.int8_vectorwise_quant(w.half())
    from llmcourse.quantization import absmax_quantize

    x_q, sx = absmax_quantize(x, axis=0)
    w_q, sw = absmax_quantize(w, axis=0)
    assert (x_q.int() - ca.int()).abs().max() <= 1 and (x_q != ca).float().mean() < 0.01
    assert torch.equal(w_q, cb) or (w_q != cb).float().mean() < 0.01
    torch.testing.assert_close(sx.flatten() * 127, sca, rtol=1e-6, atol=0)
    assert torch.equal(F.int8_linear_matmul(ca, cb), ca.int() @ cb.int().T)
    ref = F.int8_mm_dequant(F.int8_linear_matmul(ca, cb), sca, scb).float()  # float16 output
    torch.testing.assert_close(int8_vectorwise_matmul(x, w), ref, rtol=2e-2, atol=2e-3)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_llm_int8_linear_matches_bitsandbytes_linear8bitlt(seed):
    x = make_outlier_activations(16, 64, [], seed=seed)
    x[:, [5, 33]] = torch.sign(x[:, [5, 33]]) * (8.0 + 20 * x[:, [5, 33]].abs())  # every entry beyond 6.0
    # (bitsandbytes drops only the entries >= 6.0 before taking row maxima, the decomposition whole columns:
    # with every entry of an outlier column beyond the threshold, both are the same)
    w, b = layer(seed)
    ref_layer = bnb.nn.Linear8bitLt(64, 48, has_fp16_weights=False, threshold=6.0)
    ref_layer.load_state_dict({"weight": w, "bias": b})
    ref_layer = ref_layer.to("cpu")
    with torch.no_grad():
        ref = ref_layer(x)
    out, cols = llm_int8_linear(x, w, b, threshold=6.0)
    assert cols.tolist() == [5, 33]
    scale = float(ref.abs().max())  # both are int8 approximations (bitsandbytes computes in float16):
    assert float((out - ref).abs().max()) < 2e-2 * scale, float((out - ref).abs().max())
    exact = x @ w.T + b  # ... and equally far from the float product
    err_ours, err_bnb = float((out - exact).norm()), float((ref - exact).norm())
    assert err_ours < 1.5 * err_bnb and err_bnb < 1.5 * err_ours, (err_ours, err_bnb)
    assert err_ours < 0.01 * float(exact.norm())


@pytest.mark.parametrize("seed", [0, 1])
def test_decomposition_rescues_int8_from_outliers(seed):
    x = make_outlier_activations(32, 128, [7, 90], magnitude=60.0, seed=seed)
    w, b = layer(seed, 128, 64)
    exact = x @ w.T + b
    plain = int8_vectorwise_matmul(x, w) + b
    mixed, _ = llm_int8_linear(x, w, b, int8_weights_for_outliers=False)
    err_plain = float((plain - exact).norm() / exact.norm())
    err_mixed = float((mixed - exact).norm() / exact.norm())
    assert err_mixed < 0.25 * err_plain, (err_mixed, err_plain)


def test_no_outliers_means_plain_vectorwise_int8():
    x = make_outlier_activations(10, 32, [], seed=0) * 0.5
    w, b = layer(0, 32, 16)
    out, cols = llm_int8_linear(x, w, b, threshold=6.0)
    assert cols.numel() == 0
    torch.testing.assert_close(out, int8_vectorwise_matmul(x, w) + b, rtol=0, atol=0)


@pytest.mark.parametrize("alpha", [0.0, 0.5, 0.75, 1.0])
def test_smoothing_factors_formula_and_unchanged_product(alpha):
    x = make_outlier_activations(24, 32, [2, 30], magnitude=40.0, seed=1)
    w, _ = layer(1, 32, 16)
    s = smoothing_factors(x.abs().amax(dim=0), w, alpha)
    for j in range(32):
        want = x[:, j].abs().max() ** alpha / w[:, j].abs().max() ** (1 - alpha)
        assert float(s[j]) == pytest.approx(float(want), rel=1e-5)
    xs, ws, s2 = smooth(x, w, alpha)
    assert torch.equal(s, s2)
    torch.testing.assert_close(xs @ ws.T, x @ w.T, rtol=1e-4, atol=1e-4)
    if alpha == 0.5:  # the migrated maxima are equal: max|X_j / s_j| = max|W_j s_j| = sqrt(max|X_j| max|W_j|)
        torch.testing.assert_close(xs.abs().amax(dim=0), ws.abs().amax(dim=0), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_smoothquant_lowers_w8a8_error_with_outliers(seed):
    x = make_outlier_activations(64, 128, [11, 77, 100], magnitude=50.0, seed=seed)
    w, _ = layer(seed, 128, 96)
    before = w8a8_relative_error(x, w)
    xs, ws, _ = smooth(x, w, 0.5)
    after = w8a8_relative_error(xs, ws)
    assert after < 0.5 * before, (after, before)


def test_bad_inputs_raise_clear_errors():
    w, _ = layer(0, 8, 4)
    with pytest.raises(ValueError, match="C_in"):
        llm_int8_linear(torch.randn(3, 9), w)
    with pytest.raises(ValueError, match="NaN"):
        outlier_columns(torch.tensor([[float("nan"), 1.0]]))
    with pytest.raises(ValueError, match="threshold"):
        outlier_columns(torch.randn(2, 2), 0.0)
    with pytest.raises(ValueError, match="alpha"):
        smoothing_factors(torch.ones(8), w, 1.5)
    with pytest.raises(ValueError, match="non-negative"):
        smoothing_factors(-torch.ones(8), w)
    with pytest.raises(ValueError, match="outlier_features"):
        make_outlier_activations(4, 8, [8])
    with pytest.raises(TypeError, match="floating"):
        int8_vectorwise_matmul(torch.ones(2, 8, dtype=torch.long), w)
