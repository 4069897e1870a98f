"""The student's side of grading: a separate, limited process that runs the notebook's code.

Started by :class:`autograder.remote.Sandbox` as ``python -m autograder.sandbox CONFIG``.
Before any student code runs it

* hides what the student must not see (a fresh ``tmpfs`` over ``/tmp``, the gradebook, the
  source notebooks and the other submissions) when it is in its own mount namespace,
* gives up root for an unprivileged user of its own when it has root,
* moves into an empty working directory.

Then it answers requests, one at a time, read from standard input; replies go to the file
descriptor the grader names. A request either runs a cell (``exec``), calls something the student defined
(``call``) or runs a check's probe beside it (``probe``). Replies carry plain data only
(:mod:`autograder.wire`); anything else stays here and is named by a handle.

Nothing here is trusted. The student's code can change every object in this process,
including this module, so the grader treats each reply as the student's answer and judges
it elsewhere.
"""

from __future__ import annotations

import builtins
import ctypes
import ctypes.util
import io
import json
import linecache
import os
import sys
import traceback

from autograder.limits import OUTPUT_CHARACTERS

REPLY_FD = 3


class _CappedText(io.TextIOBase):
    """A text stream that keeps only the first ``cap`` characters written to it."""

    def __init__(self, cap: int):
        self.cap, self.parts, self.size, self.dropped = cap, [], 0, 0

    def write(self, text) -> int:
        text = str(text)
        room = self.cap - self.size
        if room > 0:
            self.parts.append(text[:room])
            self.size += min(room, len(text))
        self.dropped += max(0, len(text) - max(room, 0))
        return len(text)

    def getvalue(self) -> str:
        out = "".join(self.parts)
        return out + (f"\n... ({self.dropped} more characters of output cut)" if self.dropped else "")


# ----------------------------------------------------------------------------- isolation

MS_NOSUID, MS_NODEV, MS_BIND, MS_REC, MS_PRIVATE = 2, 4, 4096, 16384, 1 << 18


def _mount_tmpfs(libc, target: str, size: str, mode: str = "0755") -> None:
    opts = f"size={size},mode={mode}".encode()
    if libc.mount(b"tmpfs", target.encode(), b"tmpfs", MS_NOSUID | MS_NODEV, opts) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount tmpfs on {target}: {os.strerror(err)}")


def _mount(libc, source, target: str, fstype, flags: int, what: str) -> None:
    if libc.mount(source, target.encode(), fstype, flags, None) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what} {target}: {os.strerror(err)}")


def _closed_ancestor(path: str) -> str | None:
    """The highest directory above ``path`` that other users cannot enter (``/root``, say)."""
    parts = os.path.abspath(path).split(os.sep)[1:]
    for i in range(1, len(parts)):
        d = os.sep + os.path.join(*parts[:i])
        if not os.stat(d).st_mode & 0o001:
            return d
    return None


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def isolate(config: dict) -> None:
    """Hide paths, take a fresh working directory and drop root, as ``config`` asks.

    With mounts: empty tmpfs mounts cover ``/tmp``, ``/var/tmp``, ``/dev/shm`` and (when the
    sandbox gives up root) any closed directory above Python (``/root``); the paths the sandbox
    needs (``keep``: Python, the course) are bind-mounted back from file descriptors opened
    before, wherever they were; then the ``hide`` paths (gradebook, sources, submissions) are
    covered, even inside what was kept, and each ``masks`` pair ``[real file, replacement]``
    puts the replacement over the real file (the held-out data, :mod:`autograder.heldout`).
    """
    work = config.get("workdir")
    uid = config.get("uid")
    if config.get("mounts"):
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        if libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None) != 0:
            raise OSError(ctypes.get_errno(), "could not make mounts private")
        keep = [os.path.realpath(p) for p in config.get("keep", [])]
        handles = {p: os.open(p, os.O_PATH | os.O_DIRECTORY) for p in keep if os.path.isdir(p)}
        masks = [(target, os.open(source, os.O_PATH)) for target, source in config.get("masks", [])
                 if os.path.isfile(target)]
        covered = [d for d in ("/tmp", "/var/tmp", "/dev/shm") if os.path.isdir(d)]
        if uid is not None:  # a closed parent not already replaced by a fresh tmpfs
            covered += sorted({c for c in map(_closed_ancestor, keep)
                               if c and not any(_under(c, d) for d in covered)})
        for d in covered:
            _mount_tmpfs(libc, d, config.get("tmp_size", "256m") if d == "/tmp" else "64m", "1777")
        for path, fd in handles.items():
            if any(_under(path, d) for d in covered):
                os.makedirs(path, exist_ok=True)
                _mount(libc, f"/proc/self/fd/{fd}".encode(), path, None, MS_BIND | MS_REC, "bind")
            os.close(fd)
        for path in config.get("hide", []):
            if os.path.isdir(path):
                _mount_tmpfs(libc, path, "1m")
        for target, fd in masks:
            _mount(libc, f"/proc/self/fd/{fd}".encode(), target, None, MS_BIND, "bind")
            os.close(fd)
        work = "/tmp/work"
        os.makedirs(work, exist_ok=True)
    if uid is not None:
        os.chown(work, uid, uid)
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
    os.chdir(work)
    os.environ.update({"HOME": work, "TMPDIR": work, "MPLCONFIGDIR": work, "MPLBACKEND": "Agg",
                       "PYTHONHASHSEED": "0"})
    os.umask(0o077)


# ----------------------------------------------------------------------------- requests

