"""The chapter 4 checks have teeth: the shipped solution passes, planted mistakes fail.

The solution functions come from the nbgrader source notebook itself (setup and answer
cells, executed as a notebook kernel would). Each wrong implementation is a mistake a
student could plausibly make; each must make its check raise CheckFailed with a message
that names what is wrong.
"""

from __future__ import annotations

import math
from pathlib import Path

import nbformat
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from autograder.checks import ch04_cnn as checks
from autograder.compare import CheckFailed
from autograder.guard import ForbiddenCall, call_guarded, static_violations
from tests.notebook_kernel import (
    assert_hidden_tests_call_checks,
    kernel,
    planted,
    solution_namespace,
)

ASSIGNMENT = "ch04_cnn"
# The mistake the nbgrader round trip in test_autograder_cli plants: (answer cell, wrong code).
ROUND_TRIP_MISTAKE = ("ch04_max_pool2d_answer",
                      "def max_pool2d(x, kernel_size, stride=None):\n"
                      "    stride = kernel_size if stride is None else stride\n"
                      "    n, c, h, w = x.shape\n"
                      "    h_out, w_out = (h - kernel_size) // stride + 1, (w - kernel_size) // stride + 1\n"
                      "    out = torch.zeros(n, c, h_out, w_out)\n"
                      "    for i in range(h_out):\n"
                      "        for j in range(w_out):\n"  # average pooling instead of max
                      "            win = x[:, :, i * stride:i * stride + kernel_size, j * stride:j * stride + kernel_size]\n"
                      "            out[:, :, i, j] = win.mean(dim=(2, 3))\n"
                      "    return out\n")

pytestmark = pytest.mark.ch04

NOTEBOOK = Path(__file__).resolve().parents[1] / "solutions" / "ch04_cnn" / "ch04_cnn.ipynb"
GRADE_IDS = {
    "ch04_conv2d_loops": ("conv2d_loops", "conv2d_loops"),
    "ch04_conv2d_im2col": ("conv2d_im2col", "conv2d_im2col"),
    "ch04_max_pool2d": ("max_pool2d", "max_pool2d"),
    "ch04_train_cnn": ("train_cnn", "train_cnn"),
}


@pytest.fixture(scope="module")
def notebook():
    return nbformat.read(NOTEBOOK, as_version=4)


@pytest.fixture(scope="module")
def solution() -> dict:
    """The namespace left by the notebook's setup and answer cells (the reference solution)."""
    return solution_namespace(NOTEBOOK)


def check_of(grade_id: str):
    return getattr(checks, f"check_{GRADE_IDS[grade_id][0]}")


# ----------------------------------------------------------------- the notebook itself

def test_notebook_grade_ids_call_their_hidden_checks(notebook):
    assert_hidden_tests_call_checks(notebook, GRADE_IDS)


@pytest.mark.parametrize("grade_id", list(GRADE_IDS))
def test_solution_passes_check(solution, grade_id):
    check_of(grade_id)(solution[GRADE_IDS[grade_id][1]])


def test_solutions_use_nothing_forbidden(solution):
    for name, forbidden in (("conv2d_loops", checks.FORBIDDEN_CONV), ("conv2d_im2col", checks.FORBIDDEN_CONV),
                            ("max_pool2d", checks.FORBIDDEN_POOL)):
        assert static_violations(solution[name], modules=checks.FORBIDDEN_MODULES, callables=forbidden) == []
    assert static_violations(solution["train_cnn"], modules=checks.FORBIDDEN_CNN_MODULES) == []


