"""Hidden checks for the chapter 12 exercise: int8 absmax and zero-point, per-channel and group-wise 4-bit,
NF4, and the course model quantised.

References, computed live (:mod:`autograder.checks._ch12_references`, inputs in ``_ch12_cases``):

* ``absmax_quantize`` - ``torch.quantize_per_tensor(x, max|x| / 127, 0, torch.qint8).int_repr()``:
  round half to even, clamp to [-128, 127]; a calibrated scale that saturates, exact ties, all zeros;
* ``zeropoint_quantize`` - ``torch.ao.quantization.MinMaxObserver`` (per-tensor affine: the range
  extended to contain 0) for the scale and zero point, ``torch.quantize_per_tensor`` (quint8 / qint8)
  for the codes, ``round(x / scale + zero_point)``; exact ties with an odd zero point;
* ``dequantize`` - ``dequantize()`` of torch quantized tensors made from the codes (uint8, int8, per row);
* ``per_channel_quantize`` - ``torch.quantize_per_channel`` on axis 0, codes for 2 to 8 bits (torch has
  no 4-bit dtype; the symmetric scale keeps the qint8 codes in [-2^(b-1), 2^(b-1) - 1]);
* ``groupwise_quantize`` - the same on one row per group of ``group_size`` entries along the input
  dimension; a ValueError when the groups do not tile a row; less error than per-tensor on outliers;
* ``nf4_quantize`` / ``nf4_dequantize`` - ``bitsandbytes.functional.quantize_4bit`` /
  ``dequantize_4bit`` (``quant_type="nf4"``), bnb's packed codes unpacked (high nibble first);
* ``quantize_model`` - a probe quantises the course model with the student's function in the sandbox
  and returns the codes; the check rebuilds the model, counts its bytes, and measures its perplexity on
  the visible tokens and on windows of the validation text drawn from the course secret.

Random inputs keep clear of rounding boundaries, so codes are compared exactly. When a result is wrong
the check names the usual mistake that reproduces it.

Taught in: book/12-quantization
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

from autograder.checks import _ch12_cases as cases
from autograder.checks import _ch12_mistakes as mis
from autograder.checks import _ch12_references as ref
from autograder.compare import (
    assert_close,
    assert_equal,
    describe,
    fail,
    probe_result,
    sharp_hints,
    to_array,
    unpack,
)
from autograder.guard import call_student, run_probe
from autograder.spec import Task

QUANT_MODULES = ("torch.ao.quantization", "torch.quantization", "torch.ao.nn", "bitsandbytes", "llmcourse.quantization")
QUANT_FUNCTIONS = ("torch.quantize_per_tensor", "torch.quantize_per_channel", "torch.quantize_per_tensor_dynamic",
                   "torch.fake_quantize_per_tensor_affine", "torch.fake_quantize_per_channel_affine",
                   "torch._make_per_tensor_quantized_tensor", "torch._make_per_channel_quantized_tensor",
                   "torch.Tensor.int_repr", "torch.Tensor.dequantize", "torch.dequantize")
RULES = dict(modules=QUANT_MODULES, callables=QUANT_FUNCTIONS)
ABSMAX, ZEROPOINT, DEQUANTIZE, PER_CHANNEL, GROUPWISE, NF4, NF4_DEQUANTIZE, MODEL = TASKS = (
    Task("ch12_absmax_quantize", "absmax_quantize(x, scale=None)", 3, "`(q, scale)`: int8 codes like x, a float",
         "`torch.quantize_per_tensor(x, scale, 0, torch.qint8).int_repr()`", **RULES),
    Task("ch12_zeropoint_quantize", "zeropoint_quantize(x, dtype='uint8')", 3, "`(q, scale, zero_point)`",
         "`MinMaxObserver` (per-tensor affine) and `torch.quantize_per_tensor` (quint8 / qint8)", **RULES),
    Task("ch12_dequantize", "dequantize(q, scale, zero_point=0)", 1, "float32 values like q",
         "`dequantize()` of torch quantized tensors (per tensor and per row)", **RULES),
    Task("ch12_per_channel_quantize", "per_channel_quantize(w, bits=4)", 2, "`(q, scales)`: `(out, in)`, `(out,)`",
         "`torch.quantize_per_channel(..., axis=0)` and the formula for 2-8 bits", **RULES),
    Task("ch12_groupwise_quantize", "groupwise_quantize(w, group_size, bits=4)", 3,
         "`(q, scales)`: `(out, in)`, `(out, in // group_size)`",
         "`torch.quantize_per_channel` with one row per group, and the formula", **RULES),
    Task("ch12_nf4_quantize", "nf4_quantize(x, blocksize=64)", 3, "`(codes, absmax)`: `(n,)` in 0..15, `(blocks,)`",
         "`bitsandbytes.functional.quantize_4bit(x, blocksize, quant_type='nf4')`, unpacked", **RULES),
    Task("ch12_nf4_dequantize", "nf4_dequantize(codes, absmax, shape, blocksize=64)", 2, "float32 values of `shape`",
         "`bitsandbytes.functional.dequantize_4bit`", **RULES),
    Task("ch12_quantize_model", "quantize_model(model, tokens, group_size=64)", 4, "`(quantized, report)`",
         "its size and perplexity measured by the grader, also on text held out from you: at most +1 %", **RULES),
)
# Tolerances. Codes are compared exactly (inputs keep 1e-3 of a step away from every rounding boundary, where
# x / s and x * (1 / s), float32 and float64, could round differently). Scales and dequantised values: the
# solution and 3 rewrites per task (NumPy float64, Python loops, x * (1 / s), bucketize, unfold), 20 course
# secrets (tests/test_checks_ch12.py, measure_spread): largest |got - want| / (1 + |want|) 5.5e-08 -> 1e-6.
TOL = dict(rtol=1e-6, atol=1e-7)
# The model, on 48 windows drawn from each of 20 course secrets (base perplexity 8.9-21.3): int4 groups of 64
# rounded to nearest raise the perplexity by 0.23-0.49 %; 3-bit codes by 1.65-2.43 %, truncation 3.3-4.6 %.
# The reported perplexities of the solution and 3 rewrites (float64 dequantisation, a hand-written loss
# loop) differ from the grader's on the same tokens by at most 2.4e-07; a float32 mean over the 4,096 token
# losses can be off by ~1e-5, so -> 1e-4.
MAX_INCREASE, TOL_REPORT, GROUP, VISIBLE_WINDOWS, HELD_OUT_WINDOWS = 0.01, 1e-4, 64, 32, 48


def _expect_function(fn, task: str) -> None:
    if not getattr(fn, "__llmcourse_remote__", False) and not callable(fn):
        fail(f"{task}: expected a function, got {type(fn).__name__}")


def _number(value, *, what: str, inputs: dict) -> float:
    arr = to_array(value, what=what, inputs=inputs)
    if arr.size != 1:
        fail(f"{what}{describe(inputs)}: expected a single number, got an array of shape {tuple(arr.shape)}")
    return float(arr.reshape(()))


def _codes(got, want, *, what: str, inputs: dict, mistakes=None, shape=None) -> np.ndarray:
    """Exact comparison of integer codes; ``mistakes = (table, wrong, args)`` names the one that reproduces them."""
    arr = to_array(got, what=what, inputs=inputs)
    if not np.issubdtype(arr.dtype, np.integer):
        fail(f"{what}{describe(inputs)}: expected an integer tensor (such as torch.int8), got dtype {arr.dtype} - "
             f"convert the rounded values with .to(torch.int8) (or another integer type) after clamping")
    if shape is not None and arr.size == int(np.prod(shape)) and arr.shape != tuple(shape):
        arr = arr.reshape(shape)
    try:
        assert_equal(arr, np.asarray(want), what=what, inputs=inputs)
    except AssertionError as exc:
        why = mis.explain(*mistakes, arr.reshape(-1) if shape is not None else arr, pick=0, want=want) \
            if mistakes else ""
        fail(str(exc) + why)
    return arr


def _scale(got, want, *, what: str, inputs: dict, hints=()) -> None:
    arr = to_array(got, what=what, inputs=inputs).astype(float)
    want = np.asarray(want, dtype=float)
    if arr.size == want.size and arr.shape != want.shape and arr.squeeze().shape == want.squeeze().shape:
        arr = arr.reshape(want.shape)  # (R, 1) for (R,): the same numbers
    assert_close(arr, want, what=what, inputs=inputs, hints=sharp_hints(hints, arr, want, **TOL), **TOL)


def _hints(table, wrong, args, pick) -> list:
    return [(why, lambda m=m: wrong(*args, m)[pick]) for m, why in table]


# ----------------------------------------------------------------- int8: absmax and zero point

def check_absmax_quantize(student_fn) -> None:
    """absmax_quantize(x, scale=None) -> (q, scale) equal torch.quantize_per_tensor's qint8 codes, zero point 0."""
    _expect_function(student_fn, ABSMAX.name)
    for inputs, x, scale in cases.absmax_cases():
        kwargs = {} if scale is None else {"scale": scale}
        got = unpack(call_student(student_fn, x.clone(), task=ABSMAX, inputs=inputs, **kwargs), ("q", "scale"),
                     what="absmax_quantize", inputs=inputs)
        want_q, want_s = ref.torch_absmax(x, scale)
        args = (x, scale)
        _scale(_number(got[1], what="scale", inputs=inputs), want_s, what="scale", inputs=inputs,
               hints=_hints(mis.ABSMAX_MISTAKES, mis.absmax_mistake, args, 1))
        _codes(got[0], want_q, what="q (vs torch.quantize_per_tensor, qint8)", inputs=inputs,
               mistakes=(mis.ABSMAX_MISTAKES, mis.absmax_mistake, args))


