"""Pruning: choose weights, groups of weights or whole filters to remove, and make the removal real.

Unstructured pruning here applies masks with ``torch.nn.utils.prune`` (the maintained implementation: the mask
is re-applied in every forward pass, so retraining keeps pruned weights at zero). Masks alone do not make a
model smaller or faster: :func:`sparse_state_dict` stores what is left in CSR form with its indices, and
:func:`remove_filters` physically rebuilds a CNN with fewer channels.
"""

from __future__ import annotations

import copy
import json
import math
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn.utils import prune as torch_prune
from tqdm.auto import tqdm

from .data import load_fashion_mnist
from .io import atomic_path
from .train import evaluate, fine_tune

Scope = Literal["global", "layer"]
Granularity = Literal["connection", "vector", "kernel", "filter"]
GRANULARITIES: tuple[str, ...] = ("connection", "vector", "kernel", "filter")
PRUNABLE = (nn.Linear, nn.Conv2d)
RETRAIN_RECIPE = dict(lr=0.02, optimizer="sgd", weight_decay=1e-4)  # fine_tune settings for retraining after pruning


def check_sparsity(sparsity: float) -> float:
    """Return ``sparsity`` if it is a number in [0, 1), else raise a ValueError that says what is allowed."""
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) or not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be a fraction in [0, 1) (0.9 removes 90% of the weights), got {sparsity!r}")
    return float(sparsity)


def prunable_layers(model: nn.Module, names: Iterable[str] | None = None) -> dict[str, nn.Module]:
    """The Linear and Conv2d layers of ``model`` (or those named), by name; a clear error for other layers."""
    modules = dict(model.named_modules())
    layers = {n: m for n, m in modules.items() if isinstance(m, PRUNABLE)}
    if names is None:
        if not layers:
            raise ValueError("the model has no Linear or Conv2d layer to prune")
        return layers
    chosen = {}
    for name in names:
        module = modules.get(name)
        if module is None:
            raise ValueError(f"the model has no layer {name!r}; prunable layers: {', '.join(layers)}")
        if not isinstance(module, PRUNABLE):
            raise TypeError(f"cannot prune {name} ({type(module).__name__}): only Linear and Conv2d weights are "
                            "supported")
        chosen[name] = module
    return chosen


def _weight(layer: nn.Module) -> torch.Tensor:
    """The layer's effective weight (masked, if a mask is applied; current even between optimiser steps)."""
    if torch_prune.is_pruned(layer):
        return (layer.weight_orig * layer.weight_mask).detach()
    return layer.weight.detach()


def magnitude_masks(model: nn.Module, sparsity: float, scope: Scope = "global",
                    names: Iterable[str] | None = None) -> dict[str, torch.Tensor]:
    """Masks (1 = keep) that remove the ``sparsity`` fraction of smallest-magnitude weights.

    ``global`` ranks all chosen layers' weights together (layers with small weights lose more); ``layer``
    removes the same fraction from every layer.
    """
    check_sparsity(sparsity)
    if scope not in ("global", "layer"):
        raise ValueError(f"scope must be 'global' or 'layer', got {scope!r}")
    layers = prunable_layers(model, names)
    scores = {name: _weight(layer).abs() for name, layer in layers.items()}
    return masks_from_scores(scores, sparsity, scope)


def masks_from_scores(scores: dict[str, torch.Tensor], sparsity: float, scope: Scope = "global"
                      ) -> dict[str, torch.Tensor]:
    """Keep the highest-scoring weights: exactly ``round(sparsity × count)`` of the lowest scores (overall or per
    layer) get mask 0. Ties at the threshold are broken by position (a stable sort), never by removing them all."""
    check_sparsity(sparsity)
    if scope == "global":
        flat = torch.cat([s.flatten() for s in scores.values()])
        kept = torch.ones(flat.numel())
        kept[flat.argsort(stable=True)[:int(round(sparsity * flat.numel()))]] = 0.0
        pieces = kept.split([s.numel() for s in scores.values()])
        return {name: piece.reshape(s.shape) for (name, s), piece in zip(scores.items(), pieces, strict=True)}
    return {name: masks_from_scores({name: s}, sparsity)[name] for name, s in scores.items()}


