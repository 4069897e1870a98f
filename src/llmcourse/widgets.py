"""Widgets that work in JupyterLab and still show something in the built book.

A widget needs a running Python kernel: in the static HTML book its sliders
cannot call back into Python. ``interact(plot, **controls)`` therefore shows
the figure in one of two ways:

* in a live notebook, one output that carries two views of the same figure:
  the live widget (JupyterLab picks it) and a PNG snapshot at the default
  settings (a viewer without the widget manager picks that);
* while the book is built (``make book`` sets ``LLMCOURSE_BOOK_BUILD=1``),
  the PNG snapshot alone, so the HTML page holds an image and never a widget
  model or a widget's text form (``VBox(children=(HBox(...``).

``interact`` returns ``None`` on purpose. A cell whose last line is
``interact(...)`` then shows nothing more: had it returned the widget, IPython
would display that value a second time, and the static book, which cannot
render widgets, would print its text form under the figure.

Taught in: book/intro
"""

from __future__ import annotations

import base64
import io
from collections.abc import Callable

import ipywidgets as W
import matplotlib.pyplot as plt
from IPython.display import display

from llmcourse.progress import in_book_build

WIDGET_MIME = "application/vnd.jupyter.widget-view+json"
SNAPSHOT_TEXT = "Interactive figure: open this page as a notebook to use the controls."


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def interact(plot: Callable[..., object], **controls: W.ValueWidget) -> None:
    """Show ``plot(**values)`` under a set of controls, redrawn on every change.

    Args:
        plot: draws a figure from keyword arguments named like ``controls`` and
            returns the ``matplotlib.figure.Figure`` (it must not call ``plt.show``).
        controls: one ipywidget per keyword, e.g. ``w=FloatSlider(value=1, min=-3, max=3)``.

    Displays the controls with the figure below them (in the book build: the
    figure at the default settings, as a PNG). Returns ``None``, so a cell
    ending in ``interact(...)`` shows the figure once, with or without ``;``.
    """
    if not callable(plot):
        raise TypeError(f"plot must be callable, got {type(plot).__name__}")
    if not controls:
        raise ValueError("interact() needs at least one control, e.g. w=FloatSlider()")
    for name, ctl in controls.items():
        if not isinstance(ctl, W.ValueWidget):
            raise TypeError(f"control {name!r} must be an ipywidgets value widget, got {type(ctl).__name__}")

    def values() -> dict:
        return {name: ctl.value for name, ctl in controls.items()}

    def draw(fig_kwargs: dict):
        fig = plot(**fig_kwargs)
        if not hasattr(fig, "savefig"):
            raise TypeError(f"plot(...) must return a matplotlib Figure, got {type(fig).__name__}")
        return fig

    snapshot = _png(draw(values()))
    if in_book_build():  # static HTML: the image only, no widget model, no widget text
        display({"image/png": snapshot}, raw=True)
        return None

    out = W.Output()

    def redraw(_change=None):
        with out:
            out.clear_output(wait=True)
            fig = draw(values())
            display(fig)
            plt.close(fig)

    for ctl in controls.values():
        ctl.observe(redraw, names="value")
    box = W.VBox([W.HBox(list(controls.values()), layout=W.Layout(flex_flow="row wrap")), out])
    redraw()
    bundle = {WIDGET_MIME: box._repr_mimebundle_()[WIDGET_MIME], "image/png": snapshot,
              "text/plain": SNAPSHOT_TEXT}
    display(bundle, raw=True)
    return None
