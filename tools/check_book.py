"""Open every page of the built book in headless Chromium and report what a reader would see broken.

    python -m tools.check_book [_build/html] [--out _build/check-book] [--page PATTERN ...]

Each page is opened offline (``file://``, as the README tells readers to open the book) with an
empty browser storage, as by a first-time visitor, and fails on:

- a broken image (the browser could not load or decode it);
- unrendered math: a formula MathJax did not typeset (or typeset as an error), or raw LaTeX
  (``$...$``, ``$$``, ``\\(``, ``\\begin{...}``) left as text outside code;
- an error output: a traceback, an error output block, or an error on stderr;
- a console error: any SEVERE entry in the browser's console (uncaught exceptions, ``console.error``,
  resources that failed to load);
- a widget shown as text: an ipywidgets repr such as ``VBox(children=(...`` in a cell output;
- Markdown shown as text: a table's ``| --- |`` rule left in a paragraph (a Markdown output the
  book did not render);
- an internal link that does not resolve: a missing file, a missing ``#anchor``, or a file outside
  the built book. (A redirect page, such as Jupyter Book's root index.html, only needs its target.)

It saves a screenshot of each whole page into the output folder, prints one line per problem
(``page: what: where``), then a summary, and exits with status 1 if it found any problem.
Needs Chromium and ChromeDriver (Debian: ``apt-get install chromium chromium-driver``) and selenium.
"""

from __future__ import annotations

import argparse
import base64
import re
import shutil
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urljoin, urlsplit

REPO = Path(__file__).resolve().parent.parent
# Flags for a headless Chromium on a machine with no network (and, in CI, running as root).
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--window-size=1280,1000"]
SKIPPED_DIRS = {"_static", "_sources", "_images", "_downloads"}
MAX_SHOT_HEIGHT = 15_000  # px per screenshot (Chromium's limit is 16384); a longer page gets several


@dataclass(frozen=True)
class Problem:
    page: str   # the page, relative to the book's root: "book/05-rnn/index.html"
    what: str   # the kind of problem: "broken image", "console error", ...
    where: str  # where on the page, with the offending text: '#section, cell 3: "VBox(children=(..."'

    def __str__(self) -> str:
        return f"{self.page}: {self.what}: {self.where}"


def find_browser() -> tuple[str, str] | None:
    """(chromium, chromedriver) paths found on PATH, or None if either is missing."""
    chromium = next(filter(None, map(shutil.which, ["chromium", "chromium-browser", "google-chrome"])), None)
    chromedriver = shutil.which("chromedriver")
    return (chromium, chromedriver) if chromium and chromedriver else None


def open_browser(chromium: str, chromedriver: str, profile: Path):
    """A headless Chromium driven by selenium, keeping every console message."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium  # explicit paths: selenium never tries to download a browser
    for flag in CHROMIUM_FLAGS + [f"--user-data-dir={profile}"]:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=chromedriver))
    driver.set_page_load_timeout(120)
    driver.set_script_timeout(120)
    return driver


# Runs in the page once it has loaded; calls back with what it found, or {"error": message}.
PAGE_SCRIPT = r"""
const done = arguments[arguments.length - 1];
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const cells = Array.from(document.querySelectorAll('.cell'));
const where = (el) => {
  const section = el.closest('section[id]');
  const cell = el.closest('.cell');
  return (section ? '#' + section.id : 'top of page') + (cell ? ', cell ' + (cells.indexOf(cell) + 1) : '');
};
const quote = (text) => '"' + text.replace(/\s+/g, ' ').trim().slice(0, 100) + '"';
const found = [];
const add = (what, el, detail) => found.push([what, where(el) + ': ' + detail]);

async function checkImages() {
  const broken = [];
  for (const img of document.images) img.loading = 'eager';
  await Promise.race([sleep(15000), Promise.all(Array.from(document.images).map((img) => img.complete ? null
    : new Promise((resolve) => { img.addEventListener('load', resolve); img.addEventListener('error', resolve); })))]);
  for (const img of document.images) {
    if (img.complete && img.naturalWidth > 0) continue;
    try { await img.decode(); } catch (e) { add('broken image', img, quote(img.getAttribute('src') || '(no src)')); broken.push(img.src); }
  }
  return broken;
}

