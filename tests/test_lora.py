"""LoRA from scratch (llmcourse.lora) against peft 0.21: same outputs, same merged weights, same counts."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from llmcourse.gpt import GPT, GPTConfig
from llmcourse.lora import (
    ATTENTION,
    ATTENTION_MLP,
    LoRALinear,
    inject_lora,
    load_adapter,
    lora_layers,
    lora_state_dict,
    merge_lora,
    save_adapter,
    trainable_parameters,
    unmerge_lora,
)

peft = pytest.importorskip("peft")


def tiny_gpt(seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig.tiny(vocab_size=50, block_size=16, n_layer=2, n_embd=32)).eval()


def idx_batch(seed: int = 1, vocab: int = 50) -> torch.Tensor:
    return torch.randint(0, vocab, (3, 11), generator=torch.Generator().manual_seed(seed))


def randomise_b(model: nn.Module, seed: int = 2) -> None:
    """B starts at zero; give it values so the LoRA path matters in a comparison."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in lora_layers(model).values():
            m.lora_B.copy_(torch.randn(m.lora_B.shape, generator=gen) * 0.1)


def peft_twin(base: nn.Module, ours: nn.Module, targets, r: int, alpha: float):
    """peft's LoRA on a copy of ``base``, with our A and B copied into its layers."""
    theirs = peft.get_peft_model(copy.deepcopy(base), peft.LoraConfig(r=r, lora_alpha=alpha, lora_dropout=0.0,
                                                                      target_modules=list(targets)))
    with torch.no_grad():
        for name, m in lora_layers(ours).items():
            layer = theirs.base_model.model.get_submodule(name)
            layer.lora_A["default"].weight.copy_(m.lora_A)
            layer.lora_B["default"].weight.copy_(m.lora_B)
    return theirs.eval()


CASES = [(ATTENTION, 1, 1.0), (ATTENTION, 4, 8.0), (("attn.c_attn",), 8, 16.0), (ATTENTION_MLP, 2, 32.0),
         (("mlp.c_fc", "mlp.c_proj"), 16, 16.0)]


@pytest.mark.parametrize("targets,r,alpha", CASES)
def test_lora_matches_peft_outputs_merge_and_count(targets, r, alpha):
    base = tiny_gpt()
    ours = copy.deepcopy(base)
    names = inject_lora(ours, targets, r=r, alpha=alpha)
    randomise_b(ours)
    theirs = peft_twin(base, ours, targets, r, alpha)
    from peft.tuners.lora import LoraLayer

    assert names == [n for n, m in theirs.base_model.model.named_modules() if isinstance(m, LoraLayer)]
    assert trainable_parameters(ours) == theirs.get_nb_trainable_parameters()
    x = idx_batch()
    torch.testing.assert_close(ours(x)[0], theirs(x)[0], rtol=1e-5, atol=1e-6)
    merge_lora(ours)
    merged = theirs.merge_and_unload()
    for name in names:
        torch.testing.assert_close(ours.get_submodule(name).base.weight, merged.get_submodule(name).weight,
                                   rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(ours(x)[0], merged(x)[0], rtol=1e-5, atol=1e-6)


def test_lora_count_matches_print_trainable_parameters(capsys):
    base = tiny_gpt()
    ours = copy.deepcopy(base)
    inject_lora(ours, ATTENTION_MLP, r=4, alpha=8)
    peft_twin(base, ours, ATTENTION_MLP, 4, 8).print_trainable_parameters()
    trainable, total = trainable_parameters(ours)
    assert f"trainable params: {trainable:,} || all params: {total:,}" in capsys.readouterr().out
    assert trainable == 2 * (4 * (32 + 96) + 4 * (32 + 32) + 4 * (32 + 128) + 4 * (128 + 32))


def test_lora_matches_peft_on_hf_gpt2_conv1d():
    """peft on transformers' GPT2LMHeadModel (Conv1D layers, fan_in_fan_out) gives the same logits as ours."""
    base = tiny_gpt()
    ours = copy.deepcopy(base)
    inject_lora(ours, ("attn.c_attn", "mlp.c_fc"), r=4, alpha=8)
    randomise_b(ours)
    hf = peft.get_peft_model(base.to_hf(), peft.LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn", "c_fc"],
                                                           fan_in_fan_out=True, lora_dropout=0.0))
    with torch.no_grad():
        for name, m in lora_layers(ours).items():
            layer = hf.base_model.model.transformer.get_submodule(name)
            layer.lora_A["default"].weight.copy_(m.lora_A)
            layer.lora_B["default"].weight.copy_(m.lora_B)
    x = idx_batch()
    torch.testing.assert_close(ours(x)[0], hf.eval()(input_ids=x).logits, rtol=1e-4, atol=1e-5)


