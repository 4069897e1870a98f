"""The shared training loop: it learns, it is repeatable, it validates its input."""

import numpy as np
import pytest
import torch
from torch import nn

from llmcourse.training import History, count_parameters, predict_logits, train_classifier

pytestmark = pytest.mark.ch04


def _blobs(n=200, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=g)
    centers = torch.tensor([[2.0, 0.0], [-2.0, 0.0], [0.0, 2.5]])
    X = centers[y] + 0.5 * torch.randn(n, 2, generator=g)
    return X, y


def _model(seed=0, dropout=0.0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Dropout(dropout), nn.Linear(16, 3))


def test_learns_separable_blobs_and_records_history():
    X, y = _blobs()
    Xv, yv = _blobs(100, seed=1)
    h = train_classifier(_model(), X, y, Xv, yv, epochs=15, lr=1e-2, batch_size=32, show_progress=False)
    assert isinstance(h, History)
    for curve in (h.train_loss, h.val_loss, h.train_acc, h.val_acc):
        assert len(curve) == 15 and all(isinstance(v, float) and np.isfinite(v) for v in curve)
    assert h.val_acc[-1] > 0.95
    assert h.train_loss[-1] < h.train_loss[0]
    assert h.seconds > 0
    assert set(h.as_dict()) == {"train_loss", "val_loss", "train_acc", "val_acc"}


def test_same_seed_same_result_and_global_rng_untouched():
    X, y = _blobs()
    runs = []
    for _ in range(2):
        m = _model(dropout=0.3)
        torch.manual_seed(123)
        state = torch.get_rng_state()
        h = train_classifier(m, X, y, X, y, epochs=3, seed=7, show_progress=False)
        assert torch.equal(torch.get_rng_state(), state), "train_classifier must not consume the global RNG"
        runs.append((h.train_loss, [p.detach().clone() for p in m.parameters()]))
    assert runs[0][0] == runs[1][0]
    assert all(torch.equal(a, b) for a, b in zip(runs[0][1], runs[1][1]))
    m = _model(dropout=0.3)
    h = train_classifier(m, X, y, X, y, epochs=3, seed=8, show_progress=False)
    assert h.train_loss != runs[0][0]


def test_accepts_numpy_and_validation_loss_matches_predict_logits():
    X, y = _blobs()
    m = _model()
    h = train_classifier(m, X.numpy(), y.numpy(), X.numpy(), y.numpy(), epochs=2, show_progress=False)
    logits = predict_logits(m, X, batch_size=7)
    assert logits.shape == (200, 3) and not logits.requires_grad
    expected = float(nn.functional.cross_entropy(logits, y))
    assert h.val_loss[-1] == pytest.approx(expected, rel=1e-5)
    assert h.val_acc[-1] == pytest.approx(float((logits.argmax(1) == y).float().mean()))


def test_predict_logits_restores_mode_and_uses_eval():
    m = _model(dropout=0.9)
    m.train()
    X, _ = _blobs(50)
    a = predict_logits(m, X)
    b = predict_logits(m, X)
    assert torch.equal(a, b), "dropout must be off in predict_logits"
    assert m.training


def test_count_parameters():
    m = nn.Linear(3, 4)
    assert count_parameters(m) == 16
    m.bias.requires_grad_(False)
    assert count_parameters(m) == 12
    assert count_parameters(m, trainable_only=False) == 16


@pytest.mark.parametrize("kwargs,exc,msg", [
    (dict(epochs=0), ValueError, "epochs"),
    (dict(epochs=1, lr=-1.0), ValueError, "lr"),
    (dict(epochs=1, batch_size=0), ValueError, "batch_size"),
])
def test_bad_arguments(kwargs, exc, msg):
    X, y = _blobs(20)
    with pytest.raises(exc, match=msg):
        train_classifier(_model(), X, y, X, y, show_progress=False, **kwargs)


def test_bad_data():
    X, y = _blobs(20)
    with pytest.raises(TypeError, match="integer class indices"):
        train_classifier(_model(), X, y.float(), X, y, epochs=1, show_progress=False)
    with pytest.raises(ValueError, match="rows"):
        train_classifier(_model(), X, y[:10], X, y, epochs=1, show_progress=False)
    with pytest.raises(TypeError, match="nn.Module"):
        train_classifier(lambda x: x, X, y, X, y, epochs=1)
    with pytest.raises(TypeError, match="Tensor or numpy"):
        predict_logits(_model(), [[1.0, 2.0]])
