"""The chapter 10 checks are fair both ways: correct answers get full marks, planted mistakes fail.

The solution functions come from the nbgrader source notebook (setup and answer cells, run as a
notebook kernel would). Beside them each task has three or more correct implementations written
differently (float64 inside, loops, einsum or matrix forms, another valid algorithm: GAE as the
explicit sum of discounted TD errors, PPO through the sign of the advantage, DPO with logaddexp,
RL loops with k3 in the loss, the exact KL, PPO epochs, exact policy gradients), which must pass
too: the references run in float64 and the tolerances come from the measured spread of such
implementations (:func:`measure_spread`). Each wrong implementation is a mistake a student could
plausibly make, written as a student would; each must make its check raise CheckFailed naming what
differs (and, where the check recognises it, the mistake).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from autograder.checks import _ch10_mistakes as mis
from autograder.checks import _ch10_references as ref
from autograder.checks import ch10_rlhf as checks
from autograder.compare import CheckFailed
from autograder.guard import ForbiddenCall, static_violations
from llmcourse import policy_gradient as pg
from llmcourse import preference as pref
from tests.notebook_kernel import assert_checks_hold, kernel, planted, solution_of, switched

ASSIGNMENT = "ch10_rlhf"
# The mistake the nbgrader round trip plants: the population std (no Bessel correction) in GRPO's advantages.
# grpo_advantages is called by no other graded cell, so only this task may lose points.
ROUND_TRIP_MISTAKE = ("ch10_grpo_advantages_answer",
                      "def grpo_advantages(rewards, eps=1e-4):\n"
                      "    mean = rewards.mean(dim=1, keepdim=True)\n"
                      "    std = ((rewards - mean) ** 2).mean(dim=1, keepdim=True).sqrt()\n"
                      "    return (rewards - mean) / (std + eps)\n")

pytestmark = pytest.mark.ch10


def check_of(task):
    return getattr(checks, task.check)


# ----------------------------------------------------------------- the notebook and the references

@pytest.mark.parametrize("task", checks.TASKS, ids=lambda t: t.grade_id)
def test_solution_passes_check(task, one_thread):
    check_of(task)(solution_of(ASSIGNMENT)[task.name])


def test_gae_references_agree_recursion_and_explicit_sum():
    for inputs, rewards, values, dones, gamma, lam, last, hand in ref.gae_cases():
        want = pg.gae(rewards.double(), values.double(), dones.double(), gamma, lam,
                      None if last is None else last.double())
        got = ref.gae_by_sum(rewards, values, dones, gamma, lam, last)
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12, msg=str(inputs))
        if hand is not None:
            for a, b in zip(hand, want):
                torch.testing.assert_close(a.double(), b, msg="the hand-computed case")


def test_trl_references_equal_the_course_library_on_every_case():
    for c, r in [(torch.randn(7), torch.randn(7)), (300 * torch.randn(5), 300 * torch.randn(5))]:
        torch.testing.assert_close(ref.trl_reward_loss(c, r), pref.bradley_terry_loss(c.double(), r.double()))
    for inputs, pc, pr, rc, rr, beta in ref.dpo_cases():
        want = pref.dpo_loss(*(x.double() for x in (pc, pr, rc, rr)), beta=0.1 if beta is None else beta)
        for a, b in zip(ref.trl_dpo(pc, pr, rc, rr, 0.1 if beta is None else beta), want):
            torch.testing.assert_close(a, b, msg=str(inputs))
    r = torch.randn(5, 7)
    torch.testing.assert_close(ref.grpo_reference(r, 1e-4), pg.grpo_advantages(r.double()))


def test_every_hint_mistake_changes_some_case():
    """A mistake that no case can tell apart from the right answer would be a hint without teeth."""
    gae_cases = ref.gae_cases()
    for m, _ in mis.GAE_MISTAKES:
        assert any(_differs(mis.gae_mistake(r, v, d, g, lam, last, m),
                            pg.gae(r.double(), v.double(), d.double(), g, lam, None if last is None else last.double()))
                   for _, r, v, d, g, lam, last, _ in gae_cases if not (m == "transposed" and r.ndim == 1)), m
    for m, _ in mis.PPO_MISTAKES:
        assert any(_differs(mis.ppo_mistake(n, o, a, e, k, m), pg.ppo_policy_loss(n.double(), o.double(), a.double(),
                                                                                  e, k))
                   for _, n, o, a, e, k in ref.ppo_cases()), m
    for m, _ in mis.DPO_MISTAKES:
        assert any(_differs(mis.dpo_mistake(*x[1:5], x[5] or 0.1, m), ref.trl_dpo(*x[1:5], x[5] or 0.1))
                   for x in ref.dpo_cases()), m


def _differs(got, want) -> bool:
    return any(not torch.allclose(torch.as_tensor(a).double(), torch.as_tensor(b).double(), rtol=1e-4, atol=1e-5)
               for a, b in zip(got, want))


def test_ppo_cases_keep_ratios_off_the_clip_edges_and_clip_some_tokens():
    for inputs, new, old, adv, eps, mask in ref.ppo_cases():
        ratio = (new - old).double().exp()
        assert ((ratio - (1 - eps)).abs().min() > 1e-3) and ((ratio - (1 + eps)).abs().min() > 1e-3), inputs
        if "old = new" not in inputs["case"] and "near 1" not in inputs["case"]:
            assert float(pg.ppo_policy_loss(new, old, adv, eps, mask)[1]) > 0, inputs


def test_bandit_draws_are_fair_and_the_secret_changes_them(monkeypatch):
    public = [ref.bandit(s, p, v, checks.LOOP_BETA) for s, (p, v) in enumerate(checks.LOOP_SHAPES)]
    monkeypatch.setenv("AUTOGRADER_SECRET", "another secret")
    hidden = [ref.bandit(s, p, v, checks.LOOP_BETA) for s, (p, v) in enumerate(checks.LOOP_SHAPES)]
    for (ref_logits, rewards), (p, v) in zip(public + hidden, checks.LOOP_SHAPES * 2):
        assert ref_logits.shape == rewards.shape == (p, v)
        star = pref.kl_regularized_optimum(torch.log_softmax(ref_logits.double(), -1), rewards.double(),
                                           checks.LOOP_BETA)
        gain = ref.policy_stats(star, ref_logits, rewards)[0] - ref.policy_stats(ref_logits, ref_logits, rewards)[0]
        assert gain >= 0.22 and ref.policy_stats(star, ref_logits, rewards)[1] <= 0.75
    assert not torch.equal(public[0][0], hidden[0][0])


def test_course_secret_changes_the_inputs(monkeypatch):
    public = [c[1] for c in ref.ppo_cases()] + [c[1] for c in ref.gae_cases()[1:]]
    monkeypatch.setenv("AUTOGRADER_SECRET", "course secret A")
    hidden = [c[1] for c in ref.ppo_cases()] + [c[1] for c in ref.gae_cases()[1:]]
    assert all(a.shape == b.shape and not torch.equal(a, b) for a, b in zip(public, hidden))


# ----------------------------------------------------------------- correct variants

def bt_logsigmoid(chosen_rewards, rejected_rewards):
    return -F.logsigmoid(chosen_rewards - rejected_rewards).mean()


def bt_float64_by_hand(chosen_rewards, rejected_rewards):
    """log(1 + e^-d) written out: relu(-d) + log1p(e^-|d|), in float64."""
    d = (chosen_rewards - rejected_rewards).double()
    return (torch.relu(-d) + torch.log1p(torch.exp(-d.abs()))).mean().float()


def bt_binary_cross_entropy(chosen_rewards, rejected_rewards):
    """The pairs as a logistic regression whose label is always 1."""
    d = chosen_rewards - rejected_rewards
    return F.binary_cross_entropy_with_logits(d, torch.ones_like(d))


def gae_explicit_sum(rewards, values, dones, gamma, lam, last_value=None):
    """A_t = sum_k (gamma lam)^(k-t) delta_k up to the first episode end, with Python loops."""
    r, v, d = rewards.reshape(-1, rewards.shape[-1]), values.reshape(-1, rewards.shape[-1]), dones.reshape(
        -1, rewards.shape[-1])
    last = torch.zeros(len(r)) if last_value is None else torch.as_tensor(last_value).reshape(-1)
    adv = torch.zeros_like(r)
    for b in range(len(r)):
        for t in range(r.shape[1]):
            total, w = 0.0, 1.0
            for k in range(t, r.shape[1]):
                nxt = v[b, k + 1] if k + 1 < r.shape[1] else last[b]
                total += w * (r[b, k] + gamma * (1 - d[b, k]) * nxt - v[b, k])
                if d[b, k]:
                    break
                w *= gamma * lam
            adv[b, t] = total
    adv = adv.reshape(rewards.shape)
    return adv, adv + values


def gae_float64_flipped(rewards, values, dones, gamma, lam, last_value=None):
    """float64, the recursion over the time-reversed tensors, results collected in a list."""
    r, v, c = rewards.double().flip(-1), values.double().flip(-1), 1 - dones.double().flip(-1)
    nxt = torch.zeros(r.shape[:-1], dtype=torch.float64) if last_value is None else torch.as_tensor(
        last_value).double()
    a, out = torch.zeros_like(nxt), []
    for t in range(r.shape[-1]):
        a = r[..., t] + gamma * c[..., t] * nxt - v[..., t] + gamma * lam * c[..., t] * a
        out.append(a)
        nxt = v[..., t]
    adv = torch.stack(out, dim=-1).flip(-1)
    return adv.float(), (adv + values.double()).float()


def gae_matrix(rewards, values, dones, gamma, lam, last_value=None):
    """All at once: A = delta @ W, W[k, t] = (gamma lam)^(k-t) if no episode ends in [t, k), by einsum."""
    last = torch.zeros(rewards.shape[:-1]) if last_value is None else torch.as_tensor(last_value)
    nxt = torch.cat([values[..., 1:], last[..., None]], dim=-1)
    delta = rewards + gamma * (1 - dones) * nxt - values
    t_len = rewards.shape[-1]
    k, t = torch.meshgrid(torch.arange(t_len), torch.arange(t_len), indexing="ij")
    power = (gamma * lam) ** (k - t).clamp(min=0).float() * (k >= t)
    before = torch.cumsum(dones, dim=-1) - dones
    alive = (before[..., :, None] == before[..., None, :]).float()
    adv = torch.einsum("...k,kt,...kt->...t", delta, power, alive)
    return adv, adv + values


def ppo_sign_form(logprobs, old_logprobs, advantages, clip_eps=0.2, mask=None):
    """min(r A, (1 + sign(A) eps) A), the form of the GRPO paper; clip fraction from the same cases."""
    if mask is None:
        mask = torch.ones_like(logprobs, dtype=torch.bool)
    r = torch.exp(logprobs - old_logprobs)
    bound = torch.where(advantages >= 0, 1 + clip_eps, 1 - clip_eps)
    objective = torch.minimum(r * advantages, bound * advantages)
    clipped = ((r > 1 + clip_eps) & (advantages > 0)) | ((r < 1 - clip_eps) & (advantages < 0))
    m = mask.float()
    return -(objective * m).sum() / m.sum(), (clipped.float() * m).sum() / m.sum()


def ppo_float64_selected(logprobs, old_logprobs, advantages, clip_eps=0.2, mask=None):
    """float64 inside, the counted tokens picked out by boolean indexing first."""
    keep = torch.ones_like(logprobs, dtype=torch.bool) if mask is None else mask
    lp, old, a = logprobs[keep].double(), old_logprobs[keep].double(), advantages[keep].double()
    r = (lp - old).exp()
    losses = torch.stack([-a * r, -a * r.clamp(1 - clip_eps, 1 + clip_eps)])
    loss, which = losses.max(dim=0)
    return loss.mean().float(), (losses[1] > losses[0]).double().mean().float()


def ppo_nanmean(logprobs, old_logprobs, advantages, clip_eps=0.2, mask=None):
    """-min of the objectives; masked tokens become nan and torch.nanmean skips them."""
    r = torch.exp(logprobs - old_logprobs)
    unclipped, clipped = r * advantages, torch.clamp(r, 1 - clip_eps, 1 + clip_eps) * advantages
    per_token = -torch.min(unclipped, clipped)
    active = (clipped < unclipped).float()
    if mask is not None:
        per_token = torch.where(mask, per_token, torch.full_like(per_token, float("nan")))
        active = torch.where(mask, active, torch.full_like(active, float("nan")))
    return per_token.nanmean(), active.nanmean()


def value_float64_selected(values, old_values, returns, clip_eps=None, mask=None):
    keep = torch.ones_like(values, dtype=torch.bool) if mask is None else mask
    v, old, ret = values[keep].double(), old_values[keep].double(), returns[keep].double()
    sq = (v - ret) ** 2
    if clip_eps is not None:
        sq = torch.maximum(sq, (old + (v - old).clamp(-clip_eps, clip_eps) - ret) ** 2)
    return (0.5 * sq.mean()).float()


def value_where(values, old_values, returns, clip_eps=None, mask=None):
    """The clipped value by torch.where on the size of the step; the mean as a weighted sum."""
    m = torch.ones_like(values) if mask is None else mask.float()
    err = (values - returns) ** 2
    if clip_eps is not None:
        step = values - old_values
        v_clip = torch.where(step.abs() > clip_eps, old_values + clip_eps * step.sign(), values)
        err = torch.where((v_clip - returns) ** 2 > err, (v_clip - returns) ** 2, err)
    return 0.5 * (err * m).sum() / m.sum()


def value_loop(values, old_values, returns, clip_eps=None, mask=None):
    total, n = 0.0, 0
    flat = zip(values.reshape(-1).tolist(), old_values.reshape(-1).tolist(), returns.reshape(-1).tolist(),
               (mask.reshape(-1).tolist() if mask is not None else [True] * values.numel()))
    for v, old, ret, keep in flat:
        if not keep:
            continue
        err = (v - ret) ** 2
        if clip_eps is not None:
            err = max(err, (old + min(max(v - old, -clip_eps), clip_eps) - ret) ** 2)
        total, n = total + err, n + 1
    return torch.tensor(0.5 * total / n)


def kl_float64_expm1(logprobs, ref_logprobs):
    log_r = (ref_logprobs - logprobs).double()
    return {"k1": (-log_r).float(), "k2": (log_r ** 2 / 2).float(), "k3": (torch.expm1(log_r) - log_r).float()}


def kl_ratio_first(logprobs, ref_logprobs):
    """r = exp(log pi_ref - log pi) first, then everything from r."""
    r = torch.exp(ref_logprobs - logprobs)
    return {"k1": -torch.log(r), "k2": 0.5 * torch.log(r) ** 2, "k3": r - 1 - torch.log(r)}


def kl_numpy(logprobs, ref_logprobs):
    lr = ref_logprobs.numpy().astype(np.float64) - logprobs.numpy().astype(np.float64)
    return {"k1": torch.from_numpy(-lr), "k2": torch.from_numpy(0.5 * lr * lr),
            "k3": torch.from_numpy(np.expm1(lr) - lr)}


def dpo_float64_softplus(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta=0.1):
    c = beta * (policy_chosen_logps.double() - ref_chosen_logps.double())
    r = beta * (policy_rejected_logps.double() - ref_rejected_logps.double())
    return F.softplus(r - c).float(), c.float(), r.float()


def dpo_logaddexp(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta=0.1):
    """-log sigma(h) = log(e^0 + e^-h); the log-ratio difference grouped as policy minus reference."""
    h = beta * ((policy_chosen_logps - policy_rejected_logps) - (ref_chosen_logps - ref_rejected_logps))
    losses = torch.logaddexp(torch.zeros_like(h), -h)
    return losses, beta * (policy_chosen_logps - ref_chosen_logps), beta * (policy_rejected_logps - ref_rejected_logps)


def dpo_loop(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta=0.1):
    losses, cs, rs = [], [], []
    for pc, pr, rc, rr in zip(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps):
        c, r = beta * (pc - rc), beta * (pr - rr)
        h = c - r
        losses.append(torch.log1p(torch.exp(-h)) if h > -30 else -h)  # e^-h overflows below: log(1 + e^-h) ~ -h
        cs.append(c.detach())
        rs.append(r.detach())
    return torch.stack(losses), torch.stack(cs), torch.stack(rs)


def grpo_by_sums(rewards, eps=1e-4):
    g = rewards.shape[1]
    mean = rewards.sum(dim=1, keepdim=True) / g
    std = torch.sqrt(((rewards - mean) ** 2).sum(dim=1, keepdim=True) / (g - 1))
    return (rewards - mean) / (std + eps)


def grpo_numpy(rewards, eps=1e-4):
    r = rewards.numpy().astype(np.float64)
    return torch.from_numpy((r - r.mean(axis=1, keepdims=True)) / (r.std(axis=1, ddof=1, keepdims=True) + eps))


def grpo_rows(rewards, eps=1e-4):
    return torch.stack([(row - row.mean()) / (torch.var(row, correction=1).sqrt() + eps) for row in rewards])


def _loop(ref_logits, reward_fn, beta, *, kind, steps=200, group=8, lr=0.1, epochs=1):
    """The RL loops of the variants and the planted mistakes: ``kind`` says how the KL enters."""
    p, v = ref_logits.shape
    logits = ref_logits.clone().requires_grad_(True)
    opt = torch.optim.Adam([logits], lr=lr)
    ref_lp = torch.log_softmax(ref_logits, -1)
    prompts = torch.arange(p).repeat_interleave(group)
    for _ in range(steps):
        with torch.no_grad():
            a = torch.multinomial(torch.softmax(logits, -1), group, replacement=True)
            old = torch.log_softmax(logits, -1).gather(1, a)
        r = reward_fn(prompts, a.reshape(-1)).reshape(p, group)
        for _ in range(epochs):
            lp_all = torch.log_softmax(logits, -1)
            lp = lp_all.gather(1, a)
            log_r = ref_lp.gather(1, a) - lp
            if kind == "k3_loss":  # GRPO-style, mean-only advantages (Dr. GRPO)
                adv = r - r.mean(1, keepdim=True)
                loss = (-adv * lp + beta * (torch.exp(log_r) - 1 - log_r)).mean()
            elif kind == "exact_kl":
                adv = r - r.mean(1, keepdim=True)
                loss = -(adv * lp).mean() + beta * (lp_all.exp() * (lp_all - ref_lp)).sum(-1).mean()
            elif kind == "ppo":
                shaped = r + beta * log_r.detach()
                adv = shaped - shaped.mean(1, keepdim=True)
                ratio = torch.exp(lp - old)
                loss = torch.maximum(-adv * ratio, -adv * ratio.clamp(0.8, 1.2)).mean()
            elif kind in ("no_kl", "kl_rewarded", "ascent_sign"):
                sign = {"no_kl": 0.0, "kl_rewarded": -1.0, "ascent_sign": 1.0}[kind]
                shaped = r + sign * beta * log_r.detach()
                adv = shaped - shaped.mean(1, keepdim=True)
                loss = (-adv * lp).mean() * (-1.0 if kind == "ascent_sign" else 1.0)
            elif kind == "std_normalised":  # GRPO's std scaling: beta no longer on the reward's scale
                adv = (r - r.mean(1, keepdim=True)) / (r.std(1, keepdim=True) + 1e-4)
                loss = (-adv * lp + beta * (torch.exp(log_r) - 1 - log_r)).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    return logits.detach()


def train_grpo_k3(ref_logits, reward_fn, beta):
    return _loop(ref_logits, reward_fn, beta, kind="k3_loss")


def train_exact_kl(ref_logits, reward_fn, beta):
    return _loop(ref_logits, reward_fn, beta, kind="exact_kl")


def train_ppo_epochs(ref_logits, reward_fn, beta):
    return _loop(ref_logits, reward_fn, beta, kind="ppo", steps=100, epochs=2)


def train_exact_gradient(ref_logits, reward_fn, beta):
    """No sampling: estimate r(p, a) for every answer (64 noisy calls each), then ascend the exact J."""
    p, v = ref_logits.shape
    prompts, answers = torch.arange(p).repeat_interleave(v), torch.arange(v).repeat(p)
    r_hat = torch.stack([reward_fn(prompts, answers) for _ in range(64)]).mean(0).reshape(p, v)
    logits = ref_logits.clone().requires_grad_(True)
    opt = torch.optim.Adam([logits], lr=0.05)
    ref_lp = torch.log_softmax(ref_logits, -1)
    for _ in range(300):
        lp = torch.log_softmax(logits, -1)
        j = (lp.exp() * (r_hat - beta * (lp - ref_lp))).sum(-1).mean()
        opt.zero_grad()
        (-j).backward()
        opt.step()
    return logits.detach()


CORRECT = {
    "check_bradley_terry": [bt_logsigmoid, bt_float64_by_hand, bt_binary_cross_entropy],
    "check_gae": [gae_explicit_sum, gae_float64_flipped, gae_matrix],
    "check_ppo_policy_loss": [ppo_sign_form, ppo_float64_selected, ppo_nanmean],
    "check_ppo_value_loss": [value_float64_selected, value_where, value_loop],
    "check_kl_estimators": [kl_float64_expm1, kl_ratio_first, kl_numpy],
    "check_dpo_loss": [dpo_float64_softplus, dpo_logaddexp, dpo_loop],
    "check_grpo_advantages": [grpo_by_sums, grpo_numpy, grpo_rows],
    "check_train_policy": [train_grpo_k3, train_exact_kl, train_ppo_epochs, train_exact_gradient],
}


@pytest.mark.parametrize("check, fn", [pytest.param(c, f, id=f.__name__) for c, fs in CORRECT.items() for f in fs])
def test_check_accepts_correct_variants(check, fn, one_thread):
    getattr(checks, check)(fn)


# ----------------------------------------------------------------- planted mistakes

def _bt(chosen_rewards, rejected_rewards, *, how):
    d = chosen_rewards - rejected_rewards
    losses = {"sign": lambda: -F.logsigmoid(-d), "naive": lambda: -torch.log(torch.sigmoid(d)),
              "one_minus": lambda: 1 - torch.sigmoid(d), "bits": lambda: -F.logsigmoid(d) / math.log(2)}.get(
        how, lambda: -F.logsigmoid(d))()
    if how == "sum":
        return losses.sum()
    if how == "per_pair":
        return losses
    if how == "detached":
        return torch.tensor(losses.mean().item())
    return losses.mean()


BT_MISTAKES = planted(
    (switched(_bt, "bt_wrong_sign", how="sign"), r"loss \(vs trl's RewardTrainer\) for case=worked by hand, B=2: .* - "
                                               r"the sign is wrong"),
    (switched(_bt, "bt_sum", how="sum"), r"case=worked by hand.* - this is the sum over the pairs"),
    (switched(_bt, "bt_one_minus_sigmoid", how="one_minus"), r"this is the mean of 1 - sigma\(d\)"),
    (switched(_bt, "bt_in_bits", how="bits"), r"this is in bits"),
    (switched(_bt, "bt_log_of_sigmoid", how="naive"), r"case=rewards in the hundreds.*underflows to log\(0\).*softplus"),
    (switched(_bt, "bt_per_pair", how="per_pair"), r"expected a single number \(a 0-d tensor\), got shape \(2,\)"),
    (switched(_bt, "bt_detached", how="detached"), r"what=gradient: the result is not a torch tensor connected"),
)


@pytest.mark.parametrize("wrong, match", BT_MISTAKES)
def test_check_bradley_terry_rejects(wrong, match):
    with pytest.raises(CheckFailed, match=match):
        checks.check_bradley_terry(wrong)


def _gae(rewards, values, dones, gamma, lam, last_value=None, *, how):
    if how == "time_axis_0" and rewards.ndim == 2:
        rewards, values, dones, last_value = rewards.T, values.T, dones.T, None
    t_len = rewards.shape[-1]
    nxt = torch.zeros_like(rewards[..., 0]) if last_value is None or how == "no_last_value" else last_value
    a, adv = torch.zeros_like(rewards[..., 0]), torch.zeros_like(rewards)
    steps = range(t_len) if how == "forward" else reversed(range(t_len))
    for t in steps:
        c = 1 - dones[..., t]
        if how == "ignore_dones":
            c = torch.ones_like(c)
        if how == "dones_next":
            c = 1 - dones[..., t + 1] if t + 1 < t_len else torch.ones_like(c)
        boot = values[..., t] if how == "bootstrap_current" else nxt
        g1, g2 = (lam, gamma) if how == "swapped" else (gamma, lam)
        delta = rewards[..., t] + g1 * (1.0 if how == "cut_trace_only" else c) * boot - values[..., t]
        trace = lam if how == "lambda_only" else g1 * g2
        a = delta + trace * (1.0 if how == "cut_bootstrap_only" else c) * a
        adv[..., t] = a
        nxt = values[..., t]
    if how == "time_axis_0" and adv.ndim == 2:
        adv, values = adv.T, values.T
    if how == "returns_are_advantages":
        return adv, adv
    return adv, adv + values


GAE_MISTAKES = planted(
    (switched(_gae, "gae_ignores_dones", how="ignore_dones"),
     r"advantages for case=episode ends, bootstrap.*episode ends are ignored"),
    (switched(_gae, "gae_cuts_the_bootstrap_only", how="cut_bootstrap_only"), r"cuts the bootstrap V\(s_\{t\+1\}\) but "
                                                                            r"not the recursion"),
    (switched(_gae, "gae_cuts_the_recursion_only", how="cut_trace_only"), r"cuts the recursion but not the bootstrap"),
    (switched(_gae, "gae_dones_off_by_one", how="dones_next"), r"the episode-end flags are off by one"),
    (switched(_gae, "gae_bootstraps_from_the_current_value", how="bootstrap_current"), r"delta_t uses V\(s_t\)"),
    (switched(_gae, "gae_ignores_last_value", how="no_last_value"), r"case=episode ends, bootstrap.*last_value is "
                                                                 r"ignored"),
    (switched(_gae, "gae_lambda_without_gamma", how="lambda_only"), r"the recursion multiplies by lam only"),
    (switched(_gae, "gae_gamma_lam_swapped", how="swapped"), r"gamma and lam are swapped"),
    (switched(_gae, "gae_time_on_axis_0", how="time_axis_0"), r"case=a batch, shape=\(4, 12\).*time runs along the "
                                                            r"wrong axis"),
    (switched(_gae, "gae_returns_are_advantages", how="returns_are_advantages"),
     r"returns for case=worked by hand.*returns must be advantages \+ values"),
    (switched(_gae, "gae_forward_in_time", how="forward"), r"advantages for case=worked by hand, T=3.*max \|got-want\|"),
)


@pytest.mark.parametrize("wrong, match", GAE_MISTAKES)
def test_check_gae_rejects(wrong, match):
    with pytest.raises(CheckFailed, match=match):
        checks.check_gae(wrong)


def _ppo(logprobs, old_logprobs, advantages, clip_eps=0.2, mask=None, *, how):
    ratio = torch.exp(old_logprobs - logprobs) if how == "inverted" else torch.exp(logprobs - old_logprobs)
    if how == "not_exp":
        ratio = logprobs - old_logprobs
    a, b = -advantages * ratio, -advantages * ratio.clamp(1 - clip_eps, 1 + clip_eps)
    per = {"min": torch.minimum(a, b), "unclipped": a}.get(how, torch.maximum(a, b))
    if how == "objective":
        per = -per
    m = torch.ones_like(per) if mask is None or how == "mask_ignored" else mask.float()
    n = per.numel() if how == "all_tokens" else m.sum()
    frac = (ratio - 1).abs() > clip_eps if how == "frac_outside" else b > a
    loss = (per * m).sum() / n
    return (torch.tensor(loss.item()) if how == "detached" else loss), (frac.float() * m).sum() / m.sum()


PPO_MISTAKES = planted(
    (switched(_ppo, "ppo_min_of_losses", how="min"), r"loss for case=one token per sequence.*the MAX of the losses"),
    (switched(_ppo, "ppo_unclipped", how="unclipped"), r"loss for .*the ratio is not clipped"),
    (switched(_ppo, "ppo_ratio_inverted", how="inverted"), r"the ratio is inverted"),
    (switched(_ppo, "ppo_ratio_is_log_difference", how="not_exp"), r"the ratio is the difference of log-probs"),
    (switched(_ppo, "ppo_returns_the_objective", how="objective"), r"this is the objective: the loss is its negative"),
    (switched(_ppo, "ppo_mask_ignored", how="mask_ignored"), r"loss for case=masked batch.*the mask is ignored"),
    (switched(_ppo, "ppo_divides_by_all_tokens", how="all_tokens"), r"case=masked batch.*divided by all tokens"),
    (switched(_ppo, "ppo_clip_fraction_cleanrl", how="frac_outside"), r"clip_fraction for .*counts every ratio "
                                                                    r"outside"),
    (switched(_ppo, "ppo_detached", how="detached"), r"what=gradient: the result is not a torch tensor connected"),
)


@pytest.mark.parametrize("wrong, match", PPO_MISTAKES)
def test_check_ppo_policy_loss_rejects(wrong, match):
    with pytest.raises(CheckFailed, match=match):
        checks.check_ppo_policy_loss(wrong)


def _value(values, old_values, returns, clip_eps=None, mask=None, *, how):
    sq = (values - returns) ** 2
    if clip_eps is not None and how != "clip_ignored":
        v_clip = old_values + (values - old_values).clamp(-clip_eps, clip_eps)
        sq = {"min": torch.minimum(sq, (v_clip - returns) ** 2), "clipped_only": (v_clip - returns) ** 2}.get(
            how, torch.maximum(sq, (v_clip - returns) ** 2))
    m = torch.ones_like(sq) if mask is None or how == "mask_ignored" else mask.float()
    return (1.0 if how == "no_half" else 0.5) * (sq * m).sum() / m.sum()


VALUE_MISTAKES = planted(
    (switched(_value, "value_without_half", how="no_half"),
     r"value loss for shape=\(12,\), clip_eps=None.*the factor 0\.5"),
    (switched(_value, "value_clip_ignored", how="clip_ignored"), r"clip_eps=0\.2.*clip_eps is ignored"),
    (switched(_value, "value_min_not_max", how="min"), r"clip_eps=0\.2.*the min of the two squared errors"),
    (switched(_value, "value_clipped_only", how="clipped_only"), r"only the clipped squared error is used"),
    (switched(_value, "value_mask_ignored", how="mask_ignored"), r"shape=\(4, 9\), clip_eps=None, mask=given.*the mask "
                                                               r"is ignored"),
)


@pytest.mark.parametrize("wrong, match", VALUE_MISTAKES)
def test_check_ppo_value_loss_rejects(wrong, match):
    with pytest.raises(CheckFailed, match=match):
        checks.check_ppo_value_loss(wrong)


def _kl(logprobs, ref_logprobs, *, how):
    log_r = ref_logprobs - logprobs
    r = torch.exp(ref_logprobs) / torch.exp(logprobs) if how == "prob_ratio" else torch.exp(log_r)
    out = {"k1": log_r if how == "k1_sign" else -log_r, "k2": log_r ** 2 if how == "k2_no_half" else 0.5 * log_r ** 2,
           "k3": r - 1 - torch.log(r) if how == "prob_ratio" else r - 1 - log_r}
    if how == "k3_other_direction":
        out["k3"] = torch.exp(-log_r) - 1 + log_r
    if how == "k3_sign":
        out["k3"] = r - 1 + log_r
    if how == "tuple":
        return out["k1"], out["k2"], out["k3"]
    if how == "means":
        return {k: x.mean() for k, x in out.items()}
    return out


KL_MISTAKES = planted(
    (switched(_kl, "kl_k1_sign", how="k1_sign"), r"k1 for case=sampled tokens.*k1 has the wrong sign"),
    (switched(_kl, "kl_k2_without_half", how="k2_no_half"), r"k2 .*the half is missing"),
    (switched(_kl, "kl_k3_other_direction", how="k3_other_direction"), r"k3 .*k3 uses r = pi / pi_ref"),
    (switched(_kl, "kl_k3_sign", how="k3_sign"), r"k3 .*the sign of log r is wrong"),
    (switched(_kl, "kl_ratio_of_probabilities", how="prob_ratio"), r"case=rare tokens near -100.*got (nan|inf|-inf) at"),
    (switched(_kl, "kl_tuple", how="tuple"), r"expected a dict with keys 'k1', 'k2', 'k3', got tuple"),
    (switched(_kl, "kl_means", how="means"), r"k1 for case=sampled tokens, shape=\(4, 6\).*shape \(\) but expected "
                                           r"\(4, 6\)"),
)


@pytest.mark.parametrize("wrong, match", KL_MISTAKES)
def test_check_kl_estimators_rejects(wrong, match):
    with pytest.raises(CheckFailed, match=match):
        checks.check_kl_estimators(wrong)


def _dpo(pc, pr, rc, rr, beta=0.1, *, how):
    if how == "no_reference":
        rc, rr = torch.zeros_like(rc), torch.zeros_like(rr)
    if how == "reference_inverted":
        pc, pr, rc, rr = rc, rr, pc, pr
    b = 1.0 if how == "no_beta" else beta
    c, r = b * (pc - rc), b * (pr - rr)
    h = r - c if how == "sign" else c - r
    losses = -torch.log(torch.sigmoid(h)) if how == "naive" else -F.logsigmoid(h)
    if how == "beta_outside":
        losses = -beta * F.logsigmoid((pc - rc) - (pr - rr))
    if how == "mean":
        return losses.mean(), c, r
    if how == "rewards_without_beta":
        return losses, pc - rc, pr - rr
    if how == "rewards_inverted":
        return losses, -c, -r
    return (losses, r, c) if how == "rewards_swapped" else (losses, c, r)


DPO_MISTAKES = planted(
    (switched(_dpo, "dpo_without_beta", how="no_beta"), r"losses \(vs trl's DPOTrainer\) for case=worked by hand.*beta "
                                                      r"is missing"),
    (switched(_dpo, "dpo_without_reference", how="no_reference"), r"the reference model is missing"),
    (switched(_dpo, "dpo_reference_inverted", how="reference_inverted"), r"losses .*the margin has the wrong sign"),
    (switched(_dpo, "dpo_chosen_rejected_swapped", how="sign"), r"losses .*the margin has the wrong sign"),
    (switched(_dpo, "dpo_beta_outside", how="beta_outside"), r"beta multiplies the loss"),
    (switched(_dpo, "dpo_log_of_sigmoid", how="naive"), r"case=margins of hundreds after beta.*got inf at index"),
    (switched(_dpo, "dpo_mean_loss", how="mean"), r"case=worked by hand.*got one number, expected one loss per pair"),
    (switched(_dpo, "dpo_rewards_without_beta", how="rewards_without_beta"), r"chosen_rewards .*beta is missing"),
    (switched(_dpo, "dpo_rewards_swapped", how="rewards_swapped"), r"chosen_rewards .*are swapped"),
    (switched(_dpo, "dpo_rewards_inverted", how="rewards_inverted"), r"chosen_rewards .*the log-ratios are inverted"),
)


@pytest.mark.parametrize("wrong, match", DPO_MISTAKES)
def test_check_dpo_loss_rejects(wrong, match):
    with pytest.raises(CheckFailed, match=match):
        checks.check_dpo_loss(wrong)


def _grpo(rewards, eps=1e-4, *, how):
    dim = 0 if how == "axis_0" else 1
    mean = rewards.mean() if how == "whole_batch" else rewards.mean(dim=dim, keepdim=True)
    std = rewards.std() if how == "whole_batch" else rewards.std(dim=dim, keepdim=True)
    if how == "population":
        std = ((rewards - mean) ** 2).mean(dim=1, keepdim=True).sqrt()
    if how == "no_scaling":
        return rewards - mean
    if how == "eps_in_sqrt":
        return (rewards - mean) / torch.sqrt(rewards.var(dim=1, keepdim=True) + eps)
    if how == "variance":
        return (rewards - mean) / (rewards.var(dim=1, keepdim=True) + eps)
    return (rewards - mean) / (std + (0.0 if how == "no_eps" else eps))


GRPO_MISTAKES = planted(
    (switched(_grpo, "grpo_population_std", how="population"), r"case=worked by hand.*Bessel's correction"),
    (switched(_grpo, "grpo_over_prompts", how="axis_0"), r"case=worked by hand, shape=\(1, 4\): got nan at \[0, 0\]: the "
                                                        r"std of a single number is nan - take .* each row"),
    (switched(_grpo, "grpo_over_the_batch", how="whole_batch"), r"over the whole batch"),
    (switched(_grpo, "grpo_no_std", how="no_scaling"), r"not divided by the group's std"),
    (switched(_grpo, "grpo_eps_in_sqrt", how="eps_in_sqrt"), r"advantages .*eps is inside the square root"),
    (switched(_grpo, "grpo_divides_by_variance", how="variance"), r"divides by the variance"),
    (switched(_grpo, "grpo_without_eps", how="no_eps"), r"case=worked by hand.*eps is missing"),
)


@pytest.mark.parametrize("wrong, match", GRPO_MISTAKES)
def test_check_grpo_advantages_rejects(wrong, match):
    with pytest.raises(CheckFailed, match=match):
        checks.check_grpo_advantages(wrong)


def train_ignores_the_kl(ref_logits, reward_fn, beta):
    return _loop(ref_logits, reward_fn, beta, kind="no_kl")


def train_normalises_advantages_by_std(ref_logits, reward_fn, beta):
    return _loop(ref_logits, reward_fn, beta, kind="std_normalised")


def train_rewards_the_kl(ref_logits, reward_fn, beta):
    return _loop(ref_logits, reward_fn, beta, kind="kl_rewarded")


def train_wrong_sign(ref_logits, reward_fn, beta):
    return _loop(ref_logits, reward_fn, beta, kind="ascent_sign")


def train_ten_steps(ref_logits, reward_fn, beta):
    return _loop(ref_logits, reward_fn, beta, kind="k3_loss", steps=10)


def train_returns_probabilities(ref_logits, reward_fn, beta):
    return torch.softmax(train_grpo_k3(ref_logits, reward_fn, beta), dim=-1)


def train_returns_transposed(ref_logits, reward_fn, beta):
    return train_grpo_k3(ref_logits, reward_fn, beta).T


def train_floats_as_answers(ref_logits, reward_fn, beta):
    reward_fn(torch.zeros(3), torch.zeros(3))
    return ref_logits


TRAIN_MISTAKES = planted(
    (train_ignores_the_kl, r"train_policy for prompts=8, answers=16, beta=0\.2, seed=0: "
                           r"KL\(pi \|\| pi_ref\) = \d\.\d\d nats, above 1\.2"),
    (train_normalises_advantages_by_std, r"KL\(pi \|\| pi_ref\) = \d\.\d\d nats, above 1\.2.*divided by their std"),
    (train_rewards_the_kl, r"KL\(pi \|\| pi_ref\) = \d+\.\d\d nats, above 1\.2"),
    (train_wrong_sign, r"the mean reward went from 0\.\d+ to 0\.\d+, up -0\.\d+; it must rise by at least 0\.15"),
    (train_ten_steps, r"up \+0\.\d+; it must rise by at least 0\.15"),
    (train_returns_probabilities, r"the rows sum to 1: these look like probabilities - return logits"),
    (train_returns_transposed, r"expected logits of shape \(8, 16\) \(prompts, answers\), got \(16, 8\)"),
    (train_floats_as_answers, r"raised ValueError: reward_fn\(prompts, answers\) takes two \(N,\) int64 tensors"),
)


@pytest.mark.parametrize("wrong, match", TRAIN_MISTAKES)
def test_check_train_policy_rejects(wrong, match, one_thread):
    with pytest.raises(CheckFailed, match=match):
        checks.check_train_policy(wrong)


def test_planted_helpers_are_right_when_not_broken(one_thread):
    """Each planted mistake differs from a correct implementation only in its one mistake."""
    checks.check_bradley_terry(switched(_bt, "bt", how=None))
    checks.check_gae(switched(_gae, "gae", how=None))
    checks.check_ppo_policy_loss(switched(_ppo, "ppo", how=None))
    checks.check_ppo_value_loss(switched(_value, "value", how=None))
    checks.check_kl_estimators(switched(_kl, "kl", how=None))
    checks.check_dpo_loss(switched(_dpo, "dpo", how=None))
    checks.check_grpo_advantages(switched(_grpo, "grpo", how=None))


# ----------------------------------------------------------------- the guard

SETUP = "import math\nimport torch\nimport torch.nn.functional as F\n"


def test_guard_refuses_the_course_library_in_the_tasks_it_answers():
    ns = kernel(SETUP, "def gae(rewards, values, dones, gamma, lam, last_value=None):\n"
                "    from llmcourse.policy_gradient import gae as course\n"
                "    return course(rewards, values, dones, gamma, lam, last_value)\n")
    with pytest.raises(ForbiddenCall, match=r"gae imports from llmcourse\.policy_gradient"):
        checks.check_gae(ns["gae"])
    ns = kernel(SETUP, "import llmcourse.preference as P\n",
                "def dpo_loss(pc, pr, rc, rr, beta=0.1):\n    return P.dpo_loss(pc, pr, rc, rr, beta)\n")
    with pytest.raises(ForbiddenCall, match=r"dpo_loss uses P\.dpo_loss \(from llmcourse\.preference\)"):
        checks.check_dpo_loss(ns["dpo_loss"])


def test_guard_catches_the_course_library_at_run_time_without_source():
    ns = kernel(SETUP, "def grpo_advantages(rewards, eps=1e-4):\n"
                "    import importlib\n"
                "    return importlib.import_module('llmcourse.policy_' + 'gradient').grpo_advantages(rewards, eps)\n",
                keep_source=False)
    with pytest.raises(ForbiddenCall, match=r"your code called llmcourse\.policy_gradient"):
        checks.check_grpo_advantages(ns["grpo_advantages"])


def test_guard_refuses_trl_and_allows_the_notebooks_own_functions(one_thread):
    ns = kernel(SETUP, "from trl.trainer.utils import nanstd\n",
                "def grpo_advantages(rewards, eps=1e-4):\n"
                "    return (rewards - rewards.mean(1, keepdim=True)) / (nanstd(rewards, dim=1, keepdim=True) + eps)\n")
    with pytest.raises(ForbiddenCall, match=r"grpo_advantages uses nanstd \(from trl"):
        checks.check_grpo_advantages(ns["grpo_advantages"])
    for task in checks.TASKS:
        for fn in (solution_of(ASSIGNMENT)[task.name], *CORRECT[task.check]):
            assert static_violations(fn, modules=task.modules, callables=task.callables) == [], fn.__name__


# ----------------------------------------------------------------- under a course secret

SECRETS = ("course secret A", "another secret", "3")
MISTAKES = {"check_bradley_terry": BT_MISTAKES, "check_gae": GAE_MISTAKES, "check_ppo_policy_loss": PPO_MISTAKES,
            "check_ppo_value_loss": VALUE_MISTAKES, "check_kl_estimators": KL_MISTAKES,
            "check_dpo_loss": DPO_MISTAKES, "check_grpo_advantages": GRPO_MISTAKES,
            "check_train_policy": TRAIN_MISTAKES}


@pytest.mark.parametrize("secret", SECRETS)
def test_checks_hold_under_several_course_secrets(monkeypatch, secret, one_thread):
    """With a secret the inputs change; the solution and the correct variants still pass, mistakes fail."""
    monkeypatch.setenv("AUTOGRADER_SECRET", secret)
    assert_checks_hold(ASSIGNMENT, checks, checks.TASKS, CORRECT, MISTAKES)


# ----------------------------------------------------------------- the tolerances

def measure_spread(secrets=(None,)) -> dict:
    """Largest |got - want| / (1 + |want|) of the solution and the correct variants, per tolerance constant.

    Every comparison of every check is recorded instead of asserted (the gradients under "TOL").
    ``python -c "from tests.test_checks_ch10 import measure_spread; print(measure_spread(range(20)))"``
    gives the numbers written beside the constants in ``autograder/checks/ch10_rlhf.py``.
    """
    import os
    from unittest import mock

    spread: dict[str, float] = {}
    names = {id(v): k for k, v in vars(checks).items() if k.startswith("TOL")}

    def record(got, want, *, tol=None, **kwargs):
        tol = tol or {k: kwargs[k] for k in ("rtol", "atol") if k in kwargs}
        name = names.get(id(tol), "TOL")
        g = np.asarray(got.detach() if hasattr(got, "detach") else got, dtype=float)
        w = np.asarray(want.detach() if hasattr(want, "detach") else want, dtype=float)
        with np.errstate(invalid="ignore"):
            err = float(np.nanmax(np.abs(g - w) / (1 + np.abs(w)), initial=0.0))
        spread[name] = max(spread.get(name, 0.0), err)

    old = os.environ.get("AUTOGRADER_SECRET")
    try:
        with mock.patch.object(checks, "_close", lambda got, want, **kw: record(got, want, **kw)), \
                mock.patch.object(checks, "assert_close", lambda got, want, **kw: record(got, want, **kw)):
            for secret in secrets:
                if secret is not None:
                    os.environ["AUTOGRADER_SECRET"] = f"spread {secret}"
                for task in checks.TASKS[:-1]:
                    for fn in (solution_of(ASSIGNMENT)[task.name], *CORRECT[task.check]):
                        check_of(task)(fn)
    finally:
        os.environ.pop("AUTOGRADER_SECRET", None)
        if old is not None:
            os.environ["AUTOGRADER_SECRET"] = old
    return spread


def test_tolerances_sit_well_above_the_measured_float32_spread():
    spread = measure_spread()
    assert set(spread) == {"TOL", "TOL_GAE", "TOL_KL", "TOL_GRPO"}
    for name, err in spread.items():
        tol = getattr(checks, name)
        assert 0 < err and 3 * err <= min(tol["rtol"], tol["atol"]), (name, err, tol)
