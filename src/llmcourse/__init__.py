"""The course library: datasets, reference models, plots and widgets for the book.

``llmcourse.device()`` picks the device (cuda, then mps, then cpu); everything
else lives in one module per idea (``llmcourse.datasets``, ``llmcourse.perceptron``,
...). The shortcuts below are loaded on first use, so ``import llmcourse`` stays
fast and does not import PyTorch until something needs it.
"""

from importlib import import_module

_SHORTCUTS = {
    "device": "llmcourse.hardware",
    "progress": "llmcourse.progress",
    "set_seed": "llmcourse.reproducibility",
    "torch_generator": "llmcourse.reproducibility",
    "numpy_rng": "llmcourse.reproducibility",
}

__all__ = sorted(_SHORTCUTS)


def __getattr__(name: str):
    if name in _SHORTCUTS:
        return getattr(import_module(_SHORTCUTS[name]), name)
    raise AttributeError(f"module 'llmcourse' has no attribute {name!r}")