def random_masks_like(masks: dict[str, torch.Tensor], seed: int = 0) -> dict[str, torch.Tensor]:
    """Masks that keep exactly as many weights in each layer as ``masks`` do, at random positions (seeded): the
    control that tells what a pruning mask's *positions* carry, e.g. for lottery tickets."""
    generator = torch.Generator().manual_seed(seed)
    shuffled = {}
    for name, mask in masks.items():
        flat = mask.flatten()
        shuffled[name] = flat[torch.randperm(flat.numel(), generator=generator)].reshape(mask.shape)
    return shuffled


def apply_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> nn.Module:
    """Apply masks in place with ``torch.nn.utils.prune.custom_from_mask`` (masked weights stay zero in training).

    A layer that already has a mask gets the new one in place: weights pruned before stay zero, and the parameters
    remain the same objects, so an optimiser that is training the model keeps training them.
    """
    layers = prunable_layers(model, masks)
    for name, mask in masks.items():
        layer = layers[name]
        if mask.shape != layer.weight.shape:
            raise ValueError(f"mask for {name} has shape {tuple(mask.shape)}, the weight {tuple(layer.weight.shape)}")
        if torch_prune.is_pruned(layer):
            with torch.no_grad():
                layer.weight_orig.mul_(layer.weight_mask)
                layer.weight_mask.copy_(mask)
                layer.weight = layer.weight_orig * layer.weight_mask
        else:
            torch_prune.custom_from_mask(layer, "weight", mask.to(layer.weight.device))
    return model


def make_permanent(model: nn.Module) -> nn.Module:
    """Fold the masks into the weights (plain ``weight`` parameters with zeros), in place."""
    for module in model.modules():
        if isinstance(module, PRUNABLE) and torch_prune.is_pruned(module):
            torch_prune.remove(module, "weight")
    return model


def sparsity_of(model: nn.Module, names: Iterable[str] | None = None) -> float:
    """Fraction of zero weights over the chosen Linear/Conv2d layers."""
    weights = [_weight(layer) for layer in prunable_layers(model, names).values()]
    total = sum(w.numel() for w in weights)
    return sum(int((w == 0).sum()) for w in weights) / total


def cubic_schedule(step: int, total_steps: int, final_sparsity: float, initial_sparsity: float = 0.0) -> float:
    """Zhu & Gupta (2017): sparsity rises fast at first, then slowly: ``s_f + (s_i - s_f)(1 - t/T)^3``."""
    check_sparsity(final_sparsity)
    check_sparsity(initial_sparsity)
    if total_steps < 1 or not 0 <= step <= total_steps:
        raise ValueError(f"need 0 <= step <= total_steps and total_steps >= 1, got step={step}, "
                         f"total_steps={total_steps}")
    return final_sparsity + (initial_sparsity - final_sparsity) * (1 - step / total_steps) ** 3


def group_scores(weight: torch.Tensor, granularity: Granularity) -> torch.Tensor:
    """L1 norm of each group of weights, broadcast back to the weight's shape.

    Groups (Mao et al. 2017): ``connection`` one weight; ``vector`` one row of a k×k kernel (for a Linear weight:
    one column, an input feature's weights to every output); ``kernel`` one k×k kernel (conv only); ``filter`` one
    output channel (for a Linear weight: one output neuron's row).
    """
    if granularity not in GRANULARITIES:
        raise ValueError(f"unknown granularity {granularity!r}: choose one of {', '.join(GRANULARITIES)}")
    w = weight.detach().abs()
    if granularity == "connection":
        return w
    if granularity == "filter":
        return w.flatten(1).sum(dim=1).reshape(-1, *[1] * (w.dim() - 1)).expand_as(w).clone()
    if w.dim() == 2:
        if granularity == "kernel":
            raise ValueError("kernel granularity needs a convolution weight [out, in, kh, kw]")
        return w.sum(dim=0, keepdim=True).expand_as(w).clone()  # a column: one input feature, all outputs
    if granularity == "kernel":
        return w.sum(dim=(2, 3), keepdim=True).expand_as(w).clone()
    return w.sum(dim=3, keepdim=True).expand_as(w).clone()  # vector: one row of each kernel


