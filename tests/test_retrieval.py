"""llmcourse.retrieval against a loop over Robertson's BM25 formula, brute-force cosine search with
scikit-learn, sklearn's top_k_accuracy_score, and hand-checkable chunking and fusion."""

from __future__ import annotations

import math
import random
from collections import Counter

import numpy as np
import pytest
import torch
from sklearn.metrics import top_k_accuracy_score
from sklearn.neighbors import NearestNeighbors

from llmcourse import retrieval as rt

torch.set_num_threads(1)
VOCAB = ["cat", "dog", "mat", "sat", "ran", "red", "blue", "bm25", "index", "token", "the", "a"]


def _docs(seed: int, n: int = 30) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(VOCAB[: rng.randint(4, len(VOCAB))]) for _ in range(rng.randint(1, 25)))
            for _ in range(n)]


def _bm25_loop(query: str, docs: list[str], k1: float, b: float) -> list[float]:
    """Robertson & Zaragoza (2009), eq. 3.15 with the non-negative IDF ln(1 + (N - n + 0.5) / (n + 0.5)),
    summed over the distinct query terms; one document at a time."""
    toks = [d.lower().split() for d in docs]
    avgdl = sum(len(t) for t in toks) / len(toks)
    out = []
    for t in toks:
        tf, score = Counter(t), 0.0
        for term in set(query.lower().split()):
            n = sum(term in other for other in toks)
            if tf[term]:
                idf = math.log(1 + (len(toks) - n + 0.5) / (n + 0.5))
                score += idf * tf[term] * (k1 + 1) / (tf[term] + k1 * (1 - b + b * len(t) / avgdl))
        out.append(score)
    return out


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("k1,b", [(1.2, 0.75), (2.0, 0.0), (0.5, 1.0)])
def test_bm25_matches_a_loop_over_robertsons_formula(seed, k1, b):
    docs = _docs(seed)
    queries = [" ".join(random.Random(seed + i).choices(VOCAB + ["unseen"], k=3)) for i in range(8)]
    bm = rt.BM25(docs, k1=k1, b=b)
    want = np.array([_bm25_loop(q, docs, k1, b) for q in queries])
    np.testing.assert_allclose(bm.scores(queries), want, rtol=1e-5, atol=1e-5)
    scores, ids = bm.search(queries, 5)
    for q in range(len(queries)):  # best first, ties by smaller id
        order = sorted(range(len(docs)), key=lambda d: (-round(want[q, d], 4), d))[:5]
        np.testing.assert_allclose(scores[q], want[q, order], rtol=1e-5, atol=1e-5)


def test_bm25_rare_terms_weigh_more():
    bm = rt.BM25(["cat dog", "cat mat", "cat sat"])
    assert bm.scores(["mat"])[0, 1] > bm.scores(["cat"])[0, 1] > 0


@pytest.mark.parametrize("seed", range(3))
def test_dense_search_matches_brute_force_cosine(seed):
    docs = _docs(seed, 60)
    dense = rt.DenseRetriever(docs, dim=8, seed=seed)
    queries = _docs(seed + 100, 10)
    sims, ids = dense.search(queries, 5)
    q = dense.encode(queries)
    nn = NearestNeighbors(n_neighbors=5, metric="cosine", algorithm="brute").fit(dense.embeddings)
    dist, want = nn.kneighbors(q)
    np.testing.assert_allclose(sims, 1 - dist, atol=1e-5)
    for row in range(len(queries)):  # ids may swap only between (near-)equal similarities
        np.testing.assert_allclose((q[row] @ dense.embeddings[ids[row]].T), 1 - dist[row], atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(dense.embeddings, axis=1), 1.0, atol=1e-5)


def test_chunk_words_known_answer_and_coverage():
    assert rt.chunk_words("a b c d e", size=3, overlap=1) == ["a b c", "c d e"]
    assert rt.chunk_words("a b", size=3, overlap=1) == ["a b"]
    assert rt.chunk_words("", size=3, overlap=0) == []
    words = [f"w{i}" for i in range(103)]
    chunks = rt.chunk_words(" ".join(words), size=10, overlap=4)
    assert all(len(c.split()) <= 10 for c in chunks)
    assert [c.split()[0] for c in chunks] == words[::6][: len(chunks)]
    assert set(" ".join(chunks).split()) == set(words) and chunks[-1].split()[-1] == "w102"
    for c, nxt in zip(chunks, chunks[1:]):
        assert c.split()[-4:] == nxt.split()[:4]
    with pytest.raises(ValueError, match="overlap"):
        rt.chunk_words("a b", size=3, overlap=3)


@pytest.mark.parametrize("k", [1, 3, 5])
def test_recall_at_k_with_one_answer_is_sklearn_top_k_accuracy(k):
    rng = np.random.default_rng(k)
    scores = rng.standard_normal((50, 12))
    truth = rng.integers(12, size=50)
    ids = np.argsort(-scores, axis=1)
    want = top_k_accuracy_score(truth, scores, k=k, labels=np.arange(12))
    assert rt.recall_at_k(ids, [{t} for t in truth], k) == pytest.approx(want)
    assert rt.hit_rate_at_k(ids, [{t} for t in truth], k) == pytest.approx(want)


def test_recall_at_k_counts_a_share_of_several_answers():
    assert rt.recall_at_k(np.array([[3, 1, 2], [0, 5, 6]]), [{1, 9}, {7}], 2) == pytest.approx(0.25)
    assert rt.hit_rate_at_k(np.array([[3, 1, 2], [0, 5, 6]]), [{1, 9}, {7}], 2) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="relevant passage"):
        rt.recall_at_k(np.array([[0]]), [set()], 1)


def test_reciprocal_rank_fusion_known_answer():
    """ids 1 and 2 are both ranked by both lists: 1/61 + 1/62 each, a tie broken by id; 0 once at rank 1."""
    fused = rt.reciprocal_rank_fusion([np.array([[1, 2, 0]]), np.array([[2, 1, -1]])], k=3)
    np.testing.assert_array_equal(fused, [[1, 2, 0]])
    fused = rt.reciprocal_rank_fusion([np.array([[0, 1]]), np.array([[2, 1]])], k=2)
    np.testing.assert_array_equal(fused, [[1, 0]])  # 1/62 + 1/62 beats 1/61


def test_retrievers_reject_bad_input():
    with pytest.raises(TypeError, match="sequence of str"):
        rt.BM25("one string")
    with pytest.raises(ValueError, match="k must be"):
        rt.BM25(["a b", "c"]).search(["a"], 3)
    with pytest.raises(TypeError, match="str"):
        rt.DenseRetriever(["a b", 3])
    with pytest.raises(ValueError, match="k1"):
        rt.BM25(["a"], b=2.0)


def test_markdown_prose_drops_code_and_markup(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("---\njupytext:\n  text_representation:\n    extension: .md\n    format_name: myst\n"
                    "kernelspec:\n  display_name: Python 3\n  language: python\n  name: python3\n---\n\n"
                    "# Title\n\nSome **bold** prose {cite:p}`key2020` with a [link](x.md).\n\n| a | b |\n| --- | :-: |\n\n"
                    "```{code-cell} ipython3\nsecret_code = 1\n```\n\n```{glossary}\nTerm (术语)\n  hidden\n```\n\nEnd.\n")
    text = rt.markdown_prose(page)
    assert text.split("\n") == ["Title", "Some bold prose with a link.", "a b", "End."]
