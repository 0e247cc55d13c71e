"""The course CNN's hybrid pipeline (notebook 08): remove filters, recover by distillation from the dense model,
quantize to int8; and the script that chooses its recipe on the validation split and ships the result.

    python -m course_lib.sweeps pipeline     # about 20 minutes on 2 CPU cores

The recipe is chosen on the validation split; the chosen model is written to
``data/checkpoints/course_cnn_pipeline.safetensors`` (its SHA-256 in ``data/SHA256SUMS``), so notebook 08 and the
bench load it in a second and quantize it themselves.
"""

from __future__ import annotations

import torch
from safetensors.torch import save_file
from torch import nn

from . import prune as P
from .data import DATA_DIR, Dataset, data_file, load_fashion_mnist, record_checksum
from .distill import distillation_loss
from .io import atomic_path
from .models import build_model, load_reference
from .train import evaluate, fine_tune, train

PIPELINE_CHECKPOINT = "checkpoints/course_cnn_pipeline.safetensors"
KEEP_FRACTIONS = (0.3, 0.4)  # both give >= 10x smaller files once int8 (0.5 keeps 38% of the weights: ~10.0x)
RECOVERY_EPOCHS = 3
RECOVERY_RECIPE = dict(P.RETRAIN_RECIPE, augment=True, progress=False, evaluate_every_epoch=False)
RECOVERY_LOSSES = ("labels", "distilled")
REDUCED_TRAINING_IMAGES = 5_000
REDUCED_EPOCHS = 15


def pruned_course_cnn(keep_fraction: float) -> nn.Module:
    """The reference course CNN with all but the ``keep_fraction`` largest-L1 filters of every convolution removed
    (no recovery yet)."""
    dense = load_reference("course_cnn")
    return P.remove_filters(dense, P.l1_filter_selection(dense, keep_fraction))


def recover(model: nn.Module, loss: str, temperature: float, alpha: float, epochs: int = RECOVERY_EPOCHS,
            subset: torch.Tensor | None = None, teacher: nn.Module | None = None) -> nn.Module:
    """Fine-tune a pruned model on the training split, on the labels alone (``loss="labels"``) or distilled from
    ``teacher`` (default: the dense reference course CNN) with temperature and alpha (``"distilled"``); the teacher
    sees the same augmented batches. Returns the model in eval mode."""
    if loss not in RECOVERY_LOSSES:
        raise ValueError(f"unknown recovery loss {loss!r}: choose one of {', '.join(RECOVERY_LOSSES)}")
    loss_fn = None
    if loss == "distilled":
        teacher = teacher if teacher is not None else load_reference("course_cnn")
        loss_fn = distillation_loss(teacher.eval(), temperature, alpha)
    fine_tune(model, epochs=epochs, loss_fn=loss_fn, subset=subset, **RECOVERY_RECIPE)
    return model.eval()


def load_pipeline_model() -> nn.Module:
    """The shipped result of the pipeline's first two steps (filters removed, recovered): fp32, eval mode."""
    return P.load_filter_pruned(data_file(PIPELINE_CHECKPOINT), build_model("course_cnn"))


def _save_checkpoint(model: nn.Module) -> str:
    """Write the chosen model atomically, record its SHA-256 in data/SHA256SUMS, return the digest."""
    with atomic_path(DATA_DIR / PIPELINE_CHECKPOINT) as tmp:
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp))
    return record_checksum(PIPELINE_CHECKPOINT)


def _reduced_data(subset: torch.Tensor, keep_fraction: float, temperature: float, alpha: float) -> dict:
    """Does compression regularise? A dense course CNN trained from scratch on ``subset`` only, then the same
    model with filters removed and recovered on the same subset: validation and training-subset accuracies."""
    from .train_reference import RECIPES, initial_model  # noqa: PLC0415

    dense = initial_model("course_cnn")
    train(dense, **{**RECIPES["course_cnn"], "epochs": REDUCED_EPOCHS}, subset=subset, evaluate_every_epoch=False,
          progress=False)
    training = load_fashion_mnist("train")
    seen, val = Dataset(training.images[subset], training.labels[subset]), load_fashion_mnist("val")
    pruned = P.remove_filters(dense, P.l1_filter_selection(dense, keep_fraction))
    recover(pruned, "distilled", temperature, alpha, subset=subset, teacher=dense)
    return {"images": len(subset), "epochs": REDUCED_EPOCHS, "keep_fraction": keep_fraction,
            "dense_val": round(evaluate(dense, val), 4), "pruned_val": round(evaluate(pruned, val), 4),
            "dense_train": round(evaluate(dense, seen), 4), "pruned_train": round(evaluate(pruned, seen), 4)}


def sweep(progress: bool = True) -> dict:
    """Choose the keep fraction and the recovery loss on the validation split (every candidate gives a >= 10x
    smaller int8 file), ship the chosen model, and measure whether compression regularises on 5,000 images."""
    from tqdm.auto import tqdm  # noqa: PLC0415

    from .sweeps import SWEEP_DATASET, load_results  # noqa: PLC0415 (sweeps registers this function)

    chosen_kd = load_results("distillation")["chosen"]
    temperature, alpha = chosen_kd["temperature"], chosen_kd["alpha"]
    val = load_fashion_mnist("val")
    grid, models = {}, {}
    for keep in tqdm(KEEP_FRACTIONS, desc="keep fractions", disable=not progress):
        for loss in RECOVERY_LOSSES:
            model = pruned_course_cnn(keep)
            before = evaluate(model, val)
            models[(keep, loss)] = recover(model, loss, temperature, alpha)
            grid[f"{keep}/{loss}"] = {"keep_fraction": keep, "loss": loss, "val_before": round(before, 4),
                                      "val_after": round(evaluate(model, val), 4),
                                      "parameters": sum(p.numel() for p in model.parameters())}
    best = max(grid.values(), key=lambda e: (e["val_after"], -e["parameters"]))
    digest = _save_checkpoint(models[(best["keep_fraction"], best["loss"])])
    subset = torch.randperm(len(load_fashion_mnist("train").labels),
                            generator=torch.Generator().manual_seed(0))[:REDUCED_TRAINING_IMAGES]
    return {"dataset": SWEEP_DATASET, "epochs": RECOVERY_EPOCHS, "temperature": temperature, "alpha": alpha,
            "grid": grid, "chosen": {"keep_fraction": best["keep_fraction"], "loss": best["loss"], "sha256": digest},
            "reduced_data": _reduced_data(subset, best["keep_fraction"], temperature, alpha)}
