"""References for the chapter 7 checks, and the usual mistakes (a helper module, not an assignment).

Everything here runs in the grader's trusted process:

* :func:`reference_merges` - ``llmcourse.bpe.train(..., tie_break="ids")``, the course's BPE
  trainer (the algorithm of the Hugging Face ``tokenizers`` trainer; see
  ``tests/test_tokenizer.py``) with the exercise's tie-break: among the most frequent pairs, the
  smallest ``(left id, right id)``;
* :func:`reference_encode` / :func:`vocab_of` - ``llmcourse.bpe.BPETokenizer`` built from the
  same merges (merge ``k`` makes id ``256 + k``);
* :func:`hf_tokenizer` - the ``transformers.PreTrainedTokenizerFast`` that
  ``llmcourse.tokenizer.to_hf_tokenizer`` makes of a small course tokenizer; its ``pad`` is the
  reference for ``pad_collate``;
* :func:`cosine_reference` - ``torch.nn.functional.cosine_similarity`` in float64, then a stable
  descending sort (equal scores: the smaller index first).

The ``mistaken_*`` functions compute what a usual mistake returns, so a failed check can name it.
"""

from __future__ import annotations

import functools
from collections import Counter

import regex
import torch
import torch.nn.functional as F

from llmcourse import bpe
from llmcourse.corpus import chinese_sample, course_corpus

PATTERN = bpe.GPT2_PATTERN

# Hostile Unicode for the round trips: Chinese, emoji with skin tones, ZWJ sequences and flags,
# combining marks, control characters and odd spaces, lone surrogates (legal in a Python str; UTF-8
# with errors="surrogatepass" spells them), a high one right before a low one (two code points, not
# the emoji they would make in UTF-16: the grader's wire keeps them apart, autograder.wire), and a
# low one before a high one.
HOSTILE = (
    "中文分词：字节对编码把常见的字节对合并成新的词元。",
    "emoji 👍🏽 👋🏿 and a family 👨‍👩‍👧‍👦 and flags 🇫🇷🇯🇵 and 🏳️‍🌈",
    "e\u0301 cafe\u0301 Zalgo: Z\u0335\u0321a\u0336l\u0337g\u0338o\u0334",
    "tabs\tand\r\nnewlines\n\n  two  spaces \u00a0\u2028\u3000 odd spaces\x00\x7f",
    "lone surrogates \ud800 and \udfff, a low one before a high one: \ude00\ud83d, a split pair: \ud83d\ude00.",
    "Ǆǅǆ ١٢٣ ⅷ ½ ² 'S 're 'LL don't I'M <|eos|>",
)


@functools.lru_cache(maxsize=2)
def corpus() -> str:
    """The course corpus (its training split), about 0.5 MB."""
    return course_corpus("train")


def corpus_slice(rng, n_chars: int) -> str:
    """``n_chars`` characters of the course corpus from a position drawn with ``rng``."""
    text = corpus()
    start = int(rng.integers(0, len(text) - n_chars))
    return text[start:start + n_chars]


def hostile_text(rng, n_pieces: int = 40) -> str:
    """``n_pieces`` pieces of the hostile strings and the course's Chinese sample drawn with ``rng``,
    then every hostile string once (so each kind of character is there whatever is drawn)."""
    pieces = [p for s in HOSTILE + (chinese_sample()[:300],) for p in regex.findall(r"\X+?(?:\s|$)", s)]
    drawn = "".join(pieces[int(i)] for i in rng.integers(0, len(pieces), n_pieces))
    return drawn + " ".join(HOSTILE[int(i)] for i in rng.permutation(len(HOSTILE)))


# ----------------------------------------------------------------- BPE

def to_bytes(text: str) -> list[int]:
    return list(text.encode("utf-8", errors="surrogatepass"))


def reference_merges(text: str, num_merges: int) -> tuple[list[tuple[int, int]], bool]:
    """(the merges the exercise's rule learns, truncated?).

    The library gives a merged token the id of an existing token with the same bytes ("ab"+"c"
    and "a"+"bc"); the exercise numbers merges 256, 257, ... So the list stops after the first
    merge that makes such a token (``truncated`` is then True, and the check asks for only that
    many merges). On the course corpus this never happened in 1,000 merges.
    """
    tok = bpe.train(text, 256 + num_merges, special_tokens=(), tie_break="ids")
    pairs = []
    for k, (a, b, new) in enumerate(tok.merges[:num_merges]):
        pairs.append((a, b))
        if new != 256 + k:
            return pairs, True
    return pairs, False


def vocab_of(merges) -> dict[int, bytes]:
    """id -> bytes: the 256 bytes, then merge ``k`` as id ``256 + k``."""
    vocab = {i: bytes([i]) for i in range(256)}
    for k, (a, b) in enumerate(merges):
        vocab[256 + k] = vocab[a] + vocab[b]
    return vocab


