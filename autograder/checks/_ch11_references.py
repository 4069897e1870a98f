"""References, inputs and probes for the chapter 11 checks (:mod:`autograder.checks.ch11_lora`).

* :func:`peft_linear` - ``peft.tuners.lora.layer.Linear`` (peft 0.21) around an ``nn.Linear``
  holding W0 and b, with A and B copied into ``lora_A["default"]`` and ``lora_B["default"]``, in
  float64: its forward, its gradients and its merged weight are the references of tasks 1 and 2;
* :func:`formula` - the same in plain float64 algebra, W0 x + b + (alpha / r) B A x, which the tests
  compare with peft;
* :func:`peft_wrapped` - ``peft.get_peft_model`` of a model built from a plain-data spec, with the
  A and B of every LoRA layer copied in (task 3), and :func:`peft_count`, ``PeftModel``'s
  ``get_nb_trainable_parameters`` applied to any module (task 4);
* :func:`build_model` - the models of tasks 3 and 4 from a spec: the course GPT (tied
  ``lm_head``) or :class:`ToyNet`, whose names tell suffix matching from substring matching.

The ``*_probe`` functions run beside the student's code, in the sandbox: they only build, call and
read, and return plain data; the checks judge.
"""

from __future__ import annotations

import functools
import math
import os

import torch
from torch import nn

from autograder.secret import hidden_torch_generator

LORA_ATTRS = ("base", "lora_A", "lora_B")


# ----------------------------------------------------------------- the references (trusted process)

@functools.lru_cache(maxsize=1)
def _peft():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import peft
    from peft.tuners.lora.layer import Linear

    return peft, Linear


def peft_linear(w, b, a, bb, alpha, dropout: float = 0.0):
    """peft's LoRA ``Linear`` (float64) around ``nn.Linear(W0, b)``, adapter "default" = (A, B)."""
    peft, Linear = _peft()
    out_f, in_f = w.shape
    r = a.shape[0]
    base = nn.Linear(in_f, out_f, bias=b is not None, dtype=torch.float64)
    with torch.no_grad():
        base.weight.copy_(w.double())
        if b is not None:
            base.bias.copy_(b.double())
    config = peft.LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout)
    layer = Linear(base, "default", config=config, r=r, lora_alpha=alpha, lora_dropout=dropout)
    layer.double()
    with torch.no_grad():
        layer.lora_A["default"].weight.copy_(a.double())
        layer.lora_B["default"].weight.copy_(bb.double())
    return layer


def peft_forward(w, b, a, bb, alpha, x, g=None):
    """(output, dL/dA, dL/dB) of peft's layer in float64, with L = sum(output * g) when ``g`` is given."""
    layer = peft_linear(w, b, a, bb, alpha).eval()
    out = layer(x.double())
    if g is None:
        return out.detach(), None, None
    (out * g.double()).sum().backward()
    return out.detach(), layer.lora_A["default"].weight.grad, layer.lora_B["default"].weight.grad


def peft_merged_weight(w, b, a, bb, alpha):
    """W0 + (alpha / r) B A as peft's ``merge()`` writes it into the base layer (float64)."""
    layer = peft_linear(w, b, a, bb, alpha)
    layer.merge()
    return layer.get_base_layer().weight.detach().clone()


def formula(x, w, b, a, bb, alpha):
    """W0 x + b + (alpha / r) B (A x) in float64, for x (..., in)."""
    x, w, a, bb = (t.double() for t in (x, w, a, bb))
    out = x @ w.T + (0 if b is None else b.double())
    return out + (alpha / a.shape[0]) * (x @ a.T) @ bb.T


def peft_count(model: nn.Module) -> tuple[int, int]:
    """``PeftModel.get_nb_trainable_parameters`` (it reads only ``named_parameters``) on any module."""
    peft, _ = _peft()
    return peft.PeftModel.get_nb_trainable_parameters(model)


# ----------------------------------------------------------------- models from plain-data specs

class ToyBlock(nn.Module):
    """Names that tell the matching rules apart: ``proj``, ``c_proj``, ``out_proj``, a LayerNorm."""

    def __init__(self, width: int):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.proj = nn.Linear(width, 2 * width)
        self.c_proj = nn.Linear(2 * width, width)
        self.out_proj = nn.Linear(width, width, bias=False)

    def forward(self, x):
        return x + self.out_proj(self.c_proj(torch.tanh(self.proj(self.norm(x)))))


