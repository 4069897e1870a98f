"""Preference pairs and the Bradley-Terry reward model (llmcourse.reward_model), on tiny GPTs."""

from __future__ import annotations

import pytest
import torch

from llmcourse.gpt import GPT, GPTConfig
from llmcourse.instructions import exact_match
from llmcourse.pretrained import load_tokenizer
from llmcourse.reward_model import (
    KINDS,
    RewardModel,
    hidden_states,
    make_preference_pairs,
    pad_rows,
    pair_accuracy,
    train_reward_model,
)


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer()


def tiny_gpt(seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig.tiny(vocab_size=2048, block_size=128)).eval()


def test_preference_pairs_are_seeded_and_prefer_what_their_kind_says():
    pairs = make_preference_pairs(300, 3)
    assert pairs == make_preference_pairs(300, 3)
    assert pairs != make_preference_pairs(300, 4)
    assert {p.kind for p in pairs} == set(KINDS)
    for p in pairs:
        assert p.chosen != p.rejected, p
        if p.kind == "length":
            assert len(p.chosen.split()) > len(p.rejected.split()) and p.chosen.startswith(p.example.output)
        else:  # the chosen reply is right, the rejected one is wrong (in content or in form)
            assert exact_match(p.chosen, p.example) and not exact_match(p.rejected, p.example), p


def test_preference_pairs_follow_the_kind_weights():
    pairs = make_preference_pairs(400, 0, weights=(1, 0, 0))
    assert {p.kind for p in pairs} == {"correct"}
    only_format = make_preference_pairs(50, 0, kinds=("format",))
    assert {p.kind for p in only_format} == {"format"}


@pytest.mark.parametrize("kwargs", [dict(n=0), dict(n=5, kinds=("taste",)), dict(n=5, weights=(1, 1)),
                                    dict(n=5, weights=(-1, 1, 1)), dict(n=5, split="dev")])
def test_make_preference_pairs_rejects_bad_input(kwargs):
    with pytest.raises(ValueError):
        make_preference_pairs(seed=0, **kwargs)


def test_hidden_states_through_lm_head_equal_gpt_logits(one_thread):
    model = tiny_gpt()
    idx = torch.randint(2048, (2, 9), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(model.lm_head(hidden_states(model, idx)), model(idx)[0], rtol=1e-5, atol=1e-5)


def test_reward_model_score_ignores_right_padding(one_thread):
    rm = RewardModel(tiny_gpt())
    torch.nn.init.normal_(rm.head.weight)
    rows = [torch.tensor([5, 6, 7, 8, 9]), torch.tensor([5, 6, 7])]
    ids, lengths = pad_rows(rows, pad_id=2047)
    together = rm(ids, lengths)
    alone = torch.stack([rm(r[None], torch.tensor([len(r)])) [0] for r in rows])
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="lengths"):
        rm(ids, torch.tensor([6, 3]))


def test_reward_model_starts_neutral_and_leaves_its_backbone_untouched(one_thread, tok):
    backbone = tiny_gpt()
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    rm = RewardModel(backbone)
    pairs = make_preference_pairs(16, 0, kinds=("length",))
    assert pair_accuracy(rm, pairs, tok, 2047)["all"] == 0.0  # zero head: every pair is a tie, never a win
    train_reward_model(rm, pairs, tok, 2047, steps=2, batch_size=4, show_progress=False)
    assert all(torch.equal(before[k], v) for k, v in backbone.state_dict().items())


def test_reward_model_learns_the_length_preference(one_thread, tok):
    rm = RewardModel(tiny_gpt())
    train = make_preference_pairs(200, 0, kinds=("length",))
    held = make_preference_pairs(64, 1, split="validation", kinds=("length",))
    history = train_reward_model(rm, train, tok, 2047, steps=60, batch_size=16, lr=1e-3, show_progress=False)
    assert history["loss"][0] == pytest.approx(0.6931, abs=1e-3)  # log 2: a zero head scores both replies alike
    assert pair_accuracy(rm, held, tok, 2047)["length"] >= 0.85
