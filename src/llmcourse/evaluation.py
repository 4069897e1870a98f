"""Evaluating language models: answer matching, n-gram overlap, pass@k, multiple choice, contamination.

* :func:`normalize_answer`, :func:`exact_match`, :func:`token_f1`: SQuAD's answer metrics (Rajpurkar
  et al. 2016): lower case, drop punctuation and the articles a/an/the, then compare whole strings
  or the bag of words; with several gold answers the best one counts.
* :func:`bleu`: corpus BLEU (Papineni et al. 2002): clipped n-gram precisions for n = 1..N, their
  geometric mean, times a brevity penalty; words are whitespace-separated.
* :func:`rouge_n`, :func:`rouge_l`: ROUGE (Lin 2004) F-measures: n-gram overlap, and the longest
  common subsequence; lower-cased runs of letters and digits, the best of several references.
* :func:`pass_at_k`: Chen et al. (2021)'s unbiased estimator of the chance that at least one of k
  samples passes the unit tests, from n samples of which c passed: 1 - C(n-c, k) / C(n, k), in
  their numerically stable product form; :func:`naive_pass_at_k` is the biased 1 - (1 - c/n)^k.
* :func:`choice_logprobs`: multiple-choice scoring by log-likelihood: the model's log-probability
  of each option's tokens after the question (as in MMLU-style harnesses), summed or per token;
  :func:`make_choice_items` builds a small benchmark of such questions from the corpus's QA templates.
* :func:`ngram_overlap`: the share of an item's word n-grams that occur in a corpus, the test
  GPT-3 (Brown et al. 2020) used to find benchmark items that leaked into pretraining data.

Taught in: book/13-using-llms
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from llmcourse.corpus import COLORS, WORDS, make_qa_lines
from llmcourse.preference import sequence_logprobs

_PUNCT = set(string.punctuation)


def _check_str(x, name: str) -> str:
    if not isinstance(x, str):
        raise TypeError(f"{name} must be a str, got {type(x).__name__}")
    return x


def _golds(golds) -> list[str]:
    golds = [golds] if isinstance(golds, str) else list(golds)
    if not golds:
        raise ValueError("need at least one gold answer")
    return [_check_str(g, "a gold answer") for g in golds]


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lower case, punctuation removed, articles a/an/the removed, spaces collapsed.

    ``normalize_answer("The  Eiffel-Tower!")`` -> ``"eiffeltower"``.
    """
    text = "".join(ch for ch in _check_str(text, "text").lower() if ch not in _PUNCT)
    return " ".join(re.sub(r"\b(a|an|the)\b", " ", text).split())


def exact_match(prediction: str, golds: str | Sequence[str]) -> float:
    """1.0 if the normalised prediction equals a normalised gold answer, else 0.0."""
    pred = normalize_answer(prediction)
    return float(any(pred == normalize_answer(g) for g in _golds(golds)))


def token_f1(prediction: str, golds: str | Sequence[str]) -> float:
    """The best over gold answers of the F1 of the two bags of normalised words.

    precision = shared words / predicted words, recall = shared / gold words (each word counted
    as often as it occurs in both). If either side is empty, 1.0 when both are, else 0.0.
    """
    pred = normalize_answer(prediction).split()
    best = 0.0
    for g in _golds(golds):
        gold = normalize_answer(g).split()
        if not pred or not gold:
            best = max(best, float(pred == gold))
            continue
        shared = sum((Counter(pred) & Counter(gold)).values())
        if shared:
            p, r = shared / len(pred), shared / len(gold)
            best = max(best, 2 * p * r / (p + r))
    return best


def _ngrams(words: Sequence[str], n: int) -> Counter:
    return Counter(tuple(words[i:i + n]) for i in range(len(words) - n + 1))


def _check_n(n, name: str = "n") -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"{name} must be an int >= 1, got {n!r}")
    return n


def _pairs(predictions, references) -> list[tuple[str, list[str]]]:
    if isinstance(predictions, str) or isinstance(references, str):
        raise TypeError("predictions and references must be sequences (one reference list per prediction)")
    if len(predictions) != len(references) or not predictions:
        raise ValueError(f"need one reference list per prediction (and at least one), got "
                         f"{len(predictions)} and {len(references)}")
    return [(_check_str(p, "a prediction"), _golds(r)) for p, r in zip(predictions, references)]


