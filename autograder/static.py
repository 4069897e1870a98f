"""The grader's static look at a submission, done in the trusted process on the source text.

Two questions, answered from the answer cells' code without running it:

* :func:`tamper_findings` - does the code reach for a tool that can switch off the run-time
  guard in the sandbox or hide a forbidden call from this look (``exec``, ``__import__``,
  ``importlib``, ``sys.setprofile``, threads, frames, the grader's own modules ...)? Such code
  gets no points, whatever it returns.
* :meth:`Submission.violations` - does a task's function, or any function, class or
  top-level name of the notebook it refers to, use a module or callable the task forbids?
  Names are resolved through the notebook's imports (``import torch.nn.functional as F``
  makes ``F.conv2d`` read as ``torch.nn.functional.conv2d``).

The sandbox repeats the look on the live objects and watches every call at run time; this
copy cannot be switched off by the student's code because it never runs beside it.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field

from autograder.forbidden import dotted, source_violations, under

#: calls and names that can defeat the run-time guard or hide code from the static look
TAMPER_NAMES = {
    "exec", "eval", "compile", "__import__", "globals", "breakpoint", "__builtins__",
}
TAMPER_MODULES = ("importlib", "builtins", "ctypes", "gc", "threading", "_thread", "concurrent",
                  "multiprocessing", "subprocess", "signal", "pickle", "marshal", "autograder", "nbgrader",
                  "sqlite3", "sqlalchemy", "socket", "pty", "code", "codeop", "runpy", "_imp")
TAMPER_ATTRIBUTES = {
    "setprofile", "settrace", "_getframe", "modules", "meta_path", "path_hooks", "f_back", "f_globals",
    "f_locals", "f_builtins", "gi_frame", "cr_frame", "tb_frame", "__globals__", "__subclasses__",
    "__code__", "__closure__", "__builtins__", "system", "fork", "execv", "execve", "spawnv", "popen",
    "kill", "killpg",
}
#: attributes above that are harmless on these bases (e.g. ``torch.nn.Module.modules()``)
_ATTRIBUTE_BASES = {"modules": ("sys",), "system": ("os",), "fork": ("os",), "execv": ("os",),
                    "execve": ("os",), "spawnv": ("os",), "popen": ("os",), "kill": ("os",),
                    "killpg": ("os",)}


@dataclass
class Submission:
    """The student's answer cells, parsed, with the notebook's import aliases and definitions."""

    sources: list[str]
    setup_sources: list[str] = field(default_factory=list)
    trees: list[ast.Module] = field(default_factory=list, init=False)
    aliases: dict[str, str] = field(default_factory=dict, init=False)
    definitions: dict[str, list[ast.AST]] = field(default_factory=dict, init=False)

    def __post_init__(self):
        for source in self.setup_sources:
            try:
                self._imports(ast.parse(source))
            except SyntaxError:
                pass
        for source in self.sources:
            try:
                tree = ast.parse(source)
            except SyntaxError:  # the sandbox reports it when the cell runs
                continue
            self.trees.append(tree)
            self._imports(tree)
            for node in tree.body:
                for name in _defined_names(node):
                    self.definitions.setdefault(name, []).append(node)

    def _imports(self, tree: ast.AST) -> None:
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for a in node.names:
                    self.aliases[a.asname or a.name.split(".")[0]] = a.name if a.asname else a.name.split(".")[0]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                for a in node.names:
                    self.aliases[a.asname or a.name] = f"{node.module}.{a.name}"

    def qualified(self, node: ast.AST) -> str | None:
        """``F.conv2d`` -> ``torch.nn.functional.conv2d`` through the notebook's imports."""
        parts = dotted(node)
        head = self.aliases.get(parts[0]) if parts else None
        return ".".join([head, *parts[1:]]) if head else None

    def violations(self, name: str, modules: tuple[str, ...], callables: tuple[str, ...]) -> list[str]:
        """What forbidden code ``name`` (and what it refers to in the notebook) uses."""
        return source_violations(name, self.definitions, self.aliases, modules=modules, callables=callables)


def _defined_names(node: ast.AST) -> list[str]:
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return [node.name]
    if isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        return [n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)]
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        return [(a.asname or a.name).split(".")[0] for a in node.names]
    return []


def tamper_findings(submission: Submission) -> list[str]:
    """Uses of tools that could defeat the guard; an empty list means none were found."""
    found: list[str] = []

    def flag(what: str) -> None:
        if what not in found:
            found.append(what)

    for tree in submission.trees:
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for a in node.names:
                    if under(a.name, TAMPER_MODULES):
                        flag(f"imports {a.name}")
            elif isinstance(node, ast.ImportFrom):
                if node.module and under(node.module, TAMPER_MODULES):
                    flag(f"imports from {node.module}")
                for a in node.names:
                    if a.name in TAMPER_ATTRIBUTES and node.module in ("sys", "os"):
                        flag(f"imports {node.module}.{a.name}")
            elif isinstance(node, ast.Name) and node.id in TAMPER_NAMES:
                flag(f"uses {node.id}")
            elif isinstance(node, ast.Attribute) and node.attr in TAMPER_ATTRIBUTES:
                bases = _ATTRIBUTE_BASES.get(node.attr)
                q = submission.qualified(node.value) if bases else None
                if bases is None or (q in bases):
                    flag(f"uses .{node.attr}")
            elif isinstance(node, ast.Constant) and isinstance(node.value, str) and \
                    node.value.startswith("__") and node.value.endswith("__") and \
                    node.value.strip("_") in {"import", "builtins", "globals", "subclasses", "code"}:
                flag(f"uses the string {node.value!r}")
    return found
