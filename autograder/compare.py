"""Comparisons that explain themselves.

Every hidden check compares what the student's code returned with what a
reference library returned, through these helpers, so every failure reads
like "w differs for n=20, d=3, seed=1: max |got-want| 3.1e-02 at [2] (tol 1e-06)"
and never like "assertion failed".
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np


class CheckFailed(AssertionError):
    """A check found a difference; the message says what differs and for which input."""


def fail(message: str) -> None:
    """Raise :class:`CheckFailed` with ``message``."""
    raise CheckFailed(message)


def describe(inputs: str | Mapping | None) -> str:
    if not inputs:
        return ""
    if isinstance(inputs, Mapping):
        return " for " + ", ".join(f"{k}={v}" for k, v in inputs.items())
    return f" for {inputs}"


def to_array(value, *, what: str, inputs: str | Mapping | None = None) -> np.ndarray:
    """Turn a returned value (NumPy array, torch tensor, list, number) into a NumPy array.

    Raises :class:`CheckFailed` naming ``what`` when the value is ``None`` or not numeric.
    """
    where = describe(inputs)
    if value is None:
        fail(f"{what}{where}: your function returned None (is a `return` missing?)")
    if hasattr(value, "detach") and hasattr(value, "cpu"):  # a torch tensor
        value = value.detach().cpu().numpy()
    try:
        arr = np.asarray(value)
    except Exception as exc:  # noqa: BLE001 - any failure becomes feedback
        fail(f"{what}{where}: could not read the returned {type(value).__name__} as numbers ({exc})")
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        fail(f"{what}{where}: expected numbers, got {type(value).__name__} with dtype {arr.dtype}")
    return arr


Hint = tuple[str, Callable[[], object]]


def _first_hint(got_arr: np.ndarray, hints: Sequence[Hint], rtol: float, atol: float) -> str:
    """The explanation of the first hint whose wrong answer ``got_arr`` reproduces, or ``""``."""
    for explanation, wrong in hints:
        try:
            alt = wrong()
            alt = np.asarray(alt.detach().cpu().numpy() if hasattr(alt, "detach") else alt, dtype=float)
        except Exception:  # noqa: BLE001 - a hint that cannot be computed for this input is skipped
            continue
        if alt.shape == got_arr.shape and np.allclose(got_arr, alt, rtol=max(rtol, 1e-4), atol=max(atol, 1e-5)):
            return f" - {explanation}"
    return ""


def assert_close(got, want, *, what: str, inputs: str | Mapping | None = None,
                 rtol: float = 1e-5, atol: float = 1e-8, hints: Sequence[Hint] = ()) -> None:
    """Check that ``got`` matches ``want`` elementwise within ``atol + rtol * |want|``.

    Shapes must match exactly (no broadcasting); NaN or infinity where the
    reference is finite is reported as such. ``hints`` names common mistakes:
    ``(explanation, wrong)`` pairs where ``wrong()`` computes what that mistake
    returns; when the values differ and ``got`` equals a ``wrong()``, the message
    ends with its explanation (only the hints are computed lazily, on failure).
    """
    where = describe(inputs)
    want_arr = np.asarray(want.detach().cpu().numpy() if hasattr(want, "detach") else want, dtype=float)
    got_arr = to_array(got, what=what, inputs=inputs).astype(float)
    if got_arr.shape != want_arr.shape:
        fail(f"{what}{where}: shape {tuple(got_arr.shape)} but expected {tuple(want_arr.shape)}"
             + _first_hint(got_arr, hints, rtol, atol))
    bad_nonfinite = ~np.isfinite(got_arr) & np.isfinite(want_arr)
    if bad_nonfinite.any():
        idx = tuple(int(i) for i in np.argwhere(bad_nonfinite)[0])
        fail(f"{what}{where}: got {got_arr[idx]} at index {list(idx)} where the reference is "
             f"{want_arr[idx]:.6g} (numerical overflow or division by zero?)")
    if got_arr.size == 0:
        return
    diff = np.abs(got_arr - want_arr)
    diff = np.where(np.isfinite(want_arr), diff, np.where(got_arr == want_arr, 0.0, np.inf))
    tol = atol + rtol * np.abs(np.where(np.isfinite(want_arr), want_arr, 0.0))
    if (diff > tol).any():
        idx = np.unravel_index(int(np.argmax(diff - tol)), diff.shape)
        pos = f" at {list(int(i) for i in idx)}" if got_arr.ndim else ""
        fail(f"{what}{where}: max |got-want| {float(diff[idx]):.3g}{pos} "
             f"(got {got_arr[idx]:.6g}, expected {want_arr[idx]:.6g}; tol atol={atol:g}, rtol={rtol:g})"
             + _first_hint(got_arr, hints, rtol, atol))


def sharp_hints(hints: Sequence[Hint], got, want, *, rtol: float, atol: float) -> list[Hint]:
    """``hints`` for :func:`assert_close`, each offered only where it explains ``got``.

    assert_close matches a hint to within 1e-4, which is loose for small numbers (learning rates,
    the second step of AdamW) and lets a mistake that changes nothing on this input claim any
    nearby answer. Here a hint's wrong answer must fit ``got`` within 10x the check's tolerance
    and must differ from ``want``.
    """
    def plain(x):
        return np.asarray(x.detach().cpu().numpy() if hasattr(x, "detach") else x, dtype=float)

    got_arr, want_arr = plain(got), plain(want)

    def sharpen(wrong):
        def fn():
            w = plain(wrong())
            with np.errstate(invalid="ignore"):
                fits = w.shape == got_arr.shape and np.allclose(got_arr, w, rtol=10 * rtol, atol=10 * atol)
                same = w.shape == want_arr.shape and np.allclose(want_arr, w, rtol=rtol, atol=atol)
            if not fits or same:
                raise LookupError("this mistake does not explain the answer")
            return w
        return fn

    return [(why, sharpen(wrong)) for why, wrong in hints]


def assert_equal(got, want, *, what: str, inputs: str | Mapping | None = None) -> None:
    """Check exact equality of integer/boolean arrays (labels, counts, indices)."""
    where = describe(inputs)
    want_arr = np.asarray(want)
    got_arr = to_array(got, what=what, inputs=inputs)
    if got_arr.shape != want_arr.shape:
        fail(f"{what}{where}: shape {tuple(got_arr.shape)} but expected {tuple(want_arr.shape)}")
    mismatch = got_arr != want_arr
    if np.any(mismatch):
        n_bad = int(np.sum(mismatch))
        idx = tuple(int(i) for i in np.argwhere(mismatch)[0]) if got_arr.ndim else ()
        first = f"first at {list(idx)}: got {got_arr[idx]!r}, expected {want_arr[idx]!r}" if idx else \
            f"got {got_arr!r}, expected {want_arr!r}"
        fail(f"{what}{where}: {n_bad} of {max(got_arr.size, 1)} values differ ({first})")


def assert_scalar(got, *, what: str, inputs: str | Mapping | None = None) -> float:
    """Check that ``got`` is a single finite number and return it as a float."""
    where = describe(inputs)
    arr = to_array(got, what=what, inputs=inputs)
    if arr.size != 1:
        fail(f"{what}{where}: expected a single number, got an array of shape {tuple(arr.shape)}")
    value = float(arr.reshape(()))
    if not np.isfinite(value):
        fail(f"{what}{where}: got {value}, expected a finite number")
    return value


def probe_result(result, *, what: str, inputs: str | Mapping | None = None) -> dict:
    """The dict a probe returned, after its one failure convention.

    A probe (see :func:`autograder.guard.run_probe`) returns a dict of plain data; when it finds
    the student's objects unusable it returns ``{"problem": "what is wrong"}`` instead, which
    becomes a :class:`CheckFailed` naming ``what`` and ``inputs``.
    """
    if not isinstance(result, dict):
        fail(f"{what}{describe(inputs)}: the check's probe returned {type(result).__name__}, not a dict")
    if "problem" in result:
        fail(f"{what}{describe(inputs)}: {result['problem']}")
    return result


def unpack(result, names: tuple[str, ...], *, what: str, inputs: str | Mapping | None = None):
    """Check that a student's function returned a tuple/list of ``len(names)`` items and return it."""
    if isinstance(result, (tuple, list)) and len(result) == len(names):
        return result
    if result is None:
        got = "None (is a `return` missing?)"
    elif isinstance(result, (tuple, list)):
        got = f"a {type(result).__name__} of length {len(result)}"
    else:
        got = f"a {type(result).__name__}"
    fail(f"{what}{describe(inputs)}: expected a tuple ({', '.join(names)}), got {got}")
