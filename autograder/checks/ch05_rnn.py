"""Hidden checks for the chapter 5 exercise: RNN and LSTM cells, an unrolled LSTM, temperature sampling.

References, all computed live in this process:

* ``rnn_cell`` - ``torch.nn.RNNCell`` (tanh) with the same weights copied in;
* ``lstm_cell`` - ``torch.nn.LSTMCell`` with the same weights;
* ``lstm_layer`` - a one-layer ``torch.nn.LSTM`` (``batch_first=False``) with the same weights;
* ``sample_with_temperature`` - inverse-CDF sampling from ``torch.softmax(logits / T)`` in
  float64, computed here; ``argmax`` for T = 0.

For the three recurrent tasks the checks compare outputs AND gradients: a probe runs
``backward`` through the student's function with a random upstream gradient and returns the
gradients with respect to the input, the state(s) and every weight and bias, which are compared
with those of the ``torch.nn`` module. When the output is wrong, the check also evaluates a few
typical mistakes with the same weights and names the one the student's output matches.

The student's functions run under :func:`autograder.guard.call_student` and
:func:`autograder.guard.run_probe`; they may not use ``torch.nn.RNN``/``RNNCell``/``LSTM``/
``LSTMCell``/``GRU``/``GRUCell``, the functional forms (``torch.lstm_cell``, ``torch._VF``...),
or the course's ``llmcourse.rnn``, ``llmcourse.charlm`` and ``llmcourse.seq2seq``.

Taught in: book/05-rnn
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from autograder.compare import (
    CheckFailed,
    assert_close,
    assert_equal,
    describe,
    fail,
    to_array,
    unpack,
)
from autograder.guard import call_student, run_probe

FORBIDDEN = ("llmcourse.rnn", "llmcourse.charlm", "llmcourse.seq2seq", "torch.nn.modules.rnn")
FORBIDDEN_CALLABLES = (
    "torch.nn.RNN", "torch.nn.RNNCell", "torch.nn.LSTM", "torch.nn.LSTMCell", "torch.nn.GRU",
    "torch.nn.GRUCell", "torch.rnn_tanh_cell", "torch.rnn_relu_cell", "torch.lstm_cell",
    "torch.gru_cell", "torch.rnn_tanh", "torch.rnn_relu", "torch.lstm", "torch.gru",
    "torch._VF.rnn_tanh_cell", "torch._VF.rnn_relu_cell", "torch._VF.lstm_cell", "torch._VF.gru_cell",
    "torch._VF.rnn_tanh", "torch._VF.rnn_relu", "torch._VF.lstm", "torch._VF.gru",
)
WEIGHT_NAMES = ("W_ih", "W_hh", "b_ih", "b_hh")
RTOL, ATOL = 1e-4, 1e-5


def _call(fn, *args, task: str, inputs: dict, **kwargs):
    """Call the student's function under the guard, with this chapter's forbidden modules and callables."""
    return call_student(fn, *args, task=task, inputs=inputs, modules=FORBIDDEN,
                        callables=FORBIDDEN_CALLABLES, **kwargs)


def _probe(probe, *args, task: str, inputs: dict):
    return run_probe(probe, *args, task=task, inputs=inputs, modules=FORBIDDEN,
                     callables=FORBIDDEN_CALLABLES)


# ----------------------------------------------------------------- probes (run beside student code)

def _flatten(value) -> list:
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in _flatten(v)]
    return [value]


def grad_probe(fn, args, upstream):
    """Run ``fn(*args)`` on fresh leaf copies of ``args`` and backward ``sum(out_k * upstream_k)``.

    Returns {"grads": [d/d arg_i, detached, or None if unused]} or {"error": why not}.
    """
    leaves = [a.detach().clone().requires_grad_(True) for a in args]
    outs = _flatten(fn(*leaves))
    if len(outs) != len(upstream):
        return {"error": f"returned {len(outs)} tensors, expected {len(upstream)}"}
    for out, up in zip(outs, upstream):
        if not isinstance(out, torch.Tensor) or not out.requires_grad:
            return {"error": "no gradient flows back through your output: it is not connected to the "
                             "inputs by torch operations (did you use NumPy, .item(), .detach() or "
                             "torch.no_grad()?)"}
        if tuple(out.shape) != tuple(up.shape):
            return {"error": f"an output has shape {tuple(out.shape)}, expected {tuple(up.shape)}"}
    total = sum((out * up).sum() for out, up in zip(outs, upstream))
    grads = torch.autograd.grad(total, leaves, allow_unused=True)
    return {"grads": [None if g is None else g.detach() for g in grads]}


def raises_probe(fn, *args):
    """Call ``fn(*args)``; return the name of the exception it raised, or None if it returned."""
    try:
        fn(*args)
    except Exception as exc:  # noqa: BLE001 - the type of the exception is what is checked
        return type(exc).__name__
    return None


# ----------------------------------------------------------------- helpers

def _weights(gen: torch.Generator, gates: int, n_in: int, H: int, scale: float = 0.5):
    """Random weights (W_ih (gH, I), W_hh (gH, H), b_ih (gH,), b_hh (gH,)), biases clearly non-zero."""
    W_ih = torch.randn(gates * H, n_in, generator=gen) * scale
    W_hh = torch.randn(gates * H, H, generator=gen) * scale
    b_ih = torch.randn(gates * H, generator=gen) * 0.5
    b_hh = torch.randn(gates * H, generator=gen) * 0.5 + 0.3
    return W_ih, W_hh, b_ih, b_hh


def _load(module: nn.Module, weights) -> nn.Module:
    names = [n for n, _ in module.named_parameters()]  # weight_ih(_l0), weight_hh, bias_ih, bias_hh
    with torch.no_grad():
        for name, w in zip(names, weights):
            getattr(module, name).copy_(w)
    return module


def _close_with_hints(got, want, *, what: str, inputs: dict, hints=()) -> None:
    """assert_close; on failure, name the first typical mistake whose output ``got`` matches."""
    try:
        assert_close(got, want, what=what, inputs=inputs, rtol=RTOL, atol=ATOL)
    except CheckFailed as exc:
        arr = to_array(got, what=what, inputs=inputs).astype(float)
        for variant, hint in hints:
            v = variant.detach().double().numpy()
            if v.shape == arr.shape and abs(arr - v).max() <= ATOL + RTOL * abs(v).max():
                raise CheckFailed(f"{exc} - your result matches {hint}") from None
        raise


def _check_grads(result, ref_grads: dict, *, task: str, inputs: dict) -> None:
    """Compare the probe's gradients with the reference ones, in the order of ``ref_grads``."""
    if not isinstance(result, dict) or ("grads" not in result and "error" not in result):
        fail(f"{task}{describe(inputs)}: the gradient probe returned nothing usable")
    if "error" in result:
        fail(f"{task}{describe(inputs)}: gradients could not be computed: {result['error']}")
    grads = result["grads"]
    for (name, want), got in zip(ref_grads.items(), grads):
        if got is None:
            fail(f"gradient wrt {name}{describe(inputs)}: none reaches {name} - your output does not "
                 f"depend on it (is it missing from your formula?)")
        assert_close(got, want, what=f"gradient wrt {name} (backward through your function)",
                     inputs=inputs, rtol=RTOL, atol=ATOL)


