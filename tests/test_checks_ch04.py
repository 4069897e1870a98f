"""The chapter 4 checks are fair both ways: correct answers get full marks, planted mistakes fail.

The solution functions come from the nbgrader source notebook itself (setup and answer cells,
executed as a notebook kernel would). Beside them, each task has correct implementations written
differently (NumPy loops in float64, einsum, shift-and-add, im2col by index gather or as_strided,
pooling by reshape, other networks, optimisers and a validation split made with scikit-learn),
which must pass too. Each wrong implementation is a mistake a student could plausibly make; each
must make its check raise CheckFailed with a message that names what is wrong.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from autograder.checks import ch04_cnn as checks
from autograder.compare import CheckFailed
from autograder.guard import ForbiddenCall, call_guarded, static_violations
from tests.notebook_kernel import assert_checks_hold, correct, kernel, planted, solution_of

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


def check_of(task):
    return getattr(checks, task.check)


# ----------------------------------------------------------------- the notebook itself

@pytest.mark.parametrize("task", checks.TASKS, ids=lambda t: t.grade_id)
def test_solution_passes_check(task):
    check_of(task)(solution_of(ASSIGNMENT)[task.name])


def test_check_cases_cover_the_brief():
    cases = checks.CONV_CASES
    assert any(c[5] == c[6] == 1 for c in cases), "a 1x1 kernel"
    assert any(c[2] != c[3] for c in cases) and any(c[5] != c[6] for c in cases), "non-square input and kernel"
    assert any(c[7] > 1 and c[8] > 0 for c in cases), "padding > 0 with stride > 1"
    assert any((c[2] + 2 * c[8] - c[5]) % c[7] for c in cases), "a stride that does not divide"
    assert any(not c[9] for c in cases), "bias None"
    assert len({c[0] for c in cases}) >= 3 and len({c[1] for c in cases}) >= 3
    assert any(s is None for *_, s in checks.POOL_CASES) and any(s is not None for *_, s in checks.POOL_CASES)


# ----------------------------------------------------------------- correct variants: full marks

def conv2d_loops_numpy_float64(x, weight, bias=None, stride=1, padding=0):
    xn, wn = x.numpy().astype(np.float64), weight.numpy().astype(np.float64)
    n, c_in, h, w = xn.shape
    c_out, _, kh, kw = wn.shape
    xp = np.pad(xn, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    h_out, w_out = (h + 2 * padding - kh) // stride + 1, (w + 2 * padding - kw) // stride + 1
    out = np.zeros((n, c_out, h_out, w_out))
    for b in range(n):
        for o in range(c_out):
            for i in range(h_out):
                for j in range(w_out):
                    win = xp[b, :, i * stride:i * stride + kh, j * stride:j * stride + kw]
                    out[b, o, i, j] = np.sum(win * wn[o]) + (0.0 if bias is None else float(bias[o]))
    return torch.from_numpy(out).float()


def conv2d_loops_einsum_per_pixel(x, weight, bias=None, stride=1, padding=0):
    n, c_in, h, w = x.shape
    c_out, _, kh, kw = weight.shape
    zeros_w = torch.zeros(n, c_in, h, padding)
    xp = torch.cat([zeros_w, x, zeros_w], dim=3)
    zeros_h = torch.zeros(n, c_in, padding, xp.shape[3])
    xp = torch.cat([zeros_h, xp, zeros_h], dim=2)
    rows = []
    for i in range(0, xp.shape[2] - kh + 1, stride):
        row = []
        for j in range(0, xp.shape[3] - kw + 1, stride):
            row.append(torch.einsum("ncuv,ocuv->no", xp[:, :, i:i + kh, j:j + kw], weight))
        rows.append(torch.stack(row, dim=-1))
    out = torch.stack(rows, dim=-2)
    return out if bias is None else out + bias[None, :, None, None]


def conv2d_loops_shift_and_add(x, weight, bias=None, stride=1, padding=0):
    # loops over the kernel offsets: each (c, u, v) adds a scaled, strided copy of the image
    n, c_in, h, w = x.shape
    c_out, _, kh, kw = weight.shape
    xp = F.pad(x, [padding] * 4)
    h_out, w_out = (h + 2 * padding - kh) // stride + 1, (w + 2 * padding - kw) // stride + 1
    out = torch.zeros(n, c_out, h_out, w_out)
    for c in range(c_in):
        for u in range(kh):
            for v in range(kw):
                shifted = xp[:, c, u:u + (h_out - 1) * stride + 1:stride, v:v + (w_out - 1) * stride + 1:stride]
                out += weight[:, c, u, v][None, :, None, None] * shifted[:, None]
    if bias is not None:
        out += bias.reshape(1, -1, 1, 1)
    return out


def conv2d_im2col_window_by_window(x, weight, bias=None, stride=1, padding=0):
    n, c_in, h, w = x.shape
    c_out, _, kh, kw = weight.shape
    h_out, w_out = (h + 2 * padding - kh) // stride + 1, (w + 2 * padding - kw) // stride + 1
    xp = F.pad(x, (padding, padding, padding, padding))
    cols = torch.zeros(n, c_in * kh * kw, h_out * w_out)
    for i in range(h_out):
        for j in range(w_out):
            cols[:, :, i * w_out + j] = xp[:, :, i * stride:i * stride + kh, j * stride:j * stride + kw].reshape(n, -1)
    out = torch.matmul(weight.view(c_out, -1), cols)
    if bias is not None:
        out = out + bias[:, None]
    return out.view(n, c_out, h_out, w_out)


def conv2d_im2col_gather_indices(x, weight, bias=None, stride=1, padding=0):
    n, c_in, h, w = x.shape
    c_out, _, kh, kw = weight.shape
    h_out, w_out = (h + 2 * padding - kh) // stride + 1, (w + 2 * padding - kw) // stride + 1
    xp = F.pad(x, (padding,) * 4)
    # row index of pixel (u, i) is i*stride + u; build (kH*kW, H_out*W_out) index grids
    u = torch.arange(kh).repeat_interleave(kw)            # (kH*kW,)
    v = torch.arange(kw).repeat(kh)
    i = torch.arange(h_out).repeat_interleave(w_out)      # (H_out*W_out,)
    j = torch.arange(w_out).repeat(h_out)
    rows = u[:, None] + stride * i[None, :]
    cols_ = v[:, None] + stride * j[None, :]
    cols = xp[:, :, rows, cols_]                          # (N, C_in, kH*kW, H_out*W_out)
    cols = cols.reshape(n, c_in * kh * kw, h_out * w_out)
    out = weight.reshape(c_out, -1) @ cols
    if bias is not None:
        out += bias.view(1, c_out, 1)
    return out.reshape(n, c_out, h_out, w_out)


def conv2d_im2col_as_strided_float64(x, weight, bias=None, stride=1, padding=0):
    n, c_in, h, w = x.shape
    c_out, _, kh, kw = weight.shape
    xp = F.pad(x.double(), (padding,) * 4).contiguous()
    h_out, w_out = (h + 2 * padding - kh) // stride + 1, (w + 2 * padding - kw) // stride + 1
    sn, sc, sh, sw = xp.stride()
    win = xp.as_strided((n, c_in, kh, kw, h_out, w_out), (sn, sc, sh, sw, sh * stride, sw * stride))
    cols = win.reshape(n, c_in * kh * kw, h_out * w_out)
    out = torch.einsum("ok,nkp->nop", weight.double().reshape(c_out, -1), cols)
    if bias is not None:
        out = out + bias.double()[None, :, None]
    return out.reshape(n, c_out, h_out, w_out).float()


def max_pool2d_window_loops(x, kernel_size, stride=None):
    s = kernel_size if stride is None else stride
    n, c, h, w = x.shape
    h_out, w_out = (h - kernel_size) // s + 1, (w - kernel_size) // s + 1
    out = torch.empty(n, c, h_out, w_out)
    for i in range(h_out):
        for j in range(w_out):
            out[:, :, i, j] = x[:, :, i * s:i * s + kernel_size, j * s:j * s + kernel_size].amax(dim=(-2, -1))
    return out


def max_pool2d_reshape_or_strided(x, kernel_size, stride=None):
    k = kernel_size
    s = k if stride is None else stride
    n, c, h, w = x.shape
    h_out, w_out = (h - k) // s + 1, (w - k) // s + 1
    if s == k:  # non-overlapping windows: crop, then one reshape
        blocks = x[:, :, :h_out * k, :w_out * k].reshape(n, c, h_out, k, w_out, k)
        return blocks.amax(dim=5).amax(dim=3)
    windows = torch.stack([x[:, :, u:u + s * (h_out - 1) + 1:s, v:v + s * (w_out - 1) + 1:s]
                           for u in range(k) for v in range(k)])
    return windows.max(dim=0).values


def max_pool2d_numpy_as_strided(x, kernel_size, stride=None):
    k = kernel_size
    s = stride or k
    a = np.ascontiguousarray(x.numpy())
    n, c, h, w = a.shape
    h_out, w_out = (h - k) // s + 1, (w - k) // s + 1
    sn, sc, sh, sw = a.strides
    win = np.lib.stride_tricks.as_strided(a, (n, c, h_out, w_out, k, k), (sn, sc, sh * s, sw * s, sh, sw))
    return torch.from_numpy(win.max(axis=(4, 5)).copy())


def train_cnn_validation_split(X_train, y_train):
    """Keeps the epoch with the best accuracy on a validation split made with scikit-learn."""
    from sklearn.model_selection import train_test_split

    X_fit, X_val, y_fit, y_val = train_test_split(X_train, y_train, test_size=0.1, random_state=0,
                                                  stratify=y_train)
    model = nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Flatten(), nn.Linear(256, 10))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    best, best_acc = None, -1.0
    for _ in range(25):
        model.train()
        perm = torch.randperm(len(X_fit))
        for i in range(0, len(X_fit), 64):
            idx = perm[i:i + 64]
            opt.zero_grad()
            F.cross_entropy(model(X_fit[idx]), y_fit[idx]).backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            acc = (model(X_val).argmax(1) == y_val).float().mean().item()
        if acc > best_acc:
            best, best_acc = copy.deepcopy(model.state_dict()), acc
    model.load_state_dict(best)
    return model


class WideOneConv(nn.Module):
    """One wide convolution, then a hidden linear layer."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 32, kernel_size=3)          # (B, 32, 6, 6)
        self.pool = nn.MaxPool2d(2)                          # (B, 32, 3, 3)
        self.fc1 = nn.Linear(32 * 9, 64)
        self.fc2 = nn.Linear(64, 10)

    def forward(self, x):
        x = self.pool(torch.relu(self.conv(x)))
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))


