"""Convolution and pooling written out by hand, to compare with ``torch.nn.functional``.

What deep-learning libraries call a "convolution" is a cross-correlation: the
kernel slides over the input *without* being flipped,

    out[n, o, i, j] = bias[o] + sum_{c, u, v} x_pad[n, c, i*s + u, j*s + v] * w[o, c, u, v],

(``torch.nn.Conv2d`` documentation; Goodfellow, Bengio & Courville 2016, section 9.1).
A true convolution flips the kernel first; because the kernel is learned, the
network simply learns the flipped kernel, so nothing is lost.

Output size (Dumoulin & Visin 2016): ``floor((H + 2 p - k) / s) + 1`` along each axis.

* ``conv_output_size`` - that formula, with checks.
* ``conv2d_loops`` - the definition as explicit loops (slow, readable).
* ``im2col`` / ``conv2d_im2col`` - every receptive-field patch copied into a column, then one
  matrix multiplication (Chellapilla, Puri & Simard 2006): the standard trick for speed.
* ``max_pool2d`` / ``avg_pool2d`` - pooling windows, by the same patch extraction.
* ``receptive_field`` - how many input pixels one output pixel of a stack of layers sees.

All functions take and return torch float tensors. Shapes: x (N, C_in, H, W),
weight (C_out, C_in, kH, kW), bias (C_out,) or None, output (N, C_out, H_out, W_out).

Taught in: book/04-cnn
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor


def _pair(value, name: str, *, minimum: int) -> tuple[int, int]:
    """An int or a pair of ints -> (along H, along W), each >= ``minimum``."""
    pair = (value, value) if isinstance(value, (int,)) and not isinstance(value, bool) else value
    if (not isinstance(pair, (tuple, list)) or len(pair) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in pair)):
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
    if min(pair) < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return int(pair[0]), int(pair[1])


def conv_output_size(size: int, kernel_size: int, stride: int = 1, padding: int = 0) -> int:
    """Length of the output along one axis: ``floor((size + 2*padding - kernel_size) / stride) + 1``.

    Raises ``ValueError`` when the (padded) input is smaller than the kernel.
    """
    for name, v, lo in (("size", size, 1), ("kernel_size", kernel_size, 1), ("stride", stride, 1),
                        ("padding", padding, 0)):
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise ValueError(f"{name} must be an int >= {lo}, got {v!r}")
    if size + 2 * padding < kernel_size:
        raise ValueError(f"kernel_size={kernel_size} does not fit in an input of size {size} "
                         f"with padding={padding}")
    return (size + 2 * padding - kernel_size) // stride + 1


def _check_conv_inputs(x, weight, bias) -> None:
    if not isinstance(x, Tensor) or not isinstance(weight, Tensor):
        raise TypeError("x and weight must be torch tensors")
    if x.ndim != 4:
        raise ValueError(f"x must have shape (N, C_in, H, W), got {tuple(x.shape)}")
    if weight.ndim != 4:
        raise ValueError(f"weight must have shape (C_out, C_in, kH, kW), got {tuple(weight.shape)}")
    if weight.shape[1] != x.shape[1]:
        raise ValueError(f"x has C_in={x.shape[1]} channels but weight expects {weight.shape[1]} "
                         f"(weight shape {tuple(weight.shape)})")
    if bias is not None and (not isinstance(bias, Tensor) or tuple(bias.shape) != (weight.shape[0],)):
        raise ValueError(f"bias must be None or a tensor of shape ({weight.shape[0]},)")


def pad2d(x: Tensor, padding) -> Tensor:
    """Zero padding on all four sides: (N, C, H, W) -> (N, C, H + 2 pH, W + 2 pW)."""
    ph, pw = _pair(padding, "padding", minimum=0)
    n, c, h, w = x.shape
    out = x.new_zeros((n, c, h + 2 * ph, w + 2 * pw))
    out[:, :, ph:ph + h, pw:pw + w] = x
    return out


def conv2d_loops(x: Tensor, weight: Tensor, bias: Tensor | None = None, stride=1, padding=0) -> Tensor:
    """2-D cross-correlation ("convolution" in PyTorch) with explicit loops over output pixels.

    Shapes: x (N, C_in, H, W), weight (C_out, C_in, kH, kW), bias (C_out,) or None
    -> (N, C_out, H_out, W_out) with H_out = floor((H + 2 pH - kH) / sH) + 1.
    """
    _check_conv_inputs(x, weight, bias)
    sh, sw = _pair(stride, "stride", minimum=1)
    ph, pw = _pair(padding, "padding", minimum=0)
    c_out, _, kh, kw = weight.shape
    n, _, h, w = x.shape
    h_out, w_out = conv_output_size(h, kh, sh, ph), conv_output_size(w, kw, sw, pw)
    xp = pad2d(x, (ph, pw))
    out = x.new_zeros((n, c_out, h_out, w_out))
    for i in range(h_out):
        for j in range(w_out):
            patch = xp[:, :, i * sh:i * sh + kh, j * sw:j * sw + kw]  # (N, C_in, kH, kW)
            for o in range(c_out):
                # multiply element-wise and sum over input channels and the kernel window
                out[:, o, i, j] = (patch * weight[o]).sum(dim=(1, 2, 3))
    if bias is not None:
        out += bias.view(1, c_out, 1, 1)
    return out


def im2col(x: Tensor, kernel_size, stride=1, padding=0) -> Tensor:
    """Copy every kH x kW window into a column: (N, C, H, W) -> (N, C*kH*kW, H_out*W_out).

    Row order inside a column is (channel, kernel row, kernel column), the same
    order as ``weight.reshape(C_out, -1)``; columns go row by row over the output
    (the layout of ``torch.nn.functional.unfold``).
    """
    kh, kw = _pair(kernel_size, "kernel_size", minimum=1)
    sh, sw = _pair(stride, "stride", minimum=1)
    ph, pw = _pair(padding, "padding", minimum=0)
    n, c, h, w = x.shape
    h_out, w_out = conv_output_size(h, kh, sh, ph), conv_output_size(w, kw, sw, pw)
    xp = pad2d(x, (ph, pw))
    cols = x.new_empty((n, c, kh, kw, h_out, w_out))
    for u in range(kh):  # one strided slice per kernel position: kH*kW copies, not H_out*W_out
        for v in range(kw):
            cols[:, :, u, v] = xp[:, :, u:u + sh * (h_out - 1) + 1:sh, v:v + sw * (w_out - 1) + 1:sw]
    return cols.reshape(n, c * kh * kw, h_out * w_out)


def conv2d_im2col(x: Tensor, weight: Tensor, bias: Tensor | None = None, stride=1, padding=0) -> Tensor:
    """The same result as :func:`conv2d_loops`, computed as one matrix multiplication.

    (C_out, C_in*kH*kW) @ (N, C_in*kH*kW, H_out*W_out) -> (N, C_out, H_out*W_out), then reshaped.
    """
    _check_conv_inputs(x, weight, bias)
    c_out, c_in, kh, kw = weight.shape
    sh, sw = _pair(stride, "stride", minimum=1)
    ph, pw = _pair(padding, "padding", minimum=0)
    h_out = conv_output_size(x.shape[2], kh, sh, ph)
    w_out = conv_output_size(x.shape[3], kw, sw, pw)
    cols = im2col(x, (kh, kw), (sh, sw), (ph, pw))
    out = weight.reshape(c_out, c_in * kh * kw) @ cols  # broadcasts over the batch
    if bias is not None:
        out = out + bias.view(1, c_out, 1)
    return out.reshape(x.shape[0], c_out, h_out, w_out)


def _pool_windows(x: Tensor, kernel_size, stride) -> tuple[Tensor, int, int]:
    if not isinstance(x, Tensor) or x.ndim != 4:
        raise ValueError(f"x must be a tensor of shape (N, C, H, W), got {getattr(x, 'shape', type(x))}")
    kh, kw = _pair(kernel_size, "kernel_size", minimum=1)
    sh, sw = _pair(kernel_size if stride is None else stride, "stride", minimum=1)
    n, c, h, w = x.shape
    h_out, w_out = conv_output_size(h, kh, sh), conv_output_size(w, kw, sw)
    cols = im2col(x.reshape(n * c, 1, h, w), (kh, kw), (sh, sw))  # (N*C, kH*kW, H_out*W_out)
    return cols, h_out, w_out


def max_pool2d(x: Tensor, kernel_size, stride=None) -> Tensor:
    """Largest value of each kH x kW window, per channel; ``stride`` defaults to ``kernel_size``.

    Shapes: (N, C, H, W) -> (N, C, H_out, W_out), no padding, windows that do not fit are dropped.
    """
    cols, h_out, w_out = _pool_windows(x, kernel_size, stride)
    return cols.amax(dim=1).reshape(x.shape[0], x.shape[1], h_out, w_out)


def avg_pool2d(x: Tensor, kernel_size, stride=None) -> Tensor:
    """Mean of each kH x kW window, per channel; same shapes as :func:`max_pool2d`."""
    cols, h_out, w_out = _pool_windows(x, kernel_size, stride)
    return cols.mean(dim=1).reshape(x.shape[0], x.shape[1], h_out, w_out)


def receptive_field(layers: Sequence[tuple[int, int]]) -> int:
    """Receptive field (pixels along one axis) of one output unit of a stack of layers.

    ``layers`` lists (kernel_size, stride) from the input upwards. Each layer adds
    ``(k - 1) * jump`` pixels, where ``jump`` is the product of the strides below it
    (Araujo, Norris & Sim 2019).

    >>> receptive_field([(3, 1), (3, 1)])   # two 3x3 convolutions see 5x5
    5
    """
    rf, jump = 1, 1
    for item in layers:
        if len(item) != 2:
            raise ValueError(f"each layer must be (kernel_size, stride), got {item!r}")
        k, s = item
        if k < 1 or s < 1:
            raise ValueError(f"kernel_size and stride must be >= 1, got {item!r}")
        rf += (k - 1) * jump
        jump *= s
    return rf


def conv_params(c_in: int, c_out: int, kernel_size: int, bias: bool = True) -> int:
    """Parameters of a convolution layer: ``c_out * (c_in * k * k + 1)`` (independent of the image size)."""
    return c_out * (c_in * kernel_size * kernel_size + (1 if bias else 0))


def dense_params(n_in: int, n_out: int, bias: bool = True) -> int:
    """Parameters of a fully connected layer: ``n_out * (n_in + 1)``."""
    return n_out * (n_in + (1 if bias else 0))


__all__ = ["conv_output_size", "pad2d", "conv2d_loops", "im2col", "conv2d_im2col", "max_pool2d",
           "avg_pool2d", "receptive_field", "conv_params", "dense_params"]
