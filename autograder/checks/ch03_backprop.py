"""Hidden checks for the chapter 3 exercise: a scalar autograd engine, an MLP trained with it, a gradient check.

References, all computed live in float64 with ``torch.autograd``:

* ``Value`` - each primitive operation alone, nodes used twice, an order-sensitive
  graph, then random graphs (op sequences over a few leaves, reused nodes,
  constants on both sides) built from a seed. A probe builds each graph with the
  student's class and returns the value and ``.grad`` of every node; the check
  builds the same graph in torch and compares (values, then gradients walking
  back from the output, so the message names the first wrong backward rule);
* ``mlp_loss_and_grads`` - the mean hinge loss of a one-hidden-layer tanh MLP
  and the gradients of all four parameters, against torch with the same weights;
* ``train_mlp`` - full-batch gradient descent from given weights: losses and final
  weights against the same loop in torch, and accuracy on held-out points;
* ``numerical_grad`` - central differences against the formula evaluated here
  and against ``torch.autograd`` on several smooth functions; ``x`` must not change.

Guards: the engine and the MLP may not use PyTorch or the course's
``llmcourse.autograd`` / ``llmcourse.nn_basics``; the gradient check may not
use PyTorch, SciPy or those modules either.

Taught in: book/03-neural-networks
"""

from __future__ import annotations

import math

import numpy as np
import torch

from autograder.compare import (
    CheckFailed,
    assert_close,
    assert_scalar,
    describe,
    fail,
    to_array,
    unpack,
)
from autograder.guard import call_student, run_probe

FORBIDDEN_ENGINE = ("torch", "llmcourse.autograd", "llmcourse.nn_basics")
FORBIDDEN_GRADCHECK = ("torch", "scipy", "llmcourse.autograd", "llmcourse.nn_basics")
PARAM_NAMES = ("W1", "b1", "W2", "b2")


def _call(fn, *args, task: str, inputs: dict, **kwargs):
    """Call the student's function under the guard, with the engine's forbidden modules."""
    return call_student(fn, *args, task=task, inputs=inputs, modules=FORBIDDEN_ENGINE, **kwargs)


def _require_callable(obj, task: str, what: str) -> None:
    if getattr(obj, "__llmcourse_remote__", False) or callable(obj):
        return
    fail(f"{task}: expected a function or class ({what}), got {type(obj).__name__}")


def _plain(obj):
    """Student output -> data the trusted side can read: None, a float, a float array, or a short note."""
    if obj is None:
        return None
    try:
        arr = np.array(obj, dtype=np.float64)
    except Exception:  # noqa: BLE001 - anything unreadable becomes a note
        return f"<{type(obj).__name__}, not a number>"
    return float(arr) if arr.ndim == 0 else arr


# ======================================================================= task (a): Value

# Graph specs are plain data: {"leaves": [floats], "ops": [[code, args...], ...]}. Node k < L is
# leaf k; node L + j is the result of ops[j]; the output is the last node.
_BINARY = {"add": "{0} + {1}", "mul": "{0} * {1}", "sub": "{0} - {1}", "div": "{0} / {1}"}
_WITH_CONST = {"add_c": "{0} + {c}", "c_add": "{c} + {0}", "mul_c": "{0} * {c}", "c_mul": "{c} * {0}",
               "sub_c": "{0} - {c}", "c_sub": "{c} - {0}", "div_c": "{0} / {c}", "c_div": "{c} / {0}"}
_UNARY = {"neg": "-{0}", "tanh": "{0}.tanh()", "relu": "{0}.relu()"}

