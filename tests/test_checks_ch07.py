"""The chapter 7 checks are fair both ways: correct answers get full marks, planted mistakes fail.

The solution functions come from the nbgrader source notebook itself (setup and answer cells,
executed as a notebook kernel would). Beside them, each task has correct implementations written
differently (a heap with incremental counts, every pre-token occurrence without a frequency table,
merging one occurrence at a time, bytes instead of ids, an incremental UTF-8 decoder, vectorised
and NumPy padding, Python loops, NumPy float64 and heapq for the cosines), which must pass too.
Each wrong implementation is a mistake a student could plausibly make; each must make its check
raise CheckFailed with a message that names what is wrong.
"""

from __future__ import annotations

import codecs
import heapq
import json
import math
from collections import Counter, defaultdict

import numpy as np
import pytest
import regex
import torch
import torch.nn.functional as F

from autograder.checks import _ch07_references as ref
from autograder.checks import ch07_tokens as checks
from autograder.compare import CheckFailed
from autograder.guard import ForbiddenCall, static_violations
from tests.notebook_kernel import assert_checks_hold, correct, kernel, planted, solution_of

ASSIGNMENT = "ch07_tokens"
# The mistake the nbgrader round trip in test_autograder_cli plants: (answer cell, wrong code).
ROUND_TRIP_MISTAKE = ("ch07_bpe_train_answer",
                      "def merge_pair(ids, pair, new_id):\n"
                      "    out, i = [], 0\n"
                      "    while i < len(ids):\n"
                      "        if ids[i:i + 2] == list(pair):\n"
                      "            out.append(new_id)\n"
                      "            i += 2\n"
                      "        else:\n"
                      "            out.append(ids[i])\n"
                      "            i += 1\n"
                      "    return out\n\n\n"
                      "def bpe_train(text, num_merges):\n"
                      "    words = Counter(regex.findall(GPT2_PATTERN, text))\n"
                      "    seqs = {w: list(w.encode('utf-8', errors='surrogatepass')) for w in words}\n"
                      "    merges = []\n"
                      "    for k in range(num_merges):\n"
                      "        counts = Counter()\n"
                      "        for w, ids in seqs.items():\n"
                      "            for pair in zip(ids, ids[1:]):\n"
                      "                counts[pair] += words[w]\n"
                      "        if not counts:\n"
                      "            break\n"
                      "        best = counts.most_common(1)[0][0]\n"  # ties by first appearance
                      "        merges.append(best)\n"
                      "        seqs = {w: merge_pair(ids, best, 256 + k) for w, ids in seqs.items()}\n"
                      "    return merges\n")

pytestmark = pytest.mark.ch07

PATTERN = ref.PATTERN


def check_of(task):
    return getattr(checks, task.check)


def _bytes(text: str) -> list[int]:
    return list(text.encode("utf-8", errors="surrogatepass"))


def _merge(ids, pair, new_id):
    out, i = [], 0
    while i < len(ids):
        if i + 1 < len(ids) and (ids[i], ids[i + 1]) == tuple(pair):
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


# ----------------------------------------------------------------- the notebook itself

@pytest.mark.parametrize("task", checks.TASKS, ids=lambda t: t.grade_id)
def test_solution_passes_check(task):
    check_of(task)(solution_of(ASSIGNMENT)[task.name])


def test_check_cases_cover_the_brief():
    train = checks._train_cases()
    assert any(text == "" for _, text, _ in train) and any(n > 2 and text == "hi hi hi hi" for _, text, n in train)
    hostile = "".join(text for _, text, _ in train)
    for needle in ("\ud800", "\u200d", "\u0301", "\t", "\n", "中"):
        assert needle in hostile, f"the training texts lack {needle!r}"
    decode_texts = [text for *_, text in checks._decode_cases()]
    assert "" in decode_texts and all(s in decode_texts for s in ref.HOSTILE)
    pads = checks._pad_cases()
    lengths = [inputs["lengths"] for inputs, *_ in pads]
    assert any(0 in ls for ls in lengths) and any(1 in ls for ls in lengths) and any(len(ls) == 1 for ls in lengths)
    assert max(len(ls) for ls in lengths) <= 8 and any(len(ls) >= 6 for ls in lengths)
    assert {side for *_, side in pads} == {"left", "right", None}
    cos = checks._cosine_cases()
    assert any(q.dtype == torch.float64 for _, q, _, _ in cos) and any(not q.any() for _, q, _, _ in cos)
    assert any((K == 0).all(dim=1).any() for _, _, K, _ in cos) and any(k == len(K) for _, _, K, k in cos)


def test_reference_merges_never_truncated_on_the_cases():
    """The exercise numbers merges 256 + k; the library would reuse an id for equal bytes (never here)."""
    for inputs, text, n in checks._train_cases():
        assert not ref.reference_merges(text, n)[1], inputs


def _surrogate_pair(text: str) -> bool:
    return any("\ud800" <= a <= "\udbff" and "\udc00" <= b <= "\udfff" for a, b in zip(text, text[1:]))


