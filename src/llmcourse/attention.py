"""Attention from scratch: scaled dot-product attention, masks, multi-head attention, positions.

Everything here is written with plain tensor operations so that each step can be
read and printed; ``llmcourse.gpt`` uses PyTorch's fused
``F.scaled_dot_product_attention`` instead, and the book shows that the two agree.

* ``stable_softmax`` - softmax with the row maximum subtracted first;
* ``scaled_dot_product_attention`` - softmax(Q K^T / sqrt(D) + mask) V
  (Vaswani et al. 2017, eq. 1), returning the weights as well;
* ``causal_mask``, ``padding_mask`` - boolean masks, ``True`` = may attend
  (the convention of ``F.scaled_dot_product_attention``);
* ``split_heads``, ``merge_heads``, ``MultiHeadAttention`` - H heads of size
  D = C / H, with the weight layout of ``torch.nn.MultiheadAttention``;
* ``sinusoidal_positions`` (Vaswani et al. 2017, section 3.5) and
  ``apply_rope`` (rotary embeddings, Su et al. 2021).

Shapes: B batch, H heads, T query length, S key length, C model width,
D head width.

Taught in: book/06-attention-transformers
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def stable_softmax(scores: Tensor, dim: int = -1) -> Tensor:
    """exp(s - max) / sum(exp(s - max)) along ``dim``; rows that are all ``-inf`` give zeros.

    Subtracting the row maximum changes nothing mathematically but keeps ``exp``
    from overflowing: ``stable_softmax(tensor([1000., 1001.]))`` is
    ``tensor([0.2689, 0.7311])``, where the naive formula gives ``nan``.
    """
    if not isinstance(scores, Tensor) or not scores.dtype.is_floating_point:
        raise TypeError(f"scores must be a floating-point tensor, got {type(scores).__name__} "
                        f"{getattr(scores, 'dtype', '')}")
    row_max = scores.amax(dim=dim, keepdim=True)
    row_max = torch.where(torch.isfinite(row_max), row_max, torch.zeros_like(row_max))  # all -inf rows
    e = torch.exp(scores - row_max)
    total = e.sum(dim=dim, keepdim=True)
    return e / torch.where(total > 0, total, torch.ones_like(total))


def causal_mask(t: int, s: int | None = None, *, device=None) -> Tensor:
    """(T, S) boolean mask, ``True`` where query i may attend key j, i.e. j <= i.

    ``causal_mask(3)`` is ``[[T, F, F], [T, T, F], [T, T, T]]``. For S != T the mask
    is aligned at the top left, as ``F.scaled_dot_product_attention(is_causal=True)`` does.
    """
    s = t if s is None else s
    if t < 1 or s < 1:
        raise ValueError(f"causal_mask needs positive lengths, got T={t}, S={s}")
    return torch.ones(t, s, dtype=torch.bool, device=device).tril()


def padding_mask(attention_mask: Tensor) -> Tensor:
    """(B, S) 1/0 ``attention_mask`` (1 = real token, 0 = padding) -> (B, 1, 1, S) boolean mask.

    The result broadcasts against scores of shape (B, H, T, S): no query attends a pad.
    """
    if attention_mask.ndim != 2:
        raise ValueError(f"attention_mask must have shape (B, S), got {tuple(attention_mask.shape)}")
    return attention_mask.bool()[:, None, None, :]


def scaled_dot_product_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None,
                                 is_causal: bool = False, scale: float | None = None) -> tuple[Tensor, Tensor]:
    """softmax(q k^T * scale + mask) v, with ``scale = 1/sqrt(D)`` unless given.

    Args:
        q: (..., T, D) queries; k: (..., S, D) keys; v: (..., S, Dv) values.
        mask: optional, broadcastable to (..., T, S): boolean (``True`` = may attend)
            or floating point (added to the scores, ``-inf`` = blocked).
        is_causal: also block every key j > i (top-left aligned, see ``causal_mask``).
        scale: multiplier of the scores (default ``1/sqrt(D)``).

    Returns:
        (output (..., T, Dv), weights (..., T, S)). A query that may attend no key
        gets all-zero weights and a zero output, as ``F.scaled_dot_product_attention`` gives.
    """
    for name, x in (("q", q), ("k", k), ("v", v)):
        if not isinstance(x, Tensor) or not x.dtype.is_floating_point or x.ndim < 2:
            raise TypeError(f"{name} must be a floating-point tensor of shape (..., length, dim), "
                            f"got {type(x).__name__} {tuple(getattr(x, 'shape', ()))}")
    if q.shape[-1] != k.shape[-1] or k.shape[-2] != v.shape[-2]:
        raise ValueError(f"shapes do not fit: q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)} "
                         f"(need q's last dim = k's last dim and k, v of the same length)")
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = (q @ k.transpose(-2, -1)) * scale  # (..., T, S)
    if mask is not None:
        if mask.dtype == torch.bool:
            scores = scores.masked_fill(~mask, float("-inf"))
        else:
            scores = scores + mask
    if is_causal:
        scores = scores.masked_fill(~causal_mask(q.shape[-2], k.shape[-2], device=q.device), float("-inf"))
    weights = stable_softmax(scores, dim=-1)
    return weights @ v, weights


def split_heads(x: Tensor, n_head: int) -> Tensor:
    """(B, T, C) -> (B, H, T, D) with D = C / H: head h sees channels h*D .. (h+1)*D - 1."""
    b, t, c = x.shape
    if c % n_head:
        raise ValueError(f"width C={c} is not divisible by n_head={n_head}")
    return x.view(b, t, n_head, c // n_head).transpose(1, 2)  # (B, H, T, D)


def merge_heads(x: Tensor) -> Tensor:
    """(B, H, T, D) -> (B, T, H*D): the inverse of ``split_heads``."""
    b, h, t, d = x.shape
    return x.transpose(1, 2).reshape(b, t, h * d)  # (B, T, C)


class MultiHeadAttention(nn.Module):
    """Multi-head attention (Vaswani et al. 2017, section 3.2.2), from scratch, batch first.

    Parameters have the names and layout of ``torch.nn.MultiheadAttention``
    (``in_proj_weight`` (3C, C) stacking W_q, W_k, W_v; ``out_proj``), so its
    ``state_dict`` loads into this module and the outputs agree.

    Shapes: query (B, T, C), key and value (B, S, C) -> output (B, T, C) and the
    per-head weights (B, H, T, S).
    """

    def __init__(self, embed_dim: int, num_heads: int, bias: bool = True):
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim={embed_dim} is not divisible by num_heads={num_heads}")
        self.embed_dim, self.num_heads = embed_dim, num_heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * embed_dim, embed_dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * embed_dim)) if bias else None
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        nn.init.xavier_uniform_(self.in_proj_weight)

    def forward(self, query: Tensor, key: Tensor, value: Tensor, key_padding_mask: Tensor | None = None,
                is_causal: bool = False) -> tuple[Tensor, Tensor]:
        """``key_padding_mask`` (B, S): ``True`` marks a pad to ignore (as in ``nn.MultiheadAttention``)."""
        w_q, w_k, w_v = self.in_proj_weight.chunk(3)
        b_q, b_k, b_v = self.in_proj_bias.chunk(3) if self.in_proj_bias is not None else (None,) * 3
        q = split_heads(nn.functional.linear(query, w_q, b_q), self.num_heads)  # (B, H, T, D)
        k = split_heads(nn.functional.linear(key, w_k, b_k), self.num_heads)  # (B, H, S, D)
        v = split_heads(nn.functional.linear(value, w_v, b_v), self.num_heads)  # (B, H, S, D)
        mask = None if key_padding_mask is None else ~key_padding_mask.bool()[:, None, None, :]
        out, weights = scaled_dot_product_attention(q, k, v, mask=mask, is_causal=is_causal)
        return self.out_proj(merge_heads(out)), weights


def sinusoidal_positions(t: int, c: int, base: float = 10000.0) -> Tensor:
    """(T, C) sinusoidal encodings: PE[p, 2i] = sin(p / base^(2i/C)), PE[p, 2i+1] = cos(same).

    Each pair of channels is a clock turning at its own speed, from one turn per
    2*pi positions (i = 0) down to one per ``base`` * 2*pi positions.
    """
    if c % 2:
        raise ValueError(f"sinusoidal_positions needs an even width, got C={c}")
    pos = torch.arange(t, dtype=torch.float32)[:, None]  # (T, 1)
    freq = base ** (-torch.arange(0, c, 2, dtype=torch.float32) / c)  # (C/2,)
    pe = torch.zeros(t, c)
    pe[:, 0::2] = torch.sin(pos * freq)
    pe[:, 1::2] = torch.cos(pos * freq)
    return pe


def apply_rope(x: Tensor, positions: Tensor | None = None, base: float = 10000.0) -> Tensor:
    """Rotary position embedding (Su et al. 2021): rotate each channel pair by angle p * theta_i.

    x (..., T, D) with D even; channel pairs (2i, 2i+1) turn by ``positions * base^(-2i/D)``.
    Because rotations compose, the dot product of a rotated query at position m with a
    rotated key at position n depends on m - n only.
    """
    t, d = x.shape[-2], x.shape[-1]
    if d % 2:
        raise ValueError(f"apply_rope needs an even head width, got D={d}")
    positions = torch.arange(t, dtype=x.dtype, device=x.device) if positions is None else positions.to(x.dtype)
    theta = base ** (-torch.arange(0, d, 2, dtype=x.dtype, device=x.device) / d)  # (D/2,)
    angle = positions[:, None] * theta  # (T, D/2)
    cos, sin = torch.cos(angle), torch.sin(angle)
    x1, x2 = x[..., 0::2], x[..., 1::2]
    out = torch.empty_like(x)
    out[..., 0::2] = x1 * cos - x2 * sin
    out[..., 1::2] = x1 * sin + x2 * cos
    return out
