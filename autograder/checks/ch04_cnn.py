"""Hidden checks for the chapter 4 exercise: convolution, im2col, max-pooling, a digits CNN.

References, all computed live:

* ``conv2d_loops`` / ``conv2d_im2col`` - ``torch.nn.functional.conv2d`` in float64 over random
  shapes, channels, batch sizes, strides and paddings (1x1 kernels, non-square inputs and
  kernels, padding > 0 with stride > 1, a stride that does not divide the input, bias None);
* ``max_pool2d`` - ``torch.nn.functional.max_pool2d`` (stride given, and omitted: then it
  must default to the kernel size);
* ``train_cnn`` - a probe builds and trains the student's network on the course's seeded
  digits split (``llmcourse.datasets.load_digits(images=True, seed=0)``) and returns its
  predictions for the held-out test images; the check computes the accuracy itself and
  asks for at least 97 %.

When a result is wrong, the check tries the usual mistakes (a flipped kernel, a missing
bias, one-sided padding, only the first input channel, a wrong im2col row order, average
instead of max, a wrong output-size formula) and names the one that reproduces it.

Inputs are torch float32 tensors; outputs may be torch tensors or NumPy arrays.

Taught in: book/04-cnn
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from autograder.compare import assert_close, describe, fail, to_array
from autograder.guard import call_student, run_probe

# Library code that would do the task for the student (tasks a-c).
FORBIDDEN_MODULES = ("llmcourse.conv", "llmcourse.cnn", "scipy.signal", "scipy.ndimage")
FORBIDDEN_CONV = (
    "torch.nn.functional.conv2d", "torch.conv2d", "torch.nn.Conv2d",
    "torch.nn.functional.conv1d", "torch.nn.functional.conv3d", "torch.convolution", "torch._convolution",
    "torch.nn.functional.conv_transpose2d",
    "torch.nn.functional.unfold", "torch.nn.Unfold", "torch._C._nn.im2col", "torch.Tensor.unfold",
    "numpy.lib.stride_tricks.sliding_window_view",
)
FORBIDDEN_POOL = (
    "torch.nn.functional.max_pool2d", "torch.max_pool2d", "torch.nn.MaxPool2d",
    "torch.nn.functional.max_pool2d_with_indices", "torch._C._nn.max_pool2d_with_indices",
    "torch.max_pool2d_with_indices", "torch.nn.functional.adaptive_max_pool2d",
    "torch.nn.functional.avg_pool2d", "torch.nn.functional.lp_pool2d",
) + FORBIDDEN_CONV
# Task (d) may use torch.nn freely, but not the course's ready-made network and training loop.
FORBIDDEN_CNN_MODULES = ("llmcourse.cnn", "llmcourse.training", "sklearn")
MIN_ACCURACY = 0.97
DIGITS_SEED = 0


def _call(fn, *args, task: str, inputs: dict, callables: tuple, **kwargs):
    """Call the student's function under the guard with this task's forbidden names."""
    return call_student(fn, *args, task=task, inputs=inputs, modules=FORBIDDEN_MODULES, callables=callables,
                        **kwargs)


def _expect_function(fn, task: str) -> None:
    if not getattr(fn, "__llmcourse_remote__", False) and not callable(fn):
        fail(f"{task}: expected a function, got {type(fn).__name__}")


# ----------------------------------------------------------------- convolution

# (N, C_in, H, W, C_out, kH, kW, stride, padding, bias?)
CONV_CASES = (
    (1, 1, 5, 5, 1, 3, 3, 1, 0, True),     # the smallest textbook case
    (2, 3, 6, 6, 4, 3, 3, 1, 1, True),     # "same" padding
    (3, 2, 7, 7, 3, 3, 3, 2, 0, True),     # stride 2
    (2, 3, 8, 8, 2, 3, 3, 2, 1, True),     # padding > 0 with stride > 1
    (1, 4, 9, 7, 5, 1, 1, 1, 0, True),     # 1x1 kernel, non-square input
    (2, 2, 7, 10, 3, 2, 3, 2, 1, True),    # non-square kernel and input
    (1, 3, 10, 9, 2, 3, 2, 3, 2, True),    # stride that does not divide, padding 2
    (4, 1, 6, 6, 2, 6, 6, 1, 0, True),     # kernel as large as the image: a 1x1 output
    (2, 2, 5, 6, 3, 3, 3, 1, 0, False),    # bias None
    (1, 2, 5, 5, 2, 1, 1, 2, 1, True),     # 1x1 kernel, stride 2, padding 1
)


def _conv_data(case, seed: int):
    n, c_in, h, w, c_out, kh, kw, _, _, with_bias = case
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c_in, h, w, generator=g)
    weight = torch.randn(c_out, c_in, kh, kw, generator=g)
    bias = torch.randn(c_out, generator=g) + 1.0 if with_bias else None  # clearly non-zero
    return x, weight, bias


def _conv_ref(x, weight, bias, stride, padding):
    return F.conv2d(x.double(), weight.double(), None if bias is None else bias.double(),
                    stride=stride, padding=padding)


def _one_axis_hints(size, k, s, p, got) -> list[str]:
    want = (size + 2 * p - k) // s + 1
    hints = []
    if got == want - 1 and (size + 2 * p - k) % s == 0:
        hints.append("the output size is floor((H + 2p - k) / s) + 1: is the + 1 missing?")
    if got == math.ceil((size + 2 * p - k) / s) + 1 and got != want:
        hints.append("the output size rounds down: floor((H + 2p - k) / s) + 1, not ceil")
    if p > 0 and got == (size - k) // s + 1:
        hints.append(f"padding={p} seems to be ignored (zeros go on every side)")
    if p > 0 and got == (size + p - k) // s + 1:
        hints.append(f"padding={p} seems to be applied on one side only (it goes on both sides)")
    if s > 1 and got == size + 2 * p - k + 1:
        hints.append(f"stride={s} seems to be ignored")
    return hints


def _shape_hint(got_shape, want_shape, sizes) -> str:
    """Why a conv/pool output has the wrong shape, from the usual formula mistakes."""
    hints: list[str] = []
    if len(got_shape) == 4:
        if got_shape[0] != want_shape[0]:
            hints.append("the first axis must be the batch (N)")
        if got_shape[1] != want_shape[1]:
            hints.append("the second axis must have C_out channels (one per filter; the input channels are summed)")
        for axis in (2, 3):
            size, k, s, p = sizes[axis - 2]
            if got_shape[axis] != want_shape[axis]:
                hints += [h for h in _one_axis_hints(size, k, s, p, got_shape[axis]) if h not in hints]
    elif len(got_shape) == 3 and got_shape == tuple(want_shape[1:]):
        hints.append("the batch axis N is missing")
    elif len(got_shape) == 5:
        hints.append("the input channels must be summed, not kept as an axis")
    return (" - " + "; ".join(hints)) if hints else ""


def _conv_value_hint(got, x, weight, bias, stride, padding) -> str:
    """Name the usual mistake that reproduces a wrong convolution output, if one does."""
    xd, wd = x.double(), weight.double()
    bd = None if bias is None else bias.double()
    c_out, c_in, kh, kw = weight.shape
    candidates = [
        (F.conv2d(xd, wd.flip(-2, -1), bd, stride=stride, padding=padding),
         "you flipped the kernel: that is the mathematician's convolution, but PyTorch's conv2d (like every "
         "deep-learning library) computes a cross-correlation - slide the kernel without flipping it"),
    ]
    if bias is not None:
        candidates.append((F.conv2d(xd, wd, None, stride=stride, padding=padding),
                           "the bias is missing: add bias[o] to every output pixel of channel o"))
        candidates.append((F.conv2d(xd, wd, None, stride=stride, padding=padding)
                           + c_in * kh * kw * bd.view(1, -1, 1, 1),
                           "the bias is added once per multiplied pixel: add it once per output pixel"))
    if c_in > 1:
        candidates.append((F.conv2d(xd[:, :1], wd[:, :1], bd, stride=stride, padding=padding),
                           "only the first input channel is used: sum over all C_in input channels"))
    if padding > 0:
        for pads, side in (((2 * padding, 0, 2 * padding, 0), "top and left"),
                           ((0, 2 * padding, 0, 2 * padding), "bottom and right")):
            candidates.append((F.conv2d(F.pad(xd, pads), wd, bd, stride=stride),
                               f"all the padding went on the {side}: put `padding` zeros on every side"))
        if x.abs().min() > 0:
            candidates.append((F.conv2d(F.pad(xd, (padding,) * 4, value=1.0), wd, bd, stride=stride),
                               "the padding is not zeros"))
    if c_in * kh * kw > 1:
        w_col = wd.reshape(c_out, kh, kw, c_in).permute(0, 3, 1, 2)
        candidates.append((F.conv2d(xd, w_col, bd, stride=stride, padding=padding),
                           "the rows of your im2col matrix are in (kernel row, kernel column, channel) order "
                           "but the flattened weight is in (channel, kernel row, kernel column) order - "
                           "use the same order for both"))
        if kh == kw and kh > 1:
            candidates.append((F.conv2d(xd, wd.transpose(-2, -1), bd, stride=stride, padding=padding),
                               "kernel rows and columns are swapped (weight[o, c, u, v] multiplies x[.., i*s+u, "
                               "j*s+v]: u runs down, v runs across)"))
    for ref, hint in candidates:
        if tuple(ref.shape) == tuple(got.shape) and np.allclose(got, ref.numpy(), rtol=1e-4, atol=1e-4):
            return " - " + hint
    return ""


def _check_conv(student_fn, task: str, callables: tuple, seed0: int) -> None:
    _expect_function(student_fn, task)
    for i, case in enumerate(CONV_CASES):
        n, c_in, h, w, c_out, kh, kw, stride, padding, _ = case
        x, weight, bias = _conv_data(case, seed0 + i)
        inputs = {"x_shape": tuple(x.shape), "weight_shape": tuple(weight.shape),
                  "bias": "None" if bias is None else f"shape ({c_out},)", "stride": stride, "padding": padding}
        want = _conv_ref(x, weight, bias, stride, padding)
        result = _call(student_fn, x.clone(), weight.clone(), None if bias is None else bias.clone(), stride,
                       padding, task=task, inputs=inputs, callables=callables)
        got = to_array(result, what=f"{task} output", inputs=inputs).astype(float)
        if got.shape != tuple(want.shape):
            fail(f"{task} output{describe(inputs)}: shape {got.shape} but torch.nn.functional.conv2d gives "
                 f"{tuple(want.shape)} (N, C_out, H_out, W_out)"
                 + _shape_hint(got.shape, tuple(want.shape), ((h, kh, stride, padding), (w, kw, stride, padding))))
        if not np.allclose(got, want.numpy(), rtol=1e-4, atol=1e-4):
            err = float(np.max(np.abs(got - want.numpy())))
            fail(f"{task} output{describe(inputs)} differs from torch.nn.functional.conv2d: max abs error "
                 f"{err:.3g}" + _conv_value_hint(got, x, weight, bias, stride, padding))
        assert_close(got, want, what=f"{task} output", inputs=inputs, rtol=1e-4, atol=1e-4)


def check_conv2d_loops(student_fn) -> None:
    """conv2d_loops(x, weight, bias, stride, padding) equals torch.nn.functional.conv2d."""
    _check_conv(student_fn, "conv2d_loops", FORBIDDEN_CONV, seed0=100)


def check_conv2d_im2col(student_fn) -> None:
    """conv2d_im2col(x, weight, bias, stride, padding) equals torch.nn.functional.conv2d."""
    _check_conv(student_fn, "conv2d_im2col", FORBIDDEN_CONV, seed0=200)


# ----------------------------------------------------------------- max pooling

# (N, C, H, W, kernel_size, stride or None = omitted)
POOL_CASES = (
    (1, 1, 4, 4, 2, None),
    (2, 3, 6, 8, 2, None),
    (2, 2, 7, 7, 3, None),   # 7 is not a multiple of 3: the last row/column of windows is dropped
    (1, 3, 6, 6, 3, 1),      # overlapping windows
    (3, 2, 9, 7, 3, 2),
    (2, 1, 5, 6, 2, 1),
    (1, 4, 8, 5, 1, None),   # 1x1 window: the identity
    (2, 2, 5, 5, 5, None),   # one window covers the whole image
)


def _pool_value_hint(got, x, k, s, stride_given: bool) -> str:
    xd = x.double()
    candidates = [
        (F.avg_pool2d(xd, k, s), "this is average pooling: take the largest value of each window"),
        (-F.max_pool2d(-xd, k, s), "this is the smallest value of each window: take the largest"),
        (F.max_pool2d(xd.abs(), k, s), "take the largest value, not the largest absolute value"),
    ]
    if not stride_given and k > 1:
        candidates.append((F.max_pool2d(xd, k, 1), "with stride omitted the windows should not overlap: "
                                                   "stride must default to kernel_size, not 1"))
    for ref, hint in candidates:
        if tuple(ref.shape) == tuple(got.shape) and np.allclose(got, ref.numpy(), rtol=1e-5, atol=1e-5):
            return " - " + hint
    return ""


def check_max_pool2d(student_fn) -> None:
    """max_pool2d(x, kernel_size, stride=None) equals torch.nn.functional.max_pool2d."""
    task = "max_pool2d"
    _expect_function(student_fn, task)
    for i, (n, c, h, w, k, s) in enumerate(POOL_CASES):
        g = torch.Generator().manual_seed(300 + i)
        x = torch.randn(n, c, h, w, generator=g)
        stride = k if s is None else s
        inputs = {"x_shape": (n, c, h, w), "kernel_size": k, "stride": "omitted" if s is None else s}
        want = F.max_pool2d(x.double(), k, stride)
        args = (x.clone(), k) if s is None else (x.clone(), k, s)
        result = _call(student_fn, *args, task=task, inputs=inputs, callables=FORBIDDEN_POOL)
        got = to_array(result, what="max_pool2d output", inputs=inputs).astype(float)
        if got.shape != tuple(want.shape):
            hint = _shape_hint(got.shape, tuple(want.shape), ((h, k, stride, 0), (w, k, stride, 0)))
            if s is None and k > 1 and got.shape == tuple(F.max_pool2d(x, k, 1).shape):
                hint = " - with stride omitted it must default to kernel_size (non-overlapping windows), not 1"
            if len(got.shape) == 4 and got.shape[1] == 1 and c > 1:
                hint = " - pool each channel separately (keep the C axis), do not take the max over channels"
            fail(f"max_pool2d output{describe(inputs)}: shape {got.shape} but torch.nn.functional.max_pool2d "
                 f"gives {tuple(want.shape)}" + hint)
        if not np.allclose(got, want.numpy(), rtol=1e-5, atol=1e-5):
            err = float(np.max(np.abs(got - want.numpy())))
            fail(f"max_pool2d output{describe(inputs)} differs from torch.nn.functional.max_pool2d: max abs "
                 f"error {err:.3g}" + _pool_value_hint(got, x, k, stride, s is not None))


# ----------------------------------------------------------------- the digits CNN

def digits_split(seed: int = DIGITS_SEED):
    """The seeded split the check trains on: float32 (N, 1, 8, 8) images in [0, 1], int64 labels."""
    from llmcourse.datasets import load_digits

    X_train, y_train, X_test, y_test = load_digits(images=True, seed=seed)
    return (torch.from_numpy(X_train), torch.from_numpy(y_train), torch.from_numpy(X_test),
            torch.from_numpy(y_test))


def train_and_predict_probe(train_fn, X_train, y_train, X_test):
    """PROBE: ``model = train_fn(X_train, y_train)``, then the model's logits for ``X_test``.

    Runs beside the student's code, on one CPU thread (tiny convolutions are slower, not
    faster, with several threads on a busy machine). Returns a dict of plain data: either
    ``{"logits": detached (N_test, C) float tensor, "n_params": int}`` or ``{"problem": str}``
    describing what came back instead of a model.
    """
    import torch as _torch

    threads = _torch.get_num_threads()
    _torch.set_num_threads(1)
    try:
        with _torch.random.fork_rng(devices=[]):
            _torch.manual_seed(0)
            model = train_fn(X_train.clone(), y_train.clone())
        if model is None:
            return {"problem": "None"}
        if not isinstance(model, _torch.nn.Module):
            return {"problem": f"type:{type(model).__name__}"}
        params = list(model.parameters())
        device = params[0].device if params else _torch.device("cpu")
        model.eval()
        with _torch.no_grad():
            logits = model(X_test.to(device))
        if not isinstance(logits, _torch.Tensor):
            return {"problem": f"logits:{type(logits).__name__}"}
        return {"logits": logits.detach().float().cpu(), "n_params": int(sum(p.numel() for p in params))}
    finally:
        _torch.set_num_threads(threads)


def check_train_cnn(student_fn) -> None:
    """train_cnn(X_train, y_train) -> a trained nn.Module with >= 97 % test accuracy on the digits."""
    task = "train_cnn"
    _expect_function(student_fn, task)
    X_train, y_train, X_test, y_test = digits_split()
    inputs = {"X_train_shape": tuple(X_train.shape), "split seed": DIGITS_SEED}
    out = run_probe(train_and_predict_probe, student_fn, X_train, y_train, X_test, task=task, inputs=inputs,
                    modules=FORBIDDEN_CNN_MODULES)
    if not isinstance(out, dict):
        fail(f"{task}{describe(inputs)}: the probe returned {type(out).__name__}")
    problem = out.get("problem")
    if problem == "None":
        fail(f"{task}{describe(inputs)}: your function returned None (is a `return` missing?) - return the "
             f"trained model")
    if isinstance(problem, str) and problem.startswith("type:"):
        fail(f"{task}{describe(inputs)}: expected the trained torch.nn.Module, got a {problem[5:]}")
    if isinstance(problem, str) and problem.startswith("logits:"):
        fail(f"{task}{describe(inputs)}: model(X_test) must return a tensor of class scores, got a {problem[7:]}")
    logits = to_array(out.get("logits"), what="model(X_test)", inputs=inputs).astype(float)
    want_shape = (len(y_test), 10)
    if logits.shape != want_shape:
        fail(f"{task}{describe(inputs)}: model(X_test) must return logits of shape {want_shape} (one score per "
             f"digit class), got {logits.shape}")
    acc = float(np.mean(logits.argmax(axis=1) == y_test.numpy()))
    if acc < MIN_ACCURACY:
        fail(f"{task}{describe(inputs)}: test accuracy {acc:.1%} is below {MIN_ACCURACY:.0%} "
             f"- is the network trained long enough (several epochs, Adam with lr around 1e-3 to 1e-2), "
             f"large enough (a few convolution layers with 16-32 filters), and does train_cnn return the "
             f"trained model?")


__all__ = ["check_conv2d_loops", "check_conv2d_im2col", "check_max_pool2d", "check_train_cnn",
           "train_and_predict_probe", "digits_split", "FORBIDDEN_CONV", "FORBIDDEN_POOL"]
