"""Hidden checks for the chapter 13 exercise: retrieval, prompt builders, QA metrics, DDPM noising.

References, all computed live (:mod:`autograder.checks._ch13_references`):

* ``cosine_top_k`` - ``sklearn.neighbors.NearestNeighbors(metric="cosine", algorithm="brute")`` in
  float64: the indices exactly, the similarities (1 - its distances) to :data:`TOL_COSINE`. Keys of
  norms 0.01 to 100 (so a dot product without normalising picks the long keys), keys along a query,
  k = 1 and k = N. Tie rule: none is needed, since the inputs are redrawn until no two of each query's
  k + 1 best similarities lie within 1e-3 (:data:`_ch13_references.MIN_GAP`). Zero vectors and k
  outside [1, N] must raise ValueError;
* ``rag_prompt``, ``few_shot_prompt`` - the exact string of the rules written out again in the
  references, with budgets counted by the course tokenizer (``len(tokenizer.encode(prompt))``) and
  drawn to keep all, some (exactly at the budget and one token short of the next part) and none of the
  optional parts; a probe calls the student's function in the sandbox with the course tokenizer. A
  budget too small for the fixed parts must raise ValueError;
* ``squad_scores`` - ``torchmetrics.functional.text.squad`` question by question (it reports
  percentages; the task returns fractions), on hand-made edge cases and generated answers;
* ``ddpm_add_noise`` - the closed form of q(x_t | x_0) in float64 and diffusers'
  ``DDPMScheduler(beta_schedule="linear").add_noise`` in float32 (x_t), the float64 cumulative
  product (alpha_bar_t); t outside [0, T) must raise ValueError.

When a result is wrong the check names the usual mistake that reproduces it. Every random input comes
from :func:`autograder.secret.hidden_rng` (or its seed).

Taught in: book/13-using-llms
"""

from __future__ import annotations

import numpy as np

from autograder.checks import _ch13_references as ref
from autograder.compare import (
    assert_close,
    assert_equal,
    describe,
    fail,
    probe_result,
    sharp_hints,
    to_array,
    unpack,
)
from autograder.guard import call_student, run_probe
from autograder.spec import Task

LIB = ("llmcourse.retrieval", "llmcourse.rag", "llmcourse.evaluation", "llmcourse.diffusion")
TOPK, RAG, FEWSHOT, SQUAD, DDPM = TASKS = (
    Task("ch13_cosine_top_k", "cosine_top_k(queries, keys, k)", 3,
         "`(scores, indices)`, each `(Q, k)`, best first", '`sklearn.neighbors.NearestNeighbors(metric="cosine")`',
         modules=("sklearn.neighbors", "sklearn.metrics.pairwise", "faiss", "llmcourse.vector_index", LIB[0])),
    Task("ch13_rag_prompt", "rag_prompt(question, passages, max_tokens, tokenizer)", 3, "the prompt, a `str`",
         "the exact prompt under the stated rules, tokens counted by the course tokenizer", modules=(LIB[1],)),
    Task("ch13_few_shot_prompt", "few_shot_prompt(instruction, demonstrations, query, max_tokens, tokenizer)", 2,
         "the prompt, a `str`", "the exact prompt under the stated rules, tokens counted by the course tokenizer",
         modules=(LIB[1],)),
    Task("ch13_squad_scores", "squad_scores(predictions, references)", 3, "`(em, f1)`, each `(N,)` in [0, 1]",
         "`torchmetrics.text.SQuAD`, question by question", modules=("torchmetrics", "evaluate", LIB[2])),
    Task("ch13_ddpm_add_noise", "ddpm_add_noise(x0, t, noise, num_train_timesteps=1000, beta_start=1e-4, "
         "beta_end=0.02)", 3, "`(x_t, alpha_bar_t)`: like `x0`, and `(B,)`",
         "the closed form `sqrt(abar_t) * x0 + sqrt(1 - abar_t) * noise` and `diffusers.DDPMScheduler.add_noise`",
         modules=("diffusers", LIB[3])),
)
# Tolerances from the spread of correct float32 implementations (the solution and 3 rewrites per task:
# numpy and torch, float32 and float64, loops and vectorised) against the references, under 20 course
# secrets (tests/test_checks_ch13.py, measure_spread). Largest |got - want| / (1 + |want|), then the tolerance:
# - cosine similarities 1.2e-07 -> 1e-5;
# - x_t 2.2e-06, set by the float32 comparison with diffusers' add_noise (diffusers itself is 2.2e-06 from
#   the float64 closed form: its float32 cumulative product) -> 2e-5; alpha_bar_t 1.3e-07 -> 2e-5;
# - EM and F1: torchmetrics computes F1 in float32 (4.4e-08 on values <= 1) -> 1e-6.
TOL_COSINE = {"rtol": 1e-5, "atol": 1e-5}
TOL_DDPM = {"rtol": 2e-5, "atol": 2e-5}
TOL_SQUAD = {"rtol": 0.0, "atol": 1e-6}


