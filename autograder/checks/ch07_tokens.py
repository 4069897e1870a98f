"""Hidden checks for the chapter 7 exercise: byte-level BPE, padding with attention masks, cosine top-k.

References, all computed live (:mod:`autograder.checks._ch07_references`):

* ``bpe_train`` - ``llmcourse.bpe.train(text, 256 + num_merges, special_tokens=(),
  tie_break="ids")``: GPT-2's pre-tokenisation, UTF-8 bytes (``errors="surrogatepass"``),
  overlapping pair counts weighted by how often each pre-token occurs, the most frequent pair
  merged first. Ties go to the smallest ``(left id, right id)``; the Hugging Face ``tokenizers``
  trainer, otherwise the same algorithm (``tests/test_tokenizer.py``), breaks them by GPT-2's byte
  order instead, which is ``tie_break="gpt2"``, the library's default. On texts made of the
  course corpus, Chinese, emoji and lone surrogates, on texts full of ties and of repeated
  letters, and on tiny known answers (the minbpe example, text that runs out of pairs, "").
* ``bpe_encode`` - ``llmcourse.bpe.BPETokenizer.encode`` with the same merges (merge ``k`` makes
  id ``256 + k``), on corpus text, hostile Unicode and hand-made merges where the rank order,
  the leftmost rule and pre-token boundaries decide the answer.
* ``bpe_decode`` - the original text, exactly, from the reference's ids (characters split
  across tokens, lone surrogates, the empty string).
* ``pad_collate`` - the Hugging Face tokenizer's ``pad`` (``llmcourse.tokenizer.to_hf_tokenizer``),
  right and left, batch sizes 1 to 8, lengths 0 to 12, the pad id also a real token of the
  sequences (pad = eos, as for GPT-2, and pad = 0).
* ``cosine_top_k`` - ``torch.nn.functional.cosine_similarity`` in float64, then a stable
  descending sort: equal scores keep the smaller index first; a zero vector has cosine 0.

When a result is wrong, the check tries the usual mistakes (another tie-break, pairs across
pre-tokens, str.split, decoding token by token, lost surrogates, right instead of left padding,
an inverted mask or one computed as ``ids != pad_id``, dot products, ties in ``torch.topk``'s
order) and names the one that reproduces it.

Inputs are drawn from :func:`autograder.secret.hidden_rng` and
:func:`~autograder.secret.hidden_torch_generator`.

Taught in: book/07-tokens-embeddings
"""

from __future__ import annotations

import numpy as np
import torch

from autograder.checks import _ch07_references as ref
from autograder.compare import CheckFailed, assert_close, describe, fail, to_array, unpack
from autograder.guard import ForbiddenCall, call_student
from autograder.secret import hidden_rng, hidden_torch_generator
from autograder.spec import Task

