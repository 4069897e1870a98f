"""The course corpus: the text the course's own language model learns from.

Chapter 7 trains the course tokenizer on it, chapter 8 pretrains the tiny GPT
on it, and chapters 9-13 fine-tune that model towards instruction tasks, so
besides prose it holds the kinds of text those tasks are made of. Three kinds
of document, in these target shares of the characters:

* ``prose`` (60 %): the Python reference manual's topic pages that ship with
  CPython (``datasets.english_corpus``), one document per section (a heading
  and the text under it);
* ``arithmetic`` (15 %): generated lines such as ``37 + 48 = 85``,
  ``203 - 61 = 142``, ``12 * 7 = 84`` (operands of 1-3 digits, products of a
  1-2 digit and a 1-digit number), 8-16 lines a document;
* ``qa`` (25 %): generated question-answer lines whose answers can be checked,
  such as ``Q: What is 25 + 17? A: 42``, ``Q: Reverse the words: red green
  blue. A: blue green red``, and short stories that state facts and ask about
  them (``Ada has 3 red boxes. Ben has 5 blue cups. Q: How many cups does Ben
  have? A: 5``), 6-12 lines a document.

The pipeline, as in real pretraining data (on a small scale): build the
documents and remove exact duplicates as they come (a prose paragraph or a
generated line seen before is dropped and counted; a document left empty is
dropped), generating more lines until each generated kind reaches its share
of the deduplicated total; then split *by document*: 10 % of each kind's
documents, chosen with the seed, form the validation set, so no validation
paragraph or line also appears in the training text. Both splits are
shuffled with the seed and joined with blank lines. About 0.55 MB in all
(``describe_corpus`` gives the numbers); the prose, and so the exact sizes,
depends on the Python version.

``chinese_sample`` is a short Chinese text written for the course (a glossary
of machine-learning terms) for measuring characters per token.

Taught in: book/07-tokens-embeddings
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

import numpy as np

from llmcourse.datasets import english_corpus

MIX = {"prose": 0.60, "arithmetic": 0.15, "qa": 0.25}  # target share of characters per kind
VALIDATION_FRACTION = 0.10  # share of each kind's documents held out for validation
SPLITS = ("train", "validation")

COLORS = ("red", "green", "blue", "yellow", "black", "white", "orange", "purple", "brown", "pink", "gray")
THINGS = ("box", "cup", "book", "pen", "ball", "hat", "key", "coin", "lamp", "chair", "shoe", "card")
ANIMALS = ("cat", "dog", "bird", "fish", "horse", "cow", "lion", "mouse", "bear", "duck", "frog", "goat")
NAMES = ("Ada", "Ben", "Cleo", "Dan", "Eva", "Finn", "Hana", "Ivan", "Jia", "Kofi", "Lena", "Mia",
         "Noor", "Omar", "Pia", "Raj", "Sara", "Tom", "Uma", "Wen", "Yuki", "Zoe")
WORDS = COLORS + THINGS + ANIMALS


@dataclass(frozen=True)
class Document:
    """One document of the corpus: its kind ("prose", "arithmetic" or "qa") and its text."""

    kind: str
    text: str


def _rng(seed: int, stream: int) -> np.random.Generator:
    """An independent generator per (seed, stream), so adding one kind never changes another."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**32:
        raise ValueError(f"seed must be an int in [0, 2**32), got {seed!r}")
    return np.random.default_rng([int(seed), stream])


def _number(rng: np.random.Generator, max_digits: int) -> int:
    digits = int(rng.integers(1, max_digits + 1))  # as many 1-digit as 3-digit numbers
    return int(rng.integers(0 if digits == 1 else 10 ** (digits - 1), 10**digits))


def _sum(rng: np.random.Generator) -> tuple[str, int]:
    op = rng.choice(["+", "-", "*"])
    if op == "*":
        a, b = _number(rng, 2), _number(rng, 1)
        return f"{a} * {b}", a * b
    a, b = _number(rng, 3), _number(rng, 3)
    if op == "-":
        a, b = max(a, b), min(a, b)  # answers stay >= 0
        return f"{a} - {b}", a - b
    return f"{a} + {b}", a + b


def _arithmetic_line(rng: np.random.Generator) -> str:
    question, answer = _sum(rng)
    return f"{question} = {answer}"


def _words(rng: np.random.Generator, low: int = 3, high: int = 5) -> list[str]:
    return [str(w) for w in rng.choice(WORDS, size=int(rng.integers(low, high + 1)), replace=False)]


