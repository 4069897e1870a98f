"""Pretraining a GPT: the training loop of large language models, small enough for a laptop.

What it teaches, in the order a step runs:

* data: the corpus is one long 1-D tensor of token ids; a batch is B random
  windows of T tokens, the targets the same windows shifted by one token
  (next-token prediction). Validation reads non-overlapping windows in order.
* loss: the mean cross-entropy per *counted* token (targets equal to -100 are
  ignored, as in ``F.cross_entropy``); perplexity is ``exp(loss)``.
* gradient accumulation: k micro-batches, each loss summed over its tokens and
  divided by the token count of all k, give exactly the gradient of the one
  big batch (a plain mean per micro-batch would not, when counts differ).
* AdamW (Loshchilov & Hutter 2019): Adam with *decoupled* weight decay,
  ``w <- w - lr (m_hat / (sqrt(v_hat) + eps) + wd w)``; adding ``wd w`` to the
  gradient instead (L2) would be rescaled by ``sqrt(v_hat)`` and is not the
  same. Only weight matrices decay; LayerNorm gains, biases and embeddings do
  not (:func:`param_groups`).
* global-norm gradient clipping (Pascanu et al. 2013): if the L2 norm of all
  gradients together exceeds ``grad_clip``, all are scaled down by one factor.
* learning rate: linear warm-up, cosine decay to a floor (``llmcourse.schedules``).
* mixed precision (Micikevicius et al. 2018): the weights, gradients and
  optimiser state stay float32; ``torch.autocast`` runs matmuls in bfloat16,
  which has float32's 8-bit exponent and so its range, and needs nothing else.
  float16 has a 5-bit exponent: small gradients underflow to 0, so it needs
  loss scaling (``torch.amp.GradScaler``: multiply the loss by S, divide the
  gradients by S, skip steps with inf/NaN and lower S). This trainer offers
  only bfloat16 (``dtype="bfloat16"``); on a CPU it runs but is rarely faster.
* checkpoints that resume exactly (``llmcourse.checkpoint``), and data
  parallel training with ``DistributedDataParallel`` when the process was
  started by ``torchrun`` (``llmcourse.distributed``).

Shapes: B batch (sequences), T time (tokens per sequence), V vocabulary size.

Taught in: book/08-pretraining
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from llmcourse.charlm import random_windows
from llmcourse.checkpoint import load_checkpoint, read_meta, save_checkpoint
from llmcourse.progress import progress
from llmcourse.reproducibility import torch_generator
from llmcourse.schedules import check_schedule, warmup_cosine

__all__ = ["EvalResult", "TrainConfig", "TrainHistory", "Trainer", "accumulate_gradients", "evaluate",
           "param_groups", "random_windows", "train_step", "validation_windows"]

DTYPES = {"float32": None, "bfloat16": torch.bfloat16}

# ----------------------------------------------------------------------------- data


def validation_windows(tokens: Tensor, block_size: int, batch_size: int) -> Iterator[tuple[Tensor, Tensor]]:
    """Batches of non-overlapping windows, in order: x (b, T) and y (b, T) = x shifted one token left.

    Window i is ``tokens[i T : (i+1) T]``; there are ``(N - 1) // T`` of them, so every token from
    the second to the ``(N - 1) // T * T + 1``-th is a target exactly once. The last batch may have
    fewer than ``batch_size`` windows.

    >>> [(x.tolist(), y.tolist()) for x, y in validation_windows(torch.arange(8), 3, 5)]
    [([[0, 1, 2], [3, 4, 5]], [[1, 2, 3], [4, 5, 6]])]
    """
    if tokens.ndim != 1 or len(tokens) < block_size + 1:
        raise ValueError(f"tokens must be 1-D with more than block_size={block_size} ids, "
                         f"got shape {tuple(tokens.shape)}")
    n = (len(tokens) - 1) // block_size
    x = tokens[: n * block_size].view(n, block_size)  # (n, T)
    y = tokens[1: n * block_size + 1].view(n, block_size)  # (n, T)
    for i in range(0, n, batch_size):
        yield x[i:i + batch_size], y[i:i + batch_size]


# ----------------------------------------------------------------------------- optimiser


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW parameter groups: weight decay on weight matrices only.

    The rule: a parameter decays when it has 2 or more dimensions and is not the weight of an
    ``nn.Embedding``. So in the course GPT the four matrices of each block decay (``c_attn``,
    ``attn.c_proj``, ``c_fc``, ``mlp.c_proj``); LayerNorm gains and biases (1-D) and the token
    and position tables do not, nor the output layer, which *is* the token table (tied).
    Tied parameters appear once. Each group also carries ``param_names``.
    """
    if not weight_decay >= 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    decay, no_decay = ([], []), ([], [])
    for name, p in model.named_parameters():  # tied parameters are listed once
        if not p.requires_grad:
            continue
        group = decay if p.ndim >= 2 and id(p) not in embeddings else no_decay
        group[0].append(p)
        group[1].append(name)
    return [{"params": decay[0], "param_names": decay[1], "weight_decay": weight_decay},
            {"params": no_decay[0], "param_names": no_decay[1], "weight_decay": 0.0}]


