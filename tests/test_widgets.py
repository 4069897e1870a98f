import base64

import ipywidgets as W
import matplotlib.pyplot as plt
import pytest

from llmcourse import widgets


def _figure(a=1.0):
    fig, ax = plt.subplots()
    ax.plot([0, 1], [0, a])
    return fig


def _capture(monkeypatch):
    shown = []
    monkeypatch.setattr(widgets, "display", lambda obj, raw=False: shown.append((obj, raw)))
    return shown


def test_interact_displays_live_widget_and_png_snapshot(monkeypatch):
    monkeypatch.delenv("LLMCOURSE_BOOK_BUILD", raising=False)
    shown = _capture(monkeypatch)
    slider = W.FloatSlider(value=2.0, min=0, max=3)
    result = widgets.interact(_figure, a=slider)
    assert result is None, "interact must return None, or a cell ending in interact(...) shows the widget twice"
    bundles = [obj for obj, raw in shown if raw]
    assert len(bundles) == 1
    bundle = bundles[0]
    assert widgets.WIDGET_MIME in bundle
    assert base64.b64decode(bundle["image/png"])[:8] == b"\x89PNG\r\n\x1a\n"
    assert bundle["text/plain"] == widgets.SNAPSHOT_TEXT  # never the widget's repr, VBox(children=...)
    redraws = len(shown)
    slider.value = 1.0  # moving the control redraws into the output area
    assert len(shown) == redraws + 1


def test_interact_in_book_build_shows_only_the_png(monkeypatch):
    monkeypatch.setenv("LLMCOURSE_BOOK_BUILD", "1")
    shown = _capture(monkeypatch)
    assert widgets.interact(_figure, a=W.FloatSlider(value=2.0, min=0, max=3)) is None
    assert len(shown) == 1
    bundle, raw = shown[0]
    assert raw and set(bundle) == {"image/png"}, f"the static book must get a PNG only, got {sorted(bundle)}"
    assert base64.b64decode(bundle["image/png"])[:8] == b"\x89PNG\r\n\x1a\n"


def test_interact_rejects_bad_arguments():
    with pytest.raises(TypeError, match="callable"):
        widgets.interact(42, a=W.FloatSlider())
    with pytest.raises(ValueError, match="at least one control"):
        widgets.interact(_figure)
    with pytest.raises(TypeError, match="value widget"):
        widgets.interact(_figure, a=3)


def test_interact_requires_plot_to_return_a_figure():
    with pytest.raises(TypeError, match="Figure"):
        widgets.interact(lambda a: None, a=W.FloatSlider())
