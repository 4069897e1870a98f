"""The chapter 11 checks are fair both ways: correct answers get full marks, planted mistakes fail.

The solution comes from the nbgrader source notebook (setup and answer cells, run as a notebook
kernel would). Beside it each task has three or more correct implementations written differently
(einsum, F.linear, the merged weight, float64 inside, another initialisation of A; merging by a saved
copy of W0; matching names by one regular expression or by walking the children; counting by ids or
by shapes; fine-tuning with padding, Adam and other targets, or with torch's parametrizations), which
must pass too. Each wrong implementation is a mistake a student could plausibly make; each must make
its check raise CheckFailed naming what differs.

The fine-tune takes 24 s of CPU time (120-180 s on this 2-core machine at load 10-20), so its check runs for the
solution under every secret and once for each other implementation; the planted mistakes that need no
long training (merged, full fine-tuning, too large a rank, no training) fail fast.
"""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from autograder.checks import _ch11_mistakes as mis
from autograder.checks import _ch11_references as ref
from autograder.checks import ch11_lora as checks
from autograder.compare import CheckFailed
from autograder.guard import ForbiddenCall, static_violations
from tests.notebook_kernel import assert_checks_hold, correct, kernel, planted, solution_of

ASSIGNMENT = "ch11_lora"
# The mistake the nbgrader round trip plants: a tied weight counted twice (named_parameters without
# de-duplication). count_parameters is called by no other graded cell, so only this task may lose points.
ROUND_TRIP_MISTAKE = ("ch11_count_parameters_answer",
                      "def count_parameters(model):\n"
                      "    params = [p for _, p in model.named_parameters(remove_duplicate=False)]\n"
                      "    return (sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params))\n")

pytestmark = pytest.mark.ch11


def sol(name):
    return solution_of(ASSIGNMENT)[name]


# ----------------------------------------------------------------- the references

def test_peft_layer_equals_the_formula_and_merges_to_it():
    g = torch.Generator().manual_seed(0)
    for n_in, n_out, r, alpha, bias in ((7, 5, 2, 3.0, True), (6, 6, 1, 0.5, False)):
        w, a, bb = torch.randn(n_out, n_in, generator=g), torch.randn(r, n_in, generator=g), torch.randn(n_out, r,
                                                                                                          generator=g)
        b = torch.randn(n_out, generator=g) if bias else None
        x = torch.randn(3, n_in, generator=g)
        out = ref.peft_forward(w, b, a, bb, alpha, x)[0]
        torch.testing.assert_close(out, ref.formula(x, w, b, a, bb, alpha), rtol=1e-12, atol=1e-12)
        merged = ref.peft_merged_weight(w, b, a, bb, alpha)
        torch.testing.assert_close(merged, w.double() + alpha / r * bb.double() @ a.double(), rtol=1e-12, atol=1e-12)


def test_wrap_like_peft_has_peft_counts():
    """The counting check's sandbox-built LoRA models have the parameters get_peft_model gives."""
    for kind, _frozen, wrap in checks.COUNT_CASES:
        if wrap:
            spec = checks._spec(kind, 0, "test")
            model = ref.wrap_like_peft(ref.build_model(spec), **wrap)
            assert ref.peft_count(model) == ref.peft_wrapped_count(spec, wrap)


def test_inject_cases_tell_the_rules_apart():
    """Every target list/regex case is one where a plausible wrong matching rule picks other modules."""
    toy = ref.build_model({"kind": "toy", "seed": 0})
    names = [n for n, _ in toy.named_modules() if n]
    right = [n for n in names if any(n == t or n.endswith("." + t) for t in ["proj"])]
    assert right != [n for n in names if any(t in n for t in ["proj"])]
    assert right != [n for n in names if any(n.endswith(t) for t in ["proj"])]
    pattern = checks.INJECT_CASES[-1][1]
    assert [n for n in names if re.fullmatch(pattern, n)] != [n for n in names if re.search(pattern, n)]


def test_count_hints_all_differ_from_the_reference():
    for kind, frozen, wrap in checks.COUNT_CASES:
        spec = checks._spec(kind, 0, "test", frozen)
        model = ref.wrap_like_peft(ref.build_model(spec), **wrap) if wrap else ref.build_model(spec)
        want = ref.peft_count(model)
        assert any(tuple(w) != tuple(want) for _, w in mis.count_hints(model, want))


# ----------------------------------------------------------------- task 1: LoRALinear

def test_solution_passes_check_lora_linear():
    checks.check_lora_linear(sol("LoRALinear"))


