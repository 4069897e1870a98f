"""Grade one submitted notebook, trusting nothing that comes from it.

The steps, all in the trusted grading process except where the sandbox is named:

1. **Read** the file (size-capped) as JSON (:func:`read_submission`); anything else scores zero
   with the reason.
2. **Rebuild** the notebook from the *source* (:func:`rebuild`): every locked cell, test cell, grade id and
   point value comes from the instructor's copy; only the answer cells' code (found by
   grade id) and cells the student added are taken from the submission. Deleting,
   reordering, duplicating or editing locked cells, or changing metadata, changes nothing;
   nbgrader's checksums tell which cells were touched, for the feedback.
3. **Look** at the student's code statically (:func:`look_for_tampering`, :mod:`autograder.static`).
4. **Run** the notebook's code cells, in order, in a :class:`~autograder.remote.Sandbox`
   (:func:`run_plan`).
5. For each graded cell, run its visible part in the sandbox (as the student saw it) and its
   hidden part here, with the student's names replaced by :class:`~autograder.remote.Remote`
   handles: the checks generate the inputs, the sandbox only computes the student's
   answers, and the comparison happens here. A task scores its points only if both parts pass.
6. A sandbox that breaks a limit is killed; the task it was on scores zero with the reason,
   a fresh sandbox replays the cells before it, and grading goes on.
"""

from __future__ import annotations

import ast
import builtins
import time
from dataclasses import dataclass, field
from pathlib import Path

import nbformat

from autograder.compare import CheckFailed
from autograder.limits import NOTEBOOK_BYTES, SANDBOX_RESTARTS, Limits
from autograder.remote import Sandbox, SandboxGone, Session, StudentError
from autograder.static import Submission, tamper_findings

HIDDEN_MARK = "### BEGIN HIDDEN TESTS"


@dataclass(frozen=True)
class SourceCell:
    kind: str  # "markdown", "setup" (locked code), "answer", "test"
    grade_id: str | None
    source: str
    points: float = 0.0
    checksum: str | None = None  # of the released (student-facing) version


@dataclass(frozen=True)
class AssignmentSource:
    """The instructor's notebook, as cells, with the released cells' nbgrader checksums."""

    assignment: str
    notebook: str
    cells: tuple[SourceCell, ...]

    @classmethod
    def load(cls, assignment: str, source_nb: Path, release_nb: Path | None = None) -> AssignmentSource:
        src = nbformat.read(source_nb, as_version=4)
        released = {}
        if release_nb is not None and Path(release_nb).is_file():
            for c in nbformat.read(release_nb, as_version=4).cells:
                meta = c.metadata.get("nbgrader", {})
                if meta.get("grade_id"):
                    released[meta["grade_id"]] = meta.get("checksum")
        cells = []
        for c in src.cells:
            meta = c.metadata.get("nbgrader", {})
            gid = meta.get("grade_id")
            if c.cell_type != "code":
                kind = "markdown"
            elif meta.get("grade"):
                kind = "test"
            elif meta.get("solution"):
                kind = "answer"
            else:
                kind = "setup"
            cells.append(SourceCell(kind, gid, c.source, float(meta.get("points", 0) or 0), released.get(gid)))
        return cls(assignment, Path(source_nb).name, tuple(cells))

    @property
    def tasks(self) -> list[SourceCell]:
        return [c for c in self.cells if c.kind == "test"]


@dataclass
class TaskResult:
    """One task's outcome: a row of ``grades.csv`` (``student`` and ``assignment`` filled in by the batch)."""

    task: str
    score: float
    max_score: float
    reason: str
    student: str = ""
    assignment: str = ""


@dataclass
class Graded:
    """The outcome for one submission: a score and reason per task, notes, and a feedback notebook."""

    scores: list[TaskResult]
    notes: list[str] = field(default_factory=list)
    notebook: nbformat.NotebookNode | None = None
    seconds: float = 0.0


def zero(source: AssignmentSource, reason: str) -> Graded:
    return Graded([TaskResult(t.grade_id, 0.0, t.points, reason) for t in source.tasks], [reason])


