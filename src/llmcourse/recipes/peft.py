"""The runs chapter 11 shows: full fine-tuning vs LoRA at several ranks and targets, the other PEFT methods, QLoRA.

Run ``python -m llmcourse.recipes.peft``: about 15 CPU-minutes, each run in its own process on one thread,
``--workers`` (default 2) at a time. Every run starts from
the course's *base* model (``load_base()``, chapter 8), so full fine-tuning here is chapter 9's SFT,
and every run sees the same data in the same order with the same budget:

* 1,920 training examples of ``llmcourse.instructions`` (the first of the train split) in the chat
  format, one example per row (no packing: the prompt methods prepend tokens to a row), rows of
  64 tokens, batches of 32, 2 epochs = 120 updates, AdamW with warm-up and cosine decay
  (``llmcourse.sft.train_sft``); only the learning rate differs by method (:data:`LR`, not tuned);
* exact match on the first 16 test examples of each of the 8 families (128), greedy, chat format
  (``llmcourse.sft.evaluate_chat``, prompts batched by length so no row is padded);
* memory: one training step counted by ``llmcourse.memory.measure_training_step`` (weights, gradients,
  AdamW state, tensors saved for backward), and the mean CPU time of a step (``time.process_time`` of
  the run's one-thread process, which a busy machine disturbs far less than wall time).

The runs: full fine-tuning; LoRA (``llmcourse.lora``) with r = 1, 2, 4, 8, 16 on the attention
projections and r = 1, 4, 16 on attention + MLP (α = 2r); Houlsby adapters (``llmcourse.adapters``);
``peft``'s prompt tuning, P-tuning (prompt encoder), prefix tuning (with the reparameterising MLP),
P-tuning v2 (prefixes at every layer, no reparameterisation) and IA³ on ``load_base(kind="hf")``;
QLoRA: the blocks' linear layers as ``bitsandbytes`` NF4 ``Linear4bit`` with LoRA r = 8 on top; and,
untrained, the base model prompted with three solved examples (prompt engineering).
It writes ``book/11-peft-lora/peft_runs.json``, which the chapter reads.

``--part focused`` (about 7 minutes with 2 workers) adds the key ``"focused"`` to that file and leaves the rest as it is:
at the sweep's budget every score is near zero, so this part asks a question small enough for exact match to
answer. It starts from chapter 9's *SFT* model (``load_base(name="sft")``) and fine-tunes it on one family it
does badly, ``uppercase``: :data:`FOCUSED` ``train`` fresh examples (seed ``train_seed``), packed into rows of
128 tokens, 8 rows an update, 4 epochs (164 updates), AdamW with warm-up and cosine decay; scored by exact match
on held-out fresh examples (seed ``test_seed``, none sharing a ``problem_key`` with the training ones). The
runs (:func:`focused_runs`): full fine-tuning (lr 5e-3) and LoRA (lr 1e-2, α = 2r; neither rate tuned) at
r = 1, 2, 4, 8, 16 on attention + MLP and r = 4, 16 on attention only; full fine-tuning and LoRA r = 4 once more
with seed 1 (another data order and LoRA initialisation, same data) to show the spread.

Taught in: book/11-peft-lora
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import hashlib
import json
import math
import multiprocessing
import platform
import sys
import time
import warnings
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import torch
from torch import nn

from llmcourse import sft
from llmcourse.adapters import CourseLM, inject_adapters
from llmcourse.chat import encode_prompt, example_to_messages
from llmcourse.instructions import make_split, score_by_family
from llmcourse.lora import (
    ATTENTION,
    ATTENTION_MLP,
    inject_lora,
    quantize_base_nf4,
    trainable_parameters,
)
from llmcourse.memory import measure_training_step
from llmcourse.trainer import param_groups

OUT = Path(__file__).resolve().parents[3] / "book" / "11-peft-lora" / "peft_runs.json"
THREADS = 1
DATA = {"train_examples": 1920, "test_per_family": 16, "block_size": 64}
CONFIG = sft.SFTConfig(epochs=2, batch_size=32, block_size=64, lr=3e-3, min_lr=3e-4, warmup_steps=15,
                       weight_decay=0.0, grad_clip=1.0, seed=0, packed=False, dropout=0.0)
LR = {"full": 3e-3, "lora": 1e-2, "adapter": 1e-2, "prompt": 3e-2, "ptuning": 1e-2, "prefix": 1e-2,
      "ptuning_v2": 1e-2, "ia3": 3e-2, "qlora": 1e-2}
LORA_SWEEP = [("attn", r) for r in (1, 2, 4, 8, 16)] + [("attn+mlp", r) for r in (1, 4, 16)]
TARGETS = {"attn": ATTENTION, "attn+mlp": ATTENTION_MLP}
VIRTUAL_TOKENS = 8
BOTTLENECK = 8
SHOTS = 3
FOCUSED = {"family": "uppercase", "train": 1000, "test": 200, "train_seed": 1101, "test_seed": 2202,
           "block_size": 128}
FOCUSED_CONFIG = sft.SFTConfig(epochs=4, batch_size=8, block_size=128, lr=5e-3, min_lr=5e-4, warmup_steps=10,
                               weight_decay=0.0, grad_clip=1.0, seed=0, packed=True, dropout=0.0)
FOCUSED_LR = {"full": 5e-3, "lora": 1e-2}


def base_sha256(name: str = "base") -> str:
    from llmcourse.pretrained import checkpoint_file

    return hashlib.sha256(checkpoint_file("model.safetensors", name).read_bytes()).hexdigest()


def data(scale: float = 1.0):
    """(train items, test examples, tokenizer): the same for every run."""
    from llmcourse.pretrained import load_tokenizer

    tok = load_tokenizer()
    train = make_split("train")[:max(64, round(DATA["train_examples"] * scale))]
    per_family = defaultdict(list)
    for e in make_split("test"):
        if len(per_family[e.family]) < max(2, round(DATA["test_per_family"] * scale)):
            per_family[e.family].append(e)
    test = [e for f in sorted(per_family) for e in per_family[f]]
    return sft.encode_examples(train, tok, block_size=DATA["block_size"]), test, tok


def evaluate(model: nn.Module, tok, examples) -> dict[str, float]:
    """Exact match per family, greedy chat replies; prompts of equal length go in one batch (no padding)."""
    groups = defaultdict(list)
    for i, e in enumerate(examples):
        groups[len(encode_prompt(example_to_messages(e)[:-1], tok))].append(i)
    texts = [""] * len(examples)
    for idx in groups.values():
        _, replies = sft.evaluate_chat(model, tok, [examples[i] for i in idx])
        for i, t in zip(idx, replies):
            texts[i] = t
    return {k: round(v, 4) for k, v in score_by_family(texts, examples).items()}


# ----------------------------------------------------------------- the methods


def full(model):
    return model


def lora(targets: str, r: int, seed: int = 0):
    def apply(model):
        inject_lora(model, TARGETS[targets], r=r, alpha=2 * r, dropout=0.0, seed=seed)
        return model
    return apply


def adapter(model):
    inject_adapters(model, BOTTLENECK, seed=0)
    return model


def hf_peft(kind: str):
    """A ``peft`` prompt-learning or IA³ model of the HF twin of ``model``, behind ``CourseLM``."""
    def apply(model):
        from peft import (
            IA3Config,
            PrefixTuningConfig,
            PromptEncoderConfig,
            PromptTuningConfig,
            TaskType,
            get_peft_model,
        )

        cfgs = {"prompt": PromptTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=VIRTUAL_TOKENS),
                "ptuning": PromptEncoderConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=VIRTUAL_TOKENS,
                                               encoder_hidden_size=model.config.n_embd),
                "prefix": PrefixTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=VIRTUAL_TOKENS,
                                             prefix_projection=True, encoder_hidden_size=model.config.n_embd),
                "ptuning_v2": PrefixTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=VIRTUAL_TOKENS),
                "ia3": IA3Config(task_type=TaskType.CAUSAL_LM, target_modules=["c_attn", "mlp.c_proj"],
                                 feedforward_modules=["mlp.c_proj"])}
        torch.manual_seed(0)  # peft initialises its tables from the global generator
        return CourseLM(get_peft_model(model.to_hf(), cfgs[kind]), model.config.block_size)
    return apply


def qlora(r: int):
    def apply(model):
        quantize_base_nf4(model)
        return lora("attn+mlp", r)(model)
    return apply


def runs() -> list[tuple[str, str, dict, object]]:
    """(name, learning-rate key, description, apply) of every trained run, in order."""
    out = [("full", "full", {"method": "full fine-tuning"}, full)]
    out += [(f"lora_{t}_r{r}", "lora", {"method": "LoRA", "targets": t, "r": r, "alpha": 2 * r}, lora(t, r))
            for t, r in LORA_SWEEP]
    out += [("adapter", "adapter", {"method": "Houlsby adapters", "bottleneck": BOTTLENECK}, adapter),
            ("prompt", "prompt", {"method": "prompt tuning", "virtual_tokens": VIRTUAL_TOKENS}, hf_peft("prompt")),
            ("ptuning", "ptuning", {"method": "P-tuning (prompt encoder)", "virtual_tokens": VIRTUAL_TOKENS},
             hf_peft("ptuning")),
            ("prefix", "prefix", {"method": "prefix tuning (reparameterised)", "virtual_tokens": VIRTUAL_TOKENS},
             hf_peft("prefix")),
            ("ptuning_v2", "ptuning_v2", {"method": "P-tuning v2 (deep prompts)", "virtual_tokens": VIRTUAL_TOKENS},
             hf_peft("ptuning_v2")),
            ("ia3", "ia3", {"method": "IA3"}, hf_peft("ia3")),
            ("qlora_r8", "qlora", {"method": "QLoRA (NF4 base)", "targets": "attn+mlp", "r": 8, "alpha": 16},
             qlora(8))]
    return out


def run_one(apply, lr: float, items, test, tok, config: sft.SFTConfig, base) -> dict:
    """Train a fresh copy of ``base`` changed by ``apply``; its parameters, memory, speed, curve and scores."""
    probe = apply(copy.deepcopy(base))
    batch = sft.epoch_batches(items, config.block_size, config.batch_size, seed=0, packed=False)[0]
    probe.train()
    opt = torch.optim.AdamW(param_groups(probe, 0.0), lr=lr)
    memory = measure_training_step(probe, lambda: sft.sft_loss(probe, batch), opt)
    model = apply(copy.deepcopy(base))
    trainable, total = trainable_parameters(model)
    cpu = time.process_time()
    hist = sft.train_sft(model, items, dataclasses.replace(config, lr=lr, min_lr=lr / 10), show_progress=False)
    cpu = time.process_time() - cpu
    return {"trainable": trainable, "total": total, "memory": memory,
            "step_cpu_seconds": round(cpu / len(hist.step), 4), "step_wall_seconds": round(hist.seconds / len(hist.step), 4),
            "steps": len(hist.step),
            "loss": [round(v, 4) for v in hist.loss], "scores": evaluate(model, tok, test)}


def _worker(name: str, scale: float) -> tuple[str, dict]:
    """One trained run in its own process (one thread): fresh base model, same data."""
    from llmcourse.pretrained import load_base

    torch.set_num_threads(THREADS)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*fan_in_fan_out.*")
    base, _ = load_base()
    items, test, tok = data(scale)
    config = dataclasses.replace(CONFIG, warmup_steps=max(1, round(CONFIG.warmup_steps * scale)))
    _, lr_key, desc, apply = next(r for r in runs() if r[0] == name)
    t = time.perf_counter()
    out = {**desc, "lr": LR[lr_key], **run_one(apply, LR[lr_key], items, test, tok, config, base)}
    out["seconds"] = round(time.perf_counter() - t, 1)
    return name, out


def run(scale: float = 1.0, only: list[str] | None = None, workers: int = 2, out: Path | None = None) -> dict:
    from llmcourse.pretrained import load_base

    timer = time.perf_counter()
    names = [r[0] for r in runs() if not only or r[0] in only]
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"))
    futures = [pool.submit(_worker, name, scale) for name in names]
    try:
        base, _ = load_base()
        items, test, tok = data(scale)
        config = dataclasses.replace(CONFIG, warmup_steps=max(1, round(CONFIG.warmup_steps * scale)))
        record = {"recipe": "python -m llmcourse.recipes.peft", "start": "base", "base_sha256": base_sha256(),
                  "threads": THREADS, "workers": workers, "scale": scale,
                  "settings": {**DATA, "train_examples": len(items), "test_examples": len(test),
                               "sft": dataclasses.asdict(config), "lr": LR, "virtual_tokens": VIRTUAL_TOKENS,
                               "adapter_bottleneck": BOTTLENECK},
                  "base_parameters": base.num_parameters(), "runs": {}}
        few, _ = sft.evaluate_few_shot(base, tok, test, make_split("train")[-200:], k=SHOTS)
        record["prompt_engineering"] = {"method": f"base model, {SHOTS} solved examples in the prompt (no training)",
                                        "scores": {k: round(v, 4) for k, v in few.items()}}
        record["runs"]["base"] = {"method": "base model, chat prompt (no training)", "trainable": 0,
                                  "total": base.num_parameters(), "scores": evaluate(base, tok, test)}
        done = {}
        for future in as_completed(futures):
            name, r = future.result()
            done[name] = r
            if out is not None:  # what is finished so far, in case the recipe is stopped
                record["runs"].update({n: done[n] for n in names if n in done})
                out.write_text(json.dumps(record, indent=1) + "\n")
            print(f"{name:18s} trainable {r['trainable']:>9,} ({100 * r['trainable'] / r['total']:.2f} %)  "
                  f"exact match {r['scores']['all']:.3f}  step {r['step_cpu_seconds']:.3f} CPU s  "
                  f"{r['seconds']:.0f} s", flush=True)
        record["runs"].update({name: done[name] for name in names})
    finally:
        pool.shutdown(cancel_futures=True)
    record["seconds"] = {"total": round(time.perf_counter() - timer, 1),
                         "runs_wall_sum": round(sum(r["seconds"] for r in done.values()), 1)}
    record["made_with"] = {"python": platform.python_version(), "torch": torch.__version__,
                           "peft": _version("peft"), "bitsandbytes": _version("bitsandbytes"),
                           "machine": platform.machine(), "date": time.strftime("%Y-%m-%d")}
    return record


# ----------------------------------------------------------------- the focused part


def focused_data(scale: float = 1.0):
    """(train items, held-out examples, tokenizer) of the focused part: fresh examples of one family, the
    held-out ones drawn from another seed and sharing no ``problem_key`` with the training ones."""
    from llmcourse.instructions import fresh_examples, problem_key
    from llmcourse.pretrained import load_tokenizer

    tok = load_tokenizer()
    fam = (FOCUSED["family"],)
    n_train, n_test = max(32, round(FOCUSED["train"] * scale)), max(8, round(FOCUSED["test"] * scale))
    train = fresh_examples(n_train, FOCUSED["train_seed"], families=fam)
    seen = {problem_key(e) for e in train}
    test = [e for e in fresh_examples(n_test + 100, FOCUSED["test_seed"], families=fam)
            if problem_key(e) not in seen][:n_test]
    assert len(test) == n_test and not seen & {problem_key(e) for e in test}
    return sft.encode_examples(train, tok, block_size=FOCUSED["block_size"]), test, tok


def focused_runs() -> list[tuple[str, str, dict, object, int]]:
    """(name, learning-rate key, description, apply, seed) of every run of the focused part."""
    out = [("full", "full", {"method": "full fine-tuning"}, full, 0)]
    out += [(f"lora_attn+mlp_r{r}", "lora", {"method": "LoRA", "targets": "attn+mlp", "r": r, "alpha": 2 * r},
             lora("attn+mlp", r), 0) for r in (1, 2, 4, 8, 16)]
    out += [(f"lora_attn_r{r}", "lora", {"method": "LoRA", "targets": "attn", "r": r, "alpha": 2 * r},
             lora("attn", r), 0) for r in (4, 16)]
    out += [("full_seed1", "full", {"method": "full fine-tuning"}, full, 1),
            ("lora_attn+mlp_r4_seed1", "lora", {"method": "LoRA", "targets": "attn+mlp", "r": 4, "alpha": 8},
             lora("attn+mlp", 4, seed=1), 1)]
    return out


def focused_score(model: nn.Module, tok, test) -> dict:
    score = evaluate(model, tok, test)["all"]
    return {"exact_match": score, "correct": round(score * len(test)), "n_test": len(test),
            "stderr": round(math.sqrt(score * (1 - score) / len(test)), 4)}


def _focused_config(scale: float) -> sft.SFTConfig:
    return dataclasses.replace(FOCUSED_CONFIG, warmup_steps=max(1, round(FOCUSED_CONFIG.warmup_steps * scale)))


def _focused_worker(name: str, scale: float) -> tuple[str, dict]:
    """One run of the focused part in its own process (one thread): fresh SFT model, same data."""
    from llmcourse.pretrained import load_base

    torch.set_num_threads(THREADS)
    warnings.filterwarnings("ignore", category=FutureWarning)
    base, _ = load_base(name="sft")
    items, test, tok = focused_data(scale)
    _, lr_key, desc, apply, seed = next(r for r in focused_runs() if r[0] == name)
    lr = FOCUSED_LR[lr_key]
    config = dataclasses.replace(_focused_config(scale), lr=lr, min_lr=lr / 10, seed=seed)
    t = time.perf_counter()
    probe = apply(copy.deepcopy(base))
    batch = sft.epoch_batches(items, config.block_size, config.batch_size, seed=0, packed=True)[0]
    probe.train()
    opt = torch.optim.AdamW(param_groups(probe, 0.0), lr=lr)
    memory = measure_training_step(probe, lambda: sft.sft_loss(probe, batch), opt)
    model = apply(copy.deepcopy(base))
    trainable, total = trainable_parameters(model)
    cpu = time.process_time()
    hist = sft.train_sft(model, items, config, show_progress=False)
    cpu = time.process_time() - cpu
    out = {**desc, "lr": lr, "seed": seed, "trainable": trainable, "total": total, "memory": memory,
           "steps": len(hist.step), "step_cpu_seconds": round(cpu / len(hist.step), 4),
           "step_wall_seconds": round(hist.seconds / len(hist.step), 4),
           "loss": [round(v, 4) for v in hist.loss], **focused_score(model, tok, test)}
    out["seconds"] = round(time.perf_counter() - t, 1)
    return name, out


def run_focused(scale: float = 1.0, only: list[str] | None = None, workers: int = 2, out: Path | None = None) -> dict:
    """The focused part: every run of :func:`focused_runs`, and the SFT model's score before any of them."""
    from llmcourse.pretrained import load_base

    timer = time.perf_counter()
    names = [r[0] for r in focused_runs() if not only or r[0] in only]
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"))
    futures = [pool.submit(_focused_worker, name, scale) for name in names]
    done = {}
    try:
        base, _ = load_base(name="sft")
        items, test, tok = focused_data(scale)
        config = _focused_config(scale)
        record = {"recipe": "python -m llmcourse.recipes.peft --part focused", "start": "sft",
                  "sft_sha256": base_sha256("sft"), "base_sha256": base_sha256("base"),
                  "threads": THREADS, "workers": workers, "scale": scale,
                  "settings": {**FOCUSED, "train_examples": len(items), "test_examples": len(test),
                               "sft": dataclasses.asdict(config), "lr": FOCUSED_LR},
                  "sft_parameters": base.num_parameters(),
                  "before": {"method": "SFT model (chapter 9), no further training", "trainable": 0,
                             "total": base.num_parameters(), **focused_score(base, tok, test)},
                  "runs": {}}
        for future in as_completed(futures):
            name, r = future.result()
            done[name] = r
            if out is not None:
                record["runs"].update({n: done[n] for n in names if n in done})
                out.write_text(json.dumps(record, indent=1) + "\n")
            print(f"{name:24s} trainable {r['trainable']:>9,} ({100 * r['trainable'] / r['total']:.2f} %)  "
                  f"exact match {r['exact_match']:.3f} +- {r['stderr']:.3f}  step {r['step_cpu_seconds']:.3f} CPU s  "
                  f"{r['seconds']:.0f} s", flush=True)
        record["runs"] = {name: done[name] for name in names}
    finally:
        pool.shutdown(cancel_futures=True)
    record["seconds"] = {"total": round(time.perf_counter() - timer, 1),
                         "runs_wall_sum": round(sum(r["seconds"] for r in done.values()), 1)}
    record["made_with"] = {"python": platform.python_version(), "torch": torch.__version__,
                           "machine": platform.machine(), "date": time.strftime("%Y-%m-%d")}
    return record


