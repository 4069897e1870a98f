"""The trusted side of a sandbox: start it, talk to it, and stand in for the student's objects.

:class:`Sandbox` starts ``python -m autograder.sandbox`` under the :mod:`autograder.limits`,
sends it requests and waits for each reply no longer than the time left, reading no more
than the reply cap. A sandbox that is too slow, too big, dies or answers nonsense is killed,
with its whole process group, and :class:`SandboxGone` says why.

:class:`Remote` stands for a function or class the student defined (or an object their code
returned). The hidden checks run in the trusted process and receive ``Remote`` objects where
they would have received the student's functions; :func:`autograder.guard.call_student` and
:func:`autograder.guard.run_probe` recognise them and send the call to the sandbox, with the
same guard, and get plain data back.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import tempfile
import time
from dataclasses import dataclass, field

from autograder import wire
from autograder.compare import CheckFailed
from autograder.limits import (
    SANDBOX_UID_BASE,
    Isolation,
    Limits,
    isolation,
    sandbox_command,
    set_rlimits,
)
from autograder.static import Submission


class SandboxGone(Exception):
    """The sandbox broke a limit or died; its message is the reason for the student."""


class StudentError(Exception):
    """An exception raised by the student's code in the sandbox, re-raised here by name."""

    def __init__(self, type_name: str, message: str, traceback: str = "", forbidden: bool = False):
        super().__init__(f"{type_name}: {message}" if message else type_name)
        self.type_name, self.message, self.traceback, self.forbidden = type_name, message, traceback, forbidden


