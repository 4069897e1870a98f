"""Hidden checks for the chapter 6 exercise: attention, multi-head attention, a GPT-2 block, a GPT-2.

References, all computed live in float64 (:mod:`autograder.checks._ch06_references`):

* ``scaled_dot_product_attention`` - ``torch.nn.functional.scaled_dot_product_attention``
  (boolean and additive masks, causal masking, a mask and ``is_causal`` together,
  fully masked rows, length-1 sequences, huge scores) and its gradients;
* ``multi_head_attention`` - ``torch.nn.MultiheadAttention`` with the same weights, for
  ``batch_first`` True and False, self- and cross-attention, key padding, causal masks;
* ``gpt2_block`` - block 0 of a ``transformers.GPT2LMHeadModel`` (eager attention) built from
  small ``GPT2Config``s with random weights, fed the block's HF state-dict entries;
* ``gpt2_forward`` - the logits of the whole ``GPT2LMHeadModel``, fed its ``state_dict()``.

The student gets the float32 weights; the reference is the same model converted to float64.

Expected output of a query that may attend no key at all (every key masked): a zero vector,
which is what ``F.scaled_dot_product_attention`` returns in the installed PyTorch (older
versions and ``nn.MultiheadAttention``'s fast path give NaN there). In multi-head attention the
output projection then gives its bias.

Taught in: book/06-attention-transformers
"""

from __future__ import annotations

import math

import numpy as np
import torch

from autograder.checks._ch06_references import (
    block_params,
    block_reference,
    block_with_exact_gelu,
    hf_gpt2,
    mha_reference,
    reference_attention,
)
from autograder.compare import assert_close, describe, fail, probe_result, to_array
from autograder.guard import call_student, run_probe
from autograder.secret import hidden_torch_generator
from autograder.spec import Task

RULES = dict(
    modules=("transformers", "llmcourse.gpt", "llmcourse.attention"),
    callables=("torch.nn.functional.scaled_dot_product_attention", "torch.nn.functional.multi_head_attention_forward",
               "torch.nn.MultiheadAttention", "torch.nn.Transformer", "torch.nn.TransformerEncoderLayer",
               "torch.nn.TransformerDecoderLayer", "torch.nn.TransformerEncoder", "torch.nn.TransformerDecoder"),
)
ATTENTION, MHA, BLOCK, FORWARD = TASKS = (
    Task("ch06_attention", "scaled_dot_product_attention(q, k, v, mask=None, is_causal=False)", 4,
         "`(..., T, Dv)`", "`torch.nn.functional.scaled_dot_product_attention` in float64, and its gradients",
         **RULES),
    Task("ch06_multi_head_attention", "multi_head_attention(query, key, value, params, n_head, "
         "key_padding_mask=None, is_causal=False, batch_first=True)", 4, "`(B, T, C)` (or `(T, B, C)`)",
         "`torch.nn.MultiheadAttention` with the same weights, in float64", **RULES),
    Task("ch06_gpt2_block", "gpt2_block(x, params, n_head, eps=1e-5)", 4, "`(B, T, C)`",
         "block 0 of `transformers.GPT2LMHeadModel` with the same weights, in float64", **RULES),
    Task("ch06_gpt2_forward", "gpt2_forward(input_ids, params, n_head, eps=1e-5)", 4, "logits `(B, T, V)`",
         "`transformers.GPT2LMHeadModel` with the same weights, in float64", **RULES),
)
# Tolerances from the spread of correct float32 implementations against the float64 references:
# the solution and 3 rewrites per task (hand-written LayerNorm, GELU and softmax, einsum, float64
# inside, -1e9 masking, a loop over heads), 20 course secrets x every case. Largest
# |got - want| / (1 + |want|): attention 3.4e-07 (its gradients 2.9e-07), multi-head attention
# 5.3e-07, GPT-2 block 1.2e-06 -> TOL 1e-5 (9x). Scores of |q k| / sqrt(D) ~ 1e3 lose ~1e3 * 2**-24
# before the softmax: attention 8.3e-06, GPT-2 block 1.9e-05 there -> 2e-4 (10x). GPT-2 logits
# (typically 5, up to 40 in size, after up to 3 blocks): 6.9e-06 -> 1e-4 (15x). The nearest planted
# mistakes stay far outside: exact instead of tanh GELU 4.6e-04 in a block, 2.6e-03 in the logits.
TOL = dict(rtol=1e-5, atol=1e-5)
TOL_LARGE_SCORES = dict(rtol=2e-4, atol=2e-4)
TOL_LOGITS = dict(rtol=1e-4, atol=1e-4)


