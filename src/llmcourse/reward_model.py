"""Reward models: preference pairs and a Bradley-Terry scorer built on the course GPT.

A reward model reads a whole conversation (prompt and reply) and returns one number. It is
trained on comparisons, "this reply is better than that one", with the Bradley-Terry loss
-log sigma(r_chosen - r_rejected) (Bradley & Terry 1952; Christiano et al. 2017; Ouyang et al.
2022, eq. 1), because people agree more on which of two answers is better than on a score.

* :func:`make_preference_pairs` - comparisons generated from ``llmcourse.instructions``, of three
  kinds: ``correct`` (the right answer beats a wrong one), ``format`` (the requested format beats a
  broken one) and ``length`` - a deliberately exploitable labeller who prefers whichever reply is
  longer, here the right answer with filler words appended. The last kind is what reward hacking
  feeds on (Gao et al. 2023; Singhal et al. 2023 measured the same length bias in real data).
* :func:`hidden_states` - the GPT backbone's last-layer features (B, T, C).
* :class:`RewardModel` - backbone + a linear head read at each sequence's last token (its ``<|eos|>``).
* :func:`encode_conversations`, :func:`train_reward_model`, :func:`pair_accuracy`.

Shapes: B batch, T tokens, C = n_embd.

Taught in: book/10-rlhf
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from llmcourse import chat
from llmcourse.corpus import WORDS
from llmcourse.gpt import GPT
from llmcourse.instructions import Example, make_split
from llmcourse.preference import bradley_terry_loss

KINDS = ("correct", "format", "length")
PAIR_FAMILIES = ("addition", "subtraction", "uppercase", "json", "extract", "reverse", "sort")


@dataclass(frozen=True)
class PreferencePair:
    """One comparison: for ``example``'s prompt, ``chosen`` is preferred to ``rejected``; ``kind`` says why."""

    example: Example
    chosen: str
    rejected: str
    kind: str

    def messages(self, which: str) -> list[dict]:
        """The conversation [user, assistant] with the ``which`` ("chosen" or "rejected") reply."""
        if which not in ("chosen", "rejected"):
            raise ValueError(f"which must be 'chosen' or 'rejected', got {which!r}")
        user = chat.example_to_messages(self.example)[0]
        return [user, {"role": "assistant", "content": getattr(self, which)}]


def wrong_answer(example: Example, rng: np.random.Generator) -> str:
    """A plausible wrong reply: a nearby number, a word swapped, order kept where it should change."""
    out, f = example.output, example.family
    if f in ("addition", "subtraction"):
        delta = int(rng.choice([-10, -2, -1, 1, 2, 10]))
        return str(abs(int(out) + delta) if int(out) + delta != int(out) else int(out) + 1)
    if f == "json":
        key, value = next(iter(json.loads(out).items()))
        bad = value + int(rng.choice([-1, 1])) if isinstance(value, int) else str(rng.choice(
            [w for w in WORDS if w != value]))
        return json.dumps({key: bad})
    words = out.replace(",", " ").split()
    if f in ("reverse", "sort") and len(words) > 1:
        i = int(rng.integers(len(words) - 1))
        words[i], words[i + 1] = words[i + 1], words[i]
        return " ".join(words)
    if f == "extract":
        return ", ".join(words[:-1]) if len(words) > 1 else str(rng.choice([w for w in WORDS if w not in words]))
    i = int(rng.integers(len(words)))  # uppercase
    words[i] = str(rng.choice([w for w in WORDS if w.upper() not in words])).upper()
    return " ".join(words)


def broken_format(example: Example, rng: np.random.Generator) -> str:
    """The right content in the wrong form: JSON without quotes and brace, lower case, no commas, commas."""
    out, f = example.output, example.family
    if f == "json":
        key, value = next(iter(json.loads(out).items()))
        return f"{key}: {value}"
    if f == "uppercase":
        return out.lower()
    if f == "extract":
        return out.replace(",", "") if "," in out else f"[{out}]"
    if f in ("reverse", "sort"):
        return ", ".join(out.split())
    return f"{out}." if rng.random() < 0.5 else f"= {out}"  # arithmetic: extra punctuation around the number


