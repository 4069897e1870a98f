"""Byte-level byte-pair encoding (BPE), from scratch: the tokenizer of GPT-2 and its descendants.

BPE began as a compression trick (Gage 1994): replace the most frequent pair of
adjacent symbols by a new symbol, and repeat. Sennrich, Haddow & Birch (2016,
"Neural Machine Translation of Rare Words with Subword Units") used it to build
a subword vocabulary; GPT-2 (Radford et al. 2019, "Language Models are
Unsupervised Multitask Learners") ran it on the UTF-8 *bytes* of the text, so
the 256 single bytes already spell every string and no "unknown" token is ever
needed. Training, here:

1. Cut the text into pre-tokens with a regular expression (``GPT2_PATTERN``),
   so merges never cross a word, number, punctuation or whitespace boundary.
2. Count each distinct pre-token once (a word-frequency table); every token id
   starts as one byte, id = byte value (0..255).
3. Repeatedly merge the most frequent adjacent pair into a new token. Ties go
   to the pair that comes first in ``tie_rank`` order (see there), which is the
   order the Hugging Face ``tokenizers`` trainer uses, so both learn the same
   merges (``tie_break="ids"`` breaks ties by plain ids instead: the rule the
   chapter's exercise asks for). After each merge only the words that held the pair are recounted,
   and a heap keeps the pairs in order, so training takes seconds.

Encoding cuts the text the same way and, inside each pre-token, applies the
learned merge with the lowest rank (the earliest learned) wherever it occurs,
left to right, until none applies. (``tokenizers`` merges one place at a time,
lowest rank then leftmost; that gives the same tokens.) Decoding concatenates
the bytes of the ids.

Strings are encoded to bytes as UTF-8 with ``errors="surrogatepass"``: a lone
surrogate (U+D800..U+DFFF, which strict UTF-8 refuses, but which a Python str
may hold, e.g. from ``json.loads('"\\\\ud800"')``) becomes its 3-byte
generalised-UTF-8 form, so ``decode(encode(s)) == s`` for every str.

Taught in: book/07-tokens-embeddings
"""

from __future__ import annotations

import heapq
import json
import os
from collections import Counter, defaultdict
from collections.abc import Iterable

import regex  # the `regex` module (a transformers dependency) knows \p{L} and \p{N}; `re` does not

# GPT-2's pre-tokenisation pattern, verbatim from openai/gpt-2 src/encoder.py (2019): common English
# contractions, then runs of letters, digits, or other symbols (each with one optional leading
# space), then whitespace (a run of spaces before a word leaves its last space to that word).
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
# The same with every digit its own pre-token (as LLaMA does, Touvron et al. 2023): numbers are
# never merged, so "357" is always 3 tokens "3" "5" "7" and digits line up for arithmetic.
SPLIT_DIGITS_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
# Control tokens, matched whole in text and never merged. No <|unk|>: 256 bytes spell any string.
DEFAULT_SPECIAL_TOKENS = ("<|bos|>", "<|eos|>", "<|pad|>")

# GPT-2's byte table lists the printable bytes first ("!".."~", "¡".."¬", "®".."ÿ"), then the
# others (control characters, space, DEL, ...); tokenizers' ByteLevel trainer orders its 256
# initial tokens the same way, and breaks count ties by that order.
_PRINTABLE = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
GPT2_BYTE_ORDER = tuple(_PRINTABLE + [b for b in range(256) if b not in _PRINTABLE])
_BYTE_RANK = {b: r for r, b in enumerate(GPT2_BYTE_ORDER)}


def to_bytes(text: str) -> bytes:
    """UTF-8 bytes of ``text``, lone surrogates included: ``to_bytes("é\\ud800") == b"\\xc3\\xa9\\xed\\xa0\\x80"``."""
    return text.encode("utf-8", errors="surrogatepass")


def pre_tokenize(text: str, pattern: str = GPT2_PATTERN) -> list[str]:
    """Cut text into the pieces BPE merges within: ``"Hi, it's 2024!"`` -> ``["Hi", ",", " it", "'s", " 2024", "!"]``."""
    return regex.findall(pattern, text)