def _qa_line(rng: np.random.Generator) -> str:
    task = int(rng.integers(9))
    if task == 0:
        question, answer = _sum(rng)
        return f"Q: What is {question}? A: {answer}"
    if task == 1:
        words = _words(rng)
        return f"Q: Reverse the words: {' '.join(words)}. A: {' '.join(reversed(words))}"
    if task == 2:
        nums = [int(x) for x in rng.integers(0, 100, size=int(rng.integers(3, 6)))]
        return f"Q: Sort the numbers: {' '.join(map(str, nums))}. A: {' '.join(map(str, sorted(nums)))}"
    if task == 3:
        a, b = (int(x) for x in rng.choice(1000, size=2, replace=False))
        return f"Q: Which is larger, {a} or {b}? A: {max(a, b)}"
    if task == 4:
        words = _words(rng, 2, 7)
        return f"Q: How many words are in: {' '.join(words)}? A: {len(words)}"
    if task == 5:
        word = str(rng.choice(WORDS))
        return f"Q: Spell the word {word}. A: {' '.join(word)}"
    if task == 6:
        n = int(rng.integers(0, 1000))
        return f"Q: What number comes after {n}? A: {n + 1}"
    if task == 7:
        words = _words(rng)
        which = rng.choice(["first", "last"])
        return f"Q: What is the {which} word in: {' '.join(words)}? A: {words[0] if which == 'first' else words[-1]}"
    # a story: facts first, then one question about them
    a, b = (str(x) for x in rng.choice(NAMES, size=2, replace=False))
    (na, nb), (ca, cb), (ta, tb) = rng.integers(2, 10, size=2), rng.choice(COLORS, 2, replace=False), \
        rng.choice(THINGS, 2, replace=False)
    story = f"{a} has {na} {ca} {ta}s. {b} has {nb} {cb} {tb}s."
    ask = int(rng.integers(4))
    if ask == 0:
        return f"{story} Q: How many {tb}s does {b} have? A: {nb}"
    if ask == 1:
        return f"{story} Q: What color are {a}'s {ta}s? A: {ca}"
    if ask == 2:
        return f"{story} Q: Who has the {tb}s? A: {b}"
    return f"{story} Q: How many things do {a} and {b} have together? A: {na + nb}"


def make_arithmetic_lines(n: int, *, seed: int = 0) -> list[str]:
    """``n`` generated arithmetic lines, e.g. ``["37 + 48 = 85", "12 * 7 = 84", ...]`` (repeats possible)."""
    rng = _rng(seed, 1)
    return [_arithmetic_line(rng) for _ in range(n)]


def make_qa_lines(n: int, *, seed: int = 0) -> list[str]:
    """``n`` generated question-answer lines, e.g. ``["Q: What is 25 + 17? A: 42", ...]`` (repeats possible)."""
    rng = _rng(seed, 2)
    return [_qa_line(rng) for _ in range(n)]


def prose_documents() -> list[Document]:
    """``english_corpus()`` cut into sections: a new document starts at every underlined heading."""
    lines = english_corpus().split("\n")
    starts = [0] + [i - 1 for i in range(2, len(lines)) if re.fullmatch(r"([*=~^-])\1{2,}", lines[i])]
    docs = ["\n".join(lines[s:e]).strip() for s, e in zip(starts, starts[1:] + [len(lines)])]
    return [Document("prose", d) for d in docs if d]


class Deduplicator:
    """Remembers every prose paragraph and generated line it has kept, and drops repeats.

    ``dedup(doc)`` returns the document without the parts seen before (``None`` if nothing is
    left); ``dedup.removed`` counts what was dropped: paragraphs, lines and whole documents.
    """

    def __init__(self):
        self.seen: set[str] = set()
        self.removed = {"paragraphs": 0, "lines": 0, "documents": 0}

    def __call__(self, doc: Document) -> Document | None:
        sep, unit = ("\n\n", "paragraphs") if doc.kind == "prose" else ("\n", "lines")
        parts = []
        for part in doc.text.split(sep):
            if part in self.seen:
                self.removed[unit] += 1
            else:
                self.seen.add(part)
                parts.append(part)
        if not parts:
            self.removed["documents"] += 1
            return None
        return Document(doc.kind, sep.join(parts))


def deduplicate(documents: list[Document]) -> tuple[list[Document], dict[str, int]]:
    """Drop every prose paragraph and generated line seen before (the first is kept).

    Returns the documents left (empty ones dropped) and what was removed, e.g.
    ``{"paragraphs": 534, "lines": 0, "documents": 1}``.
    """
    dedup = Deduplicator()
    kept = [d for d in map(dedup, documents) if d is not None]
    return kept, dedup.removed