def test_texts_hold_lone_surrogates_and_a_split_surrogate_pair(monkeypatch):
    """Two code points \\ud83d \\ude00 are not the emoji they spell in UTF-16; the wire keeps them apart."""
    from autograder import wire

    pair = "x\ud83d\ude00y"
    assert wire.decode(json.loads(json.dumps(wire.encode(pair)))) == pair
    for secret in (None, *SECRETS):
        if secret:
            monkeypatch.setenv("AUTOGRADER_SECRET", secret)
        texts = [t for _, t, _ in checks._train_cases()] + [t for *_, t in checks._encode_cases()]
        texts += [t for *_, t in checks._decode_cases()]
        assert any("\ud800" in t for t in texts) and any(_surrogate_pair(t) for t in texts)


def test_reference_decodes_its_own_ids():
    for inputs, merges, ids, text in checks._decode_cases():
        assert ref.tokenizer_of(merges).decode(ids) == text, inputs


# ----------------------------------------------------------------- correct variants: bpe_train

def bpe_train_heap_incremental(text, num_merges):
    """Counts kept up to date after each merge (only the words that held the pair), a lazy heap."""
    counts = Counter(regex.findall(PATTERN, text))
    words = [_bytes(w) for w in counts]
    freq = list(counts.values())
    pairs, where = defaultdict(int), defaultdict(set)
    for w, ids in enumerate(words):
        for p in zip(ids, ids[1:]):
            pairs[p] += freq[w]
            where[p].add(w)
    heap = [(-c, p) for p, c in pairs.items()]
    heapq.heapify(heap)
    merges = []
    while len(merges) < num_merges and heap:
        neg, p = heapq.heappop(heap)
        if pairs.get(p, 0) != -neg:
            if pairs.get(p, 0) > 0:
                heapq.heappush(heap, (-pairs[p], p))
            continue
        new_id = 256 + len(merges)
        merges.append(p)
        for w in where.pop(p):
            old = words[w]
            new = words[w] = _merge(old, p, new_id)
            for q in zip(old, old[1:]):
                pairs[q] -= freq[w]
            for q in zip(new, new[1:]):
                pairs[q] += freq[w]
                where[q].add(w)
                heapq.heappush(heap, (-pairs[q], q))
        for q in [q for q, c in pairs.items() if c <= 0]:
            del pairs[q]
    return merges


def bpe_train_every_occurrence(text, num_merges):
    """No frequency table: every occurrence of every pre-token is its own list; Counter.update and a sort."""
    seqs = [_bytes(piece) for piece in regex.findall(PATTERN, text)]
    merges = []
    for k in range(num_merges):
        counts = Counter()
        for ids in seqs:
            counts.update(zip(ids, ids[1:]))
        if not counts:
            break
        pair = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[0][0]
        merges.append(pair)
        seqs = [_merge(ids, pair, 256 + k) for ids in seqs]
    return merges


def bpe_train_tuple_words(text, num_merges):
    """Words as tuple keys of a dict (equal words merge their counts); max with a (count, -a, -b) key."""
    words = {}
    for piece in regex.findall(PATTERN, text):
        key = tuple(piece.encode("utf-8", "surrogatepass"))
        words[key] = words.get(key, 0) + 1
    merges = []
    while len(merges) < num_merges:
        stats = defaultdict(int)
        for word, f in words.items():
            for i in range(len(word) - 1):
                stats[word[i], word[i + 1]] += f
        if not stats:
            break
        a, b = max(stats, key=lambda p: (stats[p], -p[0], -p[1]))
        new_id = 256 + len(merges)
        merges.append((a, b))
        merged = {}
        for word, f in words.items():
            key = tuple(_merge(list(word), (a, b), new_id))
            merged[key] = merged.get(key, 0) + f
        words = merged
    return merges


# ----------------------------------------------------------------- correct variants: bpe_encode

def bpe_encode_merges_in_order(text, merges):
    """Each merge in the order learned, wherever it occurs (slow, the same result); a cache per pre-token."""
    cache, out = {}, []
    for piece in regex.findall(PATTERN, text):
        if piece not in cache:
            ids = _bytes(piece)
            for k, pair in enumerate(merges):
                ids = _merge(ids, pair, 256 + k)
            cache[piece] = ids
        out += cache[piece]
    return out


def bpe_encode_one_at_a_time(text, merges):
    """The tokenizers way: merge one occurrence at a time, the lowest rank, then the leftmost."""
    rank = {tuple(p): k for k, p in enumerate(merges)}
    out = []
    for piece in regex.findall(PATTERN, text):
        ids = _bytes(piece)
        while True:
            found = [(rank[(a, b)], i) for i, (a, b) in enumerate(zip(ids, ids[1:])) if (a, b) in rank]
            if not found:
                break
            r, i = min(found)
            ids[i:i + 2] = [256 + r]
        out.extend(ids)
    return np.array(out, dtype=np.int64)  # an array of ints is a fine answer too


