"""LoRA from scratch: a frozen linear layer plus a trainable low-rank update (α/r)·B·A.

LoRA, Low-Rank Adaptation (低秩适配), is the method of Hu et al. 2021 (Microsoft), "LoRA: Low-Rank
Adaptation of Large Language Models". A pretrained weight W₀ (out × in) stays frozen; the layer
learns a *parallel* update ΔW = (α/r)·B·A with B (out × r), A (r × in) and r ≪ min(in, out)::

    h = W₀ x + b + (α/r) · B (A dropout(x))

A is initialised at random (Kaiming-uniform with a = √5, as ``nn.Linear`` and ``peft`` do), B at
zero, so at step 0 the model is exactly the pretrained one. Nothing is factorised: W₀ is never
decomposed (no SVD); A and B are new parameters, and after training ΔW can be *merged* into W₀
(``W = W₀ + ΔW``), so the tuned model has the original shape and no extra latency.

The pieces:

* :class:`LoRALinear` wraps an ``nn.Linear`` (or ``bitsandbytes.nn.Linear4bit`` for QLoRA, which
  then cannot merge); :meth:`LoRALinear.merge` / :meth:`LoRALinear.unmerge` fold ΔW in and out.
* :func:`inject_lora` replaces the ``nn.Linear`` modules whose names match patterns (``peft``'s rule:
  equal to the pattern or ending in ``"." + pattern``; glob patterns such as ``"h.*.attn.c_attn"``
  work too) and freezes every other parameter.
* :func:`trainable_parameters` counts as ``peft``'s ``get_nb_trainable_parameters`` does.
* :func:`save_adapter` / :func:`load_adapter` write and read only A and B (safetensors).
* :func:`quantize_base_nf4` makes QLoRA's base (Dettmers et al. 2023): the linear layers as
  ``bitsandbytes`` 4-bit NF4 ``Linear4bit`` with double quantisation; LoRA then goes on top.

Names in the course GPT (``llmcourse.gpt``): ``h.{i}.attn.c_attn`` (the fused q, k, v projection,
C → 3C), ``h.{i}.attn.c_proj`` (C → C), ``h.{i}.mlp.c_fc`` (C → 4C), ``h.{i}.mlp.c_proj`` (4C → C);
``lm_head`` is tied to the token embedding and is not a LoRA target here.

Shapes: N any leading dims, in = ``in_features``, out = ``out_features``, r the rank.

Taught in: book/11-peft-lora
"""

from __future__ import annotations

import fnmatch
import json
import math
import os
from collections.abc import Sequence

import torch
from torch import Tensor, nn

__all__ = ["LoRALinear", "inject_lora", "lora_layers", "merge_lora", "unmerge_lora", "trainable_parameters",
           "lora_state_dict", "save_adapter", "load_adapter", "quantize_base_nf4", "ATTENTION", "ATTENTION_MLP"]

ATTENTION = ("attn.c_attn", "attn.c_proj")  # the course GPT's attention projections
ATTENTION_MLP = ATTENTION + ("mlp.c_fc", "mlp.c_proj")  # ... and its feed-forward layers


def _check_rank_alpha(r, alpha, dropout) -> None:
    if isinstance(r, bool) or not isinstance(r, int) or r < 1:
        raise ValueError(f"rank r must be an int >= 1, got {r!r}")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha) or alpha <= 0:
        raise ValueError(f"alpha must be a finite number > 0, got {alpha!r}")
    if not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")


