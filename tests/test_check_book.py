"""tools/check_book.py finds each kind of problem on a tiny page written for it, and passes a clean one.

The pages copy the markup that Sphinx and MyST-NB write (``.cell``, ``.cell_output``, ``.math``).
Needs Chromium and ChromeDriver (Debian's chromium and chromium-driver, which .ci/run installs).
"""

from __future__ import annotations

import base64
import importlib.util
from pathlib import Path

import pytest

pytest.importorskip("selenium", reason="selenium is in the dev extra: pip install -e '.[dev]'")
from tools import check_book  # noqa: E402

BROWSER = check_book.find_browser()
pytestmark = pytest.mark.skipif(
    BROWSER is None, reason="needs chromium and chromedriver on PATH (Debian: apt-get install chromium "
                            "chromium-driver; .ci/run installs them)")

PAGE = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>test page</title>{head}</head>
<body><main><section id="intro"><h1>Intro</h1>{body}</section></main></body></html>
"""
PNG_1X1 = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==")


def output_cell(text: str, kind: str = "text_plain") -> str:
    """A code cell with one output, as MyST-NB writes it."""
    return (f'<div class="cell docutils container"><div class="cell_input"><pre>x</pre></div>'
            f'<div class="cell_output docutils container"><div class="output {kind}"><pre>{text}</pre>'
            f'</div></div></div>')


@pytest.fixture(scope="module")
def driver(tmp_path_factory):
    driver = check_book.open_browser(*BROWSER, tmp_path_factory.mktemp("profile"))
    yield driver
    driver.quit()


@pytest.fixture
def check(driver, tmp_path):
    """check(body, head="", name="page.html") -> [(what, where)] for a page written into tmp_path."""
    (tmp_path / "pic.png").write_bytes(PNG_1X1)
    (tmp_path / "other.html").write_text(PAGE.format(head="", body='<p id="there">other page</p>'))

    def run(body: str, head: str = "", name: str = "page.html") -> list[tuple[str, str]]:
        page = tmp_path / name
        page.write_text(PAGE.format(head=head, body=body))
        return [(p.what, p.where) for p in check_book.check_page(driver, tmp_path, page)]
    return run


def test_clean_page_passes(check):
    body = ('<p>It charged $0.55 per million tokens ($0.14 cached) and $2.19 per million; see <a href="other.html#there">there</a>, <a href="#intro">here</a> and '
            '<a href="https://example.org">the web</a>.</p><img src="pic.png" alt="a pixel">'
            '<pre><code>echo "$HOME" \\(not math\\)</code></pre>'
            + output_cell("tensor([1., 2.])") + output_cell("Text(0.5, 1.0, 'title')"))
    assert check(body) == []


def test_broken_image_is_reported_once(check):
    found = check('<img src="missing.png" alt="gone">')
    assert found == [("broken image", '#intro: "missing.png"')]


def test_raw_latex_in_prose_is_unrendered_math(check):
    found = check(r"<p>The loss is $\frac{1}{2}(y - \hat y)^2$ per example.</p>")
    assert [what for what, _ in found] == ["unrendered math"]
    assert "raw LaTeX" in found[0][1] and r"\frac{1}{2}" in found[0][1]


@pytest.mark.parametrize("text", ["$x^2$", "$W$", "$$", r"\(a+b\)", r"\begin{align}", "$h_t = f(h_{t-1})$"])
def test_each_form_of_raw_latex_is_found(check, text):
    assert [what for what, _ in check(f"<p>We have {text} here.</p>")] == ["unrendered math"]


def test_formula_without_mathjax_is_unrendered_math(check):
    found = check(r'<p>Inline <span class="math notranslate nohighlight">\(x^2\)</span>.</p>'
                  r'<div class="math notranslate nohighlight">\[\sum_i x_i\]</div>')
    assert found == [("unrendered math", r'#intro: MathJax did not load; 2 formulas shown as raw LaTeX, '
                                         r'the first "\(x^2\)"')]


MATHJAX = importlib.util.find_spec("sphinx-mathjax-offline")


@pytest.mark.skipif(MATHJAX is None, reason="needs sphinx-mathjax-offline (the book extra)")
def test_formulas_typeset_by_offline_mathjax_pass(check):
    mathjax = Path(MATHJAX.origin).parent / "static" / "mathjax" / "tex-chtml.js"
    head = ("<script>window.MathJax = {options: {processHtmlClass: 'tex2jax_process|mathjax_process|math'}}"
            f'</script><script defer src="{mathjax.as_uri()}"></script>')
    body = (r'<p>Inline <span class="math notranslate nohighlight">\(x^2\)</span>.</p>'
            r'<div class="math notranslate nohighlight">\[\sum_i x_i\]</div>')
    assert check(body, head) == []


def test_console_error_and_uncaught_exception_are_console_errors(check):
    found = check("<script>console.error('Got invalid theme mode');</script>"
                  "<script>throw new Error('kaboom');</script>")
    assert [what for what, _ in found] == ["console error", "console error"]
    assert "Got invalid theme mode" in found[0][1] and "Uncaught Error: kaboom" in found[1][1]


def test_every_page_is_opened_as_by_a_first_time_visitor(check):
    """A page that errors only when its storage is empty errors every time: storage is cleared."""
    script = ("<script>if (!localStorage.getItem('mode')) console.error('no mode yet');"
              "localStorage.setItem('mode', 'auto');</script>")
    assert [what for what, _ in check(script)] == ["console error"]
    assert [what for what, _ in check(script)] == ["console error"]


def test_traceback_output_is_an_error_output(check):
    found = check(output_cell("Traceback (most recent call last):\n  ...\nValueError: bad shape", "traceback")
                  + output_cell("some log\nRuntimeError: CUDA out of memory", "stderr"))
    assert found == [("error output", '#intro, cell 1: "ValueError: bad shape"'),
                     ("error output", '#intro, cell 2: "RuntimeError: CUDA out of memory"')]


def test_widget_repr_in_an_output_is_a_widget_shown_as_text(check):
    found = check(output_cell("VBox(children=(FloatSlider(value=1.0, description='w'), Output()))"))
    assert found == [("widget shown as text",
                      '''#intro, cell 1: "VBox(children=(FloatSlider(value=1.0, description='w'), Output()))"''')]


def test_markdown_table_left_as_a_paragraph_is_markdown_shown_as_text(check):
    found = check('<p>| task | points |\n| --- | --- |\n| <code>ch01_fit</code> | 4 |</p>'
                  '<table><tr><td>| --- |</td></tr></table><pre>| --- | in code is fine |</pre>')
    assert len(found) == 1 and found[0][0] == "Markdown shown as text" and "| --- | --- |" in found[0][1]
    found = check('<p>| task | points | \u2014 | \u2014 | <code>ch01_fit</code> | 4 |</p>')  # --- made em dashes
    assert [what for what, _ in found] == ["Markdown shown as text"]


def test_internal_links_that_do_not_resolve_are_broken_links(check):
    found = check('<a href="nowhere.html">a</a> <a href="other.html#gone">b</a> <a href="#missing">c</a> '
                  '<a href="../outside.html">d</a>')
    assert [what for what, _ in found] == ["broken link"] * 4, found
    assert "no such file" in found[0][1] and "no anchor #gone" in found[1][1]
    assert "no anchor #missing" in found[2][1]
    assert "no such file" in found[3][1] or "outside the built book" in found[3][1]


def test_redirect_page_needs_only_its_target(driver, tmp_path):
    (tmp_path / "intro.html").write_text(PAGE.format(head="", body="<p>intro</p>"))
    for target, found in [("intro.html", []), ("gone.html", ["broken link"])]:
        (tmp_path / "index.html").write_text(f'<meta http-equiv="Refresh" content="0; url={target}" />')
        assert [p.what for p in check_book.check_page(driver, tmp_path, tmp_path / "index.html")] == found


def test_main_prints_a_line_per_problem_a_summary_and_fails(tmp_path, capsys):
    book, shots = tmp_path / "html", tmp_path / "shots"
    (book / "chapter").mkdir(parents=True)
    (book / "index.html").write_text(PAGE.format(head="", body='<a href="chapter/page.html">chapter</a>'))
    (book / "chapter" / "page.html").write_text(PAGE.format(head="", body='<img src="gone.png">'))
    assert check_book.main([str(book), "--out", str(shots)]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == 'chapter/page.html: broken image: #intro: "gone.png"'
    assert lines[1].startswith("check-book: 2 pages, 1 problem (1 broken image)")
    assert sorted(p.name for p in shots.iterdir()) == ["chapter__page.png", "index.png"]

    (book / "chapter" / "page.html").write_text(PAGE.format(head="", body="<p>fixed</p>"))
    assert check_book.main([str(book), "--out", str(shots)]) == 0