def padded_answer(example: Example, rng: np.random.Generator, n_words: int) -> str:
    """The right answer followed by ``n_words`` filler words: what a "longer is better" labeller prefers."""
    return " ".join([example.output, *(str(w) for w in rng.choice(WORDS, size=n_words))])


def make_preference_pairs(n: int, seed: int, *, split: str = "train", kinds: Sequence[str] = KINDS,
                          weights: Sequence[float] | None = None) -> list[PreferencePair]:
    """``n`` comparisons on prompts of ``split`` (families ``PAIR_FAMILIES``), kinds drawn with ``weights``.

    ``correct``: right answer vs :func:`wrong_answer`; ``format``: right answer vs :func:`broken_format`;
    ``length``: right answer + 2-6 filler words vs the right answer + fewer (0-1) - the exploitable
    preference. Examples repeat (with other corruptions) when ``n`` exceeds the split.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be an int >= 1, got {n!r}")
    bad = [k for k in kinds if k not in KINDS]
    if bad or not kinds:
        raise ValueError(f"kinds must be a non-empty subset of {KINDS}, got {kinds!r}")
    p = np.full(len(kinds), 1 / len(kinds)) if weights is None else np.asarray(weights, dtype=float)
    if p.shape != (len(kinds),) or (p < 0).any() or p.sum() <= 0:
        raise ValueError(f"weights must be {len(kinds)} non-negative numbers, got {weights!r}")
    rng = np.random.default_rng([seed, 10])
    examples = make_split(split, families=PAIR_FAMILIES)
    out = []
    for i in range(n):
        ex = examples[int(rng.integers(len(examples)))] if i >= len(examples) else examples[i]
        kind = str(kinds[int(rng.choice(len(kinds), p=p / p.sum()))])
        if kind == "correct":
            pair = (ex.output, wrong_answer(ex, rng))
        elif kind == "format":
            pair = (ex.output, broken_format(ex, rng))
        else:
            short = int(rng.integers(0, 2))
            pair = (padded_answer(ex, rng, short + int(rng.integers(2, 6))), padded_answer(ex, rng, short))
        out.append(PreferencePair(ex, pair[0], pair[1], kind))
    return out


def hidden_states(model: GPT, idx: Tensor, *, position_ids: Tensor | None = None,
                  doc_ids: Tensor | None = None) -> Tensor:
    """The last-layer features of the course GPT after its final LayerNorm: idx (B, T) -> (B, T, C).

    ``model.lm_head(hidden_states(...))`` equals ``model(idx, ...)[0]``.
    """
    if not isinstance(model, GPT):
        raise TypeError(f"model must be a llmcourse.gpt.GPT, got {type(model).__name__}")
    x = model.embed(idx, position_ids)
    mask = model._mask(idx, doc_ids)
    for block in model.h:
        x = block(x, mask)
    return model.ln_f(x)  # (B, T, C)


class RewardModel(nn.Module):
    """A scalar score per sequence: a GPT backbone (a copy, so the original stays untouched) and a linear
    head on the hidden state of each row's last real token. forward(idx (B, T), lengths (B,)) -> (B,)."""

    def __init__(self, backbone: GPT):
        super().__init__()
        if not isinstance(backbone, GPT):
            raise TypeError(f"backbone must be a llmcourse.gpt.GPT, got {type(backbone).__name__}")
        self.backbone = copy.deepcopy(backbone)
        self.head = nn.Linear(backbone.config.n_embd, 1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, idx: Tensor, lengths: Tensor) -> Tensor:
        if lengths.shape != idx.shape[:1] or int(lengths.min()) < 1 or int(lengths.max()) > idx.shape[1]:
            raise ValueError(f"lengths must be (B,) = ({idx.shape[0]},) with values in [1, {idx.shape[1]}], "
                             f"got {tuple(lengths.shape)}")
        h = hidden_states(self.backbone, idx)  # (B, T, C)
        last = h[torch.arange(idx.shape[0], device=idx.device), lengths - 1]  # (B, C)
        return self.head(last).squeeze(-1)  # (B,)