# ----------------------------------------------------------------------------- rebuilding

def rebuild(source: AssignmentSource, submitted: nbformat.NotebookNode) -> tuple[list[tuple[SourceCell, str]], list[str]]:
    """The cells to run, in the source's order, and notes on what the student changed.

    Returns ``[(source cell, code to run)]``: the source's own code, except for answer cells
    (the student's code for that grade id) and cells the student added, which follow the cell
    they were added after: code (kind ``"added"``, run) and Markdown (kind ``"markdown"``, shown
    in the feedback, never run).
    """
    from nbgrader.utils import compute_checksum

    notes: list[str] = []
    by_id: dict[str, list] = {}
    added_after: dict[str | None, list[str]] = {}
    last = None
    known = {c.grade_id for c in source.cells if c.grade_id}
    for cell in submitted.get("cells", []):
        meta = (cell.get("metadata") or {}).get("nbgrader") or {}
        gid = meta.get("grade_id") if isinstance(meta, dict) else None
        if gid in known:
            by_id.setdefault(gid, []).append(cell)
            last = gid
        elif cell.get("cell_type") in ("code", "markdown") and str(cell.get("source", "")).strip():
            added_after.setdefault(last, []).append((cell["cell_type"], str(cell.get("source", ""))))
    plan: list[tuple[SourceCell, str]] = []

    def add_extras(after):
        for cell_type, text in added_after.get(after, []):  # a Markdown cell is only shown, never run
            plan.append((SourceCell("added" if cell_type == "code" else "markdown", None, text), text))

    add_extras(None)
    for sc in source.cells:
        got = by_id.get(sc.grade_id, []) if sc.grade_id else []
        if sc.grade_id and len(got) > 1:
            notes.append(f"cell {sc.grade_id} appears {len(got)} times; the first copy was used")
        if sc.kind == "answer":
            if not got:
                notes.append(f"answer cell {sc.grade_id} is missing; graded as unanswered")
                code = "raise NotImplementedError()"
            elif got[0].get("cell_type") != "code":
                notes.append(f"answer cell {sc.grade_id} is no longer a code cell; graded as unanswered")
                code = "raise NotImplementedError()"
            else:
                code = str(got[0].get("source", ""))
            plan.append((sc, code))
        else:
            if sc.grade_id and sc.kind != "markdown":
                if not got:
                    notes.append(f"locked cell {sc.grade_id} was deleted; restored from the source")
                elif sc.checksum and _checksum(compute_checksum, got[0]) != sc.checksum:
                    notes.append(f"locked cell {sc.grade_id} was changed; restored from the source")
            plan.append((sc, sc.source))
        if sc.grade_id:
            add_extras(sc.grade_id)
    return plan, notes


def _checksum(compute, cell) -> str | None:
    try:
        return compute(nbformat.from_dict(cell))
    except Exception:  # noqa: BLE001 - broken metadata: it differs
        return None


# ----------------------------------------------------------------------------- running

def _free_names(code: str) -> set[str]:
    tree = ast.parse(code)
    loaded, stored = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            (loaded if isinstance(node.ctx, ast.Load) else stored).add(node.id)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            stored.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef)):
            stored.add(node.name)
        elif isinstance(node, ast.arg):
            stored.add(node.arg)
    return loaded - stored - set(dir(builtins))


def _split_test(code: str) -> tuple[str, str]:
    head, mark, tail = code.partition(HIDDEN_MARK)
    return head, tail.replace("### END HIDDEN TESTS", "") if mark else ""


def _reason(exc: BaseException) -> str:
    if isinstance(exc, StudentError):
        if exc.type_name == "NotImplementedError":
            return "not answered yet (the answer cell still raises NotImplementedError)"
        return f"{exc.type_name}: {exc.message}" if exc.message else exc.type_name
    if isinstance(exc, (CheckFailed, AssertionError, SandboxGone)):
        return str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {exc}"


