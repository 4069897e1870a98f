"""The forbidden-use rule: what a task forbids, and how code is read for it.

A task forbids **modules** (a dotted prefix: ``sklearn`` covers ``sklearn.linear_model``) and
**callables** (dotted names: ``torch.nn.functional.conv2d``). One matcher, :func:`under`,
decides both. Code is read for them in one way, :func:`uses`, which walks a function's syntax
tree, asks a *resolver* what each name and import refers to, and follows the notebook helpers
the function calls. Two resolvers exist, for the two places the grader looks from:

* :func:`static_violations` - live objects (in the sandbox, or in a test): names resolve
  through the function's globals and closure, callables are also matched by identity;
* :func:`source_violations` - source text only (in the trusted grader, which never runs the
  student's code): names resolve through the notebook's imports (``import torch.nn.functional
  as F`` makes ``F.conv2d`` read ``torch.nn.functional.conv2d``).

The run-time watch (:func:`autograder.guard.call_guarded`) uses :func:`under` too.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import textwrap
import types
from collections.abc import Callable, Iterable

from autograder.compare import CheckFailed


class ForbiddenCall(CheckFailed):
    """The student's code used a library function the task asks them to write themselves."""


def under(name: str | None, prefixes: Iterable[str]) -> str | None:
    """The first of ``prefixes`` that ``name`` is or lies under (``a.b`` is under ``a``), else None."""
    if not name:
        return None
    return next((p for p in prefixes if name == p or name.startswith(p + ".")), None)