def _expect_function(fn, task: str) -> None:
    if not getattr(fn, "__llmcourse_remote__", False) and not callable(fn):
        fail(f"{task}: expected a function, got {type(fn).__name__}")


def _close(got, want, *, what, inputs, tol, hints=()):
    assert_close(got, want, what=what, inputs=inputs, hints=sharp_hints(hints, got, want, **tol), **tol)


def raises_probe(student_fn, args, kwargs, with_tokenizer):
    """PROBE: call the student's function where it must refuse its input; report what it raised."""
    if with_tokenizer:
        args = [*args, ref.course_tokenizer()]
    try:
        result = student_fn(*args, **kwargs)
    except ValueError as exc:
        return {"raised": "ValueError", "message": str(exc)[:200]}
    except Exception as exc:  # noqa: BLE001 - the wrong kind of error is feedback, not a crash
        return {"raised": type(exc).__name__, "message": str(exc)[:200]}
    return {"returned": type(result).__name__}


def _expect_value_error(task: Task, student_fn, args, kwargs, inputs, why: str, with_tokenizer=False) -> None:
    out = probe_result(run_probe(raises_probe, student_fn, list(args), dict(kwargs), with_tokenizer, task=task,
                                 inputs=inputs), what=task.name, inputs=inputs)
    if out.get("raised") == "ValueError":
        return
    did = f"returned a {out['returned']}" if "returned" in out else f"raised {out['raised']}: {out['message']}"
    fail(f"{task.name}{describe(inputs)}: expected ValueError ({why}), but your function {did}")


# ----------------------------------------------------------------- task 1: cosine top-k

def _index_hints(q, kk, k):
    sims = ref.cosine_matrix(q, kk)
    return [
        ("this ranks by the dot product: divide queries and keys by their norms first (long keys win otherwise)",
         lambda: np.argsort(-(q @ kk.T), axis=1, kind="stable")[:, :k]),
        ("this is the k least similar keys: sort by similarity, highest first",
         lambda: np.argsort(sims, axis=1, kind="stable")[:, :k]),
        ("this ranks by Euclidean distance between the raw vectors: cosine compares directions only",
         lambda: np.argsort(((q[:, None] - kk[None]) ** 2).sum(-1), axis=1, kind="stable")[:, :k]),
    ]


def _score_hints(q, kk, want_idx, want_scores):
    return [
        ("these are cosine distances 1 - cos: return the similarities cos", lambda: 1 - want_scores),
        ("these are dot products: divide queries and keys by their norms",
         lambda: np.take_along_axis(q @ kk.T, want_idx, 1)),
        ("only the keys are normalised: the query's norm scales every score",
         lambda: np.take_along_axis(q @ (kk / np.linalg.norm(kk, axis=1, keepdims=True)).T, want_idx, 1)),
    ]


