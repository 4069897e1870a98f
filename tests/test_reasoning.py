"""Multi-step arithmetic problems and their traces against an independent evaluation, answer extraction,
majority votes against a counting reference, and the shipped reasoning checkpoint and runs file."""

import json
import operator
import random
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from llmcourse import reasoning
from llmcourse.pretrained import load_tokenizer

torch.set_num_threads(1)
RUNS = Path(__file__).resolve().parents[1] / "book" / "13-using-llms" / "reasoning_runs.json"


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer()


def _fold(expression: str) -> list[int]:
    """Running totals by reading the text itself: '37 + 8 - 5' -> [45, 40]."""
    parts = expression.split()
    total, out = int(parts[0]), []
    for op, x in zip(parts[1::2], parts[2::2]):
        total = {"+": operator.add, "-": operator.sub}[op](total, int(x))
        out.append(total)
    return out


@pytest.mark.parametrize("kind", [reasoning.SHORT, reasoning.LONG])
def test_problems_stay_in_range_and_totals_never_go_negative(kind):
    for p in reasoning.make_problems(300, 5, kind=kind):
        assert kind["terms"][0] <= len(p.numbers) <= kind["terms"][1]
        assert kind["first"][0] <= p.numbers[0] <= kind["first"][1]
        assert all(kind["rest"][0] <= x <= kind["rest"][1] for x in p.numbers[1:])
        assert p.totals() == _fold(p.expression) and min(p.totals()) >= 0 and p.answer == _fold(p.expression)[-1]


def test_step_trace_matches_an_independent_reading_of_the_expression():
    for p in reasoning.make_problems(200, 7):
        steps = reasoning.step_trace(p).split(", ")
        totals, before = _fold(p.expression), [p.numbers[0]] + _fold(p.expression)[:-1]
        assert len(steps) == len(p.numbers) - 1
        for step, a, op, x, t in zip(steps, before, p.ops, p.numbers[1:], totals):
            assert step == f"{a}{op}{x}={t}"


def test_step_trace_known_answer():
    p = reasoning.Problem((37, 8, 5, 9), ("+", "-", "+"))
    assert (p.expression, p.answer, reasoning.step_trace(p)) == ("37 + 8 - 5 + 9", 49, "37+8=45, 45-5=40, 40+9=49")


def test_parse_inverts_expression():
    for p in reasoning.make_problems(50, 2) + reasoning.make_problems(50, 2, kind=reasoning.LONG):
        assert reasoning.Problem.parse(p.expression) == p
    for bad in ["", "1 +", "1 + x", "1 * 2", 12, "1 2 3"]:
        with pytest.raises(ValueError):
            reasoning.Problem.parse(bad)


def test_make_problems_is_seeded_distinct_and_respects_exclude():
    a, b = reasoning.make_problems(100, 3), reasoning.make_problems(100, 3)
    assert a == b and a != reasoning.make_problems(100, 4)
    assert len({p.expression for p in a}) == 100
    held_out = reasoning.make_problems(100, 3, exclude={p.expression for p in a[:50]})
    assert not {p.expression for p in held_out} & {p.expression for p in a[:50]}


@pytest.mark.parametrize("call, error", [
    (lambda: reasoning.make_problems(0, 1), ValueError), (lambda: reasoning.make_problems(5, -1), ValueError),
    (lambda: reasoning.make_problems(5, 1, kind={"terms": (1, 2), "first": (1, 2), "rest": (1, 2)}), ValueError),
    (lambda: reasoning.make_problems(5, 1, kind={"terms": (3, 4)}), ValueError),
    (lambda: reasoning.make_problems(50, 1, kind={"terms": (2, 2), "first": (1, 2), "rest": (1, 1)}), RuntimeError),
    (lambda: reasoning.Problem((1, 2), ("*",)), ValueError), (lambda: reasoning.Problem((1, 2), ()), ValueError),
    (lambda: reasoning.Problem((1, -2), ("+",)), ValueError), (lambda: reasoning.step_trace("1 + 2"), TypeError),
    (lambda: reasoning.problem_messages(reasoning.Problem((1, 2), ("+",)), reply="essay"), ValueError),
    (lambda: reasoning.extract_answer(3), TypeError),
    (lambda: reasoning.self_consistency_curve([[1, 2]], [1], [3]), ValueError),
    (lambda: reasoning.self_consistency_curve([[1, 2], [1]], [1, 1], [1]), ValueError),
])
def test_bad_input_raises_a_clear_error(call, error):
    with pytest.raises(error):
        call()


@pytest.mark.parametrize("text, want", [
    ("<think>\n37+8=45, 45-5=40\n</think>\n40", 40), ("49", 49), (" 49 \n", 49), ("<think>\n37+8=45", None),
    ("forty", None), ("4 9", None), ("", None), ("<tool_call>{}</tool_call>\n<tool_response>7</tool_response>\n7", 7),
    ("-3", -3)])
