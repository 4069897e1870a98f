"""Small tasks the course generates itself, from a seed, so they need no download.

Every builder is ``make_<thing>(..., seed)`` and returns NumPy arrays (or
strings): the same seed gives the same data on every machine.

Taught in: book/02-ml-basics
"""

from __future__ import annotations

import numpy as np

from llmcourse.reproducibility import numpy_rng

LOGIC_GATES = {
    "AND": (0, 0, 0, 1),
    "OR": (0, 1, 1, 1),
    "NAND": (1, 1, 1, 0),
    "NOR": (1, 0, 0, 0),
    "XOR": (0, 1, 1, 0),
    "XNOR": (1, 0, 0, 1),
}


def make_logic_gate(name: str) -> tuple[np.ndarray, np.ndarray]:
    """The truth table of a two-input gate.

    Returns X (4, 2) float with rows (0,0), (0,1), (1,0), (1,1) and y (4,) int in {0, 1}.

    >>> make_logic_gate("AND")[1]
    array([0, 0, 0, 1])
    """
    key = str(name).upper()
    if key not in LOGIC_GATES:
        raise ValueError(f"unknown gate {name!r}; choose one of {sorted(LOGIC_GATES)}")
    X = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=float)
    return X, np.array(LOGIC_GATES[key], dtype=np.int64)


def _check_n(n: int, name: str = "n", minimum: int = 1) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {n!r}")
    return int(n)


def make_linearly_separable(n: int = 100, d: int = 2, *, margin: float = 0.1, seed: int = 0):
    """Points in [-1, 1]^d labelled by a random hyperplane, keeping only those at least ``margin`` away.

    Returns X (n, d) float, y (n,) int in {0, 1}, and the true (w (d,), b) of the hyperplane.
    """
    n, d = _check_n(n), _check_n(d, "d")
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    rng = numpy_rng(seed)
    w = rng.normal(size=d)
    w /= np.linalg.norm(w)
    b = float(rng.uniform(-0.3, 0.3))
    kept: list[np.ndarray] = []
    while sum(len(k) for k in kept) < n:
        cand = rng.uniform(-1, 1, size=(4 * n, d))
        kept.append(cand[np.abs(cand @ w + b) >= margin])
    X = np.concatenate(kept)[:n]
    y = (X @ w + b > 0).astype(np.int64)
    return X, y, (w, b)


def make_regression(n: int = 200, d: int = 3, *, noise: float = 0.1, seed: int = 0):
    """y = X w + b + Gaussian noise, with random w and b.

    Returns X (n, d), y (n,), and the true (w (d,), b).
    """
    n, d = _check_n(n), _check_n(d, "d")
    if noise < 0:
        raise ValueError(f"noise must be >= 0, got {noise}")
    rng = numpy_rng(seed)
    X = rng.normal(size=(n, d))
    w = rng.normal(size=d)
    b = float(rng.normal())
    y = X @ w + b + noise * rng.normal(size=n)
    return X, y, (w, b)


def make_2d_classification(kind: str = "moons", n: int = 200, *, noise: float = 0.1, seed: int = 0):
    """Two-class toy problems in the plane: ``"blobs"``, ``"moons"``, ``"circles"``, ``"xor"`` or ``"spirals"``.

    Returns X (n, 2) float and y (n,) int in {0, 1} (classes alternate, so they are balanced).
    """
    n = _check_n(n, minimum=2)
    if noise < 0:
        raise ValueError(f"noise must be >= 0, got {noise}")
    rng = numpy_rng(seed)
    y = np.arange(n) % 2
    t = rng.uniform(0, 1, size=n)
    if kind == "blobs":
        centres = np.array([[-1.0, -1.0], [1.0, 1.0]])
        X = centres[y] + 0.6 * rng.normal(size=(n, 2))
    elif kind == "moons":
        angle = np.pi * t
        X = np.where(y[:, None] == 0,
                     np.column_stack([np.cos(angle), np.sin(angle)]),
                     np.column_stack([1 - np.cos(angle), 0.5 - np.sin(angle)]))
    elif kind == "circles":
        angle = 2 * np.pi * t
        radius = np.where(y == 0, 1.0, 0.5)
        X = radius[:, None] * np.column_stack([np.cos(angle), np.sin(angle)])
    elif kind == "xor":
        X = rng.uniform(-1, 1, size=(n, 2))
        X = np.sign(X) * (np.abs(X) * 0.8 + 0.2)  # keep points away from the axes
        sign = np.where(y == 0, 1.0, -1.0)
        X[:, 1] = np.abs(X[:, 1]) * np.sign(X[:, 0]) * sign
    elif kind == "spirals":
        r = 0.2 + 0.8 * t
        angle = 3 * np.pi * t + np.pi * y
        X = r[:, None] * np.column_stack([np.cos(angle), np.sin(angle)])
    else:
        raise ValueError(f"unknown kind {kind!r}; choose blobs, moons, circles, xor or spirals")
    return X + noise * rng.normal(size=X.shape), y.astype(np.int64)


def make_digit_strings(task: str = "reverse", n: int = 100, *, min_len: int = 3, max_len: int = 8,
                       seed: int = 0) -> list[tuple[str, str]]:
    """Pairs (source, target) of digit strings for sequence-to-sequence practice.

    ``task`` is ``"copy"``, ``"reverse"`` or ``"sort"``; lengths are uniform in [min_len, max_len].

    >>> make_digit_strings("reverse", 1, min_len=3, max_len=3, seed=0)[0][1] == \\
    ...     make_digit_strings("reverse", 1, min_len=3, max_len=3, seed=0)[0][0][::-1]
    True
    """
    n = _check_n(n)
    if not 1 <= min_len <= max_len:
        raise ValueError(f"need 1 <= min_len <= max_len, got {min_len}, {max_len}")
    ops = {"copy": lambda s: s, "reverse": lambda s: s[::-1], "sort": lambda s: "".join(sorted(s))}
    if task not in ops:
        raise ValueError(f"unknown task {task!r}; choose {sorted(ops)}")
    rng = numpy_rng(seed)
    pairs = []
    for _ in range(n):
        length = int(rng.integers(min_len, max_len + 1))
        src = "".join(str(int(d)) for d in rng.integers(0, 10, size=length))
        pairs.append((src, ops[task](src)))
    return pairs


def make_arithmetic(n: int = 100, *, max_value: int = 99, ops: str = "+-", seed: int = 0) -> list[tuple[str, str]]:
    """Questions like ``"12+7="`` with their exact answers (``"19"``): a task with a verifiable reward."""
    n = _check_n(n)
    if max_value < 1:
        raise ValueError(f"max_value must be >= 1, got {max_value}")
    if not ops or set(ops) - set("+-*"):
        raise ValueError(f"ops must be a non-empty string of '+', '-', '*', got {ops!r}")
    rng = numpy_rng(seed)
    out = []
    for _ in range(n):
        a, b = (int(v) for v in rng.integers(0, max_value + 1, size=2))
        op = ops[int(rng.integers(len(ops)))]
        value = a + b if op == "+" else a - b if op == "-" else a * b
        out.append((f"{a}{op}{b}=", str(value)))
    return out
