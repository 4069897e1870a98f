"""Tool use: the safe calculator against exact Python arithmetic, the schema check against `jsonschema`,
call parsing by error kind, the masked observation, and the ReAct loop driven by a scripted model."""

import json
import random
import re
from fractions import Fraction

import jsonschema
import pytest
import torch
from torch import nn

from llmcourse import agents, reasoning
from llmcourse.pretrained import load_tokenizer

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer()


def _random_expression(rng: random.Random, depth: int = 0) -> str:
    if depth > 3 or rng.random() < 0.3:
        text = str(rng.randint(0, 10 ** rng.randint(1, 4)))
        return f"-{text}" if rng.random() < 0.15 else text
    left, right = _random_expression(rng, depth + 1), _random_expression(rng, depth + 1)
    text = f"{left} {rng.choice('+-*/')} {right}"
    return f"({text})" if rng.random() < 0.5 else text


def _python_value(text: str) -> Fraction:
    """The reference: Python's own arithmetic on exact fractions (test code only; the library never evals)."""
    return eval(re.sub(r"\d+", lambda m: f"Fraction({m.group()})", text), {"Fraction": Fraction})


def test_evaluate_expression_matches_python_arithmetic_on_random_expressions():
    rng = random.Random(0)
    checked = 0
    while checked < 300:
        text = _random_expression(rng)
        try:
            want = _python_value(text)
        except ZeroDivisionError:
            with pytest.raises(agents.CalculatorError, match="division by zero"):
                agents.evaluate_expression(text)
            continue
        assert agents.evaluate_expression(text) == want, text
        assert agents.evaluate_expression(text.replace(" ", "")) == want, text
        checked += 1


@pytest.mark.parametrize("text", ["__import__('os').system('ls')", "2 ** 3", "1 / 0", "(1 + 2", "1 2", "", "3 +",
                                  "1e5", "x + 1", ")(", "9" * 19, "1 + " * 60 + "1", "-" * 60 + "1"])
def test_evaluate_expression_refuses_code_and_malformed_text(text):
    with pytest.raises(agents.CalculatorError):
        agents.evaluate_expression(text)


def test_evaluate_expression_known_answers():
    assert agents.evaluate_expression("2 * (3 + 4) - 10 / 4") == Fraction(23, 2)
    assert agents.evaluate_expression("482 + 377 - 129") == 730
    assert agents.evaluate_expression("-(-3)") == 3
    assert agents.format_number(Fraction(23, 2)) == "23/2" and agents.format_number(Fraction(-4)) == "-4"
    with pytest.raises(TypeError):
        agents.evaluate_expression(12)


def _mutations(rng: random.Random):
    values = ["1 + 2", "", "9" * 250, "1 + x", 3, 2.5, True, None, [], {}, ["1"], "  7 ", "(3)"]
    for _ in range(300):
        obj = {}
        if rng.random() < 0.85:
            obj["expression"] = rng.choice(values)
        if rng.random() < 0.15:
            obj[rng.choice(["expr", "extra", "name"])] = rng.choice(values)
        yield obj if rng.random() < 0.9 else rng.choice(values)


def test_validate_agrees_with_jsonschema_on_random_arguments_and_calls():
    rng = random.Random(1)
    params = agents.CALCULATOR["function"]["parameters"]
    for obj in _mutations(rng):
        want = jsonschema.Draft202012Validator(params).is_valid(obj)
        assert (agents.validate(obj, params) == []) == want, obj
        call = {"name": rng.choice(["calculator", "search", 3]), "arguments": obj}
        if rng.random() < 0.2:
            call.pop(rng.choice(["name", "arguments"]))
        assert (agents.validate(call, agents.CALL_SCHEMA) == []) == \
            jsonschema.Draft202012Validator(agents.CALL_SCHEMA).is_valid(call), call


def test_validate_says_where_and_what():
    params = agents.CALCULATOR["function"]["parameters"]
    assert agents.validate({"expression": 3}, params) == ["$.expression: expected string, got int"]
    assert agents.validate({}, params) == ["$: missing required 'expression'"]
    assert agents.validate({"expression": "1", "x": 1}, params) == ["$: unexpected property 'x'"]
    with pytest.raises(ValueError, match="unsupported schema type"):
        agents.validate(1, {"type": "tuple"})


@pytest.mark.parametrize("text, kind", [
    ('<tool_call>{"name": "calculator", "arguments": {"expression": "1 + 2"</tool_call>', "json"),
    ('<tool_call>{"name": "calculator", "args": {"expression": "1 + 2"}}</tool_call>', "schema"),
    ('<tool_call>{"name": "search", "arguments": {"query": "1 + 2"}}</tool_call>', "unknown_tool"),
    ('<tool_call>{"name": "calculator", "arguments": {"expression": 12}}</tool_call>', "schema"),
    ('<tool_call>{"name": "calculator", "arguments": {"expression": "import os"}}</tool_call>', "schema"),
])
def test_parse_tool_call_names_the_kind_of_error(text, kind):
    with pytest.raises(agents.MalformedCall) as err:
        agents.parse_tool_call(text)
    assert err.value.kind == kind and err.value.kind in agents.ERROR_KINDS


