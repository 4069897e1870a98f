"""References and hidden inputs for the chapter 13 checks (a helper module).

Everything here is independent of the chapter's own library modules (``llmcourse.retrieval``,
``llmcourse.rag``, ``llmcourse.evaluation``, ``llmcourse.diffusion``), which the checks must not
trust: the references are scikit-learn, torchmetrics, diffusers, the closed form of q(x_t | x_0)
and the prompt rules written out again below, and the only course code used is the shipped
tokenizer (``llmcourse.pretrained.load_tokenizer("course")``) and the chapter-9 instruction
generator (``llmcourse.instructions.fresh_examples``), for inputs.
"""

from __future__ import annotations

import functools
import re
import string

import numpy as np
import torch

from autograder.secret import hidden_rng, hidden_seed

# ----------------------------------------------------------------- the prompt rules, written out again

RAG_HEADER = "Answer the question using only the numbered passages below. Cite the passages you use as [n]."


def rag_prompt(question: str, passages, m: int) -> str:
    """The RAG prompt with the ``m`` best passages: header, ``[i] passage`` lines, the question last."""
    parts = [RAG_HEADER] + [f"[{i + 1}] {p}" for i, p in enumerate(passages[:m])]
    return "\n\n".join(parts + [f"Question: {question}\nAnswer:"])


def few_shot_prompt(instruction: str, demonstrations, query: str, start: int) -> str:
    """The few-shot prompt with the demonstrations from index ``start`` on (the first ``start`` dropped)."""
    demos = [f"Input: {x}\nOutput: {y}" for x, y in demonstrations[start:]]
    return "\n\n".join([instruction, *demos, f"Input: {query}\nOutput:"])


@functools.lru_cache(maxsize=1)
def course_tokenizer():
    from llmcourse.pretrained import load_tokenizer

    return load_tokenizer("course")


def n_tokens(text: str) -> int:
    return len(course_tokenizer().encode(text))


def rag_reference(question, passages, max_tokens):
    """The longest prefix of ``passages`` whose prompt fits, or None when even none fits."""
    for m in range(len(passages), -1, -1):
        prompt = rag_prompt(question, passages, m)
        if n_tokens(prompt) <= max_tokens:
            return prompt
    return None


def few_shot_reference(instruction, demonstrations, query, max_tokens):
    """Drop demonstrations from the start (farthest from the query) until the prompt fits; None if none does."""
    for start in range(len(demonstrations) + 1):
        prompt = few_shot_prompt(instruction, demonstrations, query, start)
        if n_tokens(prompt) <= max_tokens:
            return prompt
    return None


# ----------------------------------------------------------------- prompt mistakes, for the hints

def _fit(candidates, max_tokens, count=n_tokens, strict=False):
    for prompt in candidates:
        size = count(prompt)
        if size < max_tokens if strict else size <= max_tokens:
            return prompt
    return None


def rag_mistakes(question, passages, max_tokens):
    """[(explanation, the prompt that mistake builds)] (a mistake that cannot build one is left out)."""
    n = len(passages)
    by_m = [rag_prompt(question, passages, m) for m in range(n, -1, -1)]
    worst_first = ["\n\n".join([RAG_HEADER] + [f"[{i + 1}] {p}" for i, p in enumerate(passages[n - m:])]
                               + [f"Question: {question}\nAnswer:"]) for m in range(n, -1, -1)]
    zero_based = ["\n\n".join([RAG_HEADER] + [f"[{i}] {p}" for i, p in enumerate(passages[:m])]
                              + [f"Question: {question}\nAnswer:"]) for m in range(n, -1, -1)]
    question_first = ["\n\n".join([RAG_HEADER, f"Question: {question}"] + [f"[{i + 1}] {p}" for i, p in
                                                                          enumerate(passages[:m])] + ["Answer:"])
                      for m in range(n, -1, -1)]
    one_newline = ["\n".join([RAG_HEADER] + [f"[{i + 1}] {p}" for i, p in enumerate(passages[:m])]
                             + [f"Question: {question}\nAnswer:"]) for m in range(n, -1, -1)]
    return [
        ("the budget counts characters, not tokens: count with len(tokenizer.encode(prompt))",
         _fit(by_m, max_tokens, count=len)),
        ("the prompt must have at most max_tokens tokens: one of exactly max_tokens fits (use <=, not <)",
         _fit(by_m, max_tokens, strict=True)),
        ("the passages dropped are the best-ranked ones: drop the lowest-ranked (last) passages first",
         _fit(worst_first, max_tokens)),
        ("the passages are numbered from 0: number them [1], [2], ... in rank order",
         _fit(zero_based, max_tokens)),
        ("the question comes before the passages: it goes last, just before 'Answer:'",
         _fit(question_first, max_tokens)),
        ("the parts are joined with one newline: join them with a blank line ('\\n\\n')",
         _fit(one_newline, max_tokens)),
        ("every passage is kept and the budget ignored: drop passages until the whole prompt fits",
         by_m[0]),
    ]


