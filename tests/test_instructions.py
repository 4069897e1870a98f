"""Instruction data: fixed disjoint splits, fresh held-out draws, correct answers and traces, the scorers."""

from __future__ import annotations

import json
import re
from collections import Counter

import numpy as np
import pytest

from llmcourse import corpus
from llmcourse import instructions as ins
from llmcourse.instructions import Example


@pytest.fixture(scope="module")
def splits():
    return {s: ins.make_split(s) for s in ins.SPLITS}


def _keys(examples):
    return {ins.problem_key(e) for e in examples}


def test_splits_have_their_sizes_balanced_families_and_no_repeated_problem(splits):
    for split, examples in splits.items():
        assert len(examples) == ins.SPLIT_SIZES[split]
        counts = Counter(e.family for e in examples)
        assert set(counts) == set(ins.FAMILIES) and max(counts.values()) - min(counts.values()) <= 1, counts
        assert len(_keys(examples)) == len(examples), f"{split} repeats a problem"


def test_splits_are_disjoint_after_deduplication(splits):
    keys = {s: _keys(v) for s, v in splits.items()}
    assert not keys["train"] & keys["validation"]
    assert not keys["train"] & keys["test"]
    assert not keys["validation"] & keys["test"]


def test_splits_are_fixed_and_filterable():
    assert ins.make_split("test") == ins.make_split("test")
    assert ins.make_split("train", 10) == ins.make_split("train")[:10]
    only = ins.make_split("validation", families=["json", "qa"])
    assert len(only) == 100 and {e.family for e in only} == {"json", "qa"}


def test_problem_key_ignores_wording_and_matches_arithmetic_across_families():
    a = Example("addition", "Add the two numbers.", "37 + 48", "85")
    b = Example("addition", "Compute the sum.", "37 + 48", "85")
    q = Example("qa", "What is 37 + 48?", None, "85")
    assert ins.problem_key(a) == ins.problem_key(b) == ins.problem_key(q) == "37+48"
    assert ins.problem_key(Example("sort", "Sort.", "Red  cat,", "cat red")) == "sort|red cat"
    assert ins.normalize("Red,  Cat!") == "red cat"


@pytest.mark.parametrize("seed", [0, 1, 12345, 2**40 + 7])
def test_fresh_examples_never_repeat_a_train_or_validation_problem(splits, seed):
    fresh = ins.fresh_examples(160, seed)
    keys = _keys(fresh)
    assert len(fresh) == 160 and len(keys) == 160
    assert not keys & (_keys(splits["train"]) | _keys(splits["validation"]))
    assert Counter(e.family for e in fresh) == {f: 20 for f in ins.FAMILIES}
    assert ins.fresh_examples(160, seed) == fresh  # a seed gives one set


def test_fresh_examples_differ_between_seeds_and_honour_families():
    a, b = ins.fresh_examples(80, 3), ins.fresh_examples(80, 4)
    assert len(_keys(a) & _keys(b)) < 40
    odd = ins.fresh_examples(7, 5, families=["addition", "sort"])
    assert Counter(e.family for e in odd) == {"addition": 4, "sort": 3}


def _check_answer(e: Example) -> None:
    """Recompute the answer from the input, independently of the generators."""
    if e.family in ("addition", "subtraction"):
        a, op, b = e.input.split()
        assert int(a) <= ins.MAX_OPERAND and int(b) <= ins.MAX_OPERAND
        assert int(e.output) == (int(a) + int(b) if op == "+" else int(a) - int(b)) >= 0
    elif e.family == "uppercase":
        assert e.output == e.input.upper()
    elif e.family == "reverse":
        assert e.output.split() == e.input.split()[::-1]
    elif e.family == "sort":
        assert e.output.split() == sorted(e.input.split())
    elif e.family == "extract":
        name = re.search(r"List the (\w+)", e.instruction).group(1)
        assert e.output.split(", ") == [w for w in e.input.split() if w in ins.CATEGORIES[name]]
    elif e.family == "json":
        key = re.search(r'key "(\w+)"', e.instruction).group(1)
        words = e.input.split(": ")[-1].rstrip("?").split()
        if e.input.startswith("How many"):
            want = len(words)
        elif e.input.startswith("What is the"):
            want = words[0] if "first" in e.input else words[-1]
        else:
            want = max(int(x) for x in re.findall(r"\d+", e.input))
        assert json.loads(e.output) == {key: want}
    else:  # qa: the corpus line it came from
        line = (f"{e.input} " if e.input else "") + f"Q: {e.instruction} A: {e.output}"
        assert ins.qa_from_line(line) == e


def test_every_answer_is_right_and_matches_itself(splits):
    for e in splits["train"][:1200] + splits["test"]:
        _check_answer(e)
        assert ins.exact_match(e.output, e), e


