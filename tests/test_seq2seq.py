"""llmcourse.seq2seq: tokens, batches, attention weights, and a model that learns to reverse."""

from __future__ import annotations

import pytest
import torch

from llmcourse import seq2seq

pytestmark = pytest.mark.ch05


def test_encode_decode_roundtrip():
    ids = seq2seq.encode_digits(["012", "987"])
    assert ids.tolist() == [[3, 4, 5], [12, 11, 10]]
    assert seq2seq.decode_digits(torch.cat([ids, torch.full((2, 1), seq2seq.EOS)], 1)) == ["012", "987"]
    with pytest.raises(ValueError, match="same length"):
        seq2seq.encode_digits(["1", "22"])


def test_make_batch_shifts_the_target():
    src, tgt_in, tgt_out = seq2seq.make_batch("reverse", 4, 5, seed=0)
    assert src.shape == (4, 5) and tgt_in.shape == tgt_out.shape == (4, 6)
    assert (tgt_in[:, 0] == seq2seq.BOS).all() and (tgt_out[:, -1] == seq2seq.EOS).all()
    torch.testing.assert_close(tgt_out[:, :-1], src.flip(1))
    torch.testing.assert_close(tgt_in[:, 1:], tgt_out[:, :-1])


def test_bahdanau_weights_are_a_distribution_over_source_positions():
    torch.manual_seed(0)
    attn = seq2seq.BahdanauAttention(8)
    states = torch.randn(3, 5, 8)
    context, weights = attn(torch.randn(3, 8), states)
    assert context.shape == (3, 8) and weights.shape == (3, 5)
    torch.testing.assert_close(weights.sum(1), torch.ones(3))
    torch.testing.assert_close(context, (weights[:, :, None] * states).sum(1))


@pytest.mark.parametrize("attention", [False, True])
def test_shapes_and_teacher_forcing(attention):
    torch.manual_seed(0)
    model = seq2seq.Seq2Seq(seq2seq.Seq2SeqConfig(hidden_size=16, attention=attention))
    src, tgt_in, _ = seq2seq.make_batch("sort", 2, 4, seed=1)
    assert model(src, tgt_in).shape == (2, 5, seq2seq.VOCAB_SIZE)
    ids, attn = model.greedy(src, 4)
    assert ids.shape == (2, 4)
    assert (attn is not None) == attention
    if attention:
        assert attn.shape == (2, 4, 4)


def test_attention_model_learns_to_reverse_short_strings(one_thread):
    torch.manual_seed(0)
    model = seq2seq.Seq2Seq(seq2seq.Seq2SeqConfig(hidden_size=32, attention=True))
    losses = seq2seq.train_seq2seq(model, lengths=(2, 4), steps=150, batch_size=32)
    acc = seq2seq.accuracy_by_length(model, [2, 3, 4], n=100)
    assert losses[-1] < 0.5 * losses[0], (losses[0], losses[-1])
    assert min(acc.values()) > 0.8, acc
