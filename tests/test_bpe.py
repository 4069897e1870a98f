"""llmcourse.bpe: known answers, exact round trips on hostile Unicode, special tokens, errors, save/load."""

from __future__ import annotations

import json

import pytest

from llmcourse import bpe
from llmcourse.datasets import english_corpus

HOSTILE = [
    "", " ", "\n", "\r\n\r\n", "  two  spaces\n\n\tand a tab ", "Hello, world! It's 2024; we'll see.",
    "中文分词：字节对编码。", "emoji 👍🏽 and a family 👨‍👩‍👧 and a flag 🇫🇷", "e\u0301 cafe\u0301 (combining acute)",
    "\x00\x01\x7f\x1c\x1d\x1e\x1f control", "\u00a0\u2028\u3000 odd spaces", "Ǆǅǆ ١٢٣ ⅷ ½ ²",
    "lone surrogates \ud800 and \udfff", "\ud83d\ude00 a surrogate pair kept as two code points",
    "<|bos|>Q: hi<|eos|><|pad|>", "<|eos| almost <|EOS|> special", "'s'S 're 'LL don't I'M",
    "\ufeffBOM \ufffd replacement \U0010ffff last code point",
]


@pytest.fixture(scope="module")
def small_text():
    return english_corpus()[:60_000]


@pytest.fixture(scope="module")
def tok(small_text):
    return bpe.train(small_text, 512)


def test_bpe_known_answer():
    """minbpe's Wikipedia example: 3 merges, aa -> 256, ab -> 257, (256, 257) -> 258."""
    t = bpe.train("aaabdaaabac", 256 + 3, special_tokens=())
    assert t.merges == [(97, 97, 256), (97, 98, 257), (256, 257, 258)]
    assert t.encode("aaabdaaabac") == [258, 100, 258, 97, 99]
    assert t.decode([258, 100, 258, 97, 99]) == "aaabdaaabac"


def test_bpe_tie_break_known_answer():
    """"ab" and " c" each occur once: ties go by GPT-2's byte order ("a" before space), not byte value."""
    assert bpe.tie_rank(ord("a")) < bpe.tie_rank(ord(" ")) and ord(" ") < ord("a")
    t = bpe.train("ab c", 257, special_tokens=())
    assert t.merges == [(97, 98, 256)], f"expected (a, b) to win the tie, got {t.merges}"


def test_bpe_pretokenize_known_answer():
    assert bpe.pre_tokenize("Hi, it's 2024!") == ["Hi", ",", " it", "'s", " 2024", "!"]
    assert bpe.pre_tokenize("x  1\n\n y") == ["x", " ", " 1", "\n\n", " y"]
    assert bpe.pre_tokenize("it's 2024!", bpe.SPLIT_DIGITS_PATTERN) == ["it", "'s", " ", "2", "0", "2", "4", "!"]
    for s in HOSTILE:  # every character lands in exactly one pre-token
        assert "".join(bpe.pre_tokenize(s)) == s, f"pre-tokens of {s!r} do not spell it"
        assert "".join(bpe.pre_tokenize(s, bpe.SPLIT_DIGITS_PATTERN)) == s


def test_bpe_merge_known_answer():
    assert bpe.merge([5, 6, 6, 6, 7], (6, 6), 99) == [5, 99, 6, 7]
    assert bpe.merge([], (1, 2), 3) == []


def test_bpe_encode_applies_merges_by_rank_then_leftmost():
    t = bpe.BPETokenizer([(98, 99, 256), (97, 98, 257)])  # "bc" learned before "ab"
    assert t.encode("abc") == [97, 256], "the lower-rank merge (b, c) must apply first"
    t = bpe.BPETokenizer([(97, 97, 256)])
    assert t.encode("aaa") == [256, 97], "equal ranks merge the leftmost pair first"


def test_bpe_never_merges_across_pretokens():
    t = bpe.train(" ".join(["hi"] * 50), 256 + 3 + 10)
    tokens = [t.vocab[i] for i in range(256, len(t.vocab))]
    assert tokens == [b"hi", b" hi"], f"only merges inside 'hi' and ' hi' are possible, got {tokens}"
    assert t.vocab_size == 256 + 2 + 3, "training stops early when no pair is left"


