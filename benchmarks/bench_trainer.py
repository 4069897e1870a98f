"""Training speed: the course Trainer against a plain PyTorch loop around transformers' GPT2LMHeadModel.

Run: `.venv/bin/python benchmarks/bench_trainer.py [--threads 1,2] [--shapes tiny,small] [--no-compile]`.
Writes benchmarks/results/trainer.json. Issue 12's target: at least 1.3x the tokens per second
of the plain loop on the 2-core CPU.

Both sides do the same work: the same initial weights (the course GPT copied into
GPT2LMHeadModel with ``to_hf``, attention switched to SDPA), the same random windows of the
course text (one seeded generator each), the same batch, AdamW with the same parameter groups
and hyperparameters, warm-up + cosine (transformers' schedule in the plain loop), global-norm
clipping at 1.0, ``zero_grad(set_to_none=True)`` and one ``loss.item()`` per step. The first
losses of every candidate are recorded to show they agree. Candidates:

* ``hf_plain``: the plain loop, GPT2LMHeadModel, ``torch.optim.AdamW`` with its CPU default
  (one Python loop over the parameters);
* ``hf_fast_gelu`` (ablation): the same with ``activation_function="gelu_pytorch_tanh"``, one
  fused kernel instead of GPT-2's ``gelu_new``, written as 8 elementwise tensor operations;
* ``gpt_plain`` (ablation): the same plain loop around the course GPT;
* ``trainer``: ``llmcourse.trainer.Trainer`` (course GPT, fused AdamW), progress bar off;
* ``trainer_bf16``: the Trainer with ``dtype="bfloat16"`` (autocast; not the same numbers, so
  left out of the loss comparison);
* ``trainer_compiled``: the Trainer with ``compile=True``; the compile time (inductor's caches
  off, so a first run's) is reported apart.

Each candidate is warmed up, then timed for several short rounds taken in turn (A, B, C, A, B,
C, ...) so that a change of load on a shared machine hits all alike. Noise only ever adds time,
so the headline is the best round (as ``timeit`` advises); the median round and the rate in
process CPU time (with one thread: time actually spent computing) are recorded too. Model FLOP
utilisation (MFU) = tokens/s x (6 N + 12 L C T) flops per token / the matmul peak, itself
measured in the same run with the same thread count (best of a float32 1024^3 matmul).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from common import write  # noqa: E402

from llmcourse.distributed import demo_tokens, training_flops_per_token  # noqa: E402
from llmcourse.gpt import GPT, GPTConfig  # noqa: E402
from llmcourse.trainer import (  # noqa: E402
    TrainConfig,
    Trainer,
    param_groups,
    random_windows,
)

SHAPES = {  # name: (model config, batch size, timed steps per round)
    "tiny": (GPTConfig.tiny(), 16, 10),  # the chapter's size: 2 layers, width 64, T = 64
    "small": (GPTConfig(vocab_size=256, block_size=128, n_layer=4, n_head=4, n_embd=128), 16, 4),
}
LR, MIN_LR, WD, BETAS, EPS, CLIP, WARMUP, SEED = 1e-3, 0.0, 0.1, (0.9, 0.95), 1e-8, 1.0, 10, 0


def matmul_peak(n: int = 1024, reps: int = 8) -> float:
    """Best float32 matmul rate (flop/s) with the current thread count."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(reps))
    return 2 * n**3 / best


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


class PlainLoop:
    """What one writes without a trainer: forward, cross-entropy, backward, clip, step, schedule."""

    def __init__(self, model, config: GPTConfig, batch_size: int, total_steps: int, tokens):
        from transformers import get_cosine_schedule_with_warmup

        self.model, self.tokens, self.b, self.t = model.train(), tokens, batch_size, config.block_size
        self.opt = torch.optim.AdamW(param_groups(model, WD), lr=LR, betas=BETAS, eps=EPS)
        self.sched = get_cosine_schedule_with_warmup(self.opt, WARMUP, total_steps)
        self.gen = torch.Generator().manual_seed(SEED)

    def run(self, steps: int) -> list[float]:
        losses = []
        for _ in range(steps):
            x, y = random_windows(self.tokens, self.t, self.b, self.gen)
            out = self.model(x)
            logits = out.logits if hasattr(out, "logits") else out[0]
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), CLIP)
            self.opt.step()
            self.sched.step()
            self.opt.zero_grad(set_to_none=True)
            losses.append(loss.item())
        return losses


class TrainerRun:
    def __init__(self, model, config: GPTConfig, batch_size: int, total_steps: int, tokens, compile: bool,
                 dtype: str):
        cfg = TrainConfig(max_steps=total_steps, batch_size=batch_size, block_size=config.block_size, lr=LR,
                          min_lr=MIN_LR, warmup_steps=WARMUP, weight_decay=WD, betas=BETAS, eps=EPS,
                          grad_clip=CLIP, seed=SEED, compile=compile, dtype=dtype)
        self.trainer = Trainer(model, cfg, tokens)

    def run(self, steps: int) -> list[float]:
        n = len(self.trainer.history.train_loss)
        return self.trainer.fit(steps, show_progress=False).train_loss[n:]


