"""The course BPE next to the library everyone uses: Hugging Face ``tokenizers`` and ``transformers``.

* ``train_hf_bpe`` trains ``tokenizers``' BPE (``BpeTrainer``) with the
  ``ByteLevel`` pre-tokenizer on the same text. ``compare_with_hf`` compares
  its merges and encodings with ``llmcourse.bpe.train``'s. With the settings
  below they learn the *same merges in the same order*, because the algorithm
  is defined the same way in both. Each setting matters:

  - tie-break: both take the highest count, then the smallest pair of ids in
    the trainer's id order, which lists the 256 bytes as GPT-2's table does
    (printable bytes first; ``bpe.tie_rank``). Breaking ties by byte value
    instead (space, 32, before ")", 41) gives the same first 105 merges on the
    course corpus, then ``(b" ", b"ex")`` where the trainer takes
    ``(b")", b'"')``; 3,828 of 3,837 merges are still in common at
    vocab_size 4096;
  - pre-tokenisation: ``ByteLevel(use_regex=True)`` applies GPT-2's pattern,
    as ``bpe.GPT2_PATTERN`` does; ``add_prefix_space=True`` (its default)
    would put a space before every text, changing the first word of each;
  - alphabet: the trainer only keeps characters it has seen unless given
    ``initial_alphabet=ByteLevel.alphabet()``; without it, unseen bytes have no
    id and the same vocab_size leaves room for more merges;
  - ``min_frequency``: the trainer's 0 and ``bpe.train``'s 1 both merge any
    pair that occurs at all, so they agree;
  - special tokens: the trainer puts them first (ids 0, 1, 2), ``bpe.train``
    last, so compare tokens by their bytes, not by their ids. The trainer
    also counts special-token text found in the training text as ordinary
    text (learning "<|" and "|>"); ``bpe.train`` cuts it out. The course
    corpus holds none;
  - two pairs spelling the same bytes (never seen on the course corpus) share
    one id in both, but the trainer then merges the newer pair only in the
    words where it just formed, so the merge lists could differ there.
* ``to_hf_tokenizer`` wraps a course tokenizer as a
  ``transformers.PreTrainedTokenizerFast`` giving exactly the same ids: the
  API chapters 8-13 use (padding, attention masks, save_pretrained).
* ``compare_speed``, ``chars_per_token`` and ``digit_tokenization`` are the
  chapter's measurements (returned as rows; nothing is printed).

Taught in: book/07-tokens-embeddings
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable

import regex

from llmcourse import bpe
from llmcourse.bpe import BPETokenizer


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's visible stand-in for each byte: the 188 printable bytes stand for themselves, the
    other 68 get U+0100.. in byte order (space -> "Ġ", newline -> "Ċ"), so every token is printable."""
    return {b: chr(b) if r < 188 else chr(256 + r - 188) for r, b in enumerate(bpe.GPT2_BYTE_ORDER)}


_B2U = bytes_to_unicode()
_U2B = {u: b for b, u in _B2U.items()}


def _visible(data: bytes) -> str:
    return "".join(_B2U[b] for b in data)


def _from_visible(token: str) -> bytes:
    return bytes(_U2B[c] for c in token)


def _pre_tokenizer(pattern: str):
    from tokenizers import Regex, pre_tokenizers

    if pattern == bpe.GPT2_PATTERN:  # the trainer's standard set-up
        return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    return pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(pattern), behavior="isolated"),
                                    pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])


