"""The usual mistakes of the chapter 10 tasks, computed, for the checks' hints (a helper module).

Each ``*_mistake(..., mistake)`` returns, in float64, what an implementation making ``mistake``
returns; each ``*_MISTAKES`` table pairs a mistake with the sentence the student reads when
their answer reproduces it (:func:`hints` builds ``assert_close``'s hint list from both).
"""

from __future__ import annotations

import functools
import math
import warnings

import torch
import torch.nn.functional as F

from llmcourse import policy_gradient as pg


def _picked(wrong, args, mistake, pick):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. the std of a single number, for a mistake that takes one
        out = wrong(*args, mistake)
    return out if pick is None else out[pick]


def hints(table, wrong, *args, pick=None) -> list:
    """[(explanation, () -> wrong answer)] for each (mistake, explanation) in ``table``."""
    return [(why, functools.partial(_picked, wrong, args, m, pick)) for m, why in table]


BT_MISTAKES = (
    ("sign", "the sign is wrong: the loss is -log sigma(r_chosen - r_rejected), small when the chosen answer "
             "scores higher"),
    ("sum", "this is the sum over the pairs: take the mean"),
    ("one_minus_sigmoid", "this is the mean of 1 - sigma(d), not of -log sigma(d)"),
    ("bits", "this is in bits: use the natural logarithm"),
)


def bt_mistake(chosen, rejected, mistake: str):
    d = (chosen - rejected).double()
    losses = -F.logsigmoid(-d if mistake == "sign" else d)
    if mistake == "one_minus_sigmoid":
        losses = 1 - torch.sigmoid(d)
    total = losses.sum() if mistake == "sum" else losses.mean()
    return total / math.log(2) if mistake == "bits" else total


GAE_MISTAKES = (
    ("dones_ignored", "episode ends are ignored: where dones[t] = 1 neither V(s_{t+1}) nor A_{t+1} may flow back"),
    ("trace_uncut", "an episode end cuts the bootstrap V(s_{t+1}) but not the recursion: A_t = delta_t + gamma lam "
                    "(1 - done_t) A_{t+1}"),
    ("bootstrap_uncut", "an episode end cuts the recursion but not the bootstrap: delta_t = r_t + gamma (1 - done_t) "
                        "V(s_{t+1}) - V(s_t)"),
    ("dones_next", "the episode-end flags are off by one: dones[t] = 1 says that step t itself ended its episode"),
    ("bootstrap_current", "delta_t uses V(s_t) where it needs V(s_{t+1}), the value of the next state"),
    ("no_last_value", "last_value is ignored: it is V(s_T), the value after the last step, used unless that step "
                      "ended its episode"),
    ("no_gamma_in_trace", "the recursion multiplies by lam only: A_t = delta_t + gamma * lam * A_{t+1}"),
    ("swapped", "gamma and lam are swapped"),
    ("transposed", "time runs along the wrong axis: for (B, T) inputs time is the LAST axis"),
    ("returns_are_advantages", "returns must be advantages + values (the value targets)"),
    ("returns_discounted", "returns must be advantages + values (TD(lambda) targets), not the discounted rewards"),
)


def gae_mistake(rewards, values, dones, gamma, lam, last_value, mistake: str):
    """(advantages, returns) of a GAE mistake, in float64 (dones: 0/1 floats)."""
    r, v, d = rewards.double(), values.double(), dones.double()
    last = torch.zeros(r.shape[:-1], dtype=torch.float64) if last_value is None or mistake == "no_last_value" \
        else torch.as_tensor(last_value, dtype=torch.float64)
    if mistake == "transposed":
        if r.ndim != 2:
            raise LookupError("one sequence has no second axis")
        adv, ret = gae_mistake(r.T, v.T, d.T, gamma, lam, torch.zeros(r.shape[1]), "none")
        return adv.T, ret.T
    g_rec, g_boot = {"no_gamma_in_trace": (lam, gamma), "swapped": (gamma * lam, lam)}.get(mistake,
                                                                                         (gamma * lam, gamma))
    adv, running, nxt = torch.empty_like(r), torch.zeros_like(last), last
    for t in reversed(range(r.shape[-1])):
        cont = 1 - d[..., t]
        if mistake == "dones_ignored":
            cont = torch.ones_like(cont)
        elif mistake == "dones_next":
            cont = 1 - d[..., t + 1] if t + 1 < r.shape[-1] else torch.ones_like(cont)
        boot = v[..., t] if mistake == "bootstrap_current" else nxt
        delta = r[..., t] + g_boot * (1.0 if mistake == "bootstrap_uncut" else cont) * boot - v[..., t]
        running = delta + g_rec * (1.0 if mistake == "trace_uncut" else cont) * running
        adv[..., t] = running
        nxt = v[..., t]
    if mistake == "returns_are_advantages":
        return adv, adv
    if mistake == "returns_discounted":
        return adv, pg.discounted_returns(r, gamma, d, last_value=last)
    return adv, adv + v