def bpe_encode_as_bytes(text, merges):
    """Tokens as bytes objects, ranks keyed on pairs of bytes; ids looked up at the end."""
    vocab = [bytes([i]) for i in range(256)]
    for a, b in merges:
        vocab.append(vocab[a] + vocab[b])
    rank = {(vocab[a], vocab[b]): k for k, (a, b) in enumerate(merges)}
    id_of = {tok: i for i, tok in enumerate(vocab)}
    ids = []
    for piece in regex.findall(PATTERN, text):
        parts = [bytes([c]) for c in piece.encode("utf-8", errors="surrogatepass")]
        while len(parts) > 1:
            best = min(range(len(parts) - 1), key=lambda i: rank.get((parts[i], parts[i + 1]), math.inf))
            pair = (parts[best], parts[best + 1])
            if pair not in rank:
                break
            i, merged = 0, []
            while i < len(parts):
                if i + 1 < len(parts) and (parts[i], parts[i + 1]) == pair:
                    merged.append(parts[i] + parts[i + 1])
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = merged
        ids += [id_of[p] for p in parts]
    return ids


# ----------------------------------------------------------------- correct variants: bpe_decode

def bpe_decode_recursive(ids, merges):
    def expand(i):
        if i < 256:
            return [i]
        a, b = merges[i - 256]
        return expand(a) + expand(b)

    return bytes(sum((expand(i) for i in ids), [])).decode("utf-8", "surrogatepass")


def bpe_decode_bytearray(ids, merges):
    table = [bytes([i]) for i in range(256)]
    for a, b in merges:
        table.append(table[a] + table[b])
    data = bytearray()
    for i in ids:
        data.extend(table[i])
    return bytes(data).decode(encoding="utf-8", errors="surrogatepass")


def bpe_decode_incremental(ids, merges):
    """Token by token through an incremental decoder, which keeps a half character until the rest comes."""
    table = {i: bytes([i]) for i in range(256)}
    for k, (a, b) in enumerate(merges):
        table[256 + k] = table[a] + table[b]
    decoder = codecs.getincrementaldecoder("utf-8")(errors="surrogatepass")
    return "".join(decoder.decode(table[i]) for i in ids) + decoder.decode(b"", final=True)


# ----------------------------------------------------------------- correct variants: pad_collate

def pad_collate_lists(sequences, pad_id, padding_side="right"):
    t = max(map(len, sequences)) if sequences else 0
    rows, masks = [], []
    for s in sequences:
        pad = [pad_id] * (t - len(s))
        rows.append(list(s) + pad if padding_side == "right" else pad + list(s))
        ones, zeros = [1] * len(s), [0] * (t - len(s))
        masks.append(ones + zeros if padding_side == "right" else zeros + ones)
    return torch.tensor(rows, dtype=torch.long).reshape(len(sequences), t), \
        torch.tensor(masks, dtype=torch.int64).reshape(len(sequences), t)


def pad_collate_vectorised(sequences, pad_id, padding_side="right"):
    lengths = torch.tensor([len(s) for s in sequences], dtype=torch.long)
    t = int(lengths.max()) if len(sequences) else 0
    positions = torch.arange(t).expand(len(sequences), t)
    if padding_side == "left":
        mask = positions >= (t - lengths)[:, None]
    else:
        mask = positions < lengths[:, None]
    ids = torch.full((len(sequences), t), pad_id, dtype=torch.long)
    ids[mask] = torch.tensor([i for s in sequences for i in s], dtype=torch.long)  # row-major order
    return ids, mask.long()


def pad_collate_f_pad(sequences, pad_id, padding_side="right"):
    t = max((len(s) for s in sequences), default=0)
    ids, masks = [], []
    for s in sequences:
        x = torch.as_tensor(s, dtype=torch.int64)
        extra = (0, t - len(s)) if padding_side == "right" else (t - len(s), 0)
        ids.append(F.pad(x, extra, value=pad_id))
        masks.append(F.pad(torch.ones(len(s), dtype=torch.int64), extra, value=0))
    return torch.stack(ids), torch.stack(masks)


def pad_collate_numpy(sequences, pad_id, padding_side="right"):
    t = max([0] + [len(s) for s in sequences])
    ids = np.full((len(sequences), t), pad_id, dtype=np.int64)
    mask = np.zeros((len(sequences), t), dtype=np.int64)
    for row, s in enumerate(sequences):
        start = 0 if padding_side == "right" else t - len(s)
        ids[row, start:start + len(s)] = s
        mask[row, start:start + len(s)] = 1
    return torch.from_numpy(ids), torch.from_numpy(mask)


# ----------------------------------------------------------------- correct variants: cosine_top_k

def cosine_normalise_first(query, keys, k):
    q = query / query.norm().clamp(min=1e-8)
    K = keys / torch.linalg.vector_norm(keys, dim=-1, keepdim=True).clamp(min=1e-8)
    sims = K @ q
    idx = torch.argsort(sims, descending=True, stable=True)[:k]
    return sims[idx], idx