class LoRAEinsum(nn.Module):
    """einsum for both products, F.linear for the base, dropout as a functional call."""

    def __init__(self, base, r, alpha, dropout=0.0):
        super().__init__()
        if not (isinstance(r, int) and r > 0):
            raise ValueError("r must be a positive int")
        self.base, self.p, self.scaling = base, dropout, alpha / r
        base.weight.requires_grad = False
        if base.bias is not None:
            base.bias.requires_grad = False
        bound = 1 / math.sqrt(base.in_features)
        self.lora_A = nn.Parameter(torch.empty(r, base.in_features).uniform_(-bound, bound))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, r))

    def forward(self, x):
        h = F.dropout(x, self.p, self.training)
        low = torch.einsum("...i,ri->...r", h, self.lora_A)
        return F.linear(x, self.base.weight, self.base.bias) + self.scaling * torch.einsum("...r,or->...o", low,
                                                                                              self.lora_B)


class LoRAMergedForward(nn.Module):
    """The merged weight W0 + (alpha/r) B A in one F.linear; the separate path only when dropout is active."""

    def __init__(self, base, r, alpha, dropout=0.0):
        super().__init__()
        if r < 1:
            raise ValueError(f"rank {r} < 1")
        self.base = base.requires_grad_(False)
        self.r, self.alpha = r, alpha
        self.lora_A = nn.Parameter(torch.randn(r, base.in_features) * 0.01)  # Gaussian A, as in Hu et al.
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, r))
        self.drop = nn.Dropout(dropout)

    def forward(self, x):
        s = self.alpha / self.r
        if self.training and self.drop.p > 0:
            return self.base(x) + s * (self.drop(x) @ self.lora_A.T) @ self.lora_B.T
        return F.linear(x, self.base.weight + s * (self.lora_B @ self.lora_A), self.base.bias)


class LoRAFloat64(nn.Module):
    """The update computed in float64 and rounded back; (B A) formed first, applied as x (B A)^T."""

    def __init__(self, base, r, alpha, dropout=0.0):
        super().__init__()
        if isinstance(r, bool) or not isinstance(r, int) or r <= 0:
            raise ValueError("bad rank")
        self.base = base
        for p in self.base.parameters():
            p.requires_grad_(False)
        self.lora_A = nn.Parameter(nn.init.kaiming_uniform_(torch.empty(r, base.in_features), a=5 ** 0.5))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, r))
        self.scale = float(alpha) / float(r)
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()

    def forward(self, x):
        delta = (self.lora_B.double() @ self.lora_A.double()) * self.scale
        return self.base(x) + (self.dropout(x).double() @ delta.T).to(x.dtype)


LAYER_CORRECT = correct(LoRAEinsum, LoRAMergedForward, LoRAFloat64)


@pytest.mark.parametrize("cls", LAYER_CORRECT)
def test_check_lora_linear_gives_full_marks_to_correct_variants(cls):
    checks.check_lora_linear(cls)


def _variant(**change):
    """A LoRALinear subclass of the einsum variant with one thing changed."""
    class Wrong(LoRAEinsum):
        def __init__(self, base, r, alpha, dropout=0.0):
            super().__init__(base, r, alpha, dropout)
            if change.get("scale") == "alpha":
                self.scaling = alpha
            if change.get("scale") == "none":
                self.scaling = 1.0
            if change.get("A") == "zero":
                nn.init.zeros_(self.lora_A)
            if change.get("B") == "random":
                nn.init.normal_(self.lora_B)
            if change.get("frozen") is False:
                base.weight.requires_grad_(True)
            if change.get("plain"):
                a = self.lora_A.detach().clone()
                del self.lora_A
                self.lora_A = a
            if change.get("transposed"):
                self.lora_A = nn.Parameter(self.lora_A.detach().T.clone())
            if change.get("r0"):
                self.r0 = True

        def forward(self, x):
            if change.get("dropout") == "base":
                x = F.dropout(x, self.p, self.training)
                return self.base(x) + self.scaling * (x @ self.lora_A.T) @ self.lora_B.T
            if change.get("dropout") == "none":
                return self.base(x) + self.scaling * (x @ self.lora_A.T) @ self.lora_B.T
            if change.get("detach"):
                return self.base(x) + self.scaling * (x @ self.lora_A.data.T) @ self.lora_B.data.T
            if change.get("bias_twice"):
                return super().forward(x) + (0 if self.base.bias is None else self.base.bias)
            if change.get("BA"):
                return self.base(x) + self.scaling * x @ (self.lora_B @ self.lora_A)
            return super().forward(x)
    Wrong.__name__ = Wrong.__qualname__ = "LoRALinear"
    return Wrong


class LoRAAcceptsZeroRank(LoRAEinsum):
    def __init__(self, base, r, alpha, dropout=0.0):
        nn.Module.__init__(self)
        self.base, self.p, self.scaling = base.requires_grad_(False), dropout, alpha / max(r, 1)
        self.lora_A = nn.Parameter(torch.randn(r, base.in_features) * 0.1)
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, r))


