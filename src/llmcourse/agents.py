"""Tool use: a model that calls a calculator, a program that checks and runs the call, and the loop.

**Function calling** (函数调用): the program tells the model which tools exist, each described by a
JSON Schema of its arguments (the format of the OpenAI and Hugging Face chat APIs, :data:`TOOLS`),
and the model answers with a structured call instead of prose. The course model writes the call
between tags, as the Hermes/Qwen chat templates do, with a JSON object inside::

    <tool_call>{"name": "calculator", "arguments": {"expression": "482 + 377 - 129"}}</tool_call>

The program never trusts that text. :func:`parse_tool_call` parses the JSON, checks it against the
call envelope and the tool's schema with :func:`validate` (a small JSON-Schema subset written here),
and :func:`evaluate_expression` computes the expression with a tiny recursive-descent parser over
integers, ``+ - * /`` and parentheses: never Python's ``eval``, which would run any code the model
wrote. A malformed call becomes an error message, counted by kind (:data:`ERROR_KINDS`).

The **ReAct** loop (Yao et al. 2022, *ReAct: synergizing reasoning and acting in language models*),
:func:`run_agent`: the model generates until it closes a call (an action) or ends its reply; the
program runs the call and appends the result as an observation,
``\\n<tool_response>730</tool_response>\\n``, and the model continues, up to ``max_calls`` calls.
In training (:func:`encode_tool_problem`) the observation tokens get label -100: the model learns to
*ask*, and to use the answer, but not to imitate the calculator.

Shapes: T tokens, V vocabulary.

Taught in: book/13-using-llms
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from fractions import Fraction

import torch
from torch import Tensor

from llmcourse import chat

CALL_OPEN, CALL_CLOSE = "<tool_call>", "</tool_call>"
RESULT_OPEN, RESULT_CLOSE = "<tool_response>", "</tool_response>"
ERROR_KINDS = ("json", "schema", "unknown_tool", "expression")  # why a call was refused, in checking order
MAX_EXPRESSION = 200  # characters
MAX_DIGITS = 18  # per number: bounds the work and the size of every result

CALCULATOR = {
    "type": "function",
    "function": {
        "name": "calculator",
        "description": "Evaluate an arithmetic expression with integers, + - * / and parentheses.",
        "parameters": {
            "type": "object",
            "properties": {"expression": {"type": "string", "minLength": 1, "maxLength": MAX_EXPRESSION,
                                          "pattern": r"^[0-9+\-*/() ]+$"}},
            "required": ["expression"],
            "additionalProperties": False,
        },
    },
}
TOOLS = (CALCULATOR,)
CALL_SCHEMA = {  # the envelope every call must have, whatever the tool
    "type": "object",
    "properties": {"name": {"type": "string"}, "arguments": {"type": "object"}},
    "required": ["name", "arguments"],
    "additionalProperties": False,
}


# ----------------------------------------------------------------- validating structured output

_TYPES = {"object": dict, "array": list, "string": str, "boolean": bool, "null": type(None)}


def _is_type(value, name: str) -> bool:
    if name == "integer":
        return isinstance(value, int) and not isinstance(value, bool) or isinstance(value, float) and value.is_integer()
    if name == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if name not in _TYPES:
        raise ValueError(f"unsupported schema type {name!r}; known: {sorted(_TYPES) + ['integer', 'number']}")
    return isinstance(value, _TYPES[name])


def validate(value, schema: dict, path: str = "$") -> list[str]:
    """Errors of ``value`` against a JSON Schema subset (``type``, ``properties``, ``required``,
    ``additionalProperties`` (bool), ``items``, ``enum``, ``minLength``, ``maxLength``, ``pattern``);
    an empty list means valid. ``validate({"expression": 3}, params)`` -> ``["$.expression: expected string, got int"]``."""
    if not isinstance(schema, dict):
        raise TypeError(f"schema must be a dict, got {type(schema).__name__}")
    if "type" in schema and not _is_type(value, schema["type"]):
        return [f"{path}: expected {schema['type']}, got {type(value).__name__}"]
    errors = []
    if "enum" in schema and not any(value == e and type(value) is type(e) for e in schema["enum"]):
        errors.append(f"{path}: {value!r} is not one of {schema['enum']!r}")
    if isinstance(value, str):
        if len(value) < schema.get("minLength", 0):
            errors.append(f"{path}: shorter than {schema['minLength']} characters")
        if len(value) > schema.get("maxLength", float("inf")):
            errors.append(f"{path}: longer than {schema['maxLength']} characters")
        if "pattern" in schema and not re.search(schema["pattern"], value):
            errors.append(f"{path}: {value!r} does not match {schema['pattern']!r}")
    if isinstance(value, dict):
        props = schema.get("properties", {})
        errors += [f"{path}: missing required {k!r}" for k in schema.get("required", []) if k not in value]
        for k, v in value.items():
            if k in props:
                errors += validate(v, props[k], f"{path}.{k}")
            elif schema.get("additionalProperties", True) is False:
                errors.append(f"{path}: unexpected property {k!r}")
    if isinstance(value, list) and "items" in schema:
        for i, v in enumerate(value):
            errors += validate(v, schema["items"], f"{path}[{i}]")
    return errors


# ----------------------------------------------------------------- a calculator without eval


class CalculatorError(ValueError):
    """The expression is not one the calculator accepts (syntax, size, division by zero)."""


_TOKEN = re.compile(r"\s*(?:(\d+)|(.))")


def _tokens(text: str) -> list[str]:
    out = []
    for number, other in _TOKEN.findall(text):
        if number:
            if len(number) > MAX_DIGITS:
                raise CalculatorError(f"a number has {len(number)} digits (at most {MAX_DIGITS})")
            out.append(number)
        elif other.strip():
            if other not in "+-*/()":
                raise CalculatorError(f"unexpected character {other!r}")
            out.append(other)
    return out


def evaluate_expression(text: str) -> Fraction:
    """The exact value of an arithmetic expression: integers, ``+ - * /`` (left to right, ``* /`` first),
    unary minus and parentheses. ``evaluate_expression("2 * (3 + 4) - 10 / 4")`` -> ``Fraction(23, 2)``.

    Grammar: expr = term (("+" | "-") term)*; term = factor (("*" | "/") factor)*;
    factor = ("+" | "-") factor | INTEGER | "(" expr ")". Raises CalculatorError on anything else."""
    if not isinstance(text, str):
        raise TypeError(f"expression must be a str, got {type(text).__name__}")
    if len(text) > MAX_EXPRESSION:
        raise CalculatorError(f"expression has {len(text)} characters (at most {MAX_EXPRESSION})")
    toks, pos = _tokens(text), 0

    def peek():
        return toks[pos] if pos < len(toks) else None

    def take():
        nonlocal pos
        pos += 1
        return toks[pos - 1]

    def expr(depth):
        value = term(depth)
        while peek() in ("+", "-"):
            value = value + term(depth) if take() == "+" else value - term(depth)
        return value

    def term(depth):
        value = factor(depth)
        while peek() in ("*", "/"):
            op, right = take(), factor(depth)
            if op == "/" and right == 0:
                raise CalculatorError("division by zero")
            value = value * right if op == "*" else value / right
        return value

    def factor(depth):
        if depth > 50:
            raise CalculatorError("expression nested too deeply")
        tok = peek()
        if tok is None:
            raise CalculatorError("expression ended early")
        take()
        if tok in ("+", "-"):
            value = factor(depth + 1)
            return value if tok == "+" else -value
        if tok == "(":
            value = expr(depth + 1)
            if peek() != ")":
                raise CalculatorError("missing ')'")
            take()
            return value
        if tok.isdigit():
            return Fraction(int(tok))
        raise CalculatorError(f"unexpected {tok!r}")

    value = expr(0)
    if pos != len(toks):
        raise CalculatorError(f"unexpected {toks[pos]!r} after a complete expression")
    return value


def format_number(value: Fraction) -> str:
    """``"730"`` for a whole number, else the fraction as ``"23/2"`` (exact, nothing rounded)."""
    return str(value.numerator) if value.denominator == 1 else f"{value.numerator}/{value.denominator}"


# ----------------------------------------------------------------- calls


class MalformedCall(ValueError):
    """A refused call; ``kind`` is one of :data:`ERROR_KINDS`."""

    def __init__(self, kind: str, detail: str):
        super().__init__(f"{kind}: {detail}")
        self.kind, self.detail = kind, detail


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: dict


def parse_tool_call(text: str, tools=TOOLS) -> ToolCall:
    """The call in ``text`` (the JSON between ``<tool_call>`` and ``</tool_call>``, or bare JSON), checked:
    valid JSON ("json"), the envelope :data:`CALL_SCHEMA` ("schema"), a known tool ("unknown_tool"),
    its arguments against the tool's ``parameters`` schema ("schema"). Raises :class:`MalformedCall`."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    body = text.strip()
    if body.startswith(CALL_OPEN):
        body = body[len(CALL_OPEN):]
    body = body.split(CALL_CLOSE, 1)[0]
    try:
        obj = json.loads(body)
    except ValueError as err:
        raise MalformedCall("json", f"{err.__class__.__name__}: {err}") from None
    if errors := validate(obj, CALL_SCHEMA):
        raise MalformedCall("schema", "; ".join(errors))
    known = {t["function"]["name"]: t["function"] for t in tools}
    if obj["name"] not in known:
        raise MalformedCall("unknown_tool", f"{obj['name']!r} (known: {sorted(known)})")
    if errors := validate(obj["arguments"], known[obj["name"]]["parameters"], "$.arguments"):
        raise MalformedCall("schema", "; ".join(errors))
    return ToolCall(obj["name"], obj["arguments"])


