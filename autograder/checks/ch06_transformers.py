"""Hidden checks for the chapter 6 exercise: attention, multi-head attention, a GPT-2 block, a GPT-2.

References, all computed live:

* ``scaled_dot_product_attention`` - ``torch.nn.functional.scaled_dot_product_attention``
  (boolean and additive masks, causal masking, a mask and ``is_causal`` together,
  fully masked rows, length-1 sequences, huge scores) and its gradients;
* ``multi_head_attention`` - ``torch.nn.MultiheadAttention`` with the same weights, for
  ``batch_first`` True and False, self- and cross-attention, key padding, causal masks;
* ``gpt2_block`` - block 0 of a ``transformers.GPT2LMHeadModel`` (eager attention) built from
  small ``GPT2Config``s with random weights, fed the block's HF state-dict entries;
* ``gpt2_forward`` - the logits of the whole ``GPT2LMHeadModel``, fed its ``state_dict()``.

Expected output of a query that may attend no key at all (every key masked): a zero vector,
which is what ``F.scaled_dot_product_attention`` returns in the installed PyTorch (older
versions and ``nn.MultiheadAttention``'s fast path give NaN there). In multi-head attention the
output projection then gives its bias.

The student's code runs under :func:`autograder.guard.call_student` (gradients under
:func:`autograder.guard.run_probe`); it may not call the attention functions it re-implements,
``transformers``, or the course's ``llmcourse.attention`` and ``llmcourse.gpt``.

Taught in: book/06-attention-transformers
"""

from __future__ import annotations

import math
import os

import numpy as np
import torch
import torch.nn.functional as F

from autograder.compare import assert_close, describe, fail, to_array
from autograder.guard import call_student, run_probe

FORBIDDEN_MODULES = ("transformers", "llmcourse.gpt", "llmcourse.attention")
FORBIDDEN_CALLABLES = (
    "torch.nn.functional.scaled_dot_product_attention",
    "torch.nn.functional.multi_head_attention_forward",
    "torch.nn.MultiheadAttention",
    "torch.nn.Transformer",
    "torch.nn.TransformerEncoderLayer",
    "torch.nn.TransformerDecoderLayer",
    "torch.nn.TransformerEncoder",
    "torch.nn.TransformerDecoder",
)
TOL = dict(rtol=1e-5, atol=1e-5)


def _call(fn, *args, task: str, inputs: dict, **kwargs):
    """Call the student's function under the guard, with this chapter's forbidden modules and calls."""
    return call_student(fn, *args, task=task, inputs=inputs, modules=FORBIDDEN_MODULES,
                        callables=FORBIDDEN_CALLABLES, **kwargs)


def _tensor(value, *, what: str, inputs: dict, shape: tuple) -> np.ndarray:
    """The returned value as a float array of the expected shape (a clear message otherwise)."""
    arr = to_array(value, what=what, inputs=inputs)
    if arr.shape != tuple(shape):
        fail(f"{what}{describe(inputs)}: shape {tuple(arr.shape)} but expected {tuple(shape)}")
    return arr.astype(np.float64)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------- references

def reference_attention(q, k, v, mask=None, is_causal=False):
    """``F.scaled_dot_product_attention``; a mask together with ``is_causal`` means both apply."""
    if mask is not None and is_causal:
        causal = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool).tril()
        if mask.dtype == torch.bool:
            mask = mask & causal
        else:
            mask = mask.masked_fill(~causal, float("-inf"))
        is_causal = False
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal)


def _mha_reference(c: int, n_head: int, batch_first: bool, seed: int):
    """An ``nn.MultiheadAttention`` with random weights and biases, and its weights as plain tensors."""
    torch.manual_seed(seed)
    mha = torch.nn.MultiheadAttention(c, n_head, batch_first=batch_first).eval()
    with torch.no_grad():
        mha.in_proj_weight.normal_(0.0, 1.0 / math.sqrt(c))
        mha.in_proj_bias.normal_(0.0, 0.2)
        mha.out_proj.bias.normal_(0.0, 0.2)
    params = {k: v.detach().clone() for k, v in mha.state_dict().items()}
    return mha, params