LAYER_MISTAKES = planted(
    (_variant(scale="alpha"), r"output \(vs peft's LoRA layer\) for in=16.*scaled by alpha = 8; LoRA scales it by "
                              r"alpha / r = 2"),
    (_variant(scale="none"), r"output \(vs peft's LoRA layer\).*the update is not scaled"),
    (_variant(A="zero"), r"lora_A is all zero at initialisation.*nothing ever trains"),
    (_variant(B="random"), r"lora_B is not zero at initialisation"),
    (_variant(frozen=False), r"base layer's weight still has requires_grad=True"),
    (_variant(plain=True), r"lora_A and lora_B must be trainable nn.Parameters"),
    (_variant(transposed=True), r"lora_A has shape \(16, 4\).*expected \(4, 16\) \(r, in_features\)"),
    (_variant(dropout="base"), r"output in training mode with B = 0 \(dropout acts on the LoRA path only"),
    (_variant(dropout="none"), r"dropout=0.5.*in training mode the output equals the evaluation output"),
    (_variant(detach=True), r"does not depend on lora_A and lora_B through autograd"),
    (_variant(bias_twice=True), r"output at initialisation .* for in=16.*the bias is added twice"),
    (_variant(BA=True), r"raised RuntimeError: .*for in=16, out=12"),
    (LoRAAcceptsZeroRank, r"LoRALinear\(nn.Linear\(8, 6\), r=0, alpha=4\) raised nothing.*raise ValueError"),
)


@pytest.mark.parametrize("wrong, match", LAYER_MISTAKES)
def test_check_lora_linear_rejects(wrong, match):
    with pytest.raises(CheckFailed, match=match):
        checks.check_lora_linear(wrong)


def test_transposed_update_is_named_on_a_square_layer():
    w, a, bb = torch.randn(6, 6), torch.randn(2, 6), torch.randn(6, 2)
    x = torch.randn(3, 6)
    wrong = x @ w.T + 1.5 * x @ (bb @ a)
    with pytest.raises(CheckFailed, match="the update is transposed"):
        checks._close(wrong, ref.formula(x, w, None, a, bb, 3.0), what="output", inputs={"case": "square"},
                      hints=mis.forward_hints(w, None, a, bb, 3.0, x))


# ----------------------------------------------------------------- task 2: merge and unmerge

def test_solution_passes_check_merge():
    checks.check_merge(sol("MergeableLoRALinear"))


def _mergeable(parent, style):
    class Mergeable(parent):
        def __init__(self, base, r, alpha, dropout=0.0):
            super().__init__(base, r, alpha, dropout)
            self.merged = False
            self.saved = None

        def delta(self):
            if style == "einsum":
                return torch.einsum("or,ri->oi", self.lora_B, self.lora_A) * (self.lora_scale())
            return (self.lora_B.double() @ self.lora_A.double() * self.lora_scale()).float()

        def lora_scale(self):
            return getattr(self, "scaling", None) or getattr(self, "scale", None) or self.alpha / self.r

        def merge(self):
            if self.merged:
                raise RuntimeError("merged already")
            with torch.no_grad():
                if style == "copy":
                    self.saved = self.base.weight.detach().clone()
                self.base.weight.data.add_(self.delta().detach())
            self.merged = True

        def unmerge(self):
            if not self.merged:
                raise RuntimeError("not merged")
            with torch.no_grad():
                if style == "copy":
                    self.base.weight.copy_(self.saved)
                else:
                    self.base.weight.sub_(self.delta())
            self.merged = False

        def forward(self, x):
            if self.merged:
                return F.linear(x, self.base.weight, self.base.bias)
            return super().forward(x)
    Mergeable.__name__ = Mergeable.__qualname__ = f"Mergeable{style.title()}"
    return Mergeable


MERGE_CORRECT = correct(_mergeable(LoRAEinsum, "einsum"), _mergeable(LoRAFloat64, "float64"),
                        _mergeable(LoRAMergedForward, "copy"))


@pytest.mark.parametrize("cls", MERGE_CORRECT)
def test_check_merge_gives_full_marks_to_correct_variants(cls):
    checks.check_merge(cls)


