"""Hidden checks for the chapter 10 exercise: reward models, GAE, PPO, KL estimators, DPO, GRPO, an RL loop.

References, all computed live in float64 (:mod:`autograder.checks._ch10_references`):

* ``bradley_terry_loss`` - trl's ``RewardTrainer.compute_loss``; rewards up to the hundreds; its gradient;
* ``gae`` - ``llmcourse.policy_gradient.gae`` (itself tested against the explicit sum of discounted TD
  errors), a case worked out by hand, episode ends inside and at the end of sequences, bootstrap values;
* ``ppo_policy_loss``, ``ppo_value_loss`` - ``llmcourse.policy_gradient`` (trl 1.16 has no PPO): the
  loss, the clip fraction and the gradient; ratios are drawn at least 1e-3 away from 1 +- eps;
* ``kl_estimators`` - Schulman's k1, k2, k3 token by token, and their means under the policy, by
  enumerating every token of small distributions: k1 and k3 must average to the exact KL;
* ``dpo_loss`` - trl's ``DPOTrainer._compute_loss`` (loss type "sigmoid"), pair by pair;
* ``grpo_advantages`` - trl's group std (``trl.trainer.utils.nanstd``, Bessel-corrected) + eps;
* ``train_policy`` - the student's loop runs in the sandbox on a problem drawn from the course
  secret; the check computes the exact mean reward and KL(pi || pi_ref) of the returned policy.

When a result is wrong the check names the usual mistake that reproduces it. Every random input comes
from :func:`autograder.secret.hidden_torch_generator`.

Taught in: book/10-rlhf
"""

from __future__ import annotations

import math

import numpy as np
import torch

from autograder.checks import _ch10_mistakes as mis
from autograder.checks import _ch10_references as ref
from autograder.compare import (
    assert_close,
    describe,
    fail,
    probe_result,
    sharp_hints,
    to_array,
    unpack,
)
from autograder.guard import call_student, run_probe
from autograder.secret import hidden_torch_generator
from autograder.spec import Task
from llmcourse import policy_gradient as pg

PG, PREF = "llmcourse.policy_gradient", "llmcourse.preference"
BT, GAE, PPO, VALUE, KL, DPO, GRPO, TRAIN = TASKS = (
    Task("ch10_bradley_terry", "bradley_terry_loss(chosen_rewards, rejected_rewards)", 2,
         "a 0-d tensor: the mean of -log sigma(r_c - r_r)", "trl's `RewardTrainer.compute_loss`, and its gradient",
         modules=(PREF, "trl")),
    Task("ch10_gae", "gae(rewards, values, dones, gamma, lam, last_value=None)", 4, "`(advantages, returns)`",
         "a case worked out by hand, and `llmcourse.policy_gradient.gae` (tested against the explicit sum)",
         modules=(PG, "trl")),
    Task("ch10_ppo_policy_loss", "ppo_policy_loss(logprobs, old_logprobs, advantages, clip_eps=0.2, mask=None)", 3,
         "`(loss, clip_fraction)`, two 0-d tensors", "`llmcourse.policy_gradient.ppo_policy_loss`, and its gradient",
         modules=(PG, "trl")),
    Task("ch10_ppo_value_loss", "ppo_value_loss(values, old_values, returns, clip_eps=None, mask=None)", 2,
         "a 0-d tensor", "`llmcourse.policy_gradient.ppo_value_loss`", modules=(PG, "trl")),
    Task("ch10_kl_estimators", "kl_estimators(logprobs, ref_logprobs)", 2, '`{"k1": ..., "k2": ..., "k3": ...}`',
         "Schulman's formulas, and the exact KL of small distributions", modules=(PG, "trl")),
    Task("ch10_dpo_loss", "dpo_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, "
         "ref_rejected_logps, beta=0.1)", 3, "`(losses, chosen_rewards, rejected_rewards)`, each `(B,)`",
         "trl's `DPOTrainer._compute_loss`, and its gradient", modules=(PREF, "trl")),
    Task("ch10_grpo_advantages", "grpo_advantages(rewards, eps=1e-4)", 2, "`(B, G)` advantages",
         "trl's GRPO advantages (`nanstd`, Bessel-corrected)", modules=(PG, "trl")),
    Task("ch10_train_policy", "train_policy(ref_logits, reward_fn, beta)", 4, "the trained logits `(P, V)`",
         "the exact reward and KL of your policy on problems held out from you: reward +0.15, KL <= 1.2",
         modules=("trl", "llmcourse.ppo", "llmcourse.grpo", "llmcourse.dpo_training")),
)
# Tolerances from the spread of correct float32 implementations against the float64 references: the
# solution and 3 rewrites per task, 20 course secrets x every case (tests/test_checks_ch10.py, measure_spread).
# Largest |got - want| / (1 + |want|), then the tolerance (about 10x):
# - Bradley-Terry, PPO and value losses, clip fractions and every gradient: 1.2e-07 -> 1e-6;
# - GAE 2.0e-06 (T = 40, gamma = 1, an einsum over all steps) -> 2e-5;
# - KL estimators and DPO 2.0e-06: k3 = exp(log r) of log r ~ 46 amplifies the float32 rounding of
#   log pi_ref - log pi (a relative 1e-7 of 46) into 2e-6 of k3 -> 2e-5;
# - GRPO advantages 1.4e-06 -> 2e-5. The nearest planted mistakes miss by 1e-4 or more (eps left out).
TOL = dict(rtol=1e-6, atol=1e-6)
TOL_GAE = dict(rtol=2e-5, atol=2e-5)
TOL_KL = dict(rtol=2e-5, atol=2e-5)
TOL_GRPO = dict(rtol=2e-5, atol=2e-5)
# The loop, measured on 40 drawn problems (20 course secrets x both shapes; tests/test_checks_ch10.py): the
# KL-regularised optimum gains 0.22-0.32 at KL 0.45-0.68 (draws are kept only at gain >= 0.22, KL <= 0.75);
# the solution and four correct loops (k1-shaped REINFORCE, k3 in the loss, the exact KL, PPO epochs, exact
# gradients) gain 0.20-0.33 at KL 0.40-0.94; the same loop without its KL term (reward hacking) ends at KL
# 1.81-3.09, and one that divides the advantages by their std (beta then off the reward's scale) at 1.45-2.50.
MIN_GAIN, MAX_KL, LOOP_BETA, LOOP_SHAPES = 0.15, 1.2, 0.2, ((8, 16), (6, 24))


