"""Policy gradients for language models: returns, GAE, REINFORCE, PPO's two losses, KL estimators, GRPO.

A language model is a policy: the state is the prompt and the tokens so far, the action is the
next token, and the reward usually arrives once, at the end. These are the pieces of the RL
loops that RLHF (Ouyang et al. 2022) and GRPO (Shao et al. 2024) run on top of such a policy:

* ``discounted_returns`` - G_t = r_t + gamma G_{t+1}, cut at episode ends;
* ``gae`` - generalised advantage estimation (Schulman et al. 2016), by the backward recursion
  A_t = delta_t + gamma lam A_{t+1} with delta_t = r_t + gamma V_{t+1} - V_t;
* ``reinforce_loss`` - Williams (1992): -(G - b) log pi(a), with an optional baseline b;
  ``seed_reinforce_loss`` reproduces the broadcast bug of the seed notes' code (SEED error 41);
* ``ppo_policy_loss``, ``ppo_value_loss`` - PPO's clipped surrogate and its clipped value loss
  (Schulman et al. 2017, eq. 7; the value clipping of OpenAI baselines' PPO2);
* ``kl_estimators`` - Schulman's k1, k2, k3 per-token estimates of KL(pi || pi_ref) from
  samples of pi ("Approximating KL Divergence", 2020);
* ``kl_shaped_rewards`` - InstructGPT's per-token reward: -beta (log pi - log pi_ref), plus the
  reward model's score on the last token;
* ``grpo_advantages`` - group-relative advantages (r_i - mean(r)) / std(r) (Shao et al. 2024);
* ``masked_mean``, ``action_logprobs`` - the bookkeeping the losses share.

Shapes: B batch (sequences, or prompts), T time (tokens), G group size, V vocabulary. Time is
always the last axis. ``dones[..., t]`` is true when step t ended its episode: nothing after
it belongs to the same return, so neither the later rewards nor V_{t+1} flow back into step t.

Taught in: book/10-rlhf
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _float_tensor(x, name: str) -> Tensor:
    if not isinstance(x, Tensor) or not x.dtype.is_floating_point:
        raise TypeError(f"{name} must be a floating-point tensor, got {type(x).__name__} {getattr(x, 'dtype', '')}")
    return x


def _same_shape(name: str, x: Tensor, ref_name: str, ref: Tensor) -> None:
    if x.shape != ref.shape:
        raise ValueError(f"{name} has shape {tuple(x.shape)} but {ref_name} has shape {tuple(ref.shape)}: they must "
                         f"match exactly (no broadcasting - see SEED error 41)")


def _mask_of(mask, like: Tensor, name: str = "mask") -> Tensor | None:
    """``mask`` as a bool tensor of ``like``'s shape (True = counted), or None."""
    if mask is None:
        return None
    if not isinstance(mask, Tensor):
        raise TypeError(f"{name} must be a tensor, got {type(mask).__name__}")
    _same_shape(name, mask, "the values", like)
    if mask.dtype != torch.bool:
        if ((mask != 0) & (mask != 1)).any():
            raise ValueError(f"{name} must hold only 0 and 1 (or be bool)")
        mask = mask != 0
    return mask


def _unit_interval(value, name: str) -> float:
    if not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"{name} must lie in [0, 1], got {value}")
    return float(value)


def masked_mean(x: Tensor, mask: Tensor | None = None, dim: int | None = None, keepdim: bool = False) -> Tensor:
    """Mean of ``x`` over the entries where ``mask`` is true (all entries when ``mask`` is None).

    ``x`` and ``mask`` have the same shape; ``dim=None`` averages everything (a 0-d tensor), an
    int averages along that axis. Masked-out entries are replaced by 0 before summing, so a NaN
    or inf there does not leak in. A mean over no counted entries is 0 / 0 = nan.
    """
    x = _float_tensor(x, "x")
    mask = _mask_of(mask, x)
    if mask is None:
        return x.mean() if dim is None else x.mean(dim=dim, keepdim=keepdim)
    total = torch.where(mask, x, torch.zeros_like(x))
    count = mask.to(x.dtype)
    if dim is None:
        return total.sum() / count.sum()
    return total.sum(dim=dim, keepdim=keepdim) / count.sum(dim=dim, keepdim=keepdim)


