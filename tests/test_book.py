"""The book: every chapter executes, the site builds offline, and its links to the library hold."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import jupytext
import pytest
import yaml

from tests.conftest import REPO

TOC = yaml.safe_load((REPO / "_toc.yml").read_text())


def _toc_files(node) -> list[str]:
    files = []
    if isinstance(node, dict):
        if "file" in node:
            files.append(node["file"])
        if "root" in node:
            files.append(node["root"])
        for value in node.values():
            files += _toc_files(value)
    elif isinstance(node, list):
        for item in node:
            files += _toc_files(item)
    return files


PAGES = sorted(set(_toc_files(TOC)))
NOTEBOOK_PAGES = [p for p in PAGES if (REPO / f"{p}.md").is_file()
                  and (REPO / f"{p}.md").read_text().startswith("---\njupytext:")]


def test_every_toc_entry_exists_and_every_chapter_is_listed():
    for page in PAGES:
        assert (REPO / f"{page}.md").is_file(), f"_toc.yml lists {page} but {page}.md does not exist"
    for index in sorted((REPO / "book").glob("*/index.md")):
        rel = index.relative_to(REPO).with_suffix("").as_posix()
        assert rel in PAGES, f"{rel} is not in _toc.yml"


def test_chapters_are_myst_notebooks_with_the_course_kernel():
    assert NOTEBOOK_PAGES, "no executable chapter found"
    for page in NOTEBOOK_PAGES:
        nb = jupytext.read(REPO / f"{page}.md")
        assert nb.metadata["kernelspec"]["name"] == "python3", page
        assert any(c.cell_type == "code" for c in nb.cells), page


@pytest.mark.slow
@pytest.mark.parametrize("page", NOTEBOOK_PAGES)
def test_chapter_executes_without_error(page, monkeypatch):
    from nbclient import NotebookClient

    from autograder.course import prepare_environment

    prepare_environment()
    monkeypatch.setenv("LLMCOURSE_BOOK_BUILD", "1")
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    nb = jupytext.read(REPO / f"{page}.md")
    client = NotebookClient(nb, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str((REPO / page).parent)}})
    client.execute()  # raises CellExecutionError naming the failing cell
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if o.get("output_type") == "error"]
    assert not errors


_LIBRARY_REF = re.compile(r"```\{literalinclude\}\s+(\S+)\s*\n((?::[\w-]+:.*\n)*)")


def test_literalinclude_targets_exist():
    """Every {literalinclude} path exists and every :pyobject: names a real function or class."""
    found = 0
    for page in PAGES:
        md = REPO / f"{page}.md"
        for path, options in _LIBRARY_REF.findall(md.read_text()):
            target = (md.parent / path).resolve()
            assert target.is_file(), f"{md.name}: literalinclude {path} does not exist"
            m = re.search(r":pyobject:\s*(\S+)", options)
            if m:
                tree = ast.parse(target.read_text())
                names = {n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
                assert m.group(1).split(".")[-1] in names, f"{md}: {m.group(1)} not found in {path}"
            found += 1
    assert found > 0, "the chapters should show library code with literalinclude"


def test_library_modules_name_the_chapter_that_teaches_them():
    for module in sorted((REPO / "src" / "llmcourse").glob("*.py")):
        if module.name in ("__init__.py", "doctor.py"):
            continue
        doc = ast.get_docstring(ast.parse(module.read_text())) or ""
        m = re.search(r"Taught in:\s*(\S+)", doc)
        assert m, f"{module.name}: header docstring has no 'Taught in: book/...' line"
        target = REPO / m.group(1)
        assert target.is_dir() or target.with_suffix(".md").is_file(), \
            f"{module.name}: {m.group(1)} is neither a book folder nor a page"


@pytest.mark.slow
def test_book_builds_offline_without_external_resources(tmp_path):
    """Build the whole site (execution off: the test above executes) and scan it for CDN loads."""
    config = yaml.safe_load((REPO / "_config.yml").read_text())
    config["execute"]["execute_notebooks"] = "off"
    for name, path in config["sphinx"].get("local_extensions", {}).items():  # relative to the config file
        config["sphinx"]["local_extensions"][name] = str(REPO / path)
    cfg = tmp_path / "_config.yml"
    cfg.write_text(yaml.safe_dump(config))
    env = dict(os.environ, PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]))
    proc = subprocess.run([str(Path(sys.executable).parent / "jupyter-book"), "build", str(REPO),
                           "--path-output", str(tmp_path), "--config", str(cfg), "--toc", str(REPO / "_toc.yml")],
                          capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    html = tmp_path / "_build" / "html"
    for page in PAGES:
        assert (html / f"{page}.html").is_file(), f"{page}.html was not built"
    external = re.compile(r"<(?:script|img|iframe)[^>]+src=\"(https?:)?//|<link[^>]+href=\"(https?:)?//[^\"]+\"[^>]*stylesheet"
                          r"|<link[^>]+stylesheet[^>]+href=\"(https?:)?//")
    inline = re.compile(r"<script>(.*?)</script>", re.S)
    declaration = re.compile(r"(?:^|;)\s*(?:const|let)\s+([A-Za-z_$][\w$]*)")
    for page in html.rglob("*.html"):
        text = page.read_text(encoding="utf-8", errors="replace")
        hits = external.findall(text)
        assert not hits, f"{page.relative_to(html)} loads a resource from the internet"
        names = [n for body in inline.findall(text) for n in declaration.findall(body)]
        twice = sorted({n for n in names if names.count(n) > 1})
        assert not twice, f"{page.relative_to(html)} declares {twice} twice (a console error in the browser)"
    assert list((html / "_static").rglob("tex-chtml*.js")) or list((html / "_static").rglob("*mathjax*")), \
        "MathJax was not copied into the build (sphinx-mathjax-offline)"
