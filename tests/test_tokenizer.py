"""llmcourse.tokenizer: the course BPE against Hugging Face tokenizers (same merges) and transformers (same ids)."""

from __future__ import annotations

import random

import pytest

from llmcourse import bpe, corpus
from llmcourse import tokenizer as tk

from .test_bpe import HOSTILE

NO_SURROGATES = [s for s in HOSTILE if not any(0xD800 <= ord(c) <= 0xDFFF for c in s)]


@pytest.fixture(scope="module")
def texts():
    return corpus.course_corpus("train"), corpus.course_corpus("validation")


@pytest.fixture(scope="module")
def tok(texts):
    return bpe.train(texts[0], 1024)


@pytest.fixture(scope="module")
def hf(tok):
    return tk.to_hf_tokenizer(tok)


def _random_strings(n, seed):
    rng = random.Random(seed)
    ranges = [(0x00, 0x7F), (0x80, 0x2FFF), (0x3000, 0xD7FF), (0xE000, 0x10FFFF)]  # no surrogates
    return ["".join(chr(rng.randint(*rng.choice(ranges))) for _ in range(rng.randint(1, 12))) for _ in range(n)]


@pytest.mark.parametrize("vocab_size,split_digits", [(1024, False), (600, True)])
def test_bpe_merges_match_hf_tokenizers(texts, vocab_size, split_digits):
    result = tk.compare_with_hf(texts[0], vocab_size, sample=texts[1], split_digits=split_digits)
    assert result["first_difference"] is None, f"merges differ from tokenizers' BpeTrainer: {result}"
    assert result["n_merges"] == (vocab_size - 259, vocab_size - 259)
    assert result["tokens_equal"], f"encodings of the validation text differ: {result}"


def test_tie_break_matches_hf_known_answer():
    """One "ab" and one " c": both trainers take (a, b), although space (32) < "a" (97) by byte value."""
    assert tk.hf_merges(tk.train_hf_bpe("ab c", 257, special_tokens=())) == [(b"a", b"b")]
    assert tk.course_merges(bpe.train("ab c", 257, special_tokens=())) == [(b"a", b"b")]


def test_hf_library_defaults_differ_as_documented(texts):
    text, val = texts[0][:150_000], texts[1]
    prefix = tk.compare_with_hf(text, 512, sample=val, add_prefix_space=True)
    assert prefix["common"] == prefix["n_merges"][0], "a prefix space on one text changes order, not the set"
    assert not prefix["tokens_equal"], "add_prefix_space=True changes the first token of every text"
    alphabet = tk.compare_with_hf(text, 512, sample=val, full_alphabet=False)
    ours, theirs = alphabet["n_merges"]
    assert alphabet["same_prefix"] == ours < theirs, "a smaller alphabet leaves room for more merges"


def test_hf_tokenizer_matches_encode(tok, hf, texts):
    strings = NO_SURROGATES + texts[1].split("\n")[:300] + _random_strings(500, seed=0)
    for s in strings:
        ids = tok.encode(s)
        assert hf(s)["input_ids"] == ids, f"ids differ for {s!r}"
        assert hf.encode(s) == ids, f"ids differ for {s!r} (encode)"
        assert hf(s, split_special_tokens=True)["input_ids"] == tok.encode(s, allowed_special="none")
        assert hf.decode(ids) == s, f"HF decode of {s!r} gave {hf.decode(ids)!r}"
    assert hf(texts[1])["input_ids"] == tok.encode(texts[1])


def test_hf_tokenizer_decodes_any_ids_like_decode(tok, hf):
    rng = random.Random(1)
    for _ in range(500):
        ids = [rng.randrange(tok.vocab_size) for _ in range(rng.randint(1, 6))]
        assert hf.decode(ids) == tok.decode(ids), f"decode differs for {ids}"


def test_hf_tokenizer_refuses_lone_surrogates(tok, hf):
    s = "a\ud800b"
    assert tok.decode(tok.encode(s)) == s
    with pytest.raises((TypeError, ValueError)):
        hf(s)


