"""References for the chapter 3 MLP and numerical-gradient checks: the MLP in torch, the objectives.

* :func:`mlp_reference` - the mean hinge loss of a one-hidden-layer tanh network, its gradients
  and gradient descent on it, in float64 torch;
* :func:`objective` - the functions ``numerical_grad`` is tried on, evaluated with NumPy (what
  the student's function sees) or torch (for the exact gradient), and
  :func:`probe_numerical_grad`, which calls the student's function beside the student's code.

The checks and their messages live in ``autograder/checks/ch03_backprop.py``. Random inputs are
drawn in the trusted process with :func:`autograder.secret.hidden_rng`.

Taught in: book/03-neural-networks
"""

from __future__ import annotations

import math

import numpy as np
import torch

from autograder.secret import hidden_rng

# ======================================================================= the MLP

PARAM_NAMES = ("W1", "b1", "W2", "b2")


def mlp_reference(params: dict, X, y, *, lr: float | None = None, steps: int = 0):
    """Mean hinge loss of ``W2 . tanh(W1 x + b1) + b2`` with t = 2y - 1, in float64 torch.

    With ``steps == 0``: returns (loss, grads dict). With ``steps > 0``: full-batch
    gradient descent p <- p - lr * grad from ``params``; returns (final params dict, losses),
    where losses[i] is the loss before update i.
    """
    p = {k: torch.tensor(np.asarray(params[k], dtype=float), dtype=torch.float64) for k in PARAM_NAMES}
    X = torch.as_tensor(np.asarray(X, dtype=float))
    t = torch.as_tensor(2.0 * np.asarray(y, dtype=float) - 1.0)

    def loss_and_grads(q):
        q = {k: v.clone().requires_grad_(True) for k, v in q.items()}
        score = torch.tanh(X @ q["W1"].T + q["b1"]) @ q["W2"] + q["b2"]  # (N,)
        loss = torch.relu(1.0 - t * score).mean()
        grads = torch.autograd.grad(loss, [q[k] for k in PARAM_NAMES])
        return float(loss.detach()), dict(zip(PARAM_NAMES, grads))

    if steps == 0:
        loss, grads = loss_and_grads(p)
        return loss, {k: g.numpy() for k, g in grads.items()}
    losses = []
    for _ in range(steps):
        loss, grads = loss_and_grads(p)
        losses.append(loss)
        p = {k: p[k] - lr * grads[k] for k in PARAM_NAMES}
    return {k: v.numpy() for k, v in p.items()}, np.array(losses)


def mlp_predict(params: dict, X) -> np.ndarray:
    """Class 1 where the score W2 . tanh(W1 x + b1) + b2 is positive. X (N, D) -> (N,) ints."""
    W1, b1, W2, b2 = (np.asarray(params[k], dtype=float) for k in PARAM_NAMES)
    return ((np.tanh(np.asarray(X, dtype=float) @ W1.T + b1) @ W2 + b2) > 0).astype(np.int64)


def make_mlp_params(d: int, h: int, seed: int) -> dict[str, np.ndarray]:
    """Random MLP weights for the checks: W1 (h, d), b1 (h,), W2 (h,), b2 () as float64 arrays."""
    rng = hidden_rng(seed, "ch03.mlp.params")
    return {"W1": rng.normal(0, 1.0 / math.sqrt(d), size=(h, d)), "b1": rng.normal(0, 0.3, size=h),
            "W2": rng.normal(0, 2.5 / math.sqrt(h), size=h), "b2": np.array(float(rng.normal(0, 0.3)))}


def mlp_data(params: dict, n: int, seed: int):
    """X (n, D) standard normal; y is the network's own decision, flipped for about 30% of the points.

    So some points sit beyond the margin (relu inactive, no gradient) and others do not.
    """
    rng = hidden_rng(seed, "ch03.mlp.data")
    X = rng.normal(size=(n, np.shape(params["W1"])[1]))
    flip = rng.random(n) < 0.3
    y = (mlp_predict(params, X) == 1) ^ flip
    return X, y.astype(np.int64)


# ======================================================================= objectives for numerical_grad

#: each objective's formula, as the feedback names it
OBJECTIVES = {"cubic_sin": "sum(sin(x) * x**3)", "logsumexp": "log(sum(exp(x)))",
              "quadratic": "0.5 * sum(x**2) + x[0] * x[-1] + 3 x[0]",
              "tanh_layer": "V . tanh(W x) for a fixed W (3, 4) and V (3,): a tiny network of x (4,)"}


def tanh_layer_weights() -> tuple[np.ndarray, np.ndarray]:
    """W (3, 4) and V (3,) of the tanh_layer objective (drawn with the course secret, when set)."""
    rng = hidden_rng(1234, "ch03.numerical_grad.tanh_layer")
    return rng.normal(size=(3, 4)), rng.normal(size=3)


def objective(name: str, x, weights=None):
    """The objective ``name`` at ``x``: NumPy in, NumPy out; a torch tensor in, a tensor out."""
    lib = torch if isinstance(x, torch.Tensor) else np
    if name == "cubic_sin":
        return lib.sum(lib.sin(x) * x ** 3)
    if name == "logsumexp":
        return lib.log(lib.sum(lib.exp(x)))
    if name == "quadratic":
        return 0.5 * lib.sum(x ** 2) + x[0] * x[-1] + 3.0 * x[0]
    W, V = (torch.as_tensor(w) for w in weights) if lib is torch else weights
    return lib.sum(V * lib.tanh(W @ x))


def probe_numerical_grad(numerical_grad, name: str, x, eps, weights):
    """Call the student's ``numerical_grad(f, x, eps)`` (``eps=None``: without it) on an objective.

    Returns the answer, ``x`` afterwards and how many times ``f`` was called.
    """
    calls = []

    def f(z):
        calls.append(1)
        return float(objective(name, np.asarray(z, dtype=np.float64), weights))

    x_in = np.array(x, dtype=np.float64)
    result = numerical_grad(f, x_in) if eps is None else numerical_grad(f, x_in, eps)
    if result is None:
        return {"grad": None, "x_after": x_in.copy(), "calls": len(calls)}
    try:
        grad = np.array(result, dtype=np.float64)
    except Exception:  # noqa: BLE001 - anything unreadable becomes the problem
        return {"problem": f"expected an array of numbers, got {type(result).__name__}"}
    return {"grad": grad, "x_after": x_in.copy(), "calls": len(calls)}


def central_difference(name: str, x, eps: float, weights) -> np.ndarray:
    """The reference formula: (f(x + eps e_i) - f(x - eps e_i)) / (2 eps), coordinate by coordinate."""
    x = np.asarray(x, dtype=np.float64)
    out = np.zeros_like(x)
    for i in range(x.size):
        e = np.zeros_like(x)
        e[i] = eps
        out[i] = (float(objective(name, x + e, weights)) - float(objective(name, x - e, weights))) / (2 * eps)
    return out


def forward_difference(name: str, x, eps: float, weights) -> np.ndarray:
    """The forward difference (f(x + eps e_i) - f(x)) / eps: what the check must tell apart."""
    x = np.asarray(x, dtype=np.float64)
    f0 = float(objective(name, x, weights))
    return np.array([(float(objective(name, x + eps * e, weights)) - f0) / eps for e in np.eye(x.size)])


def autograd_gradient(name: str, x, weights) -> np.ndarray:
    """The exact gradient of the objective by ``torch.autograd`` in float64."""
    t = torch.tensor(np.asarray(x, dtype=np.float64), requires_grad=True)
    (g,) = torch.autograd.grad(objective(name, t, weights), t)
    return g.numpy()
