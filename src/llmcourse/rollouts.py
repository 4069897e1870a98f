"""Rollouts: a language model acting as a policy, sampling replies and scoring its own tokens.

In RL words (Ziegler et al. 2019; Ouyang et al. 2022): the *state* is the prompt plus the tokens
generated so far, the *action* is the next token, the *policy* is the model's next-token
distribution, and an *episode* ends at ``<|eos|>`` or after ``max_new_tokens``. A rollout keeps
what the RL losses need: the sampled token ids and their log-probabilities under the policy
that sampled them (log pi_old), plus a mask of the tokens that belong to each reply.

Prompts of different lengths are **left**-padded so that every reply starts at the same column
(SEED error 41 (e): right padding would put pad tokens between a prompt and its reply). Pad
tokens get ``doc_ids = -1`` and real tokens 0, so ``GPT.forward``'s document mask hides the pads,
and position ids start at 0 on each prompt's first real token: a left-padded row gives the
logits the prompt would get alone.

Shapes: B sequences, P prompt columns (after padding), N reply columns, V vocabulary.

Taught in: book/10-rlhf
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from llmcourse.gpt import GPT
from llmcourse.policy_gradient import action_logprobs, masked_mean


@dataclass
class Rollout:
    """Sampled replies. ``input_ids``, ``position_ids``, ``doc_ids``: (B, P + N); ``response_mask``,
    ``logprobs``: (B, N) - true on each reply's tokens up to and including its first ``<|eos|>``."""

    input_ids: Tensor
    position_ids: Tensor
    doc_ids: Tensor
    prompt_length: int
    response_mask: Tensor
    logprobs: Tensor

    @property
    def response_ids(self) -> Tensor:
        """(B, N): the sampled tokens (``<|eos|>`` repeated after a reply ended)."""
        return self.input_ids[:, self.prompt_length:]

    @property
    def lengths(self) -> Tensor:
        """(B,): reply lengths in tokens, ``<|eos|>`` included."""
        return self.response_mask.sum(dim=1)

    def repeat(self, n: int) -> Rollout:
        """Each row repeated ``n`` times in place (row i becomes rows i*n ... i*n + n - 1)."""
        return Rollout(*(t.repeat_interleave(n, dim=0) for t in (self.input_ids, self.position_ids, self.doc_ids)),
                       self.prompt_length, self.response_mask.repeat_interleave(n, dim=0),
                       self.logprobs.repeat_interleave(n, dim=0))


def left_pad(prompts: Sequence[Tensor], pad_id: int) -> tuple[Tensor, Tensor, Tensor]:
    """1-D prompt ids -> (input_ids, position_ids, doc_ids), each (B, P), pads on the left.

    ``left_pad([tensor([5, 6, 7]), tensor([8])], 0)`` -> ids ``[[5, 6, 7], [0, 0, 8]]``, positions
    ``[[0, 1, 2], [0, 0, 0]]``, doc ids ``[[0, 0, 0], [-1, -1, 0]]``.
    """
    if not prompts or any(not isinstance(p, Tensor) or p.ndim != 1 or not len(p) for p in prompts):
        raise ValueError("prompts must be a non-empty list of non-empty 1-D id tensors")
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    pos = torch.zeros((len(prompts), width), dtype=torch.long)
    doc = torch.full((len(prompts), width), -1, dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):] = p
        pos[i, width - len(p):] = torch.arange(len(p))
        doc[i, width - len(p):] = 0
    return ids, pos, doc


@torch.no_grad()
def sample(model: GPT, prompts: Sequence[Tensor], max_new_tokens: int, *, eos_id: int, pad_id: int,
           generator: torch.Generator | None = None, temperature: float = 1.0, greedy: bool = False) -> Rollout:
    """Sample one reply per prompt from ``model`` (switched to eval mode: no dropout while acting).

    Every step runs the whole (B, P + n) batch and draws the next token of each unfinished row
    from softmax(logits / temperature) - sampling, not greedy decoding: a policy gradient needs
    exploration (SEED error 41 (f)). ``greedy=True`` takes the argmax instead (for evaluation).
    Rows that produced ``eos_id`` get ``eos_id`` afterwards, masked out.
    """
    if not isinstance(model, GPT):
        raise TypeError(f"model must be a llmcourse.gpt.GPT, got {type(model).__name__}")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be an int >= 1, got {max_new_tokens!r}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    ids, pos, doc = left_pad(prompts, pad_id)
    p = ids.shape[1]
    if p + max_new_tokens > model.config.block_size:
        raise ValueError(f"prompt columns {p} + max_new_tokens {max_new_tokens} exceed block_size "
                         f"{model.config.block_size}")
    model.eval()
    b = ids.shape[0]
    done = torch.zeros(b, dtype=torch.bool)
    mask, logps = [], []
    for _ in range(max_new_tokens):
        logits = model(ids, position_ids=pos, doc_ids=doc)[0][:, -1] / temperature  # (B, V)
        logp = F.log_softmax(logits, dim=-1)
        nxt = logp.argmax(-1) if greedy else torch.multinomial(logp.exp(), 1, generator=generator).squeeze(1)  # (B,)
        nxt = torch.where(done, torch.full_like(nxt, eos_id), nxt)
        mask.append(~done)
        logps.append(torch.where(done, torch.zeros(b), logp.gather(1, nxt[:, None]).squeeze(1)))
        ids = torch.cat([ids, nxt[:, None]], dim=1)
        pos = torch.cat([pos, pos[:, -1:] + 1], dim=1)
        doc = torch.cat([doc, torch.zeros((b, 1), dtype=torch.long)], dim=1)
        done = done | (nxt == eos_id)
        if done.all():
            break
    return Rollout(ids, pos, doc, p, torch.stack(mask, dim=1), torch.stack(logps, dim=1))


def response_logits(model: GPT, rollout: Rollout) -> Tensor:
    """The logits that predict each reply token, (B, N, V), with gradients (position t - 1 predicts t)."""
    logits = model(rollout.input_ids, position_ids=rollout.position_ids, doc_ids=rollout.doc_ids)[0]
    return logits[:, rollout.prompt_length - 1:-1]


def response_logprobs(model: GPT, rollout: Rollout) -> Tensor:
    """log pi(token) of every reply token under ``model``, (B, N); 0 where ``response_mask`` is false."""
    lp = action_logprobs(response_logits(model, rollout), rollout.response_ids)
    return torch.where(rollout.response_mask, lp, torch.zeros_like(lp))


def token_entropy(logits: Tensor, mask: Tensor) -> Tensor:
    """Mean entropy (nats) of the next-token distributions over the counted tokens: logits (B, N, V) -> ()."""
    logp = F.log_softmax(logits, dim=-1)
    return masked_mean(-(logp.exp() * logp).sum(-1), mask)


def decode_responses(rollout: Rollout, tokenizer, eos_id: int) -> list[str]:
    """The reply texts, without their ``<|eos|>``."""
    out = []
    for ids, m in zip(rollout.response_ids, rollout.response_mask):
        kept = ids[m].tolist()
        out.append(tokenizer.decode(kept[:-1] if kept and kept[-1] == eos_id else kept))
    return out
