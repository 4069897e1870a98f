"""References and planted mistakes for the chapter 9 checks (:mod:`autograder.checks.ch09_sft`).

* :func:`conversations` - chats drawn from the course secret: instruction examples
  (``llmcourse.instructions.fresh_examples``) as one or several user/assistant turns, with and
  without a system message, some with reasoning, some with whitespace around the contents, some
  ending with a user turn;
* :func:`hf_render` - ``apply_chat_template(..., tokenize=False)`` of the course's ``transformers``
  tokenizer (``llmcourse.chat.chat_tokenizer``), which holds ``llmcourse.chat.CHAT_TEMPLATE``;
* :func:`reference_labels` - ``llmcourse.chat.build_labels`` with the course tokenizer;
* :data:`RENDER_MISTAKES`, :func:`label_mistakes` - what the usual mistakes give, to name them.
"""

from __future__ import annotations

import functools
import os

import torch

from autograder.secret import hidden_rng, hidden_seed

BOS, EOS = "<|bos|>", "<|eos|>"
SYSTEMS = ("You are a helpful assistant.", "Answer briefly.", "You are a careful tutor. Give only the answer.",
           "Reply in as few words as you can.")
PADDING = ("", " ", "\n", "  ", " \n", "\t", "\n\n ")


@functools.lru_cache(maxsize=1)
def hf_tokenizer():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from llmcourse.chat import chat_tokenizer

    return chat_tokenizer()


@functools.lru_cache(maxsize=1)
def course_tokenizer():
    from llmcourse.pretrained import load_tokenizer

    return load_tokenizer()


def hf_render(messages, add_generation_prompt: bool) -> str:
    """The text transformers renders from the course's chat template (Jinja), not tokenised."""
    return hf_tokenizer().apply_chat_template([dict(m) for m in messages], tokenize=False,
                                              add_generation_prompt=add_generation_prompt)


def reference_labels(messages) -> tuple[torch.Tensor, torch.Tensor]:
    from llmcourse.chat import build_labels

    return build_labels([dict(m) for m in messages], course_tokenizer())


def _pad(rng, text: str, on: bool) -> str:
    if not on:
        return text
    return str(rng.choice(PADDING[1:])) + text + str(rng.choice(PADDING))


def conversations(seed: int, label: str, *, ascii_only: bool = False) -> list[tuple[str, list[dict], bool]]:
    """(description, messages, add_generation_prompt) cases drawn from the course secret."""
    from llmcourse.chat import example_to_messages
    from llmcourse.instructions import fresh_examples

    rng = hidden_rng(seed, label)
    pool = fresh_examples(64, hidden_seed(seed, label) % 2**32)
    thinkers = fresh_examples(16, hidden_seed(seed + 1, label) % 2**32, families=("addition", "subtraction"))
    plans = [  # (system?, turns, reasoning on turns, padded?, ends with a user turn?, generation prompt?)
        (False, 1, False, False, False, False), (True, 1, False, False, False, False),
        (False, 1, False, False, True, True), (True, 1, False, False, True, True),
        (False, 3, False, False, False, False), (True, 2, False, False, False, False),
        (True, 3, False, False, True, True), (False, 2, False, False, True, False),
        (False, 1, True, False, False, False), (True, 2, True, False, False, False),
        (False, 2, False, True, False, False), (True, 2, True, True, True, True),
        (True, 1, False, True, False, True), (False, 4, False, False, False, False),
    ]
    cases = []
    for k, (system, turns, think, padded, open_end, prompt) in enumerate(plans):
        msgs = []
        if system:
            msgs.append({"role": "system", "content": _pad(rng, str(rng.choice(SYSTEMS)), padded)})
        for t in range(turns):
            src = thinkers if think and t % 2 == 0 else pool
            ex = src[int(rng.integers(len(src)))]
            user, reply = example_to_messages(ex, reasoning=think and t % 2 == 0)
            user["content"] = _pad(rng, user["content"], padded)
            reply["content"] = _pad(rng, reply["content"], padded)
            if "reasoning_content" in reply:
                reply["reasoning_content"] = _pad(rng, reply["reasoning_content"], padded)
            msgs += [user, reply]
        if open_end:
            msgs.append({"role": "user", "content": _pad(rng, pool[int(rng.integers(len(pool)))].instruction, padded)})
        if not ascii_only and k == len(plans) - 1:
            msgs[-2]["content"] += " \u00e9t\u00e9 \u4f60\u597d \U0001f600"  # text beyond ASCII
        what = (("a system message, " if system else "no system message, ") + f"{turns} turn" + "s" * (turns > 1)
                + (", reasoning" if think else "") + (", whitespace around the contents" if padded else "")
                + (", ending with a user turn" if open_end else "")
                + (", add_generation_prompt=True" if prompt else ""))
        cases.append((what, msgs, prompt))
    return cases


