"""Quantisation from scratch: number formats, absmax and zero-point int8, int4 per channel and per group, NF4.

A float32 weight costs 4 bytes; **quantisation** stores it as a small integer ``q`` plus a shared
``scale`` (and, for the affine kind, a ``zero_point``), and computes with ``x ≈ (q - zero_point) * scale``.

* **absmax** (symmetric): ``scale = max|x| / (2^(b-1) - 1)``, ``q = round(x / scale)``; zero stays exact.
* **zero-point** (affine, asymmetric): the range ``[min(x, 0), max(x, 0)]`` is spread over all ``2^b``
  codes, as PyTorch's ``MinMaxObserver`` does (Jacob et al. 2018, "Quantization and Training of Neural
  Networks for Efficient Integer-Arithmetic-Only Inference").
* **granularity**: one scale per tensor, per output channel (row), or per group of ``group_size``
  neighbouring weights in a row (finer scales, a few more bits per weight).
* **NF4** (Dettmers et al. 2023, "QLoRA"): 16 levels at quantiles of a normal distribution, one
  absmax per block of 64 weights, as ``bitsandbytes.functional.quantize_4bit(quant_type="nf4")``.
* **static vs dynamic** activation quantisation: weights are quantised once ahead of time; the
  activation scale is fixed from calibration data (static) or computed from each input (dynamic).

Rounding follows PyTorch: ``round(x * (1 / scale))`` in float32, halves to even.

Taught in: book/12-quantization
"""

from __future__ import annotations

import torch
from torch import Tensor

# name -> (dtype, exponent bits, mantissa bits); 1 sign bit each (IEEE 754; bfloat16: Kalamkar et al. 2019)
FLOAT_FORMATS = {"float32": (torch.float32, 8, 23), "float16": (torch.float16, 5, 10),
                 "bfloat16": (torch.bfloat16, 8, 7)}