def check_cosine_top_k(student_fn) -> None:
    """cosine_top_k(queries, keys, k) -> (scores, indices) equal NearestNeighbors(metric="cosine")."""
    _expect_function(student_fn, TOPK.name)
    for inputs, queries, keys, k in ref.top_k_cases():
        result = call_student(student_fn, queries.clone(), keys.clone(), k, task=TOPK, inputs=inputs)
        scores, idx = unpack(result, ("scores", "indices"), what="cosine_top_k", inputs=inputs)
        want_idx, want_scores = ref.sklearn_top_k(queries, keys, k)
        q, kk = np.asarray(queries, dtype=np.float64), np.asarray(keys, dtype=np.float64)
        hints = _index_hints(q, kk, k)
        got_idx = to_array(idx, what="indices", inputs=inputs)
        if got_idx.shape != want_idx.shape:
            fail(f"indices{describe(inputs)}: shape {tuple(got_idx.shape)} but expected {want_idx.shape}: k = {k} "
                 f"keys for each of the {len(queries)} queries")
        if not np.array_equal(got_idx, want_idx):
            why = next((w for w, wrong in hints if np.array_equal(np.asarray(wrong()), got_idx)), None)
            if why is None and np.array_equal(np.sort(got_idx, 1), np.sort(want_idx, 1)):
                why = "the right k keys, in the wrong order: sort them by similarity, highest first"
            row = int(np.argmax((got_idx != want_idx).any(1)))
            fail(f"indices (vs NearestNeighbors(metric='cosine')){describe(inputs)}: query {row}: got "
                 f"{got_idx[row].tolist()}, expected {want_idx[row].tolist()}" + (f" - {why}" if why else ""))
        assert_equal(got_idx, want_idx, what="indices (vs NearestNeighbors(metric='cosine'))", inputs=inputs)
        score_hints = _score_hints(q, kk, want_idx, want_scores)
        _close(scores, want_scores, what="scores (cosine similarities)", inputs=inputs, tol=TOL_COSINE,
               hints=score_hints)
    inputs, queries, keys, k = ref.top_k_cases()[0]
    zero_key = keys.clone()
    zero_key[3] = 0.0
    _expect_value_error(TOPK, student_fn, (queries, zero_key, k), {}, {"case": "keys[3] is a zero vector", "k": k},
                        "a zero vector has no direction, so no cosine")
    zero_query = queries.clone()
    zero_query[0] = 0.0
    _expect_value_error(TOPK, student_fn, (zero_query, keys, k), {}, {"case": "queries[0] is a zero vector", "k": k},
                        "a zero vector has no direction, so no cosine")
    for bad in (0, len(keys) + 1):
        _expect_value_error(TOPK, student_fn, (queries, keys, bad), {}, {"case": "k outside [1, N]", "k": bad,
                                                                         "N": len(keys)}, "k must lie in [1, N]")


# ----------------------------------------------------------------- tasks 2 and 3: prompt builders

def prompt_probe(student_fn, args):
    """PROBE: ``student_fn(*args, tokenizer)`` with the course tokenizer; the prompt it returns."""
    result = student_fn(*args, ref.course_tokenizer())
    if result is None:
        return {"problem": "your function returned None (is a `return` missing?)"}
    if not isinstance(result, str):
        return {"problem": f"expected the prompt as a str, got a {type(result).__name__}"}
    return {"prompt": result}


def _snippet(text: str, at: int, width: int = 30) -> str:
    return ascii(text[max(0, at - width):at + width])


def _compare_prompt(task: Task, got: str, want: str, mistakes, inputs: dict) -> None:
    if got == want:
        return
    at = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
    why = next((w for w, wrong in mistakes if wrong is not None and wrong == got), None)
    fail(f"{task.name}{describe(inputs)}: the prompt differs from character {at} on: expected "
         f"...{_snippet(want, at)}..., got ...{_snippet(got, at)}... ({len(want)} vs {len(got)} characters; "
         f"{ref.n_tokens(want)} vs {ref.n_tokens(got)} tokens)" + (f" - {why}" if why else ""))