class LoRALinear(nn.Module):
    """``base(x) + (alpha / r) * B(A(dropout(x)))`` with ``base`` frozen.

    ``lora_A`` (r, in) is Kaiming-uniform (a = √5) drawn with ``generator``; ``lora_B`` (out, r) is zero.
    Dropout acts on the LoRA path only. ``merged`` tells whether ΔW currently sits inside ``base.weight``.

    Shapes: x (N, in) -> (N, out).
    """

    def __init__(self, base: nn.Linear, r: int, alpha: float, dropout: float = 0.0, *,
                 generator: torch.Generator | None = None):
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise TypeError(f"LoRALinear wraps an nn.Linear, got {type(base).__name__}")
        _check_rank_alpha(r, alpha, dropout)
        if r > min(base.in_features, base.out_features):
            raise ValueError(f"rank r={r} exceeds min(in, out) = {min(base.in_features, base.out_features)}")
        self.base, self.r, self.alpha = base, r, float(alpha)
        self.scaling = self.alpha / r
        for p in base.parameters():
            p.requires_grad_(False)
        factory = {"device": base.weight.device,
                   "dtype": base.weight.dtype if base.weight.dtype.is_floating_point else torch.float32}
        self.lora_A = nn.Parameter(torch.empty(r, base.in_features, **factory))  # (r, in)
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, r, **factory))  # (out, r)
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5), generator=generator)
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    def delta_weight(self) -> Tensor:
        """ΔW = (α/r)·B·A, shape (out, in): what :meth:`merge` adds to ``base.weight``."""
        return (self.lora_B @ self.lora_A) * self.scaling

    def forward(self, x: Tensor) -> Tensor:
        """x (N, in) -> (N, out)."""
        if x.shape[-1] != self.in_features:
            raise ValueError(f"last dimension of x is {x.shape[-1]}, the layer takes in_features={self.in_features}")
        y = self.base(x)
        if self.merged:
            return y
        a = self.lora_dropout(x).to(self.lora_A.dtype) @ self.lora_A.t()  # (N, r)
        return y + (a @ self.lora_B.t() * self.scaling).to(y.dtype)  # (N, out)

    def _check_mergeable(self) -> None:
        if not self.base.weight.dtype.is_floating_point or type(self.base) is not nn.Linear:
            raise TypeError(f"cannot merge into a {type(self.base).__name__} base (e.g. 4-bit QLoRA weights): "
                            f"ΔW would have to be re-quantised; keep the adapter separate instead")

    @torch.no_grad()
    def merge(self) -> None:
        """W ← W₀ + ΔW; afterwards ``forward`` is a plain linear layer (no extra cost)."""
        self._check_mergeable()
        if self.merged:
            raise RuntimeError("this LoRALinear is already merged")
        self.base.weight += self.delta_weight().to(self.base.weight.dtype)
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """W ← W - ΔW: back to W₀ (up to float rounding) and the separate LoRA path."""
        self._check_mergeable()
        if not self.merged:
            raise RuntimeError("this LoRALinear is not merged")
        self.base.weight -= self.delta_weight().to(self.base.weight.dtype)
        self.merged = False

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, r={self.r}, alpha={self.alpha:g}, merged={self.merged}"


def _matches(name: str, pattern: str) -> bool:
    return name == pattern or name.endswith("." + pattern) or fnmatch.fnmatchcase(name, pattern)


def inject_lora(model: nn.Module, target_patterns: Sequence[str], r: int, alpha: float, dropout: float = 0.0, *,
                seed: int = 0) -> list[str]:
    """Replace each ``nn.Linear`` of ``model`` whose name matches a pattern by a :class:`LoRALinear`, in place;
    freeze every other parameter. Returns the replaced module names, in ``named_modules`` order.

    A name matches a pattern when it equals it, ends with ``"." + pattern`` (``peft``'s ``target_modules``
    rule) or matches it as a glob (``fnmatch``). The A matrices are drawn from one generator seeded with
    ``seed``, in module order. Raises ValueError when nothing matches or a match is not an ``nn.Linear``.
    """
    if isinstance(target_patterns, str) or not target_patterns:
        raise ValueError("target_patterns must be a non-empty list of module-name patterns, e.g. ['attn.c_attn']")
    _check_rank_alpha(r, alpha, dropout)
    names = [n for n, m in model.named_modules() if n and any(_matches(n, p) for p in target_patterns)]
    if not names:
        linear = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)][:8]
        raise ValueError(f"no module matches {list(target_patterns)}; some nn.Linear names: {linear}")
    bad = [n for n in names if not isinstance(model.get_submodule(n), nn.Linear)]
    if bad:
        raise ValueError(f"LoRA targets must be nn.Linear layers: {bad[:5]} are not")
    nested = [n for n in names if isinstance(model.get_submodule(n), LoRALinear) or n.endswith(".base")]
    if nested:
        raise ValueError(f"{nested[:3]} already carry LoRA")
    for p in model.parameters():
        p.requires_grad_(False)
    gen = torch.Generator().manual_seed(seed)
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, LoRALinear(getattr(parent, child), r, alpha, dropout, generator=gen))
    return names


