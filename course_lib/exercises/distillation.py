"""Checkers for notebook 05 (distillation): softmax with temperature, the distillation loss, the attention map
of a feature map, and a student designed under a parameter budget."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from course_lib.distill import attention_map, kd_loss, soften
from course_lib.exercises import call_answer, fail, passed
from course_lib.measure import count_parameters


def _tensor_answer(exercise: str, value: object, shape: tuple[int, ...], what: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        fail(exercise, f"{what} as a torch.Tensor", type(value).__name__, "build it with torch operations.")
    if tuple(value.shape) != shape:
        fail(exercise, f"{what} of shape {shape}", str(tuple(value.shape)),
             "work along the class (last) dimension and keep one row per example.")
    return value


def _first_match(got: torch.Tensor, candidates: dict[str, torch.Tensor], atol: float) -> str | None:
    return next((hint for hint, value in candidates.items()
                 if value.shape == got.shape and torch.allclose(got, value, atol=atol)), None)


def check_softmax_with_temperature(softmax_with_temperature: Callable[[torch.Tensor, float], torch.Tensor]) -> None:
    """Exercise 5.1: ``softmax_with_temperature(logits, T)`` = softmax(logits / T) over the classes."""
    logits = torch.tensor([[6.0, 2.0, -1.0, 0.5], [1.0, 1.5, 0.0, -3.0], [9.0, -2.0, 4.0, 1.0]])
    for temperature in (1.0, 4.0, 20.0, 0.5):
        got = _tensor_answer("5.1", call_answer("5.1", softmax_with_temperature, logits.clone(), temperature),
                             tuple(logits.shape), "probabilities")
        expected = soften(logits, temperature)
        if torch.allclose(got, expected, atol=1e-6):
            continue
        mistakes = {
            "divide the logits by T before the softmax, not the probabilities after it.":
                F.softmax(logits, dim=1) / temperature,
            "divide by T; multiplying by T sharpens the distribution instead of softening it.":
                F.softmax(logits * temperature, dim=1),
            "these are log-probabilities: use softmax, not log_softmax.": F.log_softmax(logits / temperature, dim=1),
            "normalise over the classes (dim=-1), not over the batch.": F.softmax(logits / temperature, dim=0),
            "the temperature is missing: soften the logits by dividing them by T.": F.softmax(logits, dim=1),
        }
        hint = _first_match(got, mistakes, atol=1e-6) or "softmax(logits / T) along the class dimension."
        fail("5.1", f"softmax(logits / T) at T = {temperature:g} (rows summing to 1)",
             f"rows summing to {got.sum(dim=-1).tolist()}", hint)
    passed("5.1", "softmax with temperature is right at T = 0.5, 1, 4 and 20")


def check_distillation_loss(distillation_loss: Callable[..., torch.Tensor]) -> None:
    """Exercise 5.2: ``distillation_loss(student_logits, teacher_logits, labels, T, alpha)`` = Hinton's loss."""
    generator = torch.Generator().manual_seed(52)
    student = torch.randn(16, 10, generator=generator) * 3
    teacher = torch.randn(16, 10, generator=generator) * 3
    labels = torch.randint(0, 10, (16,), generator=generator)
    for temperature, alpha in ((4.0, 0.9), (2.0, 0.5), (8.0, 0.7)):
        leaf = student.clone().requires_grad_(True)
        got = call_answer("5.2", distillation_loss, leaf, teacher.clone(), labels, temperature, alpha)
        if not isinstance(got, torch.Tensor) or got.numel() != 1:
            fail("5.2", "the loss as a one-element tensor", repr(got) if not isinstance(got, torch.Tensor)
                 else f"a tensor of shape {tuple(got.shape)}", "average over the batch: reduction='batchmean'.")
        if not got.requires_grad:
            fail("5.2", "a loss that gradients flow through to the student's logits", "a loss without grad_fn",
                 "compute it with torch operations on student_logits (no .item(), .detach() or torch.no_grad()).")
        expected = kd_loss(student, teacher, labels, temperature, alpha).item()
        if abs(got.item() - expected) <= 1e-4 * max(1.0, abs(expected)):
            continue
        t, a = temperature, alpha
        log_s, log_t = F.log_softmax(student / t, 1), F.log_softmax(teacher / t, 1)
        kl = F.kl_div(log_s, log_t, reduction="batchmean", log_target=True)
        ce = F.cross_entropy(student, labels)
        mistakes = {
            "multiply the soft term by T²: without it its gradients shrink as 1/T² and the labels take over.":
                a * kl + (1 - a) * ce,
            "soften both sides: the student's logits must be divided by T as well.":
                a * t * t * F.kl_div(F.log_softmax(student, 1), log_t, reduction="batchmean", log_target=True)
                + (1 - a) * ce,
            "soften both sides: the teacher's logits must be divided by T as well.":
                a * t * t * F.kl_div(log_s, F.log_softmax(teacher, 1), reduction="batchmean", log_target=True)
                + (1 - a) * ce,
            "the KL divergence goes from the teacher (the target) to the student: F.kl_div takes the student's "
            "log-probabilities first and the teacher's distribution second (probabilities, or log-probabilities "
            "with log_target=True), not the other way round.":
                a * t * t * F.kl_div(log_t, log_s, reduction="batchmean", log_target=True) + (1 - a) * ce,
            "alpha weighs the teacher's (soft) term and 1 - alpha the labels' term, not the reverse.":
                (1 - a) * t * t * kl + a * ce,
            "average over the batch (reduction='batchmean'), not over every class entry ('mean').":
                a * t * t * kl / student.shape[1] + (1 - a) * ce,  # what reduction="mean" computes
        }
        hint = next((h for h, value in mistakes.items()
                     if abs(got.item() - value.item()) <= 1e-4 * max(1.0, abs(value.item()))),
                    "alpha × T² × KL(teacher at T || student at T) + (1 − alpha) × cross-entropy with the labels.")
        fail("5.2", f"{expected:.4f} at T = {temperature:g}, alpha = {alpha:g}", f"{got.item():.4f}", hint)
    passed("5.2", "the distillation loss matches Hinton's at three temperatures and weights")