def test_a_valid_call_round_trips_and_runs():
    call = agents.parse_tool_call(agents.call_text("482 + 377 - 129"))
    assert call == agents.ToolCall("calculator", {"expression": "482 + 377 - 129"})
    assert agents.execute(call) == "730"
    with pytest.raises(agents.MalformedCall) as err:
        agents.execute(agents.parse_tool_call(agents.call_text("1 / (2 - 2)")))
    assert err.value.kind == "expression"


def test_encode_tool_problem_trains_the_call_and_answer_but_not_the_observation(tok):
    for p in reasoning.make_problems(5, 3, kind=reasoning.LONG):
        ids, labels = agents.encode_tool_problem(p, tok)
        assert ids.shape == labels.shape and ids.dtype == labels.dtype == torch.long
        trained = tok.decode(ids[labels != -100].tolist())
        assert trained == agents.call_text(p.expression) + str(p.answer) + "<|eos|>"
        assert tok.decode(ids.tolist()).endswith(agents.tool_reply(p.expression, p.answer) + "<|eos|>")
        assert len(ids) <= 128


class Scripted(nn.Module):
    """A stand-in language model that writes a fixed text, ignoring what the program appends in between."""

    def __init__(self, tok, pieces: list[str], prompt_len: int):
        super().__init__()
        self.config = type("C", (), {"block_size": 128})()
        self.w = nn.Parameter(torch.zeros(1))
        self.tok, self.prompt_len = tok, prompt_len
        self.plan = [tok.encode(p, allowed_special="all") for p in pieces]
        self.written = 0

    def forward(self, idx):
        flat = [t for piece in self.plan for t in piece]
        nxt = flat[self.written] if self.written < len(flat) else self.tok.special_tokens["<|eos|>"]
        self.written += 1
        logits = torch.full((1, idx.shape[1], self.tok.vocab_size), -1e9)
        logits[0, -1, nxt] = 0.0
        return logits, None


def test_run_agent_runs_the_call_and_appends_the_observation(tok):
    p = reasoning.Problem((482, 377, 129), ("+", "-"))
    prompt = reasoning.prompt_ids(p, tok)
    model = Scripted(tok, [agents.call_text(p.expression), "730<|eos|>"], len(prompt))
    run = agents.run_agent(model, tok, prompt)
    assert run.calls == [(agents.call_text(p.expression), "730", None)]
    assert run.text == agents.call_text(p.expression) + "\n<tool_response>730</tool_response>\n730"
    assert run.answer == "730" and reasoning.extract_answer(run.answer) == 730 and run.stopped == "eos"


def test_run_agent_reports_a_malformed_call_and_stops_beyond_max_calls(tok):
    prompt = reasoning.prompt_ids(reasoning.Problem((1, 2, 3), ("+", "+")), tok)
    bad = '<tool_call>{"name": "calculator", "arguments": {"expression": "1 +"}}</tool_call>'
    run = agents.run_agent(Scripted(tok, [bad, "6<|eos|>"], len(prompt)), tok, prompt)
    assert run.calls == [(bad, None, "expression")] and "error: expression" in run.text and run.answer == "6"
    run = agents.run_agent(Scripted(tok, [agents.call_text("1"), agents.call_text("2"), "3"], len(prompt)), tok,
                           prompt, max_calls=1)
    assert len(run.calls) == 1 and run.stopped == "max_calls"
    run = agents.run_agent(Scripted(tok, [agents.call_text("1 + 2"), "3"], len(prompt)), tok, prompt, use_tools=False)
    assert run.calls[0][2] == "disabled" and "error: disabled" in run.text


def test_run_agent_rejects_bad_arguments(tok):
    model = Scripted(tok, ["1"], 3)
    with pytest.raises(ValueError, match="prompt"):
        agents.run_agent(model, tok, torch.tensor([[1, 2]]))
    with pytest.raises(ValueError, match="temperature"):
        agents.run_agent(model, tok, torch.tensor([1, 2]), temperature=0.0)
    with pytest.raises(ValueError, match="max_calls"):
        agents.run_agent(model, tok, torch.tensor([1, 2]), max_calls=-1)


def test_tool_schema_is_a_valid_json_schema():
    jsonschema.Draft202012Validator.check_schema(agents.CALCULATOR["function"]["parameters"])
    jsonschema.Draft202012Validator.check_schema(agents.CALL_SCHEMA)
    json.dumps(agents.TOOLS)  # what a chat API would be sent
