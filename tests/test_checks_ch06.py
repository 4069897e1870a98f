"""The chapter 6 checks are fair both ways: correct answers get full marks, planted mistakes fail.

The solution functions come from the nbgrader source notebook (setup and answer cells, run as
a notebook kernel would). Beside them, each task has correct implementations written
differently (LayerNorm, GELU and softmax written out as the task states them, einsum, float64
inside, masking with -1e9 instead of -inf, a loop over the heads...), which must pass too: the
references run in float64 and the tolerances come from the measured spread of such
implementations. Each wrong implementation below is a mistake a student could plausibly make;
each must make its check raise CheckFailed with a message naming what differs.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from autograder.checks import _ch06_references as refs
from autograder.checks import ch06_transformers as checks
from autograder.compare import CheckFailed
from autograder.guard import ForbiddenCall, static_violations
from tests.notebook_kernel import assert_checks_hold, correct, kernel, planted, solution_of

ASSIGNMENT = "ch06_transformers"
# The mistake the nbgrader round trip plants: heads split with a view but no transpose. No other
# task calls multi_head_attention, so only this task may lose points.
ROUND_TRIP_MISTAKE = ("ch06_multi_head_attention_answer",
                      "def multi_head_attention(query, key, value, params, n_head, key_padding_mask=None,\n"
                      "                         is_causal=False, batch_first=True):\n"
                      "    if not batch_first:\n"
                      "        query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)\n"
                      "    b, t, c = query.shape\n"
                      "    s = key.shape[1]\n"
                      "    w_q, w_k, w_v = params['in_proj_weight'].chunk(3)\n"
                      "    b_q, b_k, b_v = params['in_proj_bias'].chunk(3)\n"
                      "    q = F.linear(query, w_q, b_q).reshape(b, n_head, t, c // n_head)\n"
                      "    k = F.linear(key, w_k, b_k).reshape(b, n_head, s, c // n_head)\n"
                      "    v = F.linear(value, w_v, b_v).reshape(b, n_head, s, c // n_head)\n"
                      "    mask = None if key_padding_mask is None else ~key_padding_mask[:, None, None, :]\n"
                      "    y = scaled_dot_product_attention(q, k, v, mask=mask, is_causal=is_causal)\n"
                      "    y = F.linear(y.reshape(b, t, c), params['out_proj.weight'], params['out_proj.bias'])\n"
                      "    return y if batch_first else y.transpose(0, 1)\n")

pytestmark = pytest.mark.ch06


def check_of(task):
    return getattr(checks, task.check)


# ----------------------------------------------------------------- the notebook itself

@pytest.mark.parametrize("task", checks.TASKS, ids=lambda t: t.grade_id)
def test_solution_passes_check(task):
    check_of(task)(solution_of(ASSIGNMENT)[task.name])


# ----------------------------------------------------------------- the references

def test_reference_attention_combines_mask_and_causal():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 4, 8, generator=g) for _ in range(3))
    mask = torch.ones(4, 4, dtype=torch.bool)
    mask[:, 0] = False
    mask[0, 0] = True
    want = F.scaled_dot_product_attention(q, k, v, attn_mask=mask & torch.ones(4, 4, dtype=torch.bool).tril())
    got = checks.reference_attention(q, k, v, mask, True)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got.float(), want)


def test_reference_gives_zeros_for_fully_masked_rows():
    """The documented expectation: torch's SDPA returns zeros where a query may attend nothing."""
    q, k, v = torch.randn(1, 2, 4), torch.randn(1, 3, 4), torch.randn(1, 3, 4)
    mask = torch.tensor([[True, False, True], [False, False, False]])
    out = checks.reference_attention(q, k, v, mask)
    assert torch.equal(out[0, 1], torch.zeros(4, dtype=torch.float64))


