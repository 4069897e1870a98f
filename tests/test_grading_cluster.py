"""Grading on a Dask cluster: faults, determinism, and workers that must refuse.

A real ``dask scheduler`` and two ``dask worker`` processes on 127.0.0.1 grade a small class
(honest, wrong and unseeded-random students); every run must write the same ``grades.csv``,
byte for byte, as the local process pool. A worker is killed in the middle of a job, the
scheduler is killed and restarted in the middle of a batch: every submission still ends with a
score and a reason, written into the gradebook exactly once. The attack corpus runs through the
cluster in ``tests/test_grading_attacks.py``.
"""

from __future__ import annotations

import csv
import dataclasses
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import pytest

from autograder.__main__ import main
from autograder.bundle import CourseBundle, CourseMismatch, code_digests, verify
from autograder.course import SOLUTIONS
from autograder.gradebook import GradebookWriter
from autograder.runner import AssignmentSource
from tests.dask_processes import DaskProcesses, running_cluster
from tests.test_grading_attacks import NB, TASKS, A
from tests.test_grading_batch import _folder

pytestmark = [pytest.mark.sandbox, pytest.mark.slow]
CHECKS = "autograder.checks.ch01_perceptron"


@pytest.fixture(scope="module")
def klass(tmp_path_factory):
    """Three students (honest, wrong, unseeded random), and the ``grades.csv`` the local mode writes for them."""
    root = tmp_path_factory.mktemp("cluster-class")
    subs = _folder(root, copies=1)
    assert main(["grade", A, str(subs), "--out", str(root / "local"), "--quiet", "--workers", "2"]) == 0
    return {"subs": subs, "students": sorted(p.name for p in subs.iterdir()),
            "csv": (root / "local" / "grades.csv").read_bytes()}


@pytest.fixture(scope="module")
def dask_cluster(tmp_path_factory):
    with running_cluster(tmp_path_factory.mktemp("dask")) as cluster:
        yield cluster


@pytest.fixture
def writes(monkeypatch) -> Counter:
    """How many times the gradebook was written for each student."""
    counts: Counter = Counter()
    original = GradebookWriter.write

    def counting(self, student, digest, result):
        counts[student] += 1
        return original(self, student, digest, result)

    monkeypatch.setattr(GradebookWriter, "write", counting)
    return counts


