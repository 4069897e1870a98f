"""Hidden-check inputs that the published seeds do not reveal.

The checks' case lists name small public seeds (``seed=0, 1, 2``), so that feedback can say
which case failed. Anyone can rerun a public seed, so with nothing else a student could
precompute the answers for exactly those inputs and hard-code them. An instructor therefore
sets a **course secret**: the environment variable ``AUTOGRADER_SECRET``, or a file named by
``AUTOGRADER_SECRET_FILE`` (its first line). Every random input of a hidden check is then drawn
from ``sha256(secret, label, seed)`` instead of ``seed`` itself. The secret is read only in the
grader's trusted process; the sandbox never receives it (its environment is scrubbed of both
variables, and the file should live outside the course folder, where the sandbox cannot see it).

Without a secret the checks use the published seeds, and the grader says so in its notes.
"""

from __future__ import annotations

import hashlib
import os

import numpy as np

ENV = "AUTOGRADER_SECRET"
FILE_ENV = "AUTOGRADER_SECRET_FILE"


def course_secret() -> str | None:
    """The instructor's secret, or None when none is set. Raises ``ValueError`` for an empty one."""
    value = os.environ.get(ENV)
    if value is None and os.environ.get(FILE_ENV):
        path = os.environ[FILE_ENV]
        try:
            with open(path, encoding="utf-8") as f:
                value = f.readline().strip()
        except OSError as exc:
            raise ValueError(f"{FILE_ENV}={path} cannot be read: {exc.strerror}") from None
    if value is None:
        return None
    if not value.strip():
        raise ValueError(f"the course secret ({ENV} or the file in {FILE_ENV}) is empty")
    return value


def hidden_seed(seed: int, label: str) -> int:
    """The seed a check really uses for its public ``seed`` of case family ``label``.

    ``seed`` itself when no secret is set; otherwise a 63-bit number derived from the secret,
    the label and the seed, so each case family gets its own inputs.
    """
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    secret = course_secret()
    if secret is None:
        return int(seed)
    digest = hashlib.sha256(f"{secret}\0{label}\0{int(seed)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def hidden_rng(seed: int, label: str) -> np.random.Generator:
    """A NumPy generator for public ``seed`` of case family ``label`` (see :func:`hidden_seed`)."""
    return np.random.default_rng(hidden_seed(seed, label))


def hidden_torch_generator(seed: int, label: str):
    """A ``torch.Generator`` for public ``seed`` of case family ``label`` (see :func:`hidden_seed`)."""
    import torch

    return torch.Generator().manual_seed(hidden_seed(seed, label))


def seeds_note() -> str:
    """One line for the grader's notes: where the hidden inputs came from."""
    secret = course_secret()
    if secret is None:
        return (f"hidden inputs: the published seeds (no course secret set; set {ENV} or {FILE_ENV} "
                f"so that students cannot precompute them)")
    fingerprint = hashlib.sha256(secret.encode()).hexdigest()[:8]
    return f"hidden inputs: drawn from the course secret (fingerprint {fingerprint})"
