"""One terms file for the whole book: every glossary comes from ``book/glossary.yml`` and obeys its rules."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO
from tools import glossary

SEED_CONCEPTS = REPO.parent / "shared" / "SEED_CONCEPTS.md"
#: PART 1 of the source notes lists this many concepts (checked against the file wherever it is present).
SEED_CONCEPT_COUNT = 272


def _write(tmp_path: Path, entries, monkeypatch) -> None:
    path = tmp_path / "glossary.yml"
    path.write_text(yaml.safe_dump(entries, allow_unicode=True, sort_keys=False), encoding="utf-8")
    monkeypatch.setattr(glossary, "GLOSSARY", path)


def _entry(**changes):
    entry = {"term": "Perceptron", "zh": "感知机", "definition": "A linear threshold unit.",
             "page": "book/01-history/index", "section": "The perceptron, built by hand"}
    entry.update(changes)
    return entry


def test_every_entry_has_a_term_chinese_definition_and_a_section_that_exists():
    terms = glossary.load_terms()  # raises, listing every problem, if any entry breaks a rule
    assert len(terms) > 300
    for t in terms:
        assert t.section in glossary.markdown_headings(t.page)
        assert re.search(r"[\u3400-\u9fff]", t.zh), t


def test_no_term_is_defined_twice_across_the_book():
    keys = [t.term.lower() for t in glossary.load_terms()]
    assert len(keys) == len(set(keys))


def test_every_concept_of_the_source_notes_has_an_entry():
    covered = [s for t in glossary.load_terms() for s in t.seed]
    assert len(covered) == len(set(covered)), "a concept is claimed by two entries"
    if SEED_CONCEPTS.is_file():
        assert sorted(covered) == sorted(glossary.seed_concepts(SEED_CONCEPTS))
    assert len(covered) == SEED_CONCEPT_COUNT


def test_pages_draw_their_glossary_from_the_terms_file_and_write_none_by_hand():
    pages_with_terms = {t.page for t in glossary.load_terms()}
    for md in sorted((REPO / "book").glob("*/*.md")):
        text = md.read_text(encoding="utf-8")
        page = md.relative_to(REPO).with_suffix("").as_posix()
        assert "```{glossary}" not in text, f"{page}: write glossary terms in book/glossary.yml, not by hand"
        has_directive = "```{course-glossary}" in text
        assert has_directive == (page in pages_with_terms), \
            f"{page}: has the course-glossary directive {has_directive} but terms in the file {page in pages_with_terms}"


def test_the_glossary_sphinx_extension_is_registered():
    config = yaml.safe_load((REPO / "_config.yml").read_text())
    assert config["sphinx"]["local_extensions"]["course_glossary"] == "book/_ext"


def test_a_term_defined_twice_is_an_error_naming_both_entries(tmp_path, monkeypatch):
    _write(tmp_path, [_entry(), _entry(definition="Something else.")], monkeypatch)
    with pytest.raises(ValueError, match=r"entries 0 and 1: the term 'Perceptron' is defined twice"):
        glossary.load_terms()


@pytest.mark.parametrize("change, message", [
    ({"zh": ""}, "'zh' is missing or empty"),
    ({"zh": "perceptron"}, "'zh' has no Chinese characters"),
    ({"definition": None}, "'definition' is missing or empty"),
    ({"definition": "two\nlines"}, "the definition must be one line"),
    ({"term": "Perceptron (感知机)"}, "put the Chinese in 'zh'"),
    ({"section": "No such heading"}, "has no heading 'No such heading'"),
    ({"page": "book/99-nothing/index"}, "book/99-nothing/index.md does not exist"),
    ({"seed": "Perceptron"}, "'seed' must be a list"),
    ({"color": "red"}, "unknown field 'color'"),
])
def test_a_broken_entry_is_reported_with_what_is_wrong(tmp_path, monkeypatch, change, message):
    _write(tmp_path, [_entry(**change)], monkeypatch)
    with pytest.raises(ValueError, match=re.escape(message)):
        glossary.load_terms()


def test_headings_inside_code_cells_and_fences_are_not_sections():
    headings = glossary.markdown_headings("book/02-ml-basics/index")
    assert headings[0] == "Machine learning basics"
    assert "Glossary" in headings
    assert not any(h.startswith(("import", "!")) for h in headings)
