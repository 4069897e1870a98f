"""CLIP in miniature: images and texts in one embedding space, learned by contrast.

Radford et al. (2021) trained an image encoder and a text encoder together on 400 million
(image, caption) pairs from the web. In a batch of B pairs, each image should be most similar to
its own caption among the B captions, and each caption to its own image: a symmetric
cross-entropy over the (B, B) matrix of cosine similarities scaled by a learned temperature
(InfoNCE, van den Oord et al. 2018). No class labels are used; afterwards a new classifier is just
a list of class descriptions: an image gets the class whose text embedding is nearest
("zero-shot" classification).

Here the images are scikit-learn's 8x8 digits, the image encoder is chapter 6's ``vit.ViT`` (its
head projects the [CLS] token to the embedding), and the "captions" are digit names written in
a few templates ("a handwritten seven", "the digit seven", ...). The text encoder reads words:
embeddings averaged over the caption, then a small MLP.

Shapes: B batch, E embedding width, L words per caption (padded with id 0), K classes.

Taught in: book/13-using-llms/modalities
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from llmcourse.vit import ViT

DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
TRAIN_TEMPLATES = ("{}", "a {}", "the digit {}", "a handwritten {}", "an image of a {}")
HELDOUT_TEMPLATES = ("a photo of the number {}",)  # never seen in training: new words, new phrasing


def build_vocab(templates: Sequence[str] = TRAIN_TEMPLATES + HELDOUT_TEMPLATES,
                names: Sequence[str] = DIGIT_NAMES) -> dict[str, int]:
    """Word -> id for every word of every template and name; id 0 is padding."""
    words = sorted({w for t in templates for n in names for w in t.format(n).split()})
    return {w: i + 1 for i, w in enumerate(words)}


def encode_captions(captions: Sequence[str], vocab: dict[str, int]) -> Tensor:
    """Captions -> word ids (B, L), padded with 0. A word outside ``vocab`` raises ValueError."""
    if isinstance(captions, str) or not len(captions):
        raise TypeError("captions must be a non-empty sequence of strings")
    rows = []
    for c in captions:
        missing = [w for w in c.split() if w not in vocab]
        if missing or not c.split():
            raise ValueError(f"caption {c!r} has words outside the vocabulary: {missing}")
        rows.append([vocab[w] for w in c.split()])
    ids = torch.zeros(len(rows), max(map(len, rows)), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.tensor(r)
    return ids


class TextEncoder(nn.Module):
    """Word embeddings, mean over the caption's words (padding ignored), then Linear-GELU-Linear: (B, L) -> (B, E)."""

    def __init__(self, vocab_size: int, embed_dim: int = 32, width: int = 64):
        super().__init__()
        self.embed = nn.Embedding(vocab_size + 1, width, padding_idx=0)
        self.mlp = nn.Sequential(nn.Linear(width, width), nn.GELU(), nn.Linear(width, embed_dim))

    def forward(self, ids: Tensor) -> Tensor:
        if ids.dtype != torch.long or ids.ndim != 2:
            raise ValueError(f"ids must be int64 of shape (B, L), got {ids.dtype} {tuple(ids.shape)}")
        mask = (ids > 0).float()[..., None]  # (B, L, 1)
        mean = (self.embed(ids) * mask).sum(1) / mask.sum(1).clamp(min=1)  # (B, width)
        return self.mlp(mean)


class CLIP(nn.Module):
    """An image encoder (``vit.ViT`` with ``n_classes=E``), a text encoder and a learned log-temperature."""

    def __init__(self, vocab_size: int, embed_dim: int = 32):
        super().__init__()
        self.image_encoder = ViT(image_size=8, patch_size=2, n_classes=embed_dim, n_embd=32, n_layer=2, n_head=4)
        self.text_encoder = TextEncoder(vocab_size, embed_dim)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))  # CLIP's initial temperature 0.07

    def encode_image(self, images: Tensor) -> Tensor:
        """(B, 1, 8, 8) -> unit vectors (B, E)."""
        return F.normalize(self.image_encoder(images), dim=-1)

    def encode_text(self, ids: Tensor) -> Tensor:
        """(B, L) word ids -> unit vectors (B, E)."""
        return F.normalize(self.text_encoder(ids), dim=-1)

    def forward(self, images: Tensor, ids: Tensor) -> Tensor:
        """Logits (B, B): scale * cosine(image i, text j), the scale exp(logit_scale) capped at 100 as in CLIP."""
        scale = self.logit_scale.clamp(max=math.log(100)).exp()
        return scale * self.encode_image(images) @ self.encode_text(ids).T


