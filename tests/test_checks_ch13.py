"""The chapter 13 checks are fair both ways: correct answers get full marks, planted mistakes fail.

The solution functions come from the nbgrader source notebook (setup and answer cells, run as a
notebook kernel would). Beside them each task has three or more correct implementations written
differently (NumPy and torch, float32 and float64, loops and vectorised, argpartition or a full
sort instead of topk, another valid algorithm: trying every number of passages, a deque, F1 from a
hand-made count, alpha_bar from a sum of logs), which must pass too. Each wrong implementation is
a mistake a student could plausibly make, written as a student would; each must make its check
raise CheckFailed naming what differs (and, where the check recognises it, the mistake).
"""

from __future__ import annotations

import functools
import math
import re
import string
from collections import Counter, deque

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from autograder.checks import _ch13_references as ref
from autograder.checks import ch13_using_llms as checks
from autograder.compare import CheckFailed
from autograder.guard import ForbiddenCall, static_violations
from tests.notebook_kernel import assert_checks_hold, kernel, planted, solution_of, switched

ASSIGNMENT = "ch13_using_llms"
# The mistake the nbgrader round trip plants: F1 over sets of tokens instead of multisets.
# squad_scores is called by no other graded cell, so only this task may lose points.
ROUND_TRIP_MISTAKE = ("ch13_squad_scores_answer",
                      "def squad_scores(predictions, references):\n"
                      "    def tokens(text):\n"
                      "        text = ''.join(ch for ch in text.lower() if ch not in string.punctuation)\n"
                      "        return re.sub(r'\\b(a|an|the)\\b', ' ', text).split()\n"
                      "    def f1(p, g):\n"
                      "        if not p or not g:\n"
                      "            return float(p == g)\n"
                      "        common = len(set(p) & set(g))\n"
                      "        if common == 0:\n"
                      "            return 0.0\n"
                      "        pr, rc = common / len(set(p)), common / len(set(g))\n"
                      "        return 2 * pr * rc / (pr + rc)\n"
                      "    em = [max(float(tokens(p) == tokens(g)) for g in gs) for p, gs in zip(predictions, references)]\n"
                      "    f1s = [max(f1(tokens(p), tokens(g)) for g in gs) for p, gs in zip(predictions, references)]\n"
                      "    return np.array(em), np.array(f1s)\n")

pytestmark = pytest.mark.ch13
RAG_HEADER = ref.RAG_HEADER


def check_of(task):
    return getattr(checks, task.check)


# ----------------------------------------------------------------- the notebook and the references

@pytest.mark.parametrize("task", checks.TASKS, ids=lambda t: t.grade_id)
def test_solution_passes_check(task, one_thread):
    check_of(task)(solution_of(ASSIGNMENT)[task.name])


def test_sklearn_agrees_with_the_cosine_matrix_and_cases_have_no_near_ties():
    for inputs, queries, keys, k in ref.top_k_cases():
        idx, scores = ref.sklearn_top_k(queries, keys, k)
        sims = ref.cosine_matrix(queries, keys)
        np.testing.assert_allclose(scores, np.take_along_axis(sims, idx, 1), atol=1e-12)
        assert (np.diff(scores, axis=1) < -ref.MIN_GAP).all(), inputs
        best_left_out = np.sort(sims, 1)[:, ::-1][:, k] if k < sims.shape[1] else -np.inf
        assert (scores[:, -1] - best_left_out > ref.MIN_GAP).all(), inputs


def test_torchmetrics_squad_equals_the_written_out_normalisation():
    for _, preds, golds in ref.squad_cases():
        for p, gs in zip(preds, golds):
            em, f1 = ref.squad_reference(p, gs)
            assert em == max(float(ref.squad_normalize(p) == ref.squad_normalize(g)) for g in gs), (p, gs)
            assert 0.0 <= f1 <= 1.0


def test_squad_cases_reach_every_rule():
    """Repeated words, several golds where a later one wins, empty strings, articles and punctuation all occur."""
    preds = [p for _, ps, _ in ref.squad_cases() for p in ps]
    golds = [g for _, _, gs in ref.squad_cases() for g in gs]
    assert any(len(gs) > 1 and ref.squad_reference(p, gs)[1] > ref.squad_reference(p, gs[:1])[1]
               for p, gs in zip(preds, golds))
    assert any(Counter(ref.squad_normalize(p).split()).most_common(1)[0][1] > 1 for p in preds if p.strip())
    assert "" in preds and [""] in golds


def test_diffusers_add_noise_equals_the_closed_form_and_its_defaults_are_stated():
    from diffusers import DDPMScheduler

    config = DDPMScheduler().config
    assert (config.num_train_timesteps, config.beta_start, config.beta_end, config.beta_schedule) == \
        (1000, 0.0001, 0.02, "linear")
    for inputs, x0, t, noise, sched in ref.ddpm_cases():
        T, b0, b1 = sched or (1000, 1e-4, 0.02)
        want, abar = ref.closed_form(x0, t, noise, T, b0, b1)
        got = ref.diffusers_add_noise(x0, t, noise, T, b0, b1)
        err = np.abs(got - want) / (1 + np.abs(want))
        assert err.max() < checks.TOL_DDPM["atol"] / 3, (inputs, err.max())


