"""Seeds and random generators: the same seed gives the same numbers.

The library itself never seeds anything globally. Functions that draw random
numbers take an explicit ``seed`` or ``generator``. A notebook that wants the
whole page to be repeatable (including code it does not control, such as
``torch.nn`` initialisers) calls :func:`set_seed` once at the top.

Taught in: book/intro
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # torch is imported only when a function needs it
    import torch


def _check_seed(seed: object) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    if not 0 <= int(seed) < 2**32:
        raise ValueError(f"seed must be in [0, 2**32), got {seed}")
    return int(seed)


def set_seed(seed: int) -> None:
    """Seed Python's ``random``, NumPy's global generator and PyTorch (CPU and GPU).

    Call it once at the top of a notebook. Library code should prefer
    :func:`torch_generator` / :func:`numpy_rng` so results do not depend on
    what ran before.
    """
    import torch

    seed = _check_seed(seed)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


def torch_generator(seed: int, device: str | torch.device = "cpu") -> torch.Generator:
    """A fresh ``torch.Generator`` on ``device`` seeded with ``seed``."""
    import torch

    gen = torch.Generator(device=device)
    gen.manual_seed(_check_seed(seed))
    return gen


def numpy_rng(seed: int) -> np.random.Generator:
    """A fresh NumPy ``Generator`` (PCG64) seeded with ``seed``."""
    return np.random.default_rng(_check_seed(seed))
