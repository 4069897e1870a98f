"""Supervised fine-tuning (SFT) of the course GPT: data -> packed batches -> loss on replies -> evaluation.

The pieces, in the order a run uses them:

* :func:`encode_examples` turns ``instructions.Example`` records into ``(input_ids (T,), labels (T,))``
  pairs with ``chat.build_labels``: the chat template rendered, labels -100 everywhere except the
  assistant's reply and its closing ``<|eos|>``.
* :func:`epoch_batches` packs them (``chat.pack``) into rows of ``block_size`` tokens, shuffles the rows
  with a seed and yields batches of ``batch_size`` rows.
* :func:`sft_loss` is the mean next-token cross-entropy over the trained tokens only, with the packed
  rows' ``doc_ids``/``position_ids`` so an example never attends to its neighbour.
* :func:`train_sft` is the loop: AdamW (``trainer.param_groups``), warm-up + cosine
  (``schedules.warmup_cosine``), clipping; ``replay`` mixes windows of pretraining text back in
  (their plain language-model loss, weighted), the classic remedy for catastrophic forgetting.
* :func:`greedy_replies` decodes many prompts at once (left-padded, each row its own document), and
  :func:`evaluate_chat` / :func:`evaluate_few_shot` score the fine-tuned model in the chat format and
  the base model with ``k`` solved examples in the ``Q: ... A: ...`` format it saw in pretraining.
* :func:`pretraining_perplexity` measures what was forgotten: perplexity on the pretraining
  validation text, the number chapter 8 reported for the base model.

Shapes: B rows, T tokens per row, V vocabulary size.

Taught in: book/09-sft
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from llmcourse.chat import (
    EOS,
    IGNORE_INDEX,
    build_labels,
    encode_prompt,
    example_to_messages,
    next_token_targets,
    pack,
    pad_batch,
)
from llmcourse.instructions import Example, score_by_family
from llmcourse.progress import progress
from llmcourse.schedules import warmup_cosine
from llmcourse.trainer import param_groups, random_windows

__all__ = ["SFTConfig", "SFTHistory", "encode_examples", "load_sft", "epoch_batches", "evaluate_chat", "evaluate_few_shot",
           "few_shot_prompt", "greedy_replies", "pretraining_perplexity", "pretraining_tokens", "sft_loss",
           "train_sft"]


def load_sft(kind: str = "course", *, device="cpu"):
    """``(model, tokenizer)`` of the shipped SFT model (``checkpoints/sft``, made by
    ``python -m llmcourse.recipes.sft``), SHA-256 checked: ``pretrained.load_base(kind, name="sft")``."""
    from llmcourse.pretrained import load_base

    return load_base(kind, device=device, name="sft")


def _check_examples(examples) -> list[Example]:
    examples = list(examples)
    if not examples or not all(isinstance(e, Example) for e in examples):
        raise TypeError("examples must be a non-empty sequence of instructions.Example")
    return examples


def encode_examples(examples: Sequence[Example], tokenizer, *, block_size: int = 128, reasoning: bool = False,
                    system: str | None = None) -> list[tuple[Tensor, Tensor]]:
    """``(input_ids (T_i,), labels (T_i,))`` per example, in the chat format (``chat.build_labels``).

    ``reasoning=True`` puts the explanation in a ``<think>`` block for the examples that have one
    (the others keep a plain reply). Examples longer than ``block_size`` tokens raise ValueError.
    """
    out = []
    for ex in _check_examples(examples):
        msgs = example_to_messages(ex, system=system, reasoning=reasoning and bool(ex.explanation))
        ids, labels = build_labels(msgs, tokenizer)
        if len(ids) > block_size:
            raise ValueError(f"a {ex.family} example has {len(ids)} tokens > block_size={block_size}: {ex}")
        out.append((ids, labels))
    return out


def epoch_batches(items: Sequence[tuple[Tensor, Tensor]], block_size: int, batch_size: int, *, seed: int,
                  packed: bool = True) -> list[dict[str, Tensor]]:
    """One epoch: the items packed (or one per row if ``packed=False``), rows shuffled with ``seed``, in
    batches of ``batch_size`` rows. Each batch is a dict of int64 (B, block_size) tensors with the keys of
    ``chat.pack``: ``input_ids``, ``labels``, ``position_ids``, ``doc_ids``."""
    return _shuffled(pack(items, block_size) if packed else pad_batch(items, block_size), batch_size, seed)


def _shuffled(rows: dict[str, Tensor], batch_size: int, seed: int) -> list[dict[str, Tensor]]:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    order = torch.randperm(rows["input_ids"].shape[0], generator=torch.Generator().manual_seed(seed))
    return [{k: v[order[i:i + batch_size]] for k, v in rows.items()} for i in range(0, len(order), batch_size)]


def sft_loss(model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
    """Mean cross-entropy of the next token over the trained (label != -100) tokens of a packed batch."""
    device = next(model.parameters()).device
    b = {k: v.to(device) for k, v in batch.items()}
    targets = next_token_targets(b["labels"], b["doc_ids"])  # (B, T)
    if not bool((targets != IGNORE_INDEX).any()):
        raise ValueError("the batch has no trained token (every label is -100)")
    logits, _ = model(b["input_ids"], position_ids=b["position_ids"], doc_ids=b["doc_ids"])  # (B, T, V)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE_INDEX)


@dataclass(frozen=True)
class SFTConfig:
    """Recipe of an SFT run. ``replay_batch`` > 0 adds that many windows of pretraining text per update,
    their language-model loss weighted by ``replay_weight`` (the forgetting mitigation)."""

    epochs: int = 8
    batch_size: int = 16  # packed rows per update
    block_size: int = 128
    lr: float = 1e-3
    min_lr: float = 1e-4
    warmup_steps: int = 30
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    seed: int = 0
    packed: bool = True
    replay_batch: int = 0
    replay_weight: float = 1.0
    dropout: float | None = 0.0  # sets every nn.Dropout's p for the run (None: keep the model's)

    def __post_init__(self):
        for name in ("epochs", "batch_size", "block_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"SFTConfig.{name} must be an int >= 1, got {v!r}")
        if not 0 < self.lr < math.inf or not 0 <= self.min_lr <= self.lr:
            raise ValueError(f"SFTConfig needs 0 < lr and 0 <= min_lr <= lr, got {self.lr}, {self.min_lr}")
        if self.dropout is not None and not 0 <= self.dropout < 1:
            raise ValueError(f"SFTConfig.dropout must be in [0, 1) or None, got {self.dropout!r}")
        if self.replay_batch < 0 or self.replay_weight < 0:
            raise ValueError("SFTConfig.replay_batch and replay_weight must be >= 0")


@dataclass
class SFTHistory:
    """Per update: step, SFT loss (trained tokens), replay loss (NaN without replay), learning rate."""

    step: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    replay_loss: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    seconds: float = 0.0


def train_sft(model: nn.Module, items: Sequence[tuple[Tensor, Tensor]], config: SFTConfig, *,
              replay_tokens: Tensor | None = None, steps: int | None = None, show_progress: bool = True,
              desc: str = "SFT") -> SFTHistory:
    """Fine-tune ``model`` in place on ``items`` (from :func:`encode_examples`); returns the history.

    Epoch e shuffles the packed rows with seed ``1000 * config.seed + e``. With ``config.replay_batch`` > 0,
    ``replay_tokens`` (1-D pretraining token ids) must be given: each update adds ``replay_weight`` times the
    next-token loss of ``replay_batch`` random windows of it. ``steps`` stops early (the schedule is unchanged).
    """
    if not isinstance(config, SFTConfig):
        raise TypeError(f"config must be an SFTConfig, got {type(config).__name__}")
    if config.replay_batch and replay_tokens is None:
        raise ValueError("config.replay_batch > 0 needs replay_tokens (pretraining token ids)")
    items = list(items)
    rows = pack(items, config.block_size) if config.packed else pad_batch(items, config.block_size)
    per_epoch = math.ceil(rows["input_ids"].shape[0] / config.batch_size)
    total = per_epoch * config.epochs
    steps = total if steps is None else min(steps, total)
    optimizer = torch.optim.AdamW(param_groups(model, config.weight_decay), lr=config.lr, betas=(0.9, 0.95))
    scheduler = warmup_cosine(optimizer, warmup_steps=min(config.warmup_steps, total - 1), total_steps=total,
                              min_lr_ratio=config.min_lr / config.lr)
    gen = torch.Generator().manual_seed(config.seed + 1)
    device = next(model.parameters()).device
    hist, start = SFTHistory(), time.perf_counter()
    if config.dropout is not None:
        for m in model.modules():
            if isinstance(m, nn.Dropout):
                m.p = config.dropout
    model.train()
    torch.manual_seed(config.seed)  # dropout
    step = 0
    with progress(total=steps, desc=desc, disable=not show_progress) as bar:
        for e in range(config.epochs):
            for batch in _shuffled(rows, config.batch_size, config.seed * 1000 + e):
                if step == steps:
                    break
                loss = sft_loss(model, batch)
                replay = torch.tensor(float("nan"))
                if config.replay_batch:
                    x, y = random_windows(replay_tokens, config.block_size, config.replay_batch, generator=gen)
                    _, replay = model(x.to(device), y.to(device))
                    (loss + config.replay_weight * replay).backward()
                else:
                    loss.backward()
                nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
                hist.lr.append(optimizer.param_groups[0]["lr"])
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                scheduler.step()
                step += 1
                hist.step.append(step)
                hist.loss.append(float(loss.detach()))
                hist.replay_loss.append(float(replay.detach()))
                bar.update(1)
                bar.set_postfix(loss=f"{float(loss.detach()):.3f}")
    model.eval()
    hist.seconds = time.perf_counter() - start
    return hist


# ----------------------------------------------------------------- decoding and evaluation


@torch.no_grad()
def greedy_replies(model: nn.Module, prompts: Sequence[Tensor], *, stop_ids: Sequence[int], max_new_tokens: int = 32,
                   batch_size: int = 64) -> list[list[int]]:
    """Greedy continuations of many prompts (each a 1-D int64 tensor), batched; each stops before the first
    of ``stop_ids`` (not included) or after ``max_new_tokens``.

    Rows are left-padded; the padding is its own document (``doc_ids``) and real tokens get positions
    0, 1, ..., so each row gives exactly the tokens it would give alone.
    """
    if not prompts:
        raise ValueError("need at least one prompt")
    block = model.config.block_size
    stop = torch.tensor(list(stop_ids), dtype=torch.long)
    device = next(model.parameters()).device
    model.eval()
    out: list[list[int]] = []
    for i in range(0, len(prompts), batch_size):
        chunk = list(prompts[i:i + batch_size])
        if any(p.ndim != 1 or not len(p) for p in chunk):
            raise ValueError("each prompt must be a non-empty 1-D tensor of ids")
        longest = max(len(p) for p in chunk)
        if longest >= block:
            raise ValueError(f"a prompt has {longest} tokens: no room left in block_size={block}")
        steps = min(max_new_tokens, block - longest)
        width = longest + steps
        ids = torch.zeros(len(chunk), width, dtype=torch.long)
        start = torch.tensor([longest - len(p) for p in chunk])
        for r, p in enumerate(chunk):
            ids[r, start[r]:longest] = p
        cols = torch.arange(width)[None]  # (1, W)
        real = cols >= start[:, None]  # (B, W)
        pos = (cols - start[:, None]).clamp(min=0)  # (B, W)
        done = torch.zeros(len(chunk), dtype=torch.bool)
        n = longest
        for _ in range(steps):
            logits, _ = model(ids[:, :n].to(device), position_ids=pos[:, :n].to(device),
                              doc_ids=real[:, :n].long().to(device))
            nxt = logits[:, -1].argmax(-1).cpu()  # (B,)
            ids[:, n] = nxt
            done |= torch.isin(nxt, stop)
            n += 1
            if bool(done.all()):
                break
        for r in range(len(chunk)):
            new = ids[r, longest:n].tolist()
            cut = next((j for j, t in enumerate(new) if t in set(stop.tolist())), len(new))
            out.append(new[:cut])
    return out


def _eos_id(tokenizer) -> int:
    return tokenizer.special_tokens[EOS]


def evaluate_chat(model: nn.Module, tokenizer, examples: Sequence[Example], *, system: str | None = None,
                  max_new_tokens: int = 32, show_progress: bool = False) -> tuple[dict[str, float], list[str]]:
    """Exact match per family (``instructions.score_by_family``) of the model's greedy chat replies,
    and the replies. The prompt is the chat template up to ``assistant:\\n``; a reply ends at ``<|eos|>``."""
    examples = _check_examples(examples)
    prompts = [encode_prompt(example_to_messages(e, system=system)[:-1], tokenizer) for e in examples]
    replies = _decode_in_chunks(model, prompts, [_eos_id(tokenizer)], max_new_tokens, show_progress, "chat eval")
    texts = [tokenizer.decode(r) for r in replies]
    return score_by_family(texts, examples), texts


def _qa_line(ex: Example, answer: bool) -> str:
    q = f"{ex.instruction} {ex.input}" if ex.input else ex.instruction
    return f"Q: {q} A:" + (f" {ex.output}\n" if answer else "")


def few_shot_prompt(example: Example, shots: Sequence[Example]) -> str:
    """The base model's prompt: each shot as a ``Q: ... A: ...`` line (the format of the pretraining
    corpus's question lines), then the question and ``A:``. The answer is the rest of that line."""
    return "".join(_qa_line(s, True) for s in shots) + _qa_line(example, False)


