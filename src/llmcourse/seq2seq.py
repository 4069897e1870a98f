"""A GRU encoder-decoder, with and without Bahdanau attention, on digit-string tasks.

What it teaches: a sequence-to-sequence model (Sutskever, Vinyals & Le 2014;
Cho et al. 2014) reads the source with an *encoder* RNN and writes the target
with a *decoder* RNN. Without attention the decoder sees the source only
through one fixed-size *context vector*, the encoder's last state, whatever the
source length. Additive attention (Bahdanau, Cho & Bengio 2015) lets the
decoder, at every output step, take a fresh weighted average of *all* encoder
states, with weights a softmax over the scores
``v^T tanh(W_s s_{t-1} + W_h h_j)``. The two decoders below differ only in how
the context is computed, so an experiment isolates that one choice.

Data: ``llmcourse.tasks.make_digit_strings`` ("reverse", "sort" or "copy").
Tokens: 0 = <pad> (unused: batches have one length), 1 = <bos>, 2 = <eos>, 3..12 = digits 0..9.

Shapes (batch-first in this module): B batch, S source length, T target length,
E embedding size, H hidden size, V = 13 vocabulary size.

Taught in: book/05-rnn
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from llmcourse.progress import progress
from llmcourse.reproducibility import numpy_rng
from llmcourse.tasks import make_digit_strings

BOS, EOS, DIGIT0, VOCAB_SIZE = 1, 2, 3, 13


def encode_digits(strings: list[str]) -> torch.Tensor:
    """Equal-length digit strings -> token ids (B, S), digit d -> d + 3."""
    lengths = {len(s) for s in strings}
    if len(lengths) != 1:
        raise ValueError(f"all strings in a batch must have the same length, got lengths {sorted(lengths)}")
    if not all(s.isdigit() for s in strings):
        raise ValueError("strings must contain only the digits 0-9")
    return torch.tensor([[int(ch) + DIGIT0 for ch in s] for s in strings], dtype=torch.long)


def decode_digits(ids: torch.Tensor) -> list[str]:
    """Token ids (B, T) -> strings, stopping at the first <eos>; non-digit tokens become '?'."""
    out = []
    for row in ids.tolist():
        chars = []
        for t in row:
            if t == EOS:
                break
            chars.append(str(t - DIGIT0) if DIGIT0 <= t < VOCAB_SIZE else "?")
        out.append("".join(chars))
    return out


def make_batch(task: str, batch_size: int, length: int, seed: int):
    """A batch of one source length: src (B, S), tgt_in (B, T + 1) = <bos> + target, tgt_out = target + <eos>."""
    pairs = make_digit_strings(task, batch_size, min_len=length, max_len=length, seed=seed)
    src = encode_digits([s for s, _ in pairs])
    tgt = encode_digits([t for _, t in pairs])
    bos = torch.full((batch_size, 1), BOS, dtype=torch.long)
    eos = torch.full((batch_size, 1), EOS, dtype=torch.long)
    return src, torch.cat([bos, tgt], dim=1), torch.cat([tgt, eos], dim=1)


@dataclass(frozen=True)
class Seq2SeqConfig:
    embed_size: int = 16  # E: size of a token embedding
    hidden_size: int = 64  # H: size of encoder and decoder states
    attention: bool = True  # Bahdanau attention (True) or the fixed context vector (False)


class Encoder(nn.Module):
    """Embedding + one-layer GRU. forward(src (B, S)) -> states (B, S, H), last state (B, H)."""

    def __init__(self, cfg: Seq2SeqConfig):
        super().__init__()
        self.embed = nn.Embedding(VOCAB_SIZE, cfg.embed_size)
        self.rnn = nn.GRU(cfg.embed_size, cfg.hidden_size, batch_first=True)

    def forward(self, src: torch.Tensor):
        states, last = self.rnn(self.embed(src))  # (B, S, H), (1, B, H)
        return states, last[0]


class BahdanauAttention(nn.Module):
    """Additive attention: score_j = v^T tanh(W_s s + W_h h_j), weights = softmax over j.

    forward(s (B, H), states (B, S, H)) -> context (B, H), weights (B, S).
    """

    def __init__(self, hidden_size: int):
        super().__init__()
        self.W_s = nn.Linear(hidden_size, hidden_size, bias=False)
        self.W_h = nn.Linear(hidden_size, hidden_size, bias=True)
        self.v = nn.Linear(hidden_size, 1, bias=False)

    def forward(self, s: torch.Tensor, states: torch.Tensor, keys: torch.Tensor | None = None):
        keys = self.W_h(states) if keys is None else keys  # (B, S, H); precomputable once per source
        scores = self.v(torch.tanh(self.W_s(s)[:, None, :] + keys))[..., 0]  # (B, S)
        weights = scores.softmax(dim=1)  # (B, S)
        context = torch.einsum("bs,bsh->bh", weights, states)  # (B, H)
        return context, weights


class Decoder(nn.Module):
    """GRU decoder whose input at each step is [embedding of the previous token; context].

    The context is the encoder's last state at every step (``attention=False``) or a fresh
    attention average of all encoder states (``attention=True``). Logits come from [s_t; context].
    """

    def __init__(self, cfg: Seq2SeqConfig):
        super().__init__()
        self.cfg = cfg
        H = cfg.hidden_size
        self.embed = nn.Embedding(VOCAB_SIZE, cfg.embed_size)
        self.cell = nn.GRUCell(cfg.embed_size + H, H)
        self.attn = BahdanauAttention(H) if cfg.attention else None
        self.out = nn.Linear(2 * H, VOCAB_SIZE)

    def step(self, token: torch.Tensor, s: torch.Tensor, states: torch.Tensor, last: torch.Tensor,
             keys: torch.Tensor | None = None):
        """One step: token (B,), s (B, H) -> logits (B, V), new s (B, H), attention weights (B, S) or None."""
        if self.attn is None:
            context, weights = last, None
        else:
            context, weights = self.attn(s, states, keys)
        s = self.cell(torch.cat([self.embed(token), context], dim=1), s)
        return self.out(torch.cat([s, context], dim=1)), s, weights


class Seq2Seq(nn.Module):
    """Encoder + decoder. forward(src (B, S), tgt_in (B, T)) -> logits (B, T, V) with teacher forcing."""

    def __init__(self, cfg: Seq2SeqConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)

    def _keys(self, states):
        return self.decoder.attn.W_h(states) if self.decoder.attn is not None else None

    def forward(self, src: torch.Tensor, tgt_in: torch.Tensor) -> torch.Tensor:
        states, last = self.encoder(src)
        keys, s, logits = self._keys(states), last, []
        for t in range(tgt_in.shape[1]):
            step_logits, s, _ = self.decoder.step(tgt_in[:, t], s, states, last, keys)
            logits.append(step_logits)
        return torch.stack(logits, dim=1)  # (B, T, V)

    @torch.no_grad()
    def greedy(self, src: torch.Tensor, steps: int):
        """Greedy decoding for ``steps`` steps -> ids (B, steps), attention weights (B, steps, S) or None."""
        states, last = self.encoder(src)
        keys, s = self._keys(states), last
        token = torch.full((src.shape[0],), BOS, dtype=torch.long)
        ids, attn = [], []
        for _ in range(steps):
            logits, s, weights = self.decoder.step(token, s, states, last, keys)
            token = logits.argmax(dim=1)
            ids.append(token)
            if weights is not None:
                attn.append(weights)
        return torch.stack(ids, dim=1), (torch.stack(attn, dim=1) if attn else None)


def train_seq2seq(model: Seq2Seq, *, task: str = "reverse", lengths: tuple[int, int] = (2, 12),
                  steps: int = 600, batch_size: int = 64, lr: float = 5e-3, seed: int = 0,
                  desc: str | None = None) -> list[float]:
    """Train with teacher forcing on batches of random length in ``lengths``; returns the loss per step.

    Adam, gradient-norm clipping at 1.0 (Pascanu, Mikolov & Bengio 2013).
    """
    lo, hi = lengths
    if not 1 <= lo <= hi:
        raise ValueError(f"lengths must satisfy 1 <= min <= max, got {lengths}")
    rng = numpy_rng(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    model.train()
    for step in progress(range(steps), desc=desc):
        length = int(rng.integers(lo, hi + 1))
        src, tgt_in, tgt_out = make_batch(task, batch_size, length, seed=seed * 100_003 + step)
        logits = model(src, tgt_in)  # (B, T, V)
        loss = F.cross_entropy(logits.reshape(-1, VOCAB_SIZE), tgt_out.reshape(-1))
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
    return losses


def accuracy_by_length(model: Seq2Seq, lengths, *, task: str = "reverse", n: int = 200,
                       seed: int = 12345) -> dict[int, float]:
    """Per-digit accuracy of greedy decoding on ``n`` fresh pairs of each source length.

    Returns {length: fraction of output digits that are right}.
    """
    model.eval()
    out = {}
    for length in lengths:
        src, _, tgt_out = make_batch(task, n, length, seed=seed + length)
        ids, _ = model.greedy(src, length)
        out[int(length)] = (ids == tgt_out[:, :length]).float().mean().item()
    return out
