"""The guard: a task that must re-implement something may not call it.

Two looks, combined (what is forbidden, and how code is read for it, is :mod:`autograder.forbidden`):

* **static** - read the source of the student's function (and of the helper
  functions it calls from the notebook) for forbidden names and imports;
* **run time** - while the student's function runs, a profiler hook watches
  every call; a call that the student's own code makes into a file of a
  forbidden package, or to a forbidden built-in, stops it with
  :class:`ForbiddenCall`, naming the student's line. Calls made by course code
  the notebook provides (``llmcourse.datasets`` using scikit-learn) are not the
  student's.

The static look catches code paths the test inputs never reach; the run-time
look catches calls the source hides (``getattr``, ``__import__``, aliases).
This module also turns every failure of student code into feedback
(:func:`call_student`, :func:`run_probe`).
"""

from __future__ import annotations

import importlib.util
import linecache
import os
import sys
import types
from collections.abc import Callable, Iterable

from autograder.compare import CheckFailed
from autograder.forbidden import (
    ForbiddenCall,
    callable_name,
    refusal,
    resolve_callables,
    static_violations,
    under,
)

__all__ = ["ForbiddenCall", "call_guarded", "call_student", "run_probe", "static_violations", "student_failure"]


def _module_roots(modules: Iterable[str]) -> list[tuple[str, str]]:
    """(module name, file or directory) for each forbidden module that is installed."""
    roots = []
    for name in modules:
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            spec = None
        if spec is None or spec.origin is None:
            continue
        if spec.submodule_search_locations:
            roots.append((name, os.path.dirname(os.path.abspath(spec.origin)) + os.sep))
        else:
            roots.append((name, os.path.abspath(spec.origin)))
    return roots


def _refuse_static(fn, *, task: str, modules: tuple, callables: tuple) -> None:
    findings = static_violations(fn, modules=modules, callables=callables)
    if findings:
        raise refusal(task, findings, modules, callables)


def call_guarded(fn: Callable, *args, task: str, modules: Iterable[str] = (),
                 callables: Iterable[Callable | str] = (), static: bool = True, **kwargs):
    """Call ``fn(*args, **kwargs)`` after the static look, with the run-time watch on.

    Raises :class:`ForbiddenCall` naming ``task`` and the forbidden thing that was used;
    any other exception from the student's code propagates unchanged.
    """
    modules = tuple(modules)
    callables = resolve_callables(callables)
    if static:
        _refuse_static(fn, task=task, modules=modules, callables=callables)
    roots = _module_roots(modules)
    forbidden_ids = {id(c) for c in callables}
    method_names = {c.__name__ for c in callables if getattr(c, "__objclass__", None) is not None}
    hit: list[str] = []

    def in_roots(filename: str) -> bool:
        return any(filename == root or (root.endswith(os.sep) and filename.startswith(root)) for _, root in roots)

    def refuse(what: str, caller) -> None:
        site = _student_site(caller, in_roots, guard_frame)
        if site is None:  # reached through course code the notebook provides: not the student's call
            return
        hit.append(f"{what}{site}")
        raise ForbiddenCall(f"{task}: your code called {hit[0]} - this task asks you to write it yourself "
                            f"without {', '.join(modules + tuple(callable_name(c) for c in callables))}")

    def watch(frame, event, arg):
        if hit:
            return
        if event == "call":
            filename = frame.f_code.co_filename
            for name, root in roots:
                if filename == root or (root.endswith(os.sep) and filename.startswith(root)):
                    if frame.f_back is None or not in_roots(frame.f_back.f_code.co_filename):
                        refuse(name, frame.f_back)
                    return
        elif event == "c_call":
            module = under(_c_module(arg), modules)
            if id(arg) not in forbidden_ids and getattr(arg, "__name__", None) in method_names:
                arg = _unbound(arg)  # x.unfold is a new object each time: compare its descriptor
            if id(arg) in forbidden_ids or module:
                refuse(callable_name(arg) if id(arg) in forbidden_ids else f"{module} ({callable_name(arg)})", frame)

    guard_frame = sys._getframe()
    previous = sys.getprofile()
    sys.setprofile(watch)
    try:
        result = fn(*args, **kwargs)
    finally:
        sys.setprofile(previous)
    if hit:  # raised inside a callee whose exception the student's code swallowed
        raise ForbiddenCall(f"{task}: your code called {hit[0]} - this task asks you to write it yourself")
    return result


#: code the notebook is given rather than written by the student: the course library and the checks
_PROVIDED = tuple(os.path.dirname(os.path.abspath(importlib.util.find_spec(m).origin)) + os.sep
                  for m in ("llmcourse", "autograder"))


def _is_student_code(filename: str) -> bool:
    """Code compiled from a notebook cell (``<cell ...>`` in the sandbox, ``<test-kernel-...>`` in tests)."""
    return filename.startswith("<") and not filename.startswith("<frozen")


def _student_site(frame, forbidden_file, stop) -> str | None:
    """Where the student's code made the call that reached ``frame``: `` at <cell>, line N: `code` ``.

    Walks up from ``frame``: the first frame that is the student's own code is the call site;
    reaching provided course code first (``llmcourse`` not forbidden, a check's probe) means the
    student did not make this call, and ``None`` comes back. With neither before ``stop`` (the
    guard's own frame), an empty site: the call is still refused.
    """
    while frame is not None and frame is not stop:
        filename = frame.f_code.co_filename
        if _is_student_code(filename):
            line = linecache.getline(filename, frame.f_lineno).strip()
            where = filename.strip("<>")
            return f" at {where}, line {frame.f_lineno}" + (f": `{line[:120]}`" if line else "")
        if filename.startswith(_PROVIDED) and not forbidden_file(filename):
            return None
        frame = frame.f_back
    return ""


