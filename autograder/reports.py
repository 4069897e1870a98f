"""What a batch leaves behind: ``grades.csv``, a summary with its plot, and feedback pages."""

from __future__ import annotations

import csv
import functools
import html
import json
import statistics
from pathlib import Path

from autograder.feedback import insert_summary, offline_math, standalone_page, summary_table

CSV_COLUMNS = ["student", "assignment", "task", "score", "max_score", "reason"]


def write_csv(rows, path: Path) -> None:
    """One line per student and task, sorted, so two runs can be compared with ``diff``."""
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(CSV_COLUMNS)
        for r in sorted(rows, key=lambda r: (r.student, r.task)):
            writer.writerow([r.student, r.assignment, r.task, f"{r.score:g}", f"{r.max_score:g}", r.reason])


def summarize(assignment: str, rows) -> dict:
    """Totals per student, their mean, median and spread, and each task's pass rate."""
    students = sorted({r.student for r in rows})
    totals = [sum(r.score for r in rows if r.student == s) for s in students]
    possible = max((sum(r.max_score for r in rows if r.student == s) for s in students), default=0.0)
    tasks = sorted({r.task for r in rows}, key=[r.task for r in rows].index)
    return {
        "assignment": assignment,
        "submissions": len(students),
        "max_score": possible,
        "mean": statistics.fmean(totals) if totals else 0.0,
        "median": statistics.median(totals) if totals else 0.0,
        "stdev": statistics.pstdev(totals) if totals else 0.0,
        "full_marks": sum(t >= possible for t in totals) if possible else 0,
        "zero": sum(t == 0 for t in totals),
        "tasks": {t: {"pass_rate": statistics.fmean([r.score >= r.max_score for r in rows if r.task == t]),
                      "mean": statistics.fmean([r.score for r in rows if r.task == t])} for t in tasks},
        "totals": dict(zip(students, totals)),
    }


def write_summary(summary: dict, out: Path) -> tuple[Path, Path]:
    """``summary.json`` and ``summary.png`` (distribution of totals, pass rate per task)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    from llmcourse.plotting import COLORS, use_style

    use_style()
    json_path, png_path = out / "summary.json", out / "summary.png"
    json_path.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
    totals = list(summary["totals"].values())
    top = summary["max_score"] or 1.0
    bins = [x - 0.5 for x in range(int(top) + 2)] if top <= 40 else 20
    ax1.hist(totals, bins=bins, color=COLORS[0], edgecolor="white")
    ax1.axvline(summary["mean"], color=COLORS[1], linestyle="--", label=f"mean {summary['mean']:.2f}")
    ax1.set(xlabel=f"total score (out of {top:g})", ylabel="submissions",
            title=f"{summary['assignment']}: {summary['submissions']} submissions")
    ax1.yaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax1.legend()
    names = list(summary["tasks"])
    rates = [100 * summary["tasks"][t]["pass_rate"] for t in names]
    ax2.barh(names[::-1], rates[::-1], color=COLORS[2])
    ax2.set(xlabel="passed (%)", xlim=(0, 100), title="tasks")
    fig.tight_layout()
    fig.savefig(png_path, dpi=110)
    plt.close(fig)
    return json_path, png_path


def feedback_page(student: str, assignment: str, rows, notes: list[str], notebook) -> str:
    """The student's feedback: the score table with every reason, notes, then their graded notebook."""
    fragment = summary_table(student, assignment, rows)
    if notes:
        fragment += ('<section style="font-family:sans-serif;margin:1em auto;max-width:60em"><h3>Notes</h3><ul>'
                     + "".join(f"<li>{html.escape(n)}</li>" for n in notes) + "</ul></section>")
    if notebook is None:
        return standalone_page(student, assignment, rows, "; ".join(notes) or "No notebook to show.")
    body, _ = _exporter().from_notebook_node(notebook)
    return offline_math(insert_summary(body, fragment))


@functools.lru_cache(maxsize=1)
def _exporter():
    """One HTML exporter per process: loading its templates is the slow part."""
    from nbconvert import HTMLExporter

    return HTMLExporter(template_name="classic")