_HINTS = {
    "add": "addition passes the gradient on unchanged to both inputs",
    "mul": "d(a*b)/da = b and d(a*b)/db = a",
    "sub": "a - b = a + (-1)*b, so the gradient reaching b is negated",
    "div": "a / b = a * b**-1, so d/da = 1/b and d/db = -a/b**2",
    "pow": "d(x**k)/dx = k * x**(k-1): do not forget the factor k",
    "neg": "-x = x * -1, so the gradient is negated",
    "tanh": "the derivative of tanh is 1 - tanh(x)**2, computed from the OUTPUT t = tanh(x) "
            "(1 - x**2 uses the input and is wrong)",
    "relu": "relu passes the gradient only where its INPUT is positive (slope 1 for x > 0, 0 for x < 0)",
}


def _kind(code: str) -> str:
    return code.split("_")[0] if code[0] != "c" else code.split("_")[1]


def _node_names(spec) -> list[str]:
    letters = "abcdefgh"
    return [letters[i] for i in range(len(spec["leaves"]))] + \
        [f"n{len(spec['leaves']) + j}" for j in range(len(spec["ops"]))]


def _describe_op(op, names) -> str:
    code, *args = op
    if code in _BINARY:
        return _BINARY[code].format(names[args[0]], names[args[1]])
    if code in _WITH_CONST:
        return _WITH_CONST[code].format(names[args[0]], c=f"{args[1]:g}")
    if code == "pow":
        return f"{names[args[0]]} ** {args[1]:g}"
    return _UNARY[code].format(names[args[0]])


def _apply(op, nodes):
    """Build one operation from a spec with whatever node objects ``nodes`` holds (student Values or tensors)."""
    code, *args = op
    x = nodes[args[0]]
    if code in _BINARY:
        y = nodes[args[1]]
        return {"add": lambda: x + y, "mul": lambda: x * y, "sub": lambda: x - y, "div": lambda: x / y}[code]()
    if code in _WITH_CONST or code == "pow":
        c = args[1]
        return {"add_c": lambda: x + c, "c_add": lambda: c + x, "mul_c": lambda: x * c, "c_mul": lambda: c * x,
                "sub_c": lambda: x - c, "c_sub": lambda: c - x, "div_c": lambda: x / c, "c_div": lambda: c / x,
                "pow": lambda: x ** c}[code]()
    if code == "neg":
        return -x
    if isinstance(x, torch.Tensor):
        return torch.tanh(x) if code == "tanh" else torch.relu(x)
    return x.tanh() if code == "tanh" else x.relu()


def _number(obj):
    """A node's .data or .grad -> a float, None, or a short note saying what it was instead."""
    if obj is None:
        return None
    try:
        arr = np.asarray(obj, dtype=np.float64)
    except Exception:  # noqa: BLE001 - anything unreadable becomes a note
        return f"<{type(obj).__name__}, not a number>"
    return float(arr.reshape(())) if arr.size == 1 else f"<array of shape {arr.shape}, not one number>"


def probe_value_graph(Value, spec):
    """Build ``spec`` with the student's ``Value``, call ``backward()`` on the output, return every node's data and grad."""
    nodes = []
    for x in spec["leaves"]:
        leaf = Value(x)
        if leaf is None:
            return None
        nodes.append(leaf)
    for j, op in enumerate(spec["ops"]):
        out = _apply(op, nodes)
        if out is None:
            return {"none_at": j}
        nodes.append(out)
    nodes[-1].backward()
    return {"data": [_number(getattr(n, "data", None)) for n in nodes],
            "grad": [_number(getattr(n, "grad", None)) for n in nodes]}


def torch_graph(spec) -> dict[str, list[float]]:
    """The reference: the same graph in float64 ``torch.autograd`` (a node the output ignores has grad 0)."""
    nodes = [torch.tensor(float(x), dtype=torch.float64, requires_grad=True) for x in spec["leaves"]]
    for op in spec["ops"]:
        out = _apply(op, nodes)
        out.retain_grad()
        nodes.append(out)
    nodes[-1].backward()
    return {"data": [float(n.detach()) for n in nodes],
            "grad": [0.0 if n.grad is None else float(n.grad) for n in nodes]}


