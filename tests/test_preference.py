"""llmcourse.preference against hand-computed answers, the papers' formulas, transformers and trl 1.16.

trl has no DPO or reward-model loss function to import: the losses sit inside
``DPOTrainer._compute_loss`` and ``RewardTrainer.compute_loss``. The checks' references call those
methods with a stand-in trainer (``autograder.checks._ch10_references``); here the stand-in route
is compared with a real ``DPOTrainer`` built on a tiny GPT-2, and the course's functions with both.
"""

from __future__ import annotations

import math
import os
import tempfile

import pytest
import torch
import torch.nn.functional as F

from autograder.checks import _ch10_references as trl_ref
from llmcourse import preference as pref

# ----------------------------------------------------------------- Bradley-Terry


def test_bradley_terry_known_answer():
    """Equal rewards: P = 1/2, loss log 2; a margin of 2: P = sigma(2) = 0.8808, loss log(1 + e^-2) = 0.1269."""
    c, r = torch.tensor([0.0, 2.0], dtype=torch.float64), torch.tensor([0.0, 0.0], dtype=torch.float64)
    torch.testing.assert_close(pref.bradley_terry_probability(c, r), torch.tensor([0.5, 0.880797077977882],
                                                                                  dtype=torch.float64))
    torch.testing.assert_close(pref.bradley_terry_loss(c, r, reduction="none"),
                               torch.tensor([math.log(2), math.log1p(math.exp(-2))], dtype=torch.float64))


def test_bradley_terry_loss_matches_trl_reward_trainer_with_and_without_margin():
    g = torch.Generator().manual_seed(0)
    c, r = 3 * torch.randn(16, generator=g, dtype=torch.float64), 3 * torch.randn(16, generator=g, dtype=torch.float64)
    torch.testing.assert_close(pref.bradley_terry_loss(c, r), trl_ref.trl_reward_loss(c, r))
    m = torch.rand(16, generator=g, dtype=torch.float64)
    torch.testing.assert_close(pref.bradley_terry_loss(c, r, margin=m), trl_ref.trl_reward_loss(c, r, m))


def test_bradley_terry_loss_is_stable_and_its_gradient_is_one_minus_p():
    c = torch.tensor([5000.0, -5000.0, 1.0], requires_grad=True)
    r = torch.zeros(3)
    loss = pref.bradley_terry_loss(c, r, reduction="none")
    torch.testing.assert_close(loss.detach(), torch.tensor([0.0, 5000.0, math.log1p(math.exp(-1))]))
    loss.sum().backward()
    torch.testing.assert_close(c.grad, -(1 - torch.sigmoid(c.detach())))


# ----------------------------------------------------------------- sequence log-probabilities


def test_sequence_logprobs_known_answer_and_the_shift():
    """Uniform logits over V = 4: every scored token has log-prob -log 4; labels[:, 0] is never scored."""
    logits = torch.zeros(2, 4, 4, dtype=torch.float64)
    labels = torch.tensor([[1, 2, 3, 0], [-100, -100, 3, -100]])
    torch.testing.assert_close(pref.sequence_logprobs(logits, labels), torch.tensor([-3, -1], dtype=torch.float64)
                               * math.log(4))
    logits[0, 0, 2] = 10.0  # position 0 predicts token 1 of the labels (= 2): now almost certain
    got = pref.sequence_logprobs(logits, labels, average=True)
    torch.testing.assert_close(got[0], (F.log_softmax(logits[0, 0], -1)[2] - 2 * math.log(4)) / 3)
    assert pref.sequence_logprobs(logits, torch.full((2, 4), -100)).eq(0).all()