def tie_rank(token_id: int) -> int:
    """Where a token comes in the tie-break order: bytes in GPT-2's table order (printable first), then merges.

    >>> tie_rank(ord("!")), tie_rank(ord("a")), tie_rank(ord(" ")), tie_rank(300)
    (0, 64, 220, 300)
    """
    return _BYTE_RANK[token_id] if token_id < 256 else token_id


def merge(ids: list[int], pair: tuple[int, int], new_id: int) -> list[int]:
    """Replace every occurrence of ``pair``, left to right, by ``new_id``.

    >>> merge([5, 6, 6, 6, 7], (6, 6), 99)
    [5, 99, 6, 7]
    """
    out, i = [], 0
    while i < len(ids):
        if i + 1 < len(ids) and ids[i] == pair[0] and ids[i + 1] == pair[1]:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


class BPETokenizer:
    """A trained byte-level BPE: ``merges`` in the order learned, plus special tokens.

    Ids: 0..255 are the bytes, then one id per new token (in the order learned), then the special
    tokens. ``merges`` holds ``(left_id, right_id, new_id)``; two different pairs can spell the same
    bytes ("ab"+"c" and "a"+"bc"), and then they share one id, so every id has distinct bytes.
    """

    def __init__(self, merges: Iterable[tuple[int, int, int]], special_tokens: dict[str, int] | None = None,
                 pattern: str = GPT2_PATTERN):
        self.merges = [tuple(int(x) for x in m) for m in merges]
        self.pattern = pattern
        self.vocab: dict[int, bytes] = {i: bytes([i]) for i in range(256)}  # id -> bytes
        self._ranks: dict[tuple[int, int], tuple[int, int]] = {}  # pair -> (rank, new id)
        id_of = {v: k for k, v in self.vocab.items()}
        for rank, (a, b, new) in enumerate(self.merges):
            if a not in self.vocab or b not in self.vocab:
                raise ValueError(f"merge {rank} {(a, b, new)} uses an id that no earlier merge made")
            if new != id_of.setdefault(self.vocab[a] + self.vocab[b], len(self.vocab)):
                raise ValueError(f"merge {rank} {(a, b, new)} should give id {id_of[self.vocab[a] + self.vocab[b]]}")
            self.vocab[new] = self.vocab[a] + self.vocab[b]
            self._ranks[(a, b)] = (rank, new)
        self.special_tokens = dict(special_tokens or {})
        want = range(len(self.vocab), len(self.vocab) + len(self.special_tokens))
        if sorted(self.special_tokens.values()) != list(want) or not all(self.special_tokens):
            raise ValueError(f"special tokens must be non-empty and take the ids after the vocabulary "
                             f"({want.start}..{want.stop - 1}), got {self.special_tokens}")
        self.id_to_special = {i: t for t, i in self.special_tokens.items()}
        self._special_regex = regex.compile("|".join(  # longest first, so "<|a|b|>" beats a prefix "<|a|"
            regex.escape(t) for t in sorted(self.special_tokens, key=len, reverse=True)))
        self._cache: dict[str, list[int]] = {}

    @property
    def vocab_size(self) -> int:
        """Number of ids: bytes + merged tokens + special tokens."""
        return len(self.vocab) + len(self.special_tokens)

    def _encode_piece(self, piece: str) -> list[int]:
        if piece not in self._cache:
            ids = list(to_bytes(piece))
            while len(ids) >= 2:
                pair = min(zip(ids, ids[1:]), key=lambda p: self._ranks.get(p, (float("inf"),)))
                if pair not in self._ranks:
                    break  # no learned merge applies any more
                ids = merge(ids, pair, self._ranks[pair][1])
            self._cache[piece] = ids
        return self._cache[piece]

    def encode(self, text: str, allowed_special: str | Iterable[str] = "all") -> list[int]:
        """Token ids of ``text``.

        ``allowed_special``: "all" (special-token text such as "<|eos|>" becomes its id, as in Hugging
        Face tokenizers), "none" (it is encoded as ordinary text), or the set of tokens to match.
        Matching user text as control tokens is how prompt injection reaches them: pass "none" for
        untrusted text.
        """
        if not isinstance(text, str):
            raise TypeError(f"encode expects a str, got {type(text).__name__}")
        allowed = _allowed(allowed_special, self.special_tokens)
        ids, start = [], 0
        for m in (self._special_regex.finditer(text) if allowed else ()):
            if m.group() not in allowed:
                continue
            ids += self._encode_ordinary(text[start:m.start()]) + [self.special_tokens[m.group()]]
            start = m.end()
        return ids + self._encode_ordinary(text[start:])

    def _encode_ordinary(self, text: str) -> list[int]:
        return [i for piece in pre_tokenize(text, self.pattern) for i in self._encode_piece(piece)]

    def decode(self, ids: Iterable[int], errors: str = "replace") -> str:
        """Text of ``ids``: exact for any output of ``encode``. Bytes that are not valid (generalised)
        UTF-8, e.g. half a character cut off by a model, are handled by ``errors`` ("replace": U+FFFD)."""
        data = b"".join(self.token_bytes(i) for i in ids)
        try:
            return data.decode("utf-8", errors="surrogatepass")
        except UnicodeDecodeError:
            return data.decode("utf-8", errors=errors)

    def token_bytes(self, token_id: int) -> bytes:
        """The bytes one id stands for (a special token: its UTF-8 text)."""
        if token_id in self.vocab:
            return self.vocab[token_id]
        if token_id in self.id_to_special:
            return self.id_to_special[token_id].encode("utf-8")
        raise ValueError(f"unknown token id {token_id!r}: this tokenizer has ids 0..{self.vocab_size - 1}")

    def save(self, path: str | os.PathLike) -> None:
        """Write merges, special tokens and the pattern as JSON."""
        state = {"format": "llmcourse-bpe", "version": 1, "pattern": self.pattern,
                 "merges": [list(m) for m in self.merges], "special_tokens": self.special_tokens}
        with open(path, "w", encoding="utf-8") as f:
            json.dump(state, f, ensure_ascii=False)

    @classmethod
    def load(cls, path: str | os.PathLike) -> BPETokenizer:
        """Read a tokenizer written by ``save``."""
        with open(path, encoding="utf-8") as f:
            state = json.load(f)
        if state.get("format") != "llmcourse-bpe" or state.get("version") != 1:
            raise ValueError(f"{path} is not an llmcourse BPE tokenizer file (version 1)")
        return cls(state["merges"], state["special_tokens"], state["pattern"])


