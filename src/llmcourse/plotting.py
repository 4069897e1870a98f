"""One look for every figure in the course, and the plots chapters reuse.

``use_style()`` sets Matplotlib defaults (size, grid, colour cycle, fonts) so
that every chapter's figures match. The helpers draw things several chapters
need: learning curves and a classifier's decision regions in 2-D.

Taught in: book/intro
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import matplotlib as mpl
import matplotlib.pyplot as plt
import numpy as np

#: The course palette (colour-blind friendly, after Okabe & Ito 2008).
COLORS = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000")

_STYLE = {
    "figure.figsize": (6.4, 4.0),
    "figure.dpi": 100,
    "savefig.dpi": 120,
    "savefig.bbox": "tight",
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.titlesize": 12,
    "axes.labelsize": 11,
    "legend.frameon": False,
    "font.size": 10,
    "image.cmap": "viridis",
}


def use_style() -> None:
    """Apply the course's Matplotlib style to every later figure."""
    mpl.rcParams.update(_STYLE)
    mpl.rcParams["axes.prop_cycle"] = mpl.cycler(color=list(COLORS))


def plot_learning_curves(history: Mapping[str, Sequence[float]], *, xlabel: str = "epoch",
                         ylabel: str = "loss", logy: bool = False, ax=None, title: str | None = None):
    """Plot one line per named series, e.g. ``{"train": [...], "validation": [...]}``.

    Returns the Matplotlib ``Axes``.
    """
    if not isinstance(history, Mapping) or not history:
        raise ValueError("history must be a non-empty mapping of name -> sequence of numbers")
    for name, values in history.items():
        if len(values) == 0:
            raise ValueError(f"series {name!r} is empty")
    if ax is None:
        _, ax = plt.subplots()
    for name, values in history.items():
        ax.plot(np.arange(1, len(values) + 1), np.asarray(values, dtype=float), label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if logy:
        ax.set_yscale("log")
    if title:
        ax.set_title(title)
    ax.legend()
    return ax


def plot_decision_boundary(predict: Callable[[np.ndarray], np.ndarray], X: np.ndarray,
                           y: np.ndarray, *, ax=None, resolution: int = 200, padding: float = 0.5,
                           title: str | None = None):
    """Shade the regions a 2-D classifier assigns to each class, with the data on top.

    Args:
        predict: maps an (N, 2) array to N class labels (or scores; rounded to labels).
        X: (N, 2) points; y: (N,) integer labels.

    Returns the Matplotlib ``Axes``.
    """
    X = np.asarray(X, dtype=float)
    y = np.asarray(y)
    if X.ndim != 2 or X.shape[1] != 2:
        raise ValueError(f"X must have shape (N, 2), got {X.shape}")
    if y.shape != (X.shape[0],):
        raise ValueError(f"y must have shape ({X.shape[0]},), got {y.shape}")
    if ax is None:
        _, ax = plt.subplots(figsize=(4.5, 4.5))
    x0 = np.linspace(X[:, 0].min() - padding, X[:, 0].max() + padding, resolution)
    x1 = np.linspace(X[:, 1].min() - padding, X[:, 1].max() + padding, resolution)
    g0, g1 = np.meshgrid(x0, x1)
    grid = np.column_stack([g0.ravel(), g1.ravel()])
    z = np.asarray(predict(grid)).reshape(g0.shape)
    classes = np.unique(y)
    cmap = mpl.colors.ListedColormap([COLORS[i % len(COLORS)] for i in range(len(classes))])
    ax.contourf(g0, g1, z, levels=np.arange(len(classes) + 1) - 0.5, cmap=cmap, alpha=0.25)
    for i, c in enumerate(classes):
        pts = X[y == c]
        ax.scatter(pts[:, 0], pts[:, 1], s=18, color=COLORS[i % len(COLORS)], edgecolor="white",
                   linewidth=0.5, label=f"class {c}")
    ax.set_xlim(x0[0], x0[-1])
    ax.set_ylim(x1[0], x1[-1])
    ax.set_aspect("equal")
    if title:
        ax.set_title(title)
    ax.legend(loc="best")
    return ax
