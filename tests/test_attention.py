"""From-scratch attention against PyTorch: SDPA, nn.MultiheadAttention, and the formulas' properties."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from llmcourse.attention import (
    MultiHeadAttention,
    apply_rope,
    causal_mask,
    merge_heads,
    padding_mask,
    scaled_dot_product_attention,
    sinusoidal_positions,
    split_heads,
    stable_softmax,
)

pytestmark = pytest.mark.ch06


def _qkv(seed, shape_q, shape_k, dv=None):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(*shape_q, generator=g)
    k = torch.randn(*shape_k, generator=g)
    v = torch.randn(*shape_k[:-1], dv or shape_k[-1], generator=g)
    return q, k, v


def test_stable_softmax_matches_torch_and_survives_large_logits():
    x = torch.randn(4, 7, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(stable_softmax(x), torch.softmax(x, dim=-1), rtol=1e-6, atol=1e-7)
    big = torch.tensor([1000.0, 1001.0])
    torch.testing.assert_close(stable_softmax(big), torch.tensor([0.2689414, 0.7310586]))
    assert torch.isnan(torch.exp(big) / torch.exp(big).sum()).all(), "the naive formula should overflow"
    assert torch.equal(stable_softmax(torch.full((2, 3), float("-inf"))), torch.zeros(2, 3))


@pytest.mark.parametrize("seed, shape_q, shape_k", [(0, (2, 5, 8), (2, 5, 8)), (1, (3, 2, 4, 16), (3, 2, 6, 16)),
                                                     (2, (1, 1, 4), (1, 1, 4))])
@pytest.mark.parametrize("is_causal", [False, True])
def test_sdpa_matches_torch_sdpa(seed, shape_q, shape_k, is_causal):
    q, k, v = _qkv(seed, shape_q, shape_k)
    got, weights = scaled_dot_product_attention(q, k, v, is_causal=is_causal)
    want = F.scaled_dot_product_attention(q, k, v, is_causal=is_causal)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(weights.sum(-1), torch.ones(weights.shape[:-1]))


@pytest.mark.parametrize("kind", ["bool", "float"])
def test_sdpa_masks_match_torch_sdpa_including_fully_masked_rows(kind):
    q, k, v = _qkv(3, (2, 4, 8), (2, 6, 8))
    g = torch.Generator().manual_seed(4)
    allowed = torch.rand(2, 4, 6, generator=g) > 0.4
    allowed[0, 2] = False  # a query that may attend nothing
    mask = allowed if kind == "bool" else torch.zeros(allowed.shape).masked_fill(~allowed, float("-inf"))
    got, _ = scaled_dot_product_attention(q, k, v, mask=mask)
    want = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert torch.equal(got[0, 2], torch.zeros(8)), "a fully masked query gives zeros, as torch's SDPA does"


def test_sdpa_is_stable_for_large_scores():
    q, k, v = _qkv(5, (1, 3, 4), (1, 3, 4))
    got, _ = scaled_dot_product_attention(q * 100, k * 100, v)
    want = F.scaled_dot_product_attention(q * 100, k * 100, v)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_sdpa_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="shapes do not fit"):
        scaled_dot_product_attention(torch.zeros(2, 3), torch.zeros(2, 4), torch.zeros(2, 4))
    with pytest.raises(TypeError, match="floating-point"):
        scaled_dot_product_attention(torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 3), torch.zeros(2, 3))


def test_causal_mask_known_answer():
    assert causal_mask(3).tolist() == [[True, False, False], [True, True, False], [True, True, True]]
    assert causal_mask(2, 3).tolist() == [[True, False, False], [True, True, False]]
    pm = padding_mask(torch.tensor([[1, 1, 0]]))
    assert pm.shape == (1, 1, 1, 3) and pm.tolist() == [[[[True, True, False]]]]


def test_split_merge_heads_roundtrip_and_layout():
    x = torch.arange(2 * 3 * 8, dtype=torch.float32).view(2, 3, 8)
    h = split_heads(x, 4)
    assert h.shape == (2, 4, 3, 2)
    assert torch.equal(h[0, 1, 2], x[0, 2, 2:4]), "head 1 holds channels 2..3"
    assert torch.equal(merge_heads(h), x)


@pytest.mark.parametrize("seed, b, t, s, c, heads", [(0, 2, 5, 5, 16, 4), (1, 1, 3, 7, 12, 3), (2, 3, 1, 1, 8, 1)])
def test_multi_head_attention_matches_nn_multiheadattention(seed, b, t, s, c, heads):
    torch.manual_seed(seed)
    ref = torch.nn.MultiheadAttention(c, heads, batch_first=True).eval()
    with torch.no_grad():
        ref.in_proj_bias.normal_()
        ref.out_proj.bias.normal_()
    mine = MultiHeadAttention(c, heads).eval()
    mine.load_state_dict(ref.state_dict())
    q, k, v = _qkv(seed, (b, t, c), (b, s, c))
    pad = torch.zeros(b, s, dtype=torch.bool)
    pad[0, -1] = s > 1
    got, weights = mine(q, k, v, key_padding_mask=pad)
    want, want_w = ref(q, k, v, key_padding_mask=pad, need_weights=True, average_attn_weights=False)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(weights, want_w, rtol=1e-5, atol=1e-6)
    if t == s:
        got_c, _ = mine(q, k, v, is_causal=True)
        want_c, _ = ref(q, k, v, attn_mask=~causal_mask(t), need_weights=False)
        torch.testing.assert_close(got_c, want_c, rtol=1e-5, atol=1e-5)


def test_sinusoidal_positions_known_answer():
    pe = sinusoidal_positions(4, 6)
    assert pe.shape == (4, 6)
    torch.testing.assert_close(pe[0], torch.tensor([0.0, 1, 0, 1, 0, 1]))
    torch.testing.assert_close(pe[1, :2], torch.tensor([math.sin(1.0), math.cos(1.0)]))
    torch.testing.assert_close(pe[2, 2:4], torch.tensor([math.sin(2 / 10000 ** (2 / 6)), math.cos(2 / 10000 ** (2 / 6))]))


def test_rope_scores_depend_only_on_relative_position():
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(1, 8, generator=g), torch.randn(1, 8, generator=g)
    pos = torch.arange(20.0)
    rq = apply_rope(q.expand(20, 8), pos)
    rk = apply_rope(k.expand(20, 8), pos)
    s = rq @ rk.T  # (20, 20): score of query at m with key at n
    torch.testing.assert_close(torch.diagonal(s, 3), torch.full((17,), float(s[0, 3])), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(rq.norm(dim=-1), q.norm().expand(20), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(apply_rope(q, torch.zeros(1)), q)
