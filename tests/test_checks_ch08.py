"""The chapter 8 checks are fair both ways: correct answers get full marks, planted mistakes fail.

The solution functions come from the nbgrader source notebook (setup and answer cells, run as
a notebook kernel would). Beside them, each task has correct implementations written
differently (float64 inside, loops, logsumexp instead of a max shift, in-place updates, a
schedule by recursion, top-p by threshold or from the least likely end, other models and
optimisers), which must pass too: the references run in float64 and the tolerances come from
the measured spread of such implementations. Each wrong implementation below is a mistake a
student could plausibly make; each must make its check raise CheckFailed naming what differs.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from autograder.checks import _ch08_references as refs
from autograder.checks import ch08_pretraining as checks
from autograder.compare import CheckFailed
from autograder.guard import ForbiddenCall, static_violations
from tests.notebook_kernel import correct, kernel, planted, solution_of

ASSIGNMENT = "ch08_pretraining"
# The mistake the nbgrader round trip plants: top-k that keeps exactly k tokens (ties dropped).
# filter_logits is called by no other graded cell, so only this task may lose points.
ROUND_TRIP_MISTAKE = ("ch08_filter_logits_answer",
                      "def filter_logits(logits, temperature=1.0, top_k=None, top_p=None):\n"
                      "    logits = logits / temperature\n"
                      "    if top_k is not None:\n"
                      "        idx = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).indices\n"
                      "        keep = torch.zeros_like(logits, dtype=torch.bool).scatter(1, idx, True)\n"
                      "        logits = logits.masked_fill(~keep, float('-inf'))\n"
                      "    if top_p is not None:\n"
                      "        probs = torch.softmax(logits, dim=-1)\n"
                      "        sorted_probs, order = torch.sort(probs, dim=-1, descending=True)\n"
                      "        remove = (sorted_probs.cumsum(dim=-1) - sorted_probs) >= top_p\n"
                      "        logits = logits.masked_fill(remove.scatter(1, order, remove), float('-inf'))\n"
                      "    return logits\n")

pytestmark = pytest.mark.ch08


def check_of(task):
    return getattr(checks, task.check)


# ----------------------------------------------------------------- the notebook itself

@pytest.mark.parametrize("task", checks.TASKS, ids=lambda t: t.grade_id)
def test_solution_passes_check(task, one_thread):
    check_of(task)(solution_of(ASSIGNMENT)[task.name])


def test_notebook_vocabulary_is_the_checks_vocabulary():
    vocab = solution_of(ASSIGNMENT)["vocab"]
    assert vocab.chars == sorted(refs.ARITHMETIC_CHARS) and len(vocab) == 16
    assert "".join(sorted(set(solution_of(ASSIGNMENT)["train_text"]))) == "".join(sorted(refs.ARITHMETIC_CHARS))


# ----------------------------------------------------------------- the references

def test_adamw_by_formula_matches_torch_adamw():
    g = torch.Generator().manual_seed(0)
    params = [torch.randn(4, 3, generator=g), torch.randn(3, generator=g)]
    grads = [[torch.randn(4, 3, generator=g), torch.randn(3, generator=g)] for _ in range(5)]
    hyper = dict(lr=0.05, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.3)
    for got, want in zip(refs.adamw_by_formula(params, grads, [True, False], **hyper),
                         refs.adamw_torch(params, grads, [True, False], **hyper)):
        assert got["t"] == want["t"]
        for key in ("params", "m", "v"):
            for a, b in zip(got[key], want[key]):
                torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-15)


def test_every_adamw_mistake_changes_the_first_or_second_step():
    for seed, case in enumerate(checks.ADAMW_CASES):
        _, shapes, steps, lr, betas, eps, wd, *_ = case
        params, grads = checks._adamw_data(case, seed)
        decay = [d for _, d in shapes]
        hyper = dict(lr=lr, betas=betas, eps=eps, weight_decay=wd)
        right = refs.adamw_by_formula(params, grads, decay, **hyper)
        for mistake, _ in checks.ADAMW_MISTAKES:
            wrong = refs.adamw_by_formula(params, grads, decay, **hyper, mistake=mistake)
            differs = any(not torch.allclose(a, b, rtol=1e-4, atol=1e-5)
                          for k in range(min(2, steps)) for a, b in zip(right[k]["params"], wrong[k]["params"]))
            if mistake == "l2" and wd > 0 and any(decay):
                assert differs, (mistake, case[0])
            if mistake == "eps_in_sqrt" and eps >= 1e-6:
                assert differs, (mistake, case[0])


def test_hf_schedule_equals_the_course_schedule_up_to_the_end():
    from llmcourse.schedules import lr_at

    for warmup, total, max_lr, _ in checks.LR_CASES:
        library = refs.hf_cosine_lrs(warmup, total, max_lr, total + 3)
        for step, want in enumerate(library):
            if step <= total:
                assert lr_at(step, max_lr=max_lr, warmup_steps=warmup, total_steps=total) == pytest.approx(
                    want, rel=1e-12, abs=1e-15)
        assert library[-1] > 0, "transformers climbs back up after the end: why the exercise asks for 0 there"


def test_reference_filter_equals_the_course_decoding():
    """transformers' warpers (the reference) and llmcourse.decoding agree, on the checks' own inputs."""
    from llmcourse.decoding import process_logits

    for seed, case in enumerate(checks.FILTER_CASES):
        _, _, temperature, _, top_p, _ = case
        logits, top_k = checks._filter_data(case, seed)
        want = refs.reference_filter(logits.double(), temperature, top_k, top_p)
        got = process_logits(logits.double(), temperature=temperature, top_k=top_k, top_p=top_p)
        assert torch.equal(got.isfinite(), want.isfinite()), case
        torch.testing.assert_close(got[got.isfinite()], want[want.isfinite()])


def test_filter_cases_are_what_they_say():
    for seed, case in enumerate(checks.FILTER_CASES):
        b, v, temperature, _, top_p, kind = case
        logits, top_k = checks._filter_data(case, seed)
        want = refs.reference_filter(logits, temperature, top_k, top_p)
        kept = want.isfinite().sum(dim=1)
        if kind.startswith("ties"):
            assert (kept > top_k).any(), "some row must keep more than k tokens"
        if "-inf" in kind:
            assert (~logits.isfinite()).any()
            if top_k is not None:
                assert top_k > int(logits.isfinite().sum(dim=1).min())
        if top_p is not None:
            assert refs.top_p_margin(logits, temperature, top_k, top_p) > 1e-4
        if kind.startswith("tiny"):
            assert (kept == 1).all()
        if kind.startswith("top_k > V"):
            assert top_k > v


def test_held_out_rows_show_prefixes_and_keep_the_next_character():
    idx, idx_other, last, targets = checks.held_out_rows()
    ids = refs.arithmetic_ids(checks.HELD_OUT_LINES, 200)  # no course secret: the published seed
    assert idx.shape == (checks.HELD_OUT_ROWS, checks.CONTEXT) and idx_other.shape == (checks.CAUSAL_ROWS, checks.CONTEXT)
    stream = ids.tolist()
    joined = ",".join(map(str, stream))
    for r in range(0, checks.HELD_OUT_ROWS, 97):
        c = int(last[r]) + 1
        window = idx[r, :c].tolist() + [int(targets[r])]
        assert ",".join(map(str, window)) in joined, "prefix + target must be a stretch of the held-out text"
    mask = torch.arange(checks.CONTEXT)[None, :] <= last[:checks.CAUSAL_ROWS, None]
    assert torch.equal(idx[:checks.CAUSAL_ROWS][mask], idx_other[mask])
    assert (idx[:checks.CAUSAL_ROWS][~mask] != idx_other[~mask]).all(), "after the prefix every token differs"
    assert int(last.min()) == 0 and int(last.max()) == checks.CONTEXT - 2


def test_padding_does_not_change_a_causal_models_score(one_thread):
    """For a causal model, scoring the position after the prefix of a padded row = scoring the prefix alone."""
    torch.manual_seed(0)
    from llmcourse.gpt import GPT, GPTConfig

    model = GPT(GPTConfig.tiny(vocab_size=16, block_size=32)).eval()
    idx, idx_other, last, targets = checks.held_out_rows()
    out = checks.next_char_probe(model, idx[:64], idx_other[:64], last)
    for r in range(0, 64, 7):
        with torch.no_grad():
            alone = model(idx[r:r + 1, :int(last[r]) + 1])[0][0, -1]
        torch.testing.assert_close(out["logits"][r], alone, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out["logits"], out["logits_other"][:64], rtol=1e-5, atol=1e-5)


def test_train_probes_restore_threads_and_return_only_data():
    threads = torch.get_num_threads()
    model = checks.train_probe(train_untrained, checks.training_ids()[:1000], 16)
    assert torch.get_num_threads() == threads, "the probe must restore the thread count"
    idx, idx_other, last, _ = checks.held_out_rows()
    out = checks.next_char_probe(model, idx[:50], idx_other[:10], last)
    assert set(out) == {"logits", "logits_other", "n_params"}
    assert out["logits"].shape == (50, 16) and out["logits_other"].shape == (10, 16)
    assert not out["logits"].requires_grad
    assert torch.get_num_threads() == threads, "the probe must restore the thread count"


# ----------------------------------------------------------------- correct variants: cross-entropy

def ce_log_softmax_float64(logits, targets, ignore_index=-100):
    """float64 inside, torch.log_softmax + gather, boolean selection of the counted rows."""
    v = logits.shape[-1]
    logp = torch.log_softmax(logits.double().reshape(-1, v), dim=-1)
    t = targets.reshape(-1)
    keep = t != ignore_index
    nll = -logp[keep].gather(1, t[keep][:, None])[:, 0]
    return nll.mean().to(logits.dtype)  # the mean of no rows is nan, as asked


def ce_logsumexp_one_hot(logits, targets, ignore_index=-100):
    """torch.logsumexp and a one-hot product; the mean as a sum over counted tokens / their number."""
    v = logits.shape[-1]
    counted = (targets != ignore_index)
    safe = torch.where(counted, targets, torch.zeros_like(targets))
    one_hot = F.one_hot(safe, v).to(logits.dtype)  # (..., V)
    token = torch.logsumexp(logits, dim=-1) - (one_hot * logits).sum(dim=-1)
    return torch.where(counted, token, torch.zeros_like(token)).sum() / counted.sum()


def ce_loop_per_token(logits, targets, ignore_index=-100):
    """A Python loop over the tokens, max shift written out, the losses stacked."""
    v = logits.shape[-1]
    z, t = logits.reshape(-1, v), targets.reshape(-1)
    losses = []
    for i in range(len(t)):
        if int(t[i]) == ignore_index:
            continue
        m = torch.max(z[i])
        losses.append(m + torch.log(torch.sum(torch.exp(z[i] - m))) - z[i, int(t[i])])
    if not losses:
        return torch.tensor(float("nan"))
    return torch.stack(losses).mean()


CE_CORRECT = correct(ce_log_softmax_float64, ce_logsumexp_one_hot, ce_loop_per_token)


def ppl_math_exp(logits, targets, ignore_index=-100):
    """A Python float: math.exp of the float64 mean loss."""
    loss = ce_log_softmax_float64(logits.double(), targets, ignore_index)
    return math.exp(float(loss))


def ppl_geometric_mean(logits, targets, ignore_index=-100):
    """The geometric mean of 1 / p(target) over the counted tokens, in float64."""
    v = logits.shape[-1]
    p = torch.softmax(logits.double().reshape(-1, v), dim=-1)
    t = targets.reshape(-1)
    keep = t != ignore_index
    if not keep.any():
        return float("nan")  # as the task asks (a product over no tokens would give 1)
    picked = p[keep].gather(1, t[keep][:, None])[:, 0]
    return torch.prod(picked) ** (-1.0 / keep.sum())


def ppl_exp2_of_bits(logits, targets, ignore_index=-100):
    """The loss in bits, then 2 ** bits: the same number."""
    bits = ce_logsumexp_one_hot(logits, targets, ignore_index) / math.log(2)
    return 2.0 ** bits


PPL_CORRECT = correct(ppl_math_exp, ppl_geometric_mean, ppl_exp2_of_bits)


# ----------------------------------------------------------------- correct variants: AdamW

def adamw_in_place(params, grads, state, *, lr, betas, eps, weight_decay, decay):
    """torch's own arrangement, in place: lerp for m, addcmul for v, step size lr / bias correction."""
    b1, b2 = betas
    t = state["t"] + 1
    for p, g, m, v, d in zip(params, grads, state["m"], state["v"], decay):
        if d:
            p.mul_(1 - lr * weight_decay)
        m.lerp_(g, 1 - b1)
        v.mul_(b2).addcmul_(g, g, value=1 - b2)
        denom = (v.sqrt() / math.sqrt(1 - b2 ** t)).add_(eps)
        p.addcdiv_(m, denom, value=-lr / (1 - b1 ** t))
    state["t"] = t
    return params, state


