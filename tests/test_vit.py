"""The tiny ViT: patches in the right order, shapes, and that it learns the digits."""

from __future__ import annotations

import pytest
import torch

from llmcourse.datasets import load_digits
from llmcourse.training import train_classifier
from llmcourse.vit import ViT, patchify

pytestmark = pytest.mark.ch06


def test_patchify_known_answer():
    img = torch.arange(16.0).view(1, 1, 4, 4)
    p = patchify(img, 2)
    assert p.shape == (1, 4, 4)
    assert p[0, 0].tolist() == [0, 1, 4, 5] and p[0, 1].tolist() == [2, 3, 6, 7] and p[0, 3].tolist() == [10, 11, 14, 15]


def test_patchify_rejects_indivisible_size():
    with pytest.raises(ValueError, match="not divisible by patch_size=3"):
        patchify(torch.zeros(1, 1, 8, 8), 3)


@pytest.mark.parametrize("patch", [1, 2, 4, 8])
def test_vit_shapes(patch):
    model = ViT(patch_size=patch)
    assert model(torch.zeros(3, 1, 8, 8)).shape == (3, 10)
    assert model(torch.zeros(3, 64)).shape == (3, 10)
    with pytest.raises(ValueError, match=r"\(B, 1, 8, 8\)"):
        model(torch.zeros(3, 1, 7, 7))


def test_vit_learns_digits():
    X_tr, y_tr, X_te, y_te = load_digits(images=True, seed=0)
    torch.manual_seed(0)
    model = ViT(patch_size=4)  # 4 patches of 4x4 pixels: fast
    hist = train_classifier(model, X_tr, y_tr, X_te, y_te, epochs=5, lr=3e-3, batch_size=64, seed=0,
                            show_progress=False)
    assert hist.val_acc[-1] > 0.85, hist.val_acc
