"""The usual mistakes of the chapter 11 tasks, computed, for the checks' hints (a helper module).

Each function returns, in float64, what an implementation making the mistake returns, so that a
check can name the mistake when the student's answer reproduces it (``assert_close``'s hints).
"""

from __future__ import annotations

from torch import nn


def _lin(x, w, b):
    return x.double() @ w.double().T + (0 if b is None else b.double())


def forward_hints(w, b, a, bb, alpha, x) -> list:
    """(explanation, () -> wrong output) for LoRALinear's forward."""
    r = a.shape[0]
    x64, a64, b64 = x.double(), a.double(), bb.double()

    def path(scale):
        return lambda: _lin(x, w, b) + scale * (x64 @ a64.T) @ b64.T

    hints = [
        (f"the update is scaled by alpha = {alpha:g}; LoRA scales it by alpha / r = {alpha / r:g}", path(alpha)),
        ("the update is not scaled: LoRA multiplies B A x by alpha / r", path(1.0)),
        ("the update is scaled by r / alpha; LoRA scales it by alpha / r", path(r / alpha)),
        ("the base layer's output is missing: add base(x), W0 x + b", lambda: (alpha / r) * (x64 @ a64.T) @ b64.T),
        ("the bias is added twice", lambda: _lin(x, w, b) + (0 if b is None else b.double()) +
         (alpha / r) * (x64 @ a64.T) @ b64.T),
    ]
    if w.shape[0] == w.shape[1]:
        hints.append(("the update is transposed: Delta W = B A (out x in), applied as x (B A)^T",
                      lambda: _lin(x, w, b) + (alpha / r) * x64 @ (b64 @ a64)))
    return hints


def merged_weight_hints(w, a, bb, alpha) -> list:
    """(explanation, () -> wrong merged weight)."""
    r = a.shape[0]
    w64, delta = w.double(), bb.double() @ a.double()
    hints = [
        ("the merged weight forgets the scale: W = W0 + (alpha / r) B A", lambda: w64 + delta),
        (f"the merged weight is scaled by alpha = {alpha:g}, not alpha / r = {alpha / r:g}", lambda: w64 + alpha * delta),
        ("the weight did not change: merge() must add (alpha / r) B A to base.weight", lambda: w64),
        ("Delta W was added twice", lambda: w64 + 2 * (alpha / r) * delta),
    ]
    if w.shape[0] == w.shape[1]:
        hints.append(("Delta W is transposed: it is B A, shape (out, in), like W0", lambda: w64 + (alpha / r) * delta.T))
    return hints


def unmerged_weight_hints(w, a, bb, alpha) -> list:
    """(explanation, () -> wrong weight after merge() then unmerge()), for W0 = ``w``."""
    r = a.shape[0]
    w64, delta = w.double(), (alpha / r) * (bb.double() @ a.double())
    return [
        ("unmerge subtracted Delta W twice (or merge's Delta W once more than it added)", lambda: w64 - delta),
        ("unmerge did not subtract anything: W0 = W - (alpha / r) B A", lambda: w64 + delta),
        ("unmerge subtracts B A without the scale alpha / r", lambda: w64 + delta - bb.double() @ a.double()),
    ]


def merged_forward_hints(w, b, a, bb, alpha, x) -> list:
    r = a.shape[0]
    delta = (alpha / r) * (bb.double() @ a.double())
    return [
        ("after merge() the forward still adds the LoRA path, so Delta W counts twice: a merged layer is just "
         "base(x)", lambda: _lin(x, w.double() + 2 * delta, b)),
        ("after merge() the forward returns base(x) of the weight before merging",
         lambda: _lin(x, w, b)),
    ]


# ----------------------------------------------------------------- counting

def count_hints(model: nn.Module, want: tuple[int, int]) -> list[tuple[str, tuple[int, int]]]:
    """(explanation, the (trainable, total) a counting mistake gives) for ``model``."""
    every = list(model.named_parameters(remove_duplicate=False))
    unique = list(model.parameters())
    out = []

    def pair(params):
        params = list(params)
        return (sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params))

    out.append(("a tensor shared by two modules (a tied weight) is counted twice: count each parameter once, "
                "as model.parameters() gives them", pair(p for _, p in every)))
    sd = model.state_dict(keep_vars=True)
    out.append(("the state_dict also holds buffers (and tied weights twice): count model.parameters()",
                (want[0], sum(v.numel() for v in sd.values()))))
    out.append(("only the weights are counted: biases (and every other parameter) count too",
                pair(p for n, p in model.named_parameters() if n.endswith("weight"))))
    out.append(("this counts tensors, not the numbers in them: use p.numel()",
                (sum(1 for p in unique if p.requires_grad), len(unique))))
    out.append(("trainable and total are swapped: return (trainable, total)", (want[1], want[0])))
    out.append(("every parameter is counted as trainable: count those with requires_grad", (want[1], want[1])))
    out.append(("the trainable count is the frozen one: trainable parameters have requires_grad=True",
                (want[1] - want[0], want[1])))
    nested = [p for m in model.modules() for p in m.parameters()]
    out.append(("parameters are counted once per enclosing module (model.modules() with m.parameters() recurses): "
                "use model.parameters() once", pair(nested)))
    return out