def test_block_reference_is_block_zero_of_the_float64_model():
    model, model64 = checks.hf_gpt2(torch.Generator().manual_seed(0), **checks.GPT2_SIZES[0])
    assert model64.dtype == torch.float64 and model.dtype == torch.float32
    idx = torch.randint(0, 50, (2, 7), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        hs = model64(idx, output_hidden_states=True).hidden_states
        hs32 = model(idx, output_hidden_states=True).hidden_states
    torch.testing.assert_close(refs.block_reference(model64, hs[0]), hs[1])
    torch.testing.assert_close(hs[1].float(), hs32[1], rtol=1e-4, atol=1e-4)  # the same weights


def test_references_leave_the_global_rng_alone():
    state = torch.random.get_rng_state()
    checks.hf_gpt2(torch.Generator().manual_seed(1), **checks.GPT2_SIZES[1])
    refs.mha_reference(8, 2, True, torch.Generator().manual_seed(1))
    assert torch.equal(torch.random.get_rng_state(), state)


def test_hf_weights_make_gelu_form_matter():
    """With the checks' weight scale, exact and tanh GELU differ far beyond the tolerance."""
    model, _ = checks.hf_gpt2(torch.Generator().manual_seed(0), **checks.GPT2_SIZES[0])
    x = torch.randn(2, 16, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        pre = F.layer_norm(x, (32,)) @ model.transformer.h[0].mlp.c_fc.weight
    assert (F.gelu(pre) - F.gelu(pre, approximate="tanh")).abs().max() > 10 * checks.TOL["atol"]


def test_float32_reference_would_fail_a_correct_hand_written_layernorm():
    """Why the references run in float64: with large attention scores the float32 GPT-2 is itself up
    to ~2e-05 from the exact answer, so a correct block (LayerNorm and GELU written as the task states
    them) can end up beyond 1e-5 from it, while it stays within 1e-5 of the float64 truth."""
    def spread(a, b):
        return float(((a - b).abs() / (1 + b.abs())).max())

    from_float32, from_truth = [], []
    for seed in range(6):
        model, model64 = checks.hf_gpt2(torch.Generator().manual_seed(seed),
                                        **{**checks.GPT2_SIZES[3], "n_layer": 1}, qk_scale=12.0)
        x = torch.randn(2, 7, 48, generator=torch.Generator().manual_seed(100 + seed))
        got = gpt2_block_by_hand(x, refs.block_params(model), 8).double()
        from_float32.append(spread(got, refs.block_reference(model, x).double()))
        from_truth.append(spread(got, refs.block_reference(model64, x)))
    assert max(from_float32) > 1e-5, from_float32
    assert max(from_truth) < 1e-5, from_truth


# ----------------------------------------------------------------- correct variants: full marks
def attention_large_negative_bias(q, k, v, mask=None, is_causal=False):
    """Blocks keys by adding -1e9 (no -inf anywhere), then zeroes the rows that may attend nothing."""
    T, S = q.shape[-2], k.shape[-2]
    scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    allowed = torch.ones(T, S, dtype=torch.bool)
    if is_causal:
        allowed = torch.tril(allowed)
    if mask is not None and mask.dtype == torch.bool:
        allowed = allowed & mask
    elif mask is not None:
        allowed = allowed & (mask != float("-inf"))
        scores = scores + torch.where(mask == float("-inf"), torch.zeros_like(mask), mask)
    scores = scores + (~allowed) * -1e9
    weights = torch.softmax(scores, dim=-1) * allowed.any(dim=-1, keepdim=True)
    return weights @ v


def attention_einsum_float64(q, k, v, mask=None, is_causal=False):
    """float64 inside, einsum, softmax as exp(log_softmax); NaN rows (all -inf) become zeros."""
    dtype = q.dtype
    q, k, v = q.double(), k.double(), v.double()
    scores = torch.einsum("...td,...sd->...ts", q, k) * q.shape[-1] ** -0.5
    if is_causal:
        causal = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool).tril()
        scores = scores.masked_fill(~causal, -math.inf)
    if mask is not None:
        scores = scores.masked_fill(~mask, -math.inf) if mask.dtype == torch.bool else scores + mask.double()
    weights = torch.log_softmax(scores, dim=-1).exp()
    weights = torch.nan_to_num(weights, nan=0.0)
    return torch.einsum("...ts,...sd->...td", weights, v).to(dtype)


def attention_scaled_queries_where(q, k, v, mask=None, is_causal=False):
    """Scales q first; builds one additive bias; softmax by hand with torch.where for empty rows."""
    q = q / q.shape[-1] ** 0.5
    scores = q @ k.mT
    bias = torch.zeros(scores.shape[-2:])
    if is_causal:
        bias = bias.masked_fill(torch.triu(torch.ones_like(bias, dtype=torch.bool), diagonal=1), float("-inf"))
    if mask is not None:
        if mask.dtype == torch.bool:
            mask = torch.zeros(mask.shape).masked_fill(mask.logical_not(), float("-inf"))
        bias = bias + mask
    scores = scores + bias
    m = scores.max(dim=-1, keepdim=True).values
    m = torch.where(m == float("-inf"), 0.0, m)
    e = (scores - m).exp()
    z = e.sum(-1, keepdim=True)
    return torch.where(z == 0, 0.0, e / z) @ v


def _sdpa(q, k, v, allowed):
    """Attention over (..., T, S) with a boolean `allowed` (True = may attend); empty rows -> 0."""
    s = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    s = s.masked_fill(~allowed, float("-inf"))
    w = torch.softmax(s, dim=-1)
    return torch.where(allowed.any(-1, keepdim=True), w, torch.zeros_like(w)) @ v


def mha_loop_over_heads(query, key, value, params, n_head, key_padding_mask=None, is_causal=False,
                        batch_first=True):
    if not batch_first:
        query, key, value = (t.permute(1, 0, 2) for t in (query, key, value))
    B, T, C = query.shape
    S = key.shape[1]
    D = C // n_head
    W, b = params["in_proj_weight"], params["in_proj_bias"]
    allowed = torch.ones(B, T, S, dtype=torch.bool)
    if is_causal:
        allowed = allowed & torch.ones(T, S, dtype=torch.bool).tril()
    if key_padding_mask is not None:
        allowed = allowed & ~key_padding_mask[:, None, :]
    heads = []
    for h in range(n_head):
        rows = slice(h * D, (h + 1) * D)
        q = query @ W[:C][rows].T + b[:C][rows]
        k = key @ W[C:2 * C][rows].T + b[C:2 * C][rows]
        v = value @ W[2 * C:][rows].T + b[2 * C:][rows]
        heads.append(_sdpa(q, k, v, allowed))
    y = torch.cat(heads, dim=-1) @ params["out_proj.weight"].T + params["out_proj.bias"]
    return y if batch_first else y.permute(1, 0, 2)


def mha_einsum_float64(query, key, value, params, n_head, key_padding_mask=None, is_causal=False,
                       batch_first=True):
    dt = query.dtype
    query, key, value = query.double(), key.double(), value.double()
    p = {name: t.double() for name, t in params.items()}
    if not batch_first:
        query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
    B, T, C = query.shape
    S = key.shape[1]
    D = C // n_head
    wq, wk, wv = p["in_proj_weight"].reshape(3, n_head, D, C)
    bq, bk, bv = p["in_proj_bias"].reshape(3, n_head, 1, D)
    q = torch.einsum("btc,hdc->bhtd", query, wq) + bq
    k = torch.einsum("bsc,hdc->bhsd", key, wk) + bk
    v = torch.einsum("bsc,hdc->bhsd", value, wv) + bv
    scores = torch.einsum("bhtd,bhsd->bhts", q, k) / math.sqrt(D)
    if key_padding_mask is not None:
        scores = scores.masked_fill(key_padding_mask[:, None, None, :], float("-inf"))
    if is_causal:
        scores = scores.masked_fill(torch.ones(T, S, dtype=torch.bool).triu(1), float("-inf"))
    w = torch.nan_to_num(torch.softmax(scores, dim=-1), nan=0.0)
    y = torch.einsum("bhts,bhsd->bthd", w, v).reshape(B, T, C)
    y = torch.einsum("btc,oc->bto", y, p["out_proj.weight"]) + p["out_proj.bias"]
    y = y if batch_first else y.transpose(0, 1)
    return y.to(dt)


def mha_fused_projection(query, key, value, params, n_head, key_padding_mask=None, is_causal=False,
                         batch_first=True):
    """One matmul for q, k, v when the three inputs are the same tensor; additive -1e9 bias for masks."""
    if not batch_first:
        query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
    B, T, C = query.shape
    S = key.shape[1]
    H, D = n_head, C // n_head
    if query is key and key is value:
        q, k, v = F.linear(query, params["in_proj_weight"], params["in_proj_bias"]).chunk(3, dim=-1)
    else:
        ws, bs = params["in_proj_weight"].chunk(3), params["in_proj_bias"].chunk(3)
        q, k, v = (F.linear(x, w, bb) for x, w, bb in zip((query, key, value), ws, bs))
    q = q.reshape(B, T, H, D).permute(0, 2, 1, 3)
    k = k.reshape(B, S, H, D).permute(0, 2, 3, 1)  # (B, H, D, S), already transposed
    v = v.reshape(B, S, H, D).permute(0, 2, 1, 3)
    blocked = torch.zeros(B, 1, T, S, dtype=torch.bool)
    if key_padding_mask is not None:
        blocked = blocked | key_padding_mask.view(B, 1, 1, S)
    if is_causal:
        blocked = blocked | torch.ones(T, S, dtype=torch.bool).triu(1)
    scores = (q @ k) / math.sqrt(D) - 1e9 * blocked
    w = torch.softmax(scores, dim=-1) * (~blocked).any(-1, keepdim=True)
    y = (w @ v).permute(0, 2, 1, 3).reshape(B, T, C)
    y = F.linear(y, params["out_proj.weight"], params["out_proj.bias"])
    return y if batch_first else y.transpose(0, 1)


def _layer_norm_by_hand(x, w, b, eps):
    """As the task writes it: mean, biased variance, eps inside the square root."""
    mu = x.mean(dim=-1, keepdim=True)
    var = ((x - mu) ** 2).mean(dim=-1, keepdim=True)
    return w * (x - mu) / torch.sqrt(var + eps) + b


def _gelu_tanh_by_hand(z):
    return 0.5 * z * (1 + torch.tanh(math.sqrt(2 / math.pi) * (z + 0.044715 * z ** 3)))


def gpt2_block_by_hand(x, params, n_head, eps=1e-5):
    """LayerNorm and GELU written out as in the task text; attention with masked_fill(-inf) + torch.softmax."""
    B, T, C = x.shape
    D = C // n_head
    h = _layer_norm_by_hand(x, params["ln_1.weight"], params["ln_1.bias"], eps)
    qkv = h @ params["attn.c_attn.weight"] + params["attn.c_attn.bias"]
    q, k, v = qkv.split(C, dim=2)
    q = q.view(B, T, n_head, D).transpose(1, 2)
    k = k.view(B, T, n_head, D).transpose(1, 2)
    v = v.view(B, T, n_head, D).transpose(1, 2)
    att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(D))
    att = att.masked_fill(torch.tril(torch.ones(T, T)) == 0, float("-inf"))
    att = torch.softmax(att, dim=-1)
    y = (att @ v).transpose(1, 2).contiguous().view(B, T, C)
    x = x + y @ params["attn.c_proj.weight"] + params["attn.c_proj.bias"]
    h = _layer_norm_by_hand(x, params["ln_2.weight"], params["ln_2.bias"], eps)
    h = _gelu_tanh_by_hand(h @ params["mlp.c_fc.weight"] + params["mlp.c_fc.bias"])
    return x + h @ params["mlp.c_proj.weight"] + params["mlp.c_proj.bias"]


