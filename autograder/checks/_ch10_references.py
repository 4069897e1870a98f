"""References, hidden inputs and probes for the chapter 10 checks (a helper module, not an assignment).

Every reference runs in float64 on the float32 inputs the student receives:

* :func:`trl_reward_loss` and :func:`trl_dpo` - trl 1.16's own loss code, ``RewardTrainer.compute_loss``
  and ``DPOTrainer._compute_loss``, called unbound with a stand-in trainer (:func:`_trainer`) and a
  stand-in model that hands them the given rewards or sequence log-probabilities (the log-probs
  arrive as a fused LM head's output, with the reference log-probs "precomputed");
  ``tests/test_preference.py`` shows the stand-in route equals a real ``DPOTrainer`` on a GPT-2;
* :func:`trl_group_std` - ``trl.trainer.utils.nanstd`` (Bessel's correction), the std of GRPOTrainer;
* the course's own :mod:`llmcourse.policy_gradient` for GAE and PPO (trl 1.16 has no PPO), tested
  against the formulas, hand-computed cases and :func:`gae_by_sum`, an independent algorithm;
* :func:`gae_cases`, :func:`ppo_cases`, :func:`kl_cases`, :func:`dpo_cases` - the checks' inputs, drawn
  from :func:`autograder.secret.hidden_torch_generator`;
* :func:`bandit` and :func:`policy_stats` - the small RLHF problem of the loop task, its exact mean
  reward and KL, and :func:`train_policy_probe`, which runs the student's loop in the sandbox.

The usual mistakes, computed for the checks' hints, are in :mod:`autograder.checks._ch10_mistakes`.
"""

from __future__ import annotations

import math
import os
import types
from collections import defaultdict

import torch
import torch.nn.functional as F

from autograder.secret import hidden_torch_generator
from llmcourse import preference as pref

# ----------------------------------------------------------------- trl, called through its own code


class _Accelerator:
    device = torch.device("cpu")

    def gather_for_metrics(self, x):
        return x

    def gather(self, x):
        return x


def _trainer(**fields):
    """What trl's loss methods read from ``self``: a single process, evaluation mode, no extras."""
    return types.SimpleNamespace(accelerator=_Accelerator(), _metrics={"train": defaultdict(list),
                                                                       "eval": defaultdict(list)},
                                 _total_train_tokens=0, _tp_size=1, **fields)


def _trl():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from trl.trainer.dpo_trainer import DPOTrainer
    from trl.trainer.reward_trainer import RewardTrainer

    return DPOTrainer, RewardTrainer


def trl_reward_loss(chosen, rejected, margin=None) -> torch.Tensor:
    """``RewardTrainer.compute_loss`` in float64 for rewards (B,): the mean of -log sigma(r_c - r_r [- m])."""
    _, reward_trainer = _trl()
    logits = torch.cat([chosen, rejected]).double().reshape(-1, 1)
    model = types.SimpleNamespace(training=False)
    model_call = lambda **kw: types.SimpleNamespace(logits=logits)  # noqa: E731 - model(**inputs)
    me = _trainer(model=model, args=types.SimpleNamespace(center_rewards_coefficient=None))
    inputs = {"attention_mask": torch.ones(len(logits), 1, dtype=torch.long)}
    if margin is not None:
        inputs["margin"] = torch.as_tensor(margin, dtype=torch.float64).expand(len(chosen))
    return reward_trainer.compute_loss(me, model_call, inputs)