def _shots_for(example: Example, pool: Sequence[Example], k: int, tokenizer, room: int) -> list[Example]:
    same = [s for s in pool if s.family == example.family][:k]
    while same and len(tokenizer.encode(few_shot_prompt(example, same), allowed_special="none")) > room:
        same = same[1:]  # drop shots until the prompt leaves room for the answer
    return same


def evaluate_few_shot(model: nn.Module, tokenizer, examples: Sequence[Example], shots_pool: Sequence[Example], *,
                      k: int = 3, max_new_tokens: int = 24,
                      show_progress: bool = False) -> tuple[dict[str, float], list[str]]:
    """Exact match per family of a *base* model prompted with ``k`` solved examples of the same family
    (taken in order from ``shots_pool``, e.g. the train split; fewer if the block is too short), and the
    answers. The answer is what the model writes after ``A:`` up to the end of the line."""
    examples = _check_examples(examples)
    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        raise ValueError(f"k must be an int >= 0, got {k!r}")
    room = model.config.block_size - max_new_tokens
    prompts = [torch.tensor(tokenizer.encode(few_shot_prompt(e, _shots_for(e, shots_pool, k, tokenizer, room)),
                                             allowed_special="none"), dtype=torch.long) for e in examples]
    newline = [i for i in range(tokenizer.vocab_size) if "\n" in tokenizer.decode([i])]
    replies = _decode_in_chunks(model, prompts, newline + [_eos_id(tokenizer)], max_new_tokens, show_progress,
                                "few-shot eval")
    texts = [tokenizer.decode(r).strip() for r in replies]
    return score_by_family(texts, examples), texts


