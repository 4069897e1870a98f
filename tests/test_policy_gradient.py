"""llmcourse.policy_gradient against hand-computed answers, the defining formulas, exact expectations and trl."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from llmcourse import policy_gradient as pg


def _close(got, want, tol=1e-12):
    torch.testing.assert_close(got, torch.as_tensor(want, dtype=got.dtype), rtol=tol, atol=tol)


# ----------------------------------------------------------------- returns and GAE

def test_discounted_returns_known_answer():
    r = torch.tensor([1.0, 1.0, 1.0], dtype=torch.float64)
    _close(pg.discounted_returns(r, 0.5), [1.75, 1.5, 1.0])
    _close(pg.discounted_returns(r, 0.5, torch.tensor([0, 1, 0])), [1.5, 1.0, 1.0])
    _close(pg.discounted_returns(r, 0.5, last_value=torch.tensor(4.0)), [2.25, 2.5, 3.0])


def test_gae_known_answer():
    """delta = [1, -1, 2] (the last step ends its episode); A = [1 + .25 * -.5, -1 + .25 * 2, 2]."""
    adv, ret = pg.gae(torch.tensor([1.0, 0.0, 2.0]), torch.tensor([0.5, 1.0, 0.0]), torch.tensor([0.0, 0.0, 1.0]),
                      0.5, 0.5, last_value=torch.tensor(9.0))
    _close(adv, [0.875, -0.5, 2.0], 1e-7)
    _close(ret, [1.375, 0.5, 2.0], 1e-7)


def _gae_explicit_sum(rewards, values, dones, gamma, lam, last_value):
    """A_t = sum_k (gamma lam)^(k-t) delta_k over k up to and including the first episode end at or after t."""
    next_values = torch.cat([values[..., 1:], last_value[..., None]], dim=-1)
    delta = rewards + gamma * (1 - dones) * next_values - values
    t_len = rewards.shape[-1]
    k, t = torch.meshgrid(torch.arange(t_len), torch.arange(t_len), indexing="ij")
    weights = (gamma * lam) ** (k - t).clamp(min=0).double() * (k >= t)  # (k, t)
    ends_before = torch.cumsum(dones, dim=-1) - dones  # episode ends strictly before each step
    alive = ((ends_before[..., :, None] - ends_before[..., None, :]) == 0).double()  # [k, t]: no end in [t, k)
    return torch.einsum("...k,kt,...kt->...t", delta, weights, alive)


def test_gae_matches_the_explicit_sum_of_discounted_td_errors():
    g = torch.Generator().manual_seed(0)
    rewards, values = torch.randn(5, 13, generator=g, dtype=torch.float64), torch.randn(5, 13, generator=g,
                                                                                        dtype=torch.float64)
    dones = (torch.rand(5, 13, generator=g) < 0.2).double()
    last = torch.randn(5, generator=g, dtype=torch.float64)
    for gamma, lam in ((0.99, 0.95), (1.0, 1.0), (0.9, 0.0), (0.5, 0.7)):
        adv, ret = pg.gae(rewards, values, dones, gamma, lam, last)
        torch.testing.assert_close(adv, _gae_explicit_sum(rewards, values, dones, gamma, lam, last), rtol=1e-12,
                                   atol=1e-12)
        torch.testing.assert_close(ret, adv + values)


def test_gae_lambda_one_gives_returns_minus_values_and_lambda_zero_the_td_error():
    g = torch.Generator().manual_seed(1)
    r, v = torch.randn(3, 9, generator=g, dtype=torch.float64), torch.randn(3, 9, generator=g, dtype=torch.float64)
    d = (torch.rand(3, 9, generator=g) < 0.3).double()
    last = torch.randn(3, generator=g, dtype=torch.float64)
    adv, _ = pg.gae(r, v, d, 0.9, 1.0, last)
    torch.testing.assert_close(adv, pg.discounted_returns(r, 0.9, d, last_value=last) - v)
    adv, _ = pg.gae(r, v, d, 0.9, 0.0, last)
    nxt = torch.cat([v[:, 1:], last[:, None]], dim=1)
    torch.testing.assert_close(adv, r + 0.9 * (1 - d) * nxt - v)


def test_gae_episode_end_blocks_everything_after_it():
    r, v = torch.randn(10, dtype=torch.float64), torch.randn(10, dtype=torch.float64)
    d = torch.zeros(10)
    d[4] = 1
    adv, _ = pg.gae(r, v, d, 0.99, 0.95, torch.tensor(3.0))
    r2, v2 = r.clone(), v.clone()
    r2[5:], v2[5:] = 100.0, -100.0
    adv2, _ = pg.gae(r2, v2, d, 0.99, 0.95, torch.tensor(-7.0))
    torch.testing.assert_close(adv[:5], adv2[:5])
    assert not torch.allclose(adv[5:], adv2[5:])


def test_gae_batch_equals_rows_one_by_one_and_accepts_bool_dones():
    g = torch.Generator().manual_seed(2)
    r, v = torch.randn(4, 6, generator=g), torch.randn(4, 6, generator=g)
    d, last = torch.rand(4, 6, generator=g) < 0.3, torch.randn(4, generator=g)
    adv, ret = pg.gae(r, v, d, 0.95, 0.9, last)
    for b in range(4):
        a_b, r_b = pg.gae(r[b], v[b], d[b].float(), 0.95, 0.9, last[b])
        torch.testing.assert_close(adv[b], a_b)
        torch.testing.assert_close(ret[b], r_b)


@pytest.mark.parametrize("bad, match", [
    (dict(values=torch.zeros(2, 5)), r"values has shape \(2, 5\) but rewards has shape \(5,\)"),
    (dict(dones=torch.full((5,), 2.0)), r"dones must hold only 0 and 1"),
    (dict(gamma=1.5), r"gamma must lie in \[0, 1\]"),
    (dict(last_value=torch.zeros(3)), r"last_value must have shape \(\)"),
    (dict(rewards=torch.zeros(5, dtype=torch.long)), r"rewards must be a floating-point tensor"),
])
def test_gae_rejects_bad_input_clearly(bad, match):
    args = dict(rewards=torch.zeros(5), values=torch.zeros(5), dones=torch.zeros(5), gamma=0.9, lam=0.9,
                last_value=None) | bad
    with pytest.raises((ValueError, TypeError), match=match):
        pg.gae(**args)


# ----------------------------------------------------------------- REINFORCE and the seeds' bug (error 41)

def test_reinforce_gradient_is_the_weighted_score_function():
    """d/dz of -(G - b) log softmax(z)[a], averaged over B, is -(G - b) (onehot(a) - p) / B."""
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(4, 6, generator=g, dtype=torch.float64, requires_grad=True)
    actions = torch.tensor([0, 5, 2, 2])
    returns, baseline = torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=torch.float64), 0.25
    pg.reinforce_loss(pg.action_logprobs(logits, actions), returns, baseline).backward()
    want = -(returns - baseline)[:, None] * (F.one_hot(actions, 6) - logits.softmax(-1)) / 4
    torch.testing.assert_close(logits.grad, want.detach())


def test_reinforce_baseline_keeps_the_expected_gradient_and_lowers_its_variance():
    """Exactly, by enumerating the actions of a bandit: E[grad] is the same, its variance smaller."""
    logits = torch.tensor([0.5, -1.0, 0.2, 1.0], dtype=torch.float64)
    reward = torch.tensor([3.0, 4.0, 3.5, 2.5], dtype=torch.float64)  # far from 0: the baseline matters
    p = logits.softmax(0)

    def grad_of(a, baseline):
        z = logits.clone().requires_grad_(True)
        pg.reinforce_loss(pg.action_logprobs(z[None], torch.tensor([a])), reward[a:a + 1], baseline).backward()
        return z.grad

    for baseline in (None, float((p * reward).sum())):
        grads = torch.stack([grad_of(a, baseline) for a in range(4)])
        mean = (p[:, None] * grads).sum(0)
        torch.testing.assert_close(mean, -(p * (reward - (p * reward).sum())))  # -dE[r]/dz
        variance = float((p[:, None] * (grads - mean) ** 2).sum())
        if baseline is None:
            plain = variance
    assert variance < 0.1 * plain


def test_seed_reinforce_loss_crashes_for_a_batch_of_three():
    """SEED error 41 (a): rewards (B,) times log-probs (B, V) cannot broadcast unless B == V or B == 1."""
    logits = torch.randn(3, 4, 50)  # (B, T, V): the forward pass over the prompt only
    with pytest.raises(RuntimeError, match="must match the size of tensor"):
        pg.seed_reinforce_loss(logits, torch.tensor([1.0, -1.0, -1.0]))
    with pytest.raises(ValueError, match="no broadcasting"):
        pg.reinforce_loss(torch.randn(3, 50), torch.tensor([1.0, -1.0, -1.0]))


def test_seed_reinforce_gradient_ignores_the_sampled_token_and_the_fix_does_not():
    """SEED error 41 (b): with B == 1 it runs, but its gradient is the same whichever token was sampled."""
    logits = torch.randn(1, 3, 8, dtype=torch.float64)
    grads = []
    for token in (0, 5):
        z = logits.clone().requires_grad_(True)
        pg.seed_reinforce_loss(z, torch.tensor([1.0], dtype=torch.float64)).backward()
        fixed = logits.clone().requires_grad_(True)
        pg.reinforce_loss(pg.action_logprobs(fixed[:, -1], torch.tensor([token])),
                          torch.tensor([1.0], dtype=torch.float64)).backward()
        grads.append((z.grad[0, -1], fixed.grad[0, -1]))
    torch.testing.assert_close(grads[0][0], grads[1][0])  # the seed's: identical
    p = logits[0, -1].softmax(-1)
    torch.testing.assert_close(grads[0][0], p - 1 / 8)  # pulls towards uniform, whatever was sampled
    assert grads[0][1][0] < 0 and grads[1][1][5] < 0  # the fix raises the sampled token's logit
    assert not torch.allclose(grads[0][1], grads[1][1])


def test_seed_reinforce_loss_with_batch_equal_to_vocabulary_runs_silently_wrong():
    logits, rewards = torch.randn(4, 2, 4, dtype=torch.float64), torch.tensor([1.0, 0.0, 0.0, 0.0], dtype=torch.float64)
    seed = pg.seed_reinforce_loss(logits, rewards)  # no error: reward i multiplies token i of every row
    want = -(rewards[None, :] * F.log_softmax(logits[:, -1], -1)).mean()
    torch.testing.assert_close(seed, want)


# ----------------------------------------------------------------- PPO

def test_ppo_policy_loss_known_answer():
    """ratios 1.5, 0.5, 0.5, 1.1 with A = 1, 1, -1, -1 and eps 0.2: losses -1.2, -0.5, 0.8, 1.1; clipped 1 and 3."""
    new = torch.log(torch.tensor([1.5, 0.5, 0.5, 1.1], dtype=torch.float64))
    old = torch.zeros(4, dtype=torch.float64)
    adv = torch.tensor([1.0, 1.0, -1.0, -1.0], dtype=torch.float64)
    loss, frac = pg.ppo_policy_loss(new, old, adv, 0.2)
    _close(loss, (-1.2 - 0.5 + 0.8 + 1.1) / 4)
    _close(frac, 0.5)
    loss, frac = pg.ppo_policy_loss(new, old, adv, 0.2, mask=torch.tensor([True, True, False, False]))
    _close(loss, (-1.2 - 0.5) / 2)
    _close(frac, 0.5)


def test_ppo_gradient_is_zero_where_clipped_and_reinforce_at_ratio_one():
    g = torch.Generator().manual_seed(4)
    old, adv = -torch.rand(20, generator=g, dtype=torch.float64), torch.randn(20, generator=g, dtype=torch.float64)
    new = (old + 0.6 * torch.randn(20, generator=g, dtype=torch.float64)).requires_grad_(True)
    pg.ppo_policy_loss(new, old, adv, 0.2)[0].backward()
    ratio = (new - old).exp().detach()
    clipped = ((ratio > 1.2) & (adv > 0)) | ((ratio < 0.8) & (adv < 0))
    assert clipped.any() and (~clipped).any()
    assert torch.all(new.grad[clipped] == 0)
    torch.testing.assert_close(new.grad[~clipped], (-adv * ratio / 20)[~clipped])
    same = old.clone().requires_grad_(True)
    pg.ppo_policy_loss(same, old, adv, 0.2)[0].backward()
    torch.testing.assert_close(same.grad, -adv / 20)  # = the REINFORCE gradient of the log-probs


def test_ppo_value_loss_known_answer_and_clipping():
    values, old, returns = (torch.tensor(x, dtype=torch.float64) for x in ([1.0, 0.0], [0.0, 0.0], [0.0, 2.0]))
    _close(pg.ppo_value_loss(values, old, returns), 0.5 * (1 + 4) / 2)
    # clipped: V_clip = [0.5, 0], squared errors max([1, 4], [0.25, 4]) = [1, 4]: moving away is never rewarded
    _close(pg.ppo_value_loss(values, old, returns, clip_eps=0.5), 0.5 * (1 + 4) / 2)
    values = torch.tensor([1.0, 1.9], dtype=torch.float64)  # V moved 1.9 towards R = 2: clipped to 0.5
    _close(pg.ppo_value_loss(values, old, returns, clip_eps=0.5), 0.5 * (1 + 1.5 ** 2) / 2)


# ----------------------------------------------------------------- KL estimators

def test_kl_estimators_known_answer():
    """log r = log 2: k1 = -log 2, k2 = (log 2)^2 / 2, k3 = 1 - log 2."""
    lp, lq = torch.tensor([math.log(0.25)], dtype=torch.float64), torch.tensor([math.log(0.5)], dtype=torch.float64)
    k = pg.kl_estimators(lp, lq)
    _close(k["k1"], [-math.log(2)])
    _close(k["k2"], [math.log(2) ** 2 / 2])
    _close(k["k3"], [1 - math.log(2)])


def test_k1_and_k3_are_unbiased_k2_is_not_k3_is_never_negative_and_varies_less_near_pi():
    """Monte Carlo on small categorical distributions: 400,000 samples of pi, means within 4 standard errors."""
    g = torch.Generator().manual_seed(5)
    lp = torch.log_softmax(torch.tensor([1.5, 0.0, -1.0, 0.5, -2.0, 0.3], dtype=torch.float64), 0)
    lq = torch.log_softmax(torch.tensor([-0.5, 1.0, 0.0, -1.0, 1.0, 0.0], dtype=torch.float64), 0)
    exact = float((lp.exp() * (lp - lq)).sum())
    k2_mean = float((lp.exp() * 0.5 * (lq - lp) ** 2).sum())
    x = torch.multinomial(lp.exp(), 400_000, replacement=True, generator=g)
    k = pg.kl_estimators(lp[x], lq[x])
    for name in ("k1", "k3"):
        se = float(k[name].std()) / math.sqrt(len(x))
        assert abs(float(k[name].mean()) - exact) < 4 * se, name
    se = float(k["k2"].std()) / math.sqrt(len(x))
    assert abs(float(k["k2"].mean()) - k2_mean) < 4 * se and abs(k2_mean - exact) > 40 * se  # biased
    assert (k["k3"] >= 0).all() and (k["k1"] < 0).any()
    near = torch.log_softmax(lp + 0.2 * torch.randn(6, generator=g, dtype=torch.float64), 0)  # KL ~ 0.01
    close = pg.kl_estimators(lp[x], near[x])
    assert float(close["k3"].var()) < 0.1 * float(close["k1"].var())  # low variance when pi_ref is near pi
    wide = pg.kl_estimators(torch.tensor([-200.0, 0.0, -1e-3]), torch.tensor([0.0, -60.0, 0.0]))["k3"]
    assert (wide >= 0).all()


def test_k3_equals_trl_grpo_kl_term():
    """GRPOTrainer: per_token_kl = exp(ref - logp) - (ref - logp) - 1 (trl 1.16, inline in _compute_loss)."""
    lp, lq = -torch.rand(50, dtype=torch.float64) * 5, -torch.rand(50, dtype=torch.float64) * 5
    torch.testing.assert_close(pg.kl_estimators(lp, lq)["k3"], torch.exp(lq - lp) - (lq - lp) - 1)


def test_kl_shaped_rewards_put_the_score_on_the_last_counted_token():
    lp, lq = torch.log(torch.tensor([[0.5, 0.5, 0.5]])), torch.log(torch.tensor([[0.25, 0.5, 1.0]]))
    r = pg.kl_shaped_rewards(torch.tensor([3.0]), lp, lq, 0.1, mask=torch.tensor([[1, 1, 0]]))
    _close(r, [[-0.1 * math.log(2), 3.0, 0.0]], 1e-6)


# ----------------------------------------------------------------- GRPO and masked means

def test_grpo_advantages_known_answer_and_trl_std():
    """[0, 1, 1, 0]: mean 0.5, Bessel std sqrt(1/3); advantages +-0.5 / (0.57735 + 1e-4)."""
    from trl.trainer.utils import nanstd

    adv = pg.grpo_advantages(torch.tensor([[0.0, 1.0, 1.0, 0.0]], dtype=torch.float64))
    _close(adv, torch.tensor([[-1.0, 1.0, 1.0, -1.0]], dtype=torch.float64) * 0.5 / (math.sqrt(1 / 3) + 1e-4))
    r = torch.randn(6, 5, dtype=torch.float64)
    want = (r - r.mean(1, keepdim=True)) / (nanstd(r, dim=1, keepdim=True) + 1e-4)
    torch.testing.assert_close(pg.grpo_advantages(r), want)
    _close(pg.grpo_advantages(torch.ones(2, 3)), torch.zeros(2, 3))  # equal rewards: 0, not nan
    torch.testing.assert_close(pg.grpo_advantages(r, scale=False).sum(1), torch.zeros(6, dtype=torch.float64))
    with pytest.raises(ValueError, match="G >= 2"):
        pg.grpo_advantages(torch.ones(4, 1))


def test_masked_mean_ignores_what_is_masked_even_nan():
    x = torch.tensor([[1.0, float("nan")], [3.0, 5.0]])
    m = torch.tensor([[True, False], [True, True]])
    _close(pg.masked_mean(x, m), 3.0, 1e-7)
    _close(pg.masked_mean(x, m, dim=1), [1.0, 4.0], 1e-7)
    with pytest.raises(ValueError, match="mask has shape"):
        pg.masked_mean(x, m[0])
