"""Computational graphs for the chapter 3 ``Value`` check: specs, the probe, the torch reference.

A graph spec is plain data, ``{"leaves": [floats], "ops": [[code, args...], ...]}``. Node
``k < L`` is leaf ``k``; node ``L + j`` is the result of ``ops[j]``; the output is the last
node. :func:`probe_value_graph` builds a spec with the student's ``Value`` (beside the student's
code, in the sandbox; a module-level function of ``autograder.checks``, returning plain data or
``{"problem": ...}``), :func:`torch_graph` with float64 ``torch.autograd``. The checks and their
messages live in ``autograder/checks/ch03_backprop.py``. Random graphs are drawn in the trusted
process with :func:`autograder.secret.hidden_rng`.

Taught in: book/03-neural-networks
"""

from __future__ import annotations

import math

import numpy as np
import torch

from autograder.secret import hidden_rng

# ======================================================================= graph specs

_BINARY = {"add": "{0} + {1}", "mul": "{0} * {1}", "sub": "{0} - {1}", "div": "{0} / {1}"}
_WITH_CONST = {"add_c": "{0} + {c}", "c_add": "{c} + {0}", "mul_c": "{0} * {c}", "c_mul": "{c} * {0}",
               "sub_c": "{0} - {c}", "c_sub": "{c} - {0}", "div_c": "{0} / {c}", "c_div": "{c} / {0}"}
_UNARY = {"neg": "-{0}", "tanh": "{0}.tanh()", "relu": "{0}.relu()"}