def gpt2_block_float64(x, params, n_head, eps=1e-5):
    """Everything in float64, F.layer_norm, one (B, T, 3, H, D) reshape of the fused projection."""
    dt = x.dtype
    x = x.double()
    p = {k: v.double() for k, v in params.items()}
    B, T, C = x.shape
    H, D = n_head, C // n_head
    h = F.layer_norm(x, (C,), p["ln_1.weight"], p["ln_1.bias"], eps)
    qkv = torch.addmm(p["attn.c_attn.bias"], h.reshape(B * T, C), p["attn.c_attn.weight"])
    q, k, v = qkv.view(B, T, 3, H, D).permute(2, 0, 3, 1, 4)  # each (B, H, T, D)
    scores = q @ k.transpose(-1, -2) / math.sqrt(D)
    scores = scores + torch.full((T, T), float("-inf"), dtype=torch.float64).triu(1)
    y = (scores.softmax(-1) @ v).permute(0, 2, 1, 3).reshape(B, T, C)
    x = x + y @ p["attn.c_proj.weight"] + p["attn.c_proj.bias"]
    h = F.layer_norm(x, (C,), p["ln_2.weight"], p["ln_2.bias"], eps)
    h = F.gelu(h @ p["mlp.c_fc.weight"] + p["mlp.c_fc.bias"], approximate="tanh")
    return (x + h @ p["mlp.c_proj.weight"] + p["mlp.c_proj.bias"]).to(dt)


