"""A tiny Vision Transformer (ViT): an image as a sequence of patch tokens.

Dosovitskiy et al. (2021) cut an image into P x P patches, flatten each patch,
project it linearly to a token of width C, prepend a learned ``[CLS]`` token,
add learned position embeddings, and run a Transformer *encoder* (pre-LN
blocks, bidirectional attention, no mask). The class scores are a linear layer
on the final ``[CLS]`` token. Here it is at the scale of scikit-learn's 8x8
digits, to compare with the CNN of chapter 4 (``llmcourse.cnn.DigitsCNN``).

Shapes: images (B, channels, H, W) -> patches (B, N, channels * P * P) with
N = (H / P) * (W / P) -> tokens (B, N + 1, C) -> logits (B, n_classes).

Taught in: book/06-attention-transformers
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def patchify(images: Tensor, patch_size: int) -> Tensor:
    """(B, ch, H, W) -> (B, N, ch * P * P): non-overlapping P x P patches, row by row.

    Example: a (1, 1, 4, 4) image with P = 2 gives 4 patches of 4 pixels each; patch 0 is
    the top-left 2 x 2 square, patch 1 the top-right one.
    """
    if not isinstance(images, Tensor) or images.ndim != 4:
        raise ValueError(f"images must be a tensor of shape (B, channels, H, W), got "
                         f"{tuple(getattr(images, 'shape', ()))}")
    b, ch, h, w = images.shape
    if h % patch_size or w % patch_size:
        raise ValueError(f"image size {h}x{w} is not divisible by patch_size={patch_size}")
    p = patch_size
    x = images.reshape(b, ch, h // p, p, w // p, p)  # (B, ch, H/P, P, W/P, P)
    x = x.permute(0, 2, 4, 1, 3, 5)  # (B, H/P, W/P, ch, P, P)
    return x.reshape(b, (h // p) * (w // p), ch * p * p)  # (B, N, ch*P*P)


class ViT(nn.Module):
    """Patch embedding + [CLS] + learned positions + pre-LN Transformer encoder + linear head.

    Args:
        image_size: side of the square input (8 for the digits).
        patch_size: side P of a patch; ``image_size`` must be a multiple of it.
        in_channels, n_classes: input channels and number of classes.
        n_embd, n_layer, n_head: width C, encoder blocks, attention heads.
        mlp_ratio: the feed-forward layer is ``mlp_ratio * C`` wide.
        dropout: dropout inside the encoder blocks.

    Shapes: (B, in_channels, image_size, image_size) -> logits (B, n_classes). A flat
    (B, in_channels * image_size**2) input is reshaped to an image first.
    """

    def __init__(self, image_size: int = 8, patch_size: int = 2, in_channels: int = 1, n_classes: int = 10,
                 n_embd: int = 32, n_layer: int = 2, n_head: int = 4, mlp_ratio: int = 2, dropout: float = 0.0):
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"image_size={image_size} must be a multiple of patch_size={patch_size}")
        self.image_size, self.patch_size, self.in_channels = image_size, patch_size, in_channels
        n_patches = (image_size // patch_size) ** 2
        self.patch_embed = nn.Linear(in_channels * patch_size * patch_size, n_embd)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, n_embd))
        self.pos_embed = nn.Parameter(torch.randn(1, n_patches + 1, n_embd) * 0.02)
        layer = nn.TransformerEncoderLayer(n_embd, n_head, dim_feedforward=mlp_ratio * n_embd, dropout=dropout,
                                           activation="gelu", batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, n_layer, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(n_embd)
        self.head = nn.Linear(n_embd, n_classes)

    def forward(self, images: Tensor) -> Tensor:
        """images (B, ch, H, W) or (B, ch*H*W) -> logits (B, n_classes)."""
        if images.ndim == 2:
            images = images.reshape(-1, self.in_channels, self.image_size, self.image_size)
        if images.ndim != 4 or images.shape[1:] != (self.in_channels, self.image_size, self.image_size):
            raise ValueError(f"ViT expects images of shape (B, {self.in_channels}, {self.image_size}, "
                             f"{self.image_size}), got {tuple(images.shape)}")
        tokens = self.patch_embed(patchify(images, self.patch_size))  # (B, N, C)
        cls = self.cls_token.expand(tokens.shape[0], -1, -1)  # (B, 1, C)
        x = torch.cat([cls, tokens], dim=1) + self.pos_embed  # (B, N+1, C)
        x = self.norm(self.encoder(x))
        return self.head(x[:, 0])  # the [CLS] token -> (B, n_classes)