def check_finite(x, name: str = "x") -> Tensor:
    """``x`` if it is a non-empty floating tensor without NaN or inf; else a clear TypeError/ValueError."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating tensor, got dtype {x.dtype}")
    if x.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(x.shape)}): nothing to quantise")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} holds {int((~torch.isfinite(x)).sum())} NaN or inf values: a scale "
                         "computed from them is meaningless")
    return x


def _check_bits(bits, low: int = 2, high: int = 8) -> int:
    if isinstance(bits, bool) or not isinstance(bits, int) or not low <= bits <= high:
        raise ValueError(f"bits must be an int in [{low}, {high}], got {bits!r}")
    return bits


def float_fields(value: float, fmt: str = "float32") -> dict:
    """The sign, exponent and mantissa bits of ``value`` once rounded into ``fmt``.

    Returns ``{"sign", "exponent", "mantissa"}`` as bit strings, ``"stored"`` (the value the format
    keeps) and ``"exponent_value"`` (the unbiased exponent; ``None`` for zeros and subnormals).
    """
    if fmt not in FLOAT_FORMATS:
        raise ValueError(f"fmt must be one of {sorted(FLOAT_FORMATS)}, got {fmt!r}")
    dtype, e_bits, m_bits = FLOAT_FORMATS[fmt]
    t = torch.tensor([float(value)], dtype=torch.float32).to(dtype)
    raw = int(t.view(torch.int32 if fmt == "float32" else torch.int16)[0]) & ((1 << (1 + e_bits + m_bits)) - 1)
    bits = format(raw, f"0{1 + e_bits + m_bits}b")
    exponent = int(bits[1:1 + e_bits], 2)
    normal = 0 < exponent < (1 << e_bits) - 1
    return {"sign": bits[0], "exponent": bits[1:1 + e_bits], "mantissa": bits[1 + e_bits:],
            "stored": float(t.float()[0]), "exponent_value": exponent - ((1 << (e_bits - 1)) - 1) if normal else None}


def _reduce_dims(x: Tensor, axis: int | None) -> tuple[int, ...]:
    if axis is None:
        return tuple(range(x.dim()))
    if not isinstance(axis, int) or not -x.dim() <= axis < x.dim():
        raise ValueError(f"axis must be None or an int in [-{x.dim()}, {x.dim()}), got {axis!r} for shape {tuple(x.shape)}")
    return tuple(d for d in range(x.dim()) if d != axis % x.dim())


def absmax_quantize(x: Tensor, bits: int = 8, axis: int | None = None) -> tuple[Tensor, Tensor]:
    """Symmetric quantisation: ``q = clamp(round(x / scale), -qmax, qmax)``, ``scale = max|x| / qmax``.

    ``qmax = 2^(bits-1) - 1`` (127 for int8). ``axis=None``: one scale for the tensor; ``axis=k``: one
    scale per index along dimension k (per channel). A slice of zeros gets scale 1 (its codes are 0).
    Shapes: x (...) float -> q (...) int8, scale broadcastable to x (size 1 except along ``axis``).
    """
    check_finite(x)
    qmax = 2 ** (_check_bits(bits) - 1) - 1
    amax = x.detach().float().abs().amax(dim=_reduce_dims(x, axis), keepdim=True)
    scale = torch.where(amax > 0, amax / qmax, torch.ones_like(amax))
    q = torch.clamp(torch.round(x.float() * (1.0 / scale)), -qmax, qmax)
    return q.to(torch.int8), scale


def zeropoint_quantize(x: Tensor, bits: int = 8, axis: int | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Affine quantisation onto codes ``0 .. 2^bits - 1``, with PyTorch ``MinMaxObserver``'s parameters.

    ``scale = (max(x, 0) - min(x, 0)) / (2^bits - 1)`` (at least float32's eps), ``zero_point =
    clamp(-round(min(x, 0) / scale), 0, 2^bits - 1)``: the code that stands for 0.0 exactly.
    ``q = clamp(round(x / scale + zero_point), 0, 2^bits - 1)``.
    Shapes: x (...) float -> q (...) uint8, scale float32 and zero_point int64, broadcastable to x.
    """
    check_finite(x)
    qmax = 2 ** _check_bits(bits) - 1
    dims = _reduce_dims(x, axis)
    lo = x.detach().float().amin(dim=dims, keepdim=True).clamp(max=0)
    hi = x.detach().float().amax(dim=dims, keepdim=True).clamp(min=0)
    scale = ((hi - lo) / qmax).clamp(min=torch.finfo(torch.float32).eps)
    zero_point = torch.clamp(-torch.round(lo / scale), 0, qmax).to(torch.int64)
    return affine_codes(x, scale, zero_point, bits), scale, zero_point


def affine_codes(x: Tensor, scale: Tensor, zero_point: Tensor, bits: int) -> Tensor:
    """``clamp(round(x / scale + zero_point), 0, 2^bits - 1)`` as uint8, for a grid chosen beforehand.
    As PyTorch: ``x * (1 / scale) + zero_point`` in float32, then rounded (halves to even)."""
    qmax = 2 ** _check_bits(bits) - 1
    return torch.clamp(torch.round(x.float() * (1.0 / scale) + zero_point), 0, qmax).to(torch.uint8)


def dequantize(q: Tensor, scale: Tensor, zero_point: Tensor | int = 0) -> Tensor:
    """``(q - zero_point) * scale`` in float32; shapes broadcast as returned by the quantisers."""
    if not isinstance(q, Tensor) or q.is_floating_point():
        raise TypeError(f"q must be an integer tensor, got {getattr(q, 'dtype', type(q).__name__)}")
    return (q.float() - (zero_point.float() if isinstance(zero_point, Tensor) else float(zero_point))) * scale