def bleu(predictions: Sequence[str], references: Sequence[Sequence[str]], *, max_n: int = 4) -> float:
    """Corpus BLEU in [0, 1]: BP * exp(mean over n = 1..max_n of log p_n), no smoothing.

    p_n = sum over sentences of clipped n-gram matches / sum of predicted n-grams, where a predicted
    n-gram counts at most as often as in the reference that has it most. BP = exp(1 - r / c) if the
    predictions' total length c is below r, the total of the reference lengths closest to each
    prediction's (the shorter on a tie), else 1. Any p_n = 0 gives 0.
    """
    max_n = _check_n(max_n, "max_n")
    matches, totals = np.zeros(max_n), np.zeros(max_n)
    c = r = 0
    for pred, refs in _pairs(predictions, references):
        words, ref_words = pred.split(), [x.split() for x in refs]
        c += len(words)
        r += min((abs(len(x) - len(words)), len(x)) for x in ref_words)[1]
        for n in range(1, max_n + 1):
            got = _ngrams(words, n)
            most = Counter()
            for x in ref_words:
                most |= _ngrams(x, n)  # union of counters: the max count per n-gram
            matches[n - 1] += sum((got & most).values())
            totals[n - 1] += sum(got.values())
    if c == 0 or (matches == 0).any():
        return 0.0
    brevity = 1.0 if c > r else math.exp(1 - r / c)
    return float(brevity * math.exp(np.mean(np.log(matches / totals))))


def rouge_words(text: str) -> list[str]:
    """ROUGE's words: lower case, every run of characters other than a-z and 0-9 is a separator."""
    return re.sub(r"[^a-z0-9]+", " ", _check_str(text, "text").lower()).split()


def _f(shared: float, n_pred: int, n_ref: int) -> float:
    if shared == 0:
        return 0.0
    p, r = shared / n_pred, shared / n_ref
    return 2 * p * r / (p + r)


def rouge_n(prediction: str, references: str | Sequence[str], n: int = 1) -> float:
    """ROUGE-n F-measure, the best over references: clipped shared n-grams over predicted and reference n-grams."""
    n = _check_n(n)
    got = _ngrams(rouge_words(prediction), n)
    best = 0.0
    for ref in _golds(references):
        want = _ngrams(rouge_words(ref), n)
        best = max(best, _f(sum((got & want).values()), sum(got.values()), sum(want.values())))
    return best


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence (words in order, gaps allowed), by dynamic programming."""
    row = [0] * (len(b) + 1)
    for x in a:
        prev_diag = 0
        for j, y in enumerate(b, start=1):
            prev_diag, row[j] = row[j], prev_diag + 1 if x == y else max(row[j], row[j - 1])
    return row[-1]


def rouge_l(prediction: str, references: str | Sequence[str]) -> float:
    """ROUGE-L F-measure, the best over references: LCS length over prediction and reference lengths."""
    words = rouge_words(prediction)
    best = 0.0
    for ref in _golds(references):
        ref_words = rouge_words(ref)
        best = max(best, _f(lcs_length(words, ref_words), len(words), len(ref_words)))
    return best


def _check_counts(n, c, k) -> None:
    for name, v in (("n", n), ("c", c), ("k", k)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise TypeError(f"{name} must be an int, got {type(v).__name__}")
    if not (0 <= c <= n and 1 <= k <= n):
        raise ValueError(f"need 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from ``n`` samples of which ``c`` passed: 1 - C(n-c, k) / C(n, k).

    Computed as 1 - prod over i = n-c+1..n of (1 - k / i), which never forms the huge binomials
    (Chen et al. 2021, figure 3). It is the chance that k samples drawn without replacement from the
    n include a passing one. ``n - c < k`` gives exactly 1.
    """
    _check_counts(n, c, k)
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def naive_pass_at_k(n: int, c: int, k: int) -> float:
    """1 - (1 - c/n)^k: plugs the estimate c/n into the formula for k independent tries; biased low."""
    _check_counts(n, c, k)
    return 1.0 - (1.0 - c / n) ** k


@dataclass(frozen=True)
class ChoiceItem:
    """A multiple-choice question: ``context`` (a story, or None), ``question``, ``choices``, index ``answer``."""

    context: str | None
    question: str
    choices: tuple[str, ...]
    answer: int

    def line(self) -> str:
        """The item as a pretraining-corpus line, answer included (what contamination would look like)."""
        return (f"{self.context} " if self.context else "") + f"Q: {self.question} A: {self.choices[self.answer]}"


_TEMPLATES = {  # question kinds of ``corpus.make_qa_lines`` with natural wrong options
    "sum": re.compile(r"Q: What is (\d+) \+ (\d+)\? A: (\d+)"),
    "larger": re.compile(r"Q: Which is larger, (\d+) or (\d+)\? A: (\d+)"),
    "after": re.compile(r"Q: What number comes after (\d+)\? A: (\d+)"),
    "word": re.compile(r"Q: What is the (first|last) word in: ([a-z ]+)\? A: (\w+)"),
    "spell": re.compile(r"Q: Spell the word (\w+)\. A: ([a-z ]+)"),
    "color": re.compile(r"(\w+ has \d \w+ \w+s\. \w+ has \d \w+ \w+s\.) Q: (What color are \w+'s \w+s\?) A: (\w+)"),
}


