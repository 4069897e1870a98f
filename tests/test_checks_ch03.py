"""The chapter 3 checks have teeth: the shipped solution passes, planted mistakes fail.

The solution comes from the nbgrader source notebook itself (setup and answer cells, executed
as a notebook kernel would). Most planted mistakes are the solution's own answer cell with one
line changed, the way a student's bug looks; each must make its check raise CheckFailed with a
message that names what is wrong.
"""

from __future__ import annotations

import math
from pathlib import Path

import nbformat
import numpy as np
import pytest
import torch

from autograder.checks import ch03_backprop as checks
from autograder.compare import CheckFailed
from autograder.guard import ForbiddenCall
from tests.notebook_kernel import assert_hidden_tests_call_checks, kernel, solution_namespace

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

pytestmark = pytest.mark.ch03

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "solutions" / ASSIGNMENT / f"{ASSIGNMENT}.ipynb"
RELEASE = ROOT / "exercises" / ASSIGNMENT / f"{ASSIGNMENT}.ipynb"
GRADE_IDS = {
    "ch03_value": ("value", "Value"),
    "ch03_mlp_loss_and_grads": ("mlp_loss_and_grads", "mlp_loss_and_grads"),
    "ch03_train_mlp": ("train_mlp", "train_mlp"),
    "ch03_numerical_grad": ("numerical_grad", "numerical_grad"),
}
SETUP = "import math\nimport numpy as np\n"


# ----------------------------------------------------------------- helpers

def _cells(path: Path) -> dict[str, str]:
    nb = nbformat.read(path, as_version=4)
    return {c.metadata["nbgrader"]["grade_id"]: c.source for c in nb.cells
            if c.cell_type == "code" and "nbgrader" in c.metadata}


SOURCES = _cells(NOTEBOOK)


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


@pytest.fixture(scope="module")
def notebook():
    return nbformat.read(NOTEBOOK, as_version=4)


@pytest.fixture(scope="module")
def solution() -> dict:
    return solution_namespace(NOTEBOOK)


# ----------------------------------------------------------------- the notebook itself

def test_notebook_grade_ids_call_their_hidden_checks(notebook):
    assert_hidden_tests_call_checks(notebook, GRADE_IDS)


@pytest.mark.parametrize("grade_id", list(GRADE_IDS))
def test_solution_passes_check(solution, grade_id):
    task, name = GRADE_IDS[grade_id]
    getattr(checks, f"check_{task}")(solution[name])


@pytest.mark.parametrize("grade_id", list(GRADE_IDS))
def test_blank_release_fails_with_replace_message(grade_id):
    """The released notebook's stubs raise NotImplementedError; each check says to replace it."""
    cells = _cells(RELEASE)
    sources = [cells["ch03_setup"]] + [cells[f"{g}_answer"] for g in GRADE_IDS]
    ns = kernel(*sources)
    task, name = GRADE_IDS[grade_id]
    with pytest.raises(CheckFailed, match=r"NotImplementedError.*replace `raise NotImplementedError\(\)`"):
        getattr(checks, f"check_{task}")(ns[name])


# ----------------------------------------------------------------- the references

def test_torch_graph_known_answer():
    """c = a * b + a at a = 2, b = -3: value -4, dc/da = b + 1 = -2, dc/db = a = 2."""
    spec = {"leaves": [2.0, -3.0], "ops": [["mul", 0, 1], ["add", 2, 0]]}
    ref = checks.torch_graph(spec)
    assert ref["data"] == [2.0, -3.0, -6.0, -4.0]
    assert ref["grad"] == [-2.0, 2.0, 1.0, 1.0]


@pytest.mark.parametrize("seed", range(8))
def test_random_graphs_are_deterministic_tame_and_connected(seed):
    spec = checks.random_graph(seed, n_leaves=3 + seed % 2, n_ops=8 + seed)
    assert spec == checks.random_graph(seed, n_leaves=3 + seed % 2, n_ops=8 + seed)
    ref = checks.torch_graph(spec)
    assert all(math.isfinite(v) and abs(v) < 100 for v in ref["data"] + ref["grad"])
    codes = {op[0] for op in spec["ops"]}
    assert len(codes) >= 4, codes
    # every node reaches the output (its gradient may still be 0 behind a relu or a constant)
    L = len(spec["leaves"])
    used = {k for op in spec["ops"] for k in op[1:3] if isinstance(k, int) and op[0] in checks._BINARY} | \
        {op[1] for op in spec["ops"]}
    assert set(range(L + len(spec["ops"]) - 1)) <= used