# Ready-made tokenizers that would do tasks 1-3 for the student.
BPE_MODULES = ("llmcourse.bpe", "llmcourse.tokenizer", "tokenizers", "tiktoken", "sentencepiece", "transformers")
TRAIN, ENCODE, DECODE, PAD, COSINE = TASKS = (
    Task("ch07_bpe_train", "bpe_train(text, num_merges)", 4,
         "the merges: a list of `(left_id, right_id)` pairs, merge `k` making id `256 + k`",
         '`llmcourse.bpe.train(..., tie_break="ids")`: the `tokenizers` BPE trainer\'s algorithm, ties to '
         "the smallest ids", modules=BPE_MODULES),
    Task("ch07_bpe_encode", "bpe_encode(text, merges)", 3, "the token ids, a list of ints",
         "`llmcourse.bpe.BPETokenizer.encode` with the same merges", modules=BPE_MODULES),
    Task("ch07_bpe_decode", "bpe_decode(ids, merges)", 2, "the text, a `str`",
         "the original text, exactly", modules=BPE_MODULES),
    Task("ch07_pad_collate", 'pad_collate(sequences, pad_id, padding_side="right")', 3,
         "`(input_ids, attention_mask)`, two `(B, T_max)` int64 tensors",
         "the Hugging Face tokenizer's `pad` (`to_hf_tokenizer`)",
         modules=("transformers", "tokenizers", "llmcourse.tokenizer"),
         callables=("torch.nn.utils.rnn.pad_sequence", "torch._C._nn.pad_sequence")),
    Task("ch07_cosine_top_k", "cosine_top_k(query, keys, k)", 2, "`(scores, indices)`, each of shape `(k,)`",
         "`torch.nn.functional.cosine_similarity` in float64, then a stable sort",
         modules=("llmcourse.vector_index", "faiss", "sklearn.metrics.pairwise", "scipy.spatial.distance"),
         callables=("torch.nn.functional.cosine_similarity", "torch.cosine_similarity", "torch.nn.CosineSimilarity")),
)
# Cosines of float32 implementations against the float64 reference (the solution and 4 rewrites:
# normalise first, Python loops with math.sqrt, NumPy float64, heapq; 20 course secrets x every
# case, D up to 64): largest |got - want| 1.4e-07 -> 2e-6 (15x). Float64 inputs must stay float64:
# largest error there 2.2e-16 -> 1e-12, while float32 arithmetic is off by 1.2e-08 or more. The
# nearest planted mistake (only the keys normalised) is off by 1.1e-02 or more. BPE ids, padded
# batches and the order of exactly equal cosines are compared exactly.
COS_TOL = dict(rtol=2e-6, atol=2e-6)
COS_TOL_64 = dict(rtol=1e-12, atol=1e-12)


def _short(text: str, n: int = 40) -> str:
    """A short, ASCII-safe description of a text for a message."""
    shown = ascii(text[:n])[1:-1] + ("..." if len(text) > n else "")
    return f"'{shown}' ({len(text)} characters)" if len(text) > n else f"'{shown}'"


# ----------------------------------------------------------------- BPE: reading the results

def _kind(value) -> str:
    """``dict`` for a dict, also when it arrives from the sandbox as a handle (``<student's <dict object>>``)."""
    if getattr(value, "__llmcourse_remote__", False):
        return repr(value).split("<")[-1].split(" object")[0]
    return type(value).__name__


def _int_pairs(result, *, what: str, inputs: dict) -> list[tuple[int, int]]:
    if result is None:
        fail(f"{what}{describe(inputs)}: your function returned None (is a `return` missing?)")
    if not isinstance(result, (list, tuple)):
        fail(f"{what}{describe(inputs)}: expected a list of (left_id, right_id) pairs, got a {_kind(result)}")
    pairs = []
    for k, item in enumerate(result):
        try:
            a, b = (int(to_array(x, what=what, inputs=inputs).reshape(())) for x in item)
        except Exception:  # noqa: BLE001 - anything but two integers is explained below
            fail(f"{what}{describe(inputs)}: item {k} is {item!r:.60}, not a (left_id, right_id) pair of ints")
        pairs.append((a, b))
    return pairs


def _int_list(result, *, what: str, inputs: dict) -> list[int]:
    arr = to_array(result, what=what, inputs=inputs)
    if arr.ndim != 1 or not (np.issubdtype(arr.dtype, np.integer) or arr.size == 0):
        fail(f"{what}{describe(inputs)}: expected a flat list of int token ids, got an array of shape "
             f"{tuple(arr.shape)} and dtype {arr.dtype}")
    return [int(x) for x in arr]


def _call(student_fn, *args, task: Task, inputs: dict):
    """call_student, with a hint when UTF-8 refused a lone surrogate."""
    try:
        return call_student(student_fn, *args, task=task, inputs=inputs)
    except ForbiddenCall:
        raise
    except CheckFailed as exc:
        if "surrogates not allowed" in str(exc) or "codec can't decode" in str(exc):
            raise CheckFailed(f"{exc} - strict UTF-8 refuses lone surrogates: use errors='surrogatepass' both to "
                              f"encode and to decode") from None
        raise


def _safe(fn, *args):
    try:
        return fn(*args)
    except Exception:  # noqa: BLE001 - a mistake that cannot be computed here explains nothing
        return None


# ----------------------------------------------------------------- task 1: training

