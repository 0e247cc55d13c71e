"""Han et al.'s Deep Compression pipeline: prune with retraining → share weights with codebook fine-tuning →
Huffman-encode, writing every stage's real file and measuring its accuracy from the reloaded file.

Stages (the rows of notebook 04's table and of ``python -m course_lib.bench sharing``):

* ``fp32``: the dense reference, as safetensors.
* ``pruned``: magnitude-pruned (gradually, with retraining) and stored sparse, each weight in its smallest
  format (dense, bitmask or CSR: :func:`course_lib.prune.save_sparse`).
* ``pruned-shared``: k-means weight sharing with fine-tuned codebooks, indices and gaps packed at fixed width.
* ``deep-compression``: the same model, indices and gaps Huffman-coded.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .data import load_fashion_mnist
from .distill import distillation_loss
from .measure import save_state_dict
from .models import build_model, load_reference
from .prune import RETRAIN_RECIPE, gradual_prune, load_sparse, make_permanent, save_sparse, sparsity_of
from .share import CODEBOOK_RECIPE, fine_tune_codebooks, load_model, save_shared, share_model
from .train import evaluate

STAGES = ("fp32", "pruned", "pruned-shared", "deep-compression")
# Retraining towards a confident teacher's softened outputs is far more curved than cross-entropy near a trained
# model: SGD at RETRAIN_RECIPE's learning rate diverges there, Adam at a small rate does not.
DISTILL_RETRAIN = dict(lr=5e-4, optimizer="adam", weight_decay=1e-4)


@dataclass(frozen=True)
class Recipe:
    """What to do to one model: per-layer sparsity and index bits, and the training budget of each step."""

    sparsity: dict[str, float]
    bits: dict[str, int]
    prune_epochs: int = 12
    pruning_epochs: int = 6
    codebook_epochs: int = 2
    retrain: dict = field(default_factory=lambda: dict(RETRAIN_RECIPE))  # fine_tune settings while pruning
    distill: bool = False  # retrain towards the dense model's outputs (distillation_loss) instead of the labels alone
    steps_per_epoch: int | None = None  # None: the whole training set each epoch (fewer: quick checks only)
    dense_dtype: torch.dtype = torch.float16


RECIPES = {
    # 16 epochs (8 of them pruning) chosen on the validation split: 0.5 points lost there, against 1.2 with 12 (6)
    # and 0.9 with 12 epochs of distillation, at 48× in every case
    "lenet_300_100": Recipe(sparsity={"fc1": 0.93, "fc2": 0.88, "fc3": 0.6}, bits={"fc1": 4, "fc2": 4, "fc3": 5},
                            prune_epochs=16, pruning_epochs=8),
    "lenet5": Recipe(sparsity={"conv1": 0.4, "conv2": 0.8, "fc1": 0.93, "fc2": 0.5},
                     bits={"conv1": 6, "conv2": 5, "fc1": 4, "fc2": 5}, prune_epochs=16, pruning_epochs=8,
                     distill=True, retrain=DISTILL_RETRAIN),
}


@dataclass
class Stage:
    """One stage's file: its bytes, the test and validation accuracy of the model reloaded from it, and the
    weights kept. Recipes are compared on ``val_accuracy``; ``accuracy`` (test) is reported for the final model."""

    name: str
    path: Path
    size_bytes: int
    accuracy: float
    kept_fraction: float
    val_accuracy: float


@dataclass
class Result:
    """All stages of one run, in pipeline order."""

    model_name: str
    stages: list[Stage] = field(default_factory=list)

    def stage(self, name: str) -> Stage:
        """The stage called ``name`` (one of :data:`STAGES`)."""
        return next(s for s in self.stages if s.name == name)


def _kept(model: torch.nn.Module) -> float:
    return round(1 - sparsity_of(model), 4)


def _stage(name: str, path: Path, size: int, model: torch.nn.Module) -> Stage:
    return Stage(name, path, size, evaluate(model), _kept(model), evaluate(model, load_fashion_mnist("val")))


def run(model_name: str, folder: str | os.PathLike, recipe: Recipe | None = None,
        device: torch.device | str = "cpu", progress: bool = False) -> Result:
    """Compress the reference ``model_name`` with ``recipe`` (default: :data:`RECIPES`), writing one file per
    stage into ``folder``; each stage's validation and test accuracy are measured from its reloaded file."""
    recipe = recipe or RECIPES[model_name]
    folder = Path(folder)
    result = Result(model_name)
    model = load_reference(model_name, device)
    path = folder / f"{model_name}.safetensors"
    result.stages.append(_stage("fp32", path, save_state_dict(model, path), model))

    training = dict(device=device, progress=progress, steps_per_epoch=recipe.steps_per_epoch)
    if recipe.distill:
        training["loss_fn"] = distillation_loss(load_reference(model_name, device))
    gradual_prune(model, dict(recipe.sparsity), recipe.prune_epochs, recipe.pruning_epochs, **training,
                  **recipe.retrain)
    make_permanent(model)
    path = folder / f"{model_name}-pruned.safetensors"
    size = save_sparse(model, path)
    reloaded = load_sparse(path, build_model(model_name)).to(device)
    result.stages.append(_stage("pruned", path, size, reloaded))

    shared = share_model(model, dict(recipe.bits))
    shared = fine_tune_codebooks(model, shared, recipe.codebook_epochs, **training, **CODEBOOK_RECIPE)
    for stage, huffman in (("pruned-shared", False), ("deep-compression", True)):
        path = folder / f"{model_name}-{stage}.dcmp"
        size = save_shared(model, shared, path, huffman=huffman, dense_dtype=recipe.dense_dtype)
        reloaded = load_model(path, build_model(model_name)).to(device)
        result.stages.append(_stage(stage, path, size, reloaded))
    return result