def check_zeropoint_quantize(student_fn) -> None:
    """zeropoint_quantize(x, dtype) -> (q, scale, zero_point) equal MinMaxObserver + torch.quantize_per_tensor."""
    _expect_function(student_fn, ZEROPOINT.name)
    for inputs, x, dtype in cases.zeropoint_cases():
        got = unpack(call_student(student_fn, x.clone(), dtype=dtype, task=ZEROPOINT, inputs=inputs),
                     ("q", "scale", "zero_point"), what="zeropoint_quantize", inputs=inputs)
        want_q, want_s, want_zp = ref.torch_affine(x, dtype)
        args = (x, dtype)
        _scale(_number(got[1], what="scale", inputs=inputs), want_s, what="scale (vs MinMaxObserver)",
               inputs=inputs, hints=_hints(mis.ZEROPOINT_MISTAKES, mis.zeropoint_mistake, args, 1))
        zp = _number(got[2], what="zero_point", inputs=inputs)
        why = mis.explain(mis.ZEROPOINT_MISTAKES, mis.zeropoint_mistake, args, zp, pick=2)
        if zp != round(zp):
            fail(f"zero_point{describe(inputs)}: got {zp:.6g}, not an integer{why or ' - round it'}")
        if int(zp) != want_zp:
            fail(f"zero_point (vs MinMaxObserver){describe(inputs)}: got {int(zp)}, expected {want_zp}{why}")
        _codes(got[0], want_q, what=f"q (vs torch.quantize_per_tensor, {'quint8' if dtype == 'uint8' else 'qint8'})",
               inputs=inputs, mistakes=(mis.ZEROPOINT_MISTAKES, mis.zeropoint_mistake, args))


