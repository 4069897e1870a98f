"""Training targets are measured on data the student's sandbox cannot reach.

The chapter-4 digits check scores the student's model on rows of scikit-learn's digits file
that every sandbox sees removed (``autograder.heldout``). A "model" that looks images up in
the file it can read scores full marks in the grader's own process, where the file is whole,
and fails in the sandbox, where the held-out rows are gone.
"""

from __future__ import annotations

import nbformat
import pytest

from autograder.checks import ch04_cnn
from autograder.course import EXERCISES, SOLUTIONS
from autograder.limits import Limits, isolation
from autograder.runner import AssignmentSource, grade_notebook
from tests.notebook_kernel import kernel

A = "ch04_cnn"
LOOKUP = """
import gzip, os
import numpy as np
import torch
from torch import nn

class Lookup(nn.Module):
    \"\"\"Answers by finding the image in the digits file this process can read.\"\"\"

    def __init__(self):
        super().__init__()
        site = os.path.dirname(os.path.dirname(np.__file__))
        rows = np.loadtxt(gzip.open(os.path.join(site, "sklearn", "datasets", "data", "digits.csv.gz")),
                          delimiter=",")
        self.table = {tuple(np.round(r[:-1] / 16.0, 4)): int(r[-1]) for r in rows}
        self.scale = nn.Parameter(torch.ones(1))

    def forward(self, x):
        out = torch.zeros(len(x), 10)
        for i, image in enumerate(x.reshape(len(x), -1).double().numpy()):
            out[i, self.table.get(tuple(np.round(image, 4)), 0)] = 1.0
        return out * self.scale

def train_cnn(X_train, y_train):
    return Lookup()
"""


def test_lookup_in_the_data_file_scores_full_marks_where_the_file_is_whole():
    """The cheat works when the held-out rows are readable: that is what the sandbox must prevent."""
    ch04_cnn.check_train_cnn(kernel(LOOKUP)["train_cnn"])


@pytest.mark.sandbox
def test_lookup_in_the_data_file_fails_in_the_sandbox():
    if not isolation().namespaces:
        pytest.skip(f"no mount namespace here ({isolation().reason}): the held-out rows stay readable")
    nb = nbformat.read(EXERCISES / A / f"{A}.ipynb", as_version=4)
    for c in nb.cells:
        if c.metadata.get("nbgrader", {}).get("grade_id") == "ch04_train_cnn_answer":
            c.source = LOOKUP
    source = AssignmentSource.load(A, SOLUTIONS / A / f"{A}.ipynb", EXERCISES / A / f"{A}.ipynb")
    graded = grade_notebook(source, nbformat.writes(nb).encode(), limits=Limits(cell_seconds=120))
    score = next(s for s in graded.scores if s.task == "ch04_train_cnn")
    assert score.score == 0, score
    assert "held-out digits" in score.reason and "below 96%" in score.reason, score.reason


@pytest.mark.parametrize("secret", ["course-2027", "another secret"])
def test_solution_reaches_the_target_on_the_held_out_digits_of_any_secret(secret, monkeypatch):
    """Measured over 8 secrets: the solution scores 97.8 % to 99.2 % on the 360 held-out digits."""
    from tests.notebook_kernel import solution_of

    monkeypatch.setenv("AUTOGRADER_SECRET", secret)
    ch04_cnn.check_train_cnn(solution_of(A)["train_cnn"])
