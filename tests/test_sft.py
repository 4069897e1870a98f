"""Supervised fine-tuning: data -> packed batches -> loss on replies -> batched greedy evaluation, and the
shipped SFT checkpoint with what its recipe recorded."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from llmcourse import chat, sft
from llmcourse.gpt import GPT, GPTConfig
from llmcourse.instructions import make_split
from llmcourse.pretrained import load_base, recipe


@pytest.fixture(scope="module")
def base():
    torch.set_num_threads(1)
    return load_base()


def test_encode_examples_trains_only_the_reply_and_its_eos(base):
    _, tok = base
    exs = make_split("test", 8)
    for ex, (ids, labels) in zip(exs, sft.encode_examples(exs, tok)):
        assert tok.decode(ids[labels != -100].tolist()) == ex.output + "<|eos|>"
        assert labels.shape == ids.shape


def test_reasoning_puts_the_explanation_in_a_think_block_only_where_there_is_one(base):
    _, tok = base
    with_expl = next(e for e in make_split("train") if e.explanation)
    without = next(e for e in make_split("train") if not e.explanation)
    (ids, labels), (ids2, labels2) = sft.encode_examples([with_expl, without], tok, reasoning=True)
    assert tok.decode(ids[labels != -100].tolist()).startswith("<think>\n" + with_expl.explanation)
    assert "<think>" not in tok.decode(ids2.tolist())


def test_too_long_examples_are_rejected(base):
    _, tok = base
    with pytest.raises(ValueError, match="block_size"):
        sft.encode_examples(make_split("test", 2), tok, block_size=8)
    with pytest.raises(TypeError):
        sft.encode_examples(["not an example"], tok)


def test_an_epoch_holds_every_trained_token_once_in_seeded_order(base):
    _, tok = base
    items = sft.encode_examples(make_split("train", 100), tok)
    batches = sft.epoch_batches(items, 128, 4, seed=0)
    trained = sum(int((b["labels"] != -100).sum()) for b in batches)
    assert trained == sum(int((y != -100).sum()) for _, y in items)
    assert all(b["input_ids"].shape[1] == 128 and b["input_ids"].shape[0] <= 4 for b in batches)
    again = sft.epoch_batches(items, 128, 4, seed=0)
    other = sft.epoch_batches(items, 128, 4, seed=1)
    assert torch.equal(batches[0]["input_ids"], again[0]["input_ids"])
    assert not torch.equal(batches[0]["input_ids"], other[0]["input_ids"])
    padded = sft.epoch_batches(items, 128, 4, seed=0, packed=False)
    assert sum(b["input_ids"].shape[0] for b in padded) == 100 > sum(b["input_ids"].shape[0] for b in batches)


def test_packed_sft_loss_is_the_token_weighted_mean_of_each_example_alone(base):
    model, tok = base
    items = sft.encode_examples(make_split("test", 5), tok)
    total, count = 0.0, 0
    for ids, labels in items:
        targets = torch.full_like(labels, -100)
        targets[:-1] = labels[1:]
        with torch.no_grad():
            logits, _ = model(ids[None])
        total += float(F.cross_entropy(logits[0], targets, ignore_index=-100, reduction="sum"))
        count += int((targets != -100).sum())
    packed = sft.sft_loss(model, chat.pack(items, 128))
    assert float(packed.detach()) == pytest.approx(total / count, rel=1e-4)


def test_batched_greedy_replies_equal_one_at_a_time_replies(base):
    model, tok = base
    exs = make_split("test", 6)  # prompts of different lengths: left padding must not change a reply
    msgs = [chat.example_to_messages(e)[:-1] for e in exs]
    one_by_one = [chat.reply(model, tok, m, max_new_tokens=10) for m in msgs]
    prompts = [chat.encode_prompt(m, tok) for m in msgs]
    assert len({len(p) for p in prompts}) > 1
    eos = tok.special_tokens["<|eos|>"]
    batched = sft.greedy_replies(model, prompts, stop_ids=[eos], max_new_tokens=10, batch_size=4)
    assert [tok.decode(r) for r in batched] == one_by_one


def test_few_shot_prompt_uses_solved_examples_of_the_same_family(base):
    _, tok = base
    train, ex = make_split("train"), make_split("test")[0]
    shots = [e for e in train if e.family == ex.family][:3]
    prompt = sft.few_shot_prompt(ex, shots)
    lines = prompt.split("\n")
    assert len(lines) == 4 and lines[-1].endswith(" A:") and all(" A: " in line for line in lines[:3])
    assert lines[0].endswith(" A: " + shots[0].output)


def test_training_lowers_the_loss_and_replay_needs_pretraining_tokens(base):
    _, tok = base
    torch.manual_seed(0)
    tiny = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=128, n_layer=1, n_head=2, n_embd=32))
    items = sft.encode_examples(make_split("train", 48, families=["uppercase"]), tok)
    config = sft.SFTConfig(epochs=6, batch_size=4, lr=1e-2, min_lr=1e-3, warmup_steps=2)
    hist = sft.train_sft(tiny, items, config, show_progress=False)
    assert sum(hist.loss[-3:]) / 3 < 0.7 * sum(hist.loss[:3]) / 3
    with pytest.raises(ValueError, match="replay_tokens"):
        sft.train_sft(tiny, items, dataclasses.replace(config, replay_batch=2), show_progress=False)
    with pytest.raises(ValueError):
        sft.SFTConfig(lr=0)
    with pytest.raises(ValueError):
        sft.SFTConfig(dropout=1.5)


# ----------------------------------------------------------------- the shipped checkpoint


def test_the_sft_checkpoint_loads_with_its_hash_and_records_the_before_and_after():
    model, tok = load_base(name="sft")
    base_model, _ = load_base()
    record = recipe("sft")
    assert record["base"]["sha256"] == recipe("base")["sha256"]["model.safetensors"]
    assert model.num_parameters() == base_model.num_parameters()
    scores = record["scores"]
    assert set(scores["sft"]) == set(scores["base_few_shot"]) and "all" in scores["sft"]
    assert scores["sft"]["all"] > scores["base_few_shot"]["all"]
    assert record["forgetting"]["sft_ppl"] > record["forgetting"]["base_ppl"]
    assert record["mitigation"]["ppl"] < record["forgetting"]["sft_ppl"]


def test_the_shipped_sft_model_gives_the_recorded_replies():
    torch.set_num_threads(1)
    model, tok = load_base(name="sft")
    record = recipe("sft")
    test = make_split("test", 16)
    _, replies = sft.evaluate_chat(model, tok, test)
    assert replies == [s["sft"] for s in record["samples"][:16]]


def test_base_perplexity_matches_chapter_8():
    torch.set_num_threads(1)
    model, tok = load_base()
    ppl = sft.pretraining_perplexity(model, sft.pretraining_tokens(tok, "validation"))
    assert ppl == pytest.approx(recipe("base")["final"]["val_ppl"], rel=1e-4)


def test_the_recipe_reproduces_the_first_recorded_updates():
    from llmcourse.recipes.sft import CONFIG

    torch.set_num_threads(1)
    model, tok = load_base()
    items = sft.encode_examples(make_split("train"), tok)
    hist = sft.train_sft(model, items, CONFIG, steps=3, show_progress=False)
    assert hist.step == [1, 2, 3]
    assert hist.loss == pytest.approx(recipe("sft")["curve"]["loss"][:3], abs=2e-3)


@pytest.mark.slow
def test_the_recipe_runs_end_to_end_and_writes_a_loadable_checkpoint(tmp_path, monkeypatch):
    import json

    from llmcourse import pretrained
    from llmcourse.recipes import sft as sft_recipe

    assert sft_recipe.main(["--smoke", "--serial", "--out", str(tmp_path / "sft")]) == 0
    record = json.loads((tmp_path / "sft" / "recipe.json").read_text())
    assert {"scores", "forgetting", "mitigation", "sha256", "curve"} <= set(record)
    monkeypatch.setattr(pretrained, "CHECKPOINTS", tmp_path)
    model, _ = pretrained.load_base(name="sft")
    assert model.num_parameters() == record["parameters"]