def check_dequantize(student_fn) -> None:
    """dequantize(q, scale, zero_point) equals torch's dequantize() of the same codes."""
    _expect_function(student_fn, DEQUANTIZE.name)
    for inputs, q, scale, zp in cases.dequantize_cases():
        extra = {} if zp is None else {"zero_point": zp.clone() if isinstance(zp, torch.Tensor) else zp}
        scale_arg = scale.clone() if isinstance(scale, torch.Tensor) else scale
        got = call_student(student_fn, q.clone(), scale_arg, task=DEQUANTIZE, inputs=inputs, **extra)
        want = ref.torch_dequantize(q, scale, torch.tensor(0) if zp is None else torch.as_tensor(zp))
        arr = to_array(got, what="dequantize", inputs=inputs)
        if not np.issubdtype(arr.dtype, np.floating):
            fail(f"dequantize{describe(inputs)}: expected float values, got dtype {arr.dtype}")
        hints = _hints(mis.DEQUANTIZE_MISTAKES, mis.dequantize_mistake, (q, scale, zp), 0)
        assert_close(arr, want, what="values (vs torch's dequantize())", inputs=inputs,
                     hints=sharp_hints(hints, arr, want, **TOL), **TOL)


# ----------------------------------------------------------------- per-channel and group-wise

