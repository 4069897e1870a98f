"""Recurrent cells and layers written out step by step: Elman RNN, LSTM and GRU.

What it teaches: a recurrent network reads a sequence one step at a time and
carries a *state* from step to step. The plain (Elman 1990) cell is
``h' = tanh(x W_ih^T + b_ih + h W_hh^T + b_hh)``. The LSTM (Hochreiter &
Schmidhuber 1997, with the forget gate of Gers, Schmidhuber & Cummins 2000)
adds a cell state ``c`` that is updated additively through gates; the GRU
(Cho et al. 2014) merges the gates into two. Gradients flow backwards through
the same steps (backpropagation through time, Werbos 1990), and in a plain
RNN they shrink or grow geometrically with the distance they travel
(Bengio, Simard & Frasconi 1994), which ``gradient_norms_through_time``
measures.

Parameter names, shapes and gate order follow ``torch.nn.RNNCell``,
``torch.nn.LSTMCell`` and ``torch.nn.GRUCell`` (LSTM gates stacked i, f, g, o;
GRU gates r, z, n), so a ``state_dict`` copies across in both directions.

Shapes: B batch, T time, I input size, H hidden size. Layers are time-first:
x (T, B, I), as ``torch.nn.LSTM`` with its default ``batch_first=False``.

Taught in: book/05-rnn
"""

from __future__ import annotations

import math

import torch
from torch import nn

# ----------------------------------------------------------------- the cells as functions


def rnn_cell(x: torch.Tensor, h: torch.Tensor, W_ih: torch.Tensor, W_hh: torch.Tensor,
             b_ih: torch.Tensor, b_hh: torch.Tensor) -> torch.Tensor:
    """One step of an Elman RNN with tanh: h' = tanh(x W_ih^T + b_ih + h W_hh^T + b_hh).

    Shapes: x (B, I), h (B, H), W_ih (H, I), W_hh (H, H), b_ih (H,), b_hh (H,) -> h' (B, H).
    """
    return torch.tanh(x @ W_ih.T + b_ih + h @ W_hh.T + b_hh)


def lstm_cell(x: torch.Tensor, h: torch.Tensor, c: torch.Tensor, W_ih: torch.Tensor,
              W_hh: torch.Tensor, b_ih: torch.Tensor, b_hh: torch.Tensor):
    """One LSTM step in PyTorch's gate order (i, f, g, o) -> (h', c').

    i, f, o = sigmoid(...) are the input, forget and output gates, g = tanh(...) the candidate;
    c' = f * c + i * g and h' = o * tanh(c').

    Shapes: x (B, I), h and c (B, H), W_ih (4H, I), W_hh (4H, H), b_ih and b_hh (4H,)
    -> h' (B, H), c' (B, H).
    """
    gates = x @ W_ih.T + b_ih + h @ W_hh.T + b_hh  # (B, 4H)
    i, f, g, o = gates.chunk(4, dim=1)  # four (B, H)
    i, f, g, o = torch.sigmoid(i), torch.sigmoid(f), torch.tanh(g), torch.sigmoid(o)
    c_next = f * c + i * g
    h_next = o * torch.tanh(c_next)
    return h_next, c_next


def gru_cell(x: torch.Tensor, h: torch.Tensor, W_ih: torch.Tensor, W_hh: torch.Tensor,
             b_ih: torch.Tensor, b_hh: torch.Tensor) -> torch.Tensor:
    """One GRU step in PyTorch's gate order (r, z, n) -> h'.

    r = sigmoid(...) resets how much of h enters the candidate n = tanh(x_n + r * h_n),
    z = sigmoid(...) chooses between keeping h and taking n: h' = (1 - z) * n + z * h.

    Shapes: x (B, I), h (B, H), W_ih (3H, I), W_hh (3H, H), b_ih and b_hh (3H,) -> h' (B, H).
    """
    xr, xz, xn = (x @ W_ih.T + b_ih).chunk(3, dim=1)  # three (B, H)
    hr, hz, hn = (h @ W_hh.T + b_hh).chunk(3, dim=1)  # three (B, H)
    r = torch.sigmoid(xr + hr)
    z = torch.sigmoid(xz + hz)
    n = torch.tanh(xn + r * hn)
    return (1 - z) * n + z * h


# ----------------------------------------------------------------- the cells as modules


