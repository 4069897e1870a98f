"""The pretraining loop: AdamW groups, schedule, accumulation, clipping, evaluation, exact resume, config errors."""

from __future__ import annotations

import json
import math
import random
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from safetensors import safe_open

from llmcourse.checkpoint import load_checkpoint, save_checkpoint
from llmcourse.gpt import GPT, GPTConfig
from llmcourse.schedules import lr_at, lr_factor, warmup_cosine
from llmcourse.trainer import (
    TrainConfig,
    Trainer,
    accumulate_gradients,
    evaluate,
    param_groups,
    random_windows,
    train_step,
    validation_windows,
)
from tests.conftest import REPO

pytestmark = pytest.mark.usefixtures("one_thread")


def _gpt(seed=0, **overrides) -> GPT:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return GPT(GPTConfig.tiny(**{"block_size": 32, **overrides}))


def _text_tokens(n=60_000) -> torch.Tensor:
    from llmcourse.distributed import demo_tokens

    return demo_tokens(n)


def _max_diff(a: dict, b: dict) -> float:
    return max(float((a[k] - b[k]).abs().max()) for k in a)


# ----------------------------------------------------------------------------- AdamW parameter groups


def test_param_groups_decay_only_the_block_matrices_of_the_course_gpt():
    model = _gpt(n_layer=2)
    decay, no_decay = param_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    want = {f"h.{i}.{m}.weight" for i in range(2) for m in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")}
    assert set(decay["param_names"]) == want
    assert {"wte.weight", "wpe.weight", "ln_f.weight", "ln_f.bias", "h.0.ln_1.weight", "h.1.attn.c_attn.bias",
            "h.1.mlp.c_proj.bias"} <= set(no_decay["param_names"])
    assert "lm_head.weight" not in decay["param_names"] + no_decay["param_names"], "tied to wte: listed once"
    assert all(p.ndim == 1 for n, p in zip(no_decay["param_names"], no_decay["params"]) if n not in
               ("wte.weight", "wpe.weight"))
    ids = [id(p) for g in (decay, no_decay) for p in g["params"]]
    assert len(ids) == len(set(ids)) and sum(p.numel() for g in (decay, no_decay) for p in g["params"]) \
        == model.num_parameters()


def test_param_groups_same_rule_on_transformers_gpt2():
    hf = _gpt(n_layer=2).to_hf()
    decay, no_decay = param_groups(hf, 0.1)
    assert len(decay["params"]) == 8 and all(n.endswith("weight") and (".attn." in n or ".mlp." in n)
                                             for n in decay["param_names"])
    assert {"transformer.wte.weight", "transformer.wpe.weight"} <= set(no_decay["param_names"])


def test_adamw_update_is_decoupled_weight_decay():
    """One update by hand: decayed weights shrink by (1 - lr wd) besides Adam's step; the others do not."""
    model, lr, wd, eps = _gpt(), 0.01, 0.5, 1e-8
    opt = torch.optim.AdamW(param_groups(model, wd), lr=lr, betas=(0.9, 0.95), eps=eps)
    x, y = random_windows(_text_tokens(5000), 32, 4, torch.Generator().manual_seed(0))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    accumulate_gradients(model, [(x, y)])
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    opt.step()
    decayed = set(param_groups(model, wd)[0]["param_names"])
    for name, p in model.named_parameters():
        g = grads[name]
        m_hat, v_hat = g, g * g  # after one step, bias correction gives back g and g^2
        adam = m_hat / (v_hat.sqrt() + eps)
        shrink = 1 - lr * wd if name in decayed else 1.0
        want = before[name] * shrink - lr * adam
        torch.testing.assert_close(p.detach(), want, rtol=1e-5, atol=1e-6, msg=f"{name} after one AdamW step")


# ----------------------------------------------------------------------------- schedule


@pytest.mark.parametrize("warmup,total", [(0, 10), (3, 10), (10, 10), (7, 37), (100, 1000), (1, 2)])
def test_lr_schedule_matches_transformers_cosine_with_warmup(warmup, total):
    from transformers import get_cosine_schedule_with_warmup

    peak = 6e-4
    ours_opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=peak)
    hf_opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=peak)
    ours = warmup_cosine(ours_opt, warmup_steps=warmup, total_steps=total)
    hf = get_cosine_schedule_with_warmup(hf_opt, num_warmup_steps=warmup, num_training_steps=total)
    for step in range(total + 1):
        got, want = ours_opt.param_groups[0]["lr"], hf_opt.param_groups[0]["lr"]
        assert got == want, f"lr at step {step} (warmup={warmup}, total={total}): {got!r} vs transformers {want!r}"
        assert lr_at(step, max_lr=peak, warmup_steps=warmup, total_steps=total) == got
        ours_opt.step()
        hf_opt.step()
        ours.step()
        hf.step()