def cosine_python_loops(query, keys, k):
    q = query.tolist()
    nq = max(math.sqrt(sum(x * x for x in q)), 1e-8)
    sims = []
    for row in keys.tolist():
        nk = max(math.sqrt(sum(x * x for x in row)), 1e-8)
        sims.append(sum(a * b for a, b in zip(q, row)) / (nq * nk))
    order = sorted(range(len(sims)), key=lambda i: (-sims[i], i))[:k]
    return torch.tensor([sims[i] for i in order], dtype=query.dtype), torch.tensor(order)


def cosine_numpy_float64(query, keys, k):
    q, K = query.numpy().astype(np.float64), keys.numpy().astype(np.float64)
    sims = K @ q / (np.maximum(np.linalg.norm(K, axis=1), 1e-8) * max(np.linalg.norm(q), 1e-8))
    order = np.argsort(-sims, kind="stable")[:k]
    return torch.from_numpy(sims[order]).to(query.dtype), torch.from_numpy(order)


def cosine_heapq(query, keys, k):
    dots = keys @ query
    norms = torch.sqrt((keys * keys).sum(1)).clamp_min(1e-8) * torch.sqrt((query * query).sum()).clamp_min(1e-8)
    sims = (dots / norms).tolist()
    top = heapq.nlargest(k, range(len(sims)), key=lambda i: (sims[i], -i))
    return torch.tensor([sims[i] for i in top], dtype=query.dtype), torch.tensor(top, dtype=torch.long)


CORRECT = {
    "check_bpe_train": (bpe_train_heap_incremental, bpe_train_every_occurrence, bpe_train_tuple_words),
    "check_bpe_encode": (bpe_encode_merges_in_order, bpe_encode_one_at_a_time, bpe_encode_as_bytes),
    "check_bpe_decode": (bpe_decode_recursive, bpe_decode_bytearray, bpe_decode_incremental),
    "check_pad_collate": (pad_collate_lists, pad_collate_vectorised, pad_collate_f_pad, pad_collate_numpy),
    "check_cosine_top_k": (cosine_normalise_first, cosine_python_loops, cosine_numpy_float64, cosine_heapq),
}


@pytest.mark.parametrize("fn", correct(*CORRECT["check_bpe_train"]))
def test_check_bpe_train_gives_full_marks_to_correct_variants(fn):
    checks.check_bpe_train(fn)


@pytest.mark.parametrize("fn", correct(*CORRECT["check_bpe_encode"]))
def test_check_bpe_encode_gives_full_marks_to_correct_variants(fn):
    checks.check_bpe_encode(fn)


@pytest.mark.parametrize("fn", correct(*CORRECT["check_bpe_decode"]))
def test_check_bpe_decode_gives_full_marks_to_correct_variants(fn):
    checks.check_bpe_decode(fn)


@pytest.mark.parametrize("fn", correct(*CORRECT["check_pad_collate"]))
def test_check_pad_collate_gives_full_marks_to_correct_variants(fn):
    checks.check_pad_collate(fn)


@pytest.mark.parametrize("fn", correct(*CORRECT["check_cosine_top_k"]))
def test_check_cosine_top_k_gives_full_marks_to_correct_variants(fn):
    checks.check_cosine_top_k(fn)


# ----------------------------------------------------------------- planted mistakes: bpe_train

def _train(text, num_merges, *, words="gpt2", choose="ids", first_id=256, units="bytes", errors="surrogatepass"):
    """A recount trainer with switches for the usual mistakes."""
    pieces = {"gpt2": lambda: regex.findall(PATTERN, text), "whole": lambda: [text], "split": text.split,
              "once": lambda: list(dict.fromkeys(regex.findall(PATTERN, text)))}[words]()
    table = Counter(pieces)
    if units == "bytes":
        seqs = [list(p.encode("utf-8", errors=errors)) for p in table]
    else:  # code points
        seqs = [[ord(c) for c in p] for p in table]
    freqs = list(table.values())
    merges = []
    for k in range(num_merges):
        counts = Counter()
        for ids, f in zip(seqs, freqs):
            for pair in zip(ids, ids[1:]):
                counts[pair] += f
        if not counts:
            break
        if choose == "ids":
            pair = min(counts, key=lambda p: (-counts[p], p))
        elif choose == "most_common":
            pair = counts.most_common(1)[0][0]
        else:  # the largest ids
            pair = max(counts, key=lambda p: (counts[p], p))
        merges.append(pair)
        seqs = [_merge(ids, pair, first_id + k) for ids in seqs]
    return merges


def train_most_common(text, num_merges):
    return _train(text, num_merges, choose="most_common")


def train_largest_pair_wins_ties(text, num_merges):
    return _train(text, num_merges, choose="largest")


def train_across_pretokens(text, num_merges):
    return _train(text, num_merges, words="whole")


def train_str_split(text, num_merges):
    return _train(text, num_merges, words="split")


def train_distinct_words_once(text, num_merges):
    return _train(text, num_merges, words="once")


def train_ids_from_257(text, num_merges):
    return _train(text, num_merges, first_id=257)


def train_one_merge_short(text, num_merges):
    return _train(text, num_merges - 1)


def train_code_points(text, num_merges):
    return _train(text, num_merges, units="chars")