def gpt2_block_einsum_rsqrt(x, params, n_head, eps=1e-5):
    """LayerNorm via torch.var_mean and rsqrt; einsum attention; stable softmax by hand."""
    B, T, C = x.shape
    H, D = n_head, C // n_head

    def ln(z, name):
        var, mean = torch.var_mean(z, dim=-1, keepdim=True, unbiased=False)
        return (z - mean) * torch.rsqrt(var + eps) * params[name + ".weight"] + params[name + ".bias"]

    def conv1d(z, name):
        return torch.einsum("btc,co->bto", z, params[name + ".weight"]) + params[name + ".bias"]

    q, k, v = conv1d(ln(x, "ln_1"), "attn.c_attn").chunk(3, dim=-1)
    q, k, v = (t.reshape(B, T, H, D) for t in (q, k, v))
    s = torch.einsum("bthd,bshd->bhts", q, k) / math.sqrt(D)
    s = torch.where(torch.ones(T, T, dtype=torch.bool).tril(), s, torch.tensor(float("-inf")))
    e = torch.exp(s - s.amax(-1, keepdim=True))
    w = e / e.sum(-1, keepdim=True)
    y = torch.einsum("bhts,bshd->bthd", w, v).reshape(B, T, C)
    x = x + conv1d(y, "attn.c_proj")
    return x + conv1d(F.gelu(conv1d(ln(x, "ln_2"), "mlp.c_fc"), approximate="tanh"), "mlp.c_proj")


def _blocks(params):
    """{layer index: that block's params without the prefix}, from the state-dict keys."""
    layers = {}
    for name, t in params.items():
        if name.startswith("transformer.h."):
            i, rest = name[len("transformer.h."):].split(".", 1)
            layers.setdefault(int(i), {})[rest] = t
    return [layers[i] for i in sorted(layers)]


def gpt2_forward_by_hand(input_ids, params, n_head, eps=1e-5):
    """F.embedding, blocks with the hand-written LayerNorm and GELU, logits via F.linear."""
    T = input_ids.shape[1]
    x = F.embedding(input_ids, params["transformer.wte.weight"]) + \
        F.embedding(torch.arange(T), params["transformer.wpe.weight"])
    for block in _blocks(params):
        x = gpt2_block_by_hand(x, block, n_head, eps)
    x = _layer_norm_by_hand(x, params["transformer.ln_f.weight"], params["transformer.ln_f.bias"], eps)
    return F.linear(x, params["lm_head.weight"])


def gpt2_forward_float64_one_hot(input_ids, params, n_head, eps=1e-5):
    """Embedding as a one-hot matmul; everything in float64."""
    p = {k: v.double() for k, v in params.items()}
    V = p["transformer.wte.weight"].shape[0]
    T = input_ids.shape[1]
    x = F.one_hot(input_ids, V).double() @ p["transformer.wte.weight"] + p["transformer.wpe.weight"][:T]
    for block in _blocks(p):
        x = gpt2_block_float64(x, block, n_head, eps)
    x = F.layer_norm(x, x.shape[-1:], p["transformer.ln_f.weight"], p["transformer.ln_f.bias"], eps)
    return (x @ p["lm_head.weight"].T).float()


def gpt2_forward_einsum(input_ids, params, n_head, eps=1e-5):
    """Counts the layers from the keys, einsum blocks, and tied weights read from wte."""
    x = params["transformer.wte.weight"][input_ids] + params["transformer.wpe.weight"][: input_ids.shape[-1]]
    n_layer = len({k.split(".")[2] for k in params if k.startswith("transformer.h.")})
    for i in range(n_layer):
        block = {k.removeprefix(f"transformer.h.{i}."): v for k, v in params.items()
                 if k.startswith(f"transformer.h.{i}.")}
        x = gpt2_block_einsum_rsqrt(x, block, n_head, eps)
    var, mean = torch.var_mean(x, dim=-1, keepdim=True, unbiased=False)
    x = (x - mean) / torch.sqrt(var + eps) * params["transformer.ln_f.weight"] + params["transformer.ln_f.bias"]
    return torch.einsum("btc,vc->btv", x, params["transformer.wte.weight"])


CORRECT = {
    "check_attention": (attention_large_negative_bias, attention_einsum_float64, attention_scaled_queries_where),
    "check_multi_head_attention": (mha_loop_over_heads, mha_einsum_float64, mha_fused_projection),
    "check_gpt2_block": (gpt2_block_by_hand, gpt2_block_float64, gpt2_block_einsum_rsqrt),
    "check_gpt2_forward": (gpt2_forward_by_hand, gpt2_forward_float64_one_hot, gpt2_forward_einsum),
}