def test_bpe_roundtrip(tok):
    for s in HOSTILE:
        ids = tok.encode(s)
        assert tok.decode(ids) == s, f"round trip failed for {s!r}: got {tok.decode(ids)!r}"
        assert tok.decode(tok.encode(s, allowed_special="none")) == s
    assert tok.encode("\ud800") == [0xED, 0xA0, 0x80], "a lone surrogate is its 3 generalised-UTF-8 bytes"


def test_bpe_roundtrip_random_code_points(tok):
    import random

    rng = random.Random(0)
    for _ in range(300):
        s = "".join(chr(rng.randrange(0x110000)) for _ in range(rng.randint(1, 10)))
        assert tok.decode(tok.encode(s)) == s, f"round trip failed for {[hex(ord(c)) for c in s]}"


def test_bpe_decode_invalid_bytes(tok):
    assert tok.decode([0xE4]) == "\ufffd", "a cut-off character decodes to U+FFFD by default"
    with pytest.raises(UnicodeDecodeError):
        tok.decode([0xE4], errors="strict")


def test_bpe_special_tokens(tok):
    bos, eos, pad = (tok.special_tokens[t] for t in bpe.DEFAULT_SPECIAL_TOKENS)
    assert (bos, eos, pad) == (509, 510, 511), "special tokens take the last ids"
    assert tok.encode("<|bos|>hi<|eos|>") == [bos, *tok.encode("hi"), eos]
    plain = tok.encode("<|eos|>", allowed_special="none")
    assert eos not in plain and tok.decode(plain) == "<|eos|>"
    assert tok.encode("<|bos|><|eos|>", allowed_special={"<|eos|>"})[-1] == eos
    assert bos not in tok.encode("<|bos|><|eos|>", allowed_special={"<|eos|>"})
    with pytest.raises(ValueError, match="not special tokens"):
        tok.encode("x", allowed_special={"<|unk|>"})


def test_bpe_special_tokens_are_never_learned():
    t = bpe.train("<|eos|>ab<|eos|>ab<|eos|>ab", 256 + 3 + 5)
    assert [t.vocab[i] for i in range(256, len(t.vocab))] == [b"ab"], "special-token text must be cut out"


def test_bpe_vocabularies_are_nested(small_text):
    small, large = bpe.train(small_text, 300), bpe.train(small_text, 400)
    assert small.merges == large.merges[:len(small.merges)], "a shorter run must learn a prefix of the merges"
    assert len(small.merges) == 300 - 256 - 3


def test_bpe_split_digits():
    text = "In 2024, 1000 + 2024 = 3024. " * 20
    t = bpe.train(text, 300, split_digits=True)
    digit_tokens = [b for b in t.vocab.values() if sum(c in b"0123456789" for c in b) >= 2]
    assert digit_tokens == [], f"split_digits must never merge digits, got {digit_tokens}"
    assert [t.decode([i]) for i in t.encode("2024")] == ["2", "0", "2", "4"]
    assert any(sum(c in b"0123456789" for c in b) >= 2 for b in bpe.train(text, 300).vocab.values())


def test_bpe_errors():
    with pytest.raises(ValueError, match="vocab_size must be an int >= 256 bytes \\+ 3 special tokens = 259, got 258"):
        bpe.train("abc", 258)
    with pytest.raises(TypeError, match="expects a str, got bytes"):
        bpe.train(b"abc", 300)
    with pytest.raises(ValueError, match="distinct"):
        bpe.train("abc", 300, special_tokens=["<|x|>", "<|x|>"])
    with pytest.raises(ValueError, match="min_frequency"):
        bpe.train("abc", 300, min_frequency=0)
    t = bpe.train("abc abc", 262)
    with pytest.raises(TypeError, match="expects a str, got list"):
        t.encode(["abc"])
    with pytest.raises(ValueError, match=r"unknown token id 9999: this tokenizer has ids 0\.\.261"):
        t.decode([97, 9999])
    with pytest.raises(ValueError, match="uses an id that no earlier merge made"):
        bpe.BPETokenizer([(97, 300, 256)])
    with pytest.raises(ValueError, match="should give id"):
        bpe.BPETokenizer([(97, 98, 256), (97, 98, 257)])
    with pytest.raises(ValueError, match=r"take the ids after the vocabulary \(257\.\.257\)"):
        bpe.BPETokenizer([(97, 98, 256)], {"<|eos|>": 300})