def _version(name: str) -> str:
    from importlib.metadata import version

    return version(name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llmcourse.recipes.peft", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=OUT, help=f"JSON to write (default {OUT})")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply the data sizes (for a quick check)")
    parser.add_argument("--only", nargs="*", default=None, help="run only these runs (names as in the JSON)")
    parser.add_argument("--workers", type=int, default=2, help="runs in parallel, one thread each (default 2)")
    parser.add_argument("--part", choices=("sweep", "focused"), default="sweep",
                        help="sweep: every method from the base model (rewrites the file); focused: one family "
                             "from the SFT model (adds the key 'focused', keeps the rest)")
    args = parser.parse_args(argv)
    threads = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*fan_in_fan_out.*")
    try:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        if args.part == "focused":
            focused = run_focused(args.scale, args.only, args.workers, args.out.with_suffix(".focused.partial.json"))
            record = json.loads(args.out.read_text()) if args.out.is_file() else {}
            record["focused"] = focused
        else:
            record = run(args.scale, args.only, args.workers, args.out.with_suffix(".partial.json"))
            old = json.loads(args.out.read_text()) if args.out.is_file() else {}
            if "focused" in old:  # the other part's results stay
                record["focused"] = old["focused"]
    finally:
        torch.set_num_threads(threads)
    args.out.write_text(json.dumps(record, indent=1) + "\n")
    args.out.with_suffix(".partial.json").unlink(missing_ok=True)
    args.out.with_suffix(".focused.partial.json").unlink(missing_ok=True)
    seconds = (record["focused"] if args.part == "focused" else record)["seconds"]["total"]
    print(f"written to {args.out} in {seconds:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
