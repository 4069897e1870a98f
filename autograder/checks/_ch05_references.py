"""References and typical mistakes for the chapter 5 checks (a helper module, not an assignment).

The references are the ``torch.nn`` modules run in float64 with the check's weights copied in:
``torch.nn.RNNCell`` (tanh), ``torch.nn.LSTMCell`` and a one-layer ``torch.nn.LSTM``
(``batch_first=False``). Each returns its outputs and the float64 gradients of
``sum_k(out_k * upstream_k)`` with respect to the inputs, the states and every weight.

The mistakes are the wrong formulas students write most often; each ``*_mistakes`` function
returns ``(explanation, wrong)`` pairs for :func:`autograder.compare.assert_close`'s ``hints``.
"""

from __future__ import annotations

import torch
from torch import nn

WEIGHT_NAMES = ("W_ih", "W_hh", "b_ih", "b_hh")


def random_weights(gen: torch.Generator, gates: int, n_in: int, H: int, scale: float):
    """(W_ih (gH, I), W_hh (gH, H), b_ih (gH,), b_hh (gH,)) in float32, biases clearly non-zero."""
    W_ih = torch.randn(gates * H, n_in, generator=gen) * scale
    W_hh = torch.randn(gates * H, H, generator=gen) * scale
    b_ih = torch.randn(gates * H, generator=gen) * 0.5
    b_hh = torch.randn(gates * H, generator=gen) * 0.5 + 0.3
    return W_ih, W_hh, b_ih, b_hh


def _float64_module(cls, *args, weights, **kwargs) -> nn.Module:
    """``cls(*args)`` in float64 with ``weights`` copied into its parameters (in their order)."""
    with torch.random.fork_rng(devices=[]):  # the default initialisation must not move the global RNG
        module = cls(*args, **kwargs, dtype=torch.float64)
    with torch.no_grad():
        for p, w in zip(module.parameters(), weights):
            p.copy_(w)
    return module


def _run(module, inputs: dict, forward, upstream):
    """(detached float64 outputs, {name: float64 gradient}) for ``forward(module, **leaves)``."""
    leaves = {k: v.double().requires_grad_(True) for k, v in inputs.items()}
    outs = forward(module, **leaves)
    total = sum((o * u.double()).sum() for o, u in zip(outs, upstream))
    grads = torch.autograd.grad(total, [*leaves.values(), *module.parameters()])
    return [o.detach() for o in outs], dict(zip([*leaves, *WEIGHT_NAMES], grads))


def rnn_cell_reference(x, h, weights, up):
    """torch.nn.RNNCell: (h', gradients wrt x, h, W_ih, W_hh, b_ih, b_hh)."""
    cell = _float64_module(nn.RNNCell, x.shape[1], h.shape[1], nonlinearity="tanh", weights=weights)
    (out,), grads = _run(cell, {"x": x, "h": h}, lambda m, x, h: (m(x, h),), [up])
    return out, grads


def lstm_cell_reference(x, h, c, weights, ups):
    """torch.nn.LSTMCell: ((h', c'), gradients wrt x, h, c and the weights)."""
    cell = _float64_module(nn.LSTMCell, x.shape[1], h.shape[1], weights=weights)
    outs, grads = _run(cell, {"x": x, "h": h, "c": c}, lambda m, x, h, c: m(x, (h, c)), ups)
    return tuple(outs), grads


def lstm_layer_reference(x, h0, c0, weights, ups):
    """A one-layer torch.nn.LSTM: ((outputs, h_T, c_T), gradients wrt x, h0, c0 and the weights)."""
    def forward(m, x, h0, c0):
        outputs, (h, c) = m(x, (h0[None], c0[None]))
        return outputs, h[0], c[0]

    layer = _float64_module(nn.LSTM, x.shape[2], h0.shape[1], batch_first=False, weights=weights)
    outs, grads = _run(layer, {"x": x, "h0": h0, "c0": c0}, forward, ups)
    return tuple(outs), grads


# ----------------------------------------------------------------- typical mistakes