def test_check_cases_cover_the_brief():
    cases = checks.CONV_CASES
    assert any(c[5] == c[6] == 1 for c in cases), "a 1x1 kernel"
    assert any(c[2] != c[3] for c in cases) and any(c[5] != c[6] for c in cases), "non-square input and kernel"
    assert any(c[7] > 1 and c[8] > 0 for c in cases), "padding > 0 with stride > 1"
    assert any((c[2] + 2 * c[8] - c[5]) % c[7] for c in cases), "a stride that does not divide"
    assert any(not c[9] for c in cases), "bias None"
    assert len({c[0] for c in cases}) >= 3 and len({c[1] for c in cases}) >= 3
    assert any(s is None for *_, s in checks.POOL_CASES) and any(s is not None for *_, s in checks.POOL_CASES)


# ----------------------------------------------------------------- planted mistakes: convolution

def _conv(x, weight, bias, stride, padding, *, flip=False, use_bias=True, pad="both", size="floor",
          use_stride=True, first_channel_only=False, bias_per_term=False):
    """A loop convolution with switches for the usual mistakes (no forbidden calls)."""
    s = stride if use_stride else 1
    if flip:
        weight = weight.flip(-2, -1)
    if first_channel_only:
        x, weight = x[:, :1], weight[:, :1]
    p = padding
    pads = {"both": (p, p, p, p), "none": (0, 0, 0, 0), "one_side": (p, 0, p, 0),
            "top_left_twice": (2 * p, 0, 2 * p, 0)}[pad]
    xp = F.pad(x, pads)
    c_out, c_in, kh, kw = weight.shape
    hp, wp = xp.shape[2], xp.shape[3]
    if size == "floor":
        h_out, w_out = (hp - kh) // s + 1, (wp - kw) // s + 1
    elif size == "no_plus_one":
        h_out, w_out = (hp - kh) // s, (wp - kw) // s
    else:  # ceil: windows that stick out over the edge are zero-filled
        h_out, w_out = math.ceil((hp - kh) / s) + 1, math.ceil((wp - kw) / s) + 1
        xp = F.pad(xp, (0, kw, 0, kh))
    out = torch.zeros(x.shape[0], c_out, h_out, w_out)
    for i in range(h_out):
        for j in range(w_out):
            patch = xp[:, :, i * s:i * s + kh, j * s:j * s + kw]
            for o in range(c_out):
                out[:, o, i, j] = (patch * weight[o]).sum(dim=(1, 2, 3))
                if bias is not None and use_bias and bias_per_term:
                    out[:, o, i, j] += c_in * kh * kw * bias[o]
    if bias is not None and use_bias and not bias_per_term:
        out = out + bias.view(1, -1, 1, 1)
    return out


def conv_flipped_kernel(x, weight, bias=None, stride=1, padding=0):
    return _conv(x, weight, bias, stride, padding, flip=True)


def conv_forgot_bias(x, weight, bias=None, stride=1, padding=0):
    return _conv(x, weight, bias, stride, padding, use_bias=False)


def conv_bias_in_every_term(x, weight, bias=None, stride=1, padding=0):
    return _conv(x, weight, bias, stride, padding, bias_per_term=True)


def conv_padding_ignored(x, weight, bias=None, stride=1, padding=0):
    return _conv(x, weight, bias, stride, padding, pad="none")


def conv_padding_one_side(x, weight, bias=None, stride=1, padding=0):
    return _conv(x, weight, bias, stride, padding, pad="one_side")


def conv_padding_all_top_left(x, weight, bias=None, stride=1, padding=0):
    return _conv(x, weight, bias, stride, padding, pad="top_left_twice")


def conv_no_plus_one(x, weight, bias=None, stride=1, padding=0):
    return _conv(x, weight, bias, stride, padding, size="no_plus_one")


def conv_ceil_size(x, weight, bias=None, stride=1, padding=0):
    return _conv(x, weight, bias, stride, padding, size="ceil")


def conv_stride_ignored(x, weight, bias=None, stride=1, padding=0):
    return _conv(x, weight, bias, stride, padding, use_stride=False)


def conv_first_channel_only(x, weight, bias=None, stride=1, padding=0):
    return _conv(x, weight, bias, stride, padding, first_channel_only=True)


