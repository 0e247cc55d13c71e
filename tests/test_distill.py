"""course_lib.distill: the distillation loss is the cross-entropy at alpha 0, zero against itself at alpha 1."""

import pytest
import torch
import torch.nn.functional as F

from course_lib.distill import distillation_loss


def test_distillation_loss_mixes_soft_and_hard_targets():
    torch.manual_seed(0)
    teacher, student = torch.nn.Linear(8, 5), torch.nn.Linear(8, 5)
    x, y = torch.randn(16, 8), torch.randint(0, 5, (16,))
    assert torch.allclose(distillation_loss(teacher, alpha=0.0)(student, x, y), F.cross_entropy(student(x), y))
    assert distillation_loss(teacher, alpha=1.0)(teacher, x, y).abs() < 1e-6, "a model matching its teacher"
    t = 3.0
    expected = t * t * F.kl_div(F.log_softmax(student(x) / t, 1), F.softmax(teacher(x) / t, 1), reduction="batchmean")
    assert torch.allclose(distillation_loss(teacher, temperature=t, alpha=1.0)(student, x, y), expected, atol=1e-6)
    assert not any(p.requires_grad for p in teacher.parameters()), "the teacher is frozen"


def test_distillation_loss_stays_finite_when_teacher_probabilities_underflow():
    teacher = torch.nn.Linear(2, 3)
    with torch.no_grad():
        teacher.weight.copy_(torch.tensor([[500.0, 0], [0, 0], [-500.0, 0]]))
    student = torch.nn.Linear(2, 3)
    loss = distillation_loss(teacher, temperature=1.0)(student, torch.tensor([[1.0, 0.0]]), torch.tensor([0]))
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(p.grad).all() for p in student.parameters())


@pytest.mark.parametrize("kwargs,message", [({"temperature": 0}, "temperature must be positive"),
                                            ({"alpha": 1.5}, "alpha must be in")])
def test_bad_settings_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        distillation_loss(torch.nn.Linear(2, 2), **kwargs)