def few_shot_mistakes(instruction, demonstrations, query, max_tokens):
    n = len(demonstrations)
    by_start = [few_shot_prompt(instruction, demonstrations, query, s) for s in range(n + 1)]
    from_end = ["\n\n".join([instruction, *[f"Input: {x}\nOutput: {y}" for x, y in demonstrations[:n - s]],
                             f"Input: {query}\nOutput:"]) for s in range(n + 1)]
    trailing = [p + " " for p in by_start]
    one_newline = ["\n".join([instruction, *[f"Input: {x}\nOutput: {y}" for x, y in demonstrations[s:]],
                              f"Input: {query}\nOutput:"]) for s in range(n + 1)]
    return [
        ("the demonstrations dropped are the last ones, nearest the query: drop from the start of the list",
         _fit(from_end, max_tokens)),
        ("the budget counts characters, not tokens: count with len(tokenizer.encode(prompt))",
         _fit(by_start, max_tokens, count=len)),
        ("the prompt must have at most max_tokens tokens: one of exactly max_tokens fits (use <=, not <)",
         _fit(by_start, max_tokens, strict=True)),
        ("the prompt ends with 'Output: ' (a space): it must end with 'Output:'", _fit(trailing, max_tokens)),
        ("the parts are joined with one newline: join them with a blank line ('\\n\\n')",
         _fit(one_newline, max_tokens)),
        ("every demonstration is kept and the budget ignored: drop demonstrations until the prompt fits",
         by_start[0]),
    ]


# ----------------------------------------------------------------- prompt inputs

def _prose_words() -> list[str]:
    from pydoc_data.topics import topics

    return " ".join(topics[k] for k in sorted(topics)[:40]).split()


@functools.lru_cache(maxsize=1)
def _words() -> tuple[str, ...]:
    return tuple(w for w in _prose_words() if len(w) < 25)


def _span(rng, low, high) -> str:
    words = _words()
    n = int(rng.integers(low, high + 1))
    start = int(rng.integers(0, len(words) - n))
    return " ".join(words[start:start + n])


def _budget(rng, counts: list[int], kind: str) -> int:
    """A token budget of the kind named, from the token counts of the prompts with 0..n parts kept."""
    n = len(counts) - 1
    if kind == "all fit":
        return counts[n] + int(rng.integers(0, 15))
    if kind == "exactly m":
        return counts[int(rng.integers(1, n))]
    if kind == "one short of m + 1":
        return counts[int(rng.integers(2, n + 1))] - 1
    if kind == "none fit":
        return counts[0] + int(rng.integers(0, 3))
    raise ValueError(kind)


RAG_KINDS = ("all fit", "exactly m", "one short of m + 1", "exactly m", "none fit", "one short of m + 1")


def rag_cases(label: str = "ch13.rag_prompt"):
    """[(inputs, question, passages, max_tokens)], budgets that keep all, some and none of the passages."""
    cases = []
    for seed, kind in enumerate(RAG_KINDS):
        rng = hidden_rng(seed, label)
        n = int(rng.integers(3, 7))
        passages = [_span(rng, 6, 45) for _ in range(n)]
        question = f"What does the text say about {_span(rng, 1, 3).strip('.,:;')}?"
        if seed == 3:  # text beyond ASCII, a passage on two lines, spaces kept as given
            passages[1] = "Un café — naïve résumé, 東京 and Zürich.\nA second line."
            question = "  Where is the café?  "
        counts = [n_tokens(rag_prompt(question, passages, m)) for m in range(n + 1)]
        budget = _budget(rng, counts, kind)
        cases.append(({"case": kind, "passages": n, "max_tokens": budget, "seed": seed}, question, passages, budget))
    rng = hidden_rng(9, label)
    question = f"Why {_span(rng, 2, 5)}?"
    budget = n_tokens(rag_prompt(question, [], 0)) + 3
    cases.append(({"case": "no passages", "passages": 0, "max_tokens": budget}, question, [], budget))
    return cases


