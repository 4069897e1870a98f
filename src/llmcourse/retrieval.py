"""Retrieval for RAG: chunking text into passages, BM25, a dense retriever in a faiss index, recall@k.

A retriever (检索器) takes a question and returns the ids of the ``k`` passages most likely to
hold its answer. The two classic families:

* **lexical**: score shared words. :class:`BM25` is Okapi BM25 (Robertson & Zaragoza 2009, "The
  probabilistic relevance framework: BM25 and beyond"), the default of Lucene and Elasticsearch;
* **dense**: embed question and passages as vectors and take the nearest by cosine similarity
  (DPR, Karpukhin et al. 2020, trains two BERT encoders for this). :class:`DenseRetriever` uses
  latent semantic analysis instead (Deerwester et al. 1990): TF-IDF vectors reduced by a truncated
  SVD, fitted on the passages alone, searched in an exact faiss index (``vector_index``).

:func:`reciprocal_rank_fusion` merges several rankings into a hybrid (Cormack, Clarke & Büttcher
2009). :func:`chunk_words` cuts a document into overlapping passages of ``size`` words;
:func:`recall_at_k` and :func:`hit_rate_at_k` score a retriever against the passages known to answer
each question.

Shapes: Q queries, N passages, V vocabulary terms, D embedding width, k results.

Taught in: book/13-using-llms
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence

import numpy as np

from llmcourse.vector_index import build_faiss_index, normalize, top_k

TOKEN_RE = re.compile(r"[a-z0-9]+")


def terms(text: str) -> list[str]:
    """Lower-cased runs of letters and digits: ``"BM25's k1, b!"`` -> ``["bm25", "s", "k1", "b"]``."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    return TOKEN_RE.findall(text.lower())


def _check_texts(texts, name: str) -> list[str]:
    if isinstance(texts, str) or not isinstance(texts, Sequence):
        raise TypeError(f"{name} must be a sequence of str, got {type(texts).__name__}")
    if not texts:
        raise ValueError(f"{name} must not be empty")
    bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
    if bad:
        raise TypeError(f"{name}[{bad[0]}] is a {type(texts[bad[0]]).__name__}, not a str")
    return list(texts)


def _check_k(k, n: int) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= n:
        raise ValueError(f"k must be an int in [1, {n}] (the number of passages), got {k!r}")
    return int(k)