def train_hf_bpe(text: str, vocab_size: int, *, special_tokens: Iterable[str] = bpe.DEFAULT_SPECIAL_TOKENS,
                 split_digits: bool = False, add_prefix_space: bool = False, full_alphabet: bool = True,
                 min_frequency: int = 0):
    """``tokenizers``' BPE trainer on ``text`` with the ``ByteLevel`` pre-tokenizer; returns a ``tokenizers.Tokenizer``.

    The defaults match ``bpe.train``; ``add_prefix_space=True`` and ``full_alphabet=False`` are the
    library's own defaults, there to measure what they change. ``split_digits=True`` cuts with
    ``bpe.SPLIT_DIGITS_PATTERN`` (a ``Split`` pre-tokenizer) before the byte mapping.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    if split_digits:
        tok.pre_tokenizer = _pre_tokenizer(bpe.SPLIT_DIGITS_PATTERN)
    else:
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=add_prefix_space, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=list(special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet() if full_alphabet else [], show_progress=False)
    tok.train_from_iterator([text], trainer)
    return tok


def hf_merges(tok) -> list[tuple[bytes, bytes]]:
    """The merges of a ``tokenizers`` byte-level BPE, in order, as pairs of bytes."""
    merges = json.loads(tok.to_str())["model"]["merges"]
    return [tuple(_from_visible(s) for s in (m.split(" ") if isinstance(m, str) else m)) for m in merges]


def course_merges(tok: BPETokenizer) -> list[tuple[bytes, bytes]]:
    """The merges of a course tokenizer, in order, as pairs of bytes."""
    return [(tok.vocab[a], tok.vocab[b]) for a, b, _ in tok.merges]


def compare_with_hf(text: str, vocab_size: int, *, sample: str | None = None, split_digits: bool = False,
                    **hf_options) -> dict:
    """Train both on ``text`` and compare merges, then encodings of ``sample`` (default: ``text``).

    ``hf_options`` go to ``train_hf_bpe`` (e.g. ``add_prefix_space=True``). Returns
    ``n_merges`` (ours, theirs), ``same_prefix`` (how many first merges agree), ``common``
    (merges in both lists), ``first_difference`` (index and both merges, or None), and
    ``tokens_equal`` / ``n_tokens``: whether ``sample`` encodes to the same token bytes.
    """
    ours = bpe.train(text, vocab_size, split_digits=split_digits)
    theirs = train_hf_bpe(text, vocab_size, split_digits=split_digits, **hf_options)
    a, b = course_merges(ours), hf_merges(theirs)
    same = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    sample = text if sample is None else sample
    our_tokens = [ours.token_bytes(i) for i in ours.encode(sample)]
    their_tokens = [_from_visible(t) for t in theirs.encode(sample).tokens]
    return {
        "n_merges": (len(a), len(b)), "same_prefix": same, "common": len(set(a) & set(b)),
        "first_difference": None if a == b else (same, a[same:same + 1], b[same:same + 1]),
        "tokens_equal": our_tokens == their_tokens, "n_tokens": (len(our_tokens), len(their_tokens)),
    }


def to_hf_tokenizer(tok: BPETokenizer, *, bos_token: str | None = "<|bos|>", eos_token: str | None = "<|eos|>",
                    pad_token: str | None = "<|pad|>", padding_side: str = "right", **hf_kwargs):
    """A ``transformers.PreTrainedTokenizerFast`` that gives exactly ``tok.encode``'s ids.

    ``hf_kwargs`` go to its constructor (e.g. ``model_max_length=64``).

    Built from the same merges and pattern (a ``Split`` pre-tokenizer with ``tok.pattern``, then
    ``ByteLevel`` for the byte mapping; no normaliser, no added bos/eos). Special tokens are
    matched in text like ``tok.encode(text)``; ``split_special_tokens=True`` on the HF side
    matches ``allowed_special="none"``. Cannot match: text with lone surrogates (Rust strings are
    valid UTF-8, so the HF tokenizer refuses them; ``tok.encode`` accepts them).
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    named = {"bos_token": bos_token, "eos_token": eos_token, "pad_token": pad_token}
    for name, value in named.items():
        if value is not None and value not in tok.special_tokens:
            raise ValueError(f"{name}={value!r} is not a special token of this tokenizer: {sorted(tok.special_tokens)}")
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    model = models.BPE(vocab={_visible(b): i for i, b in tok.vocab.items()},
                       merges=[(_visible(tok.vocab[a]), _visible(tok.vocab[b])) for a, b, _ in tok.merges],
                       ignore_merges=False)
    backend = Tokenizer(model)
    backend.pre_tokenizer = _pre_tokenizer(tok.pattern)
    backend.decoder = decoders.ByteLevel()
    for token, i in sorted(tok.special_tokens.items(), key=lambda kv: kv[1]):  # ids follow the vocabulary
        backend.add_special_tokens([AddedToken(token, special=True, normalized=False)])
        if backend.token_to_id(token) != i:
            raise ValueError(f"special token {token!r} got id {backend.token_to_id(token)} in tokenizers, not {i}")
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, padding_side=padding_side, clean_up_tokenization_spaces=False,
        **{k: v for k, v in named.items() if v is not None}, **hf_kwargs)


# ---------------------------------------------------------------- measurements for the chapter


def _timed(fn, *args):
    start = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - start


