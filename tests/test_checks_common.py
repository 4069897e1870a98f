"""Every hidden check, of every chapter, turns a broken student function into a clear message.

The checks are found by name (``check_*`` in each ``autograder.checks`` module), so a new
chapter's checks are covered here as soon as they exist.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

import autograder.checks
from autograder.compare import CheckFailed

ALL_CHECKS = [
    fn
    for info in pkgutil.iter_modules(autograder.checks.__path__) if not info.name.startswith("_")
    for name, fn in inspect.getmembers(importlib.import_module(f"autograder.checks.{info.name}"),
                                       inspect.isfunction)
    if name.startswith("check_") and fn.__module__ == f"autograder.checks.{info.name}"
]


def _id(check) -> str:
    return f"{check.__module__.rsplit('.', 1)[-1]}.{check.__name__}"


def test_checks_are_found():
    assert len(ALL_CHECKS) >= 8


@pytest.mark.parametrize("check", ALL_CHECKS, ids=_id)
def test_returning_none_is_explained(check):
    def returns_none(*args, **kwargs):
        return None

    with pytest.raises(CheckFailed, match=r"None \(is a `return` missing\?\)"):
        check(returns_none)


@pytest.mark.parametrize("check", ALL_CHECKS, ids=_id)
def test_exception_is_reported_with_its_input(check):
    def explodes(*args, **kwargs):
        raise ValueError(f"boom with {len(args)} arguments")

    with pytest.raises(CheckFailed, match=r"raised ValueError: boom with \d+ arguments for \w+="):
        check(explodes)


@pytest.mark.parametrize("check", ALL_CHECKS, ids=_id)
def test_unfinished_stub_is_explained(check):
    def stub(*args, **kwargs):
        raise NotImplementedError()

    with pytest.raises(CheckFailed, match=r"raised NotImplementedError.*replace `raise NotImplementedError\(\)`"):
        check(stub)


@pytest.mark.parametrize("check", ALL_CHECKS, ids=_id)
def test_non_function_is_explained(check):
    with pytest.raises(CheckFailed, match="expected a function"):
        check(42)