def check_attention_map(attention_map_fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
    """Exercise 5.3: ``attention_map(features)`` of a ``[batch, channels, H, W]`` map -> ``[batch, H*W]``."""
    generator = torch.Generator().manual_seed(53)
    features = torch.randn(4, 8, 5, 5, generator=generator).relu() * torch.rand(1, 8, 1, 1, generator=generator) * 3
    got = call_answer("5.3", attention_map_fn, features.clone())
    if isinstance(got, torch.Tensor) and tuple(got.shape) == (4, 5, 5):
        fail("5.3", "one flat map per image, shape (4, 25)", "shape (4, 5, 5)", "flatten the spatial dimensions: "
             ".flatten(1).")
    if isinstance(got, torch.Tensor) and tuple(got.shape) == (4, 8):
        fail("5.3", "one value per position, shape (4, 25)", "shape (4, 8): one value per channel",
             "average over the channels (dim=1), keeping the positions.")
    got = _tensor_answer("5.3", got, (4, 25), "one flat map per image")
    expected = attention_map(features)
    if torch.allclose(got, expected, atol=1e-5):
        passed("5.3", "the attention maps are right (squared activations, averaged over channels, L2-normalised)")
        return
    squares = features.pow(2)
    mistakes = {
        "normalise each image's map to unit L2 norm (F.normalize(..., dim=1)), so that only its shape counts, "
        "not the size of the activations.": squares.mean(1).flatten(1),
        "square the activations before averaging over channels: |a|² weighs the strongest positions more.":
            F.normalize(features.abs().mean(1).flatten(1), dim=1),
        "normalise per image (dim=1 of the flat map), not over the whole batch.":
            squares.mean(1).flatten(1) / squares.mean(1).flatten(1).norm(),
    }
    hint = _first_match(got, mistakes, atol=1e-5) or ("mean of the squared activations over the channels, "
                                                       "flattened, then L2-normalised per image.")
    fail("5.3", "the normalised attention maps", "different values", hint)


def check_student_design(student: nn.Module, teacher: nn.Module, factor: float = 10.0) -> None:
    """Exercise 5.4: a student with at least ``factor`` times fewer parameters than the teacher, mapping
    ``[N, 1, 28, 28]`` images to ``[N, 10]`` logits."""
    if not isinstance(student, nn.Module):
        fail("5.4", "an nn.Module", type(student).__name__, "build it like StudentCNN(widths=(...)) or nn.Sequential.")
    ratio = count_parameters(teacher) / max(count_parameters(student), 1)
    if ratio < factor:
        fail("5.4", f"at least {factor:g}× fewer parameters than the teacher ({count_parameters(teacher):,})",
             f"{count_parameters(student):,} ({ratio:.1f}× fewer)",
             "narrow the channels or drop a stage; most parameters sit in the widest convolution and the last Linear.")
    was_training = student.training
    student.eval()
    with torch.no_grad():
        out = call_answer("5.4", student, torch.zeros(2, 1, 28, 28))
    student.train(was_training)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, 10):
        fail("5.4", "logits of shape (2, 10) for 2 images", str(getattr(out, "shape", type(out).__name__)),
             "end with a Linear to the 10 classes (no softmax: the losses take logits).")
    passed("5.4", f"your student has {count_parameters(student):,} parameters, {ratio:.0f}× fewer than the teacher")