def _tensor(value, *, what: str, inputs: dict, shape: tuple) -> np.ndarray:
    """The returned value as a float array of the expected shape (a clear message otherwise)."""
    arr = to_array(value, what=what, inputs=inputs)
    if arr.shape != tuple(shape):
        fail(f"{what}{describe(inputs)}: shape {tuple(arr.shape)} but expected {tuple(shape)}")
    return arr.astype(np.float64)


# ----------------------------------------------------------------- probes (run beside the student's code)

def attention_gradient_probe(student_fn, q, k, v, mask, is_causal, weight):
    """Gradients of sum(weight * student_fn(q, k, v, mask, is_causal)) with respect to q, k, v."""
    q, k, v = (t.clone().requires_grad_(True) for t in (q, k, v))
    out = student_fn(q, k, v, mask=mask, is_causal=is_causal)
    if not isinstance(out, torch.Tensor) or not out.requires_grad:
        return {"problem": "the output is not a torch tensor connected to q, k, v by autograd: keep the "
                           "computation in torch (no .detach(), .numpy(), .item() or new tensors built from values)"}
    (out * weight).sum().backward()
    return {name: (t.grad.detach().clone() if t.grad is not None else torch.zeros_like(t))
            for name, t in (("q", q), ("k", k), ("v", v))}


# ----------------------------------------------------------------- attention

def _attention_cases():
    """(inputs, q, k, v, mask, is_causal): shapes, masks, edge cases."""
    cases = []
    for seed, (shape_q, s, dv) in enumerate((((2, 5, 8), 5, 8), ((3, 2, 4, 16), 6, 16), ((1, 7, 4), 3, 5),
                                             ((2, 1, 1, 8), 1, 8))):
        g = hidden_torch_generator(seed, "ch06.attention")
        q = torch.randn(*shape_q, generator=g)
        k = torch.randn(*shape_q[:-2], s, shape_q[-1], generator=g)
        v = torch.randn(*shape_q[:-2], s, dv, generator=g)
        t = shape_q[-2]
        base = {"q": tuple(q.shape), "k": tuple(k.shape), "v": tuple(v.shape), "seed": seed}
        cases.append(({**base, "mask": None}, q, k, v, None, False))
        cases.append(({**base, "mask": None, "is_causal": True}, q, k, v, None, True))
        allowed = torch.rand(*shape_q[:-2], t, s, generator=g) > 0.3
        allowed[..., 0] = True  # every query may attend key 0
        cases.append(({**base, "mask": "bool (True = may attend)"}, q, k, v, allowed, False))
        additive = torch.randn(*shape_q[:-2], t, s, generator=g)
        cases.append(({**base, "mask": "float (added to the scores)"}, q, k, v, additive, False))
        blocked = additive.masked_fill(~allowed, float("-inf"))
        cases.append(({**base, "mask": "float with -inf entries"}, q, k, v, blocked, False))
        cases.append(({**base, "mask": "bool (T, S), broadcast"}, q, k, v, allowed.reshape(-1, t, s)[0], False))
        cases.append(({**base, "mask": "bool", "is_causal": True}, q, k, v, allowed, True))
    g = hidden_torch_generator(10, "ch06.attention")
    q, k, v = torch.randn(2, 4, 8, generator=g), torch.randn(2, 6, 8, generator=g), torch.randn(2, 6, 8, generator=g)
    none = torch.rand(2, 4, 6, generator=g) > 0.5
    none[..., 0] |= ~none.any(dim=-1)  # only the two rows below may attend nothing
    none[0, 1] = False
    none[1, 3] = False
    none[0, 0] = True
    base = {"q": (2, 4, 8), "k": (2, 6, 8), "seed": 10}
    cases.append(({**base, "mask": "bool with fully masked rows [0, 1] and [1, 3]"}, q, k, v, none, False))
    inf_rows = torch.zeros(2, 4, 6).masked_fill(~none, float("-inf"))
    cases.append(({**base, "mask": "float, rows [0, 1] and [1, 3] all -inf"}, q, k, v, inf_rows, False))
    g = hidden_torch_generator(11, "ch06.attention")
    q, k, v = 30.0 * torch.randn(2, 5, 8, generator=g), 30.0 * torch.randn(2, 5, 8, generator=g), \
        torch.randn(2, 5, 8, generator=g)
    cases.append(({"q": (2, 5, 8), "seed": 11, "scores": "large (|q k| / sqrt(D) up to ~1e3)"}, q, k, v, None, False))
    cases.append(({"q": (2, 5, 8), "seed": 11, "scores": "large", "is_causal": True}, q, k, v, None, True))
    return cases