def test_extract_answer_reads_the_final_integer_only(text, want):
    assert reasoning.extract_answer(text) == want


def _vote_reference(answers):
    counts = Counter(a for a in answers if a is not None)
    if not counts:
        return None
    best = max(counts.values())
    first = {a: i for i, a in reversed(list(enumerate(answers)))}
    return min((a for a in counts if counts[a] == best), key=first.get)


def test_majority_vote_matches_a_counting_reference_on_random_votes():
    rng = random.Random(0)
    for _ in range(500):
        answers = [rng.choice([None, 1, 2, 3, 4]) for _ in range(rng.randint(1, 9))]
        assert reasoning.majority_vote(answers) == _vote_reference(answers), answers
    assert reasoning.majority_vote([None, None]) is None and reasoning.majority_vote([5, 7, 7, 5]) == 5


def test_self_consistency_curve_limits_one_sample_and_all_samples():
    rng = np.random.default_rng(0)
    gold = list(range(40))
    samples = [[g if rng.random() < 0.45 else int(rng.integers(100, 104)) for _ in range(9)] for g in gold]
    curve = reasoning.self_consistency_curve(samples, gold, [1, 9], trials=400)
    assert curve[9] == np.mean([reasoning.majority_vote(s) == g for s, g in zip(samples, gold)])
    assert curve[1] == pytest.approx(np.mean([[a == g for a in s] for s, g in zip(samples, gold)]), abs=0.02)
    assert curve[9] > curve[1]  # right answers agree, wrong ones scatter: the vote helps


def test_encode_problems_trains_only_the_reply(tok):
    probs = reasoning.make_problems(3, 9)
    for kind in ("direct", "cot"):
        for p, (ids, labels) in zip(probs, reasoning.encode_problems(probs, tok, kind)):
            reply = tok.decode(ids[labels != -100].tolist())
            want = (f"<think>\n{reasoning.step_trace(p)}\n</think>\n" if kind == "cot" else "") + f"{p.answer}<|eos|>"
            assert reply == want
            assert tok.decode(ids.tolist()).startswith(f"<|bos|>user:\nCompute.\n{p.expression}\nassistant:\n")
    with pytest.raises(ValueError, match="reply kinds"):
        reasoning.encode_problems(probs, tok, "essay")
    with pytest.raises(ValueError, match="one reply kind each"):
        reasoning.encode_problems(probs, tok, ["cot"])


def test_sample_answers_shapes_and_greedy_is_deterministic(tok):
    from llmcourse.pretrained import load_base

    model, _ = load_base(name="sft")
    probs = reasoning.make_problems(2, 11)
    answers, texts = reasoning.sample_answers(model, tok, probs, 3, max_new_tokens=6, seed=0)
    assert len(answers) == len(texts) == 2 and all(len(a) == 3 for a in answers)
    assert answers == [[reasoning.extract_answer(t) for t in row] for row in texts]
    g1 = reasoning.sample_answers(model, tok, probs, 2, max_new_tokens=6, greedy=True)[1]
    assert all(row[0] == row[1] for row in g1)


# ----------------------------------------------------------------- the shipped runs and checkpoint


@pytest.fixture(scope="module")
def runs():
    if not RUNS.is_file():
        pytest.skip("reasoning_runs.json not made yet: python -m llmcourse.recipes.reasoning")
    return json.loads(RUNS.read_text())


def test_held_out_problems_were_never_trained_on(runs):
    from llmcourse.recipes.reasoning import problems

    data = problems()
    train = {p.expression for p in data["train_short"] + data["train_long"]}
    assert not train & set(runs["test_short"]) and not train & set(runs["test_long"])
    assert [p.expression for p in data["test_short"]] == runs["test_short"]


def test_stored_self_consistency_curve_recomputes_from_stored_samples(runs):
    gold = [reasoning.Problem.parse(e).answer for e in runs["test_short"]]
    for run in runs["runs"].values():
        curve = reasoning.self_consistency_curve(run["short"]["samples"], gold, runs["ks"])
        assert {int(k): v for k, v in run["short"]["curve"].items()} == curve


def test_shipped_reasoning_checkpoint_matches_its_recipe_and_the_runs(runs):
    from llmcourse.pretrained import checkpoint_file, load_base, recipe

    model, _ = load_base(name="reasoning")
    assert recipe("reasoning")["sha256"]["model.safetensors"] == runs["checkpoint_sha256"]
    assert recipe("sft")["sha256"]["model.safetensors"] == runs["start_sha256"]
    assert checkpoint_file("model.safetensors", "reasoning").stat().st_size < 4.5e6
    assert model.num_parameters() == 1071872