def _expect_function(fn, task: str) -> None:
    if not getattr(fn, "__llmcourse_remote__", False) and not callable(fn):
        fail(f"{task}: expected a function, got {type(fn).__name__}")


def _number(value, *, what: str, inputs: dict) -> float:
    arr = to_array(value, what=what, inputs=inputs)
    if arr.size != 1:
        fail(f"{what}{describe(inputs)}: expected a single number (a 0-d tensor), got shape {tuple(arr.shape)}")
    return float(arr.reshape(()))


def _close(got, want, *, what, inputs, tol, hints=()):
    assert_close(got, want, what=what, inputs=inputs, hints=sharp_hints(hints, got, want, **tol), **tol)


def _gradient(task: Task, student_fn, args, wrt, kwargs, pick, want: list, names, inputs: dict) -> None:
    inputs = {**inputs, "what": "gradient"}
    got = probe_result(run_probe(ref.gradient_probe, student_fn, list(args), list(wrt), dict(kwargs), pick,
                                 task=task, inputs=inputs), what=task.name, inputs=inputs)["grads"]
    for g, w, name in zip(got, want, names):
        assert_close(g, w, what=f"gradient with respect to {name}", inputs=inputs, **TOL)


def _reference_grads(fn, args, wrt):
    leaves = [a.double().requires_grad_(i in wrt) if a is not None and a.is_floating_point() else a
              for i, a in enumerate(args)]
    fn(*leaves).sum().backward()
    return [leaves[i].grad for i in wrt]


# ----------------------------------------------------------------- Bradley-Terry

def check_bradley_terry(student_fn) -> None:
    """bradley_terry_loss(chosen, rejected) equals trl's reward-model loss, and so does its gradient."""
    _expect_function(student_fn, BT.name)
    cases = [({"case": "worked by hand", "B": 2}, torch.tensor([2.0, 0.0]), torch.tensor([0.0, 0.0]))]
    for seed, (b, scale, what) in enumerate(((1, 2.0, "one pair"), (6, 2.0, "N(0, 4)"), (40, 1.0, "N(0, 1)"),
                                             (8, 300.0, "rewards in the hundreds"))):
        g = hidden_torch_generator(seed, "ch10.bradley_terry")
        cases.append(({"case": what, "B": b, "seed": seed}, scale * torch.randn(b, generator=g),
                      scale * torch.randn(b, generator=g)))
    same = torch.randn(5, generator=hidden_torch_generator(9, "ch10.bradley_terry"))
    cases.append(({"case": "equal rewards: log 2 each", "B": 5}, same, same.clone()))
    for inputs, c, r in cases:
        want = ref.trl_reward_loss(c, r)
        got = _number(call_student(student_fn, c.clone(), r.clone(), task=BT, inputs=inputs),
                      what="bradley_terry_loss", inputs=inputs)
        if not math.isfinite(got) and math.isfinite(float(want)):
            fail(f"bradley_terry_loss{describe(inputs)}: got {got} - log(sigmoid(d)) underflows to log(0) for "
                 f"differences of a few hundred: use -log sigma(d) = softplus(-d) = log(1 + exp(-d)) computed "
                 f"stably (torch.nn.functional.logsigmoid or softplus)")
        _close(np.float64(got), want, what="loss (vs trl's RewardTrainer)", inputs=inputs, tol=TOL,
               hints=mis.hints(mis.BT_MISTAKES, mis.bt_mistake, c, r))
    inputs, c, r = cases[2]
    _gradient(BT, student_fn, [c, r], [0, 1], {}, None, _reference_grads(ref.trl_reward_loss, [c, r], [0, 1]),
              ("chosen_rewards", "rejected_rewards"), inputs)


