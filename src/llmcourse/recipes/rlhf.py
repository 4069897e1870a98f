"""The runs chapter 10 shows: a reward model, PPO at three KL weights, GRPO, SFT vs RL, DPO, and trl's DPO.

Run ``python -m llmcourse.recipes.rlhf`` (about 10 minutes on one CPU thread). Everything starts
from the course's SFT model (``load_base(name="sft")``, chapter 9), which is also the frozen
reference of every KL term. It writes ``book/10-rlhf/rlhf_runs.json``, which the chapter reads:

1. **reward model** - preference pairs from ``reward_model.make_preference_pairs`` (40 % right vs
   wrong answer, 30 % format kept vs broken, 30 % "longer is better": a biased labeller), a
   Bradley-Terry model trained on them, and its accuracy on held-out pairs of each kind;
2. **PPO** against that reward model with no, a moderate and a strong per-token KL penalty: curves of
   reward, KL, entropy, reply length and exact-match accuracy (the reward hacking experiment);
3. **GRPO** with the verifiable reward ``exact_match`` on the seven checkable task families
   (arithmetic included; the SFT model solves only a few per cent of the sums, so most of the
   learning signal comes from the word tasks), with the reward curve of each family;
4. **SFT vs RL** - the GRPO policy next to the same start fine-tuned further with SFT on the same
   number of gold answers: greedy accuracy (per family), pass@1 and pass@8 when sampling,
   entropy, KL;
5. **DPO** on the honest pairs (right vs wrong, format), and one step of ``trl.DPOTrainer`` on
   a batch next to the course's loss on the same batch.

Everything is seeded and runs on one thread; the same machine gives the same numbers.

Taught in: book/10-rlhf
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from llmcourse import chat
from llmcourse.dpo_training import implicit_reward_accuracy, train_dpo, trl_first_step
from llmcourse.gpt import GPT
from llmcourse.grpo import GRPOConfig, train_grpo
from llmcourse.instructions import exact_match, make_split, score_by_family
from llmcourse.ppo import PPOConfig, train_ppo
from llmcourse.reward_model import (
    PAIR_FAMILIES,
    RewardModel,
    make_preference_pairs,
    pad_rows,
    pair_accuracy,
    train_reward_model,
)
from llmcourse.rollouts import (
    decode_responses,
    response_logits,
    response_logprobs,
    sample,
    token_entropy,
)

OUT = Path(__file__).resolve().parents[3] / "book" / "10-rlhf" / "rlhf_runs.json"
THREADS = 1
PAIRS = {"train": 2400, "heldout": 350, "weights": (0.4, 0.3, 0.3)}
RM = {"steps": 200, "batch_size": 16, "lr": 1e-4}
PPO = PPOConfig(steps=30, batch_size=32, max_new_tokens=16, lr=5e-5)
PPO_BETAS = (0.0, 0.2, 1.0)  # no KL penalty, a moderate and a strong one
GRPO = GRPOConfig(steps=40, prompts_per_step=8, group_size=8, max_new_tokens=16, lr=1e-4)
SFT_MORE = {"lr": 1e-4}  # continued SFT: same steps, examples per step and learning rate as GRPO
EVAL = {"prompts": 40, "samples": 8}
DPO = {"steps": 60, "batch_size": 16, "beta": 0.1, "lr": 5e-5}
ARITHMETIC = ("addition", "subtraction")
VERIFIABLE = PAIR_FAMILIES  # every family exact_match can check (qa's free answers are left out)


def load_start(path: str | None):
    """(SFT model, course tokenizer, SHA-256 of the weights); ``path`` loads another GPT file instead."""
    from llmcourse.pretrained import checkpoint_file, load_base, load_tokenizer

    if path is None:
        model, tok = load_base(name="sft")
        return model, tok, hashlib.sha256(checkpoint_file("model.safetensors", "sft").read_bytes()).hexdigest()
    return GPT.load(path).eval(), load_tokenizer(), hashlib.sha256(Path(path).read_bytes()).hexdigest()


def prompts_of(examples, tok):
    return [chat.encode_prompt(chat.example_to_messages(e)[:-1], tok) for e in examples]


def reply_rows(ro, eos_id: int) -> list[torch.Tensor]:
    """Each prompt (without padding) + its reply, ending in <|eos|> (added if the reply was cut off)."""
    rows = []
    for ids, doc, m in zip(ro.input_ids, ro.doc_ids, ro.response_mask):
        prompt = ids[:ro.prompt_length][doc[:ro.prompt_length] >= 0]
        reply = ids[ro.prompt_length:][m]
        if not len(reply) or int(reply[-1]) != eos_id:
            reply = torch.cat([reply, torch.tensor([eos_id])])
        rows.append(torch.cat([prompt, reply]))
    return rows


def continue_sft(model: GPT, examples, tok, *, steps: int, batch: int, lr: float, seed: int) -> list[float]:
    """Plain SFT (next-token loss on gold replies) for ``steps`` steps of ``batch`` examples; losses."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    model.eval()
    losses = []
    for _ in range(steps):
        pick = torch.randint(len(examples), (batch,), generator=gen).tolist()
        items = [chat.build_labels(chat.example_to_messages(examples[i]), tok) for i in pick]
        b = chat.pad_batch(items, max(len(x) for x, _ in items))
        _, loss = model(b["input_ids"], chat.next_token_targets(b["labels"]))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss))
    return losses