def check_rag_prompt(student_fn) -> None:
    """rag_prompt(question, passages, max_tokens, tokenizer) builds the exact prompt, dropping the worst passages."""
    _expect_function(student_fn, RAG.name)
    for inputs, question, passages, budget in ref.rag_cases():
        out = probe_result(run_probe(prompt_probe, student_fn, [question, list(passages), budget], task=RAG,
                                     inputs=inputs), what=RAG.name, inputs=inputs)
        want = ref.rag_reference(question, passages, budget)
        _compare_prompt(RAG, out["prompt"], want, ref.rag_mistakes(question, passages, budget), inputs)
    inputs, question, passages, budget = ref.rag_too_small()
    _expect_value_error(RAG, student_fn, (question, passages, budget), {}, inputs,
                        "never cut the question: when not even the header and question fit, refuse", True)


def check_few_shot_prompt(student_fn) -> None:
    """few_shot_prompt(...) builds the exact prompt, dropping demonstrations from the start to fit."""
    _expect_function(student_fn, FEWSHOT.name)
    for inputs, instruction, demos, query, budget in ref.few_shot_cases():
        args = [instruction, [tuple(d) for d in demos], query, budget]
        out = probe_result(run_probe(prompt_probe, student_fn, args, task=FEWSHOT, inputs=inputs),
                           what=FEWSHOT.name, inputs=inputs)
        want = ref.few_shot_reference(instruction, demos, query, budget)
        _compare_prompt(FEWSHOT, out["prompt"], want, ref.few_shot_mistakes(instruction, demos, query, budget),
                        inputs)
    instruction, demos, query = "Add the numbers.", [("1 + 2", "3")], "3 + 4"
    budget = ref.n_tokens(ref.few_shot_prompt(instruction, [], query, 0)) - 1
    _expect_value_error(FEWSHOT, student_fn, (instruction, demos, query, budget), {},
                        {"case": "even the instruction and query do not fit", "max_tokens": budget},
                        "the instruction and the query are never cut", True)


# ----------------------------------------------------------------- task 4: exact match and F1

def _squad_hints(preds, golds):
    from collections import Counter

    norm = ref.squad_normalize
    def f1(p, g, bag=Counter):
        pt, gt = norm(p).split(), norm(g).split()
        if not pt or not gt:
            return float(pt == gt)
        same = sum((bag(pt) & bag(gt)).values()) if bag is Counter else len(set(pt) & set(gt))
        if same == 0:
            return 0.0
        prec, rec = same / (len(set(pt)) if bag is set else len(pt)), same / (len(set(gt)) if bag is set else len(gt))
        return 2 * prec * rec / (prec + rec)

    def em(p, g, normalise=True):
        return float(norm(p) == norm(g)) if normalise else float(p == g)

    ems = np.array([max(em(p, g) for g in gs) for p, gs in zip(preds, golds)])
    f1s = np.array([max(f1(p, g) for g in gs) for p, gs in zip(preds, golds)])
    return {
        "em": [("exact match compares the raw strings: normalise both first (lower case, no punctuation, no a/an/the, "
                "single spaces)", lambda: [max(em(p, g, False) for g in gs) for p, gs in zip(preds, golds)]),
               ("only the first gold answer is used: take the best score over all gold answers",
                lambda: [em(p, gs[0]) for p, gs in zip(preds, golds)]),
               ("this averages over the gold answers: take the best (max)",
                lambda: [np.mean([em(p, g) for g in gs]) for p, gs in zip(preds, golds)]),
               ("these are percentages: return fractions in [0, 1]", lambda: 100 * ems)],
        "f1": [("F1 is computed on sets of tokens: count repeated tokens (multisets, collections.Counter)",
                lambda: [max(f1(p, g, set) for g in gs) for p, gs in zip(preds, golds)]),
               ("only the first gold answer is used: take the best score over all gold answers",
                lambda: [f1(p, gs[0]) for p, gs in zip(preds, golds)]),
               ("this averages over the gold answers: take the best (max)",
                lambda: [np.mean([f1(p, g) for g in gs]) for p, gs in zip(preds, golds)]),
               ("an empty answer against an empty gold scores 1 (they agree), against a non-empty one 0",
                lambda: [max((0.0 if not norm(p).split() or not norm(g).split() else f1(p, g)) for g in gs)
                         for p, gs in zip(preds, golds)]),
               ("these are percentages: return fractions in [0, 1]", lambda: 100 * f1s)],
    }