def check_per_channel_quantize(student_fn) -> None:
    """per_channel_quantize(w, bits) -> (q, scales) equal torch.quantize_per_channel on axis 0."""
    _expect_function(student_fn, PER_CHANNEL.name)
    for inputs, w, bits in cases.per_channel_cases():
        got = unpack(call_student(student_fn, w.clone(), bits=bits, task=PER_CHANNEL, inputs=inputs),
                     ("q", "scales"), what="per_channel_quantize", inputs=inputs)
        want_q, want_s = ref.torch_per_channel(w, bits)
        args = (w, None, bits)
        _scale(got[1], want_s, what="scales (one per output channel, a row of w)", inputs=inputs,
               hints=_hints(mis.GROUPED_MISTAKES, mis.grouped_mistake, args, 1))
        _codes(got[0], want_q, what="q (vs torch.quantize_per_channel, axis 0)", inputs=inputs,
               mistakes=(mis.GROUPED_MISTAKES, mis.grouped_mistake, args))


def raises_probe(student_fn, w, group_size, bits):
    """PROBE: the name of the exception ``student_fn(w, group_size, bits)`` raises, or None."""
    try:
        student_fn(w, group_size, bits=bits)
    except Exception as exc:  # noqa: BLE001 - what is raised is the answer
        return {"raised": type(exc).__name__, "message": (str(exc).splitlines() or [""])[0][:200]}
    return {"raised": None}


def check_groupwise_quantize(student_fn) -> None:
    """groupwise_quantize(w, group_size, bits) -> (q, scales): per-channel on groups along each row."""
    _expect_function(student_fn, GROUPWISE.name)
    for inputs, w, group, bits in cases.groupwise_cases():
        got = unpack(call_student(student_fn, w.clone(), group, bits=bits, task=GROUPWISE, inputs=inputs),
                     ("q", "scales"), what="groupwise_quantize", inputs=inputs)
        want_q, want_s = ref.torch_groupwise(w, group, bits)
        args = (w, group, bits)
        _scale(got[1], want_s, what="scales (out, in // group_size)", inputs=inputs,
               hints=_hints(mis.GROUPED_MISTAKES, mis.grouped_mistake, args, 1))
        q = _codes(got[0], want_q, what="q (vs torch.quantize_per_channel on the groups)", inputs=inputs,
                   mistakes=(mis.GROUPED_MISTAKES, mis.grouped_mistake, args))
        if "outlier" in inputs["case"]:
            err = float((ref.dequantize_grouped(torch.from_numpy(q), want_s) - w).pow(2).mean())
            q_t, s_t = mis.grouped_mistake(w, group, bits, "per_tensor")
            err_t = float((ref.dequantize_grouped(q_t, s_t) - w.double()).pow(2).mean())
            if not err < err_t:
                fail(f"groupwise_quantize{describe(inputs)}: mean squared error {err:.3g} is not below per-tensor's "
                     f"{err_t:.3g}")
    inputs = {"case": "in_features not a multiple of group_size", "shape": (4, 10), "group_size": 4}
    out = probe_result(run_probe(raises_probe, student_fn, torch.randn(4, 10), 4, 4, task=GROUPWISE, inputs=inputs),
                       what=GROUPWISE.name, inputs=inputs)
    if out["raised"] != "ValueError":
        did = "returned" if out["raised"] is None else f"raised {out['raised']} ({out.get('message', '')})"
        fail(f"groupwise_quantize{describe(inputs)}: {did}; expected a ValueError saying that 10 input features "
             f"do not split into groups of 4")


