"""llmcourse.quantization against PyTorch's quantised tensors and observers, bitsandbytes' NF4 and
block-wise quantisers, and the IEEE bit layouts from struct/numpy."""

from __future__ import annotations

import struct
import warnings

import numpy as np
import pytest
import torch

from llmcourse.quantization import (
    absmax_quantize,
    blockwise_dequantize,
    blockwise_quantize,
    calibrate_scale,
    dequantize,
    float_fields,
    groupwise_dequantize,
    groupwise_quantize,
    int8_linear,
    nf4_dequantize,
    nf4_quantize,
    nf4_values,
    pack_4bit,
    quantize_linears,
    rtn,
    storage_bits,
    unpack_4bit,
    zeropoint_quantize,
)

torch.set_num_threads(1)
warnings.filterwarnings("ignore", message=".*quantize_per_tensor.*deprecated.*")
SHAPES = [(37, 53), (64, 64), (1, 7), (130,)]


def rand(shape, seed, scale=3.0, shift=0.0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale + shift


def bnb():
    pytest.importorskip("bitsandbytes")
    import bitsandbytes.functional as F

    return F


@pytest.mark.parametrize("value", [0.1, -2.5, 1.0, 1e-8, 65504.0, 70000.0, 3.0e38, 0.0, -1.5e-5, 2.0 ** -14])
def test_float_fields_match_struct_numpy_and_bf16_rounding(value):
    f32 = float_fields(value, "float32")
    want = format(struct.unpack(">I", struct.pack(">f", value))[0], "032b")
    assert f32["sign"] + f32["exponent"] + f32["mantissa"] == want
    f16 = float_fields(value, "float16")
    assert f16["sign"] + f16["exponent"] + f16["mantissa"] == format(int(np.float16(value).view(np.uint16)), "016b")
    assert f16["stored"] == float(np.float16(value)) or (np.isinf(np.float16(value)) and np.isinf(f16["stored"]))
    bits = struct.unpack(">I", struct.pack(">f", value))[0]  # bfloat16 = float32 rounded to its top 16 bits,
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16  # to nearest, ties to even
    bf16 = float_fields(value, "bfloat16")
    assert bf16["sign"] + bf16["exponent"] + bf16["mantissa"] == format(rounded, "016b")
    assert len(f32["exponent"]) == 8 and len(f16["exponent"]) == 5 and len(bf16["mantissa"]) == 7


def test_float_fields_known_answer():
    f = float_fields(-2.5, "float32")  # -2.5 = -1.25 * 2^1
    assert (f["sign"], f["exponent"], f["exponent_value"]) == ("1", "10000000", 1)
    assert f["mantissa"] == "01" + "0" * 21
    assert float_fields(0.1, "bfloat16")["stored"] == 0.10009765625
    with pytest.raises(ValueError, match="fmt"):
        float_fields(1.0, "float8")


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("shape", SHAPES)
def test_absmax_per_tensor_matches_torch_quantize_per_tensor(seed, shape):
    x = rand(shape, seed)
    q, scale = absmax_quantize(x)
    ref = torch.quantize_per_tensor(x, float(scale), 0, torch.qint8)
    assert torch.equal(q, ref.int_repr())
    torch.testing.assert_close(dequantize(q, scale), ref.dequantize(), rtol=0, atol=0)
    assert q.abs().max() == 127  # the absmax lands on the last code


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("axis", [0, 1])
def test_absmax_per_channel_matches_torch_quantize_per_channel(seed, axis):
    x = rand((37, 53), seed) * torch.logspace(-2, 1, 53)  # columns of very different size
    q, scale = absmax_quantize(x, axis=axis)
    n = x.shape[axis]
    ref = torch.quantize_per_channel(x, scale.flatten().double(), torch.zeros(n, dtype=torch.long), axis, torch.qint8)
    assert torch.equal(q, ref.int_repr())
    torch.testing.assert_close(ref.q_per_channel_scales().float(), scale.flatten(), rtol=1e-7, atol=0)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("shift", [0.0, 5.0, -5.0, 100.0])
def test_zeropoint_matches_minmax_observer_and_quint8(seed, shift):
    from torch.ao.quantization import MinMaxObserver

    x = rand((37, 53), seed, shift=shift)  # shift: all positive or all negative ranges too
    q, scale, zp = zeropoint_quantize(x)
    obs = MinMaxObserver(dtype=torch.quint8)
    obs(x)
    ref_scale, ref_zp = obs.calculate_qparams()
    assert float(scale) == float(ref_scale) and int(zp) == int(ref_zp)
    ref = torch.quantize_per_tensor(x, float(scale), int(zp), torch.quint8)
    assert torch.equal(q, ref.int_repr())
    torch.testing.assert_close(dequantize(q, scale, zp), ref.dequantize(), rtol=0, atol=0)


@pytest.mark.parametrize("seed", [0, 3])
@pytest.mark.parametrize("group_size", [8, 32, 96])
def test_groupwise_matches_per_channel_observer_on_groups(seed, group_size):
    from torch.ao.quantization import PerChannelMinMaxObserver

    w = rand((11, 96), seed)
    q, scale, zp = groupwise_quantize(w, bits=4, group_size=group_size)
    groups = w.reshape(-1, group_size)  # one row per group
    obs = PerChannelMinMaxObserver(ch_axis=0, dtype=torch.quint8, quant_min=0, quant_max=15)
    obs(groups)
    ref_scale, ref_zp = obs.calculate_qparams()
    torch.testing.assert_close(scale.flatten(), ref_scale, rtol=0, atol=0)
    assert torch.equal(zp.flatten(), ref_zp)
    ref = torch.quantize_per_channel(groups, ref_scale.double(), ref_zp, 0, torch.quint8)
    assert torch.equal(q.reshape(-1, group_size), ref.int_repr())
    assert q.max() <= 15
    torch.testing.assert_close(groupwise_dequantize(q, scale, zp).reshape(-1, group_size), ref.dequantize(),
                               rtol=0, atol=0)


def test_smaller_groups_give_smaller_error_on_weights_with_outliers():
    w = rand((64, 256), 0, scale=0.02)
    w[:, ::37] *= 30  # a few large weights per row
    errors = [float((rtn(w, 4, g) - w).pow(2).mean()) for g in (256, 64, 16)]
    assert errors[0] > errors[1] > errors[2], errors
    assert float((rtn(w, 4, per_channel=False) - w).pow(2).mean()) > errors[0]


def test_zero_and_constant_inputs():
    z = torch.zeros(4, 8)
    q, s = absmax_quantize(z)
    assert torch.equal(q, torch.zeros_like(q, dtype=torch.int8)) and torch.equal(dequantize(q, s), z)
    q, s, zp = zeropoint_quantize(z)
    assert torch.equal(dequantize(q, s, zp), z)
    c = torch.full((3, 64), -0.7)
    q, s = absmax_quantize(c, axis=0)
    torch.testing.assert_close(dequantize(q, s), c, rtol=0, atol=0)  # -127 * (0.7 / 127)
    packed, absmax = nf4_quantize(torch.zeros(70))
    assert torch.equal(nf4_dequantize(packed, absmax, (70,)), torch.zeros(70))


@pytest.mark.parametrize("bad, err", [(torch.tensor([1.0, float("nan")]), ValueError),
                                      (torch.tensor([1.0, float("inf")]), ValueError),
                                      (torch.arange(4), TypeError), (torch.zeros(0), ValueError),
                                      ([1.0, 2.0], TypeError)])
def test_bad_inputs_raise_clear_errors(bad, err):
    for fn in (absmax_quantize, zeropoint_quantize, nf4_quantize):
        with pytest.raises(err, match="NaN|floating|empty|Tensor"):
            fn(bad)


def test_bad_arguments_raise_clear_errors():
    x = torch.randn(4, 8)
    with pytest.raises(ValueError, match="bits"):
        absmax_quantize(x, bits=1)
    with pytest.raises(ValueError, match="bits"):
        zeropoint_quantize(x, bits=9)
    with pytest.raises(ValueError, match="axis"):
        absmax_quantize(x, axis=2)
    with pytest.raises(ValueError, match="group_size"):
        groupwise_quantize(x, 4, group_size=3)
    with pytest.raises(ValueError, match="2-D"):
        groupwise_quantize(torch.randn(8), 4, 4)
    with pytest.raises(ValueError, match="blocksize"):
        blockwise_quantize(x, nf4_values(), 0)
    with pytest.raises(TypeError, match="integer"):
        dequantize(x, torch.ones(()))
    with pytest.raises(ValueError, match="at least one batch"):
        calibrate_scale([])
    with pytest.raises(TypeError, match="GPT"):
        quantize_linears(torch.nn.Linear(2, 2), lambda w: w)
    packed, absmax = nf4_quantize(x)
    with pytest.raises(ValueError, match="holding n=320"):
        nf4_dequantize(packed, absmax, (4, 80))
    with pytest.raises(ValueError, match="absmax values"):
        nf4_dequantize(packed, absmax[:0], (4, 8))
    with pytest.raises(ValueError, match="G dividing C"):
        groupwise_dequantize(torch.zeros(4, 8, dtype=torch.uint8), torch.ones(4, 3), torch.zeros(4, 3))


def test_nf4_values_match_bitsandbytes_code():
    F = bnb()
    _, state = F.quantize_4bit(torch.randn(64), quant_type="nf4", blocksize=64)
    torch.testing.assert_close(nf4_values(), state.code.float(), rtol=0, atol=2e-7)
    assert nf4_values()[7] == 0 and nf4_values()[0] == -1 and nf4_values()[15] == 1


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("shape", [(37, 53), (64, 64), (5,), (3, 130), (1, 1)])
def test_nf4_matches_bitsandbytes_quantize_4bit(seed, shape):
    F = bnb()
    x = rand(shape, seed)
    packed, absmax = nf4_quantize(x, blocksize=64)
    ref, state = F.quantize_4bit(x, quant_type="nf4", blocksize=64)
    assert torch.equal(packed, ref.flatten())
    assert torch.equal(absmax, state.absmax)
    torch.testing.assert_close(nf4_dequantize(packed, absmax, x.shape), F.dequantize_4bit(ref, state),
                               rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_blockwise_8bit_matches_bitsandbytes_quantize_blockwise(seed):
    """Same absmax; the same code except where the value sits within 1 % of a gap from the boundary of
    two levels (bitsandbytes' CPU search is not exact there)."""
    F = bnb()
    x = rand((37, 53), seed)
    ref, state = F.quantize_blockwise(x, blocksize=64)
    codes, absmax = blockwise_quantize(x, state.code, 64)
    assert torch.equal(absmax, state.absmax)
    differ = torch.nonzero(codes != ref.flatten()).flatten()
    assert len(differ) <= 0.005 * x.numel(), f"{len(differ)} codes differ"
    levels = state.code.float()
    normed = x.flatten() / absmax.repeat_interleave(64)[:x.numel()]
    for i in differ.tolist():
        a, b = sorted((int(codes[i]), int(ref.flatten()[i])))
        assert b == a + 1, f"codes {a} and {b} at {i} are not neighbours"
        mid = (levels[a] + levels[b]) / 2
        assert abs(float(normed[i] - mid)) < 0.01 * float(levels[b] - levels[a])
    torch.testing.assert_close(blockwise_dequantize(ref.flatten(), absmax, state.code, x.shape, 64),
                               F.dequantize_blockwise(ref, state), rtol=1e-6, atol=1e-6)


def test_pack_4bit_roundtrip_and_order():
    codes = torch.tensor([1, 2, 15, 0, 7], dtype=torch.uint8)
    packed = pack_4bit(codes)
    assert packed.tolist() == [0x12, 0xF0, 0x70]
    assert torch.equal(unpack_4bit(packed, 5), codes)
    with pytest.raises(ValueError, match="below 16"):
        pack_4bit(torch.tensor([16], dtype=torch.uint8))


@pytest.mark.parametrize("seed", [0, 1])
def test_int8_linear_is_exact_integer_arithmetic(seed):
    x, w, b = rand((5, 7, 24), seed), rand((10, 24), seed + 10, 0.1), rand((10,), seed + 20)
    w_q, w_s = absmax_quantize(w, axis=0)
    out = int8_linear(x, w_q, w_s, b)
    x_q, x_s = absmax_quantize(x)
    want = (x_q.double() @ w_q.double().T) * x_s.double() * w_s.double().reshape(-1) + b.double()
    torch.testing.assert_close(out.double(), want, rtol=1e-6, atol=1e-5)
    rel = float((out - (x @ w.T + b)).norm() / (x @ w.T + b).norm())
    assert rel < 0.02, rel


def test_static_scale_saturates_and_dynamic_does_not():
    w_q, w_s = absmax_quantize(rand((6, 16), 0, 0.1), axis=0)
    calib = [rand((8, 16), s, 1.0) for s in range(4)]
    scale = calibrate_scale(calib)
    assert float(scale) == pytest.approx(max(float(c.abs().max()) for c in calib) / 127)
    big = rand((8, 16), 9, 10.0)  # ten times the calibrated range
    w = dequantize(w_q, w_s)
    static = int8_linear(big, w_q, w_s, act_scale=scale)
    clipped = big.clamp(-127 * scale, 127 * scale)
    torch.testing.assert_close(static, int8_linear(clipped, w_q, w_s, act_scale=scale), rtol=0, atol=0)
    err_static = float((static - big @ w.T).norm())
    err_dynamic = float((int8_linear(big, w_q, w_s) - big @ w.T).norm())
    assert err_dynamic < 0.1 * err_static, (err_dynamic, err_static)
    with pytest.raises(ValueError, match="C_in"):
        int8_linear(torch.randn(3, 5), w_q, w_s)


def test_quantize_linears_changes_only_block_weights():
    from llmcourse.gpt import GPT, GPTConfig

    torch.manual_seed(0)
    model = GPT(GPTConfig.tiny(vocab_size=64)).eval()
    q = quantize_linears(model, lambda w: rtn(w, 2))
    before, after = model.state_dict(), q.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {f"h.{i}.{n}.weight" for i in range(2) for n in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")}
    for i in range(2):  # 2 bits per channel: at most 4 values per row
        rows = after[f"h.{i}.mlp.c_fc.weight"]
        assert max(len(torch.unique(r)) for r in rows) <= 4


def test_storage_bits_known_answers():
    shapes = [(4, 64), (2, 128)]  # 512 weights
    assert storage_bits(shapes, 4, "tensor") == 4 + 2 * (16 + 4) / 512
    assert storage_bits(shapes, 4, "channel") == 4 + 6 * (16 + 4) / 512
    assert storage_bits(shapes, 4, 64) == 4 + 8 * (16 + 4) / 512  # 4 + 2 * 2 groups
    assert storage_bits([(512, 128)], 4, 64, overhead_bits=32) == 4.5  # NF4: a float32 absmax per 64
    with pytest.raises(ValueError, match="non-empty"):
        storage_bits([], 4)
