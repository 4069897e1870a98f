"""What students see after grading: their notebook, their scores and why points were lost.

nbgrader's feedback HTML shows the autograded notebook. Two changes make it
safe and useful: tracebacks in graded cells are cut to their last line (the
check's message), so no hidden test code leaks through a traceback; and a
table at the top lists every task with its score and the reason for each lost
point.
"""

from __future__ import annotations

import html
import os

from nbconvert.preprocessors import Preprocessor
from traitlets import Bool


def error_summary(cell) -> str | None:
    """``"Ename: message"`` of the first error output of a code cell, or None."""
    for out in cell.get("outputs", []):
        if out.get("output_type") == "error":
            value = str(out.get("evalue", "")).strip()
            if out.get("ename") == "NotImplementedError" and not value:
                value = "not answered yet (the answer cell still raises NotImplementedError)"
            return f"{out.get('ename', 'Error')}: {value}" if value else str(out.get("ename", "Error"))
    return None


class ShortenGradedTracebacks(Preprocessor):
    """Replace the traceback of every graded cell's error by its one-line summary."""

    enabled = Bool(True).tag(config=True)

    def preprocess_cell(self, cell, resources, index):
        if cell.cell_type == "code" and cell.metadata.get("nbgrader", {}).get("grade"):
            for out in cell.get("outputs", []):
                if out.get("output_type") == "error":
                    out["traceback"] = [f"{out.get('ename', 'Error')}: {out.get('evalue', '')}"]
        return cell, resources


def summary_table(student: str, assignment: str, rows) -> str:
    """An HTML fragment: total and one row per task with score and reason."""
    total = sum(r.score for r in rows)
    possible = sum(r.max_score for r in rows)
    cell = 'style="padding:4px 10px;border:1px solid #888;text-align:left;vertical-align:top"'
    body = "".join(
        f"<tr>\n<td {cell}>{html.escape(r.task)}</td>\n<td {cell}>{r.score:g} / {r.max_score:g}</td>\n"
        f"<td {cell}>{html.escape(r.reason)}</td>\n</tr>\n" for r in rows)
    return (
        '<section id="llmcourse-summary" style="font-family:sans-serif;margin:1em auto;max-width:60em">'
        f"<h2>{html.escape(assignment)} &mdash; {html.escape(student)}: {total:g} / {possible:g}</h2>"
        '<table style="border-collapse:collapse">\n'
        f"<thead><tr>\n<th {cell}>task</th>\n<th {cell}>score</th>\n<th {cell}>reason</th>\n</tr></thead>\n"
        f"<tbody>\n{body}</tbody></table></section>"
    )


def standalone_page(student: str, assignment: str, rows, note: str) -> str:
    """A complete feedback page for a submission nbgrader could not process."""
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(assignment)} feedback"
            f"</title></head><body>{summary_table(student, assignment, rows)}"
            f"<p style='font-family:sans-serif;max-width:60em;margin:auto'>{html.escape(note)}</p></body></html>")


#: where a feedback page looks for MathJax: a folder beside it (written once per batch), else the web
MATHJAX_FOLDER = "mathjax"
_MATHJAX_CDN = "https://cdn.jsdelivr.net/npm/mathjax@3/es5/tex-svg.js"


def mathjax_file() -> str:
    """MathJax 3 with SVG output in one file (no fonts needed), as the book ships it offline."""
    import importlib.util

    spec = importlib.util.find_spec("sphinx-mathjax-offline")
    return os.path.join(os.path.dirname(spec.origin), "static", "mathjax", "tex-svg.js")


def offline_math(page: str) -> str:
    """Point a feedback page at ``mathjax/tex-svg.js`` beside it (the web copy only if that is missing).

    nbconvert's page loads MathJax 2 from a CDN, so a student reading it offline sees raw LaTeX.
    """
    start = page.find("<!-- Load mathjax -->")
    end = page.find("<!-- End of mathjax configuration -->")
    if start < 0 or end < 0:
        return page
    config = ("<script>window.MathJax = {tex: {inlineMath: [['$', '$'], ['\\\\(', '\\\\)']], "
              "displayMath: [['$$', '$$'], ['\\\\[', '\\\\]']], processEscapes: true, "
              "processEnvironments: true}};</script>\n"
              f'<script src="{MATHJAX_FOLDER}/tex-svg.js" onerror="var s=document.createElement(\'script\');'
              f"s.src='{_MATHJAX_CDN}';document.head.appendChild(s);\"></script>\n")
    return page[:start] + config + page[end + len("<!-- End of mathjax configuration -->"):]


def insert_summary(page: str, fragment: str) -> str:
    """Put ``fragment`` right after the ``<body>`` tag of an HTML page."""
    lower = page.lower()
    start = lower.find("<body")
    if start < 0:
        return fragment + page
    end = page.find(">", start) + 1
    return page[:end] + fragment + page[end:]
