"""Memory arithmetic for training and serving Transformers: weights, gradients, optimizer state, activations, KV cache.

The course's one memory calculator (chapter 11 uses it to motivate PEFT; appendix B's widget calls it).
Every function returns **bytes** (ints or floats); :func:`human` prints them in GB = 10⁹ bytes.

* :func:`training_memory` - per-parameter bytes of weights, gradients and optimizer state, for full
  fine-tuning or for a model where only ``n_trainable`` parameters train (LoRA, adapters). Optimizer
  state per trainable parameter: SGD 0, SGD with momentum 4, Adam/AdamW 8 (two fp32 moments), 8-bit Adam 2
  (Dettmers et al. 2022, block-wise quantised moments). Mixed precision keeps 16-bit weights and
  gradients plus an fp32 master copy of the trainable weights (Micikevicius et al. 2018): with Adam,
  2 + 2 + 4 + 8 = 16 bytes per parameter, the figure of the ZeRO paper (Rajbhandari et al. 2020).
* :func:`activation_memory` - the activations a GPT layer stack stores for the backward pass, after
  Korthikanti et al. 2022 ("Reducing Activation Recomputation in Large Transformer Models"), eq. (1):
  ``s·b·h·(34 + 5·a·s/h)`` bytes per layer for 16-bit activations with dropout masks, no tensor
  parallelism; ``34·s·b·h`` with selective recomputation (attention scores recomputed, what
  FlashAttention-style kernels do); ``2·s·b·h`` with full recomputation (only each layer's input kept).
* :func:`inference_memory` - the weights at a precision; :func:`kv_cache_bytes` - the key/value cache,
  ``layers × 2 × kv_heads × head_dim × seq × batch × bytes``.
* :func:`measure_training_step` - runs one real training step and *counts* the bytes it holds:
  parameters, gradients, optimizer state, and every tensor autograd saved for backward
  (``torch.autograd.graph.saved_tensors_hooks``, each storage once, parameters excluded).
* :class:`ModelShape` - the sizes these formulas need, with Llama 2 7B / 70B presets (Touvron et al. 2023,
  the configs published with the weights) and the course GPT.

Taught in: book/11-peft-lora
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["BYTES", "OPTIMIZER_STATE_BYTES", "ModelShape", "bytes_per_value", "training_memory",
           "activation_memory", "inference_memory", "kv_cache_bytes", "measure_training_step", "human"]

BYTES = {"fp32": 4, "float32": 4, "tf32": 4, "fp16": 2, "float16": 2, "bf16": 2, "bfloat16": 2, "fp8": 1,
         "int8": 1, "int4": 0.5, "nf4": 0.5, "fp4": 0.5}
OPTIMIZER_STATE_BYTES = {"sgd": 0, "sgd_momentum": 4, "adam": 8, "adamw": 8, "adam8bit": 2}


def bytes_per_value(dtype) -> float:
    """Bytes per value of a precision: a name from :data:`BYTES` (``"bf16"``, ``"nf4"``...) or a torch.dtype.
    4-bit formats are 0.5 (their per-block scales come on top: see chapter 12)."""
    if isinstance(dtype, torch.dtype):
        return torch.empty((), dtype=dtype).element_size()
    if not isinstance(dtype, str) or dtype.lower() not in BYTES:
        raise ValueError(f"unknown precision {dtype!r}; known: {sorted(BYTES)} or a torch.dtype")
    return BYTES[dtype.lower()]


def _count(name: str, value, *, allow_zero: bool = False) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < (0 if allow_zero else 1):
        raise ValueError(f"{name} must be an int >= {0 if allow_zero else 1}, got {value!r}")
    return value


@dataclass(frozen=True)
class ModelShape:
    """The sizes of a decoder-only Transformer that memory formulas need."""

    name: str
    n_layer: int  # Transformer blocks L
    d_model: int  # hidden width h
    n_head: int  # attention heads a
    n_kv_head: int  # key/value heads (fewer than n_head with grouped-query attention)
    d_ff: int  # feed-forward width
    vocab_size: int
    gated_mlp: bool = False  # SwiGLU (3 matrices, Llama) instead of 2 (GPT-2)
    tied_embeddings: bool = True  # output layer shares the token table (GPT-2) or not (Llama)
    bias: bool = False  # GPT-2 has biases and learned positions; Llama neither
    block_size: int = 0  # learned position table size (0: rotary, no table)

    def __post_init__(self):
        for f in ("n_layer", "d_model", "n_head", "n_kv_head", "d_ff", "vocab_size"):
            _count(f"ModelShape.{f}", getattr(self, f))
        if self.d_model % self.n_head or self.n_head % self.n_kv_head:
            raise ValueError(f"need n_head | d_model and n_kv_head | n_head, got d_model={self.d_model}, "
                             f"n_head={self.n_head}, n_kv_head={self.n_kv_head}")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head

    @classmethod
    def llama2_7b(cls) -> ModelShape:
        """Llama 2 7B: 32 layers, width 4096, 32 heads (no GQA), SwiGLU 11008, vocabulary 32000."""
        return cls("Llama 2 7B", 32, 4096, 32, 32, 11008, 32000, gated_mlp=True, tied_embeddings=False)

    @classmethod
    def llama2_70b(cls) -> ModelShape:
        """Llama 2 70B: 80 layers, width 8192, 64 query heads sharing 8 key/value heads, SwiGLU 28672."""
        return cls("Llama 2 70B", 80, 8192, 64, 8, 28672, 32000, gated_mlp=True, tied_embeddings=False)

    @classmethod
    def from_gpt_config(cls, config, name: str = "course GPT") -> ModelShape:
        """The shape of a ``llmcourse.gpt.GPTConfig`` (GPT-2 style: 4C MLP, biases, tied, learned positions)."""
        return cls(name, config.n_layer, config.n_embd, config.n_head, config.n_head, 4 * config.n_embd,
                   config.vocab_size, gated_mlp=False, tied_embeddings=True, bias=config.bias,
                   block_size=config.block_size)

    def parameters(self) -> int:
        """Exact parameter count of the architecture (norm gains, biases and position table included)."""
        h, kv = self.d_model, self.n_kv_head * self.head_dim
        attn = h * h + 2 * h * kv + h * h  # q, k, v, o
        mlp = (3 if self.gated_mlp else 2) * h * self.d_ff
        norms = 2 * h * (2 if self.bias else 1)
        biases = (h + 2 * kv + h + self.d_ff + h) if self.bias else 0
        per_layer = attn + mlp + norms + biases
        emb = self.vocab_size * h * (1 if self.tied_embeddings else 2) + self.block_size * h
        return self.n_layer * per_layer + emb + h * (2 if self.bias else 1)

    def linear_shapes(self, targets=("q", "k", "v", "o")) -> list[tuple[int, int]]:
        """(in, out) of the linear layers named in ``targets`` (q, k, v, o, gate, up, down) in ONE layer."""
        kv = self.n_kv_head * self.head_dim
        table = {"q": (self.d_model, self.d_model), "k": (self.d_model, kv), "v": (self.d_model, kv),
                 "o": (self.d_model, self.d_model), "up": (self.d_model, self.d_ff), "down": (self.d_ff, self.d_model)}
        if self.gated_mlp:
            table["gate"] = (self.d_model, self.d_ff)
        unknown = set(targets) - set(table)
        if unknown:
            raise ValueError(f"unknown targets {sorted(unknown)}; this model has {sorted(table)}")
        return [table[t] for t in targets]

    def lora_parameters(self, r: int, targets=("q", "k", "v", "o")) -> int:
        """Trainable parameters of LoRA with rank r on ``targets`` in every layer: Σ r·(in + out)."""
        _count("r", r)
        return self.n_layer * sum(r * (i + o) for i, o in self.linear_shapes(targets))


def training_memory(n_params: int, *, n_trainable: int | None = None, weight_dtype="fp32",
                    optimizer: str = "adam", mixed_precision: bool = False) -> dict[str, float]:
    """Bytes held by the *model state* during training (activations excluded: see :func:`activation_memory`).

    ``n_params`` weights stored at ``weight_dtype`` (frozen and trainable alike); gradients for the
    ``n_trainable`` (default: all) at the same precision; optimizer state per trainable parameter from
    :data:`OPTIMIZER_STATE_BYTES`; with ``mixed_precision`` an fp32 master copy of the trainable weights
    (``weight_dtype`` is then the 16-bit working precision). Returns the parts and their ``total``.

    >>> training_memory(7_000_000_000, weight_dtype="bf16", mixed_precision=True)["total"] / 7e9
    16.0
    """
    _count("n_params", n_params)
    n_trainable = n_params if n_trainable is None else _count("n_trainable", n_trainable, allow_zero=True)
    if n_trainable > n_params:
        raise ValueError(f"n_trainable={n_trainable} exceeds n_params={n_params}")
    if optimizer not in OPTIMIZER_STATE_BYTES:
        raise ValueError(f"optimizer must be one of {sorted(OPTIMIZER_STATE_BYTES)}, got {optimizer!r}")
    w = bytes_per_value(weight_dtype)
    if mixed_precision and w >= 4:
        raise ValueError("mixed_precision means 16-bit (or lower) working weights: pass weight_dtype='bf16'/'fp16'")
    parts = {"weights": n_params * w, "gradients": n_trainable * (w if w >= 2 else 2),
             "optimizer": n_trainable * OPTIMIZER_STATE_BYTES[optimizer],
             "master_weights": n_trainable * 4 if mixed_precision else 0}
    parts["total"] = sum(parts.values())
    return parts


def activation_memory(shape: ModelShape, seq_len: int, batch: int, *, recompute: str = "none") -> float:
    """Bytes of activations stored for backward by ``shape.n_layer`` GPT layers (Korthikanti et al. 2022, eq. 1).

    Per layer, with s = ``seq_len``, b = ``batch``, h = ``d_model``, a = ``n_head``, 16-bit activations
    and 1-byte dropout masks: ``recompute="none"`` s·b·h·(34 + 5·a·s/h); ``"selective"`` (attention
    scores recomputed) 34·s·b·h; ``"full"`` (each layer's input only, the rest recomputed) 2·s·b·h.
    The 34 and 5 are derived for a GPT layer with a 4h MLP; for other layouts (SwiGLU) it is an estimate.
    Embeddings, the final norm and the logits are not included.
    """
    if not isinstance(shape, ModelShape):
        raise TypeError(f"shape must be a ModelShape, got {type(shape).__name__}")
    s, b, h, a = _count("seq_len", seq_len), _count("batch", batch), shape.d_model, shape.n_head
    per_layer = {"none": s * b * h * (34 + 5 * a * s / h), "selective": 34 * s * b * h, "full": 2 * s * b * h}
    if recompute not in per_layer:
        raise ValueError(f"recompute must be one of {sorted(per_layer)}, got {recompute!r}")
    return shape.n_layer * per_layer[recompute]


def inference_memory(n_params: int, dtype="fp16") -> float:
    """Bytes of the weights alone at a precision (``n_params × bytes_per_value(dtype)``)."""
    return _count("n_params", n_params) * bytes_per_value(dtype)


def kv_cache_bytes(n_layer: int, n_kv_head: int, head_dim: int, seq_len: int, batch: int, dtype="fp16") -> float:
    """Bytes of the key/value cache: ``n_layer × 2 (K and V) × n_kv_head × head_dim × seq_len × batch × bytes``."""
    return (2 * _count("n_layer", n_layer) * _count("n_kv_head", n_kv_head) * _count("head_dim", head_dim)
            * _count("seq_len", seq_len) * _count("batch", batch) * bytes_per_value(dtype))


def measure_training_step(model: nn.Module, loss_fn, optimizer: torch.optim.Optimizer) -> dict[str, int]:
    """Run one training step (``loss_fn()`` returns the loss; backward; ``optimizer.step()``) and count bytes.

    Counted, each tensor storage once: ``weights`` (all parameters and buffers; a 4-bit tensor counts its
    packed bytes and its quantisation state), ``gradients`` (after backward), ``optimizer`` (state after the
    step, e.g. Adam's two moments), ``activations`` (every tensor autograd saved for backward, through
    ``saved_tensors_hooks``, excluding parameters). ``peak_bound`` = the sum: an upper bound of the step's
    peak, since activations are freed during backward while gradients appear (transient buffers inside an
    operation are not seen). Returns ``{"weights", "gradients", "optimizer", "activations", "peak_bound"}``.
    """
    def storage(t):
        s = t.untyped_storage()
        return s.data_ptr(), s.nbytes()

    own = {}
    for t in list(model.parameters()) + list(model.buffers()):
        ptr, n = storage(t)
        own[ptr] = n
        qs = getattr(t, "quant_state", None)  # bitsandbytes 4-bit: absmax and code live beside the data
        if qs is not None:
            for x in (qs.absmax, qs.code, getattr(qs.state2, "absmax", None) if qs.state2 else None,
                      getattr(qs.state2, "code", None) if qs.state2 else None):
                if isinstance(x, torch.Tensor):
                    own.setdefault(storage(x)[0], storage(x)[1])
    saved: dict[int, int] = {}

    def pack(t):
        if not isinstance(t, torch.Tensor) or t.device.type == "meta":
            return t
        ptr, n = storage(t)
        if ptr not in own:
            saved[ptr] = n
        return t

    optimizer.zero_grad(set_to_none=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = loss_fn()
    loss.backward()
    grads = {storage(p.grad)[0]: storage(p.grad)[1] for p in model.parameters() if p.grad is not None}
    optimizer.step()
    state = {}
    for st in optimizer.state.values():
        for v in st.values():
            if isinstance(v, torch.Tensor) and v.numel() > 1:
                state[storage(v)[0]] = storage(v)[1]
    optimizer.zero_grad(set_to_none=True)
    out = {"weights": sum(own.values()), "gradients": sum(grads.values()), "optimizer": sum(state.values()),
           "activations": sum(saved.values())}
    out["peak_bound"] = sum(out.values())
    return out


def human(n_bytes: float, unit: str = "GB") -> str:
    """``13_476_839_424`` -> ``'13.5 GB'`` (decimal units: kB, MB, GB, TB = 10³, 10⁶, 10⁹, 10¹²)."""
    scale = {"B": 1, "kB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12}
    if unit not in scale:
        raise ValueError(f"unit must be one of {list(scale)}, got {unit!r}")
    if not isinstance(n_bytes, (int, float)) or not math.isfinite(n_bytes) or n_bytes < 0:
        raise ValueError(f"n_bytes must be a finite number >= 0, got {n_bytes!r}")
    return f"{n_bytes / scale[unit]:.1f} {unit}"
