"""Limits on a student's sandbox, and what this machine can enforce.

Everything here works on a plain Linux machine, without Docker:

* **time** - the grader waits at most ``cell_seconds`` for each cell or check call and
  ``notebook_seconds`` for the whole notebook, then kills the sandbox's process group;
  ``RLIMIT_CPU`` backs this up;
* **memory** - ``RLIMIT_AS`` (address space), so a huge allocation raises ``MemoryError``;
* **output** - printed output is cut at a few thousand characters per cell, replies larger
  than ``reply_bytes`` end the sandbox, and ``RLIMIT_FSIZE`` caps any file written;
* **processes** - ``RLIMIT_NPROC`` for the sandbox's own user, so a fork bomb stops;
* **no network, no view of other processes or files** - Linux namespaces via util-linux's
  ``unshare``: a network namespace with only a down loopback, a PID namespace (the sandbox
  cannot see or signal the grader), and a mount namespace in which ``/tmp``, the gradebook,
  the source notebooks and the submissions are covered by empty ``tmpfs`` mounts;
* **another user** - when the grader runs as root, the sandbox drops to an unprivileged uid
  of its own (one per worker), so it cannot write the grader's files even where it can see them.

:func:`isolation` finds out once which of these the kernel allows; the CLI prints one clear
line for anything it cannot enforce.
"""

from __future__ import annotations

import functools
import os
import resource
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass

SANDBOX_UID_BASE = 61000  # uid of worker i's sandbox when the grader is root
NOTEBOOK_BYTES = 20 * 2**20  # a larger submitted file is not read
OUTPUT_CHARACTERS = 20_000  # printed output kept per cell or call, the rest is cut
SANDBOX_RESTARTS = 3  # a submission whose sandbox breaks its limits more often is not graded further


@dataclass(frozen=True)
class Limits:
    """What one submission may use. Times in seconds, sizes in MiB unless named bytes."""

    cell_seconds: float = 60.0
    notebook_seconds: float = 300.0
    memory_mb: int = 4096
    reply_bytes: int = 64 * 2**20
    file_mb: int = 64
    processes: int = 256

    def __post_init__(self):
        for name, value in asdict(self).items():
            if not value > 0:
                raise ValueError(f"limit {name} must be positive, got {value!r}")


@dataclass(frozen=True)
class Isolation:
    """What this machine lets the grader enforce (see :func:`isolation`)."""

    namespaces: bool  # network + PID + mount namespaces through `unshare`
    user_namespace: bool  # needed for the namespaces when not root
    drop_user: bool  # root: the sandbox runs as an unprivileged uid
    reason: str = ""

    def warnings(self, limits: Limits) -> list[str]:
        out = []
        if not self.namespaces:
            out.append(f"no Linux namespaces here ({self.reason}): student code can use the network, "
                       f"see other processes and read files the grader's user can read, the held-out "
                       f"data of training tasks included")
        if not self.drop_user:
            out.append("student code runs as the grader's own user"
                       + (" (inside a user namespace, so it sees only its own tmpfs)" if self.namespaces else
                          ", so it could write any file the grader can (run as root, or where user "
                          "namespaces are allowed, to prevent this)"))
        return out


@functools.lru_cache(maxsize=1)
def isolation() -> Isolation:
    """Probe once whether ``unshare`` can make the namespaces (as root or in a user namespace)."""
    exe = shutil.which("unshare")
    root = os.geteuid() == 0
    if exe is None or not sys.platform.startswith("linux"):
        return Isolation(False, False, root, "util-linux `unshare` not found")
    for user_ns in ([False, True] if root else [True]):
        cmd = [exe, *_unshare_flags(user_ns), "true"]
        try:
            ok = subprocess.run(cmd, capture_output=True, timeout=20).returncode == 0
        except (OSError, subprocess.SubprocessError):
            ok = False
        if ok:
            return Isolation(True, user_ns, root and not user_ns)
    return Isolation(False, False, root and _open_to_others(), "the kernel refused `unshare --net --pid --mount`")


def _open_to_others() -> bool:
    """Can another user run this Python and import the course? (Needed to drop root without mounts.)"""
    from autograder.course import REPO

    for path in {sys.base_prefix, sys.prefix, str(REPO)}:
        parts = os.path.realpath(path).split(os.sep)[1:]
        for i in range(1, len(parts) + 1):
            if not os.stat(os.sep + os.path.join(*parts[:i])).st_mode & 0o005 == 0o005:
                return False
    return True


def _unshare_flags(user_ns: bool) -> list[str]:
    flags = ["--net", "--pid", "--fork", "--kill-child", "--mount", "--propagation", "private", "--mount-proc"]
    return (["--user", "--map-root-user"] + flags) if user_ns else flags


def sandbox_command(iso: Isolation) -> list[str]:
    """The command that starts a sandbox (``python -m autograder.sandbox`` inside namespaces)."""
    python = [sys.executable, "-I", "-m", "autograder.sandbox"]
    if not iso.namespaces:
        return python
    return [shutil.which("unshare"), *_unshare_flags(iso.user_namespace), *python]


def set_rlimits(limits: Limits, *, limit_processes: bool) -> None:
    """Apply the resource limits to the calling process (used between fork and exec)."""
    def cap(which, value):
        soft, hard = resource.getrlimit(which)
        value = value if hard == resource.RLIM_INFINITY else min(value, hard)
        resource.setrlimit(which, (value, value))

    cap(resource.RLIMIT_AS, limits.memory_mb * 2**20)
    cap(resource.RLIMIT_CPU, int(limits.notebook_seconds * 2) + 30)
    cap(resource.RLIMIT_FSIZE, limits.file_mb * 2**20)
    cap(resource.RLIMIT_CORE, 0)
    if limit_processes:
        cap(resource.RLIMIT_NPROC, limits.processes)
    os.setsid()
