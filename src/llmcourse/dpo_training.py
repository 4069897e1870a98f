"""A DPO training loop: preference pairs straight into the policy, no reward model, no sampling.

Direct Preference Optimization (Rafailov et al. 2023) starts from the KL-regularised RL objective,
whose optimum is pi*(y|x) = pi_ref(y|x) exp(r(x, y) / beta) / Z(x). Solving that for r gives
r = beta log(pi*/pi_ref) + beta log Z(x); put it into the Bradley-Terry likelihood and Z(x)
cancels, leaving a classification loss on the policy's own log-probabilities
(``llmcourse.preference.dpo_loss``). This module batches the pairs, computes the summed
log-probabilities of each reply (``sequence_logprobs``) under the policy and the frozen
reference, and runs AdamW on that loss.

Shapes: B pairs, T tokens.

Taught in: book/10-rlhf
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from llmcourse import chat
from llmcourse.gpt import GPT
from llmcourse.preference import dpo_loss, sequence_logprobs
from llmcourse.reward_model import KINDS, PreferencePair


def pair_batch(pairs: Sequence[PreferencePair], tokenizer, pad_id: int) -> tuple[Tensor, Tensor]:
    """(input_ids (2B, T), labels (2B, T)): the B chosen conversations, then the B rejected ones,
    right-padded; labels are the ids on the reply tokens (and ``<|eos|>``) and -100 elsewhere."""
    if not pairs:
        raise ValueError("need at least one pair")
    rows = [chat.build_labels(p.messages(w), tokenizer) for w in ("chosen", "rejected") for p in pairs]
    width = max(len(x) for x, _ in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), chat.IGNORE_INDEX, dtype=torch.long)
    for i, (x, y) in enumerate(rows):
        ids[i, :len(x)], labels[i, :len(y)] = x, y
    return ids, labels


def pair_logprobs(model: GPT, ids: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Summed reply log-probabilities (chosen (B,), rejected (B,)) of a :func:`pair_batch`."""
    logps = sequence_logprobs(model(ids)[0], labels)
    return logps.chunk(2)


def implicit_reward_accuracy(policy: GPT, reference: GPT, pairs: Sequence[PreferencePair], tokenizer, pad_id: int,
                             batch_size: int = 64) -> dict[str, float]:
    """How often beta log(pi/pi_ref) ranks the chosen reply above the rejected one, per kind and ``"all"``.

    (The sign does not depend on beta.) At the start, pi = pi_ref and every margin is 0: accuracy 0.
    """
    wins = []
    with torch.no_grad():
        for i in range(0, len(pairs), batch_size):
            ids, labels = pair_batch(pairs[i:i + batch_size], tokenizer, pad_id)
            pc, pr = pair_logprobs(policy, ids, labels)
            rc, rr = pair_logprobs(reference, ids, labels)
            wins += ((pc - rc) - (pr - rr) > 0).tolist()
    out = {k: float(np.mean([w for w, p in zip(wins, pairs) if p.kind == k])) for k in KINDS
           if any(p.kind == k for p in pairs)}
    out["all"] = float(np.mean(wins))
    return out


def train_dpo(policy: GPT, reference: GPT, pairs: Sequence[PreferencePair], tokenizer, pad_id: int, *,
              steps: int, batch_size: int = 16, beta: float = 0.1, lr: float = 5e-5, seed: int = 0,
              show_progress: bool = True) -> dict[str, list[float]]:
    """DPO on ``policy`` in place, ``reference`` frozen, dropout off; per-step curves of the batch's
    ``loss``, ``accuracy`` (chosen implicit reward above rejected), ``chosen_reward``, ``rejected_reward``."""
    from llmcourse.progress import progress

    if not pairs or steps < 1 or batch_size < 1:
        raise ValueError(f"need pairs, steps >= 1 and batch_size >= 1, got {len(pairs)}, {steps}, {batch_size}")
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(policy.parameters(), lr=lr, weight_decay=0.0)
    policy.eval()
    reference.eval().requires_grad_(False)
    history: dict[str, list[float]] = {k: [] for k in ("loss", "accuracy", "chosen_reward", "rejected_reward")}
    bar = progress(range(steps), desc="DPO", disable=not show_progress)
    for _ in bar:
        pick = torch.randint(len(pairs), (batch_size,), generator=gen).tolist()
        ids, labels = pair_batch([pairs[i] for i in pick], tokenizer, pad_id)
        pc, pr = pair_logprobs(policy, ids, labels)
        with torch.no_grad():
            rc, rr = pair_logprobs(reference, ids, labels)
        losses, chosen, rejected = dpo_loss(pc, pr, rc, rr, beta=beta)
        opt.zero_grad()
        losses.mean().backward()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
        opt.step()
        history["loss"].append(losses.mean().item())
        history["accuracy"].append(float((chosen > rejected).float().mean()))
        history["chosen_reward"].append(float(chosen.mean()))
        history["rejected_reward"].append(float(rejected.mean()))
        bar.set_postfix(loss=f"{history['loss'][-1]:.3f}")
    return history


