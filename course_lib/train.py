"""Train, evaluate and fine-tune the course's models, deterministically, with tqdm.auto progress."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import islice

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from tqdm.auto import tqdm

from course_lib.data import Dataset, load_fashion_mnist, make_loader
from course_lib.runtime import seed_everything


def augment_flip_crop(images: torch.Tensor, generator: torch.Generator, padding: int = 2) -> torch.Tensor:
    """Random horizontal flip and random crop with zero padding, per image (a batch ``[N, C, H, W]``)."""
    n, _, h, w = images.shape
    flip = torch.rand(n, generator=generator) < 0.5
    images = torch.where(flip[:, None, None, None], images.flip(3), images)
    padded = nn.functional.pad(images, (padding,) * 4, value=float(images.min()))
    dy = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
    rows = (dy[:, None] + torch.arange(h))[:, None, :, None].expand(n, images.shape[1], h, w + 2 * padding)
    cropped = padded.gather(2, rows)
    cols = (dx[:, None] + torch.arange(w))[:, None, None, :].expand(n, images.shape[1], h, w)
    return cropped.gather(3, cols)


@dataclass
class History:
    """Per-epoch training loss and validation accuracy (the test set is kept for final models)."""

    train_loss: list[float] = field(default_factory=list)
    val_accuracy: list[float] = field(default_factory=list)


@torch.inference_mode()
def predict(model: nn.Module, images: torch.Tensor, batch_size: int = 1000,
            device: torch.device | str | None = None, fixed_batch: bool = False) -> torch.Tensor:
    """Logits of ``model`` on ``images`` (evaluated in batches, in eval mode), returned on the CPU.

    ``fixed_batch`` pads the last batch to ``batch_size`` so that a compiled model sees a single shape.
    """
    device = device or _device_of(model)
    was_training = model.training
    _set_training(model, False)
    outputs = []
    for i in range(0, len(images), batch_size):
        chunk = images[i:i + batch_size]
        missing = batch_size - len(chunk) if fixed_batch else 0
        if missing:
            chunk = torch.cat([chunk, chunk.new_zeros((missing, *chunk.shape[1:]))])
        outputs.append(model(chunk.to(device))[:len(chunk) - missing].float().cpu())
    _set_training(model, was_training)
    return torch.cat(outputs)


def _set_training(model: nn.Module, mode: bool) -> None:
    """``model.train(mode)``, except for exported programs, whose mode was fixed when they were exported."""
    try:
        model.train(mode)
    except NotImplementedError:
        pass


def _device_of(model: nn.Module) -> torch.device:
    """The device of a model's first parameter or buffer (CPU for a model without any, e.g. an int8 graph)."""
    tensors = [*model.parameters(), *model.buffers()][:1]
    return tensors[0].device if tensors else torch.device("cpu")


def evaluate(model: nn.Module, dataset: Dataset | None = None, batch_size: int = 1000,
             device: torch.device | str | None = None, fixed_batch: bool = False) -> float:
    """Top-1 accuracy of ``model`` on a dataset (default: the full 10,000-image Fashion-MNIST test set)."""
    dataset = dataset or load_fashion_mnist("test")
    logits = predict(model, dataset.images, batch_size=batch_size, device=device, fixed_batch=fixed_batch)
    return (logits.argmax(1) == dataset.labels).float().mean().item()


