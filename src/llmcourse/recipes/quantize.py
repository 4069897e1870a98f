"""The measurements chapter 12 shows: the course base model quantised every way the chapter teaches.

Run ``python -m llmcourse.recipes.quantize`` (about two minutes on one CPU thread). It starts from the
shipped base model (``load_base()``, chapter 8) and writes ``book/12-quantization/quant_runs.json``:

1. **sweep** - validation perplexity (the whole pretraining validation split) and size of the model
   with its 16 block Linear weights stored as: float32, float16, bfloat16; round-to-nearest (RTN)
   zero-point codes per tensor, per channel and per group of 64 at 8, 4, 3 and 2 bits; NF4 in blocks
   of 64; GPTQ per channel and per group of 64 at 4, 3 and 2 bits (calibration: 32 sequences of 128
   tokens from the training split). Everything else (embeddings, biases, LayerNorms) counts as 16-bit.
2. **gguf** - the model written as GGUF files in F32, F16, Q8_0 and Q4_0 (``llmcourse.gguf_file``),
   their sizes on disk, and the perplexity of each file read back.
3. **dynamic_int8** - ``torch.ao.quantization.quantize_dynamic`` on every ``nn.Linear``: perplexity,
   and the CPU time of a forward pass on 8 x 128 tokens against float32, best of 15 repeats, one thread.

Taught in: book/12-quantization
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

from llmcourse.gguf_file import read_gguf, write_gguf
from llmcourse.gptq import gptq_quantize_model
from llmcourse.pretrained import checkpoint_file, load_base
from llmcourse.progress import progress
from llmcourse.quantization import (
    block_linears,
    nf4_dequantize,
    nf4_quantize,
    quantize_linears,
    rtn,
    storage_bits,
)
from llmcourse.sft import pretraining_perplexity, pretraining_tokens

OUT = Path(__file__).resolve().parents[3] / "book" / "12-quantization" / "quant_runs.json"
GROUP = 64  # group size of the group-wise rows (and NF4's block size)
CALIBRATION = (32, 128)  # sequences x tokens for GPTQ's Hessians, from the training split
SPEED = dict(batch=8, repeats=15)


def model_bytes(model, linear_bits_per_weight: float, other_bits: int = 16) -> int:
    """Bytes of the whole model: block Linear weights at the given bits per weight, the rest at ``other_bits``."""
    n_linear = sum(lin.weight.numel() for lin in block_linears(model))
    n_other = model.num_parameters() - n_linear
    return round((n_linear * linear_bits_per_weight + n_other * other_bits) / 8)


def cast_storage(model, dtype):
    """A copy whose parameters are rounded to ``dtype`` and back (stored in dtype, computed in float32)."""
    out = quantize_linears(model, lambda w: w)
    with torch.no_grad():
        for p in out.parameters():
            p.copy_(p.to(dtype).float())
    return out


def sweep_configs():
    for bits in (8, 4, 3, 2):
        yield "RTN per tensor", bits, "tensor"
        yield "RTN per channel", bits, "channel"
        yield f"RTN group {GROUP}", bits, GROUP
    yield "NF4", 4, GROUP
    for bits in (4, 3, 2):
        yield "GPTQ per channel", bits, "channel"
        yield f"GPTQ group {GROUP}", bits, GROUP


def quantized(model, method: str, bits: int, group, calibration):
    if method.startswith("RTN"):
        return quantize_linears(model, lambda w: rtn(w, bits, None if group == "channel" else group,
                                                     per_channel=group != "tensor"))
    if method == "NF4":
        return quantize_linears(model, lambda w: nf4_dequantize(*nf4_quantize(w, GROUP), w.shape, GROUP))
    return gptq_quantize_model(model, calibration, bits, None if group == "channel" else group, show_progress=False)


def forward_seconds(model, ids, repeats: int) -> float:
    """Best-of-``repeats`` wall time of one forward pass (after one warm-up)."""
    best = float("inf")
    with torch.no_grad():
        model(ids)
        for _ in range(repeats):
            t = time.perf_counter()
            model(ids)
            best = min(best, time.perf_counter() - t)
    return best


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    start = time.perf_counter()
    model, tok = load_base()
    val = pretraining_tokens(tok)
    train = pretraining_tokens(tok, "train")
    calibration = train[:CALIBRATION[0] * CALIBRATION[1]].view(*CALIBRATION)
    shapes = [tuple(lin.weight.shape) for lin in block_linears(model)]
    rows = [{"method": "float32", "bits": 32, "group": None, "bits_per_weight": 32.0,
             "bytes": model_bytes(model, 32, 32), "perplexity": pretraining_perplexity(model, val)}]
    for name, dtype in (("float16", torch.float16), ("bfloat16", torch.bfloat16)):
        rows.append({"method": name, "bits": 16, "group": None, "bits_per_weight": 16.0,
                     "bytes": model_bytes(model, 16), "perplexity": pretraining_perplexity(cast_storage(model, dtype), val)})
    for method, bits, group in progress(list(sweep_configs()), desc="quantise and evaluate"):
        bpw = storage_bits(shapes, 4, GROUP, overhead_bits=32) if method == "NF4" else storage_bits(shapes, bits, group)
        t = time.perf_counter()
        q = quantized(model, method, bits, group, calibration)
        rows.append({"method": method, "bits": bits, "group": group, "bits_per_weight": bpw,
                     "bytes": model_bytes(model, bpw), "perplexity": pretraining_perplexity(q, val),
                     "seconds_to_quantise": round(time.perf_counter() - t, 2)})
    files = {}
    with tempfile.TemporaryDirectory() as tmp:
        for qtype in progress(["F32", "F16", "Q8_0", "Q4_0"], desc="GGUF files"):
            path = write_gguf(model, tok, Path(tmp) / f"course-{qtype}.gguf", qtype)
            back, _ = read_gguf(path)
            files[qtype] = {"bytes": path.stat().st_size, "perplexity": pretraining_perplexity(back, val)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization's deprecation notice
        dynamic = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
    ids = val[:SPEED["batch"] * 128].view(SPEED["batch"], 128)
    speed = {"float32": forward_seconds(model, ids, SPEED["repeats"]),
             "dynamic_int8": forward_seconds(dynamic, ids, SPEED["repeats"])}
    record = {
        "recipe": "python -m llmcourse.recipes.quantize",
        "base_sha256": hashlib.sha256(checkpoint_file("model.safetensors").read_bytes()).hexdigest(),
        "threads": torch.get_num_threads(), "validation_tokens": int(val.numel()) - 1,
        "calibration": list(CALIBRATION), "group": GROUP, "linear_shapes": shapes,
        "parameters": model.num_parameters(),
        "linear_parameters": sum(r * c for r, c in shapes),
        "sweep": rows, "gguf": files,
        "dynamic_int8": {"perplexity": pretraining_perplexity(dynamic, val), "speed_settings": SPEED,
                         "seconds": speed, "speedup": speed["float32"] / speed["dynamic_int8"]},
        "seconds": round(time.perf_counter() - start, 1),
        "made_with": {"python": platform.python_version(), "torch": torch.__version__,
                      "machine": platform.machine(), "processor": platform.processor(), "date": time.strftime("%Y-%m-%d")},
    }
    args.out.write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {args.out} in {record['seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
