"""Time the book: each chapter's execution, then a cold and a cached `jupyter-book build`.

Run: `.venv/bin/python benchmarks/bench_book.py` (or `make bench`). Writes
benchmarks/results/book.json. Budgets (DESIGN.md): a chapter <= 2 min on 2 cores,
the whole book <= 15 min cold and < 30 s when nothing changed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import jupytext
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, venv_env, write  # noqa: E402


def chapter_pages() -> list[str]:
    toc = (REPO / "_toc.yml").read_text()
    pages = []
    for line in toc.splitlines():
        line = line.strip()
        if line.startswith(("- file:", "root:")):
            page = line.split(":", 1)[1].strip()
            md = REPO / f"{page}.md"
            if md.read_text().startswith("---\njupytext:"):
                pages.append(page)
    return pages


def time_chapter(page: str) -> float:
    from nbclient import NotebookClient

    from autograder.course import prepare_environment

    prepare_environment()
    os.environ["LLMCOURSE_BOOK_BUILD"] = "1"
    nb = jupytext.read(REPO / f"{page}.md")
    start = time.perf_counter()
    NotebookClient(nb, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str((REPO / page).parent)}}).execute()
    return time.perf_counter() - start


def time_build(out: Path) -> float:
    start = time.perf_counter()
    subprocess.run([str(Path(sys.executable).parent / "jupyter-book"), "build", str(REPO), "--path-output", str(out)],
                   check=True, capture_output=True, env=dict(venv_env(), LLMCOURSE_BOOK_BUILD="1"))
    return time.perf_counter() - start


def main() -> None:
    results: dict = {"chapters_s": {}}
    for page in chapter_pages():
        results["chapters_s"][page] = round(time_chapter(page), 1)
    out = Path(os.environ.get("BENCH_BUILD_DIR", "/tmp/llmcourse-bench-build"))
    shutil.rmtree(out, ignore_errors=True)
    results["book_cold_s"] = round(time_build(out), 1)
    results["book_cached_s"] = round(time_build(out), 1)
    results["budgets"] = {"chapter_s": 120, "book_cold_s": 900, "book_cached_s": 30}
    results["config"] = yaml.safe_load((REPO / "_config.yml").read_text())["execute"]
    write("book", results)


if __name__ == "__main__":
    main()
