"""Knowledge distillation (Hinton et al. 2015): train a model to match a teacher's softened outputs.

Notebook 05 is about distillation; Deep Compression (notebook 04) already uses the loss to retrain a pruned
model towards the dense model it came from.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn


def distillation_loss(teacher: nn.Module, temperature: float = 4.0, alpha: float = 0.9
                      ) -> Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]:
    """A ``loss_fn(model, images, labels)`` for :func:`course_lib.train.train`: ``alpha`` × the KL divergence
    between the teacher's and the model's softmax at ``temperature`` (scaled by T², so its gradients keep their
    size as T changes) + ``1 - alpha`` × the cross-entropy with the labels. The teacher is frozen, in eval mode."""
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1] (the weight of the teacher's term), got {alpha}")
    teacher.eval().requires_grad_(False)

    def loss_fn(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        logits = model(images)
        with torch.no_grad():  # log-probabilities: a target probability that underflows to 0 cannot make a NaN
            log_targets = F.log_softmax(teacher(images) / temperature, dim=1)
        soft = F.kl_div(F.log_softmax(logits / temperature, dim=1), log_targets, reduction="batchmean",
                        log_target=True)
        return alpha * temperature ** 2 * soft + (1 - alpha) * F.cross_entropy(logits, labels)

    return loss_fn