def rag_too_small(label: str = "ch13.rag_prompt"):
    rng = hidden_rng(7, label)
    passages = [_span(rng, 5, 20) for _ in range(3)]
    question = f"What is {_span(rng, 3, 8)}?"
    budget = n_tokens(rag_prompt(question, passages, 0)) - 1
    return {"case": "even the header and question do not fit", "max_tokens": budget}, question, passages, budget


FEW_SHOT_KINDS = ("all fit", "exactly m", "one short of m + 1", "none fit", "exactly m")


def few_shot_cases(label: str = "ch13.few_shot_prompt"):
    """[(inputs, instruction, demonstrations, query, max_tokens)] from chapter 9's instruction families."""
    from llmcourse.instructions import FAMILIES, fresh_examples

    cases = []
    families = [str(f) for f in hidden_rng(99, label).permutation([f for f in FAMILIES if f not in ("qa",
                                                                                                 "uppercase")])]
    for seed, kind in enumerate(FEW_SHOT_KINDS):
        rng = hidden_rng(seed, label)
        family = "uppercase" if seed == 4 else families[seed]  # one family per case; text beyond ASCII in case 4
        drawn = [e for e in fresh_examples(60, hidden_seed(seed, label) % 2**32, families=[family])
                 if e.input is not None]
        by_instruction = {}
        for e in drawn:  # demonstrations of one instruction (the json family varies its key)
            by_instruction.setdefault(e.instruction, []).append(e)
        pool = max(by_instruction.values(), key=len)
        n = int(rng.integers(3, min(7, len(pool))))
        demos = [(e.input, e.output) for e in pool[:n]]
        instruction, query = pool[0].instruction, pool[n].input
        if seed == 4:
            demos[0] = ("crème brûlée", "CRÈME BRÛLÉE")
        counts = [n_tokens(few_shot_prompt(instruction, demos, query, n - m)) for m in range(n + 1)]
        budget = _budget(rng, counts, kind)
        cases.append(({"case": kind, "family": family, "demonstrations": n, "max_tokens": budget, "seed": seed},
                      instruction, demos, query, budget))
    budget = n_tokens(few_shot_prompt("Add the numbers.", [], "3 + 4", 0))
    cases.append(({"case": "zero-shot: no demonstrations", "max_tokens": budget}, "Add the numbers.", [], "3 + 4",
                  budget))
    return cases


# ----------------------------------------------------------------- top-k

def sklearn_top_k(queries, keys, k):
    """(indices, cosine similarities) of the k nearest keys, from NearestNeighbors(metric="cosine")."""
    from sklearn.neighbors import NearestNeighbors

    nn = NearestNeighbors(n_neighbors=k, metric="cosine", algorithm="brute").fit(np.asarray(keys, dtype=np.float64))
    dist, idx = nn.kneighbors(np.asarray(queries, dtype=np.float64))
    return idx, 1.0 - dist


def cosine_matrix(queries, keys) -> np.ndarray:
    q, k = np.asarray(queries, dtype=np.float64), np.asarray(keys, dtype=np.float64)
    return (q / np.linalg.norm(q, axis=1, keepdims=True)) @ (k / np.linalg.norm(k, axis=1, keepdims=True)).T


MIN_GAP = 1e-3  # the hidden inputs have no two of the top k + 1 similarities closer than this


def top_k_cases(label: str = "ch13.cosine_top_k"):
    """[(inputs, queries (Q, D) float32, keys (N, D) float32, k)], redrawn until no near-ties."""
    shapes = ((3, 8, 5, 2, "norms 0.01 to 100"), (6, 40, 16, 5, "norms 0.01 to 100"), (2, 12, 3, 12, "k = N"),
              (5, 30, 64, 1, "k = 1"), (4, 25, 8, 7, "a key along each query"), (1, 200, 32, 10, "one query"))
    cases = []
    for seed, (q, n, d, k, what) in enumerate(shapes):
        rng = hidden_rng(seed, label)
        while True:
            queries = rng.standard_normal((q, d)).astype(np.float32)
            keys = rng.standard_normal((n, d)).astype(np.float32)
            keys *= (10.0 ** rng.uniform(-2, 2, size=(n, 1))).astype(np.float32)  # long keys must not win
            if what == "a key along each query":
                for i in range(q):
                    keys[3 * i] = queries[i] * np.float32(rng.uniform(0.05, 20))  # cosine 1
            sims = np.sort(cosine_matrix(queries, keys), axis=1)[:, ::-1][:, :min(k + 1, n)]
            if (np.diff(sims, axis=1) < -MIN_GAP).all() or sims.shape[1] == 1:
                break
        cases.append(({"case": what, "Q": q, "N": n, "D": d, "k": k, "seed": seed}, torch.from_numpy(queries),
                       torch.from_numpy(keys), k))
    return cases