async function checkMath() {
  const formulas = document.querySelectorAll('.math');
  if (!formulas.length) return;
  for (let i = 0; i < 100 && !(window.MathJax && MathJax.startup && MathJax.startup.promise); i++) await sleep(100);
  if (!(window.MathJax && MathJax.startup && MathJax.startup.promise)) {
    add('unrendered math', formulas[0], `MathJax did not load; ${formulas.length} formulas shown as raw LaTeX, `
        + 'the first ' + quote(formulas[0].textContent));
    return;
  }
  await Promise.race([MathJax.startup.promise.catch(() => null), sleep(60000)]);
  for (const el of formulas) {
    const error = el.querySelector('mjx-merror');
    if (error) add('math error', el, quote(error.getAttribute('data-mjx-error') || el.textContent));
    else if (!el.querySelector('mjx-container') && !el.matches('mjx-container')) add('unrendered math', el, quote(el.textContent));
  }
}

// LaTeX left as text: $$, \( \) \[ \], \begin{...}, \frac{..., $x^2$, $W$ (but not prices: "$5 ($4 cached)");
// code and typeset math excluded.
const RAW_LATEX = /\$\$|\\[()\[\]]|\\begin\{|\\[a-zA-Z]+\{|\$(?=\S)[^$\n]{0,200}?[\\^_{}][^$\n]{0,200}?(?<=\S)\$|\$[A-Za-z][^$\s]{0,30}\$/;
const NOT_PROSE = 'pre, code, kbd, samp, script, style, noscript, textarea, svg, .math, mjx-container, .highlight';
function checkRawLatex() {
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  for (let node = walker.nextNode(); node; node = walker.nextNode()) {
    const parent = node.parentElement;
    if (!parent || parent.closest(NOT_PROSE)) continue;
    const match = node.textContent.match(RAW_LATEX);
    if (match) add('unrendered math', parent, 'raw LaTeX ' + quote(node.textContent.slice(Math.max(0, match.index - 30))));
  }
}

const ERROR_TEXT = /Traceback \(most recent call last\)|^\s*\w*(Error|Exception)\b.*:|\bCell In\[\d+\]/m;
function checkOutputs() {
  for (const el of document.querySelectorAll('.output.traceback, .output.error, .output_error')) {
    const lines = el.innerText.split('\n').filter((line) => line.trim());
    add('error output', el, quote(lines[lines.length - 1] || 'empty error block'));
  }
  for (const el of document.querySelectorAll('.cell_output .output:not(.traceback):not(.error)')) {
    const match = el.innerText.match(ERROR_TEXT);
    if (match) add('error output', el, quote(el.innerText.slice(match.index)));
  }
}

// An ipywidgets repr printed instead of the widget (or its snapshot): VBox(children=(..., FloatSlider(value=...
const WIDGETS = 'Box|HBox|VBox|GridBox|Tab|Accordion|Stack|AppLayout|GridspecLayout|TwoByTwoLayout|Output|'
  + 'FloatSlider|IntSlider|FloatLogSlider|FloatRangeSlider|IntRangeSlider|SelectionSlider|SelectionRangeSlider|'
  + 'Dropdown|Select|SelectMultiple|Button|ToggleButton|ToggleButtons|RadioButtons|Checkbox|Play|IntProgress|'
  + 'FloatProgress|IntText|FloatText|BoundedIntText|BoundedFloatText|Textarea|ColorPicker|DatePicker|interactive';
const WIDGET_REPR = new RegExp('\\b(' + WIDGETS + ')\\((\\)|\\w+=)|\\b\\w+\\(children=\\(');
function checkWidgets() {
  for (const el of document.querySelectorAll('.cell_output .output, .cell_output pre')) {
    if (el.parentElement.closest('.cell_output .output')) continue;  // nested: counted once, at the outer block
    const match = el.innerText.match(WIDGET_REPR);
    if (match) add('widget shown as text', el, quote(el.innerText.slice(match.index)));
  }
}

// A Markdown table that reached the page as a paragraph of pipes: "| a | b |\n| --- | --- |" (a
// typographer may have turned each --- into an em dash)
const RAW_TABLE = /\|\s*(:?-{3,}:?|[\u2014\u2013]+)\s*\|/;
function checkRawMarkdown() {
  for (const el of document.querySelectorAll('main p, main li')) {
    if (el.closest('pre, code, table')) continue;
    const match = el.innerText.match(RAW_TABLE);
    if (match) add('Markdown shown as text', el, quote(el.innerText.slice(Math.max(0, match.index - 40))));
  }
}

function links() {
  return Array.from(document.querySelectorAll('a[href]'), (a) => [a.getAttribute('href'), a.href, where(a)]);
}

(async () => {
  const broken = await checkImages();
  await checkMath();
  checkRawLatex();
  checkOutputs();
  checkWidgets();
  checkRawMarkdown();
  const ids = Array.from(document.querySelectorAll('[id], a[name]'), (el) => el.id || el.getAttribute('name'));
  done({found, broken_images: broken, links: links(), ids});
})().catch((e) => done({error: String(e && e.stack || e)}));
"""


class _Ids(HTMLParser):
    """Collects the anchors (id and <a name>) of an HTML file."""

    def __init__(self):
        super().__init__()
        self.ids: set[str] = set()

    def handle_starttag(self, tag, attrs):
        for key, value in attrs:
            if value and (key == "id" or (tag == "a" and key == "name")):
                self.ids.add(value)


def anchors_of(path: Path, cache: dict[Path, set[str]]) -> set[str]:
    if path not in cache:
        parser = _Ids()
        parser.feed(path.read_text(encoding="utf-8", errors="replace"))
        cache[path] = parser.ids
    return cache[path]


def link_problems(root: Path, page: Path, links, live_ids: set[str], cache) -> list[tuple[str, str]]:
    """Internal links of `page` whose file or #anchor does not exist, or that leave the book."""
    problems = []
    for href, url, where in links:
        parts = urlsplit(url)
        if parts.scheme != "file":
            continue  # http(s), mailto, javascript: not the book's business offline
        target = Path(unquote(parts.path))
        if target.is_dir():
            target = target / "index.html"
        if not target.exists():
            problems.append(("broken link", f"{where}: href {href!r} (no such file)"))
        elif not target.resolve().is_relative_to(root.resolve()):
            problems.append(("broken link", f"{where}: href {href!r} points outside the built book"))
        elif parts.fragment and target.suffix == ".html":
            ids = live_ids | anchors_of(page, cache) if target == page else anchors_of(target, cache)
            if unquote(parts.fragment) not in ids:
                problems.append(("broken link", f"{where}: href {href!r} (no anchor #{unquote(parts.fragment)})"))
    return problems


_CONSOLE = re.compile(r"^(?P<source>\S+) (?:(?P<pos>\d+:\d+) |- )(?P<text>.*)$", re.S)


def console_problems(root: Path, entries, broken_images: list[str]) -> list[tuple[str, str]]:
    """SEVERE console entries, except failed loads of images already reported as broken."""
    problems = []
    for entry in entries:
        if entry.get("level") != "SEVERE":
            continue
        m = _CONSOLE.match(entry["message"])
        source, pos, text = (m["source"], m["pos"], m["text"]) if m else ("", None, entry["message"])
        if source in broken_images and "Failed to load resource" in text:
            continue
        source = source.removeprefix(root.resolve().as_uri() + "/").split("?")[0]
        where = source + (f":{pos}" if pos else "")
        problems.append(("console error", f"{where}: {text.strip()[:200]}"))
    return problems


def screenshot(driver, path: Path) -> None:
    """PNGs of the whole page: path, then path-2.png, ... for each further MAX_SHOT_HEIGHT of a long page."""
    size = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
    for i, top in enumerate(range(0, int(size["height"]), MAX_SHOT_HEIGHT)):
        clip = {"x": 0, "y": top, "width": size["width"], "scale": 1,
                "height": min(size["height"] - top, MAX_SHOT_HEIGHT)}
        shot = driver.execute_cdp_cmd("Page.captureScreenshot",
                                      {"format": "png", "captureBeyondViewport": True, "clip": clip})
        tile = path if i == 0 else path.with_name(f"{path.stem}-{i + 1}.png")
        tile.write_bytes(base64.b64decode(shot["data"]))


_REDIRECT = re.compile(r"""<meta\s+http-equiv=["']refresh["']\s+content=["']\d+;\s*url=([^"']+)""", re.I)


def check_page(driver, root: Path, page: Path, shots: Path | None = None, cache=None) -> list[Problem]:
    """Open one page as a first-time visitor would and list its problems."""
    name = page.relative_to(root).as_posix()
    cache = {} if cache is None else cache
    redirect = _REDIRECT.search(page.read_text(encoding="utf-8", errors="replace"))
    if redirect:  # Jupyter Book's root index.html: only its target needs to exist (it is checked itself)
        target = [(redirect[1], urljoin(page.resolve().as_uri(), redirect[1]), "redirect")]
        return [Problem(name, what, where) for what, where in link_problems(root, page.resolve(), target, set(), cache)]
    driver.get_log("browser")  # drop what earlier pages logged
    driver.get(page.resolve().as_uri())
    result = driver.execute_async_script(PAGE_SCRIPT)
    if "error" in result:
        return [Problem(name, "check failed", result["error"])]
    found = [tuple(item) for item in result["found"]]
    found += link_problems(root, page.resolve(), result["links"], set(result["ids"]), cache)
    found += console_problems(root, driver.get_log("browser"), result["broken_images"])
    if shots is not None:
        screenshot(driver, shots / (name.removesuffix(".html").replace("/", "__") + ".png"))
    driver.execute_script("localStorage.clear(); sessionStorage.clear();")  # next page: a new visitor
    return [Problem(name, what, where) for what, where in found]


def pages_of(root: Path, patterns: list[str] | None = None) -> list[Path]:
    pages = sorted(p for p in root.rglob("*.html") if not SKIPPED_DIRS & set(p.relative_to(root).parts))
    if patterns:
        pages = [p for p in pages if any(p.relative_to(root).match(pat) for pat in patterns)]
    return pages


def check_book(root: Path, shots: Path, patterns: list[str] | None = None,
               browser: tuple[str, str] | None = None, echo=print) -> list[Problem]:
    """Check every page under `root`, saving screenshots into `shots`; echo each problem as found."""
    chromium, chromedriver = browser or find_browser() or (None, None)
    if not chromium:
        raise SystemExit("check-book needs chromium and chromedriver on PATH "
                         "(Debian: apt-get install chromium chromium-driver)")
    shots.mkdir(parents=True, exist_ok=True)
    for old in shots.glob("*.png"):  # screenshots of an earlier run
        old.unlink()
    problems, cache = [], {}
    with tempfile.TemporaryDirectory(prefix="check-book-profile-") as profile:
        driver = open_browser(chromium, chromedriver, Path(profile))
        try:
            for page in pages_of(root, patterns):
                for problem in check_page(driver, root, page, shots, cache):
                    echo(problem)
                    problems.append(problem)
        finally:
            driver.quit()
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("root", nargs="?", type=Path, default=REPO / "_build" / "html", help="the built book")
    parser.add_argument("--out", type=Path, default=REPO / "_build" / "check-book", help="screenshots go here")
    parser.add_argument("--page", action="append", help="only pages matching this glob (repeatable)")
    args = parser.parse_args(argv)
    if not (args.root / "index.html").exists():
        print(f"check-book: no book at {args.root} (run `make book` first)", file=sys.stderr)
        return 2
    start = time.perf_counter()
    problems = check_book(args.root, args.out, args.page)
    n_pages = len(pages_of(args.root, args.page))
    kinds = ", ".join(f"{n} {what}" for what, n in Counter(p.what for p in problems).most_common())
    count = f"{len(problems)} problem{'' if len(problems) == 1 else 's'}" + (f" ({kinds})" if kinds else "")
    print(f"check-book: {n_pages} pages, {count}, {time.perf_counter() - start:.0f} s; screenshots in {args.out}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