@pytest.mark.parametrize("fn", correct(*CORRECT["check_attention"]))
def test_check_attention_gives_full_marks_to_correct_variants(fn):
    checks.check_attention(fn)


@pytest.mark.parametrize("fn", correct(*CORRECT["check_multi_head_attention"]))
def test_check_multi_head_attention_gives_full_marks_to_correct_variants(fn):
    checks.check_multi_head_attention(fn)


@pytest.mark.parametrize("fn", correct(*CORRECT["check_gpt2_block"]))
def test_check_gpt2_block_gives_full_marks_to_correct_variants(fn):
    checks.check_gpt2_block(fn)


@pytest.mark.parametrize("fn", correct(*CORRECT["check_gpt2_forward"]))
def test_check_gpt2_forward_gives_full_marks_to_correct_variants(fn):
    checks.check_gpt2_forward(fn)


# ----------------------------------------------------------------- planted mistakes: attention

def _scores(q, k, mask, is_causal, scale=None):
    s = q @ k.transpose(-2, -1) * (1 / math.sqrt(q.shape[-1]) if scale is None else scale)
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else s + mask
    if is_causal:
        s = s.masked_fill(~torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool).tril(), float("-inf"))
    return s


def _safe_softmax(s):
    m = s.amax(-1, keepdim=True)
    e = torch.exp(s - torch.where(torch.isfinite(m), m, torch.zeros_like(m)))
    z = e.sum(-1, keepdim=True)
    return e / torch.where(z > 0, z, torch.ones_like(z))


def attn_no_scale(q, k, v, mask=None, is_causal=False):
    return _safe_softmax(_scores(q, k, mask, is_causal, scale=1.0)) @ v


def attn_mask_after_softmax(q, k, v, mask=None, is_causal=False):
    w = _safe_softmax(_scores(q, k, None, False))
    if mask is not None:
        w = w * mask if mask.dtype == torch.bool else w * torch.isfinite(mask)
    if is_causal:
        w = w * torch.ones(q.shape[-2], k.shape[-2]).tril()
    return w @ v


def attn_causal_diagonal_excluded(q, k, v, mask=None, is_causal=False):
    s = _scores(q, k, mask, False)
    if is_causal:
        s = s.masked_fill(~torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool).tril(-1), float("-inf"))
    return _safe_softmax(s) @ v


def attn_naive_softmax(q, k, v, mask=None, is_causal=False):
    e = torch.exp(_scores(q, k, mask, is_causal))
    z = e.sum(-1, keepdim=True)
    return e / torch.where(z > 0, z, torch.ones_like(z)) @ v


def attn_nan_on_fully_masked(q, k, v, mask=None, is_causal=False):
    return torch.softmax(_scores(q, k, mask, is_causal), dim=-1) @ v


def attn_bool_mask_inverted(q, k, v, mask=None, is_causal=False):
    if mask is not None and mask.dtype == torch.bool:
        mask = ~mask
    return _safe_softmax(_scores(q, k, mask, is_causal)) @ v


def attn_ignores_additive_mask(q, k, v, mask=None, is_causal=False):
    if mask is not None and mask.dtype != torch.bool:
        mask = None
    return _safe_softmax(_scores(q, k, mask, is_causal)) @ v


def attn_through_numpy(q, k, v, mask=None, is_causal=False):
    out = _safe_softmax(_scores(q, k, mask, is_causal)) @ v
    return torch.from_numpy(out.detach().numpy().copy())


ATTENTION_MISTAKES = planted(
    (attn_no_scale, r"attention output \(vs F.scaled_dot_product_attention\) for q=\(2, 5, 8\).*seed=0, mask=None"),
    (attn_mask_after_softmax, r"attention output .*seed=0, mask=None, is_causal=True: max"),
    (attn_causal_diagonal_excluded, r"attention output .*mask=None, is_causal=True: max \|got-want\|"),
    (attn_naive_softmax, r"got inf or NaN with large scores; subtract each row's maximum"),
    (attn_nan_on_fully_masked, r"NaN for a query whose keys are all masked"),
    (attn_bool_mask_inverted, r"mask=bool \(True = may attend\): max \|got-want\|"),
    (attn_ignores_additive_mask, r"mask=float \(added to the scores\): max \|got-want\|"),
    (attn_through_numpy, r"what=gradients: the output is not a torch tensor connected to q, k, v by autograd"),
)


@pytest.mark.parametrize("wrong, match", ATTENTION_MISTAKES)
def test_check_attention_rejects(wrong, match):
    with pytest.raises(CheckFailed, match=match):
        checks.check_attention(wrong)


# ----------------------------------------------------------------- planted mistakes: multi-head attention

def _attn(q, k, v, mask=None, is_causal=False, scale=None):
    return _safe_softmax(_scores(q, k, mask, is_causal, scale)) @ v


def _mha(query, key, value, params, n_head, key_padding_mask=None, is_causal=False, batch_first=True, *,
         split="ok", transpose_in=False, kpm_sense=True, head_scale=True, honour_batch_first=True):
    if not batch_first and honour_batch_first:
        query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
    b, t, c = query.shape
    s = key.shape[1]
    d = c // n_head
    w_q, w_k, w_v = params["in_proj_weight"].chunk(3)
    b_q, b_k, b_v = params["in_proj_bias"].chunk(3)
    lin = (lambda x, w, bias: x @ w + bias) if transpose_in else F.linear

    def heads(x, n):
        return x.reshape(b, n_head, n, d) if split == "no transpose" else x.view(b, n, n_head, d).transpose(1, 2)

    q, k, v = heads(lin(query, w_q, b_q), t), heads(lin(key, w_k, b_k), s), heads(lin(value, w_v, b_v), s)
    mask = None
    if key_padding_mask is not None:
        mask = (~key_padding_mask if kpm_sense else key_padding_mask)[:, None, None, :]
    y = _attn(q, k, v, mask, is_causal, scale=None if head_scale else 1 / math.sqrt(c))
    y = y.transpose(1, 2).reshape(b, t, c)
    y = F.linear(y, params["out_proj.weight"], params["out_proj.bias"])
    return y if (batch_first or not honour_batch_first) else y.transpose(0, 1)


