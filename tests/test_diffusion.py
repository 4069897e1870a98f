"""DDPM: the schedule, q(x_t | x_0) and the reverse step against diffusers' DDPMScheduler and the closed form."""

import pytest
import torch
from diffusers import DDPMScheduler

from llmcourse import diffusion as D

torch.set_num_threads(1)


def _ref(T=1000):
    return DDPMScheduler(num_train_timesteps=T, beta_start=1e-4, beta_end=0.02, beta_schedule="linear",
                         clip_sample=False, variance_type="fixed_small")


@pytest.mark.parametrize("T", [1000, 50])
def test_schedule_matches_diffusers(T):
    s, ref = D.NoiseSchedule.linear(T), _ref(T)
    torch.testing.assert_close(s.betas, ref.betas, rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(s.alphas_cumprod, ref.alphas_cumprod, rtol=1e-5, atol=1e-7)
    var = torch.stack([ref._get_variance(t) for t in range(1, T)])
    # 1 - abar is ~1e-4 at small t: float32 cancellation differs with the order of operations
    torch.testing.assert_close(s.posterior_variance()[1:], var, rtol=1e-3, atol=2e-7)
    assert s.posterior_variance()[0] == 0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_q_sample_matches_diffusers_add_noise(seed):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.rand(6, 1, 8, 8, generator=g) * 2 - 1
    noise = torch.randn(x0.shape, generator=g)
    t = torch.tensor([0, 999, 1, 500, int(torch.randint(1000, (1,), generator=g)), 250])
    s = D.NoiseSchedule.linear()
    torch.testing.assert_close(D.q_sample(x0, t, noise, s), _ref().add_noise(x0, noise, t), rtol=1e-5, atol=1e-6)


def test_q_sample_has_the_closed_form_moments():
    s = D.NoiseSchedule.linear()
    g = torch.Generator().manual_seed(3)
    x0 = torch.full((20000, 4), 0.7)
    t = torch.full((20000,), 300, dtype=torch.long)
    xt = D.q_sample(x0, t, torch.randn(x0.shape, generator=g), s)
    abar = float(s.alphas_cumprod[300])
    assert xt.mean().item() == pytest.approx(abar ** 0.5 * 0.7, abs=0.01)
    assert xt.var().item() == pytest.approx(1 - abar, rel=0.02)


def test_closed_form_equals_composing_single_steps():
    # x_t = sqrt(1 - b_t) x_{t-1} + sqrt(b_t) e_t: mean coefficient and variance by recursion, in float64
    s = D.NoiseSchedule.linear()
    coef, var = torch.tensor(1.0, dtype=torch.float64), torch.tensor(0.0, dtype=torch.float64)
    for t, b in enumerate(s.betas.double()):
        coef, var = coef * (1 - b).sqrt(), (1 - b) * var + b
        if t in (0, 10, 999):
            assert float(coef ** 2) == pytest.approx(float(s.alphas_cumprod[t]), rel=1e-5)
            assert float(var) == pytest.approx(1 - float(s.alphas_cumprod[t]), rel=1e-4, abs=1e-7)


@pytest.mark.parametrize("t", [999, 500, 1, 0])
def test_p_sample_step_matches_diffusers_step(t):
    s, ref = D.NoiseSchedule.linear(), _ref()
    g = torch.Generator().manual_seed(t)
    x, eps = torch.randn(3, 64, generator=g), torch.randn(3, 64, generator=g)
    want = ref.step(eps, t, x, generator=torch.Generator().manual_seed(7)).prev_sample
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(7))  # diffusers draws the same tensor
    # diffusers goes through the predicted x_0 and the posterior-mean coefficients: the same mean, rounded
    # differently in float32 where 1 - abar_t ~ 3e-4 (t = 1), hence rtol 2e-4
    torch.testing.assert_close(D.p_sample_step(x, t, eps, noise, s), want, rtol=2e-4, atol=1e-5)


def test_denoiser_shapes_and_loss_decreases():
    torch.manual_seed(0)
    model = D.DenoiserMLP(width=32, n_hidden=1, time_dim=8)
    s = D.NoiseSchedule.linear(100)
    data = torch.rand(64, 64) * 2 - 1
    losses = D.train_ddpm(model, data, s, steps=150, batch=32, lr=3e-3, show_progress=False)
    assert sum(losses[-20:]) / 20 < sum(losses[:20]) / 20
    x, trail = D.sample(model, 5, s, generator=torch.Generator().manual_seed(0), keep_every=25)
    assert x.shape == (5, 64) and len(trail) == 4 and float(x.abs().max()) <= 1


def test_bad_inputs_raise():
    s = D.NoiseSchedule.linear(10)
    x0 = torch.zeros(2, 64)
    with pytest.raises(ValueError, match="t must lie"):
        D.q_sample(x0, torch.tensor([0, 10]), x0, s)
    with pytest.raises(ValueError, match="int64"):
        D.q_sample(x0, torch.tensor([0.0, 1.0]), x0, s)
    with pytest.raises(ValueError, match="shape of x0"):
        D.q_sample(x0, torch.tensor([0, 1]), torch.zeros(2, 63), s)
    with pytest.raises(ValueError, match="beta"):
        D.NoiseSchedule.linear(10, 0.5, 0.1)
    with pytest.raises(ValueError, match="even"):
        D.timestep_embedding(torch.tensor([1]), 3)
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        D.train_ddpm(D.DenoiserMLP(), torch.full((4, 64), 3.0), s, steps=1)
