"""The runs of chapter 13's reasoning page: the SFT model taught multi-step arithmetic with and without
written steps, self-consistency, and calculator calls in a ReAct loop.

Run ``python -m llmcourse.recipes.reasoning`` (the two runs go in two processes side by side, one thread
each; ``--serial`` runs them one after the other; ``recipe.json`` records the wall time: 15 minutes on a
shared two-core machine, about 10 of them training). Both start from
the course's SFT model (``load_base(name="sft")``, chapter 9) and are fine-tuned on the *same* problems,
for the same number of epochs, with the same settings; only the replies differ (replies are packed into
rows of 128 tokens, so the shorter direct replies take fewer updates per epoch):

* **direct**: every problem answered with the number alone;
* **reasoning**: short problems (``reasoning.SHORT``: 3-5 numbers, 2-digit start, 1-digit steps) with
  their running-total steps in a ``<think>`` block (a chain of thought), long problems
  (``reasoning.LONG``: 3-5 three-digit numbers) with a calculator call (``agents.tool_reply``; the
  observation is left out of the loss).

Then, on held-out problems (other seeds, none of them in training; ``TEST``): greedy accuracy of both
models; ``SAMPLES`` sampled replies per short problem and the accuracy of a majority vote over k of them
(self-consistency); on the long problems the direct model's greedy answers (no tool) and the
reasoning model in ``agents.run_agent``'s loop, greedy (all 80), sampled (first 60) and with the tool
switched off (first 20), with every refused call counted by kind, and whether the call copied the
question's expression and the answer copied the tool's result. It writes ``book/13-using-llms/reasoning_runs.json`` and ships the reasoning model as
``checkpoints/reasoning/`` (``load_base(name="reasoning")``), with its SHA-256 in ``recipe.json``.

Taught in: book/13-using-llms
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import multiprocessing
import platform
import shutil
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

from llmcourse import agents, reasoning, sft
from llmcourse.pretrained import checkpoint_file, load_base

BOOK = Path(__file__).resolve().parents[3] / "book" / "13-using-llms" / "reasoning_runs.json"
CKPT = Path(__file__).resolve().parent.parent / "checkpoints" / "reasoning"
THREADS = 1
DATA = {"short": 2000, "long": 1000, "seed_short": 1, "seed_long": 2}  # training problems
TEST = {"short": 60, "long": 80, "seed_short": 101, "seed_long": 102}  # held-out problems
CONFIG = sft.SFTConfig(epochs=4, batch_size=16, block_size=128, lr=2e-3, min_lr=2e-4, warmup_steps=20,
                       weight_decay=0.1, grad_clip=1.0, seed=0, packed=True, dropout=0.0)
SAMPLES, TEMPERATURE, KS = 15, 1.0, (1, 3, 5, 9, 15)
SMOKE = {"short": 64, "long": 32, "test": 8, "samples": 3}


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def problems(smoke: bool = False) -> dict[str, list[reasoning.Problem]]:
    """Train and held-out problems; held-out ones exclude every training expression."""
    n = SMOKE if smoke else DATA
    train_short = reasoning.make_problems(n["short"], DATA["seed_short"])
    train_long = reasoning.make_problems(n["long"], DATA["seed_long"], kind=reasoning.LONG)
    seen = {p.expression for p in train_short + train_long}
    t = {"short": SMOKE["test"], "long": SMOKE["test"]} if smoke else TEST
    return {"train_short": train_short, "train_long": train_long,
            "test_short": reasoning.make_problems(t["short"], TEST["seed_short"], exclude=seen),
            "test_long": reasoning.make_problems(t["long"], TEST["seed_long"], kind=reasoning.LONG, exclude=seen)}


def _agent_eval(model, tok, tests, temperature, seed, use_tools: bool = True) -> dict:
    gen = torch.Generator().manual_seed(seed)
    runs = [agents.run_agent(model, tok, reasoning.prompt_ids(p, tok), temperature=temperature, generator=gen,
                                 use_tools=use_tools) for p in tests]
    kinds = Counter(kind for r in runs for _, _, kind in r.calls if kind is not None)
    first = [agents.parse_tool_call(r.calls[0][0]).arguments["expression"] if r.calls and r.calls[0][2] is None
             else None for r in runs]
    return {"answers": [reasoning.extract_answer(r.answer) if r.answer else None for r in runs],
            "copied_expression": [e == p.expression for e, p in zip(first, tests)],
            "copied_result": [bool(r.calls) and r.calls[-1][1] is not None and r.answer == r.calls[-1][1] for r in runs],
            "calls": [len(r.calls) for r in runs],
            "ok_calls": [sum(kind is None for _, _, kind in r.calls) for r in runs],
            "refused": {k: kinds.get(k, 0) for k in agents.ERROR_KINDS},
            "texts": [r.text for r in runs[:12]],
            "refused_examples": [raw for r in runs for raw, _, kind in r.calls if kind is not None][:8]}


def train_and_evaluate(kind: str, smoke: bool = False, save_to: str | None = None) -> dict:
    """Fine-tune the SFT model on the problems with ``kind`` replies ("direct" or "reasoning"), evaluate."""
    torch.set_num_threads(THREADS)
    model, tok = load_base(name="sft")
    data = problems(smoke)
    replies = (["direct"] * len(data["train_short"]) + ["direct"] * len(data["train_long"]) if kind == "direct"
               else ["cot"] * len(data["train_short"]) + ["tool"] * len(data["train_long"]))
    items = reasoning.encode_problems(data["train_short"] + data["train_long"], tok, replies)
    config = dataclasses.replace(CONFIG, epochs=1, warmup_steps=2) if smoke else CONFIG
    show = kind == "reasoning"
    hist = sft.train_sft(model, items, config, desc=f"SFT ({kind})", show_progress=show)
    start = time.perf_counter()
    s = SMOKE["samples"] if smoke else SAMPLES
    greedy, greedy_texts = reasoning.sample_answers(model, tok, data["test_short"], 1, greedy=True)
    samples, sample_texts = reasoning.sample_answers(model, tok, data["test_short"], s, temperature=TEMPERATURE,
                                                     seed=1, show_progress=show)
    gold = [p.answer for p in data["test_short"]]
    out = {"kind": kind, "train_items": len(items), "trained_tokens": int(sum(int((y != -100).sum()) for _, y in items)),
           "steps": len(hist.step), "seconds_train": round(hist.seconds, 1),
           "curve": {"step": hist.step[::5], "loss": [round(v, 4) for v in hist.loss[::5]]},
           "short": {"greedy": [g[0] for g in greedy], "greedy_texts": [g[0] for g in greedy_texts[:12]],
                     "samples": samples, "sample_texts": [t[:3] for t in sample_texts[:6]],
                     "curve": reasoning.self_consistency_curve(samples, gold, [k for k in KS if k <= s])}}
    if kind == "direct":
        ans, texts = reasoning.sample_answers(model, tok, data["test_long"], 1, greedy=True)
        out["long"] = {"greedy": [a[0] for a in ans], "greedy_texts": [t[0] for t in texts[:12]]}
    else:
        out["long"] = {"agent_greedy": _agent_eval(model, tok, data["test_long"], None, 0),
                       "agent_sampled": _agent_eval(model, tok, data["test_long"][:60], TEMPERATURE, 2),
                       "tool_disabled": _agent_eval(model, tok, data["test_long"][:20], None, 0, use_tools=False)}
        out["short"]["tool_calls_greedy"] = sum(agents.CALL_OPEN in t[0] for t in greedy_texts)
        out["short"]["think_greedy"] = sum(t[0].startswith("<think>") for t in greedy_texts)
    out["seconds_eval"] = round(time.perf_counter() - start, 1)
    if save_to is not None:
        model.save(save_to)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llmcourse.recipes.reasoning", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=BOOK, help=f"the runs file (default {BOOK})")
    parser.add_argument("--ckpt", type=Path, default=CKPT, help=f"checkpoint folder (default {CKPT})")
    parser.add_argument("--serial", action="store_true", help="one process, the runs one after the other")
    parser.add_argument("--smoke", action="store_true", help="tiny data, one epoch (checks the recipe runs)")
    args = parser.parse_args(argv)
    threads = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    start = time.perf_counter()
    pool = None
    try:
        if not args.serial:
            pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))
            future = pool.submit(train_and_evaluate, "direct", args.smoke)
        with tempfile.TemporaryDirectory() as tmp:
            weights = Path(tmp) / "model.safetensors"
            reasoning_run = train_and_evaluate("reasoning", args.smoke, str(weights))
            direct_run = future.result() if pool is not None else train_and_evaluate("direct", args.smoke)
            args.ckpt.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(weights, args.ckpt / "model.safetensors")
        shutil.copyfile(checkpoint_file("tokenizer.json", "sft"), args.ckpt / "tokenizer.json")
        data = problems(args.smoke)
        sft_sha = sha256(checkpoint_file("model.safetensors", "sft"))
        made = {"python": platform.python_version(), "torch": torch.__version__, "machine": platform.machine(),
                "date": time.strftime("%Y-%m-%d")}
        record = {
            "recipe": "python -m llmcourse.recipes.reasoning", "start": "sft", "start_sha256": sft_sha,
            "threads": THREADS, "smoke": args.smoke, "sft": dataclasses.asdict(CONFIG), "data": DATA, "test": TEST,
            "samples": SAMPLES, "temperature": TEMPERATURE, "ks": list(KS),
            "test_short": [p.expression for p in data["test_short"]],
            "test_long": [p.expression for p in data["test_long"]],
            "train_expressions_sha256": hashlib.sha256("\n".join(
                p.expression for p in data["train_short"] + data["train_long"]).encode()).hexdigest(),
            "runs": {"direct": direct_run, "reasoning": reasoning_run},
            "checkpoint_sha256": sha256(args.ckpt / "model.safetensors"),
            "made_with": made,
        }
        record["seconds"] = {"total": round(time.perf_counter() - start, 1)}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(record, separators=(",", ":")) + "\n")
        ckpt_record = {"recipe": "python -m llmcourse.recipes.reasoning", "start": {"name": "sft", "sha256": sft_sha},
                       "sft": dataclasses.asdict(CONFIG), "data": DATA, "threads": THREADS, "made_with": made,
                       "seconds": record["seconds"],
                       "sha256": {"model.safetensors": sha256(args.ckpt / "model.safetensors"),
                                  "tokenizer.json": sha256(args.ckpt / "tokenizer.json")}}
        (args.ckpt / "recipe.json").write_text(json.dumps(ckpt_record, indent=1) + "\n")
    finally:
        torch.set_num_threads(threads)
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    print(f"runs written to {args.out}, checkpoint to {args.ckpt}, in {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
