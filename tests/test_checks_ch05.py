"""The chapter 5 checks are fair both ways: correct answers get full marks, planted mistakes fail.

The solution functions come from the nbgrader source notebook itself (setup and answer cells,
executed as a notebook kernel would). Beside them, each task has correct implementations written
differently (F.linear, einsum, float64 inside, hand-written sigmoid and tanh, precomputed input
projections, searchsorted, a Python loop...), which must pass too. Each wrong implementation is a
mistake a student could plausibly make; each must make its check raise CheckFailed with a message
that names what is wrong (the checks recognise the typical mistakes and say which one the output
matches).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from autograder.checks import ch05_rnn as checks
from autograder.compare import CheckFailed
from autograder.guard import ForbiddenCall, static_violations
from tests.notebook_kernel import assert_checks_hold, correct, kernel, planted, solution_of

ASSIGNMENT = "ch05_rnn"
# The mistake the nbgrader round trip in test_autograder_cli plants: (answer cell, wrong code).
ROUND_TRIP_MISTAKE = ("ch05_lstm_layer_answer",
                      "def lstm_layer(x, h0, c0, W_ih, W_hh, b_ih, b_hh):\n"
                      "    outputs = []\n"
                      "    for x_t in x:\n"
                      "        h, c = lstm_cell(x_t, h0, c0, W_ih, W_hh, b_ih, b_hh)\n"  # state not carried
                      "        outputs.append(h)\n"
                      "    return torch.stack(outputs), (h, c)\n")

pytestmark = pytest.mark.ch05


def check_of(task):
    return getattr(checks, task.check)


# ----------------------------------------------------------------- the notebook itself

@pytest.mark.parametrize("task", checks.TASKS, ids=lambda t: t.grade_id)
def test_solution_passes_check(task):
    check_of(task)(solution_of(ASSIGNMENT)[task.name])


def test_library_versions_agree_with_the_check_references():
    """llmcourse.rnn and llmcourse.charlm implement the exercise's contracts (called directly, no guard)."""
    from llmcourse import charlm, rnn

    torch.manual_seed(0)
    x, h, c = torch.randn(2, 3), torch.randn(2, 4), torch.randn(2, 4)
    w = [torch.randn(16, 3), torch.randn(16, 4), torch.randn(16), torch.randn(16)]
    ref = torch.nn.LSTMCell(3, 4)
    with torch.no_grad():
        for p, v in zip(ref.parameters(), w):
            p.copy_(v)
    for got, want in zip(rnn.lstm_cell(x, h, c, *w), ref(x, (h, c))):
        torch.testing.assert_close(got, want)
    logits, u = torch.randn(5, 7), torch.rand(5)
    for t in (0.0, 0.5, 1.0, 2.0):
        assert charlm.sample_with_temperature(logits, t, u).tolist() == \
            checks.inverse_cdf_reference(logits, t, u).tolist()


# ----------------------------------------------------------------- the reference

def test_inverse_cdf_reference_known_answer():
    logits = torch.log(torch.tensor([[0.1, 0.2, 0.7]])).expand(4, 3)
    u = torch.tensor([0.05, 0.15, 0.29, 0.31])
    assert checks.inverse_cdf_reference(logits, 1.0, u).tolist() == [0, 1, 1, 2]
    assert checks.inverse_cdf_reference(logits, 0.0, u).tolist() == [2, 2, 2, 2]


def test_grad_probe_matches_autograd():
    torch.manual_seed(1)
    a, b, up = torch.randn(3, 2), torch.randn(3, 2), torch.randn(3, 2)
    result = checks.grad_probe(torch.mul, [a, b], [up])
    torch.testing.assert_close(result["grads"][0], up * b)
    torch.testing.assert_close(result["grads"][1], up * a)
    assert "problem" in checks.grad_probe(lambda p, q: (p * q).detach(), [a, b], [up])


