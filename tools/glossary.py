"""The course's one terms file, ``book/glossary.yml``: loading, validating, and where terms are taught.

Every glossary in the book is drawn from it (``book/_ext/course_glossary.py``), appendix A lists it
whole, and ``tests/test_glossary.py`` holds it to its rules: each entry has a term, a Chinese term, a
one-line definition, a page of the book and a heading of that page that teaches it; no term appears
twice (so two chapters cannot define one term differently); and the source notes' concept list
(``SEED_CONCEPTS.md``) is covered, bullet by bullet, through each entry's ``seed`` field.

``python -m tools.glossary`` prints the entries per page and any problem found.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
GLOSSARY = REPO / "book" / "glossary.yml"
_HAN = re.compile(r"[\u3400-\u9fff]")
_FIELDS = {"term", "zh", "definition", "page", "section", "seed"}


@dataclass(frozen=True)
class Term:
    term: str
    zh: str
    definition: str
    page: str  # a page of the book without suffix, e.g. "book/04-cnn/index"
    section: str  # the text of a heading on that page
    seed: tuple[str, ...] = field(default=())  # the SEED_CONCEPTS.md bullets this entry covers
    index: int = 0  # position in the file, for messages


def markdown_headings(page: str) -> list[str]:
    """The headings (``#`` to ``####``) of a MyST page, outside code cells and fences, in order."""
    path = REPO / f"{page}.md"
    if not path.is_file():
        raise ValueError(f"{page}.md does not exist")
    headings, fence = [], None
    for line in path.read_text(encoding="utf-8").splitlines():
        m = re.match(r"^(`{3,}|:{3,})", line)
        if m:
            if fence is None:
                fence = m.group(1)
            elif line.strip() == fence:
                fence = None
            continue
        if fence is None:
            h = re.match(r"^#{1,4}\s+(.*?)\s*$", line)
            if h:
                headings.append(h.group(1))
    return headings


def _problems_of(i: int, raw) -> list[str]:
    where = f"book/glossary.yml entry {i}"
    if not isinstance(raw, dict):
        return [f"{where}: must be a mapping, got {type(raw).__name__}"]
    where += f" ({raw.get('term')!r})"
    problems = [f"{where}: unknown field {k!r}" for k in raw if k not in _FIELDS]
    for key in ("term", "zh", "definition", "page", "section"):
        if not isinstance(raw.get(key), str) or not raw[key].strip():
            problems.append(f"{where}: {key!r} is missing or empty")
    if problems:
        return problems
    if not _HAN.search(raw["zh"]):
        problems.append(f"{where}: 'zh' has no Chinese characters: {raw['zh']!r}")
    if "\n" in raw["definition"].strip():
        problems.append(f"{where}: the definition must be one line")
    if _HAN.search(raw["term"]):
        problems.append(f"{where}: put the Chinese in 'zh', not in the term")
    try:
        if raw["section"] not in markdown_headings(raw["page"]):
            problems.append(f"{where}: {raw['page']}.md has no heading {raw['section']!r}")
    except ValueError as err:
        problems.append(f"{where}: {err}")
    seed = raw.get("seed", [])
    if not isinstance(seed, list) or not all(isinstance(s, str) and s for s in seed):
        problems.append(f"{where}: 'seed' must be a list of concept names")
    return problems


@lru_cache(maxsize=4)
def _load(mtime: float) -> tuple[Term, ...]:
    data = yaml.safe_load(GLOSSARY.read_text(encoding="utf-8"))
    if not isinstance(data, list) or not data:
        raise ValueError("book/glossary.yml must be a non-empty list of entries")
    problems = [p for i, raw in enumerate(data) for p in _problems_of(i, raw)]
    seen: dict[str, int] = {}
    for i, raw in enumerate(data):
        key = str(raw.get("term", "")).strip().lower() if isinstance(raw, dict) else ""
        if key in seen:
            problems.append(f"book/glossary.yml entries {seen[key]} and {i}: the term {raw['term']!r} is "
                            f"defined twice; keep one definition")
        seen.setdefault(key, i)
    if problems:
        raise ValueError("book/glossary.yml has problems:\n  " + "\n  ".join(problems))
    return tuple(Term(term=r["term"].strip(), zh=r["zh"].strip(), definition=r["definition"].strip(),
                      page=r["page"], section=r["section"], seed=tuple(r.get("seed", [])), index=i)
                 for i, r in enumerate(data))


def load_terms() -> list[Term]:
    """Every entry of ``book/glossary.yml``, validated (``ValueError`` lists every problem)."""
    return list(_load(GLOSSARY.stat().st_mtime))


def seed_concepts(path: Path) -> list[str]:
    """The concept names of PART 1 of the source notes' ``SEED_CONCEPTS.md`` (``- Name (中文) — ...``)."""
    names = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("# PART 2"):
            break
        m = re.match(r"^- (.*?) \(([^()]*)\)(.*?) — ", line)
        if m:
            names.append((m.group(1) + m.group(3)).strip())
    return names


def main(argv: list[str]) -> int:
    terms = load_terms()
    pages = dict.fromkeys(t.page for t in terms)
    for page in pages:
        print(f"{page}: {sum(t.page == page for t in terms)} terms")
    if argv:
        covered = {s for t in terms for s in t.seed}
        missing = [c for c in seed_concepts(Path(argv[0])) if c not in covered]
        print(f"{len(missing)} concepts of {argv[0]} have no entry" + (":" if missing else ""))
        for c in missing:
            print("  ", c)
        return 1 if missing else 0
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
