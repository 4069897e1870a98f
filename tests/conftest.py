"""Shared test set-up: a non-interactive Matplotlib backend, the repository root, one-thread torch."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib
import pytest

matplotlib.use("Agg")
os.environ.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def one_thread():
    """Small sequential models: one thread is as fast, and far faster on a busy machine."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
