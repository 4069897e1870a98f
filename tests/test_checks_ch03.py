"""The chapter 3 checks are fair both ways: correct answers get full marks, planted mistakes fail.

The solution comes from the nbgrader source notebook itself (setup and answer cells, executed
as a notebook kernel would). Beside it, each task has correct implementations written
differently (an iterative or Kahn-order backward pass, local derivatives instead of closures,
float32 weights, Values kept across steps...), which must pass too. Most planted mistakes are
the solution's own answer cell with one line changed, the way a student's bug looks; each must
make its check raise CheckFailed with a message that names what is wrong.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import nbformat
import numpy as np
import pytest
import torch

from autograder.checks import _ch03_graphs as graphs
from autograder.checks import _ch03_numerics as numerics
from autograder.checks import ch03_backprop as checks
from autograder.compare import CheckFailed
from autograder.guard import ForbiddenCall
from tests.notebook_kernel import correct, kernel, notebook_path, solution_of

ASSIGNMENT = "ch03_backprop"
# The mistake the nbgrader round trip in test_autograder_cli plants: (answer cell, wrong code).
ROUND_TRIP_MISTAKE = ("ch03_numerical_grad_answer",
                      "def numerical_grad(f, x, eps=1e-6):\n"
                      "    import numpy as np\n"
                      "    x = np.array(x, dtype=float)\n"
                      "    grad = np.zeros_like(x)\n"
                      "    for i in range(x.size):\n"
                      "        step = np.zeros_like(x)\n"
                      "        step[i] = eps\n"
                      "        grad[i] = (f(x + step) - f(x)) / eps  # forward difference\n"
                      "    return grad\n")

pytestmark = [pytest.mark.ch03, pytest.mark.usefixtures("one_thread")]  # small torch runs: one thread

RELEASE = Path(__file__).resolve().parents[1] / "exercises" / ASSIGNMENT / f"{ASSIGNMENT}.ipynb"
SETUP = "import math\nimport numpy as np\n"
WEIGHTS = numerics.tanh_layer_weights()  # the tanh_layer objective's W, V without a course secret


# ----------------------------------------------------------------- helpers

def _cells(path: Path) -> dict[str, str]:
    nb = nbformat.read(path, as_version=4)
    return {c.metadata["nbgrader"]["grade_id"]: c.source for c in nb.cells
            if c.cell_type == "code" and "nbgrader" in c.metadata}


SOURCES = _cells(notebook_path(ASSIGNMENT))


def _answer(task: str) -> str:
    return SOURCES[f"ch03_{task}_answer"]


def _variant(task: str, old: str, new: str) -> str:
    """The solution's answer cell with ``old`` replaced by ``new`` (which must occur in it)."""
    src = _answer(task)
    assert old in src, f"{old!r} not in the {task} answer cell"
    return src.replace(old, new)


def _value_variant(old: str, new: str, *, remove: str | None = None):
    src = _variant("value", old, new) if old else _answer("value")
    if remove is not None:
        assert remove in src
        src = src.replace(remove, "")
    return kernel(SETUP, src)["Value"]


def _with_engine(*cells: str) -> dict:
    """A kernel with the solution's Value (and its MLP functions) plus ``cells``."""
    return kernel(SETUP, _answer("value"), *cells)


def check_of(task):
    return getattr(checks, task.check)


# ----------------------------------------------------------------- the notebook itself

@pytest.mark.parametrize("task", checks.TASKS, ids=lambda t: t.grade_id)
def test_solution_passes_check(task):
    check_of(task)(solution_of(ASSIGNMENT)[task.name])


@pytest.mark.parametrize("task", checks.TASKS, ids=lambda t: t.grade_id)
def test_blank_release_fails_with_replace_message(task):
    """The released notebook's stubs raise NotImplementedError; each check says to replace it."""
    cells = _cells(RELEASE)
    ns = kernel(cells["ch03_setup"], *(cells[f"{t.grade_id}_answer"] for t in checks.TASKS))
    with pytest.raises(CheckFailed, match=r"NotImplementedError.*replace `raise NotImplementedError\(\)`"):
        check_of(task)(ns[task.name])


# ----------------------------------------------------------------- the references

def test_torch_graph_known_answer():
    """c = a * b + a at a = 2, b = -3: value -4, dc/da = b + 1 = -2, dc/db = a = 2."""
    spec = {"leaves": [2.0, -3.0], "ops": [["mul", 0, 1], ["add", 2, 0]]}
    ref = graphs.torch_graph(spec)
    assert ref["data"] == [2.0, -3.0, -6.0, -4.0]
    assert ref["grad"] == [-2.0, 2.0, 1.0, 1.0]


@pytest.mark.parametrize("seed", range(8))
def test_random_graphs_are_deterministic_tame_and_connected(seed):
    spec = graphs.random_graph(seed, n_leaves=3 + seed % 2, n_ops=8 + seed)
    assert spec == graphs.random_graph(seed, n_leaves=3 + seed % 2, n_ops=8 + seed)
    ref = graphs.torch_graph(spec)
    assert all(math.isfinite(v) and abs(v) < 100 for v in ref["data"] + ref["grad"])
    codes = {op[0] for op in spec["ops"]}
    assert len(codes) >= 4, codes
    # every node reaches the output (its gradient may still be 0 behind a relu or a constant)
    used = {k for op in spec["ops"] for k in graphs.inputs_of(op)}
    assert set(range(len(spec["leaves"]) + len(spec["ops"]) - 1)) <= used


def test_random_graphs_reuse_nodes_and_put_constants_on_both_sides():
    specs = [graphs.random_graph(s, n_leaves=3 + s % 2, n_ops=8 + s) for s in range(8)]
    codes = {op[0] for spec in specs for op in spec["ops"]}
    assert {"c_add", "c_mul", "c_sub", "c_div", "mul_c", "pow", "neg", "tanh", "relu", "div"} <= codes
    assert any(op[0] in ("add", "mul", "sub", "div") and op[1] == op[2] for spec in specs for op in spec["ops"])