# ----------------------------------------------------------------- GAE

def check_gae(student_fn) -> None:
    """gae(...) equals a hand-computed case and the course's GAE: episode ends, bootstraps, batches."""
    _expect_function(student_fn, GAE.name)
    for inputs, rewards, values, dones, gamma, lam, last, hand in ref.gae_cases():
        kwargs = {} if last is None and hand is None else {"last_value": None if last is None else last.clone()}
        result = call_student(student_fn, rewards.clone(), values.clone(), dones.clone(), gamma, lam, task=GAE,
                              inputs=inputs, **kwargs)
        got = unpack(result, ("advantages", "returns"), what="gae", inputs=inputs)
        want = hand or pg.gae(rewards.double(), values.double(), dones.double(), gamma, lam,
                                  None if last is None else last.double())
        for k, name in enumerate(("advantages", "returns")):
            hints = mis.hints(mis.GAE_MISTAKES, mis.gae_mistake, rewards, values, dones, gamma, lam, last, pick=k)
            _close(got[k], want[k], what=name, inputs=inputs, tol=TOL_GAE, hints=hints)


# ----------------------------------------------------------------- PPO

def check_ppo_policy_loss(student_fn) -> None:
    """ppo_policy_loss(...) -> (loss, clip_fraction) equal the course's PPO loss; the gradient too."""
    _expect_function(student_fn, PPO.name)
    for inputs, new, old, adv, eps, mask in ref.ppo_cases():
        kwargs = {"clip_eps": eps} | ({"mask": mask.clone()} if mask is not None else {})
        result = call_student(student_fn, new.clone(), old.clone(), adv.clone(), task=PPO, inputs=inputs, **kwargs)
        got = unpack(result, ("loss", "clip_fraction"), what="ppo_policy_loss", inputs=inputs)
        want = pg.ppo_policy_loss(new.double(), old.double(), adv.double(), eps, mask)
        for k, name in enumerate(("loss", "clip_fraction")):
            hints = mis.hints(mis.PPO_MISTAKES, mis.ppo_mistake, new, old, adv, eps, mask, pick=k)
            _close(np.float64(_number(got[k], what=name, inputs=inputs)), want[k], what=name, inputs=inputs, tol=TOL,
                   hints=hints)
    inputs, new, old, adv, eps, mask = ref.ppo_cases()[3]
    want = _reference_grads(lambda a, b, c: pg.ppo_policy_loss(a, b, c, eps, mask)[0], [new, old, adv], [0])
    _gradient(PPO, student_fn, [new, old, adv], [0], {"clip_eps": eps, "mask": mask}, 0, want, ("logprobs",), inputs)


def check_ppo_value_loss(student_fn) -> None:
    """ppo_value_loss(...) equals the course's value loss, with and without clipping, with and without a mask."""
    _expect_function(student_fn, VALUE.name)
    for seed, (shape, eps, masked) in enumerate((((12,), None, False), ((4, 9), None, True), ((4, 9), 0.2, True),
                                                 ((20,), 0.5, False), ((3, 7), 0.1, False))):
        g = hidden_torch_generator(seed, "ch10.ppo_value")
        old = torch.randn(shape, generator=g)
        values, returns = old + 0.5 * torch.randn(shape, generator=g), old + torch.randn(shape, generator=g)
        mask = (torch.rand(shape, generator=g) < 0.7) | (torch.arange(shape[-1]) == 0) if masked else None
        inputs = {"shape": shape, "clip_eps": eps, "mask": "given" if masked else "None", "seed": seed}
        kwargs = ({"clip_eps": eps} if eps is not None else {}) | ({"mask": mask.clone()} if masked else {})
        got = _number(call_student(student_fn, values.clone(), old.clone(), returns.clone(), task=VALUE,
                                   inputs=inputs, **kwargs), what="ppo_value_loss", inputs=inputs)
        want = pg.ppo_value_loss(values.double(), old.double(), returns.double(), eps, mask)
        hints = mis.hints(mis.VALUE_MISTAKES, mis.value_mistake, values, old, returns, eps, mask)
        _close(np.float64(got), want, what="value loss", inputs=inputs, tol=TOL, hints=hints)