def _leaves(**tensors):
    return {k: v.detach().clone().requires_grad_(True) for k, v in tensors.items()}


# ----------------------------------------------------------------- rnn_cell

RNN_CASES = ((0, 3, 4, 4), (1, 1, 1, 1), (2, 2, 5, 3), (3, 5, 3, 7), (4, 4, 6, 6))  # seed, B, I, H


def _rnn_variants(x, h, W_ih, W_hh, b_ih, b_hh):
    pre = x @ W_ih.T + b_ih + h @ W_hh.T + b_hh
    out = [
        (torch.tanh(x @ W_ih.T + b_ih + h @ W_hh.T), "the formula without b_hh (add both biases)"),
        (torch.tanh(x @ W_ih.T + h @ W_hh.T + b_hh), "the formula without b_ih (add both biases)"),
        (torch.sigmoid(pre), "sigmoid instead of tanh"),
        (torch.relu(pre), "relu instead of tanh"),
        (pre, "the pre-activation without tanh"),
        (torch.tanh(x @ W_ih.T + b_ih + b_hh), "a cell that ignores the previous state h"),
    ]
    if W_ih.shape[0] == W_ih.shape[1]:
        out.append((torch.tanh(x @ W_ih + b_ih + h @ W_hh + b_hh),
                    "W_ih and W_hh used without transpose (use x @ W_ih.T: W_ih has shape (H, I))"))
    return out