def test_prompt_cases_keep_all_some_and_none():
    kept = []
    for inputs, question, passages, budget in ref.rag_cases():
        prompt = ref.rag_reference(question, passages, budget)
        kept.append(sum(f"[{i + 1}] {p}" in prompt for i, p in enumerate(passages)))
        assert ref.n_tokens(prompt) <= budget, inputs
        if inputs["case"] == "exactly m":
            assert ref.n_tokens(prompt) == budget, inputs
    assert max(kept) >= 3 and 0 in kept and any(0 < k < len(c[2]) for k, c in zip(kept, ref.rag_cases()))
    assert ref.rag_reference(*ref.rag_too_small()[1:]) is None
    for inputs, instruction, demos, query, budget in ref.few_shot_cases():
        assert ref.n_tokens(ref.few_shot_reference(instruction, demos, query, budget)) <= budget, inputs


def test_course_secret_changes_the_inputs(monkeypatch):
    public = (ref.top_k_cases()[1][1], ref.rag_cases()[0][2], ref.squad_cases()[1][1], ref.ddpm_cases()[0][1])
    monkeypatch.setenv("AUTOGRADER_SECRET", "another secret")
    hidden = (ref.top_k_cases()[1][1], ref.rag_cases()[0][2], ref.squad_cases()[1][1], ref.ddpm_cases()[0][1])
    assert not torch.equal(public[0], hidden[0]) and public[1] != hidden[1] and public[2] != hidden[2]
    assert not torch.equal(public[3], hidden[3])


# ----------------------------------------------------------------- correct variants

def topk_numpy_full_sort(queries, keys, k):
    q, kk = np.asarray(queries, dtype=np.float64), np.asarray(keys, dtype=np.float64)
    if not 1 <= k <= len(kk):
        raise ValueError("k out of range")
    qn, kn = np.linalg.norm(q, axis=1), np.linalg.norm(kk, axis=1)
    if (qn == 0).any() or (kn == 0).any():
        raise ValueError("zero vector")
    sims = (q / qn[:, None]) @ (kk / kn[:, None]).T
    order = np.argsort(-sims, axis=1)[:, :k]
    return np.take_along_axis(sims, order, 1), order


def topk_argpartition_float32(queries, keys, k):
    q, kk = queries.numpy(), keys.numpy()
    if k < 1 or k > kk.shape[0]:
        raise ValueError(f"k={k}")
    if not (np.any(q, axis=1).all() and np.any(kk, axis=1).all()):
        raise ValueError("cannot take the cosine of a zero vector")
    sims = (q @ kk.T) / np.outer(np.sqrt((q * q).sum(1)), np.sqrt((kk * kk).sum(1)))
    part = np.argpartition(-sims, k - 1, axis=1)[:, :k]
    part_scores = np.take_along_axis(sims, part, 1)
    inner = np.argsort(-part_scores, axis=1)
    return np.take_along_axis(part_scores, inner, 1), np.take_along_axis(part, inner, 1)


def topk_torch_normalize_sort(queries, keys, k):
    if not 0 < k <= keys.shape[0] or (queries.norm(dim=1) == 0).any() or (keys.norm(dim=1) == 0).any():
        raise ValueError("k must be in [1, N] and no vector may be zero")
    sims = F.normalize(queries, dim=1) @ F.normalize(keys, dim=1).T
    scores, indices = torch.sort(sims, dim=1, descending=True)
    return scores[:, :k], indices[:, :k]


def topk_loops(queries, keys, k):
    rows_s, rows_i = [], []
    if k not in range(1, len(keys) + 1):
        raise ValueError("bad k")
    for q in queries.tolist():
        nq = math.sqrt(sum(x * x for x in q))
        sims = []
        for j, key in enumerate(keys.tolist()):
            nk = math.sqrt(sum(x * x for x in key))
            if nq == 0 or nk == 0:
                raise ValueError("zero vector")
            sims.append((sum(a * b for a, b in zip(q, key)) / (nq * nk), j))
        best = sorted(sims, reverse=True)[:k]
        rows_s.append([s for s, _ in best])
        rows_i.append([j for _, j in best])
    return torch.tensor(rows_s), torch.tensor(rows_i)


def _rag_format(question, passages):
    text = RAG_HEADER
    for i, p in enumerate(passages):
        text += "\n\n[" + str(i + 1) + "] " + p
    return text + "\n\nQuestion: " + question + "\nAnswer:"


