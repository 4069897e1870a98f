"""A character-level language model: vocabulary, training windows, an LSTM, sampling.

What it teaches: a language model gives a probability to the next symbol
given all previous ones, p(x_t | x_<t). At the character level the vocabulary
is small (the distinct characters of the text), every string can be written,
and an RNN carries the context in its state (Graves 2013; Karpathy 2015).
Trained with cross-entropy on next-character prediction, it generates text by
sampling one character at a time from softmax(logits / temperature) and
feeding it back in: a temperature below 1 sharpens the distribution towards
the most likely character, above 1 flattens it towards uniform (the name
comes from the Boltzmann distribution of statistical physics, p ~ exp(-E / T)).

Shapes: B batch, T time (window length), V vocabulary size, H hidden size.

Taught in: book/05-rnn
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from llmcourse.progress import progress


class CharVocab:
    """The sorted distinct characters of a text; ``encode`` and ``decode`` map str <-> ids.

    >>> v = CharVocab("hello")
    >>> v.chars, v.encode("hole").tolist(), v.decode([3, 2])
    (['e', 'h', 'l', 'o'], [1, 3, 2, 0], 'ol')
    """

    def __init__(self, text: str):
        if not isinstance(text, str) or not text:
            raise ValueError("CharVocab needs a non-empty string")
        self.chars = sorted(set(text))
        self.index = {ch: i for i, ch in enumerate(self.chars)}

    def __len__(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> torch.Tensor:
        unknown = sorted(set(text) - set(self.index))
        if unknown:
            raise ValueError(f"characters not in the vocabulary: {unknown[:10]}")
        return torch.tensor([self.index[ch] for ch in text], dtype=torch.long)

    def decode(self, ids) -> str:
        ids = ids.tolist() if hasattr(ids, "tolist") else list(ids)
        return "".join(self.chars[int(i)] for i in ids)


def random_windows(data: torch.Tensor, block_size: int, batch_size: int,
                   generator: torch.Generator | None = None):
    """Random training windows: x (B, T) and y (B, T), where y is x shifted one character left.

    ``data`` is the whole encoded text (N,); each window starts at a uniform random offset.
    """
    if data.dim() != 1 or len(data) < block_size + 1:
        raise ValueError(f"data must be 1-D with more than block_size={block_size} ids, got shape {tuple(data.shape)}")
    starts = torch.randint(0, len(data) - block_size, (batch_size,), generator=generator)
    offsets = torch.arange(block_size)
    x = data[starts[:, None] + offsets]  # (B, T)
    y = data[starts[:, None] + offsets + 1]  # (B, T)
    return x, y


@dataclass(frozen=True)
class CharLMConfig:
    vocab_size: int  # V: number of distinct characters
    embed_size: int = 32  # size of a character embedding
    hidden_size: int = 192  # H: LSTM state size


class CharLSTM(nn.Module):
    """Embedding -> one-layer LSTM -> linear head. forward(ids (B, T), state) -> logits (B, T, V), state."""

    def __init__(self, cfg: CharLMConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.embed_size)
        self.lstm = nn.LSTM(cfg.embed_size, cfg.hidden_size, batch_first=True)
        self.head = nn.Linear(cfg.hidden_size, cfg.vocab_size)

    def forward(self, ids: torch.Tensor, state=None):
        out, state = self.lstm(self.embed(ids), state)  # (B, T, H)
        return self.head(out), state  # (B, T, V)


def train_char_lm(model: CharLSTM, data: torch.Tensor, *, steps: int = 300, block_size: int = 64,
                  batch_size: int = 32, lr: float = 1e-2, seed: int = 0) -> list[float]:
    """Adam on next-character cross-entropy over random windows; returns the loss (nats/char) per step.

    The gradient norm is clipped at 1.0 (Pascanu, Mikolov & Bengio 2013). Every window starts
    from a zero state and the gradient flows back through its ``block_size`` steps only, so the
    model never learns from more than ``block_size`` characters of context. This is *not*
    truncated BPTT, which walks through the text in consecutive chunks and carries the state
    from one chunk into the next (Williams & Peng 1990); here the windows are independent.
    """
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    model.train()
    bar = progress(range(steps), desc="char-LSTM")
    for _ in bar:
        x, y = random_windows(data, block_size, batch_size, gen)
        logits, _ = model(x)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{loss.item():.2f}")
    return losses


@torch.no_grad()
def evaluate_char_lm(model: CharLSTM, data: torch.Tensor, *, block_size: int = 256) -> float:
    """Mean next-character cross-entropy (nats/char) on ``data``, read in consecutive windows.

    The state is carried from window to window, so every character sees all text before it.
    """
    model.eval()
    total, count, state = 0.0, 0, None
    for start in range(0, len(data) - 1, block_size):
        x = data[start:start + block_size][None]
        y = data[start + 1:start + 1 + block_size][None]
        x = x[:, :y.shape[1]]
        logits, state = model(x, state)
        total += F.cross_entropy(logits[0], y[0], reduction="sum").item()
        count += y.shape[1]
    return total / count


def sample_with_temperature(logits: torch.Tensor, temperature: float, u: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF sampling from softmax(logits / temperature), with given uniform numbers.

    Row b returns the smallest index k with cdf[b, k] > u[b], where cdf is the running sum of
    p = softmax(logits[b] / temperature). If u is uniform on [0, 1), index k comes out with
    probability p[k]. Temperature 0 means greedy decoding (argmax, the first one on ties).

    Shapes: logits (B, V), u (B,) in [0, 1) -> ids (B,) int64.
    Raises ValueError for a negative or non-finite temperature.
    """
    if not isinstance(temperature, (int, float)) or isinstance(temperature, bool) \
            or not math.isfinite(temperature) or temperature < 0:
        raise ValueError(f"temperature must be a finite number >= 0, got {temperature!r}")
    if logits.dim() != 2 or u.shape != (logits.shape[0],):
        raise ValueError(f"need logits (B, V) and u (B,), got {tuple(logits.shape)} and {tuple(u.shape)}")
    if temperature == 0:
        return logits.argmax(dim=1)
    z = logits / temperature
    p = torch.softmax(z - z.max(dim=1, keepdim=True).values, dim=1)  # (B, V); max-shift: no overflow
    cdf = p.cumsum(dim=1)  # (B, V)
    ids = (cdf <= u[:, None]).sum(dim=1)  # number of entries with cdf <= u = first k with cdf > u
    return ids.clamp(max=logits.shape[1] - 1)  # u just below 1 with cdf[-1] = 1 - eps


@torch.no_grad()
def generate(model: CharLSTM, vocab: CharVocab, prompt: str, n_chars: int, *, temperature: float = 1.0,
             seed: int = 0) -> str:
    """Continue ``prompt`` by ``n_chars`` characters, sampled one at a time at ``temperature``."""
    if not prompt:
        raise ValueError("prompt must contain at least one character")
    gen = torch.Generator().manual_seed(seed)
    model.eval()
    logits, state = model(vocab.encode(prompt)[None])  # (1, T, V)
    out = []
    for _ in range(n_chars):
        u = torch.rand(1, generator=gen)
        nxt = sample_with_temperature(logits[:, -1], temperature, u)  # (1,)
        out.append(int(nxt))
        logits, state = model(nxt[None], state)
    return prompt + vocab.decode(out)
