"""The usual mistakes of the chapter 12 tasks, computed, for the checks' hints (a helper module).

Each ``*_mistake(..., mistake)`` returns what an implementation making ``mistake`` returns, in the
task's return shape; each ``*_MISTAKES`` table pairs a mistake with the sentence the student reads
when their answer reproduces it. :func:`explain` finds the first mistake that reproduces an answer.
"""

from __future__ import annotations

import numpy as np
import torch

from autograder.checks import _ch12_references as ref


def _plain(x) -> np.ndarray:
    return np.asarray(x.detach().cpu().numpy() if hasattr(x, "detach") else x, dtype=float)


def explain(table, wrong, args, got, *, pick, want=None) -> str:
    """`` - why`` for the first mistake of ``table`` whose answer (item ``pick``) reproduces ``got``; ``""`` if none.

    Numbers must agree to 1e-6. Codes (``want`` given) must agree on 99 % of the elements and on 90 % of
    those where ``got`` is wrong: a float64 mistake and the student's float32 one may truncate a value
    that lies on an integer differently.
    """
    got = _plain(got)
    if want is not None and _plain(want).size != got.size:
        return ""
    wrong_at = None if want is None else got != _plain(want).reshape(got.shape)
    for mistake, why in table:
        try:
            alt = _plain(wrong(*args, mistake)[pick])
        except Exception:  # noqa: BLE001 - a mistake that does not apply to this input
            continue
        if alt.shape != got.shape:
            continue
        if wrong_at is None:
            if np.allclose(alt, got, rtol=1e-6, atol=1e-12):
                return f" - {why}"
            continue
        same = alt == got
        if same.mean() >= 0.99 and (not wrong_at.any() or same[wrong_at].mean() >= 0.9):
            return f" - {why}"
    return ""


def _round(v, how):
    if how == "trunc":
        return torch.trunc(v)
    if how == "half_away":
        return torch.sign(v) * torch.floor(v.abs() + 0.5)
    return torch.round(v)


ABSMAX_MISTAKES = (
    ("zero_scale", "an all-zero tensor has max|x| / 127 = 0, and x / 0 is nan: use the scale 1.0 there"),
    ("div128", "the scale is max|x| / 128: divide by 127, so that max|x| maps to the code 127 exactly"),
    ("max_not_abs", "the scale comes from max(x), not from max(|x|): the largest magnitude may be negative"),
    ("trunc", "the codes are rounded toward zero (an int cast truncates): round to the nearest integer"),
    ("half_away", "halves are rounded away from zero: round half to even (torch.round), as torch does"),
    ("wrap", "values beyond the int8 range wrap around (200 becomes -56): clamp to [-128, 127] before casting"),
    ("clamp127", "the codes are clamped to [-127, 127]: clamp to int8's whole range [-128, 127], as torch does"),
)


def absmax_mistake(x, scale, mistake):
    s = float(ref.absmax_scale(x)) if scale is None else float(scale)
    if mistake == "zero_scale":
        if scale is not None or bool((x != 0).any()):
            raise LookupError("only for an all-zero tensor")
        return torch.zeros(x.shape, dtype=torch.long), 0.0
    if scale is None and mistake == "div128":
        s = float(x.abs().max()) / 128
    if scale is None and mistake == "max_not_abs":
        s = float(x.max()) / 127
    v = _round(x.double() / s, mistake)
    if mistake == "wrap":
        return (torch.remainder(v + 128, 256) - 128).long(), s
    return v.clamp(-127 if mistake == "clamp127" else -128, 127).long(), s


ZEROPOINT_MISTAKES = (
    ("no_zero", "the range is [min(x), max(x)]: extend it to contain 0 (min(x, 0), max(x, 0)) so that 0.0 is "
                "exactly representable, and keep the zero point in [qmin, qmax]"),
    ("zp_float", "the zero point is not rounded: it must be an integer, qmin - round(lo / scale)"),
    ("round_then_add", "the codes are round(x / scale) + zero_point: torch rounds after adding the zero point, "
                       "round(x / scale + zero_point), which differs at exact halves when the zero point is odd"),
    ("div256", "the scale is (hi - lo) / 256: divide by qmax - qmin = 255"),
    ("uint8_range", "the int8 range is [-128, 127], not [0, 255]"),
    ("trunc", "the codes are rounded toward zero (an int cast truncates): round half to even"),
)


def zeropoint_mistake(x, dtype, mistake):
    qmin, qmax = ref.QRANGE["uint8" if mistake == "uint8_range" else dtype]
    lo, hi = float(x.min()), float(x.max())
    if mistake != "no_zero":
        lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = float(np.float32((hi - lo) / (256 if mistake == "div256" else qmax - qmin))) if hi > lo else 1.0
    zp = qmin - lo / scale if mistake == "zp_float" else qmin - float(np.round(lo / scale))
    if mistake != "no_zero" and mistake != "zp_float":
        zp = min(max(zp, qmin), qmax)
    v = x.double() / scale
    q = _round(v, mistake) + zp if mistake in ("round_then_add", "trunc") else torch.round(v + zp)
    return q.clamp(qmin, qmax), scale, zp