def _forward(op, vals):
    """Forward value of one op in plain floats (None if the result is unsafe for a gradient test)."""
    code, *args = op
    a = vals[args[0]]
    try:
        if code in _BINARY:
            b = vals[args[1]]
            if code == "div" and abs(b) < 0.3:
                return None
            return {"add": a + b, "mul": a * b, "sub": a - b, "div": a / b if b else 0}[code]
        if code in _WITH_CONST:
            c = args[1]
            if code == "c_div" and abs(a) < 0.3:
                return None
            return {"add_c": a + c, "c_add": c + a, "mul_c": a * c, "c_mul": c * a, "sub_c": a - c,
                    "c_sub": c - a, "div_c": a / c, "c_div": c / a if a else 0}[code]
        if code == "pow":
            k = args[1]
            if (k != int(k) and a < 0.2) or (k < 0 and abs(a) < 0.3):
                return None
            return a ** k
        if code == "relu" and abs(a) < 0.05:
            return None  # keep away from the kink
        return {"neg": -a, "tanh": math.tanh(a), "relu": max(a, 0.0)}[code]
    except (OverflowError, ZeroDivisionError, ValueError):
        return None


def _pick(rng, n: int) -> int:
    """A node index, recent nodes preferred (so graphs grow deep, not just wide)."""
    return int(rng.integers(max(0, n - 3), n)) if rng.random() < 0.6 else int(rng.integers(0, n))


def random_graph(seed: int, *, n_leaves: int = 3, n_ops: int = 12) -> dict:
    """A random graph spec: ops over a few leaves, reused nodes, constants on both sides; values stay tame."""
    rng = np.random.default_rng(seed)
    leaves = []
    while len(leaves) < n_leaves:
        v = round(float(rng.uniform(-2, 2)), 3)
        if abs(v) > 0.3:
            leaves.append(v)
    vals, ops = list(leaves), []
    codes = list(_BINARY) + list(_WITH_CONST) + ["pow", "neg", "tanh", "relu"]
    weights = np.array([3, 3, 2, 2] + [1] * 8 + [2, 1, 2, 2], dtype=float)
    while len(ops) < n_ops:
        code = codes[int(rng.choice(len(codes), p=weights / weights.sum()))]
        i = _pick(rng, len(vals))
        if code in _BINARY:
            j = i if rng.random() < 0.2 else _pick(rng, len(vals))  # sometimes the same node twice (a * a)
            op = [code, i, j]
        elif code in _WITH_CONST:
            c = round(float(rng.choice([-1, 1]) * rng.uniform(0.5, 3.0)), 2)
            op = [code, i, c]
        elif code == "pow":
            op = [code, i, float(rng.choice([2, 3, -1, 0.5, -2]))]
        else:
            op = [code, i]
        v = _forward(op, vals)
        if v is None or not math.isfinite(v) or abs(v) > 30 or (code == "mul" and abs(v) < 1e-6):
            continue
        ops.append(op)
        vals.append(v)
    # add up every node nothing uses yet, so the whole graph reaches the output
    used = {k for op in ops for k in ([op[1], op[2]] if op[0] in _BINARY else [op[1]])}
    sinks = [k for k in range(len(vals)) if k not in used]
    total = sinks[-1]
    for k in reversed(sinks[:-1]):
        ops.append(["add", total, k])
        total = len(leaves) + len(ops) - 1
    return {"leaves": leaves, "ops": ops}