def adamw_numpy_float64(params, grads, state, *, lr, betas, eps, weight_decay, decay):
    """NumPy float64 inside, float32 tensors out."""
    b1, b2 = betas
    t = state["t"] + 1
    out_p, out_m, out_v = [], [], []
    for p, g, m, v, d in zip(params, grads, state["m"], state["v"], decay):
        p, g, m, v = (x.numpy().astype(np.float64) for x in (p, g, m, v))
        p = p * (1.0 - lr * weight_decay * float(d))
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * np.square(g)
        p = p - lr * (m / (1 - b1 ** t)) / (np.sqrt(v / (1 - b2 ** t)) + eps)
        out_p.append(torch.from_numpy(p).float())
        out_m.append(torch.from_numpy(m).float())
        out_v.append(torch.from_numpy(v).float())
    return out_p, {"t": t, "m": out_m, "v": out_v}


def adamw_flat_vector(params, grads, state, *, lr, betas, eps, weight_decay, decay):
    """Everything flattened into one vector, a decay mask, split back at the end."""
    b1, b2 = betas
    t = state["t"] + 1
    sizes = [p.numel() for p in params]
    flat = lambda xs: torch.cat([x.reshape(-1) for x in xs])  # noqa: E731
    p, g, m, v = flat(params), flat(grads), flat(state["m"]), flat(state["v"])
    wd = torch.cat([torch.full((n,), weight_decay if d else 0.0) for n, d in zip(sizes, decay)])
    p = p - lr * wd * p
    m = m + (1 - b1) * (g - m)
    v = v + (1 - b2) * (g * g - v)
    p = p - lr * (m / (1 - b1 ** t)) / ((v / (1 - b2 ** t)).sqrt() + eps)

    def split(x):
        return [part.reshape(q.shape) for part, q in zip(x.split(sizes), params)]

    return split(p), {"t": t, "m": split(m), "v": split(v)}