DEQUANTIZE_MISTAKES = (
    ("wrap", "q - zero_point is computed in the codes' 8-bit integer type and wraps around: convert the codes to "
             "float (or int32) first"),
    ("no_zp", "the zero point is ignored: subtract it before scaling, (q - zero_point) * scale"),
    ("scale_first", "the zero point is subtracted after scaling: (q - zero_point) * scale, not q * scale - zero_point"),
)


def dequantize_mistake(q, scale, zp, mistake):
    zp = torch.as_tensor(0 if zp is None else zp)
    s = torch.as_tensor(scale).double()
    if mistake == "wrap":
        return ((q - zp.to(q.dtype)).double() * s,)
    if mistake == "no_zp":
        return (q.double() * s,)
    return (q.double() * s - zp.double(),)


GROUPED_MISTAKES = (
    ("columns", "the groups run down the columns: take group_size consecutive entries along each row (the "
                "input dimension), w.reshape(out, in // group_size, group_size)"),
    ("flat_columns", "the weights are grouped in column-major order (w.T.reshape(-1, group_size)): take "
                     "group_size consecutive entries along each row, w.reshape(out, in // group_size, group_size)"),
    ("axis1", "one scale per column: per-channel means one scale per output channel, a row of w (out, in)"),
    ("per_tensor", "one scale for the whole tensor: compute one scale per row (per group)"),
    ("per_row", "group_size is ignored: one scale per row, where each group of group_size entries needs its own"),
    ("div8", "the scale is max|w| / 2^(bits-1): divide by 2^(bits-1) - 1 (7 for 4 bits), so the largest weight "
             "maps to the largest positive code"),
    ("trunc", "the codes are rounded toward zero: round half to even"),
)


def grouped_mistake(w, group_size, bits, mistake):
    """(codes, scales) of a per-channel (``group_size`` = None) or group-wise mistake."""
    qmin, qmax = ref.qrange(bits)
    out, inn = w.shape
    g = inn if group_size is None else group_size
    if mistake in ("columns", "axis1"):
        q, s = grouped_mistake(w.T.contiguous(), None if mistake == "axis1" else g, bits, "none")
        return q.T, s.T
    if mistake == "flat_columns":
        q, s = grouped_mistake(w.T.reshape(-1, g), None, bits, "none")
        return q.reshape(inn, out).T, s.reshape(out, -1)
    if mistake == "per_row":
        g = inn
    wg = w.double().reshape(out, inn // g, g)
    m = w.abs().max().double().expand(out, inn // g, 1) if mistake == "per_tensor" else wg.abs().amax(-1, True)
    s = torch.where(m == 0, torch.ones_like(m), m.float().double() / (2 ** (bits - 1) if mistake == "div8" else qmax))
    q = _round(wg / s, mistake).clamp(qmin, qmax)
    s = s.reshape(out, -1)
    return q.reshape(out, inn), (s.reshape(-1) if group_size is None else s)


NF4_MISTAKES = (
    ("uniform", "the codes are on a uniform grid over [-1, 1]: NF4's 16 values are the quantiles of a normal "
                "distribution, denser near 0 - pick the nearest of NF4_VALUES"),
    ("global_absmax", "one absmax for the whole tensor: each block of blocksize consecutive values has its own"),
    ("columns", "the blocks are taken in column order: flatten x in row-major order (x.reshape(-1))"),
    ("floor", "each value gets the largest NF4 value below it: pick the nearest one"),
    ("unnormalised", "the values are not divided by their block's absmax before picking the nearest NF4 value"),
)


def nf4_mistake(x, blocksize, mistake):
    table = ref.nf4_table().double()
    flat = (x.T if mistake == "columns" else x).reshape(-1).double()
    n = flat.numel()
    if mistake == "global_absmax":
        absmax = flat.abs().max().repeat(-(-n // blocksize))
    else:
        absmax = torch.stack([flat[i:i + blocksize].abs().max() for i in range(0, n, blocksize)])
    per = absmax.repeat_interleave(blocksize)[:n]
    v = flat if mistake == "unnormalised" else flat / torch.where(per == 0, torch.ones_like(per), per)
    if mistake == "uniform":
        codes = torch.round((v + 1) * 7.5)
    elif mistake == "floor":
        codes = (torch.searchsorted(table, v, right=True) - 1).clamp(0, 15)
    else:
        codes = (v[:, None] - table[None, :]).abs().argmin(dim=1)
    return codes.long(), absmax.float()


NF4_DEQUANTIZE_MISTAKES = (
    ("tiled", "the absmax values are tiled (absmax.repeat): each one must be repeated blocksize times in a row "
              "(repeat_interleave), since block b holds elements b * blocksize to (b + 1) * blocksize - 1"),
    ("uniform", "the codes are read on a uniform grid: look each code up in NF4_VALUES"),
)


def nf4_dequantize_mistake(codes, absmax, shape, blocksize, mistake):
    table = ref.nf4_table().double()
    n = codes.numel()
    per = absmax.double().repeat(blocksize)[:n] if mistake == "tiled" else \
        absmax.double().repeat_interleave(blocksize)[:n]
    vals = codes.double() / 7.5 - 1 if mistake == "uniform" else table[codes.long()]
    return ((vals * per).reshape(shape),)