def rag_pop_while_too_long(question, passages, max_tokens, tokenizer):
    kept = list(passages)
    while len(tokenizer.encode(_rag_format(question, kept))) > max_tokens:
        if not kept:
            raise ValueError("the question alone does not fit")
        kept.pop()
    return _rag_format(question, kept)


def rag_every_m(question, passages, max_tokens, tokenizer):
    fits = [m for m in range(len(passages) + 1) if len(tokenizer.encode(_rag_format(question, passages[:m])))
            <= max_tokens]
    if not fits:
        raise ValueError("too small a budget")
    return _rag_format(question, passages[:max(fits)])


@functools.lru_cache(maxsize=1)
def _hf_tokenizer():
    from llmcourse.pretrained import load_tokenizer

    return load_tokenizer("hf")


def rag_hf_tokenizer(question, passages, max_tokens, tokenizer):
    """Counts with the transformers version of the same tokenizer (the same ids) and a template string."""
    hf = _hf_tokenizer()
    for m in reversed(range(len(passages) + 1)):
        block = "".join("[%d] %s\n\n" % (i, p) for i, p in enumerate(passages[:m], 1))
        prompt = "%s\n\n%sQuestion: %s\nAnswer:" % (RAG_HEADER, block, question)
        if len(hf(prompt, add_special_tokens=False)["input_ids"]) <= max_tokens:
            return prompt
    raise ValueError("does not fit")


def _few(instruction, demos, query):
    return "\n\n".join([instruction] + ["Input: " + x + "\nOutput: " + y for x, y in demos]
                       + ["Input: " + query + "\nOutput:"])


def few_deque(instruction, demonstrations, query, max_tokens, tokenizer):
    kept = deque(demonstrations)
    while len(tokenizer.encode(_few(instruction, kept, query))) > max_tokens:
        if not kept:
            raise ValueError("no room")
        kept.popleft()
    return _few(instruction, kept, query)


def few_every_start(instruction, demonstrations, query, max_tokens, tokenizer):
    options = [_few(instruction, demonstrations[s:], query) for s in range(len(demonstrations) + 1)]
    fitting = [p for p in options if len(tokenizer.encode(p)) <= max_tokens]
    if not fitting:
        raise ValueError("no room")
    return fitting[0]


def few_string_building(instruction, demonstrations, query, max_tokens, tokenizer):
    n = len(demonstrations)
    for drop in range(n + 1):
        s = instruction
        for x, y in demonstrations[drop:]:
            s += f"\n\nInput: {x}\nOutput: {y}"
        s += f"\n\nInput: {query}\nOutput:"
        if len(tokenizer.encode(s)) <= max_tokens:
            return s
    raise ValueError(f"max_tokens={max_tokens} is too small")


_PUNCT_RE = re.compile(f"[{re.escape(string.punctuation)}]")


def squad_regex_torch(predictions, references):
    def norm(s):
        s = _PUNCT_RE.sub("", s.lower())
        return [w for w in s.split() if w not in ("a", "an", "the")]

    em, f1 = torch.zeros(len(predictions)), torch.zeros(len(predictions))
    for i, (p, golds) in enumerate(zip(predictions, references)):
        pt = norm(p)
        for g in golds:
            gt = norm(g)
            em[i] = max(float(em[i]), float(pt == gt))
            if not pt or not gt:
                score = float(pt == gt)
            else:
                same = sum((Counter(pt) & Counter(gt)).values())
                score = 0.0 if same == 0 else 2 * same / (len(pt) + len(gt))
            f1[i] = max(float(f1[i]), score)
    return em, f1


def squad_translate_dict_counts(predictions, references):
    table = str.maketrans("", "", string.punctuation)

    def toks(s):
        return re.sub(r"\b(a|an|the)\b", " ", s.lower().translate(table)).split()

    def f1(a, b):
        if len(a) == 0 or len(b) == 0:
            return 1.0 if a == b else 0.0
        counts = {}
        for w in b:
            counts[w] = counts.get(w, 0) + 1
        same = 0
        for w in a:
            if counts.get(w, 0) > 0:
                counts[w] -= 1
                same += 1
        if same == 0:
            return 0.0
        p, r = same / len(a), same / len(b)
        return 2 * p * r / (p + r)

    ems = [max(toks(p) == toks(g) for g in gs) for p, gs in zip(predictions, references)]
    f1s = [max(f1(toks(p), toks(g)) for g in gs) for p, gs in zip(predictions, references)]
    return np.array(ems, dtype=np.float32), np.array(f1s, dtype=np.float32)


def squad_sorted_lists(predictions, references):
    def toks(s):
        s = "".join(" " if False else c for c in s.lower() if c not in string.punctuation)
        return " ".join(re.sub(r"\b(?:a|an|the)\b", " ", s).split()).split()

    out = []
    for p, golds in zip(predictions, references):
        best_em, best_f1 = 0.0, 0.0
        for g in golds:
            a, b = toks(p), toks(g)
            best_em = max(best_em, float(" ".join(a) == " ".join(b)))
            common = sum(min(a.count(w), b.count(w)) for w in set(a))
            if not a or not b:
                f = float(a == b)
            else:
                f = 0.0 if not common else 2 * common / (len(a) + len(b))
            best_f1 = max(best_f1, f)
        out.append((best_em, best_f1))
    arr = np.array(out).reshape(-1, 2)
    return arr[:, 0], arr[:, 1]