# ----------------------------------------------------------------- NF4

def check_nf4_quantize(student_fn) -> None:
    """nf4_quantize(x, blocksize) -> (codes, absmax) equal bitsandbytes' quantize_4bit (nf4), unpacked."""
    _expect_function(student_fn, NF4.name)
    for inputs, x, blocksize in cases.nf4_cases():
        got = unpack(call_student(student_fn, x.clone(), blocksize=blocksize, task=NF4, inputs=inputs),
                     ("codes", "absmax"), what="nf4_quantize", inputs=inputs)
        want_c, want_a = ref.bnb_nf4(x, blocksize)
        args = (x, blocksize)
        _scale(got[1], want_a, what="absmax (one per block, vs bitsandbytes)", inputs=inputs,
               hints=_hints(mis.NF4_MISTAKES, mis.nf4_mistake, args, 1))
        _codes(got[0], want_c, what="codes (vs bitsandbytes quantize_4bit, nf4)", inputs=inputs, shape=want_c.shape,
               mistakes=(mis.NF4_MISTAKES, mis.nf4_mistake, args))


def check_nf4_dequantize(student_fn) -> None:
    """nf4_dequantize(codes, absmax, shape, blocksize) equals bitsandbytes' dequantize_4bit."""
    _expect_function(student_fn, NF4_DEQUANTIZE.name)
    for inputs, codes, absmax, shape, blocksize in cases.nf4_dequantize_cases():
        got = call_student(student_fn, codes.clone(), absmax.clone(), shape, blocksize=blocksize,
                           task=NF4_DEQUANTIZE, inputs=inputs)
        want = ref.bnb_nf4_dequantize(codes, absmax, shape, blocksize)
        arr = to_array(got, what="nf4_dequantize", inputs=inputs).astype(float)
        hints = _hints(mis.NF4_DEQUANTIZE_MISTAKES, mis.nf4_dequantize_mistake, (codes, absmax, shape, blocksize), 0)
        assert_close(arr, want, what="values (vs bitsandbytes dequantize_4bit)", inputs=inputs,
                     hints=sharp_hints(hints, arr, want, **TOL), **TOL)


# ----------------------------------------------------------------- the course model

@lru_cache(maxsize=1)
def _validation():
    from llmcourse.pretrained import load_tokenizer
    from llmcourse.sft import pretraining_tokens

    return pretraining_tokens(load_tokenizer(), "validation")


@lru_cache(maxsize=4)
def _base(starts: tuple) -> tuple:
    """(the float32 model, its perplexity on the visible tokens, on the held-out windows at ``starts``)."""
    from llmcourse.pretrained import load_base
    from llmcourse.sft import pretraining_perplexity

    model, _ = load_base("course")
    tokens = _validation()
    return (model, pretraining_perplexity(model, tokens[:VISIBLE_WINDOWS * 128 + 1]),
            ref.perplexity_on(model, *ref.windows(tokens, list(starts))))