def test_lora_init_is_kaiming_uniform_and_zero_b():
    lin = nn.Linear(64, 32)
    m = LoRALinear(lin, r=8, alpha=16, generator=torch.Generator().manual_seed(0))
    bound = 1 / math.sqrt(64)  # kaiming_uniform_(a=sqrt(5)) on fan_in 64, as nn.Linear and peft
    assert m.lora_A.shape == (8, 64) and m.lora_B.shape == (32, 8)
    assert float(m.lora_A.detach().abs().max()) <= bound and float(m.lora_A.detach().abs().max()) > 0.9 * bound
    assert torch.equal(m.lora_B, torch.zeros(32, 8))
    assert m.scaling == 2.0
    x = torch.randn(5, 64)
    torch.testing.assert_close(m(x), lin(x), rtol=0, atol=0)  # B = 0: exactly the base layer at step 0
    assert not lin.weight.requires_grad and m.lora_A.requires_grad


def test_lora_dropout_only_on_the_lora_path():
    lin = nn.Linear(16, 16)
    m = LoRALinear(lin, r=4, alpha=4, dropout=0.5).train()
    x = torch.randn(7, 16)
    torch.testing.assert_close(m(x), lin(x), rtol=0, atol=0)  # B = 0: the base path saw no dropout
    with torch.no_grad():
        m.lora_B.fill_(0.3)
    assert not torch.allclose(m(x), m(x))  # the LoRA path is dropped at random in training
    m.eval()
    torch.testing.assert_close(m(x), lin(x) + (x @ m.lora_A.t() @ m.lora_B.t()), rtol=1e-5, atol=1e-6)


def test_lora_forward_is_w0_plus_scaled_ba():
    lin = nn.Linear(10, 6)
    m = LoRALinear(lin, r=3, alpha=12)
    with torch.no_grad():
        m.lora_B.normal_()
    x = torch.randn(4, 10)
    want = x @ (lin.weight + 4.0 * m.lora_B @ m.lora_A).t() + lin.bias
    torch.testing.assert_close(m(x), want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(m.delta_weight(), 4.0 * m.lora_B @ m.lora_A)


def test_merge_unmerge_is_exact_up_to_rounding():
    model = tiny_gpt()
    w0 = {n: m.weight.clone() for n, m in model.named_modules() if isinstance(m, nn.Linear) and n.startswith("h.")}
    names = inject_lora(model, ATTENTION_MLP, r=4, alpha=8)
    randomise_b(model)
    x = idx_batch()
    before = model(x)[0]
    assert merge_lora(model) == len(names)
    torch.testing.assert_close(model(x)[0], before, rtol=1e-5, atol=1e-6)
    with pytest.raises(RuntimeError, match="already merged"):
        lora_layers(model)[names[0]].merge()
    assert unmerge_lora(model) == len(names)
    for name in names:
        torch.testing.assert_close(model.get_submodule(name).base.weight, w0[name], rtol=0, atol=1e-6)
    torch.testing.assert_close(model(x)[0], before, rtol=1e-5, atol=1e-6)


def test_inject_lora_names_freezing_and_gradients():
    model = tiny_gpt()
    names = inject_lora(model, ATTENTION, r=2, alpha=4)
    assert names == ["h.0.attn.c_attn", "h.0.attn.c_proj", "h.1.attn.c_attn", "h.1.attn.c_proj"]
    assert inject_lora(tiny_gpt(), ["h.1.*.c_fc"], r=2, alpha=4) == ["h.1.mlp.c_fc"]  # glob
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable == [f"{n}.lora_{p}" for n in names for p in "AB"]
    randomise_b(model)
    x = idx_batch()
    _, loss = model(x, x)
    loss.backward()
    assert all(p.grad is None for n, p in model.named_parameters() if "lora_" not in n)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for n, p in model.named_parameters() if "lora_" in n)


