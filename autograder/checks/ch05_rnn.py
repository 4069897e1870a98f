"""Hidden checks for the chapter 5 exercise: RNN and LSTM cells, an unrolled LSTM, temperature sampling.

References, all computed live in this process (:mod:`autograder.checks._ch05_references`):

* ``rnn_cell`` - ``torch.nn.RNNCell`` (tanh) in float64 with the same weights copied in;
* ``lstm_cell`` - ``torch.nn.LSTMCell`` in float64 with the same weights;
* ``lstm_layer`` - a one-layer ``torch.nn.LSTM`` (``batch_first=False``) in float64;
* ``sample_with_temperature`` - inverse-CDF sampling from ``torch.softmax(logits / T)`` in
  float64, computed here; ``argmax`` for T = 0.

For the three recurrent tasks the checks compare outputs AND gradients: a probe runs
``backward`` through the student's function with a random upstream gradient and returns the
gradients with respect to the input, the state(s) and every weight and bias. When the output is
wrong, the check evaluates the typical mistakes with the same weights and names the one the
student's output matches. Every random input comes from :func:`autograder.secret.hidden_torch_generator`.

Taught in: book/05-rnn
"""

from __future__ import annotations

import math

import torch

from autograder.checks._ch05_references import (
    lstm_cell_mistakes,
    lstm_cell_reference,
    lstm_layer_mistakes,
    lstm_layer_reference,
    random_weights,
    rnn_cell_reference,
    rnn_mistakes,
)
from autograder.compare import (
    CheckFailed,
    assert_close,
    assert_equal,
    describe,
    fail,
    probe_result,
    to_array,
    unpack,
)
from autograder.guard import call_student, run_probe
from autograder.secret import hidden_torch_generator
from autograder.spec import Task

LIBRARY = ("llmcourse.rnn", "llmcourse.charlm", "llmcourse.seq2seq")
RECURRENT = dict(
    modules=LIBRARY + ("torch.nn.modules.rnn",),
    callables=("torch.nn.RNN", "torch.nn.RNNCell", "torch.nn.LSTM", "torch.nn.LSTMCell", "torch.nn.GRU",
               "torch.nn.GRUCell", "torch.rnn_tanh_cell", "torch.rnn_relu_cell", "torch.lstm_cell", "torch.gru_cell",
               "torch.rnn_tanh", "torch.rnn_relu", "torch.lstm", "torch.gru"),  # torch._VF.* are these objects
)
RNN, LSTM_CELL, LSTM_LAYER, SAMPLE = TASKS = (
    Task("ch05_rnn_cell", "rnn_cell(x, h, W_ih, W_hh, b_ih, b_hh)", 2, "`h'` `(B, H)`",
         "`torch.nn.RNNCell` (tanh) with the same weights, in float64: output and gradients", **RECURRENT),
    Task("ch05_lstm_cell", "lstm_cell(x, h, c, W_ih, W_hh, b_ih, b_hh)", 3, "`(h', c')`, both `(B, H)`",
         "`torch.nn.LSTMCell` with the same weights, in float64: outputs and gradients", **RECURRENT),
    Task("ch05_lstm_layer", "lstm_layer(x, h0, c0, W_ih, W_hh, b_ih, b_hh)", 3,
         "`(outputs (T, B, H), (h_T, c_T))`",
         "a one-layer `torch.nn.LSTM` with the same weights, in float64: outputs and gradients", **RECURRENT),
    Task("ch05_sample_with_temperature", "sample_with_temperature(logits, temperature, u)", 3, "ids `(B,)`",
         "the inverse CDF of `torch.softmax(logits / T)` in float64", modules=LIBRARY),
)
# Tolerance from the spread of correct float32 implementations against the float64 references: the
# solution and 3-4 rewrites per recurrent task (F.linear, addmm, einsum, float64 inside, hand-written
# sigmoid and tanh, precomputed input projections, recursion), 20 course secrets x every case.
# Largest |got - want| / (1 + |want|): 3.1e-07 for the outputs, 7.2e-07 for the gradients -> 1e-5
# (14x). The nearest planted mistake (sigmoid instead of tanh) is 0.6 away.
TOL = dict(rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------- probes (run beside student code)

def _flatten(value) -> list:
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in _flatten(v)]
    return [value]