def execute(call: ToolCall) -> str:
    """Run a checked call of :data:`CALCULATOR`; its result as text. CalculatorError -> MalformedCall("expression")."""
    if call.name != "calculator":
        raise MalformedCall("unknown_tool", repr(call.name))
    try:
        return format_number(evaluate_expression(call.arguments["expression"]))
    except CalculatorError as err:
        raise MalformedCall("expression", str(err)) from None


def call_text(expression: str) -> str:
    """``<tool_call>{"name": "calculator", "arguments": {"expression": ...}}</tool_call>``."""
    return CALL_OPEN + json.dumps({"name": "calculator", "arguments": {"expression": expression}}) + CALL_CLOSE


def observation_text(result: str) -> str:
    """What the program appends after a call: ``"\\n<tool_response>730</tool_response>\\n"``."""
    return f"\n{RESULT_OPEN}{result}{RESULT_CLOSE}\n"


def tool_reply(expression: str, answer: int) -> str:
    """The whole assistant turn of a tool-using reply: call, observation, final answer."""
    return call_text(expression) + observation_text(str(answer)) + str(answer)


def _encode(tokenizer, text: str) -> list[int]:
    return tokenizer.encode(text, allowed_special="none")  # tool text is plain text: no control tokens


def encode_tool_problem(problem, tokenizer) -> tuple[Tensor, Tensor]:
    """``(input_ids (T,), labels (T,))`` of a tool-using reply to a ``reasoning.Problem``; the prompt and
    the observation get -100, the call, the final answer and ``<|eos|>`` are trained. Each segment is
    tokenised on its own, exactly as :func:`run_agent` assembles the text at run time."""
    from llmcourse.reasoning import prompt_ids

    prompt = prompt_ids(problem, tokenizer).tolist()
    segments = [(_encode(tokenizer, call_text(problem.expression)), True),
                (_encode(tokenizer, observation_text(str(problem.answer))), False),
                (_encode(tokenizer, str(problem.answer)) + [tokenizer.special_tokens[chat.EOS]], True)]
    ids = prompt + [i for seg, _ in segments for i in seg]
    labels = [chat.IGNORE_INDEX] * len(prompt) + [i if keep else chat.IGNORE_INDEX for seg, keep in segments for i in seg]
    return torch.tensor(ids, dtype=torch.long), torch.tensor(labels, dtype=torch.long)


