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
* ``numerical_grad`` - central differences against the formula evaluated here, with
  ``eps`` given and without it (the task's default, 1e-6, where a forward difference is
  still told apart), and against ``torch.autograd``; ``x`` must not change.

The graphs, the probes and the references live in ``_ch03_graphs.py`` and ``_ch03_numerics.py``.
The guard applies each task's rules from ``TASKS``. Random inputs come from
:func:`autograder.secret.hidden_rng` (secret-derived when a course secret is set).

Taught in: book/03-neural-networks
"""

from __future__ import annotations

import functools
import math

import numpy as np

from autograder.checks._ch03_graphs import (
    RULES,
    describe_op,
    fixed_cases,
    inputs_of,
    kind,
    listing,
    node_names,
    probe_value_graph,
    random_graph,
    torch_graph,
)
from autograder.checks._ch03_numerics import (
    OBJECTIVES,
    PARAM_NAMES,
    autograd_gradient,
    central_difference,
    forward_difference,
    make_mlp_params,
    mlp_data,
    mlp_predict,
    mlp_reference,
    probe_numerical_grad,
    tanh_layer_weights,
)
from autograder.compare import (
    CheckFailed,
    assert_close,
    assert_scalar,
    describe,
    fail,
    probe_result,
    to_array,
    unpack,
)
from autograder.guard import call_student, run_probe
from autograder.secret import course_secret, hidden_rng, hidden_seed
from autograder.spec import Task

ENGINE = ("torch", "llmcourse.autograd")
VALUE, MLP, TRAIN, NUMERICAL_GRAD = TASKS = (
    Task("ch03_value", "Value(data)", 6,
         "`Value` objects: operators, `.tanh()`, `.relu()`, `.backward()` (and `topological_order(root)`)",
         "`torch.autograd` (float64), every `.data` and `.grad` of each graph", modules=ENGINE),
    Task("ch03_mlp_loss_and_grads", "mlp_loss_and_grads(params, X, y)", 3,
         "`(loss, grads)`: a float, a dict shaped like `params`", "`torch.autograd` with the same weights",
         modules=ENGINE),
    Task("ch03_train_mlp", "train_mlp(params, X, y, *, lr=0.1, steps=100)", 3,
         "`(params, losses)`: the final weights, `(steps,)` losses", "the same loop in torch",
         modules=ENGINE),
    Task("ch03_numerical_grad", "numerical_grad(f, x, eps=1e-6)", 2, "`(n,)` central differences",
         "the central-difference formula and `torch.autograd`",
         modules=("torch", "scipy", "llmcourse.autograd")),
)

# Tolerances, from the worst case of the correct variants in tests/test_checks_ch03.py over 20 course
# secrets: their max |got-want| / (atol + rtol |want|) is at most 0.1 (a margin of 10x or more).
# Value: float64 engines (iterative or Kahn order, local derivatives, tanh from exp) differ from torch
# by at most 1.5e-14 relative on .data and 3e-14 on .grad (the constructor stores float(data): no
# float32 engine). The tolerances stay at the published 1e-9 / 1e-7, 1e5x that and still 1e4x below
# the smallest planted mistake.
VALUE_RTOL, VALUE_ATOL = 1e-9, 1e-12
GRAD_RTOL, GRAD_ATOL = 1e-7, 1e-9
# mlp_loss_and_grads: float32 weights, up to 1.7e-7 on the loss and 1.6e-7 on the gradients
MLP_RTOL, MLP_ATOL = 1e-5, 1e-6
# train_mlp: float32 weights kept across steps, up to 1.4e-7 on the losses, 1.1e-6 on the weights
# after the 40 moons steps
TRAIN_RTOL, TRAIN_ATOL = 1e-4, 1e-6
# held-out accuracy after the moons run: float32 runs flipped no point; two points of 200 of slack,
# as weights within TRAIN_RTOL can still move a point that lies on the decision boundary
ACCURACY_SLACK = 0.01
# numerical_grad vs the formula, eps given (1e-3, 1e-5): float64 variants up to 1.3e-10
NG_RTOL, NG_ATOL = 1e-6, 1e-8
# the same without eps (the default 1e-6): up to 1.1e-9; a forward difference is off by eps/2 = 5e-7
# on the quadratic (f'' = 1), 7x this tolerance at the least
NG_DEFAULT_RTOL, NG_DEFAULT_ATOL = 1e-8, 1e-8
# vs torch.autograd at eps = 1e-5: up to 6.2e-10 (roundoff and eps**2 truncation)
AUTOGRAD_RTOL, AUTOGRAD_ATOL = 1e-7, 1e-9


def _require_callable(obj, task: str, what: str) -> None:
    if getattr(obj, "__llmcourse_remote__", False) or callable(obj):
        return
    fail(f"{task}: expected a function or class ({what}), got {type(obj).__name__}")


def _data_seed(seed: int, label: str) -> int:
    """:func:`hidden_seed` folded into the range ``llmcourse.tasks`` accepts (itself without a secret)."""
    return hidden_seed(seed, label) % 2**32


# ======================================================================= task 1: Value

@functools.lru_cache(maxsize=4)
def _value_cases(secret: str | None) -> tuple:
    """(inputs, spec, hint, torch reference): the fixed cases, then eight random graphs (per secret)."""
    cases = [({"case": title, "graph": listing(spec)}, spec, hint) for title, spec, hint in fixed_cases()]
    for seed in range(8):
        spec = random_graph(seed, n_leaves=3 + seed % 2, n_ops=8 + seed)
        cases.append(({"random_graph_seed": seed, "graph": listing(spec)}, spec,
                      "check that backward() visits nodes in reverse topological order and that every "
                      "gradient accumulates with +="))
    return tuple((*case, torch_graph(case[1])) for case in cases)


def _compare_graph(got: dict, want: dict, spec, *, inputs, hint: str) -> None:
    """Values first, then gradients walking back from the output: the first wrong one names its rule."""
    task, names, n_leaves = VALUE.name, node_names(spec), len(spec["leaves"])
    out, where = names[-1], describe(inputs)
    if set(got) != {"data", "grad"} or not len(got["data"]) == len(got["grad"]) == len(names):
        fail(f"{task}{where}: the probe could not read your Values")
    for k, name in enumerate(names):
        what = name if k < n_leaves else f"{name} = {describe_op(spec['ops'][k - n_leaves], names)}"
        value = got["data"][k]
        if value is None or isinstance(value, str):
            fail(f"{task}{where}: the .data of {what} is {value!r}, expected the number {want['data'][k]:.6g}")
        if not math.isclose(value, want["data"][k], rel_tol=VALUE_RTOL, abs_tol=VALUE_ATOL):
            extra = f" ({hint})" if k >= n_leaves else ""
            fail(f"{task}{where}: forward value of {what}: got {value:.6g}, expected {want['data'][k]:.6g}{extra}")
    grads = got["grad"]
    for k, name in enumerate(names):
        if grads[k] is None or isinstance(grads[k], str):
            fail(f"{task}{where}: the .grad of {name} is {grads[k]!r}, expected the number {want['grad'][k]:.6g}")
    if all(g == 0 for g in grads) and any(w != 0 for w in want["grad"]):
        fail(f"{task}{where}: every .grad is 0 after {out}.backward(): did backward() set the output's grad "
             f"to 1.0 (d{out}/d{out}) before going backwards?")
    if not math.isclose(grads[-1], 1.0, rel_tol=GRAD_RTOL):
        fail(f"{task}{where}: after {out}.backward() the output's own grad is {grads[-1]:.6g}, expected 1.0 "
             f"(d{out}/d{out} = 1 is where the backward pass starts)")
    for k in reversed(range(len(names) - 1)):  # walking back from the output
        if math.isclose(grads[k], want["grad"][k], rel_tol=GRAD_RTOL, abs_tol=GRAD_ATOL):
            continue
        users = [(n_leaves + j, op) for j, op in enumerate(spec["ops"]) if k in inputs_of(op)]
        used = "; ".join(f"{names[u]} = {describe_op(op, names)}" for u, op in users)
        rules = "; ".join(RULES[c] for c in sorted({kind(op[0]) for _, op in users}) if RULES[c] not in hint)
        fail(f"{task}{where}: d{out}/d{names[k]} (the .grad of {names[k]}) is {grads[k]:.6g}, expected "
             f"{want['grad'][k]:.6g}. {names[k]} is used by: {used}, whose own gradients are right, so the "
             f"error is in passing them back to {names[k]}. Hint: {hint}" + (f" (rules: {rules})" if rules else ""))


def check_value(Value) -> None:
    """The student's Value class: every primitive, reuse, constants, order, then random graphs vs torch.autograd."""
    _require_callable(Value, VALUE.name, "your Value class")
    for inputs, spec, hint, want in _value_cases(course_secret()):
        try:
            got = run_probe(probe_value_graph, Value, spec, task=VALUE, inputs=inputs)
        except CheckFailed as exc:
            if "unsupported operand" not in str(exc):
                raise
            raise CheckFailed(f"{exc} - a plain number on the left (2 + a, 3 * a, 1 - a, 2 / a) calls "
                              f"__radd__, __rmul__, __rsub__, __rtruediv__ of the Value") from None
        _compare_graph(probe_result(got, what=VALUE.name, inputs=inputs), want, spec, inputs=inputs, hint=hint)


