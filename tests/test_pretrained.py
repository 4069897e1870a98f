"""The shipped base model: made by its recipe, loaded offline both ways, checked against its hashes."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from llmcourse import pretrained
from llmcourse.recipes import base as recipe


def test_shipped_files_are_small_and_match_their_recorded_hashes():
    record = pretrained.recipe("base")
    for name in ("model.safetensors", "tokenizer.json"):
        path = pretrained.checkpoint_file(name)
        assert path.stat().st_size <= 20 * 2**20, f"{name} is over the 20 MB budget"
    assert record["parameters"] == sum(p.numel() for p in pretrained.load_base()[0].parameters())
    assert record["final"]["val_loss"] == pytest.approx(record["curve"]["val_loss"][-1])


def test_course_and_hugging_face_models_give_the_same_logits_and_ids():
    model, tok = pretrained.load_base()
    hf_model, hf_tok = pretrained.load_base(kind="hf")
    text = "Q: What is 25 + 17? A: 42\nThe for statement is used to iterate"
    ids = tok.encode(text)
    assert hf_tok(text)["input_ids"] == ids
    x = torch.tensor([ids])
    with torch.no_grad():
        ours, _ = model(x)
        theirs = hf_model(x).logits
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    assert not model.training and not hf_model.training


def test_the_recipe_retrains_the_same_tokenizer():
    shipped = pretrained.load_tokenizer()
    fresh = recipe.train_tokenizer()
    assert fresh.merges == shipped.merges and fresh.special_tokens == shipped.special_tokens


@pytest.mark.slow
def test_the_recipe_reproduces_the_recorded_loss_curve(one_thread):
    """The first 20 updates of `python -m llmcourse.recipes.base`, re-run, give the recorded losses."""
    _, _, trainer = recipe.build(steps=20, show_progress=False)
    recorded = pretrained.recipe("base")["curve"]["train_loss"][:20]
    np.testing.assert_allclose(trainer.history.train_loss, recorded, rtol=1e-4)
    assert trainer.history.val_loss[0] == pytest.approx(pretrained.recipe("base")["curve"]["val_loss"][0], rel=1e-5)


def test_a_damaged_checkpoint_is_refused_with_a_clear_message(tmp_path, monkeypatch):
    shutil.copytree(pretrained.CHECKPOINTS / "base", tmp_path / "base")
    with open(tmp_path / "base" / "model.safetensors", "r+b") as f:
        f.seek(-8, 2)
        f.write(b"\x00" * 8)
    monkeypatch.setattr(pretrained, "CHECKPOINTS", tmp_path)
    pretrained._verified.cache_clear()
    with pytest.raises(ValueError, match=r"model\.safetensors has SHA-256 .* recipe\.json records"):
        pretrained.load_base()
    pretrained._verified.cache_clear()


def test_unknown_checkpoint_and_kind_are_explained():
    with pytest.raises(FileNotFoundError, match=r"no shipped checkpoint 'lora'.*known: base, .*sft"):
        pretrained.load_base(name="lora")
    with pytest.raises(ValueError, match=r"kind must be one of \('course', 'hf'\)"):
        pretrained.load_base(kind="onnx")


def test_recipe_json_is_plain_json_with_its_settings():
    record = json.loads((pretrained.CHECKPOINTS / "base" / "recipe.json").read_text())
    assert record["recipe"] == "python -m llmcourse.recipes.base"
    assert record["model"]["vocab_size"] == recipe.VOCAB_SIZE and record["threads"] == recipe.THREADS
