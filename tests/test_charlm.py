"""llmcourse.charlm: vocabulary round trip, windows, sampling by inverse CDF, a model that learns."""

from __future__ import annotations

import math

import pytest
import torch

from llmcourse import charlm

pytestmark = pytest.mark.ch05


def test_vocab_roundtrip_known_answer():
    v = charlm.CharVocab("hello")
    assert v.chars == ["e", "h", "l", "o"]
    assert v.encode("hole").tolist() == [1, 3, 2, 0]
    assert v.decode(v.encode("hello")) == "hello"
    with pytest.raises(ValueError, match=r"not in the vocabulary: \['z'\]"):
        v.encode("zoo")


def test_windows_are_shifted_by_one():
    data = torch.arange(100)
    x, y = charlm.random_windows(data, 8, 5, torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (5, 8)
    torch.testing.assert_close(y, x + 1)
    with pytest.raises(ValueError, match="more than block_size=8"):
        charlm.random_windows(torch.arange(8), 8, 2)


def test_sampling_frequencies_match_softmax():
    logits = torch.tensor([[2.0, 0.0, -1.0, 1.0]])
    n = 4000
    u = (torch.arange(n, dtype=torch.float64) + 0.5) / n
    for temperature in (0.5, 1.0, 2.0):
        ids = charlm.sample_with_temperature(logits.expand(n, 4), temperature, u.float())
        freq = torch.bincount(ids, minlength=4).double() / n
        p = torch.softmax(logits[0].double() / temperature, dim=0)
        assert (freq - p).abs().max() <= 2.0 / n, (freq, p)


def test_sampling_edge_cases():
    logits = torch.tensor([[1000.0, 999.0, 0.0]])
    u = torch.tensor([0.9])
    assert charlm.sample_with_temperature(logits, 1.0, u).tolist() == [1]  # no overflow
    assert charlm.sample_with_temperature(logits, 0.0, u).tolist() == [0]  # greedy
    assert charlm.sample_with_temperature(logits, 1.0, torch.tensor([0.9999999])).tolist() == [1]
    for bad in (-1.0, math.nan, math.inf):
        with pytest.raises(ValueError, match="temperature must be a finite number >= 0"):
            charlm.sample_with_temperature(logits, bad, u)
    with pytest.raises(ValueError, match=r"need logits \(B, V\) and u \(B,\)"):
        charlm.sample_with_temperature(logits[0], 1.0, u)


def test_char_lstm_learns_a_repeating_text(one_thread):
    text = "abcabcabdabc" * 40
    vocab = charlm.CharVocab(text)
    data = vocab.encode(text)
    torch.manual_seed(0)
    model = charlm.CharLSTM(charlm.CharLMConfig(len(vocab), embed_size=8, hidden_size=32))
    before = charlm.evaluate_char_lm(model, data)
    losses = charlm.train_char_lm(model, data, steps=60, block_size=16, batch_size=8, lr=2e-2)
    after = charlm.evaluate_char_lm(model, data)
    assert len(losses) == 60
    assert before > math.log(len(vocab)) - 0.3 and after < 0.5 * before, (before, after)
    sample = charlm.generate(model, vocab, "ab", 12, temperature=0.0)
    assert sample.startswith("abc") and len(sample) == 14, sample
    assert charlm.generate(model, vocab, "a", 20, temperature=1.0, seed=3) == \
        charlm.generate(model, vocab, "a", 20, temperature=1.0, seed=3)
