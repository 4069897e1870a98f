"""nbgrader configuration for the course (nbgrader 0.9).

The autograder CLI (``python -m autograder ...``) loads this file and points
nbgrader at a temporary course directory for each job, so nothing here needs
editing for normal use. Instructors who prefer plain nbgrader commands can run
them from the repository root with ``--config autograder/nbgrader_config.py``.
"""

import os

c = get_config()  # noqa: F821 - provided by traitlets when the file is loaded

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Layout: solutions/ is nbgrader's source directory, exercises/ its release directory.
c.CourseDirectory.root = _REPO
c.CourseDirectory.source_directory = "solutions"
c.CourseDirectory.release_directory = "exercises"
c.CourseDirectory.submitted_directory = "submitted"
c.CourseDirectory.autograded_directory = "autograded"
c.CourseDirectory.feedback_directory = "feedback"
c.CourseDirectory.ignore = [".ipynb_checkpoints", "*.pyc", "__pycache__", ".DS_Store"]

# Releasing: strip solutions and hidden tests, lock read-only cells, keep checksums.
c.ClearSolutions.code_stub = {"python": "# YOUR CODE HERE\nraise NotImplementedError()"}
c.ClearSolutions.text_stub = "YOUR ANSWER HERE"
c.LockCells.lock_all_cells = False
c.LockCells.lock_grade_cells = True
c.LockCells.lock_readonly_cells = True
c.LockCells.lock_solution_cells = True

# Autograding: every cell runs with a time limit; an error in one cell does not stop the
# others, so the points a submission earned before a failure are kept.
c.Execute.timeout = 120
c.Execute.allow_errors = True
c.Execute.interrupt_on_timeout = True
c.Execute.kernel_name = "python3"
c.LimitOutput.max_lines = 200
c.LimitOutput.max_traceback = 50

# Feedback: never show hidden tests to students.
c.GenerateFeedback.preprocessors = [
    "nbgrader.preprocessors.GetGrades",
    "nbgrader.preprocessors.ClearHiddenTests",
    "autograder.feedback.ShortenGradedTracebacks",
    "nbconvert.preprocessors.CSSHTMLHeaderPreprocessor",
]