def _fixed_cases() -> list[tuple[str, dict, str]]:
    """(name, spec, hint): each primitive alone, reuse, constants, and an order-sensitive graph."""
    def one(code, *args, leaves=(0.7, -1.3)):
        return {"leaves": list(leaves), "ops": [[code, *args]]}

    return [
        ("a + b", one("add", 0, 1), _HINTS["add"]),
        ("a * b", one("mul", 0, 1), _HINTS["mul"]),
        ("a ** 3", one("pow", 0, 3.0), _HINTS["pow"]),
        ("a ** -2", one("pow", 1, -2.0), _HINTS["pow"]),
        ("a ** 0.5", one("pow", 0, 0.5), _HINTS["pow"]),
        ("a.tanh()", one("tanh", 0), _HINTS["tanh"]),
        ("b.tanh()", one("tanh", 1), _HINTS["tanh"]),
        ("a.relu() with a > 0", one("relu", 0), _HINTS["relu"]),
        ("b.relu() with b < 0", one("relu", 1), _HINTS["relu"]),
        ("-a", one("neg", 0), _HINTS["neg"]),
        ("a - b", one("sub", 0, 1), _HINTS["sub"]),
        ("a / b", one("div", 0, 1), _HINTS["div"]),
        ("2 + a", one("c_add", 0, 2.0), "a number on the left needs __radd__"),
        ("a * 3", one("mul_c", 0, 3.0), "a * 3 needs __mul__ to wrap the plain number in a Value"),
        ("3 * a", one("c_mul", 0, 3.0), "a number on the left needs __rmul__"),
        ("1 - a", one("c_sub", 0, 1.0), "a number on the left needs __rsub__"),
        ("2 / b", one("c_div", 1, 2.0), "a number on the left needs __rtruediv__"),
        ("a * a (a used twice)", one("mul", 0, 0),
         "a node used twice must get both contributions: accumulate with `+=`, never `=`"),
        ("a + a (a used twice)", one("add", 0, 0),
         "a node used twice must get both contributions: accumulate with `+=`, never `=`"),
        ("b = a * b; c = a + b (a feeds two nodes)",
         {"leaves": [0.7, -1.3], "ops": [["mul", 0, 1], ["add", 0, 2]]},
         "a node that feeds several nodes must get the sum of their contributions: accumulate with `+=`"),
        ("n2 = 2 * a; n3 = 3 * n2; n4 = n2 + n3 (n2 feeds n3 and n4)",
         {"leaves": [0.7], "ops": [["c_mul", 0, 2.0], ["c_mul", 1, 3.0], ["add", 1, 2]]},
         "backward() must visit the nodes in REVERSE TOPOLOGICAL ORDER: a node may pass its gradient on "
         "only after every node that uses it has added its contribution"),
        ("a chain with a diamond",
         {"leaves": [0.4, -0.9], "ops": [["mul", 0, 1], ["tanh", 2], ["mul_c", 2, 2.0], ["add", 3, 4],
                                        ["mul", 5, 3], ["add", 6, 0]]},
         "backward() must visit the nodes in reverse topological order, and gradients must accumulate"),
    ]


def _listing(spec, names) -> str:
    leaves = ", ".join(f"{names[i]}={x:g}" for i, x in enumerate(spec["leaves"]))
    L = len(spec["leaves"])
    ops = "; ".join(f"{names[L + j]} = {_describe_op(op, names)}" for j, op in enumerate(spec["ops"]))
    return f"{leaves}; {ops}"


