"""Widgets that work in JupyterLab and still show something in the built book.

A widget needs a running Python kernel: in the static HTML book its sliders
cannot call back into Python. ``interact(plot, **controls)`` therefore sends
*two* views of the same output: the live widget (JupyterLab picks it) and a PNG
snapshot of the figure at the default settings (the book picks it, because its
``_config.yml`` drops the widget view). Readers of the HTML see the figure and
an invitation to open the page as a notebook to move the sliders.

Taught in: book/intro
"""

from __future__ import annotations

import base64
import io
from collections.abc import Callable

import ipywidgets as W
import matplotlib.pyplot as plt
from IPython.display import display

WIDGET_MIME = "application/vnd.jupyter.widget-view+json"


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def interact(plot: Callable[..., object], **controls: W.ValueWidget) -> W.VBox:
    """Show ``plot(**values)`` under a set of controls, redrawn on every change.

    Args:
        plot: draws a figure from keyword arguments named like ``controls`` and
            returns the ``matplotlib.figure.Figure`` (it must not call ``plt.show``).
        controls: one ipywidget per keyword, e.g. ``w=FloatSlider(value=1, min=-3, max=3)``.

    Returns the ``VBox`` that was displayed (controls on top, figure below).
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
    snapshot = _png(draw(values()))
    redraw()
    bundle = dict(box._repr_mimebundle_())
    bundle["image/png"] = snapshot
    bundle["text/plain"] = "Interactive figure: open this page as a notebook to use the controls."
    display(bundle, raw=True)
    return box
