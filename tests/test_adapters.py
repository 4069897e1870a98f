"""Houlsby adapters (llmcourse.adapters) and the CourseLM seam that runs peft's prompt methods in the course loops."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from llmcourse.adapters import Adapter, CourseLM, WithAdapter, inject_adapters
from llmcourse.gpt import GPT, GPTConfig
from llmcourse.lora import trainable_parameters


def tiny_gpt(seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig.tiny(vocab_size=50, block_size=24, n_layer=2, n_embd=32)).eval()


def test_adapter_is_identity_at_init_and_a_bottleneck():
    a = Adapter(32, 4, generator=torch.Generator().manual_seed(0))
    h = torch.randn(2, 5, 32)
    torch.testing.assert_close(a(h), h, rtol=0, atol=0)
    assert a.down.weight.shape == (4, 32) and a.up.weight.shape == (32, 4)
    assert sum(p.numel() for p in a.parameters()) == 2 * 32 * 4 + 4 + 32
    with torch.no_grad():
        a.up.weight.normal_()
    want = h + a.up(torch.nn.functional.gelu(a.down(h), approximate="tanh"))
    torch.testing.assert_close(a(h), want)
    with pytest.raises(ValueError):
        Adapter(32, 0)


def test_inject_adapters_after_both_sublayers_and_freezes_the_rest():
    model = tiny_gpt()
    x = torch.randint(0, 50, (2, 9), generator=torch.Generator().manual_seed(1))
    before = model(x)[0]
    names = inject_adapters(model, 4)
    assert names == ["h.0.attn.c_proj", "h.0.mlp.c_proj", "h.1.attn.c_proj", "h.1.mlp.c_proj"]
    assert all(isinstance(model.get_submodule(n), WithAdapter) for n in names)
    torch.testing.assert_close(model(x)[0], before, rtol=0, atol=0)  # identity at step 0
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert all(".adapter." in n or ".ln_" in n or n.startswith("ln_f") for n in trainable)
    per_adapter = 2 * 32 * 4 + 4 + 32
    layer_norms = (2 * 2 + 1) * 2 * 32
    assert trainable_parameters(model)[0] == 4 * per_adapter + layer_norms
    model.train()
    _, loss = model(x, x)
    loss.backward()
    assert all(p.grad is None for n, p in model.named_parameters() if not p.requires_grad)
    frozen = inject_adapters(tiny_gpt(), 4, train_layer_norms=False)
    assert len(frozen) == 4


def test_courselm_gives_the_gpt_interface_to_a_transformers_model():
    model = tiny_gpt()
    wrapped = CourseLM(model.to_hf(), model.config.block_size)
    x = torch.randint(0, 50, (3, 10), generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(wrapped(x)[0], model(x)[0], rtol=1e-4, atol=1e-5)
    doc = torch.tensor([[0] * 10, [1] * 7 + [-1] * 3, [2] * 10])  # right padding on row 1
    torch.testing.assert_close(wrapped(x, doc_ids=doc)[0][1, :7], model(x[1:2, :7])[0][0], rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="one example per row"):
        wrapped(x, doc_ids=torch.tensor([[0] * 5 + [1] * 5] * 3))
    with pytest.raises(ValueError, match="right padding"):
        wrapped(x, doc_ids=torch.tensor([[-1] * 3 + [0] * 7] * 3))
    with pytest.raises(ValueError, match="logits only"):
        wrapped(x, x)


def test_courselm_drops_the_virtual_tokens_of_prompt_tuning():
    peft = pytest.importorskip("peft")
    model = tiny_gpt()
    torch.manual_seed(0)
    pm = peft.get_peft_model(model.to_hf(), peft.PromptTuningConfig(task_type=peft.TaskType.CAUSAL_LM,
                                                                    num_virtual_tokens=5))
    wrapped = CourseLM(pm, model.config.block_size)
    x = torch.randint(0, 50, (2, 8), generator=torch.Generator().manual_seed(3))
    logits = wrapped(x)[0]
    assert logits.shape == (2, 8, 50)
    assert trainable_parameters(wrapped) == pm.get_nb_trainable_parameters() == (5 * 32, model.num_parameters()
                                                                                  + 5 * 32)
    # the soft prompt changes the outputs: the model is conditioned on 5 trained vectors, not on text
    assert not torch.allclose(logits, model(x)[0], atol=1e-3)
    logits.sum().backward()
    assert pm.prompt_encoder["default"].embedding.weight.grad is not None
    assert all(p.grad is None for n, p in pm.named_parameters() if "prompt_encoder" not in n)


def test_adapted_model_copies_stay_independent():
    base = tiny_gpt()
    a = copy.deepcopy(base)
    inject_adapters(a, 2)
    assert all(isinstance(m, nn.Linear) for n, m in base.named_modules() if n.endswith("c_proj"))
