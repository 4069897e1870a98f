import matplotlib as mpl
import matplotlib.pyplot as plt
import numpy as np
import pytest

from llmcourse.plotting import COLORS, plot_decision_boundary, plot_learning_curves, use_style


def test_use_style_sets_the_course_palette():
    use_style()
    cycle = [c["color"] for c in mpl.rcParams["axes.prop_cycle"]]
    assert cycle[: len(COLORS)] == list(COLORS)
    assert mpl.rcParams["axes.grid"] is True


def test_learning_curves_draw_one_line_per_series():
    ax = plot_learning_curves({"train": [3, 2, 1], "validation": [3, 2.5, 2.2]})
    assert [line.get_label() for line in ax.get_lines()] == ["train", "validation"]
    np.testing.assert_array_equal(ax.get_lines()[0].get_xdata(), [1, 2, 3])
    plt.close("all")


def test_learning_curves_reject_empty_input():
    with pytest.raises(ValueError):
        plot_learning_curves({})
    with pytest.raises(ValueError, match="empty"):
        plot_learning_curves({"train": []})


def test_decision_boundary_shades_the_predicted_regions():
    X = np.array([[-1.0, 0.0], [1.0, 0.0]])
    y = np.array([0, 1])
    ax = plot_decision_boundary(lambda P: (P[:, 0] > 0).astype(int), X, y, resolution=20)
    assert len(ax.collections) >= 3  # filled contours + two scatter groups
    plt.close("all")
    with pytest.raises(ValueError, match=r"\(N, 2\)"):
        plot_decision_boundary(lambda P: P[:, 0], np.zeros((3, 3)), np.zeros(3))
