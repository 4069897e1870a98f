"""A real Dask cluster for the tests: ``dask scheduler`` and ``dask worker`` processes on 127.0.0.1.

Each is a separate process started from the command line, as an instructor would start them
(``--nthreads 1``, no nanny, so that the process the test kills is the worker itself).
:meth:`DaskProcesses.close` kills every process it started, and any sandbox still running
under a worker, whatever happened in the test.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

DASK = str(Path(sys.executable).parent / "dask")


class DaskProcesses:
    def __init__(self, root: Path, env: dict | None = None):
        self.root, self.env = Path(root), {**os.environ, **(env or {})}
        self.root.mkdir(parents=True, exist_ok=True)
        self.scheduler: subprocess.Popen | None = None
        self.workers: list[subprocess.Popen] = []
        self.address = ""
        self._started = 0

    def _start(self, *args: str, env: dict | None = None) -> subprocess.Popen:
        self._started += 1
        log = open(self.root / f"process-{self._started}.log", "wb")  # noqa: SIM115 - the child owns it
        return subprocess.Popen([DASK, *args], stdout=log, stderr=subprocess.STDOUT, env={**self.env, **(env or {})},
                                cwd=self.root, start_new_session=True)

    def start_scheduler(self, port: int = 0) -> str:
        """Start ``dask scheduler`` on 127.0.0.1 (``port`` 0: any free one) and return its address."""
        info = self.root / f"scheduler-{self._started + 1}.json"
        self.scheduler = self._start("scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard",
                                     "--scheduler-file", str(info))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if info.is_file():
                try:
                    self.address = json.loads(info.read_text())["address"]
                    return self.address
                except (ValueError, KeyError):
                    pass
            if self.scheduler.poll() is not None:
                break
            time.sleep(0.1)
        raise RuntimeError(f"dask scheduler did not start; see {self.root}")

    def start_worker(self, env: dict | None = None) -> subprocess.Popen:
        worker = self._start("worker", self.address, "--nthreads", "1", "--no-nanny", "--no-dashboard",
                             "--local-directory", str(self.root / "workers"), env=env)
        self.workers.append(worker)
        return worker

    def live_workers(self) -> list[subprocess.Popen]:
        return [w for w in self.workers if w.poll() is None]

    def wait_for_workers(self, n: int, timeout: float = 120.0) -> None:
        from distributed import Client

        with Client(self.address, timeout=30) as client:
            client.wait_for_workers(n, timeout=timeout)

    @staticmethod
    def sandboxes(proc: subprocess.Popen) -> list[psutil.Process]:
        """The sandbox processes running under a worker process."""
        try:
            children = psutil.Process(proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []
        out = []
        for child in children:
            try:
                if "autograder.sandbox" in " ".join(child.cmdline()):
                    out.append(child)
            except psutil.Error:
                pass
        return out

    def kill_scheduler(self) -> None:
        if self.scheduler is not None and self.scheduler.poll() is None:
            self.scheduler.kill()
            self.scheduler.wait()

    def close(self) -> None:
        leftovers = [s for w in self.workers for s in self.sandboxes(w)]
        for proc in [*self.workers, self.scheduler]:
            if proc is not None and proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)  # its own session: the worker and what it started
                except ProcessLookupError:
                    pass
                proc.wait()
        for sandbox in leftovers:
            try:
                sandbox.kill()
            except psutil.Error:
                pass


@contextlib.contextmanager
def running_cluster(root: Path, workers: int = 2, env: dict | None = None):
    """A scheduler and ``workers`` one-thread workers, all killed on the way out."""
    procs = DaskProcesses(root, env)
    try:
        procs.start_scheduler()
        for _ in range(workers):
            procs.start_worker()
        procs.wait_for_workers(workers)
        yield procs
    finally:
        procs.close()