def _t_check(t, T):
    if (t < 0).any() or (t >= T).any():
        raise ValueError("t out of range")


def ddpm_numpy64(x0, t, noise, num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02):
    t = np.asarray(t)
    _t_check(t, num_train_timesteps)
    abar = np.cumprod(1 - np.linspace(beta_start, beta_end, num_train_timesteps))[t]
    a = abar.reshape((-1,) + (1,) * (x0.ndim - 1))
    return np.sqrt(a) * x0.numpy() + np.sqrt(1 - a) * noise.numpy(), abar


def ddpm_torch32_like_diffusers(x0, t, noise, num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02):
    _t_check(t, num_train_timesteps)
    alphas_cumprod = torch.cumprod(1.0 - torch.linspace(beta_start, beta_end, num_train_timesteps,
                                                        dtype=torch.float32), dim=0)
    a = alphas_cumprod[t]
    shape = [len(t)] + [1] * (x0.dim() - 1)
    return a.sqrt().view(shape) * x0 + (1 - a).sqrt().view(shape) * noise, a


def ddpm_log_space_loop(x0, t, noise, num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02):
    _t_check(t, num_train_timesteps)
    step = (beta_end - beta_start) / (num_train_timesteps - 1) if num_train_timesteps > 1 else 0.0
    abar = []
    for ti in t.tolist():
        log_a = sum(math.log1p(-(beta_start + s * step)) for s in range(ti + 1))
        abar.append(math.exp(log_a))
    abar = torch.tensor(abar, dtype=torch.float64)
    x_t = torch.stack([math.sqrt(a) * x0[i].double() + math.sqrt(1 - a) * noise[i].double()
                       for i, a in enumerate(abar.tolist())])
    return x_t.float(), abar.float()


CORRECT = {
    "check_cosine_top_k": [topk_numpy_full_sort, topk_argpartition_float32, topk_torch_normalize_sort, topk_loops],
    "check_rag_prompt": [rag_pop_while_too_long, rag_every_m, rag_hf_tokenizer],
    "check_few_shot_prompt": [few_deque, few_every_start, few_string_building],
    "check_squad_scores": [squad_regex_torch, squad_translate_dict_counts, squad_sorted_lists],
    "check_ddpm_add_noise": [ddpm_numpy64, ddpm_torch32_like_diffusers, ddpm_log_space_loop],
}


@pytest.mark.parametrize("check, fn", [pytest.param(c, f, id=f.__name__) for c, fs in CORRECT.items() for f in fs])
def test_check_accepts_correct_variants(check, fn, one_thread):
    getattr(checks, check)(fn)


# ----------------------------------------------------------------- planted mistakes: top-k

def _topk(queries, keys, k, *, how):
    q, kk = queries.double(), keys.double()
    if how != "no_zero_check" and ((q.norm(dim=1) == 0).any() or (kk.norm(dim=1) == 0).any()):
        raise ValueError("zero vector")
    if not 1 <= k <= len(kk):
        raise ValueError("bad k")
    qn, kn = q / q.norm(dim=1, keepdim=True), kk / kk.norm(dim=1, keepdim=True)
    sims = {"dot": lambda: q @ kk.T, "keys_only": lambda: q @ kn.T,
            "euclidean": lambda: -torch.cdist(q, kk)}.get(how, lambda: qn @ kn.T)()
    if how == "no_zero_check":
        sims = torch.nan_to_num(sims)
    if how == "ascending":
        order = torch.argsort(sims, dim=1)[:, :k]
    elif how == "best_ascending":
        order = torch.argsort(sims, dim=1)[:, -k:]
    else:
        order = torch.argsort(sims, dim=1, descending=True)[:, :k + {"k_plus_1": 1, "k_minus_1": -1}.get(how, 0)]
    scores = torch.gather(sims, 1, order)
    if how == "keys_only":
        return scores, order
    if how == "distance":
        scores = 1 - scores
    return scores, order