# ======================================================================= tasks 2 and 3: the MLP

def _copy(params):
    return {k: np.array(v, dtype=float) for k, v in params.items()}


def _compare_params(got, want: dict, *, what: str, inputs: dict, rtol: float, atol: float) -> None:
    if not isinstance(got, dict):
        fail(f"{what}{describe(inputs)}: expected a dict with keys {list(PARAM_NAMES)}, got "
             f"{'None (is a `return` missing?)' if got is None else type(got).__name__}")
    missing = [k for k in PARAM_NAMES if k not in got]
    if missing:
        fail(f"{what}{describe(inputs)}: the dict has no {missing} (keys needed: {list(PARAM_NAMES)})")
    for k in PARAM_NAMES:
        assert_close(got[k], want[k], what=f"{what}[{k!r}]", inputs=inputs, rtol=rtol, atol=atol)


@functools.lru_cache(maxsize=4)
def _mlp_cases(secret: str | None) -> tuple:
    """(inputs, params, X, y, want loss, want grads) for five shapes."""
    cases = []
    for seed, (n, d, h) in enumerate(((5, 2, 3), (8, 3, 4), (1, 2, 2), (12, 1, 5), (6, 4, 1))):
        params = make_mlp_params(d, h, seed)
        X, y = mlp_data(params, n, seed)
        cases.append(({"N": n, "D": d, "H": h, "seed": seed}, params, X, y, *mlp_reference(params, X, y)))
    return tuple(cases)