def test_inject_lora_rejects_bad_targets_and_hyperparameters():
    with pytest.raises(ValueError, match="no module matches"):
        inject_lora(tiny_gpt(), ["q_proj"], r=2, alpha=4)
    with pytest.raises(ValueError, match="nn.Linear"):
        inject_lora(tiny_gpt(), ["ln_1"], r=2, alpha=4)
    with pytest.raises(ValueError, match="non-empty list"):
        inject_lora(tiny_gpt(), "attn.c_attn", r=2, alpha=4)
    for bad in ({"r": 0, "alpha": 1}, {"r": 2.0, "alpha": 1}, {"r": 2, "alpha": 0}, {"r": 2, "alpha": 1, "dropout": 1}):
        with pytest.raises(ValueError):
            LoRALinear(nn.Linear(8, 8), **bad)
    with pytest.raises(ValueError, match="exceeds"):
        LoRALinear(nn.Linear(8, 4), r=5, alpha=5)
    with pytest.raises(TypeError):
        LoRALinear(nn.Conv1d(2, 2, 1), r=1, alpha=1)
    m = tiny_gpt()
    inject_lora(m, ["attn.c_attn"], r=2, alpha=4)
    with pytest.raises(ValueError, match="already carry LoRA|nn.Linear"):
        inject_lora(m, ["attn.c_attn"], r=2, alpha=4)


def test_save_and_load_adapter_only(tmp_path):
    model = tiny_gpt()
    inject_lora(model, ATTENTION_MLP, r=4, alpha=8, seed=3)
    randomise_b(model)
    path = tmp_path / "adapter.safetensors"
    size = save_adapter(model, path)
    from safetensors.torch import load_file

    stored = load_file(path)
    assert set(stored) == set(lora_state_dict(model)) and all("lora_" in k for k in stored)
    assert size < 4 * sum(v.numel() for v in stored.values()) + 4096  # A and B only, not the base
    fresh = tiny_gpt()  # the same base model
    assert load_adapter(fresh, path) == list(lora_layers(model))
    x = idx_batch()
    torch.testing.assert_close(fresh(x)[0], model(x)[0], rtol=0, atol=0)
    assert trainable_parameters(fresh) == trainable_parameters(model)
    other = tiny_gpt()
    inject_lora(other, ["attn.c_attn"], r=4, alpha=8)
    with pytest.raises(ValueError, match="differ"):
        load_adapter(other, path)


def test_lora_on_a_4bit_base_trains_but_does_not_merge():
    bnb = pytest.importorskip("bitsandbytes")
    lin = nn.Linear(64, 32)
    q = bnb.nn.Linear4bit(64, 32, bias=True, compute_dtype=torch.float32, quant_type="nf4")
    q.weight = bnb.nn.Params4bit(lin.weight.data.clone(), requires_grad=False, quant_type="nf4")
    q.bias = nn.Parameter(lin.bias.data.clone(), requires_grad=False)
    q = q.to("cpu")
    m = LoRALinear(q, r=4, alpha=8)
    x = torch.randn(5, 64)
    torch.testing.assert_close(m(x), q(x), rtol=0, atol=0)
    with torch.no_grad():
        assert float((q(x) - lin(x)).abs().max()) < 0.2  # NF4 rounding of the frozen weight
    m(x).pow(2).sum().backward()
    assert m.lora_B.grad is not None and m.lora_A.grad is not None
    assert trainable_parameters(m) == (4 * (64 + 32), 4 * (64 + 32) + 64 * 32 + 32)
    with pytest.raises(TypeError, match="cannot merge"):
        m.merge()