# ----------------------------------------------------------------- KL estimators

def _kl_dict(result, shape, inputs) -> dict:
    if result is None:
        fail(f"kl_estimators{describe(inputs)}: your function returned None (is a `return` missing?)")
    if not isinstance(result, dict) or not {"k1", "k2", "k3"} <= set(result):
        got = sorted(result) if isinstance(result, dict) else type(result).__name__
        fail(f"kl_estimators{describe(inputs)}: expected a dict with keys 'k1', 'k2', 'k3', got {got}")
    return {k: to_array(result[k], what=f"kl_estimators()['{k}']", inputs=inputs).astype(float) for k in
            ("k1", "k2", "k3")}


def check_kl_estimators(student_fn) -> None:
    """k1, k2, k3 token by token; k1 and k3 average to the exact KL under the policy, k3 >= 0."""
    _expect_function(student_fn, KL.name)
    for inputs, lp, lq, every in ref.kl_cases():
        got = _kl_dict(call_student(student_fn, lp.clone(), lq.clone(), task=KL, inputs=inputs), lp.shape, inputs)
        want = pg.kl_estimators(lp.double(), lq.double())
        for k in ("k1", "k2", "k3"):
            _close(got[k], want[k], what=f"{k}", inputs=inputs, tol=TOL_KL,
                   hints=mis.hints(mis.KL_MISTAKES, mis.kl_mistake, lp, lq, pick=k))
        if every is not None:  # the expectations under pi, by enumerating every token
            p = every.double().exp().numpy()
            for k in ("k1", "k3"):
                assert_close((p * got[k]).sum(1), (p * (lp - lq).double().numpy()).sum(1), inputs=inputs,
                             what=f"E_pi[{k}] (vs the exact KL(pi || pi_ref))", **TOL_KL)


# ----------------------------------------------------------------- DPO

def check_dpo_loss(student_fn) -> None:
    """dpo_loss(...) -> (losses, chosen_rewards, rejected_rewards) equal trl's DPO, pair by pair; the gradient too."""
    _expect_function(student_fn, DPO.name)
    names = ("losses", "chosen_rewards", "rejected_rewards")
    for inputs, pc, pr, rc, rr, beta in ref.dpo_cases():
        args, kwargs = [x.clone() for x in (pc, pr, rc, rr)], ({} if beta is None else {"beta": beta})
        got = unpack(call_student(student_fn, *args, task=DPO, inputs=inputs, **kwargs), names, what="dpo_loss",
                     inputs=inputs)
        b = 0.1 if beta is None else beta
        want = ref.trl_dpo(pc, pr, rc, rr, b)
        for k, name in enumerate(names):
            arr = to_array(got[k], what=name, inputs=inputs)
            if k == 0 and arr.ndim == 0:
                fail(f"losses{describe(inputs)}: got one number, expected one loss per pair, shape ({len(pc)},): "
                     f"return the losses before averaging")
            hints = mis.hints(mis.DPO_MISTAKES, mis.dpo_mistake, pc, pr, rc, rr, b, pick=k)
            _close(arr, want[k], what=f"{name} (vs trl's DPOTrainer)", inputs=inputs, tol=TOL_KL, hints=hints)
    inputs, pc, pr, rc, rr, beta = ref.dpo_cases()[1]
    want = _reference_grads(lambda *a: ref.trl_dpo(*a, beta)[0], [pc, pr, rc, rr], [0, 1])
    _gradient(DPO, student_fn, [pc, pr, rc, rr], [0, 1], {"beta": beta}, 0, want,
              ("policy_chosen_logps", "policy_rejected_logps"), inputs)


# ----------------------------------------------------------------- GRPO

