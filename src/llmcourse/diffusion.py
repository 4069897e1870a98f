"""A tiny denoising diffusion probabilistic model (DDPM) for 8x8 digits.

Ho, Jain and Abbeel (2020). The *forward* process adds Gaussian noise in T small steps,
q(x_t | x_{t-1}) = N(sqrt(1 - beta_t) x_{t-1}, beta_t I), with beta rising linearly from 1e-4 to 0.02
over T = 1000 steps. Because Gaussians compose, any step is reachable in one jump:

    q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I),   abar_t = prod_{s<=t} (1 - beta_s),

so x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps with eps ~ N(0, I). A network eps_theta(x_t, t) is
trained to predict eps (the "simple" loss ||eps - eps_theta||^2). Sampling runs the *reverse*
process from pure noise x_T ~ N(0, I) down to x_0, one ancestral step at a time:

    x_{t-1} = (x_t - beta_t / sqrt(1 - abar_t) eps_theta(x_t, t)) / sqrt(1 - beta_t) + sigma_t z,

with sigma_t^2 = beta~_t = beta_t (1 - abar_{t-1}) / (1 - abar_t) and no noise at the last step.
``diffusers.DDPMScheduler`` implements the same schedule, ``add_noise`` and ``step``; the tests
check these functions against it. The denoiser here is an MLP on the 64 pixels with a sinusoidal
time embedding; real image models use U-Nets (Ho et al.) or Transformers (DiT).

Steps are 0-based as in diffusers: t = 0 .. T-1, and ``alphas_cumprod[t]`` is abar after step t.
Shapes: B batch, P = 64 pixels (images (B, 1, 8, 8) are flattened), values in [-1, 1].

Taught in: book/13-using-llms/modalities
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class NoiseSchedule:
    """The linear beta schedule of Ho et al. (2020) and the quantities derived from it, all (T,) float32."""

    betas: Tensor
    alphas_cumprod: Tensor

    @classmethod
    def linear(cls, num_steps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> NoiseSchedule:
        if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 2:
            raise ValueError(f"num_steps must be an int >= 2, got {num_steps!r}")
        if not 0 < beta_start <= beta_end < 1:
            raise ValueError(f"need 0 < beta_start <= beta_end < 1, got {beta_start}, {beta_end}")
        betas = torch.linspace(beta_start, beta_end, num_steps, dtype=torch.float32)
        return cls(betas, torch.cumprod(1.0 - betas, dim=0))

    @property
    def num_steps(self) -> int:
        return len(self.betas)

    def posterior_variance(self) -> Tensor:
        """(T,) beta~_t = beta_t (1 - abar_{t-1}) / (1 - abar_t), with abar_{-1} = 1 (so beta~_0 = 0)."""
        prev = torch.cat([torch.ones(1), self.alphas_cumprod[:-1]])
        return self.betas * (1 - prev) / (1 - self.alphas_cumprod)


def _check_t(t: Tensor, batch: int, schedule: NoiseSchedule) -> None:
    if not isinstance(t, Tensor) or t.dtype != torch.long or t.shape != (batch,):
        raise ValueError(f"t must be an int64 tensor of shape ({batch},), got "
                         f"{getattr(t, 'dtype', type(t).__name__)} {tuple(getattr(t, 'shape', ()))}")
    if bool((t < 0).any()) or bool((t >= schedule.num_steps).any()):
        raise ValueError(f"t must lie in [0, {schedule.num_steps - 1}], got min {int(t.min())}, max {int(t.max())}")


def q_sample(x0: Tensor, t: Tensor, noise: Tensor, schedule: NoiseSchedule) -> Tensor:
    """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise: a sample of q(x_t | x_0), any shape (B, ...)."""
    if noise.shape != x0.shape:
        raise ValueError(f"noise must have the shape of x0 {tuple(x0.shape)}, got {tuple(noise.shape)}")
    _check_t(t, x0.shape[0], schedule)
    abar = schedule.alphas_cumprod[t].to(x0.dtype).view(-1, *([1] * (x0.ndim - 1)))  # (B, 1, ...)
    return abar.sqrt() * x0 + (1 - abar).sqrt() * noise


def p_sample_step(x_t: Tensor, t: int, eps_pred: Tensor, noise: Tensor, schedule: NoiseSchedule) -> Tensor:
    """One ancestral step x_t -> x_{t-1} (all samples at the same step ``t``); ``noise`` is ignored at t = 0."""
    if not 0 <= t < schedule.num_steps:
        raise ValueError(f"t must lie in [0, {schedule.num_steps - 1}], got {t}")
    if eps_pred.shape != x_t.shape or noise.shape != x_t.shape:
        raise ValueError(f"x_t, eps_pred and noise must share a shape, got {tuple(x_t.shape)}, "
                         f"{tuple(eps_pred.shape)}, {tuple(noise.shape)}")
    beta, abar = schedule.betas[t], schedule.alphas_cumprod[t]
    mean = (x_t - beta / (1 - abar).sqrt() * eps_pred) / (1 - beta).sqrt()
    if t == 0:
        return mean
    return mean + schedule.posterior_variance()[t].sqrt() * noise


def timestep_embedding(t: Tensor, dim: int) -> Tensor:
    """Sinusoidal embedding (B,) -> (B, dim) of the step, as Transformer positions (Vaswani et al. 2017)."""
    if dim % 2:
        raise ValueError(f"dim must be even, got {dim}")
    freqs = torch.exp(-math.log(10000.0) * torch.arange(dim // 2, dtype=torch.float32) / (dim // 2))
    args = t.float()[:, None] * freqs[None]  # (B, dim/2)
    return torch.cat([args.sin(), args.cos()], dim=-1)


class DenoiserMLP(nn.Module):
    """eps_theta(x_t, t): (B, 64) pixels and (B,) steps -> (B, 64) predicted noise. The time embedding is
    added to the input of each hidden layer."""

    def __init__(self, pixels: int = 64, width: int = 256, n_hidden: int = 3, time_dim: int = 64):
        super().__init__()
        self.pixels, self.time_dim = pixels, time_dim
        self.time_mlp = nn.Sequential(nn.Linear(time_dim, width), nn.SiLU(), nn.Linear(width, width))
        self.inp = nn.Linear(pixels, width)
        self.hidden = nn.ModuleList(nn.Linear(width, width) for _ in range(n_hidden))
        self.out = nn.Linear(width, pixels)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        if x.ndim != 2 or x.shape[1] != self.pixels:
            raise ValueError(f"x must be (B, {self.pixels}), got {tuple(x.shape)}")
        temb = self.time_mlp(timestep_embedding(t, self.time_dim))  # (B, width)
        h = self.inp(x)
        for layer in self.hidden:
            h = h + layer(nn.functional.silu(h + temb))  # residual
        return self.out(nn.functional.silu(h))


def ddpm_loss(model: nn.Module, x0: Tensor, schedule: NoiseSchedule, generator: torch.Generator) -> Tensor:
    """Ho et al.'s simple loss: draw t uniformly and eps ~ N(0, I), and regress eps from q_sample(x0, t, eps)."""
    t = torch.randint(schedule.num_steps, (x0.shape[0],), generator=generator)
    noise = torch.randn(x0.shape, generator=generator)
    return ((model(q_sample(x0, t, noise, schedule), t) - noise) ** 2).mean()