def train_strict_utf8(text, num_merges):
    return _train(text, num_merges, errors="strict")


def train_never_stops(text, num_merges):
    merges = _train(text, num_merges)
    return merges + [(0, 0)] * (num_merges - len(merges))  # pads with made-up merges


def train_returns_dict(text, num_merges):
    return {256 + k: p for k, p in enumerate(_train(text, num_merges))}


TRAIN_MISTAKES = planted(
    (train_most_common, r"bpe_train merges \(vs llmcourse\.bpe\.train\) for text='aaabdaaabac' \(the minbpe "
                        r"example\), num_merges=3: merge 1 is \(256, 97\) = b'aa' \+ b'a' but expected \(97, 98\) = "
                        r"b'a' \+ b'b'.*both occur 2 times: a tie goes to the smaller \(left id, right id\), here "
                        r"\(97, 98\)"),
    (train_largest_pair_wins_ties, r"text='aaabdaaabac'.*merge 1 is \(256, 97\).*a tie goes to the smaller"),
    (train_across_pretokens, r"'hi hi hi hi'.*num_merges=10: 5 merges but expected 2: .*no pair is left; your merge "
                             r"2 \(257, 257\) = b' hi' \+ b' hi' - the pair spans two pre-tokens"),
    (train_str_split, r"'hi hi hi hi'.*: 1 merges but expected 2; after merge 0 the pair \(32, 256\) = b' ' \+ "
                      r"b'hi' still occurs 3 times - the text seems cut with str\.split\(\)"),
    (train_distinct_words_once, r"merge \d+ is .* - each distinct pre-token seems counted once"),
    (train_ids_from_257, r"'aaabdaaabac'.*merge 2 is \(257, 258\).*may only use ids below 258"),
    (train_one_merge_short, r"'aaabdaaabac'.*num_merges=3: 2 merges but expected 3; after merge 1 the pair "
                            r"\(256, 257\) = b'aa' \+ b'ab' still occurs 2 times"),
    (train_code_points, r"text=Chinese, emoji, .*merge 0 is \(32, 97\) = b' ' \+ b'a' but expected \(240, 159\) = "
                        r"b'\\xf0' \+ b'\\x9f'.* - the ids seem to be characters \(ord\), not bytes"),
    (train_strict_utf8, r"raised UnicodeEncodeError: .*surrogates not allowed.*Chinese, emoji"),
    (train_never_stops, r"'hi hi hi hi'.*num_merges=10: 10 merges but expected 2: after merge 1 every pre-token is "
                        r"a single token and no pair is left - stop there"),
    (train_returns_dict, r"text='aaabdaaabac'.*expected a list of \(left_id, right_id\) pairs, got a dict"),
)


@pytest.mark.parametrize("wrong, match", TRAIN_MISTAKES)
def test_check_bpe_train_rejects(wrong, match):
    with pytest.raises(CheckFailed, match=match):
        checks.check_bpe_train(wrong)


# ----------------------------------------------------------------- planted mistakes: bpe_encode

def encode_whole_text(text, merges):
    return ref.mistaken_encode_whole(text, merges)


def encode_leftmost_pair_first(text, merges):
    return ref.mistaken_encode_leftmost(text, merges)


def encode_greedy_longest_match(text, merges):
    return ref.mistaken_encode_longest(text, merges)


def encode_code_points(text, merges):
    out = []
    for piece in regex.findall(PATTERN, text):
        ids = [ord(c) for c in piece]
        for k, pair in enumerate(merges):
            ids = _merge(ids, pair, 256 + k)
        out += ids
    return out


def encode_strict_utf8(text, merges):
    return bpe_encode_merges_in_order(text.encode("utf-8").decode("utf-8"), merges)


def encode_surrogates_replaced(text, merges):
    return ref.mistaken_encode_errors(text, merges, "replace")


def encode_by_frequency_not_rank(text, merges):
    """Merges in reverse order (the last learned first)."""
    out = []
    for piece in regex.findall(PATTERN, text):
        ids = _bytes(piece)
        for k in reversed(range(len(merges))):
            ids = _merge(ids, merges[k], 256 + k)
        out += ids
    return out


ENCODE_MISTAKES = planted(
    (encode_whole_text, r"bpe_encode ids \(vs llmcourse\.bpe\.BPETokenizer\.encode\) for case='hi hi' with a merge "
                        r"of 'i' \+ ' '.*token 0 is 104 = b'h' but expected 257 = b'hi'.*across pre-token boundaries"),
    (encode_leftmost_pair_first, r"case='abc' with merges bc \(rank 0\) then ab \(rank 1\): 2 ids, first difference at "
                                 r"token 0 is 257 = b'ab' but expected 97 = b'a' - the leftmost mergeable pair"),
    (encode_greedy_longest_match, r"case='abc' with merges ab, bc, a\+bc.*: 1 ids, first difference at token 0 is "
                                  r"258 = b'abc' but expected 256 = b'ab' - this is a greedy longest match, not BPE"),
    (encode_code_points, r"case='中文' with merges inside the 3 UTF-8 bytes.*start from the UTF-8 bytes"),
    (encode_strict_utf8, r"raised UnicodeEncodeError.*surrogates not allowed.*case=a lone surrogate.*"
                         r"errors='surrogatepass'"),
    (encode_surrogates_replaced, r"case=a lone surrogate.*a lone surrogate became '\?'"),
    (encode_by_frequency_not_rank, r"case='abc' with merges ab, bc, a\+bc.*: 2 ids, first difference at token 0 is "
                                   r"97 = b'a' but expected 256 = b'ab'"),
)