# ----------------------------------------------------------------- the loop


@dataclass
class AgentRun:
    """What happened: the reply ``text`` (observations included), the final ``answer`` text (after the last
    observation), and per call ``(raw call text, result or None, error kind or None)``."""

    text: str = ""
    answer: str = ""
    calls: list[tuple[str, str | None, str | None]] = field(default_factory=list)
    stopped: str = "eos"  # "eos", "max_calls" or "length"


@torch.no_grad()
def run_agent(model, tokenizer, prompt: Tensor, *, tools=TOOLS, max_calls: int = 2, temperature: float | None = None,
              generator: torch.Generator | None = None, use_tools: bool = True) -> AgentRun:
    """ReAct loop on one prompt (T,) int64 (e.g. ``reasoning.prompt_ids``): generate token by token (greedy,
    or sampled at ``temperature``) until ``<|eos|>``; each time the text since the last observation closes a
    call, parse, validate and run it and append the observation (an ``error: ...`` text if the call was
    refused, or ``error: disabled`` if ``use_tools=False``). Stops at ``<|eos|>``, at a call beyond
    ``max_calls`` (not run), or at block_size."""
    if not isinstance(prompt, Tensor) or prompt.ndim != 1 or prompt.dtype != torch.long or not len(prompt):
        raise ValueError("prompt must be a non-empty (T,) int64 tensor of token ids")
    if temperature is not None and not temperature > 0:
        raise ValueError(f"temperature must be > 0 (None for greedy), got {temperature!r}")
    if isinstance(max_calls, bool) or not isinstance(max_calls, int) or max_calls < 0:
        raise ValueError(f"max_calls must be an int >= 0, got {max_calls!r}")
    model.eval()
    eos, block = tokenizer.special_tokens[chat.EOS], model.config.block_size
    ids, start = prompt.tolist(), len(prompt)
    run, segment = AgentRun(), []
    while True:
        if len(ids) >= block:
            run.stopped = "length"
            break
        logits = model(torch.tensor([ids], device=next(model.parameters()).device))[0][0, -1].float().cpu()  # (V,)
        nxt = int(logits.argmax()) if temperature is None else \
            int(torch.multinomial(torch.softmax(logits / temperature, -1), 1, generator=generator))
        if nxt == eos:
            break
        ids.append(nxt)
        segment.append(nxt)
        said = tokenizer.decode(segment)
        if CALL_CLOSE in said:
            if len(run.calls) >= max_calls:
                run.stopped = "max_calls"
                break
            raw = said[said.find(CALL_OPEN) if CALL_OPEN in said else 0:said.index(CALL_CLOSE) + len(CALL_CLOSE)]
            try:
                if not use_tools:
                    raise MalformedCall("disabled", "no tools in this run")
                result, kind = execute(parse_tool_call(raw, tools)), None
            except MalformedCall as err:
                result, kind = None, err.kind
            run.calls.append((raw, result, kind))
            ids += _encode(tokenizer, observation_text(result if kind is None else f"error: {kind}"))
            segment = []
    run.text = tokenizer.decode(ids[start:])
    run.answer = run.text.rsplit(RESULT_CLOSE, 1)[-1].strip() if run.calls else run.text.strip()
    return run