def conv_bias_required(x, weight, bias, stride=1, padding=0):
    return _conv(x, weight, bias, stride, padding) + bias.view(1, -1, 1, 1) * 0  # crashes on bias=None


CONV_MISTAKES = planted(
    (conv_flipped_kernel, r"differs from torch\.nn\.functional\.conv2d.*you flipped the kernel.*cross-correlation"),
    (conv_forgot_bias, r"x_shape=\(1, 1, 5, 5\).*differs.*the bias is missing"),
    (conv_bias_in_every_term, r"the bias is added once per multiplied pixel"),
    (conv_padding_ignored, r"padding=1: shape .* but torch.nn.functional.conv2d gives .*padding=1 seems to be ignored"),
    (conv_padding_one_side, r"padding=1: shape .*padding=1 seems to be applied on one side only"),
    (conv_padding_all_top_left, r"padding=1 differs.*all the padding went on the top and left"),
    (conv_no_plus_one, r"x_shape=\(1, 1, 5, 5\).*shape \(1, 1, 2, 2\) .*gives \(1, 1, 3, 3\).*is the \+ 1 missing"),
    (conv_ceil_size, r"stride=2, padding=1: shape \(2, 2, 5, 5\) .*rounds down: floor"),
    (conv_stride_ignored, r"stride=2, padding=0: shape .*stride=2 seems to be ignored"),
    (conv_first_channel_only, r"only the first input channel is used"),
    (conv_bias_required, r"raised AttributeError.*bias=None"),
)


@pytest.mark.parametrize("wrong, match", CONV_MISTAKES)
def test_check_conv2d_loops_rejects(wrong, match):
    with pytest.raises(CheckFailed, match=match):
        checks.check_conv2d_loops(wrong)


def _im2col_conv(x, weight, bias, stride, padding, *, order="c_u_v", use_bias=True, flip=False):
    """im2col + matmul with switches for the usual mistakes (no forbidden calls)."""
    n, c_in, h, w = x.shape
    c_out, _, kh, kw = weight.shape
    if flip:
        weight = weight.flip(-2, -1)
    h_out, w_out = (h + 2 * padding - kh) // stride + 1, (w + 2 * padding - kw) // stride + 1
    xp = F.pad(x, (padding,) * 4)
    rows = []
    offsets = [(u, v) for u in range(kh) for v in range(kw)]
    if order == "c_v_u":
        offsets = [(u, v) for v in range(kw) for u in range(kh)]
    if order == "u_v_c":
        for u, v in offsets:
            for c in range(c_in):
                rows.append(xp[:, c, u:u + stride * (h_out - 1) + 1:stride, v:v + stride * (w_out - 1) + 1:stride])
    else:
        for c in range(c_in):
            for u, v in offsets:
                rows.append(xp[:, c, u:u + stride * (h_out - 1) + 1:stride, v:v + stride * (w_out - 1) + 1:stride])
    cols = torch.stack(rows, dim=1).reshape(n, c_in * kh * kw, h_out * w_out)
    out = weight.reshape(c_out, -1) @ cols
    if bias is not None and use_bias:
        out = out + bias.view(1, -1, 1)
    return out.reshape(n, c_out, h_out, w_out)


def im2col_rows_kernel_then_channel(x, weight, bias=None, stride=1, padding=0):
    return _im2col_conv(x, weight, bias, stride, padding, order="u_v_c")


def im2col_kernel_columns_first(x, weight, bias=None, stride=1, padding=0):
    return _im2col_conv(x, weight, bias, stride, padding, order="c_v_u")


def im2col_forgot_bias(x, weight, bias=None, stride=1, padding=0):
    return _im2col_conv(x, weight, bias, stride, padding, use_bias=False)


def im2col_flipped(x, weight, bias=None, stride=1, padding=0):
    return _im2col_conv(x, weight, bias, stride, padding, flip=True)


