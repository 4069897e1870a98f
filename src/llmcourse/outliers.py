"""Why activations are hard to quantise, and two fixes: LLM.int8()'s decomposition and SmoothQuant.

In large Transformers a few *feature dimensions* of the layer outputs (activations, not activation
functions) carry values far larger than the rest, systematically, across layers and tokens.
Dettmers et al. (2022, "LLM.int8(): 8-bit Matrix Multiplication for Transformers at Scale") saw
them emerge at about 6.7B parameters. One int8 scale per token must then stretch to the outlier, and every
ordinary value rounds to a handful of codes.

* **LLM.int8()**: vector-wise int8 (one absmax per token row of X, one per output row of W) for
  the ordinary features, and a 16-bit matmul for the few features where some ``|x| >= 6.0``;
  the two partial products are added.
* **SmoothQuant** (Xiao et al. 2023): divide each input feature j of X by ``s_j`` and multiply
  column j of W by it (``X W^T`` is unchanged), with ``s_j = max|X_j|^a / max|W_j|^(1-a)``, a = 0.5:
  the difficulty migrates from the activations to the weights, and plain int8 works again.

Taught in: book/12-quantization
"""

from __future__ import annotations

import torch
from torch import Tensor

from llmcourse.quantization import absmax_quantize, check_finite, int8_linear


def _check_xw(x: Tensor, w: Tensor) -> None:
    check_finite(x, "x")
    check_finite(w, "w")
    if x.dim() != 2 or w.dim() != 2 or x.shape[1] != w.shape[1]:
        raise ValueError(f"need x (N, C_in) and w (C_out, C_in) with equal C_in, got {tuple(x.shape)} and {tuple(w.shape)}")


def make_outlier_activations(n_tokens: int, n_features: int, outlier_features, magnitude: float = 20.0,
                             seed: int = 0) -> Tensor:
    """Layer inputs (n_tokens, n_features): standard normal, with the listed feature columns multiplied
    by ``magnitude`` in every token: the systematic outliers LLM.int8() describes."""
    cols = torch.as_tensor(list(outlier_features), dtype=torch.long)
    if cols.numel() and (cols.min() < 0 or cols.max() >= n_features):
        raise ValueError(f"outlier_features must lie in [0, {n_features}), got {cols.tolist()}")
    x = torch.randn(n_tokens, n_features, generator=torch.Generator().manual_seed(seed))
    x[:, cols] *= magnitude
    return x


def outlier_columns(x: Tensor, threshold: float = 6.0) -> Tensor:
    """The feature indices (sorted, int64) where any token has ``|x| >= threshold``. x (N, C) -> (K,)."""
    check_finite(x)
    if threshold <= 0:
        raise ValueError(f"threshold must be > 0, got {threshold}")
    return torch.nonzero((x.abs() >= threshold).any(dim=0)).flatten()


def int8_vectorwise_matmul(x: Tensor, w: Tensor) -> Tensor:
    """``x @ w.T`` with int8 codes: one absmax scale per row of x (token) and per row of w (output),
    products summed in int32, then rescaled by the outer product of the scales.
    Shapes: x (N, C_in), w (C_out, C_in) -> (N, C_out) float32."""
    _check_xw(x, w)
    x_q, sx = absmax_quantize(x, 8, axis=0)  # (N, C_in) int8, (N, 1)
    w_q, sw = absmax_quantize(w, 8, axis=0)  # (C_out, C_in) int8, (C_out, 1)
    acc = x_q.to(torch.int32) @ w_q.to(torch.int32).T  # (N, C_out)
    return acc.float() * (sx * sw.T)


def llm_int8_linear(x: Tensor, w: Tensor, bias: Tensor | None = None, threshold: float = 6.0,
                    *, int8_weights_for_outliers: bool = True) -> tuple[Tensor, Tensor]:
    """LLM.int8()'s mixed-precision decomposition of ``x @ w.T + bias``.

    Feature columns with an outlier (``outlier_columns``) go through a float matmul; the rest through
    ``int8_vectorwise_matmul``. With ``int8_weights_for_outliers`` (bitsandbytes' inference mode, which
    keeps only int8 weights) the outlier path uses the dequantised int8 weight columns, else the originals.
    Shapes: x (N, C_in), w (C_out, C_in), bias (C_out,) -> ((N, C_out), outlier columns (K,)).
    """
    _check_xw(x, w)
    cols = outlier_columns(x, threshold)
    regular = x.clone()
    regular[:, cols] = 0.0  # the outlier features leave the int8 path entirely
    out = int8_vectorwise_matmul(regular, w)
    if cols.numel():
        if int8_weights_for_outliers:
            w_q, sw = absmax_quantize(w, 8, axis=0)
            w_cols = w_q[:, cols].float() * sw  # (C_out, K)
        else:
            w_cols = w[:, cols].float()
        out = out + x[:, cols].float() @ w_cols.T  # (N, K) @ (K, C_out)
    return (out if bias is None else out + bias), cols


def smoothing_factors(act_absmax: Tensor, w: Tensor, alpha: float = 0.5) -> Tensor:
    """SmoothQuant's per-input-feature factors ``s_j = max|X_j|^alpha / max_i |W_ij|^(1 - alpha)``.

    Shapes: act_absmax (C_in,) from calibration, w (C_out, C_in) -> s (C_in,). Features that are zero
    everywhere (in X or in W) get s = 1."""
    check_finite(act_absmax, "act_absmax")
    check_finite(w, "w")
    if act_absmax.dim() != 1 or w.dim() != 2 or w.shape[1] != act_absmax.shape[0]:
        raise ValueError(f"need act_absmax (C_in,) and w (C_out, C_in), got {tuple(act_absmax.shape)} and {tuple(w.shape)}")
    if (act_absmax < 0).any():
        raise ValueError("act_absmax must be non-negative (it is max |X_j| per feature)")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    w_absmax = w.abs().amax(dim=0)  # (C_in,)
    s = act_absmax.float().pow(alpha) / w_absmax.float().pow(1.0 - alpha)
    return torch.where((act_absmax > 0) & (w_absmax > 0), s, torch.ones_like(s))


def smooth(x: Tensor, w: Tensor, alpha: float = 0.5) -> tuple[Tensor, Tensor, Tensor]:
    """``(x / s, w * s, s)`` with ``s = smoothing_factors(max|x_j|, w, alpha)``: the same product, easier to quantise.
    Shapes: x (N, C_in), w (C_out, C_in) -> (N, C_in), (C_out, C_in), (C_in,)."""
    _check_xw(x, w)
    s = smoothing_factors(x.abs().amax(dim=0), w, alpha)
    return x / s, w * s, s


def w8a8_relative_error(x: Tensor, w: Tensor) -> float:
    """Relative Frobenius error of int8 weights (per output row) times int8 activations (one scale per
    tensor, as a static or per-tensor dynamic scheme) against ``x @ w.T`` in float32."""
    _check_xw(x, w)
    approx = int8_linear(x, *absmax_quantize(w, 8, axis=0))  # dynamic: one scale for this x
    exact = x.float() @ w.float().T
    return float((approx - exact).norm() / exact.norm())