def check_rnn_cell(student_fn) -> None:
    """rnn_cell(x, h, W_ih, W_hh, b_ih, b_hh) -> h' equal to torch.nn.RNNCell's output and gradients."""
    task = "rnn_cell"
    for seed, B, n_in, H in RNN_CASES:
        inputs = {"B": B, "I": n_in, "H": H, "seed": seed}
        gen = torch.Generator().manual_seed(seed)
        weights = _weights(gen, 1, n_in, H, scale=0.8)
        x, h = torch.randn(B, n_in, generator=gen), torch.randn(B, H, generator=gen) * 0.5
        up = torch.randn(B, H, generator=gen)
        leaves = _leaves(x=x, h=h, **dict(zip(WEIGHT_NAMES, weights)))
        cell = _load(nn.RNNCell(n_in, H, nonlinearity="tanh"), [leaves[n] for n in WEIGHT_NAMES])
        want = cell(leaves["x"], leaves["h"])
        total = (want * up).sum()
        gx, gh, *gw = torch.autograd.grad(total, [leaves["x"], leaves["h"], *cell.parameters()])
        ref_grads = {"x": gx, "h": gh, **dict(zip(WEIGHT_NAMES, gw))}
        got = _call(student_fn, x.clone(), h.clone(), *(w.clone() for w in weights), task=task, inputs=inputs)
        _close_with_hints(got, want, what="h' (the new hidden state)", inputs=inputs,
                          hints=_rnn_variants(x, h, *weights))
        result = _probe(grad_probe, student_fn, [x, h, *weights], [up], task=task, inputs=inputs)
        _check_grads(result, ref_grads, task=task, inputs=inputs)


# ----------------------------------------------------------------- lstm_cell

LSTM_CASES = ((0, 3, 4, 4), (1, 1, 1, 1), (2, 2, 5, 3), (3, 5, 3, 6), (4, 4, 6, 6))  # seed, B, I, H


def _lstm_step(x, h, c, W_ih, W_hh, b_ih, b_hh, *, order="ifgo", act_g=torch.tanh, tanh_c=True,
               use_b_hh=True, use_i=True):
    """The LSTM step with optional mistakes; ``order`` names how the 4H rows are read."""
    gates = x @ W_ih.T + b_ih + h @ W_hh.T + (b_hh if use_b_hh else 0)
    parts = dict(zip(order, gates.chunk(4, dim=1)))
    i, f, g, o = torch.sigmoid(parts["i"]), torch.sigmoid(parts["f"]), act_g(parts["g"]), torch.sigmoid(parts["o"])
    c_next = f * c + (i * g if use_i else g)
    h_next = o * (torch.tanh(c_next) if tanh_c else c_next)
    return h_next, c_next


def _lstm_variants(x, h, c, *weights):
    cases = [
        ({"order": "figo"}, "the input and forget gates swapped (PyTorch stacks the gates i, f, g, o)"),
        ({"order": "ifog"}, "gate order i, f, o, g (PyTorch stacks the gates i, f, g, o)"),
        ({"order": "gifo"}, "gate order g, i, f, o (PyTorch stacks the gates i, f, g, o)"),
        ({"tanh_c": False}, "h' = o * c' without the tanh (h' = o * tanh(c'))"),
        ({"act_g": torch.sigmoid}, "sigmoid on the candidate g (it takes tanh)"),
        ({"use_b_hh": False}, "the formula without b_hh (add both biases)"),
        ({"use_i": False}, "c' = f * c + g without the input gate i"),
    ]
    out = []
    for kwargs, hint in cases:
        hv, cv = _lstm_step(x, h, c, *weights, **kwargs)
        out.append((hv, cv, hint))
    return out


def _check_lstm_pair(got, want_h, want_c, *, variants, inputs: dict, names=("h'", "c'")) -> None:
    hints_h = [(hv, hint) for hv, _, hint in variants]
    hints_c = [(cv, hint) for _, cv, hint in variants]
    # returned (c', h') instead of (h', c')?
    got_h, got_c = got
    arr_h = to_array(got_h, what=names[0], inputs=inputs)
    if arr_h.shape == tuple(want_h.shape):
        if np.allclose(arr_h, want_c.detach().numpy(), rtol=RTOL, atol=ATOL) and \
                not np.allclose(arr_h, want_h.detach().numpy(), rtol=RTOL, atol=ATOL):
            fail(f"{names[0]}{describe(inputs)}: you returned the cell state where the hidden state "
                 f"belongs - return (h', c') in that order")
    _close_with_hints(got_h, want_h, what=f"{names[0]} (the new hidden state)", inputs=inputs, hints=hints_h)
    _close_with_hints(got_c, want_c, what=f"{names[1]} (the new cell state)", inputs=inputs, hints=hints_c)