def test_library_engine_agrees_with_torch_on_the_check_graphs():
    """llmcourse.autograd.Value, a second implementation, passes the same comparisons (without the guard,
    which forbids students to use it)."""
    from llmcourse.autograd import Value

    for inputs, spec, hint, want in checks._value_cases(None):
        got = graphs.probe_value_graph(Value, spec)
        checks._compare_graph(got, want, spec, inputs=inputs, hint=hint)


def test_mlp_reference_matches_the_library_scalar_engine():
    from llmcourse.autograd import grads_of, scalar_mlp_loss, value_params

    params = numerics.make_mlp_params(3, 4, 0)
    X, y = numerics.mlp_data(params, 7, 0)
    loss, grads = numerics.mlp_reference(params, X, y)
    vp = value_params(params)
    out = scalar_mlp_loss(vp, X, y)
    out.backward()
    assert out.data == pytest.approx(loss, rel=1e-12)
    for k, g in grads_of(vp).items():
        np.testing.assert_allclose(g, grads[k], rtol=1e-10, atol=1e-13)


def test_mlp_reference_training_learns_the_moons():
    from llmcourse.tasks import make_2d_classification

    X, y = make_2d_classification("moons", n=24, noise=0.1, seed=3)
    X_test, y_test = make_2d_classification("moons", n=200, noise=0.1, seed=4)
    params, losses = numerics.mlp_reference(numerics.make_mlp_params(2, 6, 3), X, y, lr=0.5, steps=40)
    assert losses[-1] < 0.3 * losses[0]
    assert np.mean(numerics.mlp_predict(params, X_test) == y_test) >= 0.85


@pytest.mark.parametrize("name", sorted(numerics.OBJECTIVES))
def test_central_difference_reference_matches_autograd(name):
    x = np.linspace(-1.0, 1.2, 4)
    np.testing.assert_allclose(numerics.central_difference(name, x, 1e-5, WEIGHTS),
                               numerics.autograd_gradient(name, x, WEIGHTS), rtol=1e-7, atol=1e-9)
    value = float(numerics.objective(name, torch.tensor(x), WEIGHTS))
    assert value == pytest.approx(float(numerics.objective(name, x, WEIGHTS)), rel=1e-12)


@pytest.mark.parametrize("eps, rtol, atol", [(1e-3, checks.NG_RTOL, checks.NG_ATOL),
                                             (1e-6, checks.NG_DEFAULT_RTOL, checks.NG_DEFAULT_ATOL)])
def test_forward_difference_is_told_apart_at_the_check_eps(eps, rtol, atol):
    """At eps = 1e-3 and at the default 1e-6 the forward difference misses the central one by far more
    than the tolerance, at least on the quadratic (f'' = 1, so the gap is eps / 2 wherever x is)."""
    rng = np.random.default_rng(0)
    for name in numerics.OBJECTIVES:
        x = rng.uniform(-1.5, 1.5, size=3 if name != "tanh_layer" else 4)
        forward = numerics.forward_difference(name, x, eps, WEIGHTS)
        central = numerics.central_difference(name, x, eps, WEIGHTS)
        gap = np.max(np.abs(forward - central) / (atol + rtol * np.abs(central)))
        assert gap > 5 or name != "quadratic", (name, gap)


# ----------------------------------------------------------------- correct variants: full marks
# Value: four engines, each written from the task text alone: an explicit-stack topological sort,
# Kahn's order, local derivatives instead of closures (sub and div with rules of their own), tanh
# from exponentials.

class ValueIterativeTopo:
    """backward with an explicit-stack depth-first search (no recursion)."""

    def __init__(self, data, _children=(), _op=""):
        self.data = float(data)
        self.grad = 0.0
        self._backward = lambda: None
        self._prev = tuple(_children)
        self._op = _op

    @staticmethod
    def _wrap(x):
        return x if isinstance(x, ValueIterativeTopo) else ValueIterativeTopo(x)

    def __add__(self, other):
        other = self._wrap(other)
        out = ValueIterativeTopo(self.data + other.data, (self, other), "+")

        def _backward():
            self.grad += out.grad
            other.grad += out.grad
        out._backward = _backward
        return out

    def __mul__(self, other):
        other = self._wrap(other)
        out = ValueIterativeTopo(self.data * other.data, (self, other), "*")

        def _backward():
            self.grad += other.data * out.grad
            other.grad += self.data * out.grad
        out._backward = _backward
        return out

    def __pow__(self, k):
        out = ValueIterativeTopo(self.data ** k, (self,), "**")

        def _backward():
            self.grad += k * self.data ** (k - 1) * out.grad
        out._backward = _backward
        return out

    def tanh(self):
        t = math.tanh(self.data)
        out = ValueIterativeTopo(t, (self,), "tanh")

        def _backward():
            self.grad += (1 - t * t) * out.grad
        out._backward = _backward
        return out

    def relu(self):
        out = ValueIterativeTopo(self.data if self.data > 0 else 0.0, (self,), "relu")

        def _backward():
            if self.data > 0:
                self.grad += out.grad
        out._backward = _backward
        return out

    def __neg__(self):
        return self * -1.0

    def __sub__(self, other):
        return self + (-self._wrap(other))

    def __rsub__(self, other):
        return self._wrap(other) - self

    def __radd__(self, other):
        return self + other

    def __rmul__(self, other):
        return self * other

    def __truediv__(self, other):
        return self * self._wrap(other) ** -1

    def __rtruediv__(self, other):
        return self._wrap(other) / self

    def backward(self):
        order, visited = [], set()
        stack = [(self, False)]
        while stack:
            node, expanded = stack.pop()
            if expanded:
                order.append(node)
                continue
            if node in visited:
                continue
            visited.add(node)
            stack.append((node, True))
            for child in node._prev:
                if child not in visited:
                    stack.append((child, False))
        self.grad = 1.0
        for node in reversed(order):
            node._backward()


