"""The runs of chapter 13's "other modalities" page: a CLIP-style model and a tiny DDPM on 8x8 digits.

Run ``python -m llmcourse.recipes.modalities`` (a few minutes on one CPU thread). It trains

1. **clip** - ``contrastive.CLIP`` (a ViT image encoder and a word-level text encoder) with InfoNCE on
   the digits' training split, each image captioned with its digit name in a random training
   template; measures zero-shot accuracy on the test split (nearest class-text embedding) for the
   ensemble of training templates, each template alone and a held-out template;
2. **ddpm** - ``diffusion.DenoiserMLP`` with Ho et al.'s simple loss (T = 1000, beta 1e-4 -> 0.02),
   then 64 ancestral samples, judged by a logistic-regression digit classifier trained on the real
   training images (fraction classified with probability > 0.9; real test digits and uniform noise
   for comparison) and by the distance to the nearest training image (copying would give 0).

The models go to ``llmcourse/checkpoints/{clip,ddpm}/`` (``recipe.json`` + SHA-256), the numbers
to ``book/13-using-llms/modalities_runs.json``.

Taught in: book/13-using-llms/modalities
"""

from __future__ import annotations

import hashlib
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from llmcourse import contrastive, diffusion
from llmcourse.datasets import load_digits

ROOT = Path(__file__).resolve().parents[3]
OUT = ROOT / "book" / "13-using-llms" / "modalities_runs.json"
CKPTS = Path(__file__).resolve().parents[1] / "checkpoints"
THREADS = 1
CLIP = {"embed_dim": 32, "steps": 600, "batch": 64, "lr": 3e-3, "seed": 0}
DDPM = {"width": 256, "n_hidden": 3, "time_dim": 64, "steps": 4000, "batch": 128, "lr": 2e-3, "seed": 0,
        "num_steps": 1000, "beta_start": 1e-4, "beta_end": 0.02, "samples": 64, "sample_seed": 0}


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def save(name: str, model: torch.nn.Module, record: dict) -> str:
    from safetensors.torch import save_file

    folder = CKPTS / name
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "model.safetensors"))
    record = {**record, "sha256": {"model.safetensors": sha256(folder / "model.safetensors")}}
    (folder / "recipe.json").write_text(json.dumps(record, indent=1) + "\n")
    return record["sha256"]["model.safetensors"]


def digits() -> tuple[torch.Tensor, ...]:
    """(train images (N, 1, 8, 8) in [0, 1], train labels, test images, test labels) as tensors."""
    return tuple(torch.as_tensor(a) for a in load_digits(images=True))


def curve(values: list[float], points: int = 100) -> dict:
    step = max(1, len(values) // points)
    return {"step": list(range(0, len(values), step)),
            "loss": [round(float(np.mean(values[i:i + step])), 5) for i in range(0, len(values), step)]}


def sample_quality(samples01: np.ndarray, Xtr: np.ndarray, ytr: np.ndarray, Xte: np.ndarray) -> dict:
    """Confident-classification rates and nearest-training-image distances of (n, 64) images in [0, 1]."""
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression(max_iter=3000).fit(Xtr, ytr)
    noise = np.random.default_rng(0).random(samples01.shape)

    def confident(x):
        return round(float((clf.predict_proba(x).max(1) > 0.9).mean()), 4)

    def nearest(x):
        return round(float(np.sqrt(((x[:, None] - Xtr[None]) ** 2).sum(-1)).min(1).mean()), 4)

    te = Xte[:len(samples01)]
    return {"classes": np.bincount(clf.predict(samples01), minlength=10).tolist(),
            "confident": {"samples": confident(samples01), "test": confident(te), "noise": confident(noise)},
            "nearest_train_distance": {"samples": nearest(samples01), "test": nearest(te), "noise": nearest(noise)}}


def run_clip() -> dict:
    t0 = time.time()
    Xtr, ytr, Xte, yte = digits()
    vocab = contrastive.build_vocab()
    torch.manual_seed(CLIP["seed"])
    model = contrastive.CLIP(len(vocab), CLIP["embed_dim"])
    losses = contrastive.train_clip(model, Xtr, ytr, vocab, steps=CLIP["steps"], batch=CLIP["batch"], lr=CLIP["lr"],
                                    seed=CLIP["seed"])

    def acc(templates):
        pred = contrastive.zero_shot_predict(model, Xte, contrastive.class_text_embeddings(model, vocab, templates))
        return round(float((pred == yte).float().mean()), 4)

    sha = save("clip", model, {"recipe": "python -m llmcourse.recipes.modalities", "config": CLIP,
                               "vocab_size": len(vocab)})
    return {"config": CLIP, "curve": curve(losses), "test_images": len(Xte),
            "zero_shot": {"ensemble": acc(contrastive.TRAIN_TEMPLATES),
                          "per_template": {t: acc((t,)) for t in contrastive.TRAIN_TEMPLATES},
                          "heldout": {t: acc((t,)) for t in contrastive.HELDOUT_TEMPLATES}},
            "temperature": round(float(1 / model.logit_scale.exp()), 5), "sha256": sha,
            "seconds": round(time.time() - t0, 1)}


def run_ddpm() -> dict:
    t0 = time.time()
    Xtr, ytr, Xte, _ = digits()
    schedule = diffusion.NoiseSchedule.linear(DDPM["num_steps"], DDPM["beta_start"], DDPM["beta_end"])
    torch.manual_seed(DDPM["seed"])
    model = diffusion.DenoiserMLP(width=DDPM["width"], n_hidden=DDPM["n_hidden"], time_dim=DDPM["time_dim"])
    data = Xtr.reshape(len(Xtr), -1) * 2 - 1
    losses = diffusion.train_ddpm(model, data, schedule, steps=DDPM["steps"], batch=DDPM["batch"], lr=DDPM["lr"],
                                  seed=DDPM["seed"])
    samples, _ = diffusion.sample(model, DDPM["samples"], schedule,
                                  generator=torch.Generator().manual_seed(DDPM["sample_seed"]))
    quality = sample_quality(((samples + 1) / 2).numpy(), Xtr.reshape(len(Xtr), -1).numpy(), ytr.numpy(),
                             Xte.reshape(len(Xte), -1).numpy())
    sha = save("ddpm", model, {"recipe": "python -m llmcourse.recipes.modalities", "config": DDPM})
    return {"config": DDPM, "curve": curve(losses), "final_loss": round(float(np.mean(losses[-200:])), 5),
            "quality": quality, "sha256": sha, "seconds": round(time.time() - t0, 1)}


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m llmcourse.recipes.modalities",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--part", choices=("all", "clip", "ddpm"), default="all")
    args = parser.parse_args(argv)
    threads = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    try:
        runs = json.loads(OUT.read_text()) if OUT.is_file() else {}
        runs.update({"recipe": "python -m llmcourse.recipes.modalities", "threads": THREADS,
                     "torch": torch.__version__, "python": platform.python_version()})
        for part, fn in (("clip", run_clip), ("ddpm", run_ddpm)):
            if args.part in ("all", part):
                runs[part] = fn()
                OUT.write_text(json.dumps(runs, indent=1) + "\n")
                print(f"{part}: {runs[part]['seconds']} s -> {OUT}", flush=True)
    finally:
        torch.set_num_threads(threads)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