def groupwise_quantize(w: Tensor, bits: int = 4, group_size: int = 64) -> tuple[Tensor, Tensor, Tensor]:
    """Zero-point quantisation with one (scale, zero_point) per ``group_size`` consecutive weights of a row.

    Shapes: w (R, C) with C divisible by group_size -> q (R, C) uint8, scale and zero_point (R, C // group_size).
    ``group_size=C`` is per-channel quantisation of the rows.
    """
    check_finite(w, "w")
    if w.dim() != 2:
        raise ValueError(f"w must be a 2-D weight (R, C), got shape {tuple(w.shape)}")
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1 or w.shape[1] % group_size:
        raise ValueError(f"group_size must be a positive int dividing C={w.shape[1]}, got {group_size!r}")
    r, c = w.shape
    q, scale, zp = zeropoint_quantize(w.reshape(r * c // group_size, group_size), bits, axis=0)  # (R*G, g)
    return q.reshape(r, c), scale.reshape(r, -1), zp.reshape(r, -1)


def groupwise_dequantize(q: Tensor, scale: Tensor, zero_point: Tensor) -> Tensor:
    """Inverse of ``groupwise_quantize``: q (R, C), scale and zero_point (R, G) -> (R, C) float32."""
    if q.dim() != 2 or scale.dim() != 2 or scale.shape != zero_point.shape or scale.shape[0] != q.shape[0] \
            or q.shape[1] % scale.shape[1]:
        raise ValueError(f"need q (R, C) and scale, zero_point (R, G) with G dividing C, got {tuple(q.shape)}, "
                         f"{tuple(scale.shape)} and {tuple(zero_point.shape)}")
    r, c = q.shape
    g = c // scale.shape[1]
    return dequantize(q.reshape(r, -1, g), scale[..., None], zero_point[..., None]).reshape(r, c)


def rtn(w: Tensor, bits: int, group_size: int | None = None, per_channel: bool = True) -> Tensor:
    """Round-to-nearest fake quantisation of a weight (R, C): quantise, then dequantise (same shape).

    ``per_channel=False``: one zero-point grid for the whole tensor; else one per row, or per group."""
    if not per_channel:
        return dequantize(*zeropoint_quantize(w, bits))
    return groupwise_dequantize(*groupwise_quantize(w, bits, group_size or w.shape[1])).to(w.dtype)


def block_linears(model) -> list[torch.nn.Linear]:
    """The Linear layers inside the Transformer blocks of a course ``GPT``, in forward order
    (per block: attn.c_attn, attn.c_proj, mlp.c_fc, mlp.c_proj): the weights the chapter quantises."""
    if not hasattr(model, "h"):
        raise TypeError(f"expected a llmcourse.gpt.GPT (with blocks model.h), got {type(model).__name__}")
    return [lin for block in model.h for lin in (block.attn.c_attn, block.attn.c_proj, block.mlp.c_fc, block.mlp.c_proj)]


def quantize_linears(model, fake_quantize) -> torch.nn.Module:
    """A copy of ``model`` whose block Linear weights are replaced by ``fake_quantize(weight)``
    (a function (R, C) -> (R, C) that quantises and dequantises, e.g. ``lambda w: rtn(w, 4, 64)``)."""
    import copy

    out = copy.deepcopy(model).eval()
    with torch.no_grad():
        for lin in block_linears(out):
            lin.weight.copy_(fake_quantize(lin.weight.detach()))
    return out


def storage_bits(shapes, bits: float, group_size: int | str = "channel", overhead_bits: float | None = None) -> float:
    """Bits per weight of quantised matrices, scales included: ``bits`` per code, plus ``overhead_bits``
    (default: a float16 scale and a ``bits``-bit zero-point) per group. ``group_size`` is ``"tensor"``
    (one group per matrix), ``"channel"`` (one per row) or an int. ``shapes``: the (R, C) of each matrix."""
    shapes = [tuple(s) for s in shapes]
    n = sum(r * c for r, c in shapes)
    if n == 0:
        raise ValueError("shapes must hold at least one non-empty (R, C) matrix")
    groups = sum(1 if group_size == "tensor" else r if group_size == "channel" else r * c // int(group_size)
                 for r, c in shapes)
    return bits + groups * (16 + bits if overhead_bits is None else overhead_bits) / n


# ----------------------------------------------------------------------------- NF4, block-wise


def nf4_values(offset: float = 0.9677083) -> Tensor:
    """The 16 NF4 levels: normal quantiles, 8 for the positive half and 7 for the negative, plus an exact
    zero, scaled into [-1, 1] (Dettmers et al. 2023; bitsandbytes' ``create_normal_map``). Shape (16,)."""
    pos = torch.special.ndtri(torch.linspace(offset, 0.5, 9, dtype=torch.float64)[:-1])  # 8 levels > 0
    neg = -torch.special.ndtri(torch.linspace(offset, 0.5, 8, dtype=torch.float64)[:-1])  # 7 levels < 0
    values = torch.cat([pos, torch.zeros(1, dtype=torch.float64), neg]).sort().values
    return (values / values.max()).float()


def blockwise_quantize(x: Tensor, code: Tensor, blocksize: int = 64) -> tuple[Tensor, Tensor]:
    """Each block of ``blocksize`` consecutive values (x flattened, last block may be short) is divided by
    its absmax and mapped to the index of the nearest entry of ``code`` (a sorted table in [-1, 1]).

    Shapes: x (...) -> codes (x.numel(),) uint8, absmax (ceil(numel / blocksize),) float32.
    """
    check_finite(x)
    if not isinstance(code, Tensor) or code.dim() != 1 or not 2 <= code.numel() <= 256:
        raise ValueError(f"code must be a 1-D table of 2..256 levels, got {getattr(code, 'shape', code)!r}")
    if isinstance(blocksize, bool) or not isinstance(blocksize, int) or blocksize < 1:
        raise ValueError(f"blocksize must be a positive int, got {blocksize!r}")
    flat = x.detach().float().flatten()
    n_blocks = -(-flat.numel() // blocksize)
    padded = torch.cat([flat, flat.new_zeros(n_blocks * blocksize - flat.numel())]).view(n_blocks, blocksize)
    absmax = padded.abs().amax(dim=1)  # (n_blocks,)
    normed = padded * (1.0 / torch.where(absmax > 0, absmax, torch.ones_like(absmax)))[:, None]
    levels = code.float().sort().values
    if not torch.equal(levels, code.float()):
        raise ValueError("code must be sorted in increasing order")
    midpoints = (levels[1:] + levels[:-1]) / 2  # decision boundaries; a tie goes to the lower level
    codes = torch.bucketize(normed, midpoints)  # (n_blocks, blocksize) index of the nearest level
    return codes.flatten()[:flat.numel()].to(torch.uint8), absmax


def blockwise_dequantize(codes: Tensor, absmax: Tensor, code: Tensor, shape, blocksize: int = 64) -> Tensor:
    """Inverse of ``blockwise_quantize``: ``code[codes] * absmax`` of each block, reshaped to ``shape``."""
    n = int(torch.Size(shape).numel())
    if codes.dtype != torch.uint8 or codes.numel() != n or absmax.numel() != -(-n // blocksize):
        raise ValueError(f"need {n} uint8 codes and {-(-n // blocksize)} absmax values for shape {tuple(shape)}, "
                         f"got {codes.numel()} {codes.dtype} codes and {absmax.numel()} absmax values")
    values = code.float()[codes.long()]
    scale = absmax.repeat_interleave(blocksize)[:values.numel()]
    return (values * scale).reshape(shape)


def pack_4bit(codes: Tensor, pad: int = 0) -> Tensor:
    """Two 4-bit codes per byte, the first in the high nibble (bitsandbytes' order); an odd length gets
    the code ``pad`` appended. Shapes: codes (N,) uint8 < 16 -> (ceil(N / 2),) uint8."""
    if codes.dtype != torch.uint8 or codes.dim() != 1 or (codes > 15).any():
        raise ValueError(f"codes must be 1-D uint8 values below 16, got dtype {codes.dtype}, shape {tuple(codes.shape)}")
    if codes.numel() % 2:
        codes = torch.cat([codes, codes.new_full((1,), pad)])
    return (codes[0::2] << 4) | codes[1::2]


def unpack_4bit(packed: Tensor, n: int) -> Tensor:
    """Inverse of ``pack_4bit``: (ceil(n / 2),) uint8 -> the first ``n`` codes (n,) uint8."""
    if packed.dtype != torch.uint8 or not 0 <= n <= 2 * packed.numel():
        raise ValueError(f"need uint8 bytes holding n={n} codes, got {packed.numel()} {packed.dtype} values")
    return torch.stack([packed >> 4, packed & 15], dim=-1).flatten()[:n]


def nf4_quantize(x: Tensor, blocksize: int = 64) -> tuple[Tensor, Tensor]:
    """NF4 as QLoRA stores it: packed 4-bit codes (ceil(N / 2),) uint8 and one absmax per block."""
    levels = nf4_values()
    codes, absmax = blockwise_quantize(x, levels, blocksize)
    return pack_4bit(codes, pad=int(levels.abs().argmin())), absmax  # padding codes 0.0 (index 7)


def nf4_dequantize(packed: Tensor, absmax: Tensor, shape, blocksize: int = 64) -> Tensor:
    """Inverse of ``nf4_quantize``; ``shape`` is the original tensor's shape."""
    n = int(torch.Size(shape).numel())
    return blockwise_dequantize(unpack_4bit(packed, n), absmax, nf4_values(), shape, blocksize)


# --------------------------------------------------------------- activations: static vs dynamic


def calibrate_scale(batches) -> Tensor:
    """Static quantisation's calibration: the int8 absmax scale of all ``batches`` seen (a running max)."""
    amax = None
    for x in batches:
        check_finite(x, "calibration batch")
        m = x.detach().float().abs().max()
        amax = m if amax is None else torch.maximum(amax, m)
    if amax is None:
        raise ValueError("calibrate_scale needs at least one batch")
    return amax / 127 if amax > 0 else torch.ones(())


def int8_linear(x: Tensor, w_q: Tensor, w_scale: Tensor, bias: Tensor | None = None,
                act_scale: Tensor | None = None) -> Tensor:
    """``x @ W.T + b`` with int8 weights and int8 activations, accumulated in int32.

    ``act_scale=None`` is **dynamic** quantisation: the activation scale is ``max|x| / 127`` of this very
    input, computed at run time. A given ``act_scale`` (from ``calibrate_scale``) is **static**: inputs
    beyond ``127 * act_scale`` saturate. Weights are quantised beforehand (``absmax_quantize(w, axis=0)``).
    Shapes: x (..., C_in), w_q (C_out, C_in) int8, w_scale (C_out, 1) or scalar, bias (C_out,) -> (..., C_out).
    """
    check_finite(x)
    if w_q.dtype != torch.int8 or w_q.dim() != 2 or x.shape[-1] != w_q.shape[1]:
        raise ValueError(f"w_q must be int8 (C_out, C_in={x.shape[-1]}), got {w_q.dtype} {tuple(w_q.shape)}")
    if act_scale is None:
        x_q, act_scale = absmax_quantize(x, 8)  # dynamic: this input's own range
    else:
        x_q = torch.clamp(torch.round(x.float() * (1.0 / act_scale)), -127, 127).to(torch.int8)
    acc = x_q.to(torch.int32) @ w_q.to(torch.int32).T  # (..., C_out) exact integer sums
    out = acc.float() * act_scale * w_scale.reshape(-1)
    return out if bias is None else out + bias
