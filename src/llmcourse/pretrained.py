"""The checkpoints the course ships, loaded offline: the base model of chapter 8 and its tokenizer.

``load_base()`` gives the course's own pretrained GPT and tokenizer, the model that chapters
9-13 fine-tune, align, adapt, quantise and use::

    model, tok = load_base()                 # llmcourse.gpt.GPT + llmcourse.bpe.BPETokenizer
    model, tok = load_base(kind="hf")        # transformers.GPT2LMHeadModel + PreTrainedTokenizerFast

The files live in ``llmcourse/checkpoints/base/`` and were made by
``python -m llmcourse.recipes.base``; ``recipe.json`` beside them records the recipe, the loss
curve, the final validation loss and the SHA-256 of each file, which is checked on every load
(a file that was changed or cut short gives a clear error, never a silently different model).

Taught in: book/08-pretraining
"""

from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from pathlib import Path

CHECKPOINTS = Path(__file__).resolve().parent / "checkpoints"
KINDS = ("course", "hf")


def _folder(name: str) -> Path:
    folder = CHECKPOINTS / name
    if not (folder / "recipe.json").is_file():
        known = sorted(p.name for p in CHECKPOINTS.iterdir() if (p / "recipe.json").is_file()) \
            if CHECKPOINTS.is_dir() else []
        raise FileNotFoundError(f"no shipped checkpoint {name!r} in {CHECKPOINTS} (known: {', '.join(known) or 'none'}); "
                                f"make it with `python -m llmcourse.recipes.{name}`")
    return folder


def recipe(name: str = "base") -> dict:
    """What ``recipe.json`` records about a shipped checkpoint: settings, curve, final loss, hashes."""
    return json.loads((_folder(name) / "recipe.json").read_text())


@lru_cache(maxsize=8)
def _verified(path: Path, want: str) -> Path:
    got = hashlib.sha256(path.read_bytes()).hexdigest()
    if got != want:
        raise ValueError(f"{path} has SHA-256 {got[:12]}..., but its recipe.json records {want[:12]}...: the file "
                         f"was changed or damaged; restore it (git checkout) or re-run its recipe")
    return path


def checkpoint_file(filename: str, name: str = "base") -> Path:
    """The path of a shipped file after checking its SHA-256 against ``recipe.json``."""
    record = recipe(name)
    if filename not in record["sha256"]:
        raise ValueError(f"{filename!r} is not part of checkpoint {name!r}: {sorted(record['sha256'])}")
    return _verified(_folder(name) / filename, record["sha256"][filename])


def load_tokenizer(kind: str = "course", name: str = "base"):
    """The course tokenizer (``BPETokenizer``), or with ``kind="hf"`` a ``PreTrainedTokenizerFast`` of it
    whose ``chat_template`` is ``llmcourse.chat.CHAT_TEMPLATE`` (so ``apply_chat_template`` works)."""
    from llmcourse.bpe import BPETokenizer

    _check_kind(kind)
    tok = BPETokenizer.load(checkpoint_file("tokenizer.json", name))
    if kind == "course":
        return tok
    from llmcourse.chat import CHAT_TEMPLATE
    from llmcourse.tokenizer import to_hf_tokenizer

    return to_hf_tokenizer(tok, chat_template=CHAT_TEMPLATE)


def load_base(kind: str = "course", *, device="cpu", name: str = "base"):
    """``(model, tokenizer)`` of the shipped base model, in evaluation mode.

    ``kind="course"``: ``llmcourse.gpt.GPT`` and ``llmcourse.bpe.BPETokenizer``;
    ``kind="hf"``: ``transformers.GPT2LMHeadModel`` and ``PreTrainedTokenizerFast`` (equal logits).
    """
    from llmcourse.gpt import GPT

    _check_kind(kind)
    model = GPT.load(checkpoint_file("model.safetensors", name), device=device).eval()
    tok = load_tokenizer(kind, name)
    if kind == "hf":
        model = model.to_hf().to(device).eval()
    return model, tok


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
