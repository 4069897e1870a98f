"""llmcourse.corpus: determinism, size and mix, a split by document, deduplication, correct generated answers."""

from __future__ import annotations

import re

import pytest

from llmcourse import corpus


def test_corpus_is_deterministic_and_seeded():
    assert corpus.course_corpus("train") == corpus.course_corpus("train", seed=0)
    other = corpus.course_documents("train", seed=1)
    assert corpus.course_corpus("train", seed=1) != corpus.course_corpus("train")
    prose = sorted(d.text for d in corpus.course_documents("train") + corpus.course_documents("validation")
                   if d.kind == "prose")
    prose_other = sorted(d.text for d in other + corpus.course_documents("validation", seed=1) if d.kind == "prose")
    assert prose == prose_other, "the seed changes the generated text and the split, not the prose itself"
    assert corpus.make_arithmetic_lines(5, seed=3) == corpus.make_arithmetic_lines(5, seed=3)
    assert corpus.make_qa_lines(5, seed=3) != corpus.make_qa_lines(5, seed=4)


def test_corpus_size_and_mix():
    info = corpus.describe_corpus()
    total = info["train"]["characters"] + info["validation"]["characters"]
    assert 400_000 <= total <= 1_000_000, f"{total} characters: chapter 8 trains on this on a CPU"
    assert info["train"]["characters"] == len(corpus.course_corpus("train"))
    assert info["validation"]["documents"] == len(corpus.course_documents("validation"))
    docs = corpus.course_documents("train") + corpus.course_documents("validation")
    chars = {k: sum(len(d.text) for d in docs if d.kind == k) for k in corpus.MIX}
    for kind, target in corpus.MIX.items():
        share = chars[kind] / sum(chars.values())
        assert abs(share - target) < 0.02, f"{kind} is {share:.3f} of the characters, target {target}"
        assert info["validation"]["documents_by_kind"][kind] >= 1
    n_val = info["validation"]["documents"] / (info["train"]["documents"] + info["validation"]["documents"])
    assert abs(n_val - corpus.VALIDATION_FRACTION) < 0.01


def _units(doc):
    return doc.text.split("\n\n") if doc.kind == "prose" else doc.text.split("\n")


def test_corpus_split_is_by_document_and_deduplicated():
    train, val = corpus.course_documents("train"), corpus.course_documents("validation")
    train_units = [u for d in train for u in _units(d)]
    val_units = [u for d in val for u in _units(d)]
    assert len(set(train_units)) == len(train_units), "a paragraph or line repeats inside the training split"
    assert len(set(val_units)) == len(val_units)
    shared = set(train_units) & set(val_units)
    assert not shared, f"validation text also in training: {sorted(shared)[:3]}"
    removed = corpus.describe_corpus()["removed"]
    assert removed["paragraphs"] > 100, "the manual repeats paragraphs (e.g. 'See also:'); they must be removed"
    assert removed["lines"] > 0


def test_deduplicate_known_answer():
    docs = [corpus.Document("arithmetic", "1 + 1 = 2\n2 + 2 = 4"), corpus.Document("arithmetic", "2 + 2 = 4"),
            corpus.Document("prose", "A.\n\nB."), corpus.Document("prose", "B.\n\nC.\n\nA.")]
    kept, removed = corpus.deduplicate(docs)
    assert [d.text for d in kept] == ["1 + 1 = 2\n2 + 2 = 4", "A.\n\nB.", "C."]
    assert removed == {"paragraphs": 2, "lines": 1, "documents": 1}


def test_prose_documents_are_sections():
    docs = corpus.prose_documents()
    assert len(docs) > 150
    assert docs[0].text.startswith('The "assert" statement\n****')
    assert all(d.kind == "prose" and d.text == d.text.strip() for d in docs)


def test_generated_arithmetic_is_correct():
    for line in corpus.make_arithmetic_lines(2000, seed=0):
        m = re.fullmatch(r"(\d+) ([-+*]) (\d+) = (\d+)", line)
        assert m, f"unexpected arithmetic line {line!r}"
        a, op, b, c = int(m[1]), m[2], int(m[3]), int(m[4])
        assert {"+": a + b, "-": a - b, "*": a * b}[op] == c, f"wrong answer in {line!r}"


def test_generated_answers_are_correct():
    lines = corpus.make_qa_lines(3000, seed=0)
    checked = 0
    for line in lines:
        assert re.search(r"Q: .+\? A: |Q: .+\. A: ", line), f"not a question-answer line: {line!r}"
        q, a = line.rsplit(" A: ", 1)
        if m := re.fullmatch(r"Q: What is (\d+) ([-+*]) (\d+)\?", q):
            x, op, y = int(m[1]), m[2], int(m[3])
            assert int(a) == {"+": x + y, "-": x - y, "*": x * y}[op], line
        elif m := re.fullmatch(r"Q: Reverse the words: (.+)\.", q):
            assert a.split() == m[1].split()[::-1], line
        elif m := re.fullmatch(r"Q: Sort the numbers: (.+)\.", q):
            assert [int(x) for x in a.split()] == sorted(int(x) for x in m[1].split()), line
        elif m := re.fullmatch(r"Q: Which is larger, (\d+) or (\d+)\?", q):
            assert int(a) == max(int(m[1]), int(m[2])), line
        elif m := re.fullmatch(r"Q: How many words are in: (.+)\?", q):
            assert int(a) == len(m[1].split()), line
        elif m := re.fullmatch(r"Q: Spell the word (\w+)\.", q):
            assert a == " ".join(m[1]), line
        elif m := re.fullmatch(r"Q: What number comes after (\d+)\?", q):
            assert int(a) == int(m[1]) + 1, line
        elif m := re.fullmatch(r"Q: What is the (first|last) word in: (.+)\?", q):
            assert a == m[2].split()[0 if m[1] == "first" else -1], line
        elif m := re.fullmatch(r"(\w+) has (\d) (\w+) (\w+)s\. (\w+) has (\d) (\w+) (\w+)s\. Q: (.+)\?", q):
            facts = {m[1]: (int(m[2]), m[3], m[4]), m[5]: (int(m[6]), m[7], m[8])}
            question = m[9]
            if hm := re.fullmatch(r"How many (\w+)s does (\w+) have", question):
                assert int(a) == facts[hm[2]][0] and facts[hm[2]][2] == hm[1], line
            elif cm := re.fullmatch(r"What color are (\w+)'s (\w+)s", question):
                assert a == facts[cm[1]][1], line
            elif wm := re.fullmatch(r"Who has the (\w+)s", question):
                assert facts[a][2] == wm[1], line
            else:
                assert int(a) == sum(n for n, _, _ in facts.values()), line
        else:
            pytest.fail(f"unknown question template: {line!r}")
        checked += 1
    assert checked == len(lines)


def test_chinese_sample():
    text = corpus.chinese_sample()
    cjk = sum("\u4e00" <= c <= "\u9fff" for c in text)
    assert cjk / len(text) > 0.8, "the sample should be Chinese text"
    assert 8 <= text.count("。") <= 15


def test_corpus_errors():
    with pytest.raises(ValueError, match="split must be one of"):
        corpus.course_corpus("test")
    with pytest.raises(ValueError, match="seed must be an int"):
        corpus.course_corpus("train", seed=-1)