# ----------------------------------------------------------------------------- one step


def _logits(output) -> Tensor:
    """The logits of a model output: the course GPT returns (logits, loss), transformers an object."""
    if isinstance(output, tuple):
        return output[0]
    return getattr(output, "logits", output)


def _loss_sum(logits: Tensor, targets: Tensor) -> Tensor:
    """Sum of the token cross-entropies, logits (b, T, V) and targets (b, T); -100 targets count 0."""
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()  # log-softmax over V in 16 bits loses digits
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100,
                           reduction="sum")


def _autocast(device: torch.device, dtype: torch.dtype | None):
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def _world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def accumulate_gradients(model: nn.Module, micro_batches: Sequence[tuple[Tensor, Tensor]], *,
                         autocast_dtype: torch.dtype | None = None) -> Tensor:
    """Backpropagate the mean loss per counted token over all ``micro_batches``; return that loss.

    Each micro-batch (x (b, T), y (b, T)) adds ``sum of its token losses / n`` to ``.grad``, where
    ``n`` counts the targets that are not -100 in *all* micro-batches, so k micro-batches of b
    sequences give the gradient of one batch of k b. Under ``DistributedDataParallel`` ``n`` is
    summed over processes and each loss multiplied by the world size (DDP averages gradients),
    so the gradient is the one of the global batch; only the last micro-batch synchronises.
    """
    device = next(model.parameters()).device
    inner = getattr(model, "_orig_mod", model)  # under torch.compile
    world = _world_size() if isinstance(inner, nn.parallel.DistributedDataParallel) else 1
    n = sum((y != -100).sum() for _, y in micro_batches).to(device)
    if world > 1:
        dist.all_reduce(n)
    if int(n) == 0:
        raise ValueError("every target is -100: there is no token to learn from")
    total = torch.zeros((), device=device, dtype=next(model.parameters()).dtype)
    for i, (x, y) in enumerate(micro_batches):
        last = i == len(micro_batches) - 1
        sync = inner.no_sync() if world > 1 and not last else contextlib.nullcontext()
        with sync:
            with _autocast(device, autocast_dtype):
                logits = _logits(model(x.to(device)))  # (b, T, V)
            loss_sum = _loss_sum(logits, y.to(device))
            (loss_sum * (world / n)).backward()
        total += loss_sum.detach()
    if world > 1:
        dist.all_reduce(total)
    return total / n


class StepResult(NamedTuple):
    loss: float  # mean loss per token of the update's whole batch
    grad_norm: float  # global L2 norm of the gradient, before clipping


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, micro_batches: Sequence[tuple[Tensor, Tensor]],
               *, grad_clip: float | None = None, autocast_dtype: torch.dtype | None = None) -> StepResult:
    """One optimiser update: accumulate gradients over ``micro_batches``, clip their global norm, step, zero.

    ``grad_clip=None`` leaves the gradient as it is (the norm is still measured and returned).
    """
    loss = accumulate_gradients(model, micro_batches, autocast_dtype=autocast_dtype)
    grad_norm = nn.utils.clip_grad_norm_(model.parameters(), grad_clip if grad_clip is not None else math.inf)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return StepResult(float(loss), float(grad_norm))


# ----------------------------------------------------------------------------- evaluation


class EvalResult(NamedTuple):
    loss: float  # mean cross-entropy per target token (nats)
    perplexity: float  # exp(loss)
    n_tokens: int  # target tokens counted


@torch.no_grad()
def evaluate(model: nn.Module, tokens: Tensor, *, block_size: int, batch_size: int = 32,
             max_batches: int | None = None, autocast_dtype: torch.dtype | None = None) -> EvalResult:
    """Mean loss per token of ``model`` on :func:`validation_windows` of ``tokens``, and its perplexity.

    The token losses are summed in float64 and divided by their number, so the result does not
    depend on ``batch_size``. Runs in eval mode (no dropout); the model's mode is restored.
    """
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    loss_sum, n = torch.zeros((), dtype=torch.float64, device=device), 0
    try:
        for i, (x, y) in enumerate(validation_windows(tokens, block_size, batch_size)):
            if max_batches is not None and i >= max_batches:
                break
            with _autocast(device, autocast_dtype):
                logits = _logits(model(x.to(device)))  # (b, T, V)
            y = y.to(device)
            loss_sum += _loss_sum(logits, y).double()
            n += int((y != -100).sum())
    finally:
        model.train(was_training)
    loss = float(loss_sum) / n
    return EvalResult(loss, math.exp(loss), n)