def trl_dpo(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta: float, *, loss_type: str = "sigmoid",
            label_smoothing: float = 0.0):
    """``DPOTrainer._compute_loss`` pair by pair: (losses, chosen_rewards, rejected_rewards), each (B,), float64.

    The stand-in model returns the pair's summed log-probabilities as a fused LM head would (one
    completion token per row, so trl's sum over tokens is that number) and the reference
    log-probabilities come in ``inputs`` as when trl precomputes them. ``loss_type="aot"`` on a
    single pair (its sort is then the identity) is cDPO's label-smoothed loss.
    """
    dpo_trainer, _ = _trl()
    losses, chosen_r, rejected_r = [], [], []
    for pc, pr, rc, rr in zip(*(x.double() for x in (policy_chosen, policy_rejected, ref_chosen, ref_rejected))):
        zeros = torch.zeros(2, 1, dtype=torch.float64)
        out = types.SimpleNamespace(log_probs=torch.stack([pc, pr]).reshape(2, 1), entropy=zeros, mean_logits=zeros,
                                    is_top1=torch.zeros(2, 1, dtype=torch.bool), aux_loss=None)
        model = types.SimpleNamespace(training=False)
        me = _trainer(model=model, aux_loss_enabled=False, ld_alpha=None, precompute_ref_logps=True,
                      f_divergence_type="reverse_kl", loss_types=[loss_type], loss_weights=[1.0], beta=beta,
                      label_smoothing=label_smoothing, use_weighting=False, args=None)
        inputs = {"input_ids": torch.zeros(2, 2, dtype=torch.long),
                  "attention_mask": torch.ones(2, 2, dtype=torch.long),
                  "completion_mask": torch.tensor([[0, 1], [0, 1]]), "ref_chosen_logps": rc.reshape(1),
                  "ref_rejected_logps": rr.reshape(1)}
        losses.append(dpo_trainer._compute_loss(me, lambda **kw: out, inputs, False))  # noqa: B023 - called at once
        chosen_r.append(me._metrics["eval"]["rewards/chosen"][0])
        rejected_r.append(me._metrics["eval"]["rewards/rejected"][0])
    return (torch.stack(losses), torch.tensor(chosen_r, dtype=torch.float64),
            torch.tensor(rejected_r, dtype=torch.float64))


def trl_group_std(rewards) -> torch.Tensor:
    """GRPOTrainer's group std: ``trl.trainer.utils.nanstd`` over each row of (B, G), Bessel-corrected; (B, 1)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from trl.trainer.utils import nanstd

    return nanstd(rewards.double(), dim=1, keepdim=True)


def grpo_reference(rewards, eps: float) -> torch.Tensor:
    """trl's GRPO advantages in float64: (r - mean of the group) / (nanstd of the group + eps)."""
    r = rewards.double()
    return (r - r.mean(dim=1, keepdim=True)) / (trl_group_std(r) + eps)


# ----------------------------------------------------------------- GAE, by another algorithm


def gae_by_sum(rewards, values, dones, gamma: float, lam: float, last_value=None):
    """GAE as the explicit sum A_t = sum_{l>=0} (gamma lam)^l delta_{t+l}, stopped after the first episode end.

    float64, one row at a time, no recursion: the definition of Schulman et al. (2016, eq. 16).
    """
    r, v = rewards.double(), values.double()
    d = torch.zeros_like(r) if dones is None else dones.double()
    batch = r.ndim == 1
    r, v, d = (x.reshape(-1, x.shape[-1]) for x in (r, v, d))
    last = torch.zeros(r.shape[0], dtype=torch.float64) if last_value is None else \
        torch.as_tensor(last_value, dtype=torch.float64).reshape(-1).expand(r.shape[0])
    n, t_len = r.shape
    adv = torch.zeros_like(r)
    for b in range(n):
        nxt = torch.cat([v[b, 1:], last[b:b + 1]])
        delta = r[b] + gamma * (1 - d[b]) * nxt - v[b]
        for t in range(t_len):
            total, weight = 0.0, 1.0
            for k in range(t, t_len):
                total += weight * float(delta[k])
                if d[b, k]:
                    break
                weight *= gamma * lam
            adv[b, t] = total
    adv = adv.reshape(-1) if batch else adv
    return adv, adv + values.double()


# ----------------------------------------------------------------- the hidden inputs of the checks


def gae_cases():
    hand = ({"case": "worked by hand", "T": 3, "gamma": 0.5, "lam": 0.5}, torch.tensor([1.0, 0.0, 2.0]),
            torch.tensor([0.5, 1.0, 0.0]), torch.tensor([0.0, 0.0, 1.0]), 0.5, 0.5, None,
            (torch.tensor([0.875, -0.5, 2.0]), torch.tensor([1.375, 0.5, 2.0])))
    cases = [hand]
    table = (((8,), 0.99, 0.95, 0.0, False, "one sequence"), ((12,), 0.9, 0.8, 0.25, True, "episode ends, bootstrap"),
             ((4, 12), 0.99, 0.95, 0.15, True, "a batch"), ((3, 7), 1.0, 1.0, 0.2, False, "gamma = lam = 1"),
             ((5, 6), 0.95, 0.0, 0.2, True, "lam = 0: TD errors"), ((6, 5), 0.8, 0.9, 1.0, True, "every step ends"),
             ((2, 40), 1.0, 0.97, 0.05, True, "long"), ((3, 1), 0.9, 0.9, 0.0, True, "T = 1"),
             ((2, 9), 0.9, 0.7, -1.0, True, "episodes end at the last step"))
    for seed, (shape, gamma, lam, p_done, boot, what) in enumerate(table):
        g = hidden_torch_generator(seed, "ch10.gae")
        rewards, values = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
        dones = (torch.rand(shape, generator=g) < max(p_done, 0.0)).float()
        if p_done < 0:
            dones[..., -1] = 1.0
        last = torch.randn(shape[:-1], generator=g) if boot else None
        inputs = {"case": what, "shape": shape, "gamma": gamma, "lam": lam, "episode ends": int(dones.sum()),
                  "last_value": "given" if boot else "None", "seed": seed}
        cases.append((inputs, rewards, values, dones, gamma, lam, last, None))
    return cases


