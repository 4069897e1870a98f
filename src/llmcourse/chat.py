"""The chat format: messages, the chat template, training only on the reply, and packing.

A conversation is a list of messages ``{"role": "system" | "user" | "assistant", "content": str}``
(a system message, if any, comes first). ``CHAT_TEMPLATE`` is the Jinja template attached to the
course's Hugging Face tokenizer (``pretrained.load_tokenizer(kind="hf")``); :func:`render` is the
same thing in plain Python, and the tests check that both give the same text. The vocabulary stays
the chapter-7 one (2,048 ids), so the base model's embeddings are used unchanged: role headers are
plain text, and only two special tokens are used::

    <|bos|>system:\\n{system}\\nuser:\\n{user}\\nassistant:\\n{reply}<|eos|>user:\\n{user}\\nassistant:\\n

Contents are stripped of outer whitespace (the template's ``| trim``). Each reply ends with
``<|eos|>``, the token that ended every document in pretraining, so generation stops there.

Reasoning. An assistant message may carry its reasoning under ``"reasoning_content"`` (the name
``transformers`` 5 standardises; ``"thinking"`` and ``"reasoning"`` are read too). It is written
inside the reply, before the answer, as plain text (no new tokens)::

    assistant:\\n<think>\\n{reasoning}\\n</think>\\n{answer}<|eos|>

so writing that text directly in ``content`` renders the same. Reasoning is kept in every turn.

Labels. :func:`build_labels` tokenises segment by segment and marks only the assistant's tokens (its
reasoning, answer and closing ``<|eos|>``, not its ``assistant:`` header): everything else gets
-100, the index ``cross_entropy`` ignores. The cut is exact because a header ends in ``\\n`` and
trimmed content starts with a non-space character, and the pre-tokenizer always ends a piece there.

Packing. :func:`pack` puts several examples in one row of ``block_size`` tokens, with ``doc_ids``
and ``position_ids`` that restart per example, so ``GPT.forward(idx, doc_ids=..., position_ids=...)``
attends only within an example (a block-diagonal causal mask) and gives the logits each
example would get alone.

    >>> msgs = [{"role": "user", "content": "Add the two numbers.\\n2 + 3"}, {"role": "assistant", "content": "5"}]
    >>> render(msgs)
    '<|bos|>user:\\nAdd the two numbers.\\n2 + 3\\nassistant:\\n5<|eos|>'

Taught in: book/09-sft
"""

from __future__ import annotations

import html

import torch
from torch import Tensor

from llmcourse.instructions import THINK_CLOSE, THINK_OPEN, Example

ROLES = ("system", "user", "assistant")
BOS, EOS, PAD = "<|bos|>", "<|eos|>", "<|pad|>"
IGNORE_INDEX = -100  # label of a token the loss skips
REASONING_KEYS = ("reasoning_content", "thinking", "reasoning")  # transformers' aliases, first wins
DEFAULT_SYSTEM = "You are a helpful assistant."

CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] not in ['system', 'user', 'assistant'] -%}"
    "{{- raise_exception('role must be system, user or assistant, got ' + message['role']) -}}"
    "{%- endif -%}"
    "{%- if loop.first -%}{{- '<|bos|>' -}}{%- endif -%}"
    "{{- message['role'] + ':\\n' -}}"
    "{%- if message['role'] == 'assistant' -%}"
    "{%- generation -%}"
    "{%- if message['reasoning_content'] is defined -%}"
    "{{- '<think>\\n' + message['reasoning_content'] | trim + '\\n</think>\\n' -}}"
    "{%- endif -%}"
    "{{- message['content'] | trim + '<|eos|>' -}}"
    "{%- endgeneration -%}"
    "{%- else -%}"
    "{{- message['content'] | trim + '\\n' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- 'assistant:\\n' -}}{%- endif -%}"
)


def _reasoning(message: dict) -> str | None:
    return next((message[k] for k in REASONING_KEYS if message.get(k) is not None), None)


