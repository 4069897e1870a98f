"""References for the chapter 8 checks (a helper module, not an assignment).

Every reference runs in float64 on the float32 inputs the student receives (a float32 value
is exact in float64), so it gives the exact answer for those numbers and the checks'
tolerances only have to absorb the student's own float32 rounding:

* :func:`reference_cross_entropy` - ``F.cross_entropy`` over the last axis, ``ignore_index``
  honoured, NaN when every target is ignored (0 / 0, as ``F.cross_entropy`` gives);
* :func:`adamw_torch` - ``torch.optim.AdamW`` with two parameter groups (decay, no decay),
  stepped with given gradients; :func:`adamw_by_formula` is the same update written out, with
  switches for the usual mistakes (the checks' hints, and a test that it equals torch);
* :func:`hf_cosine_lrs` - the learning rates of ``transformers.get_cosine_schedule_with_warmup``
  read from a real ``LambdaLR``, step by step;
* :func:`reference_filter` - transformers' ``TemperatureLogitsWarper``, ``TopKLogitsWarper`` and
  ``TopPLogitsWarper``, applied in that order;
* :data:`ARITHMETIC_CHARS` and :func:`arithmetic_ids` - the character vocabulary of the training
  task and generated arithmetic text encoded with it (``llmcourse.corpus.make_arithmetic_lines``).
"""

from __future__ import annotations

import math
import os
import warnings

import torch
import torch.nn.functional as F

# ----------------------------------------------------------------- cross-entropy


def reference_cross_entropy(logits, targets, ignore_index: int = -100) -> torch.Tensor:
    """``F.cross_entropy`` in float64 with the classes on the last axis: logits (..., V), targets (...)."""
    v = logits.shape[-1]
    return F.cross_entropy(logits.double().reshape(-1, v), targets.reshape(-1), ignore_index=ignore_index)


def token_losses(logits, targets, ignore_index: int = -100) -> tuple[torch.Tensor, torch.Tensor]:
    """(per-token losses (N,) in float64 with 0 where ignored, counted (N,) bool): for the hints."""
    v = logits.shape[-1]
    flat_t = targets.reshape(-1)
    counted = flat_t != ignore_index
    losses = F.cross_entropy(logits.double().reshape(-1, v), flat_t.masked_fill(~counted, 0), reduction="none")
    return losses * counted, counted


# ----------------------------------------------------------------- AdamW


def adamw_torch(params, grads_per_step, decay, *, lr, betas, eps, weight_decay) -> list[dict]:
    """Run ``torch.optim.AdamW`` in float64 with the given gradients; one record per step.

    ``params`` is a list of tensors, ``grads_per_step`` a list (steps) of lists (one gradient per
    parameter), ``decay`` one bool per parameter: True puts it in the group with ``weight_decay``,
    False in the group with 0. Each record: ``{"params": [...], "m": [...], "v": [...], "t": int}``,
    copies in float64 of the parameters and of AdamW's ``exp_avg``, ``exp_avg_sq`` and ``step``.
    """
    ps = [torch.nn.Parameter(p.detach().double().clone()) for p in params]
    groups = [{"params": [p for p, d in zip(ps, decay) if d], "weight_decay": weight_decay},
              {"params": [p for p, d in zip(ps, decay) if not d], "weight_decay": 0.0}]
    groups = [g for g in groups if g["params"]]
    opt = torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, foreach=False)
    records = []
    for grads in grads_per_step:
        for p, g in zip(ps, grads):
            p.grad = g.detach().double().clone()
        opt.step()
        state = [opt.state[p] for p in ps]
        records.append({"params": [p.detach().clone() for p in ps],
                        "m": [s["exp_avg"].clone() for s in state],
                        "v": [s["exp_avg_sq"].clone() for s in state],
                        "t": int(state[0]["step"])})
    return records


def adamw_by_formula(params, grads_per_step, decay, *, lr, betas, eps, weight_decay,
                     mistake: str | None = None) -> list[dict]:
    """AdamW written out in float64, records as :func:`adamw_torch`; ``mistake`` plants one error.

    ``p <- p (1 - lr wd) - lr m_hat / (sqrt(v_hat) + eps)`` with ``m_hat = m / (1 - b1^t)``,
    ``v_hat = v / (1 - b2^t)``. Mistakes: ``"l2"`` (wd p added to the gradient), ``"no_bias_correction"``,
    ``"eps_in_sqrt"``, ``"decay_all"`` (ignores ``decay``), ``"decay_none"``, ``"decay_without_lr"``
    (``p (1 - wd)``), ``"decay_after"`` (decay applied after the Adam step), ``"swapped_betas"``,
    ``"ema_swapped"`` (``m = (1 - b1) m + b1 g``).
    """
    b1, b2 = betas
    if mistake == "swapped_betas":
        b1, b2 = b2, b1
    ps = [p.detach().double().clone() for p in params]
    ms = [torch.zeros_like(p) for p in ps]
    vs = [torch.zeros_like(p) for p in ps]
    records = []
    for t, grads in enumerate(grads_per_step, start=1):
        for i, (g, d) in enumerate(zip(grads, decay)):
            g = g.detach().double()
            d = {"decay_all": True, "decay_none": False}.get(mistake, d)
            wd = weight_decay if d else 0.0
            if mistake == "l2":
                g = g + wd * ps[i]
            elif mistake == "decay_without_lr":
                ps[i] = ps[i] * (1 - wd)
            elif mistake != "decay_after":
                ps[i] = ps[i] * (1 - lr * wd)
            if mistake == "ema_swapped":
                ms[i] = (1 - b1) * ms[i] + b1 * g
                vs[i] = (1 - b2) * vs[i] + b2 * g * g
            else:
                ms[i] = b1 * ms[i] + (1 - b1) * g
                vs[i] = b2 * vs[i] + (1 - b2) * g * g
            if mistake == "no_bias_correction":
                m_hat, v_hat = ms[i], vs[i]
            else:
                m_hat, v_hat = ms[i] / (1 - b1 ** t), vs[i] / (1 - b2 ** t)
            denom = torch.sqrt(v_hat + eps) if mistake == "eps_in_sqrt" else torch.sqrt(v_hat) + eps
            ps[i] = ps[i] - lr * m_hat / denom
            if mistake == "decay_after":
                ps[i] = ps[i] * (1 - lr * wd)
        records.append({"params": [p.clone() for p in ps], "m": [m.clone() for m in ms],
                        "v": [v.clone() for v in vs], "t": t})
    return records


