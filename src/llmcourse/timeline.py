"""A dated, sourced timeline of AI, from the Dartmouth proposal to open reasoning models.

Every milestone is an :class:`Event` with its year, month (when a primary source
fixes it), a one-line description and the primary source (paper, report or official
announcement) that backs the date. ``events()`` filters the list by category,
``plot_timeline`` draws a static Matplotlib figure, and ``timeline_html`` writes a
self-contained interactive SVG (no internet, no external JavaScript) that works in
JupyterLab and in the static HTML book.

Sources: each event's ``source`` field. The shaded AI winters use the conventional
dates of popular histories (about 1974-1980 and 1987-1993; the phrase "AI winter" dates
from a 1984 AAAI debate, Crevier, *AI: The Tumultuous History of the Search for
Artificial Intelligence*, 1993). The first is disputed: Haigh, "How the AI Boom Went
Bust", Communications of the ACM (2024), finds steady growth in the 1970s and a single
long slump after the expert-system bubble of the 1980s.

Taught in: book/01-history
"""

from __future__ import annotations

import hashlib
import html
import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

CATEGORIES = ("foundations", "symbolic", "connectionist", "winter", "deep learning", "LLM")
_COLORS = {"foundations": "#000000", "symbolic": "#E69F00", "connectionist": "#009E73",
           "winter": "#56B4E9", "deep learning": "#0072B2", "LLM": "#D55E00"}
_MONTHS = "Jan Feb Mar Apr May Jun Jul Aug Sep Oct Nov Dec".split()
WINTERS = ((1974, 1980), (1987, 1993))  # conventional spans of popular histories; the first is disputed


@dataclass(frozen=True)
class Event:
    """One milestone. ``month`` is 1-12, or None when only the year is certain."""

    year: int
    month: int | None
    title: str
    what: str
    category: str
    source: str

    def __post_init__(self):
        if self.category not in CATEGORIES:
            raise ValueError(f"category must be one of {CATEGORIES}, got {self.category!r}")
        if self.month is not None and not 1 <= self.month <= 12:
            raise ValueError(f"month must be 1-12 or None, got {self.month}")

    @property
    def date(self) -> str:
        """'Aug 1955', or '1956' when the month is unknown."""
        return f"{_MONTHS[self.month - 1]} {self.year}" if self.month else str(self.year)

    @property
    def when(self) -> float:
        """Fractional year used to place and sort the event (mid-year when month is None)."""
        return self.year + ((self.month - 0.5) / 12 if self.month else 0.5)