def _train_cases():
    """(inputs, text, num_merges)."""
    label = "ch07.bpe_train"
    cases = [
        ({"text": "'aaabdaaabac' (the minbpe example)"}, "aaabdaaabac", 3),
        ({"text": "'hi hi hi hi' (2 merges are all there is)"}, "hi hi hi hi", 10),
        ({"text": "'ab c' (two pairs, each once: a tie)"}, "ab c", 1),
        ({"text": "'' (empty)"}, "", 5),
    ]
    rng = hidden_rng(0, label)
    words = " ".join("".join(rng.choice(list("abcd"), size=int(rng.integers(1, 6)))) for _ in range(300))
    cases.append(({"text": "300 random words over 'abcd' (many ties)", "seed": 0}, words, 40))
    rng = hidden_rng(1, label)
    runs = " ".join("a" * int(n) + "b" * int(m) for n, m in rng.integers(1, 7, size=(60, 2)))
    cases.append(({"text": "runs such as 'aaaabb aab' (overlapping pairs)", "seed": 1}, runs, 12))
    for seed, (n_chars, n_merges) in enumerate(((2500, 50), (4000, 60), (3000, 40)), start=2):
        text = ref.corpus_slice(hidden_rng(seed, label), n_chars)
        cases.append(({"text": f"{n_chars:,} characters of the course corpus", "seed": seed}, text, n_merges))
    rng = hidden_rng(5, label)
    cases.append(({"text": "Chinese, emoji, combining marks, lone surrogates", "seed": 5},
                  ref.hostile_text(rng, 80), 50))
    rng = hidden_rng(6, label)
    lines = "".join(f"{a} + {b} = {a + b}\n\t{'  ' * int(a % 3)}x_{b}\n\n" for a, b in rng.integers(0, 120, (40, 2)))
    cases.append(({"text": "numbers, tabs, newlines and space runs", "seed": 6}, lines, 40))
    return cases


def _mistake_behind(k: int, got_pair, text: str, want: list) -> str | None:
    """The explanation of the usual mistake whose merge k would be got_pair, or None."""
    for words_of, explanation in ref.TRAIN_MISTAKES:
        if ref.best(ref.pair_counts(ref.state_after(words_of(text), want[:k]))) == tuple(got_pair):
            return explanation
    return None


def _explain_merge(k: int, got_pair, want_pair, text: str, want: list, vocab: dict) -> str:
    """Why merge k differs: the counts behind both pairs, and the mistake that picks the student's."""
    counts = ref.pair_counts(ref.state_after(ref.words_gpt2(text), want[:k]))
    n_want, n_got = counts[want_pair], counts.get(got_pair, 0)
    head = (f"merge {k} is {ref.show_pair(got_pair, vocab)} but expected {ref.show_pair(want_pair, vocab)}, "
            f"the most frequent pair ({n_want} times)")
    if any(i >= 256 + k for i in got_pair):
        return head + (f" - merge {k} may only use ids below {256 + k}: ids 0-255 are the bytes and merge j makes "
                       f"id 256 + j")
    if n_got == n_want:
        return head + (f" - both occur {n_want} times: a tie goes to the smaller (left id, right id), here "
                       f"{min(got_pair, want_pair)} (Counter.most_common breaks ties by first appearance instead)")
    mistake = _mistake_behind(k, got_pair, text, want)
    if mistake:
        return head + " - " + mistake
    if n_got:
        return head + f" - {ref.show_pair(got_pair, vocab)} occurs only {n_got} times"
    return head + f" - {ref.show_pair(got_pair, vocab)} does not occur at this point"