def tokenizer_of(merges) -> bpe.BPETokenizer:
    return bpe.BPETokenizer([(a, b, 256 + k) for k, (a, b) in enumerate(merges)], {}, PATTERN)


def reference_encode(text: str, merges) -> list[int]:
    """``llmcourse.bpe.BPETokenizer.encode`` with these merges (no special tokens)."""
    return tokenizer_of(merges).encode(text, allowed_special="none")


def show_token(token_id: int, vocab: dict[int, bytes]) -> str:
    return f"{token_id} = {vocab[token_id]!r}" if token_id in vocab else f"{token_id} (no such token)"


def show_pair(pair, vocab: dict[int, bytes]) -> str:
    a, b = pair
    if a in vocab and b in vocab:
        return f"({a}, {b}) = {vocab[a]!r} + {vocab[b]!r}"
    return f"({a}, {b})"


def merge(ids: list[int], pair, new_id: int) -> list[int]:
    return bpe.merge(ids, tuple(pair), new_id)


# Ways of cutting the text that a pair count may be based on: (name, words with their counts).
def words_gpt2(text: str) -> list[tuple[list[int], int]]:
    return [(to_bytes(w), f) for w, f in Counter(regex.findall(PATTERN, text)).items()]


def words_once(text: str) -> list[tuple[list[int], int]]:
    return [(to_bytes(w), 1) for w in dict.fromkeys(regex.findall(PATTERN, text))]


def words_whole(text: str) -> list[tuple[list[int], int]]:
    return [(to_bytes(text), 1)]


def words_str_split(text: str) -> list[tuple[list[int], int]]:
    return [(to_bytes(w), f) for w, f in Counter(text.split()).items()]


def words_code_points(text: str) -> list[tuple[list[int], int]]:
    return [([ord(c) for c in w], f) for w, f in Counter(regex.findall(PATTERN, text)).items()]


def pair_counts(words) -> dict[tuple[int, int], int]:
    counts: dict[tuple[int, int], int] = {}
    for ids, f in words:
        for pair in zip(ids, ids[1:]):
            counts[pair] = counts.get(pair, 0) + f
    return counts


def state_after(words, merges) -> list[tuple[list[int], int]]:
    for k, pair in enumerate(merges):
        words = [(merge(ids, pair, 256 + k), f) for ids, f in words]
    return words


def best(counts: dict) -> tuple[int, int] | None:
    """The exercise's choice: the highest count; ties to the smallest (left id, right id)."""
    return min(counts, key=lambda p: (-counts[p], p)) if counts else None


TRAIN_MISTAKES = (
    (words_whole, "the pair spans two pre-tokens: cut the text with regex.findall(GPT2_PATTERN, text) first "
                  "and count only pairs inside one pre-token"),
    (words_str_split, "the text seems cut with str.split(), which drops the spaces: regex.findall(GPT2_PATTERN, "
                      "text) keeps each space at the start of the word after it"),
    (words_once, "each distinct pre-token seems counted once: weight its pairs by how often it occurs in the text"),
    (words_code_points, "the ids seem to be characters (ord), not bytes: start from "
                        "list(pre_token.encode('utf-8', errors='surrogatepass'))"),
)


# ----------------------------------------------------------------- encoding mistakes

def _merge_by_rank(ids: list[int], ranks: dict) -> list[int]:
    while len(ids) >= 2:
        pair = min(zip(ids, ids[1:]), key=lambda p: ranks.get(p, float("inf")))
        if pair not in ranks:
            break
        ids = merge(ids, pair, 256 + ranks[pair])
    return ids


def _ranks(merges) -> dict:
    return {tuple(p): k for k, p in enumerate(merges)}


def mistaken_encode_whole(text: str, merges) -> list[int]:
    """No pre-tokenisation: merges applied across the whole text."""
    return _merge_by_rank(to_bytes(text), _ranks(merges))


def mistaken_encode_leftmost(text: str, merges) -> list[int]:
    """In each pre-token, the leftmost pair that has a merge is merged first, whatever its rank."""
    ranks, out = _ranks(merges), []
    for piece in regex.findall(PATTERN, text):
        ids = to_bytes(piece)
        while True:
            i = next((i for i in range(len(ids) - 1) if (ids[i], ids[i + 1]) in ranks), None)
            if i is None:
                break
            ids = ids[:i] + [256 + ranks[(ids[i], ids[i + 1])]] + ids[i + 2:]
        out += ids
    return out