def _unbound(method):
    """The class attribute behind a bound built-in method (``TensorBase.unfold`` for ``x.unfold``)."""
    owner = getattr(method, "__self__", None)
    if owner is None or isinstance(owner, types.ModuleType):
        return method
    for cls in type(owner).__mro__:
        found = vars(cls).get(method.__name__)
        if found is not None:
            return found
    return method


def _c_module(fn) -> str | None:
    """The module a built-in function or method belongs to (``torch`` for ``torch.tanh``)."""
    module = getattr(fn, "__module__", None)
    if module:
        return module
    owner = getattr(fn, "__self__", None)
    return type(owner).__module__ if owner is not None and not isinstance(owner, types.ModuleType) else None


def _where(inputs: dict | None) -> str:
    return " for " + ", ".join(f"{k}={v}" for k, v in inputs.items()) if inputs else ""


def student_failure(task: str, exc: BaseException, inputs: dict | None = None) -> CheckFailed:
    """The feedback for an exception raised by the student's code (a :class:`CheckFailed` to raise)."""
    if isinstance(exc, CheckFailed):
        return exc
    if isinstance(exc, NotImplementedError):
        return CheckFailed(f"{task}: your function raised NotImplementedError{_where(inputs)} - replace "
                           f"`raise NotImplementedError()` with your code")
    return CheckFailed(f"{task}: your function raised {type(exc).__name__}: {exc}{_where(inputs)}")


def _rules(task, modules, callables) -> tuple[str, tuple, tuple]:
    """(task name, forbidden modules, forbidden callables) from a :class:`autograder.spec.Task` or a name."""
    from autograder.spec import Task

    if isinstance(task, Task):
        if tuple(modules) or tuple(callables):
            raise TypeError("give the forbidden modules and callables in the Task, not beside it")
        return task.name, task.modules, task.callables
    return task, tuple(modules), tuple(callables)


def call_student(fn: Callable, *args, task, inputs: dict | None = None, modules: Iterable[str] = (),
                 callables: Iterable[Callable | str] = (), **kwargs):
    """Call the student's ``fn`` under the guard; anything it raises becomes a :class:`CheckFailed`.

    The message names ``task``, the exception and the ``inputs`` that triggered it, so a crash
    in student code is feedback, never a crash of the check. ``task`` is the task's
    :class:`autograder.spec.Task` (its name and the only modules and callables it forbids), or a
    plain name with ``modules`` and ``callables`` given here. When the grader runs the check in
    its trusted process, ``fn`` is a handle on a function in the student's sandbox
    (:class:`autograder.remote.Remote`): the call, with the same guard, happens there and only
    data comes back.
    """
    task, modules, callables = _rules(task, modules, callables)
    if getattr(fn, "__llmcourse_remote__", False):
        return fn.__llmcourse_remote_call__(args, kwargs, task=task, inputs=inputs, modules=tuple(modules),
                                           callables=tuple(callables))
    if not callable(fn):
        raise CheckFailed(f"{task}: expected a function, got {type(fn).__name__}")
    try:
        return call_guarded(fn, *args, task=task, modules=modules, callables=callables, **kwargs)
    except Exception as exc:  # noqa: BLE001 - every failure of student code becomes a message
        raise student_failure(task, exc, inputs) from None


def run_probe(probe: Callable, *args, task, inputs: dict | None = None, modules: Iterable[str] = (),
              callables: Iterable[Callable | str] = (), **kwargs):
    """Run a check's ``probe(*args, **kwargs)`` that drives student objects; return its plain-data result.

    Use a probe when a check needs more than one call into the student's code: building a graph
    with the student's ``Value`` class and calling ``backward``, or a backward pass through the
    student's torch function. ``probe`` must be a module-level function of an ``autograder.checks``
    module; it receives the student's functions or classes among ``args`` and must return only
    data (numbers, strings, numpy arrays, detached torch tensors, and lists, tuples or dicts of
    them). The grader runs it beside the student's code, in the student's sandbox, so it is not
    trusted to judge anything: the check compares what it returns with its own reference.

    The guard takes a static look at every student function or class among ``args`` and watches
    the whole probe while it runs; failures become :class:`CheckFailed` as in :func:`call_student`.
    """
    task, modules, callables = _rules(task, modules, callables)
    if not (isinstance(probe, types.FunctionType) and probe.__module__.startswith("autograder.checks")
            and probe.__qualname__ == probe.__name__):
        raise TypeError(f"a probe must be a module-level function of autograder.checks, got {probe!r}")
    remote = next((a for a in args if getattr(a, "__llmcourse_remote__", False)), None)
    if remote is not None:
        return remote.__llmcourse_remote_probe__(probe, args, kwargs, task=task, inputs=inputs,
                                                 modules=tuple(modules), callables=tuple(callables))
    modules, callables = tuple(modules), tuple(callables)
    for obj in args:
        if isinstance(obj, (types.FunctionType, type)):
            _refuse_static(obj, task=task, modules=modules, callables=callables)
    try:
        return call_guarded(probe, *args, task=task, modules=modules, callables=callables, static=False,
                            **kwargs)
    except Exception as exc:  # noqa: BLE001 - every failure of student code becomes a message
        raise student_failure(task, exc, inputs) from None