def _bad_merge(mistake):
    class Mergeable(LoRAEinsum):
        def __init__(self, base, r, alpha, dropout=0.0):
            super().__init__(base, r, alpha, dropout)
            self.merged = False

        def delta(self):
            return self.lora_B @ self.lora_A * (1.0 if mistake == "no_scale" else self.scaling)

        @torch.no_grad()
        def merge(self):
            if self.merged and mistake != "no_flag_check":
                raise RuntimeError("merged")
            self.base.weight += self.delta()
            self.merged = True

        @torch.no_grad()
        def unmerge(self):
            if not self.merged and mistake != "no_flag_check":
                raise RuntimeError("not merged")
            self.base.weight -= (2 if mistake == "twice" else 1) * self.delta()
            self.merged = mistake == "flag_stays"

        def forward(self, x):
            if self.merged and mistake != "path_stays":
                return self.base(x)
            return super().forward(x)
    Mergeable.__name__ = Mergeable.__qualname__ = "MergeableLoRALinear"
    return Mergeable


MERGE_MISTAKES = planted(
    (_bad_merge("no_scale"), r"base.weight after merge\(\) \(vs peft's merge\(\)\).*forgets the scale"),
    (_bad_merge("twice"), r"base.weight after unmerge\(\) \(W0 again\).*subtracted Delta W twice"),
    (_bad_merge("path_stays"), r"output after merge\(\) \(it must not change\).*Delta W counts twice"),
    (_bad_merge("no_flag_check"), r"merge\(\) on a layer that is merged raised nothing and changed the weight"),
    (_bad_merge("flag_stays"), r"output after unmerge\(\)"),
)


@pytest.mark.parametrize("wrong, match", MERGE_MISTAKES)
def test_check_merge_rejects(wrong, match):
    with pytest.raises(CheckFailed, match=match):
        checks.check_merge(wrong)


# ----------------------------------------------------------------- task 3: injection

def test_solution_passes_check_inject_lora():
    checks.check_inject_lora(sol("inject_lora"))


def inject_by_one_regex(model, target_modules, r, alpha, dropout=0.0):
    """A list becomes one regular expression, (.*\\.)?(t1|t2); the parent found by walking getattr."""
    pattern = target_modules if isinstance(target_modules, str) else \
        r"(.*\.)?(" + "|".join(re.escape(t) for t in target_modules) + ")"
    hits = [(n, m) for n, m in model.named_modules() if n and re.fullmatch(pattern, n)]
    if not hits or any(not isinstance(m, nn.Linear) for _, m in hits):
        raise ValueError(f"targets {target_modules} match {[n for n, _ in hits]}: none, or not all nn.Linear")
    model.requires_grad_(False)
    for name, m in hits:
        *path, last = name.split(".")
        owner = model
        for part in path:
            owner = getattr(owner, part)
        setattr(owner, last, LoRAEinsum(m, r, alpha, dropout))
    return model


def inject_by_children(model, target_modules, r, alpha, dropout=0.0):
    """A recursive walk over named_children with the dotted prefix; freezing by name afterwards."""
    def match(name):
        if isinstance(target_modules, str):
            return bool(re.fullmatch(target_modules, name))
        return any(name.split(".")[-len(t.split(".")):] == t.split(".") for t in target_modules)

    found = []

    def walk(module, prefix):
        for child_name, child in module.named_children():
            full = f"{prefix}.{child_name}" if prefix else child_name
            if match(full):
                found.append((module, child_name, child, full))
            walk(child, full)

    walk(model, "")
    if not found:
        raise ValueError("no module matches")
    for *_, child, full in found:
        if not isinstance(child, nn.Linear):
            raise ValueError(f"{full} is not nn.Linear")
    for owner, child_name, child, _ in found:
        owner._modules[child_name] = LoRAMergedForward(child, r, alpha, dropout)
    for name, p in model.named_parameters():
        p.requires_grad = ".lora_" in name
    return model


def inject_then_freeze_others(model, target_modules, r, alpha, dropout=0.0):
    """The solution's matching with sets; the model frozen after the replacement, the LoRA unfrozen by type."""
    if isinstance(target_modules, str):
        names = {n for n, _ in model.named_modules() if re.fullmatch(target_modules, n)}
    else:
        names = {n for n, _ in model.named_modules() if n in target_modules or
                 any(n.endswith("." + t) for t in target_modules)}
    names.discard("")
    if not names:
        raise ValueError("nothing to adapt")
    modules = dict(model.named_modules())
    if not all(type(modules[n]) is nn.Linear for n in names):
        raise ValueError("LoRA wraps nn.Linear only")
    for n in sorted(names):
        parent, _, child = n.rpartition(".")
        setattr(modules[parent] if parent else model, child, LoRAFloat64(modules[n], r, alpha, dropout))
    for p in model.parameters():
        p.requires_grad_(False)
    for m in model.modules():
        if isinstance(m, LoRAFloat64):
            m.lora_A.requires_grad_(True)
            m.lora_B.requires_grad_(True)
    return model


INJECT_CORRECT = correct(inject_by_one_regex, inject_by_children, inject_then_freeze_others)