def _decode_in_chunks(model, prompts, stop_ids, max_new_tokens, show_progress, desc, chunk: int = 64):
    out: list[list[int]] = []
    for i in progress(range(0, len(prompts), chunk), desc=desc, disable=not show_progress):
        out += greedy_replies(model, prompts[i:i + chunk], stop_ids=stop_ids, max_new_tokens=max_new_tokens,
                              batch_size=chunk)
    return out


# ----------------------------------------------------------------- forgetting


def pretraining_tokens(tokenizer, split: str = "validation") -> Tensor:
    """The course corpus's ``split`` as one 1-D int64 tensor, documents joined by ``<|eos|>``: the text the
    base model was pretrained (``"train"``) and validated (``"validation"``) on, exactly as chapter 8 encoded it."""
    from llmcourse.recipes.base import token_stream

    return token_stream(tokenizer, split)


def pretraining_perplexity(model: nn.Module, tokens: Tensor, *, block_size: int = 128,
                           max_batches: int | None = None) -> float:
    """Perplexity of ``model`` on 1-D pretraining ``tokens`` (non-overlapping windows, as ``trainer.evaluate``)."""
    from llmcourse.trainer import evaluate

    return evaluate(model, tokens, block_size=block_size, batch_size=32, max_batches=max_batches).perplexity