def structured_masks(model: nn.Module, sparsity: float, granularity: Granularity,
                     names: Iterable[str] | None = None) -> dict[str, torch.Tensor]:
    """Per-layer masks that remove whole groups (by L1 norm) until ``sparsity`` of each layer's weights is gone."""
    check_sparsity(sparsity)
    masks = {}
    for name, layer in prunable_layers(model, names).items():
        scores = group_scores(_weight(layer), granularity)
        masks.update(masks_from_scores({name: scores}, sparsity, scope="layer"))
        if granularity != "connection":
            masks[name] = _round_to_groups(scores, masks[name])
    return masks


def _round_to_groups(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Make a mask respect group boundaries: a group is kept if its score is above the highest pruned score."""
    if bool((mask == 0).any()):
        threshold = scores[mask == 0].max()
        return (scores > threshold).float()
    return mask


def hutchinson_hessian_diagonal(model: nn.Module, loss_fn, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                                samples: int = 4, names: Iterable[str] | None = None,
                                seed: int = 0) -> dict[str, torch.Tensor]:
    """Estimate the diagonal of the loss Hessian for each chosen layer's weight: ``E[v * (H v)]`` with random
    ±1 vectors ``v`` (Hutchinson), averaged over ``samples`` vectors per batch and over ``batches``."""
    layers = prunable_layers(model, names)
    params = [layer.weight for layer in layers.values()]
    generator = torch.Generator().manual_seed(seed)
    total = [torch.zeros_like(p) for p in params]
    count = 0
    for images, labels in batches:
        loss = loss_fn(model(images), labels)
        grads = torch.autograd.grad(loss, params, create_graph=True)
        for _ in range(samples):
            vs = [torch.randint(0, 2, p.shape, generator=generator).to(p) * 2 - 1 for p in params]
            hvs = torch.autograd.grad(grads, params, grad_outputs=vs, retain_graph=True)
            for t, v, hv in zip(total, vs, hvs, strict=True):
                t += (v * hv).detach()
            count += 1
    if count == 0:
        raise ValueError("no batch was given: pass a few (images, labels) batches of training data")
    return {name: t / count for name, t in zip(layers, total, strict=True)}


def gauss_newton_diagonal(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                          names: Iterable[str] | None = None) -> dict[str, torch.Tensor]:
    """The exact diagonal of the Gauss–Newton matrix of the mean cross-entropy, for each chosen Linear layer.

    With ``p`` the softmax output, the loss Hessian in the logits is ``diag(p) − p pᵀ = M Mᵀ`` with columns
    ``m_k = √p_k (e_k − p)``, so the diagonal is ``Σ_samples Σ_k (Jᵀ m_k)²``: one backward pass per class. For
    weight ``W[i, j]`` the per-sample gradient is ``δ_i a_j``, so a batch contributes ``(δ²)ᵀ (a²)``. In a ReLU
    network every logit is piecewise linear in each single weight, so this *is* the Hessian's diagonal (no noise).
    """
    layers = prunable_layers(model, names)
    wrong = [name for name, layer in layers.items() if not isinstance(layer, nn.Linear)]
    if wrong:
        raise TypeError(f"gauss_newton_diagonal handles Linear layers only; {wrong} are not: pass names= to choose")
    seen: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def remember(name: str):
        def hook(_module, args, output):
            if args[0].dim() != 2:
                raise ValueError(f"layer {name!r} got a {args[0].dim()}-D input: only [batch, features] is handled")
            seen[name] = (args[0].detach(), output)
        return hook

    handles = [layer.register_forward_hook(remember(name)) for name, layer in layers.items()]
    total = {name: torch.zeros_like(layer.weight) for name, layer in layers.items()}
    samples = 0
    try:
        for images, _labels in batches:
            logits = model(images)
            probs = logits.detach().softmax(dim=-1)
            outputs = [seen[name][1] for name in layers]
            for k in range(probs.shape[1]):
                column = probs[:, k:k + 1].sqrt() * (nn.functional.one_hot(torch.tensor(k), probs.shape[1]) - probs)
                deltas = torch.autograd.grad(logits, outputs, grad_outputs=column, retain_graph=True)
                for name, delta in zip(layers, deltas, strict=True):
                    total[name] += delta.pow(2).T @ seen[name][0].pow(2)
            samples += len(images)
    finally:
        for handle in handles:
            handle.remove()
    if samples == 0:
        raise ValueError("no batch was given: pass a few (images, labels) batches of training data")
    return {name: t / samples for name, t in total.items()}


def obd_saliency(model: nn.Module, hessian_diagonal: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Optimal Brain Damage (LeCun et al. 1990): the loss increase from deleting a weight, ``h_ii w_i^2 / 2``."""
    layers = prunable_layers(model, hessian_diagonal)
    return {name: 0.5 * hessian_diagonal[name].clamp(min=0) * _weight(layer) ** 2 for name, layer in layers.items()}


def filter_l1_norms(conv: nn.Conv2d) -> torch.Tensor:
    """L1 norm of each output filter (Li et al. 2017's ranking: small filters matter least)."""
    return conv.weight.detach().abs().flatten(1).sum(dim=1)


def remove_filters(model: nn.Module, keep: dict[str, torch.Tensor]) -> nn.Module:
    """A smaller copy of a CNN whose ``features`` (conv → batch norm → … → conv) and ``classifier`` (flatten →
    Linear) are ``nn.Sequential``, keeping only the output channels listed in ``keep[conv_name]``.

    Each pruned convolution is rebuilt with fewer filters, its batch norm with fewer channels, and the next
    convolution (or the first Linear after the features) with fewer inputs: the network really shrinks.
    """
    if not hasattr(model, "features") or not hasattr(model, "classifier"):
        raise TypeError("remove_filters needs a model with `features` and `classifier` nn.Sequential blocks "
                        "(like the course CNN)")
    pruned = copy.deepcopy(model)
    features = pruned.features
    convs = [i for i, m in enumerate(features) if isinstance(m, nn.Conv2d)]
    names = {f"features.{i}": i for i in convs}
    unknown = sorted(set(keep) - set(names))
    if unknown:
        raise ValueError(f"not convolutions of features: {unknown}; choose from {sorted(names)}")
    for name, channels in keep.items():
        index = names[name]
        conv = features[index]
        channels = torch.as_tensor(channels, dtype=torch.long).unique()
        if len(channels) == 0:
            raise ValueError(f"cannot remove every channel of {name}: keep at least one")
        if int(channels.min()) < 0 or int(channels.max()) >= conv.out_channels:
            raise ValueError(f"channel indices for {name} must be in [0, {conv.out_channels})")
        features[index] = _select_conv(conv, out_channels=channels)
        following = features[index + 1] if index + 1 < len(features) else None
        if isinstance(following, nn.BatchNorm2d):
            features[index + 1] = _select_batch_norm(following, channels)
        later = [i for i in convs if i > index]
        if later:
            features[later[0]] = _select_conv(features[later[0]], in_channels=channels)
        else:
            linear_index, linear = next((i, m) for i, m in enumerate(pruned.classifier) if isinstance(m, nn.Linear))
            pruned.classifier[linear_index] = _select_linear_inputs(linear, channels, conv.out_channels)
    return pruned.train(model.training)  # the rebuilt layers start in the original's mode (eval: running stats)


def load_filter_pruned(path: str | os.PathLike, skeleton: nn.Module) -> nn.Module:
    """Reload a model saved (as safetensors) after :func:`remove_filters`: ``skeleton`` (an unpruned model of the
    same architecture) is narrowed to the channel counts found in the file, then loaded."""
    state = load_file(str(path))
    keep = {f"features.{i}": torch.arange(state[f"features.{i}.weight"].shape[0])
            for i, layer in enumerate(skeleton.features) if isinstance(layer, nn.Conv2d)}
    model = remove_filters(skeleton, keep)
    model.load_state_dict(state, strict=True)
    return model.eval()


def _select_conv(conv: nn.Conv2d, out_channels: torch.Tensor | None = None,
                 in_channels: torch.Tensor | None = None) -> nn.Conv2d:
    weight = conv.weight.detach()
    bias = None if conv.bias is None else conv.bias.detach()
    if out_channels is not None:
        weight, bias = weight[out_channels], None if bias is None else bias[out_channels]
    if in_channels is not None:
        weight = weight[:, in_channels]
    new = nn.Conv2d(weight.shape[1], weight.shape[0], conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                    bias=bias is not None)
    with torch.no_grad():
        new.weight.copy_(weight)
        if bias is not None:
            new.bias.copy_(bias)
    return new


def _select_batch_norm(bn: nn.BatchNorm2d, channels: torch.Tensor) -> nn.BatchNorm2d:
    new = nn.BatchNorm2d(len(channels), eps=bn.eps, momentum=bn.momentum)
    with torch.no_grad():
        for attr in ("weight", "bias", "running_mean", "running_var"):
            getattr(new, attr).copy_(getattr(bn, attr)[channels])
    return new


def _select_linear_inputs(linear: nn.Linear, channels: torch.Tensor, total_channels: int) -> nn.Linear:
    """Keep the inputs of a Linear that reads flattened ``[channels, h, w]`` maps from the kept channels only."""
    per_channel = linear.in_features // total_channels
    columns = (channels.unsqueeze(1) * per_channel + torch.arange(per_channel)).flatten()
    new = nn.Linear(len(columns), linear.out_features, bias=linear.bias is not None)
    with torch.no_grad():
        new.weight.copy_(linear.weight[:, columns])
        if linear.bias is not None:
            new.bias.copy_(linear.bias)
    return new


SparseFormat = Literal["dense", "csr", "bitmask"]
SPARSE_FORMATS: tuple[SparseFormat, ...] = ("dense", "csr", "bitmask")


def _csr_index_dtype(columns: int) -> torch.dtype:
    """Column indices of a CSR weight: uint16 where the row length allows, else int32."""
    return torch.uint16 if columns <= 65536 else torch.int32


def sparse_format_bytes(weight: torch.Tensor) -> dict[SparseFormat, int]:
    """Payload bytes of one weight (as a 2-D matrix: rows = output units or filters) in each storage format:

    * ``dense``: every value, fp32;
    * ``csr``: the nonzero values (fp32), their column indices (uint16 where the row length allows, else int32) and
      one int32 row pointer per row plus one;
    * ``bitmask``: one bit per weight saying whether it is kept, then the kept values (fp32).
    """
    matrix = weight.detach().flatten(1) if weight.dim() > 1 else weight.detach()[None]
    rows, columns = matrix.shape
    kept = int(matrix.count_nonzero())
    return {"dense": 4 * matrix.numel(),
            "csr": kept * (4 + _csr_index_dtype(columns).itemsize) + 4 * (rows + 1),
            "bitmask": math.ceil(matrix.numel() / 8) + 4 * kept}


def _pack_bits(mask: torch.Tensor) -> torch.Tensor:
    bits = torch.nn.functional.pad(mask.flatten().to(torch.uint8), (0, -mask.numel() % 8)).reshape(-1, 8)
    return (bits << torch.arange(7, -1, -1, dtype=torch.uint8)).sum(dim=1, dtype=torch.uint8)


def _unpack_bits(packed: torch.Tensor, count: int) -> torch.Tensor:
    return ((packed[:, None] >> torch.arange(7, -1, -1, dtype=torch.uint8)) & 1).flatten()[:count].bool()


def save_sparse(model: nn.Module, path: str | os.PathLike,
                formats: Iterable[SparseFormat] = SPARSE_FORMATS) -> int:
    """Save a pruned model as safetensors, each Linear/Conv2d weight in whichever of ``formats`` takes the fewest
    bytes (:func:`sparse_format_bytes`: a barely pruned layer stays dense, a very sparse one goes to CSR, the
    range between to a bitmask); everything else dense. Returns the file's bytes. ``formats=("csr",)`` forces CSR."""
    formats = tuple(formats)
    if not formats or set(formats) - set(SPARSE_FORMATS):
        raise ValueError(f"formats must be chosen from {SPARSE_FORMATS}, got {formats}")
    tensors: dict[str, torch.Tensor] = {}
    layers = prunable_layers(model)
    chosen_formats = {}
    for name, layer in layers.items():
        weight = _weight(layer).contiguous()
        sizes = sparse_format_bytes(weight)
        chosen = chosen_formats[name] = min(formats, key=sizes.__getitem__)
        key = f"{name}.weight"
        if chosen == "dense":
            tensors[key] = weight
            continue
        tensors[f"{key}.shape"] = torch.tensor(weight.shape, dtype=torch.int32)
        if chosen == "bitmask":
            nonzero = weight != 0
            tensors[f"{key}.bitmask"] = _pack_bits(nonzero)
            tensors[f"{key}.values"] = weight[nonzero].contiguous()
        else:
            csr = weight.flatten(1).to_sparse_csr()
            tensors[f"{key}.values"] = csr.values().contiguous()
            tensors[f"{key}.columns"] = csr.col_indices().to(_csr_index_dtype(csr.shape[1])).contiguous()
            tensors[f"{key}.row_pointers"] = csr.crow_indices().to(torch.int32).contiguous()
    for key, value in model.state_dict().items():
        owner = key.rsplit(".", 1)[0]
        if owner in layers and key.rsplit(".", 1)[1] in ("weight", "weight_orig", "weight_mask"):
            continue
        tensors[key] = value.contiguous()
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"weight_formats": json.dumps(chosen_formats)})
    return Path(path).stat().st_size


