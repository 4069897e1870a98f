"""Where things are, and how an nbgrader job is set up for them.

nbgrader wants a course directory (``source/``, ``release/``, ``submitted/``,
a gradebook). The CLI never works inside the repository: each job copies what
it needs into a fresh temporary course directory, runs nbgrader there, and
copies the results out. The repository stays clean and two jobs never collide.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from traitlets.config import Config
from traitlets.config.loader import PyFileConfigLoader

REPO = Path(__file__).resolve().parent.parent
SOLUTIONS = REPO / "solutions"
EXERCISES = REPO / "exercises"
CONFIG_FILE = Path(__file__).resolve().parent / "nbgrader_config.py"
#: nbgrader's course id; it must name a row of the gradebook's course table (PostgreSQL checks that)
COURSE_ID = "llmcourse"


def prepare_environment() -> None:
    """Make nbgrader's helpers and kernels come from this Python's environment.

    nbgrader runs the ``alembic`` command it installed, so this interpreter's ``bin/`` goes first
    on ``PATH`` (it may be missing when ``.venv/bin/python`` is called directly); and this
    environment's ``python3`` kernelspec goes first on ``JUPYTER_PATH``, so notebooks run with
    the course's packages even when the user has another ``python3`` kernel installed.
    """
    bindir = os.path.dirname(sys.executable)
    path = os.environ.get("PATH", "")
    if bindir not in path.split(os.pathsep):
        os.environ["PATH"] = os.pathsep.join([bindir, path]) if path else bindir
    own = os.path.join(sys.prefix, "share", "jupyter")
    jpath = os.environ.get("JUPYTER_PATH", "")
    if own not in jpath.split(os.pathsep):
        os.environ["JUPYTER_PATH"] = os.pathsep.join([own, jpath]) if jpath else own


def assignments(source: Path = SOLUTIONS) -> list[str]:
    """Names of the assignments in ``solutions/`` (folders holding a notebook)."""
    if not source.is_dir():
        return []
    return sorted(p.name for p in source.iterdir() if p.is_dir() and any(p.glob("*.ipynb")))


def check_assignment(name: str, source: Path = SOLUTIONS) -> str:
    """Return ``name`` if it is a known assignment, else raise ``ValueError`` listing the known ones."""
    known = assignments(source)
    if name not in known:
        raise ValueError(f"unknown assignment {name!r}; known assignments: {', '.join(known) or 'none'}")
    return name


def notebook_names(assignment: str, source: Path = SOLUTIONS) -> list[str]:
    """File names of the notebooks of ``assignment`` (what students submit)."""
    return sorted(p.name for p in (source / assignment).glob("*.ipynb"))


def load_config(root: Path, db_url: str | None = None) -> Config:
    """The course's nbgrader config, with the course root moved to ``root``.

    Source and release directories become nbgrader's defaults inside ``root``.
    """
    cfg = PyFileConfigLoader(CONFIG_FILE.name, path=str(CONFIG_FILE.parent)).load_config()
    cfg.CourseDirectory.root = str(root)
    cfg.CourseDirectory.course_id = COURSE_ID
    cfg.CourseDirectory.source_directory = "source"
    cfg.CourseDirectory.release_directory = "release"
    cfg.CourseDirectory.db_url = db_url or f"sqlite:///{root / 'gradebook.db'}"
    return cfg


@dataclass
class Course:
    """A temporary nbgrader course directory holding copies of some assignments' sources."""

    root: Path
    config: Config

    @classmethod
    def create(cls, names: list[str], parent: Path | None = None, source: Path = SOLUTIONS,
               db_url: str | None = None) -> Course:
        prepare_environment()
        root = Path(tempfile.mkdtemp(prefix="llmcourse-grading-", dir=parent))
        for name in names:
            shutil.copytree(source / name, root / "source" / name,
                            ignore=shutil.ignore_patterns(".ipynb_checkpoints", "__pycache__"))
        return cls(root=root, config=load_config(root, db_url))

    def coursedir(self, **traits):
        from nbgrader.coursedir import CourseDirectory

        cd = CourseDirectory(config=self.config)
        for key, value in traits.items():
            setattr(cd, key, value)
        return cd

    def run(self, converter_cls, **traits) -> tuple[bool, str]:
        """Run an nbgrader converter (GenerateAssignment, Autograde, ...); return (ok, log)."""
        from nbgrader.utils import capture_log

        app = converter_cls(coursedir=self.coursedir(**{k: v for k, v in traits.items()
                                                       if k in ("assignment_id", "student_id")}),
                            config=self.config)
        for key, value in traits.items():
            if key not in ("assignment_id", "student_id"):
                setattr(app, key, value)
        result = capture_log(app)
        return bool(result["success"]), result.get("error") or result.get("log") or ""

    def generate(self, assignment: str) -> Path:
        """nbgrader generate_assignment: the student version into ``release/<assignment>``."""
        from nbgrader.converters import GenerateAssignment

        ok, log = self.run(GenerateAssignment, assignment_id=assignment, force=True, create_assignment=True)
        if not ok:
            raise RuntimeError(f"nbgrader generate_assignment failed for {assignment}:\n{log}")
        return self.root / "release" / assignment

    def cleanup(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def sync_sources(names: list[str]) -> list[str]:
    """Write the rule lines of ``TASKS`` into the source notebooks; return the notebooks changed."""
    import nbformat

    from autograder.spec import sync_rules

    changed = []
    for name in names:
        for path in sorted((SOLUTIONS / name).glob("*.ipynb")):
            nb = nbformat.read(path, as_version=4)
            if sync_rules(nb, name):
                nbformat.write(nb, path)
                changed.append(str(path))
    return changed


def release(names: list[str] | None = None, dest: Path = EXERCISES, source: Path = SOLUTIONS) -> list[Path]:
    """Regenerate ``dest/<name>/`` from ``source/<name>/`` for each assignment (all when ``names`` is None).

    Returns the released folders. Anything in ``dest/<name>/`` that nbgrader did not produce is removed,
    so the release is exactly a function of the sources. First, each task's rule line in the source
    notebook is rewritten from its checks module's ``TASKS`` (:func:`autograder.spec.sync_rules`).
    """
    names = list(names) if names else assignments(source)
    for name in names:
        check_assignment(name, source)
    if Path(source) == SOLUTIONS:
        sync_sources(names)
    course = Course.create(names, source=source)
    out = []
    try:
        for name in names:
            built = course.generate(name)
            target = Path(dest) / name
            if target.exists():
                shutil.rmtree(target)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copytree(built, target)
            out.append(target)
    finally:
        course.cleanup()
    return out
