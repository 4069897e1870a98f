"""Neural-network basics in PyTorch: activations, initialisation, a tiny MLP, optimisers, checkpoints.

What it teaches:

* activation functions written out - sigmoid, tanh, ReLU (Nair & Hinton 2010)
  and GELU (Hendrycks & Gimpel 2016) - equal to ``torch.nn.functional``'s;
* weight initialisation: a fixed standard deviation versus Xavier/Glorot
  (Glorot & Bengio 2010) and He/Kaiming (He et al. 2015) scaling by the fan-in,
  drawn exactly as ``torch.nn.init`` draws them;
* a multilayer perceptron (:class:`MLP`) and :func:`gradient_norms`, the
  measurement behind the vanishing/exploding-gradient experiment;
* optimiser updates written out - SGD, SGD with momentum (Polyak 1964, in
  PyTorch's form) and Adam (Kingma & Ba 2015) - equal to ``torch.optim``'s;
* checkpoints: a model's ``state_dict`` saved and loaded with ``safetensors``.

Shapes: B batch, D input features, H hidden width. Everything random takes a
``seed``; nothing is seeded globally.

Taught in: book/03-neural-networks
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from llmcourse.reproducibility import torch_generator

# ------------------------------------------------------------------ activations


def sigmoid(x: torch.Tensor) -> torch.Tensor:
    """1 / (1 + exp(-x)), computed without overflow for large |x|. Shape unchanged."""
    return torch.where(x >= 0, 1.0 / (1.0 + torch.exp(-x.abs())),
                       torch.exp(-x.abs()) / (1.0 + torch.exp(-x.abs())))


def tanh(x: torch.Tensor) -> torch.Tensor:
    """(e^x - e^-x) / (e^x + e^-x) = 2 sigmoid(2x) - 1, in (-1, 1). Shape unchanged."""
    return 2.0 * sigmoid(2.0 * x) - 1.0


def relu(x: torch.Tensor) -> torch.Tensor:
    """max(0, x). Shape unchanged."""
    return torch.clamp(x, min=0.0)


def gelu(x: torch.Tensor) -> torch.Tensor:
    """x * Phi(x), with Phi the standard normal CDF: 0.5 x (1 + erf(x / sqrt 2)). Shape unchanged."""
    return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))


ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "sigmoid": sigmoid, "tanh": tanh, "relu": relu, "gelu": gelu,
}


def _activation(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]


# ------------------------------------------------------------------ initialisation

INITS = ("normal", "small", "xavier", "he")


def init_weight(fan_in: int, fan_out: int, scheme: str = "he", *, seed: int = 0,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """A (fan_out, fan_in) weight matrix, as ``nn.Linear(fan_in, fan_out).weight`` is laid out.

    ``scheme``:

    * ``"normal"``: N(0, 1), the naive choice; the output variance grows fan_in times per layer;
    * ``"small"``: N(0, 0.01^2); signals and gradients shrink layer after layer;
    * ``"xavier"``: U(-a, a) with a = sqrt(6 / (fan_in + fan_out)), so Var = 2 / (fan_in + fan_out)
      (Glorot & Bengio 2010), suited to tanh; same draws as ``nn.init.xavier_uniform_``;
    * ``"he"``: N(0, 2 / fan_in) (He et al. 2015), suited to ReLU; same draws as
      ``nn.init.kaiming_normal_(w, nonlinearity="relu")``.
    """
    if fan_in < 1 or fan_out < 1:
        raise ValueError(f"fan_in and fan_out must be >= 1, got {fan_in}, {fan_out}")
    gen = generator if generator is not None else torch_generator(seed)
    w = torch.empty(fan_out, fan_in)
    if scheme == "normal":
        return w.normal_(0.0, 1.0, generator=gen)
    if scheme == "small":
        return w.normal_(0.0, 0.01, generator=gen)
    if scheme == "xavier":
        a = math.sqrt(6.0 / (fan_in + fan_out))
        return w.uniform_(-a, a, generator=gen)
    if scheme == "he":
        return w.normal_(0.0, math.sqrt(2.0 / fan_in), generator=gen)
    raise ValueError(f"unknown init scheme {scheme!r}; choose one of {INITS}")


# ------------------------------------------------------------------ a tiny MLP


class MLP(nn.Module):
    """A multilayer perceptron: ``sizes[0] -> sizes[1] -> ... -> sizes[-1]``, activation between layers.

    No activation after the last layer (its outputs are scores/logits). Weights
    follow ``init`` (see :func:`init_weight`), biases start at zero.

    Shapes: x (B, sizes[0]) -> (B, sizes[-1]).
    """

    def __init__(self, sizes: list[int], activation: str = "relu", init: str = "he", *, seed: int = 0):
        super().__init__()
        if len(sizes) < 2 or any(int(s) < 1 for s in sizes):
            raise ValueError(f"sizes needs at least two positive layer widths, got {sizes}")
        self.act = _activation(activation)
        self.activation = activation
        gen = torch_generator(seed)
        self.layers = nn.ModuleList()
        for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
            layer = nn.Linear(fan_in, fan_out)
            with torch.no_grad():
                layer.weight.copy_(init_weight(fan_in, fan_out, init, generator=gen))
                layer.bias.zero_()
            self.layers.append(layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 2 or x.shape[1] != self.layers[0].in_features:
            raise ValueError(f"x must have shape (B, {self.layers[0].in_features}), got {tuple(x.shape)}")
        for layer in self.layers[:-1]:
            x = self.act(layer(x))  # (B, H)
        return self.layers[-1](x)


def gradient_norms(depth: int, activation: str, init: str, *, width: int = 64, batch: int = 128,
                   seed: int = 0) -> torch.Tensor:
    """How big the backpropagated gradient is at each layer of a deep, narrow MLP.

    The network has ``depth`` layers of ``width`` units. A standard normal batch
    goes forward; the gradient sent back from the output is a fixed random
    direction (loss = mean over the batch of ``r . output`` with r ~ N(0, 1)), so
    the measurement does not depend on how large the outputs became. Entry ``l``
    is the norm of d(loss)/d(input of layer l), averaged per example: entry 0 is
    what reaches the network's input, entry ``depth - 1`` what enters the last
    layer. Vanishing gradients show up as entries that shrink towards the input,
    exploding ones as entries that grow.

    Returns a float64 tensor of shape (depth,).
    """
    if depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")
    model = MLP([width] * (depth + 1), activation, init, seed=seed).double()
    gen = torch_generator(seed + 1)
    h = torch.randn(batch, width, generator=gen, dtype=torch.float64).requires_grad_(True)  # (B, H)
    r = torch.randn(batch, width, generator=gen, dtype=torch.float64)  # (B, H) output gradient direction
    inputs = []
    for i, layer in enumerate(model.layers):
        inputs.append(h)
        h = layer(h)
        if i < depth - 1:
            h = model.act(h)
    loss = (h * r).sum() / batch
    grads = torch.autograd.grad(loss, inputs)
    return torch.stack([g.norm() / math.sqrt(batch) for g in grads]).detach()


# ------------------------------------------------------------------ optimisers written out


def sgd_step(param: torch.Tensor, grad: torch.Tensor, *, lr: float) -> torch.Tensor:
    """Plain gradient descent: p - lr * g."""
    return param - lr * grad


def momentum_step(param: torch.Tensor, grad: torch.Tensor, velocity: torch.Tensor | None, *, lr: float,
                  momentum: float = 0.9) -> tuple[torch.Tensor, torch.Tensor]:
    """SGD with momentum as ``torch.optim.SGD(momentum=...)`` does it.

    v <- momentum * v + g (v = g on the first step, pass ``velocity=None``), then p <- p - lr * v.
    Returns (new param, new velocity).
    """
    velocity = grad.clone() if velocity is None else momentum * velocity + grad
    return param - lr * velocity, velocity


def adam_step(param: torch.Tensor, grad: torch.Tensor, m: torch.Tensor, v: torch.Tensor, t: int, *,
              lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
    """One Adam update (Kingma & Ba 2015, Algorithm 1), as ``torch.optim.Adam`` computes it.

    m and v are running averages of g and g^2 (start them at zeros), t counts steps from 1.
    p <- p - lr * m_hat / (sqrt(v_hat) + eps) with the bias corrections
    m_hat = m / (1 - beta1^t), v_hat = v / (1 - beta2^t). Returns (new param, m, v).
    """
    if t < 1:
        raise ValueError(f"t counts steps from 1, got {t}")
    beta1, beta2 = betas
    m = beta1 * m + (1 - beta1) * grad
    v = beta2 * v + (1 - beta2) * grad * grad
    m_hat = m / (1 - beta1 ** t)
    v_hat = v / (1 - beta2 ** t)
    return param - lr * m_hat / (v_hat.sqrt() + eps), m, v


def optimise(loss_fn: Callable[[torch.Tensor], torch.Tensor], start, method: str, *, steps: int, lr: float,
             momentum: float = 0.9, betas: tuple[float, float] = (0.9, 0.999)) -> torch.Tensor:
    """Minimise ``loss_fn(p)`` from ``start`` with ``"sgd"``, ``"momentum"`` or ``"adam"``.

    The gradient of each step comes from ``torch.autograd``; the update is one
    of the functions above. Returns the path, shape (steps + 1, *start.shape).
    """
    if method not in ("sgd", "momentum", "adam"):
        raise ValueError(f"unknown method {method!r}; choose sgd, momentum or adam")
    p = torch.as_tensor(start, dtype=torch.float64).clone()
    path = [p.clone()]
    velocity, m, v = None, torch.zeros_like(p), torch.zeros_like(p)
    for t in range(1, steps + 1):
        q = p.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(loss_fn(q), q)
        if method == "sgd":
            p = sgd_step(p, grad, lr=lr)
        elif method == "momentum":
            p, velocity = momentum_step(p, grad, velocity, lr=lr, momentum=momentum)
        else:
            p, m, v = adam_step(p, grad, m, v, t, lr=lr, betas=betas)
        path.append(p.clone())
    return torch.stack(path)


# ------------------------------------------------------------------ checkpoints


def save_checkpoint(model: nn.Module, path: str | Path, *, metadata: dict[str, str] | None = None) -> Path:
    """Write ``model.state_dict()`` to a ``.safetensors`` file, with string ``metadata`` in its header.

    safetensors stores raw tensors plus a JSON header: loading it runs no code
    (unlike a pickled ``torch.save`` file). Returns the path written.
    """
    from safetensors.torch import save_file

    meta = {str(k): str(v) for k, v in (metadata or {}).items()}
    state = {k: t.detach().contiguous() for k, t in model.state_dict().items()}
    path = Path(path)
    save_file(state, str(path), metadata=meta)
    return path


def load_checkpoint(model: nn.Module, path: str | Path) -> dict[str, str]:
    """Load a :func:`save_checkpoint` file into ``model`` (keys and shapes must match); return its metadata."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    state = load_file(str(path))
    own = model.state_dict()
    if set(state) != set(own):
        raise ValueError(f"checkpoint keys {sorted(state)} do not match the model's {sorted(own)}")
    for k, t in state.items():
        if t.shape != own[k].shape:
            raise ValueError(f"{k}: checkpoint shape {tuple(t.shape)} but the model has {tuple(own[k].shape)}")
    model.load_state_dict(state)
    with safe_open(str(path), framework="pt") as fh:
        return dict(fh.metadata() or {})