def mha_view_without_transpose(query, key, value, params, n_head, key_padding_mask=None, is_causal=False,
                               batch_first=True):
    return _mha(query, key, value, params, n_head, key_padding_mask, is_causal, batch_first, split="no transpose")


def mha_weights_not_transposed(query, key, value, params, n_head, key_padding_mask=None, is_causal=False,
                               batch_first=True):
    return _mha(query, key, value, params, n_head, key_padding_mask, is_causal, batch_first, transpose_in=True)


def mha_padding_mask_inverted(query, key, value, params, n_head, key_padding_mask=None, is_causal=False,
                              batch_first=True):
    return _mha(query, key, value, params, n_head, key_padding_mask, is_causal, batch_first, kpm_sense=False)


def mha_scaled_by_full_width(query, key, value, params, n_head, key_padding_mask=None, is_causal=False,
                             batch_first=True):
    return _mha(query, key, value, params, n_head, key_padding_mask, is_causal, batch_first, head_scale=False)


def mha_ignores_batch_first(query, key, value, params, n_head, key_padding_mask=None, is_causal=False,
                            batch_first=True):
    return _mha(query, key, value, params, n_head, key_padding_mask, is_causal, batch_first,
                honour_batch_first=False)


def mha_no_output_bias(query, key, value, params, n_head, key_padding_mask=None, is_causal=False,
                       batch_first=True):
    p = dict(params)
    p["out_proj.bias"] = torch.zeros_like(params["out_proj.bias"])
    return _mha(query, key, value, p, n_head, key_padding_mask, is_causal, batch_first)


MHA_MISTAKES = planted(
    (mha_view_without_transpose, r"output \(vs nn.MultiheadAttention with the same weights\) for B=2, T=5, C=16"),
    (mha_weights_not_transposed, r"output \(vs nn.MultiheadAttention.*\) for B=2, T=5"),
    (mha_padding_mask_inverted, r"for B=2, T=6, C=8, n_head=2, key_padding_mask=True, batch_first=True"),
    (mha_scaled_by_full_width, r"for B=2, T=5, C=16, n_head=4, self_attention=True"),
    (mha_ignores_batch_first, r"for B=2, T=5, C=16, n_head=4, self_attention=True, batch_first=False"),
    (mha_no_output_bias, r"for B=2, T=5, C=16, n_head=4, self_attention=True, batch_first=True"),
)


@pytest.mark.parametrize("wrong, match", MHA_MISTAKES)
def test_check_multi_head_attention_rejects(wrong, match):
    with pytest.raises(CheckFailed, match=match):
        checks.check_multi_head_attention(wrong)


# ----------------------------------------------------------------- planted mistakes: GPT-2 block

def _ln(x, w, b, eps, *, unbiased=False):
    mu = x.mean(-1, keepdim=True)
    var = x.var(-1, keepdim=True, unbiased=unbiased)
    return (x - mu) / torch.sqrt(var + eps) * w + b


def _block(x, p, n_head, eps=1e-5, *, post_ln=False, gelu="tanh", ln_eps=None, unbiased=False,
           mlp_residual=True, causal=True, c_proj_linear=False, naive_softmax=False):
    b, t, c = x.shape
    d = c // n_head
    e = eps if ln_eps is None else ln_eps

    def proj(z, name):
        w, bias = p[name + ".weight"], p[name + ".bias"]
        return F.linear(z, w, bias) if (c_proj_linear and name == "attn.c_proj") else z @ w + bias  # (C, C): fits

    def attn(z):
        q, k, v = proj(z, "attn.c_attn").split(c, dim=-1)
        q, k, v = (y.view(b, t, n_head, d).transpose(1, 2) for y in (q, k, v))
        s = _scores(q, k, None, causal)
        w = torch.exp(s) / torch.exp(s).sum(-1, keepdim=True) if naive_softmax else _safe_softmax(s)
        return proj((w @ v).transpose(1, 2).reshape(b, t, c), "attn.c_proj")

    def mlp(z):
        h = proj(z, "mlp.c_fc")
        h = F.gelu(h, approximate="tanh") if gelu == "tanh" else F.gelu(h) if gelu == "exact" else torch.relu(h)
        return proj(h, "mlp.c_proj")

    def ln(z, name):
        return _ln(z, p[name + ".weight"], p[name + ".bias"], e, unbiased=unbiased)

    if post_ln:
        x = ln(x + attn(x), "ln_1")
        return ln(x + mlp(x), "ln_2")
    x = x + attn(ln(x, "ln_1"))
    return (x if mlp_residual else 0) + mlp(ln(x, "ln_2"))


def block_post_ln(x, params, n_head, eps=1e-5):
    return _block(x, params, n_head, eps, post_ln=True)


def block_exact_gelu(x, params, n_head, eps=1e-5):
    return _block(x, params, n_head, eps, gelu="exact")