class ToyNet(nn.Module):
    """``embed`` (Linear), ``blocks.{i}`` of :class:`ToyBlock`, ``head``; a buffer and a weight tied twice."""

    def __init__(self, d_in: int = 6, width: int = 8, n_blocks: int = 2, d_out: int = 5):
        super().__init__()
        self.embed = nn.Linear(d_in, width)
        self.blocks = nn.ModuleList(ToyBlock(width) for _ in range(n_blocks))
        self.head = nn.Linear(width, d_out)
        self.mirror = nn.Linear(width, width, bias=False)
        self.mirror.weight = self.blocks[0].out_proj.weight  # one tensor under two names
        self.register_buffer("scale", torch.linspace(0.5, 1.5, d_out))

    def forward(self, x):
        h = self.embed(x)
        for block in self.blocks:
            h = block(h)
        return self.head(h + 0.1 * self.mirror(h)) * self.scale


def build_model(spec: dict) -> nn.Module:
    """The course GPT (``{"kind": "gpt", "config": {...}}``) or a :class:`ToyNet`, weights from ``spec["seed"]``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec["seed"])
        if spec["kind"] == "gpt":
            from llmcourse.gpt import GPT, GPTConfig

            model = GPT(GPTConfig(**spec["config"]))
            with torch.no_grad():  # GPT-2 zeroes its biases: give them values, so that freezing them shows
                for name, p in model.named_parameters():
                    if name.endswith("bias"):
                        p.normal_(0.0, 0.02)
        else:
            model = ToyNet(**spec.get("config", {}))
    for name, p in model.named_parameters():
        p.requires_grad_(name not in spec.get("frozen", ()))
    return model.eval()


def model_input(spec: dict) -> torch.Tensor:
    """The input the model of ``spec`` reads (token ids or features), from the course secret (trusted side)."""
    g = hidden_torch_generator(spec["seed"] % 1000, "ch11.model_input")
    if spec["kind"] == "gpt":
        return torch.randint(0, spec["config"]["vocab_size"], (2, 7), generator=g)
    return torch.randn(3, 4, spec.get("config", {}).get("d_in", 6), generator=g)


def model_output(model, x) -> torch.Tensor:
    out = model(x)
    out = out[0] if isinstance(out, (tuple, list)) else getattr(out, "logits", out)
    return out


def lora_values(model: nn.Module, r: int, seed: int) -> dict:
    """A (r, in) and B (out, r) for every ``nn.Linear`` of ``model``, from the course secret."""
    g = hidden_torch_generator(seed, "ch11.lora_values")
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear):
            out[name] = (torch.randn(r, m.in_features, generator=g) / math.sqrt(m.in_features),
                         0.2 * torch.randn(m.out_features, r, generator=g))
    return out


def peft_wrapped(spec: dict, targets, r: int, alpha: float, values: dict, x):
    """(LoRA module names, output on :func:`model_input`, trainable count) of ``get_peft_model`` in float64."""
    peft, _ = _peft()
    model = build_model(spec).double()
    wrapped = peft.get_peft_model(model, peft.LoraConfig(r=r, lora_alpha=alpha, lora_dropout=0.0,
                                                         target_modules=targets))
    names = []
    prefix = "base_model.model."
    with torch.no_grad():
        for name, m in wrapped.named_modules():
            if hasattr(m, "lora_A") and isinstance(m.lora_A, nn.ModuleDict) and "default" in m.lora_A:
                short = name[len(prefix):] if name.startswith(prefix) else name
                names.append(short)
                a, b = values[short]
                m.lora_A["default"].weight.copy_(a.double())
                m.lora_B["default"].weight.copy_(b.double())
    wrapped.eval()
    out = model_output(wrapped, x if spec["kind"] == "gpt" else x.double())
    return names, out.detach(), wrapped.get_nb_trainable_parameters()


# ----------------------------------------------------------------- probes (sandbox)

def _problem(text: str) -> dict:
    return {"problem": text}


def _lora_parts(layer) -> str | None:
    """What a LoRA layer lacks, or None."""
    for attr in LORA_ATTRS:
        if not hasattr(layer, attr):
            return f"it has no attribute `{attr}` (a LoRA layer keeps `base`, `lora_A` and `lora_B`)"
    if not isinstance(layer.base, nn.Linear):
        return f"`base` is a {type(layer.base).__name__}, expected the nn.Linear it wraps"
    for attr in ("lora_A", "lora_B"):
        if not isinstance(getattr(layer, attr), torch.Tensor):
            return f"`{attr}` is a {type(getattr(layer, attr)).__name__}, expected a tensor (an nn.Parameter)"
    return None


def _grad_flags(layer) -> dict:
    return {"base.weight": bool(layer.base.weight.requires_grad),
            "base.bias": None if layer.base.bias is None else bool(layer.base.bias.requires_grad),
            "lora_A": bool(layer.lora_A.requires_grad), "lora_B": bool(layer.lora_B.requires_grad),
            "A_is_parameter": isinstance(layer.lora_A, nn.Parameter),
            "B_is_parameter": isinstance(layer.lora_B, nn.Parameter),
            "registered": sorted(n for n, _ in layer.named_parameters())}


def _load(layer, w, b, a, bb) -> None:
    with torch.no_grad():
        layer.base.weight.copy_(w)
        if b is not None:
            layer.base.bias.copy_(b)
        layer.lora_A.copy_(a)
        layer.lora_B.copy_(bb)


def _same_shapes(layer, a, bb) -> str | None:
    if tuple(layer.lora_A.shape) != tuple(a.shape) or tuple(layer.lora_B.shape) != tuple(bb.shape):
        return (f"lora_A has shape {tuple(layer.lora_A.shape)} and lora_B {tuple(layer.lora_B.shape)}, expected "
                f"{tuple(a.shape)} (r, in_features) and {tuple(bb.shape)} (out_features, r)")
    return None


def _detached(t):
    return t.detach().clone() if isinstance(t, torch.Tensor) else t


def lora_linear_probe(cls, case: dict) -> dict:
    """PROBE: build ``cls(nn.Linear(in, out, bias), r, alpha[, dropout])``; read its init, forward and gradients."""
    w, b, a, bb, x, g = (case[k] for k in ("w", "b", "a", "bb", "x", "g"))
    out_f, in_f = w.shape
    r, alpha, p = case["r"], case["alpha"], case["dropout"]
    torch.manual_seed(case["seed"])
    base = nn.Linear(in_f, out_f, bias=b is not None)
    with torch.no_grad():
        base.weight.copy_(w)
        if b is not None:
            base.bias.copy_(b)
    layer = cls(base, r, alpha, p) if p else cls(base, r, alpha)
    if layer is None:
        return _problem("LoRALinear(...) gave None (is a `return` missing?)")
    if not isinstance(layer, nn.Module):
        return _problem(f"LoRALinear(...) must be an nn.Module, got {type(layer).__name__}")
    missing = _lora_parts(layer)
    if missing:
        return _problem(missing)
    if layer.base is not base:
        return _problem("`base` must be the nn.Linear given to LoRALinear (wrap it, do not copy it)")
    bad = _same_shapes(layer, a, bb)
    if bad:
        return _problem(bad)
    init = {"A": _detached(layer.lora_A), "B": _detached(layer.lora_B)}
    flags = _grad_flags(layer)
    layer.eval()
    out_init = layer(x)
    if p:  # dropout acts on the LoRA path only: with B = 0 the output is the base output in training mode too
        layer.train()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(1)
            train_b0 = layer(x)
    _load(layer, w, b, a, bb)
    layer.eval()
    out = layer(x)
    leaves = {}
    if isinstance(out, torch.Tensor) and out.requires_grad:
        (out * g).sum().backward()
        leaves = {k: _detached(getattr(layer, k).grad) for k in ("lora_A", "lora_B")}
        leaves["base.weight"] = _detached(layer.base.weight.grad)
    result = {"init": init, "flags": flags, "out_init": _detached(out_init), "out": _detached(out),
              "grads": leaves, "requires_grad": bool(getattr(out, "requires_grad", False))}
    if p:
        layer.train()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(2)
            result["train"] = _detached(layer(x))
        result["train_b0"] = _detached(train_b0)
    return result


def lora_errors_probe(cls) -> dict:
    """PROBE: what ``cls`` does with the rank 0: the name of the exception it raises, or None."""
    out = {}
    for what, r in (("r=0", 0),):
        try:
            cls(nn.Linear(8, 6), r, 4.0)
            out[what] = None
        except Exception as exc:  # noqa: BLE001 - the name is the answer
            out[what] = type(exc).__name__
    return out


def merge_probe(cls, case: dict) -> dict:
    """PROBE: forward, merge, forward, merge again, unmerge, forward, unmerge again - reading the weight each time."""
    w, b, a, bb, x = (case[k] for k in ("w", "b", "a", "bb", "x"))
    out_f, in_f = w.shape
    base = nn.Linear(in_f, out_f, bias=b is not None)
    layer = cls(base, case["r"], case["alpha"])
    if layer is None:
        return _problem("MergeableLoRALinear(...) gave None (is a `return` missing?)")
    missing = _lora_parts(layer) if isinstance(layer, nn.Module) else "it is not an nn.Module"
    if missing:
        return _problem(missing)
    bad = _same_shapes(layer, a, bb)
    if bad:
        return _problem(bad)
    _load(layer, w, b, a, bb)
    layer.eval()
    res = {}
    with torch.no_grad():
        res["before"] = _detached(layer(x))
        for step in ("merge", "merge again", "unmerge", "unmerge again"):
            method = getattr(layer, step.split()[0], None)
            if not callable(method):
                return _problem(f"it has no method {step.split()[0]}()")
            try:
                method()
                res[f"{step} raised"] = None
            except Exception as exc:  # noqa: BLE001 - a second merge must raise; the name is the answer
                if not step.endswith("again"):
                    raise
                res[f"{step} raised"] = type(exc).__name__
            res[f"{step} weight"] = _detached(layer.base.weight)
            res[f"{step} out"] = _detached(layer(x))
            res[f"{step} A, B"] = (_detached(layer.lora_A), _detached(layer.lora_B))
    return res


def inject_probe(fn, spec: dict, targets, r: int, alpha: float, values: dict, x) -> dict:
    """PROBE: ``fn(model, targets, r, alpha)`` on a model built from ``spec``; the LoRA layers, flags and output."""
    model = build_model(spec)
    got = fn(model, targets, r, alpha)
    if got is None:
        return _problem("your function returned None (is a `return` missing?) - return the model")
    if not isinstance(got, nn.Module):
        return _problem(f"expected the model (an nn.Module), got {type(got).__name__}")
    layers = {n: m for n, m in got.named_modules() if all(hasattr(m, k) for k in ("lora_A", "lora_B"))}
    for name, m in layers.items():
        missing = _lora_parts(m)
        if missing:
            return _problem(f"module {name!r}: {missing}")
        if name in values:
            bad = _same_shapes(m, *values[name])
            if bad:
                return _problem(f"module {name!r}: {bad}")
    plain = [n for n, m in got.named_modules() if type(m) is nn.Linear and not n.endswith(".base") and n != "base"]
    with torch.no_grad():
        for name, m in layers.items():
            if name in values:
                m.lora_A.copy_(values[name][0])
                m.lora_B.copy_(values[name][1])
    got.eval()
    with torch.no_grad():
        out = model_output(got, x)
    trainable = [(n, p.numel()) for n, p in got.named_parameters() if p.requires_grad]
    return {"names": list(layers), "plain": plain, "out": _detached(out), "trainable": trainable}


def inject_error_probe(fn, spec: dict, targets) -> dict:
    """PROBE: the exception ``fn`` raises for targets that match nothing, or a module that is not nn.Linear."""
    model = build_model(spec)
    try:
        fn(model, targets, 2, 4.0)
    except Exception as exc:  # noqa: BLE001 - the name is the answer
        return {"raised": type(exc).__name__, "message": str(exc)[:200]}
    return {"raised": None}


def count_probe(fn, spec: dict, wrap: dict | None) -> dict:
    """PROBE: ``fn(model)`` on a model built from ``spec``, LoRA-wrapped by :func:`wrap_like_peft` if asked."""
    model = build_model(spec)
    if wrap:
        wrap_like_peft(model, **wrap)
    return {"count": fn(model)}


class _RefLoRA(nn.Module):
    """The parameters peft's LoRA layer adds (``lora_A``, ``lora_B`` as nn.Linear without bias) around a base."""

    def __init__(self, base: nn.Linear, r: int):
        super().__init__()
        self.base_layer = base
        self.lora_A = nn.ModuleDict({"default": nn.Linear(base.in_features, r, bias=False)})
        self.lora_B = nn.ModuleDict({"default": nn.Linear(r, base.out_features, bias=False)})