def ppo_cases():
    cases = []
    for seed, (shape, eps, spread, masked, what) in enumerate((
            ((16,), 0.2, 0.3, False, "one token per sequence"), ((4, 10), 0.2, 0.3, True, "masked batch"),
            ((3, 8), 0.1, 0.5, False, "eps 0.1"), ((5, 6), 0.3, 1.0, True, "far off-policy, eps 0.3"),
            ((2, 12), 0.2, 0.0, True, "first epoch: old = new"), ((6, 4), 0.2, 0.05, False, "ratios near 1"))):
        g = hidden_torch_generator(seed, "ch10.ppo")
        old = -torch.rand(shape, generator=g) * 4
        delta = spread * torch.randn(shape, generator=g)
        for edge in (math.log(1 - eps), math.log(1 + eps)):  # keep ratios 1e-3 or more from the clip edges
            near = (delta.exp() - math.exp(edge)).abs() < 2e-3
            delta = torch.where(near, delta + 0.01, delta)
        new, adv = old + delta, torch.randn(shape, generator=g)
        mask = (torch.rand(shape, generator=g) < 0.7) | (torch.arange(shape[-1]) == 0) if masked else None
        inputs = {"case": what, "shape": shape, "clip_eps": eps, "mask": "given" if masked else "None", "seed": seed}
        cases.append((inputs, new, old, adv, eps, mask))
    return cases


def kl_cases():
    """(inputs, logprobs, ref_logprobs, log pi of every token or None): sampled tokens, then whole distributions."""
    cases = []
    for seed, (b, t, v, scale, what) in enumerate(((4, 6, 8, 1.0, "sampled tokens"), (2, 5, 5, 3.0, "far apart"),
                                                   (3, 4, 50, 12.0, "peaked"))):
        g = hidden_torch_generator(seed, "ch10.kl")
        lp, lq = (torch.log_softmax(scale * torch.randn(b, v, generator=g), -1) for _ in range(2))
        tokens = torch.multinomial(lp.exp(), t, replacement=True, generator=g)
        cases.append(({"case": what, "shape": (b, t), "seed": seed}, lp.gather(1, tokens), lq.gather(1, tokens), None))
        cases.append(({"case": f"{what}: every token, weighted by pi", "shape": (b, v), "seed": seed}, lp, lq, lp))
    g = hidden_torch_generator(9, "ch10.kl")
    lp = -100 - 10 * torch.rand(3, 5, generator=g)  # rare tokens: exp(log p) underflows to 0 in float32
    lq = lp + 3 * torch.randn(3, 5, generator=g)
    cases.append(({"case": "rare tokens near -100", "shape": (3, 5), "seed": 9}, lp, lq, None))
    return cases


def dpo_cases():
    hand = torch.tensor([-10.0]), torch.tensor([-14.0]), torch.tensor([-11.0]), torch.tensor([-12.0])
    cases = [({"case": "worked by hand", "B": 1, "beta": 0.1}, *hand, 0.1)]
    for seed, (b, beta, scale, gap, what) in enumerate(((8, 0.1, 30.0, 3.0, "sequence log-probs"),
                                                        (5, 0.5, 10.0, 2.0, "beta 0.5"), (3, None, 50.0, 5.0,
                                                        "beta left at its default"), (6, 0.1, 500.0, 2000.0,
                                                        "margins of hundreds after beta"))):
        g = hidden_torch_generator(seed, "ch10.dpo")
        base = -scale * torch.rand(4, b, generator=g) - 1
        pc, pr, rc, rr = base[0], base[1], base[0] + gap * torch.randn(b, generator=g), base[1] + gap * torch.randn(
            b, generator=g)
        cases.append(({"case": what, "B": b, "beta": beta if beta is not None else "default", "seed": seed}, pc, pr,
                      rc, rr, beta))
    return cases


# ----------------------------------------------------------------- probes (run beside the student's code)


