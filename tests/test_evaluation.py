"""llmcourse.evaluation against torchmetrics 1.9 (SQuAD, BLEUScore, ROUGEScore), brute-force pass@k by
enumerating every k-subset, direct log-probabilities of the course GPT, and substring search for n-grams."""

from __future__ import annotations

import itertools
import math
import random

import numpy as np
import pytest
import torch
from torchmetrics.text import BLEUScore, ROUGEScore, SQuAD

from llmcourse import evaluation as ev

torch.set_num_threads(1)
WORDS = ["the", "a", "an", "cat", "dog", "sat", "on", "mat", "red", "blue", "Cat", "mat.", "ran", "1", "two"]


def _sentence(rng: random.Random, low: int = 1, high: int = 9) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(low, high)))


# ----------------------------------------------------------------- exact match and token F1


@pytest.mark.parametrize("seed", range(5))
def test_exact_match_and_f1_match_torchmetrics_squad(seed):
    rng = random.Random(seed)
    for _ in range(40):
        pred = _sentence(rng, 0, 6) + rng.choice(["", "!", " ,", "."])
        golds = [_sentence(rng, 1, 6) for _ in range(rng.randint(1, 3))]
        if rng.random() < 0.3:
            golds[0] = pred.upper() + "  "  # an exact match up to case and spaces
        want = SQuAD()([{"prediction_text": pred, "id": "0"}],
                       [{"answers": {"answer_start": [0] * len(golds), "text": golds}, "id": "0"}])
        assert ev.exact_match(pred, golds) * 100 == pytest.approx(float(want["exact_match"]), abs=1e-4), (pred, golds)
        assert ev.token_f1(pred, golds) * 100 == pytest.approx(float(want["f1"]), abs=1e-4), (pred, golds)


def test_normalize_answer_known_answer():
    assert ev.normalize_answer("The  Eiffel-Tower!") == "eiffeltower"
    assert ev.token_f1("a red cat", "the red dog") == pytest.approx(0.5)
    assert ev.exact_match("", ["the"]) == 1.0  # both normalise to nothing


def test_answer_metrics_reject_bad_input():
    with pytest.raises(TypeError, match="str"):
        ev.exact_match(3, "3")
    with pytest.raises(ValueError, match="at least one gold"):
        ev.token_f1("x", [])


# ----------------------------------------------------------------- BLEU and ROUGE


def _no_length_tie(preds, refs) -> bool:
    for p, rs in zip(preds, refs):
        d = sorted(abs(len(r.split()) - len(p.split())) for r in rs)
        if len(d) > 1 and d[0] == d[1] and len({len(r.split()) for r in rs}) > 1:
            return False
    return True


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("max_n", [1, 2, 4])
def test_bleu_matches_torchmetrics(seed, max_n):
    rng = random.Random(seed)
    checked = 0
    while checked < 5:
        refs = [[_sentence(rng, 3, 12) for _ in range(rng.randint(1, 3))] for _ in range(rng.randint(1, 4))]
        preds = [r[0] if rng.random() < 0.3 else _sentence(rng, 2, 12) for r in refs]
        if not _no_length_tie(preds, refs):  # torchmetrics keeps the first closest reference, we the shorter
            continue
        want = float(BLEUScore(n_gram=max_n)(preds, refs))
        assert ev.bleu(preds, refs, max_n=max_n) == pytest.approx(want, abs=1e-6), (preds, refs)
        checked += 1


def test_bleu_known_answer():
    assert ev.bleu(["the cat sat on the mat"], [["the cat sat on the mat"]]) == pytest.approx(1.0)
    # unigram precision 2/2, bigram 1/1; brevity penalty exp(1 - 6/2)
    assert ev.bleu(["the cat"], [["the cat sat on the mat"]], max_n=2) == pytest.approx(math.exp(-2))
    assert ev.bleu(["dog"], [["the cat"]]) == 0.0


@pytest.mark.parametrize("seed", range(6))
def test_rouge_matches_torchmetrics(seed):
    rng = random.Random(seed)
    metric = ROUGEScore(rouge_keys=("rouge1", "rouge2", "rougeL"))
    for _ in range(15):
        pred = _sentence(rng, 1, 12)
        refs = [_sentence(rng, 1, 12) for _ in range(rng.randint(1, 3))]
        want = metric(pred, [refs])
        got = {"rouge1": ev.rouge_n(pred, refs, 1), "rouge2": ev.rouge_n(pred, refs, 2), "rougeL": ev.rouge_l(pred, refs)}
        for key, value in got.items():
            assert value == pytest.approx(float(want[f"{key}_fmeasure"]), abs=1e-5), (key, pred, refs)


def test_lcs_length_matches_brute_force():
    rng = random.Random(0)
    for _ in range(50):
        a, b = [rng.choice("abc") for _ in range(rng.randint(0, 7))], [rng.choice("abc") for _ in range(rng.randint(0, 7))]
        brute = max((r for r in range(len(a) + 1) for sub in itertools.combinations(a, r)
                     if _is_subsequence(sub, b)), default=0)
        assert ev.lcs_length(a, b) == brute, (a, b)


def _is_subsequence(sub, seq) -> bool:
    it = iter(seq)
    return all(x in it for x in sub)


# ----------------------------------------------------------------- pass@k


