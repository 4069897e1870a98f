"""Instruction data with verifiable answers: what chapter 9 fine-tunes the base model on.

Each :class:`Example` is the classic instruction-tuning record (as in FLAN, Self-Instruct, Alpaca):
an ``instruction``, an optional ``input``, the ideal ``output`` and an optional ``explanation``
(a short reasoning trace, e.g. the column-by-column carries of a sum, used for the
``<think>`` variant of the chat format in ``llmcourse.chat``). Eight task families, all generated
from a seed, all with answers a program can check:

* ``addition``, ``subtraction``: two operands in ``[0, MAX_OPERAND]`` (0-99: answers of at most
  three digits, which a one-million-parameter model can learn; the corpus's 3-digit sums are
  mostly out of its reach), subtraction with ``a >= b``;
* ``uppercase``: reply with the words in upper case;
* ``json``: answer a short question as a JSON object with a given key;
* ``extract``: list the words of a category (colours, animals, things) in order, comma-separated;
* ``reverse``, ``sort``: reverse or alphabetically sort a few words;
* ``qa``: the question-answer lines of the pretraining corpus (``corpus.make_qa_lines``: sums,
  comparisons, spelling, short stories), now asked as instructions.

Splits. ``make_split("train" | "validation" | "test")`` is fixed (``SPLIT_SIZES``, seed 0). The
splits are disjoint after deduplication on :func:`problem_key`, which ignores the wording: an
arithmetic expression found anywhere in the example is its key (so ``37 + 48`` in ``addition``
and "What is 37 + 48?" in ``qa`` are the same problem), otherwise the family and the normalised
input (or instruction) are. ``fresh_examples(n, seed)`` draws new examples from any integer seed
that never share a key with the train or validation split (the autograder's hidden test set).

Scoring: ``exact_match(prediction, example)`` strips whitespace and any ``<think>...</think>``
block, then compares per family (``json`` parses JSON, ``reverse``/``sort`` compare word lists,
``extract`` compares comma-separated items); ``score_by_family`` gives accuracy per family.

    >>> ex = make_split("train")[0]
    >>> ex
    Example(family='addition', instruction='Compute the sum.', input='65 + 66', output='131',
            explanation='5+6=11, 6+6+1=13')
    >>> exact_match("<think>\n5+6=11, 6+6+1=13\n</think>\n131", ex), exact_match("130", ex)
    (True, False)

Taught in: book/09-sft
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from llmcourse.corpus import ANIMALS, COLORS, THINGS, WORDS, make_qa_lines

FAMILIES = ("addition", "subtraction", "uppercase", "json", "extract", "reverse", "sort", "qa")
SPLITS = ("train", "validation", "test")
SPLIT_SIZES = {"train": 4000, "validation": 400, "test": 400}  # examples, balanced over the families
MAX_OPERAND = 99  # arithmetic operands are drawn from [0, MAX_OPERAND]
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
CATEGORIES = {"colors": COLORS, "animals": ANIMALS, "things": THINGS}


@dataclass(frozen=True)
class Example:
    """One instruction example. ``input`` and ``explanation`` may be None."""

    family: str
    instruction: str
    input: str | None
    output: str
    explanation: str | None = None

    def __post_init__(self):
        if self.family not in FAMILIES:
            raise ValueError(f"family must be one of {FAMILIES}, got {self.family!r}")
        for name in ("instruction", "output"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name).strip():
                raise ValueError(f"Example.{name} must be a non-empty str, got {getattr(self, name)!r}")


# ----------------------------------------------------------------- the generators, one per family


def _digits(n: int) -> list[int]:
    return [int(c) for c in reversed(str(n))]  # ones first


def addition_trace(a: int, b: int) -> str:
    """Column-by-column addition, ones first, a carried 1 written into the next column:
    ``addition_trace(37, 48)`` -> ``"7+8=15, 3+4+1=8"``; ``addition_trace(65, 66)`` -> ``"5+6=11, 6+6+1=13"``."""
    da, db = _digits(a), _digits(b)
    steps, carry = [], 0
    for i in range(max(len(da), len(db))):
        x, y = (da[i] if i < len(da) else 0), (db[i] if i < len(db) else 0)
        s = x + y + carry
        steps.append(f"{x}+{y}{'+1' if carry else ''}={s}")
        carry = s // 10
    return ", ".join(steps)


def subtraction_trace(a: int, b: int) -> str:
    """Column-by-column subtraction (``a >= b``), ones first; a borrow adds 10 to the column and
    takes 1 from the next: ``subtraction_trace(84, 37)`` -> ``"14-7=7, 8-1-3=4"``."""
    if a < b:
        raise ValueError(f"subtraction_trace needs a >= b, got {a} - {b}")
    da, db = _digits(a), _digits(b)
    steps, borrow = [], 0
    for i in range(len(da)):
        x, y = da[i], (db[i] if i < len(db) else 0)
        d = x - borrow - y
        top = x + 10 if d < 0 else x
        steps.append(f"{top}{'-1' if borrow else ''}-{y}={d + 10 if d < 0 else d}")
        borrow = int(d < 0)
    return ", ".join(steps)


def _addition(rng) -> Example:
    a, b = (int(x) for x in rng.integers(0, MAX_OPERAND + 1, size=2))
    ask = str(rng.choice(["Add the two numbers.", "What is the sum?", "Compute the sum."]))
    return Example("addition", ask, f"{a} + {b}", str(a + b), addition_trace(a, b))


def _subtraction(rng) -> Example:
    a, b = sorted((int(x) for x in rng.integers(0, MAX_OPERAND + 1, size=2)), reverse=True)
    ask = str(rng.choice(["Subtract the second number from the first.", "What is the difference?",
                          "Compute the difference."]))
    return Example("subtraction", ask, f"{a} - {b}", str(a - b), subtraction_trace(a, b))


def _words(rng, low: int, high: int, pool: Sequence[str] = WORDS) -> list[str]:
    return [str(w) for w in rng.choice(pool, size=int(rng.integers(low, high + 1)), replace=False)]


def _uppercase(rng) -> Example:
    words = _words(rng, 2, 4)
    ask = str(rng.choice(["Reply in upper case.", "Write the words in capital letters."]))
    return Example("uppercase", ask, " ".join(words), " ".join(w.upper() for w in words),
                   f"{len(words)} words, every letter in upper case")


def _json(rng) -> Example:
    key = str(rng.choice(["answer", "result", "value"]))
    words = _words(rng, 3, 5)
    kind = int(rng.integers(3))
    if kind == 0:
        question, value, why = f"How many words are in: {' '.join(words)}?", len(words), f"{len(words)} words"
    elif kind == 1:
        which = str(rng.choice(["first", "last"]))
        value = words[0] if which == "first" else words[-1]
        question, why = f"What is the {which} word in: {' '.join(words)}?", f"the {which} word is {value}"
    else:
        a, b = (int(x) for x in rng.choice(1000, size=2, replace=False))
        question, value, why = f"Which is larger, {a} or {b}?", max(a, b), f"{max(a, b)} > {min(a, b)}"
    return Example("json", f'Answer in JSON with the key "{key}".', question, json.dumps({key: value}),
                   f"{why}, so the key {key} holds {json.dumps(value)}")


def _extract(rng) -> Example:
    name = str(rng.choice(list(CATEGORIES)))
    words = _words(rng, 4, 6)
    while not any(w in CATEGORIES[name] for w in words):
        words = _words(rng, 4, 6)
    keep = [w for w in words if w in CATEGORIES[name]]
    skip = [w for w in words if w not in CATEGORIES[name]]
    return Example("extract", f"List the {name} in order, separated by commas.", " ".join(words), ", ".join(keep),
                   f"keep {' '.join(keep)}; skip {' '.join(skip)}" if skip else f"keep {' '.join(keep)}")


def _reverse(rng) -> Example:
    words = _words(rng, 3, 5)
    trace = f"{len(words)} words, last first"
    return Example("reverse", "Reverse the order of the words.", " ".join(words), " ".join(reversed(words)), trace)


def _sort(rng) -> Example:
    words = _words(rng, 3, 5)
    return Example("sort", "Sort the words alphabetically.", " ".join(words), " ".join(sorted(words)),
                   " < ".join(sorted(words)))


def qa_from_line(line: str) -> Example:
    """A ``corpus.make_qa_lines`` line as an example: the question is the instruction, a story (if any)
    the input; the explanation is the story's sentence that holds the answer, if one does.

    ``qa_from_line("Ada has 3 red boxes. Ben has 5 blue cups. Q: How many cups does Ben have? A: 5")``
    -> ``Example("qa", "How many cups does Ben have?", "Ada has 3 red boxes. Ben has 5 blue cups.", "5",
    "Ben has 5 blue cups.")``
    """
    m = re.fullmatch(r"(?:(.*) )?Q: (.*?) A: (.*)", line)
    if m is None:
        raise ValueError(f"not a 'Q: ... A: ...' line: {line!r}")
    story, question, answer = m.groups()
    why = None
    if story:
        facts = [s + "." for s in story.rstrip(".").split(". ")]
        why = next((s for s in facts if re.search(rf"\b{re.escape(answer)}\b", s)), None)
    return Example("qa", question, story, answer, why)


_GENERATORS: dict[str, Callable] = {"addition": _addition, "subtraction": _subtraction, "uppercase": _uppercase,
                                    "json": _json, "extract": _extract, "reverse": _reverse, "sort": _sort}


def normalize(text: str) -> str:
    """Lower case, punctuation dropped (but ``+``/``-`` kept), whitespace collapsed: ``"Red,  Cat!"`` -> ``"red cat"``."""
    return " ".join(re.sub(r"[^\w+\- ]", " ", text.lower()).split())


def problem_key(example: Example) -> str:
    """What deduplication compares: the arithmetic expression if there is one (``"37+48"``), else the
    family and the normalised input (or instruction, when there is no input)."""
    text = f"{example.instruction} {example.input or ''}"
    m = re.search(r"(\d+) ([+-]) (\d+)", text)
    if m:
        return "".join(m.groups())
    return f"{example.family}|{normalize(example.input or example.instruction)}"


def _check_seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    return int(seed)


def _check_families(families) -> tuple[str, ...]:
    families = FAMILIES if families is None else tuple(families)
    bad = [f for f in families if f not in FAMILIES]
    if bad or not families:
        raise ValueError(f"families must be a non-empty subset of {FAMILIES}, got {families!r}")
    return families


def _unique(family: str, n: int, seed: int, stream: int, seen: set[str]) -> list[Example]:
    """``n`` examples of one family whose keys are not in ``seen`` nor repeated; adds their keys to ``seen``."""
    index = FAMILIES.index(family)
    rng = np.random.default_rng([seed, stream, index])
    out = []
    for _ in range(100):  # rounds; each draws a batch of candidates
        if family == "qa":
            batch = [qa_from_line(x) for x in make_qa_lines(4 * n + 16, seed=int(rng.integers(2**32)))]
        else:
            batch = [_GENERATORS[family](rng) for _ in range(2 * n + 16)]
        for ex in batch:
            key = problem_key(ex)
            if key not in seen:
                seen.add(key)
                out.append(ex)
                if len(out) == n:
                    return out
    raise RuntimeError(f"could not draw {n} distinct {family} examples (only {len(out)}): too few left")


def _shares(n: int, families: Sequence[str]) -> list[int]:
    return [n // len(families) + (i < n % len(families)) for i in range(len(families))]


@functools.lru_cache(maxsize=4)
def _splits(seed: int) -> dict[str, tuple[Example, ...]]:
    total = sum(SPLIT_SIZES.values())
    rng = np.random.default_rng([seed, 0])
    parts: dict[str, list[Example]] = {s: [] for s in SPLITS}
    seen: set[str] = set()  # shared: "What is 3 + 4?" (qa) and "3 + 4" (addition) are one problem
    for family, n in zip(FAMILIES, _shares(total, FAMILIES)):
        pool = _unique(family, n, seed, 1, seen)
        pool = [pool[i] for i in rng.permutation(len(pool))]
        start = 0
        for split in SPLITS:
            size = SPLIT_SIZES[split] * n // total
            if split == "train":
                size = n - sum(SPLIT_SIZES[s] * n // total for s in SPLITS if s != "train")
            parts[split] += pool[start:start + size]
            start += size
    return {s: tuple(parts[s][i] for i in rng.permutation(len(parts[s]))) for s in SPLITS}


def make_split(split: str, n: int | None = None, *, seed: int = 0,
               families: Sequence[str] | None = None) -> list[Example]:
    """The fixed ``split`` ("train" 4,000, "validation" 400, "test" 400 examples), shuffled, families mixed.

    ``n`` keeps the first ``n`` (after the ``families`` filter). Splits of one ``seed`` never share a
    :func:`problem_key`.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    families = _check_families(families)
    out = [ex for ex in _splits(_check_seed(seed))[split] if ex.family in families]
    if n is not None:
        if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= len(out):
            raise ValueError(f"n must be an int in [0, {len(out)}], got {n!r}")
        out = out[:n]
    return out


