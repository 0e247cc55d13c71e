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


def test_soften_flattens_with_temperature_and_keeps_the_order():
    from course_lib.distill import soften

    logits = torch.tensor([[4.0, 1.0, -2.0]])
    cold, warm = soften(logits, 1.0), soften(logits, 20.0)
    assert torch.allclose(cold, F.softmax(logits, 1)) and torch.allclose(warm.sum(), torch.tensor(1.0))
    assert warm[0, 2] > cold[0, 2] and warm[0, 0] < cold[0, 0], "T > 1 moves mass to the small classes"
    assert torch.equal(warm.argsort(), cold.argsort())
    with pytest.raises(ValueError, match="temperature must be positive"):
        soften(logits, -1.0)


def test_kd_loss_gradient_keeps_its_size_as_temperature_grows():
    """Without T², the soft term's gradient shrinks as 1/T²; with it, it stays of the same order."""
    from course_lib.distill import kd_loss

    torch.manual_seed(0)
    teacher, labels = torch.randn(64, 10) * 3, torch.randint(0, 10, (64,))
    norms = {}
    for t in (2.0, 8.0, 32.0):
        student = (torch.randn(64, 10) * 3).requires_grad_()
        kd_loss(student, teacher, labels, temperature=t, alpha=1.0).backward()
        norms[t] = student.grad.norm().item()
    assert max(norms.values()) / min(norms.values()) < 4
    assert norms[32.0] / 32 ** 2 < norms[2.0] / 2 ** 2 / 50, "dividing by T² would make it vanish"


@pytest.mark.parametrize("student_shape,teacher_shape,labels_shape,message", [
    ((4, 10), (4, 9), (4,), "differ in shape"),
    ((4, 10), (3, 10), (4,), "differ in shape"),
    ((4, 10), (4, 10), (5,), "one label per example"),
])
def test_kd_loss_refuses_mismatched_outputs(student_shape, teacher_shape, labels_shape, message):
    from course_lib.distill import kd_loss

    with pytest.raises(ValueError, match=message):
        kd_loss(torch.zeros(student_shape), torch.zeros(teacher_shape), torch.zeros(labels_shape, dtype=torch.long))


def test_cached_loss_equals_the_live_teacher_loss():
    from course_lib.distill import cached_distillation_loss, teacher_logits

    torch.manual_seed(0)
    teacher, student = torch.nn.Linear(8, 5), torch.nn.Linear(8, 5)
    x, y = torch.randn(16, 8), torch.randint(0, 5, (16,))
    live = distillation_loss(teacher, temperature=3.0, alpha=0.7)(student, x, y)
    cached = cached_distillation_loss(3.0, 0.7)(student, x, y, teacher_logits(teacher, x, batch_size=5))
    assert torch.allclose(live, cached)
    with pytest.raises(ValueError, match="alpha must be in"):
        cached_distillation_loss(alpha=-0.1)


def test_check_compresses_refuses_a_student_as_large_as_its_teacher():
    from course_lib.distill import check_compresses
    from course_lib.models import StudentCNN, build_model

    assert check_compresses(StudentCNN(), build_model("course_cnn"), factor=10) > 10
    with pytest.raises(ValueError, match="at least 10x fewer are required"):
        check_compresses(StudentCNN(widths=(64, 128, 256)), build_model("course_cnn"), factor=10)
