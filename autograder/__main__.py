"""The autograder's command line.

    python -m autograder release [ASSIGNMENT]            regenerate exercises/ from solutions/
    python -m autograder grade ASSIGNMENT FOLDER --out OUT [--workers N] [--db URL]
                                                         grade every submission in FOLDER
    python -m autograder grade ASSIGNMENT FOLDER --out OUT --scheduler ADDRESS
                                                         the same, on a Dask cluster (or local:N)
    python -m autograder check NOTEBOOK                  run a notebook's checks, print a table
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m autograder", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_rel = sub.add_parser("release", help="regenerate exercises/ from solutions/")
    p_rel.add_argument("assignment", nargs="?", help="one assignment (default: all)")
    p_grade = sub.add_parser("grade", help="autograde a folder of submissions")
    p_grade.add_argument("assignment")
    p_grade.add_argument("folder", type=Path, help="one sub-folder per student (or nbgrader's submitted/)")
    p_grade.add_argument("--out", type=Path, required=True, help="where grades.csv and feedback/ go")
    p_grade.add_argument("--quiet", action="store_true", help="no progress bar")
    p_grade.add_argument("--workers", type=int, default=None, help="parallel workers (default: CPU cores)")
    p_grade.add_argument("--scheduler", default=None, metavar="ADDRESS",
                         help="grade on a Dask cluster: its scheduler's address (tcp://host:8786), the file "
                              "`dask scheduler --scheduler-file` wrote, or local:N for N worker processes here")
    p_grade.add_argument("--cluster-timeout", type=float, default=300.0, metavar="SECONDS",
                         help="with --scheduler: how long to wait for a worker, or for a lost scheduler to return")
    p_grade.add_argument("--db", default=None, help="SQLAlchemy URL of the gradebook "
                         "(default sqlite:///OUT/gradebook.db; e.g. postgresql://user@host/db)")
    p_grade.add_argument("--no-resume", action="store_true", help="re-grade unchanged submissions too")
    p_grade.add_argument("--cell-timeout", type=float, default=60.0, help="seconds per cell or check call")
    p_grade.add_argument("--notebook-timeout", type=float, default=300.0, help="seconds per notebook")
    p_grade.add_argument("--memory-mb", type=int, default=4096, help="memory limit per submission (MiB)")
    p_check = sub.add_parser("check", help="run the checks of your own notebook")
    p_check.add_argument("notebook", type=Path)
    p_check.add_argument("--timeout", type=int, default=120, help="seconds per cell")
    args = parser.parse_args(argv)

    try:
        if args.command == "release":
            from autograder.course import release

            for folder in release([args.assignment] if args.assignment else None):
                print(f"released {folder}")
            return 0
        if args.command == "grade":
            from autograder.grading import grade_folder
            from autograder.limits import Limits

            limits = Limits(cell_seconds=args.cell_timeout, notebook_seconds=args.notebook_timeout,
                            memory_mb=args.memory_mb)
            rows = grade_folder(args.assignment, args.folder, args.out, show_progress=not args.quiet,
                                workers=args.workers, db_url=args.db, limits=limits, resume=not args.no_resume,
                                warn=lambda line: print(line, file=sys.stderr), scheduler=args.scheduler,
                                cluster_timeout=args.cluster_timeout)
            students = sorted({r.student for r in rows})
            for s in students:
                got = sum(r.score for r in rows if r.student == s)
                total = sum(r.max_score for r in rows if r.student == s)
                print(f"{s}: {got:g} / {total:g}")
            print(f"graded {len(students)} submission(s); wrote {args.out / 'grades.csv'}, "
                  f"{args.out / 'summary.png'} and {args.out / 'feedback'}/")
            return 0
        if args.command == "check":
            from autograder.selfcheck import format_table, run_checks

            reports = run_checks(args.notebook, timeout=args.timeout)
            print(format_table(reports))
            return 0 if reports and all(r.passed for r in reports) else 1
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 2  # unreachable: argparse enforces a command


if __name__ == "__main__":
    sys.exit(main())