def check_lstm_cell(student_fn) -> None:
    """lstm_cell(x, h, c, W_ih, W_hh, b_ih, b_hh) -> (h', c') equal to torch.nn.LSTMCell's, with gradients."""
    task = "lstm_cell"
    for seed, B, n_in, H in LSTM_CASES:
        inputs = {"B": B, "I": n_in, "H": H, "seed": seed}
        gen = torch.Generator().manual_seed(100 + seed)
        weights = _weights(gen, 4, n_in, H, scale=0.7)
        x = torch.randn(B, n_in, generator=gen)
        h, c = torch.randn(B, H, generator=gen) * 0.5, torch.randn(B, H, generator=gen)
        up_h, up_c = torch.randn(B, H, generator=gen), torch.randn(B, H, generator=gen)
        leaves = _leaves(x=x, h=h, c=c)
        cell = _load(nn.LSTMCell(n_in, H), weights)
        want_h, want_c = cell(leaves["x"], (leaves["h"], leaves["c"]))
        total = (want_h * up_h).sum() + (want_c * up_c).sum()
        gx, gh, gc, *gw = torch.autograd.grad(total, [leaves["x"], leaves["h"], leaves["c"], *cell.parameters()])
        ref_grads = {"x": gx, "h": gh, "c": gc, **dict(zip(WEIGHT_NAMES, gw))}
        got = _call(student_fn, x.clone(), h.clone(), c.clone(), *(w.clone() for w in weights),
                    task=task, inputs=inputs)
        got = unpack(got, ("h_next", "c_next"), what=task, inputs=inputs)
        _check_lstm_pair(got, want_h, want_c, variants=_lstm_variants(x, h, c, *weights), inputs=inputs)
        result = _probe(grad_probe, student_fn, [x, h, c, *weights], [up_h, up_c], task=task, inputs=inputs)
        _check_grads(result, ref_grads, task=task, inputs=inputs)


# ----------------------------------------------------------------- lstm_layer

LAYER_CASES = ((0, 5, 3, 4, 4), (1, 1, 1, 1, 1), (2, 7, 2, 3, 5), (3, 4, 6, 5, 3))  # seed, T, B, I, H


def _layer_variants(x, h0, c0, *weights):
    def run(mode):
        h, c, outs, first = h0, c0, [], None
        for x_t in x:
            h_in = h0 if mode == "no_h_carry" else h
            c_in = c0 if mode == "no_c_carry" else c
            h, c = _lstm_step(x_t, h_in, c_in, *weights)
            outs.append(c if mode == "outputs_c" else h)
            first = (h, c) if first is None else first
        outputs = torch.stack(outs)
        if mode == "reversed":
            outputs = outputs.flip(0)
        last = first if mode == "first_state" else (h, c)
        return outputs, last

    hints = {
        "no_h_carry": "a layer that does not carry h from step to step (every step starts from h0)",
        "no_c_carry": "a layer that does not carry c from step to step (every step starts from c0)",
        "outputs_c": "outputs that stack the cell states c_t instead of the hidden states h_t",
        "reversed": "outputs stacked in reverse time order",
        "first_state": "the state after the FIRST step instead of the last",
    }
    return [(*run(mode), hint) for mode, hint in hints.items()]


