"""Decoding against transformers: its logits processors, greedy and beam-search ``generate``, sampling."""

from __future__ import annotations

import functools
import itertools
import math
import os
from types import SimpleNamespace

import pytest
import torch
from torch import nn

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")

from transformers import (  # noqa: E402
    LogitsProcessorList,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from llmcourse import decoding as D  # noqa: E402
from llmcourse.gpt import GPT, GPTConfig  # noqa: E402

INF = float("inf")


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Tiny models: one thread is as fast, and far faster on a busy machine."""


@pytest.fixture(autouse=True)
def _quiet_transformers():
    """generate() logs advice (e.g. on padding) that is noise here."""
    level = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    yield
    transformers.logging.set_verbosity(level)


# ----------------------------------------------------------------- inputs

def random_scores(seed: int, b: int, v: int, kind: str, dtype=torch.float32) -> torch.Tensor:
    """Scores (B, V): 'normal', 'ties' (small integers: many ties), 'inf' (some -inf) or 'peaked'."""
    g = torch.Generator().manual_seed(seed)
    if kind == "ties":
        x = torch.randint(-2, 3, (b, v), generator=g).float()
    else:
        x = 3 * torch.randn(b, v, generator=g)
    if kind == "inf":
        x = x.masked_fill(torch.rand(b, v, generator=g) < 0.4, -INF)
        x[:, 0] = x[:, 0].clamp(min=-5.0)  # keep one finite score per row
    if kind == "peaked":
        x[:, v // 2] += 25.0
    return x.to(dtype)


SCORE_CASES = [dict(seed=seed, b=b, v=v, kind=kind, dtype=dtype)
               for seed, (b, v), kind, dtype in itertools.product(
                   range(3), [(1, 1), (1, 7), (4, 7), (3, 50)], ["normal", "ties", "inf", "peaked"],
                   [torch.float32, torch.float64])]


def random_gpt(seed: int, vocab_size: int = 64, block_size: int = 32, std: float = 0.5) -> GPT:
    """A tiny course GPT (eval) with N(0, std^2) weights: std 0.5 gives peaked next-token distributions,
    so near-ties (which float rounding between the two implementations could flip) are rare."""
    torch.manual_seed(seed)
    model = GPT(GPTConfig.tiny(vocab_size=vocab_size, block_size=block_size)).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(std * torch.randn(p.shape, generator=g))
    return model


class TableLM(nn.Module):
    """A bigram "model" with the course GPT's interface: the next-token logits are ``table[last token]``."""

    def __init__(self, table: torch.Tensor, block_size: int = 16):
        super().__init__()
        self.table = table  # (V, V)
        self.config = SimpleNamespace(block_size=block_size)
        self.eval()

    def forward(self, idx):
        return self.table[idx], None  # (B, T, V)


def hf_generate(hf, idx, **kwargs):
    """transformers' generate on a prompt without padding, with eos doubling as the pad id."""
    eos = kwargs.pop("eos_id", None)
    return hf.generate(idx, attention_mask=torch.ones_like(idx), eos_token_id=eos, pad_token_id=eos, **kwargs)


# ----------------------------------------------------------------- logit filters vs transformers

@pytest.mark.parametrize("case", SCORE_CASES, ids=lambda c: "{seed}-{b}x{v}-{kind}-{dtype}".format(**c))
def test_filters_match_hf_logits_warpers(case):
    """Temperature, top-k and top-p equal transformers' warpers bit for bit (ties and -inf included)."""
    scores = random_scores(**case)
    v = case["v"]
    ids = torch.zeros(scores.shape[0], 1, dtype=torch.long)  # the warpers ignore input_ids
    for t in (0.25, 1.0, 1.7):
        assert torch.equal(D.apply_temperature(scores, t), TemperatureLogitsWarper(t)(ids, scores)), f"T={t}"
    for k, keep in itertools.product((1, 2, 3, v, v + 4), (1, 3)):
        want = TopKLogitsWarper(k, min_tokens_to_keep=keep)(ids, scores)
        got = D.top_k_filter(scores, k, min_tokens_to_keep=keep)
        assert torch.equal(got, want), f"top_k={k}, min_tokens_to_keep={keep}: kept {got.isfinite().sum(-1)}, " \
                                       f"transformers {want.isfinite().sum(-1)}"
    for p, keep in itertools.product((1e-9, 0.1, 0.5, 0.75, 0.9, 0.999, 1.0), (1, 2)):
        for t in (0.5, 1.0, 2.0):  # top-p after temperature, as in sampling
            x = scores / t
            want = TopPLogitsWarper(p, min_tokens_to_keep=keep)(ids, x)
            got = D.top_p_filter(x, p, min_tokens_to_keep=keep)
            assert torch.equal(got, want), f"top_p={p}, min_tokens_to_keep={keep}, T={t}: kept " \
                                           f"{got.isfinite().sum(-1)}, transformers {want.isfinite().sum(-1)}"
    assert torch.equal(D.top_k_filter(scores, 2, filter_value=-7.0),
                       TopKLogitsWarper(2, filter_value=-7.0)(ids, scores))
    assert torch.equal(D.top_p_filter(scores, 0.5, filter_value=-7.0),
                       TopPLogitsWarper(0.5, filter_value=-7.0)(ids, scores))


@pytest.mark.parametrize("case", SCORE_CASES[::3], ids=lambda c: "{seed}-{b}x{v}-{kind}-{dtype}".format(**c))
def test_repetition_penalty_matches_hf(case):
    """CTRL's penalty equals RepetitionPenaltyLogitsProcessor (repeated ids penalised once, zeros untouched)."""
    scores = random_scores(**case)
    scores[:, :2] = 0.0 if scores.shape[1] > 2 else scores[:, :2]
    g = torch.Generator().manual_seed(case["seed"])
    for t, penalty in itertools.product((1, 6, 20), (0.5, 1.0, 1.3, 3.0)):
        ids = torch.randint(0, scores.shape[1], (scores.shape[0], t), generator=g)
        want = RepetitionPenaltyLogitsProcessor(penalty)(ids, scores)
        got = D.repetition_penalty(scores, ids, penalty)
        assert torch.equal(got, want), f"penalty={penalty}, T={t}: max |got-want| {(got - want).abs().max()}"


def test_process_logits_matches_hf_processor_list():
    """Penalty, temperature, top-k, top-p in a row equal the LogitsProcessorList generate(do_sample=True) builds."""
    for seed, kind in itertools.product(range(4), ["normal", "ties", "inf"]):
        scores = random_scores(seed, 3, 40, kind)
        ids = torch.randint(0, 40, (3, 9), generator=torch.Generator().manual_seed(seed))
        hf = LogitsProcessorList([RepetitionPenaltyLogitsProcessor(1.4), TemperatureLogitsWarper(0.8),
                                  TopKLogitsWarper(12), TopPLogitsWarper(0.7)])
        got = D.process_logits(scores, ids, temperature=0.8, top_k=12, top_p=0.7, repetition_penalty=1.4)
        assert torch.equal(got, hf(ids, scores)), f"seed={seed}, {kind}"


def test_filters_known_answers():
    """Hand-checkable cases: ties at the top-k boundary, a tiny top_p, top_p = 1, min_tokens_to_keep."""
    x = torch.tensor([[1.0, 3.0, 2.0, 3.0, 2.0]])
    assert D.top_k_filter(x, 1).isfinite().tolist() == [[False, True, False, True, False]]  # tie: both kept
    assert D.top_k_filter(x, 3).isfinite().tolist() == [[False, True, True, True, True]]
    assert D.top_k_filter(x, 1, min_tokens_to_keep=5).isfinite().all()
    assert D.top_k_filter(x, 99).isfinite().all()  # k > V keeps everything
    y = torch.tensor([[0.0, 1.0, 4.0, 2.0], [5.0, 0.0, 0.0, -INF]])
    assert D.top_p_filter(y, 1e-6).isfinite().tolist() == [[False, False, True, False], [True, False, False, False]]
    assert D.top_p_filter(y, 1.0).isfinite().tolist() == [[True] * 4, [True, True, True, False]]
    assert D.top_p_filter(y, 1e-6, min_tokens_to_keep=2).isfinite().sum(-1).tolist() == [2, 2]
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log()
    assert D.top_p_filter(probs, 0.8).isfinite().tolist() == [[True, True, False, False]]  # 0.5 + 0.3 >= 0.8
    assert D.top_p_filter(probs, 0.81).isfinite().tolist() == [[True, True, True, False]]
    torch.testing.assert_close(D.apply_temperature(torch.tensor([[2.0, -1.0]]), 0.5), torch.tensor([[4.0, -2.0]]))
    got = D.repetition_penalty(torch.tensor([[2.0, -2.0, 0.0, 2.0]]), torch.tensor([[0, 1, 1, 2]]), 2.0)
    assert got.tolist() == [[1.0, -4.0, 0.0, 2.0]]


# ----------------------------------------------------------------- generate vs transformers

@pytest.mark.parametrize("seed, b", [(0, 1), (1, 2), (2, 3)])
def test_generate_greedy_matches_hf(seed, b):
    """Greedy decoding equals GPT2LMHeadModel.generate(do_sample=False), with and without eos and penalty."""
    model = random_gpt(seed)
    hf = model.to_hf()
    idx = torch.randint(0, 64, (b, 5), generator=torch.Generator().manual_seed(seed))
    plain = D.generate(model, idx, 12)
    assert plain.shape == (b, 17)
    assert torch.equal(plain, hf_generate(hf, idx, max_new_tokens=12, do_sample=False))
    for eos in (int(plain[0, 8]), int(plain[-1, 11])):  # tokens greedy decoding does produce
        got = D.generate(model, idx, 12, eos_id=eos)
        assert got.shape[1] < 17 or b > 1, "decoding should stop at eos"
        assert torch.equal(got, hf_generate(hf, idx, max_new_tokens=12, do_sample=False, eos_id=eos)), f"eos={eos}"
    got = D.generate(model, idx, 12, repetition_penalty=1.5)
    assert torch.equal(got, hf_generate(hf, idx, max_new_tokens=12, do_sample=False, repetition_penalty=1.5))


@pytest.mark.parametrize("kwargs", [dict(temperature=0.7, top_k=10), dict(top_p=0.9),
                                    dict(temperature=1.3, top_k=20, top_p=0.8, repetition_penalty=1.5)])
def test_generate_sample_matches_hf_with_the_same_seed(kwargs):
    """Sampling equals generate(do_sample=True) token for token when both draw from the same seed.

    transformers draws from the global generator; a torch.Generator seeded alike gives the same stream.
    transformers samples with top_k=50 unless told otherwise: top_k=0 switches that off.
    """
    for seed in range(2):
        model = random_gpt(seed, std=0.2)
        idx = torch.randint(0, 64, (2, 5), generator=torch.Generator().manual_seed(seed))
        hf = model.to_hf()  # before seeding: building it draws random initial weights
        got = D.generate(model, idx, 15, strategy="sample", generator=torch.Generator().manual_seed(seed), **kwargs)
        torch.manual_seed(seed)
        want = hf_generate(hf, idx, max_new_tokens=15, do_sample=True, **{"top_k": 0, **kwargs})
        assert torch.equal(got, want), f"seed={seed}, {kwargs}"


def test_generate_sample_is_reproducible():
    model = random_gpt(3, std=0.2)
    idx = torch.randint(0, 64, (4, 3), generator=torch.Generator().manual_seed(3))
    runs = [D.generate(model, idx, 20, strategy="sample", top_p=0.95, generator=torch.Generator().manual_seed(s))
            for s in (7, 7, 8)]
    assert torch.equal(runs[0], runs[1]), "the same generator seed must give the same tokens"
    assert not torch.equal(runs[0], runs[2]), "a different seed should give different tokens"


def test_generate_crops_the_context_to_block_size():
    """Past block_size tokens the model sees only the last block_size; a longer prompt is cropped too."""
    model = random_gpt(4, block_size=8)
    for t in (3, 12):  # shorter and longer than block_size
        idx = torch.randint(0, 64, (2, t), generator=torch.Generator().manual_seed(t))
        want = idx
        with torch.no_grad():
            for _ in range(10):
                logits, _ = model(want[:, -8:])
                want = torch.cat([want, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
        assert torch.equal(D.generate(model, idx, 10), want), f"prompt length {t}"
        assert D.beam_search(model, idx, 3, 10).shape == (2, t + 10)


# ----------------------------------------------------------------- beam search

@pytest.mark.parametrize("seed, num_beams, b", [(0, 2, 1), (1, 3, 2), (2, 4, 1), (3, 5, 2)])
def test_beam_search_matches_hf(seed, num_beams, b):
    """Beam search equals generate(num_beams=k, do_sample=False) for each early_stopping and length_penalty."""
    model = random_gpt(seed)
    hf = model.to_hf()
    idx = torch.randint(0, 64, (b, 5), generator=torch.Generator().manual_seed(seed))
    greedy = D.generate(model, idx, 12)
    ended_early = 0
    for eos, stop, alpha in itertools.product((None, int(greedy[0, 7]), int(greedy[-1, 10])),
                                              (False, True, "never"), (1.0, 0.0, -0.5, 2.0)):
        got = D.beam_search(model, idx, num_beams, 12, length_penalty=alpha, early_stopping=stop, eos_id=eos)
        want = hf_generate(hf, idx, max_new_tokens=12, num_beams=num_beams, do_sample=False,
                           early_stopping=stop, length_penalty=alpha, eos_id=eos)
        assert torch.equal(got, want), f"eos={eos}, early_stopping={stop}, length_penalty={alpha}:\n{got}\n{want}"
        ended_early += got.shape[1] < 17
    assert ended_early > 0, "no case stopped at eos: the eos ids test nothing"


def test_beam_search_known_answer():
    """The example of von Platen's "How to generate text": greedy finds "The nice woman" (0.5 * 0.4 = 0.2),
    two beams find "The dog has" (0.4 * 0.9 = 0.36)."""
    words = ["The", "nice", "dog", "car", "woman", "house", "guy", "and", "runs", "has", "is", "drives"]
    w = {word: i for i, word in enumerate(words)}
    probs = torch.full((len(words), len(words)), 1e-4)
    for prev, nxt in {"The": {"nice": 0.5, "dog": 0.4, "car": 0.1},
                      "nice": {"woman": 0.4, "house": 0.3, "guy": 0.3},
                      "dog": {"and": 0.05, "runs": 0.05, "has": 0.9},
                      "car": {"is": 0.3, "drives": 0.7}}.items():
        for word, p in nxt.items():
            probs[w[prev], w[word]] = p
    model = TableLM((probs / probs.sum(-1, keepdim=True)).log())
    prompt = torch.tensor([[w["The"]]])

    def decode(ids):
        return [words[i] for i in ids[0].tolist()]

    assert decode(D.generate(model, prompt, 2)) == ["The", "nice", "woman"]
    assert decode(D.beam_search(model, prompt, 2, 2)) == ["The", "dog", "has"]
    assert decode(D.beam_search(model, prompt, 1, 2)) == ["The", "nice", "woman"], "one beam is greedy"


# ----------------------------------------------------------------- sampling frequencies

@pytest.mark.parametrize("kwargs", [dict(), dict(temperature=0.6), dict(top_k=5), dict(top_p=0.8),
                                    dict(temperature=1.5, top_k=12, top_p=0.9)])
def test_sampling_frequencies_match_the_filtered_softmax(kwargs):
    """N = 40,000 one-token draws: filtered tokens never appear, and each frequency is within 5 standard
    errors sqrt(p (1 - p) / N) of softmax(filtered logits); a chi-square test agrees (p-value > 1e-4)."""
    stats = pytest.importorskip("scipy.stats")
    v, n = 16, 40_000
    logits = random_scores(11, 1, v, "normal") / 2  # (1, V)
    model = TableLM(logits.expand(v, v))  # the same next-token logits after every token
    prompt = torch.zeros(n, 1, dtype=torch.long)
    draws = D.generate(model, prompt, 1, strategy="sample", generator=torch.Generator().manual_seed(0), **kwargs)
    freq = torch.bincount(draws[:, 1], minlength=v).double() / n
    p = D.process_logits(logits, temperature=kwargs.get("temperature", 1.0), top_k=kwargs.get("top_k"),
                         top_p=kwargs.get("top_p")).softmax(-1)[0].double()
    assert (freq[p == 0] == 0).all(), f"filtered tokens were drawn: {freq[p == 0]}"
    kept = p > 0
    z = (freq - p)[kept].abs() / (p * (1 - p) / n).sqrt()[kept].clamp(min=1e-12)
    assert z.max() < 5, f"{kwargs}: frequency {z.max():.1f} standard errors from the filtered softmax"
    if kept.sum() > 1:
        chi2 = float((n * (freq - p)[kept] ** 2 / p[kept]).sum())  # sum (observed - expected)^2 / expected
        pvalue = stats.chi2.sf(chi2, df=int(kept.sum()) - 1)
        assert pvalue > 1e-4, f"{kwargs}: chi-square {chi2:.1f}, p-value {pvalue:.1e}"


# ----------------------------------------------------------------- the sampling widget

def test_sampling_plot_shows_top_tokens_before_and_after_filtering():
    import matplotlib.pyplot as plt

    logits = random_scores(5, 1, 30, "normal")[0]  # (V,)
    labels = [f"t{i}" for i in range(30)]
    fig = D.sampling_plot(logits, 0.8, 5, 0.9, labels=labels)
    try:
        (ax,) = fig.axes
        order = logits.argsort(descending=True)[:20].tolist()
        assert [t.get_text() for t in ax.get_xticklabels()] == [labels[i] for i in order]
        bars = ax.patches
        assert len(bars) == 40, "20 tokens, one bar before and one after filtering"
        before = torch.tensor([r.get_height() for r in bars[:20]], dtype=torch.float32)
        after = torch.tensor([r.get_height() for r in bars[20:]], dtype=torch.float32)
        torch.testing.assert_close(before, logits.softmax(-1)[order], rtol=1e-6, atol=1e-7)
        want = D.process_logits(logits[None], temperature=0.8, top_k=5, top_p=0.9).softmax(-1)[0][order]
        torch.testing.assert_close(after, want, rtol=1e-6, atol=1e-7)
        assert (after > 0).sum() <= 5
    finally:
        plt.close(fig)


def test_sampling_plot_works_with_interact(monkeypatch):
    import ipywidgets as W

    from llmcourse import widgets

    shown = []
    monkeypatch.setenv("LLMCOURSE_BOOK_BUILD", "1")
    monkeypatch.setattr(widgets, "display", lambda obj, raw=False: shown.append(obj))
    plot = functools.partial(D.sampling_plot, random_scores(6, 1, 50, "normal"), labels=None)
    widgets.interact(plot, temperature=W.FloatSlider(value=1.0, min=0.1, max=3.0),
                     top_k=W.IntSlider(value=10, min=1, max=50), top_p=W.FloatSlider(value=0.9, min=0.05, max=1.0))
    assert len(shown) == 1 and "image/png" in shown[0]


# ----------------------------------------------------------------- errors

GOOD = torch.zeros(2, 5)


@pytest.mark.parametrize("call, error, match", [
    (lambda: D.apply_temperature(GOOD, 0.0), ValueError, "temperature"),
    (lambda: D.apply_temperature(GOOD, -1.0), ValueError, "temperature"),
    (lambda: D.apply_temperature(GOOD, math.inf), ValueError, "temperature"),
    (lambda: D.top_k_filter(GOOD, 0), ValueError, "top_k"),
    (lambda: D.top_k_filter(GOOD, 2.0), ValueError, "top_k"),
    (lambda: D.top_k_filter(GOOD, 2, min_tokens_to_keep=0), ValueError, "min_tokens_to_keep"),
    (lambda: D.top_p_filter(GOOD, 0.0), ValueError, "top_p"),
    (lambda: D.top_p_filter(GOOD, 1.5), ValueError, "top_p"),
    (lambda: D.top_p_filter(GOOD, -0.1), ValueError, "top_p"),
    (lambda: D.repetition_penalty(GOOD, torch.zeros(2, 3, dtype=torch.long), 0.0), ValueError, "penalty"),
    (lambda: D.repetition_penalty(GOOD, torch.full((2, 3), 5), 1.2), ValueError, r"\[0, 5\)"),
    (lambda: D.repetition_penalty(GOOD, torch.zeros(3, 3, dtype=torch.long), 1.2), ValueError, "batch size"),
    (lambda: D.repetition_penalty(GOOD, torch.zeros(2, 3), 1.2), TypeError, "integer"),
    (lambda: D.top_k_filter(torch.zeros(5), 2), ValueError, r"\(B, V\)"),
    (lambda: D.top_k_filter(torch.zeros(2, 3, 5), 2), ValueError, r"\(B, V\)"),
    (lambda: D.top_p_filter(torch.zeros(2, 5, dtype=torch.long), 0.5), TypeError, "floating"),
    (lambda: D.apply_temperature([[1.0, 2.0]], 1.0), TypeError, "Tensor"),
    (lambda: D.process_logits(GOOD, repetition_penalty=1.2), ValueError, "input_ids"),
])
def test_filters_reject_bad_input(call, error, match):
    with pytest.raises(error, match=match):
        call()


@pytest.mark.parametrize("call, error, match", [
    (lambda m, x: D.generate(m, x, 3, strategy="sample", temperature=0), ValueError, "temperature"),
    (lambda m, x: D.generate(m, x, 3, strategy="sample", top_k=0), ValueError, "top_k"),
    (lambda m, x: D.generate(m, x, 3, strategy="sample", top_p=0), ValueError, "top_p"),
    (lambda m, x: D.generate(m, x, 3, temperature=0.7), ValueError, "strategy='sample'"),
    (lambda m, x: D.generate(m, x, 3, strategy="beam"), ValueError, "strategy"),
    (lambda m, x: D.generate(m, x, -1), ValueError, "max_new_tokens"),
    (lambda m, x: D.generate(m, x.float(), 3), TypeError, "integer"),
    (lambda m, x: D.generate(m, x[0], 3), ValueError, r"\(B, T\)"),
    (lambda m, x: D.generate(m, x[:, :0], 3), ValueError, "T >= 1"),
    (lambda m, x: D.generate(m.train(), x, 3), ValueError, "eval"),
    (lambda m, x: D.generate(nn.Linear(2, 2).eval(), x, 3), TypeError, "GPT"),
    (lambda m, x: D.beam_search(m, x, 0, 3), ValueError, "num_beams"),
    (lambda m, x: D.beam_search(m, x, 2, 3, early_stopping="sometimes"), ValueError, "early_stopping"),
    (lambda m, x: D.beam_search(m, x, 2, 3, length_penalty=math.nan), ValueError, "length_penalty"),
    (lambda m, x: D.sampling_plot(torch.zeros(2, 8), 1.0), ValueError, "one distribution"),
    (lambda m, x: D.sampling_plot(torch.zeros(8), 1.0, labels=["a"]), ValueError, "labels"),
])
def test_decoding_rejects_bad_input(call, error, match):
    model = random_gpt(0, block_size=8)
    with pytest.raises(error, match=match):
        call(model, torch.zeros(2, 3, dtype=torch.long))


def test_zero_new_tokens_returns_the_prompt():
    model = random_gpt(0, block_size=8)
    idx = torch.randint(0, 64, (2, 3), generator=torch.Generator().manual_seed(0))
    assert torch.equal(D.generate(model, idx, 0), idx)
    assert torch.equal(D.beam_search(model, idx, 3, 0), idx)