ADAMW_CORRECT = correct(adamw_in_place, adamw_numpy_float64, adamw_flat_vector)


# ----------------------------------------------------------------- correct variants: the schedule

def lr_at_torch_float32(step, warmup_steps, total_steps, max_lr):
    """torch float32 arithmetic throughout (torch.cos on a float32 tensor)."""
    s = torch.tensor(float(step))
    if step < warmup_steps:
        return float(max_lr * s / warmup_steps)
    progress = torch.clamp((s - warmup_steps) / (total_steps - warmup_steps), max=1.0)
    return float(max_lr * 0.5 * (1 + torch.cos(torch.pi * progress))) if step <= total_steps else 0.0


def lr_at_recursive(step, warmup_steps, total_steps, max_lr):
    """Built up step by step: the warm-up adds max_lr / warmup each step; the cosine by Chebyshev's recurrence."""
    if step > total_steps:
        return 0.0
    lr = 0.0
    for _ in range(min(step, warmup_steps)):
        lr += max_lr / warmup_steps
    if step < warmup_steps:
        return lr
    theta = math.pi / (total_steps - warmup_steps)
    c_prev, c = math.cos(-theta), 1.0  # cos(n theta) for n = -1, 0
    for _ in range(step - warmup_steps):
        c_prev, c = c, 2 * math.cos(theta) * c - c_prev
    return max_lr * 0.5 * (1 + c)


def lr_at_numpy_where(step, warmup_steps, total_steps, max_lr):
    """One NumPy expression with np.where and np.clip; cos^2(pi p / 2) = (1 + cos(pi p)) / 2."""
    s = np.float64(step)
    warm = s / max(warmup_steps, 1)
    progress = np.clip((s - warmup_steps) / (total_steps - warmup_steps), 0.0, 1.0)
    decay = np.cos(np.pi * progress / 2) ** 2
    return float(max_lr * np.where(s < warmup_steps, warm, np.where(s > total_steps, 0.0, decay)))


LR_CORRECT = correct(lr_at_torch_float32, lr_at_recursive, lr_at_numpy_where)


# ----------------------------------------------------------------- correct variants: filtering

def filter_ascending_float64(logits, temperature=1.0, top_k=None, top_p=None):
    """float64 inside; top-p from the least likely end: drop while the tail holds at most 1 - top_p."""
    x = logits.double() / temperature
    if top_k is not None:
        kth = x.sort(dim=-1, descending=True).values[:, min(top_k, x.shape[1]) - 1:min(top_k, x.shape[1])]
        x = torch.where(x >= kth, x, torch.full_like(x, -math.inf))
    if top_p is not None:
        p, order = x.softmax(dim=-1).sort(dim=-1)
        drop = p.cumsum(dim=-1) <= 1 - top_p
        drop[:, -1] = False
        x = x.masked_fill(torch.zeros_like(drop).scatter(1, order, drop), -math.inf)
    return x.float()


def filter_threshold_loops(logits, temperature=1.0, top_k=None, top_p=None):
    """Row by row in Python: the k-th value by sorting a list, top-p as a probability threshold."""
    out = (logits / temperature).clone()
    for row in out:
        if top_k is not None and top_k < len(row):
            kth = sorted(row.tolist(), reverse=True)[top_k - 1]
            row[row < kth] = -math.inf
        if top_p is not None:
            probs = torch.softmax(row, dim=0).tolist()
            total, threshold = 0.0, 0.0
            for q in sorted(probs, reverse=True):
                total += q
                threshold = q
                if total >= top_p:
                    break
            row[torch.tensor(probs) < threshold] = -math.inf
    return out


def filter_searchsorted(logits, temperature=1.0, top_k=None, top_p=None):
    """top-k with torch.kthvalue on the negated logits; top-p: searchsorted finds how many to keep."""
    x = logits / temperature
    if top_k is not None and top_k < x.shape[1]:
        kth = -torch.kthvalue(-x, top_k, dim=-1, keepdim=True).values
        x = x.masked_fill(x < kth, -math.inf)
    if top_p is not None:
        p, order = torch.sort(x.softmax(-1), dim=-1, descending=True)
        n_keep = torch.searchsorted(p.cumsum(-1).contiguous(), torch.full((x.shape[0], 1), float(top_p))) + 1
        keep_sorted = torch.arange(x.shape[1])[None, :] < n_keep
        keep = torch.zeros_like(keep_sorted).scatter(1, order, keep_sorted)
        x = x.masked_fill(~keep, -math.inf)
    return x


FILTER_CORRECT = correct(filter_ascending_float64, filter_threshold_loops, filter_searchsorted)


# ----------------------------------------------------------------- correct variants: training