def _compare_merges(got: list, want: list, text: str, num_merges: int, inputs: dict) -> None:
    if got == want:
        return
    vocab = ref.vocab_of(want)
    what = "bpe_train merges (vs llmcourse.bpe.train)"
    k = next((i for i, (g, w) in enumerate(zip(got, want)) if g != w), None)
    if k is not None:
        fail(f"{what}{describe(inputs)}: {_explain_merge(k, got[k], want[k], text, want, vocab)}")
    if not got:
        fail(f"{what}{describe(inputs)}: no merges, but expected {len(want)}; the first is "
             f"{ref.show_pair(want[0], vocab)}")
    if len(got) < len(want):
        n = len(got)
        left = ref.pair_counts(ref.state_after(ref.words_gpt2(text), got))
        mistake = next((why for words_of, why in ref.TRAIN_MISTAKES  # a mistake that runs out of pairs here
                        if not ref.pair_counts(ref.state_after(words_of(text), got))), None)
        fail(f"{what}{describe(inputs)}: {n} merges but expected {len(want)}; after merge {n - 1} the pair "
             f"{ref.show_pair(want[n], vocab)} still occurs {left[want[n]]} times" + (f" - {mistake}" if mistake else ""))
    if len(want) < num_merges:
        n = len(want)
        mistake = _mistake_behind(n, got[n], text, want)
        fail(f"{what}{describe(inputs)}: {len(got)} merges but expected {n}: after merge {n - 1} every "
             f"pre-token is a single token and no pair is left"
             + (f"; your merge {n} {ref.show_pair(got[n], vocab)} - {mistake}" if mistake else " - stop there"))
    fail(f"{what}{describe(inputs)}: {len(got)} merges but num_merges={num_merges}")


def check_bpe_train(student_fn) -> None:
    """bpe_train(text, num_merges) learns the merges of llmcourse.bpe.train(tie_break="ids")."""
    for inputs, text, num_merges in _train_cases():
        want, truncated = ref.reference_merges(text, num_merges)
        if truncated:  # the reference's next merge would reuse an id: ask for no more than it can check
            num_merges = len(want)
        inputs = {**inputs, "num_merges": num_merges}
        result = _call(student_fn, text, num_merges, task=TRAIN, inputs=inputs)
        got = _int_pairs(result, what="bpe_train", inputs=inputs)
        _compare_merges(got, want, text, num_merges, inputs)


# ----------------------------------------------------------------- task 2: encoding

CRAFTED = (  # (description, merges, text): the rules that decide between plausible encoders
    ("'abc' with merges ab, bc, a+bc: 'abc' is a token, but ab is merged first",
     [(97, 98), (98, 99), (97, 257)], "abc"),
    ("'abc' with merges bc (rank 0) then ab (rank 1)", [(98, 99), (97, 98)], "abc"),
    ("'aaa' with the merge aa: leftmost first", [(97, 97)], "aaa aaaaa"),
    ("'hi hi' with a merge of 'i' + ' ' (never inside one pre-token)", [(105, 32), (104, 105)], "hi hi"),
    ("'中文' with merges inside the 3 UTF-8 bytes of 中", [(0xE4, 0xB8), (256, 0xAD)], "中文"),
    ("'' (empty)", [(97, 98)], ""),
    ("a lone surrogate", [(0xED, 0xA0)], "x\ud800y"),
)


def _encode_cases():
    """(inputs, merges, text) for hand-made merges, then merges learned from seeded texts."""
    label = "ch07.bpe_encode"
    cases = [({"case": desc}, merges, text) for desc, merges, text in CRAFTED]
    for seed, (kind, n_merges) in enumerate((("course corpus", 100), ("course corpus", 60),
                                             ("hostile Unicode", 80))):
        rng = hidden_rng(seed, label)
        train_text = ref.corpus_slice(rng, 6000) if kind == "course corpus" else ref.hostile_text(rng, 120)
        merges, _ = ref.reference_merges(train_text, n_merges)
        base = {"merges": f"{len(merges)} learned from {kind} text", "seed": seed}
        texts = [("the training text, 600 characters", train_text[:600]),
                 ("other corpus text", ref.corpus_slice(rng, 1200)),
                 ("hostile Unicode", ref.hostile_text(rng, 30))]
        if seed == 0:
            texts += [(_short(ref.HOSTILE[i], 24), ref.HOSTILE[i]) for i in (1, 2, 4)]
        cases += [({**base, "text": desc}, merges, text) for desc, text in texts]
    return cases