def fresh_examples(n: int, seed: int, *, families: Sequence[str] | None = None, split_seed: int = 0) -> list[Example]:
    """``n`` new examples from any non-negative int ``seed``, balanced over ``families``, shuffled.

    None shares a :func:`problem_key` with the train or validation split of ``split_seed`` (they may
    repeat test-split problems), and none repeats another.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be an int >= 1, got {n!r}")
    seed, families = _check_seed(seed), _check_families(families)
    splits = _splits(_check_seed(split_seed))
    seen = {problem_key(ex) for s in ("train", "validation") for ex in splits[s]}
    out = [ex for f, k in zip(families, _shares(n, families)) if k for ex in _unique(f, k, seed, 2, seen)]
    return [out[i] for i in np.random.default_rng([seed, 3]).permutation(len(out))]


# ----------------------------------------------------------------- scoring


def split_reasoning(text: str) -> tuple[str | None, str]:
    """``(thought, answer)`` of a reply: ``"<think>\\n7 + 8 = 15\\n</think>\\n15"`` -> ``("7 + 8 = 15", "15")``.

    Without a ``<think>`` block the thought is None; an unclosed block (generation cut off) leaves no answer.
    """
    if not isinstance(text, str):
        raise TypeError(f"expected a str, got {type(text).__name__}")
    text = text.strip()
    if not text.startswith(THINK_OPEN):
        return None, text
    head, sep, tail = text[len(THINK_OPEN):].partition(THINK_CLOSE)
    return head.strip(), tail.strip() if sep else ""


def _items(text: str) -> list[str]:
    return [x.strip() for x in text.split(",")]


def exact_match(prediction: str, example: Example) -> bool:
    """Whether ``prediction`` answers ``example``: a ``<think>`` block and outer whitespace are ignored, then

    ``json``: the parsed JSON equals the reference object; ``reverse``/``sort``/``uppercase``: same
    words; ``extract``: same comma-separated items; the others: the same string (inner whitespace collapsed).
    """
    if not isinstance(example, Example):
        raise TypeError(f"example must be an Example, got {type(example).__name__}")
    answer = split_reasoning(prediction)[1]
    if example.family == "json":
        try:
            return json.loads(answer) == json.loads(example.output)
        except ValueError:
            return False
    if example.family == "extract":
        return _items(answer) == _items(example.output)
    return answer.split() == example.output.split()


def score_by_family(predictions: Sequence[str], examples: Sequence[Example]) -> dict[str, float]:
    """Exact-match accuracy per family present, plus ``"all"`` (over every example)."""
    if len(predictions) != len(examples) or not examples:
        raise ValueError(f"need as many predictions as examples (and at least one), got "
                         f"{len(predictions)} and {len(examples)}")
    hits: dict[str, list[bool]] = {}
    for p, ex in zip(predictions, examples):
        hits.setdefault(ex.family, []).append(exact_match(p, ex))
    out = {f: float(np.mean(hits[f])) for f in FAMILIES if f in hits}
    out["all"] = float(np.mean([h for v in hits.values() for h in v]))
    return out