def im2col_no_padding(x, weight, bias=None, stride=1, padding=0):
    return _im2col_conv(x, weight, bias, stride, 0)


def im2col_returns_flat(x, weight, bias=None, stride=1, padding=0):
    out = _im2col_conv(x, weight, bias, stride, padding)
    return out.reshape(out.shape[0], out.shape[1], -1)  # forgot the final reshape


@pytest.mark.parametrize("wrong, match", planted(
    (im2col_rows_kernel_then_channel, r"conv2d_im2col output for x_shape=\(2, 3, 6, 6\).*"
                                      r"\(kernel row, kernel column, channel\) order"),
    (im2col_kernel_columns_first, r"kernel rows and columns are swapped"),
    (im2col_forgot_bias, r"conv2d_im2col output.*the bias is missing"),
    (im2col_flipped, r"conv2d_im2col output.*you flipped the kernel"),
    (im2col_no_padding, r"padding=1: shape .*padding=1 seems to be ignored"),
    (im2col_returns_flat, r"shape \(1, 1, 9\) but .*gives \(1, 1, 3, 3\)"),
))
def test_check_conv2d_im2col_rejects(wrong, match):
    with pytest.raises(CheckFailed, match=match):
        checks.check_conv2d_im2col(wrong)


# ----------------------------------------------------------------- planted mistakes: pooling

def _pool(x, kernel_size, stride, *, reduce="max", ceil=False, over_channels=False):
    n, c, h, w = x.shape
    k, s = kernel_size, stride
    if ceil:
        h_out, w_out = math.ceil((h - k) / s) + 1, math.ceil((w - k) / s) + 1
    else:
        h_out, w_out = (h - k) // s + 1, (w - k) // s + 1
    out = torch.zeros(n, 1 if over_channels else c, h_out, w_out)
    for i in range(h_out):
        for j in range(w_out):
            win = x[:, :, i * s:i * s + k, j * s:j * s + k]
            dims = (1, 2, 3) if over_channels else (2, 3)
            if reduce == "max":
                val = win.amax(dim=dims)
            elif reduce == "mean":
                val = win.mean(dim=dims)
            else:
                val = win.amin(dim=dims)
            out[:, :, i, j] = val.reshape(n, -1)
    return out


def pool_average(x, kernel_size, stride=None):
    return _pool(x, kernel_size, kernel_size if stride is None else stride, reduce="mean")


def pool_minimum(x, kernel_size, stride=None):
    return _pool(x, kernel_size, kernel_size if stride is None else stride, reduce="min")


def pool_stride_defaults_to_1(x, kernel_size, stride=1):
    return _pool(x, kernel_size, stride)


def pool_over_channels(x, kernel_size, stride=None):
    return _pool(x, kernel_size, kernel_size if stride is None else stride, over_channels=True)


def pool_ceil_mode(x, kernel_size, stride=None):
    return _pool(x, kernel_size, kernel_size if stride is None else stride, ceil=True)


def pool_stride_ignored(x, kernel_size, stride=None):
    return _pool(x, kernel_size, kernel_size)


@pytest.mark.parametrize("wrong, match", planted(
    (pool_average, r"max_pool2d output for x_shape=\(1, 1, 4, 4\).*this is average pooling"),
    (pool_minimum, r"smallest value of each window"),
    (pool_stride_defaults_to_1, r"stride=omitted: shape .*must default to kernel_size"),
    (pool_over_channels, r"x_shape=\(2, 3, 6, 8\).*pool each channel separately"),
    (pool_ceil_mode, r"kernel_size=3, stride=omitted: shape \(2, 2, 3, 3\) .*gives \(2, 2, 2, 2\).*rounds down"),
    (pool_stride_ignored, r"kernel_size=3, stride=1: shape .*"),
))
def test_check_max_pool2d_rejects(wrong, match):
    with pytest.raises(CheckFailed, match=match):
        checks.check_max_pool2d(wrong)


# ----------------------------------------------------------------- planted mistakes: the CNN