class StudentNamespace:
    """The student's namespace, the objects handed out by handle, and the requests that use them."""

    def __init__(self):
        self.namespace = {"__name__": "__main__", "__builtins__": builtins}
        self.handles: dict[int, object] = {}
        self.cells = 0
        self.torch_seeded = False

    # -- helpers
    def keep(self, obj) -> int:
        self.handles[len(self.handles) + 1] = obj
        return len(self.handles)

    def resolve_handle(self, hid: int, _type: str):
        if hid not in self.handles:
            raise KeyError(f"no object with handle {hid}")
        return self.handles[hid]

    def resolve_name(self, name: str):
        if name not in self.namespace:
            raise NameError(f"name '{name}' is not defined")
        return self.namespace[name]

    def decode(self, data):
        from autograder import wire

        return wire.decode(data, handle=self.resolve_handle, name=self.resolve_name)

    def encode(self, value):
        from autograder import wire

        return wire.encode(value, handle=self.keep)

    # -- operations
    def op_exec(self, req: dict):
        source = str(req["code"])
        self.cells += 1
        filename = f"<cell {req.get('label', self.cells)}>"
        source = _without_magics(source)
        linecache.cache[filename] = (len(source), None, source.splitlines(keepends=True), filename)
        exec(compile(source, filename, "exec"), self.namespace)  # noqa: S102 - this is the sandbox
        return None

    def op_call(self, req: dict):
        from autograder.guard import call_guarded

        target = self.decode(req["target"])
        args = self.decode(req.get("args", []))
        kwargs = self.decode(req.get("kwargs", {"__dict__": {}}))
        guard = req.get("guard")
        if not callable(target):
            raise TypeError(f"expected a function, got {type(target).__name__}")
        if guard:
            return call_guarded(target, *args, task=guard["task"], modules=guard["modules"],
                                callables=guard["callables"], **kwargs)
        return target(*args, **kwargs)

    def op_probe(self, req: dict):
        import importlib

        from autograder.guard import run_probe

        module = str(req["module"])
        if not module.startswith("autograder.checks."):
            raise ValueError("probes live in autograder.checks")
        probe = getattr(importlib.import_module(module), str(req["name"]))
        args = self.decode(req.get("args", []))
        kwargs = self.decode(req.get("kwargs", {"__dict__": {}}))
        guard = req["guard"]
        return run_probe(probe, *args, task=guard["task"], modules=guard["modules"],
                         callables=guard["callables"], **kwargs)

    def handle(self, req: dict) -> dict:
        from autograder.guard import ForbiddenCall

        op = req.get("op")
        out = _CappedText(OUTPUT_CHARACTERS)
        saved = sys.stdout, sys.stderr
        sys.stdout = sys.stderr = out
        try:
            value = {"exec": self.op_exec, "call": self.op_call, "probe": self.op_probe}[op](req)
            reply = {"ok": True, "value": self.encode(value)}
        except BaseException as exc:  # noqa: BLE001 - SystemExit and KeyboardInterrupt too
            reply = {"ok": False, "error": _describe(exc), "forbidden": isinstance(exc, ForbiddenCall)}
        finally:
            sys.stdout, sys.stderr = saved
        reply["output"] = out.getvalue()
        return reply


def _without_magics(source: str) -> str:
    """IPython's ``%magic`` and ``!shell`` lines have no meaning here; they become no-ops."""
    lines = source.splitlines()
    if not any(line.lstrip().startswith(("%", "!")) for line in lines):
        return source
    if lines and lines[0].startswith("%%"):
        return "pass  # a cell magic, skipped by the grader\n"
    return "\n".join((line[: len(line) - len(line.lstrip())] + "pass  # magic skipped by the grader")
                     if line.lstrip().startswith(("%", "!")) else line for line in lines) + "\n"


def _describe(exc: BaseException) -> dict:
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename.startswith("<cell")]
    where = "".join(traceback.format_list(frames[-5:]))
    try:
        message = str(exc)
    except Exception:  # noqa: BLE001 - a hostile __str__
        message = "(the exception's message could not be shown)"
    return {"type": type(exc).__name__[:100], "message": message[:2000], "traceback": where[-4000:]}


def main(argv: list[str]) -> int:
    from autograder import wire

    config = json.loads(argv[1]) if len(argv) > 1 else {}
    reply_fd = int(config.get("reply_fd", REPLY_FD))
    try:
        isolate(config)
    except Exception as exc:  # noqa: BLE001 - reported to the grader, which stops
        wire.send(reply_fd, {"ok": False, "error": _describe(exc), "fatal": True})
        return 1
    import random

    import numpy

    random.seed(0)  # the same submission gives the same answers every time it is graded
    numpy.random.seed(0)
    os.set_inheritable(reply_fd, False)
    server = StudentNamespace()
    wire.send(reply_fd, {"ok": True, "ready": True, "pid": os.getpid(), "uid": os.getuid()})
    while True:
        try:
            (length,) = wire.HEADER.unpack(wire.read_exactly(0, wire.HEADER.size))
            req = wire.parse(wire.read_exactly(0, length))
        except EOFError:
            return 0
        reply = server.handle(req)
        if "torch" in sys.modules and not server.torch_seeded:
            sys.modules["torch"].manual_seed(0)
            server.torch_seeded = True
        try:
            wire.send(reply_fd, reply)
        except (TypeError, ValueError) as exc:
            wire.send(reply_fd, {"ok": False, "error": _describe(exc), "output": ""})


if __name__ == "__main__":
    sys.exit(main(sys.argv))
