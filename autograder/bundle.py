"""What a batch ships to its Dask workers, and how a worker knows it may grade with it.

A :class:`CourseBundle` holds, for one batch, the instructor's notebook (cells, hidden tests,
points, released checksums), the checks modules its hidden tests import, the sha256 of every
course module the grading runs (those modules and all the course modules they import, read
from the source with ``ast``: :func:`code_digests`), and which course secret the hidden
inputs come from. Its :meth:`~CourseBundle.digest` names it in every job. On a worker,
:func:`verify` compares the bundle with the code the worker process has loaded and the secret
it has; any difference raises :class:`CourseMismatch`, whose message says what differs, so a
stale worker refuses instead of grading with another course.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import importlib.util
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from autograder.jobs import prepare_worker
from autograder.runner import AssignmentSource
from autograder.secret import seeds_note

#: the grading machinery every job runs, besides the assignment's checks (their imports are followed)
GRADER_MODULES = ("autograder.bundle", "autograder.cluster", "autograder.jobs", "autograder.runner",
                  "autograder.sandbox")
COURSE_PACKAGES = ("autograder", "llmcourse")


class CourseMismatch(Exception):
    """A worker's course differs from the instructor's; its message says how."""


@functools.lru_cache(maxsize=None)
def _package_dir(package: str) -> Path:
    return Path(importlib.util.find_spec(package).origin).parent


def _module_file(name: str) -> Path | None:
    top, _, rest = name.partition(".")
    if top not in COURSE_PACKAGES:
        return None
    path = _package_dir(top).joinpath(*rest.split(".")) if rest else _package_dir(top)
    for candidate in ([path.with_suffix(".py")] if rest else []) + [path / "__init__.py"]:
        if candidate.is_file():
            return candidate
    return None


def code_digests(roots: tuple[str, ...]) -> dict[str, str]:
    """``{module: sha256 of its source}`` for ``roots`` and every course module they import, transitively.

    Only modules of :data:`COURSE_PACKAGES` count; imports are read from the source (``ast``),
    function-level ones included, so nothing is imported here.
    """
    found: dict[str, str] = {}
    todo = list(roots)
    while todo:
        name = todo.pop()
        path = None if name in found else _module_file(name)
        if path is None:
            continue
        data = path.read_bytes()
        found[name] = hashlib.sha256(data).hexdigest()
        parts = name.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]  # the packages it lives in
        for node in ast.walk(ast.parse(data)):
            if isinstance(node, ast.Import):
                todo += [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                todo += [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
    return dict(sorted(found.items()))


@dataclass(frozen=True)
class CourseBundle:
    """What every worker needs for one batch, shipped once: the source, and what to check the worker against."""

    source: AssignmentSource  # the instructor's notebook: cells, hidden tests, points, released checksums
    preload: tuple[str, ...]  # the checks modules its hidden tests import
    code: dict[str, str]  # {module: sha256} of the course code grading runs, as the instructor has it
    seeds: str  # autograder.secret.seeds_note(): where the hidden inputs come from (a secret's fingerprint)

    @classmethod
    def make(cls, source: AssignmentSource, preload: list[str]) -> CourseBundle:
        preload = tuple(sorted(preload))
        return cls(source, preload, code_digests(GRADER_MODULES + preload), seeds_note())

    def digest(self) -> str:
        """sha256 of everything in the bundle: what each job names, and each worker recomputes."""
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()


_FIRST_SEEN: dict[str, str] = {}  # {module: digest} when this process first loaded it


@functools.lru_cache(maxsize=None)
def loaded_code(preload: tuple[str, ...]) -> dict[str, str]:
    """The course code as this process loaded it: each module digested once, right after its first import,
    so that a worker started before the course changed on disk still counts as stale."""
    prepare_worker(preload)
    now = code_digests(GRADER_MODULES + preload)
    return {name: _FIRST_SEEN.setdefault(name, digest) for name, digest in now.items()}


def verify(bundle: CourseBundle, course: str, mine: dict[str, str]) -> None:
    """Raise :class:`CourseMismatch` unless a worker whose loaded code is ``mine`` can grade the job for
    ``course`` with ``bundle`` exactly as the instructor would."""
    if bundle.digest() != course:
        raise CourseMismatch(f"the worker holds course {bundle.digest()[:12]}, not the job's {course[:12]}")
    differ = sorted(m for m in set(mine) | set(bundle.code) if mine.get(m) != bundle.code.get(m))
    if differ:
        raise CourseMismatch(f"the worker's course code differs from the instructor's in {', '.join(differ)}; "
                             f"install the instructor's version of the course on it and restart it")
    if seeds_note() != bundle.seeds:
        raise CourseMismatch(f"the worker's hidden inputs differ from the instructor's (worker: {seeds_note()}; "
                             f"instructor: {bundle.seeds}); give every worker the same AUTOGRADER_SECRET "
                             f"or AUTOGRADER_SECRET_FILE")