def _compare_ids(got: list, want: list, text: str, merges, inputs: dict) -> None:
    if got == want:
        return
    vocab = ref.vocab_of(merges)
    what = "bpe_encode ids (vs llmcourse.bpe.BPETokenizer.encode)"
    k = next((i for i, (g, w) in enumerate(zip(got, want)) if g != w), min(len(got), len(want)))
    where = (f"token {k} is {ref.show_token(got[k], vocab)} but expected {ref.show_token(want[k], vocab)}"
             if k < min(len(got), len(want)) else f"{len(got)} tokens but expected {len(want)}")
    hint = next((f" - {why}" for wrong, why in ref.ENCODE_MISTAKES if _safe(wrong, text, merges) == got), "")
    if not hint and any(i > 255 + len(merges) for i in got):
        hint = " - ids above 255 + len(merges) do not exist: start from the UTF-8 bytes, not the characters"
    fail(f"{what}{describe(inputs)}: {len(got)} ids, first difference at {where}{hint}")


def check_bpe_encode(student_fn) -> None:
    """bpe_encode(text, merges) gives the ids of llmcourse.bpe.BPETokenizer.encode."""
    for inputs, merges, text in _encode_cases():
        want = ref.reference_encode(text, merges)
        result = _call(student_fn, text, [tuple(p) for p in merges], task=ENCODE, inputs=inputs)
        if result is None:
            fail(f"bpe_encode{describe(inputs)}: your function returned None (is a `return` missing?)")
        got = _int_list(result, what="bpe_encode", inputs=inputs)
        _compare_ids(got, want, text, merges, inputs)


# ----------------------------------------------------------------- task 3: decoding

def _decode_cases():
    """(inputs, merges, ids, text): the reference's ids of each text."""
    label = "ch07.bpe_decode"
    cases = []
    for desc, merges, text in CRAFTED:
        cases.append(({"case": desc}, merges, text))
    rng = hidden_rng(0, label)
    merges, _ = ref.reference_merges(ref.hostile_text(rng, 120), 80)
    for text in ref.HOSTILE:
        cases.append(({"text": _short(text, 24), "merges": f"{len(merges)} learned from hostile Unicode"},
                      merges, text))
    for seed in (1, 2):
        rng = hidden_rng(seed, label)
        merges, _ = ref.reference_merges(ref.corpus_slice(rng, 6000), 100)
        text = ref.corpus_slice(rng, 2000) + ref.hostile_text(rng, 20)
        cases.append(({"text": "2,000 characters of the course corpus and hostile Unicode",
                       "merges": f"{len(merges)} learned from the corpus", "seed": seed}, merges, text))
    return [(inputs, merges, ref.reference_encode(text, merges), text) for inputs, merges, text in cases]


def check_bpe_decode(student_fn) -> None:
    """bpe_decode(ids, merges) gives back the original text exactly."""
    what = "bpe_decode text"
    for inputs, merges, ids, text in _decode_cases():
        got = _call(student_fn, list(ids), [tuple(p) for p in merges], task=DECODE, inputs=inputs)
        if got is None:
            fail(f"{what}{describe(inputs)}: your function returned None (is a `return` missing?)")
        if _kind(got) in ("bytes", "bytearray"):
            fail(f"{what}{describe(inputs)}: returned bytes, expected a str - decode the joined bytes with "
                 f".decode('utf-8', errors='surrogatepass')")
        if not isinstance(got, str):
            fail(f"{what}{describe(inputs)}: expected a str, got a {_kind(got)}")
        if got == text:
            continue
        i = next((i for i, (a, b) in enumerate(zip(got, text)) if a != b), min(len(got), len(text)))
        hint = next((f" - {why}" for wrong, why in ref.DECODE_MISTAKES if _safe(wrong, ids, merges) == got), "")
        fail(f"{what}{describe(inputs)}: differs from the original text at character {i}: got "
             f"{ascii(got[max(0, i - 8):i + 8])}, expected {ascii(text[max(0, i - 8):i + 8])} "
             f"({len(got)} vs {len(text)} characters){hint}")


# ----------------------------------------------------------------- task 4: padding

