"""GPTQ: layer-wise post-training quantisation that corrects each rounding error with the Hessian.

Round-to-nearest (RTN) quantises every weight on its own. GPTQ (Frantar et al. 2022, "GPTQ: Accurate
Post-Training Quantization for Generative Pre-trained Transformers") minimises the layer's output
error ``||W X - Q X||^2`` on calibration inputs X instead. Its Hessian is ``H = 2 X X^T``. Going
through the input columns in order, it quantises column i, and spreads that column's error over the
columns not yet quantised, in proportion to the inverse Hessian (the Optimal Brain Surgeon update):

    err = (w_i - q_i) / [H^-1]_ii,        W[:, j] -= err * [H^-1]_ij   for j > i.

Three tricks make it fast and stable: one fixed column order for all rows; *lazy batch updates*
(the update reaches columns outside the current block of 128 only once per block, as one matmul);
and the rows of H^-1 that the loop needs come from a Cholesky factor of H^-1, computed once, after
*dampening* H by 1 % of its mean diagonal.

Taught in: book/12-quantization
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor

from llmcourse.progress import progress
from llmcourse.quantization import (
    affine_codes,
    block_linears,
    check_finite,
    dequantize,
    zeropoint_quantize,
)


def _grid(w: Tensor, bits: int) -> tuple[Tensor, Tensor]:
    """Per-row zero-point grid (scale, zero_point), each (R, 1), of the weights w (R, g)."""
    _, scale, zero_point = zeropoint_quantize(w, bits, axis=0)
    return scale.double(), zero_point


def gptq_quantize(w: Tensor, hessian: Tensor, bits: int = 4, group_size: int | None = None,
                  block_size: int = 128, damp: float = 0.01) -> Tensor:
    """GPTQ-quantise one weight matrix; returns the dequantised weights (R, C) in w's dtype.

    Shapes: w (R, C) = (C_out, C_in), hessian (C, C) = 2 X X^T / n over the calibration inputs.
    The grid is zero-point with ``bits`` bits, one per row (``group_size=None``) or one per
    ``group_size`` columns of a row, chosen when the loop reaches the group (from the updated weights).
    """
    check_finite(w, "w")
    check_finite(hessian, "hessian")
    if w.dim() != 2 or hessian.shape != (w.shape[1], w.shape[1]):
        raise ValueError(f"need w (R, C) and hessian (C, C), got {tuple(w.shape)} and {tuple(hessian.shape)}")
    r, c = w.shape
    if group_size is not None and (not isinstance(group_size, int) or group_size < 1 or c % group_size
                                   or block_size % group_size):
        raise ValueError(f"group_size must divide C={c} and block_size={block_size}, got {group_size!r}")
    if not 0.0 <= damp < 1.0:
        raise ValueError(f"damp must be in [0, 1), got {damp}")
    W = w.detach().double().clone()
    H = hessian.detach().double().clone()
    dead = torch.diag(H) == 0  # inputs that were always zero: their weights do not matter
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    H += damp * torch.diag(H).mean() * torch.eye(c, dtype=H.dtype)
    Hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)  # (C, C)
    Q = torch.zeros_like(W)
    scale, zero_point = _grid(W, bits)
    for i1 in range(0, c, block_size):
        i2 = min(i1 + block_size, c)
        W1, Hinv1 = W[:, i1:i2].clone(), Hinv[i1:i2, i1:i2]  # (R, b), (b, b)
        Err1 = torch.zeros_like(W1)
        for i in range(i2 - i1):
            if group_size is not None and (i1 + i) % group_size == 0:
                scale, zero_point = _grid(W1[:, i:i + group_size], bits)
            col = W1[:, i:i + 1]  # (R, 1)
            q = dequantize(affine_codes(col, scale, zero_point, bits), scale, zero_point).double()
            Q[:, i1 + i] = q[:, 0]
            err = (col - q) / Hinv1[i, i]  # (R, 1)
            W1[:, i:] -= err @ Hinv1[i:i + 1, i:]  # OBS update of the block's remaining columns
            Err1[:, i] = err[:, 0]
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]  # lazy batch update of all later columns
    return Q.to(w.dtype)


def layer_error(w: Tensor, w_hat: Tensor, hessian: Tensor) -> float:
    """The objective GPTQ minimises, per row: ``trace((W - W_hat) H (W - W_hat)^T) / R``
    (= mean over rows of ||(w - w_hat) X||^2 up to H's normalisation). Shapes: (R, C), (R, C), (C, C)."""
    d = (w - w_hat).double()
    return float(torch.einsum("rc,cd,rd->", d, hessian.double(), d) / w.shape[0])


@torch.no_grad()
def collect_hessians(model, batches: Tensor, layers) -> list[Tensor]:
    """``2 X^T X / n`` of the inputs X (n rows) that each of ``layers`` (nn.Linear) sees while ``model``
    runs on ``batches`` (B, T) token ids. Returns one (C_in, C_in) float64 tensor per layer."""
    sums = [torch.zeros(lin.in_features, lin.in_features, dtype=torch.float64) for lin in layers]
    counts = [0] * len(layers)

    def hook(k):
        def fn(_module, inputs, _output):
            x = inputs[0].detach().reshape(-1, inputs[0].shape[-1]).double()  # (B*T, C_in)
            sums[k].add_(2 * x.T @ x)
            counts[k] += x.shape[0]
        return fn

    handles = [lin.register_forward_hook(hook(k)) for k, lin in enumerate(layers)]
    try:
        model(batches)
    finally:
        for h in handles:
            h.remove()
    return [s / max(n, 1) for s, n in zip(sums, counts)]


def gptq_quantize_model(model, calibration: Tensor, bits: int = 4, group_size: int | None = None,
                        show_progress: bool = True):
    """A copy of a course GPT with every block Linear GPTQ-quantised, block after block: each block's
    Hessians come from the calibration tokens (B, T) run through the model *with the earlier blocks
    already quantised*, as in the paper."""
    if not isinstance(calibration, Tensor) or calibration.dtype != torch.long or calibration.dim() != 2:
        raise ValueError(f"calibration must be int64 token ids (B, T), got {getattr(calibration, 'dtype', calibration)}")
    qmodel = copy.deepcopy(model).eval()
    linears = block_linears(qmodel)
    for b in progress(range(len(qmodel.h)), desc=f"GPTQ {bits}-bit", disable=not show_progress):
        layers = linears[4 * b:4 * b + 4]
        for layer, h in zip(layers, collect_hessians(qmodel, calibration, layers)):
            layer.weight.data = gptq_quantize(layer.weight.data, h, bits, group_size)
    return qmodel