def grad_probe(fn, args, upstream):
    """Run ``fn(*args)`` on fresh leaf copies of ``args`` and backward ``sum(out_k * upstream_k)``.

    Returns {"grads": [d/d arg_i, detached, or None if unused]} or {"problem": why not}.
    """
    leaves = [a.detach().clone().requires_grad_(True) for a in args]
    outs = _flatten(fn(*leaves))
    if len(outs) != len(upstream):
        return {"problem": f"gradients could not be computed: returned {len(outs)} tensors, expected {len(upstream)}"}
    for out, up in zip(outs, upstream):
        if not isinstance(out, torch.Tensor) or not out.requires_grad:
            return {"problem": "gradients could not be computed: no gradient flows back through your output: "
                               "it is not connected to the inputs by torch operations (did you use NumPy, "
                               ".item(), .detach() or torch.no_grad()?)"}
        if tuple(out.shape) != tuple(up.shape):
            return {"problem": f"gradients could not be computed: an output has shape {tuple(out.shape)}, "
                               f"expected {tuple(up.shape)}"}
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


# ----------------------------------------------------------------- comparisons

def _check_grads(task: Task, student_fn, args, upstream, ref_grads: dict, inputs: dict) -> None:
    """Backward through the student's function (in the probe); compare with ``ref_grads``, in order."""
    result = run_probe(grad_probe, student_fn, list(args), list(upstream), task=task, inputs=inputs)
    grads = probe_result(result, what=task.name, inputs=inputs)["grads"]
    for (name, want), got in zip(ref_grads.items(), grads):
        if got is None:
            fail(f"gradient wrt {name}{describe(inputs)}: none reaches {name} - your output does not "
                 f"depend on it (is it missing from your formula?)")
        assert_close(got, want, what=f"gradient wrt {name} (backward through your function)", inputs=inputs, **TOL)


def _check_pair(got, want_h, want_c, *, hints_h, hints_c, inputs: dict, names=("h'", "c'")) -> None:
    """Compare the (hidden state, cell state) pair, recognising the two returned in the wrong order."""
    swapped = (f"you returned the cell state where the hidden state belongs - return ({', '.join(names)}) in "
               f"that order", lambda: want_c)
    assert_close(got[0], want_h, what=f"{names[0]} (the new hidden state)", inputs=inputs, hints=[swapped, *hints_h],
                 **TOL)
    assert_close(got[1], want_c, what=f"{names[1]} (the new cell state)", inputs=inputs, hints=hints_c, **TOL)


# ----------------------------------------------------------------- rnn_cell and lstm_cell

RNN_CASES = ((0, 3, 4, 4), (1, 1, 1, 1), (2, 2, 5, 3), (3, 5, 3, 7), (4, 4, 6, 6))  # seed, B, I, H
LSTM_CASES = ((0, 3, 4, 4), (1, 1, 1, 1), (2, 2, 5, 3), (3, 5, 3, 6), (4, 4, 6, 6))  # seed, B, I, H


def check_rnn_cell(student_fn) -> None:
    """rnn_cell(x, h, W_ih, W_hh, b_ih, b_hh) -> h' equal to torch.nn.RNNCell's output and gradients."""
    for seed, B, n_in, H in RNN_CASES:
        inputs = {"B": B, "I": n_in, "H": H, "seed": seed}
        gen = hidden_torch_generator(seed, "ch05.rnn_cell")
        weights = random_weights(gen, 1, n_in, H, scale=0.8)
        x, h = torch.randn(B, n_in, generator=gen), torch.randn(B, H, generator=gen) * 0.5
        up = torch.randn(B, H, generator=gen)
        want, ref_grads = rnn_cell_reference(x, h, weights, up)
        got = call_student(student_fn, x.clone(), h.clone(), *(w.clone() for w in weights), task=RNN,
                           inputs=inputs)
        assert_close(got, want, what="h' (the new hidden state)", inputs=inputs, hints=rnn_mistakes(x, h, *weights),
                     **TOL)
        _check_grads(RNN, student_fn, [x, h, *weights], [up], ref_grads, inputs)