def _compare_graph(got, want, spec, *, task, inputs, hint: str) -> None:
    names = _node_names(spec)
    L = len(spec["leaves"])
    out = names[-1]
    where = describe(inputs)
    if got is None:
        fail(f"{task}{where}: Value(...) gave None (is a `return` missing?)")
    if isinstance(got, dict) and "none_at" in got:
        j = got["none_at"]
        fail(f"{task}{where}: {names[L + j]} = {_describe_op(spec['ops'][j], names)} gave None "
             f"(is a `return` missing in that operation?)")
    if not isinstance(got, dict) or set(got) != {"data", "grad"}:
        fail(f"{task}{where}: the probe could not read your Values")
    for k in range(len(names)):
        what = names[k] if k < L else f"{names[k]} = {_describe_op(spec['ops'][k - L], names)}"
        value = got["data"][k]
        if value is None or isinstance(value, str):
            fail(f"{task}{where}: the .data of {what} is {value!r}, expected the number {want['data'][k]:.6g}")
        if not math.isclose(value, want["data"][k], rel_tol=1e-9, abs_tol=1e-12):
            extra = f" ({hint})" if k >= L else ""
            fail(f"{task}{where}: forward value of {what}: got {value:.6g}, expected {want['data'][k]:.6g}{extra}")
    grads = got["grad"]
    for k in range(len(names)):
        if grads[k] is None or isinstance(grads[k], str):
            fail(f"{task}{where}: the .grad of {names[k]} is {grads[k]!r}, expected the number {want['grad'][k]:.6g}")
    if all(g == 0 for g in grads) and any(w != 0 for w in want["grad"]):
        fail(f"{task}{where}: every .grad is 0 after {out}.backward(): did backward() set the output's grad "
             f"to 1.0 (d{out}/d{out}) before going backwards?")
    if not math.isclose(grads[-1], 1.0, rel_tol=1e-9):
        fail(f"{task}{where}: after {out}.backward() the output's own grad is {grads[-1]:.6g}, expected 1.0 "
             f"(d{out}/d{out} = 1 is where the backward pass starts)")
    for k in reversed(range(len(names) - 1)):  # walking back from the output
        if math.isclose(grads[k], want["grad"][k], rel_tol=1e-7, abs_tol=1e-9):
            continue
        users = [(L + j, op) for j, op in enumerate(spec["ops"]) if k in
                 ([op[1], op[2]] if op[0] in _BINARY else [op[1]])]
        used = "; ".join(f"{names[u]} = {_describe_op(op, names)}" for u, op in users)
        kinds = sorted({_kind(op[0]) for _, op in users})
        rules = "; ".join(_HINTS[c] for c in kinds if c in _HINTS)
        fail(f"{task}{where}: d{out}/d{names[k]} (the .grad of {names[k]}) is {grads[k]:.6g}, expected "
             f"{want['grad'][k]:.6g}. {names[k]} is used by: {used}, whose own gradients are right, so the "
             f"error is in passing them back to {names[k]}. Hint: {hint}" + (f" (rules: {rules})" if rules and
                                                                           rules not in hint else ""))


def _run_value_case(Value, spec, *, task, inputs, hint):
    try:
        got = run_probe(probe_value_graph, Value, spec, task=task, inputs=inputs, modules=FORBIDDEN_ENGINE)
    except CheckFailed as exc:
        msg = str(exc)
        if "unsupported operand" in msg:
            raise CheckFailed(f"{msg} - a plain number on the left (2 + a, 3 * a, 1 - a, 2 / a) calls "
                              f"__radd__, __rmul__, __rsub__, __rtruediv__ of the Value") from None
        raise
    _compare_graph(got, torch_graph(spec), spec, task=task, inputs=inputs, hint=hint)


def check_value(Value) -> None:
    """The student's Value class: every primitive, reuse, constants, order, then random graphs vs torch.autograd."""
    task = "Value"
    _require_callable(Value, task, "your Value class")
    for name, spec, hint in _fixed_cases():
        names = _node_names(spec)
        inputs = {"case": name, "leaves": ", ".join(f"{names[i]}={x:g}" for i, x in enumerate(spec["leaves"]))}
        _run_value_case(Value, spec, task=task, inputs=inputs, hint=hint)
    for seed in range(8):
        spec = random_graph(seed, n_leaves=3 + seed % 2, n_ops=8 + seed)
        inputs = {"random_graph_seed": seed, "graph": _listing(spec, _node_names(spec))}
        _run_value_case(Value, spec, task=task, inputs=inputs,
                        hint="check that backward() visits nodes in reverse topological order and that every "
                             "gradient accumulates with +=")


