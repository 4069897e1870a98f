"""GGUF, llama.cpp's single-file model format: write the course model, read it back, measure it.

A GGUF file holds a header, key-value metadata (architecture, sizes, the tokenizer's tokens and
merges) and named tensors, each in its own type: F32, F16, or a block-quantised type. The format
(ggml, 2023) succeeded GGML, GGMF and GGJT; its spec gives no expansion of the name ("GG" are
Georgi Gerganov's initials). Two of its block types, written here from scratch:

* **Q8_0**: blocks of 32 weights; ``d = max|x| / 127`` stored as float16, then 32 int8 codes
  ``round(x / d)`` (halves away from zero): 34 bytes per 32 weights, 8.5 bits per weight.
* **Q4_0**: blocks of 32 weights; ``d = m / -8`` where m is the block's value of largest magnitude
  (sign kept), stored as float16, then 32 codes ``clamp(trunc(x / d + 8.5), 0, 15)`` packed two per
  byte (weight j in the low nibble, weight j + 16 in the high one): 18 bytes, 4.5 bits per weight.

The files are written with the ``gguf`` package (``GGUFWriter``) and read with its ``GGUFReader``;
the course's block quantisers are checked against ``gguf.quants`` in the tests.

Taught in: book/12-quantization
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from llmcourse.quantization import check_finite

QK = 32  # weights per block in Q8_0 and Q4_0 (ggml's QK8_0 = QK4_0 = 32)
TYPES = ("F32", "F16", "Q8_0", "Q4_0")


def _blocks(x: Tensor) -> Tensor:
    check_finite(x)
    if x.dim() != 2 or x.shape[1] % QK:
        raise ValueError(f"need a 2-D tensor whose rows are a multiple of {QK} long, got shape {tuple(x.shape)}")
    return x.detach().float().reshape(-1, QK)  # (rows * cols / 32, 32)


def _fp16_bytes(d: Tensor) -> Tensor:
    return d.to(torch.float16).view(torch.uint8).reshape(-1, 2)  # little-endian float16, (n_blocks, 2)


def quantize_q8_0(x: Tensor) -> Tensor:
    """Q8_0 bytes of x (R, C): (R, C // 32 * 34) uint8, per block 2 bytes of float16 d + 32 int8 codes."""
    b = _blocks(x)
    d = b.abs().amax(dim=1, keepdim=True) / 127  # (n, 1), float32: codes use it before it is rounded to fp16
    inv = torch.where(d == 0, torch.zeros_like(d), 1.0 / d)
    v = b * inv
    q = (torch.sign(v) * torch.floor(v.abs() + 0.5)).to(torch.int8)  # round half away from zero (C's roundf)
    return torch.cat([_fp16_bytes(d), q.view(torch.uint8)], dim=1).reshape(x.shape[0], -1)


def quantize_q4_0(x: Tensor) -> Tensor:
    """Q4_0 bytes of x (R, C): (R, C // 32 * 18) uint8, per block 2 bytes of float16 d + 16 bytes of codes."""
    b = _blocks(x)
    m = b.gather(1, b.abs().argmax(dim=1, keepdim=True))  # (n, 1) signed value of largest magnitude
    d = m / -8
    inv = torch.where(d == 0, torch.zeros_like(d), 1.0 / d)
    q = torch.trunc(b * inv + 8.5).clamp(0, 15).to(torch.uint8)  # (n, 32), code 8 stands for 0.0
    packed = q[:, :QK // 2] | (q[:, QK // 2:] << 4)  # (n, 16)
    return torch.cat([_fp16_bytes(d), packed], dim=1).reshape(x.shape[0], -1)


def dequantize_blocks(data: Tensor, qtype: str, cols: int) -> Tensor:
    """Inverse of the block quantisers: bytes (R, bytes per row) -> float32 (R, cols)."""
    if qtype not in ("Q8_0", "Q4_0"):
        raise ValueError(f"qtype must be 'Q8_0' or 'Q4_0', got {qtype!r}")
    size = 34 if qtype == "Q8_0" else 18
    if data.dtype != torch.uint8 or data.dim() != 2 or cols % QK or data.shape[1] != cols // QK * size:
        raise ValueError(f"{qtype} data for rows of {cols} weights must be uint8 (R, {cols // QK * size}), "
                         f"got {data.dtype} {tuple(data.shape)}")
    rows = data.shape[0]
    blocks = data.reshape(-1, size)
    d = blocks[:, :2].contiguous().view(torch.float16).float()  # (n, 1)
    if qtype == "Q8_0":
        q = blocks[:, 2:].contiguous().view(torch.int8).float()
    else:
        qs = blocks[:, 2:]
        q = torch.cat([qs & 15, qs >> 4], dim=1).float() - 8
    return (q * d).reshape(rows, cols)


# ------------------------------------------------------------------------------- the file


def _names(n_layer: int) -> dict[str, str]:
    """Course state-dict key -> GGUF tensor name (llama.cpp's names for the gpt2 architecture)."""
    names = {"wte.weight": "token_embd.weight", "wpe.weight": "position_embd.weight",
             "ln_f.weight": "output_norm.weight", "ln_f.bias": "output_norm.bias"}
    parts = {"ln_1": "attn_norm", "attn.c_attn": "attn_qkv", "attn.c_proj": "attn_output",
             "ln_2": "ffn_norm", "mlp.c_fc": "ffn_up", "mlp.c_proj": "ffn_down"}
    for i in range(n_layer):
        for ours, theirs in parts.items():
            for kind in ("weight", "bias"):
                names[f"h.{i}.{ours}.{kind}"] = f"blk.{i}.{theirs}.{kind}"
    return names


def write_gguf(model, tokenizer, path: str | os.PathLike, qtype: str = "F16") -> Path:
    """Write a course GPT and its BPE tokenizer as a GGUF file; returns the path.

    Every 2-D weight is stored as ``qtype`` (F32, F16, Q8_0 or Q4_0); 1-D tensors (biases, LayerNorm)
    as F32, as llama.cpp's converter does. The tied output layer is not stored twice.
    """
    import gguf

    from llmcourse.tokenizer import to_hf_tokenizer

    if qtype not in TYPES:
        raise ValueError(f"qtype must be one of {TYPES}, got {qtype!r}")
    cfg = model.config
    writer = gguf.GGUFWriter(str(path), arch="gpt2")
    writer.add_name("llmcourse base GPT")
    writer.add_context_length(cfg.block_size)
    writer.add_embedding_length(cfg.n_embd)
    writer.add_feed_forward_length(4 * cfg.n_embd)
    writer.add_block_count(cfg.n_layer)
    writer.add_head_count(cfg.n_head)
    writer.add_layer_norm_eps(cfg.layer_norm_eps)
    writer.add_file_type({"F32": gguf.LlamaFileType.ALL_F32, "F16": gguf.LlamaFileType.MOSTLY_F16,
                          "Q8_0": gguf.LlamaFileType.MOSTLY_Q8_0, "Q4_0": gguf.LlamaFileType.MOSTLY_Q4_0}[qtype])
    hf = to_hf_tokenizer(tokenizer)
    backend = json.loads(hf.backend_tokenizer.to_str())
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(hf.convert_ids_to_tokens(list(range(len(hf)))))
    writer.add_token_types([gguf.TokenType.CONTROL if i in tokenizer.id_to_special else gguf.TokenType.NORMAL
                            for i in range(len(hf))])
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in backend["model"]["merges"]])
    writer.add_bos_token_id(hf.bos_token_id)
    writer.add_eos_token_id(hf.eos_token_id)
    quantizers = {"Q8_0": (quantize_q8_0, gguf.GGMLQuantizationType.Q8_0),
                  "Q4_0": (quantize_q4_0, gguf.GGMLQuantizationType.Q4_0)}
    for key, name in _names(cfg.n_layer).items():
        t = model.state_dict()[key].detach().float().cpu()
        if t.dim() == 1 or qtype == "F32":
            writer.add_tensor(name, t.numpy())
        elif qtype == "F16":
            writer.add_tensor(name, t.half().numpy())
        else:
            fn, ggml_type = quantizers[qtype]
            writer.add_tensor(name, fn(t).numpy(), raw_dtype=ggml_type)  # shape: (R, bytes per row)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return Path(path)