def check_messages(messages) -> list[dict]:
    """Validate a conversation; returns it as a list. Raises ValueError/TypeError with what is wrong."""
    if not isinstance(messages, (list, tuple)) or not messages:
        raise ValueError(f"messages must be a non-empty list of dicts, got {messages!r}")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise TypeError(f"message {i} must be a dict with 'role' and 'content', got {m!r}")
        if m["role"] not in ROLES:
            raise ValueError(f"message {i}: role must be one of {ROLES}, got {m['role']!r}")
        if m["role"] == "system" and i:
            raise ValueError(f"message {i}: a system message may only come first")
        texts = {"content": m["content"]}
        if m["role"] == "assistant" and _reasoning(m) is not None:
            texts["reasoning"] = _reasoning(m)
        for name, text in texts.items():
            if not isinstance(text, str) or not text.strip():
                raise ValueError(f"message {i}: {name} must be a non-empty str, got {text!r}")
            if any(t in text for t in (BOS, EOS, PAD)):
                raise ValueError(f"message {i}: {name} holds special-token text ({BOS}, {EOS} or {PAD}), "
                                 f"which would be read as a control token: {text!r}")
    return list(messages)


def _reply(message: dict) -> str:
    """The assistant's trained text, before ``<|eos|>``: optional think block, then the answer."""
    thought = _reasoning(message)
    think = "" if thought is None else f"{THINK_OPEN}\n{thought.strip()}\n{THINK_CLOSE}\n"
    return think + message["content"].strip()


def render(messages, add_generation_prompt: bool = False) -> str:
    """The conversation as text, exactly as ``tokenizer.apply_chat_template(messages, tokenize=False,
    add_generation_prompt=...)`` renders ``CHAT_TEMPLATE``. The prompt ends with ``assistant:\\n``."""
    out = []
    for i, m in enumerate(check_messages(messages)):
        out.append((BOS if i == 0 else "") + m["role"] + ":\n")
        out.append(_reply(m) + EOS if m["role"] == "assistant" else m["content"].strip() + "\n")
    return "".join(out) + ("assistant:\n" if add_generation_prompt else "")


def example_to_messages(example: Example, system: str | None = None, reasoning: bool = False) -> list[dict]:
    """``[system?, user, assistant]`` for an ``instructions.Example``; the user turn is the instruction,
    then the input on the next line. ``reasoning=True`` adds the explanation as ``reasoning_content``
    (ValueError for an example without one)."""
    if not isinstance(example, Example):
        raise TypeError(f"example must be an instructions.Example, got {type(example).__name__}")
    user = example.instruction + (f"\n{example.input}" if example.input else "")
    reply = {"role": "assistant", "content": example.output}
    if reasoning:
        if not example.explanation:
            raise ValueError(f"reasoning=True needs an explanation, and this {example.family} example has none")
        reply["reasoning_content"] = example.explanation
    return ([{"role": "system", "content": system}] if system is not None else []) + [
        {"role": "user", "content": user}, reply]


# ----------------------------------------------------------------- tokens and labels


def _encode(tokenizer, text: str) -> list[int]:
    """Ids of ``text`` with special-token text read as control tokens, for either tokenizer kind."""
    if hasattr(tokenizer, "special_tokens") and hasattr(tokenizer, "merges"):  # llmcourse.bpe.BPETokenizer
        return tokenizer.encode(text, allowed_special="all")
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])  # transformers tokenizer


def _token_id(tokenizer, token: str) -> int:
    if hasattr(tokenizer, "special_tokens") and hasattr(tokenizer, "merges"):
        return tokenizer.special_tokens[token]
    return int(tokenizer.convert_tokens_to_ids(token))


def encode_prompt(messages, tokenizer) -> Tensor:
    """Ids (T,) of the conversation plus the generation prompt ``assistant:\\n``: what a model continues."""
    return torch.tensor(_encode(tokenizer, render(messages, add_generation_prompt=True)), dtype=torch.long)


def build_labels(messages, tokenizer) -> tuple[Tensor, Tensor]:
    """``(input_ids (T,), labels (T,))``, both int64: the ids of ``render(messages)``, and labels equal to
    them on every assistant token (reasoning, answer, closing ``<|eos|>``) and -100 elsewhere.

    Labels are aligned with the ids (``labels[t]`` is the label of token t, as in ``transformers``);
    :func:`next_token_targets` shifts them for ``GPT.forward``. Works with the course ``BPETokenizer``
    or a ``transformers`` tokenizer. Needs at least one assistant message.
    """
    messages = check_messages(messages)
    if not any(m["role"] == "assistant" for m in messages):
        raise ValueError("no assistant message: nothing to train on (use encode_prompt for a prompt)")
    ids: list[int] = []
    labels: list[int] = []
    context = BOS
    for m in messages:
        context += m["role"] + ":\n"
        if m["role"] != "assistant":
            context += m["content"].strip() + "\n"
            continue
        prefix = _encode(tokenizer, context)
        reply = _encode(tokenizer, _reply(m)) + [_token_id(tokenizer, EOS)]
        ids += prefix + reply
        labels += [IGNORE_INDEX] * len(prefix) + reply
        context = ""
    if context:
        tail = _encode(tokenizer, context)
        ids += tail
        labels += [IGNORE_INDEX] * len(tail)
    return torch.tensor(ids, dtype=torch.long), torch.tensor(labels, dtype=torch.long)