def test_sequence_logprobs_matches_the_hf_causal_lm_loss_and_trl_selective_log_softmax():
    from transformers import GPT2Config, GPT2LMHeadModel
    from trl.trainer.utils import selective_log_softmax

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=17, n_positions=16, n_embd=16, n_layer=1, n_head=2)).eval()
    ids = torch.randint(0, 17, (1, 9))
    labels = ids.clone()
    labels[0, :3] = -100  # the prompt does not count
    with torch.no_grad():
        out = model(ids, labels=labels)
    torch.testing.assert_close(pref.sequence_logprobs(out.logits, labels, average=True), -out.loss.reshape(1))
    per_token = selective_log_softmax(out.logits[:, :-1], ids[:, 1:])  # trl's shift: logits[:-1] score ids[1:]
    torch.testing.assert_close(pref.sequence_logprobs(out.logits, labels), per_token[:, 2:].sum(1, keepdim=False))


@pytest.mark.parametrize("bad, match", [
    (dict(labels=torch.zeros(2, 4, dtype=torch.long)), r"labels must be integer ids of shape \(2, 3\)"),
    (dict(labels=torch.full((2, 3), 7)), r"labels must be token ids in \[0, 5\)"),
    (dict(logits=torch.zeros(2, 3)), r"logits must be a floating-point \(B, T, V\) tensor"),
])
def test_sequence_logprobs_rejects_bad_input_clearly(bad, match):
    args = dict(logits=torch.zeros(2, 3, 5), labels=torch.zeros(2, 3, dtype=torch.long)) | bad
    with pytest.raises((ValueError, TypeError), match=match):
        pref.sequence_logprobs(**args)


# ----------------------------------------------------------------- DPO


def test_dpo_loss_known_answer():
    """beta 0.1, log-ratios +1 (chosen) and -1 (rejected): h = 0.2, loss log(1 + e^-0.2) = 0.598139."""
    losses, c, r = pref.dpo_loss(*(torch.tensor([x], dtype=torch.float64) for x in (-10.0, -12.0, -11.0, -11.0)))
    torch.testing.assert_close(losses, torch.tensor([math.log1p(math.exp(-0.2))], dtype=torch.float64))
    torch.testing.assert_close((c, r), (torch.tensor([0.1], dtype=torch.float64), torch.tensor([-0.1],
                                                                                                dtype=torch.float64)))


def test_dpo_loss_is_the_papers_formula_and_log_2_at_the_start():
    """Rafailov et al. 2023, eq. 7: -log sigma(beta log(pi(y_w)/pi_ref(y_w)) - beta log(pi(y_l)/pi_ref(y_l)))."""
    g = torch.Generator().manual_seed(1)
    pc, pr, rc, rr = (-50 * torch.rand(8, generator=g, dtype=torch.float64) for _ in range(4))
    want = -torch.log(torch.sigmoid(0.3 * ((pc - rc) - (pr - rr))))
    torch.testing.assert_close(pref.dpo_loss(pc, pr, rc, rr, 0.3)[0], want)
    torch.testing.assert_close(pref.dpo_loss(pc, pr, pc, pr)[0], torch.full((8,), math.log(2), dtype=torch.float64))
    smooth = pref.dpo_loss(pc, pr, rc, rr, 0.3, label_smoothing=0.1)[0]
    torch.testing.assert_close(smooth, 0.9 * want - 0.1 * torch.log(torch.sigmoid(-0.3 * ((pc - rc) - (pr - rr)))))


def test_dpo_loss_matches_trl_dpo_trainer_loss_code():
    g = torch.Generator().manual_seed(2)
    pc, pr, rc, rr = (-100 * torch.rand(6, generator=g, dtype=torch.float64) for _ in range(4))
    for beta in (0.1, 0.5):
        for got, want in zip(pref.dpo_loss(pc, pr, rc, rr, beta), trl_ref.trl_dpo(pc, pr, rc, rr, beta)):
            torch.testing.assert_close(got, want)
    # cDPO: trl 1.16 keeps the label-smoothed form only in its "aot" loss, which sorts the batch: one pair at a time
    got = pref.dpo_loss(pc, pr, rc, rr, 0.2, label_smoothing=0.15)[0]
    torch.testing.assert_close(got, trl_ref.trl_dpo(pc, pr, rc, rr, 0.2, loss_type="aot", label_smoothing=0.15)[0])


