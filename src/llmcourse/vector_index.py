"""Nearest-neighbour search over embedding vectors: exact top-k, recall@k, and faiss indexes.

A vector index answers "which stored vectors are most similar to this query?". The exact
answer compares the query with every stored vector: one matrix product and a partial sort
(``top_k``). Approximate indexes look at only part of the collection and may miss some true
neighbours, which ``recall_at_k`` measures against the exact answer. The faiss library
(Johnson, Douze & Jégou 2019, "Billion-scale similarity search with GPUs"; Douze et al. 2024,
"The Faiss library") provides both kinds; ``build_faiss_index`` makes the three the chapter
compares, all scoring by inner product (the cosine similarity, for unit vectors):

* ``"flat"``: ``IndexFlatIP``, exact brute force;
* ``"hnsw"``: ``IndexHNSWFlat``, a layered proximity graph searched greedily (Malkov &
  Yashunin 2020, "Efficient and robust approximate nearest neighbor search using Hierarchical
  Navigable Small World graphs");
* ``"ivf"``: ``IndexIVFFlat``, vectors filed under their nearest of ``nlist`` k-means centroids;
  a query scans only the ``nprobe`` closest lists (Jégou, Douze & Schmid 2011, "Product
  quantization for nearest neighbor search", the IVF part).

``make_clustered`` draws unit vectors grouped around random centres, a stand-in for document
embeddings that cluster by topic; ``best_time`` times a call.

Taught in: book/07-tokens-embeddings
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

METRICS = ("ip", "cosine")
INDEX_KINDS = ("flat", "hnsw", "ivf")


def normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Rows scaled to unit length (float32); an all-zero row stays zero (its cosine with anything is 0).

    Shapes: x (N, D) -> (N, D).
    """
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"expected a (N, D) array, got shape {x.shape}")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, eps)