def check_lstm_cell(student_fn) -> None:
    """lstm_cell(x, h, c, W_ih, W_hh, b_ih, b_hh) -> (h', c') equal to torch.nn.LSTMCell's, with gradients."""
    for seed, B, n_in, H in LSTM_CASES:
        inputs = {"B": B, "I": n_in, "H": H, "seed": seed}
        gen = hidden_torch_generator(100 + seed, "ch05.lstm_cell")
        weights = random_weights(gen, 4, n_in, H, scale=0.7)
        x = torch.randn(B, n_in, generator=gen)
        h, c = torch.randn(B, H, generator=gen) * 0.5, torch.randn(B, H, generator=gen)
        ups = torch.randn(B, H, generator=gen), torch.randn(B, H, generator=gen)
        (want_h, want_c), ref_grads = lstm_cell_reference(x, h, c, weights, ups)
        got = call_student(student_fn, x.clone(), h.clone(), c.clone(), *(w.clone() for w in weights),
                           task=LSTM_CELL, inputs=inputs)
        got = unpack(got, ("h_next", "c_next"), what=LSTM_CELL.name, inputs=inputs)
        _check_pair(got, want_h, want_c, inputs=inputs, hints_h=lstm_cell_mistakes(x, h, c, *weights, which=0),
                    hints_c=lstm_cell_mistakes(x, h, c, *weights, which=1))
        _check_grads(LSTM_CELL, student_fn, [x, h, c, *weights], ups, ref_grads, inputs)


# ----------------------------------------------------------------- lstm_layer

LAYER_CASES = ((0, 5, 3, 4, 4), (1, 1, 1, 1, 1), (2, 7, 2, 3, 5), (3, 4, 6, 5, 3))  # seed, T, B, I, H


def check_lstm_layer(student_fn) -> None:
    """lstm_layer(x, h0, c0, W_ih, W_hh, b_ih, b_hh) -> (outputs (T, B, H), (h_T, c_T)) equal to torch.nn.LSTM's."""
    task = LSTM_LAYER.name
    for seed, T, B, n_in, H in LAYER_CASES:
        inputs = {"T": T, "B": B, "I": n_in, "H": H, "seed": seed}
        gen = hidden_torch_generator(200 + seed, "ch05.lstm_layer")
        weights = random_weights(gen, 4, n_in, H, scale=0.6)
        x = torch.randn(T, B, n_in, generator=gen)
        h0, c0 = torch.randn(B, H, generator=gen) * 0.5, torch.randn(B, H, generator=gen)
        ups = [torch.randn(T, B, H, generator=gen), torch.randn(B, H, generator=gen),
               torch.randn(B, H, generator=gen)]
        (want_out, want_h, want_c), ref_grads = lstm_layer_reference(x, h0, c0, weights, ups)
        got = call_student(student_fn, x.clone(), h0.clone(), c0.clone(), *(w.clone() for w in weights),
                           task=LSTM_LAYER, inputs=inputs)
        outputs, last = unpack(got, ("outputs", "(h_T, c_T)"), what=task, inputs=inputs)
        last = unpack(last, ("h_T", "c_T"), what=f"{task} (second item)", inputs=inputs)
        mistakes = [lstm_layer_mistakes(x, h0, c0, *weights, which=k) for k in range(3)]
        assert_close(outputs, want_out, what="outputs (T, B, H): h_t at every step", inputs=inputs,
                     hints=mistakes[0], **TOL)
        _check_pair(last, want_h, want_c, hints_h=mistakes[1], hints_c=mistakes[2], inputs=inputs,
                    names=("h_T", "c_T"))
        _check_grads(LSTM_LAYER, student_fn, [x, h0, c0, *weights], ups, ref_grads, inputs)


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


def _sampling_mistakes(logits, temperature, u):
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


def _equal(got, want, *, what, inputs, mistakes=(), why: str = "") -> None:
    """assert_equal; on failure, name the first mistake ``got`` equals, else add ``why``."""
    try:
        assert_equal(got, want, what=what, inputs=inputs)
    except CheckFailed as exc:
        arr = to_array(got, what=what, inputs=inputs)
        hint = next((h for wrong, h in mistakes if arr.shape == tuple(wrong.shape) and (arr == wrong.numpy()).all()),
                    None)
        raise CheckFailed(f"{exc} - your result matches {hint}" if hint else f"{exc}{why}") from None


def _with_clear_argmax(logits: torch.Tensor, gap: float = 0.05) -> torch.Tensor:
    """``logits`` with each row's largest entry at least ``gap`` above the next (raised where it is not)."""
    top2 = logits.topk(2, dim=1).values
    close = (top2[:, 0] - top2[:, 1]) < gap
    rows = close.nonzero()[:, 0]
    logits[rows, logits[rows].argmax(dim=1)] += gap
    return logits


