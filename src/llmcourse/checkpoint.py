"""Checkpoints that resume a training run exactly: one safetensors file holds everything.

What it teaches: to continue a run as if it had never stopped, saving the
weights is not enough. The file must also hold the optimiser's state (AdamW's
running averages ``exp_avg`` and ``exp_avg_sq`` and its ``step`` count, per
parameter), the scheduler's position, the trainer's step counter and the
state of every random number generator the run draws from: dropout's,
the data order's, and Python's and NumPy's global generators (for user code
that draws from them). Restore all of them and the continued run is bit for
bit the run that never stopped (``tests/test_trainer.py`` checks it with
``torch.equal`` on every weight).

The format is safetensors (Hugging Face): a JSON header of names, dtypes and
shapes, then raw tensor bytes; unlike ``torch.save`` (pickle) loading one
cannot run code. Tensors are named ``model/<name>``, ``optimizer/<index>/<key>``
and ``rng/<name>``; the rest (optimiser hyperparameters, scheduler state,
step, config, loss history) is JSON in the header's string metadata.

Taught in: book/08-pretraining
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

FORMAT = "llmcourse.checkpoint/1"


@dataclass
class Checkpoint:
    """What :func:`load_checkpoint` hands back besides what it loads in place.

    ``meta`` is the JSON-able dict given to :func:`save_checkpoint`; ``rng_states`` the
    generator states given to it (``torch.Generator.get_state()`` tensors).
    """

    meta: dict
    rng_states: dict[str, Tensor]


def _unique_weights(model: nn.Module) -> tuple[dict[str, Tensor], dict[str, str]]:
    """The state dict without tied copies (safetensors refuses shared memory), and alias -> kept name."""
    kept, aliases, seen = {}, {}, {}
    for name, t in model.state_dict().items():
        key = (t.data_ptr(), tuple(t.shape), t.dtype) if t.numel() else None
        if key is not None and key in seen:
            aliases[name] = seen[key]  # e.g. GPT's lm_head.weight is wte.weight
            continue
        seen[key] = name
        kept[name] = t.detach().cpu().contiguous()
    return kept, aliases


def _python_numpy_rng() -> dict[str, Tensor]:
    version, state, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    if name != "MT19937":
        raise ValueError(f"NumPy's global generator is {name}, expected MT19937")
    return {
        "python.version": torch.tensor(version, dtype=torch.int64),
        "python.state": torch.tensor(state, dtype=torch.int64),  # 624 words + position
        "python.gauss_next": torch.tensor([] if gauss is None else [gauss], dtype=torch.float64),
        "numpy.keys": torch.from_numpy(keys.astype(np.int64)),
        "numpy.pos": torch.tensor(pos, dtype=torch.int64),
        "numpy.cached_gaussian": torch.tensor([cached] if has_gauss else [], dtype=torch.float64),
    }


def _restore_python_numpy_rng(t: Mapping[str, Tensor]) -> None:
    gauss = t["python.gauss_next"].tolist()
    random.setstate((int(t["python.version"]), tuple(t["python.state"].tolist()), gauss[0] if gauss else None))
    cached = t["numpy.cached_gaussian"].tolist()
    np.random.set_state(("MT19937", t["numpy.keys"].numpy().astype(np.uint32), int(t["numpy.pos"]),
                         int(bool(cached)), cached[0] if cached else 0.0))


def save_checkpoint(path: str | os.PathLike, model: nn.Module, optimizer: torch.optim.Optimizer | None = None,
                    scheduler=None, *, rng_states: Mapping[str, Tensor] | None = None,
                    meta: Mapping | None = None) -> None:
    """Write ``model``'s weights, ``optimizer``'s and ``scheduler``'s state, generator states and ``meta``.

    Args:
        rng_states: named generator states to keep (``gen.get_state()``); Python's and NumPy's
            global states are always added.
        meta: anything JSON-able (step counter, config, loss history).
    """
    from safetensors.torch import save_file

    tensors: dict[str, Tensor] = {}
    weights, aliases = _unique_weights(model)
    tensors.update({f"model/{k}": v for k, v in weights.items()})
    header = {"format": FORMAT, "model.aliases": json.dumps(aliases), "meta": json.dumps(dict(meta or {}))}
    if optimizer is not None:
        sd = optimizer.state_dict()
        scalars = {}
        for index, state in sd["state"].items():
            for key, value in state.items():
                if isinstance(value, Tensor):
                    tensors[f"optimizer/{index}/{key}"] = value.detach().cpu().contiguous()
                else:
                    scalars.setdefault(str(index), {})[key] = value
        header["optimizer.param_groups"] = json.dumps(sd["param_groups"])
        header["optimizer.scalars"] = json.dumps(scalars)
    if scheduler is not None:
        header["scheduler"] = json.dumps(scheduler.state_dict())
    for name, state in {**(rng_states or {}), **_python_numpy_rng()}.items():
        tensors[f"rng/{name}"] = state.detach().cpu().contiguous()
    save_file(tensors, os.fspath(path), metadata=header)


def read_meta(path: str | os.PathLike) -> dict:
    """The ``meta`` dict of a checkpoint, without loading any tensor."""
    from safetensors import safe_open

    path = os.fspath(path)
    with safe_open(path, framework="pt") as f:
        header = f.metadata() or {}
    if header.get("format") != FORMAT:
        raise ValueError(f"{path} is not a checkpoint written by llmcourse.checkpoint.save_checkpoint "
                         f"(format {header.get('format')!r}, expected {FORMAT!r})")
    return json.loads(header["meta"])


def load_checkpoint(path: str | os.PathLike, model: nn.Module, optimizer: torch.optim.Optimizer | None = None,
                    scheduler=None, *, restore_global_rng: bool = True) -> Checkpoint:
    """Load a :func:`save_checkpoint` file into ``model`` (and ``optimizer``, ``scheduler``) in place.

    The optimiser must be built like the saved one (same parameter groups, same order).
    With ``restore_global_rng`` Python's ``random`` and NumPy's global generator are put
    back where they were at saving time. Returns the ``meta`` dict and the other generator
    states, for the caller to restore.
    """
    from safetensors import safe_open
    from safetensors.torch import load_file

    read_meta(path)  # checks the format
    path = os.fspath(path)
    with safe_open(path, framework="pt") as f:
        header = f.metadata()
    tensors = load_file(path)
    weights = {k.removeprefix("model/"): v for k, v in tensors.items() if k.startswith("model/")}
    for alias, kept in json.loads(header["model.aliases"]).items():
        weights[alias] = weights[kept]
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise ValueError(f"{path} does not fit this model: missing {missing[:5]}, unexpected {unexpected[:5]}")
    if optimizer is not None:
        if "optimizer.param_groups" not in header:
            raise ValueError(f"{path} holds no optimiser state")
        groups = json.loads(header["optimizer.param_groups"])
        for live, saved in zip(optimizer.param_groups, groups):
            for key, value in live.items():
                if isinstance(value, tuple) and isinstance(saved.get(key), list):
                    saved[key] = tuple(saved[key])  # JSON turned AdamW's betas into a list
        state: dict[int, dict] = {}
        for key, value in tensors.items():
            if key.startswith("optimizer/"):
                _, index, name = key.split("/", 2)
                state.setdefault(int(index), {})[name] = value
        for index, values in json.loads(header["optimizer.scalars"]).items():
            state.setdefault(int(index), {}).update(values)
        optimizer.load_state_dict({"state": state, "param_groups": groups})
    if scheduler is not None:
        if "scheduler" not in header:
            raise ValueError(f"{path} holds no scheduler state")
        scheduler.load_state_dict(json.loads(header["scheduler"]))
    rng = {k.removeprefix("rng/"): v for k, v in tensors.items() if k.startswith("rng/")}
    if restore_global_rng:
        _restore_python_numpy_rng(rng)
    other = {k: v for k, v in rng.items() if not k.startswith(("python.", "numpy."))}
    return Checkpoint(meta=json.loads(header["meta"]), rng_states=other)