class ValueKahn:
    """backward in Kahn's order: a node runs once every node that uses it has run."""

    def __init__(self, data, _children=(), _op=""):
        self.data = float(data)
        self.grad = 0.0
        self._backward = lambda: None
        self._prev = tuple(_children)
        self._op = _op

    def _make(self, data, children, backward):
        out = ValueKahn(data, children)
        out._backward = lambda: backward(out.grad)
        return out

    def __add__(self, other):
        other = other if isinstance(other, ValueKahn) else ValueKahn(other)

        def back(g):
            self.grad += g
            other.grad += g
        return self._make(self.data + other.data, (self, other), back)

    def __mul__(self, other):
        other = other if isinstance(other, ValueKahn) else ValueKahn(other)

        def back(g):
            self.grad += other.data * g
            other.grad += self.data * g
        return self._make(self.data * other.data, (self, other), back)

    def __pow__(self, k):
        def back(g):
            self.grad += k * self.data ** (k - 1) * g
        return self._make(self.data ** k, (self,), back)

    def tanh(self):
        t = math.tanh(self.data)

        def back(g):
            self.grad += (1 - t ** 2) * g
        return self._make(t, (self,), back)

    def relu(self):
        def back(g):
            self.grad += g * (self.data > 0)
        return self._make(max(0.0, self.data), (self,), back)

    def __neg__(self):
        return -1 * self

    def __radd__(self, other):
        return self + other

    def __sub__(self, other):
        return self + -1 * other

    def __rsub__(self, other):
        return other + -1 * self

    def __rmul__(self, other):
        return self * other

    def __truediv__(self, other):
        other = other if isinstance(other, ValueKahn) else ValueKahn(other)
        return self * other ** -1

    def __rtruediv__(self, other):
        return other * self ** -1

    def backward(self):
        # count, for every node reachable from self, how many edges lead into it from its users
        users, seen, todo = {}, {id(self)}, [self]
        while todo:
            node = todo.pop()
            for child in node._prev:
                users[id(child)] = users.get(id(child), 0) + 1
                if id(child) not in seen:
                    seen.add(id(child))
                    todo.append(child)
        self.grad = 1.0
        ready = [self]
        while ready:
            node = ready.pop()
            node._backward()
            for child in node._prev:
                users[id(child)] -= 1
                if users[id(child)] == 0:
                    ready.append(child)


class ValueLocalDerivatives:
    """No closures: each node keeps (input, d out / d input) pairs; sub and div have their own rules."""

    def __init__(self, data, _children=(), _op="", _local=()):
        self.data = float(data)
        self.grad = 0.0
        self._prev = tuple(_children)
        self._local = tuple(_local)
        self._op = _op

    def _backward(self):
        for child, d in zip(self._prev, self._local):
            child.grad += d * self.grad

    @classmethod
    def lift(cls, x):
        return x if isinstance(x, cls) else cls(x)

    def __add__(self, other):
        other = self.lift(other)
        return ValueLocalDerivatives(self.data + other.data, (self, other), "+", (1.0, 1.0))

    def __radd__(self, other):
        return self.lift(other) + self

    def __mul__(self, other):
        other = self.lift(other)
        return ValueLocalDerivatives(self.data * other.data, (self, other), "*", (other.data, self.data))

    def __rmul__(self, other):
        return self.lift(other) * self

    def __sub__(self, other):
        other = self.lift(other)
        return ValueLocalDerivatives(self.data - other.data, (self, other), "-", (1.0, -1.0))

    def __rsub__(self, other):
        return self.lift(other) - self

    def __truediv__(self, other):
        other = self.lift(other)
        return ValueLocalDerivatives(self.data / other.data, (self, other), "/",
                                     (1.0 / other.data, -self.data / other.data ** 2))

    def __rtruediv__(self, other):
        return self.lift(other) / self

    def __neg__(self):
        return ValueLocalDerivatives(-self.data, (self,), "neg", (-1.0,))

    def __pow__(self, k):
        return ValueLocalDerivatives(self.data ** k, (self,), f"**{k}", (k * self.data ** (k - 1),))

    def tanh(self):
        t = math.tanh(self.data)
        return ValueLocalDerivatives(t, (self,), "tanh", (1.0 - t * t,))

    def relu(self):
        return ValueLocalDerivatives(max(self.data, 0.0), (self,), "relu", (float(self.data > 0),))

    def backward(self):
        order, seen = [], set()

        def visit(v):
            if v not in seen:
                seen.add(v)
                for c in v._prev:
                    visit(c)
                order.append(v)
        visit(self)
        for v in order:
            v.grad = 0.0
        self.grad = 1.0
        for v in reversed(order):
            v._backward()


class ValueExpTanh:
    """tanh from exponentials, relu as a product, derived ops through the primitives."""

    def __init__(self, data, _children=(), _op=""):
        self.data = float(data)
        self.grad = 0.0
        self._backward = lambda: None
        self._prev = set(_children)
        self._op = _op

    def __add__(self, other):
        other = other if isinstance(other, ValueExpTanh) else ValueExpTanh(other)
        out = ValueExpTanh(self.data + other.data, (self, other), "+")

        def _backward():
            self.grad += 1.0 * out.grad
            other.grad += 1.0 * out.grad
        out._backward = _backward
        return out

    def __mul__(self, other):
        other = other if isinstance(other, ValueExpTanh) else ValueExpTanh(other)
        out = ValueExpTanh(self.data * other.data, (self, other), "*")

        def _backward():
            self.grad += other.data * out.grad
            other.grad += self.data * out.grad
        out._backward = _backward
        return out

    def __pow__(self, other):
        out = ValueExpTanh(self.data ** other, (self,), f"**{other}")

        def _backward():
            self.grad += (other * self.data ** (other - 1)) * out.grad
        out._backward = _backward
        return out

    def tanh(self):
        e = math.exp(2 * self.data)
        t = (e - 1) / (e + 1)
        out = ValueExpTanh(t, (self,), "tanh")

        def _backward():
            self.grad += (1 - out.data ** 2) * out.grad
        out._backward = _backward
        return out

    def relu(self):
        out = ValueExpTanh(self.data * (self.data > 0), (self,), "ReLU")

        def _backward():
            self.grad += (out.data > 0) * out.grad
        out._backward = _backward
        return out

    def __neg__(self):
        return self * -1

    def __radd__(self, other):
        return self + other

    def __sub__(self, other):
        return self + (-other)

    def __rsub__(self, other):
        return other + (-self)

    def __rmul__(self, other):
        return self * other

    def __truediv__(self, other):
        return self * other ** -1

    def __rtruediv__(self, other):
        return other * self ** -1

    def backward(self):
        topo, visited = [], set()

        def build(v):
            if v not in visited:
                visited.add(v)
                for child in v._prev:
                    build(child)
                topo.append(v)
        build(self)
        self.grad = 1
        for v in reversed(topo):
            v._backward()