def hf_gpt2(seed: int, *, vocab_size: int, n_positions: int, n_embd: int, n_layer: int, n_head: int,
            layer_norm_epsilon: float = 1e-5, qk_scale: float = 1.0):
    """A ``GPT2LMHeadModel`` (eager attention, no dropout, eval) with random weights of unit scale.

    Weights are N(0, 1/fan_in) so activations stay O(1) and GELU's form matters; biases and
    LayerNorm affines are random too. ``qk_scale`` multiplies the query and key projections
    (large attention scores).
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import GPT2Config, GPT2LMHeadModel
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    cfg = GPT2Config(vocab_size=vocab_size, n_positions=n_positions, n_embd=n_embd, n_layer=n_layer, n_head=n_head,
                     layer_norm_epsilon=layer_norm_epsilon, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                     activation_function="gelu_new", bos_token_id=0, eos_token_id=0, attn_implementation="eager")
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(cfg).eval()
    model.config._attn_implementation = "eager"
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("wte.weight", "wpe.weight")):
                p.normal_(0.0, 1.0 if name.endswith("wte.weight") else 0.5)
            elif ".ln_" in name and name.endswith("weight"):
                p.normal_(1.0, 0.2)
            elif name.endswith("bias"):
                p.normal_(0.0, 0.2)
            else:  # a Conv1D weight, stored (in, out)
                p.normal_(0.0, 1.0 / math.sqrt(p.shape[0]))
        for block in model.transformer.h:
            block.attn.c_attn.weight[:, :2 * n_embd] *= qk_scale
    return model


def _block_reference(model, x):
    """Run block 0 of ``model`` on hidden states ``x`` (B, T, C) the way the model runs it."""
    seen = {}
    block = model.transformer.h[0]

    def grab(module, args, output):
        seen["in"], seen["out"] = args[0].detach().clone(), output.detach().clone()

    handle = block.register_forward_hook(grab)
    try:
        with torch.no_grad():
            wpe = model.transformer.wpe.weight.clone()
            model.transformer.wpe.weight.zero_()  # so the block's input is exactly x
            model(inputs_embeds=x)
            model.transformer.wpe.weight.copy_(wpe)
    finally:
        handle.remove()
    if not torch.equal(seen["in"], x):
        raise RuntimeError("reference block input differs from x")
    return seen["out"]


def _block_params(model, layer: int = 0) -> dict:
    prefix = f"transformer.h.{layer}."
    return {k[len(prefix):]: v.detach().clone() for k, v in model.state_dict().items() if k.startswith(prefix)}


# ----------------------------------------------------------------- probes (run beside the student's code)

def attention_gradient_probe(student_fn, q, k, v, mask, is_causal, weight):
    """Gradients of sum(weight * student_fn(q, k, v, mask, is_causal)) with respect to q, k, v."""
    q, k, v = (t.clone().requires_grad_(True) for t in (q, k, v))
    out = student_fn(q, k, v, mask=mask, is_causal=is_causal)
    if not isinstance(out, torch.Tensor) or not out.requires_grad:
        return {"error": "the output is not a torch tensor connected to q, k, v by autograd: keep the "
                         "computation in torch (no .detach(), .numpy(), .item() or new tensors built from values)"}
    (out * weight).sum().backward()
    return {name: (t.grad.detach().clone() if t.grad is not None else torch.zeros_like(t))
            for name, t in (("q", q), ("k", k), ("v", v))}


# ----------------------------------------------------------------- checks

def _attention_cases():
    """(inputs, q, k, v, mask, is_causal): shapes, masks, edge cases."""
    cases = []
    for seed, (shape_q, s, dv) in enumerate((((2, 5, 8), 5, 8), ((3, 2, 4, 16), 6, 16), ((1, 7, 4), 3, 5),
                                             ((2, 1, 1, 8), 1, 8))):
        g = _gen(seed)
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
    g = _gen(10)
    q, k, v = torch.randn(2, 4, 8, generator=g), torch.randn(2, 6, 8, generator=g), torch.randn(2, 6, 8, generator=g)
    none = torch.rand(2, 4, 6, generator=g) > 0.5
    none[0, 1] = False  # query 1 of batch 0 may attend nothing
    none[1, 3] = False
    none[0, 0] = True
    base = {"q": (2, 4, 8), "k": (2, 6, 8), "seed": 10}
    cases.append(({**base, "mask": "bool with fully masked rows [0, 1] and [1, 3]"}, q, k, v, none, False))
    inf_rows = torch.zeros(2, 4, 6).masked_fill(~none, float("-inf"))
    cases.append(({**base, "mask": "float, rows [0, 1] and [1, 3] all -inf"}, q, k, v, inf_rows, False))
    g = _gen(11)
    q, k, v = 30.0 * torch.randn(2, 5, 8, generator=g), 30.0 * torch.randn(2, 5, 8, generator=g), \
        torch.randn(2, 5, 8, generator=g)
    cases.append(({"q": (2, 5, 8), "seed": 11, "scores": "large (|q k| / sqrt(D) up to ~1e3)"}, q, k, v, None, False))
    cases.append(({"q": (2, 5, 8), "seed": 11, "scores": "large", "is_causal": True}, q, k, v, None, True))
    return cases


def check_attention(student_fn) -> None:
    """scaled_dot_product_attention(q, k, v, mask=None, is_causal=False) equals F.scaled_dot_product_attention."""
    task = "scaled_dot_product_attention"
    for inputs, q, k, v, mask, is_causal in _attention_cases():
        want = reference_attention(q, k, v, mask, is_causal)
        got = _call(student_fn, q.clone(), k.clone(), v.clone(), mask=None if mask is None else mask.clone(),
                    is_causal=is_causal, task=task, inputs=inputs)
        got = _tensor(got, what="attention output", inputs=inputs, shape=want.shape)
        if "fully masked" in str(inputs.get("mask")) or "-inf" in str(inputs.get("mask")):
            if np.isnan(got).any():
                fail(f"attention output{describe(inputs)}: NaN for a query whose keys are all masked; "
                     f"F.scaled_dot_product_attention returns zeros there (softmax over only -inf is 0/0: "
                     f"give such rows zero weights)")
        if "large" in str(inputs.get("scores")) and not np.isfinite(got).all():
            fail(f"attention output{describe(inputs)}: got inf or NaN with large scores; subtract each "
                 f"row's maximum score before exp (softmax is unchanged by a shift)")
        assert_close(got, want, what="attention output (vs F.scaled_dot_product_attention)", inputs=inputs,
                     **(dict(rtol=1e-4, atol=1e-4) if "large" in str(inputs.get("scores")) else TOL))
    # gradients, through the student's function
    g = _gen(20)
    q, k, v = torch.randn(2, 2, 5, 8, generator=g), torch.randn(2, 2, 5, 8, generator=g), \
        torch.randn(2, 2, 5, 6, generator=g)
    weight = torch.randn(2, 2, 5, 6, generator=g)
    pad = torch.tensor([[True, True, True, False, True]])  # (1, S)
    for mask, is_causal, desc in ((None, True, None), (pad, False, "bool, key 3 masked")):
        inputs = {"q": (2, 2, 5, 8), "v": (2, 2, 5, 6), "seed": 20, "mask": desc, "is_causal": is_causal,
                  "what": "gradients"}
        got = run_probe(attention_gradient_probe, student_fn, q, k, v, mask, is_causal, weight, task=task,
                        inputs=inputs, modules=FORBIDDEN_MODULES, callables=FORBIDDEN_CALLABLES)
        if isinstance(got, dict) and "error" in got:
            fail(f"{task}{describe(inputs)}: {got['error']}")
        qs, ks, vs = (t.clone().requires_grad_(True) for t in (q, k, v))
        (reference_attention(qs, ks, vs, mask, is_causal) * weight).sum().backward()
        for name, ref in (("q", qs.grad), ("k", ks.grad), ("v", vs.grad)):
            value = got.get(name) if isinstance(got, dict) else None
            assert_close(value, ref, what=f"gradient with respect to {name}", inputs=inputs, **TOL)


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


def check_multi_head_attention(student_fn) -> None:
    """multi_head_attention(query, key, value, params, n_head, ...) equals nn.MultiheadAttention."""
    task = "multi_head_attention"
    for seed, (case, b, t, s, c, h, self_attn, padded, causal) in enumerate(_mha_cases()):
        for batch_first in (True, False):
            inputs = {**case, "batch_first": batch_first, "seed": seed}
            mha, params = _mha_reference(c, h, batch_first, seed)
            g = _gen(seed)
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
                want = mha(tr(query), tr(key), tr(value), key_padding_mask=kpm, attn_mask=attn_mask,
                           need_weights=False)[0]
            got = _call(student_fn, tr(query), tr(key), tr(value), {k: v.clone() for k, v in params.items()}, h,
                        key_padding_mask=None if kpm is None else kpm.clone(), is_causal=causal,
                        batch_first=batch_first, task=task, inputs=inputs)
            got = _tensor(got, what="output", inputs=inputs, shape=want.shape)
            assert_close(got, want, what="output (vs nn.MultiheadAttention with the same weights)",
                         inputs=inputs, **TOL)
    # a sequence whose keys are all padding: zero attention, so the output is out_proj's bias
    inputs = {"B": 2, "T": 3, "C": 8, "n_head": 2, "key_padding_mask": "sequence 1 all padding",
              "batch_first": True, "seed": 30}
    mha, params = _mha_reference(8, 2, True, 30)
    x = torch.randn(2, 3, 8, generator=_gen(30))
    kpm = torch.tensor([[False, False, True], [True, True, True]])
    with torch.no_grad():
        want = torch.cat([mha(x[:1], x[:1], x[:1], key_padding_mask=kpm[:1], need_weights=False)[0],
                          params["out_proj.bias"].expand(1, 3, 8)])
    got = _call(student_fn, x.clone(), x.clone(), x.clone(), {k: v.clone() for k, v in params.items()}, 2,
                key_padding_mask=kpm.clone(), is_causal=False, batch_first=True, task=task, inputs=inputs)
    got = _tensor(got, what="output", inputs=inputs, shape=want.shape)
    if np.isnan(got).any():
        fail(f"output{describe(inputs)}: NaN for a sequence whose keys are all padding; expected zero "
             f"attention (as F.scaled_dot_product_attention gives), so the output is out_proj.bias")
    assert_close(got, want, what="output", inputs=inputs, **TOL)


GPT2_SIZES = (
    dict(vocab_size=50, n_positions=16, n_embd=32, n_layer=2, n_head=4),
    dict(vocab_size=97, n_positions=8, n_embd=24, n_layer=1, n_head=3, layer_norm_epsilon=1e-3),
    dict(vocab_size=31, n_positions=12, n_embd=16, n_layer=3, n_head=1),
    dict(vocab_size=64, n_positions=10, n_embd=48, n_layer=2, n_head=8),
)


def check_gpt2_block(student_fn) -> None:
    """gpt2_block(x, params, n_head, eps) equals block 0 of transformers' GPT2LMHeadModel."""
    task = "gpt2_block"
    cases = [(seed, sizes, ((2, sizes["n_positions"], 1.0), (3, 1, 1.0), (1, 5, 1.0)), 1.0)
             for seed, sizes in enumerate(GPT2_SIZES)]
    cases.append((4, GPT2_SIZES[0], ((2, 6, 1e-3),), 1.0))  # tiny activations: LayerNorm's eps matters
    cases.append((5, GPT2_SIZES[3], ((2, 7, 1.0),), 12.0))  # large attention scores
    for seed, sizes, shapes, qk_scale in cases:
        model = hf_gpt2(seed, **{**sizes, "n_layer": 1}, qk_scale=qk_scale)
        eps = sizes.get("layer_norm_epsilon", 1e-5)
        for b, t, scale in shapes:
            x = scale * torch.randn(b, t, sizes["n_embd"], generator=_gen(100 + seed))
            want = _block_reference(model, x)
            inputs = {"B": b, "T": t, "C": sizes["n_embd"], "n_head": sizes["n_head"], "eps": eps, "seed": seed}
            if scale != 1.0:
                inputs["x scale"] = scale
            if qk_scale != 1.0:
                inputs["attention scores"] = "large"
            got = _call(student_fn, x.clone(), _block_params(model), sizes["n_head"], eps=eps, task=task,
                        inputs=inputs)
            got = _tensor(got, what="block output", inputs=inputs, shape=want.shape)
            if qk_scale != 1.0 and not np.isfinite(got).all():
                fail(f"block output{describe(inputs)}: got inf or NaN with large attention scores; subtract "
                     f"each row's maximum score before exp")
            assert_close(got, want, what="block output (vs transformers GPT2Block)", inputs=inputs,
                         rtol=1e-5, atol=1e-5 * max(1.0, scale))