def compare_speed(text: str, vocab_size: int = 2048) -> list[dict]:
    """Seconds to train on ``text`` and to encode it (cold caches), for ``bpe`` and ``tokenizers``.

    Rows ``{"step", "llmcourse_s", "tokenizers_s", "ratio"}``; ``format_table`` prints them.
    """
    ours, t_ours = _timed(bpe.train, text, vocab_size)
    theirs, t_theirs = _timed(train_hf_bpe, text, vocab_size)
    fresh = BPETokenizer(ours.merges, ours.special_tokens, ours.pattern)  # empty encode cache
    backend = to_hf_tokenizer(ours).backend_tokenizer
    _, e_ours = _timed(fresh.encode, text)
    _, e_theirs = _timed(backend.encode, text)
    lines = text.splitlines()
    fresh = BPETokenizer(ours.merges, ours.special_tokens, ours.pattern)
    _, b_ours = _timed(lambda: [fresh.encode(line) for line in lines])
    _, b_theirs = _timed(backend.encode_batch, lines)  # tokenizers spreads a batch over the CPU cores
    rows = [("train", t_ours, t_theirs), (f"encode {len(text):,} characters as one text", e_ours, e_theirs),
            (f"encode {len(lines):,} lines (a batch)", b_ours, b_theirs)]
    return [{"step": s, "llmcourse_s": a, "tokenizers_s": b, "ratio": a / b} for s, a, b in rows]


def format_table(rows: list[dict]) -> str:
    """Rows of dicts as a plain-text table (floats to 3 significant digits)."""
    cols = list(rows[0])
    cells = [[f"{r[c]:.3g}" if isinstance(r[c], float) else str(r[c]) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    lines = [" | ".join(c.ljust(w) for c, w in zip(cols, widths)), "-+-".join("-" * w for w in widths)]
    return "\n".join(lines + [" | ".join(x.ljust(w) for x, w in zip(row, widths)) for row in cells])


def truncate(tok: BPETokenizer, vocab_size: int) -> BPETokenizer:
    """The tokenizer ``bpe.train`` would give with a smaller ``vocab_size``: BPE is greedy, so its
    first merges are exactly those of a shorter training run (vocabularies are nested)."""
    n_special = len(tok.special_tokens)
    if vocab_size < 256 + n_special or vocab_size > tok.vocab_size:
        raise ValueError(f"vocab_size must be in [{256 + n_special}, {tok.vocab_size}], got {vocab_size}")
    merges, ids = [], set(range(256))
    for m in tok.merges:
        if len(ids | {m[2]}) + n_special > vocab_size:
            break
        merges.append(m)
        ids.add(m[2])
    specials = sorted(tok.special_tokens, key=tok.special_tokens.get)
    return BPETokenizer(merges, {t: len(ids) + k for k, t in enumerate(specials)}, tok.pattern)


def chars_per_token(train_text: str, texts: dict[str, str], vocab_sizes: Iterable[int] = (256, 512, 1024, 2048, 4096),
                    *, split_digits: bool = False) -> list[dict]:
    """Characters per token of each of ``texts`` for tokenizers trained on ``train_text``.

    Here a vocabulary size counts bytes and merged tokens only (no special tokens), so 256 means
    raw bytes. Rows ``{"vocab_size", name: chars per token, ...}``. One training run at the
    largest size, cut down with ``truncate``.
    """
    sizes = sorted(vocab_sizes)
    full = bpe.train(train_text, sizes[-1], special_tokens=(), split_digits=split_digits)
    return [{"vocab_size": size, **{name: len(t) / max(1, len(truncate(full, size).encode(t)))
                                    for name, t in texts.items()}} for size in sizes]


DIGIT_EXAMPLES = ("7", "42", "357", "2024", "31415", "1000000", "37 + 48 = 85", "12 * 7 = 84")


def digit_tokenization(train_text: str, test_text: str, vocab_size: int = 2048,
                       examples: Iterable[str] = DIGIT_EXAMPLES) -> list[dict]:
    """How numbers are cut, without and with ``split_digits``.

    Per setting: ``multi_digit_tokens`` (vocabulary entries holding two or more digits),
    ``digits_per_token`` (digits in ``test_text`` / its tokens that hold a digit: 1.0 means one
    token per digit), and ``pieces`` (how each example is cut, token by token).
    """
    rows = []
    for split in (False, True):
        tok = bpe.train(train_text, vocab_size, split_digits=split)
        digit_tokens = [i for i in tok.encode(test_text) if regex.search(rb"\d", tok.token_bytes(i))]
        rows.append({
            "split_digits": split,
            "multi_digit_tokens": sum(len(regex.findall(rb"\d", b)) >= 2 for b in tok.vocab.values()),
            "digits_per_token": len(regex.findall(r"\d", test_text)) / max(1, len(digit_tokens)),
            "pieces": {e: [tok.decode([i]) for i in tok.encode(e)] for e in examples},
        })
    return rows