def test_lr_schedule_with_floor_is_the_cosine_squeezed_above_min_lr():
    peak, floor, warmup, total = 1e-3, 1e-4, 5, 50
    for step in range(total + 10):
        got = lr_at(step, max_lr=peak, warmup_steps=warmup, total_steps=total, min_lr=floor)
        if step < warmup:
            assert got == pytest.approx(peak * step / warmup, rel=1e-12)
        else:
            zero_floor = lr_factor(step, warmup_steps=warmup, total_steps=total)
            assert got == pytest.approx(floor + (peak - floor) * zero_floor, rel=1e-12), f"step {step}"
            assert floor <= got <= peak
    assert lr_at(warmup, max_lr=peak, warmup_steps=warmup, total_steps=total, min_lr=floor) == peak
    assert lr_at(total + 5, max_lr=peak, warmup_steps=warmup, total_steps=total, min_lr=floor) == pytest.approx(floor)


@pytest.mark.parametrize("kwargs,message", [
    ({"warmup_steps": 11, "total_steps": 10}, "larger than total_steps"),
    ({"warmup_steps": -1, "total_steps": 10}, "warmup_steps must be an int >= 0"),
    ({"warmup_steps": 0, "total_steps": 0}, "total_steps must be >= 1"),
    ({"warmup_steps": 0, "total_steps": 10, "min_lr": 2e-3}, "floor"),
])
def test_lr_at_rejects_bad_schedules(kwargs, message):
    with pytest.raises(ValueError, match=message):
        lr_at(0, max_lr=1e-3, **kwargs)


# ----------------------------------------------------------------------------- accumulation and clipping


def _masked_batches(seed=0, k=3, b=2, T=32):
    """k micro-batches of b sequences; some targets are -100, a different number in each."""
    g = torch.Generator().manual_seed(seed)
    x, y = random_windows(_text_tokens(20_000), T, k * b, g)
    y = y.clone()
    y[0, :20] = -100  # micro-batch 0 counts 44 targets of 64
    y[3, 5:9] = -100  # micro-batch 1 counts 60
    return [(x[i * b:(i + 1) * b], y[i * b:(i + 1) * b]) for i in range(k)], (x, y)


def test_gradient_accumulation_equals_one_big_batch_with_masked_tokens():
    micro, big = _masked_batches()
    small_model, big_model = _gpt(), _gpt()
    loss_micro = accumulate_gradients(small_model, micro)
    loss_big = accumulate_gradients(big_model, [big])
    _, want_loss = _gpt()(*big)  # the model's own mean over the counted tokens
    torch.testing.assert_close(loss_micro, want_loss.detach(), rtol=1e-6, atol=0)
    torch.testing.assert_close(loss_big, want_loss.detach(), rtol=1e-6, atol=0)
    g_micro = {n: p.grad for n, p in small_model.named_parameters()}
    g_big = {n: p.grad for n, p in big_model.named_parameters()}
    assert _max_diff(g_micro, g_big) < 1e-6, f"gradients differ by {_max_diff(g_micro, g_big):.2e}"

    naive = _gpt()  # the mistake: average the micro-batch means, ignoring their token counts
    for x, y in micro:
        (naive(x, y)[1] / len(micro)).backward()
    g_naive = {n: p.grad for n, p in naive.named_parameters()}
    assert _max_diff(g_naive, g_big) > 1e-4, "averaging per-micro-batch means should not match here"


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_accumulated_update_equals_big_batch_update(dtype, tol):
    """Exact in float64; in float32 Adam's division by sqrt(v) magnifies rounding (3 steps of lr 1e-3 here)."""
    micro, big = _masked_batches(seed=1)
    models, losses = [], []
    for batches in (micro, [big]):
        model = _gpt().to(dtype)
        opt = torch.optim.AdamW(param_groups(model, 0.1), lr=1e-3)
        for _ in range(3):
            losses.append(train_step(model, opt, batches, grad_clip=1.0).loss)
        models.append(model.state_dict())
    assert _max_diff(*models) < tol, f"{dtype} weights after 3 updates differ by {_max_diff(*models):.2e}"
    assert losses[:3] == pytest.approx(losses[3:], rel=tol)


