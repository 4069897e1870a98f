"""Ratings from pairwise battles, as on Chatbot Arena: online Elo and a Bradley–Terry fit, with bootstrap intervals.

A battle is two models answering the same prompt and a person voting for one of them. Ratings are on
the Elo scale: a model rated ``d`` points above another is expected to win with probability
1 / (1 + 10^(-d / 400)).

* :func:`simulate_battles` draws battles between models of known true ratings, pairs uniform at random.
* :func:`elo_ratings` is Elo's online update (Elo 1978): after each battle both ratings move by
  ``k_factor`` times (result - expected result). The answer depends on the order of the battles and
  the recent ones weigh most.
* :func:`bradley_terry_ratings` fits the Bradley–Terry model (Bradley & Terry 1952) to all battles at
  once by maximum likelihood (minimising ``preference.bradley_terry_loss``, the reward model's loss, on
  one parameter per model): order-free; what Chatbot Arena switched to (Chiang et al. 2024).
* :func:`bootstrap` refits on battles resampled with replacement and gives percentile intervals.

Shapes: M models, B battles; a battle set is ``(a, b, a_wins)``: int64 (B,), int64 (B,), bool (B,).

Taught in: book/13-using-llms
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from llmcourse.preference import bradley_terry_loss
from llmcourse.progress import progress

SCALE, BASE, INIT = 400.0, 10.0, 1000.0  # the Elo scale: 400 points = 10:1 odds


def win_probability(r_a, r_b) -> np.ndarray:
    """P(a beats b) = 1 / (1 + 10^((r_b - r_a) / 400)) (elementwise)."""
    return 1.0 / (1.0 + BASE ** ((np.asarray(r_b, dtype=float) - np.asarray(r_a, dtype=float)) / SCALE))


def _check_battles(a, b, a_wins, n_models: int | None = None):
    a, b, a_wins = np.asarray(a), np.asarray(b), np.asarray(a_wins)
    if a.ndim != 1 or a.shape != b.shape or a.shape != a_wins.shape or not len(a):
        raise ValueError(f"a, b and a_wins must be 1-D of the same length >= 1, got {a.shape}, {b.shape}, {a_wins.shape}")
    if not (np.issubdtype(a.dtype, np.integer) and np.issubdtype(b.dtype, np.integer)):
        raise TypeError(f"a and b must be integer model ids, got {a.dtype} and {b.dtype}")
    if a_wins.dtype != bool:
        raise TypeError(f"a_wins must be bool, got {a_wins.dtype}")
    m = int(max(a.max(), b.max())) + 1 if n_models is None else n_models
    if a.min() < 0 or b.min() < 0 or max(a.max(), b.max()) >= m or (a == b).any():
        raise ValueError(f"model ids must be in [0, {m}) and a battle needs two different models")
    return a.astype(np.int64), b.astype(np.int64), a_wins, m


def simulate_battles(true_ratings, n_battles: int, *, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(a, b, a_wins)``: ``n_battles`` battles between two different models drawn uniformly, each won by ``a``
    with probability ``win_probability(true[a], true[b])``. No ties."""
    true = np.asarray(true_ratings, dtype=float)
    if true.ndim != 1 or len(true) < 2 or not np.isfinite(true).all():
        raise ValueError(f"true_ratings must be a 1-D array of >= 2 finite ratings, got shape {true.shape}")
    if isinstance(n_battles, bool) or not isinstance(n_battles, int) or n_battles < 1:
        raise ValueError(f"n_battles must be an int >= 1, got {n_battles!r}")
    rng = np.random.default_rng(seed)
    a = rng.integers(len(true), size=n_battles)
    b = (a + rng.integers(1, len(true), size=n_battles)) % len(true)  # any other model, uniformly
    a_wins = rng.random(n_battles) < win_probability(true[a], true[b])
    return a, b, a_wins


def elo_ratings(a, b, a_wins, n_models: int | None = None, *, k_factor: float = 4.0,
                init: float = INIT) -> np.ndarray:
    """(M,) Elo ratings after playing the battles in order: r_a += K (s_a - E_a), r_b -= the same amount,
    where s_a is 1 if a won and E_a = ``win_probability(r_a, r_b)``."""
    a, b, a_wins, m = _check_battles(a, b, a_wins, n_models)
    r = np.full(m, float(init))
    for i, j, s in zip(a.tolist(), b.tolist(), a_wins.tolist()):
        delta = k_factor * (float(s) - 1.0 / (1.0 + BASE ** ((r[j] - r[i]) / SCALE)))
        r[i] += delta
        r[j] -= delta
    return r


def bradley_terry_ratings(a, b, a_wins, n_models: int | None = None, *, init: float = INIT,
                          max_iter: int = 200) -> np.ndarray:
    """(M,) maximum-likelihood Bradley–Terry ratings on the Elo scale, shifted so that their mean is ``init``.

    Strengths theta (natural-log odds units) minimise the mean of ``bradley_terry_loss(theta_winner,
    theta_loser)`` (L-BFGS, float64); rating = init + 400 / ln 10 * (theta - mean theta). A model
    that won (or lost) every battle has no finite maximum: ratings then grow with ``max_iter``.
    """
    a, b, a_wins, m = _check_battles(a, b, a_wins, n_models)
    winner = torch.from_numpy(np.where(a_wins, a, b))
    loser = torch.from_numpy(np.where(a_wins, b, a))
    theta = torch.zeros(m, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([theta], max_iter=max_iter, tolerance_grad=1e-10, tolerance_change=1e-12,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = bradley_terry_loss(theta[winner], theta[loser])
        loss.backward()
        return loss

    opt.step(closure)
    t = theta.detach().numpy()
    return init + SCALE / np.log(BASE) * (t - t.mean())


def bootstrap(fit: Callable[..., np.ndarray], a, b, a_wins, n_models: int | None = None, *, n_rounds: int = 100,
              seed: int = 0, level: float = 0.95, show_progress: bool = False) -> tuple[np.ndarray, ...]:
    """``(median, low, high)``, each (M,): percentile bootstrap of ``fit(a, b, a_wins, n_models)`` over
    ``n_rounds`` resamples of the battles with replacement; [low, high] holds the central ``level``."""
    a, b, a_wins, m = _check_battles(a, b, a_wins, n_models)
    if isinstance(n_rounds, bool) or not isinstance(n_rounds, int) or n_rounds < 2:
        raise ValueError(f"n_rounds must be an int >= 2, got {n_rounds!r}")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level!r}")
    rng = np.random.default_rng(seed)
    fits = np.empty((n_rounds, m))
    for r in progress(range(n_rounds), desc="bootstrap", disable=not show_progress):
        idx = rng.integers(len(a), size=len(a))
        fits[r] = fit(a[idx], b[idx], a_wins[idx], m)
    tail = 100 * (1 - level) / 2
    return np.median(fits, axis=0), np.percentile(fits, tail, axis=0), np.percentile(fits, 100 - tail, axis=0)