def check_lstm_layer(student_fn) -> None:
    """lstm_layer(x, h0, c0, W_ih, W_hh, b_ih, b_hh) -> (outputs (T, B, H), (h_T, c_T)) equal to torch.nn.LSTM's."""
    task = "lstm_layer"
    for seed, T, B, n_in, H in LAYER_CASES:
        inputs = {"T": T, "B": B, "I": n_in, "H": H, "seed": seed}
        gen = torch.Generator().manual_seed(200 + seed)
        weights = _weights(gen, 4, n_in, H, scale=0.6)
        x = torch.randn(T, B, n_in, generator=gen)
        h0, c0 = torch.randn(B, H, generator=gen) * 0.5, torch.randn(B, H, generator=gen)
        ups = [torch.randn(T, B, H, generator=gen), torch.randn(B, H, generator=gen),
               torch.randn(B, H, generator=gen)]
        leaves = _leaves(x=x, h0=h0, c0=c0)
        layer = _load(nn.LSTM(n_in, H, batch_first=False), weights)
        want_out, (want_h, want_c) = layer(leaves["x"], (leaves["h0"][None], leaves["c0"][None]))
        want_h, want_c = want_h[0], want_c[0]
        total = (want_out * ups[0]).sum() + (want_h * ups[1]).sum() + (want_c * ups[2]).sum()
        gx, gh, gc, *gw = torch.autograd.grad(total, [leaves["x"], leaves["h0"], leaves["c0"], *layer.parameters()])
        ref_grads = {"x": gx, "h0": gh, "c0": gc, **dict(zip(WEIGHT_NAMES, gw))}

        got = _call(student_fn, x.clone(), h0.clone(), c0.clone(), *(w.clone() for w in weights),
                    task=task, inputs=inputs)
        outputs, last = unpack(got, ("outputs", "(h_T, c_T)"), what=task, inputs=inputs)
        last = unpack(last, ("h_T", "c_T"), what=f"{task} (second item)", inputs=inputs)
        variants = _layer_variants(x, h0, c0, *weights)
        _close_with_hints(outputs, want_out, what="outputs (T, B, H): h_t at every step", inputs=inputs,
                          hints=[(o, hint) for o, _, hint in variants])
        _check_lstm_pair(last, want_h, want_c, variants=[(hc[0], hc[1], hint) for _, hc, hint in variants],
                         inputs=inputs, names=("h_T", "c_T"))
        result = _probe(grad_probe, student_fn, [x, h0, c0, *weights], ups, task=task, inputs=inputs)
        _check_grads(result, ref_grads, task=task, inputs=inputs)


# ----------------------------------------------------------------- sample_with_temperature

def inverse_cdf_reference(logits: torch.Tensor, temperature: float, u: torch.Tensor) -> torch.Tensor:
    """Smallest k with cumsum(softmax(logits / T))[k] > u, row by row, in float64; argmax for T = 0."""
    logits = logits.double()
    if temperature == 0:
        return logits.argmax(dim=1)
    cdf = torch.softmax(logits / temperature, dim=1).cumsum(dim=1)  # (B, V)
    return (cdf <= u.double()[:, None]).sum(dim=1).clamp(max=logits.shape[1] - 1)


def _safe_u(cdf: torch.Tensor, gen: torch.Generator, margin: float = 1e-3) -> torch.Tensor:
    """One uniform number per row, at least ``margin`` away from every cdf value (no rounding ties)."""
    u = torch.empty(cdf.shape[0], dtype=torch.float64)
    for b in range(cdf.shape[0]):
        while True:
            cand = torch.rand((), generator=gen, dtype=torch.float64) * (1 - 2 * margin)
            if (cdf[b] - cand).abs().min() > margin:
                u[b] = cand
                break
    return u


def _sampling_hints(logits, temperature, u):
    out = []
    if temperature not in (0, 1):
        out.append((inverse_cdf_reference(logits * temperature, 1.0, u),
                    "sampling from softmax(logits * T): divide the logits by the temperature"))
        out.append((inverse_cdf_reference(logits, 1.0, u), "sampling that ignores the temperature"))
    raw = logits.double().cumsum(dim=1)
    out.append(((raw <= u.double()[:, None]).sum(dim=1).clamp(max=logits.shape[1] - 1),
                "an inverse CDF of the raw logits: turn them into probabilities with a softmax first"))
    out.append((logits.argmax(dim=1), "the argmax (greedy): sample with u unless T = 0"))
    return out


def _equal_with_hints(got, want, *, what, inputs, hints) -> None:
    try:
        assert_equal(got, want, what=what, inputs=inputs)
    except CheckFailed as exc:
        arr = to_array(got, what=what, inputs=inputs)
        for variant, hint in hints:
            if arr.shape == tuple(variant.shape) and (arr == variant.numpy()).all():
                raise CheckFailed(f"{exc} - your result matches {hint}") from None
        raise