def _pad_cases():
    """(inputs, sequences, pad token, padding side or None for the default)."""
    label = "ch07.pad_collate"
    hf = ref.hf_tokenizer()
    eos = hf.convert_tokens_to_ids("<|eos|>")
    byte0 = hf.convert_ids_to_tokens(0)
    shapes = (  # (lengths or None to draw them, pad token, padding side)
        ([3, 1, 0], "<|pad|>", "right"), ([3, 1, 0], "<|pad|>", "left"), ([5], "<|pad|>", "left"),
        ([0, 1], "<|pad|>", "left"), ([0, 0], "<|pad|>", "right"), ([4, 4, 4], "<|pad|>", "left"),
        (None, "<|eos|>", "left"), (None, "<|eos|>", "right"), (None, byte0, "left"), (None, byte0, None),
        (None, "<|pad|>", None),
    )
    cases = []
    for seed, (lengths, pad_token, side) in enumerate(shapes):
        rng = hidden_rng(seed, label)
        if lengths is None:
            lengths = [int(n) for n in rng.integers(0, 13, size=int(rng.integers(2, 9)))]
        seqs = [[int(i) for i in rng.integers(0, 318, size=n)] for n in lengths]
        pad_id = hf.convert_tokens_to_ids(pad_token)
        if pad_token == "<|eos|>":  # as for GPT-2: pad = eos, and every sequence ends with eos
            seqs = [s + [eos] for s in seqs]
            pad_id = f"{pad_id} (the eos id, which ends every sequence)"
        if pad_token == byte0:  # pad id 0, and 0 is also a real token in the sequences
            seqs = [[0 if j % 3 == 0 else t for j, t in enumerate(s)] for s in seqs]
            pad_id = f"{pad_id} (also a token inside the sequences)"
        inputs = {"B": len(seqs), "lengths": [len(s) for s in seqs], "pad_id": pad_id,
                  "padding_side": side or "omitted (right)", "seed": seed}
        cases.append((inputs, seqs, pad_token, side))
    return cases


def _pad_mistakes(seqs, pad_id, side, want_ids, want_mask) -> dict[str, tuple]:
    """explanation -> (input_ids, attention_mask) of the usual mistakes."""
    other = "left" if side == "right" else "right"
    flipped_ids, flipped_mask, _ = ref.hf_pad(seqs, _pad_token_of(pad_id), other)
    ids_mask = (want_ids != pad_id).long()
    zero_ids = torch.where(want_mask.bool(), want_ids, torch.zeros_like(want_ids))
    return {
        f"this is {other} padding: padding_side={side!r} puts the pad ids on the {side}": (flipped_ids, flipped_mask),
        "the mask is inverted: 1 marks a real token, 0 a pad position": (want_ids, 1 - want_mask),
        "the mask was computed as input_ids != pad_id, which also hides real tokens equal to pad_id (GPT-2 pads "
        "with its eos id): build it from the lengths": (want_ids, ids_mask),
        "the pad positions hold 0, not pad_id": (zero_ids, want_mask),
        "each row is reversed: left padding puts the pad ids first and keeps the tokens in their order":
            (ref.hf_pad([s[::-1] for s in seqs], _pad_token_of(pad_id), side)[0], want_mask),
    }


def _pad_token_of(pad_id: int) -> str:
    return ref.hf_tokenizer().convert_ids_to_tokens(pad_id)


def _int64(value, *, what: str, inputs: dict, shape: tuple) -> np.ndarray:
    arr = to_array(value, what=what, inputs=inputs)
    if arr.shape != shape:
        fail(f"{what}{describe(inputs)}: shape {tuple(arr.shape)} but expected {shape} (B, T_max) where T_max is "
             f"the longest length")
    if arr.dtype != np.int64:
        fail(f"{what}{describe(inputs)}: dtype {arr.dtype}, expected int64 (torch.long), as the Hugging Face "
             f"tokenizer returns (torch.tensor of empty lists gives float32: pass dtype=torch.long)")
    return arr