def _layer(name, value, weight, inputs) -> tuple[torch.Tensor, torch.Tensor]:
    where = f"quantized[{name!r}]{describe(inputs)}"
    codes, scales = (to_array(v, what=f"quantized[{name!r}]", inputs=inputs) for v in value)
    out, inn = weight.shape
    if not np.issubdtype(codes.dtype, np.integer):
        fail(f"{where}: the codes must be an integer tensor (the int4 values), got dtype {codes.dtype}")
    if codes.shape != (out, inn) or scales.shape != (out, inn // GROUP):
        fail(f"{where}: codes {codes.shape} and scales {scales.shape}, expected ({out}, {inn}) and "
             f"({out}, {inn // GROUP}): one scale per group of {GROUP} weights along each row")
    if codes.min() < -8 or codes.max() > 7:
        fail(f"{where}: codes from {codes.min()} to {codes.max()}; 4-bit codes lie in [-8, 7]")
    if not (np.isfinite(scales).all() and (scales > 0).all()):
        fail(f"{where}: every scale must be a positive finite number")
    return torch.from_numpy(codes.astype(np.int64)), torch.from_numpy(scales.astype(np.float32))


def check_quantize_model(student_fn) -> None:
    """quantize_model(model, tokens, group_size) quantises the 16 block weights to int4; the grader counts the
    bytes, measures the perplexity on the visible tokens and on held-out windows: at most +MAX_INCREASE."""
    from llmcourse.sft import pretraining_perplexity

    _expect_function(student_fn, MODEL.name)
    tokens = _validation()
    visible = tokens[:VISIBLE_WINDOWS * 128 + 1].clone()
    inputs = {"model": "the course GPT", "tokens": tuple(visible.shape), "group_size": GROUP}
    out = probe_result(run_probe(ref.quantize_model_probe, student_fn, visible, GROUP, task=MODEL, inputs=inputs),
                       what=MODEL.name, inputs=inputs)
    quantized, report = out["quantized"], out["report"]
    if sorted(quantized) != sorted(ref.LINEAR_NAMES):
        missing = sorted(set(ref.LINEAR_NAMES) - set(quantized))
        extra = sorted(set(quantized) - set(ref.LINEAR_NAMES))
        fail(f"quantized{describe(inputs)}: expected the 16 Linear layers of the blocks by module name "
             f"('h.0.attn.c_attn', ...); missing {missing[:3]}{'...' if len(missing) > 3 else ''}, "
             f"unexpected {extra[:3]}{'...' if len(extra) > 3 else ''}")
    starts = tuple(cases.model_windows(tokens, len(visible), HELD_OUT_WINDOWS))
    model, base_visible, base_held = _base(starts)
    layers = {n: _layer(n, quantized[n], model.get_submodule(n).weight, inputs) for n in ref.LINEAR_NAMES}
    small = ref.with_weights(model, layers)
    for key in ("bytes", "perplexity", "base_perplexity"):
        if key not in report:
            fail(f"report{describe(inputs)}: no {key!r} (expected keys 'bytes', 'perplexity', 'base_perplexity')")
    want_bytes = ref.model_bytes(model, layers, GROUP)
    got_bytes = _number(report["bytes"], what="report['bytes']", inputs=inputs)
    if got_bytes != want_bytes:
        fail(f"report['bytes']{describe(inputs)}: got {got_bytes:.0f}, expected {want_bytes} (4 bits per code, 4 "
             f"bytes per float32 scale, 4 bytes per other parameter, the tied embedding counted once); the float32 "
             f"model has {4 * model.num_parameters()}")
    for key, want in (("base_perplexity", base_visible), ("perplexity", pretraining_perplexity(small, visible))):
        assert_close(np.float64(_number(report[key], what=f"report[{key!r}]", inputs=inputs)), want,
                     what=f"report[{key!r}] (the grader's, on the same tokens)", inputs=inputs, rtol=TOL_REPORT,
                     atol=0.0)
    quant = ref.perplexity_on(small, *ref.windows(tokens, list(starts)))
    if quant > base_held * (1 + MAX_INCREASE):
        fail(f"quantize_model{describe(inputs)}: on {HELD_OUT_WINDOWS} windows of text held out from you the "
             f"perplexity rose from {base_held:.3f} to {quant:.3f} ({100 * (quant / base_held - 1):+.2f} %), more "
             f"than +{100 * MAX_INCREASE:.0f} % - are the codes rounded to the nearest integer with one scale per "
             f"group?")


__all__ = ["TASKS", "check_absmax_quantize", "check_zeropoint_quantize", "check_dequantize",
           "check_per_channel_quantize", "check_groupwise_quantize", "check_nf4_quantize", "check_nf4_dequantize",
           "check_quantize_model", "raises_probe", "MAX_INCREASE"]
