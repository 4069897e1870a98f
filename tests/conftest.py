"""Shared test set-up: a non-interactive Matplotlib backend, the repository root, one-thread torch."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib
import pytest

matplotlib.use("Agg")
os.environ.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")

REPO = Path(__file__).resolve().parent.parent


def pytest_configure(config):
    """One marker per exercise (``pytest -m ch04``), from the checks modules: nothing to register by hand."""
    from autograder.spec import assignments

    for assignment in assignments():
        chapter = assignment.split("_", 1)[0]
        config.addinivalue_line("markers", f"{chapter}: the {assignment} exercise and its checks")


@pytest.fixture
def one_thread():
    """Small sequential models: one thread is as fast, and far faster on a busy machine."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
