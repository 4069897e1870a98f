"""Multi-step arithmetic with and without written steps, and self-consistency over sampled answers.

A **chain of thought** is a reply that writes its intermediate steps before the answer (Wei et al.
2022, *Chain-of-thought prompting elicits reasoning in large language models*). Here the task is a
sum or difference of 3-5 numbers, ``37 + 8 - 5 + 9``, and its chain of thought is the running total,
one operation per step, in the ``<think>`` block of ``llmcourse.chat``::

    <think>
    37+8=45, 45-5=40, 40+9=49
    </think>
    49

Each step is one small operation the model can learn; the direct answer ``49`` needs all of them at
once, inside one forward pass. **Self-consistency** (Wang et al. 2022, *Self-consistency improves
chain of thought reasoning in language models*) samples several reasoning paths and returns the
most frequent final answer (a majority vote): :func:`majority_vote`, and
:func:`self_consistency_curve` for the accuracy of a vote over k of S stored samples.

* :class:`Problem`, :func:`make_problems` - seeded problems (running totals never negative),
  disjoint from an ``exclude`` set (held-out problems never seen in training);
* :func:`step_trace` - the running-total steps; :func:`problem_messages` - the chat turns;
* :func:`encode_problems` - ``(input_ids, labels)`` pairs for ``sft.train_sft``;
* :func:`extract_answer` - the integer after ``</think>`` (None if absent or unreadable);
* :func:`sample_answers` - S sampled replies per problem (``rollouts.sample``), batched.

    >>> p = Problem((37, 8, 5, 9), ("+", "-", "+"))
    >>> p.expression, p.answer, step_trace(p)
    ('37 + 8 - 5 + 9', 49, '37+8=45, 45-5=40, 40+9=49')
    >>> majority_vote([49, 48, None, 49]), extract_answer("<think>\\n37+8=45\\n</think>\\n49")
    (49, 49)

Taught in: book/13-using-llms
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from llmcourse import chat
from llmcourse.instructions import split_reasoning
from llmcourse.progress import progress

INSTRUCTION = "Compute."
SHORT = {"terms": (3, 5), "first": (10, 49), "rest": (1, 9)}  # steps the model can learn: 2-digit +- 1-digit
LONG = {"terms": (3, 5), "first": (100, 999), "rest": (100, 999)}  # too long to add "in its head": the tool task


@dataclass(frozen=True)
class Problem:
    """``numbers[0] ops[0] numbers[1] ops[1] ...``, evaluated left to right; ``ops`` are ``"+"``/``"-"``."""

    numbers: tuple[int, ...]
    ops: tuple[str, ...]

    def __post_init__(self):
        if len(self.numbers) < 2 or len(self.ops) != len(self.numbers) - 1:
            raise ValueError(f"need >= 2 numbers and one op fewer, got {len(self.numbers)} numbers, {len(self.ops)} ops")
        if any(isinstance(x, bool) or not isinstance(x, int) or x < 0 for x in self.numbers):
            raise ValueError(f"numbers must be non-negative ints, got {self.numbers!r}")
        if any(op not in ("+", "-") for op in self.ops):
            raise ValueError(f"ops must be '+' or '-', got {self.ops!r}")

    @property
    def expression(self) -> str:
        """``"37 + 8 - 5 + 9"``: the text the user sees."""
        return " ".join([str(self.numbers[0])] + [f"{op} {x}" for op, x in zip(self.ops, self.numbers[1:])])

    def totals(self) -> list[int]:
        """The running totals after each operation: ``[45, 40, 49]`` for ``37 + 8 - 5 + 9``."""
        out, total = [], self.numbers[0]
        for op, x in zip(self.ops, self.numbers[1:]):
            total = total + x if op == "+" else total - x
            out.append(total)
        return out

    @property
    def answer(self) -> int:
        return self.totals()[-1]

    @classmethod
    def parse(cls, expression: str) -> Problem:
        """The problem an ``expression`` shows: ``Problem.parse("37 + 8 - 5")`` -> ``Problem((37, 8, 5), ("+", "-"))``."""
        parts = expression.split() if isinstance(expression, str) else []
        if len(parts) < 3 or len(parts) % 2 == 0 or not all(x.isdigit() for x in parts[0::2]):
            raise ValueError(f"expected 'number op number ...' with spaces, got {expression!r}")
        return cls(tuple(int(x) for x in parts[0::2]), tuple(parts[1::2]))


def step_trace(problem: Problem) -> str:
    """One step per operation, on the running total: ``"37+8=45, 45-5=40, 40+9=49"``."""
    if not isinstance(problem, Problem):
        raise TypeError(f"problem must be a Problem, got {type(problem).__name__}")
    before = [problem.numbers[0]] + problem.totals()[:-1]
    return ", ".join(f"{a}{op}{x}={t}" for a, op, x, t in zip(before, problem.ops, problem.numbers[1:], problem.totals()))


def _check_range(name: str, lo_hi) -> tuple[int, int]:
    lo, hi = lo_hi
    if isinstance(lo, bool) or isinstance(hi, bool) or not isinstance(lo, int) or not isinstance(hi, int) or not 0 <= lo <= hi:
        raise ValueError(f"{name} must be (low, high) ints with 0 <= low <= high, got {lo_hi!r}")
    return lo, hi


def make_problems(n: int, seed: int, *, kind: dict = SHORT, exclude: set[str] | frozenset[str] = frozenset()) -> list[Problem]:
    """``n`` distinct problems drawn with ``seed``: ``kind["terms"]`` = (min, max) numbers, the first in
    ``kind["first"]``, the others in ``kind["rest"]``; each op is + or - at random, but - only where the
    running total stays >= 0. Problems whose ``expression`` is in ``exclude`` are skipped."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be an int >= 1, got {n!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    if not isinstance(kind, dict) or set(kind) != {"terms", "first", "rest"}:
        raise ValueError(f"kind must be a dict with keys terms, first, rest (like SHORT), got {kind!r}")
    (t0, t1), first, rest = _check_range("terms", kind["terms"]), _check_range("first", kind["first"]), \
        _check_range("rest", kind["rest"])
    if t0 < 2:
        raise ValueError(f"a problem needs at least 2 terms, got terms={kind['terms']!r}")
    rng = np.random.default_rng([seed, 13])
    out, seen = [], set(exclude)
    for _ in range(50 * n + 1000):
        numbers = [int(rng.integers(first[0], first[1] + 1))]
        ops, total = [], numbers[0]
        for _ in range(int(rng.integers(t0, t1 + 1)) - 1):
            x = int(rng.integers(rest[0], rest[1] + 1))
            op = "-" if rng.random() < 0.5 and total - x >= 0 else "+"
            total = total + x if op == "+" else total - x
            numbers.append(x)
            ops.append(op)
        p = Problem(tuple(numbers), tuple(ops))
        if p.expression not in seen:
            seen.add(p.expression)
            out.append(p)
            if len(out) == n:
                return out
    raise RuntimeError(f"could not draw {n} distinct problems of this kind (got {len(out)}): widen the ranges")