def chunk_words(text: str, size: int = 80, overlap: int = 20) -> list[str]:
    """``text`` cut into passages of ``size`` words, each starting ``size - overlap`` words after the last.

    The overlap keeps a sentence that straddles a boundary whole in at least one passage. The last
    passage may be shorter; a text of at most ``size`` words is one passage; an empty text gives none.
    ``chunk_words("a b c d e", size=3, overlap=1)`` -> ``["a b c", "c d e"]``.
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"size must be an int >= 1, got {size!r}")
    if isinstance(overlap, bool) or not isinstance(overlap, int) or not 0 <= overlap < size:
        raise ValueError(f"overlap must be an int in [0, size={size}), got {overlap!r}")
    words = text.split()
    step = size - overlap
    out = []
    for start in range(0, len(words), step):
        out.append(" ".join(words[start:start + size]))
        if start + size >= len(words):
            break
    return out


class BM25:
    """Okapi BM25 over a fixed list of passages.

    score(q, d) = sum over the *distinct* terms t of q that occur in d of
    IDF(t) * f(t, d) * (k1 + 1) / (f(t, d) + k1 * (1 - b + b * |d| / avgdl)),
    where f(t, d) is the count of t in d, |d| the length of d in terms, avgdl the mean length, and
    IDF(t) = ln(1 + (N - n(t) + 0.5) / (n(t) + 0.5)) with n(t) the number of passages containing t:
    Robertson's IDF plus 1 inside the log, as in Lucene, so that it is never negative.
    ``k1`` limits how much repeating a term helps; ``b`` how much long passages are discounted.

    Because the score is linear in the query's term indicator, the passages are stored as one
    (N, V) weight matrix and a search is ``vector_index.top_k`` of query indicators against it.
    """

    def __init__(self, passages: Sequence[str], *, k1: float = 1.2, b: float = 0.75):
        passages = _check_texts(passages, "passages")
        if not (isinstance(k1, (int, float)) and k1 >= 0) or not (isinstance(b, (int, float)) and 0 <= b <= 1):
            raise ValueError(f"need k1 >= 0 and 0 <= b <= 1, got k1={k1!r}, b={b!r}")
        self.k1, self.b = float(k1), float(b)
        counts = [Counter(terms(p)) for p in passages]
        self.vocab = {t: i for i, t in enumerate(sorted({t for c in counts for t in c}))}
        n, v = len(passages), len(self.vocab)
        tf = np.zeros((n, v), dtype=np.float64)  # (N, V) term counts
        for row, c in enumerate(counts):
            for t, f in c.items():
                tf[row, self.vocab[t]] = f
        lengths = tf.sum(axis=1, keepdims=True)  # (N, 1)
        avgdl = max(float(lengths.mean()), 1e-12)
        df = (tf > 0).sum(axis=0)  # (V,)
        self.idf = np.log1p((n - df + 0.5) / (df + 0.5))  # (V,)
        norm = self.k1 * (1 - self.b + self.b * lengths / avgdl)  # (N, 1)
        self.weights = (self.idf * tf * (self.k1 + 1) / (tf + norm)).astype(np.float32)  # (N, V)

    def query_vectors(self, queries: Sequence[str]) -> np.ndarray:
        """(Q, V) float32 indicators of each query's distinct known terms (unknown terms score 0)."""
        queries = _check_texts(queries, "queries")
        out = np.zeros((len(queries), len(self.vocab)), dtype=np.float32)
        for row, q in enumerate(queries):
            cols = [self.vocab[t] for t in set(terms(q)) if t in self.vocab]
            out[row, cols] = 1.0
        return out

    def scores(self, queries: Sequence[str]) -> np.ndarray:
        """(Q, N) BM25 score of every passage for every query."""
        return self.query_vectors(queries) @ self.weights.T

    def search(self, queries: Sequence[str], k: int) -> tuple[np.ndarray, np.ndarray]:
        """``(scores, ids)``, each (Q, k), best first (ties: smaller passage id first)."""
        k = _check_k(k, len(self.weights))
        return top_k(self.query_vectors(queries), self.weights, k)


class DenseRetriever:
    """Latent semantic analysis embeddings (TF-IDF, then a truncated SVD to ``dim`` dimensions, then unit
    length) of the passages in an exact inner-product faiss index: cosine-similarity search.

    Fitted on the passages only, so questions are embedded with what the passages taught it.
    """

    def __init__(self, passages: Sequence[str], *, dim: int = 128, seed: int = 0):
        from sklearn.decomposition import TruncatedSVD
        from sklearn.feature_extraction.text import TfidfVectorizer

        passages = _check_texts(passages, "passages")
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise ValueError(f"dim must be an int >= 1, got {dim!r}")
        self.tfidf = TfidfVectorizer(token_pattern=TOKEN_RE.pattern, sublinear_tf=True)
        x = self.tfidf.fit_transform(passages)  # (N, V) sparse
        dim = min(dim, min(x.shape) - 1)
        if dim < 1:
            raise ValueError(f"need at least 2 passages and 2 distinct terms for an SVD, got shape {x.shape}")
        self.svd = TruncatedSVD(n_components=dim, random_state=seed)
        self.embeddings = normalize(self.svd.fit_transform(x))  # (N, D)
        self.index = build_faiss_index("flat", self.embeddings)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """(len(texts), D) float32 unit vectors (an all-zero row for a text with no known term)."""
        return normalize(self.svd.transform(self.tfidf.transform(_check_texts(texts, "texts"))))

    def search(self, queries: Sequence[str], k: int) -> tuple[np.ndarray, np.ndarray]:
        """``(cosine similarities, ids)``, each (Q, k), best first, from the faiss index."""
        k = _check_k(k, self.index.ntotal)
        return self.index.search(np.ascontiguousarray(self.encode(queries)), k)


