"""Expensive sweeps, computed once by a script and shipped as small JSON files in ``data/results/``.

A notebook plots them and feeds its widget from them (instantly), and re-measures a few entries live to show the
cache is honest; ``tests/test_sweeps.py`` does the same. Regenerate with ``python -m course_lib.sweeps TOPIC``.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from . import prune as P
from . import share as S
from .data import DATA_DIR, load_fashion_mnist
from .io import atomic_path
from .models import load_reference
from .quantize import CALIBRATIONS, quantize_weights
from .runtime import setup
from .train import evaluate, fine_tune
from .train import train as train_model
from .train_reference import RECIPES, initial_model

RESULTS_DIR = DATA_DIR / "results"
WEIGHT_BITS = (8, 7, 6, 5, 4, 3, 2, 1)
GRANULARITIES = ("tensor", "channel")


def weight_quantization_key(bits: int, granularity: str, method: str) -> str:
    """The key of one weight-only configuration (1 bit is binary: its scale is the mean magnitude, no calibration)."""
    return f"{bits}-bit/{granularity}/{'mean-abs' if bits == 1 else method}"


def weight_quantization_accuracy(model_name: str, bits: int, granularity: str, method: str) -> float:
    """Full-test-set accuracy of a reference model with its Conv2d/Linear weights rounded to ``bits`` bits."""
    model = quantize_weights(load_reference(model_name), bits, per_channel=granularity == "channel", method=method)
    return evaluate(model)


def quantization(progress: bool = True) -> dict:
    """Course CNN, weight-only: accuracy for every bit width, granularity and calibration method."""
    configs = {weight_quantization_key(b, g, m): (b, g, m) for b in WEIGHT_BITS for g in GRANULARITIES
               for m in CALIBRATIONS}
    accuracy = {key: round(weight_quantization_accuracy("course_cnn", *config), 4)
                for key, config in tqdm(configs.items(), desc="weight-only configurations", disable=not progress)}
    return {"model": "course_cnn", "dataset": "fashion-mnist test (10,000 images)",
            "baseline_accuracy": round(evaluate(load_reference("course_cnn"), load_fashion_mnist("test")), 4),
            "accuracy": accuracy}


PRUNING_SPARSITIES = (0.0, 0.5, 0.7, 0.8, 0.9, 0.95, 0.97, 0.98, 0.99)
PRUNING_RETRAIN = dict(P.RETRAIN_RECIPE, progress=False)
SCHEDULE_TARGET, SCHEDULE_EPOCHS = 0.97, 8
OBD_SPARSITIES = (0.5, 0.7, 0.8, 0.9, 0.95, 0.97)
HUTCHINSON_BATCHES, HUTCHINSON_SAMPLES, HUTCHINSON_BATCH_SIZE = 20, 8, 500
LOTTERY_KEPT = (0.2, 0.1, 0.03)
CNN_CONVS = ("features.0", "features.3", "features.7", "features.10", "features.14", "features.17")
GRANULARITY_SPARSITIES = (0.0, 0.2, 0.4, 0.5, 0.6, 0.8)
GRANULARITY_TABLE_SPARSITY, FILTER_KEEP_FOR_HALF_THE_WEIGHTS, DROPPED_LAYER = 0.5, 0.71, "features.17"


def _masked(model: nn.Module, masks: dict[str, torch.Tensor]) -> nn.Module:
    return P.apply_masks(copy.deepcopy(model), masks)


def _retrained_accuracy(model: nn.Module, epochs: int = 2, **kwargs) -> float:
    fine_tune(model, epochs=epochs, evaluate_every_epoch=False, **{**PRUNING_RETRAIN, **kwargs})
    return round(evaluate(model), 4)


def _lenet_pruning(progress: bool) -> dict:
    """LeNet-300-100: one-shot curves, schedules, sensitivity, OBD vs magnitude, lottery tickets."""
    dense = load_reference("lenet_300_100")
    baseline = evaluate(dense)
    bar = tqdm(total=4 + 2 * len(LOTTERY_KEPT), desc="LeNet-300-100 experiments", disable=not progress)
    curves = {f"{scope}/{stage}": [] for scope in ("global", "layer") for stage in ("pruned", "retrained")}
    for sparsity in PRUNING_SPARSITIES:
        for scope in ("global", "layer"):
            model = _masked(dense, P.magnitude_masks(dense, sparsity, scope))
            curves[f"{scope}/pruned"].append(round(evaluate(model), 4))
            curves[f"{scope}/retrained"].append(_retrained_accuracy(model))
    bar.update()

    schedules = {}
    one_shot = _masked(dense, P.magnitude_masks(dense, SCHEDULE_TARGET))
    schedules["one-shot"] = _retrained_accuracy(one_shot, epochs=SCHEDULE_EPOCHS)
    iterative = copy.deepcopy(dense)
    steps = (0.5, 0.75, 0.875, 0.94, SCHEDULE_TARGET)
    P.prune_and_retrain(iterative, steps, (1, 1, 1, 1, SCHEDULE_EPOCHS - 4), **PRUNING_RETRAIN)
    schedules["iterative"] = round(evaluate(iterative), 4)
    gradual = copy.deepcopy(dense)
    schedule = P.gradual_prune(gradual, SCHEDULE_TARGET, SCHEDULE_EPOCHS, SCHEDULE_EPOCHS // 2, **PRUNING_RETRAIN)
    schedules["gradual"] = round(evaluate(gradual), 4)
    bar.update()

    sensitivity = P.layer_sensitivity(dense, PRUNING_SPARSITIES)
    sizes = {name: layer.weight.numel() for name, layer in P.prunable_layers(dense).items()}
    per_layer = P.allocate_sparsities(list(PRUNING_SPARSITIES), sensitivity, sizes, baseline, 0.9)
    guided = _masked(dense, {name: P.magnitude_masks(dense, s, "layer", [name])[name] for name, s in per_layer.items()})
    uniform = _masked(dense, P.magnitude_masks(dense, 0.9, "layer"))
    allocation = {"target": 0.9, "per_layer": {n: round(s, 4) for n, s in per_layer.items()},
                  "overall": round(P.sparsity_of(guided), 4),
                  "guided/pruned": round(evaluate(guided), 4), "uniform/pruned": round(evaluate(uniform), 4),
                  "guided/retrained": _retrained_accuracy(guided), "uniform/retrained": _retrained_accuracy(uniform)}
    bar.update()

    train = load_fashion_mnist("train")
    batches = [(train.images[i:i + HUTCHINSON_BATCH_SIZE], train.labels[i:i + HUTCHINSON_BATCH_SIZE])
               for i in range(0, HUTCHINSON_BATCHES * HUTCHINSON_BATCH_SIZE, HUTCHINSON_BATCH_SIZE)]
    hessian = P.hutchinson_hessian_diagonal(dense, nn.functional.cross_entropy, batches, samples=HUTCHINSON_SAMPLES)
    obd_scores = P.obd_saliency(dense, hessian)
    magnitude_scores = {name: layer.weight.detach().abs() for name, layer in P.prunable_layers(dense).items()}
    obd = {f"{method}/{stage}": [] for method in ("magnitude", "obd") for stage in ("pruned", "retrained")}
    for sparsity in OBD_SPARSITIES:
        for method, scores in (("magnitude", magnitude_scores), ("obd", obd_scores)):
            model = _masked(dense, P.masks_from_scores(scores, sparsity))
            obd[f"{method}/pruned"].append(round(evaluate(model), 4))
            obd[f"{method}/retrained"].append(_retrained_accuracy(model, epochs=1))
    bar.update()

    recipe = RECIPES["lenet_300_100"]
    lottery = {"kept": list(LOTTERY_KEPT), "epochs": recipe["epochs"], "ticket": [], "random_init": []}
    for kept in LOTTERY_KEPT:
        masks = P.magnitude_masks(dense, 1 - kept)
        for kind, seed in (("ticket", 0), ("random_init", 1)):
            model = P.apply_masks(initial_model("lenet_300_100", seed), masks)
            train_model(model, seed=0, evaluate_every_epoch=False, progress=False, **recipe)
            lottery[kind].append(round(evaluate(model), 4))
            bar.update()
    bar.close()
    return {"baseline_accuracy": round(baseline, 4), "sparsities": list(PRUNING_SPARSITIES), "curves": curves,
            "retrain_epochs": 2, "schedules": {"target": SCHEDULE_TARGET, "epochs": SCHEDULE_EPOCHS,
                                                "iterative_steps": list(steps), "gradual_steps": schedule,
                                                "accuracy": schedules},
            "sensitivity": {name: [round(a, 4) for a in curve] for name, curve in sensitivity.items()},
            "allocation": allocation, "obd": {"sparsities": list(OBD_SPARSITIES), "hutchinson_batches": HUTCHINSON_BATCHES,
                                              "hutchinson_samples": HUTCHINSON_SAMPLES, "accuracy": obd},
            "lottery": lottery}


def _cnn_granularity(progress: bool) -> dict:
    """Course CNN: accuracy of the six convolutions pruned at each granularity, and the 50% table."""
    dense = load_reference("course_cnn")
    sweep = {g: [] for g in P.GRANULARITIES}
    configs = [(g, s) for g in P.GRANULARITIES for s in GRANULARITY_SPARSITIES]
    for granularity, sparsity in tqdm(configs, desc="course CNN granularities", disable=not progress):
        model = _masked(dense, P.structured_masks(dense, sparsity, granularity, CNN_CONVS))
        sweep[granularity].append(round(evaluate(model), 4))
    table = {}
    candidates = {g: _masked(dense, P.structured_masks(dense, GRANULARITY_TABLE_SPARSITY, g, CNN_CONVS))
                  for g in P.GRANULARITIES if g != "filter"}
    candidates["filter"] = P.remove_filters(dense, P.l1_filter_selection(dense, FILTER_KEEP_FOR_HALF_THE_WEIGHTS))
    candidates["layer"] = P.remove_conv_block(dense, DROPPED_LAYER)
    for name, model in tqdm(candidates.items(), desc="granularity table (fine-tune 1 epoch)", disable=not progress):
        conv_weights = sum(m.weight.count_nonzero().item() for m in model.features if isinstance(m, nn.Conv2d))
        table[name] = {"pruned": round(evaluate(model), 4),
                       "fine_tuned": _retrained_accuracy(model, epochs=1, augment=True),
                       "conv_weights_kept": conv_weights}
    return {"baseline_accuracy": round(evaluate(dense), 4), "layers": list(CNN_CONVS),
            "sparsities": list(GRANULARITY_SPARSITIES), "granularity_sweep": sweep,
            "table": {"sparsity": GRANULARITY_TABLE_SPARSITY, "filter_keep": FILTER_KEEP_FOR_HALF_THE_WEIGHTS,
                      "dropped_layer": DROPPED_LAYER, "fine_tune_epochs": 1,
                      "dense_conv_weights": sum(m.weight.numel() for m in dense.features if isinstance(m, nn.Conv2d)),
                      "accuracy": table}}


def pruning(progress: bool = True) -> dict:
    """LeNet-300-100 (curves, schedules, sensitivity, OBD, lottery tickets) and course CNN granularities."""
    return {"dataset": "fashion-mnist test (10,000 images)", "lenet_300_100": _lenet_pruning(progress),
            "course_cnn": _cnn_granularity(progress)}


SHARING_BITS = (1, 2, 3, 4, 5, 6, 7, 8)
LAYER_TYPES = {"conv": ("conv1", "conv2"), "fc": ("fc1", "fc2")}  # LeNet-5's layers of each kind
WIDGET_CLUSTERS = (2, 4, 8, 16, 32, 64)
INIT_CLUSTERS = (2, 4, 8, 16, 32)


def shared_accuracy(model_name: str, clusters: dict[str, int], init: S.Init = "linear") -> float:
    """Accuracy of a reference model with the named layers' weights shared (k-means, no fine-tuning)."""
    model = load_reference(model_name)
    layers = P.prunable_layers(model, clusters)
    shared = {f"{n}.weight": S.share_weight(layer.weight, clusters[n], init) for n, layer in layers.items()}
    return evaluate(S.use_shared_weights(model, shared))


