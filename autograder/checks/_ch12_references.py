"""References and inputs for the chapter 12 checks (a helper module, not an assignment).

The references are the libraries practitioners use, called live on the inputs the student gets:

* :func:`torch_absmax` - ``torch.quantize_per_tensor(x, scale, 0, torch.qint8).int_repr()`` with
  ``scale = max|x| / 127`` worked out in float32 (1.0 for an all-zero tensor);
* :func:`torch_affine` - the scale and zero point of ``torch.ao.quantization.MinMaxObserver``
  (per-tensor affine: the range is extended to contain 0) and ``torch.quantize_per_tensor`` with them
  (``quint8`` or ``qint8``); an all-zero tensor gets scale 1.0 where the observer would give ``eps``;
* :func:`torch_dequantize` - ``dequantize()`` of a quantized tensor made from the codes
  (``torch._make_per_tensor_quantized_tensor`` / ``_make_per_channel_quantized_tensor``);
* :func:`torch_per_channel` - ``torch.quantize_per_channel`` on axis 0 (torch has no 4-bit dtype:
  the codes are computed as qint8, and the symmetric scale keeps them inside [-2^(b-1), 2^(b-1) - 1],
  which :func:`formula_grouped` in float64 confirms); group-wise is per-channel on the weight
  reshaped to one row per group;
* :func:`bnb_nf4` / :func:`bnb_nf4_dequantize` - ``bitsandbytes.functional.quantize_4bit`` and
  ``dequantize_4bit`` with ``quant_type="nf4"``. bitsandbytes packs two codes per byte, the
  **first code in the high nibble** (``packed = codes[0::2] << 4 | codes[1::2]``), pads an odd count
  with a zero code, and keeps one float32 absmax per block of ``blocksize`` consecutive elements of
  the flattened tensor (the last block may be shorter). :func:`bnb_nf4` unpacks that.

Random inputs stay at least ``MARGIN`` (in units of the quantisation step) away from every rounding
boundary, so that no float32 rounding (x / s against x * (1 / s), float32 against float64) can decide
a code; the cases that test the tie rule put values exactly on a boundary with exact powers of two.
"""

from __future__ import annotations

import contextlib
import logging
import math
import warnings

import numpy as np
import torch

from autograder.secret import hidden_torch_generator

MARGIN = 1e-3  # how far random inputs stay from a rounding boundary, in codes (NF4: in units of absmax)
QRANGE = {"uint8": (0, 255), "int8": (-128, 127)}


@contextlib.contextmanager
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's deprecation warning on quantized tensors
        yield


def qrange(bits: int) -> tuple[int, int]:
    return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1


def away_from_ties(x: torch.Tensor, scale, offset=0.0) -> torch.Tensor:
    """x moved by 2 * MARGIN steps wherever x / scale + offset lies within MARGIN of a half-integer."""
    v = x.double() / torch.as_tensor(scale, dtype=torch.float64) + offset
    frac = v - torch.floor(v)
    near = (frac - 0.5).abs() < MARGIN
    step = torch.as_tensor(scale, dtype=torch.float64) * torch.ones_like(v)
    return torch.where(near, x.double() - 2 * MARGIN * step * torch.sign(frac - 0.5 + 1e-12), x.double()).float()


# ----------------------------------------------------------------- absmax and affine int8

def absmax_scale(x: torch.Tensor) -> torch.Tensor:
    """max|x| / 127 in float32 (the division correctly rounded), 1.0 for an all-zero tensor."""
    m = x.abs().max().float()
    return torch.where(m == 0, torch.tensor(1.0), m / 127.0)


def torch_absmax(x: torch.Tensor, scale=None) -> tuple[torch.Tensor, float]:
    """(codes int8, scale): torch.quantize_per_tensor(x, scale, 0, qint8).int_repr()."""
    s = float(absmax_scale(x)) if scale is None else float(scale)
    with _quiet():
        q = torch.quantize_per_tensor(x.float(), s, 0, torch.qint8).int_repr()
    return q, s