def next_token_targets(labels: Tensor, doc_ids: Tensor | None = None) -> Tensor:
    """Targets for ``GPT.forward(idx, targets)``: ``targets[..., t] = labels[..., t + 1]``, -100 at the end
    and, with ``doc_ids`` (same shape), wherever t + 1 starts another example. labels (..., T) -> (..., T)."""
    if not isinstance(labels, Tensor) or labels.dtype != torch.long or labels.ndim < 1:
        raise TypeError("labels must be an int64 tensor (..., T)")
    targets = torch.full_like(labels, IGNORE_INDEX)
    targets[..., :-1] = labels[..., 1:]
    if doc_ids is not None:
        if doc_ids.shape != labels.shape:
            raise ValueError(f"doc_ids {tuple(doc_ids.shape)} must have the shape of labels {tuple(labels.shape)}")
        targets[..., :-1] = targets[..., :-1].masked_fill(doc_ids[..., 1:] != doc_ids[..., :-1], IGNORE_INDEX)
    return targets


def mask_table(input_ids: Tensor, labels: Tensor, tokenizer, *, as_html: bool = False) -> str:
    """Token by token, what the loss sees: one line ``position  id  token  TRAIN|-`` per token, or with
    ``as_html=True`` the tokens inline, trained ones highlighted (for the book: ``IPython.display.HTML``)."""
    if input_ids.shape != labels.shape or input_ids.ndim != 1:
        raise ValueError(f"input_ids and labels must both be (T,), got {tuple(input_ids.shape)} "
                         f"and {tuple(labels.shape)}")
    pieces = [tokenizer.decode([int(i)]) for i in input_ids]
    trained = (labels != IGNORE_INDEX).tolist()
    if as_html:
        spans = [f'<span style="background:{"#b7e4c7" if t else "#eeeeee"};border:1px solid #fff;'
                 f'font-family:monospace;white-space:pre">{html.escape(repr(p)[1:-1])}</span>'
                 for p, t in zip(pieces, trained)]
        return "<div style='line-height:1.9'>" + "".join(spans) + "</div>"
    rows = [f"{pos:4d}  {int(i):5d}  {repr(p):16s} {'TRAIN' if t else '-'}"
            for pos, (i, p, t) in enumerate(zip(input_ids, pieces, trained))]
    return "\n".join([" pos     id  token            loss"] + rows)


# ----------------------------------------------------------------- packing


def _check_items(items) -> list[tuple[Tensor, Tensor]]:
    items = list(items)
    if not items:
        raise ValueError("need at least one (input_ids, labels) pair")
    for k, (x, y) in enumerate(items):
        if not isinstance(x, Tensor) or not isinstance(y, Tensor) or x.dtype != torch.long or y.dtype != torch.long:
            raise TypeError(f"item {k}: input_ids and labels must be int64 tensors")
        if x.ndim != 1 or x.shape != y.shape or not len(x):
            raise ValueError(f"item {k}: input_ids and labels must be non-empty (T,) tensors of one shape, "
                             f"got {tuple(x.shape)} and {tuple(y.shape)}")
    return items


