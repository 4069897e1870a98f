"""The course's Q8_0/Q4_0 block quantisers against gguf.quants (the reference quantiser of the gguf
package, bit-exact with ggml's C code), and a real GGUF file written and read back with gguf."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from llmcourse.gguf_file import (
    dequantize_blocks,
    quantize_q4_0,
    quantize_q8_0,
    read_gguf,
    write_gguf,
)

torch.set_num_threads(1)
gguf = pytest.importorskip("gguf")
from gguf import GGMLQuantizationType as T  # noqa: E402
from gguf import quants  # noqa: E402

OURS = {"Q8_0": (quantize_q8_0, T.Q8_0), "Q4_0": (quantize_q4_0, T.Q4_0)}


def cases(seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(7, 96, generator=g) * 2
    x[0, :32] = 0.0  # an all-zero block
    x[1, :32] = -0.3  # an all-equal negative block
    x[2, 5] = 40.0  # a positive extreme (Q4_0's scale then is negative)
    x[3, 40] = -40.0
    return [x, torch.randn(1, 32, generator=g), torch.randn(3, 512, generator=g) * 0.02]


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("qtype", ["Q8_0", "Q4_0"])
def test_block_quantisers_match_gguf_quants_bytes(seed, qtype):
    fn, ggml_type = OURS[qtype]
    for x in cases(seed):
        ours = fn(x).numpy()
        ref = quants.quantize(x.numpy(), ggml_type)
        assert ours.shape == ref.shape and ours.dtype == ref.dtype
        assert np.array_equal(ours, ref), f"{qtype}: {(ours != ref).sum()} bytes differ for shape {tuple(x.shape)}"


@pytest.mark.parametrize("qtype", ["Q8_0", "Q4_0"])
def test_block_dequantisers_match_gguf_quants(qtype):
    fn, ggml_type = OURS[qtype]
    for x in cases(5):
        data = fn(x)
        np.testing.assert_array_equal(dequantize_blocks(data, qtype, x.shape[1]).numpy(),
                                      quants.dequantize(data.numpy(), ggml_type))


def test_bytes_per_block_and_known_answer():
    x = torch.arange(32, dtype=torch.float32).reshape(1, 32) - 8.0  # largest magnitude: 23.0
    q8 = quantize_q8_0(x)
    assert q8.shape == (1, 34)  # 2-byte scale + 32 codes: 8.5 bits per weight
    d = q8[0, :2].view(torch.float16).float()
    assert float(d) == pytest.approx(23 / 127, rel=1e-3)
    assert q8[0, 2:].view(torch.int8)[-1] == 127
    q4 = quantize_q4_0(x)
    assert q4.shape == (1, 18)  # 2-byte scale + 16 bytes: 4.5 bits per weight
    assert float(q4[0, :2].view(torch.float16)) == pytest.approx(-23 / 8, rel=1e-3)
    assert (q4[0, 2:] >> 4)[-1] == 0  # 23 -> code 0 (= -8 * d), in the high nibble of the last byte


def test_bad_inputs_raise_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="multiple of 32"):
        quantize_q8_0(torch.randn(2, 33))
    with pytest.raises(ValueError, match="2-D"):
        quantize_q4_0(torch.randn(64))
    with pytest.raises(ValueError, match="NaN"):
        quantize_q4_0(torch.full((1, 32), float("inf")))
    with pytest.raises(ValueError, match="qtype"):
        dequantize_blocks(torch.zeros(1, 18, dtype=torch.uint8), "Q5_0", 32)
    with pytest.raises(ValueError, match="uint8"):
        dequantize_blocks(torch.zeros(1, 18, dtype=torch.uint8), "Q8_0", 32)
    from llmcourse.pretrained import load_base

    model, tok = load_base()
    with pytest.raises(ValueError, match="qtype"):
        write_gguf(model, tok, tmp_path / "m.gguf", "Q2_K")


@pytest.fixture(scope="module")
def base():
    from llmcourse.pretrained import load_base

    return load_base()


def test_f32_file_roundtrips_exactly_with_metadata_and_tokenizer(base, tmp_path):
    model, tok = base
    path = write_gguf(model, tok, tmp_path / "m.gguf", "F32")
    back, meta = read_gguf(path)
    for k, v in model.state_dict().items():
        assert torch.equal(back.state_dict()[k], v), k
    assert meta["general.architecture"] == "gpt2" and meta["gpt2.block_count"] == 4
    assert meta["gpt2.embedding_length"] == 128 and meta["gpt2.context_length"] == 128
    from llmcourse.tokenizer import to_hf_tokenizer

    hf = to_hf_tokenizer(tok)
    assert meta["tokenizer.ggml.tokens"] == hf.convert_ids_to_tokens(list(range(len(hf))))
    assert len(meta["tokenizer.ggml.merges"]) == len(tok.merges)
    assert meta["tokenizer.ggml.eos_token_id"] == tok.special_tokens["<|eos|>"]


@pytest.mark.parametrize("qtype", ["F16", "Q8_0", "Q4_0"])
def test_file_holds_our_bytes_and_reads_back_dequantised(base, tmp_path, qtype):
    model, tok = base
    path = write_gguf(model, tok, tmp_path / f"m_{qtype}.gguf", qtype)
    reader = gguf.GGUFReader(str(path))
    tensors = {t.name: t for t in reader.tensors}
    w = model.h[2].mlp.c_fc.weight.detach()
    t = tensors["blk.2.ffn_up.weight"]
    assert t.tensor_type.name == qtype and [int(n) for n in t.shape] == [128, 512]
    assert tensors["blk.2.ffn_up.bias"].tensor_type.name == "F32"
    back, meta = read_gguf(path)
    got = back.h[2].mlp.c_fc.weight.detach()
    if qtype == "F16":
        assert torch.equal(got, w.half().float())
    else:
        assert np.array_equal(np.asarray(t.data), OURS[qtype][0](w).numpy())
        torch.testing.assert_close(got, dequantize_blocks(OURS[qtype][0](w), qtype, 128), rtol=0, atol=0)
    step = {"F16": 1e-3, "Q8_0": 1 / 127, "Q4_0": 1 / 7}[qtype]
    assert float((got - w).abs().max()) <= step * float(w.abs().max())
    assert meta["tensor_types"]["token_embd.weight"] == qtype


def test_file_sizes_follow_bits_per_weight(base, tmp_path):
    model, tok = base
    sizes = {q: write_gguf(model, tok, tmp_path / f"{q}.gguf", q).stat().st_size for q in ("F32", "F16", "Q8_0", "Q4_0")}
    n2d = sum(p.numel() for k, p in model.state_dict().items() if p.dim() == 2 and k != "lm_head.weight")
    assert sizes["F32"] - sizes["F16"] == pytest.approx(2 * n2d, abs=4096)  # 32 -> 16 bits
    assert sizes["F16"] - sizes["Q8_0"] == pytest.approx((16 - 8.5) / 8 * n2d, abs=4096)
    assert sizes["Q8_0"] - sizes["Q4_0"] == pytest.approx((8.5 - 4.5) / 8 * n2d, abs=4096)