def check_mlp_loss_and_grads(student_fn) -> None:
    """mlp_loss_and_grads(params, X, y) -> (loss, grads) equal to torch.autograd with the same weights."""
    for inputs, params, X, y, loss_want, grads_want in _mlp_cases(course_secret()):
        result = call_student(student_fn, _copy(params), X.copy(), y.copy(), task=MLP, inputs=inputs)
        loss, grads = unpack(result, ("loss", "grads"), what=MLP.name, inputs=inputs)
        loss = assert_scalar(loss, what="loss", inputs=inputs)
        assert_close(loss, loss_want, what="loss (mean hinge loss, relu(1 - t * score) with t = 2y - 1)",
                     inputs=inputs, rtol=MLP_RTOL, atol=MLP_ATOL)
        _compare_params(grads, grads_want, what="grads", inputs=inputs, rtol=MLP_RTOL, atol=MLP_ATOL)


@functools.lru_cache(maxsize=4)
def _train_cases(secret: str | None) -> tuple:
    """(inputs, params, X, y, lr, steps, want params, want losses); the last one is the moons run."""
    from llmcourse.tasks import make_2d_classification

    cases = []
    for seed, (n, d, h, lr, steps) in enumerate(((6, 2, 3, 0.5, 1), (8, 2, 4, 0.3, 3), (5, 3, 2, 1.0, 2))):
        params = make_mlp_params(d, h, 10 + seed)
        X, y = mlp_data(params, n, 10 + seed)
        inputs = {"N": n, "D": d, "H": h, "seed": 10 + seed, "lr": lr, "steps": steps}
        cases.append((inputs, params, X, y, lr, steps, *mlp_reference(params, X, y, lr=lr, steps=steps)))
    X, y = make_2d_classification("moons", n=24, noise=0.1, seed=_data_seed(3, "ch03.train_mlp.moons"))
    params = make_mlp_params(2, 6, 3)
    cases.append(({"data": "moons, N=24", "H": 6, "lr": 0.5, "steps": 40}, params, X, y, 0.5, 40,
                  *mlp_reference(params, X, y, lr=0.5, steps=40)))
    return tuple(cases)


def _losses_of_ascent(params, X, y, lr, steps):
    """The losses of gradient ascent, p + lr * grad: what a flipped update sign records."""
    return mlp_reference(params, X, y, lr=-lr, steps=steps)[1]


