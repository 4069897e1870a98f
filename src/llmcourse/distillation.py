"""Knowledge distillation (Hinton, Vinyals & Dean 2015): a small student learns from a big teacher's soft targets.

The teacher's logits ``z_t`` are softened with a temperature T, ``p_t = softmax(z_t / T)``, and the
student's logits ``z_s`` are fitted to them at the same temperature::

    L_soft = T^2 * KL(p_t || softmax(z_s / T))          (mean over the batch)
    L      = alpha * L_soft + (1 - alpha) * CE(z_s, y)   (y: the hard labels, if any)

Why ``T^2``: the gradient of the KL term with respect to ``z_s`` is ``(softmax(z_s/T) - p_t) / T``,
and for large T each softmax is about ``1/K + z/(K T)``, so the gradient shrinks like ``1/T^2``.
Multiplying by ``T^2`` keeps the soft term's gradients the same size whatever T is, so ``alpha``
means the same thing at every temperature (:func:`soft_gradient_scale` measures it).

A high T shows the student the teacher's "dark knowledge": which wrong classes it finds
plausible (a 7 that looks a bit like a 1), which one-hot labels never say.

:func:`fit_mlp` trains a one-hidden-layer MLP on hard labels, on a teacher's soft targets, or both;
the book runs it on scikit-learn's bundled digits, in seconds.

Shapes: N examples, D features, K classes.

Taught in: book/09-sft
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["accuracy", "distillation_loss", "fit_mlp", "soft_gradient_scale", "soft_targets"]


def _check_logits(x, name: str) -> None:
    if not isinstance(x, Tensor) or not x.dtype.is_floating_point or x.ndim != 2:
        raise TypeError(f"{name} must be a float tensor (N, K), got {getattr(x, 'shape', type(x).__name__)}")


def _check_temperature(temperature) -> float:
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not 0 < temperature < math.inf:
        raise ValueError(f"temperature must be a positive finite number, got {temperature!r}")
    return float(temperature)


def soft_targets(logits: Tensor, temperature: float = 1.0) -> Tensor:
    """``softmax(logits / T)`` over the last axis: (N, K) -> (N, K), rows summing to 1. T > 1 flattens them."""
    _check_logits(logits, "logits")
    return F.softmax(logits / _check_temperature(temperature), dim=-1)


def distillation_loss(student_logits: Tensor, teacher_logits: Tensor, labels: Tensor | None = None, *,
                      temperature: float = 4.0, alpha: float = 1.0) -> Tensor:
    """``alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * CE(s, labels)``, batch means; a scalar.

    student_logits, teacher_logits (N, K) floats; labels (N,) int64 class ids, needed when ``alpha < 1``.
    The teacher is treated as fixed (detached). ``alpha=1`` is pure distillation, ``alpha=0`` plain
    cross-entropy on the hard labels.
    """
    _check_logits(student_logits, "student_logits")
    _check_logits(teacher_logits, "teacher_logits")
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student and teacher logits differ in shape: {tuple(student_logits.shape)} vs "
                         f"{tuple(teacher_logits.shape)}")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 <= alpha <= 1:
        raise ValueError(f"alpha must be a number in [0, 1], got {alpha!r}")
    t = _check_temperature(temperature)
    log_p_student = F.log_softmax(student_logits / t, dim=-1)
    log_p_teacher = F.log_softmax(teacher_logits.detach() / t, dim=-1)
    soft = (log_p_teacher.exp() * (log_p_teacher - log_p_student)).sum(-1).mean() * t * t
    if alpha == 1:
        return soft
    if labels is None:
        raise ValueError("alpha < 1 mixes in the hard-label loss: pass labels (N,)")
    if labels.shape != student_logits.shape[:1] or labels.dtype != torch.long:
        raise ValueError(f"labels must be int64 (N,) = ({student_logits.shape[0]},), got {tuple(labels.shape)}")
    return alpha * soft + (1 - alpha) * F.cross_entropy(student_logits, labels)


def soft_gradient_scale(temperature: float, *, scaled: bool = True, k: int = 10, n: int = 256, seed: int = 0) -> float:
    """Mean absolute gradient of the soft loss with respect to the student's logits, for random logits
    (``n`` rows, ``k`` classes, standard normal), with the ``T^2`` factor or (``scaled=False``) without.
    With it the value stays about constant as T grows; without it, it falls like ``1/T^2``."""
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(n, k, generator=g, dtype=torch.float64).requires_grad_()
    t = torch.randn(n, k, generator=g, dtype=torch.float64)
    loss = distillation_loss(s, t, temperature=temperature)
    if not scaled:
        loss = loss / temperature ** 2
    loss.backward()
    return float(s.grad.abs().mean() * n)  # per example, not per batch mean


def accuracy(model: nn.Module, x: Tensor, y: Tensor) -> float:
    """Fraction of rows of x (N, D) whose argmax logit equals y (N,)."""
    with torch.no_grad():
        return float((model(x).argmax(-1) == y).float().mean())


def fit_mlp(x: Tensor, y: Tensor | None = None, *, hidden: int = 64, teacher_logits: Tensor | None = None,
            temperature: float = 4.0, alpha: float = 1.0, epochs: int = 200, lr: float = 1e-2,
            weight_decay: float = 0.0, seed: int = 0) -> nn.Sequential:
    """A ``Linear(D, hidden) - ReLU - Linear(hidden, K)`` fitted full-batch with Adam.

    Hard labels only: ``y`` (N,) int64, no teacher. Distillation: ``teacher_logits`` (N, K), the loss
    :func:`distillation_loss` with ``temperature`` and ``alpha`` (``y`` needed when ``alpha < 1``).
    x (N, D) float32.
    """
    if not isinstance(x, Tensor) or x.ndim != 2 or not x.dtype.is_floating_point:
        raise TypeError(f"x must be a float tensor (N, D), got {getattr(x, 'shape', type(x).__name__)}")
    if y is None and teacher_logits is None:
        raise ValueError("give hard labels y, teacher_logits, or both")
    if y is not None and (y.shape != x.shape[:1] or y.dtype != torch.long):
        raise ValueError(f"y must be int64 (N,) = ({x.shape[0]},), got {tuple(y.shape)} {y.dtype}")
    if teacher_logits is not None and teacher_logits.shape[0] != x.shape[0]:
        raise ValueError(f"teacher_logits must have one row per example ({x.shape[0]}), got {teacher_logits.shape[0]}")
    k = teacher_logits.shape[1] if teacher_logits is not None else int(y.max()) + 1
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(x.shape[1], hidden), nn.ReLU(), nn.Linear(hidden, k))
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    for _ in range(epochs):
        logits = model(x)
        if teacher_logits is None:
            loss = F.cross_entropy(logits, y)
        else:
            loss = distillation_loss(logits, teacher_logits, y, temperature=temperature, alpha=alpha)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()