# ----------------------------------------------------------------- the chat format


def problem_messages(problem: Problem, *, reply: str = "direct") -> list[dict]:
    """``[user, assistant]``: the user asks ``"Compute.\\n<expression>"``; the assistant gives the answer
    (``reply="direct"``), the running-total steps in ``reasoning_content`` and then the answer
    (``reply="cot"``), or a calculator call (``reply="tool"``, see ``llmcourse.agents.tool_reply``)."""
    if not isinstance(problem, Problem):
        raise TypeError(f"problem must be a Problem, got {type(problem).__name__}")
    user = {"role": "user", "content": f"{INSTRUCTION}\n{problem.expression}"}
    if reply == "direct":
        return [user, {"role": "assistant", "content": str(problem.answer)}]
    if reply == "cot":
        return [user, {"role": "assistant", "content": str(problem.answer), "reasoning_content": step_trace(problem)}]
    if reply == "tool":
        from llmcourse.agents import tool_reply

        return [user, {"role": "assistant", "content": tool_reply(problem.expression, problem.answer)}]
    raise ValueError(f"reply must be 'direct', 'cot' or 'tool', got {reply!r}")


def prompt_ids(problem: Problem, tokenizer) -> Tensor:
    """The prompt (T,) int64 the model continues: the user turn and ``assistant:\\n``."""
    return chat.encode_prompt(problem_messages(problem)[:1], tokenizer)


def encode_problems(problems: Sequence[Problem], tokenizer, replies: Sequence[str] | str) -> list[tuple[Tensor, Tensor]]:
    """``(input_ids (T_i,), labels (T_i,))`` per problem (``chat.build_labels``: loss on the reply only);
    ``replies`` is one reply kind for all, or one per problem. Tool replies go through
    ``agents.encode_tool_problem``, which leaves the calculator's observation out of the loss."""
    replies = [replies] * len(problems) if isinstance(replies, str) else list(replies)
    if not problems or len(replies) != len(problems):
        raise ValueError(f"need a non-empty list of problems and one reply kind each, got {len(problems)} "
                         f"problems and {len(replies)} kinds")
    from llmcourse.agents import encode_tool_problem

    bad = sorted({r for r in replies} - {"direct", "cot", "tool"})
    if bad:
        raise ValueError(f"reply kinds must be 'direct', 'cot' or 'tool', got {bad!r}")
    return [encode_tool_problem(p, tokenizer) if r == "tool" else chat.build_labels(problem_messages(p, reply=r), tokenizer)
            for p, r in zip(problems, replies)]