def greedy_accuracy(model: GPT, examples, tok, max_new_tokens: int) -> float:
    """Exact-match accuracy of greedy replies (batched)."""
    eos, pad = tok.special_tokens["<|eos|>"], tok.special_tokens["<|pad|>"]
    ro = sample(model, prompts_of(examples, tok), max_new_tokens, eos_id=eos, pad_id=pad, greedy=True)
    return float(np.mean([exact_match(t, e) for t, e in zip(decode_responses(ro, tok, eos), examples)]))


def greedy_by_family(model: GPT, examples, tok, max_new_tokens: int) -> dict[str, float]:
    """Exact-match accuracy of greedy replies per family (``instructions.score_by_family``)."""
    eos, pad = tok.special_tokens["<|eos|>"], tok.special_tokens["<|pad|>"]
    ro = sample(model, prompts_of(examples, tok), max_new_tokens, eos_id=eos, pad_id=pad, greedy=True)
    return score_by_family(decode_responses(ro, tok, eos), examples)


def evaluate(model: GPT, start: GPT, examples, tok, *, samples: int, seed: int) -> dict:
    """Greedy accuracy; pass@1 and pass@k when sampling k replies at T = 1; entropy and KL to ``start``."""
    eos, pad = tok.special_tokens["<|eos|>"], tok.special_tokens["<|pad|>"]
    by_family = greedy_by_family(model, examples, tok, 12)
    prompts = [p for p in prompts_of(examples, tok) for _ in range(samples)]
    ro = sample(model, prompts, 12, eos_id=eos, pad_id=pad, generator=torch.Generator().manual_seed(seed))
    hits = np.array([exact_match(t, examples[i // samples])
                     for i, t in enumerate(decode_responses(ro, tok, eos))]).reshape(len(examples), samples)
    with torch.no_grad():
        entropy = token_entropy(response_logits(model, ro), ro.response_mask)
        kl = (ro.logprobs - response_logprobs(start, ro)).sum(1).mean()
    return {"greedy": by_family["all"], "greedy_by_family": by_family, "pass@1": float(hits.mean()),
            f"pass@{samples}": float(hits.any(1).mean()),
            "entropy": float(entropy), "kl_to_start": float(kl)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llmcourse.recipes.rlhf", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=OUT, help=f"JSON to write (default {OUT})")
    parser.add_argument("--policy", default=None, help="a GPT .safetensors to start from instead of the SFT model")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every step count (for a quick check)")
    args = parser.parse_args(argv)
    threads = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    try:
        record = run(args.policy, args.scale)
    finally:
        torch.set_num_threads(threads)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=1) + "\n")
    print(f"written to {args.out} in {record['seconds']['total']:.0f} s")
    return 0


def run(policy_path: str | None, scale: float = 1.0) -> dict:
    def n(steps: int) -> int:
        return max(2, round(steps * scale))

    timer, seconds = time.perf_counter(), {}
    start, tok, start_sha = load_start(policy_path)
    eos, pad = tok.special_tokens["<|eos|>"], tok.special_tokens["<|pad|>"]
    record: dict = {"recipe": "python -m llmcourse.recipes.rlhf", "start": policy_path or "sft",
                    "start_sha256": start_sha, "threads": THREADS}

    # 1. reward model
    torch.manual_seed(0)
    train_pairs = make_preference_pairs(PAIRS["train"], 0, split="train", weights=PAIRS["weights"])
    held = make_preference_pairs(PAIRS["heldout"], 1, split="validation", weights=PAIRS["weights"])
    rm = RewardModel(start)
    rm_hist = train_reward_model(rm, train_pairs, tok, pad, steps=n(RM["steps"]), batch_size=RM["batch_size"],
                                 lr=RM["lr"])
    record["reward_model"] = {"settings": {**RM, "pairs": PAIRS}, "curve": rm_hist,
                              "heldout_accuracy": pair_accuracy(rm, held, tok, pad),
                              "examples": [dataclasses.asdict(p) | {"example": dataclasses.asdict(p.example)}
                                           for p in held[:6]]}
    seconds["reward_model"] = time.perf_counter() - timer

    # 2. PPO against the reward model, weak and strong KL
    ppo_examples = make_split("train", families=PAIR_FAMILIES)[:800]
    ppo_prompts = prompts_of(ppo_examples, tok)

    def rm_reward(ro, pick):
        with torch.no_grad():
            return rm(*pad_rows(reply_rows(ro, eos), pad))

    def ppo_track(ro, pick):
        texts = decode_responses(ro, tok, eos)
        return {"exact_match": float(np.mean([exact_match(t, ppo_examples[i]) for t, i in zip(texts, pick)])),
                "words": float(np.mean([len(t.split()) for t in texts]))}

    record["ppo"] = {"settings": dataclasses.asdict(PPO), "runs": {}}
    for beta in PPO_BETAS:
        policy = copy_model(start)
        cfg = dataclasses.replace(PPO, beta=beta, steps=n(PPO.steps))
        hist = train_ppo(policy, start, ppo_prompts, rm_reward, cfg, eos_id=eos, pad_id=pad, track=ppo_track)
        demo = sample(policy, ppo_prompts[:4], PPO.max_new_tokens, eos_id=eos, pad_id=pad,
                      generator=torch.Generator().manual_seed(1))
        hist["samples"] = [{"prompt": chat.example_to_messages(e)[0]["content"], "reply": t}
                           for e, t in zip(ppo_examples[:4], decode_responses(demo, tok, eos))]
        record["ppo"]["runs"][str(beta)] = hist
    seconds["ppo"] = time.perf_counter() - timer - sum(seconds.values())

    # 3. GRPO with a verifiable reward; 4. SFT vs RL
    arith = make_split("train", families=VERIFIABLE)
    arith_prompts = prompts_of(arith, tok)
    held_arith = make_split("validation", families=VERIFIABLE)[:EVAL["prompts"]]
    per_family: dict[str, list[float]] = {f: [] for f in VERIFIABLE}

    def verifiable(ro, rows):
        hits = [float(exact_match(t, arith[i])) for t, i in zip(decode_responses(ro, tok, eos), rows)]
        for f in VERIFIABLE:  # this step's mean reward per family (None when the family was not drawn)
            mine = [h for h, i in zip(hits, rows) if arith[i].family == f]
            per_family[f].append(float(np.mean(mine)) if mine else None)
        return torch.tensor(hits)

    grpo_policy = copy_model(start)
    gcfg = dataclasses.replace(GRPO, steps=n(GRPO.steps))
    record["grpo"] = {"settings": dataclasses.asdict(gcfg),
                      "curve": train_grpo(grpo_policy, start, arith_prompts, verifiable, gcfg, eos_id=eos, pad_id=pad),
                      "families": VERIFIABLE}
    record["grpo"]["curve"]["per_family"] = per_family
    seconds["grpo"] = time.perf_counter() - timer - sum(seconds.values())
    sft_policy = copy_model(start)
    sft_losses = continue_sft(sft_policy, arith, tok, steps=gcfg.steps, batch=gcfg.prompts_per_step * gcfg.group_size,
                              lr=SFT_MORE["lr"], seed=0)
    record["sft_vs_rl"] = {"settings": {**SFT_MORE, **EVAL, "steps": gcfg.steps,
                                        "batch": gcfg.prompts_per_step * gcfg.group_size},
                           "sft_loss": sft_losses,
                           "models": {name: evaluate(m, start, held_arith, tok, samples=EVAL["samples"], seed=2)
                                      for name, m in (("start", start), ("grpo", grpo_policy), ("sft", sft_policy))}}
    seconds["sft_vs_rl"] = time.perf_counter() - timer - sum(seconds.values())

    # 5. DPO on the honest pairs, and trl's DPOTrainer on one batch
    honest = [p for p in train_pairs if p.kind != "length"]
    honest_held = [p for p in held if p.kind != "length"]
    dpo_policy = copy_model(start)
    dpo_hist = train_dpo(dpo_policy, start, honest, tok, pad, steps=n(DPO["steps"]), batch_size=DPO["batch_size"],
                         beta=DPO["beta"], lr=DPO["lr"])
    val = make_split("validation", families=PAIR_FAMILIES)[:70]

    from llmcourse.pretrained import load_tokenizer
    with tempfile.TemporaryDirectory() as tmp:
        trl_check = trl_first_step(dpo_policy, start, honest_held[:8], load_tokenizer("hf"), beta=DPO["beta"],
                                   output_dir=tmp)
    record["dpo"] = {"settings": DPO, "curve": dpo_hist,
                     "heldout_implicit_accuracy": implicit_reward_accuracy(dpo_policy, start, honest_held, tok, pad),
                     "exact_match_before": greedy_accuracy(start, val, tok, 16),
                     "exact_match_after": greedy_accuracy(dpo_policy, val, tok, 16), "trl": trl_check}
    seconds["dpo"] = time.perf_counter() - timer - sum(seconds.values())
    seconds["total"] = time.perf_counter() - timer
    record["seconds"] = {k: round(v, 1) for k, v in seconds.items()}
    record["made_with"] = {"python": platform.python_version(), "torch": torch.__version__,
                           "machine": platform.machine(), "date": time.strftime("%Y-%m-%d")}
    return record


def copy_model(model: GPT) -> GPT:
    """A fresh copy of ``model`` (same config and weights), in eval mode."""
    out = GPT(model.config)
    out.load_state_dict(model.state_dict())
    return out.eval()


if __name__ == "__main__":
    sys.exit(main())