def wrap_like_peft(model: nn.Module, targets, r: int, train_bias: bool = False) -> nn.Module:
    """Freeze ``model`` and add LoRA parameters to the nn.Linear layers peft's ``target_modules`` rule picks.

    The same parameters as ``get_peft_model`` (tests/test_checks_ch11.py compares the counts); with
    ``train_bias`` the biases stay trainable too (peft's ``bias="all"``).
    """
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and
             (n in targets or any(n.endswith("." + t) for t in targets))]
    for name, p in model.named_parameters():
        p.requires_grad_(train_bias and name.endswith("bias"))
    for name in names:
        parent, _, child = name.rpartition(".")
        owner = model.get_submodule(parent) if parent else model
        setattr(owner, child, _RefLoRA(getattr(owner, child), r))
    return model


def peft_wrapped_count(spec: dict, wrap: dict | None) -> tuple[int, int]:
    """The trainable and total counts of peft on the model of ``spec``: ``get_peft_model`` when wrapped."""
    peft, _ = _peft()
    model = build_model(spec)
    if not wrap:
        return peft_count(model)
    config = peft.LoraConfig(r=wrap["r"], lora_alpha=wrap["r"], target_modules=list(wrap["targets"]),
                             bias="all" if wrap.get("train_bias") else "none")
    return peft.get_peft_model(model, config).get_nb_trainable_parameters()


