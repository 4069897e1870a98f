"""The stored runs of chapter 11 (book/11-peft-lora/peft_runs.json): made from the shipped base model, complete,
and consistent with the library's own parameter counts; the recipe's methods build and step on a tiny run."""

from __future__ import annotations

import json

import pytest

from tests.conftest import REPO

RUNS = REPO / "book" / "11-peft-lora" / "peft_runs.json"


@pytest.fixture(scope="module")
def stored():
    return json.loads(RUNS.read_text())


def test_runs_come_from_the_shipped_base_model(stored):
    from llmcourse.pretrained import recipe

    assert stored["base_sha256"] == recipe("base")["sha256"]["model.safetensors"], \
        "peft_runs.json was made from another base model: re-run python -m llmcourse.recipes.peft"
    assert stored["scale"] == 1.0


def test_every_run_of_the_recipe_is_stored_with_its_measurements(stored):
    from llmcourse.recipes.peft import runs

    for name, *_ in runs():
        r = stored["runs"][name]
        assert set(r) >= {"trainable", "total", "memory", "step_cpu_seconds", "scores", "loss"}, name
        assert 0 <= r["scores"]["all"] <= 1 and r["steps"] == len(r["loss"]), name
        m = r["memory"]
        assert m["peak_bound"] == m["weights"] + m["gradients"] + m["optimizer"] + m["activations"], name
    assert "prompt_engineering" in stored and stored["runs"]["base"]["trainable"] == 0


def test_stored_lora_counts_match_the_library(stored):
    from llmcourse.gpt import GPTConfig
    from llmcourse.memory import ModelShape

    cfg = GPTConfig.tiny(vocab_size=2048, block_size=128, n_layer=4, n_embd=128)
    c = cfg.n_embd
    per_layer = {"attn": (c + 3 * c) + (c + c), "attn+mlp": (c + 3 * c) + (c + c) + (c + 4 * c) + (4 * c + c)}
    for name, r in stored["runs"].items():
        if name.startswith("lora_"):
            assert r["trainable"] == cfg.n_layer * r["r"] * per_layer[r["targets"]], name
            assert r["total"] == stored["base_parameters"] + r["trainable"], name
    assert stored["runs"]["full"]["trainable"] == ModelShape.from_gpt_config(cfg).parameters() \
        == stored["base_parameters"]


@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore:fan_in_fan_out:UserWarning")
def test_recipe_methods_build_and_train_a_step(one_thread):
    """Every method of the recipe wraps the base model, counts its parameters and takes one step."""
    import copy

    import torch

    from llmcourse import sft
    from llmcourse.lora import trainable_parameters
    from llmcourse.pretrained import load_base
    from llmcourse.recipes.peft import data, runs

    base, _ = load_base()
    items, _, _ = data(scale=0.02)
    batch = sft.epoch_batches(items, 64, 8, seed=0, packed=False)[0]
    for name, _, _, apply in runs():
        if name.startswith("qlora"):
            pytest.importorskip("bitsandbytes")
        model = apply(copy.deepcopy(base)).train()
        trainable, total = trainable_parameters(model)
        assert 0 < trainable <= total, name
        loss = sft.sft_loss(model, batch)
        loss.backward()
        assert all(p.grad is not None for p in model.parameters() if p.requires_grad), name
        assert torch.isfinite(loss), name


def test_focused_runs_come_from_the_shipped_sft_model_and_are_complete(stored):
    """The focused part (``--part focused``): SFT checkpoint hash, every run stored, counts as the library's."""
    from llmcourse.pretrained import recipe
    from llmcourse.recipes.peft import focused_runs

    f = stored["focused"]
    assert f["sft_sha256"] == recipe("sft")["sha256"]["model.safetensors"], \
        "the focused runs were made from another SFT model: re-run python -m llmcourse.recipes.peft --part focused"
    assert f["scale"] == 1.0 and f["settings"]["test_examples"] >= 150
    assert [r[0] for r in focused_runs()] == list(f["runs"])
    c, n_layer = 128, 4
    per_layer = {"attn": (c + 3 * c) + (c + c), "attn+mlp": (c + 3 * c) + (c + c) + (c + 4 * c) + (4 * c + c)}
    for name, r in f["runs"].items():
        assert r["steps"] == len(r["loss"]) == f["runs"]["full"]["steps"], name
        assert r["correct"] == round(r["exact_match"] * r["n_test"]) and r["n_test"] == f["settings"]["test_examples"]
        m = r["memory"]
        assert m["peak_bound"] == m["weights"] + m["gradients"] + m["optimizer"] + m["activations"], name
        if r["method"] == "LoRA":
            assert r["trainable"] == n_layer * r["r"] * per_layer[r["targets"]], name
        else:
            assert r["trainable"] == f["sft_parameters"], name


def test_focused_data_holds_out_every_training_problem():
    from llmcourse.instructions import fresh_examples, problem_key
    from llmcourse.recipes.peft import FOCUSED, focused_data

    items, test, _ = focused_data(scale=0.05)
    assert len(items) == 50 and len(test) == 10 and {e.family for e in test} == {FOCUSED["family"]}
    train = fresh_examples(50, FOCUSED["train_seed"], families=(FOCUSED["family"],))
    assert not {problem_key(e) for e in train} & {problem_key(e) for e in test}