# mlp_loss_and_grads and train_mlp: cells run after the solution's Value (and mlp_loss_and_grads).
MLP_SUM_OF_SAMPLES = '''
def mlp_loss_and_grads(params, X, y):
    W1 = [[Value(w) for w in row] for row in params["W1"]]
    b1 = [Value(b) for b in params["b1"]]
    W2 = [Value(w) for w in params["W2"]]
    b2 = Value(params["b2"])
    sample_losses = []
    for x, label in zip(X, y):
        h = [sum((w * float(xi) for w, xi in zip(row, x)), b).tanh() for row, b in zip(W1, b1)]
        score = sum((w * hj for w, hj in zip(W2, h)), b2)
        t = 1.0 if label == 1 else -1.0
        sample_losses.append((1 - t * score).relu())
    loss = sum(sample_losses) * (1.0 / len(X))
    loss.backward()
    grads = {"W1": np.array([[w.grad for w in row] for row in W1]),
             "b1": np.array([b.grad for b in b1]),
             "W2": np.array([w.grad for w in W2]),
             "b2": np.array(b2.grad)}
    return loss.data, grads
'''

MLP_FLOAT32 = '''
def mlp_loss_and_grads(params, X, y):
    """The weights and inputs in float32, as a GPU would hold them."""
    P = {k: np.asarray(v, dtype=np.float32) for k, v in params.items()}
    X = np.asarray(X, dtype=np.float32)
    H, D = P["W1"].shape
    W1 = [[Value(P["W1"][j, i]) for i in range(D)] for j in range(H)]
    b1 = [Value(P["b1"][j]) for j in range(H)]
    W2 = [Value(P["W2"][j]) for j in range(H)]
    b2 = Value(P["b2"])
    total = 0
    for n in range(len(X)):
        score = b2
        for j in range(H):
            z = b1[j]
            for i in range(D):
                z = z + W1[j][i] * X[n, i]
            score = score + W2[j] * z.tanh()
        total = total + (1 - (2 * int(y[n]) - 1) * score).relu()
    loss = total / len(X)
    loss.backward()
    grads = {"W1": np.array([[W1[j][i].grad for i in range(D)] for j in range(H)], dtype=np.float32),
             "b1": np.array([v.grad for v in b1], dtype=np.float32),
             "W2": np.array([v.grad for v in W2], dtype=np.float32),
             "b2": np.float32(b2.grad)}
    return np.float32(loss.data), grads
'''

MLP_NEURON_HELPERS = '''
def _neuron(weights, bias, inputs):
    out = bias
    for w, v in zip(weights, inputs):
        out = out + w * v
    return out


def mlp_loss_and_grads(params, X, y):
    shapes = {k: np.shape(v) for k, v in params.items()}
    P = {k: [Value(v) for v in np.ravel(params[k])] for k in ("W1", "b1", "W2", "b2")}
    H, D = shapes["W1"]
    rows = [P["W1"][j * D:(j + 1) * D] for j in range(H)]
    loss = Value(0.0)
    for x, label in zip(np.asarray(X, dtype=float).tolist(), np.asarray(y).tolist()):
        hidden = [_neuron(rows[j], P["b1"][j], x).tanh() for j in range(H)]
        score = _neuron(P["W2"], P["b2"][0], hidden)
        margin = score * (2 * label - 1)
        loss = loss + (-margin + 1).relu()
    loss = loss / len(X)
    loss.backward()
    grads = {k: np.array([v.grad for v in P[k]]).reshape(shapes[k]) for k in P}
    grads["b2"] = float(grads["b2"])
    return loss.data, grads
'''

TRAIN_COPY_IN_PLACE = '''
def train_mlp(params, X, y, *, lr=0.1, steps=100):
    params = {k: np.array(v, dtype=float, copy=True) for k, v in params.items()}
    losses = np.zeros(steps)
    for s in range(steps):
        losses[s], grads = mlp_loss_and_grads(params, X, y)
        for k in params:
            params[k] -= lr * grads[k]
    return params, losses
'''

TRAIN_FLOAT32 = '''
def train_mlp(params, X, y, *, lr=0.1, steps=100):
    params = {k: np.asarray(v, dtype=np.float32).copy() for k, v in params.items()}
    losses = []
    for _ in range(steps):
        loss, grads = mlp_loss_and_grads(params, X, y)
        losses.append(np.float32(loss))
        params = {k: (params[k] - np.float32(lr) * np.asarray(grads[k], dtype=np.float32)) for k in params}
    return params, np.array(losses, dtype=np.float32)
'''

TRAIN_PERSISTENT_VALUES = '''
def train_mlp(params, X, y, *, lr=0.1, steps=100):
    """One set of Values for the whole run; their .grad is reset before every backward pass."""
    shapes = {k: np.shape(v) for k, v in params.items()}
    P = {k: [Value(v) for v in np.ravel(np.asarray(params[k], dtype=float))] for k in params}
    H, D = shapes["W1"]
    losses = []
    for _ in range(steps):
        for vs in P.values():
            for v in vs:
                v.grad = 0.0
        total = Value(0.0)
        for x, label in zip(np.asarray(X, dtype=float), y):
            score = P["b2"][0]
            for j in range(H):
                z = P["b1"][j]
                for i in range(D):
                    z = z + P["W1"][j * D + i] * float(x[i])
                score = score + P["W2"][j] * z.tanh()
            total = total + (1 - (2.0 * float(label) - 1.0) * score).relu()
        loss = total / len(X)
        loss.backward()
        losses.append(loss.data)
        for vs in P.values():
            for v in vs:
                v.data -= lr * v.grad
    return {k: np.array([v.data for v in P[k]]).reshape(shapes[k]) for k in P}, np.array(losses)
'''