def check_pad_collate(student_fn) -> None:
    """pad_collate(sequences, pad_id, padding_side) equals the Hugging Face tokenizer's pad."""
    for inputs, seqs, pad_token, side in _pad_cases():
        want_ids, want_mask, pad_id = ref.hf_pad(seqs, pad_token, side or "right")
        args = (pad_id,) if side is None else (pad_id, side)
        result = call_student(student_fn, [list(s) for s in seqs], *args, task=PAD, inputs=inputs)
        got_ids, got_mask = unpack(result, ("input_ids", "attention_mask"), what="pad_collate", inputs=inputs)
        shape = tuple(want_ids.shape)
        got_ids = _int64(got_ids, what="input_ids", inputs=inputs, shape=shape)
        got_mask = _int64(got_mask, what="attention_mask", inputs=inputs, shape=shape)
        want = (want_ids.numpy(), want_mask.numpy())
        if np.array_equal(got_ids, want[0]) and np.array_equal(got_mask, want[1]):
            continue
        hint = next((f" - {why}" for why, (ids, mask) in
                     _pad_mistakes(seqs, pad_id, side or "right", want_ids, want_mask).items()
                     if np.array_equal(got_ids, ids.numpy()) and np.array_equal(got_mask, mask.numpy())), "")
        for name, got, exp in (("input_ids", got_ids, want[0]), ("attention_mask", got_mask, want[1])):
            bad = np.argwhere(got != exp)
            if len(bad):
                i, j = (int(x) for x in bad[0])
                fail(f"{name} (vs the Hugging Face tokenizer's pad){describe(inputs)}: {len(bad)} of {got.size} "
                     f"values differ, first at [{i}, {j}]: got {got[i, j]}, expected {exp[i, j]} "
                     f"(row {i}: got {got[i].tolist()}, expected {exp[i].tolist()}){hint}")


# ----------------------------------------------------------------- task 5: cosine top-k

def _exact_vectors(g: torch.Generator, n: int, d: int, dtype=torch.float32) -> torch.Tensor:
    """Rows of +-1 (norm sqrt(d), a power of 2 for d = 4, 16), some doubled, some zero: every
    cosine is a dyadic fraction, exact in any order of float arithmetic, so equal cosines are
    exactly equal for every correct implementation."""
    rows = torch.randint(0, 2, (n, d), generator=g).to(dtype) * 2 - 1
    scale = torch.randint(0, 4, (n, 1), generator=g)
    return rows * torch.where(scale == 0, 2.0, torch.where(scale == 1, 0.0, 1.0)).to(dtype)


