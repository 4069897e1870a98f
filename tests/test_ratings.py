"""llmcourse.ratings against a plain loop of Elo's update, scikit-learn's logistic regression (Chatbot Arena's
way to fit Bradley–Terry), manual resampling, and the known true ratings of simulated battles."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from llmcourse import ratings

torch.set_num_threads(1)
TRUE = np.array([1200.0, 1100.0, 1050.0, 1000.0, 900.0])


def test_win_probability_known_answer():
    """400 points: odds 10:1, P = 10/11; equal ratings: 1/2."""
    assert ratings.win_probability(1400, 1000) == pytest.approx(10 / 11)
    assert ratings.win_probability(1000, 1000) == pytest.approx(0.5)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("k_factor", [4.0, 32.0])
def test_elo_matches_a_plain_loop(seed, k_factor):
    a, b, a_wins = ratings.simulate_battles(TRUE, 300, seed=seed)
    r = {m: 1000.0 for m in range(len(TRUE))}
    for i, j, w in zip(a, b, a_wins):
        expect = 1 / (1 + 10 ** ((r[j] - r[i]) / 400))
        r[i], r[j] = r[i] + k_factor * (w - expect), r[j] - k_factor * (w - expect)
    np.testing.assert_allclose(ratings.elo_ratings(a, b, a_wins, k_factor=k_factor), [r[m] for m in sorted(r)],
                               rtol=0, atol=1e-9)


@pytest.mark.parametrize("seed", range(3))
def test_bradley_terry_matches_sklearn_logistic_regression(seed):
    a, b, a_wins = ratings.simulate_battles(TRUE, 2000, seed=seed)
    x = np.zeros((len(a), len(TRUE)))
    x[np.arange(len(a)), a] = np.log(10) / 400  # Elo-scale coefficients, as in the Chatbot Arena notebook
    x[np.arange(len(a)), b] = -np.log(10) / 400
    lr = LogisticRegression(fit_intercept=False, C=1e12, tol=1e-12, max_iter=10_000).fit(x, a_wins)
    want = lr.coef_[0] - lr.coef_[0].mean() + 1000
    np.testing.assert_allclose(ratings.bradley_terry_ratings(a, b, a_wins), want, rtol=0, atol=0.05)


def test_bradley_terry_recovers_the_truth_and_ignores_order():
    a, b, a_wins = ratings.simulate_battles(TRUE, 20_000, seed=0)
    bt = ratings.bradley_terry_ratings(a, b, a_wins)
    np.testing.assert_allclose(bt - bt.mean(), TRUE - TRUE.mean(), atol=15)
    perm = np.random.default_rng(1).permutation(len(a))
    np.testing.assert_allclose(ratings.bradley_terry_ratings(a[perm], b[perm], a_wins[perm]), bt, atol=1e-4)
    elo = ratings.elo_ratings(a, b, a_wins)
    assert np.abs(ratings.elo_ratings(a[perm], b[perm], a_wins[perm]) - elo).max() > 1.0  # order matters


def test_bootstrap_matches_manual_resampling():
    a, b, a_wins = ratings.simulate_battles(TRUE, 500, seed=3)
    med, low, high = ratings.bootstrap(ratings.elo_ratings, a, b, a_wins, n_rounds=20, seed=7, level=0.9)
    rng = np.random.default_rng(7)
    fits = []
    for _ in range(20):
        idx = rng.integers(len(a), size=len(a))
        fits.append(ratings.elo_ratings(a[idx], b[idx], a_wins[idx], len(TRUE)))
    np.testing.assert_allclose(med, np.median(fits, axis=0))
    np.testing.assert_allclose(low, np.percentile(fits, 5, axis=0))
    np.testing.assert_allclose(high, np.percentile(fits, 95, axis=0))
    assert (low <= med).all() and (med <= high).all()


def test_bradley_terry_intervals_cover_the_truth():
    a, b, a_wins = ratings.simulate_battles(TRUE, 3000, seed=5)
    _, low, high = ratings.bootstrap(ratings.bradley_terry_ratings, a, b, a_wins, n_rounds=40, seed=0)
    centred = TRUE - TRUE.mean() + 1000
    assert ((low <= centred) & (centred <= high)).sum() >= 4
    assert (high - low).max() < 80


def test_simulated_win_rates_follow_the_elo_formula():
    a, b, a_wins = ratings.simulate_battles([1400.0, 1000.0], 20_000, seed=0)
    first_wins = np.where(a == 0, a_wins, ~a_wins)
    assert first_wins.mean() == pytest.approx(10 / 11, abs=0.01)
    assert (a != b).all()


def test_ratings_reject_bad_battles():
    with pytest.raises(ValueError, match="same length"):
        ratings.elo_ratings([0, 1], [1], [True])
    with pytest.raises(TypeError, match="bool"):
        ratings.bradley_terry_ratings(np.array([0]), np.array([1]), np.array([1]))
    with pytest.raises(ValueError, match="two different models"):
        ratings.elo_ratings(np.array([0]), np.array([0]), np.array([True]))
    with pytest.raises(ValueError, match="n_battles"):
        ratings.simulate_battles(TRUE, 0)