def test_hf_tokenizer_special_tokens_and_padding(tok):
    for side in ("right", "left"):
        hf = tk.to_hf_tokenizer(tok, padding_side=side)
        assert (hf.bos_token_id, hf.eos_token_id, hf.pad_token_id) == (1021, 1022, 1023)
        assert hf.padding_side == side
        batch = hf(["a b c d e", "hello"], padding=True)
        short = tok.encode("hello")
        n = len(tok.encode("a b c d e"))
        pads = [tok.special_tokens["<|pad|>"]] * (n - len(short))
        want = short + pads if side == "right" else pads + short
        assert batch["input_ids"] == [tok.encode("a b c d e"), want]
        mask = [1] * len(short) + [0] * len(pads)
        assert batch["attention_mask"][1] == (mask if side == "right" else mask[::-1])
        assert batch["attention_mask"][0] == [1] * n


def test_hf_tokenizer_save_load(tok, hf, tmp_path):
    from transformers import AutoTokenizer

    hf.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    for s in NO_SURROGATES + ["<|bos|>Q: What is 2 + 3? A: 5<|eos|>"]:
        assert loaded(s)["input_ids"] == tok.encode(s), f"ids differ after from_pretrained for {s!r}"
    assert (loaded.bos_token_id, loaded.eos_token_id, loaded.pad_token_id) == (1021, 1022, 1023)


def test_to_hf_tokenizer_passes_options(tok):
    hf = tk.to_hf_tokenizer(tok, model_max_length=8)
    assert hf.model_max_length == 8
    assert len(hf("a b c d e f g h i j", truncation=True)["input_ids"]) == 8


def test_to_hf_tokenizer_errors(tok):
    with pytest.raises(ValueError, match="padding_side"):
        tk.to_hf_tokenizer(tok, padding_side="middle")
    with pytest.raises(ValueError, match="bos_token='<s>' is not a special token"):
        tk.to_hf_tokenizer(tok, bos_token="<s>")


def test_bytes_to_unicode_known_answer():
    table = tk.bytes_to_unicode()
    assert (table[ord(" ")], table[ord("\n")], table[ord("a")], table[0]) == ("Ġ", "Ċ", "a", "Ā")
    assert len(set(table.values())) == 256


def test_truncate_equals_a_shorter_training_run(texts, tok):
    short = tk.truncate(tok, 400)
    assert short.merges == bpe.train(texts[0], 400).merges
    assert short.special_tokens == {"<|bos|>": 397, "<|eos|>": 398, "<|pad|>": 399}
    with pytest.raises(ValueError, match="vocab_size must be in"):
        tk.truncate(tok, 2000)


def test_measurements(texts):
    rows = tk.chars_per_token(texts[0], {"english": texts[1], "chinese": corpus.chinese_sample()},
                              vocab_sizes=(256, 512, 1024))
    assert [r["vocab_size"] for r in rows] == [256, 512, 1024]
    assert rows[0]["english"] == pytest.approx(len(texts[1]) / len(texts[1].encode()), rel=1e-9)
    assert rows[0]["english"] < rows[1]["english"] < rows[2]["english"], "more merges, fewer tokens"
    assert rows[0]["chinese"] == pytest.approx(1 / 3, rel=0.02), "one CJK character is 3 UTF-8 bytes"
    plain, split = tk.digit_tokenization(texts[0], texts[1], vocab_size=600)
    assert split["split_digits"] and split["multi_digit_tokens"] == 0 and split["digits_per_token"] == 1.0
    assert plain["multi_digit_tokens"] > 0 and plain["digits_per_token"] > 1.0
    assert split["pieces"]["2024"] == ["2", "0", "2", "4"]
    speed = tk.compare_speed(texts[1], 300)
    assert [r["step"] for r in speed][0] == "train" and all(r["llmcourse_s"] > 0 for r in speed)
    assert "tokenizers_s" in tk.format_table(speed)


def test_hf_trainer_learns_special_token_text_but_bpe_does_not():
    text = "<|eos|>ab<|eos|>ab<|eos|>ab"
    assert (b"<", b"|") in tk.hf_merges(tk.train_hf_bpe(text, 256 + 3 + 5)), "as documented in llmcourse.tokenizer"
    assert tk.course_merges(bpe.train(text, 256 + 3 + 5)) == [(b"a", b"b")]