TRAIN_ORDERED_DICT_LIST_FLOAT_B2 = '''
from collections import OrderedDict


def train_mlp(params, X, y, *, lr=0.1, steps=100):
    W1, b1, W2 = (np.array(params[k], dtype=float) for k in ("W1", "b1", "W2"))
    b2 = float(params["b2"])
    losses = []
    for _ in range(steps):
        loss, g = mlp_loss_and_grads({"W1": W1, "b1": b1, "W2": W2, "b2": np.array(b2)}, X, y)
        losses.append(float(loss))
        W1, b1, W2 = W1 - lr * g["W1"], b1 - lr * g["b1"], W2 - lr * g["W2"]
        b2 = b2 - lr * float(g["b2"])
    return OrderedDict(W1=W1, b1=b1, W2=W2, b2=b2), losses
'''


# numerical_grad: rows of eps * I, a saved entry restored, +eps then -2 eps on a copy, a list back.
def ng_eye_rows(f, x, eps=1e-6):
    x = np.asarray(x, dtype=float)
    return np.array([(f(x + h) - f(x - h)) / (2 * eps) for h in eps * np.eye(len(x))])


def ng_restore_saved(f, x, eps=1e-6):
    x = np.array(x, dtype=np.float64)
    grad = np.empty_like(x)
    for i in range(len(x)):
        saved = x[i]
        x[i] = saved + eps
        up = f(x)
        x[i] = saved - eps
        down = f(x)
        x[i] = saved
        grad[i] = (up - down) / (2 * eps)
    return grad


def ng_plus_minus_two_eps_on_copy(f, x, eps=1e-6):
    z = x.copy()
    grad = np.zeros(z.shape)
    for i in range(z.size):
        z[i] += eps
        f_plus = f(z)
        z[i] -= 2 * eps
        f_minus = f(z)
        z[i] += eps
        grad[i] = (f_plus - f_minus) / (2 * eps)
    return grad


def ng_list_half_over_eps(f, x, eps=1e-6):
    out = []
    for i in range(len(x)):
        e = np.zeros(len(x))
        e[i] = eps
        out.append(0.5 * (f(x + e) - f(x - e)) / eps)
    return out


VALUE_VARIANTS = (ValueIterativeTopo, ValueKahn, ValueLocalDerivatives, ValueExpTanh)
MLP_VARIANTS = {"mlp_sum_of_samples": MLP_SUM_OF_SAMPLES, "mlp_float32": MLP_FLOAT32,
                "mlp_neuron_helpers": MLP_NEURON_HELPERS}
TRAIN_VARIANTS = {"train_copy_in_place": TRAIN_COPY_IN_PLACE, "train_float32": TRAIN_FLOAT32,
                  "train_persistent_values": TRAIN_PERSISTENT_VALUES,
                  "train_ordered_dict_list_float_b2": TRAIN_ORDERED_DICT_LIST_FLOAT_B2}
NG_VARIANTS = (ng_eye_rows, ng_restore_saved, ng_plus_minus_two_eps_on_copy, ng_list_half_over_eps)


def _mlp_variant(name: str):
    return _with_engine(MLP_VARIANTS[name])["mlp_loss_and_grads"]


def _train_variant(name: str):
    return _with_engine(_answer("mlp_loss_and_grads"), TRAIN_VARIANTS[name])["train_mlp"]


@pytest.mark.parametrize("cls", correct(*VALUE_VARIANTS))
def test_check_value_gives_full_marks_to_correct_variants(cls):
    checks.check_value(cls)


@pytest.mark.parametrize("name", list(MLP_VARIANTS))
def test_check_mlp_loss_and_grads_gives_full_marks_to_correct_variants(name):
    checks.check_mlp_loss_and_grads(_mlp_variant(name))


@pytest.mark.parametrize("name", list(TRAIN_VARIANTS))
def test_check_train_mlp_gives_full_marks_to_correct_variants(name):
    checks.check_train_mlp(_train_variant(name))


@pytest.mark.parametrize("fn", correct(*NG_VARIANTS))
def test_check_numerical_grad_gives_full_marks_to_correct_variants(fn):
    checks.check_numerical_grad(fn)


# ----------------------------------------------------------------- planted mistakes: Value

BFS_BACKWARD = '''    def backward(self):
        """Breadth-first from the output: NOT a topological order."""
        self.grad = 1.0
        queue, seen = [self], set()
        while queue:
            node = queue.pop(0)
            if id(node) in seen:
                continue
            seen.add(id(node))
            node._backward()
            queue.extend(node._prev)
'''
RECURSIVE_BACKWARD = '''    def backward(self, _start=True):
        """Recursion into the inputs without a topological order."""
        if _start:
            self.grad = 1.0
        self._backward()
        for child in self._prev:
            child.backward(_start=False)
'''
SOLUTION_BACKWARD = '''    def backward(self):
        """Fill in .grad of every node this one depends on with d(self)/d(node)."""
        ### BEGIN SOLUTION
        self.grad = 1.0
        for node in reversed(topological_order(self)):
            node._backward()
        ### END SOLUTION'''