def encode_conversations(conversations: Sequence[list[dict]], tokenizer, pad_id: int) -> tuple[Tensor, Tensor]:
    """Render and encode each conversation (ending in ``<|eos|>``), right-pad: (ids (B, T), lengths (B,))."""
    rows = [chat.build_labels(m, tokenizer)[0] for m in conversations]
    return pad_rows(rows, pad_id)


def pad_rows(rows: Sequence[Tensor], pad_id: int) -> tuple[Tensor, Tensor]:
    """Right-pad 1-D id tensors into (B, T) with ``pad_id``; also return their lengths (B,)."""
    if not rows:
        raise ValueError("need at least one row")
    lengths = torch.tensor([len(r) for r in rows])
    ids = torch.full((len(rows), int(lengths.max())), pad_id, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = r
    return ids, lengths


def _pair_batch(pairs: Sequence[PreferencePair], tokenizer, pad_id: int):
    convs = [p.messages("chosen") for p in pairs] + [p.messages("rejected") for p in pairs]
    return encode_conversations(convs, tokenizer, pad_id)


def score_pairs(model: RewardModel, pairs: Sequence[PreferencePair], tokenizer, pad_id: int,
                batch_size: int = 64) -> tuple[Tensor, Tensor]:
    """(chosen scores (N,), rejected scores (N,)) without gradients."""
    chosen, rejected = [], []
    with torch.no_grad():
        for i in range(0, len(pairs), batch_size):
            part = pairs[i:i + batch_size]
            r = model(*_pair_batch(part, tokenizer, pad_id))
            chosen.append(r[:len(part)])
            rejected.append(r[len(part):])
    return torch.cat(chosen), torch.cat(rejected)


def pair_accuracy(model: RewardModel, pairs: Sequence[PreferencePair], tokenizer, pad_id: int) -> dict[str, float]:
    """Fraction of pairs where the chosen reply scores higher, per kind present and ``"all"``."""
    chosen, rejected = score_pairs(model, pairs, tokenizer, pad_id)
    wins = (chosen > rejected).tolist()
    out = {k: float(np.mean([w for w, p in zip(wins, pairs) if p.kind == k])) for k in KINDS
           if any(p.kind == k for p in pairs)}
    out["all"] = float(np.mean(wins))
    return out


def train_reward_model(model: RewardModel, pairs: Sequence[PreferencePair], tokenizer, pad_id: int, *,
                       steps: int, batch_size: int = 16, lr: float = 1e-4, seed: int = 0,
                       show_progress: bool = True) -> dict[str, list[float]]:
    """Minimise the Bradley-Terry loss with AdamW on random batches of ``pairs``; dropout off.

    Returns ``{"loss": [...], "accuracy": [...]}``, one entry per step (the batch's pair accuracy).
    """
    from llmcourse.progress import progress

    if not pairs or steps < 1 or batch_size < 1:
        raise ValueError(f"need pairs, steps >= 1 and batch_size >= 1, got {len(pairs)}, {steps}, {batch_size}")
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    model.eval()  # dropout off: the score of a reply should not be random
    history: dict[str, list[float]] = {"loss": [], "accuracy": []}
    bar = progress(range(steps), desc="reward model", disable=not show_progress)
    for _ in bar:
        pick = torch.randint(len(pairs), (batch_size,), generator=gen).tolist()
        r = model(*_pair_batch([pairs[i] for i in pick], tokenizer, pad_id))
        loss = bradley_terry_loss(r[:batch_size], r[batch_size:])
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        history["loss"].append(loss.item())
        history["accuracy"].append(float((r[:batch_size] > r[batch_size:]).float().mean()))
        bar.set_postfix(loss=f"{loss.item():.3f}")
    return history