class _Run:
    """The state of one submission's run: its sandbox, what ran, and the time left."""

    def __init__(self, limits: Limits, worker: int, hide: list[str], submission: Submission):
        self.limits, self.worker, self.hide, self.submission = limits, worker, hide, submission
        self.deadline = time.monotonic() + limits.notebook_seconds
        self.history: list[tuple[str, str]] = []  # (label, code) of cells that ran without killing it
        self.restarts = 0
        self.session: Session | None = None

    def sandbox(self) -> Session:
        if self.session is None:
            if self.restarts > SANDBOX_RESTARTS:
                raise SandboxGone(f"not graded: the sandbox broke its limits {SANDBOX_RESTARTS + 1} times")
            if time.monotonic() >= self.deadline:
                raise SandboxGone(f"time limit: the notebook used up its {self.limits.notebook_seconds:g} s")
            sb = Sandbox(self.limits, hide=self.hide, worker=self.worker)
            sb.start()
            sb.deadline = self.deadline
            self.session = Session(sb, self.submission)
            for label, code in self.history:  # replay what ran before the last sandbox died
                sb.request({"op": "exec", "code": code, "label": label})
        return self.session

    def lost(self) -> None:
        if self.session is not None:
            self.session.sandbox.close()
            self.session = None
            self.restarts += 1

    def close(self) -> None:
        if self.session is not None:
            self.session.sandbox.close()
            self.session = None

    def execute(self, label: str, code: str) -> dict:
        """Run a cell in the sandbox; the reply (``ok``, ``output``, ``error``)."""
        try:
            reply = self.sandbox().sandbox.request({"op": "exec", "code": code, "label": label})
        except SandboxGone as exc:
            self.lost()
            return {"ok": False, "output": "", "error": {"type": "LimitExceeded", "message": str(exc)},
                    "gone": True}
        self.history.append((label, code))
        return reply

    def hidden(self, task: str, code: str) -> None:
        """Run a test cell's hidden part here, with the student's names as remote handles."""
        session = self.sandbox()
        namespace = {"__name__": f"hidden_{task}", "__builtins__": builtins}
        for name in _free_names(code):
            namespace[name] = session.name(name)
        try:
            exec(compile(code, f"<hidden tests of {task}>", "exec"), namespace)  # noqa: S102 - trusted code
        except SandboxGone:
            self.lost()
            raise


def read_submission(raw: bytes) -> tuple[dict | None, str]:
    """Step 1: the submitted file as a notebook, or ``(None, why not)``."""
    if len(raw) > NOTEBOOK_BYTES:
        return None, (f"the notebook is {len(raw) / 2**20:.1f} MiB, over the "
                      f"{NOTEBOOK_BYTES / 2**20:.0f} MiB limit")
    try:
        submitted = nbformat.reads(raw.decode("utf-8"), as_version=4)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is a reason
        return None, f"not a valid Jupyter notebook: {type(exc).__name__}: {str(exc)[:300]}"
    if not isinstance(submitted, dict) or not isinstance(submitted.get("cells"), list):
        return None, "not a valid Jupyter notebook: it has no list of cells"
    return submitted, ""


def look_for_tampering(plan: list[tuple[SourceCell, str]]) -> tuple[Submission, str]:
    """Step 3: the student's code, parsed, and the reason to grade nothing if it reaches for the guard."""
    submission = Submission([code for sc, code in plan if sc.kind in ("answer", "added")],
                            [code for sc, code in plan if sc.kind == "setup"])
    tampering = tamper_findings(submission)
    if not tampering:
        return submission, ""
    return submission, ("your code " + "; ".join(tampering) + " - the grader does not allow tools that can "
                        "switch off its checks (see the exercise's rules), so no task was graded")