TOPK_MISTAKES = planted(
    (switched(_topk, "topk_dot_product", how="dot"), r"indices .*case=norms 0.01 to 100.* - this ranks by the dot "
                                                   r"product: divide queries and keys by their norms"),
    (switched(_topk, "topk_ascending", how="ascending"), r"- this is the k least similar keys"),
    (switched(_topk, "topk_best_in_ascending_order", how="best_ascending"), r"the right k keys, in the wrong order"),
    (switched(_topk, "topk_k_plus_1", how="k_plus_1"), r"indices for .*k=2.*: shape \(3, 3\) but expected \(3, 2\)"),
    (switched(_topk, "topk_k_minus_1", how="k_minus_1"), r"shape \(3, 1\) but expected \(3, 2\)"),
    (switched(_topk, "topk_distances", how="distance"), r"scores \(cosine similarities\).* - these are cosine distances"),
    (switched(_topk, "topk_only_keys_normalised", how="keys_only"), r"scores .* - only the keys are normalised"),
    (switched(_topk, "topk_euclidean", how="euclidean"), r"- this ranks by Euclidean distance"),
    (switched(_topk, "topk_zero_vector_allowed", how="no_zero_check"),
     r"case=keys\[3\] is a zero vector.*expected ValueError \(a zero vector has no direction"),
)


@pytest.mark.parametrize("wrong, match", TOPK_MISTAKES)
def test_check_cosine_top_k_rejects(wrong, match):
    with pytest.raises(CheckFailed, match=match):
        checks.check_cosine_top_k(wrong)


# ----------------------------------------------------------------- planted mistakes: the prompt builders

def _rag(question, passages, max_tokens, tokenizer, *, how):
    count = len if how == "chars" else (lambda s: len(tokenizer.encode(s)))
    fits = (lambda s: count(s) < max_tokens) if how == "strict" else (lambda s: count(s) <= max_tokens)
    sep = "\n" if how == "one_newline" else "\n\n"

    def build(ps, q=question):
        start = 0 if how == "zero_based" else 1
        body = [f"[{i}] {p.strip() if how == 'strip' else p}" for i, p in enumerate(ps, start)]
        if how == "question_first":
            return sep.join([RAG_HEADER, f"Question: {q}", *body, "Answer:"])
        return sep.join([RAG_HEADER, *body, f"Question: {q.strip() if how == 'strip' else q}\nAnswer:"])

    if how == "keep_all":
        return build(passages)
    if how == "cut_question":  # keeps every passage and cuts the question's tokens to fit
        ids = tokenizer.encode(question)
        while ids and not fits(build(passages, tokenizer.decode(ids))):
            ids = ids[:-1]
        return build(passages, tokenizer.decode(ids))
    if how == "cut_last_passage":  # keeps whole passages while they fit, then cuts the next one by tokens
        m = max(m for m in range(len(passages) + 1) if fits(build(passages[:m])) or m == 0)
        if m < len(passages):
            ids = tokenizer.encode(passages[m])
            while ids and not fits(build(passages[:m] + [tokenizer.decode(ids)])):
                ids = ids[:-1]
            if ids:
                return build(passages[:m] + [tokenizer.decode(ids)])
        if not fits(build(passages[:m])):
            raise ValueError("too small")
        return build(passages[:m])
    order = range(len(passages), -1, -1)
    for m in order:
        kept = passages[len(passages) - m:] if how == "drop_best" else passages[:m]
        if fits(build(kept)):
            return build(kept)
    if how == "no_error":
        return build([])
    raise ValueError("does not fit")


def rag_sums_part_counts(question, passages, max_tokens, tokenizer):
    """Counts each part on its own and adds the separators: BPE counts do not add up across the joins."""
    parts = [f"[{i}] {p}" for i, p in enumerate(passages, 1)]
    fixed = len(tokenizer.encode(RAG_HEADER)) + len(tokenizer.encode(f"Question: {question}\nAnswer:"))
    sep = len(tokenizer.encode("\n\n"))
    for m in range(len(parts), -1, -1):
        if fixed + sum(len(tokenizer.encode(x)) for x in parts[:m]) + (m + 1) * sep <= max_tokens:
            return "\n\n".join([RAG_HEADER, *parts[:m], f"Question: {question}\nAnswer:"])
    raise ValueError("does not fit")


RAG_MISTAKES = planted(
    (rag_sums_part_counts, r"rag_prompt for case=(exactly m|one short of m \+ 1).*the prompt differs"),
    (switched(_rag, "rag_counts_characters", how="chars"), r"rag_prompt for case=all fit.* - the budget counts "
                                                         r"characters, not tokens"),
    (switched(_rag, "rag_strict_budget", how="strict"), r"case=exactly m.* - the prompt must have at most max_tokens"),
    (switched(_rag, "rag_drops_best_passages", how="drop_best"), r"- the passages dropped are the best-ranked ones"),
    (switched(_rag, "rag_numbers_from_zero", how="zero_based"), r"differs from character \d+ on.* - the passages are "
                                                              r"numbered from 0"),
    (switched(_rag, "rag_question_first", how="question_first"), r"- the question comes before the passages"),
    (switched(_rag, "rag_one_newline", how="one_newline"), r"- the parts are joined with one newline"),
    (switched(_rag, "rag_ignores_budget", how="keep_all"), r"case=exactly m.* - every passage is kept and the budget "
                                                         r"ignored"),
    (switched(_rag, "rag_cuts_the_question", how="cut_question"), r"rag_prompt for case=exactly m.*the prompt differs"),
    (switched(_rag, "rag_cuts_the_last_passage", how="cut_last_passage"), r"case=one short of m \+ 1.*the prompt differs"),
    (switched(_rag, "rag_strips_texts", how="strip"), r"case=exactly m.*seed=3: the prompt differs"),
    (switched(_rag, "rag_no_error_when_nothing_fits", how="no_error"),
     r"case=even the header and question do not fit.*expected ValueError \(never cut the question.*returned a str"),
)