E = Event
_EVENTS = (
    E(1943, None, "McCulloch-Pitts neuron", "A logical model of a neuron: a threshold unit over "
      "binary inputs; networks of them compute logical functions.", "foundations",
      "McCulloch & Pitts, Bull. Math. Biophysics 5:115-133 (1943)"),
    E(1950, 10, "Turing's 'imitation game'", "Turing asks 'Can machines think?' and proposes a "
      "behavioural test instead.", "foundations", "Turing, Mind 59(236):433-460 (Oct 1950)"),
    E(1955, 8, "'Artificial intelligence' is coined", "McCarthy, Minsky, Rochester and Shannon "
      "propose a summer study of 'artificial intelligence' (dated 31 Aug 1955).", "foundations",
      "McCarthy et al., A Proposal for the Dartmouth Summer Research Project on AI (1955)"),
    E(1956, None, "Dartmouth workshop", "The proposed two-month study meets at Dartmouth College "
      "in the summer of 1956: the founding meeting of AI as a field.", "foundations",
      "McCarthy et al. (1955) proposal; Moor, AI Magazine 27(4):87-91 (2006)"),
    E(1956, 9, "Logic Theorist", "Newell and Simon's program proves theorems of Principia "
      "Mathematica by heuristic search over symbols.", "symbolic",
      "Newell & Simon, IRE Trans. Information Theory IT-2(3):61-79 (1956)"),
    E(1958, None, "Perceptron", "Rosenblatt's trainable threshold unit learns its weights from "
      "labelled examples by a mistake-driven rule.", "connectionist",
      "Rosenblatt, Psychological Review 65(6):386-408 (1958)"),
    E(1965, None, "First deep networks", "Ivakhnenko and Lapa train multi-layer networks layer "
      "by layer (the group method of data handling).", "connectionist",
      "Ivakhnenko & Lapa, Cybernetic Predicting Devices (1965)"),
    E(1966, 1, "ELIZA", "Weizenbaum's pattern-matching chatbot imitates a psychotherapist.",
      "symbolic", "Weizenbaum, Communications of the ACM 9(1):36-45 (Jan 1966)"),
    E(1969, None, "'Perceptrons' (Minsky & Papert)", "Proves that perceptrons whose fixed "
      "feature detectors each see only a few inputs cannot compute parity (XOR is its "
      "smallest case) or connectedness; funding for neural nets dwindles.",
      "connectionist", "Minsky & Papert, Perceptrons, MIT Press (1969); Russell & Norvig "
      "(2020), sec. 1.3"),
    E(1973, None, "Lighthill report", "A UK review finds that AI has not delivered the impact it "
      "promised and British funding is cut; popular histories date a 'first AI winter' to "
      "about 1974-1980, which Haigh (2024) disputes.", "winter",
      "Lighthill, Artificial Intelligence: A General Survey, Science Research Council (1973); "
      "Crevier (1993)"),
    E(1974, None, "Werbos's thesis", "Werbos's Harvard PhD thesis describes reverse-mode "
      "differentiation for training neural networks (published for networks in 1982).",
      "connectionist", "Werbos, Beyond Regression, PhD thesis, Harvard University (1974)"),
    E(1976, None, "MYCIN expert system", "Hundreds of hand-written if-then rules diagnose blood "
      "infections and recommend antibiotics, with certainty factors.", "symbolic",
      "Shortliffe, Computer-Based Medical Consultations: MYCIN, Elsevier (1976)"),
    E(1980, None, "Neocognitron", "Fukushima's layered network of local feature detectors: an "
      "ancestor of convolutional networks.", "connectionist",
      "Fukushima, Biological Cybernetics 36:193-202 (1980)"),
    E(1982, None, "R1/XCON in commercial use", "A rule-based system configures DEC's VAX "
      "computers in daily use: expert systems become an industry.", "symbolic",
      "McDermott, Artificial Intelligence 19(1):39-88 (1982)"),
    E(1986, 10, "Backpropagation popularised", "Rumelhart, Hinton and Williams show that "
      "gradient descent through hidden layers learns useful internal representations.",
      "connectionist", "Rumelhart, Hinton & Williams, Nature 323:533-536 (9 Oct 1986)"),
    E(1987, None, "Second AI winter", "The market for Lisp machines and expert systems "
      "collapses; funding dries up again (about 1987-1993; Haigh sees a two-decade slump).",
      "winter", "Russell & Norvig, Artificial Intelligence: A Modern Approach, 4th ed., "
      "sec. 1.3 (2020); Haigh, Communications of the ACM (2024)"),
    E(1989, None, "Convolutional net reads ZIP codes", "LeCun et al. train a convolutional "
      "network with backpropagation on handwritten digits.", "connectionist",
      "LeCun et al., Neural Computation 1(4):541-551 (1989)"),
    E(1997, 5, "Deep Blue beats Kasparov", "IBM's chess machine wins a six-game match against "
      "the world champion by massive search and a hand-crafted evaluation.", "symbolic",
      "Campbell, Hoane & Hsu, Artificial Intelligence 134(1-2):57-83 (2002)"),
    E(1997, 11, "LSTM", "Hochreiter and Schmidhuber's gated memory cell eases the vanishing "
      "gradient problem of recurrent networks.", "connectionist",
      "Hochreiter & Schmidhuber, Neural Computation 9(8):1735-1780 (1997)"),
    E(1998, 11, "LeNet-5", "Gradient-based learning of a convolutional network for document "
      "recognition; a cheque reader built on it is deployed commercially.", "connectionist",
      "LeCun, Bottou, Bengio & Haffner, Proc. IEEE 86(11):2278-2324 (Nov 1998)"),
    E(2006, 7, "Deep belief nets", "Hinton, Osindero and Teh pretrain deep networks layer by "
      "layer: the start of the deep-learning revival.", "deep learning",
      "Hinton, Osindero & Teh, Neural Computation 18(7):1527-1554 (2006)"),
    E(2009, 6, "ImageNet", "A large labelled image database; its yearly challenge (ILSVRC, from "
      "2010: 1.2M training images, 1000 classes) becomes vision's benchmark.", "deep learning",
      "Deng et al., CVPR 2009; Russakovsky et al., IJCV 115:211-252 (2015)"),
    E(2010, None, "DeepMind founded", "Demis Hassabis, Shane Legg and Mustafa Suleyman found "
      "DeepMind in London; Google acquires it in 2014.", "deep learning",
      "Suleyman & Bhaskar, The Coming Wave, Crown (2023); Pichai, Google blog (20 Apr 2023)"),
    E(2012, None, "AlexNet wins ImageNet", "A GPU-trained convolutional network cuts the top-5 "
      "error of ILSVRC-2012 to 15.3% (runner-up 26.2%).", "deep learning",
      "Krizhevsky, Sutskever & Hinton, NeurIPS 25 (2012)"),
    E(2013, 1, "word2vec", "Mikolov et al. learn word vectors whose differences capture "
      "analogies (king - man + woman ~ queen).", "deep learning",
      "Mikolov et al., arXiv:1301.3781 (2013)"),
    E(2014, 6, "Generative adversarial networks", "A generator and a discriminator trained "
      "against each other produce realistic samples.", "deep learning",
      "Goodfellow et al., arXiv:1406.2661; NeurIPS 27 (2014)"),
    E(2014, 9, "Bahdanau attention", "The decoder learns where to look in the source sentence, "
      "removing the fixed-vector bottleneck of seq2seq.", "deep learning",
      "Bahdanau, Cho & Bengio, arXiv:1409.0473; ICLR 2015"),
    E(2014, 9, "Sequence to sequence", "An LSTM encoder-decoder translates English to French "
      "end to end (with Cho et al.'s 2014 RNN encoder-decoder).", "deep learning",
      "Sutskever, Vinyals & Le, arXiv:1409.3215; NeurIPS 27 (2014)"),
    E(2015, 2, "DQN plays Atari", "One deep Q-network learns 49 Atari games from pixels and "
      "score, by reinforcement learning.", "deep learning",
      "Mnih et al., Nature 518:529-533 (2015)"),
    E(2015, 12, "ResNet", "Residual connections make networks of 152 layers trainable; they "
      "win ILSVRC-2015.", "deep learning", "He, Zhang, Ren & Sun, arXiv:1512.03385; CVPR 2016"),
    E(2016, 3, "AlphaGo beats Lee Sedol", "Policy and value networks plus Monte Carlo tree "
      "search win 4-1 against a top Go professional in Seoul.", "deep learning",
      "Silver et al., Nature 529:484-489 (2016); Silver et al., Nature 550:354-359 (2017)"),
    E(2017, 4, "TPU paper", "Google describes its inference ASIC: 15-30x faster and 30-80x "
      "better performance per watt than contemporary CPUs and GPUs.", "deep learning",
      "Jouppi et al., arXiv:1704.04760; ISCA 2017"),
    E(2017, 6, "Transformer", "'Attention Is All You Need': attention without recurrence; the "
      "architecture of almost all later LLMs.", "deep learning",
      "Vaswani et al., arXiv:1706.03762; NeurIPS 30 (2017)"),
    E(2017, 10, "AlphaGo Zero", "Learns Go from self-play alone, without human games, and "
      "beats the version that defeated Lee Sedol 100-0.", "deep learning",
      "Silver et al., Nature 550:354-359 (2017)"),
    E(2018, 6, "GPT-1", "OpenAI pretrains a 12-layer Transformer decoder (about 117M parameters) "
      "on books, then fine-tunes it per task.", "LLM",
      "Radford et al., Improving Language Understanding by Generative Pre-Training (2018)"),
    E(2018, 10, "BERT", "A bidirectional Transformer encoder pretrained by masked language "
      "modelling (110M and 340M parameters).", "LLM",
      "Devlin et al., arXiv:1810.04805; NAACL 2019"),
    E(2018, 12, "AlphaZero", "One algorithm masters chess, shogi and Go by self-play.",
      "deep learning", "Silver et al., Science 362:1140-1144 (2018)"),
    E(2019, 2, "GPT-2", "A 1.5B-parameter language model trained on WebText; released in "
      "stages over 2019.", "LLM",
      "Radford et al., Language Models are Unsupervised Multitask Learners (2019)"),
    E(2019, 3, "The Bitter Lesson", "Sutton: general methods that scale with computation beat "
      "methods that build in human knowledge.", "deep learning",
      "Sutton, 'The Bitter Lesson', incompleteideas.net (13 Mar 2019)"),
    E(2020, 1, "Scaling laws", "Test loss falls as a power law in parameters, data and "
      "compute.", "LLM", "Kaplan et al., arXiv:2001.08361 (2020)"),
    E(2020, 5, "GPT-3", "175B parameters; does new tasks from a few examples in the prompt "
      "(in-context learning), without any weight update.", "LLM",
      "Brown et al., arXiv:2005.14165; NeurIPS 33 (2020)"),
    E(2020, 11, "AlphaFold 2 at CASP14", "Predicts protein structures with accuracy close to "
      "experiment.", "deep learning", "Jumper et al., Nature 596:583-589 (2021)"),
    E(2022, 3, "InstructGPT", "GPT-3 fine-tuned on demonstrations and then by RLHF; raters "
      "prefer the 1.3B model to the 175B GPT-3.", "LLM",
      "Ouyang et al., arXiv:2203.02155; NeurIPS 35 (2022)"),
    E(2022, 3, "Chinchilla", "Compute-optimal training: about 20 tokens per parameter.", "LLM",
      "Hoffmann et al., arXiv:2203.15556 (2022)"),
    E(2022, 11, "ChatGPT", "OpenAI releases a chat model tuned with RLHF (30 Nov 2022); it "
      "makes LLMs a mass-market product.", "LLM",
      "OpenAI, 'Introducing ChatGPT', blog post (30 Nov 2022)"),
    E(2023, 2, "LLaMA", "Meta's LLaMA (Large Language Model Meta AI), 7B-65B parameters, trained "
      "on public data only; weights given to researchers.", "LLM",
      "Touvron et al., arXiv:2302.13971 (2023)"),
    E(2023, 3, "ERNIE Bot", "Baidu presents 文心一言 (ERNIE Bot), China's first ChatGPT-style "
      "assistant; it opens to the public on 31 Aug 2023.", "LLM",
      "Semafor (16 Mar 2023); Al Jazeera (31 Aug 2023)"),
    E(2023, 3, "GPT-4", "A large multimodal model; OpenAI does not disclose its size, data or "
      "architecture.", "LLM", "OpenAI, GPT-4 Technical Report, arXiv:2303.08774 (2023)"),
    E(2023, 7, "Llama 2", "Open-weight 7B-70B models, with chat versions tuned by RLHF.", "LLM",
      "Touvron et al., arXiv:2307.09288 (2023)"),
    E(2024, 9, "OpenAI o1", "A reasoning model trained by reinforcement learning to think in a "
      "long chain of thought before it answers.", "LLM",
      "OpenAI, 'Learning to Reason with LLMs', blog post (12 Sep 2024)"),
    E(2024, 12, "DeepSeek-V3", "A 671B-parameter mixture-of-experts model (37B active per "
      "token) with a 128K-token context, released with open weights.", "LLM",
      "DeepSeek-AI, arXiv:2412.19437 (2024)"),
    E(2025, 1, "DeepSeek-R1", "Open-weight reasoning model trained with large-scale RL on top "
      "of DeepSeek-V3; close to OpenAI o1 on maths and code.", "LLM",
      "DeepSeek-AI, arXiv:2501.12948 (2025)"),
)
del E