def top_k(queries: np.ndarray, keys: np.ndarray, k: int, *, metric: str = "ip",
          batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Exact search: the ``k`` keys with the largest score for each query, best first.

    ``metric="ip"`` scores by inner product (faiss ``IndexFlatIP``), ``"cosine"`` normalises both
    sides first. Equal scores keep the smaller key index first. Returns ``(scores, ids)`` like
    faiss's ``search``: float32 (Q, k) and int64 (Q, k). Queries go ``batch_size`` at a time, so
    memory stays near ``16 * batch_size * N`` bytes (scores and their argpartition).

    Shapes: queries (Q, D), keys (N, D); k <= N.
    """
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    queries, keys = np.asarray(queries, dtype=np.float32), np.asarray(keys, dtype=np.float32)
    if queries.ndim != 2 or keys.ndim != 2 or queries.shape[1] != keys.shape[1]:
        raise ValueError(f"queries (Q, D) and keys (N, D) must share D, got {queries.shape} and {keys.shape}")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= len(keys):
        raise ValueError(f"k must be an int in [1, {len(keys)}] (the number of keys), got {k!r}")
    if metric == "cosine":
        queries, keys = normalize(queries), normalize(keys)
    scores_out = np.empty((len(queries), k), dtype=np.float32)
    ids_out = np.empty((len(queries), k), dtype=np.int64)
    for start in range(0, len(queries), batch_size):  # bounded memory: (batch, N) scores at a time
        scores = queries[start:start + batch_size] @ keys.T  # (b, N)
        if k < scores.shape[1]:  # the k best in any order, in O(N), then sort only those
            cand = np.argpartition(-scores, k - 1, axis=1)[:, :k]  # (b, k)
        else:
            cand = np.tile(np.arange(scores.shape[1]), (len(scores), 1))
        cand_scores = np.take_along_axis(scores, cand, axis=1)
        # the k-th best score may be tied with keys argpartition left out: take every key that ties it
        kth = cand_scores.min(axis=1, keepdims=True)
        for row in np.flatnonzero((scores == kth).sum(axis=1) > (cand_scores == kth).sum(axis=1)):
            cand_row = np.flatnonzero(scores[row] >= kth[row])
            order = np.lexsort((cand_row, -scores[row, cand_row]))[:k]
            cand[row], cand_scores[row] = cand_row[order], scores[row, cand_row[order]]
        order = np.lexsort((cand, -cand_scores), axis=1)  # by score descending, then by index
        ids_out[start:start + batch_size] = np.take_along_axis(cand, order, axis=1)
        scores_out[start:start + batch_size] = np.take_along_axis(cand_scores, order, axis=1)
    return scores_out, ids_out


def recall_at_k(found: np.ndarray, truth: np.ndarray, k: int | None = None) -> float:
    """Mean over queries of |found[:k] ∩ truth[:k]| / k: the share of true neighbours retrieved.

    ``found`` from an approximate index, ``truth`` from an exact search; faiss marks missing
    results with -1, which never counts as found. Shapes: found (Q, >= k), truth (Q, >= k).
    """
    found, truth = np.asarray(found), np.asarray(truth)
    if found.ndim != 2 or truth.ndim != 2 or len(found) != len(truth):
        raise ValueError(f"found and truth must be (Q, k) arrays with the same Q, got {found.shape} and {truth.shape}")
    k = truth.shape[1] if k is None else k
    if not 1 <= k <= min(found.shape[1], truth.shape[1]):
        raise ValueError(f"k must be in [1, {min(found.shape[1], truth.shape[1])}], got {k}")
    hits = sum(len(set(f[:k].tolist()) - {-1} & set(t[:k].tolist())) for f, t in zip(found, truth))
    return hits / (k * len(truth))


def best_time(fn: Callable, *args, repeat: int = 3, **kwargs) -> tuple[object, float]:
    """``(fn(*args, **kwargs), seconds)``: the fastest of ``repeat`` calls (the least disturbed by other work)."""
    if repeat < 1:
        raise ValueError(f"repeat must be >= 1, got {repeat}")
    best, out = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn(*args, **kwargs)
        best = min(best, time.perf_counter() - start)
    return out, best


def make_clustered(n: int, d: int, *, n_clusters: int = 100, spread: float = 0.5, seed: int = 0) -> np.ndarray:
    """``n`` unit vectors (float32, (n, d)): random Gaussian centres plus ``spread`` times Gaussian noise.

    A stand-in for embeddings of documents on ``n_clusters`` topics. Vectors with no structure at
    all (``spread`` large) have nearest neighbours hardly nearer than the rest, the hard case for
    approximate search.
    """
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_clusters, d)).astype(np.float32)
    x = centres[rng.integers(n_clusters, size=n)] + spread * rng.standard_normal((n, d)).astype(np.float32)
    return normalize(x)


def build_faiss_index(kind: str, vectors: np.ndarray, *, hnsw_m: int = 16, ef_construction: int = 40,
                      ef_search: int = 32, nlist: int | None = None, nprobe: int = 8, seed: int = 0):
    """A faiss index of ``vectors`` (N, D) that scores by inner product: ``"flat"``, ``"hnsw"`` or ``"ivf"``.

    HNSW: ``hnsw_m`` links per node, ``ef_construction`` / ``ef_search`` candidates kept while
    building / searching (more: better recall, slower). IVF: ``nlist`` lists (default
    ``round(sqrt(N))``, at least 1), k-means trained on the vectors with ``seed``; a query scans
    ``nprobe`` of them. Search with ``index.search(queries, k)`` -> ``(scores, ids)``.
    """
    import faiss

    if kind not in INDEX_KINDS:
        raise ValueError(f"kind must be one of {INDEX_KINDS}, got {kind!r}")
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    n, d = vectors.shape
    if kind == "flat":
        index = faiss.IndexFlatIP(d)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = ef_construction
        index.hnsw.efSearch = ef_search
    else:
        nlist = max(1, round(n**0.5)) if nlist is None else nlist
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = seed
        index.cp.min_points_per_centroid = 1  # small collections: no warning about few points per list
        index.train(vectors)
        index.nprobe = min(nprobe, nlist)
    index.add(vectors)
    return index
