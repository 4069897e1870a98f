"""llmcourse.rnn: the cells and layers written out by hand agree with torch.nn, outputs and gradients."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from llmcourse import rnn

pytestmark = pytest.mark.ch05


CELLS = [(rnn.RNNCell, nn.RNNCell), (rnn.LSTMCell, nn.LSTMCell), (rnn.GRUCell, nn.GRUCell)]
LAYERS = [(rnn.RNNCell, nn.RNN), (rnn.LSTMCell, nn.LSTM), (rnn.GRUCell, nn.GRU)]


def _state(cls, B, H, gen):
    h = torch.randn(B, H, generator=gen, dtype=torch.float64)
    if cls is rnn.LSTMCell:
        return h, torch.randn(B, H, generator=gen, dtype=torch.float64)
    return h


@pytest.mark.parametrize("ours_cls, ref_cls", CELLS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("B, n_in, H", [(1, 1, 1), (3, 4, 5), (2, 6, 3)])
def test_cell_matches_torch_nn(ours_cls, ref_cls, B, n_in, H):
    gen = torch.Generator().manual_seed(B * 100 + n_in * 10 + H)
    ours = ours_cls(n_in, H).double()
    ref = ref_cls(n_in, H).double()
    rnn.copy_weights(ours, ref)
    x = torch.randn(B, n_in, generator=gen, dtype=torch.float64, requires_grad=True)
    state = _state(ours_cls, B, H, gen)
    out_ours, out_ref = ours(x, state), ref(x, state)
    out_ours = torch.cat(out_ours, 1) if isinstance(out_ours, tuple) else out_ours
    out_ref = torch.cat(out_ref, 1) if isinstance(out_ref, tuple) else out_ref
    torch.testing.assert_close(out_ours, out_ref, rtol=1e-12, atol=1e-12)
    up = torch.randn(out_ref.shape, generator=gen, dtype=torch.float64)
    g_ours = torch.autograd.grad((out_ours * up).sum(), [x, *ours.parameters()])
    g_ref = torch.autograd.grad((out_ref * up).sum(), [x, *ref.parameters()])
    for a, b in zip(g_ours, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("cell_cls, ref_cls", LAYERS, ids=lambda c: c.__name__)
def test_recurrent_layer_matches_torch_nn(cell_cls, ref_cls):
    gen = torch.Generator().manual_seed(0)
    T, B, n_in, H = 7, 3, 4, 5
    ours = rnn.Recurrent(cell_cls(n_in, H)).double()
    ref = ref_cls(n_in, H).double()
    rnn.copy_weights(ours, ref)
    x = torch.randn(T, B, n_in, generator=gen, dtype=torch.float64)
    out_ours, last_ours = ours(x)
    out_ref, last_ref = ref(x)
    torch.testing.assert_close(out_ours, out_ref, rtol=1e-12, atol=1e-12)
    if cell_cls is rnn.LSTMCell:
        torch.testing.assert_close(torch.stack(last_ours), torch.cat(last_ref), rtol=1e-12, atol=1e-12)
    else:
        torch.testing.assert_close(last_ours, last_ref[0], rtol=1e-12, atol=1e-12)
    g_ours = rnn.gradient_norms_through_time(ours, x)
    g_ref = rnn.gradient_norms_through_time(ref, x)
    torch.testing.assert_close(g_ours, g_ref, rtol=1e-9, atol=1e-14)


def test_rnn_cell_known_answer():
    one = torch.ones(1, 1)
    h = rnn.rnn_cell(one, -one, 2 * one, 3 * one, torch.tensor([0.5]), torch.tensor([0.25]))
    torch.testing.assert_close(h, torch.tanh(torch.tensor([[-0.25]])))


def test_lstm_cell_with_zero_weights_halves_the_cell_state():
    c = torch.tensor([[1.0, -2.0]])
    z = torch.zeros
    h2, c2 = rnn.lstm_cell(torch.ones(1, 3), z(1, 2), c, z(8, 3), z(8, 2), z(8), z(8))
    torch.testing.assert_close(c2, 0.5 * c)
    torch.testing.assert_close(h2, 0.5 * torch.tanh(0.5 * c))


def test_plain_rnn_gradient_vanishes_and_forget_bias_keeps_it(one_thread):
    torch.manual_seed(0)
    x = torch.randn(60, 4, 3)
    plain = rnn.Recurrent(rnn.RNNCell(3, 32))
    lstm = rnn.Recurrent(rnn.LSTMCell(3, 32))
    with torch.no_grad():
        lstm.cell.bias_ih[32:64] += 3.0  # forget gate near 1
    g_plain = rnn.gradient_norms_through_time(plain, x)
    g_lstm = rnn.gradient_norms_through_time(lstm, x)
    assert g_plain[0] < 1e-6 * g_plain[-1], g_plain[[0, -1]]
    assert g_lstm[0] > 1e-2 * g_lstm[-1], g_lstm[[0, -1]]


def test_bad_shapes_are_explained():
    cell = rnn.LSTMCell(3, 4)
    with pytest.raises(ValueError, match=r"x must have shape \(B, 3\), got \(2, 5\)"):
        cell(torch.zeros(2, 5), (torch.zeros(2, 4), torch.zeros(2, 4)))
    with pytest.raises(ValueError, match=r"x must have shape \(T, B, 3\)"):
        rnn.Recurrent(cell)(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="hidden_size must be >= 1"):
        rnn.RNNCell(3, 0)