# ----------------------------------------------------------------- the fine-tune (sandbox)

def finetune_probe(student_fn, conversations):
    """PROBE: the shipped SFT model and the tokenizer, fine-tuned by ``student_fn`` on one CPU thread, seed 0.

    What comes back (the model) stays in the sandbox; the trusted side gets a handle on it.
    """
    from llmcourse.pretrained import load_base

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model, tok = load_base(name="sft")
            return student_fn(model, tok, [[dict(m) for m in c] for c in conversations])
    finally:
        torch.set_num_threads(threads)


def audit_probe(model) -> dict:
    """PROBE: which SFT weights are not in ``model`` unchanged; its trainable, new and total parameter counts.

    A weight counts as kept when a parameter or buffer of ``model`` has its shape and exactly its values
    (wherever the student's LoRA layer put it). ``new`` counts the elements of parameters and buffers that
    are none of the SFT model's: the adapter.
    """
    from llmcourse.pretrained import load_base

    if model is None:
        return _problem("your function returned None (is a `return` missing?) - return the fine-tuned model")
    if not isinstance(model, nn.Module):
        return _problem(f"expected the fine-tuned torch.nn.Module, got a {type(model).__name__}")
    original, _ = load_base(name="sft")
    tensors, seen = [], set()
    for t in list(model.parameters()) + list(model.buffers()):
        if id(t) not in seen:
            seen.add(id(t))
            tensors.append(t.detach())
    by_shape: dict = {}
    for t in tensors:
        by_shape.setdefault(tuple(t.shape), []).append(t)
    matched, changed = set(), []
    for name, p in original.named_parameters():
        hit = next((t for t in by_shape.get(tuple(p.shape), []) if t.dtype == p.dtype and torch.equal(t.cpu(), p)),
                   None)
        if hit is None:
            changed.append(name)
        else:
            matched.add(id(hit))
    params = {id(p): p for p in model.parameters()}
    return {"changed": changed, "new": sum(t.numel() for t in tensors if id(t) not in matched),
            "trainable": sum(p.numel() for p in params.values() if p.requires_grad),
            "total": sum(p.numel() for p in params.values())}
