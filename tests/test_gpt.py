"""The course GPT against transformers' GPT2LMHeadModel, from small configs with random weights."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")

from llmcourse.attention import scaled_dot_product_attention  # noqa: E402
from llmcourse.gpt import GPT, GPTConfig  # noqa: E402

pytestmark = pytest.mark.ch06

HF_CONFIGS = [
    dict(vocab_size=50, n_positions=16, n_embd=32, n_layer=2, n_head=4),
    dict(vocab_size=97, n_positions=8, n_embd=24, n_layer=1, n_head=3, layer_norm_epsilon=1e-3),
    dict(vocab_size=31, n_positions=32, n_embd=16, n_layer=3, n_head=1),
    dict(vocab_size=64, n_positions=12, n_embd=48, n_layer=2, n_head=8),
]


def hf_gpt2(seed: int, **sizes):
    """A GPT2LMHeadModel with random weights (and random biases and LayerNorm affines), eval, eager."""
    cfg = transformers.GPT2Config(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, activation_function="gelu_new",
                                  bos_token_id=0, eos_token_id=0, attn_implementation="eager", **sizes)
    torch.manual_seed(seed)
    model = transformers.GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or ".ln_" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model


@pytest.mark.parametrize("seed, sizes", list(enumerate(HF_CONFIGS)))
def test_gpt_matches_hf_gpt2(seed, sizes):
    hf = hf_gpt2(seed, **sizes)
    model = GPT.from_hf(hf).eval()
    g = torch.Generator().manual_seed(seed)
    for t in (1, 5, sizes["n_positions"]):
        idx = torch.randint(0, sizes["vocab_size"], (2, t), generator=g)
        with torch.no_grad():
            want = hf(idx).logits
            got, loss = model(idx)
        assert loss is None
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5, msg=lambda m, t=t: f"T={t}: {m}")


def test_gpt_loss_matches_hf_gpt2():
    hf = hf_gpt2(7, **HF_CONFIGS[0])
    model = GPT.from_hf(hf).eval()
    idx = torch.randint(0, 50, (3, 10), generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        want = hf(idx, labels=idx).loss  # HF shifts labels inside; we pass shifted targets
        targets = torch.cat([idx[:, 1:], torch.full((3, 1), -100)], dim=1)
        _, loss = model(idx, targets)
    torch.testing.assert_close(loss, want, rtol=1e-5, atol=1e-6)


def test_gpt_to_hf_roundtrip():
    model = GPT(GPTConfig.tiny(vocab_size=40, block_size=16)).eval()
    idx = torch.randint(0, 40, (2, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(model.to_hf()(idx).logits, model(idx)[0], rtol=1e-5, atol=1e-5)


def test_gpt_output_layer_is_tied_to_embedding():
    model = GPT(GPTConfig.tiny())
    assert model.lm_head.weight is model.wte.weight
    assert model.num_parameters() == sum(p.numel() for p in set(model.parameters()))


def test_gpt_is_causal():
    model = GPT(GPTConfig.tiny(vocab_size=20, block_size=8)).eval()
    idx = torch.randint(0, 20, (1, 8), generator=torch.Generator().manual_seed(2))
    changed = idx.clone()
    changed[0, 5:] = (changed[0, 5:] + 1) % 20
    with torch.no_grad():
        a, b = model(idx)[0], model(changed)[0]
    torch.testing.assert_close(a[:, :5], b[:, :5])
    assert not torch.allclose(a[:, 5:], b[:, 5:])


def test_gpt_attention_maps_match_scratch_attention():
    model = GPT(GPTConfig.tiny(vocab_size=20, block_size=8)).eval()
    idx = torch.randint(0, 20, (2, 6), generator=torch.Generator().manual_seed(3))
    maps = model.attention_maps(idx)
    assert len(maps) == 2 and maps[0].shape == (2, 4, 6, 6)
    attn = model.h[0].attn
    with torch.no_grad():
        q, k, v = attn._qkv(model.h[0].ln_1(model.embed(idx)))
        _, weights = scaled_dot_product_attention(q, k, v, is_causal=True)
    torch.testing.assert_close(maps[0], weights)
    assert torch.all(maps[1].triu(1) == 0)


def test_gpt_save_load_roundtrip(tmp_path):
    model = GPT(GPTConfig.tiny(vocab_size=30, block_size=10, layer_norm_eps=1e-6)).eval()
    path = tmp_path / "tiny.safetensors"
    model.save(path)
    loaded = GPT.load(path).eval()
    assert loaded.config == model.config
    assert loaded.lm_head.weight is loaded.wte.weight
    idx = torch.randint(0, 30, (2, 10), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(loaded(idx)[0], model(idx)[0])


def test_gpt_load_rejects_foreign_file(tmp_path):
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(2)}, str(tmp_path / "x.safetensors"))
    with pytest.raises(ValueError, match="no 'llmcourse.gpt.config' metadata"):
        GPT.load(tmp_path / "x.safetensors")


def test_gpt_generate_is_reproducible_and_greedy_matches_argmax():
    model = GPT(GPTConfig.tiny(vocab_size=20, block_size=8)).eval()
    idx = torch.zeros(2, 1, dtype=torch.long)
    a = model.generate(idx, 12, top_k=5, generator=torch.Generator().manual_seed(0))
    b = model.generate(idx, 12, top_k=5, generator=torch.Generator().manual_seed(0))
    assert a.shape == (2, 13) and torch.equal(a, b)
    greedy = model.generate(idx, 3, temperature=0)
    with torch.no_grad():
        assert greedy[0, 1] == model(idx)[0][0, -1].argmax()


def test_gpt_rejects_bad_input():
    model = GPT(GPTConfig.tiny(vocab_size=20, block_size=8))
    with pytest.raises(ValueError, match=r"T=9 exceeds block_size=8"):
        model(torch.zeros(1, 9, dtype=torch.long))
    with pytest.raises(TypeError, match="integer token ids .*float32"):
        model(torch.zeros(1, 4))
    with pytest.raises(ValueError, match=r"shape \(B, T\)"):
        model(torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\[0, 20\)"):
        model(torch.full((1, 3), 20))
    with pytest.raises(ValueError, match="divisible"):
        GPTConfig(n_embd=30, n_head=4)
    with pytest.raises(ValueError, match="bias=False"):
        GPT(GPTConfig.tiny(bias=False)).to_hf_config()


def test_from_hf_rejects_exact_gelu():
    cfg = transformers.GPT2Config(vocab_size=10, n_positions=4, n_embd=8, n_layer=1, n_head=2,
                                  activation_function="gelu")
    with pytest.raises(ValueError, match="tanh approximation"):
        GPT.from_hf(transformers.GPT2LMHeadModel(cfg))