VALUE_MISTAKES = {
    "assign_instead_of_accumulate": (("grad += ", "grad = "), None,
                                     r"case=a \* a \(a used twice\).*accumulate with `\+=`"),
    "backward_breadth_first": ((SOLUTION_BACKWARD, BFS_BACKWARD), None, r"REVERSE TOPOLOGICAL ORDER"),
    "backward_recursive_without_order": ((SOLUTION_BACKWARD, RECURSIVE_BACKWARD), None,
                                         r"a node feeds two later nodes.*REVERSE TOPOLOGICAL ORDER"),
    "tanh_derivative_from_input": (("(1.0 - t ** 2)", "(1.0 - self.data ** 2)"), None,
                                   r"case=a\.tanh\(\).*1 - tanh\(x\)\*\*2, computed from the OUTPUT"),
    "relu_gradient_on_wrong_side": (("(1.0 if self.data > 0 else 0.0)", "(1.0 if self.data < 0 else 0.0)"),
                                    None, r"relu\(\) \(with a > 0\).*only where its INPUT is positive"),
    "pow_derivative_without_exponent": (("k * self.data ** (k - 1)", "self.data ** (k - 1)"), None,
                                        r"case=a \*\* 3.*do not forget the factor k"),
    "mul_gradient_swapped": (("self.grad += other.data * out.grad", "self.grad += self.data * out.grad"),
                             None, r"case=a \* b.*d\(a\*b\)/da = b"),
    "output_grad_not_seeded": (("        self.grad = 1.0\n        for node", "        for node"), None,
                               r"case=a \+ b.*every \.grad is 0.*set the output's grad to 1\.0"),
    "radd_missing": (None, '''    def __radd__(self, other):
        """other + self, for a plain number other."""
        ### BEGIN SOLUTION
        return self + other
        ### END SOLUTION
''', r"unsupported operand.*for case=2 \+ a.*__radd__"),
    "rmul_missing": (None, '''    def __rmul__(self, other):
        """other * self, for a plain number other."""
        ### BEGIN SOLUTION
        return self * other
        ### END SOLUTION
''', r"unsupported operand.*for case=3 \* a.*__rmul__"),
    "add_without_return": (("        out._backward = _backward\n        return out\n        ### END SOLUTION\n\n    def __mul__",
                            "        out._backward = _backward\n        ### END SOLUTION\n\n    def __mul__"), None,
                           r"n2 = a \+ b gave None \(is a `return` missing"),
    "rsub_backwards": (("return (-self) + other", "return self - other"), None,
                       r"case=1 - a.*forward value of n2 = 1 - a"),
    "truediv_inverts_wrong_operand": (("return self * other ** -1", "return self ** -1 * other"), None,
                                      r"case=a / b.*forward value of n2 = a / b"),
}


def _value_mistake(name: str):
    replace, remove, _ = VALUE_MISTAKES[name]
    return _value_variant(*(replace or ("", "")), remove=remove)


@pytest.mark.parametrize("name", list(VALUE_MISTAKES))
def test_check_value_rejects(name):
    with pytest.raises(CheckFailed, match=VALUE_MISTAKES[name][2]):
        checks.check_value(_value_mistake(name))


def test_value_case_titles_name_nodes_as_their_graph_listing_does():
    """A title names no inner node the listing beside it defines differently; a one-op title is its op."""
    for inputs, spec, _, _ in checks._value_cases(None):
        if "case" not in inputs:
            continue
        defined = dict(re.findall(r"(n\d+) = ([^;]+)", inputs["graph"]))
        for node in re.findall(r"\bn\d+\b", inputs["case"]):
            assert node in defined, (inputs["case"], inputs["graph"])
        if len(spec["ops"]) == 1:
            assert inputs["case"].split(" (")[0] == defined[f"n{len(spec['leaves'])}"], inputs


def test_check_value_reason_names_nodes_as_its_graph_listing_does():
    """The order-sensitive case: its title, its listing and its reason use one set of node names."""
    with pytest.raises(CheckFailed) as info:
        checks.check_value(_value_mistake("backward_recursive_without_order"))
    assert ("case=a node feeds two later nodes, one through the other (the order of backward matters), "
            "graph=a=0.7; n1 = 2 * a; n2 = 3 * n1; n3 = n1 + n2: dn3/da (the .grad of a) is 10, expected 8. "
            "a is used by: n1 = 2 * a, whose own gradients are right") in str(info.value)


# ----------------------------------------------------------------- planted mistakes: mlp_loss_and_grads

MLP_MISTAKES = {
    "sum_not_mean": (("loss = total / len(X)", "loss = total"), r"loss \(mean hinge loss.* for N=5, D=2, H=3"),
    "labels_not_mapped_to_pm1": (("t = 2.0 * float(label) - 1.0", "t = float(label)"), r"loss .*N=5, D=2, H=3"),
    "bias_b2_forgotten": (("score = b2\n", "score = Value(0.0)\n"), r"loss .*N=5, D=2, H=3"),
    "relu_hidden_units": (("hidden.append(z.tanh())", "hidden.append(z.relu())"), r"for N=5, D=2, H=3"),
    "hinge_sign_flipped": (("(1 - t * score).relu()", "(1 + t * score).relu()"), r"loss .*N=5, D=2, H=3"),
    "returns_weights_not_grads": (('"W1": np.array([[w.grad for w in row] for row in W1])',
                                   '"W1": np.array([[w.data for w in row] for row in W1])'),
                                  r"grads\['W1'\] for N=5, D=2, H=3, seed=0: max \|got-want\|"),
    "W1_grads_transposed": (('"W1": np.array([[w.grad for w in row] for row in W1])',
                             '"W1": np.array([[w.grad for w in row] for row in W1]).T'),
                            r"grads\['W1'\] for N=5, D=2, H=3, seed=0: shape \(2, 3\) but expected \(3, 2\)"),
}


@pytest.mark.parametrize("name", list(MLP_MISTAKES))
def test_check_mlp_loss_and_grads_rejects(name):
    (old, new), match = MLP_MISTAKES[name]
    ns = _with_engine(_variant("mlp_loss_and_grads", old, new))
    with pytest.raises(CheckFailed, match=match):
        checks.check_mlp_loss_and_grads(ns["mlp_loss_and_grads"])


# ----------------------------------------------------------------- planted mistakes: train_mlp