@pytest.mark.parametrize("wrong, match", ENCODE_MISTAKES)
def test_check_bpe_encode_rejects(wrong, match):
    with pytest.raises(CheckFailed, match=match):
        checks.check_bpe_encode(wrong)


# ----------------------------------------------------------------- planted mistakes: bpe_decode

def decode_token_by_token(ids, merges):
    return ref.mistaken_decode_per_token(ids, merges)


def decode_strict(ids, merges):
    return bpe_decode_bytearray(ids, merges).encode("utf-8", "surrogatepass").decode("utf-8")


def decode_latin1(ids, merges):
    return ref.mistaken_decode_latin1(ids, merges)


def decode_pair_reversed(ids, merges):
    table = {i: bytes([i]) for i in range(256)}
    for k, (a, b) in enumerate(merges):
        table[256 + k] = table[b] + table[a]
    return b"".join(table[i] for i in ids).decode("utf-8", "surrogatepass")


def decode_returns_bytes(ids, merges):
    return bpe_decode_bytearray(ids, merges).encode("utf-8", "surrogatepass")


def decode_ignores_merges(ids, merges):
    return bytes(i for i in ids if i < 256).decode("utf-8", "surrogatepass")


DECODE_MISTAKES = planted(
    (decode_token_by_token, r"bpe_decode text for case='中文' with merges inside the 3 UTF-8 bytes of 中: differs from "
                            r"the original text at character 1.*each token was decoded to text on its own"),
    (decode_strict, r"raised UnicodeDecodeError.*case=a lone surrogate.*errors='surrogatepass'"),
    (decode_latin1, r"decoded as Latin-1"),
    (decode_pair_reversed, r"case='abc' with merges ab, bc, a\+bc.*: differs from the original text at character 0: "
                           r"got 'bac', expected 'abc' \(3 vs 3 characters\) - a merged token \(a, b\) is spelled"),
    (decode_returns_bytes, r"returned bytes, expected a str"),
    (decode_ignores_merges, r"case='abc'.*differs from the original text at character 0: got 'c', expected 'abc'"),
)


@pytest.mark.parametrize("wrong, match", DECODE_MISTAKES)
def test_check_bpe_decode_rejects(wrong, match):
    with pytest.raises(CheckFailed, match=match):
        checks.check_bpe_decode(wrong)


# ----------------------------------------------------------------- planted mistakes: pad_collate

def _pad(sequences, pad_id, side="right", *, mask="lengths", fill=None, flip=False, dtype=torch.long):
    t = max((len(s) for s in sequences), default=0)
    rows = []
    for s in sequences:
        pad = [pad_id if fill is None else fill] * (t - len(s))
        rows.append(list(s) + pad if side == "right" or flip else pad + list(s))
    ids = torch.tensor(rows, dtype=dtype).reshape(len(sequences), t)
    if flip:  # right padding turned into left padding by flipping each row: the tokens come out reversed
        ids = ids.flip(1)
    lengths = torch.tensor([len(s) for s in sequences])
    pos = torch.arange(t)[None, :]
    real = pos < lengths[:, None] if side == "right" else pos >= t - lengths[:, None]
    if mask == "ids":
        real = ids != pad_id
    if mask == "inverted":
        real = ~real
    return ids, real.long() if mask != "bool" else real


def pad_always_right(sequences, pad_id, padding_side="right"):
    return _pad(sequences, pad_id, "right")


def pad_mask_inverted(sequences, pad_id, padding_side="right"):
    return _pad(sequences, pad_id, padding_side, mask="inverted")


def pad_mask_from_ids(sequences, pad_id, padding_side="right"):
    return _pad(sequences, pad_id, padding_side, mask="ids")


def pad_with_zeros(sequences, pad_id, padding_side="right"):
    return _pad(sequences, pad_id, padding_side, fill=0)


def pad_left_by_flipping(sequences, pad_id, padding_side="right"):
    return _pad(sequences, pad_id, padding_side, flip=padding_side == "left")


def pad_bool_mask(sequences, pad_id, padding_side="right"):
    return _pad(sequences, pad_id, padding_side, mask="bool")


def pad_float_when_empty(sequences, pad_id, padding_side="right"):
    ids, mask = _pad(sequences, pad_id, padding_side)
    return (torch.tensor(ids.tolist()), mask) if ids.numel() == 0 else (ids, mask)


def pad_default_left(sequences, pad_id, padding_side="left"):
    return _pad(sequences, pad_id, padding_side)