PPO_MISTAKES = (
    ("min_max_swapped", "the loss takes the min of -A r and -A clip(r): PPO's pessimistic bound is the min of the "
                        "objectives, which is the MAX of the losses"),
    ("unclipped", "the ratio is not clipped"), ("clip_only", "only the clipped term is used: take the max of both"),
    ("ratio_inverted", "the ratio is inverted: r = exp(logprobs - old_logprobs)"),
    ("ratio_not_exp", "the ratio is the difference of log-probs: r = exp(logprobs - old_logprobs)"),
    ("objective_not_loss", "this is the objective: the loss is its negative"),
    ("mask_ignored", "the mask is ignored: average over the tokens where mask is True only"),
    ("mean_over_all_tokens", "the masked sum is divided by all tokens: divide by the number of tokens in the mask"),
    ("clip_fraction_outside", "the clip fraction counts every ratio outside [1 - eps, 1 + eps]: count only the tokens "
                              "where the clipped term is the larger loss (r > 1 + eps with A > 0, or r < 1 - eps with "
                              "A < 0)"),
)


def ppo_mistake(logprobs, old, adv, eps, mask, mistake: str):
    """(loss, clip_fraction) of a PPO mistake, float64."""
    lp, old, adv = logprobs.double(), old.double(), adv.double()
    ratio = torch.exp(old - lp) if mistake == "ratio_inverted" else torch.exp(lp - old)
    if mistake == "ratio_not_exp":
        ratio = lp - old
    unclipped, clipped = -adv * ratio, -adv * ratio.clamp(1 - eps, 1 + eps)
    per_token = {"min_max_swapped": torch.minimum(unclipped, clipped), "unclipped": unclipped,
                 "clip_only": clipped}.get(mistake, torch.maximum(unclipped, clipped))
    if mistake == "objective_not_loss":
        per_token = -per_token
    counted = None if mistake == "mask_ignored" else mask
    loss = pg.masked_mean(per_token, counted)
    if mistake == "mean_over_all_tokens" and mask is not None:
        loss = torch.where(mask, per_token, 0.0).sum() / per_token.numel()
    frac = (ratio - 1).abs() > eps if mistake == "clip_fraction_outside" else clipped > unclipped
    return loss, pg.masked_mean(frac.double(), counted)


VALUE_MISTAKES = (
    ("clip_ignored", "clip_eps is ignored: with clip_eps set, take max((V - R)^2, (V_clip - R)^2)"),
    ("min_not_max", "the min of the two squared errors is taken: PPO2 takes the max"),
    ("clipped_only", "only the clipped squared error is used: take the max of (V - R)^2 and (V_clip - R)^2"),
    ("no_half", "the factor 0.5 is missing"), ("mask_ignored", "the mask is ignored"),
)


def value_mistake(values, old, returns, eps, mask, mistake: str):
    v, old, ret = values.double(), old.double(), returns.double()
    sq = (v - ret) ** 2
    if eps is not None and mistake != "clip_ignored":
        clipped = old + (v - old).clamp(-eps, eps)
        sq = {"min_not_max": torch.minimum(sq, (clipped - ret) ** 2),
              "clipped_only": (clipped - ret) ** 2}.get(mistake, torch.maximum(sq, (clipped - ret) ** 2))
    return (1.0 if mistake == "no_half" else 0.5) * pg.masked_mean(sq, None if mistake == "mask_ignored" else mask)