class _TinyNet(nn.Module):
    def __init__(self, width=16):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                  nn.Flatten(), nn.Linear(width * 16, 10))

    def forward(self, x):
        return self.body(x)


def _fit(model, X, y, epochs, lr=3e-3):
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(epochs):
        order = torch.randperm(len(X))
        for i in range(0, len(X), 64):
            idx = order[i:i + 64]
            loss = F.cross_entropy(model(X[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model


def cnn_not_trained(X_train, y_train):
    return _TinyNet()


def cnn_one_epoch_tiny(X_train, y_train):
    return _fit(_TinyNet(width=1), X_train, y_train, epochs=1)


def cnn_forgot_return(X_train, y_train):
    _fit(_TinyNet(), X_train, y_train, epochs=1)


def cnn_returns_state_dict(X_train, y_train):
    return _TinyNet().state_dict()


class _FlatOutput(nn.Module):
    def forward(self, x):
        return x.reshape(len(x), -1)[:, :7]  # seven "classes"


def cnn_wrong_output_size(X_train, y_train):
    return _FlatOutput()


@pytest.mark.parametrize("wrong, match", planted(
    (cnn_not_trained, r"train_cnn for X_train_shape=\(1438, 1, 8, 8\), split seed=0: test accuracy \d+\.\d% is "
                      r"below 97%.*trained long enough"),
    (cnn_one_epoch_tiny, r"test accuracy \d+\.\d% is below 97%"),
    (cnn_forgot_return, r"returned None \(is a `return` missing\?\)"),
    (cnn_returns_state_dict, r"expected the trained torch\.nn\.Module, got a OrderedDict"),
    (cnn_wrong_output_size, r"logits of shape \(359, 10\) \(one score per digit class\), got \(359, 7\)"),
))
def test_check_train_cnn_rejects(wrong, match):
    with pytest.raises(CheckFailed, match=match):
        checks.check_train_cnn(wrong)


def test_train_cnn_probe_returns_only_data(solution):
    X_train, y_train, X_test, _ = checks.digits_split()
    threads = torch.get_num_threads()
    out = checks.train_and_predict_probe(cnn_not_trained, X_train[:64], y_train[:64], X_test)
    assert set(out) == {"logits", "n_params"}
    assert out["logits"].shape == (len(X_test), 10) and not out["logits"].requires_grad
    assert torch.get_num_threads() == threads, "the probe must restore the thread count"


# ----------------------------------------------------------------- the guard

SETUP = "import numpy as np\nimport torch\nimport torch.nn.functional as F\nfrom torch import nn\n"


def test_guard_catches_f_conv2d():
    ns = kernel(SETUP, "def conv2d_loops(x, weight, bias=None, stride=1, padding=0):\n"
                       "    return F.conv2d(x, weight, bias, stride=stride, padding=padding)\n")
    with pytest.raises(ForbiddenCall, match=r"conv2d_loops uses F\.conv2d"):
        checks.check_conv2d_loops(ns["conv2d_loops"])


def test_guard_catches_nn_conv2d_module():
    ns = kernel(SETUP, "def conv2d_loops(x, weight, bias=None, stride=1, padding=0):\n"
                       "    layer = nn.Conv2d(weight.shape[1], weight.shape[0], weight.shape[2:], stride, padding)\n"
                       "    layer.weight.data = weight\n"
                       "    return layer(x)\n")
    with pytest.raises(ForbiddenCall, match=r"conv2d_loops uses nn\.Conv2d"):
        checks.check_conv2d_loops(ns["conv2d_loops"])


def test_guard_catches_f_unfold_in_a_helper():
    ns = kernel(SETUP, "def _cols(x, k, s, p):\n"
                       "    return F.unfold(x, k, stride=s, padding=p)\n",
                "def conv2d_im2col(x, weight, bias=None, stride=1, padding=0):\n"
                "    cols = _cols(x, weight.shape[2:], stride, padding)\n"
                "    return (weight.reshape(weight.shape[0], -1) @ cols)\n")
    with pytest.raises(ForbiddenCall, match=r"_cols uses F\.unfold"):
        checks.check_conv2d_im2col(ns["conv2d_im2col"])


def test_guard_catches_sliding_window_view():
    ns = kernel(SETUP + "from numpy.lib.stride_tricks import sliding_window_view\n",
                "def conv2d_im2col(x, weight, bias=None, stride=1, padding=0):\n"
                "    win = sliding_window_view(x.numpy(), weight.shape[2:], axis=(2, 3))\n"
                "    return torch.as_tensor(win.sum(axis=(-1, -2)))\n")
    with pytest.raises(ForbiddenCall, match=r"conv2d_im2col uses sliding_window_view"):
        checks.check_conv2d_im2col(ns["conv2d_im2col"])


def test_guard_catches_the_course_library():
    ns = kernel(SETUP, "def max_pool2d(x, kernel_size, stride=None):\n"
                       "    from llmcourse.conv import max_pool2d as mp\n"
                       "    return mp(x, kernel_size, stride)\n")
    with pytest.raises(ForbiddenCall, match=r"max_pool2d imports from llmcourse\.conv"):
        checks.check_max_pool2d(ns["max_pool2d"])


def test_guard_catches_max_pool_at_run_time_without_source():
    ns = kernel(SETUP, "def max_pool2d(x, kernel_size, stride=None):\n"
                       "    f = getattr(torch, 'max_' + 'pool2d')\n"
                       "    return f(x, kernel_size, stride or kernel_size)\n", keep_source=False)
    fn = ns["max_pool2d"]
    assert static_violations(fn, callables=checks.FORBIDDEN_POOL) == []
    with pytest.raises(ForbiddenCall, match=r"your code called .*max_pool2d"):
        checks.check_max_pool2d(fn)


def test_guard_catches_nn_maxpool_module():
    ns = kernel(SETUP, "def max_pool2d(x, kernel_size, stride=None):\n"
                       "    return nn.MaxPool2d(kernel_size, stride)(x)\n")
    with pytest.raises(ForbiddenCall, match=r"max_pool2d uses nn\.MaxPool2d"):
        checks.check_max_pool2d(ns["max_pool2d"])


def test_guard_catches_the_course_cnn_in_task_4():
    ns = kernel(SETUP, "def train_cnn(X_train, y_train):\n"
                       "    from llmcourse.cnn import DigitsCNN\n"
                       "    from llmcourse.training import train_classifier\n"
                       "    m = DigitsCNN()\n"
                       "    train_classifier(m, X_train, y_train, X_train, y_train, epochs=10)\n"
                       "    return m\n")
    with pytest.raises(ForbiddenCall, match=r"train_cnn imports from llmcourse\.cnn"):
        checks.check_train_cnn(ns["train_cnn"])


def test_guard_catches_tensor_unfold_method():
    ns = kernel(SETUP, "def conv2d_im2col(x, weight, bias=None, stride=1, padding=0):\n"
                       "    kh, kw = weight.shape[2:]\n"
                       "    xp = F.pad(x, (padding,) * 4)\n"
                       "    win = xp.unfold(2, kh, stride).unfold(3, kw, stride)\n"
                       "    out = torch.einsum('nchwuv,ocuv->nohw', win, weight)\n"
                       "    return out if bias is None else out + bias.view(1, -1, 1, 1)\n")
    with pytest.raises(ForbiddenCall):
        call_guarded(ns["conv2d_im2col"], torch.randn(1, 1, 5, 5), torch.randn(1, 1, 3, 3), task="t",
                     callables=checks.FORBIDDEN_CONV)
    with pytest.raises(ForbiddenCall, match=r"conv2d_im2col: your code called .*unfold"):
        checks.check_conv2d_im2col(ns["conv2d_im2col"])