def pad_returns_dict(sequences, pad_id, padding_side="right"):
    ids, mask = _pad(sequences, pad_id, padding_side)
    return {"input_ids": ids, "attention_mask": mask}


PAD_MISTAKES = planted(
    (pad_always_right, r"input_ids \(vs the Hugging Face tokenizer's pad\) for B=3, lengths=\[3, 1, 0\], pad_id=319, "
                       r"padding_side=left, seed=1: \d of 9 values differ, first at \[1, 0\]: got \d+, expected 319.*"
                       r"this is right padding: padding_side='left' puts the pad ids on the left"),
    (pad_mask_inverted, r"attention_mask .*the mask is inverted"),
    (pad_mask_from_ids, r"attention_mask .*pad_id=318 \(the eos id, which ends every sequence\).*computed as "
                        r"input_ids != pad_id"),
    (pad_with_zeros, r"input_ids .*got 0, expected 319.*the pad positions hold 0, not pad_id"),
    (pad_left_by_flipping, r"input_ids .*padding_side=left.*values differ.* - each row is reversed"),
    (pad_bool_mask, r"attention_mask for .*dtype bool, expected int64"),
    (pad_float_when_empty, r"input_ids for B=2, lengths=\[0, 0\].*dtype float32, expected int64 .*dtype=torch\.long"),
    (pad_default_left, r"padding_side=omitted \(right\).*this is left padding"),
    (pad_returns_dict, r"pad_collate for B=3.*expected a tuple \(input_ids, attention_mask\), got a dict"),
)


@pytest.mark.parametrize("wrong, match", PAD_MISTAKES)
def test_check_pad_collate_rejects(wrong, match):
    with pytest.raises(CheckFailed, match=match):
        checks.check_pad_collate(wrong)


# ----------------------------------------------------------------- planted mistakes: cosine_top_k

def _cos(query, keys, k, *, norm_q=True, norm_k=True, eps=1e-8, descending=True, ties="smaller", dtype=None):
    q, K = (query, keys) if dtype is None else (query.to(dtype), keys.to(dtype))
    sims = K @ q
    if norm_k:
        sims = sims / (K.norm(dim=1).clamp_min(eps) if eps else K.norm(dim=1))
    if norm_q:
        sims = sims / (q.norm().clamp_min(eps) if eps else q.norm())
    if ties == "topk":
        vals, idx = torch.topk(sims, k, largest=descending)
        return vals.to(query.dtype), idx
    key = (lambda i: (-sims[i].item(), i)) if ties == "smaller" else (lambda i: (-sims[i].item(), -i))
    order = sorted(range(len(sims)), key=key)
    order = order[:k] if descending else order[::-1][:k]
    idx = torch.tensor(order, dtype=torch.long)
    return sims[idx].to(query.dtype), idx


def cosine_dot_product(query, keys, k):
    return _cos(query, keys, k, norm_q=False, norm_k=False)


def cosine_keys_normalised_only(query, keys, k):
    return _cos(query, keys, k, norm_q=False)


def cosine_ascending(query, keys, k):
    return _cos(query, keys, k, descending=False)


def cosine_no_eps(query, keys, k):
    return _cos(query, keys, k, eps=0)


def cosine_float32(query, keys, k):
    return _cos(query, keys, k, dtype=torch.float32)


def cosine_topk_ties(query, keys, k):
    return _cos(query, keys, k, ties="topk")


def cosine_larger_index_first(query, keys, k):
    return _cos(query, keys, k, ties="larger")


def cosine_indices_only_rows_order(query, keys, k):
    scores, idx = _cos(query, keys, k)
    return scores, idx.sort().values  # indices sorted by row number instead of by score


def cosine_returns_all(query, keys, k):
    scores, idx = _cos(query, keys, len(keys))
    return scores, idx


COSINE_MISTAKES = planted(
    (cosine_dot_product, r"scores \(vs F\.cosine_similarity, sorted\) for keys=\(5, 3\) float32, k=2, seed=0: "
                         r".*these are dot products"),
    (cosine_keys_normalised_only, r"only the keys were normalised"),
    (cosine_ascending, r"the k smallest cosines"),
    (cosine_no_eps, r"scores for keys=\(20, 8\) float32, 5 of them zero vectors.*NaN - a zero vector has norm 0"),
    (cosine_float32, r"keys=\(30, 16\) float64.*tol atol=1e-12.*computed in float32"),
    (cosine_topk_ties, r"indices for .*equal scores keep the smaller index first \(torch\.topk promises no "
                       r"order"),
    (cosine_larger_index_first, r"indices for .*: position \d+ is row \d+ but expected row \d+: both have cosine"),
    (cosine_indices_only_rows_order, r"indices for keys=.*: position \d+ is row \d+, whose cosine is"),
    (cosine_returns_all, r"scores .*: shape \(5,\) but expected \(2,\)"),
)


@pytest.mark.parametrize("wrong, match", COSINE_MISTAKES)
def test_check_cosine_top_k_rejects(wrong, match):
    with pytest.raises(CheckFailed, match=match):
        checks.check_cosine_top_k(wrong)


