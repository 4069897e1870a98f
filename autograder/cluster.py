"""Grading past one machine: the batch's jobs run by Dask distributed workers.

:func:`autograder.grading.grade_folder` with ``scheduler=`` sends each submission's job to a Dask
cluster instead of a local process pool. What makes the grader trustworthy does not move:

* the **instructor's machine** (the Dask client) keeps the submissions folder, the gradebook
  (its single writer, one transaction per submission, as results arrive), ``grades.csv``,
  the summary and the feedback pages; no worker needs any of them;
* **once per batch** the client ships a :class:`~autograder.bundle.CourseBundle` to every worker
  (``Client.scatter(..., broadcast=True)``): the instructor's notebook with its hidden tests, the
  digest of every course module the grading runs, and which course secret the hidden inputs
  come from. Each job names the bundle's digest, and the worker checks the bundle against
  the code it has loaded and the secret it has (:func:`autograder.bundle.verify`); a worker
  holding a stale course refuses rather than grades wrongly;
* **each job** carries one submission's bytes; on the worker it runs exactly as a local job
  does (:func:`autograder.jobs.grade_submission`: the student's code in its own sandbox process,
  a child of the worker, the hidden checks in the worker's process) and comes back as plain data.

Faults. A worker that dies mid-job: Dask runs the job again elsewhere; one that keeps killing
its workers is given up by Dask (``KilledWorker``) and scores zero with the reason. A lost
scheduler: the jobs not yet back are sent again once a scheduler and a worker are reachable at
the same address. After ``wait`` seconds without a scheduler, or with no worker left, what is
left gets zero with "not graded".
Results are written only as they reach the client, so nothing is written twice; a refused or
ungraded submission is stored without its digest, so the next run grades it again.
"""

from __future__ import annotations

import importlib.util
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import CancelledError
from pathlib import Path

from autograder.bundle import CourseBundle, CourseMismatch, loaded_code, verify
from autograder.jobs import failed_result, grade_submission, load_submission, prepare_worker
from autograder.limits import Limits, isolation
from autograder.runner import AssignmentSource

SCHEDULER_LOSSES = 3  # a batch gives up after losing its scheduler this many times


# ----------------------------------------------------------------------------- on a worker

_LOCK = threading.Lock()  # one job at a time per worker process, whatever its thread count


def _worker_paths() -> set[str]:
    """This worker's own paths the sandbox must not see: its copy of the solutions, its Dask folder."""
    from autograder.course import SOLUTIONS

    paths = {str(Path(SOLUTIONS).resolve())}
    try:
        from distributed import get_worker

        paths.add(str(Path(get_worker().local_directory).resolve()))
    except (ImportError, ValueError):
        pass
    return paths


def warm_up(preload: tuple[str, ...], limits: Limits) -> list[str]:
    """On a worker, before the first job: claim a slot, import the checks; what its sandbox cannot enforce."""
    with _LOCK:
        loaded_code(preload)
    return isolation().warnings(limits)


def grade_job(bundle: CourseBundle, job: dict) -> dict:
    """On a worker: check the course, then grade the job's bytes; plain data back."""
    with _LOCK:
        verify(bundle, job["course"], loaded_code(bundle.preload))
        done = grade_submission(bundle.source, job["student"], job["raw"], job["problem"], limits=job["limits"],
                                hide=sorted({*job["hide"], *_worker_paths()}), worker=prepare_worker(bundle.preload))
    return {**done, "digest": job["digest"]}


# ----------------------------------------------------------------------------- on the instructor's machine

def not_graded(job: dict, reason: str) -> dict:
    """Zero with ``reason``, stored without the digest, so that the next run grades it again."""
    return {**failed_result(job, reason), "digest": ""}


def _local_workers(scheduler: str) -> int:
    count = scheduler.removeprefix("local:")
    if not count.isdigit() or int(count) < 1:
        raise ValueError(f"--scheduler local:N needs a number of workers N >= 1, got {scheduler!r}")
    return int(count)