def test_references_are_the_torch_nn_modules_in_float64():
    """The float64 references equal the float32 torch.nn modules up to float32 rounding, and leave the global RNG alone."""
    from autograder.checks import _ch05_references as refs

    gen = torch.Generator().manual_seed(0)
    weights = refs.random_weights(gen, 4, 3, 5, scale=0.7)
    x, h, c = torch.randn(2, 3, generator=gen), torch.randn(2, 5, generator=gen), torch.randn(2, 5, generator=gen)
    ups = torch.randn(2, 5, generator=gen), torch.randn(2, 5, generator=gen)
    state = torch.random.get_rng_state()
    (h64, c64), grads = refs.lstm_cell_reference(x, h, c, weights, ups)
    assert torch.equal(torch.random.get_rng_state(), state), "building the reference moved the global RNG"
    cell = torch.nn.LSTMCell(3, 5)
    with torch.no_grad():
        for p, w in zip(cell.parameters(), weights):
            p.copy_(w)
    h32, c32 = cell(x, (h, c))
    assert h64.dtype == c64.dtype == grads["W_ih"].dtype == torch.float64
    torch.testing.assert_close(h64.float(), h32, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(c64.float(), c32, rtol=1e-5, atol=1e-6)


def test_tiny_temperature_case_has_a_clear_argmax_under_any_secret():
    logits = torch.tensor([[1.0, 1.01, -2.0], [3.0, 0.0, 2.0]])
    fixed = checks._with_clear_argmax(logits.clone())
    assert fixed.argmax(dim=1).tolist() == [1, 0]
    top2 = fixed.topk(2, dim=1).values
    assert ((top2[:, 0] - top2[:, 1]) >= 0.05).all()
    assert torch.equal(fixed[1], logits[1]), "a row that already has a clear argmax is left alone"


# ----------------------------------------------------------------- correct variants: full marks

def rnn_cell_f_linear(x, h, W_ih, W_hh, b_ih, b_hh):
    return torch.tanh(F.linear(x, W_ih, b_ih) + F.linear(h, W_hh, b_hh))


def rnn_cell_concatenated_float64(x, h, W_ih, W_hh, b_ih, b_hh):
    """One matmul of [x, h] with [W_ih, W_hh], in float64, cast back to float32."""
    xh = torch.cat([x, h], dim=1).double()
    W = torch.cat([W_ih, W_hh], dim=1).double()
    return torch.tanh(xh @ W.T + (b_ih + b_hh).double()).float()


def rnn_cell_einsum_hand_tanh(x, h, W_ih, W_hh, b_ih, b_hh):
    a = torch.einsum("bi,hi->bh", x, W_ih) + torch.einsum("bk,hk->bh", h, W_hh) + b_ih + b_hh
    return 1 - 2 / (torch.exp(2 * a) + 1)  # tanh(a)


def rnn_cell_addmm(x, h, W_ih, W_hh, b_ih, b_hh):
    return torch.addmm(b_hh, h, W_hh.t()).add(torch.addmm(b_ih, x, W_ih.t())).tanh()


def lstm_cell_per_gate_weights(x, h, c, W_ih, W_hh, b_ih, b_hh):
    """Four separate gate computations from row blocks of the weights."""
    H = h.shape[1]

    def gate(k):
        rows = slice(k * H, (k + 1) * H)
        return x @ W_ih[rows].T + h @ W_hh[rows].T + b_ih[rows] + b_hh[rows]

    i, f, g, o = torch.sigmoid(gate(0)), torch.sigmoid(gate(1)), torch.tanh(gate(2)), torch.sigmoid(gate(3))
    c2 = f * c + i * g
    return o * torch.tanh(c2), c2


def lstm_cell_hand_sigmoid(x, h, c, W_ih, W_hh, b_ih, b_hh):
    """sigmoid written out, tanh(z) = 2 sigmoid(2z) - 1, gates from a (B, 4, H) view."""
    def sig(z):
        return 1 / (1 + torch.exp(-z))

    a = F.linear(x, W_ih, b_ih) + F.linear(h, W_hh, b_hh)
    ai, af, ag, ao = a.view(a.shape[0], 4, -1).unbind(dim=1)
    c2 = sig(af) * c + sig(ai) * (2 * sig(2 * ag) - 1)
    return sig(ao) * (2 * sig(2 * c2) - 1), c2


def lstm_cell_float64_einsum(x, h, c, W_ih, W_hh, b_ih, b_hh):
    x, h, c, W_ih, W_hh, b_ih, b_hh = (t.double() for t in (x, h, c, W_ih, W_hh, b_ih, b_hh))
    a = torch.einsum("bi,gi->bg", x, W_ih) + torch.einsum("bh,gh->bg", h, W_hh) + b_ih + b_hh
    H = h.shape[1]
    i, f, g, o = a[:, :H].sigmoid(), a[:, H:2 * H].sigmoid(), a[:, 2 * H:3 * H].tanh(), a[:, 3 * H:].sigmoid()
    c2 = f * c + i * g
    return (o * c2.tanh()).float(), c2.float()


def lstm_layer_precomputed_inputs(x, h0, c0, W_ih, W_hh, b_ih, b_hh):
    """The input projection of all steps in one matmul; outputs written into a preallocated tensor."""
    T, H = x.shape[0], h0.shape[1]
    xw = x @ W_ih.T + b_ih  # (T, B, 4H)
    outputs = torch.zeros(T, *h0.shape, dtype=x.dtype)
    h, c = h0, c0
    for t in range(T):
        i, f, g, o = (xw[t] + h @ W_hh.T + b_hh).split(H, dim=1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        outputs[t] = h
    return outputs, (h, c)


def lstm_layer_concatenated_state_float64(x, h0, c0, W_ih, W_hh, b_ih, b_hh):
    """The state kept as one (B, 2H) tensor [h, c], in float64."""
    H = h0.shape[1]
    state = torch.cat([h0, c0], dim=1).double()
    W_ih, W_hh, b = W_ih.double(), W_hh.double(), (b_ih + b_hh).double()
    outs = []
    for x_t in x.double().unbind(0):
        h, c = state[:, :H], state[:, H:]
        i, f, g, o = (x_t @ W_ih.T + h @ W_hh.T + b).chunk(4, dim=1)
        c = f.sigmoid() * c + i.sigmoid() * g.tanh()
        h = o.sigmoid() * c.tanh()
        state = torch.cat([h, c], dim=1)
        outs.append(h)
    return torch.stack(outs).float(), (state[:, :H].float(), state[:, H:].float())


def _lstm_step(h, c, x_t, W_ih, W_hh, b_ih, b_hh):
    i, f, g, o = (torch.addmm(b_ih, x_t, W_ih.T) + torch.addmm(b_hh, h, W_hh.T)).chunk(4, 1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


def lstm_layer_recursive(x, h0, c0, W_ih, W_hh, b_ih, b_hh):
    """One step, then the rest of the sequence by recursion."""
    h, c = _lstm_step(h0, c0, x[0], W_ih, W_hh, b_ih, b_hh)
    if x.shape[0] == 1:
        return h[None], (h, c)
    rest, last = lstm_layer_recursive(x[1:], h, c, W_ih, W_hh, b_ih, b_hh)
    return torch.cat([h[None], rest]), last


def sample_searchsorted(logits, temperature, u):
    if temperature != temperature or temperature < 0:
        raise ValueError("temperature must be >= 0")
    if temperature == 0:
        return torch.argmax(logits, dim=-1)
    cdf = torch.cumsum(torch.softmax(logits / temperature, dim=-1), dim=-1)
    ids = torch.searchsorted(cdf, u.reshape(-1, 1).to(cdf.dtype), right=True).squeeze(1)  # first cdf > u
    return ids.clamp(max=logits.shape[-1] - 1)


def sample_log_softmax_float64(logits, temperature, u):
    if math.isnan(temperature) or temperature < 0:
        raise ValueError(f"bad temperature {temperature}")
    if temperature == 0:
        return logits.argmax(1)
    cdf = torch.log_softmax(logits.double() / temperature, dim=1).exp().cumsum(1)
    above = cdf > u.double().unsqueeze(1)
    first = above.int().argmax(dim=1)  # the first True
    return torch.where(above.any(dim=1), first, torch.full_like(first, logits.shape[1] - 1))


def sample_python_loop(logits, temperature, u):
    if not temperature >= 0:
        raise ValueError("temperature must be a non-negative number")
    out = []
    for row, u_b in zip(logits, u.tolist()):
        if temperature == 0:
            out.append(int(row.argmax()))
            continue
        z = row / temperature
        e = torch.exp(z - z.max())
        total, k = 0.0, len(row) - 1
        for j, p_j in enumerate((e / e.sum()).tolist()):
            total += p_j
            if total > u_b:
                k = j
                break
        out.append(k)
    return torch.tensor(out, dtype=torch.long)


CORRECT = {
    "check_rnn_cell": (rnn_cell_f_linear, rnn_cell_concatenated_float64, rnn_cell_einsum_hand_tanh, rnn_cell_addmm),
    "check_lstm_cell": (lstm_cell_per_gate_weights, lstm_cell_hand_sigmoid, lstm_cell_float64_einsum),
    "check_lstm_layer": (lstm_layer_precomputed_inputs, lstm_layer_concatenated_state_float64, lstm_layer_recursive),
    "check_sample_with_temperature": (sample_searchsorted, sample_log_softmax_float64, sample_python_loop),
}


@pytest.mark.parametrize("fn", correct(*CORRECT["check_rnn_cell"]))
def test_check_rnn_cell_gives_full_marks_to_correct_variants(fn):
    checks.check_rnn_cell(fn)


@pytest.mark.parametrize("fn", correct(*CORRECT["check_lstm_cell"]))
def test_check_lstm_cell_gives_full_marks_to_correct_variants(fn):
    checks.check_lstm_cell(fn)


@pytest.mark.parametrize("fn", correct(*CORRECT["check_lstm_layer"]))
def test_check_lstm_layer_gives_full_marks_to_correct_variants(fn):
    checks.check_lstm_layer(fn)


@pytest.mark.parametrize("fn", correct(*CORRECT["check_sample_with_temperature"]))
def test_check_sample_with_temperature_gives_full_marks_to_correct_variants(fn):
    checks.check_sample_with_temperature(fn)


# ----------------------------------------------------------------- planted mistakes: rnn_cell

def rnn_no_b_hh(x, h, W_ih, W_hh, b_ih, b_hh):
    return torch.tanh(x @ W_ih.T + b_ih + h @ W_hh.T)


def rnn_no_transpose(x, h, W_ih, W_hh, b_ih, b_hh):
    return torch.tanh(x @ W_ih + b_ih + h @ W_hh + b_hh)


def rnn_sigmoid(x, h, W_ih, W_hh, b_ih, b_hh):
    return torch.sigmoid(x @ W_ih.T + b_ih + h @ W_hh.T + b_hh)


def rnn_ignores_h(x, h, W_ih, W_hh, b_ih, b_hh):
    return torch.tanh(x @ W_ih.T + b_ih + b_hh)


def rnn_via_numpy(x, h, W_ih, W_hh, b_ih, b_hh):
    import numpy as np
    x, h, W_ih, W_hh, b_ih, b_hh = (t.detach().numpy() for t in (x, h, W_ih, W_hh, b_ih, b_hh))
    pre = x @ W_ih.T + b_ih + h @ W_hh.T + b_hh
    return torch.from_numpy(np.tanh(pre))


def rnn_detached(x, h, W_ih, W_hh, b_ih, b_hh):
    with torch.no_grad():
        return torch.tanh(x @ W_ih.T + b_ih + h @ W_hh.T + b_hh)


RNN_MISTAKES = planted(
    (rnn_no_b_hh, r"h' \(the new hidden state\) for B=3, I=4, H=4, seed=0: max .* matches the formula without b_hh"),
    (rnn_no_transpose, r"for B=3, I=4, H=4, seed=0: .*matches W_ih and W_hh used without transpose"),
    (rnn_sigmoid, r"h' \(the new hidden state\) for B=3.*matches sigmoid instead of tanh"),
    (rnn_ignores_h, r"matches a cell that ignores the previous state h"),
    (rnn_via_numpy, r"rnn_cell for B=3, I=4, H=4, seed=0: gradients could not be computed: no gradient flows"),
    (rnn_detached, r"gradients could not be computed: .*torch.no_grad"),
)


@pytest.mark.parametrize("wrong, match", RNN_MISTAKES)
def test_check_rnn_cell_rejects(wrong, match):
    with pytest.raises(CheckFailed, match=match):
        checks.check_rnn_cell(wrong)


# ----------------------------------------------------------------- planted mistakes: lstm_cell

def _lstm(x, h, c, W_ih, W_hh, b_ih, b_hh, order="ifgo", tanh_c=True, g_act=torch.tanh, b2=True,
          swap_out=False):
    a = x @ W_ih.T + b_ih + h @ W_hh.T + (b_hh if b2 else 0)
    parts = dict(zip(order, a.chunk(4, dim=1)))
    i, f, o = torch.sigmoid(parts["i"]), torch.sigmoid(parts["f"]), torch.sigmoid(parts["o"])
    g = g_act(parts["g"])
    c2 = f * c + i * g
    h2 = o * (torch.tanh(c2) if tanh_c else c2)
    return (c2, h2) if swap_out else (h2, c2)


def lstm_forget_as_input(x, h, c, W_ih, W_hh, b_ih, b_hh):
    return _lstm(x, h, c, W_ih, W_hh, b_ih, b_hh, order="figo")


def lstm_order_ifog(x, h, c, W_ih, W_hh, b_ih, b_hh):
    return _lstm(x, h, c, W_ih, W_hh, b_ih, b_hh, order="ifog")


def lstm_h_without_tanh(x, h, c, W_ih, W_hh, b_ih, b_hh):
    return _lstm(x, h, c, W_ih, W_hh, b_ih, b_hh, tanh_c=False)


def lstm_sigmoid_g(x, h, c, W_ih, W_hh, b_ih, b_hh):
    return _lstm(x, h, c, W_ih, W_hh, b_ih, b_hh, g_act=torch.sigmoid)


def lstm_no_b_hh(x, h, c, W_ih, W_hh, b_ih, b_hh):
    return _lstm(x, h, c, W_ih, W_hh, b_ih, b_hh, b2=False)


def lstm_returns_c_h(x, h, c, W_ih, W_hh, b_ih, b_hh):
    return _lstm(x, h, c, W_ih, W_hh, b_ih, b_hh, swap_out=True)


def lstm_returns_h_only(x, h, c, W_ih, W_hh, b_ih, b_hh):
    return _lstm(x, h, c, W_ih, W_hh, b_ih, b_hh)[0]


LSTM_CELL_MISTAKES = planted(
    (lstm_forget_as_input, r"for B=3, I=4, H=4, seed=0: .*matches the input and forget gates swapped"),
    (lstm_order_ifog, r"matches gate order i, f, o, g"),
    (lstm_h_without_tanh, r"h' \(the new hidden state\) for B=3.*matches h' = o \* c' without the tanh"),
    (lstm_sigmoid_g, r"matches sigmoid on the candidate g"),
    (lstm_no_b_hh, r"matches the formula without b_hh"),
    (lstm_returns_c_h, r"h'.*you returned the cell state where the hidden state belongs"),
    (lstm_returns_h_only, r"lstm_cell for B=3, I=4, H=4, seed=0: expected a tuple \(h_next, c_next\), got a Tensor"),
)


@pytest.mark.parametrize("wrong, match", LSTM_CELL_MISTAKES)
def test_check_lstm_cell_rejects(wrong, match):
    with pytest.raises(CheckFailed, match=match):
        checks.check_lstm_cell(wrong)


# ----------------------------------------------------------------- planted mistakes: lstm_layer

def _layer(x, h0, c0, W_ih, W_hh, b_ih, b_hh, mode=""):
    h, c, outs, first = h0, c0, [], None
    for x_t in x:
        h, c = _lstm(x_t, h0 if mode == "no_h" else h, c0 if mode == "no_c" else c, W_ih, W_hh, b_ih, b_hh)
        outs.append(c if mode == "out_c" else h)
        first = first or (h, c)
    outputs = torch.stack(outs)
    if mode == "batch_first":
        outputs = outputs.transpose(0, 1)
    return outputs, (first if mode == "first" else (h, c))


def layer_h_not_carried(x, h0, c0, W_ih, W_hh, b_ih, b_hh):
    return _layer(x, h0, c0, W_ih, W_hh, b_ih, b_hh, "no_h")


def layer_c_not_carried(x, h0, c0, W_ih, W_hh, b_ih, b_hh):
    return _layer(x, h0, c0, W_ih, W_hh, b_ih, b_hh, "no_c")


def layer_first_state(x, h0, c0, W_ih, W_hh, b_ih, b_hh):
    return _layer(x, h0, c0, W_ih, W_hh, b_ih, b_hh, "first")


def layer_outputs_c(x, h0, c0, W_ih, W_hh, b_ih, b_hh):
    return _layer(x, h0, c0, W_ih, W_hh, b_ih, b_hh, "out_c")


def layer_batch_first_outputs(x, h0, c0, W_ih, W_hh, b_ih, b_hh):
    return _layer(x, h0, c0, W_ih, W_hh, b_ih, b_hh, "batch_first")


def layer_flat_tuple(x, h0, c0, W_ih, W_hh, b_ih, b_hh):
    outputs, (h, c) = _layer(x, h0, c0, W_ih, W_hh, b_ih, b_hh)
    return outputs, h, c


LSTM_LAYER_MISTAKES = planted(
    (layer_h_not_carried, r"outputs \(T, B, H\): h_t at every step for T=5, B=3, I=4, H=4, seed=0.*"
                          r"does not carry h from step to step"),
    (layer_c_not_carried, r"matches a layer that does not carry c from step to step"),
    (layer_first_state, r"h_T \(the new hidden state\) for T=5.*matches the state after the FIRST step"),
    (layer_outputs_c, r"matches outputs that stack the cell states c_t"),
    (layer_batch_first_outputs, r"outputs \(T, B, H\).*shape \(3, 5, 4\) but expected \(5, 3, 4\)"),
    (layer_flat_tuple, r"lstm_layer for T=5.*expected a tuple \(outputs, \(h_T, c_T\)\), got a tuple of length 3"),
)


@pytest.mark.parametrize("wrong, match", LSTM_LAYER_MISTAKES)
def test_check_lstm_layer_rejects(wrong, match):
    with pytest.raises(CheckFailed, match=match):
        checks.check_lstm_layer(wrong)


# ----------------------------------------------------------------- planted mistakes: sampling

def _sample(logits, temperature, u, *, mode=""):
    if not math.isfinite(temperature) or temperature < 0:
        if mode != "no_error":
            raise ValueError("bad temperature")
    if temperature == 0 and mode != "no_greedy":
        return logits.argmax(dim=1)
    z = logits * temperature if mode == "multiply" else logits / temperature
    if mode == "raw_logits":
        cdf = z.cumsum(dim=1)
    else:
        if mode != "no_max":
            z = z - z.max(dim=1, keepdim=True).values
        p = torch.exp(z) / torch.exp(z).sum(dim=1, keepdim=True)
        cdf = p.cumsum(dim=1)
    if mode == "le":
        ids = (cdf < u[:, None]).sum(dim=1)
    else:
        ids = (cdf <= u[:, None]).sum(dim=1)
    return ids.clamp(max=logits.shape[1] - 1)


def sample_multiplied(logits, temperature, u):
    return _sample(logits, temperature, u, mode="multiply")


def sample_no_max_subtraction(logits, temperature, u):
    return _sample(logits, temperature, u, mode="no_max")


def sample_from_logits(logits, temperature, u):
    return _sample(logits, temperature, u, mode="raw_logits")


def sample_zero_temperature_divides(logits, temperature, u):
    return _sample(logits, temperature, u, mode="no_greedy")


def sample_no_value_error(logits, temperature, u):
    return _sample(logits, temperature, u, mode="no_error")


def sample_greedy_always(logits, temperature, u):
    return logits.argmax(dim=1)


def sample_multinomial(logits, temperature, u):
    gen = torch.Generator().manual_seed(0)
    return torch.multinomial(torch.softmax(logits / max(temperature, 1e-9), dim=1), 1, generator=gen)[:, 0]


SAMPLE_MISTAKES = planted(
    (sample_multiplied, r"sampled ids .* for B=4, V=5, T=0.5, seed=0: .*matches sampling from "
                        r"softmax\(logits \* T\)"),
    (sample_no_max_subtraction, r"at T=0.001 .*exp\(\) overflows.*subtract the row maximum"),
    (sample_from_logits, r"for B=4, V=5, T=1.0, seed=0: .*matches an inverse CDF of the raw logits"),
    (sample_zero_temperature_divides, r"sampled ids at T=0.0 \(should be the argmax\) for B=5, V=8.*greedy"),
    (sample_no_value_error, r"for T=-1.0: expected ValueError .* your function returned normally"),
    (sample_greedy_always, r"for B=4, V=5, T=1.0, seed=0: .*matches the argmax \(greedy\)"),
    (sample_multinomial, r"sampled ids \(smallest k with cdf\[k\] > u\) for B=4, V=5, T=1.0, seed=0"),
)


@pytest.mark.parametrize("wrong, match", SAMPLE_MISTAKES)
def test_check_sample_with_temperature_rejects(wrong, match):
    with pytest.raises(CheckFailed, match=match):
        checks.check_sample_with_temperature(wrong)


# ----------------------------------------------------------------- the guard

SETUP = "import torch\nimport torch.nn as nn\n"


def test_guard_catches_nn_lstmcell():
    ns = kernel(SETUP, "def lstm_cell(x, h, c, W_ih, W_hh, b_ih, b_hh):\n"
                "    cell = nn.LSTMCell(x.shape[1], h.shape[1])\n"
                "    with torch.no_grad():\n"
                "        cell.weight_ih.copy_(W_ih); cell.weight_hh.copy_(W_hh)\n"
                "        cell.bias_ih.copy_(b_ih); cell.bias_hh.copy_(b_hh)\n"
                "    return cell(x, (h, c))\n")
    with pytest.raises(ForbiddenCall, match=r"lstm_cell uses nn\.LSTMCell"):
        checks.check_lstm_cell(ns["lstm_cell"])


def test_guard_catches_functional_lstm_cell():
    ns = kernel(SETUP, "def lstm_cell(x, h, c, W_ih, W_hh, b_ih, b_hh):\n"
                "    return torch.lstm_cell(x, (h, c), W_ih, W_hh, b_ih, b_hh)\n")
    with pytest.raises(ForbiddenCall, match=r"lstm_cell uses torch\.lstm_cell"):
        checks.check_lstm_cell(ns["lstm_cell"])


def test_guard_catches_vf_rnn_cell_at_run_time_without_source():
    ns = kernel(SETUP, "def rnn_cell(x, h, W_ih, W_hh, b_ih, b_hh):\n"
                "    vf = getattr(torch, '_' + 'VF')\n"
                "    return getattr(vf, 'rnn_tanh' + '_cell')(x, h, W_ih, W_hh, b_ih, b_hh)\n",
                keep_source=False)
    fn = ns["rnn_cell"]
    assert static_violations(fn, modules=checks.RNN.modules) == [], "the static look should see no source here"
    with pytest.raises(ForbiddenCall, match=r"your code called .*rnn_tanh_cell"):
        checks.check_rnn_cell(fn)


def test_guard_catches_nn_lstm_in_the_layer_at_run_time():
    ns = kernel(SETUP, "def lstm_layer(x, h0, c0, W_ih, W_hh, b_ih, b_hh):\n"
                "    mod = __import__('torch.nn', fromlist=['LSTM'])\n"
                "    layer = getattr(mod, 'LS' + 'TM')(x.shape[2], h0.shape[1])\n"
                "    out, (h, c) = layer(x, (h0[None], c0[None]))\n"
                "    return out, (h[0], c[0])\n", keep_source=False)
    with pytest.raises(ForbiddenCall, match=r"your code called torch\.nn\.modules\.rnn"):
        checks.check_lstm_layer(ns["lstm_layer"])


def test_guard_catches_the_course_library():
    ns = kernel(SETUP + "from llmcourse.charlm import sample_with_temperature as swt\n",
                "def sample_with_temperature(logits, temperature, u):\n"
                "    return swt(logits, temperature, u)\n")
    with pytest.raises(ForbiddenCall, match=r"sample_with_temperature uses swt \(from llmcourse\.charlm\)"):
        checks.check_sample_with_temperature(ns["sample_with_temperature"])


def test_guard_lets_the_solutions_and_the_correct_variants_through():
    for task in checks.TASKS:
        for fn in (solution_of(ASSIGNMENT)[task.name], *CORRECT[task.check]):
            assert static_violations(fn, modules=task.modules, callables=task.callables) == [], fn.__name__


def test_sampling_may_use_torch_freely():
    """Only the course's own sampler is off limits in task 4: the recurrent modules are not its business."""
    assert checks.SAMPLE.modules == checks.LIBRARY and checks.SAMPLE.callables == ()


# ----------------------------------------------------------------- under a course secret

SECRETS = ("course secret A", "another secret", "3")
MISTAKES = {"check_rnn_cell": RNN_MISTAKES, "check_lstm_cell": LSTM_CELL_MISTAKES,
            "check_lstm_layer": LSTM_LAYER_MISTAKES, "check_sample_with_temperature": SAMPLE_MISTAKES}


@pytest.mark.parametrize("secret", SECRETS)
def test_checks_hold_under_several_course_secrets(monkeypatch, secret):
    """With a secret the inputs change; the solution and the correct variants still pass, mistakes fail."""
    monkeypatch.setenv("AUTOGRADER_SECRET", secret)
    assert_checks_hold(ASSIGNMENT, checks, checks.TASKS, CORRECT, MISTAKES)


def test_course_secret_changes_the_inputs(monkeypatch):
    calls = []

    def record(x, h, W_ih, W_hh, b_ih, b_hh):
        if not x.requires_grad:  # the call itself, not the gradient probe's
            calls.append(x.clone())
        return rnn_cell_f_linear(x, h, W_ih, W_hh, b_ih, b_hh)

    checks.check_rnn_cell(record)
    monkeypatch.setenv("AUTOGRADER_SECRET", SECRETS[0])
    checks.check_rnn_cell(record)
    public, hidden = calls[:len(checks.RNN_CASES)], calls[len(checks.RNN_CASES):]
    assert [p.shape for p in public] == [h.shape for h in hidden]
    assert not any(torch.equal(p, h) for p, h in zip(public, hidden)), "the secret should change every input"
