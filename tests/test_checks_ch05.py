"""The chapter 5 checks have teeth: the shipped solution passes, planted mistakes fail.

The solution functions come from the nbgrader source notebook itself (setup and answer cells,
executed as a notebook kernel would). Each wrong implementation is a mistake a student could
plausibly make; each must make its check raise CheckFailed with a message that names what is
wrong (the checks recognise the typical mistakes and say which one the output matches).
"""

from __future__ import annotations

import math
from pathlib import Path

import nbformat
import pytest
import torch

from autograder.checks import ch05_rnn as checks
from autograder.compare import CheckFailed
from autograder.guard import ForbiddenCall, static_violations
from tests.notebook_kernel import (
    assert_hidden_tests_call_checks,
    kernel,
    planted,
    solution_namespace,
)

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

NOTEBOOK = Path(__file__).resolve().parents[1] / "solutions" / "ch05_rnn" / "ch05_rnn.ipynb"
GRADE_IDS = {
    "ch05_rnn_cell": ("rnn_cell", "rnn_cell"),
    "ch05_lstm_cell": ("lstm_cell", "lstm_cell"),
    "ch05_lstm_layer": ("lstm_layer", "lstm_layer"),
    "ch05_sample_with_temperature": ("sample_with_temperature", "sample_with_temperature"),
}


@pytest.fixture(scope="module")
def notebook():
    return nbformat.read(NOTEBOOK, as_version=4)


@pytest.fixture(scope="module")
def solution() -> dict:
    return solution_namespace(NOTEBOOK)


def check_of(grade_id: str):
    return getattr(checks, f"check_{GRADE_IDS[grade_id][0]}")


# ----------------------------------------------------------------- the notebook itself

def test_notebook_grade_ids_call_their_hidden_checks(notebook):
    assert_hidden_tests_call_checks(notebook, GRADE_IDS)


@pytest.mark.parametrize("grade_id", list(GRADE_IDS))
def test_solution_passes_check(solution, grade_id):
    check_of(grade_id)(solution[GRADE_IDS[grade_id][1]])


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
    assert "error" in checks.grad_probe(lambda p, q: (p * q).detach(), [a, b], [up])


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


@pytest.mark.parametrize("wrong, match", planted(
    (rnn_no_b_hh, r"h' \(the new hidden state\) for B=3, I=4, H=4, seed=0: max .* matches the formula without b_hh"),
    (rnn_no_transpose, r"for B=3, I=4, H=4, seed=0: .*matches W_ih and W_hh used without transpose"),
    (rnn_sigmoid, r"h' \(the new hidden state\) for B=3.*matches sigmoid instead of tanh"),
    (rnn_ignores_h, r"matches a cell that ignores the previous state h"),
    (rnn_via_numpy, r"rnn_cell for B=3, I=4, H=4, seed=0: gradients could not be computed: no gradient flows"),
    (rnn_detached, r"gradients could not be computed: .*torch.no_grad"),
))
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


@pytest.mark.parametrize("wrong, match", planted(
    (lstm_forget_as_input, r"for B=3, I=4, H=4, seed=0: .*matches the input and forget gates swapped"),
    (lstm_order_ifog, r"matches gate order i, f, o, g"),
    (lstm_h_without_tanh, r"h' \(the new hidden state\) for B=3.*matches h' = o \* c' without the tanh"),
    (lstm_sigmoid_g, r"matches sigmoid on the candidate g"),
    (lstm_no_b_hh, r"matches the formula without b_hh"),
    (lstm_returns_c_h, r"h'.*you returned the cell state where the hidden state belongs"),
    (lstm_returns_h_only, r"lstm_cell for B=3, I=4, H=4, seed=0: expected a tuple \(h_next, c_next\), got a Tensor"),
))
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


@pytest.mark.parametrize("wrong, match", planted(
    (layer_h_not_carried, r"outputs \(T, B, H\): h_t at every step for T=5, B=3, I=4, H=4, seed=0.*"
                          r"does not carry h from step to step"),
    (layer_c_not_carried, r"matches a layer that does not carry c from step to step"),
    (layer_first_state, r"h_T \(the new hidden state\) for T=5.*matches the state after the FIRST step"),
    (layer_outputs_c, r"matches outputs that stack the cell states c_t"),
    (layer_batch_first_outputs, r"outputs \(T, B, H\).*shape \(3, 5, 4\) but expected \(5, 3, 4\)"),
    (layer_flat_tuple, r"lstm_layer for T=5.*expected a tuple \(outputs, \(h_T, c_T\)\), got a tuple of length 3"),
))
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


@pytest.mark.parametrize("wrong, match", planted(
    (sample_multiplied, r"sampled ids .* for B=4, V=5, T=0.5, seed=0: .*matches sampling from "
                        r"softmax\(logits \* T\)"),
    (sample_no_max_subtraction, r"at T=0.001 .*exp\(\) overflows.*subtract the row maximum"),
    (sample_from_logits, r"for B=4, V=5, T=1.0, seed=0: .*matches an inverse CDF of the raw logits"),
    (sample_zero_temperature_divides, r"sampled ids at T=0.0 \(should be the argmax\) for B=5, V=8.*greedy"),
    (sample_no_value_error, r"for T=-1.0: expected ValueError .* your function returned normally"),
    (sample_greedy_always, r"for B=4, V=5, T=1.0, seed=0: .*matches the argmax \(greedy\)"),
    (sample_multinomial, r"sampled ids \(smallest k with cdf\[k\] > u\) for B=4, V=5, T=1.0, seed=0"),
))
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
    assert static_violations(fn, modules=checks.FORBIDDEN) == [], "the static look should see no source here"
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


def test_guard_lets_the_solutions_through(solution):
    for _, name in GRADE_IDS.values():
        assert static_violations(solution[name], modules=checks.FORBIDDEN,
                                 callables=checks.FORBIDDEN_CALLABLES) == [], name
