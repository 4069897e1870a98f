"""Small convolutional networks for the course's 8x8 digits, and a residual block.

* ``DigitsCNN`` - two convolution stages (3x3 conv, ReLU, 2x2 max-pool)
  and a linear classifier: the LeNet recipe (LeCun et al. 1989, 1998) at toy
  scale. 6,090 parameters (width 16); it reaches about 98 % test accuracy on
  scikit-learn's digits in a few seconds on a CPU.
* ``ResidualBlock`` - ``relu(x + F(x))`` with ``F`` two 3x3 convolutions with
  batch normalisation, the building block of ResNet (He et al. 2016, CVPR).
* ``PreActResidualBlock`` - ``x + F(x)`` with ``F`` = BN-ReLU-conv-BN-ReLU-conv,
  the "pre-activation" block of He et al. (2016, ECCV, "Identity mappings in
  deep residual networks"): nothing follows the addition, so the identity path
  passes the gradient through unchanged. In ``ResidualBlock`` the ReLU after
  the sum gates it.
* ``DigitsResNet`` - a stem convolution, residual blocks and global average
  pooling, to compare with ``DigitsCNN``.
* ``LeNet5`` - the layer sizes of LeNet-5 (LeCun et al. 1998) for 32x32 inputs,
  with modern ReLU and max-pooling, used to count parameters.

Shapes: every model maps images (N, C_in, H, W) to logits (N, n_classes).

Taught in: book/04-cnn
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def _check_images(x: Tensor, channels: int, name: str) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} expects a torch.Tensor, got {type(x).__name__}")
    if x.ndim != 4 or x.shape[1] != channels:
        raise ValueError(f"{name} expects images of shape (N, {channels}, H, W), got {tuple(x.shape)}")


class DigitsCNN(nn.Module):
    """(conv3x3, ReLU, 2x2 max-pool) twice, then flatten, dropout and a linear layer.

    Shapes: (N, in_channels, 8, 8) -> (N, n_classes). With ``width=16`` the
    feature maps are (N, 16, 8, 8) -> (N, 16, 4, 4) -> (N, 32, 4, 4) -> (N, 32, 2, 2).
    ``dropout`` is applied before the classifier.
    """

    def __init__(self, in_channels: int = 1, n_classes: int = 10, width: int = 16, image_size: int = 8,
                 dropout: float = 0.1):
        super().__init__()
        if image_size % 4 != 0:
            raise ValueError(f"image_size must be a multiple of 4 (two 2x2 poolings), got {image_size}")
        self.in_channels = in_channels
        w1, w2 = width, 2 * width
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, w1, kernel_size=3, padding=1), nn.ReLU(),   # (N, w1, H, W)
            nn.MaxPool2d(2),                                                   # (N, w1, H/2, W/2)
            nn.Conv2d(w1, w2, kernel_size=3, padding=1), nn.ReLU(),            # (N, w2, H/2, W/2)
            nn.MaxPool2d(2),                                                   # (N, w2, H/4, W/4)
        )
        side = image_size // 4
        self.classifier = nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(w2 * side * side, n_classes))

    def forward(self, x: Tensor) -> Tensor:
        _check_images(x, self.in_channels, "DigitsCNN")
        return self.classifier(self.features(x))

    def feature_maps(self, x: Tensor) -> list[tuple[str, Tensor]]:
        """Outputs of every ReLU and pooling layer, as (name, (N, C, H, W) tensor) pairs, without gradients."""
        _check_images(x, self.in_channels, "DigitsCNN")
        maps = []
        with torch.no_grad():
            h = x
            conv_i = 0
            for layer in self.features:
                h = layer(h)
                if isinstance(layer, nn.Conv2d):
                    conv_i += 1
                elif isinstance(layer, nn.ReLU):
                    maps.append((f"conv{conv_i}+relu", h.clone()))
                elif isinstance(layer, nn.MaxPool2d):
                    maps.append(("maxpool", h.clone()))
        return maps


class ResidualBlock(nn.Module):
    """``relu(x + F(x))`` with ``F`` = conv3x3-BN-ReLU-conv3x3-BN (He et al. 2016, "basic block").

    The two convolutions keep the shape (N, C, H, W), so ``x`` can be added to
    ``F(x)`` without a projection. The gradient that reaches ``x`` along the
    identity path is the output gradient times ``1[x + F(x) > 0]``: the ReLU
    after the sum zeroes it wherever the sum is negative. ``PreActResidualBlock``
    moves that ReLU into ``F`` so that the identity path is clean.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, kernel_size=3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, kernel_size=3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: Tensor) -> Tensor:
        residual = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        return torch.relu(x + residual)


class PreActResidualBlock(nn.Module):
    """``x + F(x)`` with ``F`` = BN-ReLU-conv3x3-BN-ReLU-conv3x3 (He et al. 2016, ECCV, "pre-activation").

    Shapes: (N, C, H, W) -> (N, C, H, W). Nothing is applied after the sum, so
    d(output)/d(x) = I + dF/dx: the identity path carries the gradient back
    unchanged, through any number of stacked blocks.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv1 = nn.Conv2d(channels, channels, kernel_size=3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, kernel_size=3, padding=1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        residual = self.conv2(torch.relu(self.bn2(self.conv1(torch.relu(self.bn1(x))))))
        return x + residual


class DigitsResNet(nn.Module):
    """A stem conv3x3, ``n_blocks`` residual blocks, global average pooling and a linear layer.

    Shapes: (N, in_channels, H, W) -> (N, n_classes), for any H, W.
    """

    def __init__(self, in_channels: int = 1, n_classes: int = 10, width: int = 32, n_blocks: int = 2):
        super().__init__()
        self.in_channels = in_channels
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, kernel_size=3, padding=1, bias=False),
                                  nn.BatchNorm2d(width), nn.ReLU())
        self.blocks = nn.Sequential(*[ResidualBlock(width) for _ in range(n_blocks)])
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, n_classes))

    def forward(self, x: Tensor) -> Tensor:
        _check_images(x, self.in_channels, "DigitsResNet")
        return self.head(self.blocks(self.stem(x)))


class LeNet5(nn.Module):
    """LeNet-5's layer sizes (LeCun et al. 1998): (N, 1, 32, 32) -> (N, 10).

    conv5x5 (6 maps, 28x28) - pool (14x14) - conv5x5 (16 maps, 10x10) - pool (5x5) -
    fully connected 120 - 84 - 10. The original used scaled tanh units, trainable
    average-style subsampling, a partial connection table for the second
    convolution and RBF output units; this version uses ReLU, max-pooling, full
    connections and a linear output, so it has 61,706 parameters instead of 60,000-odd.
    """

    def __init__(self, n_classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 6, kernel_size=5), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(6, 16, kernel_size=5), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(16 * 5 * 5, 120), nn.ReLU(),
                                        nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, n_classes))

    def forward(self, x: Tensor) -> Tensor:
        _check_images(x, 1, "LeNet5")
        return self.classifier(self.features(x))
