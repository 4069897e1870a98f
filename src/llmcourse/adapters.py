"""Adapters (Houlsby et al. 2019) from scratch, and a seam that lets ``peft``'s prompt methods use the course's loops.

An **adapter** (适配器) is a small bottleneck network inserted *inside every layer* of a frozen model
(Houlsby et al. 2019, "Parameter-Efficient Transfer Learning for NLP", ICML): project the sublayer's
output h (width C) down to m ≪ C, apply a nonlinearity, project back up, and add the input::

    adapter(h) = h + W_up · f(W_down · h + b_down) + b_up        W_down (m × C), W_up (C × m)

Houlsby et al. put one after the attention sublayer and one after the feed-forward sublayer of each
Transformer layer (before the residual sum), initialise the adapter near the identity, and also train
the LayerNorms; with m small that is a few per cent of the model. We initialise W_up and b_up at zero,
so the adapter is *exactly* the identity at step 0 (as LoRA's B = 0). Unlike LoRA, an adapter is a
nonlinear extra layer in the forward pass: it cannot be merged away and adds latency. Tuning only the
top layers of a network is something else: partial fine-tuning, not adapter tuning.

* :class:`Adapter`: the bottleneck module; :class:`WithAdapter`: a sublayer followed by one.
* :func:`inject_adapters`: put adapters after ``attn.c_proj`` and ``mlp.c_proj`` of every block of the
  course GPT (the sublayer outputs), freeze the rest (LayerNorms trainable, as in the paper).
* :class:`CourseLM`: wraps a ``transformers`` causal LM (e.g. a ``peft`` prompt-tuning model of
  ``load_base(kind="hf")``) so that it has the course GPT's call ``model(idx, position_ids=, doc_ids=)``
  and ``config.block_size``: ``llmcourse.sft.train_sft`` and ``evaluate_chat`` then run it unchanged.

Shapes: B batch, T time, C = n_embd, m = bottleneck width.

Taught in: book/11-peft-lora
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["Adapter", "WithAdapter", "inject_adapters", "CourseLM", "ADAPTER_SITES"]

ADAPTER_SITES = ("attn.c_proj", "mlp.c_proj")  # the two sublayer outputs of every course GPT block


class Adapter(nn.Module):
    """h + up(GELU(down(h))): Houlsby's bottleneck with a residual connection; the identity at init.

    Shapes: h (B, T, C) -> (B, T, C).
    """

    def __init__(self, width: int, bottleneck: int, *, generator: torch.Generator | None = None):
        super().__init__()
        for name, v in (("width", width), ("bottleneck", bottleneck)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an int >= 1, got {v!r}")
        self.down = nn.Linear(width, bottleneck)
        self.up = nn.Linear(bottleneck, width)
        self.act = nn.GELU(approximate="tanh")
        nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5), generator=generator)
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)  # identity at step 0
        nn.init.zeros_(self.up.bias)

    def forward(self, h: Tensor) -> Tensor:
        """h (B, T, C) -> (B, T, C)."""
        return h + self.up(self.act(self.down(h)))  # (B, T, m) in the middle


class WithAdapter(nn.Module):
    """``adapter(sublayer(x))``: a frozen sublayer followed by a trainable :class:`Adapter`."""

    def __init__(self, sublayer: nn.Module, adapter: Adapter):
        super().__init__()
        self.sublayer, self.adapter = sublayer, adapter

    def forward(self, x: Tensor) -> Tensor:
        return self.adapter(self.sublayer(x))


def inject_adapters(model: nn.Module, bottleneck: int, *, sites=ADAPTER_SITES, train_layer_norms: bool = True,
                    seed: int = 0) -> list[str]:
    """Wrap every ``nn.Linear`` whose name ends with one of ``sites`` in :class:`WithAdapter`, in place;
    freeze all parameters except the adapters' (and the LayerNorms' if ``train_layer_norms``).
    Returns the wrapped module names. Adapters are drawn from one generator seeded with ``seed``."""
    names = [n for n, m in model.named_modules()
             if isinstance(m, nn.Linear) and any(n == s or n.endswith("." + s) for s in sites)]
    if not names:
        raise ValueError(f"no nn.Linear named like {list(sites)} in the model")
    for p in model.parameters():
        p.requires_grad_(False)
    if train_layer_norms:
        for m in model.modules():
            if isinstance(m, nn.LayerNorm):
                for p in m.parameters():
                    p.requires_grad_(True)
    gen = torch.Generator().manual_seed(seed)
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        layer = getattr(parent, child)
        adapter = Adapter(layer.out_features, bottleneck, generator=gen).to(layer.weight.device)
        setattr(parent, child, WithAdapter(layer, adapter))
    return names


class CourseLM(nn.Module):
    """A ``transformers`` causal LM (``peft``-wrapped or not) behind the course GPT's interface.

    ``forward(idx (B, T), targets=None, *, position_ids=None, doc_ids=None)`` -> ``(logits (B, T, V), None)``.
    Each row must hold one example (no packing): ``doc_ids`` < 0 marks right padding, which becomes the
    attention mask. Prompt-learning methods (prompt tuning, P-tuning) prepend virtual tokens; their
    logits are dropped, so the output lines up with ``idx``. ``position_ids`` are left to the model
    (0, 1, ... per row), which is what they are for one example per row without left padding.
    """

    def __init__(self, model: nn.Module, block_size: int):
        super().__init__()
        self.model = model
        self.config = type("Config", (), {"block_size": block_size})()

    def forward(self, idx: Tensor, targets: Tensor | None = None, *, position_ids: Tensor | None = None,
                doc_ids: Tensor | None = None) -> tuple[Tensor, None]:
        if targets is not None:
            raise ValueError("CourseLM gives logits only; compute the loss outside (llmcourse.sft.sft_loss)")
        if doc_ids is None:
            mask = torch.ones_like(idx)
        else:
            real = doc_ids[doc_ids >= 0].view(-1)
            ids = doc_ids.clone().masked_fill(doc_ids < 0, torch.iinfo(doc_ids.dtype).max)
            first = ids.min(dim=1, keepdim=True).values  # (B, 1) the row's example
            if real.numel() and bool(((doc_ids >= 0) & (doc_ids != first)).any()):
                raise ValueError("CourseLM needs one example per row (packed=False, no left padding)")
            mask = (doc_ids >= 0).long()
            if bool((mask[:, 1:] > mask[:, :-1]).any()):
                raise ValueError("CourseLM needs right padding only (padding after the example)")
        logits = self.model(input_ids=idx, attention_mask=mask).logits
        return logits[:, -idx.shape[1]:], None  # drop the virtual tokens' positions
