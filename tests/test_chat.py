"""The chat format: render equals transformers' apply_chat_template, exact label masks, packing, GPT masks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from llmcourse import chat
from llmcourse import instructions as ins
from llmcourse.gpt import GPT, GPTConfig
from llmcourse.pretrained import load_base, load_tokenizer


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer()


@pytest.fixture(scope="module")
def hf():
    return load_tokenizer("hf")


SYSTEM = {"role": "system", "content": "You are terse."}
USER = {"role": "user", "content": "Add the two numbers.\n2 + 3"}
ANSWER = {"role": "assistant", "content": "5"}
THOUGHT = {"role": "assistant", "content": "5", "reasoning_content": "2+3=5"}
FIXED = {
    "one turn": [USER, ANSWER],
    "system": [SYSTEM, USER, ANSWER],
    "multi-turn": [SYSTEM, USER, ANSWER, {"role": "user", "content": "And 4 + 4?"}, {"role": "assistant",
                                                                                     "content": "8"}],
    "reasoning": [USER, THOUGHT],
    "prompt only": [SYSTEM, USER],
}

_CHARS = list("abcXYZ019 ,.:;!?'\"-+*/(){}[]<>_\n\t") + ["é", "中", "  ", "\n\n", " x", "'s", "<think>", "😀"]


def _text(rng) -> str:
    while True:
        text = "".join(rng.choice(_CHARS, size=int(rng.integers(1, 25))).tolist())
        if text.strip():
            return text


def random_conversation(rng) -> list[dict]:
    """A system message or not, 1-3 user/assistant turns, odd whitespace, sometimes reasoning."""
    msgs = [{"role": "system", "content": _text(rng)}] if rng.random() < 0.5 else []
    for _ in range(int(rng.integers(1, 4))):
        msgs.append({"role": "user", "content": _text(rng)})
        reply = {"role": "assistant", "content": _text(rng)}
        if rng.random() < 0.4:
            reply["reasoning_content"] = _text(rng)
        msgs.append(reply)
    return msgs


def _conversations(n=40, seed=0):
    rng = np.random.default_rng(seed)
    return list(FIXED.values()) + [random_conversation(rng) for _ in range(n)]


def test_render_by_hand():
    assert chat.render([USER, ANSWER]) == "<|bos|>user:\nAdd the two numbers.\n2 + 3\nassistant:\n5<|eos|>"
    assert chat.render([SYSTEM, USER], add_generation_prompt=True) == (
        "<|bos|>system:\nYou are terse.\nuser:\nAdd the two numbers.\n2 + 3\nassistant:\n")
    assert chat.render([USER, THOUGHT]).endswith("assistant:\n<think>\n2+3=5\n</think>\n5<|eos|>")


@pytest.mark.parametrize("add_generation_prompt", [False, True])
def test_render_equals_apply_chat_template(hf, add_generation_prompt):
    assert hf.chat_template == chat.CHAT_TEMPLATE
    for msgs in _conversations():
        want = hf.apply_chat_template(msgs, tokenize=False, add_generation_prompt=add_generation_prompt)
        assert chat.render(msgs, add_generation_prompt=add_generation_prompt) == want, msgs


def test_a_think_block_in_content_or_under_any_reasoning_key_renders_the_same(hf):
    inline = [USER, {"role": "assistant", "content": "<think>\n2+3=5\n</think>\n5"}]
    for key in chat.REASONING_KEYS:
        msgs = [USER, {"role": "assistant", "content": "5", key: "2+3=5"}]
        assert chat.render(msgs) == chat.render(inline) == hf.apply_chat_template(msgs, tokenize=False)


def test_apply_chat_template_ids_equal_the_course_tokenizer_on_render(tok, hf):
    for msgs in _conversations(20, seed=1):
        out = hf.apply_chat_template(msgs, tokenize=True)  # transformers 5: a BatchEncoding by default
        assert out["input_ids"] == tok.encode(chat.render(msgs))
        assert hf.apply_chat_template(msgs, tokenize=True, return_dict=False) == out["input_ids"]
    prompt = hf.apply_chat_template([USER], add_generation_prompt=True, return_dict=False)
    assert prompt == chat.encode_prompt([USER], tok).tolist() == chat.encode_prompt([USER], hf).tolist()


@pytest.mark.parametrize("kind", ["course", "hf"])
def test_build_labels_is_exact_and_equals_transformers_assistant_mask(tok, hf, kind):
    tokenizer = tok if kind == "course" else hf
    for msgs in _conversations(40, seed=2):
        if not any(m["role"] == "assistant" for m in msgs):
            continue
        ids, labels = chat.build_labels(msgs, tokenizer)
        assert ids.dtype == labels.dtype == torch.long and ids.shape == labels.shape
        assert ids.tolist() == tok.encode(chat.render(msgs)), "segments do not concatenate to the full render"
        mask = hf.apply_chat_template(msgs, return_assistant_tokens_mask=True)["assistant_masks"]
        assert (labels != -100).int().tolist() == mask
        assert torch.equal(labels[labels != -100], ids[labels != -100])


def test_labels_cover_each_reply_and_its_eos_but_no_header(tok):
    msgs = FIXED["multi-turn"]
    ids, labels = chat.build_labels(msgs, tok)
    eos = tok.special_tokens["<|eos|>"]
    trained = labels != -100
    spans = [ids[i:j].tolist() for i, j in _runs(trained)]
    assert spans == [tok.encode("5") + [eos], tok.encode("8") + [eos]]
    ids, labels = chat.build_labels([USER, THOUGHT], tok)
    assert tok.decode(labels[labels != -100].tolist()) == "<think>\n2+3=5\n</think>\n5<|eos|>"


def _runs(mask):
    out, start = [], None
    for i, m in enumerate(mask.tolist() + [False]):
        if m and start is None:
            start = i
        if not m and start is not None:
            out.append((start, i))
            start = None
    return out


def test_example_to_messages(tok):
    ex = ins.Example("addition", "Add the two numbers.", "2 + 3", "5", "3+2=5")
    assert chat.example_to_messages(ex) == [USER, ANSWER]
    msgs = chat.example_to_messages(ex, system="You are terse.", reasoning=True)
    assert msgs == [SYSTEM, USER, {"role": "assistant", "content": "5", "reasoning_content": "3+2=5"}]
    with pytest.raises(ValueError, match="needs an explanation"):
        chat.example_to_messages(ins.Example("sort", "Sort.", "b a", "a b"), reasoning=True)


def test_every_split_example_fits_the_128_token_context(tok):
    longest = max(len(chat.build_labels(chat.example_to_messages(e, chat.DEFAULT_SYSTEM, reasoning=True), tok)[0])
                  for e in ins.make_split("train") if e.explanation)
    assert longest <= 128


@pytest.mark.parametrize("bad, match", [
    ([], "non-empty list"),
    ([{"role": "tool", "content": "x"}], "role must be one of"),
    ([USER, SYSTEM], "system message may only come first"),
    ([{"role": "user", "content": "hi <|eos|> there"}], "special-token text"),
    ([{"role": "user", "content": "  \n"}], "non-empty str"),
    ([{"role": "assistant", "content": "a", "reasoning_content": " "}], "reasoning must be a non-empty"),
    (["hello"], "must be a dict"),
])
def test_bad_conversations_are_refused(bad, match):
    with pytest.raises((ValueError, TypeError), match=match):
        chat.render(bad)


def test_build_labels_needs_an_assistant_turn(tok):
    with pytest.raises(ValueError, match="no assistant message"):
        chat.build_labels([USER], tok)


def test_the_template_itself_rejects_an_unknown_role(hf):
    with pytest.raises(Exception, match="role must be system, user or assistant"):
        hf.apply_chat_template([{"role": "tool", "content": "x"}], tokenize=False)


def test_mask_table_marks_exactly_the_trained_tokens(tok):
    ids, labels = chat.build_labels(FIXED["system"], tok)
    table = chat.mask_table(ids, labels, tok)
    assert table.count("TRAIN") == int((labels != -100).sum()) == 2
    assert len(table.splitlines()) == len(ids) + 1
    assert chat.mask_table(ids, labels, tok, as_html=True).count("<span") == len(ids)


def test_next_token_targets_shift_and_stop_at_example_boundaries():
    labels = torch.tensor([-100, 5, 6, -100, 7, 8])
    assert chat.next_token_targets(labels).tolist() == [5, 6, -100, 7, 8, -100]
    docs = torch.tensor([0, 0, 0, 1, 1, 1])
    labels = torch.tensor([1, 2, 3, 4, 5, 6])
    assert chat.next_token_targets(labels, docs).tolist() == [2, 3, -100, 5, 6, -100]


def _items(tok, n=30, seed=0):
    return [chat.build_labels(chat.example_to_messages(e), tok) for e in ins.fresh_examples(n, seed)]


def test_pack_keeps_every_example_whole_with_restarting_positions(tok):
    items = _items(tok)
    out = chat.pack(items, 128, pad_id=7)
    assert {k: tuple(v.shape) for k, v in out.items()} == {k: (len(out["input_ids"]), 128) for k in out}
    assert len(out["input_ids"]) >= -(-sum(len(x) for x, _ in items) // 128)
    for k, (x, y) in enumerate(items):
        where = out["doc_ids"] == k
        assert int(where.sum()) == len(x) and int(where.any(1).sum()) == 1, f"item {k} split or missing"
        assert torch.equal(out["input_ids"][where], x) and torch.equal(out["labels"][where], y)
        assert out["position_ids"][where].tolist() == list(range(len(x)))
    pad = out["doc_ids"] == -1
    assert (out["input_ids"][pad] == 7).all() and (out["labels"][pad] == -100).all()
    stats = chat.packing_savings(items, 128)
    assert stats["rows_packed"] == len(out["input_ids"]) and stats["rows_padded"] == len(items)
    assert stats["pad_fraction_packed"] == pytest.approx(float(pad.float().mean()))
    assert stats["pad_fraction_packed"] < stats["pad_fraction_padded"]
    padded = chat.pad_batch(items, 128)
    assert padded["input_ids"].shape == (len(items), 128)
    assert padded["doc_ids"][:, 0].tolist() == list(range(len(items)))


def test_pack_refuses_bad_input():
    x = torch.arange(10)
    with pytest.raises(ValueError, match="longer than block_size"):
        chat.pack([(x, x)], 8)
    with pytest.raises(TypeError, match="int64"):
        chat.pack([(x.float(), x)], 16)
    with pytest.raises(ValueError, match="one shape"):
        chat.pack([(x, x[:5])], 16)
    with pytest.raises(ValueError, match="at least one"):
        chat.pack([], 16)


def test_document_mask_by_hand():
    mask = GPT.document_mask(torch.tensor([[0, 0, 1, 1, -1]]))[0, 0].int().tolist()
    assert mask == [[1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [0, 0, 1, 0, 0], [0, 0, 1, 1, 0], [0, 0, 0, 0, 1]]


@pytest.fixture(scope="module")
def random_gpt():
    torch.manual_seed(0)
    return GPT(GPTConfig.tiny(vocab_size=2048, block_size=128)).eval()


def test_a_packed_row_gives_each_example_its_own_logits_and_naive_packing_does_not(tok, random_gpt, one_thread):
    items = _items(tok, 24, seed=3)
    batch = chat.pack(items, 128)
    with torch.no_grad():
        packed, _ = random_gpt(batch["input_ids"], doc_ids=batch["doc_ids"], position_ids=batch["position_ids"])
        naive, _ = random_gpt(batch["input_ids"])
        worst_naive = 0.0
        for k, (x, _) in enumerate(items):
            where = batch["doc_ids"] == k
            alone, _ = random_gpt(x[None])
            torch.testing.assert_close(packed[where], alone[0], rtol=1e-4, atol=1e-4)
            worst_naive = max(worst_naive, float((naive[where] - alone[0]).abs().max()))
    assert worst_naive > 1e-2, "naive packing should leak across examples"


def test_packed_loss_equals_the_token_weighted_loss_of_each_example_alone(tok, random_gpt, one_thread):
    items = _items(tok, 12, seed=4)
    batch = chat.pack(items, 128)
    targets = chat.next_token_targets(batch["labels"], batch["doc_ids"])
    with torch.no_grad():
        _, loss = random_gpt(batch["input_ids"], targets, doc_ids=batch["doc_ids"],
                             position_ids=batch["position_ids"])
        total, count = 0.0, 0
        for x, y in items:
            logits, _ = random_gpt(x[None])
            t = chat.next_token_targets(y)
            total += float(F.cross_entropy(logits[0], t, ignore_index=-100, reduction="sum"))
            count += int((t != -100).sum())
    assert float(loss) == pytest.approx(total / count, rel=1e-5)


def test_gpt_with_one_document_and_default_positions_is_the_plain_forward(random_gpt):
    idx = torch.randint(0, 2048, (2, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        plain, _ = random_gpt(idx)
        masked, _ = random_gpt(idx, doc_ids=torch.zeros_like(idx),
                               position_ids=torch.arange(40).expand(2, 40))
    torch.testing.assert_close(masked, plain, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="shape of idx"):
        random_gpt(idx, doc_ids=torch.zeros(2, 39, dtype=torch.long))
    with pytest.raises(ValueError, match="position_ids must be in"):
        random_gpt(idx, position_ids=torch.full_like(idx, 128))
    maps = random_gpt.attention_maps(idx, doc_ids=(torch.arange(40) >= 20).long().expand(2, 40))
    assert float(maps[0][:, :, 20:, :20].abs().max()) == 0.0


def test_the_base_model_replies_until_eos(tok, one_thread):
    model, _ = load_base()
    text = chat.reply(model, tok, [USER], max_new_tokens=8)
    assert isinstance(text, str) and "<|eos|>" not in text
    assert chat.chat_tokenizer().chat_template == chat.CHAT_TEMPLATE