#: the backward rule of each kind of operation, as a reason names it
RULES = {
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


def kind(code: str) -> str:
    """The operation behind an op code: ``"mul"`` for ``mul``, ``mul_c`` and ``c_mul``."""
    return code.split("_")[0] if code[0] != "c" else code.split("_")[1]


def inputs_of(op) -> list[int]:
    """The node indices an op reads."""
    return [op[1], op[2]] if op[0] in _BINARY else [op[1]]


def node_names(spec) -> list[str]:
    """Leaves are a, b, c, ...; the result of ``ops[j]`` is ``n{L + j}`` (its node index)."""
    n_leaves = len(spec["leaves"])
    return [chr(ord("a") + i) for i in range(n_leaves)] + \
        [f"n{n_leaves + j}" for j in range(len(spec["ops"]))]


def describe_op(op, names) -> str:
    """``op`` written with the node names: ``n3 * 2.5``, ``a.tanh()``."""
    code, *args = op
    if code in _BINARY:
        return _BINARY[code].format(names[args[0]], names[args[1]])
    if code in _WITH_CONST:
        return _WITH_CONST[code].format(names[args[0]], c=f"{args[1]:g}")
    if code == "pow":
        return f"{names[args[0]]} ** {args[1]:g}"
    return _UNARY[code].format(names[args[0]])


def listing(spec) -> str:
    """The whole graph in one line: ``a=0.7, b=-1.3; n2 = a * b; n3 = a + n2``."""
    names = node_names(spec)
    n_leaves = len(spec["leaves"])
    leaves = ", ".join(f"{names[i]}={x:g}" for i, x in enumerate(spec["leaves"]))
    ops = "; ".join(f"{names[n_leaves + j]} = {describe_op(op, names)}" for j, op in enumerate(spec["ops"]))
    return f"{leaves}; {ops}"


def _apply(op, nodes):
    """Build one operation of a spec with whatever node objects ``nodes`` holds (student Values or tensors)."""
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
    nodes = [Value(x) for x in spec["leaves"]]
    if any(node is None for node in nodes):
        return {"problem": "Value(...) gave None (is a `return` missing?)"}
    names = node_names(spec)
    for j, op in enumerate(spec["ops"]):
        out = _apply(op, nodes)
        if out is None:
            name = names[len(spec["leaves"]) + j]
            return {"problem": f"{name} = {describe_op(op, names)} gave None (is a `return` missing in that "
                               f"operation?)"}
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
    """A random graph spec: ops over a few leaves, reused nodes, constants on both sides; values stay tame.

    Every generated op is kept away from trouble (division by ~0, relu's kink, roots of negative
    numbers, values beyond 30), so any correct engine agrees with torch; then every node nothing
    uses yet is added up, so the whole graph reaches the output.
    """
    rng = hidden_rng(seed, "ch03.value")
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
            op = [code, i, round(float(rng.choice([-1, 1]) * rng.uniform(0.5, 3.0)), 2)]
        elif code == "pow":
            op = [code, i, float(rng.choice([2, 3, -1, 0.5, -2]))]
        else:
            op = [code, i]
        v = _forward(op, vals)
        if v is None or not math.isfinite(v) or abs(v) > 30 or (code == "mul" and abs(v) < 1e-6):
            continue
        ops.append(op)
        vals.append(v)
    used = {k for op in ops for k in inputs_of(op)}
    sinks = [k for k in range(len(vals)) if k not in used]
    total = sinks[-1]
    for k in reversed(sinks[:-1]):
        ops.append(["add", total, k])
        total = len(leaves) + len(ops) - 1
    return {"leaves": leaves, "ops": ops}


_REUSE = "a node used twice must get both contributions: accumulate with `+=`, never `=`"
_ORDER = ("backward() must visit the nodes in REVERSE TOPOLOGICAL ORDER: a node may pass its gradient on "
          "only after every node that uses it has added its contribution")


def fixed_cases() -> list[tuple[str, dict, str]]:
    """(case title, spec, hint): each primitive alone, numbers on the left, reuse, order-sensitive graphs.

    A one-op case is titled by its op as the graph listing writes it (``a * b``), with a note;
    a larger graph by a note that names no inner node: the listing beside it names them all.
    """
    def one(code, *args, leaves=(0.7, -1.3)):
        return {"leaves": list(leaves), "ops": [[code, *args]]}

    single = [
        (one("add", 0, 1), "", RULES["add"]), (one("mul", 0, 1), "", RULES["mul"]),
        (one("pow", 0, 3.0), "", RULES["pow"]), (one("pow", 1, -2.0), "", RULES["pow"]),
        (one("pow", 0, 0.5), "", RULES["pow"]), (one("tanh", 0), "", RULES["tanh"]),
        (one("tanh", 1), "", RULES["tanh"]), (one("relu", 0), "with a > 0", RULES["relu"]),
        (one("relu", 1), "with b < 0", RULES["relu"]), (one("neg", 0), "", RULES["neg"]),
        (one("sub", 0, 1), "", RULES["sub"]), (one("div", 0, 1), "", RULES["div"]),
        (one("c_add", 0, 2.0), "", "a number on the left needs __radd__"),
        (one("mul_c", 0, 3.0), "", "a * 3 needs __mul__ to wrap the plain number in a Value"),
        (one("c_mul", 0, 3.0), "", "a number on the left needs __rmul__"),
        (one("c_sub", 0, 1.0), "", "a number on the left needs __rsub__"),
        (one("c_div", 1, 2.0), "", "a number on the left needs __rtruediv__"),
        (one("mul", 0, 0), "a used twice", _REUSE), (one("add", 0, 0), "a used twice", _REUSE),
    ]
    cases = [(describe_op(spec["ops"][0], node_names(spec)) + (f" ({note})" if note else ""), spec, hint)
             for spec, note, hint in single]
    return cases + [
        ("a feeds two nodes", {"leaves": [0.7, -1.3], "ops": [["mul", 0, 1], ["add", 0, 2]]},
         "a node that feeds several nodes must get the sum of their contributions: accumulate with `+=`"),
        ("a node feeds two later nodes, one through the other (the order of backward matters)",
         {"leaves": [0.7], "ops": [["c_mul", 0, 2.0], ["c_mul", 1, 3.0], ["add", 1, 2]]}, _ORDER),
        ("a chain with a diamond",
         {"leaves": [0.4, -0.9], "ops": [["mul", 0, 1], ["tanh", 2], ["mul_c", 2, 2.0], ["add", 3, 4],
                                        ["mul", 5, 3], ["add", 6, 0]]},
         "backward() must visit the nodes in reverse topological order, and gradients must accumulate"),
    ]
