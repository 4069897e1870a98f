"""The recipe of the course's SFT model: the chapter-8 base model fine-tuned on the instruction tasks.

Run ``python -m llmcourse.recipes.sft`` (or ``make sft``) to make ``checkpoints/sft/``:

* ``model.safetensors`` - the base model (``checkpoints/base``) after supervised fine-tuning on the
  4,000 training examples of ``llmcourse.instructions`` in the chat format of ``llmcourse.chat``
  (loss on the assistant's reply only, examples packed into rows of 128 tokens);
* ``tokenizer.json`` - the base tokenizer, unchanged (the chat format adds no token);
* ``recipe.json`` - the settings, the loss curve, the wall time, the SHA-256 of both files
  (checked by ``llmcourse.pretrained.load_base(name="sft")``) and what was measured:

  - exact match per family on the 400-example test split, for the base model prompted with
    3 solved examples of the family (few-shot) and for the SFT model (zero-shot, chat format);
  - catastrophic forgetting: perplexity on the pretraining validation text before and after SFT;
  - the mitigation: the same SFT run with pretraining text replayed in every batch (its scores and
    perplexity; its weights are not shipped).

Everything is seeded; each run uses one thread, and the replay run goes in a second process beside the
main one (``--serial`` runs them one after the other). Chapter 10 starts from this checkpoint.

Taught in: book/09-sft
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
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

from llmcourse import sft
from llmcourse.chat import packing_savings
from llmcourse.instructions import make_split
from llmcourse.pretrained import checkpoint_file, load_base
from llmcourse.pretrained import recipe as base_recipe

OUT = Path(__file__).resolve().parent.parent / "checkpoints" / "sft"
CONFIG = sft.SFTConfig(epochs=10, batch_size=16, block_size=128, lr=3e-3, min_lr=3e-4, warmup_steps=30,
                       weight_decay=0.1, grad_clip=1.0, seed=0, dropout=0.0)
MITIGATION = dataclasses.replace(CONFIG, replay_batch=4, replay_weight=1.0)  # 4 windows of 128 tokens per update
SHOTS = 3  # solved examples in the base model's few-shot prompt
THREADS = 1
SMOKE = {"train": 160, "test": 16}  # --smoke: a one-epoch run on this many examples, to check the recipe end to end


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _rounded(scores: dict[str, float]) -> dict[str, float]:
    return {k: round(v, 4) for k, v in scores.items()}


def _splits(smoke: bool):
    train, test = make_split("train"), make_split("test")
    return (train[:SMOKE["train"]], test[:SMOKE["test"]]) if smoke else (train, test)


def run(config: sft.SFTConfig, *, replay: bool = False, desc: str = "SFT", show_progress: bool = True,
        smoke: bool = False):
    """Fine-tune a fresh copy of the base model with ``config`` on the train split, optionally replaying the
    pretraining train text; (model, history, test scores, test replies, pretraining validation perplexity)."""
    torch.set_num_threads(THREADS)
    model, tok = load_base()
    train, test = _splits(smoke)
    items = sft.encode_examples(train, tok, block_size=config.block_size)
    replay_tokens = sft.pretraining_tokens(tok, "train") if replay else None
    hist = sft.train_sft(model, items, config, replay_tokens=replay_tokens, desc=desc, show_progress=show_progress)
    scores, replies = sft.evaluate_chat(model, tok, test, show_progress=show_progress)
    return model, hist, scores, replies, sft.pretraining_perplexity(model, sft.pretraining_tokens(tok, "validation"))


def mitigation(config: sft.SFTConfig = MITIGATION, smoke: bool = False) -> dict:
    """The replay run (in a second process, so both runs share the wall time on a two-core machine)."""
    _, hist, scores, _, ppl = run(config, replay=True, desc="SFT + replay", show_progress=False, smoke=smoke)
    return {"what": "replay: windows of pretraining text mixed into every batch",
            "sft": dataclasses.asdict(config), "scores": _rounded(scores), "ppl": round(ppl, 4),
            "seconds": round(hist.seconds, 1),
            "curve": {"step": hist.step, "loss": [round(v, 4) for v in hist.loss],
                      "replay_loss": [round(v, 4) for v in hist.replay_loss]}}


def _write(out: Path, record: dict) -> None:
    (out / "recipe.json").write_text(json.dumps(record, indent=1) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llmcourse.recipes.sft", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=OUT, help=f"folder to write into (default {OUT})")
    parser.add_argument("--no-mitigation", action="store_true", help="skip the replay run")
    parser.add_argument("--serial", action="store_true", help="run the replay run after the main one, not beside it")
    parser.add_argument("--smoke", action="store_true", help=f"one epoch on {SMOKE} examples (checks the recipe runs)")
    args = parser.parse_args(argv)
    config = dataclasses.replace(CONFIG, epochs=1, warmup_steps=2) if args.smoke else CONFIG
    mit_config = dataclasses.replace(MITIGATION, epochs=1, warmup_steps=2) if args.smoke else MITIGATION
    threads = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    start = time.perf_counter()
    pool = future = None
    if not args.no_mitigation and not args.serial:
        pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))
        future = pool.submit(mitigation, mit_config, args.smoke)
    try:
        base, tok = load_base()
        train, test = _splits(args.smoke)
        items = sft.encode_examples(train, tok, block_size=config.block_size)
        val_tokens = sft.pretraining_tokens(tok, "validation")
        base_ppl = sft.pretraining_perplexity(base, val_tokens)
        few, few_replies = sft.evaluate_few_shot(base, tok, test, make_split("train"), k=SHOTS, show_progress=True)
        print("base few-shot:", _rounded(few))
        model, hist, scores, replies, ppl = run(config, smoke=args.smoke)
        print("SFT:", _rounded(scores), f"pretraining perplexity {base_ppl:.2f} -> {ppl:.2f}")
        args.out.mkdir(parents=True, exist_ok=True)
        model.save(args.out / "model.safetensors")
        shutil.copyfile(checkpoint_file("tokenizer.json"), args.out / "tokenizer.json")
        record = {
            "recipe": "python -m llmcourse.recipes.sft",
            "base": {"name": "base", "sha256": base_recipe("base")["sha256"]["model.safetensors"]},
            "model": dataclasses.asdict(model.config),
            "parameters": model.num_parameters(),
            "sft": dataclasses.asdict(config),
            "threads": THREADS,
            "data": {"train_examples": len(train), "test_examples": len(test),
                     "packing": {k: round(v, 4) for k, v in packing_savings(items, CONFIG.block_size).items()},
                     "trained_tokens": int(sum(int((y != -100).sum()) for _, y in items))},
            "scores": {"split": "test", "shots": SHOTS, "base_few_shot": _rounded(few), "sft": _rounded(scores)},
            "forgetting": {"text": "course corpus, validation split", "base_ppl": round(base_ppl, 4),
                           "sft_ppl": round(ppl, 4)},
            "curve": {"step": hist.step, "loss": [round(v, 4) for v in hist.loss]},
            "samples": [{"family": e.family, "output": e.output, "base_few_shot": b, "sft": s}
                        for e, b, s in list(zip(test, few_replies, replies))[:40]],
            "seconds": {"sft": round(hist.seconds, 1)},
            "sha256": {"model.safetensors": sha256(args.out / "model.safetensors"),
                       "tokenizer.json": sha256(args.out / "tokenizer.json")},
            "made_with": {"python": platform.python_version(), "torch": torch.__version__,
                          "machine": platform.machine(), "date": time.strftime("%Y-%m-%d")},
        }
        _write(args.out, record)  # the checkpoint is usable from here on; the mitigation only adds numbers
        if not args.no_mitigation:
            record["mitigation"] = future.result() if future is not None else mitigation(mit_config, args.smoke)
            print("SFT + replay:", record["mitigation"]["scores"], f"pretraining perplexity {record['mitigation']['ppl']}")
        record["seconds"]["mitigation"] = record.get("mitigation", {}).get("seconds")
        record["seconds"]["total"] = round(time.perf_counter() - start, 1)
        _write(args.out, record)
    finally:
        torch.set_num_threads(threads)
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    print(f"SFT model written to {args.out} in {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