@pytest.mark.parametrize("fn", INJECT_CORRECT)
def test_check_inject_lora_gives_full_marks_to_correct_variants(fn):
    checks.check_inject_lora(fn)


def _inject_with(match, *, freeze=True, freeze_lora=False, fresh=False, dotted=False, check_type=True):
    def inject_lora(model, target_modules, r, alpha, dropout=0.0):
        names = [n for n, _ in model.named_modules() if n and match(n, target_modules)]
        if not names:
            raise ValueError("no match")
        if check_type and not all(isinstance(model.get_submodule(n), nn.Linear) for n in names):
            raise ValueError("not Linear")
        if freeze:
            model.requires_grad_(False)
        for n in names:
            m = model.get_submodule(n)
            if not isinstance(m, nn.Linear):
                continue
            if fresh:
                m = nn.Linear(m.in_features, m.out_features, bias=m.bias is not None)
            parent, _, child = n.rpartition(".")
            layer = LoRAEinsum(m, r, alpha, dropout)
            if dotted:
                setattr(model, n, layer)
            else:
                setattr(model.get_submodule(parent) if parent else model, child, layer)
        if freeze_lora:
            model.requires_grad_(False)
        return model
    return inject_lora


def _suffix(n, t):
    return re.fullmatch(t, n) if isinstance(t, str) else any(n == x or n.endswith("." + x) for x in t)


INJECT_MISTAKES = planted(
    (_inject_with(lambda n, t: re.fullmatch(t, n) if isinstance(t, str) else any(x in n for x in t)),
     r"model=ToyNet, target_modules=\['proj'\].*\['blocks.0.c_proj'.*should stay plain"),
    (_inject_with(lambda n, t: re.fullmatch(t, n) if isinstance(t, str) else any(n.endswith(x) for x in t)),
     r"target_modules=\['proj'\].*should stay plain"),
    (_inject_with(lambda n, t: re.search(t, n) if isinstance(t, str) else _suffix(n, t)),
     r"target_modules=\(blocks.*should stay plain.*re.fullmatch"),
    (_inject_with(_suffix, freeze=False), r"still train: freeze every parameter of the model but"),
    (_inject_with(_suffix, freeze_lora=True), r"0 trainable parameters, peft has \d+"),
    (_inject_with(_suffix, fresh=True), r"the model's output with the same A and B \(vs peft's wrapped model\)"),
    (_inject_with(_suffix, dotted=True), r"the model's output with the same A and B"),
    (_inject_with(_suffix, check_type=False), r"target_modules=\['ln_1'\]: the targets match a LayerNorm; nothing "
                                              r"was raised - raise ValueError"),
)


@pytest.mark.parametrize("wrong, match", INJECT_MISTAKES)
def test_check_inject_lora_rejects(wrong, match):
    with pytest.raises(CheckFailed, match=match):
        checks.check_inject_lora(wrong)


# ----------------------------------------------------------------- task 4: counting

def test_solution_passes_check_count_parameters():
    checks.check_count_parameters(sol("count_parameters"))


def count_by_ids(model):
    seen, trainable, total = set(), 0, 0
    for _, p in model.named_parameters(remove_duplicate=False):
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        trainable += p.numel() * bool(p.requires_grad)
    return trainable, total


def count_by_shapes(model):
    sizes = [(math.prod(p.shape), p.requires_grad) for p in model.parameters()]
    return int(sum(n for n, t in sizes if t)), int(sum(n for n, _ in sizes))


def count_by_modules(model):
    """Each module's own parameters (recurse=False), a set against tied weights; numpy ints come back."""
    seen, counts = set(), np.zeros(2, dtype=np.int64)
    for m in model.modules():
        for p in m.parameters(recurse=False):
            if p not in seen:
                seen.add(p)
                counts += [p.numel() if p.requires_grad else 0, p.numel()]
    return counts[0], counts[1]


COUNT_CORRECT = correct(count_by_ids, count_by_shapes, count_by_modules)


@pytest.mark.parametrize("fn", COUNT_CORRECT)
def test_check_count_parameters_gives_full_marks_to_correct_variants(fn):
    checks.check_count_parameters(fn)


def count_tied_twice(model):
    params = [p for _, p in model.named_parameters(remove_duplicate=False)]
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def count_state_dict(model):
    return sum(p.numel() for p in model.parameters() if p.requires_grad), sum(v.numel() for v in
                                                                               model.state_dict(keep_vars=True).values())


def count_weights_only(model):
    params = [p for n, p in model.named_parameters() if n.endswith("weight")]
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def count_tensors(model):
    return sum(1 for p in model.parameters() if p.requires_grad), len(list(model.parameters()))


def count_swapped(model):
    t, n = count_by_ids(model)
    return n, t


