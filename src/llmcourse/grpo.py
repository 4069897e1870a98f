"""GRPO: PPO without a value function, its baseline the mean reward of a group of replies to one prompt.

Group Relative Policy Optimization (Shao et al. 2024, DeepSeekMath; used for DeepSeek-R1-Zero
and DeepSeek-R1, DeepSeek-AI 2025): for each prompt, sample G replies, score each with a
*verifiable* reward (a program checks the answer: here ``instructions.exact_match``, 1 or 0),
and give every token of reply i the advantage (r_i - mean(r)) / std(r) of its group. No value
network, no reward model. The loss is PPO's clipped surrogate plus beta times the k3 estimate of
KL(pi || pi_ref) (Shao et al. 2024, eq. 3-4). Here each batch is used for one gradient step, so
pi_old = pi and the clipping never binds: the update is the group-baselined policy gradient.

A group whose replies are all right (or all wrong) has advantages 0 and teaches nothing: GRPO
learns from prompts the model sometimes solves.

Shapes: P prompts per step, G replies per prompt, N reply tokens.

Taught in: book/10-rlhf
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from llmcourse.gpt import GPT
from llmcourse.policy_gradient import (
    action_logprobs,
    grpo_advantages,
    kl_estimators,
    masked_mean,
    ppo_policy_loss,
)
from llmcourse.rollouts import Rollout, response_logits, response_logprobs, sample, token_entropy


@dataclass(frozen=True)
class GRPOConfig:
    steps: int = 40             # gradient steps, one batch of P x G replies each
    prompts_per_step: int = 8   # P
    group_size: int = 8         # G replies per prompt
    max_new_tokens: int = 8     # longest reply
    beta: float = 0.04          # weight of the k3 KL term (DeepSeekMath's value)
    clip_eps: float = 0.2
    lr: float = 2e-5
    seed: int = 0

    def __post_init__(self):
        for name in ("steps", "prompts_per_step", "max_new_tokens"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"GRPOConfig.{name} must be an int >= 1, got {getattr(self, name)!r}")
        if not isinstance(self.group_size, int) or self.group_size < 2:
            raise ValueError(f"GRPOConfig.group_size must be an int >= 2 (a group needs a spread), "
                             f"got {self.group_size!r}")
        if self.beta < 0 or self.lr <= 0:
            raise ValueError(f"need beta >= 0 and lr > 0, got {self.beta}, {self.lr}")


def train_grpo(policy: GPT, reference: GPT, prompts: Sequence[Tensor],
               reward_fn: Callable[[Rollout, list[int]], Tensor], config: GRPOConfig, *, eos_id: int, pad_id: int,
               show_progress: bool = True) -> dict[str, list[float]]:
    """Run GRPO on ``policy`` in place (``reference`` frozen); per-step curves.

    ``reward_fn(rollout, prompt_indices)`` -> (P * G,) rewards, rows grouped by prompt. Curves:
    ``reward`` (mean over the P x G replies), ``signal_groups`` (fraction of groups with at least
    one reward above the group's minimum, i.e. a learning signal), ``kl`` (mean k3 per token),
    ``entropy``, ``length``.
    """
    from llmcourse.progress import progress

    if not prompts:
        raise ValueError("need at least one prompt")
    gen = torch.Generator().manual_seed(config.seed)
    opt = torch.optim.AdamW(policy.parameters(), lr=config.lr, weight_decay=0.0)
    reference.eval().requires_grad_(False)
    p, g = config.prompts_per_step, config.group_size
    history: dict[str, list[float]] = {k: [] for k in ("reward", "signal_groups", "kl", "entropy", "length")}
    bar = progress(range(config.steps), desc="GRPO", disable=not show_progress)
    for _ in bar:
        pick = torch.randint(len(prompts), (p,), generator=gen).tolist()
        rows = [i for i in pick for _ in range(g)]
        ro = sample(policy, [prompts[i] for i in rows], config.max_new_tokens, eos_id=eos_id, pad_id=pad_id,
                    generator=gen)
        mask = ro.response_mask
        rewards = reward_fn(ro, rows).float().view(p, g)                      # (P, G)
        adv = grpo_advantages(rewards).reshape(-1, 1).expand_as(mask)         # (P G, N): one value per reply
        logits = response_logits(policy, ro)
        logprobs = torch.where(mask, action_logprobs(logits, ro.response_ids), 0.0)
        with torch.no_grad():
            ref_logprobs = response_logprobs(reference, ro)
        pg_loss, _ = ppo_policy_loss(logprobs, ro.logprobs, adv.contiguous(), config.clip_eps, mask=mask)
        kl = masked_mean(kl_estimators(logprobs, ref_logprobs)["k3"], mask)
        opt.zero_grad()
        (pg_loss + config.beta * kl).backward()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
        opt.step()
        history["reward"].append(float(rewards.mean()))
        history["signal_groups"].append(float((rewards.max(1).values > rewards.min(1).values).float().mean()))
        history["kl"].append(kl.item())
        history["entropy"].append(float(token_entropy(logits.detach(), mask)))
        history["length"].append(float(ro.lengths.float().mean()))
        bar.set_postfix(reward=f"{history['reward'][-1]:.2f}")
    return history