def check_grpo_advantages(student_fn) -> None:
    """grpo_advantages(rewards, eps) equals trl's group-relative advantages (Bessel std + eps)."""
    _expect_function(student_fn, GRPO.name)
    cases = [({"case": "worked by hand", "shape": (1, 4)}, torch.tensor([[0.0, 1.0, 1.0, 0.0]]), None)]
    for seed, (shape, eps, binary, what) in enumerate((((4, 8), None, False, "N(0, 1)"), ((16, 2), None, False,
                                                      "G = 2"), ((8, 6), None, True, "verifiable 0/1 rewards"),
                                                      ((3, 64), 1e-6, False, "eps 1e-6"), ((5, 4), 0.1, True,
                                                      "eps 0.1"))):
        g = hidden_torch_generator(seed, "ch10.grpo")
        rewards = (torch.rand(shape, generator=g) < 0.4).float() if binary else torch.randn(shape, generator=g)
        if binary:
            rewards[0] = 1.0  # a group where every answer is right: advantages 0
        cases.append(({"case": what, "shape": shape, "eps": eps or "default", "seed": seed}, rewards, eps))
    for inputs, rewards, eps in cases:
        got = call_student(student_fn, rewards.clone(), task=GRPO, inputs=inputs, **({} if eps is None else
                                                                                    {"eps": eps}))
        e = 1e-4 if eps is None else eps
        want = ref.grpo_reference(rewards, e)
        nan = np.isnan(to_array(got, what="advantages", inputs=inputs).astype(float))
        if nan.any() and (rewards == rewards[:, :1]).all(dim=1).any():
            fail(f"advantages{describe(inputs)}: got nan - in a group whose rewards are all equal the std is 0: "
                 f"divide by std + eps, which gives advantages 0 there")
        if nan.any():
            fail(f"advantages{describe(inputs)}: got nan at {[int(i) for i in np.argwhere(nan)[0]]}: the std of a "
                 f"single number is nan - take the mean and the std of each row (axis 1), the G answers of a prompt")
        hints = mis.hints(mis.GRPO_MISTAKES, mis.grpo_mistake, rewards, e)
        _close(got, want, what="advantages (vs trl's GRPO)", inputs=inputs, tol=TOL_GRPO, hints=hints)


# ----------------------------------------------------------------- the loop

def check_train_policy(student_fn) -> None:
    """train_policy(ref_logits, reward_fn, beta): mean reward up >= MIN_GAIN, KL(pi || pi_ref) <= MAX_KL."""
    _expect_function(student_fn, TRAIN.name)
    for seed, (p, v) in enumerate(LOOP_SHAPES):
        ref_logits, rewards = ref.bandit(seed, p, v, LOOP_BETA)
        inputs = {"prompts": p, "answers": v, "beta": LOOP_BETA, "seed": seed}
        out = probe_result(run_probe(ref.train_policy_probe, student_fn, ref_logits, rewards, LOOP_BETA, 1000 + seed,
                                     task=TRAIN, inputs=inputs), what=TRAIN.name, inputs=inputs)
        logits = to_array(out.get("logits"), what="the trained logits", inputs=inputs).astype(np.float64)
        if logits.shape != (p, v):
            fail(f"train_policy{describe(inputs)}: expected logits of shape ({p}, {v}) (prompts, answers), got "
                 f"{logits.shape}")
        if not np.isfinite(logits).all():
            fail(f"train_policy{describe(inputs)}: the logits contain inf or nan - did the training diverge?")
        if (logits >= 0).all() and np.allclose(logits.sum(1), 1.0, atol=1e-4):
            fail(f"train_policy{describe(inputs)}: the rows sum to 1: these look like probabilities - return logits")
        r_ref = ref.policy_stats(ref_logits, ref_logits, rewards)[0]
        r_new, kl = ref.policy_stats(torch.from_numpy(logits), ref_logits, rewards)
        if r_new - r_ref < MIN_GAIN:
            fail(f"train_policy{describe(inputs)}: the mean reward went from {r_ref:.3f} to {r_new:.3f}, up "
                 f"{r_new - r_ref:+.3f}; it must rise by at least {MIN_GAIN} - does the loop sample answers from the "
                 f"policy, weight their log-probs by reward - baseline, and take enough steps (about 200)?")
        if kl > MAX_KL:
            fail(f"train_policy{describe(inputs)}: KL(pi || pi_ref) = {kl:.2f} nats, above {MAX_KL} (the reward rose "
                 f"{r_new - r_ref:+.3f}): the policy drifted too far from the reference - penalise beta * KL on the "
                 f"reward's own scale (advantages divided by their std no longer match beta)")


__all__ = ["TASKS", "check_bradley_terry", "check_gae", "check_ppo_policy_loss", "check_ppo_value_loss",
           "check_kl_estimators", "check_dpo_loss", "check_grpo_advantages", "check_train_policy"]
