"""The course's small CNNs: shapes, parameter counts, a residual block, and that DigitsCNN learns."""

import pytest
import torch

from llmcourse.cnn import DigitsCNN, DigitsResNet, LeNet5, PreActResidualBlock, ResidualBlock
from llmcourse.datasets import load_digits
from llmcourse.training import count_parameters, predict_logits, train_classifier

pytestmark = pytest.mark.ch04


def test_shapes_and_feature_maps():
    torch.manual_seed(0)
    m = DigitsCNN()
    x = torch.randn(5, 1, 8, 8)
    assert m(x).shape == (5, 10)
    maps = m.feature_maps(x)
    assert [name for name, _ in maps] == ["conv1+relu", "maxpool", "conv2+relu", "maxpool"]
    assert [t.shape[1:] for _, t in maps] == [(16, 8, 8), (16, 4, 4), (32, 4, 4), (32, 2, 2)]
    assert DigitsResNet()(torch.randn(2, 1, 8, 8)).shape == (2, 10)
    assert LeNet5()(torch.randn(2, 1, 32, 32)).shape == (2, 10)
    assert count_parameters(LeNet5()) == 61_706


def test_residual_block_is_identity_plus_correction():
    torch.manual_seed(0)
    block = ResidualBlock(4).eval()
    for bn in (block.bn1, block.bn2):
        torch.nn.init.zeros_(bn.weight)  # F(x) = 0
    x = torch.rand(2, 4, 5, 5)  # non-negative, so relu(x + 0) == x
    torch.testing.assert_close(block(x), x)


def test_identity_path_gradient_is_gated_by_relu_unless_pre_activation():
    """With F = 0, d(sum of outputs)/dx is 1[x > 0] for relu(x + F(x)) but exactly 1 for x + F(x)."""
    torch.manual_seed(0)
    post, pre = ResidualBlock(4).eval(), PreActResidualBlock(4).eval()
    torch.nn.init.zeros_(post.bn2.weight)  # F(x) = 0 in the post-activation block
    torch.nn.init.zeros_(pre.conv2.weight)  # F(x) = 0 in the pre-activation block
    x = torch.randn(2, 4, 5, 5, dtype=torch.float64)
    for block, want in ((post.double(), (x > 0).double()), (pre.double(), torch.ones_like(x))):
        xg = x.clone().requires_grad_(True)
        block(xg).sum().backward()
        torch.testing.assert_close(xg.grad, want, rtol=0, atol=0)
    assert PreActResidualBlock(4)(torch.randn(2, 4, 5, 5)).shape == (2, 4, 5, 5)


def test_bad_input_shape():
    with pytest.raises(ValueError, match=r"\(N, 1, H, W\)"):
        DigitsCNN()(torch.randn(5, 64))
    with pytest.raises(ValueError, match="multiple of 4"):
        DigitsCNN(image_size=6)


def test_digits_cnn_learns():
    split = load_digits(images=True, seed=0)
    Xtr, ytr, Xte, yte = (torch.as_tensor(a) for a in split)
    torch.manual_seed(0)
    m = DigitsCNN()
    h = train_classifier(m, Xtr, ytr, Xte, yte, epochs=15, lr=3e-3, show_progress=False)
    acc = float((predict_logits(m, Xte).argmax(1) == yte).float().mean())
    assert acc == pytest.approx(h.val_acc[-1])
    assert acc >= 0.96