# ----------------------------------------------------------------- the usual mistakes


def _render(messages, add_generation_prompt: bool, *, eos=True, system=True, strip=True, prompt=None,
            default_system=False, think_newlines=True) -> str:
    def s(text):
        return text.strip() if strip else text

    out = BOS
    if default_system and messages[0]["role"] != "system":
        out += "system:\nYou are a helpful assistant.\n"
    for m in messages:
        if m["role"] == "system" and not system:
            continue
        out += m["role"] + ":\n"
        if m["role"] == "assistant":
            if m.get("reasoning_content") is not None:
                out += ("<think>\n" + s(m["reasoning_content"]) + "\n</think>\n") if think_newlines else \
                    ("<think>" + s(m["reasoning_content"]) + "</think>")
            out += s(m["content"]) + (EOS if eos else "\n")
        else:
            out += s(m["content"]) + "\n"
    gen = add_generation_prompt if prompt is None else prompt
    return out + ("assistant:\n" if gen else "")


RENDER_MISTAKES = (
    ("every assistant turn ends with <|eos|> (not a newline): it is what the model learns to stop with",
     lambda m, g: _render(m, g, eos=False)),
    ("the system message is missing: it is rendered first, as 'system:\\n' + content + '\\n'",
     lambda m, g: _render(m, g, system=False)),
    ("a system message was added to a conversation that has none: the template adds nothing",
     lambda m, g: _render(m, g, default_system=True)),
    ("'assistant:\\n' must end the text only when add_generation_prompt=True",
     lambda m, g: _render(m, g, prompt=not g)),
    ("the contents must be stripped of outer whitespace (the template's `| trim`: str.strip())",
     lambda m, g: _render(m, g, strip=False)),
    ("the reasoning goes between '<think>\\n' and '\\n</think>\\n', each on its own line",
     lambda m, g: _render(m, g, think_newlines=False)),
)


def label_mistakes(messages, ids: torch.Tensor, labels: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
    """(explanation, wrong labels) for the usual labelling mistakes on ``messages`` (same ids)."""
    tok = course_tokenizer()
    eos = tok.special_tokens[EOS]
    trained = labels != -100
    out = []
    # the header: the tokens of "assistant:\n" just before each trained run
    header = torch.zeros_like(trained)
    n_header = len(tok.encode("assistant:\n"))
    starts = [t for t in range(len(ids)) if trained[t] and (t == 0 or not trained[t - 1])]
    for t in starts:
        header[max(0, t - n_header):t] = True
    out.append(("the 'assistant:\\n' header is trained: only the reply after it (and its <|eos|>) is",
                torch.where(trained | header, ids, -100)))
    out.append(("every token is trained: the system and user turns (and the headers) must be -100",
                ids.clone()))
    out.append(("the closing <|eos|> of each reply is masked: train it, so the model learns to stop",
                torch.where(trained & (ids != eos), ids, -100)))
    out.append(("the labels are shifted by one: labels[t] is the label of token t itself, ids[t] (the shift to "
                "next-token targets happens later)", torch.cat([labels[1:], torch.tensor([-100])])))
    out.append(("the labels are shifted by one the other way: labels[t] must be ids[t]",
                torch.cat([torch.tensor([-100]), torch.where(trained, ids, -100)[:-1]])))
    inverted = torch.where(~trained, ids, -100)
    out.append(("the mask is inverted: the prompt is trained and the replies are -100", inverted))
    if len(starts) > 1:
        last = torch.where(trained & (torch.arange(len(ids)) >= starts[-1]), ids, -100)
        out.append(("only the last assistant turn is trained: every assistant reply must be", last))
        first_end = next(t for t in range(starts[0], len(ids)) if not trained[t])
        first = torch.where(trained & (torch.arange(len(ids)) < first_end), ids, -100)
        out.append(("only the first assistant turn is trained: every assistant reply must be", first))
    return out