def action_logprobs(logits: Tensor, actions: Tensor) -> Tensor:
    """log pi(a) of the actions taken: logits (..., V), actions (...) int64 -> (...).

    ``log_softmax`` over the last axis, then ``gather`` of each taken action: one number per
    sampled token, which is what a policy gradient multiplies by the return.
    """
    logits = _float_tensor(logits, "logits")
    if actions.dtype not in (torch.int64, torch.int32) or actions.shape != logits.shape[:-1]:
        raise ValueError(f"actions must be integer ids of shape {tuple(logits.shape[:-1])} (the logits without V), "
                         f"got {actions.dtype} {tuple(actions.shape)}")
    return F.log_softmax(logits, dim=-1).gather(-1, actions.long().unsqueeze(-1)).squeeze(-1)


def _episode_inputs(rewards: Tensor, dones, last_value, values: Tensor | None = None):
    rewards = _float_tensor(rewards, "rewards")
    if rewards.ndim not in (1, 2) or rewards.shape[-1] == 0:
        raise ValueError(f"rewards must have shape (T,) or (B, T) with T >= 1, got {tuple(rewards.shape)}")
    if values is not None:
        _same_shape("values", _float_tensor(values, "values"), "rewards", rewards)
    cont = torch.ones_like(rewards) if dones is None else 1.0 - _mask_of(dones, rewards, "dones").to(rewards.dtype)
    if last_value is None:
        last = torch.zeros(rewards.shape[:-1], dtype=rewards.dtype, device=rewards.device)
    else:
        last = torch.as_tensor(last_value, dtype=rewards.dtype, device=rewards.device)
        if last.shape != rewards.shape[:-1]:
            raise ValueError(f"last_value must have shape {tuple(rewards.shape[:-1])} (one value per sequence), "
                             f"got {tuple(last.shape)}")
    return rewards, cont, last


def discounted_returns(rewards: Tensor, gamma: float, dones: Tensor | None = None, *,
                       last_value: Tensor | float | None = None) -> Tensor:
    """G_t = r_t + gamma (1 - done_t) G_{t+1}, with G_T = ``last_value`` (default 0).

    rewards, dones: (T,) or (B, T); dones bool or 0/1, true where step t ended an episode.
    ``last_value`` ((), or (B,)) is the value of the state after the last step, for a sequence
    cut off mid-episode. Returns (T,) or (B, T). Example: rewards [1, 1, 1], gamma 0.5 gives
    [1.75, 1.5, 1]; with dones [0, 1, 0] it gives [1.5, 1, 1].
    """
    gamma = _unit_interval(gamma, "gamma")
    rewards, cont, g = _episode_inputs(rewards, dones, last_value)
    out = torch.empty_like(rewards)
    for t in reversed(range(rewards.shape[-1])):
        g = rewards[..., t] + gamma * cont[..., t] * g
        out[..., t] = g
    return out