def check_gpt2_forward(student_fn) -> None:
    """gpt2_forward(input_ids, params, n_head, eps) gives the logits of transformers' GPT2LMHeadModel."""
    task = "gpt2_forward"
    for seed, sizes in enumerate(GPT2_SIZES):
        model = hf_gpt2(seed, **sizes)
        eps = sizes.get("layer_norm_epsilon", 1e-5)
        params = {k: v.detach().clone() for k, v in model.state_dict().items()}
        g = _gen(200 + seed)
        for b, t in ((2, sizes["n_positions"]), (1, 1), (3, 5)):
            idx = torch.randint(0, sizes["vocab_size"], (b, t), generator=g)
            with torch.no_grad():
                want = model(idx).logits
            inputs = {"B": b, "T": t, "V": sizes["vocab_size"], "C": sizes["n_embd"], "n_layer": sizes["n_layer"],
                      "n_head": sizes["n_head"], "eps": eps, "seed": seed}
            got = _call(student_fn, idx.clone(), {k: v.clone() for k, v in params.items()}, sizes["n_head"],
                        eps=eps, task=task, inputs=inputs)
            got = _tensor(got, what="logits", inputs=inputs, shape=want.shape)
            assert_close(got, want, what="logits (vs transformers GPT2LMHeadModel)", inputs=inputs, **TOL)
