"""The chapter 6 checks have teeth: the shipped solution passes, planted mistakes fail.

The solution functions come from the nbgrader source notebook (setup and answer cells, run as
a notebook kernel would). Each wrong implementation below is a mistake a student could
plausibly make; each must make its check raise CheckFailed with a message naming what differs.
"""

from __future__ import annotations

import math
from pathlib import Path

import nbformat
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from autograder.checks import ch06_transformers as checks
from autograder.compare import CheckFailed
from autograder.guard import ForbiddenCall, static_violations
from tests.notebook_kernel import (
    assert_hidden_tests_call_checks,
    kernel,
    planted,
    solution_namespace,
)

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

NOTEBOOK = Path(__file__).resolve().parents[1] / "solutions" / ASSIGNMENT / f"{ASSIGNMENT}.ipynb"
GRADE_IDS = {
    "ch06_attention": ("attention", "scaled_dot_product_attention"),
    "ch06_multi_head_attention": ("multi_head_attention", "multi_head_attention"),
    "ch06_gpt2_block": ("gpt2_block", "gpt2_block"),
    "ch06_gpt2_forward": ("gpt2_forward", "gpt2_forward"),
}


@pytest.fixture(scope="module")
def notebook():
    return nbformat.read(NOTEBOOK, as_version=4)


@pytest.fixture(scope="module")
def solution() -> dict:
    return solution_namespace(NOTEBOOK)


def test_notebook_grade_ids_call_their_hidden_checks(notebook):
    assert_hidden_tests_call_checks(notebook, GRADE_IDS)


@pytest.mark.parametrize("grade_id", list(GRADE_IDS))
def test_solution_passes_check(solution, grade_id):
    task, fn = GRADE_IDS[grade_id]
    getattr(checks, f"check_{task}")(solution[fn])


def test_guard_lets_the_solution_through(solution):
    for _, name in GRADE_IDS.values():
        assert static_violations(solution[name], modules=checks.FORBIDDEN_MODULES,
                                 callables=checks.FORBIDDEN_CALLABLES) == [], name


# ----------------------------------------------------------------- the references

def test_reference_attention_combines_mask_and_causal():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 4, 8, generator=g) for _ in range(3))
    mask = torch.ones(4, 4, dtype=torch.bool)
    mask[:, 0] = False
    mask[0, 0] = True
    want = F.scaled_dot_product_attention(q, k, v, attn_mask=mask & torch.ones(4, 4, dtype=torch.bool).tril())
    torch.testing.assert_close(checks.reference_attention(q, k, v, mask, True), want)


def test_reference_gives_zeros_for_fully_masked_rows():
    """The documented expectation: torch's SDPA returns zeros where a query may attend nothing."""
    q, k, v = torch.randn(1, 2, 4), torch.randn(1, 3, 4), torch.randn(1, 3, 4)
    mask = torch.tensor([[True, False, True], [False, False, False]])
    out = checks.reference_attention(q, k, v, mask)
    assert torch.equal(out[0, 1], torch.zeros(4))