def check_sample_with_temperature(student_fn) -> None:
    """sample_with_temperature(logits, temperature, u) -> ids (B,) by inverse CDF of softmax(logits / T)."""
    task = "sample_with_temperature"
    what = "sampled ids (smallest k with cdf[k] > u)"
    # 1. exact inverse CDF for random logits, several temperatures
    for seed, (B, V) in enumerate(((4, 5), (1, 3), (6, 10), (3, 27))):
        gen = torch.Generator().manual_seed(300 + seed)
        logits = torch.randn(B, V, generator=gen) * 2
        for temperature in (1.0, 0.5, 2.0):
            cdf = torch.softmax(logits.double() / temperature, dim=1).cumsum(dim=1)
            u = _safe_u(cdf, gen)
            inputs = {"B": B, "V": V, "T": temperature, "seed": seed}
            want = inverse_cdf_reference(logits, temperature, u)
            got = _call(student_fn, logits.clone(), temperature, u.float(), task=task, inputs=inputs)
            _equal_with_hints(got, want, what=what, inputs=inputs,
                              hints=_sampling_hints(logits, temperature, u))
    # 2. the frequencies over an even grid of u follow softmax(logits / T)
    N = 2000
    gen = torch.Generator().manual_seed(400)
    logits = torch.randn(1, 6, generator=gen) * 1.5
    for temperature in (1.0, 0.7, 3.0):
        inputs = {"V": 6, "T": temperature, "u": f"the grid (k + 0.5) / {N}", "seed": 400}
        u = (torch.arange(N, dtype=torch.float64) + 0.5) / N
        got = _call(student_fn, logits.expand(N, 6).clone(), temperature, u.float(), task=task, inputs=inputs)
        ids = to_array(got, what=what, inputs=inputs)
        if ids.shape != (N,):
            fail(f"{what}{describe(inputs)}: shape {tuple(ids.shape)} but expected ({N},)")
        freq = torch.bincount(torch.as_tensor(ids.astype("int64")).clamp(0, 5), minlength=6).double() / N
        p = torch.softmax(logits[0].double() / temperature, dim=0)
        worst = int((freq - p).abs().argmax())
        if (freq - p).abs().max() > 2.0 / N:
            fail(f"sampling frequencies{describe(inputs)}: id {worst} came out {freq[worst]:.4f} of the time "
                 f"but softmax(logits / T) gives it {p[worst]:.4f}; frequencies {freq.numpy().round(3).tolist()} "
                 f"vs probabilities {p.numpy().round(3).tolist()}")
    # 3. T = 0 is greedy; a tiny T is (almost surely) greedy too
    gen = torch.Generator().manual_seed(500)
    logits = torch.randn(5, 8, generator=gen) * 3
    u = torch.rand(5, generator=gen)
    for temperature in (0.0, 1e-3):
        inputs = {"B": 5, "V": 8, "T": temperature, "seed": 500}
        got = _call(student_fn, logits.clone(), temperature, u.clone(), task=task, inputs=inputs)
        try:
            assert_equal(got, logits.argmax(dim=1), what=f"sampled ids at T={temperature} (should be the argmax)",
                         inputs=inputs)
        except CheckFailed as exc:
            why = ("T = 0 means greedy decoding: return logits.argmax(dim=1) (dividing by 0 gives inf and nan)"
                   if temperature == 0 else
                   "logits / T are in the thousands here, so exp() overflows to inf (inf / inf = nan) "
                   "unless you subtract the row maximum first")
            raise CheckFailed(f"{exc} - {why}") from None
    # 4. large logits must not overflow: subtract the maximum before exp
    logits = torch.tensor([[1000.0, 998.0, 995.0, 990.0], [-50.0, 300.0, 299.0, 0.0]])
    for temperature in (1.0, 0.5):
        cdf = torch.softmax(logits.double() / temperature, dim=1).cumsum(dim=1)
        u = torch.tensor([0.5, 0.6], dtype=torch.float64)
        if (cdf - u[:, None]).abs().min() < 1e-3:
            u = _safe_u(cdf, torch.Generator().manual_seed(600))
        inputs = {"logits": logits.tolist(), "T": temperature, "u": u.tolist()}
        want = inverse_cdf_reference(logits, temperature, u)
        got = _call(student_fn, logits.clone(), temperature, u.float(), task=task, inputs=inputs)
        try:
            assert_equal(got, want, what=what, inputs=inputs)
        except CheckFailed as exc:
            raise CheckFailed(f"{exc} - with logits this large exp() overflows to inf (inf / inf = nan): "
                              f"subtract the row maximum before exp, or use torch.softmax") from None
    # 5. an invalid temperature raises ValueError
    logits = torch.tensor([[0.1, 0.5, -0.3]])
    for temperature in (-1.0, -1e-6, float("nan")):
        inputs = {"T": temperature}
        raised = _probe(raises_probe, student_fn, logits.clone(), temperature, torch.tensor([0.5]),
                        task=task, inputs=inputs)
        if raised != "ValueError":
            got = "returned normally" if raised is None else f"raised {raised}"
            fail(f"{task}{describe(inputs)}: expected ValueError for a temperature that is negative or "
                 f"not a number, but your function {got}")


__all__ = ["check_rnn_cell", "check_lstm_cell", "check_lstm_layer", "check_sample_with_temperature",
           "grad_probe", "raises_probe", "inverse_cdf_reference"]