def _allowed(allowed_special, special_tokens: dict[str, int]) -> set[str]:
    if allowed_special == "all":
        return set(special_tokens)
    if allowed_special == "none":
        return set()
    allowed = set(allowed_special)
    if allowed - set(special_tokens):
        raise ValueError(f"not special tokens of this tokenizer: {sorted(allowed - set(special_tokens))}")
    return allowed


def train(text: str, vocab_size: int, *, special_tokens: Iterable[str] = DEFAULT_SPECIAL_TOKENS,
          split_digits: bool = False, min_frequency: int = 1, tie_break: str = "gpt2") -> BPETokenizer:
    """Learn a byte-level BPE with ``vocab_size`` ids (256 bytes + merged tokens + special tokens).

    Special-token text inside ``text`` is cut out before counting (never learned, never merged).
    A pair is merged only if it occurs at least ``min_frequency`` times; if no pair does, training
    stops with a smaller vocabulary. ``split_digits=True`` uses ``SPLIT_DIGITS_PATTERN``.

    Tie-break: among pairs with the highest count, the pair (a, b) with the smallest
    ``(tie_rank(a), tie_rank(b))`` wins, as in the Hugging Face trainer (``tie_break="gpt2"``).
    ``tie_break="ids"``: the smallest ``(a, b)`` wins, ids compared as plain numbers (a byte's id
    is its value, a merged token's id the order it was made in), e.g. " c" (32, 99) before "ab"
    (97, 98), where GPT-2's order puts the printable "a" first.
    """
    if not isinstance(text, str):
        raise TypeError(f"train expects a str, got {type(text).__name__}")
    specials = list(special_tokens)
    if any(not isinstance(t, str) or not t for t in specials) or len(set(specials)) != len(specials):
        raise ValueError(f"special tokens must be distinct non-empty strings, got {specials}")
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 256 + len(specials):
        raise ValueError(f"vocab_size must be an int >= 256 bytes + {len(specials)} special tokens "
                         f"= {256 + len(specials)}, got {vocab_size!r}")
    if isinstance(min_frequency, bool) or not isinstance(min_frequency, int) or min_frequency < 1:
        raise ValueError(f"min_frequency must be an int >= 1, got {min_frequency!r}")
    if tie_break not in ("gpt2", "ids"):
        raise ValueError(f"tie_break must be 'gpt2' or 'ids', got {tie_break!r}")
    rank = tie_rank if tie_break == "gpt2" else int
    pattern = SPLIT_DIGITS_PATTERN if split_digits else GPT2_PATTERN

    # 1-2. Word-frequency table of pre-tokens (special tokens cut out); each word as a list of byte ids.
    chunks = regex.split("|".join(regex.escape(t) for t in specials), text) if specials else [text]
    word_counts = Counter(piece for chunk in chunks for piece in pre_tokenize(chunk, pattern))
    words = [list(to_bytes(w)) for w in word_counts]
    freqs = list(word_counts.values())

    # Pair counts (overlapping: "aaa" has the pair (a, a) twice), and which words hold each pair.
    pair_counts: dict[tuple[int, int], int] = defaultdict(int)
    where: dict[tuple[int, int], set[int]] = defaultdict(set)
    for w, (ids, f) in enumerate(zip(words, freqs)):
        for pair in zip(ids, ids[1:]):
            pair_counts[pair] += f
            where[pair].add(w)

    def entry(pair):  # heapq pops the smallest: highest count, then lowest tie ranks
        return (-pair_counts[pair], rank(pair[0]), rank(pair[1]), pair)

    heap = [entry(p) for p in pair_counts]
    heapq.heapify(heap)

    # 3. Merge the best pair until the vocabulary is full. Heap entries go stale when a count drops;
    # a stale entry is re-pushed with its current count when it reaches the top.
    vocab = {i: bytes([i]) for i in range(256)}
    id_of = {b: i for i, b in vocab.items()}
    merges = []
    while len(vocab) + len(specials) < vocab_size and heap:
        neg_count, _, _, pair = heapq.heappop(heap)
        count = pair_counts.get(pair, 0)
        if count != -neg_count:  # stale
            if count > 0:
                heapq.heappush(heap, entry(pair))
            continue
        if count < min_frequency:
            break
        new_bytes = vocab[pair[0]] + vocab[pair[1]]
        new_id = id_of.setdefault(new_bytes, len(vocab))  # same bytes as an existing token: reuse its id
        vocab[new_id] = new_bytes
        merges.append((*pair, new_id))
        delta: dict[tuple[int, int], int] = defaultdict(int)
        for w in where.pop(pair):
            old, f = words[w], freqs[w]
            new = words[w] = merge(old, pair, new_id)
            for p in zip(old, old[1:]):
                delta[p] -= f
            for p in zip(new, new[1:]):
                delta[p] += f
                where[p].add(w)
        for p, d in delta.items():
            pair_counts[p] += d
            if pair_counts[p] <= 0:
                del pair_counts[p]
            elif d > 0:  # new or grown pairs need a fresh heap entry
                heapq.heappush(heap, entry(p))
    n = len(vocab)
    return BPETokenizer(merges, {t: n + k for k, t in enumerate(specials)}, pattern)
