"""A stand-in for a notebook kernel, so tests can run exercise cells without Jupyter.

Cells run in a ``__main__`` namespace with their source registered in ``linecache``,
as IPython does, so ``inspect.getsource`` (and with it the guard's static look) works
on the functions they define.
"""

from __future__ import annotations

import linecache
from pathlib import Path

import nbformat
import pytest


def planted(*cases):
    """pytest params (wrong function, regex its failure message must match), named after the function."""
    return [pytest.param(fn, match, id=fn.__name__) for fn, match in cases]


def run_cell(source: str, namespace: dict, filename: str, *, keep_source: bool = True) -> None:
    """Execute one cell; ``keep_source=False`` hides its source, as for code built with ``exec``."""
    if keep_source:
        linecache.cache[filename] = (len(source), None, source.splitlines(keepends=True), filename)
    exec(compile(source, filename, "exec"), namespace)  # noqa: S102 - a notebook kernel stand-in


def kernel(*cells: str, keep_source: bool = True) -> dict:
    """A fresh ``__main__`` namespace with ``cells`` executed in order."""
    namespace = {"__name__": "__main__"}
    for i, source in enumerate(cells):
        run_cell(source, namespace, f"<test-kernel-{id(namespace)}-{i}>", keep_source=keep_source)
    return namespace


def solution_namespace(path: Path) -> dict:
    """The namespace left by a source notebook's setup and answer cells (its reference solution)."""
    notebook = nbformat.read(path, as_version=4)
    namespace = {"__name__": "__main__"}
    for i, cell in enumerate(notebook.cells):
        if cell.cell_type == "code" and not cell.metadata.get("nbgrader", {}).get("grade"):
            run_cell(cell.source, namespace, f"<{path.name} cell {i}>")
    return namespace