def _generated_documents(kind: str, n_chars: int, rng: np.random.Generator,
                         dedup: Deduplicator) -> list[Document]:
    """Deduplicated documents of generated lines (8-16 or 6-12 a document) until ``n_chars`` characters."""
    make, low, high = (_arithmetic_line, 8, 16) if kind == "arithmetic" else (_qa_line, 6, 12)
    docs, total = [], 0
    while total < n_chars:
        doc = dedup(Document(kind, "\n".join(make(rng) for _ in range(int(rng.integers(low, high + 1))))))
        if doc is not None:
            docs.append(doc)
            total += len(doc.text) + 2  # + the blank line that joins documents
    return docs


@functools.lru_cache(maxsize=4)
def _build(seed: int) -> tuple[tuple[Document, ...], tuple[Document, ...], tuple[tuple[str, int], ...]]:
    dedup = Deduplicator()
    docs = [d for d in map(dedup, prose_documents()) if d is not None]
    total = sum(len(d.text) + 2 for d in docs) / MIX["prose"]
    for stream, kind in enumerate(("arithmetic", "qa"), start=1):
        docs += _generated_documents(kind, int(MIX[kind] * total), _rng(seed, stream), dedup)
    rng = _rng(seed, 0)
    train, val = [], []
    for kind in MIX:
        of_kind = [d for d in docs if d.kind == kind]
        n_val = max(1, round(VALIDATION_FRACTION * len(of_kind)))
        held_out = set(rng.permutation(len(of_kind))[:n_val].tolist())
        for i, d in enumerate(of_kind):
            (val if i in held_out else train).append(d)
    train = [train[i] for i in rng.permutation(len(train))]
    val = [val[i] for i in rng.permutation(len(val))]
    return tuple(train), tuple(val), tuple(dedup.removed.items())


def _check_split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return split


def course_documents(split: str = "train", *, seed: int = 0) -> list[Document]:
    """The documents of one split, in their shuffled order (built once per seed, then cached)."""
    train, val, _ = _build(seed)
    return list(train if _check_split(split) == "train" else val)


def course_corpus(split: str = "train", *, seed: int = 0) -> str:
    """The text of one split: its documents joined by blank lines, ending with a newline."""
    return "\n\n".join(d.text for d in course_documents(split, seed=seed)) + "\n"


def describe_corpus(*, seed: int = 0) -> dict:
    """Counts for both splits: characters, UTF-8 bytes, documents, each kind's share of characters.

    Also ``removed`` (what deduplication dropped) and the target ``mix``.
    """
    out: dict = {"mix": dict(MIX), "removed": dict(_build(seed)[2])}
    for split in SPLITS:
        docs = course_documents(split, seed=seed)
        text = course_corpus(split, seed=seed)
        chars = {k: sum(len(d.text) for d in docs if d.kind == k) for k in MIX}
        out[split] = {"characters": len(text), "bytes": len(text.encode("utf-8")), "documents": len(docs),
                      "documents_by_kind": {k: sum(d.kind == k for d in docs) for k in MIX},
                      "share": {k: chars[k] / sum(chars.values()) for k in MIX}}
    return out


def chinese_sample() -> str:
    """A short Chinese glossary of machine-learning terms, written for this course (about 500 characters)."""
    return (
        "词元是模型读写文本的基本单位，可以是一个字、一个词的一部分，也可以是几个字节。\n"
        "分词器负责把文本切成词元并映射为整数编号，解码时再把编号还原成原来的文本。\n"
        "字节对编码从单个字节出发，反复把语料中最常见的相邻两个单元合并成一个新单元。\n"
        "词表是分词器认识的全部词元的集合，词表越大，同一段文字需要的词元通常越少。\n"
        "嵌入是一个可学习的稠密向量，模型用它来表示每个词元，意思相近的词元向量也相近。\n"
        "余弦相似度只看两个向量之间的夹角，不看长度，常用来比较两段文字的语义。\n"
        "上下文窗口是模型一次能处理的最多词元数，超出的部分模型根本看不到。\n"
        "填充词元用来把长短不一的序列补齐成矩形批次，注意力掩码告诉模型忽略它们。\n"
        "预训练让模型在大量文本上预测下一个词元，从而学到语言的统计规律和大量知识。\n"
        "微调是在预训练模型的基础上，用少量有标注的数据继续训练，使它适应具体任务。\n"
        "困惑度是平均负对数似然的指数，数值越低，说明模型对测试文本越不感到意外。\n"
        "过拟合指模型把训练数据记得太牢，在训练集上表现很好，在新数据上却明显变差。\n"
        "学习率决定每一步参数更新的幅度，太大训练会发散，太小又会收敛得非常慢。\n"
    )