ACCUMULATING_TRAINER = '''
def train_mlp(params, X, y, *, lr=0.1, steps=100):
    """Keeps Values from step to step and never resets their .grad."""
    P = {k: [Value(v) for v in np.ravel(np.asarray(params[k], dtype=float))] for k in params}
    shapes = {k: np.shape(params[k]) for k in params}
    losses = []
    for _ in range(steps):
        H = len(P["b1"])
        D = len(P["W1"]) // H
        total = Value(0.0)
        for x, label in zip(np.asarray(X, dtype=float), y):
            score = P["b2"][0]
            for j in range(H):
                z = P["b1"][j]
                for i in range(D):
                    z = z + P["W1"][j * D + i] * float(x[i])
                score = score + P["W2"][j] * z.tanh()
            total = total + (1 - (2.0 * float(label) - 1.0) * score).relu()
        loss = total / len(X)
        loss.backward()
        losses.append(loss.data)
        for vs in P.values():
            for v in vs:
                v.data -= lr * v.grad  # .grad is never reset to 0
    out = {k: np.array([v.data for v in P[k]]).reshape(shapes[k]) for k in P}
    return out, np.array(losses)
'''

TRAIN_MISTAKES = {
    "never_updates": (("params = {k: params[k] - lr * np.asarray(grads[k]) for k in params}", "pass"),
                      r"params after training\['W1'\] for N=6, D=2, H=3, seed=10, lr=0.5, steps=1"),
    "wrong_sign": (("params[k] - lr * np.asarray(grads[k])", "params[k] + lr * np.asarray(grads[k])"),
                   r"params after training\['W1'\] for N=6, D=2, H=3, seed=10, lr=0.5, steps=1"),
    "loss_recorded_after_update": (
        ("        losses.append(loss)\n        params = {k: params[k] - lr * np.asarray(grads[k]) for k in params}",
         "        params = {k: params[k] - lr * np.asarray(grads[k]) for k in params}\n"
         "        losses.append(mlp_loss_and_grads(params, X, y)[0])"),
        r"losses \(losses\[i\] is the loss before update i\) for N=6"),
    "ignores_steps": (("for _ in range(steps):", "for _ in range(1):"),
                      r"losses .*steps=3: shape \(1,\) but expected \(3,\)"),
    "b2_never_updated": (("for k in params}", "for k in params if k != 'b2'} | {'b2': params['b2']}"),
                         r"params after training\['b2'\] for N=6"),
    "lr_ignored": (("params[k] - lr * np.asarray(grads[k])", "params[k] - 0.1 * np.asarray(grads[k])"),
                   r"params after training\['W1'\] for N=6, D=2, H=3, seed=10, lr=0.5"),
}


@pytest.mark.parametrize("name", list(TRAIN_MISTAKES))
def test_check_train_mlp_rejects(name):
    (old, new), match = TRAIN_MISTAKES[name]
    ns = _with_engine(_answer("mlp_loss_and_grads"),
                      _variant("train_mlp", old, new))
    with pytest.raises(CheckFailed, match=match):
        checks.check_train_mlp(ns["train_mlp"])


def test_check_train_mlp_rejects_gradients_that_accumulate_across_steps():
    ns = _with_engine(ACCUMULATING_TRAINER)
    with pytest.raises(CheckFailed, match=r"steps=3"):
        checks.check_train_mlp(ns["train_mlp"])


# ----------------------------------------------------------------- planted mistakes: numerical_grad

def ng_forward(f, x, eps=1e-6):
    x = np.array(x, dtype=float)
    return np.array([(f(x + eps * e) - f(x)) / eps for e in np.eye(x.size)])


def ng_divides_by_eps(f, x, eps=1e-6):
    x = np.array(x, dtype=float)
    return np.array([(f(x + eps * e) - f(x - eps * e)) / eps for e in np.eye(x.size)])


def ng_sign_flipped(f, x, eps=1e-6):
    x = np.array(x, dtype=float)
    return np.array([(f(x - eps * e) - f(x + eps * e)) / (2 * eps) for e in np.eye(x.size)])


def ng_in_place_not_restored(f, x, eps=1e-6):
    grad = np.zeros(len(x))
    for i in range(len(x)):
        x[i] += eps
        up = f(x)
        x[i] -= 2 * eps
        grad[i] = (up - f(x)) / (2 * eps)
    return grad


def ng_all_coordinates_at_once(f, x, eps=1e-6):
    x = np.array(x, dtype=float)
    return np.full(x.shape, (f(x + eps) - f(x - eps)) / (2 * eps))


def ng_returns_list_of_one(f, x, eps=1e-6):
    x = np.array(x, dtype=float)
    return [(f(x + eps) - f(x - eps)) / (2 * eps)]


def ng_forward_below_1e5(f, x, eps=1e-6):
    """Central at the eps the checks used to pass, forward below 1e-5, so at its own default."""
    x = np.array(x, dtype=float)
    grad = np.zeros_like(x)
    for i in range(x.size):
        e = np.zeros_like(x)
        e[i] = eps
        grad[i] = (f(x + e) - f(x)) / eps if eps < 1e-5 else (f(x + e) - f(x - e)) / (2 * eps)
    return grad


NG_MISTAKES = {
    ng_forward: r"for f=cubic_sin.*eps=0.001: .* - this is the FORWARD difference",
    ng_divides_by_eps: r"twice the right answer: divide by 2 \* eps",
    ng_sign_flipped: r"sign is flipped",
    ng_in_place_not_restored: r"changed x in place",
    ng_all_coordinates_at_once: r"gradient vs the central difference .*for f=cubic_sin",
    ng_returns_list_of_one: r"gradient for f=cubic_sin.*shape \(1,\) but expected \(3,\)",
    ng_forward_below_1e5: r"eps=not given \(the default, 1e-6\): max \|got-want\|.*FORWARD difference",
}