def rnn_mistakes(x, h, W_ih, W_hh, b_ih, b_hh) -> list:
    pre = x @ W_ih.T + b_ih + h @ W_hh.T + b_hh
    hints = [
        ("your result matches the formula without b_hh (add both biases)",
         lambda: torch.tanh(x @ W_ih.T + b_ih + h @ W_hh.T)),
        ("your result matches the formula without b_ih (add both biases)",
         lambda: torch.tanh(x @ W_ih.T + h @ W_hh.T + b_hh)),
        ("your result matches sigmoid instead of tanh", lambda: torch.sigmoid(pre)),
        ("your result matches relu instead of tanh", lambda: torch.relu(pre)),
        ("your result matches the pre-activation without tanh", lambda: pre),
        ("your result matches a cell that ignores the previous state h", lambda: torch.tanh(x @ W_ih.T + b_ih + b_hh)),
    ]
    if W_ih.shape[0] == W_ih.shape[1]:
        hints.append(("your result matches W_ih and W_hh used without transpose (use x @ W_ih.T: W_ih has "
                      "shape (H, I))", lambda: torch.tanh(x @ W_ih + b_ih + h @ W_hh + b_hh)))
    return hints


def lstm_step(x, h, c, W_ih, W_hh, b_ih, b_hh, *, order="ifgo", act_g=torch.tanh, tanh_c=True,
              use_b_hh=True, use_i=True):
    """One LSTM step with optional mistakes; ``order`` names how the 4H rows are read."""
    gates = x @ W_ih.T + b_ih + h @ W_hh.T + (b_hh if use_b_hh else 0)
    parts = dict(zip(order, gates.chunk(4, dim=1)))
    i, f, g, o = torch.sigmoid(parts["i"]), torch.sigmoid(parts["f"]), act_g(parts["g"]), torch.sigmoid(parts["o"])
    c_next = f * c + (i * g if use_i else g)
    h_next = o * (torch.tanh(c_next) if tanh_c else c_next)
    return h_next, c_next


LSTM_MISTAKES = (
    ({"order": "figo"}, "the input and forget gates swapped (PyTorch stacks the gates i, f, g, o)"),
    ({"order": "ifog"}, "gate order i, f, o, g (PyTorch stacks the gates i, f, g, o)"),
    ({"order": "gifo"}, "gate order g, i, f, o (PyTorch stacks the gates i, f, g, o)"),
    ({"tanh_c": False}, "h' = o * c' without the tanh (h' = o * tanh(c'))"),
    ({"act_g": torch.sigmoid}, "sigmoid on the candidate g (it takes tanh)"),
    ({"use_b_hh": False}, "the formula without b_hh (add both biases)"),
    ({"use_i": False}, "c' = f * c + g without the input gate i"),
)


def lstm_cell_mistakes(x, h, c, *weights, which: int) -> list:
    """Hints for h' (``which=0``) or c' (``which=1``) of one LSTM step."""
    return [(f"your result matches {hint}", lambda kw=kwargs: lstm_step(x, h, c, *weights, **kw)[which])
            for kwargs, hint in LSTM_MISTAKES]


LAYER_MISTAKES = {
    "no_h_carry": "a layer that does not carry h from step to step (every step starts from h0)",
    "no_c_carry": "a layer that does not carry c from step to step (every step starts from c0)",
    "outputs_c": "outputs that stack the cell states c_t instead of the hidden states h_t",
    "reversed": "outputs stacked in reverse time order",
    "first_state": "the state after the FIRST step instead of the last",
}


def _wrong_layer(x, h0, c0, weights, mode: str):
    h, c, outs, first = h0, c0, [], None
    for x_t in x:
        h, c = lstm_step(x_t, h0 if mode == "no_h_carry" else h, c0 if mode == "no_c_carry" else c, *weights)
        outs.append(c if mode == "outputs_c" else h)
        first = (h, c) if first is None else first
    outputs = torch.stack(outs).flip(0) if mode == "reversed" else torch.stack(outs)
    return outputs, *(first if mode == "first_state" else (h, c))


def lstm_layer_mistakes(x, h0, c0, *weights, which: int) -> list:
    """Hints for the outputs (``which=0``), h_T (1) or c_T (2) of an unrolled LSTM."""
    return [(f"your result matches {hint}", lambda m=mode: _wrong_layer(x, h0, c0, weights, m)[which])
            for mode, hint in LAYER_MISTAKES.items()]
