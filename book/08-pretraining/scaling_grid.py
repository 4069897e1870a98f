"""Scaling laws in miniature: train a grid of GPT sizes x token budgets on the course corpus.

Every grid point is its own run from scratch: a GPT of one size (``GridConfig.sizes``) trained
on one number of tokens (``GridConfig.tokens``) with the course trainer, its warm-up + cosine schedule as long
as that run (Hoffmann et al. 2022: a loss read off the middle of a longer schedule, as Kaplan
et al. 2020 did, overstates the loss of a run of that length). At the end the whole validation
split is evaluated. The tokenizer is the course's (``llmcourse.recipes.base.train_tokenizer``), so
the losses are in the same units as the base model's.

    python book/08-pretraining/scaling_grid.py              # the whole grid -> scaling_grid.json
    python book/08-pretraining/scaling_grid.py --only 0 --out /tmp/point0.json

``scaling_grid.json`` records the settings, the environment, and per point: the model shape,
its parameters (all, and without the token and position tables, Kaplan's N), the tokens
trained on, the compute ``6 N D`` (both counts of N) and the flops of
``llmcourse.distributed.training_flops_per_token``, the final validation loss and the
seconds it took. One thread and a fixed seed make a point repeatable: on the machine that
wrote the file it reproduces to the last digit (book/08-pretraining and
tests/test_scaling_grid.py re-run points and compare).

Taught in: book/08-pretraining
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
OUT = HERE / "scaling_grid.json"


@dataclass(frozen=True)
class GridConfig:
    """The grid's settings; every point shares them except its size and its token budget."""

    sizes: tuple[tuple[int, int, int], ...] = (  # (n_layer, n_embd, n_head), about 2.3x more parameters each
        (2, 16, 2), (2, 32, 2), (2, 64, 4), (3, 96, 4), (4, 128, 4))
    tokens: tuple[int, ...] = (131_072, 262_144, 524_288)  # tokens trained on: 128, 256, 512 updates
    batch_size: int = 16  # sequences per update
    block_size: int = 64  # tokens per sequence (and the models' context)
    lr: float = 3e-3  # peak learning rate, the same for every size
    min_lr: float = 3e-4  # floor of the cosine (10 % of the peak)
    warmup_fraction: float = 0.1  # share of each run's updates spent warming up
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    seed: int = 0  # initial weights (torch.manual_seed) and data order (TrainConfig.seed)
    threads: int = 1  # torch threads: one thread gives repeatable sums and is fastest on a busy machine

    def points(self) -> list[tuple[tuple[int, int, int], int]]:
        """(size, tokens) of every point, smallest model and budget first."""
        return [(size, tokens) for size in self.sizes for tokens in self.tokens]


def corpus_tokens() -> tuple[torch.Tensor, torch.Tensor, int]:
    """(train ids, validation ids, vocabulary size) of the course corpus with the course tokenizer."""
    from llmcourse.recipes.base import token_stream, train_tokenizer

    tok = train_tokenizer()
    return token_stream(tok, "train"), token_stream(tok, "validation"), tok.vocab_size


def run_point(size: tuple[int, int, int], tokens: int, data: tuple[torch.Tensor, torch.Tensor, int],
              grid: GridConfig = GridConfig(), *, show_progress: bool = False) -> dict:
    """Train one GPT of ``size`` on ``tokens`` tokens and return its record (see the module docstring)."""
    from llmcourse.distributed import training_flops_per_token
    from llmcourse.gpt import GPT, GPTConfig
    from llmcourse.trainer import TrainConfig, Trainer

    train_ids, val_ids, vocab_size = data
    n_layer, n_embd, n_head = size
    per_step = grid.batch_size * grid.block_size
    if tokens % per_step:
        raise ValueError(f"tokens={tokens} is not a whole number of updates of {per_step} tokens")
    steps = tokens // per_step
    threads = torch.get_num_threads()
    torch.set_num_threads(grid.threads)
    try:
        torch.manual_seed(grid.seed)
        model = GPT(GPTConfig(vocab_size=vocab_size, block_size=grid.block_size, n_layer=n_layer, n_head=n_head,
                              n_embd=n_embd, dropout=0.0))
        config = TrainConfig(max_steps=steps, batch_size=grid.batch_size, block_size=grid.block_size, lr=grid.lr,
                             min_lr=grid.min_lr, warmup_steps=round(grid.warmup_fraction * steps),
                             weight_decay=grid.weight_decay, grad_clip=grid.grad_clip, eval_every=0,
                             eval_batches=None, seed=grid.seed)
        trainer = Trainer(model, config, train_ids, val_ids)
        history = trainer.fit(show_progress=show_progress, desc=f"L{n_layer} C{n_embd}, {tokens:,} tokens")
    finally:
        torch.set_num_threads(threads)
    n_all = model.num_parameters()
    n_non_embedding = n_all - model.wte.weight.numel() - model.wpe.weight.numel()
    per_token = training_flops_per_token(model.num_parameters(exclude_embeddings=True), n_layer, n_embd,
                                         grid.block_size)
    return {
        "n_layer": n_layer, "n_embd": n_embd, "n_head": n_head,
        "parameters": n_all,  # every parameter, the tied token table once
        "non_embedding_parameters": n_non_embedding,  # without token and position tables (Kaplan's N)
        "tokens": history.tokens,
        "steps": steps,
        "epochs": history.tokens / len(train_ids),
        "tokens_per_parameter": history.tokens / n_all,
        "compute_6nd": 6 * n_all * history.tokens,
        "compute_6nd_non_embedding": 6 * n_non_embedding * history.tokens,
        "training_flops": per_token * history.tokens,  # 6 N_matmul D + attention (PaLM's count)
        "val_loss_start": history.val_loss[0],
        "val_loss": history.val_loss[-1],
        "train_loss_last_10": sum(history.train_loss[-10:]) / len(history.train_loss[-10:]),
        "seconds": round(history.seconds, 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scaling_grid.py", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=OUT, help=f"JSON file to write (default {OUT})")
    parser.add_argument("--only", type=int, nargs="*", help="run only these point indices (0 = first)")
    args = parser.parse_args(argv)
    grid = GridConfig()
    points = grid.points()
    chosen = range(len(points)) if args.only is None else args.only
    start = time.perf_counter()
    data = corpus_tokens()
    results = []
    for i in chosen:
        size, tokens = points[i]
        record = {"index": i, **run_point(size, tokens, data, grid)}
        results.append(record)
        print(f"[{i + 1}/{len(points)}] L{size[0]} C{size[1]}: {record['parameters']:,} parameters, "
              f"{tokens:,} tokens, validation loss {record['val_loss']:.4f} ({record['seconds']:.0f} s)", flush=True)
    seconds = time.perf_counter() - start
    out = {
        "script": "book/08-pretraining/scaling_grid.py",
        "settings": dataclasses.asdict(grid),
        "data": {"train_tokens": len(data[0]), "validation_tokens": len(data[1]), "vocab_size": data[2],
                 "tokenizer": "llmcourse.recipes.base.train_tokenizer"},
        "points": results,
        "seconds": round(seconds, 1),
        "made_with": {"python": platform.python_version(), "torch": torch.__version__,
                      "machine": platform.machine(), "processor": platform.processor(),
                      "date": time.strftime("%Y-%m-%d")},
    }
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    print(f"{len(results)} points in {seconds:.0f} s; written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