def dotted(node: ast.AST) -> list[str] | None:
    """``["torch", "nn", "functional"]`` for the expression ``torch.nn.functional``; None if not a name chain."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return parts[::-1]
    return None


def callable_name(obj) -> str:
    """``module.qualname`` of a function, class or built-in."""
    mod = getattr(obj, "__module__", None) or ""
    return f"{mod}.{getattr(obj, '__qualname__', getattr(obj, '__name__', repr(obj)))}".lstrip(".")


def resolve_callables(callables: Iterable[Callable | str]) -> tuple:
    """Forbidden callables given as objects or dotted names (``"torch.Tensor.unfold"``) -> objects.

    Names that do not import (a library that is not installed) are left out.
    """
    out = []
    for c in callables:
        if not isinstance(c, str):
            out.append(c)
            continue
        module, _, attr = c.rpartition(".")
        try:
            out.append(getattr(importlib.import_module(module), attr))
        except (ImportError, AttributeError, ValueError):
            try:  # a class attribute such as torch.Tensor.unfold
                owner_mod, _, owner = module.rpartition(".")
                out.append(getattr(getattr(importlib.import_module(owner_mod), owner), attr))
            except (ImportError, AttributeError, ValueError):
                continue
    return tuple(out)


def refusal(task: str, findings: list[str], modules: tuple, callables: tuple) -> ForbiddenCall:
    """The one message for a static finding."""
    names = ", ".join(tuple(modules) + tuple(c if isinstance(c, str) else callable_name(c) for c in callables))
    return ForbiddenCall(f"{task}: {'; '.join(findings)} - this task asks you to write it yourself without {names}")


# ----------------------------------------------------------------------------- the one walker

def uses(fname: str, nodes: Iterable[ast.AST], *, modules: tuple, resolve: Callable[[ast.AST], str | None],
         follow: Callable[[str], list[str]]) -> list[str]:
    """Findings such as ``"fit uses P"`` for the code ``nodes`` of the definition ``fname``.

    ``resolve(node)`` names what a ``Name``/``Attribute`` node refers to when it is forbidden
    (the text to show), else None; ``follow(name)`` returns the findings of a notebook helper
    that ``fname`` refers to by a bare name ([] for anything else, or one already visited).
    """
    found: list[str] = []

    def flag(what: str) -> None:
        if what not in found:
            found.append(what)

    for top in nodes:
        for node in ast.walk(top):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if under(alias.name, modules):
                        flag(f"{fname} imports {alias.name}")
            elif isinstance(node, ast.ImportFrom) and node.module:
                if under(node.module, modules) or any(resolve(ast.Name(f"{node.module}.{a.name}")) for a in node.names):
                    flag(f"{fname} imports from {node.module}")
            elif isinstance(node, (ast.Name, ast.Attribute)):
                hit = resolve(node)
                if hit:
                    flag(f"{fname} uses {hit}")
                elif isinstance(node, ast.Name):
                    for f in follow(node.id):
                        flag(f)
    return found


# ----------------------------------------------------------------------------- live objects

_MISSING = object()


def static_violations(fn: Callable, *, modules: Iterable[str] = (), callables: Iterable[Callable | str] = (),
                      _seen: set | None = None) -> list[str]:
    """What forbidden code the live function or class ``fn`` (and its notebook helpers) refers to.

    Returns findings such as ``"perceptron_fit imports from sklearn.linear_model"``; an empty
    list means nothing forbidden was found (or no source could be read: the run-time watch
    still applies).
    """
    modules = tuple(modules)
    targets = resolve_callables(callables)
    ids = {id(c) for c in targets}
    names = tuple(callable_name(c) for c in targets) + tuple(c for c in callables if isinstance(c, str))
    seen = _seen if _seen is not None else set()
    target = inspect.unwrap(fn) if callable(fn) else fn
    if isinstance(target, type):  # a class: look at its methods
        found: list[str] = []
        for member in vars(target).values():
            member = member.__func__ if isinstance(member, (staticmethod, classmethod)) else member
            if isinstance(member, types.FunctionType):
                found += [f for f in static_violations(member, modules=modules, callables=targets, _seen=seen)
                          if f not in found]
        return found
    if not isinstance(target, types.FunctionType) or id(target) in seen:
        return []
    seen.add(id(target))
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(target)))
    except (OSError, TypeError, SyntaxError, IndentationError):
        return []
    scope = dict(vars(__import__("builtins")))
    scope.update(target.__globals__)
    if target.__closure__:
        scope.update({n: c.cell_contents for n, c in zip(target.__code__.co_freevars, target.__closure__)
                      if _filled(c)})

    def resolve(node: ast.AST) -> str | None:
        if isinstance(node, ast.Name) and "." in node.id:  # a "module.name" from an ImportFrom
            return node.id if under(node.id, names) else None
        obj = _lookup(node, scope)
        if obj is _MISSING:
            return None
        text = ".".join(dotted(node) or [])
        if id(obj) in ids:
            return text
        qualified = obj.__name__ if isinstance(obj, types.ModuleType) else getattr(obj, "__module__", None)
        hit = under(qualified, modules)
        return f"{text} (from {hit})" if hit else None

    def follow(name: str) -> list[str]:
        obj = scope.get(name)
        if isinstance(obj, types.FunctionType) and obj.__globals__ is target.__globals__:
            return static_violations(obj, modules=modules, callables=targets, _seen=seen)
        return []

    return uses(target.__name__, [tree], modules=modules, resolve=resolve, follow=follow)


def _filled(cell) -> bool:
    try:
        cell.cell_contents  # noqa: B018 - raises ValueError for an empty cell
        return True
    except ValueError:
        return False


def _lookup(node: ast.AST, scope: dict):
    """Evaluate a dotted name against ``scope`` without running any user code."""
    if isinstance(node, ast.Name):
        return scope.get(node.id, _MISSING)
    if isinstance(node, ast.Attribute):
        base = _lookup(node.value, scope)
        if base is _MISSING or not isinstance(base, (types.ModuleType, type)):
            return _MISSING
        try:
            return inspect.getattr_static(base, node.attr)
        except AttributeError:
            return _MISSING
    return _MISSING


# ----------------------------------------------------------------------------- source text

def source_violations(name: str, definitions: dict[str, list[ast.AST]], aliases: dict[str, str], *,
                      modules: tuple[str, ...], callables: tuple[str, ...]) -> list[str]:
    """What forbidden code the notebook definition ``name`` (and the definitions it names) uses.

    ``definitions`` maps each top-level name of the student's cells to its statements;
    ``aliases`` maps each imported name to what it imports (``F`` -> ``torch.nn.functional``).
    """
    seen: set[str] = set()

    def qualified(node: ast.AST) -> str | None:
        if isinstance(node, ast.Name) and "." in node.id:  # a "module.name" from an ImportFrom
            return node.id
        parts = dotted(node)
        head = aliases.get(parts[0]) if parts else None
        return ".".join([head, *parts[1:]]) if head else None

    def visit(current: str) -> list[str]:
        if current in seen or current not in definitions:
            return []
        seen.add(current)

        def resolve(node: ast.AST) -> str | None:
            q = qualified(node)
            if not q or not (under(q, modules) or under(q, callables)):
                return None
            return node.id if isinstance(node, ast.Name) and "." in node.id else ".".join(dotted(node) or [q])

        return uses(current, definitions[current], modules=modules, resolve=resolve, follow=visit)

    return visit(name)