def block_layernorm_without_eps(x, params, n_head, eps=1e-5):
    return _block(x, params, n_head, eps, ln_eps=0.0)


def block_unbiased_variance(x, params, n_head, eps=1e-5):
    return _block(x, params, n_head, eps, unbiased=True)


def block_missing_mlp_residual(x, params, n_head, eps=1e-5):
    return _block(x, params, n_head, eps, mlp_residual=False)


def block_not_causal(x, params, n_head, eps=1e-5):
    return _block(x, params, n_head, eps, causal=False)


def block_c_proj_weights_untransposed(x, params, n_head, eps=1e-5):
    return _block(x, params, n_head, eps, c_proj_linear=True)


def block_naive_softmax(x, params, n_head, eps=1e-5):
    return _block(x, params, n_head, eps, naive_softmax=True)


def block_all_conv1d_as_linear(x, params, n_head, eps=1e-5):
    c = x.shape[-1]
    h = F.layer_norm(x, (c,), params["ln_1.weight"], params["ln_1.bias"], eps)
    qkv = F.linear(h, params["attn.c_attn.weight"], params["attn.c_attn.bias"])  # (C, 3C) used as (out, in)
    return x + qkv[..., :c]


BLOCK_MISTAKES = planted(
    (block_post_ln, r"block output \(vs transformers GPT2Block\) for B=2, T=16, C=32, n_head=4, eps=1e-05, seed=0"),
    (block_exact_gelu, r"block output \(vs transformers GPT2Block\) for B=2, T=16.*the MLP uses the exact GELU"),
    (block_layernorm_without_eps, r"block output \(vs transformers GPT2Block\) for B=2, T=16, C=32"),
    (block_unbiased_variance, r"block output \(vs transformers GPT2Block\) for B=2, T=16"),
    (block_missing_mlp_residual, r"block output \(vs transformers GPT2Block\) for B=2, T=16"),
    (block_not_causal, r"block output \(vs transformers GPT2Block\) for B=2, T=16"),
    (block_c_proj_weights_untransposed, r"block output \(vs transformers GPT2Block\) for B=2, T=16"),
    (block_naive_softmax, r"got inf or NaN with large attention scores"),
    (block_all_conv1d_as_linear, r"raised RuntimeError: .*for B=2, T=16"),
)


@pytest.mark.parametrize("wrong, match", BLOCK_MISTAKES)
def test_check_gpt2_block_rejects(wrong, match):
    with pytest.raises(CheckFailed, match=match):
        checks.check_gpt2_block(wrong)


# ----------------------------------------------------------------- planted mistakes: the whole GPT-2

def _forward(input_ids, params, n_head, eps=1e-5, *, positions=True, ln_f=True, block=None, fixed_eps=False,
             only_first_layer=False):
    t = input_ids.shape[1]
    x = params["transformer.wte.weight"][input_ids]
    if positions:
        x = x + params["transformer.wpe.weight"][:t]
    eps = 1e-5 if fixed_eps else eps
    n_layer = 1 + max(int(k.split(".")[2]) for k in params if k.startswith("transformer.h."))
    for i in range(1 if only_first_layer else n_layer):
        prefix = f"transformer.h.{i}."
        x = (block or _block)(x, {k[len(prefix):]: v for k, v in params.items() if k.startswith(prefix)}, n_head, eps)
    if ln_f:
        x = F.layer_norm(x, (x.shape[-1],), params["transformer.ln_f.weight"], params["transformer.ln_f.bias"], eps)
    return x @ params["lm_head.weight"].T


def fwd_no_position_embedding(input_ids, params, n_head, eps=1e-5):
    return _forward(input_ids, params, n_head, eps, positions=False)


def fwd_no_final_layernorm(input_ids, params, n_head, eps=1e-5):
    return _forward(input_ids, params, n_head, eps, ln_f=False)


def fwd_exact_gelu(input_ids, params, n_head, eps=1e-5):
    return _forward(input_ids, params, n_head, eps, block=block_exact_gelu)


def fwd_ignores_eps(input_ids, params, n_head, eps=1e-5):
    return _forward(input_ids, params, n_head, eps, fixed_eps=True)


def fwd_only_first_layer(input_ids, params, n_head, eps=1e-5):
    return _forward(input_ids, params, n_head, eps, only_first_layer=True)


def fwd_post_ln_blocks(input_ids, params, n_head, eps=1e-5):
    return _forward(input_ids, params, n_head, eps, block=block_post_ln)


FORWARD_MISTAKES = planted(
    (fwd_no_position_embedding, r"logits \(vs transformers GPT2LMHeadModel\) for B=2, T=16, V=50"),
    (fwd_no_final_layernorm, r"logits \(vs transformers GPT2LMHeadModel\) for B=2, T=16, V=50"),
    (fwd_exact_gelu, r"logits \(vs transformers GPT2LMHeadModel\) for B=2, T=16, V=50"),
    (fwd_ignores_eps, r"logits .*eps=0.001"),
    (fwd_only_first_layer, r"logits \(vs transformers GPT2LMHeadModel\) for B=2, T=16, V=50, C=32, n_layer=2"),
    (fwd_post_ln_blocks, r"logits \(vs transformers GPT2LMHeadModel\) for B=2, T=16"),
)


@pytest.mark.parametrize("wrong, match", FORWARD_MISTAKES)
def test_check_gpt2_forward_rejects(wrong, match):
    with pytest.raises(CheckFailed, match=match):
        checks.check_gpt2_forward(wrong)


