"""Memory arithmetic (llmcourse.memory): known answers, published model sizes, and a counted training step."""

from __future__ import annotations

import pytest
import torch

from llmcourse.gpt import GPT, GPTConfig
from llmcourse.lora import ATTENTION, inject_lora, trainable_parameters
from llmcourse.memory import (
    ModelShape,
    activation_memory,
    bytes_per_value,
    human,
    inference_memory,
    kv_cache_bytes,
    measure_training_step,
    training_memory,
)


def test_llama2_parameter_counts_match_the_published_models():
    # the configs published with the weights; transformers' LlamaForCausalLM reports these counts
    assert ModelShape.llama2_7b().parameters() == 6_738_415_616
    assert ModelShape.llama2_70b().parameters() == 68_976_648_192


def test_model_shape_of_the_course_gpt_counts_its_parameters():
    for cfg in (GPTConfig.tiny(), GPTConfig.tiny(n_layer=3, n_embd=48, n_head=6, vocab_size=300)):
        torch.manual_seed(0)
        assert ModelShape.from_gpt_config(cfg).parameters() == GPT(cfg).num_parameters()


def test_lora_parameters_formula_matches_injected_lora():
    cfg = GPTConfig.tiny(vocab_size=60, n_embd=32)
    model = GPT(cfg)
    inject_lora(model, ATTENTION, r=4, alpha=8)
    # c_attn: 32 -> 96, c_proj: 32 -> 32, two layers
    assert trainable_parameters(model)[0] == 2 * 4 * ((32 + 96) + (32 + 32))
    s = ModelShape.llama2_7b()
    assert s.lora_parameters(8, ("q", "v")) == 32 * 2 * 8 * (4096 + 4096)  # 4.19 M, the usual "0.06 %"
    with pytest.raises(ValueError, match="unknown targets"):
        s.lora_parameters(8, ("qkv",))


def test_training_memory_known_answers():
    n = 7_000_000_000
    mixed = training_memory(n, weight_dtype="bf16", mixed_precision=True)
    assert mixed == {"weights": 2 * n, "gradients": 2 * n, "optimizer": 8 * n, "master_weights": 4 * n,
                     "total": 16 * n}  # ZeRO's 16 bytes per parameter
    assert training_memory(n)["total"] == 16 * n  # fp32 weights, fp32 grads, two fp32 moments
    assert training_memory(n, optimizer="sgd")["total"] == 8 * n
    assert training_memory(n, optimizer="adam8bit")["optimizer"] == 2 * n
    lora = training_memory(n, n_trainable=4_000_000, weight_dtype="bf16", mixed_precision=True)
    assert lora["total"] == 2 * n + (2 + 8 + 4) * 4_000_000  # the trainable weights are among the n
    assert training_memory(n, n_trainable=0, weight_dtype="nf4")["total"] == n / 2


def test_activation_and_kv_cache_known_answers():
    s = ModelShape.llama2_7b()
    per_layer = 4096 * 1 * 4096 * (34 + 5 * 32 * 4096 / 4096)  # s b h (34 + 5 a s / h), Korthikanti eq. 1
    assert activation_memory(s, 4096, 1) == 32 * per_layer
    assert activation_memory(s, 4096, 1, recompute="selective") == 32 * 34 * 4096 * 4096
    assert activation_memory(s, 4096, 1, recompute="full") == 32 * 2 * 4096 * 4096
    assert kv_cache_bytes(32, 32, 128, 4096, 1) == 2 ** 31  # Llama 2 7B, 4k tokens, fp16: 2 GiB
    g = ModelShape.llama2_70b()
    assert kv_cache_bytes(g.n_layer, g.n_kv_head, g.head_dim, 4096, 1) == 80 * 2 * 8 * 128 * 4096 * 2
    assert inference_memory(6_738_415_616, "fp16") == 2 * 6_738_415_616
    assert inference_memory(10, "nf4") == 5
    assert bytes_per_value(torch.bfloat16) == 2 and bytes_per_value("FP32") == 4
    assert human(13_476_831_232) == "13.5 GB" and human(2048, "kB") == "2.0 kB"


@pytest.mark.parametrize("call", [
    lambda: training_memory(0), lambda: training_memory(10, n_trainable=11), lambda: training_memory(10, optimizer="lion"),
    lambda: training_memory(10, mixed_precision=True), lambda: bytes_per_value("int3"),
    lambda: activation_memory(ModelShape.llama2_7b(), 0, 1), lambda: activation_memory("7b", 1, 1),
    lambda: activation_memory(ModelShape.llama2_7b(), 8, 1, recompute="some"),
    lambda: kv_cache_bytes(1, 1, 1, 1, 1.5), lambda: human(-1), lambda: human(1, "GiB"),
    lambda: ModelShape("x", 1, 10, 3, 3, 4, 5), lambda: ModelShape("x", 1, 12, 4, 3, 4, 5)])
def test_memory_functions_reject_bad_inputs(call):
    with pytest.raises((ValueError, TypeError)):
        call()


def test_measure_training_step_counts_weights_grads_state_and_activations():
    torch.manual_seed(0)
    cfg = GPTConfig.tiny(vocab_size=64, block_size=16, n_embd=32)
    model = GPT(cfg)
    idx = torch.randint(0, 64, (4, 16))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    m = measure_training_step(model, lambda: model(idx, idx)[1], opt)
    n = model.num_parameters()
    assert m["weights"] == 4 * n  # no buffers in the GPT
    assert m["gradients"] == 4 * n and m["optimizer"] == 8 * n  # Adam: two fp32 moments
    assert m["peak_bound"] == sum(v for k, v in m.items() if k != "peak_bound")
    # Korthikanti's per-layer estimate is for 16-bit values: fp32 doubles it; the logits come on top
    estimate = 2 * activation_memory(ModelShape.from_gpt_config(cfg), 16, 4)
    assert 0.5 * estimate < m["activations"] < 2 * estimate + 4 * 4 * 16 * 64 * 4
    lora = GPT(cfg)
    inject_lora(lora, ATTENTION, r=2, alpha=4)
    opt = torch.optim.AdamW([p for p in lora.parameters() if p.requires_grad], lr=1e-3)
    ml = measure_training_step(lora, lambda: lora(idx, idx)[1], opt)
    t, total = trainable_parameters(lora)
    assert ml["weights"] == 4 * total and ml["gradients"] == 4 * t and ml["optimizer"] == 8 * t
