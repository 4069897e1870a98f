"""PPO for a language model, as in RLHF: sample, score, penalise KL to the SFT model, GAE, clipped updates.

One iteration of :func:`train_ppo` (Ziegler et al. 2019; Stiennon et al. 2020; Ouyang et al. 2022):

1. the policy samples a reply to each of B prompts (``llmcourse.rollouts.sample``);
2. a reward function scores each whole reply (a reward model, a program): one number, at the end;
3. every reply token gets the reward -beta (log pi_old - log pi_ref), the frozen SFT reference's
   per-token KL penalty, and the last one also gets the score (``kl_shaped_rewards``);
4. a value head estimates V(s_t) before each token; GAE turns rewards and values into
   advantages and value targets (``gae``, gamma = 1, lam = 0.95);
5. a few epochs of minibatch updates on this batch with PPO's clipped surrogate and value loss
   (Schulman et al. 2017): the ratio pi / pi_old may not pay beyond 1 +- eps.

The value head is a small MLP on the policy's (detached) last-layer features: it shares the
forward pass with the policy but its errors do not push on the policy's weights.

Shapes: B prompts per iteration, N reply tokens, C = n_embd.

Taught in: book/10-rlhf
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from llmcourse.gpt import GPT
from llmcourse.policy_gradient import (
    action_logprobs,
    gae,
    kl_shaped_rewards,
    masked_mean,
    ppo_policy_loss,
    ppo_value_loss,
)
from llmcourse.reward_model import hidden_states
from llmcourse.rollouts import Rollout, response_logprobs, sample, token_entropy


@dataclass(frozen=True)
class PPOConfig:
    steps: int = 40              # iterations (each: one batch of rollouts, then `epochs` passes over it)
    batch_size: int = 32         # prompts (and replies) per iteration
    minibatches: int = 2         # gradient steps per epoch
    epochs: int = 2              # passes over each batch (PPO reuses its samples; REINFORCE would not)
    max_new_tokens: int = 16     # longest reply
    beta: float = 0.05           # weight of the per-token KL penalty to the SFT reference
    clip_eps: float = 0.2        # PPO's epsilon for the ratio, and for the value clipping
    gamma: float = 1.0           # no discount within a reply
    lam: float = 0.95            # GAE's lambda
    lr: float = 5e-5             # policy learning rate (AdamW)
    value_lr: float = 1e-3       # value-head learning rate
    seed: int = 0

    def __post_init__(self):
        for name in ("steps", "batch_size", "minibatches", "epochs", "max_new_tokens"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"PPOConfig.{name} must be an int >= 1, got {getattr(self, name)!r}")
        if self.batch_size % self.minibatches:
            raise ValueError(f"batch_size {self.batch_size} must be a multiple of minibatches {self.minibatches}")
        if self.beta < 0 or self.clip_eps <= 0 or self.lr <= 0:
            raise ValueError(f"need beta >= 0, clip_eps > 0, lr > 0; got {self.beta}, {self.clip_eps}, {self.lr}")


class ValueHead(nn.Module):
    """V(s) from the policy's features: (..., C) -> (...). A two-layer MLP on detached features."""

    def __init__(self, n_embd: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(n_embd, n_embd), nn.Tanh(), nn.Linear(n_embd, 1))

    def forward(self, features: Tensor) -> Tensor:
        return self.net(features.detach()).squeeze(-1)


def _features(model: GPT, rollout: Rollout) -> Tensor:
    """Hidden states at the positions that predict each reply token: (B, N, C)."""
    h = hidden_states(model, rollout.input_ids, position_ids=rollout.position_ids, doc_ids=rollout.doc_ids)
    return h[:, rollout.prompt_length - 1:-1]


def last_token_dones(mask: Tensor) -> Tensor:
    """(B, N) bool, true at each row's last counted token: the episode ends there for GAE."""
    nxt = torch.cat([mask[:, 1:], torch.zeros_like(mask[:, :1])], dim=1)
    return mask & ~nxt


