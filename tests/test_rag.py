"""llmcourse.rag: the token budget measured by the course tokenizer, the fact base's single answer passages,
and the batched answers and confidences against one-at-a-time decoding (``chat.reply``) and log-softmax."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from llmcourse import chat, rag
from llmcourse.pretrained import load_base, load_tokenizer

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer()


@pytest.fixture(scope="module")
def sft():
    return load_base(name="sft")[0]


@pytest.mark.parametrize("budget", [1, 5, 12, 30, 80])
def test_fit_passages_stays_within_the_budget_and_is_greedy(tok, budget):
    passages, _ = rag.make_fact_base(seed=budget)
    ranked = passages[:6] + ["a much longer passage " * 6]
    kept = rag.fit_passages(ranked, tok, budget)
    assert kept and len(tok.encode(" ".join(kept))) <= budget
    if kept[0] == ranked[0]:
        chosen = []
        for p in ranked:  # every passage left out would have overflowed the ones kept before it
            if p in kept:
                chosen.append(p)
            else:
                assert len(tok.encode(" ".join(chosen + [p]))) > budget
        assert chosen == kept
    else:  # not even the first fits: its longest whole-word prefix that does
        words = ranked[0].split()
        assert words[: len(kept[0].split())] == kept[0].split()
        longer = " ".join(words[: len(kept[0].split()) + 1])
        assert len(tok.encode(longer)) > budget


def test_grounded_prompt_fits_the_chat_template(tok):
    passages, facts = rag.make_fact_base()
    question = facts[0].question
    ranked = [passages[facts[0].passage]] + passages[:5]
    for max_tokens in (40, 60, 127):
        prompt, used = rag.grounded_prompt(question, ranked, tok, max_tokens, template=rag.chat_qa_template)
        assert len(tok.encode(prompt)) <= max_tokens
        assert prompt == chat.render([{"role": "user", "content": question + "\n" + " ".join(used)}],
                                     add_generation_prompt=True)
        assert used[0] == ranked[0]
    with pytest.raises(ValueError, match="no room"):
        rag.grounded_prompt(question, ranked, tok, 10, template=rag.chat_qa_template)
    with pytest.raises(ValueError, match="max_tokens"):
        rag.fit_passages(ranked, tok, 0)


def test_fact_base_has_one_answer_passage_per_question():
    passages, facts = rag.make_fact_base(seed=3)
    assert len(passages) == 22 * 12 // 2 and len(facts) == 2 * len(passages)
    owners = [re.findall(r"(\w+) has (\d) (\w+) (\w+)s\.", p) for p in passages]
    for f in facts:
        m = re.fullmatch(r"How many (\w+)s does (\w+) have\?|What color are (\w+)'s (\w+)s\?", f.question)
        name, thing = (m.group(2), m.group(1)) if m.group(1) else (m.group(3), m.group(4))
        holders = [i for i, o in enumerate(owners) if any(n == name and t == thing for n, _, _, t in o)]
        assert holders == [f.passage]
        (n, count, color, t), = [o for o in owners[f.passage] if o[0] == name]
        assert f.answer == (count if m.group(1) else color)
    assert rag.make_fact_base(seed=3) == (passages, facts) and rag.make_fact_base(seed=4)[0] != passages


def test_answers_match_one_at_a_time_decoding(sft, tok):
    passages, facts = rag.make_fact_base()
    questions = [f.question for f in facts[:6]]
    contexts = [None, None, None] + [passages[f.passage] for f in facts[3:6]]
    got = rag.answer(sft, tok, questions, contexts)
    for q, c, a in zip(questions, contexts, got):
        user = q + (f"\n{c}" if c else "")
        assert a == chat.reply(sft, tok, [{"role": "user", "content": user}], max_new_tokens=8)
    with pytest.raises(ValueError, match="one context per question"):
        rag.answer(sft, tok, questions, contexts[:2])


def test_answer_confidence_is_the_geometric_mean_token_probability(sft, tok):
    q, c, a = "How many cups does Ben have?", "Ada has 3 red boxes. Ben has 5 blue cups.", "5"
    got = rag.answer_confidence(sft, tok, [q, q], [c, None], [a, "blue"])
    for (ctx, ans), value in zip([(c, a), (None, "blue")], got):
        prompt = chat.encode_prompt([{"role": "user", "content": q + (f"\n{ctx}" if ctx else "")}], tok).tolist()
        reply = tok.encode(ans, allowed_special="none") + [tok.special_tokens["<|eos|>"]]
        ids = torch.tensor([prompt + reply])
        with torch.no_grad():
            logp = torch.log_softmax(sft(ids)[0][0].double(), -1)
        want = np.exp(np.mean([float(logp[len(prompt) + i - 1, t]) for i, t in enumerate(reply)]))
        assert value == pytest.approx(want, rel=1e-4)
    assert ((0 < got) & (got <= 1)).all()