class _Cell(nn.Module):
    """Weights laid out as in torch.nn.*Cell, initialised U(-1/sqrt(H), 1/sqrt(H)) like PyTorch."""

    n_gates = 1

    def __init__(self, input_size: int, hidden_size: int):
        super().__init__()
        if input_size < 1 or hidden_size < 1:
            raise ValueError(f"input_size and hidden_size must be >= 1, got {input_size}, {hidden_size}")
        self.input_size, self.hidden_size = input_size, hidden_size
        g = self.n_gates * hidden_size
        self.weight_ih = nn.Parameter(torch.empty(g, input_size))
        self.weight_hh = nn.Parameter(torch.empty(g, hidden_size))
        self.bias_ih = nn.Parameter(torch.empty(g))
        self.bias_hh = nn.Parameter(torch.empty(g))
        bound = 1.0 / math.sqrt(hidden_size)
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)

    def _check(self, x: torch.Tensor, h: torch.Tensor) -> None:
        if x.dim() != 2 or x.shape[1] != self.input_size:
            raise ValueError(f"x must have shape (B, {self.input_size}), got {tuple(x.shape)}")
        if h.shape != (x.shape[0], self.hidden_size):
            raise ValueError(f"state must have shape ({x.shape[0]}, {self.hidden_size}), got {tuple(h.shape)}")

    def weights(self) -> tuple[torch.Tensor, ...]:
        return self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh


class RNNCell(_Cell):
    """Elman cell with tanh; same parameters as ``torch.nn.RNNCell``. forward(x (B, I), h (B, H)) -> (B, H)."""

    def forward(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        self._check(x, h)
        return rnn_cell(x, h, *self.weights())


class LSTMCell(_Cell):
    """LSTM cell; same parameters as ``torch.nn.LSTMCell``. forward(x, (h, c)) -> (h', c'), all (B, H)."""

    n_gates = 4

    def forward(self, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]):
        h, c = state
        self._check(x, h)
        self._check(x, c)
        return lstm_cell(x, h, c, *self.weights())


class GRUCell(_Cell):
    """GRU cell; same parameters as ``torch.nn.GRUCell``. forward(x (B, I), h (B, H)) -> (B, H)."""

    n_gates = 3

    def forward(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        self._check(x, h)
        return gru_cell(x, h, *self.weights())


# ----------------------------------------------------------------- unrolled over time


class Recurrent(nn.Module):
    """One recurrent layer: a cell applied at every time step, its state carried forward.

    ``Recurrent(LSTMCell(I, H))(x)`` returns (outputs (T, B, H), last state), where the last
    state is h_T for RNN and GRU cells and (h_T, c_T) for an LSTM cell: the same as
    ``torch.nn.RNN / LSTM / GRU`` with one layer and ``batch_first=False``.
    """

    def __init__(self, cell: _Cell):
        super().__init__()
        self.cell = cell

    def forward(self, x: torch.Tensor, state=None):
        if x.dim() != 3 or x.shape[2] != self.cell.input_size:
            raise ValueError(f"x must have shape (T, B, {self.cell.input_size}), got {tuple(x.shape)}")
        batch, hidden = x.shape[1], self.cell.hidden_size
        lstm = isinstance(self.cell, LSTMCell)
        if state is None:
            zeros = x.new_zeros(batch, hidden)
            state = (zeros, zeros) if lstm else zeros
        outputs = []
        for x_t in x:  # x_t (B, I): one time step
            state = self.cell(x_t, state)
            outputs.append(state[0] if lstm else state)
        return torch.stack(outputs), state  # (T, B, H)


def copy_weights(src: nn.Module, dst: nn.Module) -> None:
    """Copy weights between a course cell/layer and its ``torch.nn`` twin (one layer).

    Names differ only by the ``_l0`` suffix torch.nn.LSTM/RNN/GRU add; shapes are asserted.
    """
    def plain(sd):
        return {k.split(".")[-1].replace("_l0", ""): v for k, v in sd.items()}

    src_sd, dst_sd = plain(src.state_dict()), dst.state_dict()
    if len(src_sd) != len(dst_sd):
        raise ValueError(f"{len(src_sd)} tensors in the source but {len(dst_sd)} in the destination")
    with torch.no_grad():
        for key, value in dst_sd.items():
            name = key.split(".")[-1].replace("_l0", "")
            if name not in src_sd:
                raise ValueError(f"no {name} in the source (it has {sorted(src_sd)})")
            if src_sd[name].shape != value.shape:
                raise ValueError(f"{name}: shape {tuple(src_sd[name].shape)} vs {tuple(value.shape)}")
            value.copy_(src_sd[name])


# ----------------------------------------------------------------- vanishing gradients


def gradient_norms_through_time(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """||dL/dx_t|| for every step t, where L is the sum of the *last* output only.

    How much does the input at step t still influence the state at the end? A small norm for
    early t means the gradient vanished on its way back through the steps.

    ``layer`` maps x (T, B, I) to (outputs (T, B, H), state), like ``Recurrent`` or ``torch.nn.LSTM``.
    Shapes: x (T, B, I) -> norms (T,), each averaged over the batch.
    """
    if x.dim() != 3:
        raise ValueError(f"x must have shape (T, B, I), got {tuple(x.shape)}")
    x = x.detach().clone().requires_grad_(True)
    outputs, _ = layer(x)
    outputs[-1].sum().backward()
    return x.grad.norm(dim=2).mean(dim=1).detach()  # (T,)