def check_squad_scores(student_fn) -> None:
    """squad_scores(predictions, references) -> (em, f1) equal torchmetrics' SQuAD, question by question."""
    _expect_function(student_fn, SQUAD.name)
    for inputs, preds, golds in ref.squad_cases():
        result = call_student(student_fn, list(preds), [list(g) for g in golds], task=SQUAD, inputs=inputs)
        em, f1 = unpack(result, ("em", "f1"), what="squad_scores", inputs=inputs)
        want = np.array([ref.squad_reference(p, g) for p, g in zip(preds, golds)])
        hints = _squad_hints(preds, golds)
        for k, (name, got) in enumerate((("em", em), ("f1", f1))):
            arr = to_array(got, what=name, inputs=inputs).astype(float)
            if arr.shape == want[:, k].shape and not np.allclose(arr, want[:, k], rtol=0, atol=TOL_SQUAD["atol"]):
                i = int(np.flatnonzero(np.abs(arr - want[:, k]) > TOL_SQUAD["atol"])[0])
                inputs = {**inputs, "first wrong question": i, "prediction": ascii(preds[i]),
                          "golds": ascii(golds[i])}
            _close(arr, want[:, k], what=f"{name} (vs torchmetrics' SQuAD)", inputs=inputs, tol=TOL_SQUAD,
                   hints=hints[name])


# ----------------------------------------------------------------- task 5: DDPM forward noising

def check_ddpm_add_noise(student_fn) -> None:
    """ddpm_add_noise(x0, t, noise, ...) -> (x_t, alpha_bar_t) equal the closed form and diffusers' add_noise."""
    _expect_function(student_fn, DDPM.name)
    for inputs, x0, t, noise, sched in ref.ddpm_cases():
        kwargs = {} if sched is None else dict(zip(("num_train_timesteps", "beta_start", "beta_end"), sched))
        T, b0, b1 = sched or (1000, 1e-4, 0.02)
        result = call_student(student_fn, x0.clone(), t.clone(), noise.clone(), task=DDPM, inputs=inputs, **kwargs)
        x_t, abar = unpack(result, ("x_t", "alpha_bar_t"), what="ddpm_add_noise", inputs=inputs)
        want_x, want_abar = ref.closed_form(x0, t, noise, T, b0, b1)
        mistakes = ref.ddpm_mistakes(x0, t, noise, T, b0, b1)
        _close(abar, want_abar, what="alpha_bar_t (vs the cumulative product of 1 - beta)", inputs=inputs,
               tol=TOL_DDPM, hints=[(w, (lambda f=f: f()[1])) for w, f in mistakes])
        _close(x_t, want_x, what="x_t (vs the closed form of q(x_t | x_0))", inputs=inputs, tol=TOL_DDPM,
               hints=[(w, (lambda f=f: f()[0])) for w, f in mistakes])
        _close(x_t, ref.diffusers_add_noise(x0, t, noise, T, b0, b1), what="x_t (vs DDPMScheduler.add_noise)",
               inputs=inputs, tol=TOL_DDPM)
    inputs, x0, t, noise, _ = ref.ddpm_cases()[2]
    for bad in (50, -1):
        t_bad = t.clone()
        t_bad[0] = bad
        _expect_value_error(DDPM, student_fn, (x0, t_bad, noise), {"num_train_timesteps": 50},
                            {"case": "a step outside [0, T)", "t[0]": bad, "T": 50},
                            "steps run from 0 to T - 1 (a negative index would silently wrap around)")


__all__ = ["TASKS", "check_cosine_top_k", "check_rag_prompt", "check_few_shot_prompt", "check_squad_scores",
           "check_ddpm_add_noise"]
