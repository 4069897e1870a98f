"""Batch grading end to end: parallel workers, SQLite and PostgreSQL gradebooks, determinism."""

from __future__ import annotations

import csv
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import nbformat
import pytest

from autograder.__main__ import main
from autograder.course import SOLUTIONS
from autograder.gradebook import GradebookWriter
from tests.test_grading_attacks import NB, SOLVED, TASKS, WRONG_PREDICT, A, notebook

pytestmark = [pytest.mark.sandbox, pytest.mark.slow]

SHUFFLING_FIT = ("def perceptron_fit(X, y, *, lr=1.0, epochs=10):\n"
                 "    X = np.asarray(X, dtype=float); t = np.where(np.asarray(y) == 1, 1.0, -1.0)\n"
                 "    w, b, mistakes = np.zeros(X.shape[1]), 0.0, []\n"
                 "    for _ in range(epochs):\n"
                 "        count = 0\n"
                 "        for i in np.random.permutation(len(X)):  # shuffles: not the rule asked for\n"
                 "            if t[i] * (X[i] @ w + b) <= 0:\n"
                 "                w = w + lr * t[i] * X[i]; b += lr * t[i]; count += 1\n"
                 "        mistakes.append(count)\n"
                 "    return w, b, mistakes\n")


def _folder(root: Path, copies: int = 3) -> Path:
    """A small class: honest, wrong and unseeded-random students, ``copies`` of each."""
    subs = root / "subs"
    kinds = {"honest": notebook(), "wrong": notebook(ch01_predict=WRONG_PREDICT),
             "random": notebook(ch01_fit=SHUFFLING_FIT)}
    for i in range(copies):
        for kind, nb in kinds.items():
            (subs / f"{kind}{i}").mkdir(parents=True)
            nbformat.write(nb, subs / f"{kind}{i}" / NB)
    return subs


def _grade(subs: Path, out: Path, *extra: str) -> list[dict]:
    assert main(["grade", A, str(subs), "--out", str(out), "--quiet", "--workers", "2", *extra]) == 0
    with open(out / "grades.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_same_submissions_graded_twice_give_identical_results(tmp_path):
    subs = _folder(tmp_path)
    first = _grade(subs, tmp_path / "one")
    second = _grade(subs, tmp_path / "two")
    assert (tmp_path / "one" / "grades.csv").read_bytes() == (tmp_path / "two" / "grades.csv").read_bytes()
    assert first == second
    by_student = {}
    for r in first:
        by_student.setdefault(r["student"], 0.0)
        by_student[r["student"]] += float(r["score"])
    assert by_student["honest0"] == sum(TASKS.values())
    assert by_student["wrong0"] == sum(TASKS.values()) - TASKS["ch01_predict"]
    assert len({by_student[f"random{i}"] for i in range(3)}) == 1, "unseeded randomness leaked into scores"


def test_changed_submission_is_regraded_and_unchanged_ones_are_not(tmp_path):
    subs = _folder(tmp_path, copies=1)
    out = tmp_path / "out"
    _grade(subs, out)
    writer = GradebookWriter(f"sqlite:///{out / 'gradebook.db'}", A, NB)
    before = writer.previous()
    writer.close()
    nbformat.write(notebook(), subs / "wrong0" / NB)  # the student fixes the mistake and resubmits
    rows = _grade(subs, out)
    writer = GradebookWriter(f"sqlite:///{out / 'gradebook.db'}", A, NB)
    after, stored = writer.previous(), writer.scores()
    writer.close()
    assert after["honest0"] == before["honest0"] and after["random0"] == before["random0"]
    assert after["wrong0"][0] != before["wrong0"][0]
    assert stored[("wrong0", "ch01_predict")] == TASKS["ch01_predict"]
    assert {(r["student"], r["task"]): float(r["score"]) for r in rows} == stored


# ----------------------------------------------------------------------------- PostgreSQL

def _postgres_bin() -> str | None:
    for candidate in [shutil.which("initdb"), *sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))]:
        if candidate and os.access(candidate, os.X_OK):
            return os.path.dirname(candidate)
    return None


@pytest.fixture(scope="module")
def postgres():
    """A throw-away PostgreSQL server on a Unix socket, started by the test itself."""
    bindir = _postgres_bin()
    if bindir is None:
        pytest.skip("no PostgreSQL server binaries (initdb) on this machine; install Debian's postgresql")
    root = Path(tempfile.mkdtemp(prefix="llmcourse-pg-"))
    data, sock = root / "data", root / "sock"
    sock.mkdir()
    run_as: list[str] = []
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root: use an unprivileged uid
        os.chmod(root, 0o755)
        for path in (root, sock):
            os.chown(path, 65534, 65534)
        run_as = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "LC_ALL": "C"}
    init = subprocess.run([*run_as, f"{bindir}/initdb", "-D", str(data), "-U", "postgres", "--auth=trust",
                           "--no-sync", "-E", "UTF8", "--no-locale"], capture_output=True, text=True, env=env)
    if init.returncode != 0:
        shutil.rmtree(root, ignore_errors=True)
        pytest.skip(f"initdb could not create a cluster here: {init.stderr.strip()[-300:]}")
    start = subprocess.run([*run_as, f"{bindir}/pg_ctl", "-D", str(data), "-l", str(root / "log"), "-w",
                            "-o", f"-p {port} -k {sock} -c listen_addresses=''", "start"],
                           capture_output=True, text=True, env=env)
    if start.returncode != 0:
        shutil.rmtree(root, ignore_errors=True)
        pytest.skip(f"PostgreSQL did not start: {start.stderr.strip()[-300:]}")
    try:
        yield f"postgresql://postgres@/postgres?host={sock}&port={port}"
    finally:
        subprocess.run([*run_as, f"{bindir}/pg_ctl", "-D", str(data), "-m", "immediate", "stop"],
                       capture_output=True, env=env)
        time.sleep(0.2)
        shutil.rmtree(root, ignore_errors=True)


def test_parallel_batch_into_postgresql_loses_no_rows(postgres, tmp_path):
    subs = _folder(tmp_path, copies=2)
    rows = _grade(subs, tmp_path / "out", "--db", postgres)
    writer = GradebookWriter(postgres, A, NB)
    try:
        stored, recorded = writer.scores(), writer.previous()
    finally:
        writer.close()
    assert {(r["student"], r["task"]): float(r["score"]) for r in rows} == stored
    assert len(stored) == 6 * len(TASKS) and set(recorded) == {r["student"] for r in rows}
    assert not (tmp_path / "out" / "gradebook.db").exists(), "with --db the SQLite file must not be made"
    assert SOLVED  # the honest answers came from the solution notebook


def dies_for_mallory(job: dict) -> dict:
    """A stand-in grading job whose worker process dies on one student (as a grader bug might)."""
    if job["student"] == "mallory":
        os._exit(1)
    return {"student": job["student"], "ok": True}


def test_a_dying_worker_is_replaced_and_the_batch_goes_on():
    from autograder.grading import _run_jobs
    from autograder.runner import AssignmentSource

    source = AssignmentSource.load(A, Path(SOLUTIONS) / A / NB)
    jobs = [{"student": s, "source": source, "digest": "d"} for s in ("alice", "mallory", "bob", "carol")]
    results = {r["student"]: r for r in _run_jobs(jobs, 2, [], fn=dies_for_mallory)}
    assert set(results) == {"alice", "mallory", "bob", "carol"}
    assert all(results[s].get("ok") for s in ("alice", "bob", "carol"))
    assert "worker died twice" in results["mallory"]["result"]["scores"][0]["reason"]