def _windows(ids, block, batch):
    starts = torch.randint(0, len(ids) - block - 1, (batch,))
    return (torch.stack([ids[s:s + block] for s in starts]), torch.stack([ids[s + 1:s + block + 1] for s in starts]))


class CharLSTMModel(nn.Module):
    def __init__(self, vocab_size, hidden=128):
        super().__init__()
        self.emb = nn.Embedding(vocab_size, 32)
        self.lstm = nn.LSTM(32, hidden, batch_first=True)
        self.head = nn.Linear(hidden, vocab_size)

    def forward(self, idx):
        return self.head(self.lstm(self.emb(idx))[0])


def train_lstm_adam(train_ids, vocab_size):
    """An LSTM, Adam at a constant learning rate, F.cross_entropy."""
    model = CharLSTMModel(vocab_size)
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    for _ in range(400):
        x, y = _windows(train_ids, 32, 16)
        loss = F.cross_entropy(model(x).reshape(-1, vocab_size), y.reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model


class TinyTransformer(nn.Module):
    """A from-scratch causal transformer: one block, width 48, masking with a lower-triangular matrix."""

    def __init__(self, vocab_size, width=48, heads=4, context=32):
        super().__init__()
        self.tok, self.pos = nn.Embedding(vocab_size, width), nn.Embedding(context, width)
        self.ln1, self.ln2, self.ln_f = nn.LayerNorm(width), nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv, self.proj = nn.Linear(width, 3 * width), nn.Linear(width, width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))
        self.head = nn.Linear(width, vocab_size)
        self.heads = heads

    def forward(self, idx):
        b, t = idx.shape
        x = self.tok(idx) + self.pos(torch.arange(t))
        q, k, v = self.qkv(self.ln1(x)).chunk(3, dim=-1)
        q, k, v = (z.view(b, t, self.heads, -1).transpose(1, 2) for z in (q, k, v))
        att = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])
        att = att.masked_fill(torch.ones(t, t).tril() == 0, float("-inf")).softmax(dim=-1)
        x = x + self.proj((att @ v).transpose(1, 2).reshape(b, t, -1))
        x = x + self.mlp(self.ln2(x))
        return self.head(self.ln_f(x))


def train_own_transformer_adamw_step(train_ids, vocab_size):
    """A hand-written transformer trained with the notebook's own adamw_step and lr_at."""
    ns = solution_of(ASSIGNMENT)
    model = TinyTransformer(vocab_size)
    params = list(model.parameters())
    decay = [p.ndim >= 2 for p in params]
    state = {"t": 0, "m": [torch.zeros_like(p) for p in params], "v": [torch.zeros_like(p) for p in params]}
    steps = 600
    for step in range(steps):
        x, y = _windows(train_ids, 32, 16)
        loss = ns["cross_entropy"](model(x), y)
        grads = torch.autograd.grad(loss, params)
        with torch.no_grad():
            new, state = ns["adamw_step"]([p.detach() for p in params], list(grads), state,
                                          lr=max(ns["lr_at"](step, 30, steps, 6e-3), 6e-4), betas=(0.9, 0.95),
                                          eps=1e-8, weight_decay=0.01, decay=decay)
            for p, q in zip(params, new):
                p.copy_(q)
    return model