def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    """The :class:`LoRALinear` modules of ``model`` by name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, LoRALinear)}


def merge_lora(model: nn.Module) -> int:
    """Merge every LoRA layer of ``model`` (see :meth:`LoRALinear.merge`); returns how many."""
    layers = lora_layers(model)
    for m in layers.values():
        m.merge()
    return len(layers)


def unmerge_lora(model: nn.Module) -> int:
    """Undo :func:`merge_lora`; returns how many layers were unmerged."""
    layers = lora_layers(model)
    for m in layers.values():
        m.unmerge()
    return len(layers)


def trainable_parameters(model: nn.Module) -> tuple[int, int]:
    """``(trainable, total)`` parameter counts, tied parameters once: the numbers of ``peft``'s
    ``PeftModel.get_nb_trainable_parameters()`` for the same model. A 4-bit ``Params4bit`` tensor
    holds two weights per byte and is counted as such, as ``peft`` does."""
    trainable = total = 0
    for p in model.parameters():
        n = p.numel()
        if p.__class__.__name__ == "Params4bit":
            n *= 2
        total += n
        if p.requires_grad:
            trainable += n
    return trainable, total


def lora_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """Only the adapter: ``{"<module>.lora_A": (r, in), "<module>.lora_B": (out, r)}`` for every LoRA layer."""
    out = {}
    for name, m in lora_layers(model).items():
        out[f"{name}.lora_A"] = m.lora_A.detach()
        out[f"{name}.lora_B"] = m.lora_B.detach()
    return out


def save_adapter(model: nn.Module, path: str | os.PathLike) -> int:
    """Write only A and B of every LoRA layer to a safetensors file (r, alpha and the module names go in its
    metadata); returns the file's size in bytes. The base model is not saved: it is the one you started from."""
    from safetensors.torch import save_file

    layers = lora_layers(model)
    if not layers:
        raise ValueError("the model has no LoRA layer to save")
    ranks = {m.r for m in layers.values()}
    alphas = {m.alpha for m in layers.values()}
    if len(ranks) != 1 or len(alphas) != 1:
        raise ValueError(f"save_adapter needs one rank and one alpha, got ranks {ranks}, alphas {alphas}")
    drop = next(iter(layers.values())).lora_dropout
    meta = {"format": "pt", "llmcourse.lora": json.dumps({
        "r": ranks.pop(), "alpha": alphas.pop(), "dropout": drop.p if isinstance(drop, nn.Dropout) else 0.0,
        "modules": list(layers)})}
    save_file({k: v.cpu().contiguous() for k, v in lora_state_dict(model).items()}, os.fspath(path), metadata=meta)
    return os.path.getsize(path)


def load_adapter(model: nn.Module, path: str | os.PathLike) -> list[str]:
    """Put the adapter saved by :func:`save_adapter` onto ``model``: inject LoRA into the same modules
    (exact names) if it has none yet, then copy A and B in, checking every name and shape. Returns the names."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(os.fspath(path), framework="pt") as f:
        meta = f.metadata() or {}
    if "llmcourse.lora" not in meta:
        raise ValueError(f"{os.fspath(path)} has no 'llmcourse.lora' metadata: not written by save_adapter")
    info = json.loads(meta["llmcourse.lora"])
    if not lora_layers(model):
        inject_lora(model, [f"{n}" for n in info["modules"]], info["r"], info["alpha"], info["dropout"])
    layers = lora_layers(model)
    if sorted(layers) != sorted(info["modules"]):
        raise ValueError(f"the model's LoRA layers {sorted(layers)[:4]}... differ from the file's "
                         f"{sorted(info['modules'])[:4]}...")
    tensors = load_file(os.fspath(path))
    with torch.no_grad():
        for name, m in layers.items():
            if m.merged:
                raise RuntimeError(f"{name} is merged: unmerge before loading another adapter")
            for part in ("lora_A", "lora_B"):
                value, own = tensors[f"{name}.{part}"], getattr(m, part)
                if value.shape != own.shape:
                    raise ValueError(f"{name}.{part}: file has shape {tuple(value.shape)}, model {tuple(own.shape)}")
                own.copy_(value)
    return list(layers)


def quantize_base_nf4(model: nn.Module, prefix: str = "h.") -> list[str]:
    """QLoRA's frozen base: every ``nn.Linear`` whose name starts with ``prefix`` (the course GPT's blocks)
    becomes a ``bitsandbytes.nn.Linear4bit`` holding NF4 weights with double quantisation (blocks of 64,
    absmax constants themselves quantised to 8 bits) and computing in float32. In place; returns the names."""
    import bitsandbytes as bnb

    names = [n for n, m in model.named_modules() if type(m) is nn.Linear and n.startswith(prefix)]
    if not names:
        raise ValueError(f"no nn.Linear whose name starts with {prefix!r}")
    for name in names:
        lin = model.get_submodule(name)
        q = bnb.nn.Linear4bit(lin.in_features, lin.out_features, bias=lin.bias is not None,
                              compute_dtype=torch.float32, compress_statistics=True, quant_type="nf4")
        q.weight = bnb.nn.Params4bit(lin.weight.data.clone(), requires_grad=False, quant_type="nf4",
                                     compress_statistics=True)
        if lin.bias is not None:
            q.bias = nn.Parameter(lin.bias.data.clone(), requires_grad=False)
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, q.to(lin.weight.device))
    return names