def _replay_addition(trace: str) -> int:
    digits = []
    for step in trace.split(", "):
        lhs, s = step.split("=")
        assert sum(int(x) for x in lhs.split("+")) == int(s), step
        digits.append(int(s) % 10)
    return int(str(int(s) // 10) + "".join(map(str, reversed(digits))))


def _replay_subtraction(trace: str) -> int:
    digits = []
    for step in trace.split(", "):
        lhs, d = step.split("=")
        top, *rest = (int(x) for x in lhs.split("-"))
        assert top - sum(rest) == int(d) and 0 <= int(d) <= 9, step
        digits.append(d)
    return int("".join(reversed(digits)))


def test_arithmetic_traces_by_hand():
    assert ins.addition_trace(37, 48) == "7+8=15, 3+4+1=8"
    assert ins.addition_trace(65, 66) == "5+6=11, 6+6+1=13"
    assert ins.addition_trace(5, 0) == "5+0=5"
    assert ins.subtraction_trace(84, 37) == "14-7=7, 8-1-3=4"
    assert ins.subtraction_trace(100, 1) == "10-1=9, 10-1-0=9, 1-1-0=0"
    with pytest.raises(ValueError, match="a >= b"):
        ins.subtraction_trace(3, 4)


def test_arithmetic_traces_replay_to_the_answer_on_random_operands():
    rng = np.random.default_rng(0)
    for a, b in rng.integers(0, 1000, size=(300, 2)).tolist():
        assert _replay_addition(ins.addition_trace(a, b)) == a + b
        hi, lo = max(a, b), min(a, b)
        assert _replay_subtraction(ins.subtraction_trace(hi, lo)) == hi - lo


def test_qa_examples_come_from_corpus_lines():
    story = "Ada has 3 red boxs. Ben has 5 blue cups."
    e = ins.qa_from_line(f"{story} Q: How many cups does Ben have? A: 5")
    assert e == Example("qa", "How many cups does Ben have?", story, "5", "Ben has 5 blue cups.")
    assert ins.qa_from_line("Q: What is 2 + 3? A: 5") == Example("qa", "What is 2 + 3?", None, "5")
    for line in corpus.make_qa_lines(300, seed=4):
        e = ins.qa_from_line(line)
        assert (f"{e.input} " if e.input else "") + f"Q: {e.instruction} A: {e.output}" == line
        assert e.explanation is None or e.explanation in e.input
    with pytest.raises(ValueError, match="Q: ... A:"):
        ins.qa_from_line("37 + 48 = 85")


def test_exact_match_per_family():
    js = Example("json", 'Answer in JSON with the key "answer".', "How many words are in: a b?", '{"answer": 2}')
    assert ins.exact_match('  {"answer":2}\n', js)
    assert ins.exact_match('<think>\n2 words\n</think>\n{ "answer" : 2 }', js)
    assert not ins.exact_match('{"result": 2}', js) and not ins.exact_match('{"answer": "2"}', js)
    assert not ins.exact_match('{"answer": 2', js) and not ins.exact_match("2", js)
    ex = Example("extract", "List the animals in order, separated by commas.", "red cat hat dog", "cat, dog")
    assert ins.exact_match("cat,dog", ex) and not ins.exact_match("dog, cat", ex)
    add = Example("addition", "Add the two numbers.", "37 + 48", "85")
    assert ins.exact_match(" 85 ", add) and not ins.exact_match("86", add) and not ins.exact_match("85.", add)
    assert not ins.exact_match("<think>\n7+8=15, 3+4+1=8", add)  # cut off before the answer
    rev = Example("reverse", "Reverse the order of the words.", "a b c", "c b a")
    assert ins.exact_match("c  b\na", rev) and not ins.exact_match("C B A", rev)
    with pytest.raises(TypeError, match="Example"):
        ins.exact_match("85", {"output": "85"})


def test_split_reasoning():
    assert ins.split_reasoning("<think>\n7+8=15\n</think>\n15") == ("7+8=15", "15")
    assert ins.split_reasoning(" 15 ") == (None, "15")
    assert ins.split_reasoning("<think>\nunfinished") == ("unfinished", "")


def test_score_by_family_counts_hits_per_family():
    exs = [Example("addition", "Add.", "1 + 1", "2"), Example("addition", "Add.", "1 + 2", "3"),
           Example("sort", "Sort.", "b a", "a b")]
    assert ins.score_by_family(["2", "4", "a b"], exs) == {"addition": 0.5, "sort": 1.0, "all": pytest.approx(2 / 3)}
    with pytest.raises(ValueError, match="as many predictions"):
        ins.score_by_family(["2"], exs)


def test_bad_arguments_are_refused_with_a_message():
    with pytest.raises(ValueError, match="split must be one of"):
        ins.make_split("dev")
    with pytest.raises(ValueError, match="n must be"):
        ins.make_split("test", 401)
    with pytest.raises(ValueError, match="seed must be"):
        ins.fresh_examples(3, -1)
    with pytest.raises(ValueError, match="families must be"):
        ins.fresh_examples(3, 0, families=["poetry"])
    with pytest.raises(ValueError, match="n must be"):
        ins.fresh_examples(0, 0)
    with pytest.raises(ValueError, match="family must be one of"):
        Example("poetry", "Write.", None, "x")
    with pytest.raises(ValueError, match="output must be a non-empty"):
        Example("sort", "Sort.", "a", "  ")