def check_sample_with_temperature(student_fn) -> None:
    """sample_with_temperature(logits, temperature, u) -> ids (B,) by inverse CDF of softmax(logits / T)."""
    def call(logits, temperature, u, inputs):
        return call_student(student_fn, logits.clone(), temperature, u.float(), task=SAMPLE, inputs=inputs)

    what = "sampled ids (smallest k with cdf[k] > u)"
    # 1. exact inverse CDF for random logits, several temperatures
    for seed, (B, V) in enumerate(((4, 5), (1, 3), (6, 10), (3, 27))):
        gen = hidden_torch_generator(300 + seed, "ch05.sample")
        logits = torch.randn(B, V, generator=gen) * 2
        for temperature in (1.0, 0.5, 2.0):
            u = _safe_u(torch.softmax(logits.double() / temperature, dim=1).cumsum(dim=1), gen)
            inputs = {"B": B, "V": V, "T": temperature, "seed": seed}
            _equal(call(logits, temperature, u, inputs), inverse_cdf_reference(logits, temperature, u), what=what,
                   inputs=inputs, mistakes=_sampling_mistakes(logits, temperature, u))
    # 2. the frequencies over an even grid of u follow softmax(logits / T)
    N = 2000
    logits = torch.randn(1, 6, generator=hidden_torch_generator(400, "ch05.sample")) * 1.5
    for temperature in (1.0, 0.7, 3.0):
        inputs = {"V": 6, "T": temperature, "u": f"the grid (k + 0.5) / {N}", "seed": 400}
        u = (torch.arange(N, dtype=torch.float64) + 0.5) / N
        ids = to_array(call(logits.expand(N, 6), temperature, u, inputs), what=what, inputs=inputs)
        if ids.shape != (N,):
            fail(f"{what}{describe(inputs)}: shape {tuple(ids.shape)} but expected ({N},)")
        freq = torch.bincount(torch.as_tensor(ids.astype("int64")).clamp(0, 5), minlength=6).double() / N
        p = torch.softmax(logits[0].double() / temperature, dim=0)
        worst = int((freq - p).abs().argmax())
        if (freq - p).abs().max() > 2.0 / N:
            fail(f"sampling frequencies{describe(inputs)}: id {worst} came out {freq[worst]:.4f} of the time "
                 f"but softmax(logits / T) gives it {p[worst]:.4f}; frequencies {freq.numpy().round(3).tolist()} "
                 f"vs probabilities {p.numpy().round(3).tolist()}")
    # 3. T = 0 is greedy; so is a tiny T, when each row's largest logit is clearly the largest
    gen = hidden_torch_generator(500, "ch05.sample")
    logits = _with_clear_argmax(torch.randn(5, 8, generator=gen) * 3)
    u = torch.rand(5, generator=gen)
    for temperature in (0.0, 1e-3):
        inputs = {"B": 5, "V": 8, "T": temperature, "seed": 500}
        why = (" - T = 0 means greedy decoding: return logits.argmax(dim=1) (dividing by 0 gives inf and nan)"
               if temperature == 0 else
               " - logits / T are in the thousands here, so exp() overflows to inf (inf / inf = nan) "
               "unless you subtract the row maximum first")
        _equal(call(logits, temperature, u, inputs), logits.argmax(dim=1),
               what=f"sampled ids at T={temperature} (should be the argmax)", inputs=inputs, why=why)
    # 4. large logits must not overflow: subtract the maximum before exp
    logits = torch.tensor([[1000.0, 998.0, 995.0, 990.0], [-50.0, 300.0, 299.0, 0.0]])
    for temperature in (1.0, 0.5):
        u = torch.tensor([0.5, 0.6], dtype=torch.float64)  # 0.1 or more from every cdf value, at both T
        inputs = {"logits": logits.tolist(), "T": temperature, "u": u.tolist()}
        _equal(call(logits, temperature, u, inputs), inverse_cdf_reference(logits, temperature, u), what=what,
               inputs=inputs, why=" - with logits this large exp() overflows to inf (inf / inf = nan): "
                                  "subtract the row maximum before exp, or use torch.softmax")
    # 5. an invalid temperature raises ValueError
    for temperature in (-1.0, -1e-6, math.nan):
        inputs = {"T": temperature}
        raised = run_probe(raises_probe, student_fn, torch.tensor([[0.1, 0.5, -0.3]]), temperature,
                           torch.tensor([0.5]), task=SAMPLE, inputs=inputs)
        if raised != "ValueError":
            got = "returned normally" if raised is None else f"raised {raised}"
            fail(f"{SAMPLE.name}{describe(inputs)}: expected ValueError for a temperature that is negative or "
                 f"not a number, but your function {got}")


__all__ = ["TASKS", "check_rnn_cell", "check_lstm_cell", "check_lstm_layer", "check_sample_with_temperature",
           "grad_probe", "raises_probe", "inverse_cdf_reference"]
