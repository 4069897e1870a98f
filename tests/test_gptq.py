"""GPTQ (llmcourse.gptq): the blocked, Cholesky-based algorithm against a plain Optimal-Brain-Surgeon
loop that updates the full inverse Hessian after every column, and against round-to-nearest."""

from __future__ import annotations

import pytest
import torch

from llmcourse.gptq import collect_hessians, gptq_quantize, gptq_quantize_model, layer_error
from llmcourse.quantization import affine_codes, dequantize, rtn, zeropoint_quantize

torch.set_num_threads(1)


def correlated_inputs(n, c, seed):
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(c, c, generator=g) / c ** 0.5 + torch.eye(c)
    return (torch.randn(n, c, generator=g) @ mix).double()  # (n, C) with correlated features


def problem(seed, r=12, c=64, n=256):
    x = correlated_inputs(n, c, seed)
    w = torch.randn(r, c, generator=torch.Generator().manual_seed(seed + 50), dtype=torch.float64)
    return w, 2 * x.T @ x / n


def obs_reference(w, h, bits, group_size=None, damp=0.01):
    """GPTQ's update written the slow way: quantise column i, spread its error with the current inverse
    Hessian, then remove row/column i from that inverse (Gaussian elimination), column after column."""
    W, H = w.double().clone(), h.double().clone()
    c = H.shape[0]
    H += damp * torch.diag(H).mean() * torch.eye(c, dtype=H.dtype)
    Hinv = torch.linalg.inv(H)
    Q = torch.zeros_like(W)
    _, scale, zp = zeropoint_quantize(W, bits, axis=0)
    for i in range(c):
        if group_size and i % group_size == 0:
            _, scale, zp = zeropoint_quantize(W[:, i:i + group_size], bits, axis=0)
        col = W[:, i:i + 1]
        q = dequantize(affine_codes(col, scale.double(), zp, bits), scale.double(), zp).double()
        Q[:, i] = q[:, 0]
        W[:, i + 1:] -= (col - q) / Hinv[i, i] * Hinv[i:i + 1, i + 1:]
        Hinv = Hinv - Hinv[:, i:i + 1] @ Hinv[i:i + 1, :] / Hinv[i, i]
    return Q


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("bits, group_size", [(4, None), (3, None), (3, 16), (2, 32)])
def test_gptq_matches_full_inverse_obs_loop(seed, bits, group_size):
    w, h = problem(seed)
    got = gptq_quantize(w, h, bits, group_size, block_size=32)
    want = obs_reference(w, h, bits, group_size)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("block_size", [1, 16, 64, 128])
def test_lazy_batch_updates_do_not_change_the_result(block_size):
    w, h = problem(3)
    torch.testing.assert_close(gptq_quantize(w, h, 3, block_size=block_size), gptq_quantize(w, h, 3, block_size=64),
                               rtol=1e-9, atol=1e-9)


def test_gptq_equals_rtn_for_a_diagonal_hessian():
    w = torch.randn(10, 48, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    h = torch.diag(torch.rand(48, generator=torch.Generator().manual_seed(1), dtype=torch.float64) + 0.5)
    torch.testing.assert_close(gptq_quantize(w, h, 3), rtn(w, 3).double(), rtol=0, atol=1e-6)  # rtn works in float32
    torch.testing.assert_close(gptq_quantize(w, h, 4, 16, block_size=48), rtn(w, 4, 16).double(), rtol=0, atol=1e-6)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("bits", [2, 3, 4])
def test_gptq_has_lower_layer_error_than_rtn(seed, bits):
    w, h = problem(seed)
    assert layer_error(w, gptq_quantize(w, h, bits), h) < 0.9 * layer_error(w, rtn(w, bits).double(), h)


def test_gptq_output_lies_on_the_grid():
    w, h = problem(4)
    q = gptq_quantize(w.float(), h, 3, group_size=16, block_size=32)
    assert q.dtype == torch.float32
    for row in q.reshape(-1, 16):  # each group: at most 2^3 values
        assert len(torch.unique(row)) <= 8


def test_dead_inputs_get_zero_weights():
    w, h = problem(5, c=32)
    h[3, :] = 0
    h[:, 3] = 0
    q = gptq_quantize(w, h, 4)
    assert torch.isfinite(q).all() and abs(float(q[:, 3].abs().max())) < float(w.abs().max()) / 7


def test_layer_error_matches_output_error():
    x = correlated_inputs(100, 16, 0)
    w = torch.randn(5, 16, dtype=torch.float64)
    w_hat = w + 0.01 * torch.randn(5, 16, dtype=torch.float64)
    h = 2 * x.T @ x / 100
    assert layer_error(w, w_hat, h) == pytest.approx(float(2 * ((w - w_hat) @ x.T).pow(2).sum() / 100 / 5), rel=1e-10)


def test_collect_hessians_matches_manual_inputs():
    from llmcourse.gpt import GPT, GPTConfig

    torch.manual_seed(0)
    model = GPT(GPTConfig.tiny(vocab_size=50)).eval()
    ids = torch.randint(0, 50, (3, 10))
    layer = model.h[1].mlp.c_fc
    (h,) = collect_hessians(model, ids, [layer])
    with torch.no_grad():
        x = model.h[0](model.embed(ids))
        inp = model.h[1].ln_2(x + model.h[1].attn(model.h[1].ln_1(x))).reshape(-1, 64).double()
    torch.testing.assert_close(h, 2 * inp.T @ inp / 30, rtol=1e-5, atol=1e-7)


def test_gptq_model_beats_rtn_on_the_course_model():
    from llmcourse.pretrained import load_base
    from llmcourse.quantization import quantize_linears
    from llmcourse.sft import pretraining_perplexity, pretraining_tokens

    model, tok = load_base()
    calib = pretraining_tokens(tok, "train")[:8 * 128].view(8, 128)
    val = pretraining_tokens(tok)[:4 * 128 + 1]
    ppl_gptq = pretraining_perplexity(gptq_quantize_model(model, calib, 2, show_progress=False), val)
    ppl_rtn = pretraining_perplexity(quantize_linears(model, lambda w: rtn(w, 2)), val)
    assert ppl_gptq < ppl_rtn, (ppl_gptq, ppl_rtn)


def test_bad_inputs_raise_clear_errors():
    w, h = problem(0, c=32)
    with pytest.raises(ValueError, match="hessian"):
        gptq_quantize(w, h[:16, :16])
    with pytest.raises(ValueError, match="group_size"):
        gptq_quantize(w, h, 4, group_size=5)
    with pytest.raises(ValueError, match="NaN"):
        gptq_quantize(w * float("nan"), h)
    with pytest.raises(ValueError, match="damp"):
        gptq_quantize(w, h, damp=-1.0)
    with pytest.raises(ValueError, match="calibration"):
        gptq_quantize_model(None, torch.zeros(2, 3))
