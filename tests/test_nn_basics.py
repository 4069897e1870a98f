"""Activations, initialisers and optimisers written out, against torch.nn.functional, torch.nn.init and torch.optim."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from llmcourse.nn_basics import (
    MLP,
    adam_step,
    gelu,
    gradient_norms,
    init_weight,
    load_checkpoint,
    momentum_step,
    optimise,
    relu,
    save_checkpoint,
    sgd_step,
    sigmoid,
    tanh,
)
from llmcourse.reproducibility import torch_generator

pytestmark = pytest.mark.ch03

X = torch.linspace(-30, 30, 601, dtype=torch.float64)


@pytest.mark.parametrize("ours, ref", [(sigmoid, torch.sigmoid), (tanh, torch.tanh), (relu, F.relu),
                                       (gelu, F.gelu)])
def test_activation_matches_torch(ours, ref):
    torch.testing.assert_close(ours(X), ref(X), rtol=1e-12, atol=1e-14)
    assert torch.isfinite(ours(torch.tensor([-1000.0, 1000.0]))).all()


def test_init_matches_torch_nn_init_draws():
    w = init_weight(30, 20, "xavier", seed=3)
    ref = torch.nn.init.xavier_uniform_(torch.empty(20, 30), generator=torch_generator(3))
    torch.testing.assert_close(w, ref)
    w = init_weight(30, 20, "he", seed=4)
    ref = torch.nn.init.kaiming_normal_(torch.empty(20, 30), nonlinearity="relu", generator=torch_generator(4))
    torch.testing.assert_close(w, ref)


@pytest.mark.parametrize("scheme, var", [("normal", lambda i, o: 1.0), ("small", lambda i, o: 1e-4),
                                         ("xavier", lambda i, o: 2 / (i + o)), ("he", lambda i, o: 2 / i)])
def test_init_variance(scheme, var):
    w = init_weight(400, 300, scheme, seed=0)
    assert w.shape == (300, 400)
    assert float(w.var()) == pytest.approx(var(400, 300), rel=0.05)


def test_init_rejects_unknown_scheme():
    with pytest.raises(ValueError, match="unknown init scheme 'zeros'"):
        init_weight(3, 3, "zeros")


def test_mlp_shapes_and_bad_input():
    model = MLP([2, 8, 8, 1], "tanh", "xavier", seed=0)
    assert model(torch.zeros(5, 2)).shape == (5, 1)
    with pytest.raises(ValueError, match=r"x must have shape \(B, 2\)"):
        model(torch.zeros(5, 3))
    with pytest.raises(ValueError, match="unknown activation"):
        MLP([2, 1], "swish")


def test_gradient_norms_vanish_with_sigmoid_and_not_with_he_relu():
    sig = gradient_norms(20, "sigmoid", "xavier")
    he = gradient_norms(20, "relu", "he")
    assert sig.shape == (20,) and sig[0] < 1e-6 * sig[-1]
    assert 0.01 < float(he[0] / he[-1]) < 100


def test_gradient_norms_explode_with_unit_normal_weights():
    g = gradient_norms(10, "relu", "normal", width=64)
    assert g[0] > 1e6 * g[-1] or g[0] > 1e6


@pytest.mark.parametrize("method", ["sgd", "momentum", "adam"])
def test_optimiser_steps_match_torch_optim(method):
    torch.manual_seed(0)
    target = torch.randn(5, dtype=torch.float64)

    def loss_fn(p):
        return ((p - target) ** 2 * torch.arange(1, 6)).sum() + p.pow(4).sum()

    start = torch.randn(5, dtype=torch.float64)
    path = optimise(loss_fn, start, method, steps=7, lr=0.01)
    p = start.clone().requires_grad_(True)
    opt = {"sgd": lambda: torch.optim.SGD([p], lr=0.01),
           "momentum": lambda: torch.optim.SGD([p], lr=0.01, momentum=0.9),
           "adam": lambda: torch.optim.Adam([p], lr=0.01)}[method]()
    for step in range(7):
        opt.zero_grad()
        loss_fn(p).backward()
        opt.step()
        torch.testing.assert_close(path[step + 1], p.detach(), rtol=1e-12, atol=1e-14)


def test_single_steps_by_hand():
    p, g = torch.tensor([1.0]), torch.tensor([2.0])
    assert float(sgd_step(p, g, lr=0.1)) == pytest.approx(0.8)
    p1, v = momentum_step(p, g, None, lr=0.1)
    p2, v = momentum_step(p1, g, v, lr=0.1, momentum=0.9)
    assert float(v) == pytest.approx(3.8) and float(p2) == pytest.approx(0.8 - 0.38)
    p1, m, v = adam_step(p, g, torch.zeros(1), torch.zeros(1), 1, lr=0.1)
    assert float(p1) == pytest.approx(1.0 - 0.1 * 2 / (2 + 1e-8))  # first Adam step has size ~lr
    with pytest.raises(ValueError, match="t counts steps from 1"):
        adam_step(p, g, m, v, 0)


def test_checkpoint_round_trip(tmp_path):
    model = MLP([2, 4, 1], "relu", seed=0)
    path = save_checkpoint(model, tmp_path / "m.safetensors", metadata={"epoch": 3})
    other = MLP([2, 4, 1], "relu", seed=1)
    meta = load_checkpoint(other, path)
    assert meta == {"epoch": "3"}
    for a, b in zip(model.state_dict().values(), other.state_dict().values()):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="shape"):
        load_checkpoint(MLP([2, 5, 1]), path)
    with pytest.raises(FileNotFoundError):
        load_checkpoint(model, tmp_path / "missing.safetensors")


def test_gelu_is_x_times_normal_cdf():
    x = torch.tensor([-1.0, 0.0, 2.0], dtype=torch.float64)
    phi = 0.5 * (1 + torch.erf(x / math.sqrt(2)))
    torch.testing.assert_close(gelu(x), x * phi)
