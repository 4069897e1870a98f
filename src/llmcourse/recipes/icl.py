"""The runs chapter 13's first page shows: in-context regression, and prompting the course's own models.

Run ``python -m llmcourse.recipes.icl`` (one CPU thread: the icl part took 10 minutes and the prompting
part 22 minutes on a busy shared machine; a few minutes each on an idle one). Two parts, each
written into ``book/13-using-llms/icl_runs.json`` (``--part`` reruns one and keeps the other):

1. **icl** - an ``icl.ICLTransformer`` trained on fresh random linear functions (Garg et al. 2022,
   with their curriculum), saved to ``llmcourse/checkpoints/icl/`` with ``recipe.json`` and SHA-256;
   its squared error against the number of in-context examples k on new functions, next to least
   squares, ridge, averaging and nearest neighbours;
2. **prompting** - zero-, one- and few-shot exact match (per family) of the base model (``Q: ... A:``
   lines, ``sft.evaluate_few_shot``) and of the SFT model (earlier chat turns as demonstrations,
   ``prompting.evaluate_chat_few_shot``) on chapter 9's test split; and the same three demonstrations
   per family in all six orders, to measure how much the order alone moves accuracy.

Everything is seeded and runs on one thread.

Taught in: book/13-using-llms
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import itertools
import json
import platform
import time
from pathlib import Path

import torch

from llmcourse import icl

ROOT = Path(__file__).resolve().parents[3]
OUT = ROOT / "book" / "13-using-llms" / "icl_runs.json"
CKPT = Path(__file__).resolve().parents[1] / "checkpoints" / "icl"
THREADS = 1
MODEL = icl.ICLConfig(dim=4, n_points=12, n_layer=3, n_head=4, n_embd=64)
TRAIN = {"steps": 8000, "batch": 64, "lr": 1e-3, "seed": 0}
CURRICULUM = icl.Curriculum(start_dims=2, start_points=5, dims_step=1, points_step=3, every=300)
EVAL = {"prompts": 2000, "seed": 12345, "ridge": 0.1, "n_neighbours": 3}
SHOTS = (0, 1, 3)
ORDER_SHOTS = 3
ORDER_EXAMPLES = 20  # per family: the order experiment runs 6 orders x 2 models on 160 test questions


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def run_icl() -> dict:
    from safetensors.torch import save_file

    t0 = time.time()
    torch.manual_seed(TRAIN["seed"])
    model = icl.ICLTransformer(MODEL)
    losses = icl.train_icl(model, TRAIN["steps"], batch=TRAIN["batch"], lr=TRAIN["lr"], seed=TRAIN["seed"],
                           curriculum=CURRICULUM)
    train_s = time.time() - t0
    gen = torch.Generator().manual_seed(EVAL["seed"])
    xs, ys, _ = icl.sample_linear_prompts(EVAL["prompts"], MODEL.n_points, MODEL.dim, generator=gen)
    with torch.no_grad():
        preds = {"transformer": model(xs, ys)}
    preds["least_squares"] = icl.least_squares_predictions(xs, ys)
    preds["ridge"] = icl.least_squares_predictions(xs, ys, ridge=EVAL["ridge"])
    preds["averaging"] = icl.averaging_predictions(xs, ys)
    preds["nearest_neighbours"] = icl.nearest_neighbour_predictions(xs, ys, n_neighbours=EVAL["n_neighbours"])
    errors = {k: [round(float(e), 6) for e in icl.squared_error_by_k(p, ys, MODEL.dim)] for k, p in preds.items()}
    CKPT.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(CKPT / "model.safetensors"))
    record = {"recipe": "python -m llmcourse.recipes.icl", "model": dataclasses.asdict(MODEL),
              "parameters": sum(p.numel() for p in model.parameters()), "train": TRAIN,
              "curriculum": dataclasses.asdict(CURRICULUM), "threads": THREADS,
              "final_loss": round(sum(losses[-100:]) / 100, 6),
              "sha256": {"model.safetensors": sha256(CKPT / "model.safetensors")}}
    (CKPT / "recipe.json").write_text(json.dumps(record, indent=1) + "\n")
    step = max(1, len(losses) // 200)
    return {"model": dataclasses.asdict(MODEL), "train": TRAIN, "curriculum": dataclasses.asdict(CURRICULUM),
            "eval": EVAL, "k": list(range(MODEL.n_points)), "errors": errors,
            "curve": {"step": list(range(0, len(losses), step)),
                      "loss": [round(sum(losses[i:i + step]) / len(losses[i:i + step]), 5)
                               for i in range(0, len(losses), step)]},
            "sha256": record["sha256"]["model.safetensors"], "seconds": round(time.time() - t0, 1),
            "train_seconds": round(train_s, 1)}


def run_prompting() -> dict:
    from llmcourse import prompting, sft
    from llmcourse.instructions import FAMILIES, make_split
    from llmcourse.pretrained import load_base, recipe

    t0 = time.time()
    base, tok = load_base()
    chat_model, _ = load_base(name="sft")
    test, train = make_split("test"), make_split("train")
    shots = {"base": {}, "sft": {}}
    for k in SHOTS:
        shots["base"][str(k)], _ = sft.evaluate_few_shot(base, tok, test, train, k=k, show_progress=True)
        shots["sft"][str(k)], _ = prompting.evaluate_chat_few_shot(chat_model, tok, test, train, k=k,
                                                                   show_progress=True)
    # the first ORDER_SHOTS training examples of each family, in every order
    fixed = {f: [e for e in train if e.family == f][:ORDER_SHOTS] for f in FAMILIES}
    subset = [e for f in FAMILIES for e in [x for x in test if x.family == f][:ORDER_EXAMPLES]]
    orders = {"base": [], "sft": []}
    for perm in itertools.permutations(range(ORDER_SHOTS)):
        pool = [fixed[f][i] for f in FAMILIES for i in perm]
        orders["base"].append(sft.evaluate_few_shot(base, tok, subset, pool, k=ORDER_SHOTS)[0])
        orders["sft"].append(prompting.evaluate_chat_few_shot(chat_model, tok, subset, pool, k=ORDER_SHOTS)[0])
    return {"split": "test", "examples": len(test), "shots": shots, "order_shots": ORDER_SHOTS, "order_examples": len(subset),
            "orders": orders, "permutations": [list(p) for p in itertools.permutations(range(ORDER_SHOTS))],
            "base_sha256": recipe("base")["sha256"]["model.safetensors"],
            "sft_sha256": recipe("sft")["sha256"]["model.safetensors"], "seconds": round(time.time() - t0, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llmcourse.recipes.icl", description=__doc__.split("\n")[0])
    parser.add_argument("--part", choices=("all", "icl", "prompting"), default="all")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    threads = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    try:
        runs = json.loads(args.out.read_text()) if args.out.is_file() else {}
        runs.update({"recipe": "python -m llmcourse.recipes.icl", "threads": THREADS,
                     "torch": torch.__version__, "python": platform.python_version()})
        for part, fn in (("icl", run_icl), ("prompting", run_prompting)):
            if args.part in ("all", part):
                runs[part] = fn()
                args.out.parent.mkdir(parents=True, exist_ok=True)
                args.out.write_text(json.dumps(runs, indent=1) + "\n")
                print(f"{part}: {runs[part]['seconds']} s -> {args.out}", flush=True)
    finally:
        torch.set_num_threads(threads)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
