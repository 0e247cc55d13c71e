"""The checkers of notebook 05 accept the solutions and reject the typical mistakes with the matching hint."""

import pytest
import torch
import torch.nn.functional as F

from course_lib.distill import attention_map, kd_loss
from course_lib.exercises import ExerciseError
from course_lib.exercises import distillation as check
from course_lib.models import StudentCNN, build_model


def test_softmax_with_temperature_checker():
    check.check_softmax_with_temperature(lambda z, t: F.softmax(z / t, dim=-1))
    wrong = {
        "not the probabilities after it": lambda z, t: F.softmax(z, dim=-1) / t,
        "multiplying by T sharpens": lambda z, t: F.softmax(z * t, dim=-1),
        "use softmax, not log_softmax": lambda z, t: F.log_softmax(z / t, dim=-1),
        "not over the batch": lambda z, t: F.softmax(z / t, dim=0),
    }
    for hint, answer in wrong.items():
        with pytest.raises(ExerciseError, match=hint):
            check.check_softmax_with_temperature(answer)


def _kd(s, t, y, temp, a, *, t2=True, soft_student=True, soft_teacher=True, reverse=False, swap=False,
        per_entry=False):
    log_s = F.log_softmax(s / temp if soft_student else s, 1)
    log_t = F.log_softmax(t / temp if soft_teacher else t, 1)
    kl = F.kl_div(log_t, log_s, reduction="batchmean", log_target=True) if reverse else \
        F.kl_div(log_s, log_t, reduction="batchmean", log_target=True)
    kl = kl / s.shape[1] if per_entry else kl  # reduction="mean": also divided by the number of classes
    soft = kl * (temp ** 2 if t2 else 1)
    ce = F.cross_entropy(s, y)
    return (1 - a) * soft + a * ce if swap else a * soft + (1 - a) * ce


def test_distillation_loss_checker_rejects_each_typical_mistake():
    check.check_distillation_loss(kd_loss)
    check.check_distillation_loss(_kd)
    wrong = {
        "multiply the soft term by T²": dict(t2=False),
        "student's logits must be divided by T": dict(soft_student=False),
        "teacher's logits must be divided by T": dict(soft_teacher=False),
        "goes from the teacher": dict(reverse=True),
        "alpha weighs the teacher": dict(swap=True),
        "reduction='batchmean'": dict(per_entry=True),
    }
    for hint, mistake in wrong.items():
        with pytest.raises(ExerciseError, match=hint):
            check.check_distillation_loss(lambda s, t, y, temp, a, m=mistake: _kd(s, t, y, temp, a, **m))
    with pytest.raises(ExerciseError, match="gradients flow"):
        check.check_distillation_loss(lambda s, t, y, temp, a: kd_loss(s.detach(), t, y, temp, a))


def test_attention_map_checker():
    check.check_attention_map(attention_map)
    wrong = {
        "unit L2 norm": lambda f: f.pow(2).mean(1).flatten(1),
        "square the activations": lambda f: F.normalize(f.abs().mean(1).flatten(1), dim=1),
        "per image": lambda f: f.pow(2).mean(1).flatten(1) / f.pow(2).mean(1).flatten(1).norm(),
        "flatten the spatial": lambda f: F.normalize(f.pow(2).mean(1).flatten(1), dim=1).reshape(-1, 5, 5),
        "average over the channels": lambda f: F.normalize(f.pow(2).mean((2, 3)), dim=1),
    }
    for hint, answer in wrong.items():
        with pytest.raises(ExerciseError, match=hint):
            check.check_attention_map(answer)


def test_student_design_checker():
    teacher = build_model("course_cnn")
    check.check_student_design(StudentCNN(), teacher)
    with pytest.raises(ExerciseError, match="fewer parameters"):
        check.check_student_design(StudentCNN(widths=(64, 128, 256)), teacher)
    with pytest.raises(ExerciseError, match="10 classes"):
        check.check_student_design(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 5)), teacher)