def mistaken_encode_longest(text: str, merges) -> list[int]:
    """Greedy longest match from the left against the vocabulary (not BPE)."""
    vocab = vocab_of(merges)
    id_of = {b: i for i, b in sorted(vocab.items(), reverse=True)}  # the smallest id for equal bytes
    longest = max(len(b) for b in vocab.values())
    out = []
    for piece in regex.findall(PATTERN, text):
        data = bytes(to_bytes(piece))
        i = 0
        while i < len(data):
            n = next(n for n in range(min(longest, len(data) - i), 0, -1) if data[i:i + n] in id_of)
            out.append(id_of[data[i:i + n]])
            i += n
    return out


def mistaken_encode_errors(text: str, merges, errors: str) -> list[int]:
    """UTF-8 with ``errors`` instead of ``"surrogatepass"`` (a lone surrogate becomes "?" or vanishes)."""
    ranks = _ranks(merges)
    return [i for piece in regex.findall(PATTERN, text)
            for i in _merge_by_rank(list(piece.encode("utf-8", errors=errors)), ranks)]


ENCODE_MISTAKES = (
    (mistaken_encode_whole, "merges were applied across pre-token boundaries: cut the text with "
                            "regex.findall(GPT2_PATTERN, text) and encode each pre-token on its own"),
    (mistaken_encode_leftmost, "the leftmost mergeable pair was merged first: merge the pair with the lowest rank "
                               "(learned earliest) first, wherever it is"),
    (mistaken_encode_longest, "this is a greedy longest match, not BPE: apply the learned merges, lowest rank first"),
    (lambda t, m: mistaken_encode_errors(t, m, "replace"), "a lone surrogate became '?': encode with "
                                                           "text.encode('utf-8', errors='surrogatepass')"),
    (lambda t, m: mistaken_encode_errors(t, m, "ignore"), "a lone surrogate was dropped: encode with "
                                                          "text.encode('utf-8', errors='surrogatepass')"),
)


# ----------------------------------------------------------------- decoding mistakes

def mistaken_decode_per_token(ids, merges) -> str:
    """Each token decoded to str on its own: a character split across tokens becomes U+FFFD."""
    vocab = vocab_of(merges)
    return "".join(vocab[i].decode("utf-8", errors="replace") for i in ids)


def mistaken_decode_replace(ids, merges) -> str:
    vocab = vocab_of(merges)
    return b"".join(vocab[i] for i in ids).decode("utf-8", errors="replace")


def mistaken_decode_swapped(ids, merges) -> str:
    """Merged tokens spelled right token first."""
    vocab = {i: bytes([i]) for i in range(256)}
    for k, (a, b) in enumerate(merges):
        vocab[256 + k] = vocab[b] + vocab[a]
    return b"".join(vocab[i] for i in ids).decode("utf-8", errors="replace")


def mistaken_decode_latin1(ids, merges) -> str:
    vocab = vocab_of(merges)
    return b"".join(vocab[i] for i in ids).decode("latin-1")


DECODE_MISTAKES = (
    (mistaken_decode_per_token, "each token was decoded to text on its own: a character whose UTF-8 bytes are "
                                "split across two tokens breaks - join the bytes of all tokens first, then decode once"),
    (mistaken_decode_replace, "lone surrogates became U+FFFD: decode with errors='surrogatepass'"),
    (mistaken_decode_latin1, "the bytes were decoded as Latin-1: decode them as UTF-8"),
    (mistaken_decode_swapped, "a merged token (a, b) is spelled by the bytes of a followed by the bytes of b"),
)


# ----------------------------------------------------------------- padding

@functools.lru_cache(maxsize=1)
def hf_tokenizer():
    """A Hugging Face fast tokenizer of a small course tokenizer (ids 0..319, pad 319, eos 318)."""
    from llmcourse.tokenizer import to_hf_tokenizer

    return to_hf_tokenizer(bpe.train(corpus()[:20_000], 320))


def hf_pad(sequences, pad_token: str, padding_side: str) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(input_ids, attention_mask, pad id) from the Hugging Face tokenizer's ``pad``."""
    hf = hf_tokenizer()
    saved = hf.pad_token
    hf.pad_token = pad_token
    try:
        out = hf.pad({"input_ids": [list(s) for s in sequences]}, padding=True, return_tensors="pt",
                     padding_side=padding_side)
        return out["input_ids"], out["attention_mask"], hf.pad_token_id
    finally:
        hf.pad_token = saved


# ----------------------------------------------------------------- cosine similarity

def cosine_reference(query: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """(N,) cosine of each key with the query, ``F.cosine_similarity`` in float64 (eps 1e-8)."""
    return F.cosine_similarity(query.double()[None, :], keys.double(), dim=-1, eps=1e-8)


def stable_top_k(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the ``k`` largest scores, largest first; equal scores: the smaller index first."""
    return torch.sort(scores, descending=True, stable=True).indices[:k]