def read_gguf(path: str | os.PathLike):
    """Read a file written by ``write_gguf`` back into a course GPT (dequantised with ``gguf.quants``).

    Returns ``(model, metadata)``: ``metadata`` maps each key to its value and also holds
    ``"tensor_types"``, {tensor name: GGML type name}."""
    import gguf

    from llmcourse.gpt import GPT, GPTConfig

    reader = gguf.GGUFReader(str(path))
    meta = {name: f.contents() for name, f in reader.fields.items() if not name.startswith("GGUF.")}
    if meta.get("general.architecture") != "gpt2":
        raise ValueError(f"{path} is not a gpt2 GGUF file (architecture {meta.get('general.architecture')!r})")
    config = GPTConfig(vocab_size=len(meta["tokenizer.ggml.tokens"]), block_size=int(meta["gpt2.context_length"]),
                       n_layer=int(meta["gpt2.block_count"]), n_head=int(meta["gpt2.attention.head_count"]),
                       n_embd=int(meta["gpt2.embedding_length"]),
                       layer_norm_eps=float(meta["gpt2.attention.layer_norm_epsilon"]), dropout=0.0)
    tensors, types = {}, {}
    for t in reader.tensors:
        shape = tuple(int(n) for n in reversed(t.shape))  # GGUF lists the innermost dimension first
        values = gguf.quants.dequantize(np.asarray(t.data), t.tensor_type).reshape(shape)
        tensors[t.name], types[t.name] = torch.from_numpy(values.astype(np.float32)), t.tensor_type.name
    model = GPT(config)
    state = {ours: tensors[theirs] for ours, theirs in _names(config.n_layer).items()}
    state["lm_head.weight"] = state["wte.weight"]  # tied, as in the course model
    model.load_state_dict(state)
    return model.eval(), {**meta, "tensor_types": types}
