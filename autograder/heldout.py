"""Held-out data that the student's sandbox never sees.

A training task is graded by the accuracy of the student's model on examples it was not
trained on. When those examples sit in the notebook's globals, or in a file the sandbox can
read, a submission can train on them and score full marks. So:

* the trusted grader picks the held-out rows with :func:`autograder.secret.hidden_rng`
  (the course secret, when one is set, decides which rows they are);
* every sandbox sees, in place of the data file that ships with scikit-learn, a copy
  *without* those rows (:func:`sandbox_masks`, bind-mounted over the original inside the
  sandbox's mount namespace), so no code in the sandbox can read them, however it looks;
* the check trains the student's model on the visible rows and scores it on the held-out
  rows, whose labels never leave the trusted process.

Where the kernel allows no mount namespace the sandbox can read the original file; the grader
then says so in its isolation warnings (:func:`autograder.limits.Isolation.warnings`).
"""

from __future__ import annotations

import gzip
import io
import os
from functools import lru_cache

import numpy as np

from autograder.secret import course_secret, hidden_rng

#: how many of the 1,797 digits the sandbox never sees (a fifth, as in the course's own split)
DIGITS_HELD_OUT = 360


def digits_file() -> str:
    """The file scikit-learn's ``load_digits`` reads: 1,797 lines of 64 pixels and a label."""
    import sklearn

    return os.path.join(os.path.dirname(sklearn.__file__), "datasets", "data", "digits.csv.gz")


@lru_cache(maxsize=4)
def _digits_rows(secret: str | None) -> tuple[tuple[bytes, ...], np.ndarray]:
    with gzip.open(digits_file(), "rb") as f:
        lines = tuple(line for line in f.read().split(b"\n") if line.strip())
    rng = hidden_rng(0, "heldout.digits")
    held = np.sort(rng.permutation(len(lines))[:DIGITS_HELD_OUT])
    return lines, held


def digits_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(X_visible, y_visible, X_held, y_held) in the trusted process.

    Shapes: X (N, 1, 8, 8) float32 in [0, 1] (the layout of ``load_digits(images=True)``), y (N,)
    int64. The visible part is what a sandbox's ``load_digits`` returns, in file order.
    """
    lines, held = _digits_rows(course_secret())
    data = np.loadtxt(io.BytesIO(b"\n".join(lines)), delimiter=",")
    X = (data[:, :-1] / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)
    y = data[:, -1].astype(np.int64)
    mask = np.zeros(len(y), dtype=bool)
    mask[held] = True
    return X[~mask], y[~mask], X[mask], y[mask]


def visible_digits_bytes() -> bytes:
    """The digits file as a sandbox sees it: gzip'd CSV without the held-out rows."""
    lines, held = _digits_rows(course_secret())
    keep = np.ones(len(lines), dtype=bool)
    keep[held] = False
    body = b"\n".join(line for line, k in zip(lines, keep) if k) + b"\n"
    return gzip.compress(body, mtime=0)


def sandbox_masks() -> dict[str, bytes]:
    """Files that every sandbox sees with other contents: ``{real path: what the sandbox reads}``."""
    return {digits_file(): visible_digits_bytes()}
