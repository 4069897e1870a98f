"""A small, readable training loop for classifiers, shared by the chapters.

``train_classifier`` trains any ``nn.Module`` that maps a batch of inputs to
(N, C) class scores (logits) with Adam (Kingma & Ba 2015) and the cross-entropy
loss, one progress bar tick per epoch, and returns a :class:`History` of the
per-epoch losses and accuracies, ready for
``llmcourse.plotting.plot_learning_curves``. ``predict_logits`` runs a trained
model over a data set in evaluation mode, batch by batch, without gradients;
``count_parameters`` counts trainable numbers.

Determinism: with the same ``seed``, the same model initialisation and the same
data, two runs on the same device give the same numbers. The seed fixes the
order of the mini-batches (a private ``torch.Generator``) and any randomness
inside the model (dropout) without touching PyTorch's global generator.

Taught in: book/04-cnn
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn

from llmcourse.progress import progress
from llmcourse.reproducibility import torch_generator


@dataclass
class History:
    """Per-epoch numbers recorded by :func:`train_classifier`.

    ``train_loss[e]`` / ``train_acc[e]`` are averages over the mini-batches of
    epoch ``e`` (measured while the weights were changing, in training mode);
    ``val_loss[e]`` / ``val_acc[e]`` are measured on the validation set after
    epoch ``e``, in evaluation mode. ``seconds`` is the wall-clock training time.
    """

    train_loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    train_acc: list[float] = field(default_factory=list)
    val_acc: list[float] = field(default_factory=list)
    seconds: float = 0.0

    def as_dict(self) -> dict[str, list[float]]:
        """The four curves as a dict (what ``plot_learning_curves`` takes)."""
        return {"train_loss": list(self.train_loss), "val_loss": list(self.val_loss),
                "train_acc": list(self.train_acc), "val_acc": list(self.val_acc)}


def _as_tensor(x, name: str, *, labels: bool = False) -> Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x))
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or numpy array, got {type(x).__name__}")
    if labels:
        if x.ndim != 1:
            raise ValueError(f"{name} must have shape (N,), got shape {tuple(x.shape)}")
        if x.dtype.is_floating_point or x.dtype == torch.bool or x.is_complex():
            raise TypeError(f"{name} must hold integer class indices, got dtype {x.dtype}")
        return x.long()
    if x.ndim < 1 or x.shape[0] == 0:
        raise ValueError(f"{name} must have shape (N, ...) with N >= 1, got shape {tuple(x.shape)}")
    if not x.dtype.is_floating_point:
        x = x.float()
    return x


def _check_positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    return int(value)


def _model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


@torch.no_grad()
def _evaluate(model: nn.Module, X: Tensor, y: Tensor, batch_size: int, device) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``model`` on (X, y), in eval mode."""
    logits = predict_logits(model, X, batch_size=batch_size, device=device)
    loss = nn.functional.cross_entropy(logits, y.to(logits.device), reduction="mean")
    acc = (logits.argmax(dim=1).cpu() == y.cpu()).float().mean()
    return float(loss), float(acc)


