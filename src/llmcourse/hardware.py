"""Hardware: pick the fastest device that is present: CUDA, then Apple's MPS, then the CPU.

Every chapter runs on a 2-core CPU; a GPU only makes it faster. Code in the
book asks ``device()`` once and moves models and tensors there.

Taught in: book/intro
"""

from __future__ import annotations

import os

import torch

_ALLOWED = ("cuda", "mps", "cpu")


def device(prefer: str | None = None) -> torch.device:
    """Return the device the course should compute on.

    Order: ``cuda`` if a CUDA GPU is visible, else ``mps`` (Apple silicon),
    else ``cpu``. ``prefer`` (or the environment variable ``LLMCOURSE_DEVICE``)
    forces one of ``"cuda"``, ``"mps"`` or ``"cpu"``; asking for one that is not
    available raises ``RuntimeError`` rather than silently falling back.

    >>> device("cpu")
    device(type='cpu')
    """
    choice = prefer if prefer is not None else os.environ.get("LLMCOURSE_DEVICE") or None
    if choice is not None:
        if not isinstance(choice, str) or choice.split(":")[0] not in _ALLOWED:
            raise ValueError(f"device must be one of {_ALLOWED} (optionally 'cuda:N'), got {choice!r}")
        kind = choice.split(":")[0]
        if kind == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("device 'cuda' was requested but no CUDA GPU is visible")
        if kind == "mps" and not _mps_available():
            raise RuntimeError("device 'mps' was requested but Apple's MPS backend is not available")
        return torch.device(choice)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if _mps_available():
        return torch.device("mps")
    return torch.device("cpu")


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())
