"""Data parallelism that runs (2 processes, gloo) and ZeRO's memory arithmetic against the paper."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from llmcourse.distributed import (
    bytes_per_parameter,
    demo_trainer,
    memory_per_gpu,
    training_flops_per_token,
)
from llmcourse.gpt import GPT, GPTConfig
from tests.conftest import REPO


@pytest.mark.parametrize("stage,paper_gb,exact_gb", [(0, 120, 120.0), (1, 31.4, 31.40625), (2, 16.6, 16.640625),
                                                     (3, 1.9, 1.875)])
def test_memory_per_gpu_matches_the_zero_paper_example(stage, paper_gb, exact_gb):
    """Rajbhandari et al. 2020, Figure 1: 7.5 B parameters, mixed-precision Adam (K = 12), N_d = 64 GPUs."""
    got = memory_per_gpu(7.5e9, "mixed", "adam", n_gpus=64, zero_stage=stage) / 1e9
    assert got == pytest.approx(exact_gb, rel=1e-12)
    assert round(got, 1) == paper_gb, f"stage {stage}: {got:.3f} GB, the paper prints {paper_gb}"


def test_memory_per_gpu_formulas():
    assert bytes_per_parameter("mixed", "adam") == (2, 2, 12) == bytes_per_parameter("mixed", "adamw")
    assert bytes_per_parameter("fp32", "adam") == (4, 4, 8)
    assert bytes_per_parameter("fp32", "sgd") == (4, 4, 0)
    psi = 1e9
    assert [memory_per_gpu(psi, n_gpus=1, zero_stage=s) for s in range(4)] == [16e9] * 4, "one GPU: nothing to shard"
    assert memory_per_gpu(psi, n_gpus=8, zero_stage=1) == pytest.approx((2 + 2 + 12 / 8) * psi)
    assert memory_per_gpu(psi, n_gpus=8, zero_stage=2) == pytest.approx((2 + 14 / 8) * psi)
    assert memory_per_gpu(psi, n_gpus=8, zero_stage=3) == pytest.approx(16 / 8 * psi)
    assert memory_per_gpu(psi, "fp32", "adam", n_gpus=4, zero_stage=0) == 16 * psi


@pytest.mark.parametrize("kwargs,message", [
    ({"zero_stage": 4}, "zero_stage must be"),
    ({"precision": "fp8"}, "precision must be one of"),
    ({"optimizer": "lion"}, "optimizer must be one of"),
    ({"n_gpus": 0}, "n_gpus must be an int >= 1"),
    ({"n_params": 0}, "n_params must be > 0"),
])
def test_memory_per_gpu_rejects_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        memory_per_gpu(**{"n_params": 1e9, **kwargs})


def test_training_flops_per_token_known_answer():
    config = GPTConfig.tiny()
    n = GPT(config).num_parameters(exclude_embeddings=True)
    assert n == 2 * (12 * 64 * 64 + 13 * 64) + 2 * 64 + 256 * 64
    assert training_flops_per_token(n, 2, 64, 64) == 6 * n + 12 * 2 * 64 * 64


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_ddp_on_two_processes_matches_one_process_with_the_same_global_batch(tmp_path, one_thread):
    """torchrun, 2 CPU processes (gloo), 4 sequences each and 2 micro-batches per update == 1 process with 8."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--nnodes", "1",
           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
           "-m", "llmcourse.distributed", "--out", str(tmp_path), "--steps", "6", "--global-batch", "8",
           "--grad-accum", "2"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    ddp = json.loads((tmp_path / "losses.json").read_text())
    assert ddp["world_size"] == 2

    single = demo_trainer(global_batch=8, steps=6, grad_accum_steps=2)
    assert single.world_size == 1
    history = single.fit(show_progress=False)
    assert ddp["train_loss"] == pytest.approx(history.train_loss, rel=1e-5, abs=0)
    assert ddp["val_loss"] == pytest.approx(history.val_loss, rel=1e-5, abs=0)
    assert ddp["tokens"] == history.tokens == 6 * 8 * 2 * 32
    weights = load_file(tmp_path / "model.safetensors")
    for name, value in single.model.state_dict().items():
        if name in weights:
            torch.testing.assert_close(weights[name], value, rtol=0, atol=1e-5,
                                       msg=lambda m, n=name: f"{n} after 6 DDP updates vs one process: {m}")
    assert history.train_loss[-1] < history.train_loss[0] - 0.3, "the demo run learns"