def train_course_gpt_constant_lr(train_ids, vocab_size):
    """The course GPT (one block) with its own loss (model(x, y)), 64-character windows, Adam at a constant lr."""
    from llmcourse.gpt import GPT, GPTConfig

    model = GPT(GPTConfig(vocab_size=vocab_size, block_size=64, n_layer=1, n_head=4, n_embd=64))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(300):
        x, y = _windows(train_ids, 64, 16)
        _, loss = model(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model


TRAIN_CORRECT = correct(train_lstm_adam, train_own_transformer_adamw_step, train_course_gpt_constant_lr)

CORRECT = {"check_cross_entropy": CE_CORRECT, "check_perplexity": PPL_CORRECT, "check_adamw_step": ADAMW_CORRECT,
           "check_lr_at": LR_CORRECT, "check_filter_logits": FILTER_CORRECT, "check_train_tiny_gpt": TRAIN_CORRECT}
CORRECT = {name: [p.values[0] for p in params] for name, params in CORRECT.items()}


@pytest.mark.parametrize("fn", CE_CORRECT)
def test_check_cross_entropy_accepts(fn):
    checks.check_cross_entropy(fn)


@pytest.mark.parametrize("fn", PPL_CORRECT)
def test_check_perplexity_accepts(fn):
    checks.check_perplexity(fn)


@pytest.mark.parametrize("fn", ADAMW_CORRECT)
def test_check_adamw_step_accepts(fn):
    checks.check_adamw_step(fn)


@pytest.mark.parametrize("fn", LR_CORRECT)
def test_check_lr_at_accepts(fn):
    checks.check_lr_at(fn)


@pytest.mark.parametrize("fn", FILTER_CORRECT)
def test_check_filter_logits_accepts(fn):
    checks.check_filter_logits(fn)


@pytest.mark.parametrize("fn", TRAIN_CORRECT)
def test_check_train_tiny_gpt_accepts(fn, one_thread):
    checks.check_train_tiny_gpt(fn)


# ----------------------------------------------------------------- planted mistakes: cross-entropy

def _ce(logits, targets, ignore_index=-100, *, reduce="mean", stable=True, honour=True, axis=-1, base=math.e,
        sign=1.0, empty=None, detach=False):
    v = logits.shape[-1]
    if stable:
        logp = torch.log_softmax(logits, dim=axis)
    else:
        logp = torch.log(torch.exp(logits) / torch.exp(logits).sum(dim=axis, keepdim=True))
    logp = logp.reshape(-1, v)
    t = targets.reshape(-1)
    counted = t != ignore_index if honour else t != -100
    nll = -logp.gather(1, t.clamp(min=0)[:, None])[:, 0] * counted
    if reduce == "sum":
        loss = nll.sum()
    elif reduce == "all":
        loss = nll.sum() / t.numel()
    else:
        loss = nll.sum() / counted.sum()
    if empty is not None and int(counted.sum()) == 0:
        loss = torch.tensor(empty)
    loss = sign * loss / math.log(base)
    return torch.tensor(loss.item()) if detach else loss


def ce_sum(logits, targets, ignore_index=-100):
    return _ce(logits, targets, ignore_index, reduce="sum")


def ce_mean_over_all_tokens(logits, targets, ignore_index=-100):
    return _ce(logits, targets, ignore_index, reduce="all")


def ce_naive_softmax(logits, targets, ignore_index=-100):
    return _ce(logits, targets, ignore_index, stable=False)


def ce_softmax_over_axis_1(logits, targets, ignore_index=-100):
    return _ce(logits, targets, ignore_index, axis=1 if logits.ndim == 3 else -1)


def ce_ignores_only_minus_100(logits, targets, ignore_index=-100):
    return _ce(logits, targets, ignore_index, honour=False)


def ce_in_bits(logits, targets, ignore_index=-100):
    return _ce(logits, targets, ignore_index, base=2.0)


def ce_negative(logits, targets, ignore_index=-100):
    return _ce(logits, targets, ignore_index, sign=-1.0)


def ce_zero_when_all_ignored(logits, targets, ignore_index=-100):
    return _ce(logits, targets, ignore_index, empty=0.0)


def ce_detached(logits, targets, ignore_index=-100):
    return _ce(logits, targets, ignore_index, detach=True)


def ce_per_token_not_reduced(logits, targets, ignore_index=-100):
    return -torch.log_softmax(logits, dim=-1).gather(-1, targets.clamp(min=0)[..., None])[..., 0]


CE_MISTAKES = planted(
    (ce_sum, r"loss \(vs F\.cross_entropy\) for logits=\(6, 5\), ignored targets=0, ignore_index=-100, seed=0: "
             r"max \|got-want\|.* - this is the sum of the token losses"),
    (ce_mean_over_all_tokens, r"logits=\(2, 7, 11\), ignored targets=\d+.*the ignored tokens are counted in the mean"),
    (ce_naive_softmax, r"values=3e4 \* N\(0, 1\).*exp\(\) overflows .*subtract each row's maximum"),
    (ce_softmax_over_axis_1, r"logits=\(2, 7, 11\).*the softmax runs over the wrong axis"),
    (ce_ignores_only_minus_100, r"ignore_index=0.*ignore_index=0 is not honoured"),
    (ce_in_bits, r"logits=\(6, 5\).*this is in bits"),
    (ce_negative, r"logits=\(6, 5\).*the sign is wrong"),
    (ce_zero_when_all_ignored, r"targets=all -100.*got 0, but every target is ignore_index: .*nan"),
    (ce_detached, r"what=gradient: the loss is not a torch tensor connected to the logits"),
    (ce_per_token_not_reduced, r"logits=\(6, 5\).*expected a single number \(a 0-d tensor\), got shape \(6,\)"),
)


@pytest.mark.parametrize("wrong, match", CE_MISTAKES)
def test_check_cross_entropy_rejects(wrong, match):
    with pytest.raises(CheckFailed, match=match):
        checks.check_cross_entropy(wrong)


def _ppl(logits, targets, ignore_index=-100, *, how="right"):
    v = logits.shape[-1]
    t = targets.reshape(-1)
    counted = t != ignore_index
    nll = -torch.log_softmax(logits.reshape(-1, v), dim=-1).gather(1, t.clamp(min=0)[:, None])[:, 0] * counted
    n = counted.sum()
    return {"sum": lambda: torch.exp(nll.sum()), "mean_of_exp": lambda: (torch.exp(nll) * counted).sum() / n,
            "base2": lambda: 2.0 ** (nll.sum() / n), "no_exp": lambda: nll.sum() / n,
            "all_tokens": lambda: torch.exp(nll.sum() / t.numel()), "minus": lambda: torch.exp(-nll.sum() / n),
            "right": lambda: torch.exp(nll.sum() / n)}[how]()


def ppl_exp_of_sum(logits, targets, ignore_index=-100):
    return _ppl(logits, targets, ignore_index, how="sum")


def ppl_mean_of_exp(logits, targets, ignore_index=-100):
    return _ppl(logits, targets, ignore_index, how="mean_of_exp")


def ppl_base_2(logits, targets, ignore_index=-100):
    return _ppl(logits, targets, ignore_index, how="base2")


def ppl_no_exp(logits, targets, ignore_index=-100):
    return _ppl(logits, targets, ignore_index, how="no_exp")


def ppl_counts_ignored(logits, targets, ignore_index=-100):
    return _ppl(logits, targets, ignore_index, how="all_tokens")


def ppl_exp_minus_loss(logits, targets, ignore_index=-100):
    return _ppl(logits, targets, ignore_index, how="minus")


PPL_MISTAKES = planted(
    (ppl_exp_of_sum, r"perplexity \(vs exp of F\.cross_entropy\) for logits=\(6, 5\).*exp of the summed loss"),
    (ppl_mean_of_exp, r"perplexity .*mean of the per-token exp\(loss\)"),
    (ppl_base_2, r"perplexity .*this is 2 \*\* loss"),
    (ppl_no_exp, r"perplexity .*this is the mean loss itself"),
    (ppl_counts_ignored, r"perplexity .*logits=\(2, 7, 11\).*the ignored tokens are counted"),
    (ppl_exp_minus_loss, r"perplexity .*this is exp\(-loss\)"),
)


@pytest.mark.parametrize("wrong, match", PPL_MISTAKES)
def test_check_perplexity_rejects(wrong, match):
    with pytest.raises(CheckFailed, match=match):
        checks.check_perplexity(wrong)


# ----------------------------------------------------------------- planted mistakes: AdamW

def _adamw_with(mistake):
    """An adamw_step that makes one of the references' mistakes (same switches as adamw_by_formula)."""
    def step(params, grads, state, *, lr, betas, eps, weight_decay, decay):
        b1, b2 = (betas[1], betas[0]) if mistake == "swapped_betas" else betas
        t = state["t"] + 1
        out_p, out_m, out_v = [], [], []
        for p, g, m, v, d in zip(params, grads, state["m"], state["v"], decay):
            d = {"decay_all": True, "decay_none": False}.get(mistake, d)
            wd = weight_decay if d else 0.0
            if mistake == "l2":
                g = g + wd * p
            elif mistake == "decay_without_lr":
                p = p * (1 - wd)
            elif mistake != "decay_after":
                p = p * (1 - lr * wd)
            m = b1 * m + (1 - b1) * g
            v = b2 * v + (1 - b2) * g * g
            m_hat, v_hat = (m, v) if mistake == "no_bias_correction" else (m / (1 - b1 ** t), v / (1 - b2 ** t))
            p = p - lr * m_hat / (torch.sqrt(v_hat + eps) if mistake == "eps_in_sqrt" else torch.sqrt(v_hat) + eps)
            if mistake == "decay_after":
                p = p * (1 - lr * wd)
            out_p.append(p)
            out_m.append(m)
            out_v.append(v)
        return out_p, {"t": state["t"] if mistake == "t_not_counted" else t, "m": out_m, "v": out_v}

    step.__name__ = f"adamw_{mistake}"
    return step


def adamw_returns_old_state(params, grads, state, *, lr, betas, eps, weight_decay, decay):
    new_params, _ = _adamw_with(None)(params, grads, state, lr=lr, betas=betas, eps=eps,
                                      weight_decay=weight_decay, decay=decay)
    return new_params, {"t": state["t"] + 1, "m": state["m"], "v": state["v"]}


def adamw_returns_only_params(params, grads, state, *, lr, betas, eps, weight_decay, decay):
    return _adamw_with(None)(params, grads, state, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                             decay=decay)[0]


ADAMW_MISTAKES = planted(
    (_adamw_with("l2"), r"new_params\[0\] \(vs torch\.optim\.AdamW\) for case=two matrices.*step=1: .*"
                        r"weight decay is added to the gradient \(L2"),
    (_adamw_with("no_bias_correction"), r"step=1: .*the bias correction is missing"),
    (_adamw_with("eps_in_sqrt"), r"case=tiny gradients: eps matters.*step=1: .*eps is inside the square root"),
    (_adamw_with("decay_all"), r"new_params\[1\] .*step=1: .*every parameter decays"),
    (_adamw_with("decay_none"), r"new_params\[0\] .*step=1: .*no parameter decays"),
    (_adamw_with("decay_without_lr"), r"step=1: .*the decay is not multiplied by the learning rate"),
    (_adamw_with("decay_after"), r"new_params\[0\] .*step=1: .*the decay is applied after the Adam step"),
    (_adamw_with("swapped_betas"), r"new_state\['m'\]\[0\], the first moment m \(exp_avg\) for .*step=1: .*beta1 "
                                   r"and beta2 are swapped"),
    (_adamw_with("t_not_counted"), r"new_state\['t'\] for .*step=1: got 0, expected 1"),
    (adamw_returns_old_state, r"new_state\['m'\]\[0\], the first moment m \(exp_avg\) for .*step=1"),
    (adamw_returns_only_params, r"adamw_step for .*step=1: expected a tuple \(new_params, new_state\), got a list "
                                r"of length 4"),
)


@pytest.mark.parametrize("wrong, match", ADAMW_MISTAKES)
def test_check_adamw_step_rejects(wrong, match):
    with pytest.raises(CheckFailed, match=match):
        checks.check_adamw_step(wrong)


# ----------------------------------------------------------------- planted mistakes: the schedule

def _lr_with(mistake):
    def lr_at(step, warmup_steps, total_steps, max_lr):
        return refs.cosine_mistake(step, warmup_steps, total_steps, max_lr, mistake)

    lr_at.__name__ = f"lr_at_{mistake}"
    return lr_at


def lr_at_warmup_ends_at_zero(step, warmup_steps, total_steps, max_lr):
    if step < warmup_steps:
        return max_lr * step / warmup_steps
    return 0.0 if step > total_steps else max_lr * 0.5 * (1 + math.cos(math.pi * step / total_steps))


LR_MISTAKES = planted(
    (_lr_with("no_clamp"), r"learning rate \(vs transformers\.get_cosine_schedule_with_warmup, then 0\) for step=101, "
                           r"warmup_steps=10, total_steps=100, max_lr=0\.001: .*past total_steps the run is over"),
    (_lr_with("warmup_plus_one"), r"for step=0, warmup_steps=10, .*the warm-up is one step ahead"),
    (_lr_with("warmup_reaches_peak_early"), r"for step=1, warmup_steps=10.*reaches max_lr one step early"),
    (_lr_with("progress_from_zero"), r"for step=10, warmup_steps=10, .*the cosine starts at step 0"),
    (_lr_with("linear_decay"), r"for step=11, warmup_steps=10.*this is a linear decay"),
    (_lr_with("full_cycle"), r"for step=11, warmup_steps=10.*this is a full cosine cycle"),
    (_lr_with("cos_without_half"), r"for step=11, warmup_steps=10.*must be 0\.5 \* \(1 \+ cos"),
    (lr_at_warmup_ends_at_zero, r"for step=10, warmup_steps=10, .*the cosine starts at step 0"),
)


@pytest.mark.parametrize("wrong, match", LR_MISTAKES)
def test_check_lr_at_rejects(wrong, match):
    with pytest.raises(CheckFailed, match=match):
        checks.check_lr_at(wrong)


# ----------------------------------------------------------------- planted mistakes: filtering

def _filter(logits, temperature=1.0, top_k=None, top_p=None, *, ties=True, p_first=False, strict=False,
            fill=float("-inf"), times_t=False, t_last=False, batch_k=False):
    x = logits * temperature if times_t else (logits if t_last else logits / temperature)

    def top_k_step(x):
        k = min(top_k, x.shape[-1])
        if batch_k:
            kth = torch.topk(x.reshape(-1), k).values[-1]
            return x.masked_fill(x < kth, fill)
        if ties:
            return x.masked_fill(x < torch.topk(x, k, dim=-1).values[:, -1:], fill)
        keep = torch.zeros_like(x, dtype=torch.bool).scatter(1, torch.topk(x, k, dim=-1).indices, True)
        return x.masked_fill(~keep, fill)

    def top_p_step(x, probs_from):
        probs = torch.softmax(probs_from, dim=-1)
        sp, order = torch.sort(probs, dim=-1, descending=True)
        remove = sp.cumsum(-1) > top_p if strict else (sp.cumsum(-1) - sp) >= top_p
        remove[:, 0] = False
        return x.masked_fill(remove.scatter(1, order, remove), fill)

    if p_first and top_p is not None:
        x = top_p_step(x, x)
        p_first_done = True
    else:
        p_first_done = False
    if top_k is not None:
        x = top_k_step(x)
    if top_p is not None and not p_first_done:
        x = top_p_step(x, x)
    return x / temperature if t_last else x


def filter_drops_ties(logits, temperature=1.0, top_k=None, top_p=None):
    return _filter(logits, temperature, top_k, top_p, ties=False)


def filter_top_p_before_top_k(logits, temperature=1.0, top_k=None, top_p=None):
    return _filter(logits, temperature, top_k, top_p, p_first=True)


def filter_top_p_strict(logits, temperature=1.0, top_k=None, top_p=None):
    return _filter(logits, temperature, top_k, top_p, strict=True)


def filter_minus_1e9(logits, temperature=1.0, top_k=None, top_p=None):
    return _filter(logits, temperature, top_k, top_p, fill=-1e9)


def filter_times_temperature(logits, temperature=1.0, top_k=None, top_p=None):
    return _filter(logits, temperature, top_k, top_p, times_t=True)


def filter_temperature_last(logits, temperature=1.0, top_k=None, top_p=None):
    return _filter(logits, temperature, top_k, top_p, t_last=True)


def filter_top_k_over_the_batch(logits, temperature=1.0, top_k=None, top_p=None):
    return _filter(logits, temperature, top_k, top_p, batch_k=True)


def filter_keeps_k_minus_one(logits, temperature=1.0, top_k=None, top_p=None):
    return _filter(logits, temperature, None if top_k is None else max(top_k - 1, 1), top_p)


FILTER_MISTAKES = planted(
    (filter_drops_ties, r"kept tokens \(vs transformers' warpers\) for case=ties at the k-th value, "
                        r"logits=\(3, 12\).*: row 1 keeps 3 of 12 tokens, expected 5 \(token \d+ is -inf, expected "
                        r"kept\) - tokens tied with the k-th largest logit are dropped"),
    (filter_top_p_before_top_k, r"case=all three.*top-p is computed on the distribution before top-k"),
    (filter_top_p_strict, r"case=top-p, .*top-p drops the token that crosses top_p"),
    (filter_minus_1e9, r"case=top-k, .*got -1e\+09 at \[0, \d+\], a removed token: removed tokens must be -inf"),
    (filter_times_temperature, r"case=temperature only.*the logits are multiplied by the temperature"),
    (filter_temperature_last, r"case=all three.*top-p is applied to the logits before the temperature"),
    (filter_top_k_over_the_batch, r"kept tokens \(vs transformers' warpers\) for case=top-k, logits=\(3, 20\).*: "
                                  r"row \d keeps \d+ of 20 tokens, expected 5"),
    (filter_keeps_k_minus_one, r"case=top-k, logits=\(3, 20\).*: row 0 keeps 4 of 20 tokens, expected 5"),
)


@pytest.mark.parametrize("wrong, match", FILTER_MISTAKES)
def test_check_filter_logits_rejects(wrong, match):
    with pytest.raises(CheckFailed, match=match):
        checks.check_filter_logits(wrong)


# ----------------------------------------------------------------- planted mistakes: training

def train_untrained(train_ids, vocab_size):
    from llmcourse.gpt import GPT, GPTConfig

    return GPT(GPTConfig.tiny(vocab_size=vocab_size, block_size=32))


def train_twenty_steps(train_ids, vocab_size):
    from llmcourse.gpt import GPT, GPTConfig

    model = GPT(GPTConfig.tiny(vocab_size=vocab_size, block_size=32))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for _ in range(20):
        x, y = _windows(train_ids, 32, 8)
        _, loss = model(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model


class PeekingModel(nn.Module):
    """Not causal: position t sees token t + 1, the very token it should predict."""

    def __init__(self, vocab_size):
        super().__init__()
        self.emb = nn.Embedding(vocab_size, vocab_size)

    def forward(self, idx):
        nxt = torch.cat([idx[:, 1:], idx[:, -1:]], dim=1)
        return self.emb(nxt)


def train_peeking_model(train_ids, vocab_size):
    model = PeekingModel(vocab_size)
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    for _ in range(50):
        x, y = _windows(train_ids, 32, 16)
        loss = F.cross_entropy(model(x).reshape(-1, vocab_size), y.reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model


def train_forgot_return(train_ids, vocab_size):
    train_twenty_steps(train_ids, vocab_size)


def train_returns_state_dict(train_ids, vocab_size):
    return train_untrained(train_ids, vocab_size).state_dict()


class LastPositionOnly(nn.Module):
    def __init__(self, vocab_size):
        super().__init__()
        self.emb = nn.Embedding(vocab_size, vocab_size)

    def forward(self, idx):
        return self.emb(idx[:, -1])  # (B, V): only the next token after the whole sequence


def train_last_position_only(train_ids, vocab_size):
    return LastPositionOnly(vocab_size)


def train_block_size_16(train_ids, vocab_size):
    from llmcourse.gpt import GPT, GPTConfig

    return GPT(GPTConfig.tiny(vocab_size=vocab_size, block_size=16))


@pytest.mark.parametrize("wrong, match", planted(
    (train_untrained, r"train_tiny_gpt for train_ids_shape=\(\d+,\), vocab_size=16, held-out characters=4096: the "
                      r"loss on held-out text is 2\.\d+ nats per character, above 1\.60.*train long enough"),
    (train_twenty_steps, r"the loss on held-out text is 2\.\d+ nats per character, above 1\.60"),
    (train_peeking_model, r"the model's prediction at position t changes when tokens after t change.*must not "
                          r"look ahead"),
    (train_forgot_return, r"returned None \(is a `return` missing\?\)"),
    (train_returns_state_dict, r"expected the trained torch\.nn\.Module, got a OrderedDict"),
    (train_last_position_only, r"model\(idx\) for idx of shape \(4096, 32\) must return logits of shape \(B, T, V\) "
                               r"= \(4096, 32, vocab_size\), got \(4096, 16\)"),
    (train_block_size_16, r"raised ValueError: sequence length T=32 exceeds block_size=16"),
))
def test_check_train_tiny_gpt_rejects(wrong, match, one_thread):
    with pytest.raises(CheckFailed, match=match):
        checks.check_train_tiny_gpt(wrong)


def test_planted_helpers_are_right_when_not_broken():
    """The planted mistakes differ from a correct implementation only in their one mistake."""
    checks.check_cross_entropy(lambda logits, targets, ignore_index=-100: _ce(logits, targets, ignore_index))
    checks.check_perplexity(lambda logits, targets, ignore_index=-100: _ppl(logits, targets, ignore_index))
    checks.check_adamw_step(_adamw_with(None))
    checks.check_filter_logits(lambda logits, temperature=1.0, top_k=None, top_p=None:
                               _filter(logits, temperature, top_k, top_p))
    checks.check_lr_at(_lr_with(None))


# ----------------------------------------------------------------- the guard

SETUP = "import math\nimport torch\nimport torch.nn.functional as F\nfrom torch import nn\n"


def test_guard_catches_f_cross_entropy():
    ns = kernel(SETUP, "def cross_entropy(logits, targets, ignore_index=-100):\n"
                "    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),\n"
                "                           ignore_index=ignore_index)\n")
    with pytest.raises(ForbiddenCall, match=r"cross_entropy uses F\.cross_entropy"):
        checks.check_cross_entropy(ns["cross_entropy"])


def test_guard_catches_cross_entropy_at_run_time_without_source():
    ns = kernel(SETUP, "def perplexity(logits, targets, ignore_index=-100):\n"
                "    f = getattr(F, 'cross_' + 'entropy')\n"
                "    return torch.exp(f(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),\n"
                "                       ignore_index=ignore_index))\n", keep_source=False)
    fn = ns["perplexity"]
    assert static_violations(fn, callables=checks.PERPLEXITY.callables) == []
    with pytest.raises(ForbiddenCall, match=r"your code called .*cross_entropy_loss at "):
        checks.check_perplexity(fn)


def test_guard_catches_nll_loss_in_a_helper():
    ns = kernel(SETUP, "def _nll(logp, t, ii):\n"
                "    return F.nll_loss(logp, t, ignore_index=ii)\n",
                "def cross_entropy(logits, targets, ignore_index=-100):\n"
                "    v = logits.shape[-1]\n"
                "    return _nll(torch.log_softmax(logits.reshape(-1, v), -1), targets.reshape(-1), ignore_index)\n")
    with pytest.raises(ForbiddenCall, match=r"_nll uses F\.nll_loss"):
        checks.check_cross_entropy(ns["cross_entropy"])


def test_guard_catches_torch_optim_adamw():
    ns = kernel(SETUP, "def adamw_step(params, grads, state, *, lr, betas, eps, weight_decay, decay):\n"
                "    ps = [nn.Parameter(p) for p in params]\n"
                "    opt = torch.optim.AdamW(ps, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)\n"
                "    return ps, state\n")
    with pytest.raises(ForbiddenCall, match=r"adamw_step uses torch\.optim\.AdamW"):
        checks.check_adamw_step(ns["adamw_step"])


def test_guard_catches_transformers_schedule():
    ns = kernel(SETUP + "from transformers import get_cosine_schedule_with_warmup\n",
                "def lr_at(step, warmup_steps, total_steps, max_lr):\n"
                "    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=max_lr)\n"
                "    s = get_cosine_schedule_with_warmup(opt, warmup_steps, total_steps)\n"
                "    return max_lr * s.lr_lambdas[0](step)\n")
    with pytest.raises(ForbiddenCall, match=r"lr_at uses get_cosine_schedule_with_warmup \(from transformers\)"):
        checks.check_lr_at(ns["lr_at"])


def test_guard_catches_the_course_schedule_and_decoding():
    ns = kernel(SETUP, "def lr_at(step, warmup_steps, total_steps, max_lr):\n"
                "    from llmcourse.schedules import lr_at as course\n"
                "    return course(step, max_lr=max_lr, warmup_steps=warmup_steps, total_steps=total_steps)\n")
    with pytest.raises(ForbiddenCall, match=r"lr_at imports from llmcourse\.schedules"):
        checks.check_lr_at(ns["lr_at"])
    ns = kernel(SETUP, "def filter_logits(logits, temperature=1.0, top_k=None, top_p=None):\n"
                "    from llmcourse.decoding import process_logits\n"
                "    return process_logits(logits, temperature=temperature, top_k=top_k, top_p=top_p)\n")
    with pytest.raises(ForbiddenCall, match=r"filter_logits imports from llmcourse\.decoding"):
        checks.check_filter_logits(ns["filter_logits"])


def test_guard_catches_transformers_warpers_at_run_time_without_source():
    ns = kernel(SETUP, "def filter_logits(logits, temperature=1.0, top_k=None, top_p=None):\n"
                "    import importlib\n"
                "    lp = importlib.import_module('transformers.generation.' + 'logits_process')\n"
                "    return lp.TemperatureLogitsWarper(temperature)(None, logits)\n", keep_source=False)
    with pytest.raises(ForbiddenCall, match=r"your code called transformers"):
        checks.check_filter_logits(ns["filter_logits"])


def test_guard_catches_the_course_trainer_in_task_6():
    ns = kernel(SETUP, "def train_tiny_gpt(train_ids, vocab_size):\n"
                "    from llmcourse.gpt import GPT, GPTConfig\n"
                "    from llmcourse.trainer import Trainer, TrainConfig\n"
                "    model = GPT(GPTConfig.tiny(vocab_size=vocab_size, block_size=32))\n"
                "    Trainer(model, TrainConfig(block_size=32), train_ids).fit(show_progress=False)\n"
                "    return model\n")
    with pytest.raises(ForbiddenCall, match=r"train_tiny_gpt imports from llmcourse\.trainer"):
        checks.check_train_tiny_gpt(ns["train_tiny_gpt"])


def test_guard_lets_the_solutions_and_the_correct_variants_through():
    for task in checks.TASKS:
        for fn in (solution_of(ASSIGNMENT)[task.name], *CORRECT[task.check]):
            assert static_violations(fn, modules=task.modules, callables=task.callables) == [], fn.__name__


# ----------------------------------------------------------------- under a course secret

SECRETS = ("course secret A", "another secret", "3")
MISTAKES = {"check_cross_entropy": CE_MISTAKES, "check_perplexity": PPL_MISTAKES,
            "check_adamw_step": ADAMW_MISTAKES, "check_lr_at": LR_MISTAKES, "check_filter_logits": FILTER_MISTAKES}


@pytest.mark.parametrize("secret", SECRETS)
def test_checks_hold_under_several_course_secrets(monkeypatch, secret, one_thread):
    """With a secret the inputs change; the solution and the correct variants still pass, mistakes fail.

    train_tiny_gpt runs once per secret, with the solution only: it trains networks.
    """
    monkeypatch.setenv("AUTOGRADER_SECRET", secret)
    solution = solution_of(ASSIGNMENT)
    for task in checks.TASKS:
        if task is checks.TRAIN:
            check_of(task)(solution[task.name])
            continue
        for fn in (solution[task.name], *CORRECT[task.check]):
            check_of(task)(fn)
        for param in MISTAKES[task.check]:
            with pytest.raises(CheckFailed):
                check_of(task)(param.values[0])


def test_course_secret_changes_the_inputs(monkeypatch):
    public_ce = checks._ce_cases()
    public_rows = checks.held_out_rows()[0]
    public_train = checks.training_ids()
    monkeypatch.setenv("AUTOGRADER_SECRET", SECRETS[0])
    hidden_ce = checks._ce_cases()
    assert [c[0] for c in hidden_ce] == [c[0] for c in public_ce] or \
        [c[0]["logits"] for c in hidden_ce] == [c[0]["logits"] for c in public_ce]
    assert not any(torch.equal(a[1], b[1]) for a, b in zip(public_ce, hidden_ce)), "the secret should change inputs"
    assert not torch.equal(checks.held_out_rows()[0], public_rows)
    hidden_train = checks.training_ids()
    assert hidden_train.shape != public_train.shape or not torch.equal(hidden_train, public_train)
