"""llmcourse.vector_index: exact top-k against faiss IndexFlatIP and torch cosine + topk; recall; faiss indexes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from llmcourse import vector_index as vi

faiss = pytest.importorskip("faiss")


@pytest.fixture(autouse=True)
def _one_faiss_thread():
    n = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(n)


@pytest.mark.parametrize("n,d,q,k,seed", [(50, 8, 7, 1, 0), (1000, 32, 20, 10, 1), (3000, 64, 5, 100, 2)])
def test_top_k_matches_faiss_flat_ip(n, d, q, k, seed):
    rng = np.random.default_rng(seed)
    keys = rng.standard_normal((n, d)).astype(np.float32)
    queries = rng.standard_normal((q, d)).astype(np.float32)
    scores, ids = vi.top_k(queries, keys, k, batch_size=3)  # small batches: the batching is exercised too
    index = faiss.IndexFlatIP(d)
    index.add(keys)
    want_scores, want_ids = index.search(queries, k)
    np.testing.assert_array_equal(ids, want_ids, err_msg=f"ids differ from IndexFlatIP for n={n}, d={d}, k={k}")
    np.testing.assert_allclose(scores, want_scores, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_top_k_cosine_matches_torch_cosine_similarity_and_topk(seed):
    g = torch.Generator().manual_seed(seed)
    keys, queries = torch.randn(500, 16, generator=g) * 3, torch.randn(9, 16, generator=g)
    want = F.cosine_similarity(queries[:, None, :].double(), keys[None, :, :].double(), dim=-1)  # (Q, N)
    want_scores, want_ids = torch.topk(want, 10, dim=-1)
    scores, ids = vi.top_k(queries.numpy(), keys.numpy(), 10, metric="cosine")
    np.testing.assert_array_equal(ids, want_ids.numpy(), err_msg=f"cosine top-10 ids differ from torch, seed={seed}")
    np.testing.assert_allclose(scores, want_scores.numpy(), rtol=1e-5, atol=1e-6)


def test_top_k_ties_keep_the_smaller_index_first():
    keys = np.array([[0.0, 1.0], [1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.5, 0.0]], dtype=np.float32)
    scores, ids = vi.top_k(np.array([[1.0, 0.0]]), keys, 2)
    assert ids.tolist() == [[1, 3]] and scores.tolist() == [[1.0, 1.0]]
    # the k-th score tied with keys outside the first k found: still the smallest indices
    keys = np.zeros((20, 2), dtype=np.float32)
    keys[:, 0] = 1.0
    _, ids = vi.top_k(np.array([[1.0, 0.0]]), keys, 3)
    assert ids.tolist() == [[0, 1, 2]]
    # equal scores in float64 torch, sorted stably, agree
    _, ids = vi.top_k(np.array([[0.0, 1.0]]), np.eye(2, dtype=np.float32)[[0, 1, 0, 1]], 4)
    assert ids.tolist() == [[1, 3, 0, 2]]


def test_top_k_zero_vector_has_cosine_zero():
    keys = np.array([[0.0, 0.0], [-1.0, 0.0], [1.0, 1.0]], dtype=np.float32)
    scores, ids = vi.top_k(np.array([[1.0, 0.0]]), keys, 3, metric="cosine")
    want = F.cosine_similarity(torch.tensor([[1.0, 0.0]]), torch.from_numpy(keys), dim=-1)
    assert ids.tolist() == [[2, 0, 1]]
    np.testing.assert_allclose(scores[0], want.numpy()[[2, 0, 1]], atol=1e-6)


def test_top_k_rejects_bad_arguments():
    x = np.ones((4, 3), dtype=np.float32)
    with pytest.raises(ValueError, match=r"k must be an int in \[1, 4\]"):
        vi.top_k(x, x, 5)
    with pytest.raises(ValueError, match="share D"):
        vi.top_k(x, np.ones((4, 2)), 1)
    with pytest.raises(ValueError, match="metric"):
        vi.top_k(x, x, 1, metric="l2")


def test_recall_at_k_known_answer():
    truth = np.array([[1, 2, 3, 4], [5, 6, 7, 8]])
    found = np.array([[4, 3, 9, -1], [5, -1, -1, -1]])
    assert vi.recall_at_k(found, truth) == (2 + 1) / 8
    assert vi.recall_at_k(found, truth, k=2) == (0 + 1) / 4  # first two of each: {4,3} vs {1,2}; {5,-1} vs {5,6}
    assert vi.recall_at_k(truth, truth) == 1.0
    with pytest.raises(ValueError, match="same Q"):
        vi.recall_at_k(found[:1], truth)


@pytest.mark.parametrize("kind", vi.INDEX_KINDS)
def test_faiss_indexes_find_the_exact_neighbours_of_clustered_data(kind):
    keys = vi.make_clustered(5000, 32, n_clusters=20, seed=0)
    noise = np.random.default_rng(1).standard_normal((50, 32)).astype(np.float32)
    queries = vi.normalize(keys[:50] + 0.1 * noise)  # near stored vectors, but none of them exactly
    _, truth = vi.top_k(queries, keys, 10)
    _, found = vi.build_faiss_index(kind, keys).search(queries, 10)
    recall = vi.recall_at_k(found, truth)
    assert recall == 1.0 if kind == "flat" else recall >= 0.9, f"{kind}: recall@10 {recall:.3f}"


def test_make_clustered_is_seeded_unit_vectors():
    a, b = vi.make_clustered(100, 8, seed=3), vi.make_clustered(100, 8, seed=3)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, rtol=1e-6)
    assert not np.array_equal(a, vi.make_clustered(100, 8, seed=4))


def test_best_time_returns_the_result_and_a_positive_time():
    out, seconds = vi.best_time(sum, [1, 2, 3], repeat=2)
    assert out == 6 and 0 <= seconds < 1
