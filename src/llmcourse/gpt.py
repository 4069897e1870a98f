"""A GPT-2 style decoder-only Transformer: the model the course pretrains, tunes, aligns and shrinks.

The architecture is GPT-2's (Radford et al. 2019): learned token and position
embeddings, ``n_layer`` pre-LayerNorm blocks of causal multi-head self-attention
and a GELU feed-forward network, each wrapped in a residual connection, a final
LayerNorm, and an output layer that shares its weights with the token embedding.
Attention uses PyTorch's fused ``F.scaled_dot_product_attention``; the
from-scratch version is in ``llmcourse.attention`` and the book shows they agree.

``GPT.from_hf`` loads the weights of a ``transformers.GPT2LMHeadModel`` (whose
``Conv1D`` layers store weights as (in, out), the transpose of ``nn.Linear``), and
``GPT.to_hf`` goes the other way, so later chapters can hand the model to
libraries (peft, bitsandbytes) that expect Hugging Face models. ``save`` and
``load`` use safetensors with the config in the file's metadata.

Packed rows (chapter 9) hold several examples: ``forward(idx, doc_ids=..., position_ids=...)``
attends only within an example (``document_mask``: causal and block-diagonal) and restarts the
positions, so each example gets the logits it would get alone.

Shapes: B batch, T time (tokens), C = n_embd, H = n_head, D = C / H, V = vocab_size.

Taught in: book/06-attention-transformers
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass(frozen=True)
class GPTConfig:
    """Sizes of a GPT. The defaults are GPT-2 small (124 M parameters); use a preset for the course."""

    vocab_size: int = 50257  # number of token ids V
    block_size: int = 1024  # longest context T the position table covers
    n_layer: int = 12  # Transformer blocks
    n_head: int = 12  # attention heads per block
    n_embd: int = 768  # model width C (must be divisible by n_head)
    dropout: float = 0.0  # dropout on embeddings, attention weights and residual branches
    bias: bool = True  # biases in Linear layers and LayerNorms (GPT-2 has them)
    layer_norm_eps: float = 1e-5  # epsilon inside every LayerNorm (GPT-2: 1e-5)

    def __post_init__(self):
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"GPTConfig.{name} must be an int >= 1, got {value!r}")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd={self.n_embd} must be divisible by n_head={self.n_head}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

    @classmethod
    def tiny(cls, vocab_size: int = 256, **overrides) -> GPTConfig:
        """A CPU-sized GPT (2 layers, 4 heads, width 64, context 64): about 0.1 M parameters + embeddings."""
        return dataclasses.replace(cls(vocab_size=vocab_size, block_size=64, n_layer=2, n_head=4, n_embd=64),
                                   **overrides)


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with one fused q, k, v projection (GPT-2's ``c_attn``)."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.n_head, self.dropout = config.n_head, config.dropout
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)

    def _qkv(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        b, t, c = x.shape
        q, k, v = self.c_attn(x).split(c, dim=2)  # 3 x (B, T, C)
        return tuple(z.view(b, t, self.n_head, c // self.n_head).transpose(1, 2) for z in (q, k, v))  # (B, H, T, D)

    def forward(self, x: Tensor, attn_mask: Tensor | None = None) -> Tensor:
        """x (B, T, C) -> (B, T, C). ``attn_mask`` (B, 1, T, T) bool, True = may attend; None = causal."""
        b, t, c = x.shape
        q, k, v = self._qkv(x)
        dropout_p = self.dropout if self.training else 0.0
        if attn_mask is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout_p)  # (B, H, T, D)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p)
        y = y.transpose(1, 2).reshape(b, t, c)  # (B, T, C)
        return self.resid_dropout(self.c_proj(y))

    def attention_weights(self, x: Tensor, attn_mask: Tensor | None = None) -> Tensor:
        """x (B, T, C) -> the softmax weights (B, H, T, T) that ``forward`` applies (same ``attn_mask``)."""
        q, k, _ = self._qkv(x)
        scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])  # (B, H, T, T)
        t = x.shape[1]
        mask = torch.ones(t, t, dtype=torch.bool, device=x.device).tril() if attn_mask is None else attn_mask
        return scores.masked_fill(~mask, float("-inf")).softmax(dim=-1)


class MLP(nn.Module):
    """Position-wise feed-forward network: Linear(C, 4C), GELU (tanh form, as GPT-2), Linear(4C, C)."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU(approximate="tanh")
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: Tensor) -> Tensor:
        """x (B, T, C) -> (B, T, C)."""
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    """One pre-LN Transformer block: x + attn(ln_1(x)), then x + mlp(ln_2(x))."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_eps, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_eps, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x: Tensor, attn_mask: Tensor | None = None) -> Tensor:
        """x (B, T, C) -> (B, T, C); ``attn_mask`` as in ``CausalSelfAttention.forward``."""
        x = x + self.attn(self.ln_1(x), attn_mask)
        return x + self.mlp(self.ln_2(x))


# GPT-2's Conv1D layers store (in, out) weights: these must be transposed for nn.Linear.
_HF_CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


class GPT(nn.Module):
    """GPT-2: token + position embeddings, ``n_layer`` blocks, final LayerNorm, tied output layer.

    Shapes: ``forward(idx (B, T) int64, targets (B, T) or None)`` -> (logits (B, T, V), loss or None).
    """

    def __init__(self, config: GPTConfig):
        super().__init__()
        if not isinstance(config, GPTConfig):
            raise TypeError(f"GPT needs a GPTConfig, got {type(config).__name__}")
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.block_size, config.n_embd)
        self.drop = nn.Dropout(config.dropout)
        self.h = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd, eps=config.layer_norm_eps, bias=config.bias)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # weight tying (Press & Wolf 2017), as GPT-2
        self.apply(self._init_weights)
        for name, p in self.named_parameters():  # GPT-2's scaled init of the residual projections
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def num_parameters(self, *, exclude_embeddings: bool = False) -> int:
        """Number of parameters (tied weights counted once); optionally without the position table."""
        n = sum(p.numel() for p in self.parameters())
        return n - self.wpe.weight.numel() if exclude_embeddings else n

    def _check_idx(self, idx) -> None:
        if not isinstance(idx, Tensor):
            raise TypeError(f"idx must be a torch.Tensor of token ids, got {type(idx).__name__}")
        if idx.dtype.is_floating_point or idx.dtype == torch.bool or idx.is_complex():
            raise TypeError(f"idx must hold integer token ids (torch.long), got dtype {idx.dtype}")
        if idx.ndim != 2:
            raise ValueError(f"idx must have shape (B, T), got {tuple(idx.shape)}")
        if idx.shape[1] > self.config.block_size:
            raise ValueError(f"sequence length T={idx.shape[1]} exceeds block_size={self.config.block_size}")
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= self.config.vocab_size):
            raise ValueError(f"token ids must be in [0, {self.config.vocab_size}), got values from "
                             f"{int(idx.min())} to {int(idx.max())}")

    def _check_aux(self, name: str, value, idx: Tensor) -> None:
        if not isinstance(value, Tensor) or value.dtype.is_floating_point or value.dtype == torch.bool:
            raise TypeError(f"{name} must be an integer tensor (B, T), got {type(value).__name__}")
        if value.shape != idx.shape:
            raise ValueError(f"{name} must have the shape of idx {tuple(idx.shape)}, got {tuple(value.shape)}")

    def embed(self, idx: Tensor, position_ids: Tensor | None = None) -> Tensor:
        """idx (B, T) -> token embedding + position embedding (B, T, C), after dropout.

        ``position_ids`` (B, T): each token's position (default 0..T-1), e.g. restarting per packed example.
        """
        self._check_idx(idx)
        if position_ids is None:
            pos = torch.arange(idx.shape[1], device=idx.device)  # (T,)
        else:
            self._check_aux("position_ids", position_ids, idx)
            if position_ids.numel() and (int(position_ids.min()) < 0 or
                                         int(position_ids.max()) >= self.config.block_size):
                raise ValueError(f"position_ids must be in [0, {self.config.block_size})")
            pos = position_ids  # (B, T)
        return self.drop(self.wte(idx) + self.wpe(pos))

    @staticmethod
    def document_mask(doc_ids: Tensor) -> Tensor:
        """doc_ids (B, T) -> bool (B, 1, T, T): query t may see key s iff s <= t and both are in one document."""
        t = doc_ids.shape[1]
        causal = torch.ones(t, t, dtype=torch.bool, device=doc_ids.device).tril()  # (T, T)
        return (causal & (doc_ids[:, :, None] == doc_ids[:, None, :]))[:, None]  # (B, 1, T, T)

    def _mask(self, idx: Tensor, doc_ids: Tensor | None) -> Tensor | None:
        if doc_ids is None:
            return None
        self._check_aux("doc_ids", doc_ids, idx)
        return self.document_mask(doc_ids)

    def forward(self, idx: Tensor, targets: Tensor | None = None, *, position_ids: Tensor | None = None,
                doc_ids: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """Next-token logits (B, T, V); with ``targets`` (B, T) also the mean cross-entropy (-100 ignored).

        For packed rows pass ``doc_ids`` (B, T), one id per example (tokens attend only within theirs),
        and ``position_ids`` (B, T) restarting at 0 per example (``llmcourse.chat.pack`` makes both).
        """
        x = self.embed(idx, position_ids)
        mask = self._mask(idx, doc_ids)
        for block in self.h:
            x = block(x, mask)
        logits = self.lm_head(self.ln_f(x))  # (B, T, V)
        if targets is None:
            return logits, None
        if targets.shape != idx.shape:
            raise ValueError(f"targets must have the shape of idx {tuple(idx.shape)}, got {tuple(targets.shape)}")
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100)
        return logits, loss

    @torch.no_grad()
    def attention_maps(self, idx: Tensor, *, position_ids: Tensor | None = None,
                       doc_ids: Tensor | None = None) -> list[Tensor]:
        """The attention weights of every block: a list of ``n_layer`` tensors (B, H, T, T)."""
        x = self.embed(idx, position_ids)
        mask = self._mask(idx, doc_ids)
        maps = []
        for block in self.h:
            maps.append(block.attn.attention_weights(block.ln_1(x), mask))
            x = block(x, mask)
        return maps

    @torch.no_grad()
    def generate(self, idx: Tensor, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
                 generator: torch.Generator | None = None) -> Tensor:
        """Append ``max_new_tokens`` sampled tokens to idx (B, T) -> (B, T + max_new_tokens).

        Each step feeds the last ``block_size`` tokens, divides the last logits by
        ``temperature`` (0 means greedy), keeps the ``top_k`` largest if given, and samples
        with ``generator``. Call ``model.eval()`` first to switch dropout off. This is a
        shortcut for :func:`llmcourse.decoding.generate`, which has every other strategy.
        """
        from llmcourse.decoding import generate

        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        if temperature == 0:
            return generate(self, idx, max_new_tokens, strategy="greedy")
        return generate(self, idx, max_new_tokens, strategy="sample", temperature=temperature, top_k=top_k,
                        generator=generator)

    # ----------------------------------------------------------------- Hugging Face

    def to_hf_config(self):
        """The equivalent ``transformers.GPT2Config`` (GPT-2 always has biases)."""
        from transformers import GPT2Config

        c = self.config
        if not c.bias:
            raise ValueError("GPT-2 in transformers always has biases: a config with bias=False has no equivalent")
        return GPT2Config(vocab_size=c.vocab_size, n_positions=c.block_size, n_embd=c.n_embd, n_layer=c.n_layer,
                          n_head=c.n_head, resid_pdrop=c.dropout, embd_pdrop=c.dropout, attn_pdrop=c.dropout,
                          layer_norm_epsilon=c.layer_norm_eps, activation_function="gelu_new",
                          tie_word_embeddings=True, bos_token_id=None, eos_token_id=None)  # no special tokens yet

    def load_hf_state_dict(self, state_dict: dict[str, Tensor]) -> None:
        """Copy a ``GPT2LMHeadModel`` state dict in: strip ``transformer.``, transpose Conv1D weights.

        Asserts that every parameter of this model is found, with the right shape.
        """
        own = self.state_dict()
        hf = {k.removeprefix("transformer."): v for k, v in state_dict.items()
              if not k.endswith((".attn.bias", ".attn.masked_bias"))}  # old causal-mask buffers
        missing = sorted(set(own) - set(hf))
        unexpected = sorted(set(hf) - set(own))
        if missing or unexpected:
            raise ValueError(f"state dict does not fit this GPT: missing {missing[:5]}, unexpected {unexpected[:5]}")
        with torch.no_grad():
            for name, value in hf.items():
                if name == "lm_head.weight":
                    continue  # tied to wte.weight
                if name.endswith(_HF_CONV1D):
                    value = value.t()
                if own[name].shape != value.shape:
                    raise ValueError(f"{name}: shape {tuple(value.shape)} but this GPT has {tuple(own[name].shape)}")
                own[name].copy_(value)

    @classmethod
    def from_hf(cls, hf_model) -> GPT:
        """A GPT with the config and weights of a ``transformers.GPT2LMHeadModel``."""
        hc = hf_model.config
        if hc.activation_function not in ("gelu_new", "gelu_pytorch_tanh"):
            raise ValueError(f"GPT uses GELU with the tanh approximation (GPT-2's 'gelu_new'), "
                             f"the model uses {hc.activation_function!r}")
        if (hc.n_inner not in (None, 4 * hc.n_embd) or not hc.scale_attn_weights
                or hc.scale_attn_by_inverse_layer_idx):
            raise ValueError("only the standard GPT-2 block (n_inner = 4 n_embd, scores / sqrt(D)) is supported")
        config = GPTConfig(vocab_size=hc.vocab_size, block_size=hc.n_positions, n_layer=hc.n_layer,
                           n_head=hc.n_head, n_embd=hc.n_embd, dropout=float(hc.resid_pdrop),
                           layer_norm_eps=float(hc.layer_norm_epsilon))
        model = cls(config)
        model.load_hf_state_dict(hf_model.state_dict())
        return model

    def to_hf(self):
        """A ``transformers.GPT2LMHeadModel`` (eager attention) holding a copy of these weights."""
        from transformers import GPT2LMHeadModel

        hf_model = GPT2LMHeadModel(self.to_hf_config()).eval()
        hf_model.config._attn_implementation = "eager"
        sd = {}
        for name, value in self.state_dict().items():
            sd[("" if name.startswith("lm_head") else "transformer.") + name] = (
                value.t() if name.endswith(_HF_CONV1D) else value).detach().clone()
        hf_model.load_state_dict(sd, strict=False)
        return hf_model

    # ----------------------------------------------------------------- files

    def save(self, path: str | os.PathLike) -> None:
        """Write the weights to a safetensors file, with the config as JSON in its metadata."""
        from safetensors.torch import save_file

        tensors = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items() if k != "lm_head.weight"}
        save_file(tensors, os.fspath(path), metadata={"format": "pt", "llmcourse.gpt.config":
                                                      json.dumps(dataclasses.asdict(self.config))})

    @classmethod
    def load(cls, path: str | os.PathLike, *, device: str | torch.device = "cpu") -> GPT:
        """Rebuild a GPT saved with :meth:`save` (config from the metadata, weights tied again)."""
        from safetensors import safe_open
        from safetensors.torch import load_file

        with safe_open(os.fspath(path), framework="pt") as f:
            meta = f.metadata() or {}
        if "llmcourse.gpt.config" not in meta:
            raise ValueError(f"{os.fspath(path)} has no 'llmcourse.gpt.config' metadata: not saved by GPT.save")
        model = cls(GPTConfig(**json.loads(meta["llmcourse.gpt.config"])))
        missing, unexpected = model.load_state_dict(load_file(os.fspath(path)), strict=False)
        if unexpected or set(missing) != {"lm_head.weight"}:
            raise ValueError(f"{os.fspath(path)} does not fit its config: missing {missing}, unexpected {unexpected}")
        return model.to(device)