# ======================================================================= task (b): the MLP

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
    rng = np.random.default_rng(seed)
    return {"W1": rng.normal(0, 1.0 / math.sqrt(d), size=(h, d)), "b1": rng.normal(0, 0.3, size=h),
            "W2": rng.normal(0, 2.5 / math.sqrt(h), size=h), "b2": np.array(float(rng.normal(0, 0.3)))}


def _mlp_data(params: dict, n: int, seed: int):
    """X (n, D) standard normal; y is the network's own decision, flipped for about 30% of the points.

    So some points sit beyond the margin (relu inactive, no gradient) and others do not.
    """
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, np.shape(params["W1"])[1]))
    flip = rng.random(n) < 0.3
    y = (mlp_predict(params, X) == 1) ^ flip
    return X, y.astype(np.int64)


def _copy(params):
    return {k: np.array(v, dtype=float) for k, v in params.items()}


def _read_params(got, want: dict, *, what: str, inputs: dict, rtol: float, atol: float) -> None:
    if type(got) is not dict:
        fail(f"{what}{describe(inputs)}: expected a dict with keys {list(PARAM_NAMES)}, got "
             f"{'None (is a `return` missing?)' if got is None else type(got).__name__}")
    missing = [k for k in PARAM_NAMES if k not in got]
    if missing:
        fail(f"{what}{describe(inputs)}: the dict has no {missing} (keys needed: {list(PARAM_NAMES)})")
    for k in PARAM_NAMES:
        assert_close(got[k], want[k], what=f"{what}[{k!r}]", inputs=inputs, rtol=rtol, atol=atol)


def check_mlp_loss_and_grads(student_fn) -> None:
    """mlp_loss_and_grads(params, X, y) -> (loss, grads) equal to torch.autograd with the same weights."""
    task = "mlp_loss_and_grads"
    for seed, (n, d, h) in enumerate(((5, 2, 3), (8, 3, 4), (1, 2, 2), (12, 1, 5), (6, 4, 1))):
        params = make_mlp_params(d, h, seed)
        X, y = _mlp_data(params, n, seed)
        inputs = {"N": n, "D": d, "H": h, "seed": seed}
        loss_want, grads_want = mlp_reference(params, X, y)
        result = _call(student_fn, _copy(params), X.copy(), y.copy(), task=task, inputs=inputs)
        loss, grads = unpack(result, ("loss", "grads"), what=task, inputs=inputs)
        loss = assert_scalar(loss, what="loss", inputs=inputs)
        assert_close(loss, loss_want, what="loss (mean hinge loss, relu(1 - t * score) with t = 2y - 1)",
                     inputs=inputs, rtol=1e-9, atol=1e-12)
        _read_params(grads, grads_want, what="grads", inputs=inputs, rtol=1e-7, atol=1e-10)