@pytest.mark.parametrize("wrong, match", RAG_MISTAKES)
def test_check_rag_prompt_rejects(wrong, match):
    with pytest.raises(CheckFailed, match=match):
        checks.check_rag_prompt(wrong)


def _few_wrong(instruction, demonstrations, query, max_tokens, tokenizer, *, how):
    count = len if how == "chars" else (lambda s: len(tokenizer.encode(s)))
    fits = (lambda s: count(s) < max_tokens) if how == "strict" else (lambda s: count(s) <= max_tokens)
    sep = "\n" if how == "one_newline" else "\n\n"
    out, inp = ("A:", "Q:") if how == "qa_labels" else ("Output:", "Input:")

    def build(demos):
        text = sep.join([instruction, *[f"{inp} {x}\n{out} {y}" for x, y in demos], f"{inp} {query}\n{out}"])
        return text + " " if how == "trailing_space" else text

    n = len(demonstrations)
    if how == "keep_all":
        return build(demonstrations)
    for drop in range(n + 1):
        kept = demonstrations[:n - drop] if how == "drop_last" else demonstrations[drop:]
        if fits(build(kept)):
            return build(kept)
    if how == "no_error":
        return build([])
    raise ValueError("no room")


FEW_MISTAKES = planted(
    (switched(_few_wrong, "few_drops_from_the_end", how="drop_last"), r"few_shot_prompt for case=exactly m.* - the "
                                                                    r"demonstrations dropped are the last ones"),
    (switched(_few_wrong, "few_counts_characters", how="chars"), r"- the budget counts characters, not tokens"),
    (switched(_few_wrong, "few_strict_budget", how="strict"), r"- the prompt must have at most max_tokens tokens"),
    (switched(_few_wrong, "few_trailing_space", how="trailing_space"), r"- the prompt ends with 'Output: ' \(a space\)"),
    (switched(_few_wrong, "few_one_newline", how="one_newline"), r"- the parts are joined with one newline"),
    (switched(_few_wrong, "few_qa_labels", how="qa_labels"), r"case=all fit.*the prompt differs from character \d+"),
    (switched(_few_wrong, "few_ignores_budget", how="keep_all"), r"- every demonstration is kept"),
    (switched(_few_wrong, "few_no_error", how="no_error"), r"expected ValueError \(the instruction and the query are "
                                                        r"never cut\), but your function returned a str"),
)


@pytest.mark.parametrize("wrong, match", FEW_MISTAKES)
def test_check_few_shot_prompt_rejects(wrong, match):
    with pytest.raises(CheckFailed, match=match):
        checks.check_few_shot_prompt(wrong)


# ----------------------------------------------------------------- planted mistakes: SQuAD

def _squad(predictions, references, *, how):
    def toks(s):
        if how == "raw":
            return s.split()
        s = s.lower()
        if how == "articles_first":
            s = re.sub(r"\b(a|an|the)\b", " ", s)
        if how != "keep_punctuation":
            s = "".join(c for c in s if c not in string.punctuation)
        if how not in ("keep_articles", "articles_first"):
            s = re.sub(r"\b(a|an|the)\b", " ", s)
        return s.split()

    def f1(a, b):
        if not a or not b:
            return 0.0 if how == "empty_zero" else float(a == b)
        if how == "sets":
            a, b = list(set(a)), list(set(b))
        same = sum((Counter(a) & Counter(b)).values())
        return 0.0 if same == 0 else 2 * same / (len(a) + len(b))

    em, f1s = [], []
    for p, golds in zip(predictions, references):
        golds = golds[:1] if how == "first_gold" else golds
        pick = np.mean if how == "mean_gold" else max
        em.append(pick([float(toks(p) == toks(g)) for g in golds]))
        f1s.append(pick([f1(toks(p), toks(g)) for g in golds]))
    scale = 100.0 if how == "percent" else 1.0
    return scale * np.array(em), scale * np.array(f1s)


