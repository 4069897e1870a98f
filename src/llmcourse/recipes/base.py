"""The recipe of the course's base model: tokenizer + tiny GPT pretrained on the course corpus.

Run ``python -m llmcourse.recipes.base`` (or ``make base``) to make, from nothing but the
packages the course installs:

* ``tokenizer.json`` - byte-level BPE (``llmcourse.bpe``) with 2,048 ids, trained on the
  training split of the course corpus, digits split one per token (numbers merged into
  arbitrary chunks make arithmetic harder to learn, seed error 28);
* ``model.safetensors`` - a GPT-2-shaped decoder (``llmcourse.gpt``) pretrained on the same
  split with the course trainer (``llmcourse.trainer``);
* ``recipe.json`` - this recipe's settings, the loss curve, the final validation loss and
  perplexity, the wall time and the SHA-256 of both files, which ``llmcourse.pretrained``
  checks when it loads them.

Documents are joined with ``<|eos|>`` so the model learns where one ends. Everything is
seeded; the same Python (whose bundled prose is part of the corpus), the same PyTorch and
the same CPU give the same bytes. ``tests/test_pretrained.py`` re-runs the first steps and
compares them with the recorded curve.

Taught in: book/08-pretraining
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import platform
import sys
import time
from pathlib import Path

import torch

from llmcourse import bpe
from llmcourse.corpus import course_documents
from llmcourse.gpt import GPT, GPTConfig
from llmcourse.trainer import TrainConfig, Trainer

OUT = Path(__file__).resolve().parent.parent / "checkpoints" / "base"
VOCAB_SIZE = 2048
SPECIAL_TOKENS = ("<|bos|>", "<|eos|>", "<|pad|>")
MODEL = GPTConfig(vocab_size=VOCAB_SIZE, block_size=128, n_layer=4, n_head=4, n_embd=128, dropout=0.1)
TRAIN = TrainConfig(max_steps=1500, batch_size=16, block_size=128, lr=3e-3, min_lr=3e-4, warmup_steps=100,
                    weight_decay=0.1, grad_clip=1.0, eval_every=250, eval_batches=None, seed=0)
THREADS = 1  # one thread: a tiny model gains little from two, and loses badly on a busy machine


def train_tokenizer() -> bpe.BPETokenizer:
    """The course tokenizer: BPE on the training documents, digits kept one per token."""
    text = "\n\n".join(d.text for d in course_documents("train"))
    return bpe.train(text, VOCAB_SIZE, special_tokens=SPECIAL_TOKENS, split_digits=True)


def token_stream(tok: bpe.BPETokenizer, split: str) -> torch.Tensor:
    """Every document of ``split``, encoded, each followed by ``<|eos|>``: a 1-D int64 tensor."""
    eos = tok.special_tokens["<|eos|>"]
    ids: list[int] = []
    for doc in course_documents(split):
        ids += tok.encode(doc.text, allowed_special="none") + [eos]
    return torch.tensor(ids, dtype=torch.long)


def build(steps: int | None = None, *, show_progress: bool = True):
    """Train tokenizer and model (``steps`` updates, default the whole recipe); (tokenizer, model, trainer)."""
    torch.manual_seed(0)
    tok = train_tokenizer()
    train_ids, val_ids = token_stream(tok, "train"), token_stream(tok, "validation")
    model = GPT(dataclasses.replace(MODEL, vocab_size=tok.vocab_size))
    trainer = Trainer(model, TRAIN, train_ids, val_ids)
    trainer.fit(steps, show_progress=show_progress, desc="base model")
    return tok, model, trainer


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llmcourse.recipes.base", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=OUT, help=f"folder to write into (default {OUT})")
    args = parser.parse_args(argv)
    threads = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    start = time.perf_counter()
    try:
        tok, model, trainer = build()
    finally:
        torch.set_num_threads(threads)
    seconds = time.perf_counter() - start
    args.out.mkdir(parents=True, exist_ok=True)
    tok.save(args.out / "tokenizer.json")
    model.save(args.out / "model.safetensors")
    h = trainer.history
    record = {
        "recipe": "python -m llmcourse.recipes.base",
        "model": dataclasses.asdict(model.config),
        "parameters": model.num_parameters(),
        "train": dataclasses.asdict(TRAIN),
        "threads": THREADS,
        "tokens": {"train": len(trainer.train_tokens), "validation": len(trainer.val_tokens),
                   "seen": h.tokens},
        "final": {"val_loss": h.val_loss[-1], "val_ppl": h.val_ppl[-1], "train_loss_last_50": sum(h.train_loss[-50:]) / 50},
        "curve": {"step": h.step, "train_loss": h.train_loss, "eval_step": h.eval_step, "val_loss": h.val_loss},
        "seconds": round(seconds, 1),
        "sha256": {"model.safetensors": sha256(args.out / "model.safetensors"),
                   "tokenizer.json": sha256(args.out / "tokenizer.json")},
        "made_with": {"python": platform.python_version(), "torch": torch.__version__,
                      "machine": platform.machine(), "date": time.strftime("%Y-%m-%d")},
    }
    (args.out / "recipe.json").write_text(json.dumps(record, indent=1) + "\n")
    print(f"base model: {record['parameters']:,} parameters, {h.tokens:,} tokens in {seconds:.0f} s; "
          f"validation loss {h.val_loss[-1]:.3f} (perplexity {h.val_ppl[-1]:.1f}); written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
