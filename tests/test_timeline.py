"""The AI timeline: sorted, sourced, the required milestones, and a self-contained HTML view."""

import re

import matplotlib
import pytest

matplotlib.use("Agg")

from llmcourse.timeline import CATEGORIES, Event, events, plot_timeline, timeline_html  # noqa: E402

pytestmark = pytest.mark.ch01

# (words that must appear in the title, year, month or None) -- CHAPTERS.md section 1
REQUIRED = [
    ("artificial intelligence", 1955, 8),
    ("dartmouth", 1956, None),
    ("perceptron", 1958, None),
    ("perceptrons", 1969, None),
    ("lighthill", 1973, None),
    ("mycin", 1976, None),
    ("backpropagation", 1986, 10),
    ("zip codes", 1989, None),
    ("lenet-5", 1998, 11),
    ("deep belief", 2006, 7),
    ("alexnet", 2012, None),
    ("sequence to sequence", 2014, 9),
    ("bahdanau", 2014, 9),
    ("alphago beats", 2016, 3),
    ("transformer", 2017, 6),
    ("bert", 2018, 10),
    ("gpt-1", 2018, 6),
    ("gpt-2", 2019, 2),
    ("gpt-3", 2020, 5),
    ("instructgpt", 2022, 3),
    ("chatgpt", 2022, 11),
    ("llama", 2023, 2),
    ("gpt-4", 2023, 3),
    ("deepseek-r1", 2025, 1),
]


def _find(title_words):
    hits = [e for e in events() if title_words in e.title.lower()]
    assert hits, f"no event whose title contains {title_words!r}"
    return hits[0]


@pytest.mark.parametrize("words,year,month", REQUIRED)
def test_timeline_required_milestone_known_answer(words, year, month):
    e = _find(words)
    assert (e.year, e.month) == (year, month), f"{e.title}: got {e.date}, want {year}/{month}"


def test_timeline_events_sorted_and_sourced():
    evs = events()
    assert len(evs) >= 40
    keys = [(e.year, e.month or 0) for e in evs]
    whens = [e.when for e in evs]
    assert whens == sorted(whens)
    assert [k[0] for k in keys] == sorted(k[0] for k in keys)
    for e in evs:
        assert e.category in CATEGORIES
        assert len(e.source) > 10 and re.search(r"(19|20)\d\d", e.source), e.title
        assert e.title and len(e.what) > 20, e.title
    assert len({e.title for e in evs}) == len(evs), "duplicate titles"


def test_timeline_key_numbers_correct():
    """Numbers the course corrects elsewhere (SEED_CONCEPTS part 2) must be right here."""
    assert "117M" in _find("gpt-1").what
    assert "175B" in _find("gpt-3").what
    assert "30 Nov 2022" in _find("chatgpt").what
    assert "7B-65B" in _find("llama").what
    assert "not disclose" in _find("gpt-4").what
    assert "every" not in _find("transformer").what, "not every later LLM is a Transformer (Mamba)"
    assert "disputes" in _find("lighthill").what, "the first AI winter is contested (Haigh 2024)"
    assert (_find("ernie bot").year, _find("ernie bot").month) == (2023, 3)
    assert _find("werbos").year == 1974


def test_timeline_filter_by_category():
    llm = events("LLM")
    assert llm and all(e.category == "LLM" for e in llm)
    two = events(["symbolic", "winter"])
    assert {e.category for e in two} == {"symbolic", "winter"}
    assert len(events()) == sum(len(events(c)) for c in CATEGORIES)
    with pytest.raises(ValueError, match="unknown categories"):
        events("robots")


def test_timeline_event_validates():
    with pytest.raises(ValueError):
        Event(2000, 13, "t", "w", "LLM", "s 2000")
    with pytest.raises(ValueError):
        Event(2000, None, "t", "w", "space", "s 2000")
    assert Event(1955, 8, "t", "w", "symbolic", "s").date == "Aug 1955"
    assert Event(1956, None, "t", "w", "symbolic", "s").date == "1956"


def test_timeline_html_self_contained():
    page = timeline_html(events())
    urls = re.findall(r"""(?:src|href)\s*=\s*["']?([^"'\s>]*)""", page, flags=re.I)
    assert not [u for u in urls if "http" in u.lower() or u.startswith("//")], urls
    assert "<link" not in page.lower() and "@import" not in page
    assert "<script src" not in page.lower()
    assert page.count("<svg") == 1 and page.count("<script>") == 1
    # one filter button per category, each with a pressed state
    buttons = re.findall(r'<button type="button" data-cat="([^"]+)" aria-pressed="true"', page)
    assert sorted(buttons) == sorted(CATEGORIES)
    # one focusable dot and one detail panel per event, with its source
    assert page.count('class="ev"') == len(events())
    assert page.count('tabindex="0"') == len(events())
    assert page.count('class="d"') == len(events())
    assert "Rumelhart, Hinton &amp; Williams" in page


def test_timeline_html_ids_unique_across_calls():
    a, b = timeline_html(events()), timeline_html(events("LLM"))
    ids_a = set(re.findall(r'id="([^"]+)"', a))
    ids_b = set(re.findall(r'id="([^"]+)"', b))
    assert ids_a and ids_b and not ids_a & ids_b
    (uid,) = ids_a
    assert f"getElementById('{uid}')" in a
    css_scopes = set(re.findall(r"#(tl-[0-9a-f]+-[0-9]+)", a))
    assert css_scopes == {uid}, "CSS must be scoped to this timeline only"
    # a filtered timeline shows only its categories
    assert re.findall(r'<button type="button" data-cat="([^"]+)"', b) == ["LLM"]


def test_timeline_html_escapes_text():
    e = Event(2000, 1, "a <b> & 'c'", "what <script>alert(1)</script> here", "LLM", "s <x> 2000")
    page = timeline_html([e])
    assert "<script>alert" not in page and "&lt;script&gt;" in page


def test_timeline_rejects_empty_or_wrong_type():
    with pytest.raises(ValueError):
        timeline_html([])
    with pytest.raises(TypeError):
        plot_timeline(["not an event"])


def test_plot_timeline_returns_axes():
    import matplotlib.pyplot as plt

    evs = events()
    ax = plot_timeline(evs)
    assert isinstance(ax, matplotlib.axes.Axes)
    assert len(ax.texts) == len(evs)
    plt.close(ax.figure)
    fig, given = plt.subplots()
    assert plot_timeline(events("winter"), ax=given) is given
    plt.close(fig)