def test_random_graphs_reuse_nodes_and_put_constants_on_both_sides():
    specs = [checks.random_graph(s, n_leaves=3 + s % 2, n_ops=8 + s) for s in range(8)]
    codes = {op[0] for spec in specs for op in spec["ops"]}
    assert {"c_add", "c_mul", "c_sub", "c_div", "mul_c", "pow", "neg", "tanh", "relu", "div"} <= codes
    assert any(op[0] in checks._BINARY and op[1] == op[2] for spec in specs for op in spec["ops"])


def test_library_engine_agrees_with_torch_on_the_check_graphs():
    """llmcourse.autograd.Value, a second implementation, passes the same comparisons (without the guard,
    which forbids students to use it)."""
    from llmcourse.autograd import Value

    specs = [(spec, hint) for _, spec, hint in checks._fixed_cases()]
    specs += [(checks.random_graph(s, n_leaves=3 + s % 2, n_ops=8 + s), "") for s in range(8)]
    for spec, hint in specs:
        got = checks.probe_value_graph(Value, spec)
        checks._compare_graph(got, checks.torch_graph(spec), spec, task="Value", inputs={}, hint=hint)


def test_mlp_reference_matches_the_library_scalar_engine():
    from llmcourse.autograd import grads_of, scalar_mlp_loss, value_params

    params = checks.make_mlp_params(3, 4, 0)
    X, y = checks._mlp_data(params, 7, 0)
    loss, grads = checks.mlp_reference(params, X, y)
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
    params, losses = checks.mlp_reference(checks.make_mlp_params(2, 6, 3), X, y, lr=0.5, steps=40)
    assert losses[-1] < 0.3 * losses[0]
    assert np.mean(checks.mlp_predict(params, X_test) == y_test) >= 0.85


@pytest.mark.parametrize("name", sorted(checks.OBJECTIVES))
def test_central_difference_reference_matches_autograd(name):
    x = np.linspace(-1.0, 1.2, 4)
    np.testing.assert_allclose(checks.central_difference(name, x, 1e-5), checks.autograd_gradient(name, x),
                               rtol=1e-7, atol=1e-9)
    t = torch.tensor(x)
    assert float(checks.OBJECTIVES[name](t)) == pytest.approx(float(checks.OBJECTIVES[name](x)), rel=1e-12)


def test_forward_difference_is_distinguishable_at_the_check_eps():
    """At eps = 1e-3 the forward difference misses the central one by far more than the tolerance."""
    rng = np.random.default_rng(0)
    for name in checks.OBJECTIVES:
        x = rng.uniform(-1.5, 1.5, size=3 if name != "tanh_layer" else 4)
        f = checks.OBJECTIVES[name]
        forward = np.array([(f(x + 1e-3 * e) - f(x)) / 1e-3 for e in np.eye(x.size)])
        assert np.max(np.abs(forward - checks.central_difference(name, x, 1e-3))) > 1e-5, name


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
                                         r"n2 feeds n3 and n4.*REVERSE TOPOLOGICAL ORDER"),
    "tanh_derivative_from_input": (("(1.0 - t ** 2)", "(1.0 - self.data ** 2)"), None,
                                   r"case=a\.tanh\(\).*1 - tanh\(x\)\*\*2, computed from the OUTPUT"),
    "relu_gradient_on_wrong_side": (("(1.0 if self.data > 0 else 0.0)", "(1.0 if self.data < 0 else 0.0)"),
                                    None, r"relu\(\) with a > 0.*only where its INPUT is positive"),
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


@pytest.mark.parametrize("name", list(VALUE_MISTAKES))
def test_check_value_rejects(name):
    replace, remove, match = VALUE_MISTAKES[name]
    Value = _value_variant(*(replace or ("", "")), remove=remove)
    with pytest.raises(CheckFailed, match=match):
        checks.check_value(Value)


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


NG_MISTAKES = {
    ng_forward: r"FORWARD difference .* for f=cubic_sin",
    ng_divides_by_eps: r"twice the right answer: divide by 2 \* eps",
    ng_sign_flipped: r"sign is flipped",
    ng_in_place_not_restored: r"changed x in place",
    ng_all_coordinates_at_once: r"gradient vs the central difference .*for f=cubic_sin",
    ng_returns_list_of_one: r"gradient for f=cubic_sin.*shape \(1,\) but expected \(3,\)",
}


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