def gae(rewards: Tensor, values: Tensor, dones: Tensor | None, gamma: float, lam: float,
        last_value: Tensor | float | None = None) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016, eq. 16), returning (advantages, returns).

    rewards, values, dones: (T,) or (B, T). ``values[..., t]`` = V(s_t); ``last_value`` = V(s_T),
    the state after the last step (default 0: the sequence ends there, as a generated answer
    does). With c_t = 1 - done_t,

        delta_t = r_t + gamma c_t V(s_{t+1}) - V(s_t),    A_t = delta_t + gamma lam c_t A_{t+1},

    computed backwards from A_T = 0; the returns are A_t + V(s_t) (the value targets, TD(lambda)).
    lam = 1 gives G_t - V(s_t); lam = 0 the one-step TD error. Nothing flows back across an
    episode end: neither the next episode's rewards nor its first value.
    """
    gamma, lam = _unit_interval(gamma, "gamma"), _unit_interval(lam, "lam")
    rewards, cont, next_value = _episode_inputs(rewards, dones, last_value, values)
    advantages = torch.empty_like(rewards)
    running = torch.zeros_like(next_value)
    for t in reversed(range(rewards.shape[-1])):
        delta = rewards[..., t] + gamma * cont[..., t] * next_value - values[..., t]
        running = delta + gamma * lam * cont[..., t] * running
        advantages[..., t] = running
        next_value = values[..., t]
    return advantages, advantages + values


def reinforce_loss(logprobs: Tensor, returns: Tensor, baseline: Tensor | float | None = None,
                   mask: Tensor | None = None) -> Tensor:
    """REINFORCE (Williams 1992): the mean over counted samples of -(G - b) log pi(a).

    logprobs: log pi of the actions taken (``action_logprobs``), (B,) or (B, T); returns G and
    ``mask`` the same shape; ``baseline`` b: None (0), a number, or a tensor of that shape (a value
    estimate). G - b is a constant weight (detached): only log pi carries the gradient, whose
    expectation is the policy gradient. Shapes must match exactly: a (B,) weight against (B, V)
    log-probs is the seeds' bug (``seed_reinforce_loss``).
    """
    logprobs = _float_tensor(logprobs, "logprobs")
    _same_shape("returns", _float_tensor(returns, "returns"), "logprobs", logprobs)
    weight = returns
    if baseline is not None:
        if isinstance(baseline, Tensor) and baseline.ndim > 0:
            _same_shape("baseline", baseline, "logprobs", logprobs)
        weight = returns - baseline
    return masked_mean(-weight.detach() * logprobs, mask)


def seed_reinforce_loss(logits: Tensor, rewards: Tensor) -> Tensor:
    """The seed notes' REINFORCE loss, bug for bug (SEED_CONCEPTS error 41 (a), (b)): do not use.

    ``logits`` (B, T, V) from a forward pass over the prompt, ``rewards`` (B,): the seed computes
    ``-(rewards * log_softmax(logits)[:, -1, :]).mean()``. That multiplies (B,) by (B, V), which
    broadcasts as (1, B) against (B, V): a RuntimeError unless B == V or B == 1. With B == 1 it
    runs and weights every vocabulary entry's log-prob equally, so the gradient ignores which
    token was sampled; with B == V it silently pairs reward i with token i of every row. The
    fix is ``reinforce_loss(action_logprobs(logits, actions), rewards)`` on the sampled tokens.
    """
    return -(rewards * F.log_softmax(logits, dim=-1)[:, -1, :]).mean()


def ppo_policy_loss(logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, clip_eps: float = 0.2,
                    mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """PPO's clipped surrogate (Schulman et al. 2017, eq. 7) as a loss, and the fraction clipped.

    All inputs share one shape ((B,), (B, T), ...). With ratio = exp(logprobs - old_logprobs),

        loss = masked_mean(max(-A ratio, -A clip(ratio, 1 - eps, 1 + eps))),

    the negative of the paper's min. ``clip_fraction`` (a detached 0-d tensor) is the fraction
    of counted tokens where the clipped term is the larger, so that their gradient is zero:
    ratio > 1 + eps with A > 0, or ratio < 1 - eps with A < 0 (trl's ``clip_ratio/region_mean``;
    CleanRL counts |ratio - 1| > eps whatever the sign of A). ``old_logprobs`` and
    ``advantages`` are data from the rollout: no gradient flows into them.
    """
    logprobs = _float_tensor(logprobs, "logprobs")
    for name, x in (("old_logprobs", old_logprobs), ("advantages", advantages)):
        _same_shape(name, _float_tensor(x, name), "logprobs", logprobs)
    if not clip_eps > 0:
        raise ValueError(f"clip_eps must be > 0, got {clip_eps}")
    advantages = advantages.detach()
    ratio = torch.exp(logprobs - old_logprobs.detach())
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_eps, 1.0 + clip_eps)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    clip_fraction = masked_mean((clipped > unclipped).to(logprobs.dtype), mask).detach()
    return loss, clip_fraction


def ppo_value_loss(values: Tensor, old_values: Tensor, returns: Tensor, clip_eps: float | None = None,
                   mask: Tensor | None = None) -> Tensor:
    """The value head's loss: 0.5 masked_mean((V - R)^2), or PPO2's clipped form when ``clip_eps`` is set.

    Clipped: V_clip = V_old + clip(V - V_old, -eps, eps) and the loss is
    0.5 masked_mean(max((V - R)^2, (V_clip - R)^2)): a value may not move more than eps from
    its rollout value in one update to lower the loss (OpenAI baselines' PPO2, trl's old
    PPOTrainer). The 0.5 makes the gradient V - R. All inputs share one shape.
    """
    values = _float_tensor(values, "values")
    for name, x in (("old_values", old_values), ("returns", returns)):
        _same_shape(name, _float_tensor(x, name), "values", values)
    returns = returns.detach()
    squared = (values - returns) ** 2
    if clip_eps is None:
        return 0.5 * masked_mean(squared, mask)
    if not clip_eps > 0:
        raise ValueError(f"clip_eps must be > 0 or None, got {clip_eps}")
    old_values = old_values.detach()
    clipped = old_values + torch.clamp(values - old_values, -clip_eps, clip_eps)
    return 0.5 * masked_mean(torch.maximum(squared, (clipped - returns) ** 2), mask)


def kl_estimators(logprobs: Tensor, ref_logprobs: Tensor) -> dict[str, Tensor]:
    """Schulman's per-token estimates of KL(pi || pi_ref) for tokens sampled from pi.

    ``logprobs`` = log pi(x), ``ref_logprobs`` = log pi_ref(x), same shape; with
    log r = log pi_ref(x) - log pi(x):

    * k1 = -log r: unbiased, high variance, negative for half the samples or so;
    * k2 = (log r)^2 / 2: biased (its mean is an f-divergence that equals KL to second order),
      low variance, >= 0;
    * k3 = (r - 1) - log r: unbiased (E_pi[r] = 1), >= 0 (log r <= r - 1), and of low variance
      while pi_ref is close to pi; the KL term of GRPO's loss (Shao et al. 2024, eq. 4).

    The means of k1 and k3 over samples of pi converge to KL(pi || pi_ref); over samples of
    another distribution they do not. Returns ``{"k1", "k2", "k3"}``, each of the input's shape.
    """
    logprobs = _float_tensor(logprobs, "logprobs")
    _same_shape("ref_logprobs", _float_tensor(ref_logprobs, "ref_logprobs"), "logprobs", logprobs)
    log_r = ref_logprobs - logprobs
    return {"k1": -log_r, "k2": 0.5 * log_r ** 2, "k3": torch.expm1(log_r) - log_r}


def kl_shaped_rewards(scores: Tensor, logprobs: Tensor, ref_logprobs: Tensor, beta: float,
                      mask: Tensor | None = None) -> Tensor:
    """InstructGPT's per-token rewards: -beta (log pi - log pi_ref) on every token, + the score on the last.

    scores: (B,) the reward model's score of each whole response; logprobs, ref_logprobs, mask:
    (B, T) for the response tokens. The penalty is k1 against the frozen SFT model (Ouyang et
    al. 2022, eq. 2; Ziegler et al. 2019); the score goes to each row's last counted token.
    Returns (B, T), zero where ``mask`` is false; feed it to ``gae``.
    """
    k1 = kl_estimators(logprobs, ref_logprobs)["k1"].detach()
    if logprobs.ndim != 2 or scores.shape != logprobs.shape[:1]:
        raise ValueError(f"scores must be (B,) and logprobs (B, T), got {tuple(scores.shape)} and "
                         f"{tuple(logprobs.shape)}")
    mask = torch.ones_like(logprobs, dtype=torch.bool) if mask is None else _mask_of(mask, logprobs)
    if not mask.any(dim=1).all():
        raise ValueError("every row needs at least one counted token to receive its score")
    rewards = torch.where(mask, -beta * k1, torch.zeros_like(k1))
    positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    last = torch.where(mask, positions, torch.full_like(positions, -1)).amax(dim=1)
    rewards[torch.arange(len(scores), device=mask.device), last] += scores.detach().to(rewards.dtype)
    return rewards


def grpo_advantages(rewards: Tensor, eps: float = 1e-4, scale: bool = True) -> Tensor:
    """Group-relative advantages (Shao et al. 2024, section 4.1.2): (r_i - mean(r)) / (std(r) + eps).

    rewards: (B, G), the rewards of G answers sampled for each of B prompts; every token of
    answer i gets the advantage of row entry i. The paper writes std(r) without saying which;
    like trl's GRPOTrainer (``nanstd``) and torch's default, this is the sample standard deviation
    with Bessel's correction (divide by G - 1), and ``eps`` (trl's 1e-4) is added to it so a
    group of equal rewards gets advantages 0. ``scale=False`` only subtracts the mean (Dr. GRPO,
    Liu et al. 2025). Returns (B, G).
    """
    rewards = _float_tensor(rewards, "rewards")
    if rewards.ndim != 2:
        raise ValueError(f"rewards must be (B, G), one row per prompt, got shape {tuple(rewards.shape)}")
    centred = rewards - rewards.mean(dim=1, keepdim=True)
    if not scale:
        return centred
    if rewards.shape[1] < 2:
        raise ValueError(f"a group needs G >= 2 answers for a standard deviation, got G={rewards.shape[1]}")
    return centred / (rewards.std(dim=1, keepdim=True) + eps)