KL_MISTAKES = (("k1_sign", "k1 has the wrong sign: k1 = log pi - log pi_ref"),
               ("k2_no_half", "k2 is (log r)^2 / 2: the half is missing"),
               ("k3_other_direction", "k3 uses r = pi / pi_ref: it is (r - 1) - log r with r = pi_ref / pi"),
               ("k3_sign", "k3 = (r - 1) - log r: the sign of log r is wrong"))


def kl_mistake(logprobs, ref, mistake: str) -> dict:
    log_r = ref.double() - logprobs.double()
    out = pg.kl_estimators(logprobs.double(), ref.double())
    changed = {"k1_sign": ("k1", log_r), "k2_no_half": ("k2", log_r ** 2),
               "k3_other_direction": ("k3", torch.expm1(-log_r) + log_r),
               "k3_sign": ("k3", torch.expm1(log_r) + log_r)}
    key, value = changed[mistake]
    return {**out, key: value}


DPO_MISTAKES = (
    ("no_beta", "beta is missing: the implicit reward is beta * (log pi - log pi_ref)"),
    ("no_reference", "the reference model is missing: use log pi - log pi_ref for each answer"),
    ("sign_swapped", "the margin has the wrong sign: -log sigma(chosen reward - rejected reward), each reward "
                     "beta * (log pi - log pi_ref)"),
    ("reference_inverted", "the log-ratios are inverted: log pi - log pi_ref, not log pi_ref - log pi"),
    ("beta_outside", "beta multiplies the loss instead of the log-ratios inside the sigmoid"),
    ("rewards_swapped", "chosen_rewards and rejected_rewards are swapped"),
)


def dpo_mistake(pc, pr, rc, rr, beta, mistake: str):
    pc, pr, rc, rr = (x.double() for x in (pc, pr, rc, rr))
    if mistake == "no_reference":
        rc, rr = torch.zeros_like(rc), torch.zeros_like(rr)
    if mistake == "reference_inverted":
        pc, pr, rc, rr = rc, rr, pc, pr
    b = 1.0 if mistake == "no_beta" else beta
    c, r = b * (pc - rc), b * (pr - rr)
    losses = -F.logsigmoid(r - c if mistake == "sign_swapped" else c - r)
    if mistake == "beta_outside":
        losses = -beta * F.logsigmoid((c - r) / beta)
    return (losses, r, c) if mistake == "rewards_swapped" else (losses, c, r)


GRPO_MISTAKES = (("population_std", "the std divides by G: like trl (and torch.std) use Bessel's correction, G - 1"),
                 ("axis_0", "mean and std are taken over the prompts (axis 0): take them over each group (axis 1)"),
                 ("whole_batch", "mean and std are taken over the whole batch: take them within each group (row)"),
                 ("no_scaling", "the advantages are not divided by the group's std (+ eps)"),
                 ("eps_inside_sqrt", "eps is inside the square root: divide by std + eps"),
                 ("no_eps", "eps is missing: divide by std + eps"),
                 ("divide_by_variance", "this divides by the variance: divide by the standard deviation + eps"))


def grpo_mistake(rewards, eps, mistake: str):
    r = rewards.double()
    dim = {"axis_0": 0, "whole_batch": None}.get(mistake, 1)
    mean = r.mean() if dim is None else r.mean(dim=dim, keepdim=True)
    std = r.std() if dim is None else r.std(dim=dim, keepdim=True)
    if mistake == "population_std":
        std = r.std(dim=1, keepdim=True, unbiased=False)
    if mistake == "no_scaling":
        return r - mean
    if mistake == "eps_inside_sqrt":
        return (r - mean) / torch.sqrt(r.var(dim=1, keepdim=True) + eps)
    if mistake == "divide_by_variance":
        return (r - mean) / (r.var(dim=1, keepdim=True) + eps)
    return (r - mean) / (std + (0.0 if mistake == "no_eps" else eps))