def pack(items, block_size: int, *, pad_id: int = 0) -> dict[str, Tensor]:
    """Pack ``(input_ids (T_i,), labels (T_i,))`` pairs into rows of ``block_size`` tokens (first-fit
    decreasing: longest first, each into the first row with room; an example is never split).

    Returns int64 tensors of shape (N, block_size): ``input_ids`` (``pad_id`` in the tail), ``labels``
    (-100 in the tail), ``position_ids`` (0, 1, ... restarting at each example), ``doc_ids`` (the item's
    index in ``items``; -1 on padding). Feed ``GPT.forward(input_ids, doc_ids=..., position_ids=...)``.
    """
    items = _check_items(items)
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"block_size must be an int >= 1, got {block_size!r}")
    too_long = [k for k, (x, _) in enumerate(items) if len(x) > block_size]
    if too_long:
        raise ValueError(f"{len(too_long)} items are longer than block_size={block_size} (first: item "
                         f"{too_long[0]}, {len(items[too_long[0]][0])} tokens); truncate or drop them first")
    rows: list[list[int]] = []  # item indices per row
    room: list[int] = []
    for k in sorted(range(len(items)), key=lambda k: -len(items[k][0])):
        n = len(items[k][0])
        r = next((r for r, free in enumerate(room) if free >= n), None)
        if r is None:
            rows.append([])
            room.append(block_size)
            r = len(rows) - 1
        rows[r].append(k)
        room[r] -= n
    out = {"input_ids": torch.full((len(rows), block_size), pad_id, dtype=torch.long),
           "labels": torch.full((len(rows), block_size), IGNORE_INDEX, dtype=torch.long),
           "position_ids": torch.zeros((len(rows), block_size), dtype=torch.long),
           "doc_ids": torch.full((len(rows), block_size), -1, dtype=torch.long)}
    for r, ks in enumerate(rows):
        start = 0
        for k in ks:
            x, y = items[k]
            end = start + len(x)
            out["input_ids"][r, start:end], out["labels"][r, start:end] = x, y
            out["position_ids"][r, start:end] = torch.arange(len(x))
            out["doc_ids"][r, start:end] = k
            start = end
        out["position_ids"][r, start:] = torch.arange(block_size - start)
    return out


def pad_batch(items, block_size: int, *, pad_id: int = 0) -> dict[str, Tensor]:
    """No packing: one item per row, right-padded to ``block_size`` (same keys as :func:`pack`, rows in order)."""
    rows = [pack([item], block_size, pad_id=pad_id) for item in _check_items(items)]
    for k, row in enumerate(rows):
        row["doc_ids"] = row["doc_ids"].masked_fill(row["doc_ids"] == 0, k)
    return {key: torch.cat([row[key] for row in rows]) for key in rows[0]}


def packing_savings(items, block_size: int) -> dict[str, float]:
    """What packing saves on ``items``: rows and the fraction of pad tokens, padded one per row vs packed.

    Keys: ``examples``, ``tokens`` (real), ``rows_padded``, ``pad_fraction_padded``, ``rows_packed``,
    ``pad_fraction_packed``, ``speedup`` (rows_padded / rows_packed: the forward passes saved).
    """
    items = _check_items(items)
    tokens = sum(len(x) for x, _ in items)
    rows = pack(items, block_size)["input_ids"].shape[0]
    return {"examples": len(items), "tokens": tokens, "rows_padded": len(items),
            "pad_fraction_padded": 1 - tokens / (len(items) * block_size), "rows_packed": rows,
            "pad_fraction_packed": 1 - tokens / (rows * block_size), "speedup": len(items) / rows}


# ----------------------------------------------------------------- the HF tokenizer and replies


def chat_tokenizer(name: str = "base"):
    """The course's ``transformers`` tokenizer with ``CHAT_TEMPLATE`` attached (``load_tokenizer("hf")``)."""
    from llmcourse.pretrained import load_tokenizer

    return load_tokenizer("hf", name)


@torch.no_grad()
def reply(model, tokenizer, messages, max_new_tokens: int = 48) -> str:
    """The model's greedy reply to ``messages`` (a course ``GPT`` and tokenizer), up to ``<|eos|>``."""
    idx = encode_prompt(messages, tokenizer)[None].to(next(model.parameters()).device)
    if idx.shape[1] >= model.config.block_size:
        raise ValueError(f"the prompt has {idx.shape[1]} tokens: no room left in block_size={model.config.block_size}")
    max_new_tokens = min(max_new_tokens, model.config.block_size - idx.shape[1])
    from llmcourse.decoding import generate

    out = generate(model, idx, max_new_tokens, strategy="greedy", eos_id=_token_id(tokenizer, EOS))[0, idx.shape[1]:]
    eos = _token_id(tokenizer, EOS)
    ids = out.tolist()
    return tokenizer.decode(ids[:ids.index(eos)] if eos in ids else ids)