def _attention_mistakes(q, k, v, mask, is_causal) -> list:
    hints = [("the scores are not divided by sqrt(D)",
              lambda: reference_attention(q * math.sqrt(q.shape[-1]), k, v, mask, is_causal))]
    if mask is not None and mask.dtype == torch.bool:
        hints.append(("the boolean mask is read the wrong way round: True means the query MAY attend the key",
                      lambda: reference_attention(q, k, v, ~mask, is_causal)))
    if is_causal:
        hints.append(("is_causal is ignored", lambda: reference_attention(q, k, v, mask, False)))
    return hints


def check_attention(student_fn) -> None:
    """scaled_dot_product_attention(q, k, v, mask=None, is_causal=False) equals F.scaled_dot_product_attention."""
    for inputs, q, k, v, mask, is_causal in _attention_cases():
        want = reference_attention(q, k, v, mask, is_causal)
        got = call_student(student_fn, q.clone(), k.clone(), v.clone(), mask=None if mask is None else mask.clone(),
                           is_causal=is_causal, task=ATTENTION, inputs=inputs)
        got = _tensor(got, what="attention output", inputs=inputs, shape=want.shape)
        if "fully masked" in str(inputs.get("mask")) or "-inf" in str(inputs.get("mask")):
            if np.isnan(got).any():
                fail(f"attention output{describe(inputs)}: NaN for a query whose keys are all masked; "
                     f"F.scaled_dot_product_attention returns zeros there (softmax over only -inf is 0/0: "
                     f"give such rows zero weights)")
        large = "large" in str(inputs.get("scores"))
        if large and not np.isfinite(got).all():
            fail(f"attention output{describe(inputs)}: got inf or NaN with large scores; subtract each "
                 f"row's maximum score before exp (softmax is unchanged by a shift)")
        assert_close(got, want, what="attention output (vs F.scaled_dot_product_attention)", inputs=inputs,
                     hints=_attention_mistakes(q, k, v, mask, is_causal), **(TOL_LARGE_SCORES if large else TOL))
    # gradients, through the student's function
    g = hidden_torch_generator(20, "ch06.attention")
    q, k, v = torch.randn(2, 2, 5, 8, generator=g), torch.randn(2, 2, 5, 8, generator=g), \
        torch.randn(2, 2, 5, 6, generator=g)
    weight = torch.randn(2, 2, 5, 6, generator=g)
    pad = torch.tensor([[True, True, True, False, True]])  # (1, S)
    for mask, is_causal, desc in ((None, True, None), (pad, False, "bool, key 3 masked")):
        inputs = {"q": (2, 2, 5, 8), "v": (2, 2, 5, 6), "seed": 20, "mask": desc, "is_causal": is_causal,
                  "what": "gradients"}
        got = probe_result(run_probe(attention_gradient_probe, student_fn, q, k, v, mask, is_causal, weight,
                                     task=ATTENTION, inputs=inputs), what=ATTENTION.name, inputs=inputs)
        qs, ks, vs = (t.double().requires_grad_(True) for t in (q, k, v))
        (reference_attention(qs, ks, vs, mask, is_causal) * weight.double()).sum().backward()
        for name, ref in (("q", qs.grad), ("k", ks.grad), ("v", vs.grad)):
            assert_close(got.get(name), ref, what=f"gradient with respect to {name}", inputs=inputs, **TOL)


# ----------------------------------------------------------------- multi-head attention