def train(
    model: nn.Module,
    epochs: int,
    lr: float,
    optimizer: str = "sgd",
    weight_decay: float = 5e-4,
    batch_size: int = 128,
    augment: bool = False,
    seed: int = 0,
    device: torch.device | str = "cpu",
    loss_fn: Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    evaluate_every_epoch: bool = True,
    progress: bool = True,
    steps_per_epoch: int | None = None,
    on_step: Callable[[int, int], None] | None = None,
    targets: torch.Tensor | None = None,
    subset: torch.Tensor | None = None,
) -> History:
    """Train ``model`` on the Fashion-MNIST training split (55,000 images) with a one-cycle learning-rate schedule.

    ``optimizer`` is ``"sgd"`` (Nesterov momentum 0.9) or ``"adam"``. ``loss_fn(model, images, labels)``
    replaces cross-entropy (e.g. for distillation). ``steps_per_epoch`` stops each epoch after that many batches
    (a short fine-tune on part of the data). ``evaluate_every_epoch`` records the validation accuracy after each
    epoch. ``on_step(step, total_steps)`` runs after every optimiser step (step counts from 1), e.g. to prune
    gradually. ``targets`` (one row per training image, e.g. a teacher's precomputed logits) are shuffled with the
    images and passed as a fourth argument: ``loss_fn(model, images, labels, targets)``. ``subset`` (indices into
    the training split) trains on those images only. The same seed gives the same run.
    """
    if epochs < 1:
        raise ValueError(f"epochs must be at least 1, got {epochs}")
    if optimizer not in ("sgd", "adam"):
        raise ValueError(f"unknown optimizer {optimizer!r}: use 'sgd' or 'adam'")
    seed_everything(seed)
    device = torch.device(device)
    model.to(device)
    loader = _training_loader(batch_size, seed, targets, subset)
    if steps_per_epoch is not None and not 1 <= steps_per_epoch <= len(loader):
        raise ValueError(f"steps_per_epoch must be from 1 to {len(loader)} (batches in an epoch), got {steps_per_epoch}")
    steps = steps_per_epoch or len(loader)
    params = [p for p in model.parameters() if p.requires_grad]
    if optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay)
    else:
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps, pct_start=0.15)
    if targets is not None and loss_fn is None:
        raise ValueError("targets need a loss_fn(model, images, labels, targets) that uses them")
    if targets is not None and augment:
        raise ValueError("precomputed targets describe the images as stored, not augmented ones: train with "
                         "augment=False, or compute the targets live inside loss_fn")
    loss_fn = loss_fn or (lambda m, x, y: nn.functional.cross_entropy(m(x), y))
    generator = torch.Generator().manual_seed(seed)
    history = History()
    for epoch in tqdm(range(epochs), desc="epochs", disable=not progress):
        after_step = None if on_step is None else (
            lambda i, first=epoch * steps: on_step(first + i, epochs * steps))
        history.train_loss.append(_train_epoch(model, loader, opt, schedule, loss_fn, augment, generator, device,
                                               progress, f"epoch {epoch + 1}/{epochs}", steps, after_step))
        if evaluate_every_epoch:
            history.val_accuracy.append(evaluate(model, load_fashion_mnist("val"), device=device))
    model.eval()
    return history


def _training_loader(batch_size: int, seed: int, targets: torch.Tensor | None,
                     subset: torch.Tensor | None) -> DataLoader:
    """The shuffled training loader: the whole training split, or ``subset`` of it, with ``targets`` alongside."""
    if targets is None and subset is None:
        return make_loader("train", batch_size=batch_size, shuffle=True, seed=seed)
    data = load_fashion_mnist("train")
    columns = [data.images, data.labels]
    if targets is not None:
        if len(targets) != len(data.labels):
            raise ValueError(f"targets must have one row per training image ({len(data.labels):,}), got {len(targets):,}")
        columns.append(targets)
    if subset is not None:
        if len(subset) == 0 or int(subset.min()) < 0 or int(subset.max()) >= len(data.labels):
            raise ValueError(f"subset must hold indices from 0 to {len(data.labels) - 1}, got {len(subset)} indices")
        columns = [column[subset] for column in columns]
    return DataLoader(TensorDataset(*columns), batch_size=batch_size, shuffle=True,
                      generator=torch.Generator().manual_seed(seed))


def _train_epoch(model, loader: DataLoader, opt, schedule, loss_fn, augment: bool, generator: torch.Generator,
                 device: torch.device, progress: bool, desc: str, steps: int,
                 after_step: Callable[[int], None] | None = None) -> float:
    model.train()
    memory_format = torch.channels_last if _has_conv(model) else torch.contiguous_format
    total, count = 0.0, 0
    for step, (images, labels, *extra) in enumerate(tqdm(islice(loader, steps), total=steps, desc=desc, leave=False,
                                                         disable=not progress), start=1):
        if augment:
            images = augment_flip_crop(images, generator)
        images = images.to(device, memory_format=memory_format)
        labels = labels.to(device)
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model, images, labels, *(e.to(device) for e in extra))
        loss.backward()
        opt.step()
        schedule.step()
        if after_step is not None:
            after_step(step)
        total += loss.item() * len(labels)
        count += len(labels)
    return total / count


def _has_conv(model: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) for m in model.modules())


def fine_tune(model: nn.Module, epochs: int = 1, lr: float = 1e-3, **kwargs) -> History:
    """Briefly retrain an already trained (e.g. compressed) model with a small learning rate."""
    return train(model, epochs=epochs, lr=lr, **kwargs)


@torch.no_grad()
def reestimate_batch_norm(model: nn.Module, images: torch.Tensor, batch_size: int = 128) -> nn.Module:
    """Recompute every batch norm's running mean and variance from ``images`` (the average over the batches),
    with no weight changed: the fix for statistics that no longer match after the weights were altered (e.g.
    quantized). Returns ``model`` in eval mode."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        raise ValueError("the model has no batch-norm layer: there are no statistics to re-estimate")
    if len(images) < 2:
        raise ValueError(f"need at least 2 images to estimate a variance, got {len(images)}")
    momenta = [m.momentum for m in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a cumulative average over all the batches, not an exponential one
    model.train()
    device = _device_of(model)
    for start in range(0, len(images), batch_size):
        batch = images[start:start + batch_size]  # a final batch of 1 has no variance: skipped
        if len(batch) > 1:
            model(batch.to(device))
    for norm, momentum in zip(norms, momenta, strict=True):
        norm.momentum = momentum
    return model.eval()