def test_dpo_gradient_raises_the_chosen_and_lowers_the_rejected_log_prob():
    pc, pr = torch.tensor([-5.0], requires_grad=True), torch.tensor([-5.0], requires_grad=True)
    pref.dpo_loss(pc, pr, torch.tensor([-5.0]), torch.tensor([-5.0]), beta=0.1)[0].sum().backward()
    torch.testing.assert_close((pc.grad, pr.grad), (torch.tensor([-0.05]), torch.tensor([0.05])))  # -beta/2, +beta/2


def _tiny_dpo_trainer(beta):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from datasets import Dataset
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast
    from trl import DPOConfig, DPOTrainer

    words = ["<pad>", "<eos>"] + list("abcdefghijklmnop")
    tk = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<pad>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", eos_token="<eos>")
    config = GPT2Config(vocab_size=len(words), n_positions=32, n_embd=16, n_layer=1, n_head=2, bos_token_id=1,
                        eos_token_id=1, pad_token_id=0)
    torch.manual_seed(0)
    model, ref_model = GPT2LMHeadModel(config), GPT2LMHeadModel(config)  # different weights: the reference matters
    data = Dataset.from_dict({"prompt": ["a b c", "d e", "f g h i"], "chosen": [" j k", " l", " m n o"],
                              "rejected": [" p", " a b c", " d"]})
    args = DPOConfig(output_dir=tempfile.mkdtemp(), beta=beta, report_to=[], per_device_train_batch_size=3,
                     use_cpu=True, disable_tqdm=True)
    return DPOTrainer(model=model, ref_model=ref_model, args=args, train_dataset=data, processing_class=tokenizer)


def test_dpo_loss_on_sequence_logprobs_equals_a_real_trl_dpo_trainer(one_thread):
    """A real DPOTrainer on a tiny random GPT-2: its loss = the course's DPO on the course's sequence log-probs."""
    trainer = _tiny_dpo_trainer(beta=0.3)
    batch = next(iter(trainer.get_train_dataloader()))
    trainer.model.eval()
    with torch.no_grad():
        want = trainer.compute_loss(trainer.model, dict(batch))
        labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)
        logps = [pref.sequence_logprobs(m(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits,
                                        labels) for m in (trainer.model, trainer.ref_model)]
    (pc, pr), (rc, rr) = logps[0].chunk(2), logps[1].chunk(2)  # trl's batch is [chosen..., rejected...]
    losses, chosen, rejected = pref.dpo_loss(pc, pr, rc, rr, beta=0.3)
    torch.testing.assert_close(losses.mean(), want, rtol=1e-5, atol=1e-6)
    metrics = trainer._metrics["eval"]
    torch.testing.assert_close(chosen.mean().item(), metrics["rewards/chosen"][-1], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(rejected.mean().item(), metrics["rewards/rejected"][-1], rtol=1e-4, atol=1e-6)
    # and the stand-in route of the checks gives the same losses on the same log-probabilities
    torch.testing.assert_close(trl_ref.trl_dpo(pc, pr, rc, rr, 0.3)[0].mean(), want.double(), rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------- the closed form behind DPO


def test_kl_regularized_optimum_maximises_the_objective_and_gives_dpo_rewards():
    g = torch.Generator().manual_seed(3)
    ref_lp = torch.log_softmax(torch.randn(7, generator=g, dtype=torch.float64), 0)
    reward, beta = torch.rand(7, generator=g, dtype=torch.float64), 0.2
    star = pref.kl_regularized_optimum(ref_lp, reward, beta)

    def objective(lp):
        return float((lp.exp() * (reward - beta * (lp - ref_lp))).sum())

    best = objective(star)
    for _ in range(50):
        other = torch.log_softmax(star + 0.3 * torch.randn(7, generator=g, dtype=torch.float64), 0)
        assert objective(other) < best
    implied = beta * (star - ref_lp)  # DPO's implicit reward: r up to a constant (beta log Z)
    torch.testing.assert_close(implied - implied.mean(), reward - reward.mean())