def info_nce_loss(logits: Tensor) -> Tensor:
    """Symmetric InfoNCE on a (B, B) similarity matrix whose diagonal holds the true pairs:
    the mean of cross-entropy over rows (image -> text) and over columns (text -> image)."""
    if logits.ndim != 2 or logits.shape[0] != logits.shape[1]:
        raise ValueError(f"logits must be a square (B, B) matrix, got {tuple(logits.shape)}")
    target = torch.arange(logits.shape[0], device=logits.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


def class_text_embeddings(model: CLIP, vocab: dict[str, int], templates: Sequence[str],
                          names: Sequence[str] = DIGIT_NAMES) -> Tensor:
    """(K, E): for each class name, the normalised mean of its embeddings over ``templates`` (CLIP's
    prompt ensembling; one template = that template's embedding)."""
    if not templates:
        raise ValueError("need at least one template")
    with torch.no_grad():
        per = torch.stack([model.encode_text(encode_captions([t.format(n) for n in names], vocab))
                           for t in templates])  # (templates, K, E)
    return F.normalize(per.mean(0), dim=-1)


def zero_shot_predict(model: CLIP, images: Tensor, text_embeddings: Tensor) -> Tensor:
    """(B,) class ids: the class whose text embedding (K, E) has the highest cosine with each image."""
    if text_embeddings.ndim != 2:
        raise ValueError(f"text_embeddings must be (K, E), got {tuple(text_embeddings.shape)}")
    with torch.no_grad():
        return (model.encode_image(images) @ text_embeddings.T).argmax(-1)


def train_clip(model: CLIP, images: Tensor, labels: Tensor, vocab: dict[str, int], *, steps: int = 1500,
               batch: int = 64, lr: float = 3e-3, seed: int = 0, templates: Sequence[str] = TRAIN_TEMPLATES,
               show_progress: bool = True) -> list[float]:
    """AdamW on InfoNCE: each step draws ``batch`` images and captions each one with its digit name in a
    random training template. ``labels`` (N,) only name the caption, as a web caption would. Returns losses."""
    from llmcourse.progress import progress

    if images.ndim != 4 or labels.shape != images.shape[:1]:
        raise ValueError(f"need images (N, 1, 8, 8) and labels (N,), got {tuple(images.shape)}, {tuple(labels.shape)}")
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    losses = []
    model.train()
    for _ in progress(range(steps), desc="CLIP on digits", disable=not show_progress):
        idx = torch.randint(len(images), (batch,), generator=gen)
        tmpl = torch.randint(len(templates), (batch,), generator=gen).tolist()
        ids = encode_captions([templates[t].format(DIGIT_NAMES[int(y)]) for t, y in zip(tmpl, labels[idx])], vocab)
        loss = info_nce_loss(model(images[idx], ids))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
    model.eval()
    return losses


def load_clip(name: str = "clip") -> tuple[CLIP, dict[str, int]]:
    """The shipped model of ``python -m llmcourse.recipes.modalities`` (SHA-256 checked) and its vocabulary."""
    from safetensors.torch import load_file

    from llmcourse.pretrained import checkpoint_file, recipe

    vocab = build_vocab()
    record = recipe(name)
    if record["vocab_size"] != len(vocab):
        raise ValueError(f"checkpoint {name!r} has {record['vocab_size']} words, build_vocab() gives {len(vocab)}")
    model = CLIP(len(vocab), record["config"]["embed_dim"])
    model.load_state_dict(load_file(checkpoint_file("model.safetensors", name)))
    return model.eval(), vocab
