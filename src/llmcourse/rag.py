"""Retrieval-augmented generation with the course model: a grounded prompt that fits a token budget,
and open- versus closed-book answers.

RAG (Lewis et al. 2020, "Retrieval-augmented generation for knowledge-intensive NLP tasks") puts
passages found by a retriever (``llmcourse.retrieval``) into the prompt, so the model answers from
text it can read instead of from what its weights remember. Closed-book QA (Roberts, Raffel &
Shazeer 2020) is the same question with no context at all.

* :func:`fit_passages` keeps the best-ranked passages that fit a token budget, measured with the
  model's own tokenizer (the only count that matters for a context window);
* :func:`grounded_prompt` renders a question and the passages that fit with a template, so that
  the whole prompt stays within ``max_tokens``; :func:`chat_qa_template` is the template the
  chapter-9 SFT model was trained on (the question, then the context on the next line);
* :func:`make_fact_base` builds a small world of facts the model has never seen (who owns how
  many things of which colour), written like the stories of the pretraining corpus, with questions
  whose answers are in exactly one passage;
* :func:`answer` decodes greedy answers with and without context, and :func:`answer_confidence`
  gives the model's own probability for each answer (a confident wrong answer is a hallucination).

Taught in: book/13-using-llms
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from llmcourse.chat import encode_prompt, example_to_messages, render
from llmcourse.corpus import COLORS, NAMES, THINGS
from llmcourse.instructions import Example
from llmcourse.preference import sequence_logprobs
from llmcourse.sft import evaluate_chat


def n_tokens(tokenizer, text: str) -> int:
    """Tokens of ``text`` for the course tokenizer, special-token text read as control tokens (as in chat)."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    return len(tokenizer.encode(text, allowed_special="all"))


def fit_passages(passages: Sequence[str], tokenizer, max_tokens: int, *, sep: str = " ") -> list[str]:
    """The passages, in rank order, that fit in ``max_tokens`` tokens once joined with ``sep``.

    Greedy: a passage that would overflow is skipped and later, shorter ones are still tried. If not
    even the first passage fits, its longest prefix of whole words that fits is kept, so a question
    never goes without context while there is room for one word. ``max_tokens < 1`` is an error.
    """
    if isinstance(passages, str) or not all(isinstance(p, str) for p in passages):
        raise TypeError("passages must be a sequence of str")
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise ValueError(f"max_tokens must be an int >= 1, got {max_tokens!r}")
    kept: list[str] = []
    for p in passages:
        if n_tokens(tokenizer, sep.join(kept + [p])) <= max_tokens:
            kept.append(p)
    if not kept and passages:
        words = passages[0].split()
        while words and n_tokens(tokenizer, " ".join(words)) > max_tokens:
            words.pop()
        kept = [" ".join(words)] if words else []
    return kept


def default_template(question: str, context: str | None) -> str:
    """``"Context: ...\\nQuestion: ...\\nAnswer:"`` (no context line when ``context`` is None)."""
    return (f"Context: {context}\n" if context else "") + f"Question: {question}\nAnswer:"


def chat_qa_template(question: str, context: str | None) -> str:
    """The chat prompt of an ``instructions`` ``qa`` example: the user turn is the question, then the
    context (the story) on the next line, then ``assistant:\\n``; what the SFT model was trained on."""
    return render(example_to_messages(Example("qa", question, context, "?"))[:-1], add_generation_prompt=True)


def grounded_prompt(question: str, passages: Sequence[str], tokenizer, max_tokens: int, *,
                    template: Callable[[str, str | None], str] = default_template,
                    sep: str = " ") -> tuple[str, list[str]]:
    """``(prompt, used)``: ``template(question, context)`` with as many of ``passages`` (best first) as keep
    the whole prompt within ``max_tokens`` tokens; ``used`` are the passages in the context.

    ValueError if the template and the question alone already take ``max_tokens`` tokens.
    """
    if not isinstance(question, str) or not question.strip():
        raise ValueError(f"question must be a non-empty str, got {question!r}")
    bare = n_tokens(tokenizer, template(question, None))
    frame = n_tokens(tokenizer, template(question, "x")) - n_tokens(tokenizer, "x")  # template with a context slot
    room = max_tokens - max(bare, frame)
    if room < 1:
        raise ValueError(f"the prompt without context takes {max(bare, frame)} tokens: no room in max_tokens={max_tokens}")
    used = fit_passages(passages, tokenizer, room, sep=sep)
    while used and n_tokens(tokenizer, template(question, sep.join(used))) > max_tokens:
        used = used[:-1]  # tokens merged across the join: drop the last passage (rare)
    return template(question, sep.join(used) if used else None), used


