"""References for the chapter 6 checks (a helper module, not an assignment).

Every reference runs in float64 on the float32 inputs and weights the student receives (a
float32 value is exact in float64), so it gives the exact answer for those numbers, and the
checks' tolerances only have to absorb the student's own float32 rounding:

* :func:`reference_attention` - ``F.scaled_dot_product_attention`` (a mask together with
  ``is_causal`` means both apply); a query that may attend no key gets a zero vector;
* :func:`mha_reference` - ``torch.nn.MultiheadAttention`` with random weights and biases;
* :func:`hf_gpt2` - a ``transformers.GPT2LMHeadModel`` (eager attention, no dropout) with random
  weights of unit scale, and its float64 copy; :func:`block_reference` runs one of its blocks.
"""

from __future__ import annotations

import copy
import math
import os

import torch
import torch.nn.functional as F


def reference_attention(q, k, v, mask=None, is_causal=False):
    """``F.scaled_dot_product_attention`` in float64; a mask together with ``is_causal`` means both apply."""
    q, k, v = q.double(), k.double(), v.double()
    if mask is not None and mask.dtype != torch.bool:
        mask = mask.double()
    if mask is not None and is_causal:
        causal = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool).tril()
        mask = mask & causal if mask.dtype == torch.bool else mask.masked_fill(~causal, float("-inf"))
        is_causal = False
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal)


def mha_reference(c: int, n_head: int, batch_first: bool, gen: torch.Generator):
    """A float64 ``nn.MultiheadAttention`` with random weights and biases, and its weights in float32."""
    params = {
        "in_proj_weight": torch.randn(3 * c, c, generator=gen) / math.sqrt(c),
        "in_proj_bias": torch.randn(3 * c, generator=gen) * 0.2,
        "out_proj.weight": torch.randn(c, c, generator=gen) / math.sqrt(c),
        "out_proj.bias": torch.randn(c, generator=gen) * 0.2,
    }
    with torch.random.fork_rng(devices=[]):  # its default initialisation must not move the global RNG
        mha = torch.nn.MultiheadAttention(c, n_head, batch_first=batch_first, dtype=torch.float64).eval()
    mha.load_state_dict({k: v.double() for k, v in params.items()})
    return mha, params


def hf_gpt2(gen: torch.Generator, *, vocab_size: int, n_positions: int, n_embd: int, n_layer: int, n_head: int,
            layer_norm_epsilon: float = 1e-5, qk_scale: float = 1.0):
    """(a float32 ``GPT2LMHeadModel``, its float64 copy): eager attention, no dropout, eval mode.

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
    with torch.random.fork_rng(devices=[]):  # its default initialisation must not move the global RNG
        model = GPT2LMHeadModel(cfg).eval()
    model.config._attn_implementation = "eager"
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("wte.weight", "wpe.weight")):
                p.normal_(0.0, 1.0 if name.endswith("wte.weight") else 0.5, generator=gen)
            elif ".ln_" in name and name.endswith("weight"):
                p.normal_(1.0, 0.2, generator=gen)
            elif name.endswith("bias"):
                p.normal_(0.0, 0.2, generator=gen)
            else:  # a Conv1D weight, stored (in, out)
                p.normal_(0.0, 1.0 / math.sqrt(p.shape[0]), generator=gen)
        for block in model.transformer.h:
            block.attn.c_attn.weight[:, :2 * n_embd] *= qk_scale
    return model, copy.deepcopy(model).double()


def block_reference(model, x):
    """Run block 0 of ``model`` on hidden states ``x`` (B, T, C) the way the model runs it."""
    seen = {}

    def grab(module, args, output):
        seen["in"], seen["out"] = args[0].detach().clone(), output.detach().clone()

    x = x.to(model.dtype)
    handle = model.transformer.h[0].register_forward_hook(grab)
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


def block_with_exact_gelu(model, x):
    """:func:`block_reference` with the exact (erf) GELU in the MLP instead of GPT-2's tanh form."""
    mlp = model.transformer.h[0].mlp
    act, mlp.act = mlp.act, torch.nn.GELU()
    try:
        return block_reference(model, x)
    finally:
        mlp.act = act


def block_params(model) -> dict:
    """Block 0's state-dict entries without the ``transformer.h.0.`` prefix."""
    prefix = "transformer.h.0."
    return {k[len(prefix):]: v.detach().clone() for k, v in model.state_dict().items() if k.startswith(prefix)}