def test_block_reference_is_block_zero_of_the_model():
    model = checks.hf_gpt2(0, **checks.GPT2_SIZES[0])
    idx = torch.randint(0, 50, (2, 7), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        hs = model(idx, output_hidden_states=True).hidden_states
    torch.testing.assert_close(checks._block_reference(model, hs[0]), hs[1])


def test_hf_weights_make_gelu_form_matter():
    """With the checks' weight scale, exact and tanh GELU differ far beyond the tolerance."""
    model = checks.hf_gpt2(0, **checks.GPT2_SIZES[0])
    x = torch.randn(2, 16, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        pre = F.layer_norm(x, (32,)) @ model.transformer.h[0].mlp.c_fc.weight
    assert (F.gelu(pre) - F.gelu(pre, approximate="tanh")).abs().max() > 1e-4


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


@pytest.mark.parametrize("wrong, match", planted(
    (attn_no_scale, r"attention output \(vs F.scaled_dot_product_attention\) for q=\(2, 5, 8\).*seed=0, mask=None"),
    (attn_mask_after_softmax, r"attention output .*seed=0, mask=None, is_causal=True: max"),
    (attn_causal_diagonal_excluded, r"attention output .*mask=None, is_causal=True: max \|got-want\|"),
    (attn_naive_softmax, r"got inf or NaN with large scores; subtract each row's maximum"),
    (attn_nan_on_fully_masked, r"NaN for a query whose keys are all masked"),
    (attn_bool_mask_inverted, r"mask=bool \(True = may attend\): max \|got-want\|"),
    (attn_ignores_additive_mask, r"mask=float \(added to the scores\): max \|got-want\|"),
    (attn_through_numpy, r"what=gradients: the output is not a torch tensor connected to q, k, v by autograd"),
))
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


@pytest.mark.parametrize("wrong, match", planted(
    (mha_view_without_transpose, r"output \(vs nn.MultiheadAttention with the same weights\) for B=2, T=5, C=16"),
    (mha_weights_not_transposed, r"output \(vs nn.MultiheadAttention.*\) for B=2, T=5"),
    (mha_padding_mask_inverted, r"for B=2, T=6, C=8, n_head=2, key_padding_mask=True, batch_first=True"),
    (mha_scaled_by_full_width, r"for B=2, T=5, C=16, n_head=4, self_attention=True"),
    (mha_ignores_batch_first, r"for B=2, T=5, C=16, n_head=4, self_attention=True, batch_first=False"),
    (mha_no_output_bias, r"for B=2, T=5, C=16, n_head=4, self_attention=True, batch_first=True"),
))
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


@pytest.mark.parametrize("wrong, match", planted(
    (block_post_ln, r"block output \(vs transformers GPT2Block\) for B=2, T=16, C=32, n_head=4, eps=1e-05, seed=0"),
    (block_exact_gelu, r"block output \(vs transformers GPT2Block\) for B=2, T=16"),
    (block_layernorm_without_eps, r"block output \(vs transformers GPT2Block\) for B=2, T=16, C=32"),
    (block_unbiased_variance, r"block output \(vs transformers GPT2Block\) for B=2, T=16"),
    (block_missing_mlp_residual, r"block output \(vs transformers GPT2Block\) for B=2, T=16"),
    (block_not_causal, r"block output \(vs transformers GPT2Block\) for B=2, T=16"),
    (block_c_proj_weights_untransposed, r"block output \(vs transformers GPT2Block\) for B=2, T=16"),
    (block_naive_softmax, r"got inf or NaN with large attention scores"),
    (block_all_conv1d_as_linear, r"raised RuntimeError: .*for B=2, T=16"),
))
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


@pytest.mark.parametrize("wrong, match", planted(
    (fwd_no_position_embedding, r"logits \(vs transformers GPT2LMHeadModel\) for B=2, T=16, V=50"),
    (fwd_no_final_layernorm, r"logits \(vs transformers GPT2LMHeadModel\) for B=2, T=16, V=50"),
    (fwd_exact_gelu, r"logits \(vs transformers GPT2LMHeadModel\) for B=2, T=16, V=50"),
    (fwd_ignores_eps, r"logits .*eps=0.001"),
    (fwd_only_first_layer, r"logits \(vs transformers GPT2LMHeadModel\) for B=2, T=16, V=50, C=32, n_layer=2"),
    (fwd_post_ln_blocks, r"logits \(vs transformers GPT2LMHeadModel\) for B=2, T=16"),
))
def test_check_gpt2_forward_rejects(wrong, match):
    with pytest.raises(CheckFailed, match=match):
        checks.check_gpt2_forward(wrong)


def test_planted_helpers_are_right_when_not_broken(solution):
    """The planted mistakes differ from the solution only in their one mistake."""
    checks.check_attention(lambda q, k, v, mask=None, is_causal=False: _attn(q, k, v, mask, is_causal))
    checks.check_gpt2_block(lambda x, params, n_head, eps=1e-5: _block(x, params, n_head, eps))


# ----------------------------------------------------------------- blank release and the guard

@pytest.mark.parametrize("grade_id", list(GRADE_IDS))
def test_blank_release_is_explained(grade_id):
    def stub(*args, **kwargs):
        raise NotImplementedError()

    with pytest.raises(CheckFailed, match=r"NotImplementedError.*replace `raise NotImplementedError\(\)`"):
        getattr(checks, f"check_{GRADE_IDS[grade_id][0]}")(stub)


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
    assert static_violations(fn, callables=checks.FORBIDDEN_CALLABLES) == []
    with pytest.raises(ForbiddenCall, match=r"your code called .*scaled_dot_product_attention while it ran"):
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


def test_checks_are_deterministic(solution):
    cases_a = checks._attention_cases()
    cases_b = checks._attention_cases()
    for a, b in zip(cases_a, cases_b):
        assert all(torch.equal(x, y) for x, y in zip(a[1:4], b[1:4]))
    assert np.isfinite(cases_a[-1][1].numpy()).all()