def train_ddpm(model: nn.Module, data: Tensor, schedule: NoiseSchedule, *, steps: int = 4000, batch: int = 128,
               lr: float = 2e-3, seed: int = 0, show_progress: bool = True) -> list[float]:
    """AdamW with cosine decay on ``ddpm_loss`` over random batches of ``data`` (N, 64) in [-1, 1]; returns losses."""
    from llmcourse.progress import progress

    if data.ndim != 2 or float(data.min()) < -1 - 1e-6 or float(data.max()) > 1 + 1e-6:
        raise ValueError(f"data must be (N, P) scaled to [-1, 1], got {tuple(data.shape)}")
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    losses = []
    model.train()
    for _ in progress(range(steps), desc="DDPM on digits", disable=not show_progress):
        x0 = data[torch.randint(len(data), (batch,), generator=gen)]
        loss = ddpm_loss(model, x0, schedule, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
    model.eval()
    return losses


@torch.no_grad()
def sample(model: nn.Module, n: int, schedule: NoiseSchedule, *, generator: torch.Generator,
           pixels: int = 64, keep_every: int = 0) -> tuple[Tensor, list[Tensor]]:
    """Ancestral sampling: n samples (n, pixels) from x_T ~ N(0, I) through T reverse steps, clipped to
    [-1, 1] at the end; and the intermediate x_t every ``keep_every`` steps (none if 0)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be an int >= 1, got {n!r}")
    model.eval()
    x = torch.randn(n, pixels, generator=generator)
    trail = []
    for t in reversed(range(schedule.num_steps)):
        eps = model(x, torch.full((n,), t, dtype=torch.long))
        x = p_sample_step(x, t, eps, torch.randn(x.shape, generator=generator), schedule)
        if keep_every and t % keep_every == 0:
            trail.append(x.clone())
    return x.clamp(-1, 1), trail


def load_ddpm(name: str = "ddpm") -> tuple[DenoiserMLP, NoiseSchedule]:
    """The shipped denoiser of ``python -m llmcourse.recipes.modalities`` (SHA-256 checked) and its schedule."""
    from safetensors.torch import load_file

    from llmcourse.pretrained import checkpoint_file, recipe

    cfg = recipe(name)["config"]
    model = DenoiserMLP(width=cfg["width"], n_hidden=cfg["n_hidden"], time_dim=cfg["time_dim"])
    model.load_state_dict(load_file(checkpoint_file("model.safetensors", name)))
    return model.eval(), NoiseSchedule.linear(cfg["num_steps"], cfg["beta_start"], cfg["beta_end"])