def trl_first_step(policy: GPT, reference: GPT, pairs: Sequence[PreferencePair], hf_tokenizer, *,
                   beta: float = 0.1, output_dir: str) -> dict:
    """One step of ``trl.DPOTrainer`` (offline, CPU) on ``pairs`` as one batch, next to the course's loss.

    The trainer gets ``policy.to_hf()`` and, as an explicit frozen reference, ``reference.to_hf()``
    (two different models, so that the loss is not the trivial log 2), both without dropout, the
    conversational pairs and the course tokenizer with its chat template, in float32 (``DPOConfig``
    defaults to bfloat16 autocast, even on a CPU). The batch trl builds (ids, completion mask) is
    captured and fed to the course GPT, whose :func:`~llmcourse.preference.dpo_loss` on it is
    returned beside trl's logged first-step loss.
    Returns trl's and the course's loss, margin and mean chosen log-probability, whether trl's
    completion tokens equal :func:`pair_batch`'s labelled tokens, and the batch shape.
    """
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    captured: dict = {}

    class _Capture(DPOTrainer):
        def _compute_loss(self, model, inputs, return_outputs):
            captured.setdefault("inputs", {k: v.detach().clone() for k, v in inputs.items()
                                           if isinstance(v, Tensor)})
            return super()._compute_loss(model, inputs, return_outputs)

    rows = [{"prompt": [p.messages("chosen")[0]], "chosen": [p.messages("chosen")[1]],
             "rejected": [p.messages("rejected")[1]]} for p in pairs]
    args = DPOConfig(output_dir=output_dir, per_device_train_batch_size=len(pairs), max_steps=1, logging_steps=1,
                     learning_rate=1e-6, beta=beta, report_to=[], save_strategy="no", use_cpu=True, seed=0,
                     dataloader_num_workers=0, disable_tqdm=True, bf16=False)  # trl defaults to bf16
    trainer = _Capture(model=_without_dropout(policy).to_hf(), ref_model=_without_dropout(reference).to_hf().eval(),
                       args=args,
                       train_dataset=Dataset.from_list(rows), processing_class=hf_tokenizer)
    trainer.train()
    logged = next(h for h in trainer.state.log_history if "loss" in h)
    inputs = captured["inputs"]
    labels = inputs["input_ids"].masked_fill(inputs["completion_mask"] == 0, chat.IGNORE_INDEX)
    with torch.no_grad():
        pc, pr = pair_logprobs(policy.eval(), inputs["input_ids"], labels)
        rc, rr = pair_logprobs(reference.eval(), inputs["input_ids"], labels)
    losses, chosen, rejected = dpo_loss(pc, pr, rc, rr, beta=beta)
    ids, course_labels = pair_batch(pairs, hf_tokenizer, hf_tokenizer.pad_token_id or 0)
    ours = sorted(ids[i][course_labels[i] != chat.IGNORE_INDEX].tolist() for i in range(len(ids)))
    theirs = sorted(row[m != 0].tolist() for row, m in zip(inputs["input_ids"], inputs["completion_mask"]))
    same = ours == theirs  # trl shuffles the pairs, so compare the sets of replies
    return {"trl_loss": float(logged["loss"]), "course_loss": float(losses.mean()),
            "trl_margin": float(logged["rewards/margins"]), "course_margin": float((chosen - rejected).mean()),
            "trl_logps_chosen": float(logged["logps/chosen"]), "course_logps_chosen": float(pc.mean()),
            "same_ids_as_build_labels": bool(same), "rows": int(inputs["input_ids"].shape[0]),
            "tokens": int(inputs["input_ids"].shape[1])}


def _without_dropout(model: GPT) -> GPT:
    """A copy with dropout 0: trl runs its policy in training mode, and dropout would make its log-probs random."""
    import dataclasses

    out = GPT(dataclasses.replace(model.config, dropout=0.0))
    out.load_state_dict(model.state_dict())
    return out
