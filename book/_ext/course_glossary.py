"""Sphinx extension: every glossary in the book comes from one file, ``book/glossary.yml``.

Two directives:

``{course-glossary}``
    Placed at the end of a page; shows, as an ordinary Sphinx glossary, every entry of
    ``book/glossary.yml`` whose ``page`` is that page. Chapters never write a glossary by hand,
    so one term has one definition in the whole book.

``{course-glossary-table}``
    Appendix A's table of all entries, chapter by chapter: the term, its Chinese, its definition
    and a link to the section of the page that teaches it (found in that page's doctree when the
    links are resolved, so a renamed heading is an error, not a dead link).

Loading and validating the file is ``tools.glossary`` (the tests use the same code).
"""

from __future__ import annotations

import sys
from pathlib import Path

from docutils import nodes
from docutils.statemachine import StringList
from sphinx.domains.std import Glossary
from sphinx.util.docutils import SphinxDirective

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tools.glossary import GLOSSARY, load_terms  # noqa: E402


class CourseGlossary(Glossary):
    """A glossary whose entries are the terms file's entries for this page."""

    required_arguments = 0
    has_content = False

    def run(self):
        env = self.state.document.settings.env
        env.note_dependency(str(GLOSSARY))
        page = env.docname
        entries = [e for e in load_terms() if e.page == page]
        if not entries:
            raise self.error(f"book/glossary.yml has no entry for the page {page}")
        lines = StringList()
        source = str(GLOSSARY)
        for e in entries:
            lines.append(f"{e.term} ({e.zh})", source, e.index)
            lines.append(f"   {e.definition}", source, e.index)
            lines.append("", source, e.index)
        self.content = lines
        self.options = {"sorted": None}
        return super().run()


class glossary_link(nodes.General, nodes.Inline, nodes.Element):
    """A link to a section of another page, resolved once every doctree has been read."""


class CourseGlossaryTable(SphinxDirective):
    """Appendix A: every entry of the terms file in one table per page, with links to sections."""

    has_content = False

    def run(self):
        self.env.note_dependency(str(GLOSSARY))
        entries = load_terms()
        out = []
        pages = list(dict.fromkeys(e.page for e in entries))
        for page in pages:
            rows = [e for e in entries if e.page == page]
            table = nodes.table(classes=["course-glossary-table"])
            group = nodes.tgroup(cols=4)
            table += group
            for width in (22, 14, 48, 16):
                group += nodes.colspec(colwidth=width)
            head = nodes.thead()
            group += head
            head += self._row(["Term", "中文", "Definition", "Taught in"])
            body = nodes.tbody()
            group += body
            for e in sorted(rows, key=lambda e: e.term.lower()):
                link = glossary_link(page=page, section=e.section, term=e.term)
                body += self._row([e.term, e.zh, e.definition, link])
            title = nodes.rubric()
            title += glossary_link(page=page, section="", term="")  # the page's title, once it is known
            out += [title, table]
        return out

    def _row(self, cells):
        row = nodes.row()
        for cell in cells:
            entry = nodes.entry()
            if isinstance(cell, nodes.Node):
                entry += nodes.paragraph("", "", cell)
            else:
                para = nodes.paragraph()
                text_nodes, _ = self.state.inline_text(cell, self.lineno)
                para += text_nodes
                entry += para
            row += entry
        return row


def _plain(title: str) -> str:
    """A heading as comparable text: no Markdown marks, straight quotes, one space, lower case."""
    title = title.translate(str.maketrans({"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"'}))
    return " ".join(title.replace("`", "").replace("$", "").replace("*", "").split()).lower()


def _section_id(env, docname: str, title: str) -> str | None:
    doctree = env.get_doctree(docname)
    want = _plain(title)
    for section in doctree.findall(nodes.section):
        if section.children and isinstance(section[0], nodes.title) and \
                (_plain(section[0].astext()) == want or want in section.get("names", [])):
            return section["ids"][0]
    return None


def _resolve_links(app, doctree, fromdocname):
    for node in list(doctree.findall(glossary_link)):
        docname = node["page"]
        if docname not in app.env.all_docs:
            raise ValueError(f"book/glossary.yml: the term {node['term']!r} names the page {docname}, "
                             f"which is not in the book")
        if not node["section"]:  # a heading of appendix A's table: the page's own title
            title = app.env.titles[docname].astext()
            uri = app.builder.get_relative_uri(fromdocname, docname)
            node.replace_self(nodes.reference("", title, refuri=uri, internal=True))
            continue
        anchor = _section_id(app.env, docname, node["section"])
        if anchor is None:
            raise ValueError(f"book/glossary.yml: the term {node['term']!r} is taught in section "
                             f"{node['section']!r} of {docname}, but that page has no such heading")
        uri = app.builder.get_relative_uri(fromdocname, docname) + "#" + anchor
        label = node["section"]
        node.replace_self(nodes.reference("", label, refuri=uri, internal=True))


def setup(app):
    app.add_directive("course-glossary", CourseGlossary)
    app.add_directive("course-glossary-table", CourseGlossaryTable)
    app.add_node(glossary_link)
    app.connect("doctree-resolved", _resolve_links)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