def _mha_cases():
    """(inputs, B, T, S, C, H, self_attention, key_padding, is_causal)."""
    return [
        ({"B": 2, "T": 5, "C": 16, "n_head": 4, "self_attention": True}, 2, 5, 5, 16, 4, True, False, False),
        ({"B": 3, "T": 4, "S": 6, "C": 12, "n_head": 3, "cross_attention": True}, 3, 4, 6, 12, 3, False, False, False),
        ({"B": 2, "T": 6, "C": 8, "n_head": 2, "key_padding_mask": True}, 2, 6, 6, 8, 2, True, True, False),
        ({"B": 2, "T": 5, "C": 16, "n_head": 8, "is_causal": True}, 2, 5, 5, 16, 8, True, False, True),
        ({"B": 3, "T": 7, "C": 24, "n_head": 6, "key_padding_mask": True, "is_causal": True},
         3, 7, 7, 24, 6, True, True, True),
        ({"B": 2, "T": 1, "C": 8, "n_head": 2, "length": 1}, 2, 1, 1, 8, 2, True, False, True),
        ({"B": 1, "T": 4, "C": 6, "n_head": 1, "one head": True}, 1, 4, 4, 6, 1, True, False, False),
    ]


def _call_mha(student_fn, query, key, value, params, n_head, kpm, causal, batch_first, inputs):
    return call_student(student_fn, query, key, value, {k: v.clone() for k, v in params.items()}, n_head,
                        key_padding_mask=None if kpm is None else kpm.clone(), is_causal=causal,
                        batch_first=batch_first, task=MHA, inputs=inputs)


def check_multi_head_attention(student_fn) -> None:
    """multi_head_attention(query, key, value, params, n_head, ...) equals nn.MultiheadAttention."""
    for seed, (case, b, t, s, c, h, self_attn, padded, causal) in enumerate(_mha_cases()):
        for batch_first in (True, False):
            inputs = {**case, "batch_first": batch_first, "seed": seed}
            g = hidden_torch_generator(seed, "ch06.multi_head_attention")
            mha, params = mha_reference(c, h, batch_first, g)
            query = torch.randn(b, t, c, generator=g)
            key = query if self_attn else torch.randn(b, s, c, generator=g)
            value = query if self_attn else torch.randn(b, s, c, generator=g)
            kpm = None
            if padded:
                kpm = torch.zeros(b, s, dtype=torch.bool)
                kpm[0, -2:] = True  # the last two keys of sequence 0 are padding
            attn_mask = ~torch.ones(t, s, dtype=torch.bool).tril() if causal else None
            tr = (lambda z: z) if batch_first else (lambda z: z.transpose(0, 1).contiguous())
            with torch.no_grad():
                want = mha(tr(query).double(), tr(key).double(), tr(value).double(), key_padding_mask=kpm,
                           attn_mask=attn_mask, need_weights=False)[0]
            got = _call_mha(student_fn, tr(query), tr(key), tr(value), params, h, kpm, causal, batch_first, inputs)
            got = _tensor(got, what="output", inputs=inputs, shape=want.shape)
            assert_close(got, want, what="output (vs nn.MultiheadAttention with the same weights)",
                         inputs=inputs, **TOL)
    # a sequence whose keys are all padding: zero attention, so the output is out_proj's bias
    inputs = {"B": 2, "T": 3, "C": 8, "n_head": 2, "key_padding_mask": "sequence 1 all padding",
              "batch_first": True, "seed": 30}
    g = hidden_torch_generator(30, "ch06.multi_head_attention")
    mha, params = mha_reference(8, 2, True, g)
    x = torch.randn(2, 3, 8, generator=g)
    kpm = torch.tensor([[False, False, True], [True, True, True]])
    with torch.no_grad():
        x1 = x[:1].double()
        want = torch.cat([mha(x1, x1, x1, key_padding_mask=kpm[:1], need_weights=False)[0],
                          params["out_proj.bias"].double().expand(1, 3, 8)])
    got = _call_mha(student_fn, x.clone(), x.clone(), x.clone(), params, 2, kpm, False, True, inputs)
    got = _tensor(got, what="output", inputs=inputs, shape=want.shape)
    if np.isnan(got).any():
        fail(f"output{describe(inputs)}: NaN for a sequence whose keys are all padding; expected zero "
             f"attention (as F.scaled_dot_product_attention gives), so the output is out_proj.bias")
    assert_close(got, want, what="output", inputs=inputs, **TOL)


# ----------------------------------------------------------------- GPT-2

