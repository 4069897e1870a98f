"""book/08-pretraining/scaling_grid.json: its schema, its arithmetic, and its first point re-run by its script."""

from __future__ import annotations

import importlib.util
import json
import math
import sys

import pytest

from tests.conftest import REPO

FOLDER = REPO / "book" / "08-pretraining"
TOLERANCE = 0.01  # nats: identical on the machine that wrote the file; other CPUs may round differently


def _grid_module():
    spec = importlib.util.spec_from_file_location("scaling_grid", FOLDER / "scaling_grid.py")
    module = sys.modules["scaling_grid"] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def recorded() -> dict:
    return json.loads((FOLDER / "scaling_grid.json").read_text())


def test_scaling_grid_json_has_the_scripts_settings_and_every_point(recorded):
    grid = _grid_module().GridConfig()
    assert set(recorded) >= {"script", "settings", "data", "points", "seconds", "made_with"}
    assert recorded["settings"]["sizes"] == [list(s) for s in grid.sizes], "sizes differ from GridConfig"
    assert recorded["settings"]["tokens"] == list(grid.tokens), "token budgets differ from GridConfig"
    for key in ("batch_size", "block_size", "lr", "min_lr", "warmup_fraction", "weight_decay", "grad_clip", "seed",
                "threads"):
        assert recorded["settings"][key] == getattr(grid, key), f"setting {key}: JSON vs GridConfig"
    points = recorded["points"]
    assert [p["index"] for p in points] == list(range(len(grid.points()))), "one record per grid point, in order"
    fields = {"n_layer", "n_embd", "n_head", "parameters", "non_embedding_parameters", "tokens", "steps", "epochs",
              "tokens_per_parameter", "compute_6nd", "compute_6nd_non_embedding", "training_flops", "val_loss_start",
              "val_loss", "train_loss_last_10", "seconds"}
    for p, (size, tokens) in zip(points, grid.points()):
        assert fields <= set(p), f"point {p['index']} lacks {sorted(fields - set(p))}"
        assert (p["n_layer"], p["n_embd"], p["n_head"]) == tuple(size)
        assert p["tokens"] == tokens == p["steps"] * grid.batch_size * grid.block_size
        assert p["compute_6nd"] == 6 * p["parameters"] * p["tokens"]
        assert p["compute_6nd_non_embedding"] == 6 * p["non_embedding_parameters"] * p["tokens"]
        assert p["tokens_per_parameter"] == pytest.approx(p["tokens"] / p["parameters"])
        assert p["epochs"] == pytest.approx(p["tokens"] / recorded["data"]["train_tokens"])
        assert p["training_flops"] > p["compute_6nd_non_embedding"]
        assert math.isfinite(p["val_loss"]) and 0 < p["val_loss"] < p["val_loss_start"]
        assert p["val_loss_start"] == pytest.approx(math.log(recorded["data"]["vocab_size"]), abs=0.05), \
            "an untrained model should start near ln V"


def test_scaling_grid_parameter_counts_match_the_models(recorded):
    from llmcourse.gpt import GPT, GPTConfig

    block = recorded["settings"]["block_size"]
    vocab = recorded["data"]["vocab_size"]
    for p in recorded["points"][:: len(recorded["settings"]["tokens"])]:  # one per size
        model = GPT(GPTConfig(vocab_size=vocab, block_size=block, n_layer=p["n_layer"], n_head=p["n_head"],
                              n_embd=p["n_embd"]))
        assert p["parameters"] == model.num_parameters()
        assert p["non_embedding_parameters"] == model.num_parameters() - (vocab + block) * p["n_embd"]


def test_scaling_grid_losses_fall_with_size_and_with_tokens(recorded):
    """What the chapter reads off the table: more parameters help at every budget, more tokens at every size."""
    n_budgets = len(recorded["settings"]["tokens"])
    loss = [[p["val_loss"] for p in recorded["points"][i:i + n_budgets]]
            for i in range(0, len(recorded["points"]), n_budgets)]  # loss[size][budget]
    for row in loss:
        assert row == sorted(row, reverse=True), f"loss should fall with tokens: {row}"
    for column in zip(*loss):
        assert list(column) == sorted(column, reverse=True), f"loss should fall with parameters: {column}"


def test_scaling_grid_first_point_reproduces(recorded):
    """The script's first (cheapest) point, re-run with its seed on one thread, gives the recorded loss."""
    module = _grid_module()
    grid = module.GridConfig()
    size, tokens = grid.points()[0]
    got = module.run_point(size, tokens, module.corpus_tokens(), grid)
    want = recorded["points"][0]
    assert got["parameters"] == want["parameters"] and got["tokens"] == want["tokens"]
    assert abs(got["val_loss"] - want["val_loss"]) < TOLERANCE, \
        f"point 0 validation loss {got['val_loss']:.6f} vs recorded {want['val_loss']:.6f} (tol {TOLERANCE})"