def _cosine_cases():
    """(inputs, query, keys, k)."""
    label = "ch07.cosine_top_k"
    cases = []
    for seed, (n, d, k, dtype) in enumerate(((5, 3, 2, torch.float32), (50, 16, 5, torch.float32),
                                            (200, 64, 10, torch.float32), (7, 8, 7, torch.float32),
                                            (1, 4, 1, torch.float32), (30, 16, 4, torch.float64))):
        g = hidden_torch_generator(seed, label)
        keys = torch.randn(n, d, generator=g, dtype=dtype) * (1 + 3 * torch.rand(n, 1, generator=g, dtype=dtype))
        query = torch.randn(d, generator=g, dtype=dtype)
        cases.append(({"keys": f"({n}, {d}) {str(dtype)[6:]}", "k": k, "seed": seed}, query, keys, k))
    g = hidden_torch_generator(10, label)
    keys = torch.randn(20, 8, generator=g)
    keys[torch.randperm(20, generator=g)[:5]] = 0.0
    cases.append(({"keys": "(20, 8) float32, 5 of them zero vectors", "k": 20, "seed": 10},
                  torch.randn(8, generator=g), keys, 20))
    g = hidden_torch_generator(11, label)
    cases.append(({"query": "a zero vector", "keys": "(10, 8) float32", "k": 4, "seed": 11},
                  torch.zeros(8), torch.randn(10, 8, generator=g), 4))
    for seed, (n, d, k) in enumerate(((24, 16, 10), (16, 4, 16), (40, 4, 12)), start=12):
        g = hidden_torch_generator(seed, label)
        keys = _exact_vectors(g, n, d)
        keys[n // 2:] = keys[torch.randint(0, n // 2, (n - n // 2,), generator=g)]  # duplicates: exact ties
        cases.append(({"keys": f"({n}, {d}) float32 of +-1, with repeated and zero rows (exact ties)", "k": k,
                       "seed": seed}, torch.randint(0, 2, (d,), generator=g).float() * 2 - 1, keys, k))
    return cases


def _cosine_mistakes(query, keys, k, want_idx) -> list:
    """(explanation, wrong scores) for the usual mistakes, for assert_close's hints."""
    q, K = query.double(), keys.double()
    dots = K @ q
    hints = [
        ("these are dot products: divide by both norms", lambda: torch.sort(dots, descending=True).values[:k]),
        ("only the keys were normalised: divide by the query's norm too",
         lambda: torch.sort(dots / K.norm(dim=1).clamp_min(1e-8), descending=True).values[:k]),
        ("only the query was normalised: divide by each key's norm too",
         lambda: torch.sort(dots / q.norm().clamp_min(1e-8), descending=True).values[:k]),
        ("these are the k smallest cosines: sort in descending order",
         lambda: torch.sort(ref.cosine_reference(query, keys)).values[:k]),
    ]
    if query.dtype == torch.float64:
        hints.append(("the float64 inputs seem computed in float32: keep the input's dtype",
                      lambda: ref.cosine_reference(query.float(), keys.float()).float()[want_idx]))
    return hints


def check_cosine_top_k(student_fn) -> None:
    """cosine_top_k(query, keys, k) gives F.cosine_similarity's k largest scores and their indices, ties by index."""
    for inputs, query, keys, k in _cosine_cases():
        sims = ref.cosine_reference(query, keys)
        want_idx = ref.stable_top_k(sims, k)
        want_scores = sims[want_idx]
        result = call_student(student_fn, query.clone(), keys.clone(), k, task=COSINE, inputs=inputs)
        scores, indices = unpack(result, ("scores", "indices"), what="cosine_top_k", inputs=inputs)
        tol = COS_TOL_64 if query.dtype == torch.float64 else COS_TOL
        got_scores = to_array(scores, what="scores", inputs=inputs)
        if got_scores.shape == (k,) and np.isnan(got_scores.astype(float)).any():
            fail(f"scores{describe(inputs)}: NaN - a zero vector has norm 0: divide by max(norm, 1e-8), as "
                 f"F.cosine_similarity does, so its cosine is 0")
        assert_close(got_scores, want_scores, what="scores (vs F.cosine_similarity, sorted)", inputs=inputs,
                     hints=_cosine_mistakes(query, keys, k, want_idx), **tol)
        got_idx = to_array(indices, what="indices", inputs=inputs)
        if got_idx.shape != (k,) or not np.issubdtype(got_idx.dtype, np.integer):
            fail(f"indices{describe(inputs)}: expected {k} integer indices, got shape {tuple(got_idx.shape)} and "
                 f"dtype {got_idx.dtype}")
        if got_idx.min(initial=0) < 0 or got_idx.max(initial=0) >= len(keys) or len(set(got_idx.tolist())) != k:
            fail(f"indices{describe(inputs)}: {got_idx.tolist()} must be {k} different rows of keys (0..{len(keys) - 1})")
        s = sims.numpy()
        for j, (g, w) in enumerate(zip(got_idx.tolist(), want_idx.tolist())):
            if g == w:
                continue
            if s[g] == s[w]:  # an exact tie, exact for every correct implementation (see _exact_vectors)
                fail(f"indices{describe(inputs)}: position {j} is row {g} but expected row {w}: both have cosine "
                     f"{s[w]:.6g}, and equal scores keep the smaller index first (torch.topk promises no order "
                     f"for ties: sort with torch.sort(..., descending=True, stable=True)); got {got_idx.tolist()}, "
                     f"expected {want_idx.tolist()}")
            if abs(s[g] - s[w]) > tol["atol"] + tol["rtol"] * abs(s[w]):
                fail(f"indices{describe(inputs)}: position {j} is row {g}, whose cosine is {s[g]:.6g}, but expected "
                     f"row {w} with cosine {s[w]:.6g} (the scores must belong to the rows in indices)")
            # otherwise: two cosines closer than the tolerance, which float32 may order either way


__all__ = ["TASKS", "check_bpe_train", "check_bpe_encode", "check_bpe_decode", "check_pad_collate",
           "check_cosine_top_k"]