def check_train_mlp(student_fn) -> None:
    """train_mlp(params, X, y, lr=, steps=) -> (params, losses): the same gradient-descent run as torch."""
    from llmcourse.tasks import make_2d_classification

    for inputs, params, X, y, lr, steps, want, losses_want in _train_cases(course_secret()):
        result = call_student(student_fn, _copy(params), X.copy(), y.copy(), lr=lr, steps=steps, task=TRAIN,
                              inputs=inputs)
        got, losses = unpack(result, ("params", "losses"), what=TRAIN.name, inputs=inputs)
        assert_close(losses, losses_want, what="losses (losses[i] is the loss before update i)", inputs=inputs,
                     rtol=TRAIN_RTOL, atol=TRAIN_ATOL, hints=[
                         ("the loss rises: update against the gradient, p - lr * grad",
                          functools.partial(_losses_of_ascent, params, X, y, lr, steps))])
        _compare_params(got, want, what="params after training", inputs=inputs, rtol=TRAIN_RTOL,
                        atol=TRAIN_ATOL)
    # the moons run (the last case): the trained network on 200 held-out points
    X_test, y_test = make_2d_classification("moons", n=200, noise=0.1, seed=_data_seed(4, "ch03.train_mlp.moons"))
    acc = float(np.mean(mlp_predict({k: got[k] for k in PARAM_NAMES}, X_test) == y_test))
    acc_want = float(np.mean(mlp_predict(want, X_test) == y_test))
    if acc < acc_want - ACCURACY_SLACK:
        fail(f"held-out accuracy{describe(inputs)}: {acc:.3f}, expected {acc_want:.3f}")


# ======================================================================= task 4: numerical_grad

@functools.lru_cache(maxsize=4)
def _numerical_grad_cases(secret: str | None) -> tuple:
    """(inputs, objective name, x, eps or None for the default) for five points and three eps."""
    rng = hidden_rng(0, "ch03.numerical_grad")
    cases = []
    for name, n in (("cubic_sin", 3), ("logsumexp", 5), ("quadratic", 1), ("quadratic", 4), ("tanh_layer", 4)):
        x = np.round(rng.uniform(-1.5, 1.5, size=n), 3)
        for eps in (1e-3, 1e-5, None):
            shown = eps if eps is not None else "not given (the default, 1e-6)"
            cases.append(({"f": f"{name}: {OBJECTIVES[name]}", "x": x.tolist(), "eps": shown}, name, x, eps))
    return tuple(cases)


def check_numerical_grad(student_fn) -> None:
    """numerical_grad(f, x, eps) -> central differences: the formula (eps given or not), torch.autograd, x kept."""
    task = NUMERICAL_GRAD.name
    _require_callable(student_fn, task, "your numerical_grad function")
    weights = tanh_layer_weights()
    for inputs, name, x, eps in _numerical_grad_cases(course_secret()):
        got = probe_result(run_probe(probe_numerical_grad, student_fn, name, x.copy(), eps, weights,
                                     task=NUMERICAL_GRAD, inputs=inputs), what=task, inputs=inputs)
        grad = to_array(got["grad"], what="gradient", inputs=inputs).astype(float)
        if grad.shape != x.shape:
            fail(f"gradient{describe(inputs)}: shape {tuple(grad.shape)} but expected {x.shape} "
                 f"(one partial derivative per entry of x)")
        if not np.array_equal(got["x_after"], x):
            moved = float(np.max(np.abs(np.asarray(got["x_after"], dtype=float) - x)))
            fail(f"{task}{describe(inputs)}: your function changed x in place (by up to {moved:.3g}; x is now "
                 f"{np.round(got['x_after'], 6).tolist()}); work on a copy or restore each entry exactly")
        step = 1e-6 if eps is None else eps
        want = central_difference(name, x, step, weights)
        rtol, atol = (NG_DEFAULT_RTOL, NG_DEFAULT_ATOL) if eps is None else (NG_RTOL, NG_ATOL)
        assert_close(grad, want, what="gradient vs the central difference (f(x + eps e_i) - f(x - eps e_i)) / "
                     "(2 eps)", inputs=inputs, rtol=rtol, atol=atol, hints=[
                         ("this is the FORWARD difference (f(x + eps e_i) - f(x)) / eps; use the central one",
                          functools.partial(forward_difference, name, x, step, weights)),
                         ("twice the right answer: divide by 2 * eps, not eps", functools.partial(np.multiply, 2, want)),
                         ("the sign is flipped: (f(x + eps e_i) - f(x - eps e_i)), in that order",
                          functools.partial(np.negative, want))])
        if eps == 1e-5:
            assert_close(grad, autograd_gradient(name, x, weights), what="gradient vs torch.autograd",
                         inputs=inputs, rtol=AUTOGRAD_RTOL, atol=AUTOGRAD_ATOL)


__all__ = ["TASKS", "check_value", "check_mlp_loss_and_grads", "check_train_mlp", "check_numerical_grad"]
