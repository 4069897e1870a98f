"""Rollouts, PPO, GRPO and DPO training loops (llmcourse.rollouts, .ppo, .grpo, .dpo_training) on tiny GPTs,
and trl's DPOTrainer next to the course's DPO loss on the same batch."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from llmcourse import chat
from llmcourse.dpo_training import implicit_reward_accuracy, pair_batch, train_dpo, trl_first_step
from llmcourse.gpt import GPT, GPTConfig
from llmcourse.grpo import GRPOConfig, train_grpo
from llmcourse.instructions import make_split
from llmcourse.ppo import PPOConfig, last_token_dones, train_ppo
from llmcourse.pretrained import load_tokenizer
from llmcourse.reward_model import make_preference_pairs
from llmcourse.rollouts import decode_responses, left_pad, response_logprobs, sample

EOS, PAD, TARGET = 1, 0, 3  # toy vocabulary: 0 pad, 1 end of reply; the toy reward likes token 3


def toy_gpt(seed: int = 0, vocab_size: int = 12) -> GPT:
    torch.manual_seed(seed)
    block = 32 if vocab_size < 100 else 128  # the chat prompts of the course tokenizer need room
    return GPT(GPTConfig.tiny(vocab_size=vocab_size, block_size=block, n_layer=1, n_embd=32)).eval()


def toy_prompts(n: int = 16) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return [torch.randint(2, 12, (int(torch.randint(1, 6, (1,), generator=gen)),), generator=gen) for _ in range(n)]


def target_fraction(ro, _rows) -> torch.Tensor:
    """Toy reward: the fraction of reply tokens equal to TARGET."""
    hits = (ro.response_ids == TARGET) & ro.response_mask
    return hits.sum(1).float() / ro.response_mask.sum(1).clamp(min=1)


def test_left_pad_known_answer():
    ids, pos, doc = left_pad([torch.tensor([5, 6, 7]), torch.tensor([8])], 0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]]
    assert pos.tolist() == [[0, 1, 2], [0, 0, 0]]
    assert doc.tolist() == [[0, 0, 0], [-1, -1, 0]]
    with pytest.raises(ValueError):
        left_pad([], 0)


def test_sampled_logprobs_match_a_recomputation_and_the_unpadded_prompt(one_thread):
    model, prompts = toy_gpt(), toy_prompts(6)
    ro = sample(model, prompts, 5, eos_id=EOS, pad_id=PAD, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(response_logprobs(model, ro), ro.logprobs, rtol=1e-5, atol=1e-5)
    for i, p in enumerate(prompts):  # row i alone, without any padding, gives the same log-probs
        n = int(ro.lengths[i])
        full = torch.cat([p, ro.response_ids[i, :n]])[None]
        logp = torch.log_softmax(model(full)[0][0, len(p) - 1:-1], -1).gather(1, full[0, len(p):, None])[:, 0]
        torch.testing.assert_close(logp, ro.logprobs[i, :n], rtol=1e-5, atol=1e-5)


def test_sample_masks_everything_after_the_first_eos(one_thread):
    ro = sample(toy_gpt(1), toy_prompts(16), 8, eos_id=EOS, pad_id=PAD, generator=torch.Generator().manual_seed(0))
    for ids, mask in zip(ro.response_ids, ro.response_mask):
        n = int(mask.sum())
        assert mask[:n].all() and not mask[n:].any()
        assert (ids[:n - 1] != EOS).all() and (n == mask.numel() or ids[n - 1] == EOS)
        assert (ids[n:] == EOS).all()
    assert last_token_dones(ro.response_mask).sum(1).tolist() == [1] * 16


def test_batched_greedy_replies_equal_chat_reply_one_by_one(one_thread):
    tok = load_tokenizer()
    model = toy_gpt(0, vocab_size=tok.vocab_size)
    examples = make_split("validation", 6)
    prompts = [chat.encode_prompt(chat.example_to_messages(e)[:-1], tok) for e in examples]
    eos, pad = tok.special_tokens["<|eos|>"], tok.special_tokens["<|pad|>"]
    ro = sample(model, prompts, 6, eos_id=eos, pad_id=pad, greedy=True)
    assert decode_responses(ro, tok, eos) == [chat.reply(model, tok, chat.example_to_messages(e)[:-1], 6)
                                              for e in examples]


def test_sample_rejects_bad_input():
    with pytest.raises(ValueError, match="block_size"):
        sample(toy_gpt(), [torch.arange(2, 12)], 30, eos_id=EOS, pad_id=PAD)
    with pytest.raises(ValueError, match="max_new_tokens"):
        sample(toy_gpt(), [torch.tensor([2])], 0, eos_id=EOS, pad_id=PAD)
    with pytest.raises(ValueError):
        PPOConfig(batch_size=10, minibatches=4)
    with pytest.raises(ValueError):
        GRPOConfig(group_size=1)


PPO_TOY = PPOConfig(steps=12, batch_size=16, minibatches=2, epochs=2, max_new_tokens=6, lr=3e-3, value_lr=3e-3)


def test_ppo_raises_the_reward_on_a_toy_task(one_thread):
    policy, reference = toy_gpt(), toy_gpt()
    hist = train_ppo(policy, reference, toy_prompts(), target_fraction, dataclasses.replace(PPO_TOY, beta=0.0),
                     eos_id=EOS, pad_id=PAD, show_progress=False)
    assert hist["kl"][0] == pytest.approx(0.0, abs=1e-5)  # the first batch comes from pi = pi_ref
    assert sum(hist["score"][-3:]) / 3 > sum(hist["score"][:3]) / 3 + 0.1, hist["score"]
    assert all(torch.equal(a, b) for a, b in zip(reference.parameters(), toy_gpt().parameters()))


def test_ppo_kl_penalty_keeps_the_policy_near_the_reference(one_thread):
    kls = {}
    for beta in (0.0, 1.0):
        hist = train_ppo(toy_gpt(), toy_gpt(), toy_prompts(), target_fraction, dataclasses.replace(PPO_TOY, beta=beta),
                         eos_id=EOS, pad_id=PAD, show_progress=False)
        kls[beta] = sum(hist["kl"][-4:]) / 4
    assert kls[1.0] < 0.5 * kls[0.0], kls


def test_grpo_raises_a_verifiable_reward_on_a_toy_task(one_thread):
    policy = toy_gpt()
    cfg = GRPOConfig(steps=15, prompts_per_step=4, group_size=8, max_new_tokens=4, lr=3e-3, beta=0.0)
    hist = train_grpo(policy, toy_gpt(), toy_prompts(),
                      lambda ro, rows: (target_fraction(ro, rows) > 0).float(), cfg, eos_id=EOS, pad_id=PAD,
                      show_progress=False)
    assert sum(hist["reward"][-3:]) / 3 > sum(hist["reward"][:3]) / 3 + 0.15, hist["reward"]


def test_grpo_learns_nothing_when_every_reply_gets_the_same_reward(one_thread):
    policy = toy_gpt()
    cfg = GRPOConfig(steps=3, prompts_per_step=2, group_size=4, max_new_tokens=4, lr=1e-2, beta=0.0)
    hist = train_grpo(policy, toy_gpt(), toy_prompts(), lambda ro, rows: torch.ones(len(rows)), cfg,
                      eos_id=EOS, pad_id=PAD, show_progress=False)
    assert hist["signal_groups"] == [0.0, 0.0, 0.0]
    assert all(torch.equal(a, b) for a, b in zip(policy.parameters(), toy_gpt().parameters()))


def test_pair_batch_labels_exactly_the_replies():
    tok = load_tokenizer()
    pairs = make_preference_pairs(3, 0)
    ids, labels = pair_batch(pairs, tok, 2047)
    assert ids.shape == labels.shape and ids.shape[0] == 6
    for row, (p, which) in enumerate([(p, w) for w in ("chosen", "rejected") for p in pairs]):
        want = chat.build_labels(p.messages(which), tok)[1]
        assert labels[row, :len(want)].tolist() == want.tolist() and (labels[row, len(want):] == -100).all()


def test_dpo_ranks_the_training_pairs_after_a_few_steps(one_thread):
    tok = load_tokenizer()
    policy, reference = toy_gpt(0, tok.vocab_size), toy_gpt(0, tok.vocab_size)
    pairs = make_preference_pairs(16, 0, kinds=("correct",))
    assert implicit_reward_accuracy(policy, reference, pairs, tok, 2047)["all"] == 0.0  # pi = pi_ref: all ties
    hist = train_dpo(policy, reference, pairs, tok, 2047, steps=15, batch_size=8, lr=1e-3, show_progress=False)
    assert hist["loss"][0] == pytest.approx(0.6931, abs=1e-4)
    assert implicit_reward_accuracy(policy, reference, pairs, tok, 2047)["all"] >= 0.9


def test_course_dpo_loss_matches_trl_dpotrainer_first_step(one_thread, tmp_path):
    pytest.importorskip("trl")
    hf_tok = load_tokenizer("hf")
    policy, reference = toy_gpt(0, len(hf_tok)), toy_gpt(1, len(hf_tok))
    with torch.no_grad():
        policy.wte.weight.mul_(30)  # sharper next-token distributions: log-probabilities far from the reference's
    got = trl_first_step(policy, reference, make_preference_pairs(4, 0), hf_tok, beta=0.1, output_dir=str(tmp_path))
    assert got["same_ids_as_build_labels"], got
    assert got["rows"] == 8
    assert abs(got["course_loss"] - 0.6931) > 0.01  # two different models: not the trivial log 2
    assert got["course_loss"] == pytest.approx(got["trl_loss"], abs=1e-5), got
    assert got["course_margin"] == pytest.approx(got["trl_margin"], abs=1e-5), got


def test_recipe_reply_rows_unpad_the_prompt_and_end_every_reply_with_eos(one_thread):
    from llmcourse.recipes.rlhf import reply_rows

    prompts = toy_prompts(8)
    ro = sample(toy_gpt(2), prompts, 3, eos_id=EOS, pad_id=PAD, generator=torch.Generator().manual_seed(0))
    rows = reply_rows(ro, EOS)
    cut_off = 0
    for i, (p, row) in enumerate(zip(prompts, rows)):
        kept = ro.response_ids[i][ro.response_mask[i]].tolist()
        cut_off += kept[-1] != EOS
        assert row.tolist() == p.tolist() + kept + ([] if kept[-1] == EOS else [EOS])
    assert cut_off, "the toy rollout should include replies cut off by max_new_tokens"
