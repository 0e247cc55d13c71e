"""Knowledge distillation (Hinton et al. 2015): train a model to match a teacher's softened outputs.

Notebook 05 is about distillation: the loss (:func:`kd_loss`), fair student-vs-student training on precomputed
teacher outputs (:func:`train_student`), attention transfer, and distilling a sentence encoder's embeddings
(:func:`distill_embeddings`). Deep Compression (notebook 04) uses :func:`distillation_loss` to retrain a pruned
model towards the dense model it came from.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from course_lib.measure import count_parameters
from course_lib.minilm import tokenize
from course_lib.runtime import seed_everything
from course_lib.train import train


def check_temperature(temperature: float) -> None:
    """Raise a clear error unless the distillation temperature is positive."""
    if not temperature > 0:
        raise ValueError(f"temperature must be positive (T = 1 is the plain softmax), got {temperature}")


def check_alpha(alpha: float) -> None:
    """Raise a clear error unless the teacher's weight alpha is in [0, 1]."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1] (the weight of the teacher's term), got {alpha}")


def soften(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """The softmax of ``logits / temperature`` over the last dimension: T > 1 flattens the distribution and
    lifts the small probabilities (the "dark knowledge"), T = 1 is the plain softmax."""
    check_temperature(temperature)
    return F.softmax(logits / temperature, dim=-1)


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
            temperature: float = 4.0, alpha: float = 0.9) -> torch.Tensor:
    """Hinton's distillation loss: ``alpha * T² * KL(teacher_T || student_T) + (1 - alpha) * CE(student, labels)``.

    Both sides are softened at the same temperature; the KL divergence goes from the teacher's distribution to
    the student's (the teacher is the target). The T² factor keeps the soft term's gradients the same size as T
    changes (they shrink as 1/T² otherwise). Averaged over the batch.
    """
    check_temperature(temperature)
    check_alpha(alpha)
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student and teacher outputs differ in shape: {tuple(student_logits.shape)} vs "
                         f"{tuple(teacher_logits.shape)}; both must be [batch, classes] over the same classes")
    if labels.shape != student_logits.shape[:1]:
        raise ValueError(f"expected one label per example ({student_logits.shape[0]}), got shape {tuple(labels.shape)}")
    log_targets = F.log_softmax(teacher_logits.detach() / temperature, dim=1)  # log space: no 0 * log 0 = NaN
    soft = F.kl_div(F.log_softmax(student_logits / temperature, dim=1), log_targets, reduction="batchmean",
                    log_target=True)
    return alpha * temperature ** 2 * soft + (1 - alpha) * F.cross_entropy(student_logits, labels)


LossFn = Callable[..., torch.Tensor]


