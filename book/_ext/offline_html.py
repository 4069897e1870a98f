"""Sphinx extension for the course's HTML: pages that work offline with a clean console.

Jupyter Book 1 registers sphinx-thebe's inline configuration script twice, so every page
logged "Identifier 'THEBE_JS_URL' has already been declared". This extension drops
duplicate script entries (same file or inline body, same attributes; the
file name may be None in one copy and "" in the other) from each page before it is
written.
"""

from __future__ import annotations


def _dedupe_scripts(app, pagename, templatename, context, doctree):
    scripts = context.get("script_files")
    if not scripts:
        return
    seen, unique = set(), []
    for script in scripts:
        attrs = dict(getattr(script, "attributes", {}))
        key = (str(getattr(script, "filename", script) or ""), tuple(sorted(attrs.items())))
        if key not in seen:
            seen.add(key)
            unique.append(script)
    context["script_files"] = unique


def setup(app):
    app.connect("html-page-context", _dedupe_scripts, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