def gradient_probe(student_fn, args, wrt, kwargs, pick):
    """PROBE: d(sum of output ``pick`` (None: the output itself)) / d(args[i]) for i in ``wrt``."""
    args = [a.clone().requires_grad_(i in wrt) if isinstance(a, torch.Tensor) and a.is_floating_point() else a
            for i, a in enumerate(args)]
    out = student_fn(*args, **kwargs)
    if pick is not None:
        if not isinstance(out, (tuple, list)) or len(out) <= pick:
            return {"problem": f"expected a tuple whose item {pick} is a tensor, got a {type(out).__name__}"}
        out = out[pick]
    if not isinstance(out, torch.Tensor) or not out.requires_grad:
        return {"problem": "the result is not a torch tensor connected to the inputs by autograd: keep the "
                           "computation in torch (no .item(), .numpy(), .detach() or new tensors built from values)"}
    out.sum().backward()
    return {"grads": [args[i].grad.detach().clone() if args[i].grad is not None else torch.zeros_like(args[i])
                      for i in wrt]}


def bandit(seed: int, prompts: int, answers: int, beta: float):
    """(ref_logits (P, V) float32, rewards (P, V) float32) of the loop task, drawn until the problem is fair.

    ref logits N(0, 1), rewards U(0, 1); a draw is kept when the KL-regularised optimum
    pi* ∝ pi_ref exp(r / beta) gains at least 0.22 in mean reward at a KL of at most 0.75 nats,
    so that the task's bars (+0.15, 1.2 nats) sit well inside what a good loop reaches.
    """
    g = hidden_torch_generator(seed, "ch10.train_policy")
    while True:
        ref, rewards = torch.randn(prompts, answers, generator=g), torch.rand(prompts, answers, generator=g)
        star = pref.kl_regularized_optimum(F.log_softmax(ref.double(), -1), rewards.double(), beta)
        gain, kl = policy_stats(star, ref, rewards)
        gain -= policy_stats(ref, ref, rewards)[0]
        if gain >= 0.22 and kl <= 0.75:
            return ref, rewards


def policy_stats(logits, ref_logits, rewards) -> tuple[float, float]:
    """(mean over prompts of E_pi[r], mean over prompts of KL(pi || pi_ref)), exactly, in float64."""
    lp, lq = F.log_softmax(torch.as_tensor(logits).double(), -1), F.log_softmax(ref_logits.double(), -1)
    p = lp.exp()
    return float((p * rewards.double()).sum(-1).mean()), float((p * (lp - lq)).sum(-1).mean())


def train_policy_probe(student_fn, ref_logits, rewards, beta, noise_seed):
    """PROBE: ``student_fn(ref_logits, reward_fn, beta)`` on one thread, torch seeded; its logits as data.

    ``reward_fn(prompts, answers)`` takes two (N,) int64 tensors and returns (N,) float32 rewards:
    the hidden reward plus N(0, 0.1^2) noise from its own generator.
    """
    import torch as _torch

    noise = _torch.Generator().manual_seed(int(noise_seed))
    p, v = ref_logits.shape
    calls = {"samples": 0}

    def reward_fn(prompts, answers):
        prompts, answers = _torch.as_tensor(prompts), _torch.as_tensor(answers)
        if prompts.shape != answers.shape or prompts.ndim != 1 or prompts.is_floating_point() or \
                answers.is_floating_point():
            raise ValueError(f"reward_fn(prompts, answers) takes two (N,) int64 tensors, got {prompts.dtype} "
                             f"{tuple(prompts.shape)} and {answers.dtype} {tuple(answers.shape)}")
        if len(prompts) and (prompts.min() < 0 or prompts.max() >= p or answers.min() < 0 or answers.max() >= v):
            raise ValueError(f"reward_fn: prompt ids must lie in [0, {p}) and answer ids in [0, {v})")
        calls["samples"] += len(prompts)
        return (rewards[prompts.long(), answers.long()] + 0.1 * _torch.randn(len(prompts), generator=noise)).float()

    threads = _torch.get_num_threads()
    _torch.set_num_threads(1)
    try:
        with _torch.random.fork_rng(devices=[]):
            _torch.manual_seed(0)
            out = student_fn(ref_logits.clone(), reward_fn, beta)
    finally:
        _torch.set_num_threads(threads)
    if out is None:
        return {"problem": "your function returned None (is a `return` missing?) - return the trained logits (P, V)"}
    if not isinstance(out, _torch.Tensor):
        return {"problem": f"expected the trained logits as a torch tensor of shape ({p}, {v}), got a "
                           f"{type(out).__name__}"}
    return {"logits": out.detach().cpu().clone(), "samples": calls["samples"]}
