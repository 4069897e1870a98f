"""Few-shot prompting of a chat model: demonstrations as earlier turns of the conversation.

Chapter 9's ``sft.few_shot_prompt`` writes demonstrations as ``Q: ... A: ...`` lines, the format
a *base* model saw in pretraining. A chat model (SFT) was trained on the chat template instead,
so its demonstrations go in as earlier user/assistant turns (the "multi-turn" form of few-shot
prompting used with chat APIs) and the question is the last user turn. Either way no weight
changes: the demonstrations are only input text (Brown et al. 2020).

Shapes: a prompt is a 1-D int64 tensor of token ids (T,), T <= the model's block size.

Taught in: book/13-using-llms
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from llmcourse.chat import encode_prompt, example_to_messages
from llmcourse.instructions import Example, score_by_family
from llmcourse.sft import _check_examples, _decode_in_chunks, _eos_id


def chat_few_shot_messages(example: Example, shots: Sequence[Example], *, system: str | None = None) -> list[dict]:
    """``[system?, user, assistant, ..., user]``: each shot as a solved user/assistant exchange, then the
    question as the last user turn (its answer left out)."""
    _check_examples([example, *shots])
    turns = [m for s in shots for m in example_to_messages(s)]
    return ([{"role": "system", "content": system}] if system is not None else []) + turns + \
        example_to_messages(example)[:-1]


def chat_few_shot_ids(example: Example, shots: Sequence[Example], tokenizer, room: int) -> tuple[torch.Tensor, int]:
    """Ids (T,) of the chat few-shot prompt with as many of ``shots`` as fit in ``room`` tokens (the earliest
    are dropped first, as ``sft.evaluate_few_shot`` does), and the number of shots kept."""
    shots = list(shots)
    while True:
        ids = encode_prompt(chat_few_shot_messages(example, shots), tokenizer)
        if len(ids) <= room or not shots:
            return ids, len(shots)
        shots = shots[1:]


def evaluate_chat_few_shot(model: nn.Module, tokenizer, examples: Sequence[Example], shots_pool: Sequence[Example], *,
                           k: int = 3, max_new_tokens: int = 32,
                           show_progress: bool = False) -> tuple[dict[str, float], list[str]]:
    """Exact match per family (``instructions.score_by_family``) of a chat model's greedy replies when
    the first ``k`` examples of the same family in ``shots_pool`` come first as solved turns, and the
    replies. ``k=0`` is ``sft.evaluate_chat`` (zero-shot). A reply ends at ``<|eos|>``."""
    examples = _check_examples(examples)
    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        raise ValueError(f"k must be an int >= 0, got {k!r}")
    room = model.config.block_size - max_new_tokens
    prompts = []
    for e in examples:
        shots = [s for s in shots_pool if s.family == e.family and s is not e][:k]
        ids, _ = chat_few_shot_ids(e, shots, tokenizer, room)
        if len(ids) > room:
            raise ValueError(f"the question alone takes {len(ids)} tokens, more than the {room} left for it")
        prompts.append(ids)
    replies = _decode_in_chunks(model, prompts, [_eos_id(tokenizer)], max_new_tokens, show_progress,
                                "chat few-shot eval")
    texts = [tokenizer.decode(r) for r in replies]
    return score_by_family(texts, examples), texts