def count_nested(model):
    params = [p for m in model.modules() for p in m.parameters()]
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def count_all_trainable(model):
    n = sum(p.numel() for p in model.parameters())
    return n, n


COUNT_MISTAKES = planted(
    (count_tied_twice, r"model=the course GPT, seed=0: got .* peft counts .* tied weight\) is counted twice"),
    (count_state_dict, r"model=the course GPT, seed=0: .*state_dict also holds buffers"),
    (count_weights_only, r"only the weights are counted: biases"),
    (count_tensors, r"this counts tensors, not the numbers in them"),
    (count_swapped, r"model=the course GPT, frozen: some.*trainable and total are swapped"),
    (count_nested, r"counted once per enclosing module"),
    (count_all_trainable, r"frozen: some.*every parameter is counted as trainable"),
)


@pytest.mark.parametrize("wrong, match", COUNT_MISTAKES)
def test_check_count_parameters_rejects(wrong, match):
    with pytest.raises(CheckFailed, match=match):
        checks.check_count_parameters(wrong)


# ----------------------------------------------------------------- task 5: the fine-tune

# Exact match on the 150 held-out instructions (the bar is 36%): the solution 50.7% without a secret (23 s of
# training at load 3), 49.3%, 44.7%, 48.7% under the three secrets below, 46.7% and 47.3% under "s1", "s2";
# finetune_padded_adam 39.3% and finetune_parametrized 46.7% without a secret; the SFT model itself 25-27%.
TARGETS = ["attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"]


def _padded_rows(conversations, tokenizer):
    from llmcourse.chat import build_labels

    return [build_labels(m, tokenizer) for m in conversations]


def finetune_padded_adam(model, tokenizer, conversations):
    """Rank 8 on c_attn and c_fc only, Adam at a constant 5e-3, padded rows of 16 conversations, 90 steps."""
    inject_by_one_regex(model, ["attn.c_attn", "mlp.c_fc"], 8, 16.0)
    items = _padded_rows(conversations, tokenizer)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=5e-3)
    model.train()
    for _ in range(90):
        batch = [items[int(i)] for i in torch.randint(0, len(items), (16,))]
        t = max(len(x) for x, _ in batch)
        x = torch.stack([F.pad(a, (0, t - len(a))) for a, _ in batch])
        y = torch.stack([F.pad(b[1:], (0, t - len(b) + 1), value=-100) for _, b in batch])
        logits, _ = model(x)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1), ignore_index=-100)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


class LowRankDelta(nn.Module):
    """A parametrization W -> W + (alpha / r) B A: torch keeps W itself as `original`, unchanged."""

    def __init__(self, out_f, in_f, r, alpha):
        super().__init__()
        self.lora_A = nn.Parameter(nn.init.kaiming_uniform_(torch.empty(r, in_f), a=math.sqrt(5)))
        self.lora_B = nn.Parameter(torch.zeros(out_f, r))
        self.scaling = alpha / r

    def forward(self, w):
        return w + self.scaling * self.lora_B @ self.lora_A


def finetune_parametrized(model, tokenizer, conversations):
    """LoRA through torch.nn.utils.parametrize on every projection; the course's pack; AdamW 8e-3, 110 steps."""
    from torch.nn.utils import parametrize

    from llmcourse.chat import next_token_targets, pack

    model.requires_grad_(False)
    for name, m in list(model.named_modules()):
        if isinstance(m, nn.Linear) and any(name.endswith(t) for t in TARGETS):
            parametrize.register_parametrization(m, "weight", LowRankDelta(m.out_features, m.in_features, 4, 8.0))
    rows = pack(_padded_rows(conversations, tokenizer), 128)
    targets = next_token_targets(rows["labels"], rows["doc_ids"])
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=8e-3, weight_decay=0.0)
    model.train()
    for _ in range(110):
        b = torch.randint(0, len(targets), (8,))
        _, loss = model(rows["input_ids"][b], targets[b], position_ids=rows["position_ids"][b],
                        doc_ids=rows["doc_ids"][b])
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
    return model.eval()


FINETUNE_CORRECT = correct(finetune_padded_adam, finetune_parametrized)


@pytest.mark.parametrize("fn", FINETUNE_CORRECT)
def test_check_lora_finetune_gives_full_marks_to_correct_variants(fn, one_thread):
    checks.check_lora_finetune(fn)


def finetune_returns_sft(model, tokenizer, conversations):
    """Freezes everything and trains nothing: the SFT model comes back."""
    return model.requires_grad_(False)


def finetune_merges(model, tokenizer, conversations):
    """Trains a little, then merges the adapters into the weights before returning."""
    inject_by_one_regex(model, TARGETS, 4, 8.0)
    _train_steps(model, tokenizer, conversations[:8])
    for m in model.modules():
        if hasattr(m, "lora_A"):
            with torch.no_grad():
                m.base.weight += m.scaling * m.lora_B @ m.lora_A
                m.lora_B.zero_()
            m.lora_B.requires_grad_(False)
    return model