def test_bpe_min_frequency():
    t = bpe.train("ab ab ab cd", 300, min_frequency=2)
    assert [t.vocab[i] for i in range(256, len(t.vocab))] == [b"ab", b" ab"]


def test_bpe_save_load(tok, tmp_path, small_text):
    path = tmp_path / "bpe.json"
    tok.save(path)
    loaded = bpe.BPETokenizer.load(path)
    assert loaded.merges == tok.merges and loaded.special_tokens == tok.special_tokens
    assert loaded.pattern == tok.pattern
    sample = small_text[:5000] + "".join(HOSTILE)
    assert loaded.encode(sample) == tok.encode(sample)
    (tmp_path / "bad.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(ValueError, match="not an llmcourse BPE tokenizer file"):
        bpe.BPETokenizer.load(tmp_path / "bad.json")


def test_bpe_train_is_deterministic(small_text):
    assert bpe.train(small_text, 400).merges == bpe.train(small_text, 400).merges


def _naive_train_ids(text: str, n_merges: int) -> list[tuple[int, int, int]]:
    """Full recount after every merge; ties to the smallest (left id, right id); equal bytes share an id."""
    words = {}
    for piece in bpe.pre_tokenize(text):
        key = tuple(bpe.to_bytes(piece))
        words[key] = words.get(key, 0) + 1
    words = [(list(w), f) for w, f in words.items()]
    vocab = {i: bytes([i]) for i in range(256)}
    id_of = {b: i for i, b in vocab.items()}
    merges = []
    for _ in range(n_merges):
        counts = {}
        for ids, f in words:
            for pair in zip(ids, ids[1:]):
                counts[pair] = counts.get(pair, 0) + f
        if not counts:
            break
        pair = min(counts, key=lambda p: (-counts[p], p))
        new_id = id_of.setdefault(vocab[pair[0]] + vocab[pair[1]], len(vocab))
        vocab[new_id] = vocab[pair[0]] + vocab[pair[1]]
        merges.append((*pair, new_id))
        words = [(bpe.merge(ids, pair, new_id), f) for ids, f in words]
    return merges


def test_bpe_tie_break_ids_known_answer():
    """"ab" and " c" each occur once: by plain ids the space (32) comes first, by GPT-2's order "a" does."""
    assert bpe.train("ab c", 257, special_tokens=(), tie_break="ids").merges == [(32, 99, 256)]
    assert bpe.train("ab c", 257, special_tokens=(), tie_break="gpt2").merges == [(97, 98, 256)]
    t = bpe.train("aaabdaaabac", 256 + 3, special_tokens=(), tie_break="ids")
    assert t.merges == [(97, 97, 256), (97, 98, 257), (256, 257, 258)]


def test_bpe_tie_break_ids_matches_a_full_recount(small_text):
    """The heap with its incremental counts learns the merges a recount after every merge learns."""
    import random

    rng = random.Random(0)
    tie_heavy = " ".join("".join(rng.choice("abcd") for _ in range(rng.randint(1, 5))) for _ in range(300))
    for text, n in ((small_text[:20_000], 120), (tie_heavy, 60), ("".join(HOSTILE) * 3, 40)):
        got = bpe.train(text, 256 + n, special_tokens=(), tie_break="ids").merges
        assert got == _naive_train_ids(text, n), f"tie_break='ids' differs from a full recount on {text[:30]!r}"


def test_bpe_tie_break_default_unchanged(small_text):
    assert bpe.train(small_text, 400).merges == bpe.train(small_text, 400, tie_break="gpt2").merges
    with pytest.raises(ValueError, match="tie_break must be 'gpt2' or 'ids', got 'bytes'"):
        bpe.train("abc", 300, tie_break="bytes")
