"""Progress bars for long loops, live in a notebook and tidy in the built book.

``progress(iterable)`` is ``tqdm`` with one course-specific twist: while the
book is being built (``make book`` sets ``LLMCOURSE_BOOK_BUILD=1``) nothing is
redrawn; a single summary line (``100%|####| 200/200 [00:03<00:00, 61.2it/s]``)
is printed when the loop ends, so the HTML page shows how long the loop took
without a wall of carriage returns. In JupyterLab the bar is the usual live
widget; in a terminal it is the usual text bar.

A note on the units tqdm prints: ``it/s`` is iterations per second and, when
one iteration takes longer than a second, tqdm flips to ``s/it``, seconds per
iteration (it is not "substitute it").

Taught in: book/intro
"""

from __future__ import annotations

import io
import os
import sys
from collections.abc import Iterable
from typing import TypeVar

from tqdm import std as _tqdm_std

T = TypeVar("T")


def in_book_build() -> bool:
    """True while ``make book`` executes the chapters."""
    return os.environ.get("LLMCOURSE_BOOK_BUILD", "") not in ("", "0")


class _SummaryTqdm(_tqdm_std.tqdm):
    """A tqdm that draws nothing while running and prints one line when closed."""

    def __init__(self, *args, **kwargs):
        kwargs["file"] = io.StringIO()
        super().__init__(*args, **kwargs)

    def close(self):
        if not self.disable and not getattr(self, "_summary_printed", False):
            self._summary_printed = True
            print(self.format_meter(**self.format_dict), file=sys.stdout, flush=True)
        super().close()


def progress(iterable: Iterable[T] | None = None, *, desc: str | None = None,
             total: int | None = None, disable: bool = False, **kwargs) -> _tqdm_std.tqdm:
    """Wrap ``iterable`` in a progress bar (or make a manual bar with ``total=``).

    Args:
        iterable: what to loop over; ``None`` makes a bar you ``update()`` yourself.
        desc: a short label shown before the bar.
        total: number of iterations when ``len(iterable)`` is not available.
        disable: turn the bar off entirely.

    Returns a tqdm object: iterate over it, or call ``.update(n)``, ``.set_postfix(...)``
    and ``.close()`` (or use it as a context manager).
    """
    if iterable is None and total is None:
        raise ValueError("progress() needs an iterable or total=")
    if total is not None and (not isinstance(total, int) or total < 0):
        raise ValueError(f"total must be a non-negative int, got {total!r}")
    if in_book_build():
        return _SummaryTqdm(iterable, desc=desc, total=total, disable=disable, **kwargs)
    from tqdm.auto import tqdm as auto_tqdm

    return auto_tqdm(iterable, desc=desc, total=total, disable=disable, **kwargs)