@dataclass
class Sandbox:
    """One running sandbox process."""

    limits: Limits
    hide: list[str] = field(default_factory=list)
    worker: int = 0
    keep: list[str] = field(default_factory=list)  # more paths the sandbox must see (tests)
    masks: dict[str, bytes] | None = None  # {path: what the sandbox reads there}; None: the held-out data
    iso: Isolation | None = None
    proc: subprocess.Popen | None = field(default=None, init=False)
    deadline: float = field(default=0.0, init=False)
    uid: int | None = field(default=None, init=False)

    def start(self) -> None:
        self.iso = self.iso or isolation()
        config = {"hide": self.hide if self.iso.namespaces else [], "mounts": self.iso.namespaces}
        self.uid = SANDBOX_UID_BASE + self.worker if self.iso.drop_user else None
        if self.uid is not None:
            config["uid"] = self.uid
        if self.iso.namespaces:
            import sys

            from autograder.course import REPO

            config["keep"] = sorted({os.path.realpath(p) for p in (sys.base_prefix, sys.prefix, str(REPO),
                                                                   *self.keep)})
        self._workdir = self._maskdir = None
        if not self.iso.namespaces:
            self._workdir = tempfile.mkdtemp(prefix="llmcourse-sandbox-")
            config["workdir"] = self._workdir
        else:
            config["masks"] = self._write_masks()
        requests_r, self._requests = os.pipe()
        self._replies, replies_w = os.pipe()
        self._log = tempfile.TemporaryFile()
        config["reply_fd"] = replies_w
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8",
               "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}
        limit_processes = self.uid is not None
        self.proc = subprocess.Popen(
            [*sandbox_command(self.iso), json.dumps(config)],
            stdin=requests_r, stdout=self._log, stderr=self._log, pass_fds=(replies_w,),
            env=env, close_fds=True, cwd="/",
            preexec_fn=lambda: set_rlimits(self.limits, limit_processes=limit_processes),
        )
        os.close(requests_r)
        os.close(replies_w)
        self.deadline = time.monotonic() + self.limits.notebook_seconds
        try:
            hello = self._receive(min(60.0, self.limits.notebook_seconds))
        except (SandboxGone, TimeoutError) as exc:
            raise SandboxGone(f"the sandbox could not start ({exc}): {self.log_tail()}") from None
        if not hello.get("ok"):
            err = hello.get("error", {})
            self.kill()
            raise SandboxGone(f"the sandbox could not start: {err.get('type')}: {err.get('message')}")

    def _write_masks(self) -> list[list[str]]:
        """Write the files the sandbox sees in place of real ones; ``[[real path, replacement]]``."""
        from autograder.heldout import sandbox_masks

        masks = sandbox_masks() if self.masks is None else self.masks
        if not masks:
            return []
        self._maskdir = tempfile.mkdtemp(prefix="llmcourse-masks-")
        pairs = []
        for i, (target, data) in enumerate(sorted(masks.items())):
            path = os.path.join(self._maskdir, f"{i}-{os.path.basename(target)}")
            with open(path, "wb") as f:
                f.write(data)
            os.chmod(path, 0o644)
            pairs.append([os.path.realpath(target), path])
        return pairs

    # ---------------------------------------------------------------- transport
    def request(self, message: dict, *, seconds: float | None = None) -> dict:
        """Send one request; the reply, or :class:`SandboxGone` if a limit was broken."""
        if self.proc is None or self.proc.poll() is not None:
            raise SandboxGone("the sandbox is not running")
        left = self.deadline - time.monotonic()
        if left <= 0:
            self.kill()
            raise SandboxGone(f"time limit: the notebook used up its {self.limits.notebook_seconds:g} s")
        budget = min(seconds or self.limits.cell_seconds, left)
        try:
            wire.send(self._requests, message)
        except (BrokenPipeError, OSError):
            raise SandboxGone(self._death("the sandbox stopped")) from None
        try:
            return self._receive(budget)
        except TimeoutError:
            self.kill()
            which = "per-cell" if budget < left else "per-notebook"
            limit = self.limits.cell_seconds if budget < left else self.limits.notebook_seconds
            raise SandboxGone(f"time limit: still running after {budget:.0f} s (the {which} limit is "
                              f"{limit:g} s) - look for an endless loop or too much work") from None

    def _receive(self, seconds: float) -> dict:
        end = time.monotonic() + seconds
        header = self._read(wire.HEADER.size, end)
        (length,) = wire.HEADER.unpack(header)
        if length > self.limits.reply_bytes:
            self.kill()
            raise SandboxGone(f"output limit: a reply of {length / 2**20:.1f} MiB is over the "
                              f"{self.limits.reply_bytes / 2**20:.0f} MiB cap")
        try:
            return wire.parse(self._read(length, end))
        except wire.WireError as exc:
            self.kill()
            raise SandboxGone(f"the sandbox sent an invalid reply ({exc})") from None

    def _read(self, n: int, end: float) -> bytes:
        chunks, got = [], 0
        while got < n:
            left = end - time.monotonic()
            if left <= 0:
                raise TimeoutError
            ready, _, _ = select.select([self._replies], [], [], left)
            if not ready:
                raise TimeoutError
            chunk = os.read(self._replies, min(n - got, 1 << 20))
            if not chunk:
                raise SandboxGone(self._death("the sandbox process ended"))
            chunks.append(chunk)
            got += len(chunk)
        return b"".join(chunks)

    def _death(self, what: str) -> str:
        try:
            code = self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            code = None
        self.kill()
        if code is not None and code < 0:
            import signal

            name = signal.Signals(-code).name
            hint = {"SIGKILL": " (often: the memory limit)", "SIGXCPU": " (the CPU-time limit)",
                    "SIGXFSZ": " (the file-size limit)", "SIGSEGV": " (a crash)"}.get(name, "")
            return f"{what}: killed by {name}{hint}"
        return f"{what} (exit code {code}) - did the code call sys.exit, os._exit or kill its own process?"

    def log_tail(self, n: int = 600) -> str:
        """The end of what the sandbox process printed outside any cell (start-up errors)."""
        try:
            self._log.seek(0)
            return self._log.read().decode("utf-8", "replace")[-n:].strip()
        except (OSError, ValueError, AttributeError):
            return ""

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, 9)
            except (ProcessLookupError, PermissionError):
                pass
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass

    def close(self) -> None:
        self.kill()
        for fd in (getattr(self, "_requests", None), getattr(self, "_replies", None)):
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self._requests = self._replies = None
        if getattr(self, "_log", None) is not None:
            self._log.close()
        import shutil

        for folder in (self._workdir, getattr(self, "_maskdir", None)):
            if folder:
                shutil.rmtree(folder, ignore_errors=True)