def test_accumulate_gradients_rejects_all_masked_targets():
    x, y = random_windows(_text_tokens(2000), 32, 2, torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="every target is -100"):
        accumulate_gradients(_gpt(), [(x, torch.full_like(y, -100))])


def test_train_step_clips_the_global_gradient_norm():
    """With SGD (lr 1) the update is the gradient: clipped to global norm 0.01, all tensors by one factor."""
    micro, _ = _masked_batches(seed=2)
    ref = _gpt().double()  # float64, so that before - after is not swamped by rounding
    accumulate_gradients(ref, micro)
    grads = {n: p.grad.clone() for n, p in ref.named_parameters()}
    norm = float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads.values()])))
    model = _gpt().double()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    result = train_step(model, torch.optim.SGD(model.parameters(), lr=1.0), micro, grad_clip=0.01)
    assert result.grad_norm == pytest.approx(norm, rel=1e-12), "train_step returns the norm before clipping"
    assert norm > 0.01
    scale = 0.01 / (norm + 1e-6)  # clip_grad_norm_ adds 1e-6 to the norm
    for name, p in model.named_parameters():
        torch.testing.assert_close(before[name] - p.detach(), grads[name] * scale, rtol=1e-9, atol=1e-15)
    assert all(p.grad is None for p in model.parameters()), "gradients are set to None after the step"


# ----------------------------------------------------------------------------- data and evaluation


def test_random_windows_are_seeded_and_shifted_by_one():
    tokens = _text_tokens(5000)
    x1, y1 = random_windows(tokens, 16, 4, torch.Generator().manual_seed(3))
    x2, y2 = random_windows(tokens, 16, 4, torch.Generator().manual_seed(3))
    assert torch.equal(x1, x2) and torch.equal(y1, y2) and x1.shape == (4, 16)
    assert torch.equal(x1[:, 1:], y1[:, :-1])


def test_validation_windows_cover_each_target_once_in_order():
    tokens = torch.arange(103)
    batches = list(validation_windows(tokens, 10, 4))
    assert [x.shape[0] for x, _ in batches] == [4, 4, 2]
    y = torch.cat([y for _, y in batches]).flatten()
    assert torch.equal(y, torch.arange(1, 101))
    assert torch.equal(torch.cat([x for x, _ in batches]).flatten(), torch.arange(100))


def test_evaluate_uniform_logits_known_answer():
    """Zero output weights give logits 0: loss ln V and perplexity V exactly."""
    model = _gpt(vocab_size=256)
    with torch.no_grad():
        model.wte.weight.zero_()  # also the tied output layer
    result = evaluate(model, _text_tokens(3000), block_size=32, batch_size=16)
    assert result.loss == pytest.approx(math.log(256), rel=1e-6)
    assert result.perplexity == pytest.approx(256, rel=1e-5)
    assert result.n_tokens == (3000 - 1) // 32 * 32


def test_evaluate_is_the_token_weighted_mean_of_the_model_loss():
    model, tokens = _gpt(), _text_tokens(4000)
    want_sum, n = 0.0, 0
    model.eval()
    with torch.no_grad():
        for x, y in validation_windows(tokens, 32, 5):
            want_sum += float(model(x, y)[1]) * y.numel()
            n += y.numel()
    model.train()
    for batch_size in (1, 7, 64):
        result = evaluate(model, tokens, block_size=32, batch_size=batch_size)
        assert result.loss == pytest.approx(want_sum / n, rel=1e-6), f"batch_size={batch_size}"
        assert result.perplexity == pytest.approx(math.exp(want_sum / n), rel=1e-6)
    assert model.training, "evaluate restores training mode"


# ----------------------------------------------------------------------------- the Trainer


def _config(**overrides) -> TrainConfig:
    base = dict(max_steps=8, batch_size=4, block_size=32, grad_accum_steps=2, lr=3e-3, min_lr=3e-4,
                warmup_steps=2, eval_every=3, eval_batches=3, seed=0)
    return TrainConfig(**{**base, **overrides})


def test_trainer_learns_the_course_text_and_returns_its_history():
    tokens = _text_tokens()
    trainer = Trainer(_gpt(), _config(max_steps=40, warmup_steps=5, eval_every=20), tokens[:50_000], tokens[50_000:])
    h = trainer.fit(show_progress=False)
    assert h.step == list(range(1, 41)) and len(h.train_loss) == len(h.lr) == len(h.grad_norm) == 40
    assert h.eval_step == [0, 20, 40]
    assert h.val_loss[0] == pytest.approx(math.log(256), abs=0.1), "an untrained model is close to uniform"
    assert h.val_loss[-1] < h.val_loss[0] - 1.5, f"validation loss went from {h.val_loss[0]:.2f} to {h.val_loss[-1]:.2f}"
    assert h.val_ppl == pytest.approx([math.exp(v) for v in h.val_loss], rel=1e-12)
    assert h.lr == [lr_at(s, max_lr=3e-3, warmup_steps=5, total_steps=40, min_lr=3e-4) for s in range(40)]
    assert h.tokens == 40 * 4 * 32 * 2 and h.seconds > 0
    assert set(h.as_dict()) >= {"train_loss", "val_loss", "val_ppl", "lr"}