# ----------------------------------------------------------------- answers and votes

_INT = re.compile(r"-?\d+")


def extract_answer(reply: str) -> int | None:
    """The integer a reply ends with: the text after ``</think>`` (or after the last ``</tool_response>``
    of a tool call) must be one integer; otherwise None (no answer, an unclosed think block, junk)."""
    if not isinstance(reply, str):
        raise TypeError(f"reply must be a str, got {type(reply).__name__}")
    answer = split_reasoning(reply)[1].rsplit("</tool_response>", 1)[-1].strip()
    return int(answer) if _INT.fullmatch(answer) else None


def majority_vote(answers: Sequence[int | None]) -> int | None:
    """The most frequent answer, ignoring None; ties go to the answer that appeared first. None if none."""
    counts = Counter(a for a in answers if a is not None)
    if not counts:
        return None
    best = max(counts.values())
    return next(a for a in answers if a is not None and counts[a] == best)


def self_consistency_curve(samples: Sequence[Sequence[int | None]], gold: Sequence[int], ks: Sequence[int], *,
                           trials: int = 50, seed: int = 0) -> dict[int, float]:
    """Accuracy of a majority vote over k samples, for each k in ``ks``: ``samples`` is P problems x S
    sampled answers; for each problem, ``trials`` random subsets of k of its S samples (k <= S) are
    voted on (ties broken by the random order), and the hits are averaged; k = S is one vote over all the
    samples in their stored order. k = 1 is (an estimate of) one sample's accuracy."""
    samples = [list(s) for s in samples]
    if not samples or len(samples) != len(gold) or len({len(s) for s in samples}) != 1:
        raise ValueError(f"samples must be P lists of S answers (P >= 1, equal S) and gold P answers, got "
                         f"{len(samples)} problems, sample counts {sorted({len(s) for s in samples})}, {len(gold)} gold")
    s = len(samples[0])
    if not ks or any(isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= s for k in ks):
        raise ValueError(f"each k must be an int in [1, {s}] (the samples per problem), got {list(ks)!r}")
    rng = np.random.default_rng(seed)
    out = {}
    for k in ks:
        hits = [majority_vote([row[i] for i in (rng.permutation(s)[:k] if k < s else range(s))]) == g
                for row, g in zip(samples, gold) for _ in range(trials if k < s else 1)]
        out[k] = float(np.mean(hits))
    return out


@torch.no_grad()
def sample_answers(model, tokenizer, problems: Sequence[Problem], n_samples: int, *, temperature: float = 1.0,
                   max_new_tokens: int = 64, seed: int = 0, batch_rows: int = 240, greedy: bool = False,
                   show_progress: bool = False) -> tuple[list[list[int | None]], list[list[str]]]:
    """``n_samples`` replies per problem sampled at ``temperature`` (``rollouts.sample``, left-padded
    batches of ``batch_rows`` rows; ``greedy=True`` takes the argmax instead); returns (P x S extracted answers, P x S reply texts)."""
    from llmcourse.rollouts import decode_responses, sample

    if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 1:
        raise ValueError(f"n_samples must be an int >= 1, got {n_samples!r}")
    eos, pad = tokenizer.special_tokens[chat.EOS], tokenizer.special_tokens[chat.PAD]
    rows = [prompt_ids(p, tokenizer) for p in problems for _ in range(n_samples)]
    gen = torch.Generator().manual_seed(seed)
    texts: list[str] = []
    for i in progress(range(0, len(rows), batch_rows), desc="sampling", disable=not show_progress):
        chunk = rows[i:i + batch_rows]
        room = model.config.block_size - max(len(r) for r in chunk)
        ro = sample(model, chunk, min(max_new_tokens, room), eos_id=eos, pad_id=pad, generator=gen,
                    temperature=temperature, greedy=greedy)
        texts += decode_responses(ro, tokenizer, eos)
    grouped = [texts[j * n_samples:(j + 1) * n_samples] for j in range(len(problems))]
    return [[extract_answer(t) for t in g] for g in grouped], grouped