def events(categories: str | Iterable[str] | None = None) -> list[Event]:
    """The milestones in time order, optionally only those of some categories.

    ``categories``: None (all), one name, or several names from ``CATEGORIES``.
    Returns a new list of :class:`Event` sorted by date (stable for equal dates).
    """
    wanted = set(CATEGORIES)
    if categories is not None:
        wanted = {categories} if isinstance(categories, str) else set(categories)
        unknown = wanted - set(CATEGORIES)
        if unknown:
            raise ValueError(f"unknown categories {sorted(unknown)}; choose from {CATEGORIES}")
    return sorted((e for e in _EVENTS if e.category in wanted), key=lambda e: e.when)


def _check_events(evs) -> list[Event]:
    evs = list(evs)
    if not evs:
        raise ValueError("need at least one event")
    for e in evs:
        if not isinstance(e, Event):
            raise TypeError(f"expected Event objects, got {type(e).__name__}")
    return evs


def plot_timeline(evs: Sequence[Event], ax=None):
    """A static timeline: one row per event, the dot at its date, coloured by category.

    Labels sit right of the dot before 1990 and left of it afterwards, so the rows form a
    staircase that shows how the pace quickened. AI winters are shaded. Returns the Axes.
    """
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    evs = _check_events(evs)
    if ax is None:
        _, ax = plt.subplots(figsize=(9, 0.24 * len(evs) + 1.2))
    for start, end in WINTERS:
        ax.axvspan(start, end, color=_COLORS["winter"], alpha=0.15, lw=0)
    for i, e in enumerate(evs):
        ax.plot(e.when, i, "o", color=_COLORS[e.category], ms=6, zorder=3)
        right = e.year < 1990
        ax.annotate(f"{e.date}  {e.title}", (e.when, i), xytext=(7 if right else -7, 0),
                    textcoords="offset points", ha="left" if right else "right", va="center",
                    fontsize=8)
    ax.set_ylim(len(evs) - 0.5, -0.5)
    lo, hi = min(e.year for e in evs), max(e.year for e in evs)
    ax.set_xlim(lo - 3, hi + 3)
    ax.set_yticks([])
    ax.grid(axis="y", visible=False)
    ax.set_xlabel("year")
    used = [c for c in CATEGORIES if any(e.category == c for e in evs)]
    handles = [Line2D([], [], marker="o", ls="", color=_COLORS[c], label=c) for c in used]
    ax.legend(handles=handles, loc="upper right", fontsize=8, title="category")
    return ax