def train_cnn_sgd_momentum(X_train, y_train):
    model = WideOneConv()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True)
    loss_fn = nn.CrossEntropyLoss()
    data = torch.utils.data.TensorDataset(X_train, y_train)
    loader = torch.utils.data.DataLoader(data, batch_size=100, shuffle=True)
    for _ in range(15):
        for xb, yb in loader:
            opt.zero_grad()
            loss_fn(model(xb), yb).backward()
            opt.step()
    return model


def train_cnn_batchnorm_adamw_schedule(X_train, y_train):
    model = nn.Sequential(
        nn.Conv2d(1, 24, 3, padding=1, bias=False), nn.BatchNorm2d(24), nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(24, 48, 3, padding=1, bias=False), nn.BatchNorm2d(48), nn.ReLU(),
        nn.MaxPool2d(2), nn.Flatten(), nn.Dropout(0.2), nn.Linear(48 * 4, 10))
    epochs, batch = 8, 64
    steps = epochs * ((len(X_train) + batch - 1) // batch)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-2)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-2, total_steps=steps)
    x = (X_train - 0.5) / 0.5   # the network sees inputs in [-1, 1] ...
    for _ in range(epochs):
        model.train()
        for idx in torch.randperm(len(x)).split(batch):
            loss = F.cross_entropy(model(x[idx]), y_train[idx], label_smoothing=0.05)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    return nn.Sequential(Rescale(), model)   # ... so the returned model rescales its input itself


class Rescale(nn.Module):
    def forward(self, x):
        return (x - 0.5) / 0.5


CORRECT = {
    "check_conv2d_loops": (conv2d_loops_numpy_float64, conv2d_loops_einsum_per_pixel, conv2d_loops_shift_and_add),
    "check_conv2d_im2col": (conv2d_im2col_window_by_window, conv2d_im2col_gather_indices,
                            conv2d_im2col_as_strided_float64),
    "check_max_pool2d": (max_pool2d_window_loops, max_pool2d_reshape_or_strided, max_pool2d_numpy_as_strided),
    "check_train_cnn": (train_cnn_validation_split, train_cnn_sgd_momentum, train_cnn_batchnorm_adamw_schedule),
}


@pytest.mark.parametrize("fn", correct(*CORRECT["check_conv2d_loops"]))
def test_check_conv2d_loops_gives_full_marks_to_correct_variants(fn):
    checks.check_conv2d_loops(fn)


@pytest.mark.parametrize("fn", correct(*CORRECT["check_conv2d_im2col"]))
def test_check_conv2d_im2col_gives_full_marks_to_correct_variants(fn):
    checks.check_conv2d_im2col(fn)


@pytest.mark.parametrize("fn", correct(*CORRECT["check_max_pool2d"]))
def test_check_max_pool2d_gives_full_marks_to_correct_variants(fn):
    checks.check_max_pool2d(fn)


@pytest.mark.parametrize("fn", correct(*CORRECT["check_train_cnn"]))
def test_check_train_cnn_gives_full_marks_to_correct_variants(fn):
    checks.check_train_cnn(fn)


def test_train_cnn_may_use_scikit_learn():
    """Nothing in task 4 forbids a validation split made with sklearn's train_test_split."""
    assert not any(m.startswith("sklearn") for m in checks.TRAIN_CNN.modules)
    assert static_violations(train_cnn_validation_split, modules=checks.TRAIN_CNN.modules) == []


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
    (conv_flipped_kernel, r"\(vs torch\.nn\.functional\.conv2d\) for .*max \|got-want\|.*you flipped the kernel.*cross-correlation"),
    (conv_forgot_bias, r"conv2d_loops output \(vs torch\.nn\.functional\.conv2d\) for x_shape=\(1, 1, 5, 5\).*the bias is missing"),
    (conv_bias_in_every_term, r"the bias is added once per multiplied pixel"),
    (conv_padding_ignored, r"padding=1: shape .* but torch.nn.functional.conv2d gives .*padding=1 seems to be ignored"),
    (conv_padding_one_side, r"padding=1: shape .*padding=1 seems to be applied on one side only"),
    (conv_padding_all_top_left, r"padding=1: max \|got-want\|.*all the padding went on the top and left"),
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


IM2COL_MISTAKES = planted(
    (im2col_rows_kernel_then_channel, r"conv2d_im2col output \(vs torch\.nn\.functional\.conv2d\) for x_shape=\(2, 3, 6, 6\).*"
                                      r"\(kernel row, kernel column, channel\) order"),
    (im2col_kernel_columns_first, r"kernel rows and columns are swapped"),
    (im2col_forgot_bias, r"conv2d_im2col output.*the bias is missing"),
    (im2col_flipped, r"conv2d_im2col output.*you flipped the kernel"),
    (im2col_no_padding, r"padding=1: shape .*padding=1 seems to be ignored"),
    (im2col_returns_flat, r"shape \(1, 1, 9\) but .*gives \(1, 1, 3, 3\)"),
)


@pytest.mark.parametrize("wrong, match", IM2COL_MISTAKES)
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


POOL_MISTAKES = planted(
    (pool_average, r"max_pool2d output \(vs torch\.nn\.functional\.max_pool2d\) for x_shape=\(1, 1, 4, 4\).*this is average pooling"),
    (pool_minimum, r"smallest value of each window"),
    (pool_stride_defaults_to_1, r"stride=omitted: shape .*must default to kernel_size"),
    (pool_over_channels, r"x_shape=\(2, 3, 6, 8\).*pool each channel separately"),
    (pool_ceil_mode, r"kernel_size=3, stride=omitted: shape \(2, 2, 3, 3\) .*gives \(2, 2, 2, 2\).*rounds down"),
    (pool_stride_ignored, r"kernel_size=3, stride=1: shape .*"),
)


@pytest.mark.parametrize("wrong, match", POOL_MISTAKES)
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
    (cnn_not_trained, r"train_cnn for X_train_shape=\(1437, 1, 8, 8\), held-out digits=360: accuracy on the "
                      r"held-out digits \d+\.\d% is below 96%.*trained long enough"),
    (cnn_one_epoch_tiny, r"accuracy on the held-out digits \d+\.\d% is below 96%"),
    (cnn_forgot_return, r"returned None \(is a `return` missing\?\)"),
    (cnn_returns_state_dict, r"expected the trained torch\.nn\.Module, got a OrderedDict"),
    (cnn_wrong_output_size, r"logits of shape \(360, 10\) \(one score per digit class\), got \(360, 7\)"),
))
def test_check_train_cnn_rejects(wrong, match):
    with pytest.raises(CheckFailed, match=match):
        checks.check_train_cnn(wrong)