@dataclass(frozen=True)
class Fact:
    """One question about the fact base: ``passage`` is the index of the one passage that answers it."""

    question: str
    answer: str
    passage: int


def make_fact_base(seed: int = 0) -> tuple[list[str], list[Fact]]:
    """``(passages, facts)``: every (name, thing) pair of the corpus vocabulary (22 x 12) gets a random count (2-9)
    and colour, and pairs with different names share a passage, two to a passage as in the corpus's
    stories (``"Ada has 3 red boxes. Ben has 5 blue cups."``, two different colours). Two questions per
    passage, the two kinds the corpus asks about a story: the first person's colour (``"What color are
    Ada's boxes?"``) and the second person's count (``"How many cups does Ben have?"``). A (name, thing)
    pair occurs in one passage only, so each question has one answer passage."""
    rng = np.random.default_rng(seed)
    names = [NAMES[i] for i in rng.permutation(len(NAMES))]
    pairs = [(n, THINGS[t]) for n in names for t in rng.permutation(len(THINGS))]  # grouped by name
    half = len(pairs) // 2  # > len(THINGS), so pairs m and m + half always belong to different people
    passages: list[str] = []
    facts: list[Fact] = []
    for m in rng.permutation(half):
        i, j = int(m), int(m) + half
        (a, ta), (b, tb) = pairs[i], pairs[j]
        (na, nb), (ca, cb) = rng.integers(2, 10, size=2), rng.choice(COLORS, 2, replace=False)
        facts += [Fact(f"What color are {a}'s {ta}s?", str(ca), len(passages)),
                  Fact(f"How many {tb}s does {b} have?", str(nb), len(passages))]
        passages.append(f"{a} has {na} {ca} {ta}s. {b} has {nb} {cb} {tb}s.")
    return passages, facts


def answer(model, tokenizer, questions: Sequence[str], contexts: Sequence[str | None] | None = None, *,
           max_new_tokens: int = 8, show_progress: bool = False) -> list[str]:
    """The SFT model's greedy answers (chat format, ``chat_qa_template``), with ``contexts[i]`` after
    question i, or closed-book when ``contexts`` is None (or an entry is None)."""
    if isinstance(questions, str) or not questions:
        raise ValueError("questions must be a non-empty sequence of str")
    contexts = [None] * len(questions) if contexts is None else list(contexts)
    if len(contexts) != len(questions):
        raise ValueError(f"need one context per question, got {len(contexts)} for {len(questions)}")
    examples = [Example("qa", q, c, "?") for q, c in zip(questions, contexts)]
    return evaluate_chat(model, tokenizer, examples, max_new_tokens=max_new_tokens, show_progress=show_progress)[1]


@torch.no_grad()
def answer_confidence(model, tokenizer, questions: Sequence[str], contexts: Sequence[str | None],
                      answers: Sequence[str]) -> np.ndarray:
    """(Q,) the model's geometric-mean probability per token of ``answers[i]`` (and its ``<|eos|>``) after
    the prompt: exp(mean log p). 1 means the model was sure of every token."""
    if not (len(questions) == len(contexts) == len(answers)) or not questions:
        raise ValueError(f"need as many contexts and answers as questions (>= 1), got "
                         f"{len(questions)}, {len(contexts)}, {len(answers)}")
    eos = tokenizer.special_tokens["<|eos|>"]
    out = []
    for q, c, a in zip(questions, contexts, answers):
        prompt = encode_prompt(example_to_messages(Example("qa", q, c, "?"))[:-1], tokenizer)
        reply = torch.tensor(tokenizer.encode(a.strip(), allowed_special="none") + [eos], dtype=torch.long)
        ids = torch.cat([prompt, reply])[None, : model.config.block_size]  # (1, T)
        labels = ids.clone()
        labels[:, : len(prompt)] = -100
        logits, _ = model(ids)
        out.append(float(sequence_logprobs(logits, labels, average=True).exp()))
    return np.array(out)