def train_ppo(policy: GPT, reference: GPT, prompts: Sequence[Tensor],
              reward_fn: Callable[[Rollout, list[int]], Tensor], config: PPOConfig, *, eos_id: int, pad_id: int,
              track: Callable[[Rollout, list[int]], dict[str, float]] | None = None,
              show_progress: bool = True) -> dict[str, list[float]]:
    """Run PPO on ``policy`` in place; ``reference`` stays frozen. Returns per-iteration curves.

    ``reward_fn(rollout, prompt_indices)`` -> (B,) scores of the replies; ``track`` (optional) adds
    other per-iteration numbers (e.g. exact-match accuracy). Curves: ``score`` (mean reward
    before the penalty), ``kl`` (mean over replies of sum_t log pi_old/pi_ref, the k1 estimate of
    the sequence KL), ``entropy`` (nats per token), ``length`` (tokens), ``clip_fraction``,
    ``value_loss`` and whatever ``track`` returns.
    """
    from llmcourse.progress import progress

    if not prompts:
        raise ValueError("need at least one prompt")
    gen = torch.Generator().manual_seed(config.seed)
    value_head = ValueHead(policy.config.n_embd)
    opt = torch.optim.AdamW([{"params": policy.parameters(), "lr": config.lr},
                             {"params": value_head.parameters(), "lr": config.value_lr}], weight_decay=0.0)
    reference.eval().requires_grad_(False)
    history: dict[str, list[float]] = {k: [] for k in ("score", "kl", "entropy", "length", "clip_fraction",
                                                       "value_loss")}
    bar = progress(range(config.steps), desc=f"PPO beta={config.beta:g}", disable=not show_progress)
    for _ in bar:
        pick = torch.randint(len(prompts), (config.batch_size,), generator=gen).tolist()
        ro = sample(policy, [prompts[i] for i in pick], config.max_new_tokens, eos_id=eos_id, pad_id=pad_id,
                    generator=gen)
        mask = ro.response_mask
        with torch.no_grad():
            feats = _features(policy, ro)                                   # (B, N, C)
            logits = policy.lm_head(feats)                                  # (B, N, V)
            old_logprobs = torch.where(mask, action_logprobs(logits, ro.response_ids), 0.0)
            ref_logprobs = response_logprobs(reference, ro)
            old_values = torch.where(mask, value_head(feats), 0.0)
            scores = reward_fn(ro, pick).to(old_logprobs.dtype)            # (B,)
            rewards = kl_shaped_rewards(scores, old_logprobs, ref_logprobs, config.beta, mask)
            adv, returns = gae(rewards, old_values, last_token_dones(mask), config.gamma, config.lam)
            mean, std = masked_mean(adv, mask), masked_mean((adv - masked_mean(adv, mask)) ** 2, mask).sqrt()
            adv = torch.where(mask, (adv - mean) / (std + 1e-8), 0.0)       # whitened, as in PPO practice
            entropy = token_entropy(logits, mask)
        clips, vlosses = [], []
        size = config.batch_size // config.minibatches
        for _epoch in range(config.epochs):
            order = torch.randperm(config.batch_size, generator=gen)
            for k in range(config.minibatches):
                rows = order[k * size:(k + 1) * size]
                part = Rollout(ro.input_ids[rows], ro.position_ids[rows], ro.doc_ids[rows], ro.prompt_length,
                               mask[rows], ro.logprobs[rows])
                feats = _features(policy, part)
                logprobs = action_logprobs(policy.lm_head(feats), part.response_ids)
                pg_loss, clip = ppo_policy_loss(logprobs, old_logprobs[rows], adv[rows], config.clip_eps,
                                                mask=part.response_mask)
                v_loss = ppo_value_loss(value_head(feats), old_values[rows], returns[rows], config.clip_eps,
                                        mask=part.response_mask)
                opt.zero_grad()
                (pg_loss + v_loss).backward()
                torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
                opt.step()
                clips.append(float(clip))
                vlosses.append(v_loss.item())
        history["score"].append(float(scores.mean()))
        history["kl"].append(float((old_logprobs - ref_logprobs).sum(dim=1).mean()))
        history["entropy"].append(float(entropy))
        history["length"].append(float(ro.lengths.float().mean()))
        history["clip_fraction"].append(sum(clips) / len(clips))
        history["value_loss"].append(sum(vlosses) / len(vlosses))
        for key, value in (track(ro, pick) if track else {}).items():
            history.setdefault(key, []).append(float(value))
        bar.set_postfix(score=f"{history['score'][-1]:.2f}", kl=f"{history['kl'][-1]:.2f}")
    return history