def stored_formats(path: str | os.PathLike) -> dict[str, SparseFormat]:
    """Which format :func:`save_sparse` chose for each layer's weight in the file at ``path``."""
    with safe_open(str(path), "pt") as file:
        return json.loads((file.metadata() or {}).get("weight_formats", "{}"))


def load_sparse(path: str | os.PathLike, skeleton: nn.Module) -> nn.Module:
    """Rebuild a model saved by :func:`save_sparse` into ``skeleton`` (an unpruned model of the same shape)."""
    tensors = load_file(str(path))
    state = {}
    for name in prunable_layers(skeleton):
        key = f"{name}.weight"
        if key in tensors:
            continue  # stored dense: loaded as it is
        shape = tuple(tensors.pop(f"{key}.shape").tolist())
        values = tensors.pop(f"{key}.values")
        if f"{key}.bitmask" in tensors:
            kept = _unpack_bits(tensors.pop(f"{key}.bitmask"), math.prod(shape))
            if int(kept.sum()) != len(values):
                raise ValueError(f"{path}: {key} has {int(kept.sum())} kept positions but {len(values)} values: "
                                 "the file is damaged; write it again with save_sparse")
            dense = torch.zeros(math.prod(shape), dtype=values.dtype)
            dense[kept] = values
        else:
            rows = tensors.pop(f"{key}.row_pointers").long()
            columns = tensors.pop(f"{key}.columns").long()
            dense = torch.sparse_csr_tensor(rows, columns, values, size=(shape[0], math.prod(shape[1:])),
                                            check_invariants=True).to_dense()
        state[key] = dense.reshape(shape)
    state.update(tensors)
    skeleton.load_state_dict(state, strict=True)
    return skeleton.eval()


