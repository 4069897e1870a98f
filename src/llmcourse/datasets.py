"""Data that ships with the software: nothing is downloaded at run time.

* ``load_digits`` - scikit-learn's bundled 8x8 handwritten digits (1,797 images,
  10 classes; the UCI "optdigits" test set, Alpaydin & Kaynak 1998).
* ``english_corpus`` - real English prose that ships with CPython itself: the
  help texts of ``pydoc_data.topics`` (about 0.5 MB, the Python reference
  manual's topic pages).
* ``load_text`` - an optional loader for your own text file, or a URL when you
  are online (cached, checked against a SHA-256 you give). Offline, a URL that
  is not cached fails with a clear message.

Taught in: book/intro
"""

from __future__ import annotations

import hashlib
import os
import re
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from llmcourse.reproducibility import numpy_rng


@dataclass(frozen=True)
class Split:
    """A train/test split of (features, labels) arrays.

    Shapes: ``X_train`` (N_train, F), ``y_train`` (N_train,), ``X_test`` (N_test, F), ``y_test`` (N_test,).
    """

    X_train: np.ndarray
    y_train: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray

    def __iter__(self):
        return iter((self.X_train, self.y_train, self.X_test, self.y_test))


def train_test_split(X: np.ndarray, y: np.ndarray, *, test_fraction: float = 0.2, seed: int = 0) -> Split:
    """Shuffle (N, ...) ``X`` and (N,) ``y`` together with ``seed`` and split off a test part."""
    X = np.asarray(X)
    y = np.asarray(y)
    if X.shape[0] != y.shape[0]:
        raise ValueError(f"X and y must have the same number of rows, got {X.shape[0]} and {y.shape[0]}")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    n = X.shape[0]
    n_test = int(round(n * test_fraction))
    if n_test == 0 or n_test == n:
        raise ValueError(f"test_fraction={test_fraction} leaves an empty part for {n} examples")
    order = numpy_rng(seed).permutation(n)
    test, train = order[:n_test], order[n_test:]
    return Split(X[train], y[train], X[test], y[test])


def load_digits(*, test_fraction: float = 0.2, seed: int = 0, images: bool = False) -> Split:
    """scikit-learn's 8x8 digits, pixel values scaled to [0, 1], split with ``seed``.

    Shapes: X (N, 64) float32, or (N, 1, 8, 8) with ``images=True`` (the layout
    convolutional layers expect); y (N,) int64 in 0..9. N = 1,797 in total.
    """
    from sklearn.datasets import load_digits as _sk_load_digits

    bunch = _sk_load_digits()
    X = (bunch.data / 16.0).astype(np.float32)
    if images:
        X = X.reshape(-1, 1, 8, 8)
    y = bunch.target.astype(np.int64)
    return train_test_split(X, y, test_fraction=test_fraction, seed=seed)


def english_corpus() -> str:
    """About 0.5 MB of English prose bundled with Python (``pydoc_data.topics``).

    The topic pages are joined in sorted order, each separated by a blank line,
    with runs of spaces collapsed, so the text is the same on every machine with
    the same Python version.
    """
    from pydoc_data.topics import topics

    pages = []
    for key in sorted(topics):
        text = topics[key].replace("\r\n", "\n")
        text = re.sub(r"[ \t]+", " ", text)
        text = re.sub(r"\n{3,}", "\n\n", text)
        pages.append(text.strip())
    return "\n\n".join(pages) + "\n"


def _cache_dir() -> Path:
    base = os.environ.get("LLMCOURSE_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "llmcourse")
    return Path(base)


def load_text(source: str | os.PathLike, *, sha256: str | None = None, cache_dir: str | os.PathLike | None = None,
              timeout: float = 30.0) -> str:
    """Read UTF-8 text from a local file or an http(s) URL (downloaded once, then cached).

    Args:
        source: a path, or a URL starting with ``http://`` or ``https://``.
        sha256: expected hex digest of the bytes; a mismatch raises ``ValueError``.
        cache_dir: where downloads are kept (default ``$LLMCOURSE_CACHE`` or ``~/.cache/llmcourse``).
    """
    src = os.fspath(source)
    if src.startswith(("http://", "https://")):
        if sha256 is None:
            raise ValueError("downloading needs sha256=... so the course can check what it got")
        cache = Path(cache_dir) if cache_dir is not None else _cache_dir()
        path = cache / sha256
        if not path.exists():
            try:
                with urllib.request.urlopen(src, timeout=timeout) as resp:  # noqa: S310 (user's own URL)
                    data = resp.read()
            except (urllib.error.URLError, OSError) as exc:
                raise ConnectionError(
                    f"could not download {src} ({exc}); the course runs offline with its bundled "
                    f"data - use english_corpus() or pass a local file path"
                ) from exc
            _check_digest(data, sha256, src)
            cache.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        data = path.read_bytes()
    else:
        path = Path(src)
        if not path.is_file():
            raise FileNotFoundError(f"no such text file: {path}")
        data = path.read_bytes()
    if sha256 is not None:
        _check_digest(data, sha256, src)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{src} is not UTF-8 text: {exc}") from exc


def _check_digest(data: bytes, sha256: str, what: str) -> None:
    got = hashlib.sha256(data).hexdigest()
    if got != sha256.lower():
        raise ValueError(f"checksum mismatch for {what}: expected sha256 {sha256}, got {got}")
