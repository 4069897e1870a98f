"""Learning-rate schedules: linear warm-up, then cosine decay to a floor.

What it teaches: the step size of a large training run is not a constant.
It rises linearly from 0 to its peak over the first ``warmup_steps`` updates
(while Adam's second-moment estimates are still noisy, a full-size step can
throw the model off; Goyal et al. 2017, Vaswani et al. 2017), then follows
half a cosine down to a floor ``min_lr`` at ``total_steps`` (Loshchilov &
Hutter 2017, "SGDR"; GPT-3 decays to 10 % of the peak, Brown et al. 2020).

With ``min_lr = 0`` the schedule is exactly ``transformers.get_cosine_schedule_with_warmup``:
step 0 has learning rate 0 when there is a warm-up, and the multiplier is
computed in the same order, so the numbers agree to the last bit. With a floor,
the decay is the same cosine squeezed into [min_lr, max_lr]. (transformers'
``get_cosine_with_min_lr_schedule_with_warmup`` counts its steps from 1, so it
is one step ahead of this.) Past ``total_steps`` this schedule stays at the
floor; the transformers one would climb back up the cosine.

Taught in: book/08-pretraining
"""

from __future__ import annotations

import functools
import math

import torch


def check_schedule(warmup_steps: int, total_steps: int, min_lr_ratio: float = 0.0) -> None:
    """Raise ``ValueError`` unless 0 <= warmup_steps <= total_steps, total_steps >= 1, 0 <= min_lr_ratio <= 1."""
    for name, value in (("warmup_steps", warmup_steps), ("total_steps", total_steps)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be an int >= 0, got {value!r}")
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    if warmup_steps > total_steps:
        raise ValueError(f"warmup_steps={warmup_steps} is larger than total_steps={total_steps}: "
                         "the schedule would never reach its peak")
    if not 0.0 <= min_lr_ratio <= 1.0:
        raise ValueError(f"the floor must be between 0 and the peak learning rate, got min_lr / lr = {min_lr_ratio}")


def lr_factor(step: int, *, warmup_steps: int, total_steps: int, min_lr_ratio: float = 0.0) -> float:
    """The multiplier of the peak learning rate at optimiser step ``step`` (0-based).

    * warm-up, ``step < warmup_steps``: ``step / warmup_steps`` (0 at step 0);
    * decay: with ``p = (step - warmup_steps) / (total_steps - warmup_steps)`` clipped to [0, 1],
      ``c = 0.5 (1 + cos(pi p))`` and the result ``c (1 - min_lr_ratio) + min_lr_ratio``.

    >>> [round(lr_factor(s, warmup_steps=2, total_steps=6), 3) for s in range(8)]
    [0.0, 0.5, 1.0, 0.854, 0.5, 0.146, 0.0, 0.0]
    """
    if step < warmup_steps:
        return float(step) / float(max(1, warmup_steps))
    progress = float(step - warmup_steps) / float(max(1, total_steps - warmup_steps))
    progress = min(progress, 1.0)  # stay at the floor after total_steps
    factor = 0.5 * (1.0 + math.cos(math.pi * progress))
    factor = factor * (1 - min_lr_ratio) + min_lr_ratio
    return max(0.0, factor)


def lr_at(step: int, *, max_lr: float, warmup_steps: int, total_steps: int, min_lr: float = 0.0) -> float:
    """The learning rate at optimiser step ``step``: ``max_lr * lr_factor(...)``, from 0 up to ``max_lr`` and
    down to ``min_lr``.

    >>> lr_at(0, max_lr=1e-3, warmup_steps=10, total_steps=100), lr_at(10, max_lr=1e-3, warmup_steps=10, total_steps=100)
    (0.0, 0.001)
    >>> lr_at(100, max_lr=1e-3, warmup_steps=10, total_steps=100, min_lr=1e-4)
    0.0001
    """
    if not max_lr > 0:
        raise ValueError(f"max_lr must be > 0, got {max_lr}")
    check_schedule(warmup_steps, total_steps, min_lr / max_lr)
    return max_lr * lr_factor(step, warmup_steps=warmup_steps, total_steps=total_steps,
                              min_lr_ratio=min_lr / max_lr)


def warmup_cosine(optimizer: torch.optim.Optimizer, *, warmup_steps: int, total_steps: int,
                  min_lr_ratio: float = 0.0) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` that multiplies each param group's ``lr`` by :func:`lr_factor`.

    Call ``scheduler.step()`` after every ``optimizer.step()``; ``scheduler.last_epoch`` is then
    the number of updates done, and the group's ``lr`` the one the next update uses.
    """
    check_schedule(warmup_steps, total_steps, min_lr_ratio)
    factor = functools.partial(lr_factor, warmup_steps=warmup_steps, total_steps=total_steps,
                               min_lr_ratio=min_lr_ratio)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