def l1_filter_selection(model: nn.Module, keep_fraction: float) -> dict[str, torch.Tensor]:
    """For every convolution of ``model.features``: the indices of its ``keep_fraction`` largest-L1 filters."""
    if not 0.0 < keep_fraction <= 1.0:
        raise ValueError(f"keep_fraction must be in (0, 1], got {keep_fraction}: at least one filter must stay")
    selection = {}
    for index, layer in enumerate(model.features):
        if isinstance(layer, nn.Conv2d):
            count = max(1, int(round(layer.out_channels * keep_fraction)))
            selection[f"features.{index}"] = filter_l1_norms(layer).topk(count).indices.sort().values
    return selection


def layer_magnitude_masks(model: nn.Module, sparsities: dict[str, float]) -> dict[str, torch.Tensor]:
    """Magnitude masks with a sparsity of its own for each named layer (e.g. from :func:`allocate_sparsities`)."""
    masks = {}
    for name, sparsity in sparsities.items():
        masks.update(magnitude_masks(model, sparsity, "layer", names=[name]))
    return masks


def gradual_prune(model: nn.Module, final_sparsity: float | dict[str, float], epochs: int, pruning_epochs: int,
                  scope: Scope = "global", every_steps: int = 50, **train_kwargs) -> list[float]:
    """Zhu & Gupta's gradual pruning inside one training run (one learning-rate schedule, ``fine_tune``): every
    ``every_steps`` optimiser steps of the first ``pruning_epochs`` epochs, prune by magnitude to the cubic
    schedule's sparsity at that step (the masks held in between); the last ``epochs - pruning_epochs`` epochs only
    retrain. ``final_sparsity`` is one fraction (ranked by ``scope``) or one per layer name. Returns the overall
    sparsity of the pruned layers at the end of each epoch."""
    targets = final_sparsity if isinstance(final_sparsity, dict) else None
    if targets is None:
        check_sparsity(final_sparsity)
    if not 1 <= pruning_epochs <= epochs:
        raise ValueError(f"need 1 <= pruning_epochs <= epochs, got pruning_epochs={pruning_epochs}, epochs={epochs}")
    if every_steps < 1:
        raise ValueError(f"every_steps must be at least 1, got {every_steps}")
    used: list[float] = []

    def prune_on_schedule(step: int, total_steps: int) -> None:
        pruning_steps = total_steps * pruning_epochs // epochs
        if step <= pruning_steps and (step % every_steps == 0 or step == pruning_steps):
            if targets is None:
                masks = magnitude_masks(model, cubic_schedule(step, pruning_steps, final_sparsity), scope)
            else:
                masks = layer_magnitude_masks(
                    model, {name: cubic_schedule(step, pruning_steps, s) for name, s in targets.items()})
            apply_masks(model, masks)
        if step % (total_steps // epochs) == 0:
            used.append(sparsity_of(model, targets))

    fine_tune(model, epochs=epochs, evaluate_every_epoch=False, on_step=prune_on_schedule, **train_kwargs)
    return used


def layer_sensitivity(model: nn.Module, sparsities: Iterable[float], names: Iterable[str] | None = None,
                      dataset=None) -> dict[str, list[float]]:
    """Prune one layer at a time (by magnitude, the others untouched) to each sparsity; the accuracy of each on
    ``dataset`` (pass the validation split when the curves are used to choose sparsities; default: test)."""
    sparsities = [check_sparsity(s) for s in sparsities]
    curves = {}
    for name in prunable_layers(model, names):
        curves[name] = []
        for sparsity in sparsities:
            pruned = copy.deepcopy(model)
            apply_masks(pruned, magnitude_masks(pruned, sparsity, "layer", names=[name]))
            curves[name].append(evaluate(pruned, dataset))
    return curves


def allocate_sparsities(sparsities: list[float], curves: dict[str, list[float]], sizes: dict[str, int],
                        baseline: float, target: float) -> dict[str, float]:
    """Per-layer sparsities from sensitivity curves: the smallest accuracy-drop tolerance such that pruning each
    layer as far as its (linearly interpolated) curve allows within that tolerance removes ``target`` of all
    the weights. Robust layers end up sparser than sensitive ones."""
    check_sparsity(target)
    grid = torch.linspace(0, max(sparsities), 1001)
    drops = {name: baseline - torch.from_numpy(np.interp(grid.numpy(), sparsities, curve))
             for name, curve in curves.items()}
    total = sum(sizes[name] for name in curves)

    def allocation(tolerance: float) -> dict[str, float]:
        chosen = {}
        for name, drop in drops.items():
            allowed = (drop <= tolerance).nonzero()
            chosen[name] = float(grid[allowed.max()]) if len(allowed) else 0.0
        return chosen

    def overall(tolerance: float) -> float:
        return sum(s * sizes[n] for n, s in allocation(tolerance).items()) / total

    low, high = 0.0, 1.0
    if overall(high) < target:
        raise ValueError(f"the curves reach at most {max(sparsities)} sparsity per layer: cannot remove {target} "
                         "of the weights; measure the curves at higher sparsities")
    for _ in range(40):
        middle = (low + high) / 2
        if overall(middle) >= target:
            high = middle
        else:
            low = middle
    return allocation(high)


def remove_conv_block(model: nn.Module, conv_name: str) -> nn.Module:
    """A copy of a CourseCNN-like model without one conv → batch norm → ReLU block of ``features`` (the coarsest
    granularity: a whole layer). The convolution must keep the channel count (``in == out``)."""
    pruned = copy.deepcopy(model)
    index = int(conv_name.rsplit(".", 1)[-1]) if conv_name.startswith("features.") else -1
    conv = pruned.features[index] if 0 <= index < len(pruned.features) else None
    if not isinstance(conv, nn.Conv2d):
        raise ValueError(f"{conv_name!r} is not a convolution of features")
    if conv.in_channels != conv.out_channels or conv.stride != (1, 1):
        raise ValueError(f"cannot drop {conv_name}: it changes the shape ({conv.in_channels} → {conv.out_channels} "
                         f"channels, stride {conv.stride}); only shape-preserving layers can be removed")
    pruned.features[index] = nn.Identity()
    for following in range(index + 1, min(index + 3, len(pruned.features))):
        if isinstance(pruned.features[following], (nn.BatchNorm2d, nn.ReLU)):
            pruned.features[following] = nn.Identity()
    return pruned


def prune_and_retrain(model: nn.Module, sparsities: Iterable[float], epochs_per_round: Iterable[int],
                      scope: Scope = "global", **train_kwargs) -> list[float]:
    """Han et al.'s iterative pruning: for each target sparsity, prune by magnitude, then retrain with the mask
    held (``course_lib.train.fine_tune`` keyword arguments); returns the validation accuracy after each round."""
    accuracies = []
    for sparsity, epochs in zip(sparsities, epochs_per_round, strict=True):
        apply_masks(model, magnitude_masks(model, sparsity, scope))
        fine_tune(model, epochs=epochs, evaluate_every_epoch=False, **train_kwargs)
        accuracies.append(evaluate(model, load_fashion_mnist("val")))
    return accuracies