def check_train_mlp(student_fn) -> None:
    """train_mlp(params, X, y, lr=, steps=) -> (params, losses): the same gradient-descent run as torch."""
    task = "train_mlp"
    for seed, (n, d, h, lr, steps) in enumerate(((6, 2, 3, 0.5, 1), (8, 2, 4, 0.3, 3), (5, 3, 2, 1.0, 2))):
        params = make_mlp_params(d, h, 10 + seed)
        X, y = _mlp_data(params, n, 10 + seed)
        inputs = {"N": n, "D": d, "H": h, "seed": 10 + seed, "lr": lr, "steps": steps}
        want, losses_want = mlp_reference(params, X, y, lr=lr, steps=steps)
        result = _call(student_fn, _copy(params), X.copy(), y.copy(), lr=lr, steps=steps, task=task,
                       inputs=inputs)
        got, losses = unpack(result, ("params", "losses"), what=task, inputs=inputs)
        assert_close(losses, losses_want, what="losses (losses[i] is the loss before update i)",
                     inputs=inputs, rtol=1e-8, atol=1e-12)
        _read_params(got, want, what="params after training", inputs=inputs, rtol=1e-7, atol=1e-10)
    # a real problem: moons, held-out accuracy
    from llmcourse.tasks import make_2d_classification

    X, y = make_2d_classification("moons", n=24, noise=0.1, seed=3)
    X_test, y_test = make_2d_classification("moons", n=200, noise=0.1, seed=4)
    params = make_mlp_params(2, 6, 3)
    inputs = {"data": "moons, N=24", "H": 6, "lr": 0.5, "steps": 40}
    want, losses_want = mlp_reference(params, X, y, lr=0.5, steps=40)
    result = _call(student_fn, _copy(params), X.copy(), y.copy(), lr=0.5, steps=40, task=task, inputs=inputs)
    got, losses = unpack(result, ("params", "losses"), what=task, inputs=inputs)
    losses = to_array(losses, what="losses", inputs=inputs).astype(float)
    if losses.shape != (40,):
        fail(f"losses{describe(inputs)}: shape {tuple(losses.shape)} but expected (40,) (one loss per step)")
    if not losses[-1] < 0.7 * losses[0]:
        fail(f"losses{describe(inputs)}: the loss went from {losses[0]:.4g} to {losses[-1]:.4g}, expected it to "
             f"fall below {0.7 * losses[0]:.4g} (reference: {losses_want[-1]:.4g}); are the parameters updated "
             f"against the gradient, p - lr * grad, with fresh gradients every step?")
    assert_close(losses, losses_want, what="losses on moons", inputs=inputs, rtol=1e-6, atol=1e-10)
    _read_params(got, want, what="params after training", inputs=inputs, rtol=1e-6, atol=1e-9)
    acc = float(np.mean(mlp_predict({k: got[k] for k in PARAM_NAMES}, X_test) == y_test))
    acc_want = float(np.mean(mlp_predict(want, X_test) == y_test))
    if acc < acc_want - 1e-9:
        fail(f"held-out accuracy{describe(inputs)}: {acc:.3f}, expected {acc_want:.3f}")


# ======================================================================= task (c): numerical_grad

_RNG = np.random.default_rng(1234)
_W = _RNG.normal(size=(3, 4))
_V = _RNG.normal(size=3)


def _lib(x):
    return torch if isinstance(x, torch.Tensor) else np


def objective_cubic_sin(x):
    """sum(sin(x) * x**3)."""
    return _lib(x).sum(_lib(x).sin(x) * x ** 3)


def objective_logsumexp(x):
    """log(sum(exp(x)))."""
    lib = _lib(x)
    return lib.log(lib.sum(lib.exp(x)))


def objective_quadratic(x):
    """0.5 * sum(x**2) + x[0] * x[-1] + 3 x[0]."""
    return 0.5 * _lib(x).sum(x ** 2) + x[0] * x[-1] + 3.0 * x[0]


def objective_tanh_layer(x):
    """V . tanh(W x) for fixed W (3, 4), V (3,): a tiny network of x (4,)."""
    lib = _lib(x)
    W, V = (torch.as_tensor(_W), torch.as_tensor(_V)) if lib is torch else (_W, _V)
    return lib.sum(V * lib.tanh(W @ x))


OBJECTIVES = {"cubic_sin": objective_cubic_sin, "logsumexp": objective_logsumexp,
              "quadratic": objective_quadratic, "tanh_layer": objective_tanh_layer}


def probe_numerical_grad(numerical_grad, name: str, x, eps: float):
    """Call the student's ``numerical_grad(f, x, eps)`` on the named objective; return its answer, x afterwards, #calls."""
    objective = OBJECTIVES[name]
    calls = []

    def f(z):
        calls.append(1)
        return float(objective(np.asarray(z, dtype=np.float64)))

    x_in = np.array(x, dtype=np.float64)
    result = numerical_grad(f, x_in, eps)
    return {"grad": _plain(result), "x_after": x_in.copy(), "calls": len(calls)}