SQUAD_MISTAKES = planted(
    (switched(_squad, "squad_no_normalisation", how="raw"), r"em \(vs torchmetrics' SQuAD\) for case=edge cases, N=15, "
                                                          r"first wrong question=0.* - exact match compares the raw"),
    (switched(_squad, "squad_f1_on_sets", how="sets"), r"f1 .*first wrong question=5, prediction='cat cat dog'.* - F1 is "
                                                     r"computed on sets of tokens"),
    (switched(_squad, "squad_first_gold_only", how="first_gold"), r"em .*prediction='the cat sat'.* - only the first "
                                                                r"gold answer is used"),
    (switched(_squad, "squad_mean_over_golds", how="mean_gold"), r"em .*prediction='the cat sat'.* - this averages "
                                                              r"over the gold answers"),
    (switched(_squad, "squad_empty_scores_zero", how="empty_zero"), r"f1 .*first wrong question=2.* - an empty answer"),
    (switched(_squad, "squad_percent", how="percent"), r"- these are percentages"),
    (switched(_squad, "squad_keeps_articles", how="keep_articles"), r"em .*case=edge cases.*first wrong question=0"),
    (switched(_squad, "squad_keeps_punctuation", how="keep_punctuation"), r"em .*first wrong question=0, "
                                                                        r"prediction='the Cat!'"),
    (switched(_squad, "squad_articles_before_punctuation", how="articles_first"), r"prediction='a.b c'"),
)


@pytest.mark.parametrize("wrong, match", SQUAD_MISTAKES)
def test_check_squad_scores_rejects(wrong, match):
    with pytest.raises(CheckFailed, match=match):
        checks.check_squad_scores(wrong)


# ----------------------------------------------------------------- planted mistakes: DDPM

def _ddpm(x0, t, noise, num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, *, how):
    T = num_train_timesteps
    if how != "no_range_check" and ((t < 0).any() or (t >= T).any()):
        raise ValueError("t out of range")
    betas = torch.linspace(beta_start, beta_end, T + (how == "T_plus_1"), dtype=torch.float64)
    cum = torch.cumprod(1 - betas, 0)
    if how == "t_plus_1":
        abar = cum[torch.clamp(t + 1, max=T - 1)]
    elif how == "one_based":
        abar = torch.cat([torch.ones(1, dtype=torch.float64), cum])[t]
    elif how == "alpha_t":
        abar = 1 - betas[t]
    elif how == "beta":
        abar = betas[t]
    else:
        abar = cum[t]
    a = abar.reshape((-1,) + (1,) * (x0.dim() - 1))
    signal = a if how in ("no_sqrt", "no_sqrt_signal") else a.sqrt()
    noise_coef = (1 - a) if how == "no_sqrt" else betas[t].sqrt().reshape(a.shape) if how == "sqrt_beta_noise" \
        else (1 - a).sqrt()
    return (signal * x0 + noise_coef * noise).float(), abar.float()


DDPM_MISTAKES = planted(
    (switched(_ddpm, "ddpm_t_plus_1", how="t_plus_1"), r"alpha_bar_t .*case=defaults, t anywhere.* - alpha_bar_t uses "
                                                     r"one step too many"),
    (switched(_ddpm, "ddpm_one_based", how="one_based"), r"alpha_bar_t .* - alpha_bar_t uses one step too few"),
    (switched(_ddpm, "ddpm_no_sqrt", how="no_sqrt"), r"x_t \(vs the closed form.* - the square roots are missing"),
    (switched(_ddpm, "ddpm_no_sqrt_on_alpha_bar", how="no_sqrt_signal"), r"x_t .* - the square root on alpha_bar_t is "
                                                                       r"missing"),
    (switched(_ddpm, "ddpm_alpha_t_not_cumulative", how="alpha_t"), r"alpha_bar_t .* - this uses alpha_t = 1 - beta_t"),
    (switched(_ddpm, "ddpm_beta_for_alpha_bar", how="beta"), r"alpha_bar_t .* - this uses beta_t where alpha_bar_t"),
    (switched(_ddpm, "ddpm_sqrt_beta_noise", how="sqrt_beta_noise"), r"x_t .* - the noise is scaled by sqrt\(beta_t\)"),
    (switched(_ddpm, "ddpm_T_plus_1_betas", how="T_plus_1"), r"alpha_bar_t .* - the schedule has T \+ 1 betas"),
    (switched(_ddpm, "ddpm_negative_steps_wrap", how="no_range_check"),
     r"case=a step outside \[0, T\), t\[0\]=50.*expected ValueError|t\[0\]=-1.*expected ValueError"),
)


@pytest.mark.parametrize("wrong, match", DDPM_MISTAKES)
def test_check_ddpm_add_noise_rejects(wrong, match):
    with pytest.raises(CheckFailed, match=match):
        checks.check_ddpm_add_noise(wrong)


def test_planted_helpers_are_right_when_not_broken(one_thread):
    """With no mistake switched on, each planted helper passes: the mistakes, not the helpers, fail."""
    checks.check_cosine_top_k(switched(_topk, "topk", how=None))
    checks.check_rag_prompt(switched(_rag, "rag", how=None))
    checks.check_few_shot_prompt(switched(_few_wrong, "few", how=None))
    checks.check_squad_scores(switched(_squad, "squad", how=None))
    checks.check_ddpm_add_noise(switched(_ddpm, "ddpm", how=None))