# ----------------------------------------------------------------- SQuAD

def squad_normalize(text: str) -> str:
    """SQuAD's normalisation, for the hints only (the reference is torchmetrics): lower case, drop
    ``string.punctuation``, drop the words a/an/the, collapse white space."""
    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    return " ".join(re.sub(r"\b(a|an|the)\b", " ", text).split())


def squad_reference(prediction: str, golds) -> tuple[float, float]:
    """(exact match, F1) of one answer in [0, 1], from torchmetrics' SQuAD (which reports percentages)."""
    from torchmetrics.functional.text import squad

    out = squad([{"prediction_text": prediction, "id": "q"}],
                [{"answers": {"answer_start": [0] * len(golds), "text": list(golds)}, "id": "q"}])
    return float(out["exact_match"]) / 100.0, float(out["f1"]) / 100.0


_ANSWER_WORDS = ("cat", "dog", "river", "Paris", "1976", "blue", "whale", "red", "house", "theory", "another",
                 "anne", "atom", "café", "Zürich", "x", "of", "in", "king", "war")
_PUNCT = ("", "", ".", ",", "!", "?", "'", '"', "-", "(", ")", ";", ":", "...", "$", "%")


def _noisy(rng, words) -> str:
    """``words`` as a person or a model might write them: case, articles, punctuation, spaces."""
    out = []
    for w in words:
        if rng.random() < 0.3:
            out.append(str(rng.choice(["a", "an", "the", "The", "A", "AN"])))
        w = w.upper() if rng.random() < 0.15 else w.capitalize() if rng.random() < 0.2 else w
        out.append(w + str(rng.choice(_PUNCT)))
    sep = " " if rng.random() < 0.7 else str(rng.choice(["  ", " \n", "\t "]))
    return str(rng.choice(["", "", " ", "\n"])) + sep.join(out) + str(rng.choice(["", "", " ", "  "]))


def squad_cases(label: str = "ch13.squad_scores"):
    """[(inputs, predictions, golds)]: hand-made edge cases, then generated answers."""
    edge = [("the Cat!", ["cat"]), ("", ["cat"]), ("", ["The"]), ("cat", [""]), ("", [""]),
            ("cat cat dog", ["cat dog"]), ("the cat sat", ["dog", "a cat sat.", "cat"]), ("  Paris\n", ["paris"]),
            ("Theory of a war", ["theory war"]), ("a.b c", ["ab c"]), ("an", ["a"]), ("1,976", ["1976"]),
            ("blue whale", ["the blue whale", "whale"]), ("dog dog dog", ["dog"]), ("café Zürich", ["Café zürich"])]
    cases = [({"case": "edge cases", "N": len(edge)}, [p for p, _ in edge], [g for _, g in edge])]
    for seed in range(3):
        rng = hidden_rng(seed, label)
        preds, golds = [], []
        for _ in range(30):
            gold_words = list(rng.choice(_ANSWER_WORDS, size=int(rng.integers(1, 5))))
            n_gold = int(rng.integers(1, 4))
            gs = [_noisy(rng, gold_words if j == 0 else list(rng.choice(_ANSWER_WORDS, size=int(rng.integers(1, 4)))))
                  for j in range(n_gold)]
            rng.shuffle(gs)
            r = rng.random()
            if r < 0.3:
                pred_words = list(gold_words)
            elif r < 0.7:
                pred_words = [w for w in gold_words if rng.random() < 0.6] + list(
                    rng.choice(_ANSWER_WORDS, size=int(rng.integers(0, 3))))
                if pred_words and rng.random() < 0.4:
                    pred_words.append(pred_words[0])  # a repeated word: multisets, not sets
            else:
                pred_words = list(rng.choice(_ANSWER_WORDS, size=int(rng.integers(1, 4))))
            preds.append(_noisy(rng, pred_words))
            golds.append(gs)
        cases.append(({"case": "generated answers", "N": len(preds), "seed": seed}, preds, golds))
    return cases


# ----------------------------------------------------------------- DDPM