GPT2_SIZES = (
    dict(vocab_size=50, n_positions=16, n_embd=32, n_layer=2, n_head=4),
    dict(vocab_size=97, n_positions=8, n_embd=24, n_layer=1, n_head=3, layer_norm_epsilon=1e-3),
    dict(vocab_size=31, n_positions=12, n_embd=16, n_layer=3, n_head=1),
    dict(vocab_size=64, n_positions=10, n_embd=48, n_layer=2, n_head=8),
)


def check_gpt2_block(student_fn) -> None:
    """gpt2_block(x, params, n_head, eps) equals block 0 of transformers' GPT2LMHeadModel."""
    cases = [(seed, sizes, ((2, sizes["n_positions"], 1.0), (3, 1, 1.0), (1, 5, 1.0)), 1.0)
             for seed, sizes in enumerate(GPT2_SIZES)]
    cases.append((4, GPT2_SIZES[0], ((2, 6, 1e-3),), 1.0))  # tiny activations: LayerNorm's eps matters
    cases.append((5, GPT2_SIZES[3], ((2, 7, 1.0),), 12.0))  # large attention scores
    for seed, sizes, shapes, qk_scale in cases:
        model, model64 = hf_gpt2(hidden_torch_generator(seed, "ch06.gpt2"), **{**sizes, "n_layer": 1},
                                 qk_scale=qk_scale)
        eps = sizes.get("layer_norm_epsilon", 1e-5)
        for b, t, scale in shapes:
            x = scale * torch.randn(b, t, sizes["n_embd"], generator=hidden_torch_generator(100 + seed, "ch06.gpt2"))
            want = block_reference(model64, x)
            inputs = {"B": b, "T": t, "C": sizes["n_embd"], "n_head": sizes["n_head"], "eps": eps, "seed": seed}
            if scale != 1.0:
                inputs["x scale"] = scale
            if qk_scale != 1.0:
                inputs["attention scores"] = "large"
            got = call_student(student_fn, x.clone(), block_params(model), sizes["n_head"], eps=eps, task=BLOCK,
                               inputs=inputs)
            got = _tensor(got, what="block output", inputs=inputs, shape=want.shape)
            if qk_scale != 1.0 and not np.isfinite(got).all():
                fail(f"block output{describe(inputs)}: got inf or NaN with large attention scores; subtract "
                     f"each row's maximum score before exp")
            exact_gelu = ("the MLP uses the exact GELU; GPT-2 uses its tanh approximation",
                          lambda m=model64, x=x: block_with_exact_gelu(m, x))
            assert_close(got, want, what="block output (vs transformers GPT2Block)", inputs=inputs,
                         hints=[exact_gelu], **(TOL_LARGE_SCORES if qk_scale != 1.0 else TOL))


def check_gpt2_forward(student_fn) -> None:
    """gpt2_forward(input_ids, params, n_head, eps) gives the logits of transformers' GPT2LMHeadModel."""
    for seed, sizes in enumerate(GPT2_SIZES):
        model, model64 = hf_gpt2(hidden_torch_generator(seed, "ch06.gpt2"), **sizes)
        eps = sizes.get("layer_norm_epsilon", 1e-5)
        params = {k: v.detach().clone() for k, v in model.state_dict().items()}
        g = hidden_torch_generator(200 + seed, "ch06.gpt2_forward")
        for b, t in ((2, sizes["n_positions"]), (1, 1), (3, 5)):
            idx = torch.randint(0, sizes["vocab_size"], (b, t), generator=g)
            with torch.no_grad():
                want = model64(idx).logits
            inputs = {"B": b, "T": t, "V": sizes["vocab_size"], "C": sizes["n_embd"], "n_layer": sizes["n_layer"],
                      "n_head": sizes["n_head"], "eps": eps, "seed": seed}
            got = call_student(student_fn, idx.clone(), {k: v.clone() for k, v in params.items()}, sizes["n_head"],
                               eps=eps, task=FORWARD, inputs=inputs)
            got = _tensor(got, what="logits", inputs=inputs, shape=want.shape)
            assert_close(got, want, what="logits (vs transformers GPT2LMHeadModel)", inputs=inputs, **TOL_LOGITS)


__all__ = ["TASKS", "check_attention", "check_multi_head_attention", "check_gpt2_block", "check_gpt2_forward",
           "attention_gradient_probe", "reference_attention", "hf_gpt2", "GPT2_SIZES"]