class DaskGrader:
    """The batch's connection to a Dask cluster: ship the course, run the jobs, survive faults."""

    def __init__(self, client, cluster, address: str, preload: list[str], limits: Limits, wait: float, warn):
        self.client, self.cluster, self.address = client, cluster, address
        self.preload, self.limits, self.wait, self.warn = tuple(sorted(preload)), limits, wait, warn
        self.token = uuid.uuid4().hex[:8]
        self._warm: list = []

    @classmethod
    def connect(cls, scheduler: str, preload: list[str], *, limits: Limits, wait: float = 300.0,
                warn=print) -> DaskGrader:
        """Connect to ``scheduler``: ``local:N`` (a LocalCluster of N one-thread worker processes on this
        machine), a scheduler file written by ``dask scheduler --scheduler-file``, or an address."""
        from distributed import Client, LocalCluster

        cluster = None
        try:
            if scheduler.startswith("local:"):
                cluster = LocalCluster(n_workers=_local_workers(scheduler), threads_per_worker=1, processes=True,
                                       dashboard_address=":0")
                client = Client(cluster)
            elif Path(scheduler).is_file():
                client = Client(scheduler_file=scheduler, timeout=30)
            else:
                client = Client(scheduler, timeout=30)
        except (OSError, TimeoutError) as exc:
            if cluster is not None:
                cluster.close()
            raise ValueError(f"cannot reach the Dask scheduler {scheduler!r}: {exc}") from None
        grader = cls(client, cluster, client.scheduler.address, preload, limits, wait, warn)
        try:
            grader._start()
        except BaseException:
            grader.close()
            raise
        return grader

    def _start(self) -> None:
        """Wait for a first worker, start warming every worker up, say where the dashboard is."""
        try:
            self.client.wait_for_workers(1, timeout=self.wait)
        except Exception:  # noqa: BLE001 - distributed raises its own TimeoutError flavours
            raise ValueError(f"no Dask worker joined the scheduler at {self.address} within {self.wait:g} s; "
                             f"start some with `dask worker {self.address} --nthreads 1`") from None
        self._warm = [self.client.submit(warm_up, self.preload, self.limits, workers=[w], allow_other_workers=False,
                                         pure=False, key=f"llmcourse-warm-up-{self.token}-{i}")
                      for i, w in enumerate(sorted(self.client.nthreads()))]
        try:
            if self.client.run_on_scheduler(lambda: importlib.util.find_spec("bokeh") is not None):
                self.warn(f"Dask dashboard: {self.client.dashboard_link}")
        except Exception:  # noqa: BLE001 - no dashboard is not a problem
            pass

    def _report_workers(self) -> None:
        """Each worker's sandbox warnings (once per distinct line), and a note on multi-threaded workers."""
        from distributed import wait

        lines: Counter = Counter()
        try:
            wait(self._warm, timeout=min(self.wait, 120.0))
        except TimeoutError:  # a worker still importing, or one that died while warming up: Dask's business
            pass
        for fut in self._warm:
            if fut.status == "finished":
                lines.update(fut.result())
        self.client.cancel(self._warm)
        self._warm = []
        for line, count in lines.items():
            self.warn(f"warning (on {count} Dask worker{'s' * (count > 1)}): {line}")
        threads = self.client.nthreads()
        if any(n > 1 for n in threads.values()):
            self.warn("note: some Dask workers have more than one thread; each grades one submission at a time "
                      "(start workers with --nthreads 1, and more of them with --nworkers)")

    def grade(self, jobs: list[dict], source: AssignmentSource) -> Iterator[dict]:
        """Yield each job's result as it reaches this machine, whatever happens to the cluster."""
        self._report_workers()
        bundle = CourseBundle.make(source, list(self.preload))
        pending = {job["student"]: job for job in jobs}
        losses = 0
        while pending:
            problem = self._ready()
            if not problem:
                problem = yield from self._round(pending, bundle, losses)
                if not pending:
                    return
            if not problem:  # the scheduler was lost
                losses += 1
                if losses <= SCHEDULER_LOSSES:
                    self.warn(f"warning: lost the Dask scheduler at {self.address}; {len(pending)} submission(s) "
                              f"will be sent again")
                    continue
                problem = f"not graded: lost the Dask scheduler at {self.address} {losses} times"
            for job in pending.values():
                yield not_graded(job, problem + "; run the same command again to grade it")
            return

    def _ready(self) -> str:
        """'' once connected to a scheduler that has a worker; else, after ``wait`` seconds, why not."""
        from distributed import Client

        deadline = time.monotonic() + self.wait
        while self.client.status != "running":
            if time.monotonic() > deadline:
                return f"not graded: the Dask scheduler at {self.address} was lost for over {self.wait:g} s"
            if self.client.status in ("closing", "closed") and self.cluster is None:
                try:  # the client gave up reconnecting: try again with a new one
                    self.client = Client(self.address, timeout=10)
                except (OSError, TimeoutError):
                    pass
            time.sleep(0.5)
        try:
            self.client.wait_for_workers(1, timeout=max(deadline - time.monotonic(), 1.0))
        except Exception:  # noqa: BLE001
            return f"not graded: no Dask worker at {self.address} for over {self.wait:g} s"
        return ""

    def _round(self, pending: dict[str, dict], bundle: CourseBundle, attempt: int) -> Iterator[dict]:
        """Ship the course, keep a window of jobs in flight, yield their results as they come.

        Returns '' when every job came back or the scheduler was lost (what is left stays in
        ``pending``), or why the rest cannot be graded (no worker left for ``wait`` seconds).
        """
        from distributed import wait

        shipped = self.client.scatter(bundle, broadcast=True, hash=False)
        course = bundle.digest()
        queue, futures = list(pending), {}
        window = max(8, 2 * sum(self.client.nthreads().values()))

        def submit() -> None:
            job = pending[queue.pop(0)]
            raw, problem = load_submission(job["path"], job["source"].notebook)
            wire = {"student": job["student"], "digest": job["digest"], "raw": raw, "problem": problem,
                    "limits": job["limits"], "hide": job["hide"], "course": course}
            fut = self.client.submit(grade_job, shipped, wire, pure=False,
                                     key=f"llmcourse-grade-{self.token}-{attempt}-{job['student']}")
            futures[fut] = job["student"]

        alone_since = None  # since when the cluster has had no worker
        while queue or futures:
            try:
                while queue and len(futures) < window and self.client.status == "running":
                    submit()
            except Exception:  # noqa: BLE001 - the scheduler went away: what is left waits for the next round
                queue.clear()
            if not futures:  # nothing out, nothing sent: the scheduler is gone
                return ""
            try:
                wait(list(futures), timeout=2.0, return_when="FIRST_COMPLETED")
            except (TimeoutError, CancelledError):  # nothing back yet; or the scheduler is gone (handled below)
                pass
            for fut in [f for f in futures if f.done()]:
                student = futures.pop(fut)
                if fut.cancelled():  # the scheduler was lost: the job stays pending
                    queue.clear()
                else:
                    yield self._outcome(fut, pending.pop(student))
            if self.client.status == "running" and not self.client.nthreads():
                alone_since = alone_since or time.monotonic()
                if time.monotonic() - alone_since > self.wait:
                    self.client.cancel(list(futures))
                    return f"not graded: no Dask worker at {self.address} for over {self.wait:g} s"
            else:
                alone_since = None
        return ""

    @staticmethod
    def _outcome(fut, job: dict) -> dict:
        from distributed import KilledWorker

        try:
            return fut.result()
        except KilledWorker:
            return failed_result(job, "grader error: the Dask workers that graded this submission died each "
                                      "time, so Dask gave up on it")
        except CourseMismatch as exc:
            return not_graded(job, f"not graded: {exc}")
        except Exception as exc:  # noqa: BLE001 - a grader bug is one student's reason
            return failed_result(job, f"grader error: {type(exc).__name__}: {exc}")

    def close(self) -> None:
        try:
            self.client.close(timeout=10)
        except Exception:  # noqa: BLE001 - a lost scheduler cannot be told goodbye
            pass
        if self.cluster is not None:
            self.cluster.close()