def closed_form(x0, t, noise, T, beta_start, beta_end):
    """(x_t, alpha_bar_t) in float64: sqrt(abar_t) x0 + sqrt(1 - abar_t) noise, abar_t = prod_{s<=t} (1 - beta_s)."""
    betas = np.linspace(beta_start, beta_end, T, dtype=np.float64)
    abar = np.cumprod(1.0 - betas)[np.asarray(t)]
    shape = (-1,) + (1,) * (np.asarray(x0).ndim - 1)
    x0, noise = np.asarray(x0, dtype=np.float64), np.asarray(noise, dtype=np.float64)
    return np.sqrt(abar).reshape(shape) * x0 + np.sqrt(1.0 - abar).reshape(shape) * noise, abar


def diffusers_add_noise(x0, t, noise, T, beta_start, beta_end):
    """diffusers' DDPMScheduler(beta_schedule="linear").add_noise, on the float32 inputs."""
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler(num_train_timesteps=T, beta_start=beta_start, beta_end=beta_end,
                              beta_schedule="linear")
    return scheduler.add_noise(x0, noise, t).double().numpy()


def ddpm_mistakes(x0, t, noise, T, beta_start, beta_end):
    """[(explanation, () -> (x_t, abar) of that mistake)] in float64."""
    betas = np.linspace(beta_start, beta_end, T, dtype=np.float64)
    x0n, nn = np.asarray(x0, dtype=np.float64), np.asarray(noise, dtype=np.float64)
    t = np.asarray(t)
    shape = (-1,) + (1,) * (x0n.ndim - 1)

    def mix(abar, root=True, noise_coef=None):
        a = abar.reshape(shape)
        c = np.sqrt(1 - a) if noise_coef is None else noise_coef.reshape(shape)
        return (np.sqrt(a) if root else a) * x0n + c * nn, abar

    cum = np.cumprod(1.0 - betas)
    return [
        ("alpha_bar_t uses one step too many (t + 1): with 0-based t, alpha_bar_t = prod_{s=0..t} (1 - beta_s)",
         lambda: mix(cum[np.minimum(t + 1, T - 1)])),
        ("alpha_bar_t uses one step too few (a 1-based t): with 0-based t, alpha_bar_0 = 1 - beta_0, not 1",
         lambda: mix(np.concatenate([[1.0], cum])[t])),
        ("the square roots are missing: x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) noise",
         lambda: mix(cum[t], root=False, noise_coef=1 - cum[t])),
        ("the square root on alpha_bar_t is missing: x_0 is scaled by sqrt(abar_t)", lambda: mix(cum[t], root=False)),
        ("this uses alpha_t = 1 - beta_t of step t alone: q(x_t | x_0) needs the cumulative product abar_t",
         lambda: mix(1 - betas[t])),
        ("this uses beta_t where alpha_bar_t belongs", lambda: mix(betas[t])),
        ("the noise is scaled by sqrt(beta_t): in q(x_t | x_0) it is scaled by sqrt(1 - abar_t)",
         lambda: mix(cum[t], noise_coef=np.sqrt(betas[t]))),
        ("the schedule has T + 1 betas (linspace over T + 1 points): beta_s = linspace(beta_start, beta_end, T)",
         lambda: mix(np.cumprod(1 - np.linspace(beta_start, beta_end, T + 1))[t])),
    ]


def ddpm_cases(label: str = "ch13.ddpm_add_noise"):
    """[(inputs, x0, t, noise, (T, beta_start, beta_end) or None for the defaults)]."""
    specs = (((8, 16), None, "defaults, t anywhere"), ((4, 3, 8, 8), None, "images, defaults"),
             ((6, 5), (50, 1e-4, 0.02), "T = 50"), ((5, 4), (10, 1e-3, 0.2), "T = 10, other betas"),
             ((3, 2, 4), (1000, 1e-4, 0.02), "t = 0, 1 and T - 1 given explicitly"),
             ((64, 2), None, "many steps, repeated"))
    cases = []
    for seed, (shape, sched, what) in enumerate(specs):
        g = torch.Generator().manual_seed(hidden_seed(seed, label))
        T = 1000 if sched is None else sched[0]
        t = torch.randint(0, T, (shape[0],), generator=g)
        if seed == 0:
            t[0], t[1] = 0, T - 1
        if seed == 4:
            t = torch.tensor([0, 1, T - 1])
        x0 = torch.randn(shape, generator=g).clamp(-3, 3)
        noise = torch.randn(shape, generator=g)
        inputs = {"case": what, "shape": shape, "T": T, "t": t.tolist() if len(t) <= 8 else f"{len(t)} steps",
                  "seed": seed}
        cases.append((inputs, x0, t, noise, sched))
    return cases
