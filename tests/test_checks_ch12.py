"""The chapter 12 checks are fair both ways: correct answers get full marks, planted mistakes fail.

The solution functions come from the nbgrader source notebook (setup and answer cells, run as a
notebook kernel would). Beside them each task has three or more correct implementations written
differently (NumPy in float64, Python loops, bucketize over midpoints, unfold, inverse-scale
multiplication, other thread counts), which must pass too. Each wrong implementation is a mistake a
student could plausibly make, written as a student would; each must make its check raise CheckFailed
naming what differs (and, where the check recognises it, the mistake).
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from autograder.checks import _ch12_cases as cases
from autograder.checks import _ch12_mistakes as mis
from autograder.checks import _ch12_references as ref
from autograder.checks import ch12_quantization as checks
from autograder.compare import CheckFailed
from autograder.guard import ForbiddenCall, static_violations
from tests.notebook_kernel import assert_checks_hold, kernel, planted, solution_of, switched

ASSIGNMENT = "ch12_quantization"
# The mistake the nbgrader round trip plants: dequantize subtracts the zero point in the codes' own 8-bit
# type, which wraps around. Only the dequantize task may lose points (quantize_model calls dequantize
# with int8 codes and a zero point of 0, which cannot wrap).
ROUND_TRIP_MISTAKE = ("ch12_dequantize_answer",
                      "def dequantize(q, scale, zero_point=0):\n"
                      "    return (q - zero_point).to(torch.float32) * scale\n")

pytestmark = pytest.mark.ch12

NF4 = ref.nf4_table()


def check_of(task):
    return getattr(checks, task.check)


# ----------------------------------------------------------------- the notebook and the references

@pytest.mark.parametrize("task", checks.TASKS, ids=lambda t: t.grade_id)
def test_solution_passes_check(task, one_thread):
    check_of(task)(solution_of(ASSIGNMENT)[task.name])


def test_torch_references_equal_the_stated_formulas():
    """MinMaxObserver + quantize_per_tensor, and quantize_per_channel, are the rules the notebook states."""
    for inputs, x, dtype in cases.zeropoint_cases():
        q, s, z = ref.torch_affine(x, dtype)
        q2, s2, z2 = ref.affine_by_formula(x, dtype)
        assert z == z2 and math.isclose(s, s2, rel_tol=1e-6), inputs
        assert torch.equal(q.long(), q2), inputs
    for inputs, w, group, bits in cases.groupwise_cases():
        q, s = ref.torch_groupwise(w, group, bits)
        q2, s2 = ref.formula_grouped(w, group, bits)
        assert torch.equal(q.long(), q2) and torch.equal(s, s2), inputs
        assert int(q.min()) >= -2 ** (bits - 1) and int(q.max()) <= 2 ** (bits - 1) - 1


def test_bnb_layout_is_high_nibble_first_and_matches_nearest_value():
    x = ref.nf4_away_from_midpoints(torch.randn(3, 100), 64)
    codes, absmax = ref.bnb_nf4(x, 64)
    flat = x.reshape(-1)
    per = absmax.repeat_interleave(64)[:300]
    nearest = ((flat / per)[:, None] - NF4[None, :]).abs().argmin(dim=1)
    assert torch.equal(codes, nearest)
    torch.testing.assert_close(ref.bnb_nf4_dequantize(codes, absmax, x.shape, 64), (NF4[codes] * per).reshape(x.shape))


def test_inputs_keep_clear_of_rounding_boundaries_except_the_tie_cases():
    for inputs, x, scale in cases.absmax_cases():
        v = x.double() / float(ref.torch_absmax(x, scale)[1])
        off = ((v - v.floor()) - 0.5).abs()
        assert ("ties" in inputs["case"]) == bool((off < 1e-9).any()), inputs
        assert not ((off > 1e-9) & (off < ref.MARGIN)).any(), inputs
    for inputs, x, dtype in cases.zeropoint_cases():
        _, s, z = ref.torch_affine(x, dtype)
        v = x.double() / s + z
        off = ((v - v.floor()) - 0.5).abs()
        assert not ((off > 1e-9) & (off < ref.MARGIN)).any(), inputs


def test_course_secret_changes_the_inputs(monkeypatch):
    public = [c[1] for c in cases.absmax_cases()[:4]] + [c[1] for c in cases.nf4_cases()[:4]]
    windows = cases.model_windows(torch.arange(20000), 4097, 48)
    monkeypatch.setenv("AUTOGRADER_SECRET", "course secret A")
    hidden = [c[1] for c in cases.absmax_cases()[:4]] + [c[1] for c in cases.nf4_cases()[:4]]
    assert all(a.shape == b.shape and not torch.equal(a, b) for a, b in zip(public, hidden))
    assert cases.model_windows(torch.arange(20000), 4097, 48) != windows


# ----------------------------------------------------------------- correct variants

def absmax_numpy(x, scale=None):
    a = x.numpy().astype(np.float64)
    s = float(np.abs(a).max() / 127) if scale is None and np.abs(a).max() > 0 else (1.0 if scale is None else scale)
    return torch.from_numpy(np.clip(np.rint(a / s), -128, 127).astype(np.int8)), s


def absmax_loop(x, scale=None):
    values = x.reshape(-1).tolist()
    if scale is None:
        largest = max(abs(v) for v in values)
        scale = largest / 127 if largest else 1.0
    codes = [min(max(round(v / scale), -128), 127) for v in values]  # round(): half to even
    return torch.tensor(codes, dtype=torch.int16).reshape(x.shape), scale


def absmax_inverse(x, scale=None):
    """x * (1 / s) in float32, torch.where for the zero case, the scale as a 0-d tensor."""
    m = x.abs().amax()
    s = torch.where(m > 0, m / 127, torch.ones(())) if scale is None else torch.tensor(float(scale))
    return torch.round(x * (1 / s)).clip(-128, 127).to(torch.int32), s


def zp_numpy(x, dtype="uint8"):
    qmin, qmax = {"uint8": (0, 255), "int8": (-128, 127)}[dtype]
    a = x.numpy().astype(np.float64)
    lo, hi = min(a.min(), 0.0), max(a.max(), 0.0)
    if hi == lo:
        return torch.full(x.shape, qmin), 1.0, qmin
    s = (hi - lo) / (qmax - qmin)
    z = int(np.clip(qmin - np.rint(lo / s), qmin, qmax))
    return torch.from_numpy(np.clip(np.rint(a / s + z), qmin, qmax).astype(np.int64)), s, z


def zp_float32_tensors(x, dtype="uint8"):
    """Everything as float32 tensors; the zero point a 0-d int tensor."""
    qmin, qmax = (0, 255) if dtype == "uint8" else (-128, 127)
    lo, hi = torch.clamp(x.min(), max=0.0), torch.clamp(x.max(), min=0.0)
    s = (hi - lo) / (qmax - qmin)
    if s == 0:
        s = torch.tensor(1.0)
    z = torch.clamp(qmin - torch.round(lo / s), qmin, qmax).to(torch.int32)
    q = torch.clamp(torch.round(x / s + z), qmin, qmax)
    return q.to(torch.uint8 if dtype == "uint8" else torch.int8), s, z


def zp_loop(x, dtype="uint8"):
    qmin, qmax = {"uint8": (0, 255), "int8": (-128, 127)}[dtype]
    values = x.reshape(-1).tolist()
    lo, hi = min(min(values), 0.0), max(max(values), 0.0)
    s = (hi - lo) / (qmax - qmin) if hi > lo else 1.0
    z = min(max(qmin - round(lo / s), qmin), qmax)
    return torch.tensor([min(max(round(v / s + z), qmin), qmax) for v in values]).reshape(x.shape), s, z


def deq_numpy(q, scale, zero_point=0):
    return torch.from_numpy((q.numpy().astype(np.float64) - np.asarray(zero_point)) * np.asarray(scale))


def deq_int32(q, scale, zero_point=0):
    return (q.to(torch.int32) - zero_point) * scale


def deq_double(q, scale, zero_point=0):
    return torch.sub(q.double(), torch.as_tensor(zero_point)).mul(torch.as_tensor(scale).double()).float()


def pc_numpy(w, bits=4):
    a = w.numpy().astype(np.float64)
    qmax = 2 ** (bits - 1) - 1
    m = np.abs(a).max(axis=1)
    s = np.where(m > 0, m / qmax, 1.0)
    return torch.from_numpy(np.clip(np.rint(a / s[:, None]), -qmax - 1, qmax).astype(np.int8)), torch.from_numpy(s)


def pc_rows_loop(w, bits=4):
    qmax = 2 ** (bits - 1) - 1
    q, scales = torch.zeros(w.shape, dtype=torch.int64), []
    for r in range(w.shape[0]):
        s = float(w[r].abs().max()) / qmax or 1.0
        scales.append(s)
        q[r] = torch.tensor([min(max(round(v / s), -qmax - 1), qmax) for v in w[r].tolist()])
    return q, torch.tensor(scales)


def pc_keepdim(w, bits=4):
    """Scales of shape (out, 1), kept for broadcasting."""
    qmax = 2 ** (bits - 1) - 1
    s = w.abs().amax(dim=1, keepdim=True) / qmax
    s = torch.where(s == 0, torch.ones_like(s), s)
    return torch.round(w * (1.0 / s)).clamp(-qmax - 1, qmax).to(torch.int8), s


def gw_indexing(w, group_size, bits=4):
    out, inn = w.shape
    if inn % group_size != 0:
        raise ValueError(f"{inn} input features do not split into groups of {group_size}")
    qmax = 2 ** (bits - 1) - 1
    q, scales = torch.empty(out, inn, dtype=torch.int8), torch.empty(out, inn // group_size)
    for g in range(inn // group_size):
        block = w[:, g * group_size:(g + 1) * group_size]
        s = block.abs().amax(dim=1) / qmax
        s[s == 0] = 1.0
        scales[:, g] = s
        q[:, g * group_size:(g + 1) * group_size] = torch.clamp(torch.round(block / s[:, None]), -qmax - 1, qmax)
    return q, scales


def gw_numpy(w, group_size, bits=4):
    a = w.numpy().astype(np.float64).reshape(w.shape[0], -1, group_size)  # ValueError when it does not fit
    qmax = 2 ** (bits - 1) - 1
    m = np.abs(a).max(axis=2, keepdims=True)
    s = np.where(m > 0, m / qmax, 1.0)
    q = np.clip(np.rint(a / s), -qmax - 1, qmax).astype(np.int64).reshape(w.shape)
    return torch.from_numpy(q), torch.from_numpy(s[..., 0])


def gw_unfold(w, group_size, bits=4):
    if w.shape[1] % group_size:
        raise ValueError("in_features must be a multiple of group_size")
    qmax = 2 ** (bits - 1) - 1
    groups = w.unfold(1, group_size, group_size)  # (out, in / g, g)
    s = groups.abs().amax(-1)
    s = torch.where(s > 0, s / qmax, torch.ones_like(s))
    q = torch.round(groups / s[..., None]).clamp(-qmax - 1, qmax).to(torch.int16)
    return q.reshape(w.shape), s


def nf4_bucketize(x, blocksize=64):
    """Midpoints and bucketize, as bitsandbytes does it."""
    flat = x.reshape(-1)
    n = flat.numel()
    absmax = torch.stack([flat[i:i + blocksize].abs().max() for i in range(0, n, blocksize)])
    per = absmax.repeat_interleave(blocksize)[:n]
    scaled = flat / torch.where(per > 0, per, torch.ones_like(per))
    mids = (NF4[1:] + NF4[:-1]) / 2
    return torch.bucketize(scaled, mids).to(torch.int32), absmax


def nf4_numpy(x, blocksize=64):
    a = x.numpy().astype(np.float64).reshape(-1)
    table = NF4.numpy().astype(np.float64)
    codes, absmax = np.empty(a.size, dtype=np.int64), []
    for start in range(0, a.size, blocksize):
        block = a[start:start + blocksize]
        m = np.abs(block).max()
        absmax.append(m)
        v = block / m if m > 0 else block
        codes[start:start + blocksize] = np.abs(v[:, None] - table[None, :]).argmin(axis=1)
    return torch.from_numpy(codes), torch.tensor(absmax, dtype=torch.float32)


def nf4_shaped_codes(x, blocksize=64):
    """Codes returned in the shape of x (the same order), found by the distance to every value in a loop."""
    flat = x.reshape(-1)
    codes, absmax = [], []
    for start in range(0, flat.numel(), blocksize):
        block = flat[start:start + blocksize]
        m = float(block.abs().max())
        absmax.append(m)
        for v in block.tolist():
            d = [abs((v / m if m else 0.0) - float(c)) for c in NF4]
            codes.append(d.index(min(d)))
    return torch.tensor(codes, dtype=torch.uint8).reshape(x.shape), torch.tensor(absmax)


def nf4d_numpy(codes, absmax, shape, blocksize=64):
    n = codes.numel()
    per = np.repeat(absmax.numpy().astype(np.float64), blocksize)[:n]
    return torch.from_numpy(NF4.numpy().astype(np.float64)[codes.numpy().astype(np.int64)] * per).reshape(shape)


def nf4d_index(codes, absmax, shape, blocksize=64):
    i = torch.arange(codes.numel())
    return (NF4[codes.long()] * absmax[i // blocksize]).reshape(*shape)


def nf4d_loop(codes, absmax, shape, blocksize=64):
    out = [float(NF4[c]) * float(absmax[i // blocksize]) for i, c in enumerate(codes.tolist())]
    return torch.tensor(out).reshape(shape)


def _perplexity_own(model, tokens):
    """Non-overlapping windows of 128, the losses summed in float64: pretraining_perplexity by hand."""
    n = (len(tokens) - 1) // 128
    x, y = tokens[:n * 128].view(n, 128), tokens[1:n * 128 + 1].view(n, 128)
    with torch.no_grad():
        logits = model(x)[0]
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).double(), y.reshape(-1))
    return math.exp(float(loss))


def _qmodel(model, tokens, group_size=64, *, quantize=None, own_ppl=False, how=None):
    """The task-8 variants and mistakes: ``how`` plants one mistake."""
    from llmcourse.sft import pretraining_perplexity

    quantize = quantize or gw_unfold
    names = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n.startswith("h.")]
    target = model if how == "in_place" else copy.deepcopy(model)
    base = None if how == "in_place" else pretraining_perplexity(model, tokens)
    quantized = {}
    for name in names:
        w = target.get_submodule(name).weight
        if how == "columns":
            q, s = quantize(w.detach().T.contiguous(), group_size)
            q, s = q.T, s.T
            deq = (q.double().T.reshape(w.shape[1], -1, group_size) * s.T.double()[..., None]).reshape(w.shape[1],
                                                                                                      -1).T
        else:
            q, s = quantize(w.detach(), group_size)
            if how == "trunc":
                q = torch.trunc(w.detach().double().reshape(w.shape[0], -1, group_size) / s.double()[..., None]).clamp(
                    -8, 7).reshape(w.shape).long()
            if how == "three_bits":
                q, s = gw_numpy(w.detach(), group_size, bits=3)
            deq = (q.double().reshape(w.shape[0], -1, group_size) * s.double()[..., None]).reshape(w.shape)
        quantized[name] = (q, s)
        if how != "forgot_to_apply":
            with torch.no_grad():
                w.copy_(deq.float())
    if how == "in_place":
        base = pretraining_perplexity(model, tokens)
    ppl = (_perplexity_own if own_ppl else pretraining_perplexity)(target, tokens)
    params = list(model.state_dict().items()) if how == "state_dict" else list(model.named_parameters())
    n_bytes = 0
    for name, p in params:
        if name.removesuffix(".weight") in quantized and name.endswith(".weight"):
            n_bytes += p.numel() * (1 if how == "int8_storage" else 0.5) + 4 * p.numel() // group_size
        else:
            n_bytes += 4 * p.numel()
    return quantized, {"bytes": int(n_bytes), "perplexity": ppl, "base_perplexity": base}


def qm_unfold_own_perplexity(model, tokens, group_size=64):
    return _qmodel(model, tokens, group_size, own_ppl=True)


def qm_numpy_groups(model, tokens, group_size=64):
    return _qmodel(model, tokens, group_size, quantize=gw_numpy)


def qm_indexing(model, tokens, group_size=64):
    return _qmodel(model, tokens, group_size, quantize=gw_indexing)


CORRECT = {
    "check_absmax_quantize": [absmax_numpy, absmax_loop, absmax_inverse],
    "check_zeropoint_quantize": [zp_numpy, zp_float32_tensors, zp_loop],
    "check_dequantize": [deq_numpy, deq_int32, deq_double],
    "check_per_channel_quantize": [pc_numpy, pc_rows_loop, pc_keepdim],
    "check_groupwise_quantize": [gw_indexing, gw_numpy, gw_unfold],
    "check_nf4_quantize": [nf4_bucketize, nf4_numpy, nf4_shaped_codes],
    "check_nf4_dequantize": [nf4d_numpy, nf4d_index, nf4d_loop],
    "check_quantize_model": [qm_unfold_own_perplexity, qm_numpy_groups, qm_indexing],
}


@pytest.mark.parametrize("check, fn", [pytest.param(c, f, id=f.__name__) for c, fs in CORRECT.items() for f in fs])
def test_check_accepts_correct_variants(check, fn, one_thread):
    getattr(checks, check)(fn)


# ----------------------------------------------------------------- planted mistakes

def _absmax(x, scale=None, *, how):
    if scale is None:
        m = x.max() if how == "max_not_abs" else x.abs().max()
        scale = float(m / (128 if how == "div128" else 127)) if m > 0 or how == "zero_nan" else 1.0
    v = x / scale
    if how == "trunc":
        return v.to(torch.int8), scale                      # an int cast truncates (and wraps)
    if how == "half_away":
        v = torch.sign(v) * torch.floor(v.abs() + 0.5)
    else:
        v = torch.round(v)
    if how == "wrap":
        return v.to(torch.int16).to(torch.int8), scale       # no clamp: 200 wraps to -56
    return v.clamp(-127 if how == "clamp127" else -128, 127).to(torch.int8), scale


def _absmax_float_codes(x, scale=None):
    q, s = _absmax(x, scale, how=None)
    return q.float(), s


ABSMAX_MISTAKES = planted(
    (switched(_absmax, "absmax_div128", how="div128"), r"scale for case=N\(0, 1\).*divide by 127"),
    (switched(_absmax, "absmax_max_not_abs", how="max_not_abs"), r"scale .*the largest magnitude may be negative"),
    (switched(_absmax, "absmax_trunc", how="trunc"), r"q \(vs torch\.quantize_per_tensor, qint8\) for case=N\(0, 1\).*"
                                                    r"rounded toward zero"),
    (switched(_absmax, "absmax_half_away", how="half_away"), r"case=exact ties.*values differ.*round half to even"),
    (switched(_absmax, "absmax_wraps", how="wrap"), r"case=a calibrated scale.*wrap around"),
    (switched(_absmax, "absmax_clamp127", how="clamp127"), r"case=a calibrated scale.*clamped to \[-127, 127\]"),
    (switched(_absmax, "absmax_zero_nan", how="zero_nan"), r"case=all zeros.*use the scale 1\.0 there"),
    (_absmax_float_codes, r"expected an integer tensor"),
)


def _zp(x, dtype="uint8", *, how):
    qmin, qmax = (0, 255) if dtype == "uint8" or how == "uint8_range" else (-128, 127)
    lo, hi = float(x.min()), float(x.max())
    if how != "no_zero":
        lo, hi = min(lo, 0.0), max(hi, 0.0)
    if hi == lo:
        return torch.full(x.shape, qmin), 1.0, qmin
    s = (hi - lo) / (256 if how == "div256" else qmax - qmin)
    z = qmin - lo / s
    if how != "zp_float":
        z = int(round(z)) if how == "no_zero" else int(min(max(round(z), qmin), qmax))
    if how == "round_then_add":
        return torch.clamp(torch.round(x / s) + z, qmin, qmax).long(), s, z
    if how == "trunc":
        return torch.clamp((x / s + z).long(), qmin, qmax), s, z  # .long() truncates toward zero
    return torch.clamp(torch.round(x / s + z), qmin, qmax).long(), s, z


ZEROPOINT_MISTAKES = planted(
    (switched(_zp, "zp_range_without_zero", how="no_zero"), r"case=all positive.*extend it to contain 0"),
    (switched(_zp, "zp_not_rounded", how="zp_float"), r"zero_point for case=N\(0, 1\).*not an integer.*must be an "
                                                     r"integer"),
    (switched(_zp, "zp_rounds_before_adding", how="round_then_add"), r"case=exact ties.*torch rounds after adding the "
                                                                   r"zero point"),
    (switched(_zp, "zp_div256", how="div256"), r"scale \(vs MinMaxObserver\).*divide by qmax - qmin = 255"),
    (switched(_zp, "zp_uint8_range_always", how="uint8_range"), r"dtype=int8.*the int8 range is \[-128, 127\]"),
    (switched(_zp, "zp_trunc", how="trunc"), r"q \(vs torch\.quantize_per_tensor.*values differ"),
)


def deq_wraps(q, scale, zero_point=0):
    return (q - zero_point).float() * scale


def deq_ignores_zero_point(q, scale, zero_point=0):
    return q.float() * scale


def deq_scale_first(q, scale, zero_point=0):
    return q.float() * scale - zero_point


def deq_returns_codes_dtype(q, scale, zero_point=0):
    return ((q.float() - zero_point) * scale).to(q.dtype)


DEQUANTIZE_MISTAKES = planted(
    (deq_wraps, r"values \(vs torch's dequantize\(\)\) for case=uint8 codes, zero point 128.*wraps around"),
    (deq_ignores_zero_point, r"case=uint8 codes.*the zero point is ignored"),
    (deq_scale_first, r"the zero point is subtracted after scaling"),
    (deq_returns_codes_dtype, r"expected float values, got dtype uint8"),
)


def _pc(w, bits=4, *, how):
    qmax = 2 ** (bits - 1) - 1
    if how == "axis1":
        m = w.abs().amax(dim=0)                               # per column: the wrong axis
        s = torch.where(m > 0, m / qmax, torch.ones_like(m))
        return torch.round(w / s).clamp(-qmax - 1, qmax).to(torch.int8), s
    m = w.abs().max().expand(w.shape[0]) if how == "per_tensor" else w.abs().amax(dim=1)
    s = torch.where(m > 0, m / (qmax + 1 if how == "div8" else qmax), torch.ones_like(m))
    v = w / s[:, None]
    q = v.to(torch.int8) if how == "trunc" else torch.round(v).clamp(-qmax - 1, qmax).to(torch.int8)
    return q, s


PER_CHANNEL_MISTAKES = planted(
    (switched(_pc, "pc_wrong_axis", how="axis1"), r"scales \(one per output channel, a row of w\) for case=N\(0, 0\.02\)"
                                                r".*shape \(32,\) but expected \(16,\)"),
    (switched(_pc, "pc_per_tensor", how="per_tensor"), r"scales .*one scale for the whole tensor"),
    (switched(_pc, "pc_div8", how="div8"), r"scales .*divide by 2\^\(bits-1\) - 1"),
    (switched(_pc, "pc_trunc", how="trunc"), r"q \(vs torch\.quantize_per_channel, axis 0\).*rounded toward zero"),
)


def _gw(w, group_size, bits=4, *, how):
    out, inn = w.shape
    if how != "no_check" and inn % group_size:
        raise ValueError("in_features must be a multiple of group_size")
    qmax = 2 ** (bits - 1) - 1
    if how == "columns":                                      # groups of group_size down each column
        q, s = gw_numpy(w.T.contiguous(), group_size, bits)
        return q.T, s.T
    if how == "flat_columns":
        g = w.T.reshape(-1, group_size)                       # column-major flattening, then groups
    else:
        g = w.reshape(-1, group_size if how != "per_row" else inn)
    m = g.abs().amax(dim=1, keepdim=True)
    s = torch.where(m > 0, m / (qmax + 1 if how == "div8" else qmax), torch.ones_like(m))
    q = torch.round(g / s).clamp(-qmax - 1, qmax).to(torch.int8)
    if how == "flat_columns":
        return q.reshape(inn, out).T, s.reshape(out, -1)
    return q.reshape(out, inn), s.reshape(out, -1)


def gw_no_value_error(w, group_size, bits=4):
    out, inn = w.shape
    n = inn // group_size
    return gw_numpy(w[:, :n * group_size].contiguous(), group_size, bits)[0], torch.ones(out, n)


GROUPWISE_MISTAKES = planted(
    (switched(_gw, "gw_down_columns", how="columns"), r"(cannot reshape array .* for case=N\(0, 0\.02\), "
                                                    r"shape=\(8, 64\)|scales .*but expected \(8, 4\))"),
    (switched(_gw, "gw_column_major", how="flat_columns"), r"scales .*max \|got-want\|.*column-major order"),
    (switched(_gw, "gw_ignores_group_size", how="per_row"), r"scales .*shape \(8, 1\) but expected \(8, 4\)"),
    (switched(_gw, "gw_div8", how="div8"), r"scales .*divide by 2\^\(bits-1\) - 1"),
    (gw_no_value_error, r"scales .*max \|got-want\|"),
)


def gw_crops_instead_of_raising(w, group_size, bits=4):
    n = w.shape[1] // group_size * group_size
    return solution_of(ASSIGNMENT)["groupwise_quantize"](w[:, :n], group_size, bits) if n != w.shape[1] else \
        solution_of(ASSIGNMENT)["groupwise_quantize"](w, group_size, bits)


def gw_asserts(w, group_size, bits=4):
    assert w.shape[1] % group_size == 0, "in_features must be a multiple of group_size"
    return solution_of(ASSIGNMENT)["groupwise_quantize"](w, group_size, bits)


GROUPWISE_MISTAKES += planted(
    (gw_crops_instead_of_raising, r"in_features not a multiple of group_size.*returned; expected a ValueError"),
    (gw_asserts, r"raised AssertionError \(in_features must be a multiple of group_size.*\); expected a ValueError"),
)


def _nf4(x, blocksize=64, *, how):
    codes, absmax = mis.nf4_mistake(x, blocksize, how)
    return codes.to(torch.uint8), absmax


def nf4_packed_low_nibble_first(x, blocksize=64):
    codes, absmax = nf4_bucketize(x, blocksize)
    c = torch.cat([codes, torch.zeros(codes.numel() % 2, dtype=codes.dtype)]).to(torch.uint8)
    return (c[1::2] << 4) | c[0::2], absmax


NF4_MISTAKES = planted(
    (switched(_nf4, "nf4_uniform_grid", how="uniform"), r"codes \(vs bitsandbytes quantize_4bit, nf4\) for case=N\(0, 1\)"
                                                       r".*uniform grid"),
    (switched(_nf4, "nf4_one_absmax", how="global_absmax"), r"absmax \(one per block, vs bitsandbytes\).*one absmax "
                                                           r"for the whole tensor"),
    (switched(_nf4, "nf4_column_order", how="columns"), r"case=N\(0, 1\), shape=\(4, 64\).*column order"),
    (switched(_nf4, "nf4_floor", how="floor"), r"codes .*the largest NF4 value below it"),
    (switched(_nf4, "nf4_not_normalised", how="unnormalised"), r"codes .*not divided by their block's absmax"),
    (nf4_packed_low_nibble_first, r"codes .*shape \(32,\) but expected \(64,\)"),
)


def nf4d_tiled(codes, absmax, shape, blocksize=64):
    return (NF4[codes.long()] * absmax.repeat(blocksize)[:codes.numel()]).reshape(shape)


def nf4d_uniform(codes, absmax, shape, blocksize=64):
    return ((codes.float() / 7.5 - 1) * absmax.repeat_interleave(blocksize)[:codes.numel()]).reshape(shape)


def nf4d_full_blocks_only(codes, absmax, shape, blocksize=64):
    n = codes.numel() // blocksize * blocksize
    return (NF4[codes[:n].long()].reshape(-1, blocksize) * absmax[:n // blocksize, None]).reshape(-1)


NF4_DEQUANTIZE_MISTAKES = planted(
    (nf4d_tiled, r"values \(vs bitsandbytes dequantize_4bit\) for shape=\(4, 64\).*repeat_interleave"),
    (nf4d_uniform, r"uniform grid: look each code up in NF4_VALUES"),
    (nf4d_full_blocks_only, r"shape \(256,\) but expected \(4, 64\)|shape \(64,\) but expected"),
)


MODEL_MISTAKES = planted(
    (switched(_qmodel, "qm_truncates", how="trunc"), r"held out from you the perplexity rose from .* \(\+\d\.\d\d %\), "
                                                    r"more than \+1 %"),
    (switched(_qmodel, "qm_three_bits", how="three_bits"), r"more than \+1 %"),
    (switched(_qmodel, "qm_groups_down_columns", how="columns"), r"quantized\['h\.0\.attn\.c_attn'\].*expected \(384, "
                                                               r"128\) and \(384, 2\)"),
    (switched(_qmodel, "qm_int8_storage", how="int8_storage"), r"report\['bytes'\].*got 1977344, expected 1584128"),
    (switched(_qmodel, "qm_tied_weight_twice", how="state_dict"), r"report\['bytes'\].*expected 1584128.*counted once"),
    (switched(_qmodel, "qm_reports_the_unquantised_model", how="forgot_to_apply"), r"report\['perplexity'\] \(the "
                                                                                  r"grader's, on the same tokens\)"),
    (switched(_qmodel, "qm_quantises_in_place", how="in_place"), r"report\['base_perplexity'\]"),
)

MISTAKES = {"check_absmax_quantize": ABSMAX_MISTAKES, "check_zeropoint_quantize": ZEROPOINT_MISTAKES,
            "check_dequantize": DEQUANTIZE_MISTAKES, "check_per_channel_quantize": PER_CHANNEL_MISTAKES,
            "check_groupwise_quantize": GROUPWISE_MISTAKES, "check_nf4_quantize": NF4_MISTAKES,
            "check_nf4_dequantize": NF4_DEQUANTIZE_MISTAKES, "check_quantize_model": MODEL_MISTAKES}


@pytest.mark.parametrize("check, wrong, match", [pytest.param(c, *p.values, id=p.id) for c, ps in MISTAKES.items()
                                                 for p in ps])
def test_check_rejects_planted_mistake(check, wrong, match, one_thread):
    with pytest.raises(CheckFailed, match=match):
        getattr(checks, check)(wrong)


def test_planted_helpers_are_right_when_not_broken(one_thread):
    """Each planted mistake differs from a correct implementation only in its one mistake."""
    checks.check_absmax_quantize(switched(_absmax, "absmax", how=None))
    checks.check_zeropoint_quantize(switched(_zp, "zp", how=None))
    checks.check_per_channel_quantize(switched(_pc, "pc", how=None))
    checks.check_groupwise_quantize(switched(_gw, "gw", how=None))
    checks.check_nf4_quantize(switched(_nf4, "nf4", how="none"))


def test_every_hint_mistake_changes_some_case():
    """A hint that no case can tell apart from the right answer would be a hint without teeth."""
    def differs(x, s, m):
        try:
            q, scale = mis.absmax_mistake(x, s, m)
        except LookupError:  # a mistake that applies to some inputs only
            return False
        want_q, want_s = ref.torch_absmax(x, s)
        return not torch.equal(q, want_q.long()) or scale != want_s

    for m, _ in mis.ABSMAX_MISTAKES:
        assert any(differs(x, s, m) for _, x, s in cases.absmax_cases()), m
    for m, _ in mis.NF4_MISTAKES:
        assert any(not torch.equal(mis.nf4_mistake(x, b, m)[0], ref.bnb_nf4(x, b)[0]) for _, x, b in cases.nf4_cases()), m


# ----------------------------------------------------------------- the guard

SETUP = "import torch\nimport numpy as np\n"


def test_guard_refuses_torch_quantize_per_tensor():
    ns = kernel(SETUP, "def absmax_quantize(x, scale=None):\n"
                "    s = float(x.abs().max() / 127) if scale is None else scale\n"
                "    return torch.quantize_per_tensor(x, s, 0, torch.qint8).int_repr(), s\n")
    with pytest.raises(ForbiddenCall, match=r"absmax_quantize uses torch\.quantize_per_tensor"):
        checks.check_absmax_quantize(ns["absmax_quantize"])


def test_guard_refuses_bitsandbytes_and_the_observer_even_hidden():
    ns = kernel(SETUP, "import bitsandbytes.functional as bf\n",
                "def nf4_quantize(x, blocksize=64):\n"
                "    packed, state = bf.quantize_4bit(x, blocksize=blocksize, quant_type='nf4')\n"
                "    return packed, state.absmax\n")
    with pytest.raises(ForbiddenCall, match=r"nf4_quantize uses bf\.quantize_4bit \(from bitsandbytes\)"):
        checks.check_nf4_quantize(ns["nf4_quantize"])
    ns = kernel(SETUP, "def zeropoint_quantize(x, dtype='uint8'):\n"
                "    import importlib\n"
                "    obs = getattr(importlib.import_module('torch.ao.' + 'quantization'), 'MinMaxObserver')()\n"
                "    obs(x)\n"
                "    s, z = obs.calculate_qparams()\n"
                "    return torch.round(x / s + z), float(s), int(z)\n", keep_source=False)
    with pytest.raises(ForbiddenCall, match=r"your code called torch\.ao\.quantization"):
        checks.check_zeropoint_quantize(ns["zeropoint_quantize"])


def test_correct_variants_use_nothing_forbidden():
    for task in checks.TASKS:
        for fn in (solution_of(ASSIGNMENT)[task.name], *CORRECT[task.check]):
            assert static_violations(fn, modules=task.modules, callables=task.callables) == [], fn.__name__


# ----------------------------------------------------------------- under a course secret

SECRETS = ("course secret A", "another secret", "3")


@pytest.mark.parametrize("secret", SECRETS)
def test_checks_hold_under_several_course_secrets(monkeypatch, secret, one_thread):
    """With a secret the inputs change; the solution and the correct variants still pass, mistakes fail.

    The model task runs its solution and the two mistakes that only the held-out text can catch."""
    monkeypatch.setenv("AUTOGRADER_SECRET", secret)
    correct = dict(CORRECT, check_quantize_model=[])
    mistakes = dict(MISTAKES, check_quantize_model=MODEL_MISTAKES[:2])
    assert_checks_hold(ASSIGNMENT, checks, checks.TASKS, correct, mistakes)


# ----------------------------------------------------------------- the tolerances

def measure_spread(secrets=(None,)) -> dict:
    """Largest |got - want| / (1 + |want|) of the solution and the correct variants, for TOL (scales, values).

    ``python -c "from tests.test_checks_ch12 import measure_spread; print(measure_spread(range(20)))"``
    gives the number written beside ``TOL`` in ``autograder/checks/ch12_quantization.py``.
    """
    import os
    from unittest import mock

    spread = {"TOL": 0.0}

    def record(got, want, **kwargs):
        g = np.asarray(got.detach() if hasattr(got, "detach") else got, dtype=float)
        w = np.asarray(want.detach() if hasattr(want, "detach") else want, dtype=float)
        if g.shape == w.shape:
            spread["TOL"] = max(spread["TOL"], float(np.max(np.abs(g - w) / (1 + np.abs(w)), initial=0.0)))

    old = os.environ.get("AUTOGRADER_SECRET")
    try:
        with mock.patch.object(checks, "assert_close", record):
            for secret in secrets:
                if secret is not None:
                    os.environ["AUTOGRADER_SECRET"] = f"spread {secret}"
                for task in checks.TASKS[:-1]:
                    for fn in (solution_of(ASSIGNMENT)[task.name], *CORRECT[task.check]):
                        check_of(task)(fn)
    finally:
        os.environ.pop("AUTOGRADER_SECRET", None)
        if old is not None:
            os.environ["AUTOGRADER_SECRET"] = old
    return spread


def test_tolerances_sit_well_above_the_measured_float32_spread():
    spread = measure_spread()
    assert 0 < spread["TOL"] and 3 * spread["TOL"] <= checks.TOL["rtol"], spread