def _x(when: float, left: float, right: float) -> float:
    """Piecewise-linear year -> pixel map: 1940-2010 on 45% of the width, 2010-2026 on 55%."""
    if when < 2010:
        return left + (right - left) * 0.45 * (max(when, 1940) - 1940) / 70
    return left + (right - left) * (0.45 + 0.55 * (min(when, 2026) - 2010) / 16)


_CALLS = itertools.count()


def timeline_html(evs: Sequence[Event]) -> str:
    """A self-contained interactive SVG timeline (no external files, no internet).

    One lane per category; hover, focus (Tab key) or click a dot to show its details;
    buttons hide or show categories. Element ids carry a suffix made from the events and
    a call counter, so several timelines can share a page and a re-run gives the same HTML. Display it with ``IPython.display.HTML(timeline_html(...))``.
    Where scripts do not run (an untrusted notebook), each dot still has a native tooltip.
    """
    evs = _check_events(evs)
    digest = hashlib.sha256(repr(evs).encode()).hexdigest()[:6]
    uid = f"tl-{digest}-{next(_CALLS)}"
    cats = [c for c in CATEGORIES if any(e.category == c for e in evs)]
    width, left, right, row, top = 920, 110, 900, 13, 28
    # greedy stacking: in each lane, put a dot in the first sub-row where it does not overlap
    placed, lane_rows = [], {}
    for i, e in enumerate(evs):
        x = _x(e.when, left, right)
        rows = lane_rows.setdefault(e.category, [])
        k = next((k for k, last in enumerate(rows) if x - last >= 13), len(rows))
        if k == len(rows):
            rows.append(x)
        else:
            rows[k] = x
        placed.append((i, e, x, k))
    lane_y, y = {}, top
    for c in cats:
        lane_y[c] = y
        y += max(1, len(lane_rows[c])) * row + 14
    height = y + 24
    esc = html.escape
    parts = [f'<svg viewBox="0 0 {width} {height}" width="100%" role="img" '
             f'aria-label="Timeline of AI milestones">']
    for start, end in WINTERS:
        x0, x1 = _x(start, left, right), _x(end, left, right)
        parts.append(f'<rect x="{x0:.1f}" y="{top - 10}" width="{x1 - x0:.1f}" '
                     f'height="{height - top - 14}" fill="{_COLORS["winter"]}" opacity="0.15"/>')
    for year in (1940, 1960, 1980, 2000, 2010, 2014, 2018, 2022, 2026):
        xt = _x(year, left, right)
        parts.append(f'<line x1="{xt:.1f}" x2="{xt:.1f}" y1="{top - 10}" y2="{height - 14}" '
                     f'stroke="#ccc"/><text x="{xt:.1f}" y="{height - 2}" '
                     f'text-anchor="middle" font-size="11">{year}</text>')
    for c in cats:
        parts.append(f'<text x="4" y="{lane_y[c] + 4}" font-size="12" class="lane" '
                     f'data-cat="{esc(c)}">{esc(c)}</text>')
    for i, e, x, k in placed:
        label = f"{e.date}: {e.title}"
        parts.append(
            f'<circle class="ev" cx="{x:.1f}" cy="{lane_y[e.category] + k * row}" r="5.5" '
            f'fill="{_COLORS[e.category]}" tabindex="0" data-i="{i}" data-cat="{esc(e.category)}" '
            f'aria-label="{esc(label)}"><title>{esc(label)}</title></circle>')
    parts.append("</svg>")
    buttons = "".join(f'<button type="button" data-cat="{esc(c)}" aria-pressed="true" '
                      f'style="border-color:{_COLORS[c]}">{esc(c)}</button>' for c in cats)
    details = "".join(
        f'<div class="d" data-i="{i}" hidden><b>{esc(e.title)}</b> '
        f'<span class="m">{esc(e.date)} &middot; {esc(e.category)}</span><br>{esc(e.what)}'
        f'<br><span class="m">Source: {esc(e.source)}</span></div>' for i, e in enumerate(evs))
    css = (f"#{uid}{{font-family:sans-serif;font-size:13px;max-width:{width}px}}"
           f"#{uid} button{{margin:2px;padding:2px 8px;border:2px solid;border-radius:10px;"
           f"background:#fff;cursor:pointer}}#{uid} button[aria-pressed=false]{{opacity:.4}}"
           f"#{uid} .ev{{cursor:pointer}}#{uid} .ev:focus,#{uid} .ev.on{{stroke:#000;"
           f"stroke-width:2.5;outline:none}}#{uid} .m{{color:#555}}"
           f"#{uid} .panel{{min-height:4.5em;border-top:1px solid #ccc;padding:6px}}")
    js = ("(function(){var r=document.getElementById('%s')||(document.currentScript&&"
          "document.currentScript.parentNode);if(!r)return;"
          "var dots=r.querySelectorAll('.ev'),ds=r.querySelectorAll('.d');"
          "function show(i){r.querySelector('.hint').hidden=true;ds.forEach(function(d){d.hidden=d.getAttribute('data-i')!==i;});"
          "dots.forEach(function(c){c.classList.toggle('on',c.getAttribute('data-i')===i);});}"
          "dots.forEach(function(c){var f=function(){show(c.getAttribute('data-i'));};"
          "c.addEventListener('mouseenter',f);c.addEventListener('focus',f);"
          "c.addEventListener('click',f);});"
          "r.querySelectorAll('button').forEach(function(b){b.addEventListener('click',function(){"
          "var cat=b.getAttribute('data-cat'),on=b.getAttribute('aria-pressed')!=='true';"
          "b.setAttribute('aria-pressed',on?'true':'false');"
          "r.querySelectorAll('[data-cat]').forEach(function(el){if(el.tagName!=='BUTTON'&&"
          "el.getAttribute('data-cat')===cat){el.style.display=on?'':'none';}});});});})();"
          % uid)
    return (f'<div id="{uid}" class="llmcourse-timeline"><style>{css}</style>'
            f'<div class="filters">Show: {buttons}</div>{"".join(parts)}'
            f'<div class="panel" aria-live="polite"><span class="m hint">Hover over, tab to or '
            f'click a dot to see the event.</span>{details}</div><script>{js}</script></div>')