def test_train_cnn_probes_restore_threads_and_return_only_data():
    from autograder.heldout import digits_split

    X_train, y_train, X_test, _ = (torch.from_numpy(a) for a in digits_split())
    threads = torch.get_num_threads()
    model = checks.train_probe(cnn_not_trained, X_train[:64], y_train[:64])
    assert torch.get_num_threads() == threads, "the probe must restore the thread count"
    out = checks.predict_probe(model, X_test)
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


def test_guard_lets_the_solutions_and_the_correct_variants_through():
    for task in checks.TASKS:
        for fn in (solution_of(ASSIGNMENT)[task.name], *CORRECT[task.check]):
            assert static_violations(fn, modules=task.modules, callables=task.callables) == [], fn.__name__


# ----------------------------------------------------------------- under a course secret

SECRETS = ("course secret A", "another secret", "3")
MISTAKES = {"check_conv2d_loops": CONV_MISTAKES, "check_conv2d_im2col": IM2COL_MISTAKES,
            "check_max_pool2d": POOL_MISTAKES}


@pytest.mark.parametrize("secret", SECRETS)
def test_checks_hold_under_several_course_secrets(monkeypatch, secret):
    """With a secret the inputs change; the solution and the correct variants still pass, mistakes fail.

    train_cnn is left out: it trains networks, and its held-out data has tests of its own.
    """
    monkeypatch.setenv("AUTOGRADER_SECRET", secret)
    assert_checks_hold(ASSIGNMENT, checks, checks.TASKS[:3], CORRECT, MISTAKES)


def test_course_secret_changes_the_inputs(monkeypatch):
    seen = []

    def record(x, kernel_size, stride=None):
        seen.append(x.clone())
        return max_pool2d_window_loops(x, kernel_size, stride)

    checks.check_max_pool2d(record)
    monkeypatch.setenv("AUTOGRADER_SECRET", SECRETS[0])
    checks.check_max_pool2d(record)
    public, hidden = seen[:len(checks.POOL_CASES)], seen[len(checks.POOL_CASES):]
    assert [p.shape for p in public] == [h.shape for h in hidden]
    assert not any(torch.equal(p, h) for p, h in zip(public, hidden)), "the secret should change every input"