def affine_qparams(x: torch.Tensor, dtype: str) -> tuple[float, int]:
    """MinMaxObserver's (scale, zero_point) for per-tensor affine ``dtype``; (1.0, qmin) for all zeros."""
    from torch.ao.quantization import MinMaxObserver

    qmin, _ = QRANGE[dtype]
    if not bool((x != 0).any()):
        return 1.0, qmin
    with _quiet():
        obs = MinMaxObserver(dtype=torch.quint8 if dtype == "uint8" else torch.qint8,
                             qscheme=torch.per_tensor_affine)
        obs(x.float())
        scale, zp = obs.calculate_qparams()
    return float(scale), int(zp)


def torch_affine(x: torch.Tensor, dtype: str) -> tuple[torch.Tensor, float, int]:
    """(codes, scale, zero_point) by MinMaxObserver + torch.quantize_per_tensor (quint8 / qint8)."""
    scale, zp = affine_qparams(x, dtype)
    with _quiet():
        q = torch.quantize_per_tensor(x.float(), scale, zp, torch.quint8 if dtype == "uint8" else torch.qint8)
    return q.int_repr(), scale, zp


def affine_by_formula(x: torch.Tensor, dtype: str) -> tuple[torch.Tensor, float, int]:
    """The same in float64 from the stated rule (a test checks it equals :func:`torch_affine`)."""
    qmin, qmax = QRANGE[dtype]
    lo, hi = min(float(x.min()), 0.0), max(float(x.max()), 0.0)
    if hi == lo:
        return torch.full(x.shape, qmin, dtype=torch.int64), 1.0, qmin
    scale = float(np.float32((hi - lo) / (qmax - qmin)))
    zp = int(min(max(qmin - np.round(lo / scale), qmin), qmax))
    q = torch.clamp(torch.round(x.double() / scale + zp), qmin, qmax).long()
    return q, scale, zp


def torch_dequantize(q: torch.Tensor, scale, zero_point) -> torch.Tensor:
    """dequantize() of the quantized tensor holding codes ``q`` (int8 or uint8): per tensor, or per row
    when ``scale`` and ``zero_point`` are (C, 1) tensors."""
    with _quiet():
        if isinstance(scale, torch.Tensor) and scale.numel() > 1:
            qt = torch._make_per_channel_quantized_tensor(q, scale.reshape(-1).double(),
                                                         zero_point.reshape(-1).long(), 0)
        else:
            qt = torch._make_per_tensor_quantized_tensor(q, float(scale), int(zero_point))
        return qt.dequantize()


# ----------------------------------------------------------------- per-channel and group-wise

def row_scales(w: torch.Tensor, bits: int) -> torch.Tensor:
    """max |w| of each row / (2^(bits-1) - 1) in float32; 1.0 for an all-zero row. (R,)"""
    m = w.abs().amax(dim=1).float()
    return torch.where(m == 0, torch.ones_like(m), m / float(qrange(bits)[1]))