def test_trainer_runs_in_bfloat16_autocast():
    tokens = _text_tokens()
    losses = {}
    for dtype in ("float32", "bfloat16"):
        trainer = Trainer(_gpt(), _config(dtype=dtype, max_steps=6), tokens[:50_000], tokens[50_000:])
        h = trainer.fit(show_progress=False)
        assert all(math.isfinite(v) for v in h.train_loss + h.val_loss)
        assert trainer.model.wte.weight.dtype == torch.float32, "the weights stay float32"
        losses[dtype] = h.train_loss
    assert losses["bfloat16"] == pytest.approx(losses["float32"], abs=0.05)


def test_fit_leaves_the_global_rng_alone_and_is_repeatable():
    tokens = _text_tokens()
    torch.manual_seed(1)
    state = torch.get_rng_state()
    runs = [Trainer(_gpt(dropout=0.1), _config(), tokens[:50_000]).fit(show_progress=False).train_loss
            for _ in range(2)]
    assert torch.equal(torch.get_rng_state(), state), "dropout draws from the trainer's own generator"
    assert runs[0] == runs[1]
    other = Trainer(_gpt(dropout=0.1), _config(seed=1), tokens[:50_000]).fit(show_progress=False).train_loss
    assert other != runs[0]


_RESUME = textwrap.dedent("""
    import sys, torch
    from safetensors.torch import save_file
    from llmcourse.gpt import GPT, GPTConfig
    from llmcourse.distributed import demo_tokens
    from llmcourse.trainer import TrainConfig, Trainer
    torch.set_num_threads(1)
    torch.manual_seed(12345)  # a different initialisation: every weight must come from the file
    config = TrainConfig(**{config})
    tokens = demo_tokens(60_000)
    trainer = Trainer(GPT(GPTConfig.tiny(block_size=32, dropout=0.1)), config, tokens[:50_000], tokens[50_000:])
    trainer.load(sys.argv[1])
    trainer.fit(show_progress=False)
    trainer.save(sys.argv[2])
""")


def test_exact_resume_in_a_fresh_process_is_bit_for_bit(tmp_path):
    """2N updates in one go == N updates, save, load in a new process, N more (dropout on, accumulation 2)."""
    tokens = _text_tokens()
    config = _config(max_steps=8, grad_accum_steps=2, eval_every=3)
    full = Trainer(_gpt(dropout=0.1), config, tokens[:50_000], tokens[50_000:])
    full.fit(show_progress=False)

    half = Trainer(_gpt(dropout=0.1), config, tokens[:50_000], tokens[50_000:])
    half.fit(4, show_progress=False)
    assert half.step == 4
    half.save(tmp_path / "half.safetensors")
    cfg = {k: v for k, v in config.__dict__.items()}
    proc = subprocess.run([sys.executable, "-c", _RESUME.replace("{config}", repr(cfg)),
                           str(tmp_path / "half.safetensors"), str(tmp_path / "resumed.safetensors")],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]

    resumed = Trainer(_gpt(seed=99, dropout=0.1), config, tokens[:50_000], tokens[50_000:])
    resumed.load(tmp_path / "resumed.safetensors")
    for (name, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), f"{name} differs after resuming: max {float((a - b).abs().max()):.2e}"
    sa, sb = full.optimizer.state_dict()["state"], resumed.optimizer.state_dict()["state"]
    for i in sa:
        for key in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(sa[i][key], sb[i][key]), f"AdamW {key} of parameter {i} differs"
    assert resumed.step == 8 and resumed.scheduler.last_epoch == 8
    assert resumed.history.train_loss == full.history.train_loss
    assert resumed.history.val_loss == full.history.val_loss and resumed.history.eval_step == [0, 3, 6, 8]
    assert torch.equal(resumed.data_generator.get_state(), full.data_generator.get_state())