def central_difference(name: str, x, eps: float) -> np.ndarray:
    """The reference formula: (f(x + eps e_i) - f(x - eps e_i)) / (2 eps), coordinate by coordinate."""
    f = OBJECTIVES[name]
    x = np.asarray(x, dtype=np.float64)
    out = np.zeros_like(x)
    for i in range(x.size):
        e = np.zeros_like(x)
        e[i] = eps
        out[i] = (float(f(x + e)) - float(f(x - e))) / (2 * eps)
    return out


def autograd_gradient(name: str, x) -> np.ndarray:
    """The exact gradient of the named objective by ``torch.autograd`` in float64."""
    t = torch.tensor(np.asarray(x, dtype=np.float64), requires_grad=True)
    (g,) = torch.autograd.grad(OBJECTIVES[name](t), t)
    return g.numpy()


def check_numerical_grad(student_fn) -> None:
    """numerical_grad(f, x, eps) -> central differences: the exact formula, torch.autograd, x unchanged."""
    task = "numerical_grad"
    _require_callable(student_fn, task, "your numerical_grad function")
    rng = np.random.default_rng(0)
    cases = [("cubic_sin", 3), ("logsumexp", 5), ("quadratic", 1), ("quadratic", 4), ("tanh_layer", 4)]
    for name, n in cases:
        x = np.round(rng.uniform(-1.5, 1.5, size=n), 3)
        for eps in (1e-3, 1e-5):
            inputs = {"f": f"{name}: {OBJECTIVES[name].__doc__.rstrip('.')}", "x": x.tolist(), "eps": eps}
            got = run_probe(probe_numerical_grad, student_fn, name, x.copy(), eps, task=task, inputs=inputs,
                            modules=FORBIDDEN_GRADCHECK)
            if got is None or not isinstance(got, dict):
                fail(f"{task}{describe(inputs)}: the probe got nothing back")
            grad = got["grad"]
            if isinstance(grad, str):
                fail(f"gradient{describe(inputs)}: expected numbers, got {grad}")
            grad = to_array(grad, what="gradient", inputs=inputs).astype(float)
            if grad.shape != x.shape:
                fail(f"gradient{describe(inputs)}: shape {tuple(grad.shape)} but expected {x.shape} "
                     f"(one partial derivative per entry of x)")
            if not np.array_equal(got["x_after"], x):
                fail(f"{task}{describe(inputs)}: your function changed x in place (x is now "
                     f"{np.round(got['x_after'], 6).tolist()}); work on a copy or restore each entry")
            want = central_difference(name, x, eps)
            forward = np.array([(OBJECTIVES[name](x + eps * e) - OBJECTIVES[name](x)) / eps for e in np.eye(n)])
            if not np.allclose(grad, want, rtol=1e-6, atol=1e-8):
                hint = ""
                if np.allclose(grad, forward, rtol=1e-6, atol=1e-8):
                    hint = " - this is the FORWARD difference (f(x + eps) - f(x)) / eps; use the central one"
                elif np.allclose(grad, 2 * want, rtol=1e-6, atol=1e-8):
                    hint = " - twice the right answer: divide by 2 * eps, not eps"
                elif np.allclose(grad, -want, rtol=1e-6, atol=1e-8):
                    hint = " - the sign is flipped: (f(x + eps e_i) - f(x - eps e_i)), in that order"
                assert_close(grad, want, what="gradient vs the central difference (f(x + eps e_i) - "
                             "f(x - eps e_i)) / (2 eps)" + hint, inputs=inputs, rtol=1e-6, atol=1e-8)
            if eps == 1e-5:
                assert_close(grad, autograd_gradient(name, x), what="gradient vs torch.autograd",
                             inputs=inputs, rtol=1e-5, atol=1e-7)


__all__ = ["check_value", "check_mlp_loss_and_grads", "check_train_mlp", "check_numerical_grad",
           "probe_value_graph", "probe_numerical_grad", "torch_graph", "random_graph", "mlp_reference",
           "central_difference", "autograd_gradient"]