def reciprocal_rank_fusion(rankings: Sequence[np.ndarray], k: int, *, c: float = 60.0) -> np.ndarray:
    """A hybrid ranking: each id scores sum over rankings of 1 / (c + rank), rank 1 = best; (Q, k) ids.

    ``rankings``: several (Q, m) id arrays (-1 = no result, skipped), e.g. BM25's and the dense
    retriever's. ``c = 60`` is the constant of Cormack et al. (2009). Ties: smaller id first.
    """
    if not rankings:
        raise ValueError("need at least one ranking")
    rankings = [np.asarray(r) for r in rankings]
    if any(r.ndim != 2 or len(r) != len(rankings[0]) for r in rankings):
        raise ValueError(f"rankings must be (Q, m) arrays with the same Q, got {[r.shape for r in rankings]}")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be an int >= 1, got {k!r}")
    out = np.full((len(rankings[0]), k), -1, dtype=np.int64)
    for q in range(len(out)):
        fused: dict[int, float] = {}
        for r in rankings:
            for rank, pid in enumerate(r[q].tolist(), start=1):
                if pid >= 0:
                    fused[pid] = fused.get(pid, 0.0) + 1.0 / (c + rank)
        best = sorted(fused, key=lambda pid: (-fused[pid], pid))[:k]
        out[q, :len(best)] = best
    return out


def recall_at_k(found: np.ndarray, relevant: Sequence[set[int]], k: int) -> float:
    """Mean over questions of |top-k found ∩ relevant| / |relevant|: the share of answer passages retrieved.

    With one relevant passage per question it is the hit rate (the share of questions whose
    passage is among the first ``k``), i.e. top-k accuracy. Shapes: found (Q, >= k) ids.
    """
    found = np.asarray(found)
    if found.ndim != 2 or len(found) != len(relevant):
        raise ValueError(f"found must be (Q, m) with Q = len(relevant) = {len(relevant)}, got shape {found.shape}")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= found.shape[1]:
        raise ValueError(f"k must be an int in [1, {found.shape[1]}], got {k!r}")
    if any(not rel for rel in relevant):
        raise ValueError("every question needs at least one relevant passage")
    return float(np.mean([len(set(f[:k].tolist()) & set(rel)) / len(rel) for f, rel in zip(found, relevant)]))



def markdown_prose(path) -> str:
    """The prose of a MyST notebook page (read with jupytext): its markdown cells without fenced blocks
    (glossaries, literalincludes, admonition options), citations, targets or markup, one paragraph a line."""
    import jupytext

    nb = jupytext.read(str(path))
    text = "\n\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    text = re.sub(r"^(```|~~~)[^\n]*\n.*?^\1\s*$", " ", text, flags=re.S | re.M)  # fenced blocks
    text = re.sub(r"^:::.*$|^:[a-z-]+:.*$|^\(.*\)=\s*$|^[|:\- ]*-{3,}[|:\- ]*$", " ", text,
                  flags=re.M)  # colon fences, directive options, targets, table rules
    text = re.sub(r"\{cite:[pt]\}`[^`]*`", " ", text)  # citations
    text = re.sub(r"\{[a-z]+\}`([^`<]*)(<[^>]*>)?`", r"\1", text)  # other roles keep their text
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)  # links keep their text
    text = re.sub(r"[*_`#>|]+", " ", text)
    paragraphs = [" ".join(p.split()) for p in re.split(r"\n\s*\n", text)]
    return "\n".join(p for p in paragraphs if p)


def hit_rate_at_k(found: np.ndarray, relevant: Sequence[set[int]], k: int) -> float:
    """The share of questions with at least one relevant passage among the first ``k`` found: DPR's
    "top-k retrieval accuracy" (Karpukhin et al. 2020). Equals :func:`recall_at_k` with one relevant
    passage per question. Shapes: found (Q, >= k) ids."""
    recall_at_k(found, relevant, k)  # the same checks
    return float(np.mean([bool(set(f[:k].tolist()) & set(rel)) for f, rel in zip(np.asarray(found), relevant)]))