def test_planted_helpers_are_right_when_not_broken():
    """The planted mistakes differ from a correct implementation only in their one mistake."""
    checks.check_attention(lambda q, k, v, mask=None, is_causal=False: _attn(q, k, v, mask, is_causal))
    checks.check_gpt2_block(lambda x, params, n_head, eps=1e-5: _block(x, params, n_head, eps))
    checks.check_gpt2_forward(lambda input_ids, params, n_head, eps=1e-5: _forward(input_ids, params, n_head, eps))


# ----------------------------------------------------------------- the guard

SETUP = "import math\nimport torch\nimport torch.nn.functional as F\n"


def test_guard_catches_torch_sdpa():
    ns = kernel(SETUP, "def scaled_dot_product_attention(q, k, v, mask=None, is_causal=False):\n"
                "    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal)\n")
    with pytest.raises(ForbiddenCall, match=r"scaled_dot_product_attention uses F.scaled_dot_product_attention"):
        checks.check_attention(ns["scaled_dot_product_attention"])


def test_guard_catches_torch_sdpa_at_run_time_without_source():
    ns = kernel(SETUP, "def scaled_dot_product_attention(q, k, v, mask=None, is_causal=False):\n"
                "    f = getattr(F, 'scaled_dot_product_' + 'attention')\n"
                "    return f(q, k, v, attn_mask=mask, is_causal=is_causal)\n", keep_source=False)
    fn = ns["scaled_dot_product_attention"]
    assert static_violations(fn, callables=checks.ATTENTION.callables) == []
    with pytest.raises(ForbiddenCall, match=r"your code called .*scaled_dot_product_attention at "):
        checks.check_attention(fn)


def test_guard_catches_nn_multiheadattention():
    ns = kernel(SETUP, "def multi_head_attention(query, key, value, params, n_head, key_padding_mask=None,\n"
                "                         is_causal=False, batch_first=True):\n"
                "    m = torch.nn.MultiheadAttention(query.shape[-1], n_head, batch_first=batch_first)\n"
                "    m.load_state_dict(params)\n"
                "    return m(query, key, value, key_padding_mask=key_padding_mask, need_weights=False)[0]\n")
    with pytest.raises(ForbiddenCall, match=r"multi_head_attention uses torch.nn.MultiheadAttention"):
        checks.check_multi_head_attention(ns["multi_head_attention"])


def test_guard_catches_transformers_in_a_helper():
    ns = kernel(SETUP + "from transformers.models.gpt2.modeling_gpt2 import GPT2Block\n",
                "def _hf_block(x, params, n_head, eps):\n"
                "    return GPT2Block\n",
                "def gpt2_block(x, params, n_head, eps=1e-5):\n"
                "    _hf_block(x, params, n_head, eps)\n"
                "    return x\n")
    with pytest.raises(ForbiddenCall, match=r"_hf_block uses GPT2Block \(from transformers\)"):
        checks.check_gpt2_block(ns["gpt2_block"])


def test_guard_catches_the_course_gpt():
    ns = kernel(SETUP, "def gpt2_forward(input_ids, params, n_head, eps=1e-5):\n"
                "    from llmcourse.gpt import GPT\n"
                "    return None\n")
    with pytest.raises(ForbiddenCall, match=r"gpt2_forward imports from llmcourse.gpt"):
        checks.check_gpt2_forward(ns["gpt2_forward"])


def test_guard_lets_the_solutions_and_the_correct_variants_through():
    for task in checks.TASKS:
        for fn in (solution_of(ASSIGNMENT)[task.name], *CORRECT[task.check]):
            assert static_violations(fn, modules=task.modules, callables=task.callables) == [], fn.__name__


# ----------------------------------------------------------------- under a course secret

SECRETS = ("course secret A", "another secret", "3")
MISTAKES = {"check_attention": ATTENTION_MISTAKES, "check_multi_head_attention": MHA_MISTAKES,
            "check_gpt2_block": BLOCK_MISTAKES, "check_gpt2_forward": FORWARD_MISTAKES}


def test_checks_are_deterministic_and_the_secret_changes_them(monkeypatch):
    public = checks._attention_cases()
    assert all(torch.equal(x, y) for a, b in zip(public, checks._attention_cases()) for x, y in zip(a[1:4], b[1:4]))
    monkeypatch.setenv("AUTOGRADER_SECRET", SECRETS[0])
    hidden = checks._attention_cases()
    assert [c[0] for c in hidden] == [c[0] for c in public], "the same cases, described the same way"
    assert not any(torch.equal(a[1], b[1]) for a, b in zip(public, hidden)), "the secret should change the inputs"


@pytest.mark.parametrize("secret", SECRETS)
def test_fully_masked_rows_are_exactly_the_ones_described(monkeypatch, secret):
    monkeypatch.setenv("AUTOGRADER_SECRET", secret)
    inputs, *_, mask, _ = next(c for c in checks._attention_cases() if "fully masked" in str(c[0]["mask"]))
    assert (~mask.any(dim=-1)).nonzero().tolist() == [[0, 1], [1, 3]], inputs


@pytest.mark.parametrize("secret", SECRETS)
def test_checks_hold_under_several_course_secrets(monkeypatch, secret):
    """With a secret the inputs change; the solution and the correct variants still pass, mistakes fail."""
    monkeypatch.setenv("AUTOGRADER_SECRET", secret)
    assert_checks_hold(ASSIGNMENT, checks, checks.TASKS, CORRECT, MISTAKES)