# ----------------------------------------------------------------- the guard

SETUP = ("import math\nfrom collections import Counter\nimport regex\nimport torch\nimport torch.nn.functional as F\n"
         f"GPT2_PATTERN = {PATTERN!r}\n")


def test_guard_catches_the_course_bpe():
    ns = kernel(SETUP, "def bpe_train(text, num_merges):\n"
                       "    from llmcourse.bpe import train\n"
                       "    t = train(text, 256 + num_merges, special_tokens=(), tie_break='ids')\n"
                       "    return [(a, b) for a, b, _ in t.merges]\n")
    with pytest.raises(ForbiddenCall, match=r"bpe_train imports from llmcourse\.bpe"):
        checks.check_bpe_train(ns["bpe_train"])


def test_guard_catches_tokenizers_at_run_time_without_source():
    ns = kernel(SETUP, "def bpe_encode(text, merges):\n"
                       "    lib = __import__('token' + 'izers')\n"
                       "    return list(lib.Tokenizer(lib.models.BPE()).encode(text).ids)\n", keep_source=False)
    fn = ns["bpe_encode"]
    assert static_violations(fn, modules=checks.ENCODE.modules) == []
    with pytest.raises(ForbiddenCall, match=r"your code called tokenizers"):
        checks.check_bpe_encode(fn)


def test_guard_catches_the_hf_tokenizer_in_decode():
    ns = kernel(SETUP + "from transformers import GPT2TokenizerFast\n",
                "def bpe_decode(ids, merges):\n"
                "    return GPT2TokenizerFast.from_pretrained('gpt2').decode(ids)\n")
    with pytest.raises(ForbiddenCall, match=r"bpe_decode uses GPT2TokenizerFast \(from transformers\)"):
        checks.check_bpe_decode(ns["bpe_decode"])


def test_guard_catches_pad_sequence():
    ns = kernel(SETUP + "from torch.nn.utils.rnn import pad_sequence\n",
                "def pad_collate(sequences, pad_id, padding_side='right'):\n"
                "    ids = pad_sequence([torch.tensor(s, dtype=torch.long) for s in sequences], batch_first=True,\n"
                "                       padding_value=pad_id)\n"
                "    return ids, (ids != pad_id).long()\n")
    with pytest.raises(ForbiddenCall, match=r"pad_collate uses pad_sequence"):
        checks.check_pad_collate(ns["pad_collate"])


def test_guard_catches_cosine_similarity_in_a_helper():
    ns = kernel(SETUP, "def _sims(q, K):\n"
                       "    return F.cosine_similarity(q[None], K, dim=-1)\n",
                "def cosine_top_k(query, keys, k):\n"
                "    s = _sims(query, keys)\n"
                "    i = torch.sort(s, descending=True, stable=True).indices[:k]\n"
                "    return s[i], i\n")
    with pytest.raises(ForbiddenCall, match=r"_sims uses F\.cosine_similarity"):
        checks.check_cosine_top_k(ns["cosine_top_k"])


def test_guard_allows_regex_heapq_topk_and_f_pad():
    """Nothing in the task texts forbids regex, collections, heapq, torch.sort/topk, norms or F.pad."""
    for task in checks.TASKS:
        for fn in (solution_of(ASSIGNMENT)[task.name], *CORRECT[task.check]):
            assert static_violations(fn, modules=task.modules, callables=task.callables) == [], fn.__name__
    assert static_violations(cosine_topk_ties, modules=checks.COSINE.modules, callables=checks.COSINE.callables) == []


# ----------------------------------------------------------------- under a course secret

SECRETS = ("course secret A", "another secret", "3")
MISTAKES = {"check_bpe_train": TRAIN_MISTAKES, "check_bpe_encode": ENCODE_MISTAKES,
            "check_bpe_decode": DECODE_MISTAKES, "check_pad_collate": PAD_MISTAKES,
            "check_cosine_top_k": COSINE_MISTAKES}


@pytest.mark.parametrize("secret", SECRETS)
def test_checks_hold_under_several_course_secrets(monkeypatch, secret):
    """With a secret the inputs change; the solution and the correct variants still pass, mistakes fail."""
    monkeypatch.setenv("AUTOGRADER_SECRET", secret)
    assert_checks_hold(ASSIGNMENT, checks, checks.TASKS, CORRECT, MISTAKES)


def test_course_secret_changes_the_inputs(monkeypatch):
    seen = []

    def record(text, num_merges):
        seen.append(text)
        return bpe_train_heap_incremental(text, num_merges)

    checks.check_bpe_train(record)
    monkeypatch.setenv("AUTOGRADER_SECRET", SECRETS[0])
    checks.check_bpe_train(record)
    public, hidden = seen[:len(seen) // 2], seen[len(seen) // 2:]
    drawn = [i for i, (inputs, *_) in enumerate(checks._train_cases()) if "seed" in inputs]
    assert len(drawn) >= 6 and all(public[i] != hidden[i] for i in drawn), "the secret should change every drawn text"