def test_check_numerical_grad_also_calls_it_without_eps():
    """The default eps is checked too: a function that is central only for the eps the checks pass fails."""
    seen = []

    def numerical_grad(f, x, eps=None):
        seen.append(eps)
        return ng_eye_rows(f, x, 1e-6 if eps is None else eps)

    checks.check_numerical_grad(numerical_grad)
    assert set(seen) == {1e-3, 1e-5, None}
    with pytest.raises(CheckFailed, match=r"eps=not given \(the default, 1e-6\).*FORWARD difference"):
        checks.check_numerical_grad(ng_forward_below_1e5)


@pytest.mark.parametrize("wrong", list(NG_MISTAKES), ids=lambda f: f.__name__)
def test_check_numerical_grad_rejects(wrong):
    with pytest.raises(CheckFailed, match=NG_MISTAKES[wrong]):
        checks.check_numerical_grad(wrong)


# ----------------------------------------------------------------- the guard

def test_guard_catches_torch_inside_the_engine():
    src = _variant("value", "t = math.tanh(self.data)", "t = float(torch.tanh(torch.tensor(self.data)))")
    Value = kernel(SETUP + "import torch\n", src)["Value"]
    with pytest.raises(ForbiddenCall, match=r"tanh uses torch\.(tanh|tensor) \(from torch\)"):
        checks.check_value(Value)


def test_guard_catches_the_course_engine_in_the_mlp():
    ns = _with_engine("from llmcourse.autograd import Value as CourseValue\n",
                      _variant("mlp_loss_and_grads", "b2 = Value(float(params[\"b2\"]))",
                               "b2 = CourseValue(float(params[\"b2\"]))"))
    with pytest.raises(ForbiddenCall, match=r"mlp_loss_and_grads uses CourseValue \(from llmcourse\.autograd\)"):
        checks.check_mlp_loss_and_grads(ns["mlp_loss_and_grads"])


def test_guard_catches_torch_autograd_in_numerical_grad():
    ns = kernel(SETUP + "import torch\n",
                "def numerical_grad(f, x, eps=1e-6):\n"
                "    t = torch.tensor(x, requires_grad=True)\n"
                "    return torch.autograd.functional.jacobian(lambda v: torch.tensor(f(v.numpy())), t)\n")
    with pytest.raises(ForbiddenCall, match=r"numerical_grad uses torch"):
        checks.check_numerical_grad(ns["numerical_grad"])


def test_guard_catches_scipy_in_numerical_grad():
    ns = kernel(SETUP, "def numerical_grad(f, x, eps=1e-6):\n"
                "    from scipy.optimize import approx_fprime\n"
                "    return approx_fprime(x, f, eps)\n")
    with pytest.raises(ForbiddenCall, match=r"numerical_grad imports from scipy\.optimize"):
        checks.check_numerical_grad(ns["numerical_grad"])


def test_guard_catches_torch_at_run_time_without_source():
    ns = kernel(SETUP, "def numerical_grad(f, x, eps=1e-6):\n"
                "    th = __import__('torch')\n"
                "    t = th.tensor(x, requires_grad=True)\n"
                "    (g,) = th.autograd.grad(th.tensor(f(x), requires_grad=True) + 0 * t.sum(), t)\n"
                "    return g.numpy()\n", keep_source=False)
    with pytest.raises(ForbiddenCall, match=r"your code called torch"):
        checks.check_numerical_grad(ns["numerical_grad"])


def test_check_value_explains_a_non_class():
    with pytest.raises(CheckFailed, match=r"Value: expected a function or class"):
        checks.check_value(3.5)


# ----------------------------------------------------------------- under a course secret

SECRETS = ("course secret A", "another secret", "3")


@pytest.mark.parametrize("secret", SECRETS)
def test_checks_hold_under_several_course_secrets(monkeypatch, secret):
    """With a secret the inputs change; the solution and the correct variants still pass, mistakes fail."""
    monkeypatch.setenv("AUTOGRADER_SECRET", secret)
    solution = solution_of(ASSIGNMENT)
    correct_ones = {"check_value": VALUE_VARIANTS,
                    "check_mlp_loss_and_grads": [_mlp_variant(n) for n in MLP_VARIANTS],
                    "check_train_mlp": [_train_variant(n) for n in TRAIN_VARIANTS],
                    "check_numerical_grad": NG_VARIANTS}
    wrong_ones = {"check_value": [_value_mistake(n) for n in VALUE_MISTAKES],
                  "check_mlp_loss_and_grads": [_with_engine(_variant("mlp_loss_and_grads", *MLP_MISTAKES[n][0]))
                                               ["mlp_loss_and_grads"] for n in MLP_MISTAKES],
                  "check_train_mlp": [_with_engine(_answer("mlp_loss_and_grads"), _variant("train_mlp", *change))
                                      ["train_mlp"] for change, _ in TRAIN_MISTAKES.values()]
                  + [_with_engine(ACCUMULATING_TRAINER)["train_mlp"]],
                  "check_numerical_grad": list(NG_MISTAKES)}
    for task in checks.TASKS:
        for fn in (solution[task.name], *correct_ones[task.check]):
            check_of(task)(fn)
        for fn in wrong_ones[task.check]:
            with pytest.raises(CheckFailed):
                check_of(task)(fn)


def test_course_secret_changes_every_random_input(monkeypatch):
    public = (checks._value_cases(None), checks._mlp_cases(None), checks._train_cases(None),
              checks._numerical_grad_cases(None), numerics.tanh_layer_weights())
    monkeypatch.setenv("AUTOGRADER_SECRET", SECRETS[0])
    hidden = (checks._value_cases(SECRETS[0]), checks._mlp_cases(SECRETS[0]), checks._train_cases(SECRETS[0]),
              checks._numerical_grad_cases(SECRETS[0]), numerics.tanh_layer_weights())
    assert hidden[0][-1][1] != public[0][-1][1], "random graphs"
    assert not np.array_equal(hidden[1][0][2], public[1][0][2]), "MLP inputs"
    assert not np.array_equal(hidden[2][-1][2], public[2][-1][2]), "the moons"
    assert not np.array_equal(hidden[3][0][2], public[3][0][2]), "numerical_grad's x"
    assert not np.array_equal(hidden[4][0], public[4][0]), "tanh_layer's W"
