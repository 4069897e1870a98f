"""A scalar automatic-differentiation engine: backpropagation in about a hundred lines.

What it teaches: every number a computation produces is a node of a
*computational graph* that remembers its inputs and the operation that made it.
Reverse-mode automatic differentiation (Linnainmaa 1970; popularised for
neural networks as backpropagation by Rumelhart, Hinton & Williams 1986) walks
that graph once from the output back to the inputs in reverse topological
order. Each node passes ``out.grad * d(out)/d(input)`` to each input (the chain
rule), and the contributions *accumulate*, so a node used twice receives both.
``torch.autograd`` does the same on tensors (Paszke et al. 2019).

Contents: :class:`Value` (add, mul, pow by a constant, tanh, relu, exp, and
the derived neg/sub/div), :func:`topological_order`, :func:`draw_graph` (a
Matplotlib picture of a graph, no graphviz needed), :func:`numerical_grad`
(central finite differences, to check gradients) and a small MLP built from
``Value`` (:func:`init_scalar_mlp`, :func:`scalar_mlp_loss`).

Taught in: book/03-neural-networks
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

from llmcourse.reproducibility import numpy_rng


class Value:
    """One scalar node of a computational graph.

    ``data`` is the number computed in the forward pass; ``grad`` is
    d(output)/d(this node), filled in by :meth:`backward` on the output.
    Plain Python numbers mix freely with ``Value`` on either side
    (``2 * a``, ``a - 1``, ``1 / a``) and become constant leaves.

    >>> a, b = Value(2.0), Value(-3.0)
    >>> c = a * b + a          # a is used twice
    >>> c.backward()
    >>> (c.data, a.grad, b.grad)   # dc/da = b + 1, dc/db = a
    (-4.0, -2.0, 2.0)
    """

    def __init__(self, data: float, _children: tuple = (), _op: str = "", label: str = ""):
        if isinstance(data, Value):
            raise TypeError("Value(data) needs a number, got a Value; use the Value itself")
        try:
            self.data = float(data)
        except (TypeError, ValueError):
            raise TypeError(f"Value(data) needs a real number, got {type(data).__name__}") from None
        self.grad = 0.0
        self._backward: Callable[[], None] = lambda: None  # sends self.grad on to the children
        self._prev = tuple(_children)  # the inputs of the operation that made this node
        self._op = _op  # that operation, for printing and drawing
        self.label = label

    def __repr__(self) -> str:
        name = f"{self.label}: " if self.label else ""
        return f"Value({name}data={self.data:.6g}, grad={self.grad:.6g})"

    # -------------------------------------------------- primitive operations
    def __add__(self, other) -> Value:
        other = _as_value(other)
        out = Value(self.data + other.data, (self, other), "+")

        def _backward():  # d(a + b)/da = d(a + b)/db = 1
            self.grad += out.grad
            other.grad += out.grad

        out._backward = _backward
        return out

    def __mul__(self, other) -> Value:
        other = _as_value(other)
        out = Value(self.data * other.data, (self, other), "*")

        def _backward():  # d(ab)/da = b, d(ab)/db = a
            self.grad += other.data * out.grad
            other.grad += self.data * out.grad

        out._backward = _backward
        return out

    def __pow__(self, k) -> Value:
        if isinstance(k, Value) or not isinstance(k, (int, float)):
            raise TypeError(f"Value ** k supports a constant int or float k only, got {type(k).__name__}")
        out = Value(self.data ** k, (self,), f"**{k:g}")

        def _backward():  # d(a^k)/da = k a^(k-1)
            self.grad += k * self.data ** (k - 1) * out.grad

        out._backward = _backward
        return out

    def tanh(self) -> Value:
        t = math.tanh(self.data)
        out = Value(t, (self,), "tanh")

        def _backward():  # d tanh(a)/da = 1 - tanh(a)^2, from the OUTPUT t
            self.grad += (1.0 - t * t) * out.grad

        out._backward = _backward
        return out

    def relu(self) -> Value:
        out = Value(self.data if self.data > 0 else 0.0, (self,), "relu")

        def _backward():  # slope 1 where the input is positive, 0 elsewhere (PyTorch's choice at 0)
            self.grad += (1.0 if self.data > 0 else 0.0) * out.grad

        out._backward = _backward
        return out

    def exp(self) -> Value:
        e = math.exp(self.data)
        out = Value(e, (self,), "exp")

        def _backward():  # d e^a/da = e^a
            self.grad += e * out.grad

        out._backward = _backward
        return out

    # -------------------------------------------------- derived operations (no backward of their own)
    def __neg__(self) -> Value:
        return self * -1.0

    def __radd__(self, other) -> Value:  # other + self, when other is a plain number
        return self + other

    def __sub__(self, other) -> Value:
        return self + (-_as_value(other))

    def __rsub__(self, other) -> Value:  # other - self
        return _as_value(other) + (-self)

    def __rmul__(self, other) -> Value:  # other * self
        return self * other

    def __truediv__(self, other) -> Value:
        return self * _as_value(other) ** -1

    def __rtruediv__(self, other) -> Value:  # other / self
        return _as_value(other) * self ** -1

    # -------------------------------------------------- the backward pass
    def backward(self) -> None:
        """Fill in ``.grad`` of every node this one depends on with d(self)/d(node).

        Gradients accumulate (``+=``): call it once per graph, or reset the
        ``grad`` of the leaves to 0 before building and differentiating a new one.
        """
        order = topological_order(self)
        self.grad = 1.0  # d(self)/d(self)
        for node in reversed(order):  # the output first, every node after all its consumers
            node._backward()


def _as_value(x) -> Value:
    """``x`` itself if it is a :class:`Value`, else a constant leaf holding the number ``x``."""
    return x if isinstance(x, Value) else Value(x)


def topological_order(root: Value) -> list[Value]:
    """Every node ``root`` depends on (and ``root``), each listed after all of its inputs.

    Iterative depth-first search, so deep graphs do not hit Python's recursion
    limit. Reversed, the list is a valid order for the backward pass: a node's
    gradient is complete before it is passed on.
    """
    order: list[Value] = []
    seen: set[int] = set()
    stack: list[tuple[Value, bool]] = [(root, False)]
    while stack:
        node, inputs_done = stack.pop()
        if inputs_done:
            order.append(node)
            continue
        if id(node) in seen:
            continue
        seen.add(id(node))
        stack.append((node, True))  # revisit after the inputs
        for child in node._prev:
            if id(child) not in seen:
                stack.append((child, False))
    return order


# ------------------------------------------------------------------ drawing

def _layout(root: Value) -> dict[int, tuple[float, float]]:
    """(x, y) of each node: x = longest path from a leaf, y spread evenly within a column."""
    order = topological_order(root)
    depth: dict[int, int] = {}
    for node in order:
        depth[id(node)] = 1 + max((depth[id(c)] for c in node._prev), default=-1)
    columns: dict[int, list[Value]] = {}
    for node in order:
        columns.setdefault(depth[id(node)], []).append(node)
    pos = {}
    for x, nodes in columns.items():
        for i, node in enumerate(nodes):
            pos[id(node)] = (float(x), (len(nodes) - 1) / 2.0 - i)
    return pos


def draw_graph(root: Value, *, ax=None, show_grad: bool = True, title: str | None = None):
    """Draw the computational graph that produced ``root`` with Matplotlib (inputs left, output right).

    Each box shows a node's label (if any), its ``data`` and, with ``show_grad``,
    its ``grad``; the operation that made a node is written on the arrow into it.
    Returns the Matplotlib ``Axes``.
    """
    import matplotlib.pyplot as plt

    if not isinstance(root, Value):
        raise TypeError(f"draw_graph needs a Value, got {type(root).__name__}")
    order = topological_order(root)
    if len(order) > 60:
        raise ValueError(f"the graph has {len(order)} nodes; draw_graph is meant for at most 60")
    pos = _layout(root)
    width = max(x for x, _ in pos.values()) + 1
    height = max(abs(y) for _, y in pos.values()) * 2 + 1
    if ax is None:
        _, ax = plt.subplots(figsize=(min(2.3 * width + 1, 14), min(1.1 * height + 1, 9)))
    for node in order:
        x1, y1 = pos[id(node)]
        for child in node._prev:
            x0, y0 = pos[id(child)]
            ax.annotate("", xy=(x1 - 0.33, y1), xytext=(x0 + 0.33, y0),
                        arrowprops=dict(arrowstyle="->", color="0.45", lw=1.0, shrinkA=0, shrinkB=0))
        if node._op:
            ax.text(x1 - 0.42, y1 + 0.2, node._op, ha="right", va="bottom", fontsize=9, color="#D55E00")
        text = f"{node.label + ' = ' if node.label else ''}{node.data:.4g}"
        if show_grad:
            text += f"\ngrad {node.grad:.4g}"
        leaf = not node._prev
        ax.text(x1, y1, text, ha="center", va="center", fontsize=9,
                bbox=dict(boxstyle="round,pad=0.35", fc="#E8F1FA" if leaf else "white",
                          ec="#0072B2" if node is not root else "#D55E00", lw=1.2))
    ax.set_xlim(-0.7, width - 0.3)
    ys = [y for _, y in pos.values()]
    ax.set_ylim(min(ys) - 0.7, max(ys) + 0.7)
    ax.axis("off")
    if title:
        ax.set_title(title)
    return ax


# ------------------------------------------------------------------ gradient check

def numerical_grad(f: Callable[[np.ndarray], float], x, eps: float = 1e-6) -> np.ndarray:
    """Central finite differences: ``(f(x + eps e_i) - f(x - eps e_i)) / (2 eps)`` for each i.

    The error of the central difference shrinks like ``eps**2`` (the forward
    difference ``(f(x + eps e_i) - f(x)) / eps`` only like ``eps``), until
    floating-point rounding, which grows like ``1 / eps``, takes over.

    Shapes: x (n,) -> gradient (n,). ``x`` is not modified.
    """
    x = np.array(x, dtype=np.float64)  # a copy
    if x.ndim != 1:
        raise ValueError(f"x must have shape (n,), got {x.shape}")
    if not (eps > 0):
        raise ValueError(f"eps must be positive, got {eps}")
    grad = np.zeros_like(x)
    for i in range(x.size):
        step = np.zeros_like(x)
        step[i] = eps
        grad[i] = (float(f(x + step)) - float(f(x - step))) / (2.0 * eps)
    return grad


# ------------------------------------------------------------------ a tiny MLP made of Values

def init_scalar_mlp(n_in: int, n_hidden: int, *, seed: int = 0) -> dict[str, np.ndarray]:
    """Random weights for a one-hidden-layer MLP: W1 (H, D) and W2 (H,) ~ U(-1, 1)/sqrt(fan_in), zero biases.

    Returns plain NumPy arrays ``{"W1": (H, D), "b1": (H,), "W2": (H,), "b2": ()}``.
    """
    if n_in < 1 or n_hidden < 1:
        raise ValueError(f"n_in and n_hidden must be >= 1, got {n_in}, {n_hidden}")
    rng = numpy_rng(seed)
    return {"W1": rng.uniform(-1, 1, size=(n_hidden, n_in)) / math.sqrt(n_in),
            "b1": np.zeros(n_hidden),
            "W2": rng.uniform(-1, 1, size=n_hidden) / math.sqrt(n_hidden),
            "b2": np.array(0.0)}


def scalar_mlp_score(params: dict, x: Sequence) -> Value:
    """The score ``W2 . tanh(W1 x + b1) + b2`` of one input ``x`` (D,), built from Values.

    ``params`` holds Values (nested lists, as made by :func:`value_params`) or plain numbers.
    """
    hidden = []
    for w_row, b in zip(params["W1"], params["b1"]):
        z = b
        for w, xi in zip(w_row, x):
            z = z + w * float(xi)
        hidden.append(_as_value(z).tanh())
    s = params["b2"]
    for w, h in zip(params["W2"], hidden):
        s = s + w * h
    return _as_value(s)


def value_params(params: dict) -> dict:
    """NumPy parameters -> the same nested structure of leaf :class:`Value` objects."""
    def wrap(a):
        a = np.asarray(a, dtype=float)
        return Value(float(a)) if a.ndim == 0 else [wrap(v) for v in a]
    return {k: wrap(v) for k, v in params.items()}


def grads_of(vparams: dict) -> dict[str, np.ndarray]:
    """The ``.grad`` of every leaf of :func:`value_params`' output, as NumPy arrays of the same shapes."""
    def unwrap(v):
        return v.grad if isinstance(v, Value) else [unwrap(u) for u in v]
    return {k: np.array(unwrap(v), dtype=float) for k, v in vparams.items()}


def scalar_mlp_loss(vparams: dict, X, y) -> Value:
    """Mean hinge loss ``mean(relu(1 - t * score))`` with t = 2y - 1 in {-1, +1}, as one Value.

    Shapes: X (N, D), y (N,) in {0, 1}. Class 1 is predicted where the score is positive.
    """
    X = np.asarray(X, dtype=float)
    y = np.asarray(y)
    if X.ndim != 2 or y.shape != (X.shape[0],):
        raise ValueError(f"need X (N, D) and y (N,), got {X.shape} and {y.shape}")
    total = Value(0.0)
    for xi, yi in zip(X, y):
        t = 2.0 * float(yi) - 1.0
        total = total + (1.0 - t * scalar_mlp_score(vparams, xi)).relu()
    return total * (1.0 / len(X))