@pytest.mark.parametrize("n", [1, 2, 5, 8])
def test_pass_at_k_matches_enumeration_of_subsets(n):
    """Unbiased pass@k = share of the C(n, k) k-subsets of the samples that contain a passing one."""
    for c in range(n + 1):
        samples = [True] * c + [False] * (n - c)
        for k in range(1, n + 1):
            subsets = list(itertools.combinations(samples, k))
            want = sum(any(s) for s in subsets) / len(subsets)
            assert ev.pass_at_k(n, c, k) == pytest.approx(want, abs=1e-12), (n, c, k)
            assert ev.pass_at_k(n, c, k) == pytest.approx(1 - math.comb(n - c, k) / math.comb(n, k), abs=1e-12)


def test_pass_at_k_is_stable_for_large_n():
    """n = 10,000 makes C(n, k) overflow float64; the product form stays accurate (exact Fractions reference)."""
    from fractions import Fraction

    n, c, k = 10_000, 37, 100
    want = 1 - Fraction(math.comb(n - c, k), math.comb(n, k))
    assert ev.pass_at_k(n, c, k) == pytest.approx(float(want), rel=1e-10)


def test_naive_pass_at_k_is_biased_low():
    """Averaged over c ~ Binomial(n, p), the unbiased estimator gives 1 - (1-p)^k; the naive one less."""
    n, k, p = 10, 5, 0.2
    weights = [math.comb(n, c) * p**c * (1 - p) ** (n - c) for c in range(n + 1)]
    unbiased = sum(w * ev.pass_at_k(n, c, k) for c, w in enumerate(weights))
    naive = sum(w * ev.naive_pass_at_k(n, c, k) for c, w in enumerate(weights))
    assert unbiased == pytest.approx(1 - (1 - p) ** k, abs=1e-12)
    assert naive < unbiased - 0.01


def test_pass_at_k_rejects_bad_counts():
    with pytest.raises(ValueError, match="0 <= c <= n"):
        ev.pass_at_k(5, 6, 1)
    with pytest.raises(ValueError, match="1 <= k <= n"):
        ev.pass_at_k(5, 1, 6)
    with pytest.raises(TypeError, match="int"):
        ev.pass_at_k(5.0, 1, 1)


# ----------------------------------------------------------------- multiple choice


def test_choice_logprobs_match_one_sequence_at_a_time():
    from llmcourse.pretrained import load_base

    model, tok = load_base()
    prompt = "Q: What color are Ada's cups? A:"
    choices = [" red", " blue cups", " a very long answer with many words"]
    got = ev.choice_logprobs(model, tok, prompt, choices)
    got_mean = ev.choice_logprobs(model, tok, prompt, choices, per_token=True)
    head = tok.encode(prompt, allowed_special="none")
    for i, c in enumerate(choices):
        ids = torch.tensor([head + tok.encode(c, allowed_special="none")])
        with torch.no_grad():
            logp = torch.log_softmax(model(ids)[0][0].double(), -1)
        want = [float(logp[t - 1, ids[0, t]]) for t in range(len(head), ids.shape[1])]
        assert got[i] == pytest.approx(sum(want), abs=1e-3)
        assert got_mean[i] == pytest.approx(np.mean(want), abs=1e-4)
    with pytest.raises(ValueError, match="non-empty"):
        ev.choice_logprobs(model, tok, prompt, [])


def test_choice_items_rebuild_their_corpus_line_with_the_right_answer():
    from llmcourse.corpus import make_qa_lines

    kinds = set()
    for i, line in enumerate(make_qa_lines(400, seed=3)):
        item = ev.choice_item_from_line(line, seed=i)
        if item is None:
            assert " + " not in line and not any(k in line for k in ("after", "larger", "word in", "Spell", "color"))
            continue
        assert item.line() == line  # the option marked right is the corpus's answer
        assert len(set(item.choices)) == len(item.choices) and len(item.choices) in (2, 3, 4)
        kinds.add(item.question.split()[2])
    assert len(kinds) >= 5
    items = ev.make_choice_items(50, seed=1)
    assert len({it.line() for it in items}) == 50 and items == ev.make_choice_items(50, seed=1)


# ----------------------------------------------------------------- contamination


def test_ngram_overlap_matches_substring_search():
    rng = random.Random(0)
    corpus = [" ".join(rng.choice(WORDS[3:10]) for _ in range(60)) for _ in range(5)]
    items = [" ".join(corpus[1].split()[10:30]), _sentence(rng, 12, 20), "too short",
             " ".join(corpus[2].split()[5:8]), ""]
    n = 4
    got = ev.ngram_overlap(items, corpus, n=n)
    padded = [" " + " ".join(ev.rouge_words(d)) + " " for d in corpus]
    for item, share in zip(items, got):
        words = ev.rouge_words(item)
        grams = {" ".join(words[i:i + n]) for i in range(max(1, len(words) - n + 1))} if words else set()
        want = np.mean([any(f" {g} " in d for d in padded) for g in grams]) if grams else 0.0
        assert share == pytest.approx(want), item
    assert got[0] == 1.0 and got[2] == 0.0 and got[3] == 1.0 and got[4] == 0.0
    with pytest.raises(TypeError, match="iterable of documents"):
        ev.ngram_overlap(items, "one string")
