"""In-context learning you can watch: a Transformer that learns linear functions from its prompt.

After Garg, Tsipras, Liang and Valiant (2022), "What can Transformers learn in-context? A case study
of simple function classes". Each prompt is a fresh random linear function f(x) = w.x with
w ~ N(0, I_d), shown through examples: (x_1, f(x_1), x_2, f(x_2), ..., x_k, f(x_k), x_query) with
x ~ N(0, I_d). A small decoder-only Transformer (the course's own ``gpt.Block``) reads the vectors
and, at every x position, predicts f of that x from the pairs before it. Its weights are trained on
many functions and then frozen: on a *new* function, everything it knows about w comes from the
prompt. The baselines are what a statistician would do with the same k pairs: least squares (the
minimum-norm solution when k < d), ridge regression, averaging (w ~ mean of y_i x_i) and
nearest neighbours. Without noise, least squares is exact once k >= d; Garg et al. found the
Transformer's error tracks it.

Shapes: B batch, N points per prompt (k = 0 .. N-1 examples before each query), d input dimension,
C = n_embd. A prompt is ``xs`` (B, N, d) and ``ys`` (B, N); the model reads 2N tokens.

Taught in: book/13-using-llms
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from llmcourse.gpt import Block, GPTConfig


def _check_prompt(xs: Tensor, ys: Tensor) -> None:
    if not isinstance(xs, Tensor) or not isinstance(ys, Tensor):
        raise TypeError(f"xs and ys must be tensors, got {type(xs).__name__} and {type(ys).__name__}")
    if not xs.is_floating_point() or not ys.is_floating_point():
        raise TypeError(f"xs and ys must be floating point, got {xs.dtype} and {ys.dtype}")
    if xs.ndim != 3 or ys.ndim != 2 or xs.shape[:2] != ys.shape:
        raise ValueError(f"need xs (B, N, d) and ys (B, N) with the same B, N; got {tuple(xs.shape)} "
                         f"and {tuple(ys.shape)}")


def sample_linear_prompts(batch: int, n_points: int, dim: int, *, generator: torch.Generator,
                          active_dims: int | None = None, noise_std: float = 0.0) -> tuple[Tensor, Tensor, Tensor]:
    """Prompts of random linear functions: ``(xs (B, N, d), ys (B, N), w (B, d))``, ys = xs @ w (+ noise).

    ``active_dims`` (Garg et al.'s curriculum) zeroes the coordinates after the first ``active_dims``
    of every x and w, so the task is a ``active_dims``-dimensional one inside d dimensions.
    """
    for name, value in (("batch", batch), ("n_points", n_points), ("dim", dim)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    active = dim if active_dims is None else active_dims
    if isinstance(active, bool) or not isinstance(active, int) or not 1 <= active <= dim:
        raise ValueError(f"active_dims must be an int in [1, {dim}], got {active_dims!r}")
    if noise_std < 0:
        raise ValueError(f"noise_std must be >= 0, got {noise_std}")
    xs = torch.randn(batch, n_points, dim, generator=generator)
    w = torch.randn(batch, dim, generator=generator)
    xs[..., active:] = 0.0
    w[:, active:] = 0.0
    ys = (xs @ w[:, :, None])[..., 0]  # (B, N)
    if noise_std:
        ys = ys + noise_std * torch.randn(ys.shape, generator=generator)
    return xs, ys, w


def interleave(xs: Tensor, ys: Tensor) -> Tensor:
    """Tokens (B, 2N, d + 1) of a prompt: x_i as (x_i, 0) at even positions, y_i as (0, ..., 0, y_i) at odd ones
    (the last coordinate tells the two kinds apart)."""
    _check_prompt(xs, ys)
    b, n, d = xs.shape
    z = xs.new_zeros(b, n, 2, d + 1)
    z[:, :, 0, :d] = xs
    z[:, :, 1, d] = ys
    return z.reshape(b, 2 * n, d + 1)  # (B, 2N, d+1)


@dataclass(frozen=True)
class ICLConfig:
    """Sizes of the in-context regression Transformer."""

    dim: int = 5  # input dimension d of the linear functions
    n_points: int = 16  # points per prompt N (so up to N - 1 examples before a query)
    n_layer: int = 4  # Transformer blocks (gpt.Block)
    n_head: int = 4  # attention heads
    n_embd: int = 64  # model width C

    def __post_init__(self):
        for name in ("dim", "n_points", "n_layer", "n_head", "n_embd"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"ICLConfig.{name} must be an int >= 1, got {value!r}")

    def block_config(self) -> GPTConfig:
        """The ``GPTConfig`` its blocks are built from (vocab_size is unused: there are no tokens)."""
        return GPTConfig(vocab_size=1, block_size=2 * self.n_points, n_layer=self.n_layer, n_head=self.n_head,
                         n_embd=self.n_embd)


class ICLTransformer(nn.Module):
    """Read-in Linear(d + 1, C) + learned positions, ``n_layer`` causal ``gpt.Block``s, LayerNorm, read-out Linear(C, 1)."""

    def __init__(self, config: ICLConfig):
        super().__init__()
        self.config = config
        gcfg = config.block_config()
        self.read_in = nn.Linear(config.dim + 1, config.n_embd)
        self.wpe = nn.Embedding(2 * config.n_points, config.n_embd)
        self.blocks = nn.ModuleList(Block(gcfg) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd)
        self.read_out = nn.Linear(config.n_embd, 1)

    def forward(self, xs: Tensor, ys: Tensor) -> Tensor:
        """xs (B, N, d), ys (B, N) -> predictions (B, N): entry i is the guess for ys[:, i] made at x_i's token,
        which sees x_1, y_1, ..., x_{i-1}, y_{i-1}, x_i (causal attention) but never y_i."""
        _check_prompt(xs, ys)
        b, n, d = xs.shape
        if d != self.config.dim or n > self.config.n_points:
            raise ValueError(f"model reads d={self.config.dim} and at most N={self.config.n_points} points, "
                             f"got d={d}, N={n}")
        z = interleave(xs, ys)  # (B, 2N, d+1)
        h = self.read_in(z) + self.wpe(torch.arange(2 * n, device=z.device))  # (B, 2N, C)
        for block in self.blocks:
            h = block(h)
        return self.read_out(self.ln_f(h))[:, ::2, 0]  # (B, N): the outputs at the x tokens


# ----------------------------------------------------------------- baselines


def least_squares_predictions(xs: Tensor, ys: Tensor, *, ridge: float = 0.0) -> Tensor:
    """(B, N): entry i predicts ys[:, i] from the i pairs before it. ``ridge=0``: the minimum-norm
    least-squares w = pinv(X) y (exact once i >= d without noise); ``ridge > 0``: w = (X^T X + ridge I)^-1 X^T y.
    With no example (i = 0) the prediction is 0, the mean of f(x)."""
    _check_prompt(xs, ys)
    if ridge < 0:
        raise ValueError(f"ridge must be >= 0, got {ridge}")
    b, n, d = xs.shape
    out = ys.new_zeros(b, n)
    x64, y64 = xs.double(), ys.double()
    for i in range(1, n):
        X, y = x64[:, :i], y64[:, :i, None]  # (B, i, d), (B, i, 1)
        if ridge == 0.0:
            w = torch.linalg.pinv(X) @ y  # (B, d, 1)
        else:
            eye = torch.eye(d, dtype=torch.float64)
            w = torch.linalg.solve(X.transpose(1, 2) @ X + ridge * eye, X.transpose(1, 2) @ y)
        out[:, i] = (x64[:, i, None, :] @ w)[:, 0, 0].to(ys.dtype)
    return out


def averaging_predictions(xs: Tensor, ys: Tensor) -> Tensor:
    """(B, N): w estimated as the mean of y_j x_j over the earlier pairs (unbiased for x ~ N(0, I), but noisy)."""
    _check_prompt(xs, ys)
    csum = torch.cumsum(ys[..., None] * xs, dim=1)  # (B, N, d): sum_{j <= i} y_j x_j
    counts = torch.arange(1, xs.shape[1] + 1, dtype=xs.dtype)[None, :, None]
    w = torch.zeros_like(xs)
    w[:, 1:] = (csum / counts)[:, :-1]  # w used at i: mean over j < i
    return (w * xs).sum(-1)


def nearest_neighbour_predictions(xs: Tensor, ys: Tensor, *, n_neighbours: int = 3) -> Tensor:
    """(B, N): the mean y of the ``n_neighbours`` earlier x closest to x_i (all of them if fewer; 0 at i = 0)."""
    _check_prompt(xs, ys)
    if isinstance(n_neighbours, bool) or not isinstance(n_neighbours, int) or n_neighbours < 1:
        raise ValueError(f"n_neighbours must be an int >= 1, got {n_neighbours!r}")
    out = ys.new_zeros(ys.shape)
    for i in range(1, xs.shape[1]):
        dist = ((xs[:, :i] - xs[:, i:i + 1]) ** 2).sum(-1)  # (B, i)
        idx = dist.topk(min(n_neighbours, i), dim=1, largest=False).indices
        out[:, i] = ys[:, :i].gather(1, idx).mean(1)
    return out


def squared_error_by_k(preds: Tensor, ys: Tensor, dim: int) -> Tensor:
    """(N,): the squared error at each k = 0 .. N-1 examples, averaged over the batch and divided by ``dim``
    (Var f(x) = dim for w, x ~ N(0, I), so predicting 0 scores 1), as in Garg et al.'s plots."""
    if preds.shape != ys.shape or preds.ndim != 2:
        raise ValueError(f"preds and ys must both be (B, N), got {tuple(preds.shape)} and {tuple(ys.shape)}")
    return ((preds - ys) ** 2).mean(0) / dim


# ----------------------------------------------------------------- training


@dataclass(frozen=True)
class Curriculum:
    """Garg et al.'s curriculum: start with few active dimensions and points, add some every ``every`` steps."""

    start_dims: int = 2  # active dimensions at step 0
    start_points: int = 5  # points per prompt at step 0
    dims_step: int = 1  # added every `every` steps
    points_step: int = 3
    every: int = 400

    def at(self, step: int, config: ICLConfig) -> tuple[int, int]:
        """(active_dims, n_points) used at ``step``, capped by the model's d and N."""
        stage = step // self.every
        return (min(config.dim, self.start_dims + stage * self.dims_step),
                min(config.n_points, self.start_points + stage * self.points_step))


def icl_loss(model: ICLTransformer, xs: Tensor, ys: Tensor) -> Tensor:
    """Mean squared error of the predictions at every position (every k at once), the training loss."""
    return ((model(xs, ys) - ys) ** 2).mean()


def train_icl(model: ICLTransformer, steps: int, *, batch: int = 64, lr: float = 1e-3, seed: int = 0,
              curriculum: Curriculum | None = Curriculum(), show_progress: bool = True) -> list[float]:
    """Adam (constant ``lr``) on fresh random functions at every step; returns the loss per step (divided by active dims)."""
    from llmcourse.progress import progress

    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an int >= 1, got {steps!r}")
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    cfg = model.config
    losses = []
    model.train()
    bar = progress(range(steps), desc="in-context regression", disable=not show_progress)
    for step in bar:
        dims, points = curriculum.at(step, cfg) if curriculum else (cfg.dim, cfg.n_points)
        xs, ys, _ = sample_linear_prompts(batch, points, cfg.dim, generator=gen, active_dims=dims)
        loss = icl_loss(model, xs, ys)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item() / dims)
        if step % 100 == 0:
            bar.set_postfix(loss=f"{losses[-1]:.3f}", dims=dims, points=points)
    model.eval()
    return losses


def load_icl(name: str = "icl") -> ICLTransformer:
    """The shipped model of ``python -m llmcourse.recipes.icl`` (SHA-256 checked against its recipe.json), in eval mode."""
    from safetensors.torch import load_file

    from llmcourse.pretrained import checkpoint_file, recipe

    model = ICLTransformer(ICLConfig(**recipe(name)["model"]))
    model.load_state_dict(load_file(checkpoint_file("model.safetensors", name)))
    return model.eval()