def distillation_loss(teacher: nn.Module, temperature: float = 4.0, alpha: float = 0.9) -> LossFn:
    """A ``loss_fn(model, images, labels)`` for :func:`course_lib.train.train` that runs a frozen teacher (in eval
    mode) on every batch and applies :func:`kd_loss`."""
    check_temperature(temperature)
    check_alpha(alpha)
    teacher.eval().requires_grad_(False)

    def loss_fn(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            teacher_logits = teacher(images)
        return kd_loss(model(images), teacher_logits, labels, temperature, alpha)

    return loss_fn


def cached_distillation_loss(temperature: float = 4.0, alpha: float = 0.9) -> LossFn:
    """A ``loss_fn(model, images, labels, teacher_logits)`` for ``train(..., targets=teacher_logits)``: the
    teacher's logits were computed once (:func:`teacher_logits`) instead of on every batch of every epoch."""
    check_temperature(temperature)
    check_alpha(alpha)

    def loss_fn(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                teacher_logits: torch.Tensor) -> torch.Tensor:
        return kd_loss(model(images), teacher_logits, labels, temperature, alpha)

    return loss_fn


def teacher_logits(teacher: nn.Module, images: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """The teacher's logits on ``images`` (eval mode, in batches, on the CPU), to distil from without running it
    again every epoch."""
    return teacher_targets(teacher, images, batch_size=batch_size)


def check_compresses(student: nn.Module, teacher: nn.Module, factor: float = 1.0) -> float:
    """How many times fewer parameters ``student`` has than ``teacher``; a clear error unless it is at least
    ``factor`` (a student as large as its teacher compresses nothing)."""
    ratio = count_parameters(teacher) / max(count_parameters(student), 1)
    if ratio < factor:
        raise ValueError(f"the student has {count_parameters(student):,} parameters, the teacher "
                         f"{count_parameters(teacher):,}: {ratio:.1f}x fewer, but at least {factor:g}x fewer are "
                         "required; make the student narrower or shallower")
    return ratio


STUDENT_RECIPE = dict(epochs=10, lr=0.05, optimizer="sgd", weight_decay=5e-4, batch_size=128)


def label_loss(label_smoothing: float = 0.0) -> LossFn:
    """A ``loss_fn(model, images, labels, targets)`` that ignores the teacher: the student trained alone, on the
    labels (with ``label_smoothing`` ε, the one-hot targets become 1 - ε + ε/K and ε/K: uniform soft targets)."""
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")

    def loss_fn(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, _targets: torch.Tensor
                ) -> torch.Tensor:
        return F.cross_entropy(model(images), labels, label_smoothing=label_smoothing)

    return loss_fn


def train_student(make_student: Callable[[], nn.Module], targets: torch.Tensor, loss_fn: LossFn, seed: int = 0,
                  subset: torch.Tensor | None = None, progress: bool = False, **recipe) -> nn.Module:
    """Build a student with ``make_student()`` and train it on the training split with ``loss_fn(model, images,
    labels, targets)``, where ``targets`` are the teacher's precomputed outputs (:func:`teacher_targets`). Alone
    (:func:`label_loss`) or distilled (:func:`cached_distillation_loss`, :func:`attention_transfer_loss`), the
    student starts from the same weights and sees the same data in the same order with the same recipe
    (:data:`STUDENT_RECIPE`, overridable), so runs differ only in the loss. Returns it in eval mode."""
    seed_everything(seed)
    student = make_student()
    train(student, seed=seed, loss_fn=loss_fn, targets=targets, subset=subset, evaluate_every_epoch=False,
          progress=progress, **{**STUDENT_RECIPE, **recipe})
    return student.eval()


def attention_map(features: torch.Tensor) -> torch.Tensor:
    """Zagoruyko & Komodakis's spatial attention map of a feature map ``[batch, channels, H, W]``: the mean of the
    squared activations over channels, flattened to ``[batch, H*W]`` and L2-normalised per image."""
    if features.dim() != 4:
        raise ValueError(f"expected a feature map [batch, channels, height, width], got shape {tuple(features.shape)}")
    return F.normalize(features.pow(2).mean(1).flatten(1), dim=1)


@torch.inference_mode()
def teacher_targets(teacher: nn.Module, images: torch.Tensor, layer: str | None = None,
                    batch_size: int = 500) -> torch.Tensor:
    """The teacher's logits on ``images`` (eval mode, in batches, on the CPU), computed once to distil from; with
    ``layer``, each row also carries the attention map of that layer's output (logits first, then the map)."""
    teacher.eval()
    device = next(teacher.parameters()).device
    captured: list[torch.Tensor] = []
    handle = None if layer is None else teacher.get_submodule(layer).register_forward_hook(
        lambda module, args, output: captured.append(attention_map(output).cpu()))
    try:
        rows = [teacher(images[i:i + batch_size].to(device)).cpu() for i in range(0, len(images), batch_size)]
    finally:
        if handle is not None:
            handle.remove()
    logits = torch.cat(rows).float()
    return logits if layer is None else torch.cat([logits, torch.cat(captured)], dim=1)


def attention_transfer_loss(layer: str, beta: float = 1000.0, temperature: float | None = None,
                            alpha: float = 0.9) -> LossFn:
    """A ``loss_fn(model, images, labels, targets)`` for ``train(..., targets=teacher_targets(..., layer=...))``:
    the student's attention map at ``layer`` is pulled towards the teacher's (``beta`` × mean squared
    difference, as in Zagoruyko & Komodakis 2017), on top of the cross-entropy (``temperature=None``) or of
    :func:`kd_loss` at ``temperature``/``alpha``."""
    if beta < 0:
        raise ValueError(f"beta must be >= 0 (the weight of the attention term), got {beta}")
    if temperature is not None:
        check_temperature(temperature)
        check_alpha(alpha)

    def loss_fn(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor
                ) -> torch.Tensor:
        captured: list[torch.Tensor] = []
        handle = model.get_submodule(layer).register_forward_hook(lambda m, a, output: captured.append(output))
        try:
            logits = model(images)
        finally:
            handle.remove()
        classes = logits.shape[1]
        teacher_logits, teacher_map = targets[:, :classes], targets[:, classes:]
        student_map = attention_map(captured[0])
        if student_map.shape != teacher_map.shape:
            raise ValueError(f"the student's attention map at {layer!r} has {student_map.shape[1]} positions, the "
                             f"teacher's {teacher_map.shape[1]}: pick layers with the same spatial size")
        base = (F.cross_entropy(logits, labels) if temperature is None
                else kd_loss(logits, teacher_logits, labels, temperature, alpha))
        return base + beta * (student_map - teacher_map).pow(2).mean()

    return loss_fn


def distill_embeddings(student: nn.Module, teacher_embeddings: torch.Tensor, sentences: list[str],
                       epochs: int = 3, lr: float = 2e-4, batch_size: int = 32, seed: int = 0,
                       progress: bool = True) -> list[float]:
    """Train a sentence encoder (``student(input_ids, attention_mask)`` -> normalised embeddings) to reproduce the
    teacher's embeddings of ``sentences`` (``1 - cosine`` loss, AdamW, linear warm-up and decay). The embedding
    tables stay frozen (they hold most of the parameters and the student shares them with its teacher). Returns the
    mean loss of each epoch; the student is left in eval mode."""
    if len(teacher_embeddings) != len(sentences):
        raise ValueError(f"one teacher embedding per sentence is needed: {len(teacher_embeddings)} embeddings for "
                         f"{len(sentences)} sentences")
    if epochs < 1:
        raise ValueError(f"epochs must be at least 1, got {epochs}")
    seed_everything(seed)
    for name, parameter in student.named_parameters():
        parameter.requires_grad_(not name.endswith("_embeddings.weight"))
    trainable = [p for p in student.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=lr, weight_decay=0.01)
    steps = epochs * ((len(sentences) + batch_size - 1) // batch_size)
    warmup = max(1, steps // 10)  # linear warm-up over the first 10% of the steps, then linear decay to 0
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min((step + 1) / warmup, max(0.0, (steps - step) / max(1, steps - warmup))))
    generator = torch.Generator().manual_seed(seed)
    device = next(student.parameters()).device
    history = []
    student.train()
    for epoch in range(epochs):
        order = torch.randperm(len(sentences), generator=generator).tolist()
        total = 0.0
        for start in tqdm(range(0, len(order), batch_size), desc=f"epoch {epoch + 1}/{epochs}", leave=False,
                          disable=not progress):
            chosen = order[start:start + batch_size]
            tokens = tokenize([sentences[i] for i in chosen])
            embeddings = student(tokens["input_ids"].to(device), tokens["attention_mask"].to(device))
            loss = (1 - F.cosine_similarity(embeddings, teacher_embeddings[chosen].to(device), dim=1)).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total += loss.item() * len(chosen)
        history.append(total / len(sentences))
    student.requires_grad_(True)
    return history