# ----------------------------------------------------------------- warm-up + cosine


def hf_cosine_lrs(warmup_steps: int, total_steps: int, max_lr: float, last_step: int) -> list[float]:
    """The learning rate of steps 0..last_step under ``transformers.get_cosine_schedule_with_warmup``.

    Read from a real ``LambdaLR`` on a one-parameter SGD optimiser, stepped ``last_step`` times.
    Past ``total_steps`` these are transformers' values, which climb back up the cosine.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import get_cosine_schedule_with_warmup

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))], lr=max_lr)
    sched = get_cosine_schedule_with_warmup(opt, num_warmup_steps=warmup_steps, num_training_steps=total_steps)
    lrs = []
    for _ in range(last_step + 1):
        lrs.append(float(opt.param_groups[0]["lr"]))
        opt.step()  # no gradient: nothing moves, but LambdaLR sees the usual order of calls
        sched.step()
    return lrs


def cosine_mistake(step: int, warmup: int, total: int, max_lr: float, mistake: str) -> float:
    """What a usual schedule mistake returns at ``step`` (for the hints)."""
    if mistake == "no_clamp":  # transformers' own values past the end
        return hf_cosine_lrs(warmup, total, max_lr, step)[step]
    if mistake == "warmup_plus_one":
        if step < warmup:
            return max_lr * (step + 1) / warmup
        mistake = None
    if mistake == "warmup_reaches_peak_early":
        if step < warmup:
            return max_lr * step / max(1, warmup - 1)
        mistake = None
    if step > total:
        return 0.0
    if step < warmup:
        return max_lr * step / max(1, warmup)
    if mistake == "progress_from_zero":
        progress = step / total
    else:
        progress = (step - warmup) / max(1, total - warmup)
    if mistake == "linear_decay":
        return max_lr * (1 - progress)
    if mistake == "full_cycle":
        return max_lr * 0.5 * (1 + math.cos(2 * math.pi * progress))
    if mistake == "cos_without_half":
        return max_lr * math.cos(math.pi * progress)
    return max_lr * 0.5 * (1 + math.cos(math.pi * progress))


# ----------------------------------------------------------------- temperature, top-k, top-p


def reference_filter(logits, temperature: float = 1.0, top_k: int | None = None,
                     top_p: float | None = None) -> torch.Tensor:
    """transformers' Temperature-, TopK- and TopPLogitsWarper in that order, in float64. logits (B, V)."""
    from transformers.generation.logits_process import (
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    scores = logits.double()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scores = TemperatureLogitsWarper(temperature)(None, scores)
        if top_k is not None:
            scores = TopKLogitsWarper(top_k)(None, scores)
        if top_p is not None:
            scores = TopPLogitsWarper(top_p)(None, scores)
    return scores


def top_p_margin(logits, temperature: float, top_k: int | None, top_p: float) -> float:
    """How far (in probability) the nearest tail mass lies from the cut ``1 - top_p``, in float64.

    A top-p case is fair only when this is not tiny: otherwise float32 rounding, or the order of
    a sum, decides whether a token survives. Ties between a kept and a dropped token count as 0.
    """
    scores = reference_filter(logits, temperature, top_k, None)
    probs = scores.softmax(dim=-1)
    sorted_p, _ = torch.sort(probs, dim=-1)
    tail = sorted_p.cumsum(dim=-1)
    live = sorted_p > 0
    gaps = (tail - (1 - top_p)).abs().masked_fill(~live, math.inf)
    margin = float(gaps.min())
    drop = (tail <= 1 - top_p) & live
    # a tie across the cut: the last dropped and the first kept token have the same probability
    for row in range(probs.shape[0]):
        n_drop = int(drop[row].sum()) + int((~live[row]).sum())
        if 0 < n_drop < probs.shape[1] and sorted_p[row, n_drop - 1] == sorted_p[row, n_drop]:
            return 0.0
    return margin


# ----------------------------------------------------------------- the tiny GPT's data

#: the characters of ``make_arithmetic_lines`` text: newline, space, + - * =, the digits
ARITHMETIC_CHARS = "\n +-*=0123456789"


def arithmetic_ids(n_lines: int, seed: int) -> torch.Tensor:
    """``n_lines`` generated arithmetic lines, one per line, as (N,) int64 ids of the sorted characters."""
    from llmcourse.charlm import CharVocab
    from llmcourse.corpus import make_arithmetic_lines

    text = "\n".join(make_arithmetic_lines(n_lines, seed=seed % 2**32)) + "\n"
    return CharVocab(ARITHMETIC_CHARS).encode(text)
