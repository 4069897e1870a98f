"""Decoding: turning a language model's next-token logits into text.

A language model gives, at each step, scores (logits) over the V tokens of the
vocabulary. Decoding chooses the next token from them and feeds it back in:

* greedy decoding takes the argmax at every step;
* sampling draws from softmax(logits / temperature) after cutting the tail:
  temperature (Ackley, Hinton & Sejnowski 1985) sharpens (< 1) or flattens
  (> 1) the distribution, top-k (Fan, Lewis & Dauphin 2018) keeps the k most
  likely tokens, top-p or nucleus sampling (Holtzman et al. 2020) keeps the
  smallest set of likely tokens whose probabilities add up to at least p;
* a repetition penalty (Keskar et al. 2019, CTRL) makes tokens already in the
  sequence less likely: their logit is divided by the penalty if positive,
  multiplied by it if negative;
* beam search keeps the ``num_beams`` best partial sequences by total
  log-probability, and ranks finished ones by sum of log-probs / length**alpha,
  a simple form of the length penalty of Wu et al. 2016 (GNMT).

Every function equals its counterpart in Hugging Face transformers (5.x), so
that the course's checks can compare with the real library: the filters equal
``TemperatureLogitsWarper``, ``TopKLogitsWarper``, ``TopPLogitsWarper`` and
``RepetitionPenaltyLogitsProcessor`` bit for bit (ties included), ``generate``
equals ``GPT2LMHeadModel.generate(do_sample=False)`` (greedy) and
``beam_search`` equals ``generate(num_beams=k, do_sample=False)`` token for
token. Deliberate differences, each raising a clear error instead: integer
temperatures and penalties are accepted, top_p must be in (0, 1] (transformers
also takes 0), and token ids outside the vocabulary are refused (transformers
ignores them in the repetition penalty).

Shapes: B batch, T time (tokens), V vocabulary size, K = num_beams.

Taught in: book/08-pretraining
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# transformers marks impossible beams with this score rather than -inf (so sums stay finite).
_NEG = -1.0e9


# ----------------------------------------------------------------- input checks

def _check_logits(logits, name: str = "logits") -> None:
    if not isinstance(logits, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(logits).__name__}")
    if not logits.dtype.is_floating_point:
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {logits.dtype}")
    if logits.ndim != 2 or logits.shape[1] == 0:
        raise ValueError(f"{name} must have shape (B, V) with V >= 1, got {tuple(logits.shape)}")


def _check_ids(ids, name: str = "input_ids") -> None:
    if not isinstance(ids, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of token ids, got {type(ids).__name__}")
    if ids.dtype.is_floating_point or ids.dtype == torch.bool or ids.is_complex():
        raise TypeError(f"{name} must hold integer token ids (torch.long), got dtype {ids.dtype}")
    if ids.ndim != 2:
        raise ValueError(f"{name} must have shape (B, T), got {tuple(ids.shape)}")


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _check_int(value, name: str, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")


def _check_temperature(temperature) -> None:
    if not _is_number(temperature) or not temperature > 0 or math.isinf(temperature):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r} "
                         "(for greedy decoding use strategy='greedy')")


def _check_top_p(top_p) -> None:
    if not _is_number(top_p) or not 0 < top_p <= 1:
        raise ValueError(f"top_p must be a number in (0, 1], got {top_p!r}")


def _check_penalty(penalty) -> None:
    if not _is_number(penalty) or not penalty > 0 or math.isinf(penalty):
        raise ValueError(f"repetition penalty must be a finite number > 0 (1 = no penalty), got {penalty!r}")


# ----------------------------------------------------------------- logit filters

def apply_temperature(logits: Tensor, temperature: float) -> Tensor:
    """Divide the logits by ``temperature``: < 1 sharpens softmax, > 1 flattens it.

    Shapes: logits (B, V) -> (B, V). Equals ``TemperatureLogitsWarper(temperature)``.

    >>> apply_temperature(torch.tensor([[2.0, 1.0]]), 0.5)
    tensor([[4., 2.]])
    """
    _check_logits(logits)
    _check_temperature(temperature)
    return logits / temperature


def top_k_filter(logits: Tensor, top_k: int, *, min_tokens_to_keep: int = 1,
                 filter_value: float = float("-inf")) -> Tensor:
    """Keep the ``top_k`` largest logits of each row, set the others to ``filter_value``.

    A token tied with the k-th largest logit is kept too, so a row may keep more
    than k tokens. At least ``min_tokens_to_keep`` are kept; k larger than V keeps all.

    Shapes: logits (B, V) -> (B, V). Equals ``TopKLogitsWarper(top_k, filter_value,
    min_tokens_to_keep)``.

    >>> top_k_filter(torch.tensor([[1.0, 3.0, 2.0, 3.0]]), 1)
    tensor([[-inf, 3., -inf, 3.]])
    """
    _check_logits(logits)
    _check_int(top_k, "top_k", 1)
    _check_int(min_tokens_to_keep, "min_tokens_to_keep", 1)
    k = min(max(top_k, min_tokens_to_keep), logits.shape[-1])
    kth_largest = torch.topk(logits, k).values[:, -1:]  # (B, 1)
    return logits.masked_fill(logits < kth_largest, filter_value)


def top_p_filter(logits: Tensor, top_p: float, *, min_tokens_to_keep: int = 1,
                 filter_value: float = float("-inf")) -> Tensor:
    """Nucleus filtering: keep the most likely tokens whose probabilities add up to at least ``top_p``.

    The tokens are sorted from least to most likely (as transformers does), so the
    cumulative sum is the mass of the tail: a token is dropped when the tail up to
    and including it holds at most 1 - top_p. The ``min_tokens_to_keep`` most
    likely tokens are always kept. Among tied tokens, which ones survive follows
    ``torch.sort``'s order, exactly as in transformers. top_p = 1 drops only
    tokens whose probability is already 0 (e.g. -inf logits).

    Shapes: logits (B, V) -> (B, V). Equals ``TopPLogitsWarper(top_p, filter_value,
    min_tokens_to_keep)``.

    >>> top_p_filter(torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log(), 0.8).isfinite()  # 0.5 + 0.3 >= 0.8
    tensor([[ True,  True, False, False]])
    """
    _check_logits(logits)
    _check_top_p(top_p)
    _check_int(min_tokens_to_keep, "min_tokens_to_keep", 1)
    sorted_logits, sorted_idx = torch.sort(logits, descending=False)  # (B, V), least likely first
    tail_mass = sorted_logits.softmax(dim=-1).cumsum(dim=-1)  # (B, V)
    drop_sorted = tail_mass <= (1 - top_p)
    drop_sorted[:, -min_tokens_to_keep:] = False  # the most likely tokens stay
    drop = drop_sorted.scatter(1, sorted_idx, drop_sorted)  # back to vocabulary order
    return logits.masked_fill(drop, filter_value)


def repetition_penalty(logits: Tensor, input_ids: Tensor, penalty: float) -> Tensor:
    """CTRL's repetition penalty on every token id that occurs in ``input_ids``.

    A seen token's logit is divided by ``penalty`` if positive and multiplied by it
    if negative, so penalty > 1 makes it less likely, whatever its sign (each
    token once, however often it occurs). penalty = 1 changes nothing.

    Shapes: logits (B, V), input_ids (B, T) -> (B, V). Equals
    ``RepetitionPenaltyLogitsProcessor(penalty)``.

    >>> repetition_penalty(torch.tensor([[2.0, -2.0, 2.0]]), torch.tensor([[0, 1, 1]]), 2.0)
    tensor([[ 1., -4.,  2.]])
    """
    _check_logits(logits)
    _check_ids(input_ids)
    _check_penalty(penalty)
    if input_ids.shape[0] != logits.shape[0]:
        raise ValueError(f"input_ids has batch size {input_ids.shape[0]} but logits {logits.shape[0]}")
    if input_ids.numel() and (int(input_ids.min()) < 0 or int(input_ids.max()) >= logits.shape[1]):
        raise ValueError(f"token ids must be in [0, {logits.shape[1]}), got values from "
                         f"{int(input_ids.min())} to {int(input_ids.max())}")
    seen = logits.gather(1, input_ids)  # (B, T)
    seen = torch.where(seen < 0, seen * penalty, seen / penalty)
    return logits.scatter(1, input_ids, seen)


# ``process_logits`` and ``generate`` take a keyword with this function's name (transformers' name for it).
_apply_repetition_penalty = repetition_penalty


def process_logits(logits: Tensor, input_ids: Tensor | None = None, *, temperature: float | None = None,
                   top_k: int | None = None, top_p: float | None = None,
                   repetition_penalty: float | None = None) -> Tensor:
    """Apply the optional steps in transformers' order: penalty, temperature, top-k, top-p.

    ``None`` skips a step. ``input_ids`` (B, T) is needed only for the penalty.
    Shapes: logits (B, V) -> (B, V).
    """
    if repetition_penalty is not None:
        if input_ids is None:
            raise ValueError("repetition_penalty needs the input_ids seen so far")
        logits = _apply_repetition_penalty(logits, input_ids, repetition_penalty)
    if temperature is not None:
        logits = apply_temperature(logits, temperature)
    if top_k is not None:
        logits = top_k_filter(logits, top_k)
    if top_p is not None:
        logits = top_p_filter(logits, top_p)
    return logits


# ----------------------------------------------------------------- greedy decoding and sampling

def _check_model(model) -> None:
    if not isinstance(model, nn.Module) or not hasattr(getattr(model, "config", None), "block_size"):
        raise TypeError(f"model must be the course GPT (an nn.Module with config.block_size), "
                        f"got {type(model).__name__}")
    if model.training:
        raise ValueError("model is in training mode (dropout would be on): call model.eval() first")


def _next_token_logits(model: nn.Module, idx: Tensor) -> Tensor:
    """idx (N, T) -> float32 logits (N, V) for the token after the last ``block_size`` tokens."""
    logits, _ = model(idx[:, -model.config.block_size:])  # (N, T', V)
    return logits[:, -1, :].float()


@torch.no_grad()
def generate(model: nn.Module, idx: Tensor, max_new_tokens: int, *, strategy: str = "greedy",
             temperature: float | None = None, top_k: int | None = None, top_p: float | None = None,
             repetition_penalty: float | None = None, eos_id: int | None = None,
             generator: torch.Generator | None = None) -> Tensor:
    """Append up to ``max_new_tokens`` tokens to idx (B, T) -> (B, T + n), n <= max_new_tokens.

    Each step feeds the last ``block_size`` tokens to ``model`` (the course GPT, in
    eval mode) and takes the logits of the last position. ``strategy="greedy"``
    applies the optional ``repetition_penalty``, then takes the argmax (first on
    ties); ``strategy="sample"`` also applies ``temperature`` (default 1), ``top_k``
    and ``top_p`` (default: off) in that order, then draws from the softmax with
    ``generator``. With ``eos_id``, a row that has produced it is padded with
    ``eos_id`` afterwards, and decoding stops once every row has.

    Equals ``GPT2LMHeadModel.generate(idx, max_new_tokens=..., do_sample=...,
    temperature=..., top_k=..., top_p=..., repetition_penalty=...,
    eos_token_id=eos_id, pad_token_id=eos_id)`` on ``model.to_hf()``; note that
    transformers samples with top_k=50 unless told otherwise (top_k=0 turns it off).
    """
    _check_model(model)
    _check_ids(idx, "idx")
    if idx.shape[1] == 0:
        raise ValueError("idx must hold at least one token per row (T >= 1) to condition on")
    _check_int(max_new_tokens, "max_new_tokens", 0)
    if strategy not in ("greedy", "sample"):
        raise ValueError(f"strategy must be 'greedy' or 'sample', got {strategy!r}")
    if strategy == "greedy" and (temperature, top_k, top_p) != (None, None, None):
        raise ValueError("temperature, top_k and top_p shape the distribution to sample from; greedy decoding "
                         "takes the argmax, which they never change: use strategy='sample'")
    if strategy == "sample":
        temperature = 1.0 if temperature is None else temperature
        _check_temperature(temperature)
        if top_k is not None:
            _check_int(top_k, "top_k", 1)
        if top_p is not None:
            _check_top_p(top_p)
    if repetition_penalty is not None:
        _check_penalty(repetition_penalty)
    if eos_id is not None:
        _check_int(eos_id, "eos_id", 0)

    finished = torch.zeros(idx.shape[0], dtype=torch.bool, device=idx.device)  # (B,)
    for _ in range(max_new_tokens):
        logits = _next_token_logits(model, idx)  # (B, V)
        logits = process_logits(logits, idx, temperature=temperature, top_k=top_k, top_p=top_p,
                                repetition_penalty=repetition_penalty)
        if strategy == "greedy":
            next_id = logits.argmax(dim=-1)  # (B,)
        else:
            next_id = torch.multinomial(logits.softmax(dim=-1), 1, generator=generator).squeeze(1)  # (B,)
        if eos_id is not None:
            next_id = next_id.masked_fill(finished, eos_id)  # finished rows are padded
            finished |= next_id == eos_id
        idx = torch.cat([idx, next_id[:, None]], dim=1)  # (B, T + 1)
        if finished.all():
            break
    return idx


# ----------------------------------------------------------------- beam search

def _gather_beams(x: Tensor, beam_idx: Tensor) -> Tensor:
    """x (B, K, ...) and beam_idx (B, K') -> x[b, beam_idx[b, j], ...] of shape (B, K', ...)."""
    while beam_idx.ndim < x.ndim:
        beam_idx = beam_idx.unsqueeze(-1)
    return torch.take_along_dim(x, beam_idx, dim=1)


@torch.no_grad()
def beam_search(model: nn.Module, idx: Tensor, num_beams: int, max_new_tokens: int, *,
                length_penalty: float = 1.0, early_stopping: bool | str = False,
                eos_id: int | None = None) -> Tensor:
    """The best of ``num_beams`` hypotheses per row: idx (B, T) -> (B, T + n), n <= max_new_tokens.

    Each step extends every running hypothesis by every token and keeps the
    2K best candidates by total log-probability. Candidates that end (in
    ``eos_id``, or at ``max_new_tokens``) and rank among the first K join the
    finished list, scored by log-prob / (generated length ** ``length_penalty``);
    the best K candidates that have not ended keep running. Search stops when all
    candidates end, or when no running hypothesis can beat the worst finished one
    (``early_stopping``: True stops as soon as K hypotheses have finished, False
    guesses from the current length, "never" from the longest length when
    length_penalty > 0). Rows that finish early are padded with ``eos_id``.

    This mirrors transformers' ``GenerationMixin._beam_search`` step for step, so
    it equals ``generate(num_beams=K, do_sample=False, length_penalty=...,
    early_stopping=..., eos_token_id=eos_id, pad_token_id=eos_id)`` on
    ``model.to_hf()``. As there, one beam is greedy decoding.
    """
    _check_model(model)
    _check_ids(idx, "idx")
    if idx.shape[1] == 0:
        raise ValueError("idx must hold at least one token per row (T >= 1) to condition on")
    _check_int(num_beams, "num_beams", 1)
    _check_int(max_new_tokens, "max_new_tokens", 0)
    if not _is_number(length_penalty) or not math.isfinite(length_penalty):
        raise ValueError(f"length_penalty must be a finite number, got {length_penalty!r}")
    if not (isinstance(early_stopping, bool) or early_stopping == "never"):
        raise ValueError(f"early_stopping must be True, False or 'never', got {early_stopping!r}")
    if eos_id is not None:
        _check_int(eos_id, "eos_id", 0)
    if num_beams == 1 or max_new_tokens == 0:
        return generate(model, idx, max_new_tokens, eos_id=eos_id)

    B, T0 = idx.shape
    K, n_cand = num_beams, 2 * num_beams  # 2K candidates: at most K end in eos, so K can keep running
    max_len = T0 + max_new_tokens
    fill = eos_id if eos_id is not None else -1  # after a hypothesis ends (-1 never reaches the output)

    # Running hypotheses. All K start as the prompt; only beam 0 may expand at the first step.
    running = torch.full((B, K, max_len), fill, dtype=torch.long, device=idx.device)  # (B, K, max_len)
    running[:, :, :T0] = idx[:, None, :]
    running_scores = torch.zeros(B, K, device=idx.device)  # total log-prob (B, K)
    running_scores[:, 1:] = _NEG
    # Finished hypotheses: tokens, length-penalised scores, generated lengths, filled slots.
    done = running.clone()
    done_scores = torch.full((B, K), _NEG, device=idx.device)
    done_len = torch.zeros(B, K, dtype=torch.long, device=idx.device)
    is_done = torch.zeros(B, K, dtype=torch.bool, device=idx.device)
    can_improve = torch.ones(B, 1, dtype=torch.bool, device=idx.device)
    top_k_mask = torch.arange(n_cand, device=idx.device) < K  # (2K,) the first K candidates

    for step in range(max_new_tokens):
        cur_len = T0 + step
        logits = _next_token_logits(model, running[:, :, :cur_len].reshape(B * K, cur_len))  # (B*K, V)
        V = logits.shape[-1]
        log_probs = F.log_softmax(logits, dim=-1).view(B, K, V) + running_scores[:, :, None]  # (B, K, V)
        cand_scores, flat = torch.topk(log_probs.reshape(B, K * V), n_cand)  # (B, 2K), best first
        cand = _gather_beams(running, flat // V)  # (B, 2K, max_len): the beams extended...
        cand[:, :, cur_len] = flat % V  # ...by their new tokens
        ended = torch.full_like(cand_scores, step + 1 == max_new_tokens, dtype=torch.bool)  # (B, 2K)
        if eos_id is not None:
            ended |= cand[:, :, cur_len] == eos_id

        # The best K candidates that have not ended keep running.
        alive_scores = cand_scores + ended.float() * _NEG
        keep = torch.topk(alive_scores, K).indices  # (B, K)
        running, running_scores = _gather_beams(cand, keep), _gather_beams(alive_scores, keep)

        # Ended candidates among the first K compete with the finished list.
        just_done = ended & top_k_mask
        final = cand_scores / ((step + 1) ** length_penalty)  # length penalty on the generated length
        final += (is_done.all(dim=-1, keepdim=True) & (early_stopping is True)).float() * _NEG
        final += (~can_improve).float() * _NEG
        final += (~just_done).float() * _NEG
        best = torch.topk(torch.cat([done_scores, final], dim=1), K).indices  # (B, K)
        done = _gather_beams(torch.cat([done, cand], dim=1), best)
        done_scores = _gather_beams(torch.cat([done_scores, final], dim=1), best)
        cand_len = torch.full((B, n_cand), step + 1, dtype=torch.long, device=idx.device)
        done_len = _gather_beams(torch.cat([done_len, cand_len], dim=1), best)
        is_done = _gather_beams(torch.cat([is_done, just_done], dim=1), best)

        # Could the best running hypothesis still beat the worst finished one?
        best_len = max_new_tokens if early_stopping == "never" and length_penalty > 0 else step + 1
        best_possible = running_scores[:, :1] / (best_len ** length_penalty)  # (B, 1)
        worst_done = torch.where(is_done, done_scores.min(dim=1, keepdim=True).values, _NEG)  # (B, K)
        can_improve &= (best_possible > worst_done).any(dim=-1, keepdim=True)
        if not can_improve.any() or (early_stopping is True and is_done.all()) or ended.all():
            break

    out_len = T0 + int(done_len[:, 0].max())
    return done[:, 0, :out_len]


# ----------------------------------------------------------------- the chapter's sampling widget

def sampling_plot(logits: Tensor, temperature: float = 1.0, top_k: int | None = None,
                  top_p: float | None = None, *, labels: Sequence[str] | None = None, n_show: int = 20):
    """Bar chart of the next-token distribution before and after temperature, top-k and top-p.

    ``logits`` (V,) or (1, V) are one position's scores; ``labels`` (V strings, e.g. the
    decoded tokens) name the bars, token ids otherwise. The ``n_show`` most likely
    tokens are drawn, most likely first: softmax(logits) next to the distribution
    that sampling draws from. Returns the Matplotlib ``Figure``; with
    ``functools.partial(sampling_plot, logits, labels=...)`` it fits
    ``llmcourse.widgets.interact`` (controls ``temperature``, ``top_k``, ``top_p``).
    """
    import matplotlib.pyplot as plt

    if isinstance(logits, Tensor) and logits.ndim == 1:
        logits = logits[None, :]
    _check_logits(logits)
    if logits.shape[0] != 1:
        raise ValueError(f"sampling_plot shows one distribution: logits must be (V,) or (1, V), "
                         f"got {tuple(logits.shape)}")
    V = logits.shape[1]
    if labels is not None and len(labels) != V:
        raise ValueError(f"labels must name all V={V} tokens, got {len(labels)}")
    _check_int(n_show, "n_show", 1)

    logits = logits.detach().float().cpu()
    before = logits.softmax(dim=-1)[0]  # (V,)
    after = process_logits(logits, temperature=temperature, top_k=top_k, top_p=top_p).softmax(dim=-1)[0]
    shown = torch.argsort(before, descending=True, stable=True)[:n_show]  # most likely first
    names = [str(labels[i]) if labels is not None else str(int(i)) for i in shown]

    fig, ax = plt.subplots(figsize=(max(6.4, 0.42 * len(shown)), 3.6))
    x = torch.arange(len(shown)).numpy()
    ax.bar(x - 0.2, before[shown].numpy(), width=0.4, label="softmax(logits)")
    ax.bar(x + 0.2, after[shown].numpy(), width=0.4, label="after filtering: what sampling draws from")
    ax.set_xticks(x, names, rotation=60 if max(map(len, names)) > 3 else 0)
    ax.set_ylabel("probability")
    k = "off" if top_k is None else top_k
    p = "off" if top_p is None else f"{top_p:g}"
    ax.set_title(f"temperature {temperature:g}, top-k {k}, top-p {p}: "
                 f"{int((after > 0).sum())} of {V} tokens can be drawn")
    ax.legend()
    return fig
