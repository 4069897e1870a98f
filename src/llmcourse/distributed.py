"""Training at scale: data parallelism that really runs, and the arithmetic of flops and memory.

Data parallelism: every process holds the whole model, takes a different
slice of each global batch, and before the optimiser step the gradients are
averaged across processes (an all-reduce), so every copy takes the same step.
PyTorch's ``DistributedDataParallel`` (DDP) does the averaging during the
backward pass, bucket by bucket. ``llmcourse.trainer.Trainer`` wraps its model
in DDP when the process was started by ``torchrun``; this module's command
line runs it:

    torchrun --nproc_per_node 2 -m llmcourse.distributed --out runs/ddp

(on CPUs with the ``gloo`` backend; ``nccl`` on GPUs). With the same global
batch it gives the losses of one process, up to float rounding
(``tests/test_distributed.py``).

Memory: DDP keeps a full copy of the *model states* on every GPU. With mixed
precision and Adam that is 2 bytes (fp16/bf16 weights) + 2 (their gradients)
+ K = 12 (fp32 master weights, Adam's m and v) per parameter: 16 Psi bytes for
Psi parameters, before any activation. ZeRO (Rajbhandari et al. 2020) shards
them over the N_d data-parallel processes instead: stage 1 the optimiser
states (2 Psi + 2 Psi + K Psi / N_d), stage 2 also the gradients
(2 Psi + (2 + K) Psi / N_d), stage 3 also the weights ((2 + 2 + K) Psi / N_d),
fetched layer by layer when needed. PyTorch's FSDP is stage 3
(``FULL_SHARD``) or stage 2 (``SHARD_GRAD_OP``). The paper's example, 7.5 B
parameters on 64 GPUs: 120 GB, 31.4 GB, 16.6 GB, 1.9 GB (its Figure 1; exactly 1.875 GB).

Compute: training costs about 6 N flops per token for N parameters (2 per
multiply-add, forward once, backward twice; Kaplan et al. 2020), plus attention
(:func:`training_flops_per_token`). Tokens per second times that, divided by the
hardware's peak, is the model FLOP utilisation (MFU).

Taught in: book/08-pretraining
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch
import torch.distributed as dist


def bytes_per_parameter(precision: str = "mixed", optimizer: str = "adam") -> tuple[int, int, int]:
    """Bytes per parameter for (weights, gradients, optimiser states): ``(2, 2, 12)`` for mixed-precision Adam.

    ``precision`` is ``"mixed"`` (fp16 or bf16 weights and gradients, fp32 master weights in the
    optimiser, as in the ZeRO paper) or ``"fp32"``; ``optimizer`` is ``"adam"`` (or ``"adamw"``),
    ``"sgd_momentum"`` or ``"sgd"``. The bytes come from the course's one memory calculator,
    :func:`llmcourse.memory.training_memory` (the master copy counts as optimiser state, as ZeRO does).
    """
    from llmcourse.memory import training_memory

    if precision not in ("mixed", "fp32"):
        raise ValueError(f"precision must be one of ['fp32', 'mixed'], got {precision!r}")
    if optimizer not in ("adam", "adamw", "sgd_momentum", "sgd"):
        raise ValueError(f"optimizer must be one of ['adam', 'sgd', 'sgd_momentum', 'adamw'], got {optimizer!r}")
    mixed = precision == "mixed"
    parts = training_memory(1, weight_dtype="bf16" if mixed else "fp32", optimizer=optimizer, mixed_precision=mixed)
    return int(parts["weights"]), int(parts["gradients"]), int(parts["optimizer"] + parts["master_weights"])


def memory_per_gpu(n_params: float, precision: str = "mixed", optimizer: str = "adam", n_gpus: int = 1,
                   zero_stage: int = 0) -> float:
    """Bytes of model states (weights, gradients, optimiser states) each GPU holds; activations not included.

    ``zero_stage`` 0 is plain data parallelism (everything replicated); 1 shards the optimiser
    states over ``n_gpus``, 2 also the gradients, 3 (FSDP ``FULL_SHARD``) also the weights.

    >>> round(memory_per_gpu(7.5e9, n_gpus=64, zero_stage=1) / 1e9, 1)  # ZeRO paper, Figure 1
    31.4
    """
    if not n_params > 0:
        raise ValueError(f"n_params must be > 0, got {n_params}")
    if isinstance(n_gpus, bool) or not isinstance(n_gpus, int) or n_gpus < 1:
        raise ValueError(f"n_gpus must be an int >= 1, got {n_gpus!r}")
    if zero_stage not in (0, 1, 2, 3):
        raise ValueError(f"zero_stage must be 0 (plain DDP), 1, 2 or 3, got {zero_stage!r}")
    w, g, k = bytes_per_parameter(precision, optimizer)
    w = w / n_gpus if zero_stage >= 3 else w
    g = g / n_gpus if zero_stage >= 2 else g
    k = k / n_gpus if zero_stage >= 1 else k
    return (w + g + k) * n_params


def training_flops_per_token(n_params: int, n_layer: int, n_embd: int, seq_len: int) -> int:
    """Floating-point operations to train on one token: ``6 N + 12 L C T`` (PaLM, Chowdhery et al. 2022, app. B).

    ``N`` counts the parameters used in matmuls (the course GPT's ``num_parameters(exclude_embeddings=True)``):
    2 flops per multiply-add, forward once and backward twice gives 6 N. Attention adds
    ``q k^T`` and ``softmax @ v``: 2 matmuls x 2 flops x T x C per layer and token, times 3.
    """
    return 6 * n_params + 12 * n_layer * n_embd * seq_len


# ----------------------------------------------------------------------------- a real data-parallel run


def demo_tokens(n: int = 200_000) -> torch.Tensor:
    """The first ``n`` bytes of ``llmcourse.datasets.english_corpus()`` as token ids 0-255."""
    from llmcourse.datasets import english_corpus

    return torch.frombuffer(bytearray(english_corpus().encode("utf-8")[:n]), dtype=torch.uint8).long()


def demo_trainer(*, global_batch: int = 8, steps: int = 6, grad_accum_steps: int = 2, seed: int = 0):
    """A Trainer for the tiny GPT on the course text, the same in every process.

    ``global_batch`` sequences per micro-batch are split over the processes of the current
    process group (one process if none), so one process and two see the same global batches.
    """
    from llmcourse.gpt import GPT, GPTConfig
    from llmcourse.trainer import TrainConfig, Trainer

    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    if global_batch % world:
        raise ValueError(f"global_batch={global_batch} is not divisible by the {world} processes")
    with torch.random.fork_rng():  # the same initial weights everywhere (DDP broadcasts rank 0's anyway)
        torch.manual_seed(seed)
        model = GPT(GPTConfig.tiny(block_size=32))
    tokens = demo_tokens()
    split = int(0.9 * len(tokens))
    config = TrainConfig(max_steps=steps, batch_size=global_batch // world, block_size=32,
                         grad_accum_steps=grad_accum_steps, warmup_steps=min(2, steps), eval_every=0,
                         eval_batches=4, seed=seed)
    return Trainer(model, config, tokens[:split], tokens[split:])


def main(argv: list[str] | None = None) -> None:
    """Train :func:`demo_trainer` (under ``torchrun``: one process each) and write its losses and weights."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder for losses.json and model.safetensors")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--global-batch", type=int, default=8)
    parser.add_argument("--grad-accum", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    started = "RANK" in os.environ and int(os.environ.get("WORLD_SIZE", "1")) > 1
    if started:
        dist.init_process_group("gloo")  # MASTER_ADDR, MASTER_PORT, RANK, WORLD_SIZE come from torchrun
    try:
        trainer = demo_trainer(global_batch=args.global_batch, steps=args.steps,
                               grad_accum_steps=args.grad_accum, seed=args.seed)
        history = trainer.fit(show_progress=False)
        if trainer.rank == 0:
            out = Path(args.out)
            out.mkdir(parents=True, exist_ok=True)
            (out / "losses.json").write_text(json.dumps({"world_size": trainer.world_size, **history.as_dict()}))
            trainer.model.save(out / "model.safetensors")
    finally:
        if started:
            dist.destroy_process_group()


if __name__ == "__main__":
    main()