def test_checkpoint_file_holds_weights_optimizer_scheduler_and_generators(tmp_path):
    tokens = _text_tokens()
    trainer = Trainer(_gpt(), _config(), tokens[:50_000])
    trainer.fit(2, show_progress=False)
    random.seed(5)
    np.random.seed(6)
    py_state, np_draw = random.getstate(), np.random.get_state()[1].copy()
    trainer.save(tmp_path / "ck.safetensors")
    with safe_open(tmp_path / "ck.safetensors", framework="pt") as f:
        keys, meta = set(f.keys()), f.metadata()
    n_params = len(list(trainer.model.parameters()))
    for i in range(n_params):
        assert {f"optimizer/{i}/exp_avg", f"optimizer/{i}/exp_avg_sq", f"optimizer/{i}/step"} <= keys
    assert {"model/wte.weight", "rng/torch", "rng/data", "rng/python.state", "rng/numpy.keys"} <= keys
    assert "model/lm_head.weight" not in keys, "the tied output layer is stored once"
    assert json.loads(meta["meta"])["step"] == 2 and json.loads(meta["scheduler"])["last_epoch"] == 2
    random.random()
    np.random.rand()
    load_checkpoint(tmp_path / "ck.safetensors", _gpt())
    assert random.getstate() == py_state and np.array_equal(np.random.get_state()[1], np_draw)


def test_checkpoint_roundtrip_of_any_model_and_optimizer(tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4))
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.randn(2, 3)).sum().backward()
    opt.step()
    save_checkpoint(tmp_path / "c.safetensors", model, opt, meta={"note": "hi"})
    fresh = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4))
    fresh_opt = torch.optim.AdamW(fresh.parameters(), lr=0.1)
    ckpt = load_checkpoint(tmp_path / "c.safetensors", fresh, fresh_opt)
    assert ckpt.meta == {"note": "hi"}
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), fresh.state_dict().values()))
    assert fresh_opt.param_groups[0]["betas"] == (0.9, 0.999)
    with pytest.raises(ValueError, match="does not fit this model"):
        load_checkpoint(tmp_path / "c.safetensors", torch.nn.Linear(3, 4))


def test_load_refuses_a_checkpoint_of_another_recipe(tmp_path):
    tokens = _text_tokens()
    trainer = Trainer(_gpt(), _config(), tokens[:50_000])
    trainer.save(tmp_path / "ck.safetensors")
    other = Trainer(_gpt(), _config(lr=1e-3), tokens[:50_000])
    with pytest.raises(ValueError, match=r"lr=0.003 vs 0.001"):
        other.load(tmp_path / "ck.safetensors")
    with pytest.raises(ValueError, match="not a checkpoint"):
        _gpt().save(tmp_path / "weights.safetensors")
        trainer.load(tmp_path / "weights.safetensors")


@pytest.mark.parametrize("overrides,message", [
    ({"lr": -1e-3}, "lr must be a positive finite number"),
    ({"lr": 0.0}, "lr must be a positive finite number"),
    ({"warmup_steps": 9, "max_steps": 8}, "warmup_steps=9 is larger than total_steps=8"),
    ({"batch_size": 0}, "batch_size must be an int >= 1"),
    ({"grad_accum_steps": 0}, "grad_accum_steps must be an int >= 1"),
    ({"max_steps": 0}, "max_steps must be an int >= 1"),
    ({"dtype": "float64"}, "dtype must be one of"),
    ({"dtype": "fp8"}, "dtype must be one of"),
    ({"dtype": "float16"}, "GradScaler"),
    ({"min_lr": 1.0}, "min_lr must be between 0 and lr"),
    ({"grad_clip": 0.0}, "grad_clip must be > 0 or None"),
    ({"betas": (0.9, 1.0)}, "betas must be two numbers"),
    ({"weight_decay": -0.1}, "weight_decay must be a number >= 0"),
    ({"eval_batches": 0}, "eval_batches must be an int >= 1 or None"),
])
def test_train_config_rejects_bad_values(overrides, message):
    with pytest.raises(ValueError, match=message):
        _config(**overrides)


def test_trainer_rejects_bad_data_and_sizes():
    tokens = _text_tokens(5000)
    with pytest.raises(ValueError, match="exceeds the model's block_size=32"):
        Trainer(_gpt(), _config(block_size=64), tokens)
    with pytest.raises(ValueError, match="1-D tensor of integer token ids"):
        Trainer(_gpt(), _config(), tokens.float())
    with pytest.raises(ValueError, match="a window needs block_size"):
        Trainer(_gpt(), _config(), tokens[:20])
    with pytest.raises(TypeError, match="TrainConfig"):
        Trainer(_gpt(), {"lr": 1e-3}, tokens)