def torch_per_channel(w: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes (R, C), scales (R,)): torch.quantize_per_channel on axis 0 as qint8."""
    scales = row_scales(w, bits)
    with _quiet():
        q = torch.quantize_per_channel(w.float(), scales.double(), torch.zeros(len(w), dtype=torch.long), 0,
                                       torch.qint8).int_repr()
    return q, scales


def torch_groupwise(w: torch.Tensor, group_size: int, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes (out, in), scales (out, in / group_size)): per-channel quantisation of one row per group."""
    out, inn = w.shape
    q, scales = torch_per_channel(w.reshape(out * inn // group_size, group_size), bits)
    return q.reshape(out, inn), scales.reshape(out, inn // group_size)


def formula_grouped(w: torch.Tensor, group_size: int, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The group-wise rule in float64 with explicit clamping (a test checks it equals the torch route)."""
    qmin, qmax = qrange(bits)
    out, inn = w.shape
    g = w.double().reshape(out, inn // group_size, group_size)
    scales = row_scales(w.reshape(-1, group_size), bits).double().reshape(out, -1, 1)
    q = torch.clamp(torch.round(g / scales), qmin, qmax).long()
    return q.reshape(out, inn), scales.reshape(out, -1).float()


def dequantize_grouped(q, scales) -> torch.Tensor:
    """codes (out, in) * their group's scale (out, in / g), in float32 as the student's model is built."""
    q, scales = torch.as_tensor(q), torch.as_tensor(scales)
    g = q.shape[1] // scales.shape[1]
    return (q.float().reshape(q.shape[0], -1, g) * scales.float()[..., None]).reshape(q.shape)


def weights_with_outliers(seed: int, label: str, out: int, inn: int, *, outliers: int = 3) -> torch.Tensor:
    """A weight matrix (out, in) of N(0, 0.02) with a few input channels (columns) 30x larger, as in LLMs."""
    g = hidden_torch_generator(seed, label)
    w = 0.02 * torch.randn(out, inn, generator=g)
    cols = torch.randperm(inn, generator=g)[:outliers]
    w[:, cols] *= 30.0
    return w


def nudged_groups(w: torch.Tensor, group_size: int, bits: int) -> torch.Tensor:
    out, inn = w.shape
    flat = w.reshape(-1, group_size)
    return away_from_ties(flat, row_scales(flat, bits)[:, None]).reshape(out, inn)


# ----------------------------------------------------------------- NF4 (bitsandbytes)

def _bnb():
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)  # the harmless CPU gemm_4bit message
    import bitsandbytes.functional as bnbf

    return bnbf


def nf4_table() -> torch.Tensor:
    """The 16 NF4 values as bitsandbytes holds them (float32, sorted; code 7 is 0.0)."""
    from bitsandbytes.backends.utils import CODE

    return CODE["nf4"].cpu().clone()


def bnb_nf4(x: torch.Tensor, blocksize: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes (n,) int64 0..15 in the flattened order of x, absmax (blocks,)) from bnb's quantize_4bit."""
    packed, state = _bnb().quantize_4bit(x.float().contiguous(), blocksize=blocksize, quant_type="nf4")
    flat = packed.reshape(-1).long()
    codes = torch.stack([flat >> 4, flat & 15], dim=1).reshape(-1)[:x.numel()]  # high nibble first
    return codes, state.absmax.float().clone()


def bnb_nf4_dequantize(codes: torch.Tensor, absmax: torch.Tensor, shape, blocksize: int) -> torch.Tensor:
    """bnb's dequantize_4bit of the codes, packed the way bnb packs them."""
    from bitsandbytes.functional import QuantState

    bnbf = _bnb()
    c = codes.reshape(-1).to(torch.uint8)
    if c.numel() % 2:
        c = torch.cat([c, torch.zeros(1, dtype=torch.uint8)])
    packed = ((c[0::2] << 4) | c[1::2]).unsqueeze(1)
    state = QuantState(absmax=absmax.float().contiguous(), shape=torch.Size(shape), code=nf4_table(),
                       blocksize=blocksize, quant_type="nf4", dtype=torch.float32)
    return bnbf.dequantize_4bit(packed, state).reshape(shape)


def nf4_away_from_midpoints(x: torch.Tensor, blocksize: int) -> torch.Tensor:
    """x moved where x / absmax(block) lies within MARGIN of a midpoint between two NF4 values."""
    flat = x.reshape(-1).double().clone()
    table = nf4_table()
    mids = ((table[:-1] + table[1:]) / 2).double()
    for start in range(0, flat.numel(), blocksize):
        block = flat[start:start + blocksize]
        m = block.abs().max()
        if m == 0:
            continue
        v = block / m
        d = v[:, None] - mids[None, :]
        near = d.abs().min(dim=1)
        bad = near.values < MARGIN
        if bad.any():
            sign = torch.sign(d.gather(1, near.indices[:, None])[:, 0] + 1e-15)
            block[bad] = ((v + 2 * MARGIN * sign) * m)[bad]
    return flat.float().reshape(x.shape)


# ----------------------------------------------------------------- the course model

#: the Linear layers of the course GPT's blocks that task 8 quantises (4 blocks x 4 = 16 matrices)
LINEAR_NAMES = tuple(f"h.{i}.{name}" for i in range(4) for name in ("attn.c_attn", "attn.c_proj", "mlp.c_fc",
                                                                       "mlp.c_proj"))


def model_bytes(model, quantized: dict, group_size: int) -> int:
    """Bytes of the quantised model: 4 bits per code, 4 per float32 scale, 4 per other parameter."""
    total = 0
    names = {f"{n}.weight" for n in quantized}
    for name, p in model.named_parameters():  # the tied lm_head / wte weight appears once
        if name in names:
            total += p.numel() // 2 + 4 * (p.numel() // group_size)
        else:
            total += 4 * p.numel()
    return total


def windows(tokens: torch.Tensor, starts) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, y) (N, 128): token windows at ``starts`` and the tokens after each position."""
    idx = torch.as_tensor(starts)[:, None] + torch.arange(128)[None, :]
    return tokens[idx], tokens[idx + 1]


def perplexity_on(model, x: torch.Tensor, y: torch.Tensor, batch: int = 32) -> float:
    """exp of the mean next-token cross-entropy (summed in float64) of ``model`` on windows (x, y)."""
    total, n = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(x), batch):
            logits = model(x[i:i + batch])[0]
            total += float(torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).double(),
                                                             y[i:i + batch].reshape(-1), reduction="sum"))
            n += y[i:i + batch].numel()
    return math.exp(total / n)


def with_weights(model, quantized: dict):
    """A copy of ``model`` whose listed Linear weights are the dequantised (codes, scales)."""
    import copy

    m = copy.deepcopy(model)
    with torch.no_grad():
        for name, (q, s) in quantized.items():
            m.get_submodule(name).weight.copy_(dequantize_grouped(q, s))
    return m.eval()


def quantize_model_probe(student_fn, tokens, group_size):
    """PROBE: load the course model in the sandbox, call ``student_fn(model, tokens, group_size)``, and
    return ``{"quantized": {name: (codes, scales)}, "report": {...}}`` as plain data (or ``{"problem"}``)."""
    from llmcourse.pretrained import load_base

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model, _ = load_base("course")
        result = student_fn(model, tokens.clone(), group_size)
    finally:
        torch.set_num_threads(threads)
    if result is None:
        return {"problem": "your function returned None (is a `return` missing?)"}
    if not (isinstance(result, (tuple, list)) and len(result) == 2 and isinstance(result[0], dict)
            and isinstance(result[1], dict)):
        return {"problem": f"expected a tuple (quantized, report) of two dicts, got {type(result).__name__}"}
    quantized, out = {}, {}
    for name, value in result[0].items():
        if not (isinstance(value, (tuple, list)) and len(value) == 2):
            return {"problem": f"quantized[{name!r}] must be a tuple (codes, scales), got {type(value).__name__}"}
        codes, scales = (torch.as_tensor(v).detach().cpu() for v in value)
        if not codes.is_floating_point() and codes.numel() and int(codes.min()) >= -128 and int(codes.max()) <= 127:
            codes = codes.to(torch.int8)  # smaller on the wire; the check reads the values
        quantized[str(name)] = (codes, scales.float() if scales.is_floating_point() else scales)
    for key, value in result[1].items():
        out[str(key)] = value.detach().cpu() if isinstance(value, torch.Tensor) else value
    return {"quantized": quantized, "report": out}