def build(kind: str, config: GPTConfig, batch_size: int, total_steps: int, tokens):
    with torch.random.fork_rng():
        torch.manual_seed(SEED)
        gpt = GPT(config)
    if kind in ("hf_plain", "hf_fast_gelu"):
        from transformers import GPT2LMHeadModel

        hf_config = gpt.to_hf_config()
        hf_config._attn_implementation = "sdpa"  # to_hf picks eager; SDPA is the faster choice
        if kind == "hf_fast_gelu":
            hf_config.activation_function = "gelu_pytorch_tanh"
        hf = GPT2LMHeadModel(hf_config)
        hf.load_state_dict(gpt.to_hf().state_dict())
        return PlainLoop(hf, config, batch_size, total_steps, tokens)
    if kind == "gpt_plain":
        return PlainLoop(gpt, config, batch_size, total_steps, tokens)
    return TrainerRun(gpt, config, batch_size, total_steps, tokens, compile=kind == "trainer_compiled",
                      dtype="bfloat16" if kind == "trainer_bf16" else "float32")


def _timed_round(run, steps: int) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    run.run(steps)
    return time.perf_counter() - wall, time.process_time() - cpu


def bench_shape(name: str, threads: int, tokens, *, rounds: int, compile: bool) -> dict:
    config, batch_size, steps = SHAPES[name]
    warmup = 5
    total = warmup + rounds * steps
    tokens_per_step = batch_size * config.block_size
    kinds = ["hf_plain", "hf_fast_gelu", "gpt_plain", "trainer", "trainer_bf16"]
    kinds += ["trainer_compiled"] if compile else []
    runs, first_losses, warm_s = {}, {}, {}
    for kind in kinds:
        torch._dynamo.reset()
        torch._inductor.config.force_disable_caches = kind == "trainer_compiled"  # a cold compile
        runs[kind] = build(kind, config, batch_size, total, tokens)
        start = time.perf_counter()
        first_losses[kind] = runs[kind].run(warmup)
        warm_s[kind] = time.perf_counter() - start
    wall = {k: [] for k in kinds}
    cpu = {k: [] for k in kinds}
    for _ in range(rounds):
        for kind in kinds:
            w, c = _timed_round(runs[kind], steps)
            wall[kind].append(steps * tokens_per_step / w)
            cpu[kind].append(steps * tokens_per_step / c)
    peak = matmul_peak()
    n_params = GPT(config).num_parameters(exclude_embeddings=True)
    flops = training_flops_per_token(n_params, config.n_layer, config.n_embd, config.block_size)
    result = {
        "model": {"n_layer": config.n_layer, "n_embd": config.n_embd, "n_head": config.n_head,
                  "block_size": config.block_size, "vocab_size": config.vocab_size, "params_in_matmuls": n_params},
        "batch_size": batch_size, "threads": threads, "rounds": rounds, "steps_per_round": steps,
        "flops_per_token": flops, "matmul_peak_gflops": round(peak / 1e9, 2),
        "first_losses": {k: [round(v, 6) for v in first_losses[k]] for k in kinds},
        "max_first_loss_gap_vs_hf": max(abs(a - b) for k in kinds if k != "trainer_bf16"
                                        for a, b in zip(first_losses[k], first_losses["hf_plain"])),
    }
    base_best, base_cpu = max(wall["hf_plain"]), statistics.median(cpu["hf_plain"])
    for kind in kinds:
        best = max(wall[kind])
        result[kind] = {"tokens_per_s": round(best), "tokens_per_s_median": round(statistics.median(wall[kind])),
                        "tokens_per_cpu_s": round(statistics.median(cpu[kind])),
                        "rounds_tokens_per_s": [round(r) for r in wall[kind]],
                        "mfu": round(best * flops / peak, 4),
                        "ratio_vs_hf_plain": round(best / base_best, 3),
                        "ratio_vs_hf_plain_cpu_time": round(statistics.median(cpu[kind]) / base_cpu, 3)}
    if compile:  # warm-up of the compiled run minus that of the eager one = compiling
        result["trainer_compiled"]["compile_s"] = round(warm_s["trainer_compiled"] - warm_s["trainer"], 1)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", default="1,2", help="torch thread counts to try, comma-separated")
    parser.add_argument("--shapes", default="tiny,small", help=f"model shapes among {sorted(SHAPES)}")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile candidate")
    args = parser.parse_args()
    tokens = demo_tokens(400_000)
    load_before = os.getloadavg()
    results = {"note": "tokens_per_s: best of interleaved rounds (wall clock); tokens_per_cpu_s: median in process "
                       "CPU time; load_average says how busy the machine was", "runs": []}
    for name in args.shapes.split(","):
        for threads in (int(t) for t in args.threads.split(",")):
            torch.set_num_threads(threads)
            print(f"{name}, {threads} thread(s) ...", flush=True)
            results["runs"].append({"shape": name, **bench_shape(name, threads, tokens, rounds=args.rounds,
                                                                 compile=not args.no_compile)})
    results["load_average"] = {"before": [round(v, 2) for v in load_before],
                               "after": [round(v, 2) for v in os.getloadavg()]}
    write("trainer", results)


if __name__ == "__main__":
    main()