def _rows(out: Path) -> list[dict]:
    with open(out / "grades.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def _wait_for(condition, what: str, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _kill(processes: list[psutil.Process]) -> None:
    for proc in processes:
        try:
            proc.kill()
        except psutil.Error:
            pass


def _graded_once_like_the_local_mode(klass, out: Path, writes: Counter) -> None:
    assert (out / "grades.csv").read_bytes() == klass["csv"]
    assert writes == Counter(dict.fromkeys(klass["students"], 1)), "a submission was written twice, or never"
    for row in _rows(out):
        assert row["reason"], row


# ----------------------------------------------------------------------------- without a cluster

def _bundle() -> CourseBundle:
    source = AssignmentSource.load(A, SOLUTIONS / A / NB)
    return CourseBundle.make(source, [CHECKS])


def test_course_digests_follow_the_checks_imports_into_the_course_packages():
    digests = code_digests((CHECKS,))
    assert {CHECKS, "autograder.compare", "autograder.guard", "llmcourse.tasks", "llmcourse"} <= set(digests)
    assert all(name.split(".")[0] in ("autograder", "llmcourse") for name in digests), "numpy or sklearn counted"


def test_worker_with_stale_course_code_refuses_and_names_the_module():
    bundle = _bundle()
    stale = {**bundle.code, CHECKS: "0" * 64}
    with pytest.raises(CourseMismatch, match=CHECKS.replace(".", r"\.")):
        verify(bundle, bundle.digest(), stale)
    verify(bundle, bundle.digest(), dict(bundle.code))  # the instructor's own code passes


def test_job_naming_another_course_is_refused():
    bundle = _bundle()
    with pytest.raises(CourseMismatch, match="not the job's"):
        verify(bundle, "f" * 64, dict(bundle.code))


def test_bundle_digest_changes_with_the_hidden_tests():
    bundle = _bundle()
    cells = list(bundle.source.cells)
    test = next(i for i, c in enumerate(cells) if c.kind == "test")
    cells[test] = dataclasses.replace(cells[test], source=cells[test].source + "\n# changed")
    changed = dataclasses.replace(bundle, source=dataclasses.replace(bundle.source, cells=tuple(cells)))
    assert changed.digest() != bundle.digest()
    assert dataclasses.replace(bundle).digest() == bundle.digest()


def test_scheduler_and_workers_options_are_checked(tmp_path, capsys):
    assert main(["grade", A, str(tmp_path), "--out", str(tmp_path / "o"), "--workers", "2",
                 "--scheduler", "local:2"]) == 2
    assert "with --scheduler the cluster's workers grade" in capsys.readouterr().err
    assert main(["grade", A, str(tmp_path), "--out", str(tmp_path / "o"), "--scheduler", "local:none"]) == 2
    assert "local:N needs a number of workers N >= 1" in capsys.readouterr().err


# ----------------------------------------------------------------------------- on real Dask processes

def test_local_cluster_writes_the_same_grades_as_the_local_mode(klass, tmp_path, writes):
    assert main(["grade", A, str(klass["subs"]), "--out", str(tmp_path), "--quiet", "--scheduler", "local:2"]) == 0
    _graded_once_like_the_local_mode(klass, tmp_path, writes)


def test_worker_killed_mid_job_every_submission_is_graded_once(klass, dask_cluster, tmp_path, writes):
    args = ["grade", A, str(klass["subs"]), "--out", str(tmp_path), "--quiet", "--scheduler", dask_cluster.address]
    orphans: list[psutil.Process] = []

    def grading_worker():
        return next((w for w in dask_cluster.live_workers() if dask_cluster.sandboxes(w)), None)

    with ThreadPoolExecutor(1) as pool:
        run = pool.submit(main, args)
        try:
            _wait_for(lambda: run.done() or grading_worker(), "a worker running a sandbox")
            victim = grading_worker()
            assert victim is not None, "the batch ended before any worker was seen grading"
            orphans = dask_cluster.sandboxes(victim)
            victim.kill()  # SIGKILL, in the middle of a job
            victim.wait()
            assert run.result(timeout=600) == 0
        finally:
            _kill(orphans)
            dask_cluster.start_worker()  # back to two workers for the next test
            dask_cluster.wait_for_workers(2)
    assert victim.returncode == -9
    _graded_once_like_the_local_mode(klass, tmp_path, writes)


def test_scheduler_restart_mid_batch_resends_what_was_out(klass, dask_cluster, tmp_path, writes):
    address = dask_cluster.address
    args = ["grade", A, str(klass["subs"]), "--out", str(tmp_path), "--quiet", "--scheduler", address,
            "--cluster-timeout", "120"]
    with ThreadPoolExecutor(1) as pool:
        run = pool.submit(main, args)
        _wait_for(lambda: run.done() or sum(writes.values()) >= 1, "the first result")
        assert sum(writes.values()) < len(klass["students"]), "the batch ended before the scheduler could be killed"
        orphans = [s for w in dask_cluster.live_workers() for s in dask_cluster.sandboxes(w)]
        dask_cluster.kill_scheduler()
        try:
            assert dask_cluster.start_scheduler(port=int(address.rsplit(":", 1)[1])) == address
            _wait_for(lambda: not dask_cluster.live_workers(), "the old workers to leave", timeout=60)
            dask_cluster.start_worker()
            dask_cluster.start_worker()
            assert run.result(timeout=600) == 0
        finally:
            _kill(orphans)
    _graded_once_like_the_local_mode(klass, tmp_path, writes)


def test_worker_with_another_course_secret_refuses_and_nothing_is_recorded_as_graded(klass, tmp_path, monkeypatch):
    monkeypatch.delenv("AUTOGRADER_SECRET", raising=False)
    monkeypatch.delenv("AUTOGRADER_SECRET_FILE", raising=False)
    procs = DaskProcesses(tmp_path / "dask")
    try:
        procs.start_scheduler()
        procs.start_worker(env={"AUTOGRADER_SECRET": "not the instructor's secret"})
        procs.wait_for_workers(1)
        out = tmp_path / "out"
        assert main(["grade", A, str(klass["subs"]), "--out", str(out), "--quiet", "--scheduler", procs.address]) == 0
    finally:
        procs.close()
    rows = _rows(out)
    assert {r["student"] for r in rows} == set(klass["students"]) and len(rows) == len(klass["students"]) * len(TASKS)
    for row in rows:
        assert float(row["score"]) == 0 and "worker's hidden inputs differ from the instructor's" in row["reason"], row
    writer = GradebookWriter(f"sqlite:///{out / 'gradebook.db'}", A, NB)
    try:
        recorded = writer.previous()
    finally:
        writer.close()
    assert {student: digest for student, (digest, _) in recorded.items()} == dict.fromkeys(klass["students"], "")


def test_cluster_left_without_workers_marks_the_rest_not_graded(klass, tmp_path):
    procs = DaskProcesses(tmp_path / "dask")
    orphans: list[psutil.Process] = []
    try:
        procs.start_scheduler()
        worker = procs.start_worker()
        procs.wait_for_workers(1)
        out = tmp_path / "out"
        args = ["grade", A, str(klass["subs"]), "--out", str(out), "--quiet", "--scheduler", procs.address,
                "--cluster-timeout", "5"]
        with ThreadPoolExecutor(1) as pool:
            run = pool.submit(main, args)
            _wait_for(lambda: run.done() or procs.sandboxes(worker), "the worker to start grading")
            orphans = procs.sandboxes(worker)
            worker.kill()  # the only worker, and no other ever comes
            assert run.result(timeout=600) == 0
    finally:
        _kill(orphans)
        procs.close()
    rows = _rows(out)
    assert {r["student"] for r in rows} == set(klass["students"])
    lost = {r["student"] for r in rows if r["reason"].startswith("not graded: no Dask worker")}
    assert lost, "the job on the killed worker should have been given up"
    for row in rows:
        assert row["reason"] and (row["student"] not in lost or float(row["score"]) == 0), row
    writer = GradebookWriter(f"sqlite:///{out / 'gradebook.db'}", A, NB)
    try:
        recorded = writer.previous()
    finally:
        writer.close()
    assert {s for s, (digest, _) in recorded.items() if not digest} == lost, "a lost job was recorded as graded"