def finetune_full(model, tokenizer, conversations):
    """Every weight trains (no LoRA at all), a few steps."""
    items = _padded_rows(conversations[:16], tokenizer)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for x, y in items[:4]:
        _, loss = model(x[None], torch.cat([y[1:], torch.tensor([-100])])[None])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model


def finetune_rank_too_large(model, tokenizer, conversations):
    """Rank 32 on every projection: 19% of the parameters train."""
    return inject_by_one_regex(model, TARGETS, 32, 64.0)


def finetune_zero_a(model, tokenizer, conversations):
    """A LoRALinear with A = 0 (and B = 0): no gradient reaches either, the model stays the SFT model."""
    inject_by_one_regex(model, TARGETS, 4, 8.0)
    for m in model.modules():
        if hasattr(m, "lora_A"):
            nn.init.zeros_(m.lora_A)
    _train_steps(model, tokenizer, conversations[:8])
    return model.eval()


def _train_steps(model, tokenizer, conversations):
    """One AdamW step per conversation on the trainable parameters."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-2)
    for x, y in _padded_rows(conversations, tokenizer):
        _, loss = model(x[None], torch.cat([y[1:], torch.tensor([-100])])[None])
        opt.zero_grad()
        loss.backward()
        opt.step()


FINETUNE_MISTAKES = planted(
    (finetune_returns_sft, r"exact match on held-out instructions is \d+% \(\d+ of 150\), below 36%"),
    (finetune_merges, r"weights of the SFT model are not in the returned model unchanged.*not merged"),
    (finetune_full, r"weights of the SFT model are not in the returned model unchanged"),
    (finetune_rank_too_large, r"1\d\.\d% of the parameters are trainable .* more than 5%"),
    (finetune_zero_a, r"exact match on held-out instructions is \d+% \(\d+ of 150\), below 36%"),
)


@pytest.mark.parametrize("wrong, match", FINETUNE_MISTAKES)
def test_check_lora_finetune_rejects(wrong, match, one_thread):
    with pytest.raises(CheckFailed, match=match):
        checks.check_lora_finetune(wrong)


def test_held_out_instructions_share_no_problem_with_the_training_ones():
    from llmcourse.chat import example_to_messages

    conversations, test = checks.finetune_data()
    assert len(conversations) == checks.N_TRAIN and len(test) == checks.N_TEST
    assert {ex.family for ex in test} == {checks.FAMILY}
    asked = {c[0]["content"] for c in conversations}
    assert not any(example_to_messages(ex)[0]["content"] in asked for ex in test)


# ----------------------------------------------------------------- the guard

def test_guard_catches_peft_and_the_course_lora():
    ns = kernel("import torch\nfrom torch import nn\nfrom peft.tuners.lora.layer import Linear\n",
                "class LoRALinear(nn.Module):\n"
                "    def __init__(self, base, r, alpha, dropout=0.0):\n"
                "        super().__init__()\n"
                "        self.inner = Linear(base, 'default', r=r, lora_alpha=alpha)\n")
    with pytest.raises(ForbiddenCall, match=r"uses Linear \(from peft\)"):
        checks.check_lora_linear(ns["LoRALinear"])
    ns = kernel("from llmcourse.lora import trainable_parameters\n",
                "def count_parameters(model):\n    return trainable_parameters(model)\n")
    with pytest.raises(ForbiddenCall, match=r"count_parameters uses trainable_parameters \(from llmcourse\.lora\)"):
        checks.check_count_parameters(ns["count_parameters"])


def test_guard_catches_peft_at_run_time_without_source():
    ns = kernel("", "def count_parameters(model):\n"
                "    import importlib\n"
                "    return importlib.import_module('pe' + 'ft').PeftModel.get_nb_trainable_parameters(model)\n",
                keep_source=False)
    with pytest.raises(ForbiddenCall, match=r"your code called peft"):
        checks.check_count_parameters(ns["count_parameters"])


def test_guard_lets_the_solutions_and_the_correct_variants_through():
    variants = {"check_lora_linear": LAYER_CORRECT, "check_merge": MERGE_CORRECT,
                "check_inject_lora": INJECT_CORRECT, "check_count_parameters": COUNT_CORRECT,
                "check_lora_finetune": FINETUNE_CORRECT}
    for task in checks.TASKS:
        for fn in (sol(task.name), *(p.values[0] for p in variants[task.check])):
            assert static_violations(fn, modules=task.modules, callables=task.callables) == [], fn.__name__


def test_the_graders_source_look_passes_the_solution_notebook():
    import nbformat

    from autograder.static import Submission, tamper_findings
    from tests.notebook_kernel import notebook_path

    cells = [c for c in nbformat.read(notebook_path(ASSIGNMENT), as_version=4).cells if c.cell_type == "code"]
    answers = [c.source for c in cells if c.metadata.get("nbgrader", {}).get("solution")]
    others = [c.source.split("### BEGIN HIDDEN TESTS")[0] for c in cells
              if not c.metadata.get("nbgrader", {}).get("solution")]
    submission = Submission(answers, others)
    assert tamper_findings(submission) == []
    for task in checks.TASKS:
        assert submission.violations(task.name, task.modules, task.callables) == [], task.grade_id


# ----------------------------------------------------------------- tolerances and course secrets

def measure_spread(secrets) -> dict:
    """Largest |got - want| / (1 + |want|) of the solution and the correct variants, over ``secrets``."""
    import os

    worst = {"forward": 0.0, "gradients": 0.0, "merge": 0.0, "unmerge": 0.0}

    def note(key, value, target):
        err = ((torch.as_tensor(value).double() - target).abs() / (1 + target.abs())).max().item()
        worst[key] = max(worst[key], err)

    old = os.environ.get("AUTOGRADER_SECRET")
    try:
        for secret in secrets:
            os.environ["AUTOGRADER_SECRET"] = secret
            for seed, (n_in, n_out, r, alpha, bias, x_shape, _) in enumerate(checks.LAYER_CASES):
                case = checks._draw(seed, "ch11.spread", n_in, n_out, r, bias, x_shape)
                case.update(r=r, alpha=alpha, dropout=0.0, seed=seed)
                w, b, a, bb, x = (case[k] for k in ("w", "b", "a", "bb", "x"))
                want, ga, gb = ref.peft_forward(w, b, a, bb, alpha, x, case["g"])
                merged = w.double() + alpha / r * bb.double() @ a.double()
                for cls in (sol("LoRALinear"), *(p.values[0] for p in LAYER_CORRECT)):
                    got = ref.lora_linear_probe(cls, case)
                    note("forward", got["out"], want)
                    note("gradients", got["grads"]["lora_A"], ga)
                    note("gradients", got["grads"]["lora_B"], gb)
                for cls in (sol("MergeableLoRALinear"), *(p.values[0] for p in MERGE_CORRECT)):
                    got = ref.merge_probe(cls, case)
                    note("forward", got["merge out"], want)
                    note("forward", got["unmerge out"], want)
                    note("merge", got["merge weight"], merged)
                    note("unmerge", got["unmerge weight"], w.double())
    finally:
        if old is None:
            os.environ.pop("AUTOGRADER_SECRET", None)
        else:
            os.environ["AUTOGRADER_SECRET"] = old
    return worst


def test_tolerance_is_ten_times_the_float32_spread():
    worst = measure_spread([f"spread {k}" for k in range(20)])
    assert max(worst.values()) * 10 <= checks.TOL["rtol"], worst


SECRETS = ("course secret A", "another secret", "3")
CORRECT = {"check_lora_linear": [p.values[0] for p in LAYER_CORRECT],
           "check_merge": [p.values[0] for p in MERGE_CORRECT],
           "check_inject_lora": [p.values[0] for p in INJECT_CORRECT],
           "check_count_parameters": [p.values[0] for p in COUNT_CORRECT]}
MISTAKES = {"check_lora_linear": LAYER_MISTAKES, "check_merge": MERGE_MISTAKES, "check_inject_lora": INJECT_MISTAKES,
            "check_count_parameters": COUNT_MISTAKES}


@pytest.mark.parametrize("secret", SECRETS)
def test_checks_hold_under_several_course_secrets(monkeypatch, secret, one_thread):
    """With a secret the inputs change; the solution and the correct variants still pass, mistakes fail.

    The fine-tune runs once per secret, with the solution only: it trains a network.
    """
    monkeypatch.setenv("AUTOGRADER_SECRET", secret)
    assert_checks_hold(ASSIGNMENT, checks, checks.TASKS, CORRECT, MISTAKES)


def test_course_secret_changes_the_inputs(monkeypatch):
    public = checks._draw(0, "ch11.lora_linear", 4, 3, 2, True, (2, 4))
    public_train, public_test = checks.finetune_data()
    monkeypatch.setenv("AUTOGRADER_SECRET", SECRETS[0])
    hidden = checks._draw(0, "ch11.lora_linear", 4, 3, 2, True, (2, 4))
    assert not torch.equal(public["w"], hidden["w"])
    hidden_train, hidden_test = checks.finetune_data()
    assert hidden_train != public_train and hidden_test != public_test