class Session:
    """A submission's sandbox plus what the trusted side knows about the submission's code."""

    def __init__(self, sandbox: Sandbox, submission: Submission):
        self.sandbox, self.submission = sandbox, submission

    def reply_value(self, reply: dict):
        if not reply.get("ok"):
            err = reply.get("error") or {}
            raise StudentError(str(err.get("type", "Error")), str(err.get("message", "")),
                               str(err.get("traceback", "")), bool(reply.get("forbidden")))
        try:
            return wire.decode(reply.get("value"), handle=self.handle, name=self.name)
        except wire.WireError as exc:
            raise StudentError("WireError", f"the value could not be read: {exc}") from None

    def handle(self, hid: int, type_name: str) -> Remote:
        return Remote(self, {"__h__": hid}, f"<{type_name} object>")

    def name(self, name: str) -> Remote:
        return Remote(self, {"__name__": name}, name)


def _encode_args(args, kwargs) -> tuple:
    def ref(v):
        if isinstance(v, Remote):
            return v._ref
        raise wire.Unencodable(f"a {type(v).__name__} cannot be sent to the student's code")

    return wire.encode(list(args), handle=ref), wire.encode(dict(kwargs), handle=ref)


class Remote:
    """A function, class or object that lives in the student's sandbox."""

    __llmcourse_remote__ = True

    def __init__(self, session: Session, ref: dict, label: str):
        self._session, self._ref, self._label = session, ref, label

    def __repr__(self) -> str:
        return f"<student's {self._label}>"

    @property
    def __name__(self) -> str:  # noqa: A003 - what messages call the function
        return self._label

    def _send(self, message: dict):
        return self._session.reply_value(self._session.sandbox.request(message))

    def _pack(self, args, kwargs):
        return _encode_args(args, kwargs)

    def __call__(self, *args, **kwargs):
        a, k = self._pack(args, kwargs)
        return self._send({"op": "call", "target": self._ref, "args": a, "kwargs": k})

    def _guard(self, task, modules, callables) -> dict:
        from autograder.forbidden import callable_name

        names = tuple(c if isinstance(c, str) else callable_name(c) for c in callables)
        return {"task": task, "modules": list(modules), "callables": list(names)}

    def _static(self, names: list[str], task: str, modules: tuple, callables: tuple) -> None:
        from autograder.forbidden import refusal

        guard = self._guard(task, modules, callables)
        findings = []
        for name in names:
            findings += self._session.submission.violations(name, tuple(guard["modules"]),
                                                           tuple(guard["callables"]))
        if findings:
            raise refusal(task, findings, tuple(guard["modules"]), tuple(guard["callables"]))

    def __llmcourse_remote_call__(self, args, kwargs, *, task, inputs, modules, callables):
        from autograder.guard import student_failure

        if "__name__" in self._ref:
            self._static([self._ref["__name__"]], task, modules, callables)
        a, k = self._pack(args, kwargs)
        try:
            return self._send({"op": "call", "target": self._ref, "args": a, "kwargs": k,
                               "guard": self._guard(task, modules, callables)})
        except StudentError as exc:
            raise _as_check_failure(exc, task, inputs, student_failure) from None

    def __llmcourse_remote_probe__(self, probe, args, kwargs, *, task, inputs, modules, callables):
        from autograder.guard import student_failure

        names = [a._ref["__name__"] for a in args if isinstance(a, Remote) and "__name__" in a._ref]
        self._static(names, task, modules, callables)
        a, k = self._pack(args, kwargs)
        try:
            return self._send({"op": "probe", "module": probe.__module__, "name": probe.__name__,
                               "args": a, "kwargs": k, "guard": self._guard(task, modules, callables)})
        except StudentError as exc:
            raise _as_check_failure(exc, task, inputs, student_failure) from None


def _as_check_failure(exc: StudentError, task: str, inputs, student_failure) -> CheckFailed:
    from autograder.guard import ForbiddenCall, _where

    if exc.forbidden:
        return ForbiddenCall(exc.message)
    if exc.type_name in ("CheckFailed", "ForbiddenCall"):
        return CheckFailed(exc.message)
    if exc.type_name == "NotImplementedError":
        return student_failure(task, NotImplementedError(exc.message), inputs)
    return CheckFailed(f"{task}: your function raised {exc.type_name}: {exc.message}{_where(inputs)}")
