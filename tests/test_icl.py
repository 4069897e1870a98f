"""In-context regression: prompts, the Transformer's causality, and the baselines against numpy."""

import numpy as np
import pytest
import torch

from llmcourse import icl

torch.set_num_threads(1)


def _prompts(seed, b=4, n=9, d=5):
    return icl.sample_linear_prompts(b, n, d, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_least_squares_matches_numpy_lstsq(seed):
    xs, ys, _ = _prompts(seed)
    got = icl.least_squares_predictions(xs, ys)
    for b in range(xs.shape[0]):
        for i in range(1, xs.shape[1]):
            w, *_ = np.linalg.lstsq(xs[b, :i].double().numpy(), ys[b, :i].double().numpy(), rcond=None)
            want = float(xs[b, i].double().numpy() @ w)  # lstsq gives the minimum-norm solution when i < d
            assert got[b, i].item() == pytest.approx(want, rel=1e-4, abs=1e-4), (b, i)
    assert torch.all(got[:, 0] == 0)


def test_ridge_matches_closed_form():
    xs, ys, _ = _prompts(3)
    lam = 0.5
    got = icl.least_squares_predictions(xs, ys, ridge=lam)
    X, y = xs[1, :6].double().numpy(), ys[1, :6].double().numpy()
    w = np.linalg.solve(X.T @ X + lam * np.eye(X.shape[1]), X.T @ y)
    assert got[1, 6].item() == pytest.approx(float(xs[1, 6].double().numpy() @ w), rel=1e-4, abs=1e-5)


def test_least_squares_is_exact_once_k_reaches_dim_without_noise():
    xs, ys, _ = _prompts(4, b=32, n=10, d=4)
    err = icl.squared_error_by_k(icl.least_squares_predictions(xs, ys), ys, 4)
    assert torch.all(err[4:] < 1e-8) and err[3] > 1e-3


def test_averaging_and_nearest_neighbour_match_loops():
    xs, ys, _ = _prompts(5, b=3, n=7, d=3)
    avg, nn3 = icl.averaging_predictions(xs, ys), icl.nearest_neighbour_predictions(xs, ys, n_neighbours=3)
    for b in range(3):
        for i in range(1, 7):
            w = (ys[b, :i, None] * xs[b, :i]).mean(0)
            assert avg[b, i].item() == pytest.approx(float(w @ xs[b, i]), rel=1e-5, abs=1e-6)
            dist = ((xs[b, :i] - xs[b, i]) ** 2).sum(-1).numpy()
            idx = np.argsort(dist, kind="stable")[:3]
            assert nn3[b, i].item() == pytest.approx(float(ys[b, idx].mean()), rel=1e-5, abs=1e-6)


def test_sample_linear_prompts_active_dims_and_values():
    xs, ys, w = icl.sample_linear_prompts(8, 5, 6, generator=torch.Generator().manual_seed(0), active_dims=2)
    assert xs.shape == (8, 5, 6) and ys.shape == (8, 5) and w.shape == (8, 6)
    assert torch.all(xs[..., 2:] == 0) and torch.all(w[:, 2:] == 0)
    torch.testing.assert_close(ys, torch.einsum("bnd,bd->bn", xs, w))


def test_interleave_layout():
    xs, ys, _ = _prompts(6, b=2, n=3, d=2)
    z = icl.interleave(xs, ys)
    assert z.shape == (2, 6, 3)
    torch.testing.assert_close(z[:, 0::2, :2], xs)
    torch.testing.assert_close(z[:, 1::2, 2], ys)
    assert torch.all(z[:, 0::2, 2] == 0) and torch.all(z[:, 1::2, :2] == 0)


def test_transformer_prediction_never_sees_its_own_or_later_answers():
    torch.manual_seed(0)
    model = icl.ICLTransformer(icl.ICLConfig(dim=3, n_points=6, n_layer=2, n_embd=32)).eval()
    xs, ys, _ = _prompts(7, b=2, n=6, d=3)
    changed = ys.clone()
    changed[:, 3:] += 5.0
    with torch.no_grad():
        a, b = model(xs, ys), model(xs, changed)
    torch.testing.assert_close(a[:, :4], b[:, :4])  # prediction i sees y_1..y_{i-1} only
    assert not torch.allclose(a[:, 4:], b[:, 4:])


def test_bad_inputs_raise():
    xs, ys, _ = _prompts(8)
    with pytest.raises(ValueError, match="xs"):
        icl.least_squares_predictions(xs, ys[:, :-1])
    with pytest.raises(TypeError, match="floating"):
        icl.averaging_predictions(xs.long(), ys)
    with pytest.raises(ValueError, match="active_dims"):
        icl.sample_linear_prompts(2, 3, 4, generator=torch.Generator(), active_dims=5)
    with pytest.raises(ValueError, match="d=5"):
        icl.ICLTransformer(icl.ICLConfig(dim=4, n_points=9))(xs, ys)
    with pytest.raises(ValueError, match="n_embd"):
        icl.ICLConfig(n_embd=0)


def test_shipped_model_learns_from_the_prompt():
    model = icl.load_icl()
    d, n = model.config.dim, model.config.n_points
    xs, ys, _ = icl.sample_linear_prompts(500, n, d, generator=torch.Generator().manual_seed(99))
    with torch.no_grad():
        err = icl.squared_error_by_k(model(xs, ys), ys, d)
    avg = icl.squared_error_by_k(icl.averaging_predictions(xs, ys), ys, d)
    assert err[-1] < 0.5 * err[0], err  # more examples in the prompt, smaller error: no weight changed
    assert torch.all(err[1:] < avg[1:]), (err, avg)