def train_classifier(model: nn.Module, X_train, y_train, X_val, y_val, *, epochs: int, lr: float = 1e-3,
                     batch_size: int = 64, weight_decay: float = 0.0, seed: int = 0,
                     desc: str = "training", device=None, show_progress: bool = True) -> History:
    """Train ``model`` in place with Adam and cross-entropy; return its :class:`History`.

    Args:
        model: maps a batch (B, ...) to logits (B, C).
        X_train, y_train: (N, ...) float inputs and (N,) integer labels in 0..C-1
            (tensors or NumPy arrays).
        X_val, y_val: the same for the validation set, evaluated after every epoch.
        epochs: passes over the training set.
        lr, weight_decay: Adam's step size and L2 penalty (``torch.optim.Adam``).
        batch_size: examples per gradient step; the last batch may be smaller.
        seed: fixes the mini-batch order and dropout, so runs are repeatable.
        desc: label of the progress bar (one tick per epoch).
        device: where to train; ``None`` keeps the model where its parameters are
            (the CPU for a freshly built model). The model is left on that device.
        show_progress: set ``False`` to hide the progress bar (e.g. in tests).

    Shapes: logits (B, C); the loss is the mean over the batch.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    X_train = _as_tensor(X_train, "X_train")
    y_train = _as_tensor(y_train, "y_train", labels=True)
    X_val = _as_tensor(X_val, "X_val")
    y_val = _as_tensor(y_val, "y_val", labels=True)
    if X_train.shape[0] != y_train.shape[0]:
        raise ValueError(f"X_train has {X_train.shape[0]} rows but y_train has {y_train.shape[0]} labels")
    if X_val.shape[0] != y_val.shape[0]:
        raise ValueError(f"X_val has {X_val.shape[0]} rows but y_val has {y_val.shape[0]} labels")
    epochs = _check_positive_int(epochs, "epochs")
    batch_size = _check_positive_int(batch_size, "batch_size")
    if not (isinstance(lr, (int, float)) and not isinstance(lr, bool) and lr > 0 and np.isfinite(lr)):
        raise ValueError(f"lr must be a positive finite number, got {lr!r}")
    if not (isinstance(weight_decay, (int, float)) and weight_decay >= 0):
        raise ValueError(f"weight_decay must be a number >= 0, got {weight_decay!r}")

    dev = torch.device(device) if device is not None else _model_device(model)
    model.to(dev)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    order_gen = torch_generator(seed)
    n = X_train.shape[0]
    history = History()
    start = time.perf_counter()
    devices = [dev.index or 0] if dev.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):  # dropout is seeded, the global state restored after
        torch.manual_seed(seed)
        bar = progress(range(epochs), desc=desc, disable=not show_progress)
        for _ in bar:
            model.train()
            order = torch.randperm(n, generator=order_gen)
            loss_sum, correct = 0.0, 0
            for i in range(0, n, batch_size):
                idx = order[i:i + batch_size]
                xb, yb = X_train[idx].to(dev), y_train[idx].to(dev)
                logits = model(xb)
                loss = nn.functional.cross_entropy(logits, yb)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                loss_sum += float(loss.detach()) * len(idx)
                correct += int((logits.detach().argmax(dim=1) == yb).sum())
            history.train_loss.append(loss_sum / n)
            history.train_acc.append(correct / n)
            val_loss, val_acc = _evaluate(model, X_val, y_val, max(batch_size, 512), dev)
            history.val_loss.append(val_loss)
            history.val_acc.append(val_acc)
            if hasattr(bar, "set_postfix"):
                bar.set_postfix(loss=f"{history.train_loss[-1]:.3f}", val_acc=f"{val_acc:.3f}")
    history.seconds = time.perf_counter() - start
    model.eval()
    return history


@torch.no_grad()
def predict_logits(model: nn.Module, X, *, batch_size: int = 512, device=None) -> Tensor:
    """Class scores of ``model`` for every row of ``X``, in evaluation mode, without gradients.

    Shapes: X (N, ...) -> logits (N, C), returned on the CPU. The model's
    train/eval mode is restored afterwards.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    X = _as_tensor(X, "X")
    batch_size = _check_positive_int(batch_size, "batch_size")
    dev = torch.device(device) if device is not None else _model_device(model)
    was_training = model.training
    model.eval()
    try:
        chunks = [model(X[i:i + batch_size].to(dev)).detach().cpu() for i in range(0, X.shape[0], batch_size)]
    finally:
        model.train(was_training)
    out = torch.cat(chunks)
    if out.ndim != 2 or out.shape[0] != X.shape[0]:
        raise ValueError(f"model must return logits of shape (N, C) = ({X.shape[0]}, C), got {tuple(out.shape)}")
    return out


def count_parameters(model: nn.Module, *, trainable_only: bool = True) -> int:
    """Number of (trainable, by default) scalar parameters in ``model``."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    return int(sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only))