def run_plan(plan: list[tuple[SourceCell, str]], run: _Run, notes: list[str]):
    """Step 4: run every cell in the sandbox and every task's checks; ``(results, feedback notebook)``."""
    feedback = nbformat.v4.new_notebook(metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                                 "language": "python"}})
    results: list[TaskResult] = []
    stopped: list[str] = []  # cells that ended a sandbox: they are not replayed
    for i, (sc, code) in enumerate(plan):
        if sc.kind == "markdown":
            feedback.cells.append(nbformat.v4.new_markdown_cell(code))
            continue
        label = sc.grade_id or f"added-{i}"
        if sc.kind != "test":
            reply = run.execute(label, code)
            if reply.get("gone"):
                stopped.append(f"cell {label} stopped the sandbox ({reply['error']['message']}), so "
                               f"nothing it defined exists")
                notes.append(stopped[-1])
            feedback.cells.append(_code_cell(code, reply, sc))
            continue
        visible, hidden = _split_test(code)
        reply = run.execute(f"test {sc.grade_id}", visible)
        reason = _task_reason(run, sc, reply, hidden)
        if reason and stopped:
            reason += f" [earlier, {stopped[-1]}]"
        results.append(TaskResult(sc.grade_id, 0.0 if reason else sc.points, sc.points, reason or "passed"))
        feedback.cells.append(_test_cell(visible, reply, results[-1], sc))
    return results, feedback


def _task_reason(run: _Run, sc: SourceCell, reply: dict, hidden: str) -> str | None:
    """Why a task lost its points (its visible part failed, or a hidden check did), or None."""
    if not reply.get("ok"):
        if reply.get("gone"):
            return reply["error"]["message"]
        return _reason(StudentError(reply["error"].get("type", "Error"), reply["error"].get("message", "")))
    if not hidden.strip():
        return None
    try:
        run.hidden(sc.grade_id, hidden)
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # noqa: BLE001 - a failed check or a limit: a reason
        return _reason(exc)
    return None


def grade_notebook(source: AssignmentSource, raw: bytes, *, limits: Limits | None = None, worker: int = 0,
                   hide: list[str] | None = None) -> Graded:
    """Grade one submission (the notebook file's bytes) against ``source``, in the steps above."""
    start = time.monotonic()
    limits = limits or Limits()
    submitted, problem = read_submission(raw)
    if submitted is None:
        return zero(source, problem)
    plan, notes = rebuild(source, submitted)
    kernel = ((submitted.get("metadata") or {}).get("kernelspec") or {}).get("name")
    if kernel not in (None, "python3"):
        notes.append(f"the notebook asked for kernel {kernel!r}; it was graded with the course's Python 3")
    submission, refused = look_for_tampering(plan)
    if refused:
        graded = zero(source, refused)
        graded.notes = notes + graded.notes
        graded.seconds = time.monotonic() - start
        return graded
    run = _Run(limits, worker, hide or [], submission)
    try:
        results, feedback = run_plan(plan, run, notes)
    finally:
        run.close()
    return Graded(results, notes, feedback, time.monotonic() - start)


def _code_cell(code: str, reply: dict, sc: SourceCell):
    cell = nbformat.v4.new_code_cell(code)
    cell.metadata["llmcourse"] = {"kind": sc.kind, "grade_id": sc.grade_id}
    if reply.get("output"):
        cell.outputs.append(nbformat.v4.new_output("stream", name="stdout", text=reply["output"]))
    if not reply.get("ok"):
        err = reply.get("error") or {}
        cell.outputs.append(nbformat.v4.new_output(
            "error", ename=str(err.get("type", "Error")), evalue=str(err.get("message", "")),
            traceback=[line for line in str(err.get("traceback", "")).splitlines()] +
                      [f"{err.get('type', 'Error')}: {err.get('message', '')}"]))
    return cell


def _test_cell(visible: str, reply: dict, score: TaskResult, sc: SourceCell):
    cell = nbformat.v4.new_code_cell(visible.rstrip() + "\n# (the hidden tests of this cell ran in the grader)")
    cell.metadata["llmcourse"] = {"kind": "test", "grade_id": sc.grade_id}
    if reply.get("output"):
        cell.outputs.append(nbformat.v4.new_output("stream", name="stdout", text=reply["output"]))
    mark = "passed" if score.score >= score.max_score else "FAILED"
    text = f"{mark}: {score.score:g} / {score.max_score:g} points"
    if score.reason != "passed":
        text += f"\n{score.reason}"
    cell.outputs.append(nbformat.v4.new_output("stream", name="stderr" if mark == "FAILED" else "stdout",
                                               text=text + "\n"))
    return cell