def choice_item_from_line(line: str, seed: int = 0) -> ChoiceItem | None:
    """A corpus QA line of kind sum, larger, after or colour as a 4- (larger: 2-) option item; else None.

    Wrong options: a sum +-1 and +10; the other number; n, n - 1 and n + 2 after n; the other colour of
    the story and two random colours. Options are shuffled with ``seed``."""
    rng = np.random.default_rng(seed)
    for kind, pattern in _TEMPLATES.items():
        m = pattern.fullmatch(_check_str(line, "line").strip())
        if m is None:
            continue
        if kind in ("word", "spell"):
            context, question = None, line[3:line.index(" A: ")]
            if kind == "word":
                right, words = m.group(3), m.group(2).split()
                wrong = [w for w in words if w != right][:3]
            else:
                right = m.group(2)
                others = [w for w in WORDS if w != m.group(1)]
                wrong = [" ".join(str(w)) for w in rng.choice(others, 3, replace=False)]
        elif kind == "color":
            story, question, right = m.groups()
            other = re.findall(r"has \d (\w+)", story)
            pool = [c for c in COLORS if c not in other]
            wrong = [c for c in other if c != right] + [str(c) for c in rng.choice(pool, 2, replace=False)]
            context = story
        else:
            context, question = None, line[3:line.index(" A: ")]
            nums = [int(x) for x in m.groups()]
            right = str(nums[-1])
            if kind == "sum":
                wrong = [nums[2] + 1, nums[2] - 1, nums[2] + 10]
            else:
                wrong = [min(nums[:2])] if kind == "larger" else [nums[0], nums[0] - 1, nums[0] + 2]
            wrong = [str(w) for w in wrong]
        choices = [right] + wrong[:3]
        order = rng.permutation(len(choices))
        return ChoiceItem(context, question, tuple(choices[i] for i in order), int(np.argmin(order)))
    return None


def make_choice_items(n: int, *, seed: int = 0) -> list[ChoiceItem]:
    """``n`` distinct items from freshly generated ``corpus.make_qa_lines`` lines of the four kinds above."""
    _check_n(n)
    out: dict[str, ChoiceItem] = {}
    for i, line in enumerate(make_qa_lines(20 * n, seed=seed)):
        item = choice_item_from_line(line, seed=seed * 1_000_003 + i)
        if item is not None:
            out.setdefault(item.line(), item)
        if len(out) == n:
            return list(out.values())
    raise ValueError(f"could not draw {n} distinct items with seed {seed}")


@torch.no_grad()
def choice_logprobs(model, tokenizer, prompt: str, choices: Sequence[str], *, per_token: bool = False,
                    allowed_special: str = "none") -> np.ndarray:
    """(len(choices),) log p(choice | prompt) under a course GPT: the sum of its tokens' log-probabilities
    (``per_token=True``: their mean). Each choice is encoded after the prompt's tokens, so the
    prompt should end where a choice begins (e.g. with ``"A:"`` and choices starting with a space).
    """
    _check_str(prompt, "prompt")
    if isinstance(choices, str) or not choices or not all(isinstance(c, str) and c for c in choices):
        raise ValueError("choices must be a non-empty sequence of non-empty str")
    head = tokenizer.encode(prompt, allowed_special=allowed_special)  # "all" for a chat prompt
    rows = [head + tokenizer.encode(c, allowed_special="none") for c in choices]
    width = max(len(r) for r in rows)
    if width > model.config.block_size:
        raise ValueError(f"prompt + longest choice take {width} tokens, more than block_size={model.config.block_size}")
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.tensor(r)
        labels[i, len(head):len(r)] = torch.tensor(r[len(head):])
    logits, _ = model(ids)  # right padding: the causal mask keeps it out of the counted tokens
    return sequence_logprobs(logits.float(), labels, average=per_token).numpy()


def word_ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    """The set of word n-grams of ``text`` after ``rouge_words`` normalisation (lower case, alphanumerics)."""
    words = rouge_words(text)
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


def ngram_overlap(items: Iterable[str], corpus: Iterable[str], n: int = 8) -> np.ndarray:
    """(len(items),) the share of each item's word n-grams that occur anywhere in ``corpus`` (documents).

    Words as in ``rouge_words``. An item shorter than n words counts as one n-gram of its own length: 1.0
    if its words occur together in some document, else 0.0; an empty item gets 0. A share near 1 means
    the item was (almost) copied into the corpus: a contaminated benchmark item.
    """
    n = _check_n(n)
    if isinstance(corpus, str):
        raise TypeError("corpus must be an iterable of documents (str), not one str")
    docs = [" " + " ".join(rouge_words(_check_str(d, "a corpus document"))) + " " for d in corpus]
    seen: set[tuple[str, ...]] = set()
    for doc in docs:
        seen |= word_ngrams(doc, n)
    out = []
    for item in items:
        words = rouge_words(_check_str(item, "an item"))
        if len(words) < n:
            out.append(float(bool(words) and any(f" {' '.join(words)} " in d for d in docs)))
            continue
        grams = word_ngrams(item, n)
        out.append(len(grams & seen) / len(grams))
    return np.array(out)