# ----------------------------------------------------------------- the guard

def test_guard_refuses_the_reference_libraries():
    setup = "import numpy as np\nimport torch\n"
    ns = kernel(setup, "from sklearn.neighbors import NearestNeighbors\n"
                       "def cosine_top_k(queries, keys, k):\n"
                       "    nn = NearestNeighbors(n_neighbors=k, metric='cosine').fit(keys.numpy())\n"
                       "    d, i = nn.kneighbors(queries.numpy())\n"
                       "    return 1 - d, i\n")
    with pytest.raises(ForbiddenCall, match=r"cosine_top_k .*sklearn"):
        checks.check_cosine_top_k(ns["cosine_top_k"])
    ns = kernel(setup, "def ddpm_add_noise(x0, t, noise, num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02):\n"
                       "    from diffusers import DDPMScheduler\n"
                       "    s = DDPMScheduler(num_train_timesteps, beta_start, beta_end)\n"
                       "    return s.add_noise(x0, noise, t), s.alphas_cumprod[t]\n")
    with pytest.raises(ForbiddenCall, match=r"ddpm_add_noise .*diffusers"):
        checks.check_ddpm_add_noise(ns["ddpm_add_noise"])
    ns = kernel(setup, "import torchmetrics.functional.text as T\n"
                       "def squad_scores(predictions, references):\n"
                       "    return T.squad([{'prediction_text': predictions[0], 'id': '0'}], [])\n")
    with pytest.raises(ForbiddenCall, match=r"squad_scores .*torchmetrics"):
        checks.check_squad_scores(ns["squad_scores"])


def test_guard_allows_every_correct_answer():
    for task in checks.TASKS:
        for fn in (solution_of(ASSIGNMENT)[task.name], *CORRECT[task.check]):
            assert static_violations(fn, modules=task.modules, callables=task.callables) == [], fn.__name__


# ----------------------------------------------------------------- under a course secret

SECRETS = ("course secret A", "another secret", "3")
MISTAKES = {"check_cosine_top_k": TOPK_MISTAKES, "check_rag_prompt": RAG_MISTAKES,
            "check_few_shot_prompt": FEW_MISTAKES, "check_squad_scores": SQUAD_MISTAKES,
            "check_ddpm_add_noise": DDPM_MISTAKES}


@pytest.mark.parametrize("secret", SECRETS)
def test_checks_hold_under_several_course_secrets(monkeypatch, secret, one_thread):
    """With a secret the inputs change; the solution and the correct variants still pass, mistakes fail."""
    monkeypatch.setenv("AUTOGRADER_SECRET", secret)
    assert_checks_hold(ASSIGNMENT, checks, checks.TASKS, CORRECT, MISTAKES)


# ----------------------------------------------------------------- the tolerances

def measure_spread(secrets=(None,)) -> dict:
    """Largest |got - want| / (1 + |want|) of the solution and the correct variants, per tolerance constant.

    ``python -c "from tests.test_checks_ch13 import measure_spread; print(measure_spread(range(20)))"``
    gives the numbers written beside the constants in ``autograder/checks/ch13_using_llms.py``.
    """
    import os
    from unittest import mock

    spread: dict[str, float] = {}
    names = {id(v): k for k, v in vars(checks).items() if k.startswith("TOL")}

    def record(got, want, *, tol, what, **kwargs):
        g = np.asarray(got.detach() if hasattr(got, "detach") else got, dtype=float)
        w = np.asarray(want.detach() if hasattr(want, "detach") else want, dtype=float)
        name = names[id(tol)] + (" alpha_bar" if what.startswith("alpha_bar") else "")
        spread[name] = max(spread.get(name, 0.0), float(np.max(np.abs(g - w) / (1 + np.abs(w)), initial=0.0)))

    old = os.environ.get("AUTOGRADER_SECRET")
    try:
        with mock.patch.object(checks, "_close", record):
            for secret in secrets:
                if secret is not None:
                    os.environ["AUTOGRADER_SECRET"] = f"spread {secret}"
                for task in (checks.TOPK, checks.SQUAD, checks.DDPM):
                    for fn in (solution_of(ASSIGNMENT)[task.name], *CORRECT[task.check]):
                        check_of(task)(fn)
    finally:
        os.environ.pop("AUTOGRADER_SECRET", None)
        if old is not None:
            os.environ["AUTOGRADER_SECRET"] = old
    return spread


def test_tolerances_sit_well_above_the_measured_float32_spread(one_thread):
    spread = measure_spread()
    assert set(spread) == {"TOL_COSINE", "TOL_SQUAD", "TOL_DDPM", "TOL_DDPM alpha_bar"}
    for name, err in spread.items():
        tol = getattr(checks, name.split()[0])
        assert 3 * err <= tol["atol"], (name, err, tol)