# ----------------------------------------------------------------------------- the trainer


@dataclass(frozen=True)
class TrainConfig:
    """Recipe of a pretraining run. The global batch is ``batch_size * grad_accum_steps * world_size`` sequences."""

    max_steps: int = 200  # optimiser updates in the whole run (the schedule's length)
    batch_size: int = 16  # sequences per micro-batch (per process under DDP)
    block_size: int = 64  # tokens per sequence T (at most the model's block_size)
    grad_accum_steps: int = 1  # micro-batches per update
    lr: float = 1e-3  # peak learning rate, reached at the end of the warm-up
    min_lr: float = 1e-4  # floor of the cosine decay (GPT-3: 10 % of the peak)
    warmup_steps: int = 20  # updates of linear warm-up from 0
    weight_decay: float = 0.1  # decoupled weight decay of the weight matrices
    betas: tuple[float, float] = (0.9, 0.95)  # Adam's averaging factors (GPT-3's values)
    eps: float = 1e-8  # Adam's epsilon
    grad_clip: float | None = 1.0  # max global L2 norm of the gradient; None = no clipping
    dtype: str = "float32"  # compute dtype: "float32" or "bfloat16" (autocast)
    eval_every: int = 50  # evaluate every this many updates (and at the start and the end); 0 = start and end
    eval_batches: int | None = 20  # validation batches per evaluation; None = the whole validation set
    seed: int = 0  # data order (seed) and dropout (seed + 1 + rank)
    fused: bool | None = None  # fused AdamW kernel; None = where PyTorch has one for the device (CPU, CUDA)
    compile: bool = False  # torch.compile the model (30-60 s to compile on a CPU, where it measured no faster)

    def __post_init__(self):
        for name in ("max_steps", "batch_size", "block_size", "grad_accum_steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"TrainConfig.{name} must be an int >= 1, got {value!r}")
        for name in ("warmup_steps", "eval_every", "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"TrainConfig.{name} must be an int >= 0, got {value!r}")
        if not (isinstance(self.lr, (int, float)) and 0 < self.lr < math.inf):
            raise ValueError(f"TrainConfig.lr must be a positive finite number, got {self.lr!r}")
        if not (isinstance(self.min_lr, (int, float)) and 0 <= self.min_lr <= self.lr):
            raise ValueError(f"TrainConfig.min_lr must be between 0 and lr={self.lr}, got {self.min_lr!r}")
        check_schedule(self.warmup_steps, self.max_steps, self.min_lr / self.lr)
        if not (isinstance(self.weight_decay, (int, float)) and 0 <= self.weight_decay < math.inf):
            raise ValueError(f"TrainConfig.weight_decay must be a number >= 0, got {self.weight_decay!r}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"TrainConfig.betas must be two numbers in [0, 1), got {self.betas!r}")
        object.__setattr__(self, "betas", tuple(self.betas))
        if not self.eps > 0:
            raise ValueError(f"TrainConfig.eps must be > 0, got {self.eps!r}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ValueError(f"TrainConfig.grad_clip must be > 0 or None (no clipping), got {self.grad_clip!r}")
        if self.dtype == "float16":
            raise ValueError("dtype='float16' needs loss scaling (torch.amp.GradScaler), which this trainer does "
                             "not do: use 'bfloat16' (same range as float32) or 'float32'")
        if self.dtype not in DTYPES:
            raise ValueError(f"TrainConfig.dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}")
        if self.eval_batches is not None and (isinstance(self.eval_batches, bool) or self.eval_batches < 1):
            raise ValueError(f"TrainConfig.eval_batches must be an int >= 1 or None, got {self.eval_batches!r}")


@dataclass
class TrainHistory:
    """What :meth:`Trainer.fit` measured, ready to plot: one entry per update, one per evaluation."""

    step: list[int] = field(default_factory=list)  # update number (1, 2, ...) of each entry below
    train_loss: list[float] = field(default_factory=list)  # mean loss per token of that update's batch
    lr: list[float] = field(default_factory=list)  # learning rate that update used
    grad_norm: list[float] = field(default_factory=list)  # gradient norm before clipping
    eval_step: list[int] = field(default_factory=list)  # updates done when each evaluation ran
    val_loss: list[float] = field(default_factory=list)  # mean validation loss per token
    val_ppl: list[float] = field(default_factory=list)  # exp(val_loss)
    tokens: int = 0  # tokens trained on (all processes)
    seconds: float = 0.0  # wall-clock time inside fit()

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def _as_tokens(tokens, name: str) -> Tensor:
    if not isinstance(tokens, Tensor):
        tokens = torch.as_tensor(tokens)
    if tokens.ndim != 1 or tokens.dtype.is_floating_point or tokens.dtype == torch.bool:
        raise ValueError(f"{name} must be a 1-D tensor of integer token ids, got shape {tuple(tokens.shape)} "
                         f"and dtype {tokens.dtype}")
    return tokens.long()


class Trainer:
    """Train ``model`` on ``train_tokens`` with AdamW, warm-up + cosine, clipping and accumulation.

    ``fit()`` runs up to ``config.max_steps`` updates (or ``steps`` more), ``save``/``load``
    write and restore a checkpoint that resumes exactly. The model stays on its device; started
    by ``torchrun`` (a process group is initialised) it is wrapped in ``DistributedDataParallel``
    and each process trains on its share of every global batch. Dropout draws from the
    trainer's own generator (seeded with ``seed + 1 + rank``; CPU and CUDA), never from the
    global one, so code around ``fit()`` sees the same random numbers with or without it.
    """

    def __init__(self, model: nn.Module, config: TrainConfig, train_tokens, val_tokens=None):
        if not isinstance(config, TrainConfig):
            raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
        self.model, self.config = model, config
        self.device = next(model.parameters()).device
        self.train_tokens = _as_tokens(train_tokens, "train_tokens")
        self.val_tokens = None if val_tokens is None else _as_tokens(val_tokens, "val_tokens")
        model_cfg = getattr(model, "config", None)
        if isinstance(getattr(model_cfg, "block_size", None), int) and config.block_size > model_cfg.block_size:
            raise ValueError(f"TrainConfig.block_size={config.block_size} exceeds the model's "
                             f"block_size={model_cfg.block_size}")
        for name, toks in (("train_tokens", self.train_tokens), ("val_tokens", self.val_tokens)):
            if toks is not None and len(toks) < config.block_size + 1:
                raise ValueError(f"{name} has {len(toks)} tokens; a window needs block_size + 1 = "
                                 f"{config.block_size + 1}")
        self.autocast_dtype = DTYPES[config.dtype]
        if self.autocast_dtype is torch.bfloat16 and self.device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise ValueError("this GPU has no bfloat16 support: use dtype='float32'")
        self.rank, self.world_size = (dist.get_rank(), dist.get_world_size()) if _world_size() > 1 else (0, 1)
        self._step_model = model
        if self.world_size > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self._step_model = nn.parallel.DistributedDataParallel(model, device_ids=ids)
        if config.compile:
            self._step_model = torch.compile(self._step_model)
        fused = config.fused if config.fused is not None else self.device.type in ("cpu", "cuda")
        self.optimizer = torch.optim.AdamW(param_groups(model, config.weight_decay), lr=config.lr,
                                           betas=config.betas, eps=config.eps, fused=fused)
        self.scheduler = warmup_cosine(self.optimizer, warmup_steps=config.warmup_steps,
                                       total_steps=config.max_steps, min_lr_ratio=config.min_lr / config.lr)
        self.step = 0
        self.history = TrainHistory()
        self.data_generator = torch_generator(config.seed)
        self._cuda = [self.device.index or 0] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=self._cuda):  # dropout's own stream; the global one is left alone
            torch.manual_seed(config.seed + 1 + self.rank)
            self._rng_states = self._get_rng()

    @property
    def tokens_per_step(self) -> int:
        c = self.config
        return c.batch_size * c.block_size * c.grad_accum_steps * self.world_size

    def _get_rng(self) -> dict[str, Tensor]:
        states = {"torch": torch.get_rng_state()}
        if self._cuda:
            states["cuda"] = torch.cuda.get_rng_state(self._cuda[0])
        return states

    @contextlib.contextmanager
    def _own_rng(self):
        """Run with the trainer's dropout generator state, then put the global one back."""
        with torch.random.fork_rng(devices=self._cuda):
            torch.set_rng_state(self._rng_states["torch"])
            if self._cuda:
                torch.cuda.set_rng_state(self._rng_states["cuda"], self._cuda[0])
            try:
                yield
            finally:
                self._rng_states = self._get_rng()

    def _micro_batch(self) -> tuple[Tensor, Tensor]:
        """This process's rows of the next global micro-batch (every process draws the same windows)."""
        b = self.config.batch_size
        x, y = random_windows(self.train_tokens, self.config.block_size, b * self.world_size, self.data_generator)
        rows = slice(self.rank * b, (self.rank + 1) * b)
        return x[rows].to(self.device, non_blocking=True), y[rows].to(self.device, non_blocking=True)

    def evaluate(self) -> EvalResult:
        """Validation loss and perplexity on ``eval_batches`` global batches of ``val_tokens``.

        Every process evaluates the same windows (redundant work, no communication).
        """
        if self.val_tokens is None:
            raise ValueError("this Trainer has no val_tokens")
        return evaluate(self.model, self.val_tokens, block_size=self.config.block_size,
                        batch_size=self.config.batch_size * self.world_size, max_batches=self.config.eval_batches,
                        autocast_dtype=self.autocast_dtype)

    def _record_eval(self) -> None:
        result = self.evaluate()
        self.history.eval_step.append(self.step)
        self.history.val_loss.append(result.loss)
        self.history.val_ppl.append(result.perplexity)

    def fit(self, steps: int | None = None, *, show_progress: bool = True, desc: str = "pretraining") -> TrainHistory:
        """Run ``steps`` more updates (default: up to ``config.max_steps``); return the whole history."""
        c, h = self.config, self.history
        if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
            raise ValueError(f"steps must be an int >= 1 or None (up to max_steps), got {steps!r}")
        end = c.max_steps if steps is None else min(self.step + steps, c.max_steps)
        start = time.perf_counter()
        with self._own_rng():
            if self.val_tokens is not None and not h.eval_step:
                self._record_eval()  # the loss before training, ~ln V
            bar = progress(total=end - self.step, desc=desc, disable=not show_progress or self.rank != 0)
            self.model.train()
            while self.step < end:
                lr = self.optimizer.param_groups[0]["lr"]
                micro = [self._micro_batch() for _ in range(c.grad_accum_steps)]
                result = train_step(self._step_model, self.optimizer, micro, grad_clip=c.grad_clip,
                                    autocast_dtype=self.autocast_dtype)
                self.scheduler.step()
                self.step += 1
                h.step.append(self.step)
                h.train_loss.append(result.loss)
                h.lr.append(lr)
                h.grad_norm.append(result.grad_norm)
                h.tokens += self.tokens_per_step
                if self.val_tokens is not None and (self.step == c.max_steps or
                                                    (c.eval_every and self.step % c.eval_every == 0)):
                    self._record_eval()
                bar.update(1)
                bar.set_postfix(loss=f"{result.loss:.3f}", lr=f"{lr:.1e}", refresh=False)
            bar.close()
        h.seconds += time.perf_counter() - start
        return h

    # ------------------------------------------------------------------ checkpoints

    def save(self, path) -> None:
        """Write a checkpoint that :meth:`load` resumes exactly.

        Under DDP only rank 0 writes: the weights and optimiser are the same everywhere, but the
        other ranks' dropout generators are not kept, so there the resume is exact only without dropout.
        """
        if self.rank != 0:
            return
        meta = {"step": self.step, "config": dataclasses.asdict(self.config), "history": self.history.as_dict()}
        save_checkpoint(path, self.model, self.optimizer, self.scheduler,
                        rng_states={"data": self.data_generator.get_state(), **self._rng_states}, meta=meta)

    def load(self, path) -> None:
        """Restore weights, optimiser, scheduler, step, history and every generator from ``path``.

        The Trainer must have been built with the same ``TrainConfig`` (exact resume needs the
        same recipe); ``fit()`` then continues as if the run had never stopped.
        """
        saved = read_meta(path)["config"]
        saved["betas"] = tuple(saved["betas"])
        differ = {k: (v, getattr(self.config, k)) for k, v in saved.items() if getattr(self.config, k) != v}
        if differ:
            raise ValueError("the checkpoint was written with another TrainConfig (saved vs here): "
                             + ", ".join(f"{k}={a!r} vs {b!r}" for k, (a, b) in differ.items()))
        ckpt = load_checkpoint(path, self.model, self.optimizer, self.scheduler)
        self.step = ckpt.meta["step"]
        self.history = TrainHistory(**ckpt.meta["history"])
        self.data_generator.set_state(ckpt.rng_states["data"])
        missing = sorted(set(self._rng_states) - set(ckpt.rng_states))
        if missing:
            raise ValueError(f"{path} has no generator state for {missing}: written on another kind of device?")
        self._rng_states = {k: ckpt.rng_states[k] for k in self._rng_states}
