"""The course's scalar autograd engine against torch.autograd, finite differences and hand-worked answers."""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch

from llmcourse.autograd import (
    Value,
    draw_graph,
    grads_of,
    init_scalar_mlp,
    numerical_grad,
    scalar_mlp_loss,
    topological_order,
    value_params,
)

pytestmark = pytest.mark.ch03


def test_value_known_answer():
    a, b = Value(2.0), Value(-3.0)
    c = a * b + a
    c.backward()
    assert (c.data, a.grad, b.grad) == (-4.0, -2.0, 2.0)


@pytest.mark.parametrize("seed", range(5))
def test_value_matches_torch_autograd_on_a_mixed_expression(seed):
    rng = np.random.default_rng(seed)
    xs = rng.uniform(0.5, 2.0, size=3) * rng.choice([-1, 1], size=3)

    def build(a, b, c, tanh, relu, exp):
        d = a * b + 2 - c / a
        e = tanh(d) * c ** 2 + relu(-b) - 3 / (1 + a ** 2)
        return e + exp(0.1 * d) * a - (-e) * b

    v = [Value(x) for x in xs]
    out = build(*v, Value.tanh, Value.relu, Value.exp)
    out.backward()
    t = [torch.tensor(x, dtype=torch.float64, requires_grad=True) for x in xs]
    ref = build(*t, torch.tanh, torch.relu, torch.exp)
    ref.backward()
    assert out.data == pytest.approx(float(ref.detach()), rel=1e-12)
    np.testing.assert_allclose([x.grad for x in v], [float(x.grad) for x in t], rtol=1e-10)


def test_gradients_accumulate_for_reused_nodes():
    a = Value(3.0)
    b = a * a + a  # db/da = 2a + 1
    b.backward()
    assert a.grad == 7.0


def test_topological_order_puts_inputs_first_and_lists_each_node_once():
    a = Value(1.0)
    b = a * 2
    c = b + b * 3
    order = topological_order(c)
    assert order[-1] is c and len(order) == len({id(n) for n in order})
    position = {id(n): i for i, n in enumerate(order)}
    for node in order:
        assert all(position[id(ch)] < position[id(node)] for ch in node._prev)


def test_backward_handles_graphs_deeper_than_the_recursion_limit():
    x = Value(0.5)
    y = x
    for _ in range(5000):
        y = y * 1.0
    y.backward()
    assert x.grad == 1.0


@pytest.mark.parametrize("bad", ["a string", None, [1.0]])
def test_value_rejects_non_numbers(bad):
    with pytest.raises(TypeError, match="Value"):
        Value(bad)


def test_pow_rejects_a_value_exponent():
    with pytest.raises(TypeError, match="constant"):
        Value(2.0) ** Value(3.0)


def test_numerical_grad_matches_autograd_and_leaves_x_alone():
    x = np.array([0.3, -1.2, 2.0])
    x0 = x.copy()

    def f(z):
        return float(np.sum(np.sin(z) * z ** 2))

    g = numerical_grad(f, x, 1e-5)
    t = torch.tensor(x, requires_grad=True)
    (torch.sin(t) * t ** 2).sum().backward()
    np.testing.assert_allclose(g, t.grad.numpy(), rtol=1e-8, atol=1e-10)
    np.testing.assert_array_equal(x, x0)


def test_central_difference_error_shrinks_like_eps_squared():
    f, df = math.sin, math.cos
    errs = [abs(numerical_grad(lambda z: f(z[0]), [1.0], eps)[0] - df(1.0)) for eps in (1e-2, 1e-3)]
    assert errs[1] < errs[0] / 50  # ~100x smaller for 10x smaller eps


@pytest.mark.parametrize("bad, match", [(np.zeros((2, 2)), "shape"), (np.zeros(2), "eps")])
def test_numerical_grad_rejects_bad_input(bad, match):
    with pytest.raises(ValueError, match=match):
        numerical_grad(lambda z: 0.0, bad, 0.0 if match == "eps" else 1e-3)


def test_scalar_mlp_gradients_match_torch():
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(6, 2)), rng.integers(0, 2, size=6)
    params = init_scalar_mlp(2, 3, seed=1)
    vp = value_params(params)
    loss = scalar_mlp_loss(vp, X, y)
    loss.backward()
    t = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True) for k, v in params.items()}
    score = torch.tanh(torch.tensor(X) @ t["W1"].T + t["b1"]) @ t["W2"] + t["b2"]
    ref = torch.relu(1 - torch.tensor(2.0 * y - 1) * score).mean()
    ref.backward()
    assert loss.data == pytest.approx(float(ref.detach()), rel=1e-12)
    for k, g in grads_of(vp).items():
        np.testing.assert_allclose(g, t[k].grad.numpy(), rtol=1e-10, atol=1e-14)
        assert g.shape == params[k].shape


def test_draw_graph_draws_one_box_per_node():
    a, b = Value(2.0, label="a"), Value(-3.0, label="b")
    c = (a * b).tanh()
    c.backward()
    ax = draw_graph(c, title="t")
    assert len(ax.texts) >= 4  # 4 boxes, plus operation labels
    plt.close(ax.figure)
    with pytest.raises(TypeError, match="Value"):
        draw_graph(1.0)
