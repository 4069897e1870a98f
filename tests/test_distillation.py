"""Knowledge distillation: the soft loss, its temperature, the T^2 factor, and a student that learns."""

import pytest
import torch
import torch.nn.functional as F

from llmcourse.distillation import (
    accuracy,
    distillation_loss,
    fit_mlp,
    soft_gradient_scale,
    soft_targets,
)


def _logits(seed, n=5, k=4):
    return torch.randn(n, k, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_soft_targets_are_a_distribution_that_flattens_as_temperature_rises():
    z = _logits(0)
    p1, p8 = soft_targets(z, 1.0), soft_targets(z, 8.0)
    assert torch.allclose(p1.sum(-1), torch.ones(5, dtype=torch.float64))
    assert (p8.max(-1).values < p1.max(-1).values).all()
    assert torch.equal(p1.argmax(-1), p8.argmax(-1))


def test_soft_loss_equals_torch_kl_div_times_t_squared():
    s, t = _logits(1), _logits(2)
    ref = F.kl_div(F.log_softmax(s / 3, -1), F.log_softmax(t / 3, -1), log_target=True, reduction="batchmean") * 9
    assert torch.allclose(distillation_loss(s, t, temperature=3.0), ref)


def test_soft_loss_is_zero_when_the_student_copies_the_teacher():
    t = _logits(3)
    assert float(distillation_loss(t.clone(), t, temperature=2.0)) == pytest.approx(0.0, abs=1e-12)


def test_alpha_zero_is_plain_cross_entropy_and_alpha_mixes_linearly():
    s, t = _logits(4), _logits(5)
    y = torch.tensor([0, 1, 2, 3, 0])
    ce = F.cross_entropy(s, y)
    assert torch.allclose(distillation_loss(s, t, y, alpha=0.0), ce)
    soft = distillation_loss(s, t, temperature=4.0)
    assert torch.allclose(distillation_loss(s, t, y, temperature=4.0, alpha=0.3), 0.3 * soft + 0.7 * ce)


def test_the_teacher_gets_no_gradient():
    s, t = _logits(6).requires_grad_(), _logits(7).requires_grad_()
    distillation_loss(s, t).backward()
    assert t.grad is None and s.grad is not None


def test_t_squared_keeps_the_gradient_size_while_unscaled_it_shrinks_like_one_over_t_squared():
    scaled = [soft_gradient_scale(t) for t in (4.0, 8.0, 16.0)]
    unscaled = [soft_gradient_scale(t, scaled=False) for t in (4.0, 8.0, 16.0)]
    assert max(scaled) / min(scaled) < 1.15
    assert unscaled[0] / unscaled[2] == pytest.approx(16.0, rel=0.15)


def test_bad_inputs_are_rejected_with_clear_errors():
    s = _logits(8)
    with pytest.raises(ValueError, match="temperature"):
        distillation_loss(s, s, temperature=0.0)
    with pytest.raises(ValueError, match="alpha"):
        distillation_loss(s, s, alpha=1.5)
    with pytest.raises(ValueError, match="labels"):
        distillation_loss(s, s, alpha=0.5)
    with pytest.raises(ValueError, match="shape"):
        distillation_loss(s, _logits(9, k=3))
    with pytest.raises(TypeError):
        soft_targets(torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="give hard labels"):
        fit_mlp(torch.zeros(4, 2))


def test_a_student_fitted_to_soft_targets_learns_the_teachers_decision():
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 2, generator=g)
    y = (x[:, 0] + x[:, 1] > 0).long()
    teacher = fit_mlp(x, y, hidden=32, epochs=150, seed=0)
    assert accuracy(teacher, x, y) > 0.95
    with torch.no_grad():
        t_logits = teacher(x)
    student = fit_mlp(x, hidden=4, teacher_logits=t_logits, temperature=2.0, epochs=200, seed=1)
    assert accuracy(student, x, y) > 0.9