def _bits_by_layer_type(progress: bool) -> dict:
    """LeNet-5: only its conv (or only its fc) layers shared at 1-8 bits, before and after codebook fine-tuning."""
    table = {}
    configs = [(kind, bits) for kind in LAYER_TYPES for bits in SHARING_BITS]
    for kind, bits in tqdm(configs, desc="bits by layer type", disable=not progress):
        model = load_reference("lenet5")
        shared = S.share_model(model, {name: bits for name in LAYER_TYPES[kind]})
        shared_only = evaluate(S.use_shared_weights(copy.deepcopy(model), shared))
        S.fine_tune_codebooks(model, shared, epochs=1, progress=False, **S.CODEBOOK_RECIPE)
        table[f"{kind}/{bits}"] = {"shared": round(shared_only, 4), "fine_tuned": round(evaluate(model), 4)}
    return table


def sharing(progress: bool = True) -> dict:
    """Weight sharing: clusters per layer (LeNet-300-100, the widget), initialisations, bits by layer type
    (LeNet-5), and every Deep Compression stage of both LeNets (sizes of the real files, reloaded accuracy)."""
    from . import deep_compression as D

    layers = ("fc1", "fc2", "fc3")
    per_layer = {f"{n}/{k}": round(shared_accuracy("lenet_300_100", {n: k}), 4)
                 for n in tqdm(layers, desc="clusters per layer", disable=not progress) for k in WIDGET_CLUSTERS}
    inits = {f"{init}/{k}": round(shared_accuracy("lenet_300_100", dict.fromkeys(layers, k), init), 4)
             for init in S.INITS for k in INIT_CLUSTERS}
    stages = {}
    for name in tqdm(D.RECIPES, desc="deep compression", disable=not progress):
        with tempfile.TemporaryDirectory() as folder:
            stages[name] = [{"stage": s.name, "size_bytes": s.size_bytes, "accuracy": round(s.accuracy, 4),
                             "kept_fraction": s.kept_fraction} for s in D.run(name, folder).stages]
    return {"dataset": "fashion-mnist test (10,000 images)",
            "lenet_300_100": {"baseline_accuracy": round(evaluate(load_reference("lenet_300_100")), 4),
                              "clusters_per_layer": per_layer, "inits": inits},
            "lenet5": {"baseline_accuracy": round(evaluate(load_reference("lenet5")), 4),
                       "bits_by_layer_type": _bits_by_layer_type(progress)},
            "deep_compression": stages}


SWEEPS: dict[str, Callable[..., dict]] = {"quantization": quantization, "pruning": pruning, "sharing": sharing}


def results_path(name: str) -> Path:
    return RESULTS_DIR / f"{name}.json"


def load_results(name: str) -> dict:
    """The cached results of sweep ``name``; a clear error with the command that makes them if they are missing."""
    if name not in SWEEPS:
        raise ValueError(f"unknown sweep {name!r}: choose one of {', '.join(SWEEPS)}")
    path = results_path(name)
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: restore it with `git checkout -- data/results/{path.name}` or "
                                f"regenerate it with `python -m course_lib.sweeps {name}`")
    return json.loads(path.read_text())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m course_lib.sweeps", description=__doc__.splitlines()[0])
    parser.add_argument("name", choices=sorted(SWEEPS))
    args = parser.parse_args(argv)
    setup()
    results = SWEEPS[args.name]()
    RESULTS_DIR.mkdir(exist_ok=True)
    with atomic_path(results_path(args.name)) as tmp:
        tmp.write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {results_path(args.name)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
