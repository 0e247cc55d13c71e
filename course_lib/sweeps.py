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

import tensorly as tl
import torch
from torch import nn
from tqdm.auto import tqdm

from . import prune as P
from . import share as S
from .data import DATA_DIR, load_fashion_mnist
from .io import atomic_path
from .models import NUM_CLASSES, load_reference
from .quantize import CALIBRATIONS, quantize_weights
from .runtime import setup
from .measure import count_macs, count_parameters
from .train import evaluate, fine_tune, predict
from .train import train as train_model
from .train_reference import RECIPES, initial_model

RESULTS_DIR = DATA_DIR / "results"
# Sweeps are what the course chooses from, so they measure the validation split; final models are tested once.
SWEEP_DATASET = "fashion-mnist validation (5,000 images held out of training)"


def val_accuracy(model: nn.Module) -> float:
    """Accuracy on the 5,000 validation images, rounded as the caches store it."""
    return round(evaluate(model, load_fashion_mnist("val")), 4)

WEIGHT_BITS = (8, 7, 6, 5, 4, 3, 2, 1)
GRANULARITIES = ("tensor", "channel")


def weight_quantization_key(bits: int, granularity: str, method: str) -> str:
    """The key of one weight-only configuration (1 bit is binary: its scale is the mean magnitude, no calibration)."""
    return f"{bits}-bit/{granularity}/{'mean-abs' if bits == 1 else method}"


def weight_quantization_accuracy(model_name: str, bits: int, granularity: str, method: str) -> float:
    """Validation accuracy of a reference model with its Conv2d/Linear weights rounded to ``bits`` bits."""
    model = quantize_weights(load_reference(model_name), bits, per_channel=granularity == "channel", method=method)
    return val_accuracy(model)


def quantization(progress: bool = True) -> dict:
    """Course CNN, weight-only: accuracy for every bit width, granularity and calibration method."""
    configs = {weight_quantization_key(b, g, m): (b, g, m) for b in WEIGHT_BITS for g in GRANULARITIES
               for m in CALIBRATIONS}
    accuracy = {key: weight_quantization_accuracy("course_cnn", *config)
                for key, config in tqdm(configs.items(), desc="weight-only configurations", disable=not progress)}
    return {"model": "course_cnn", "dataset": SWEEP_DATASET,
            "baseline_accuracy": val_accuracy(load_reference("course_cnn")),
            "accuracy": accuracy}


PRUNING_SPARSITIES = (0.0, 0.5, 0.7, 0.8, 0.9, 0.95, 0.97, 0.98, 0.99)
PRUNING_RETRAIN = dict(P.RETRAIN_RECIPE, progress=False)
SCHEDULE_TARGET, SCHEDULE_EPOCHS, GRADUAL_EVERY_STEPS = 0.97, 8, 50
OBD_SPARSITIES = (0.5, 0.7, 0.8, 0.9, 0.95, 0.97)
CURVATURE_BATCHES, CURVATURE_BATCH_SIZE, HUTCHINSON_SAMPLES = 20, 500, 8  # 10,000 training images
LOTTERY_KEPT, LOTTERY_SEEDS = (0.2, 0.1, 0.03), (0, 1, 2)
CNN_CONVS = ("features.0", "features.3", "features.7", "features.10", "features.14", "features.17")
GRANULARITY_SPARSITIES = (0.0, 0.2, 0.4, 0.5, 0.6, 0.8)
GRANULARITY_TABLE_SPARSITY, FILTER_KEEP_FOR_HALF_THE_WEIGHTS, DROPPED_LAYER = 0.5, 0.71, "features.17"


def _masked(model: nn.Module, masks: dict[str, torch.Tensor]) -> nn.Module:
    return P.apply_masks(copy.deepcopy(model), masks)


def _retrained_accuracy(model: nn.Module, epochs: int = 2, **kwargs) -> float:
    fine_tune(model, epochs=epochs, evaluate_every_epoch=False, **{**PRUNING_RETRAIN, **kwargs})
    return val_accuracy(model)


def _lenet_pruning(progress: bool) -> dict:
    """LeNet-300-100: one-shot curves, schedules, sensitivity, OBD vs magnitude, lottery tickets (validation)."""
    dense = load_reference("lenet_300_100")
    baseline = evaluate(dense, load_fashion_mnist("val"))
    bar = tqdm(total=4 + len(LOTTERY_KEPT), desc="LeNet-300-100 experiments", disable=not progress)
    curves = {f"{scope}/{stage}": [] for scope in ("global", "layer") for stage in ("pruned", "retrained", "reached")}
    for sparsity in PRUNING_SPARSITIES:
        for scope in ("global", "layer"):
            model = _masked(dense, P.magnitude_masks(dense, sparsity, scope))
            curves[f"{scope}/reached"].append(round(P.sparsity_of(model), 6))
            curves[f"{scope}/pruned"].append(val_accuracy(model))
            curves[f"{scope}/retrained"].append(_retrained_accuracy(model))
    bar.update()

    schedules = {}
    one_shot = _masked(dense, P.magnitude_masks(dense, SCHEDULE_TARGET))
    schedules["one-shot"] = _retrained_accuracy(one_shot, epochs=SCHEDULE_EPOCHS)
    iterative = copy.deepcopy(dense)
    steps = (0.5, 0.75, 0.875, 0.94, SCHEDULE_TARGET)
    P.prune_and_retrain(iterative, steps, (1, 1, 1, 1, SCHEDULE_EPOCHS - 4), **PRUNING_RETRAIN)
    schedules["iterative"] = val_accuracy(iterative)
    gradual = copy.deepcopy(dense)
    schedule = P.gradual_prune(gradual, SCHEDULE_TARGET, SCHEDULE_EPOCHS, SCHEDULE_EPOCHS // 2,
                               every_steps=GRADUAL_EVERY_STEPS, **PRUNING_RETRAIN)
    schedules["gradual"] = val_accuracy(gradual)
    bar.update()

    sensitivity = P.layer_sensitivity(dense, PRUNING_SPARSITIES, dataset=load_fashion_mnist("val"))
    sizes = {name: layer.weight.numel() for name, layer in P.prunable_layers(dense).items()}
    per_layer = P.allocate_sparsities(list(PRUNING_SPARSITIES), sensitivity, sizes, baseline, 0.9)
    guided = _masked(dense, {name: P.magnitude_masks(dense, s, "layer", [name])[name] for name, s in per_layer.items()})
    uniform = _masked(dense, P.magnitude_masks(dense, 0.9, "layer"))
    allocation = {"target": 0.9, "per_layer": {n: round(s, 4) for n, s in per_layer.items()},
                  "overall": round(P.sparsity_of(guided), 4),
                  "guided/pruned": val_accuracy(guided), "uniform/pruned": val_accuracy(uniform),
                  "guided/retrained": _retrained_accuracy(guided), "uniform/retrained": _retrained_accuracy(uniform)}
    bar.update()

    train = load_fashion_mnist("train")
    batches = [(train.images[i:i + CURVATURE_BATCH_SIZE], train.labels[i:i + CURVATURE_BATCH_SIZE])
               for i in range(0, CURVATURE_BATCHES * CURVATURE_BATCH_SIZE, CURVATURE_BATCH_SIZE)]
    saliencies = {
        "magnitude": {name: layer.weight.detach().abs() for name, layer in P.prunable_layers(dense).items()},
        "obd": P.obd_saliency(dense, P.gauss_newton_diagonal(dense, batches)),
        "obd-hutchinson": P.obd_saliency(dense, P.hutchinson_hessian_diagonal(
            dense, nn.functional.cross_entropy, batches, samples=HUTCHINSON_SAMPLES)),
    }
    obd = {f"{method}/{stage}": [] for method in saliencies for stage in ("pruned", "retrained")}
    for sparsity in OBD_SPARSITIES:
        for method, scores in saliencies.items():
            model = _masked(dense, P.masks_from_scores(scores, sparsity))
            obd[f"{method}/pruned"].append(val_accuracy(model))
            obd[f"{method}/retrained"].append(_retrained_accuracy(model, epochs=1))
    bar.update()

    recipe = RECIPES["lenet_300_100"]
    lottery = {"kept": list(LOTTERY_KEPT), "epochs": recipe["epochs"], "seeds": list(LOTTERY_SEEDS),
               "ticket": [], "random_init": [], "random_mask": []}
    for kept in LOTTERY_KEPT:
        masks = P.magnitude_masks(dense, 1 - kept)
        runs = {"ticket": [], "random_init": [], "random_mask": []}
        for seed in LOTTERY_SEEDS:  # the seed also sets the order of the training data
            starts = {"ticket": (0, masks), "random_init": (1 + seed, masks),
                      "random_mask": (0, P.random_masks_like(masks, seed))}
            for kind, (init_seed, kind_masks) in starts.items():
                model = P.apply_masks(initial_model("lenet_300_100", init_seed), kind_masks)
                train_model(model, seed=seed, evaluate_every_epoch=False, progress=False, **recipe)
                runs[kind].append(val_accuracy(model))
        for kind, accuracies in runs.items():
            lottery[kind].append(accuracies)
        bar.update()
    bar.close()
    return {"baseline_accuracy": round(baseline, 4), "sparsities": list(PRUNING_SPARSITIES), "curves": curves,
            "retrain_epochs": 2, "schedules": {"target": SCHEDULE_TARGET, "epochs": SCHEDULE_EPOCHS,
                                                "iterative_steps": list(steps), "gradual_steps": schedule,
                                                "gradual_pruning_epochs": SCHEDULE_EPOCHS // 2,
                                                "gradual_every_steps": GRADUAL_EVERY_STEPS,
                                                "accuracy": schedules},
            "sensitivity": {name: [round(a, 4) for a in curve] for name, curve in sensitivity.items()},
            "allocation": allocation,
            "obd": {"sparsities": list(OBD_SPARSITIES), "curvature_images": CURVATURE_BATCHES * CURVATURE_BATCH_SIZE,
                    "obd": "exact Gauss–Newton diagonal",
                    "hutchinson_vectors": CURVATURE_BATCHES * HUTCHINSON_SAMPLES, "accuracy": obd},
            "lottery": lottery}


def _cnn_granularity(progress: bool) -> dict:
    """Course CNN: accuracy of the six convolutions pruned at each granularity, and the 50% table."""
    dense = load_reference("course_cnn")
    sweep = {g: [] for g in P.GRANULARITIES}
    configs = [(g, s) for g in P.GRANULARITIES for s in GRANULARITY_SPARSITIES]
    for granularity, sparsity in tqdm(configs, desc="course CNN granularities", disable=not progress):
        model = _masked(dense, P.structured_masks(dense, sparsity, granularity, CNN_CONVS))
        sweep[granularity].append(val_accuracy(model))
    table = {}
    candidates = {g: _masked(dense, P.structured_masks(dense, GRANULARITY_TABLE_SPARSITY, g, CNN_CONVS))
                  for g in P.GRANULARITIES if g != "filter"}
    candidates["filter"] = P.remove_filters(dense, P.l1_filter_selection(dense, FILTER_KEEP_FOR_HALF_THE_WEIGHTS))
    candidates["layer"] = P.remove_conv_block(dense, DROPPED_LAYER)
    for name, model in tqdm(candidates.items(), desc="granularity table (fine-tune 1 epoch)", disable=not progress):
        conv_weights = sum(m.weight.count_nonzero().item() for m in model.features if isinstance(m, nn.Conv2d))
        table[name] = {"pruned": val_accuracy(model),
                       "fine_tuned": _retrained_accuracy(model, epochs=1, augment=True),
                       "conv_weights_kept": conv_weights}
    return {"baseline_accuracy": val_accuracy(dense), "layers": list(CNN_CONVS),
            "sparsities": list(GRANULARITY_SPARSITIES), "granularity_sweep": sweep,
            "table": {"sparsity": GRANULARITY_TABLE_SPARSITY, "filter_keep": FILTER_KEEP_FOR_HALF_THE_WEIGHTS,
                      "dropped_layer": DROPPED_LAYER, "fine_tune_epochs": 1,
                      "dense_conv_weights": sum(m.weight.numel() for m in dense.features if isinstance(m, nn.Conv2d)),
                      "accuracy": table}}


def pruning(progress: bool = True) -> dict:
    """LeNet-300-100 (curves, schedules, sensitivity, OBD, lottery tickets) and course CNN granularities."""
    return {"dataset": SWEEP_DATASET, "lenet_300_100": _lenet_pruning(progress),
            "course_cnn": _cnn_granularity(progress)}


SHARING_BITS = (1, 2, 3, 4, 5, 6, 7, 8)
LENET5_LAYERS = ("conv1", "conv2", "fc1", "fc2")  # conv1 is both the first layer and a convolution: sweep each
WIDGET_CLUSTERS = (2, 4, 8, 16, 32, 64)
INIT_CLUSTERS = (2, 4, 8, 16, 32)


def shared_accuracy(model_name: str, clusters: dict[str, int], init: S.Init = "linear") -> float:
    """Validation accuracy of a reference model with the named layers' weights shared (k-means, no fine-tuning)."""
    model = load_reference(model_name)
    layers = P.prunable_layers(model, clusters)
    shared = {f"{n}.weight": S.share_weight(layer.weight, clusters[n], init) for n, layer in layers.items()}
    return val_accuracy(S.use_shared_weights(model, shared))


def _bits_per_layer(progress: bool) -> dict:
    """LeNet-5: one layer at a time shared at 1-8 bits, before and after codebook fine-tuning (1 epoch)."""
    table = {}
    configs = [(layer, bits) for layer in LENET5_LAYERS for bits in SHARING_BITS]
    for layer, bits in tqdm(configs, desc="bits per layer", disable=not progress):
        model = load_reference("lenet5")
        shared = S.share_model(model, {layer: bits})
        shared_only = val_accuracy(S.use_shared_weights(copy.deepcopy(model), shared))
        S.fine_tune_codebooks(model, shared, epochs=1, progress=False, **S.CODEBOOK_RECIPE)
        table[f"{layer}/{bits}"] = {"shared": shared_only, "fine_tuned": val_accuracy(model)}
    return table


def layer_codebook(model: nn.Module, layer: str, clusters: int) -> list[float]:
    """The ``clusters`` shared values k-means (linear initialisation) gives one layer's weights, sorted."""
    return [round(c, 7) for c in S.kmeans_1d(model.get_submodule(layer).weight, clusters)[0].tolist()]


def sharing(progress: bool = True) -> dict:
    """Weight sharing: clusters per layer and their codebooks (LeNet-300-100, the widget), initialisations, bits
    per layer (LeNet-5), and every Deep Compression stage of both LeNets (sizes of the real files, reloaded
    accuracy)."""
    from . import deep_compression as D

    layers = ("fc1", "fc2", "fc3")
    per_layer = {f"{n}/{k}": shared_accuracy("lenet_300_100", {n: k})
                 for n in tqdm(layers, desc="clusters per layer", disable=not progress) for k in WIDGET_CLUSTERS}
    lenet = load_reference("lenet_300_100")
    codebooks = {f"{n}/{k}": layer_codebook(lenet, n, k) for n in layers for k in WIDGET_CLUSTERS}  # the widget's
    inits = {f"{init}/{k}": shared_accuracy("lenet_300_100", dict.fromkeys(layers, k), init)
             for init in S.INITS for k in INIT_CLUSTERS}
    stages = {}
    for name in tqdm(D.RECIPES, desc="deep compression", disable=not progress):
        with tempfile.TemporaryDirectory() as folder:
            stages[name] = [{"stage": s.name, "size_bytes": s.size_bytes, "val_accuracy": round(s.val_accuracy, 4),
                             "test_accuracy": round(s.accuracy, 4), "kept_fraction": s.kept_fraction}
                            for s in D.run(name, folder).stages]
    return {"dataset": SWEEP_DATASET,
            "lenet_300_100": {"baseline_accuracy": val_accuracy(load_reference("lenet_300_100")),
                              "clusters_per_layer": per_layer, "codebooks": codebooks, "inits": inits},
            "lenet5": {"baseline_accuracy": val_accuracy(load_reference("lenet5")),
                       "bits_per_layer": _bits_per_layer(progress)},
            "deep_compression": stages}


DISTILL_TEMPERATURES = (1.0, 2.0, 4.0, 8.0, 20.0)
DISTILL_ALPHAS = (0.5, 0.9, 1.0)
DISTILL_SEEDS = (0, 1, 2)
OMITTED_CLASS = 3  # "Dress": never shown to the student in Hinton's omitted-class experiment
LABEL_SMOOTHING = 0.1
ATTENTION_LAYERS = {"teacher": "features.13", "student": "features.7"}  # both 7x7 maps, after the second pool


def distillation_key(temperature: float, alpha: float) -> str:
    """The key of one (T, alpha) entry of the distillation grid."""
    return f"T={temperature:g}/alpha={alpha:g}"


def omitted_class_accuracy(logits: torch.Tensor, labels: torch.Tensor, klass: int, bias: float = 0.0
                           ) -> tuple[float, float]:
    """(accuracy on the images of ``klass``, accuracy on all) after adding ``bias`` to that class's logit."""
    predictions = (logits + bias * nn.functional.one_hot(torch.tensor(klass), logits.shape[1])).argmax(1)
    correct = predictions == labels
    return round(correct[labels == klass].float().mean().item(), 4), round(correct.float().mean().item(), 4)


def best_bias(logits: torch.Tensor, labels: torch.Tensor, klass: int) -> float:
    """The bias on ``klass``'s logit, from 0 to 10 in steps of 0.25, that maximises the overall accuracy."""
    return max((b / 4 for b in range(41)), key=lambda b: omitted_class_accuracy(logits, labels, klass, b)[1])


def distillation(progress: bool = True) -> dict:
    """Student CNN distilled from the course CNN: a (T, alpha) grid on seed 0, the chosen pair against the student
    alone on 3 seeds, Hinton's omitted-class experiment, label smoothing and attention transfer (all validation)."""
    from . import distill as KD
    from .models import StudentCNN

    val = load_fashion_mnist("val")
    train_images = load_fashion_mnist("train").images
    teacher = load_reference("course_cnn")
    targets = KD.teacher_targets(teacher, train_images, layer=ATTENTION_LAYERS["teacher"])
    logits = targets[:, :NUM_CLASSES]
    runs = tqdm(total=len(DISTILL_TEMPERATURES) * len(DISTILL_ALPHAS) + 2 * len(DISTILL_SEEDS) - 1 + 2 + 3,
                desc="students", disable=not progress)

    def run(loss_fn, seed: int = 0, subset: torch.Tensor | None = None, with_maps: bool = False) -> nn.Module:
        student = KD.train_student(StudentCNN, targets if with_maps else logits, loss_fn, seed=seed, subset=subset)
        runs.update()
        return student

    scores = {(t, a): val_accuracy(run(KD.cached_distillation_loss(t, a)))
              for t in DISTILL_TEMPERATURES for a in DISTILL_ALPHAS}
    chosen = max(scores, key=scores.__getitem__)
    grid = {distillation_key(*pair): accuracy for pair, accuracy in scores.items()}
    seeds = {"alone": {}, "distilled": {}}
    for seed in DISTILL_SEEDS:
        seeds["alone"][str(seed)] = val_accuracy(run(KD.label_loss(), seed))
        seeds["distilled"][str(seed)] = (scores[chosen] if seed == 0
                                         else val_accuracy(run(KD.cached_distillation_loss(*chosen), seed)))
    kept = (load_fashion_mnist("train").labels != OMITTED_CLASS).nonzero().flatten()
    omitted = {"class": OMITTED_CLASS, "training_images": len(kept)}
    for name, loss_fn in (("alone", KD.label_loss()), ("distilled", KD.cached_distillation_loss(*chosen))):
        val_logits = predict(run(loss_fn, subset=kept), val.images)
        bias = best_bias(val_logits, val.labels, OMITTED_CLASS)
        raw = omitted_class_accuracy(val_logits, val.labels, OMITTED_CLASS)
        corrected = omitted_class_accuracy(val_logits, val.labels, OMITTED_CLASS, bias)
        omitted[name] = {"class_accuracy": raw[0], "accuracy": raw[1], "bias": bias,
                         "class_accuracy_corrected": corrected[0], "accuracy_corrected": corrected[1]}
    attention = ATTENTION_LAYERS["student"]
    beyond = {f"label smoothing {LABEL_SMOOTHING:g}": val_accuracy(run(KD.label_loss(LABEL_SMOOTHING))),
              "attention transfer": val_accuracy(run(KD.attention_transfer_loss(attention), with_maps=True)),
              "attention transfer + KD": val_accuracy(run(KD.attention_transfer_loss(attention, temperature=chosen[0],
                                                                                     alpha=chosen[1]),
                                                          with_maps=True))}
    runs.close()
    return {"dataset": SWEEP_DATASET, "teacher": "course_cnn", "teacher_accuracy": val_accuracy(teacher),
            "student": {"class": "StudentCNN", "parameters": sum(p.numel() for p in StudentCNN().parameters()),
                        "recipe": KD.STUDENT_RECIPE},
            "grid": grid, "chosen": {"temperature": chosen[0], "alpha": chosen[1]}, "seeds": seeds,
            "omitted_class": omitted, "beyond_logits": beyond, "attention_layers": ATTENTION_LAYERS}


DECOMPOSED_CONVS = CNN_CONVS[1:]  # the first convolution has one input channel: nothing to factor
RANK_FRACTIONS = (0.125, 0.25, 0.375, 0.5, 0.75, 1.0)
CLASSIFIER_LAYER, CLASSIFIER_RANKS, CLASSIFIER_RANK = "classifier.1", (16, 32, 64, 128, 256), 64
UNIFORM_FRACTION = 0.3125  # the budget of the rank selection: every core at 5/16 of its channels (about 2x faster)
RECOVERY_EPOCHS = 4
DECOMPOSITION_RETRAIN = dict(P.RETRAIN_RECIPE, augment=True, progress=False)
TRADEOFF_FRACTIONS = (0.125, 0.25, 0.3125, 0.375, 0.5, 0.75)
CP_LAYER, CP_RANKS, CP_SEEDS = "features.10", (8, 16, 32, 64, 128), (0, 1, 2, 3, 4)
LENET_FC1_RANKS, LENET_FC2_RANKS = (16, 24, 32, 48, 64), (None, 16, 32)
LENET_RETRAIN = dict(lr=1e-3, optimizer="adam", weight_decay=1e-4, progress=False)
LENET_EPOCHS = 4
MINILM_FFN_RANKS = (32, 64, 128, 192, 256, 288, 320, 352, 384)
MINILM_CALIBRATION_SENTENCES = 256


def minilm_ffn_layers() -> list[str]:
    """The names of all-MiniLM-L6-v2's 12 feed-forward Linears (input and output of each layer's block)."""
    return [f"layers.{i}.ffn.{kind}" for i in range(6) for kind in ("intermediate", "output")]


def minilm_ffn_covariances(model: nn.Module) -> dict[str, torch.Tensor]:
    """Second moments of each feed-forward layer's inputs on Wikipedia *training* sentences (one at a time, so no
    padding token is counted)."""
    from .data import load_wikipedia_sentences
    from .decompose import input_covariances
    from .minilm import embed

    sentences = load_wikipedia_sentences()[0][:MINILM_CALIBRATION_SENTENCES]
    return input_covariances(model, minilm_ffn_layers(), lambda: embed(model, sentences, batch_size=1))


def minilm_ffn_decomposed(model: nn.Module, rank: int, covariances: dict[str, torch.Tensor] | None) -> nn.Module:
    """MiniLM with every feed-forward Linear at ``rank``: plain truncated SVD, or whitened (ASVD / SVD-LLM) when
    ``covariances`` are given."""
    from . import decompose as D

    decomposed = copy.deepcopy(model)
    for name in minilm_ffn_layers():
        layer = decomposed.get_submodule(name)
        chain = (D.svd_linear(layer, rank, name) if covariances is None
                 else D.whitened_svd_linear(layer, rank, covariances[name], name))
        D.replace_module(decomposed, name, chain)
    return decomposed.eval()


def _cnn_plans(cnn: nn.Module, sensitivity: dict[str, list[float]], layer_macs: dict[str, list[int]],
               original_macs: dict[str, int]) -> dict:
    """Three ways to choose the ranks at (about) the same multiply-adds: uniform, by energy, by sensitivity."""
    from . import decompose as D

    uniform = D.uniform_plan(cnn, UNIFORM_FRACTION, DECOMPOSED_CONVS, {CLASSIFIER_LAYER: CLASSIFIER_RANK})
    convs = {name: cnn.get_submodule(name) for name in DECOMPOSED_CONVS}

    def energy_plan(energy: float) -> D.Plan:
        plan = {n: ("tucker2", D.tucker2_energy_ranks(c.weight, energy)) for n, c in convs.items()}
        return {**plan, CLASSIFIER_LAYER: ("svd", CLASSIFIER_RANK)}

    def plan_macs(plan: D.Plan) -> int:
        return count_macs(D.decompose(cnn, {n: e for n, e in plan.items() if n != CLASSIFIER_LAYER}).eval(),
                          torch.zeros(1, 1, 28, 28))

    target = plan_macs(uniform)  # the budget: the multiply-adds of the uniform plan (all but the classifier)
    energy = min((e / 100 for e in range(50, 100)), key=lambda e: abs(plan_macs(energy_plan(e)) - target))
    drops = {n: [-a for a in accuracies] for n, accuracies in sensitivity.items()}
    rest = count_macs(cnn, torch.zeros(1, 1, 28, 28)) - sum(original_macs.values())  # what is not decomposed
    choice = D.allocate(layer_macs, drops, target - rest)
    guided = {n: ("tucker2", (max(1, round(convs[n].in_channels * RANK_FRACTIONS[i])),
                              max(1, round(convs[n].out_channels * RANK_FRACTIONS[i])))) for n, i in choice.items()}
    guided[CLASSIFIER_LAYER] = ("svd", CLASSIFIER_RANK)
    cp_ranks = {n: max(1, round(D.tucker2_parameters(c.in_channels, c.out_channels, c.kernel_size,
                                                      *uniform[n][1]) / D.cp_parameters(c.in_channels, c.out_channels,
                                                                                        c.kernel_size, 1)))
                for n, c in convs.items()}
    cp = {**{n: ("cp", r) for n, r in cp_ranks.items()}, CLASSIFIER_LAYER: ("svd", CLASSIFIER_RANK)}
    return {"uniform": uniform, f"energy {energy:g}": energy_plan(energy), "sensitivity": guided, "cp": cp}


def _cnn_decomposition(progress: bool) -> dict:
    """Course CNN: per-layer sensitivity and latency, rank selection, recovery curves, the whole-model trade-off."""
    from . import decompose as D
    from .dataflow import layer_inputs
    from .measure import compare_latency
    from .quantize import compile_for_cpu

    cnn = load_reference("course_cnn")
    bar = tqdm(total=5, desc="course CNN decomposition", disable=not progress)
    sensitivity, layer_macs, layer_ms = {}, {}, {}
    x64 = load_fashion_mnist("train").images[:64]
    inputs = layer_inputs(cnn, x64)
    for name in DECOMPOSED_CONVS:
        conv = cnn.get_submodule(name)
        sensitivity[name], layer_macs[name], layer_ms[name] = [], [], {}
        chains = {}
        for fraction in RANK_FRACTIONS:
            plan = D.uniform_plan(cnn, fraction, [name])
            sensitivity[name].append(val_accuracy(D.decompose(cnn, plan)))
            chains[f"{fraction:g}"] = D.tucker2_conv(conv, plan[name][1], name)
            layer_macs[name].append(count_macs(chains[f"{fraction:g}"], inputs[name][0][:1]))
        timed = compare_latency({"original": conv, **chains}, inputs[name], rounds=15)
        layer_ms[name] = {k: round(v.median_ms, 3) for k, v in timed.items()}
    classifier = [val_accuracy(D.decompose(cnn, {CLASSIFIER_LAYER: ("svd", r)})) for r in CLASSIFIER_RANKS]
    bar.update()

    original_macs = {name: count_macs(cnn.get_submodule(name), inputs[name][0][:1]) for name in DECOMPOSED_CONVS}
    plans = _cnn_plans(cnn, sensitivity, layer_macs, original_macs)
    selection = {}
    for method, plan in plans.items():
        model = D.decompose(cnn, plan)
        before = val_accuracy(model)
        history = fine_tune(model, epochs=RECOVERY_EPOCHS, **DECOMPOSITION_RETRAIN)
        selection[method] = {"plan": D.plan_to_json(plan), "parameters": count_parameters(model),
                             "macs": count_macs(model, torch.zeros(1, 1, 28, 28)), "before": before,
                             "recovery": [round(a, 4) for a in history.val_accuracy]}
    bar.update(2)

    tradeoff = []
    compiled = {"fp32": compile_for_cpu(cnn)}
    for fraction in TRADEOFF_FRACTIONS:
        plan = D.uniform_plan(cnn, fraction, DECOMPOSED_CONVS, {CLASSIFIER_LAYER: CLASSIFIER_RANK})
        model = D.decompose(cnn, plan)
        before = val_accuracy(model)
        fine_tune(model, epochs=1, evaluate_every_epoch=False, **DECOMPOSITION_RETRAIN)
        compiled[f"{fraction:g}"] = compile_for_cpu(model.eval())
        tradeoff.append({"fraction": fraction, "parameters": count_parameters(model),
                         "macs": count_macs(model, torch.zeros(1, 1, 28, 28)), "before": before,
                         "after_1_epoch": val_accuracy(model)})
    timed = compare_latency(compiled, (x64,), rounds=15)
    for entry in tradeoff:
        entry["compiled_ms"] = round(timed[f"{entry['fraction']:g}"].median_ms, 3)
    bar.update()

    conv = cnn.get_submodule(CP_LAYER)
    cp = {"layer": CP_LAYER, "ranks": list(CP_RANKS), "seeds": list(CP_SEEDS), "relative_error": [],
          "largest_weight": [], "accuracy": []}
    for rank in CP_RANKS:
        errors, largest = [], []
        for seed in CP_SEEDS:
            weights, factors = D.cp_factors(conv.weight, rank, CP_LAYER, seed)
            approx = tl.cp_to_tensor((weights, factors))
            errors.append(round(((approx - conv.weight).norm() / conv.weight.norm()).item(), 4))
            largest.append(round(weights.abs().max().item(), 2))
        cp["relative_error"].append(errors)
        cp["largest_weight"].append(largest)
        cp["accuracy"].append(val_accuracy(D.decompose(cnn, {CP_LAYER: ("cp", rank)})))
    bar.update()
    bar.close()
    chosen = max((m for m in selection if m != "cp"), key=lambda m: selection[m]["recovery"][-1])
    return {"baseline_accuracy": val_accuracy(cnn), "parameters": count_parameters(cnn),
            "macs": count_macs(cnn, torch.zeros(1, 1, 28, 28)), "fractions": list(RANK_FRACTIONS),
            "layers": list(DECOMPOSED_CONVS), "sensitivity": sensitivity, "layer_macs": layer_macs,
            "layer_ms": layer_ms, "classifier": {"layer": CLASSIFIER_LAYER, "ranks": list(CLASSIFIER_RANKS),
                                                  "accuracy": classifier},
            "selection": selection, "chosen": chosen, "tradeoff": tradeoff, "baseline_compiled_ms":
                round(timed["fp32"].median_ms, 3), "cp": cp}


def lenet_svd_plan(fc1_rank: int, fc2_rank: int | None) -> dict:
    """SVD of LeNet-300-100's fc1 (and fc2 when a rank is given); fc3 stays."""
    return {"fc1": ("svd", fc1_rank), **({"fc2": ("svd", fc2_rank)} if fc2_rank else {})}


def lenet_svd_key(fc1_rank: int, fc2_rank: int | None) -> str:
    """The key of one LeNet-300-100 entry: its fc1 and fc2 ranks."""
    return f"fc1={fc1_rank}/fc2={fc2_rank or 'dense'}"


def minilm_rank_reaching(results: dict, method: str, cosine: float) -> int | None:
    """The smallest swept rank at which ``method`` ('svd' or 'asvd') reaches ``cosine`` (None: none does)."""
    return next((rank for rank, value in zip(results["ranks"], results["cosine"][method]) if value >= cosine), None)


def _lenet_svd(progress: bool) -> dict:
    """LeNet-300-100: fc1 (and fc2) by truncated SVD, before and after a short fine-tune (validation)."""
    from . import decompose as D

    dense = load_reference("lenet_300_100")
    grid = {}
    ranks = {lenet_svd_key(a, b): (a, b) for a in LENET_FC1_RANKS for b in LENET_FC2_RANKS}
    for fc1, fc2 in tqdm(ranks.values(), desc="LeNet-300-100 ranks", disable=not progress):
        model = D.decompose(dense, lenet_svd_plan(fc1, fc2))
        before = val_accuracy(model)
        fine_tune(model, epochs=LENET_EPOCHS, evaluate_every_epoch=False, **LENET_RETRAIN)
        grid[lenet_svd_key(fc1, fc2)] = {"parameters": count_parameters(model), "before": before,
                                         "after": val_accuracy(model)}
    dense_parameters = count_parameters(dense)
    small = {k: v for k, v in grid.items() if dense_parameters / v["parameters"] >= 4}
    chosen = max(small, key=lambda k: small[k]["after"])
    return {"baseline_accuracy": val_accuracy(dense), "parameters": dense_parameters, "grid": grid, "chosen": chosen,
            "chosen_ranks": list(ranks[chosen])}


def _minilm_ffn(progress: bool) -> dict:
    """MiniLM's 12 feed-forward Linears at one rank, plain vs whitened SVD: cosine to fp32 on validation sentences."""
    from .data import load_wikipedia_sentences
    from .minilm import embed, load_minilm

    model = load_minilm()
    sentences = load_wikipedia_sentences()[1]
    reference = embed(model, sentences)
    covariances = minilm_ffn_covariances(model)
    cosine = {"svd": [], "asvd": []}
    for rank in tqdm(MINILM_FFN_RANKS, desc="MiniLM ranks", disable=not progress):
        for method, cov in (("svd", None), ("asvd", covariances)):
            decomposed = minilm_ffn_decomposed(model, rank, cov)
            cosine[method].append(round(nn.functional.cosine_similarity(embed(decomposed, sentences),
                                                                        reference).mean().item(), 5))
    return {"ranks": list(MINILM_FFN_RANKS), "cosine": cosine, "sentences": len(sentences),
            "calibration_sentences": MINILM_CALIBRATION_SENTENCES,
            "parameters_per_rank": 384 + 1536, "dense_parameters": 384 * 1536}


def decomposition(progress: bool = True) -> dict:
    """Course CNN (Tucker-2, CP, rank selection, fine-tuning), LeNet-300-100 (SVD) and MiniLM's feed-forward layers
    (plain vs whitened SVD), all measured on validation data."""
    return {"dataset": SWEEP_DATASET, "course_cnn": _cnn_decomposition(progress), "lenet_300_100": _lenet_svd(progress),
            "minilm": _minilm_ffn(progress)}


MEMORY_BATCH_SIZES = (32, 64, 128, 256)
MEMORY_SEGMENTS = (1, 2, 3, 4, 6, 8)
MEMORY_DTYPES = ("float32", "bfloat16")
MEMORY_OPTIMIZER = "momentum"
BREAKDOWN_BATCH_SIZES = (1, 16, 64, 256)
DEEP_MLP_DEPTH, DEEP_MLP_WIDTH, DEEP_MLP_BATCH = 36, 256, 1024
DEEP_MLP_SEGMENTS = (1, 2, 3, 4, 6, 9, 12, 18, 36)
HASHED_COMPRESSIONS = (1.0, 1 / 2, 1 / 4, 1 / 8, 1 / 16, 1 / 32, 1 / 64)
SHARING_EPOCHS = 3
SHARING_RECIPE = dict(lr=2e-3, optimizer="adam", weight_decay=0.0, progress=False, evaluate_every_epoch=False)
TIED_DEPTH, TIED_WIDTH = 8, 256
BF16_STEPS = 300  # a short training from scratch (300 steps of 128 images), fp32 vs bf16 autocast
ATTENTION_LENGTHS = (128, 256, 512, 1024, 2048)


def _training_batch(batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``batch_size`` training images and labels (the same inputs for every configuration)."""
    train = load_fashion_mnist("train")
    return train.images[:batch_size], train.labels[:batch_size]


def _memory_breakdown() -> dict:
    """Weights, gradients, optimiser state and saved activations on paper, and the measured step peak."""
    from .memory import OPTIMIZERS, parameter_bytes, saved_activations, training_step_memory  # noqa: PLC0415

    out = {}
    for name in ("lenet_300_100", "course_cnn"):
        model = load_reference(name)
        rows = {}
        for batch in BREAKDOWN_BATCH_SIZES:
            images, labels = _training_batch(batch)
            measured = {opt: training_step_memory(model, opt, images, labels) for opt in OPTIMIZERS}
            rows[str(batch)] = {"saved_activations": sum(saved_activations(model, images).values()),
                                "step_peak": {opt: m.step_peak for opt, m in measured.items()},
                                "optimizer_state": {opt: m.optimizer_state for opt, m in measured.items()}}
        out[name] = {"weights": parameter_bytes(model), "batches": rows}
    return out


def memory_key(batch_size: int, segments: int, dtype: str) -> str:
    """The key of one training configuration of the checkpointing grid."""
    return f"{batch_size}/{segments}/{dtype}"


MAX_STEP_SLOWDOWN = 1.5  # checkpointing may cost at most this much step time (against the plain float32 step)


def best_segments(grid: dict, batch_size: int, dtype: str) -> int:
    """The segment count with the lowest measured peak at ``batch_size`` and ``dtype`` among those whose step takes at
    most :data:`MAX_STEP_SLOWDOWN` times the plain float32 step (fewer segments on a tie)."""
    plain = grid["grid"][memory_key(batch_size, 1, "float32")]["step_ms"]
    allowed = [k for k in grid["segments"]
               if grid["grid"][memory_key(batch_size, k, dtype)]["step_ms"] <= MAX_STEP_SLOWDOWN * plain]
    if not allowed:
        raise ValueError(f"no segment count keeps the step within {MAX_STEP_SLOWDOWN}x at batch {batch_size} {dtype}")
    return min(allowed, key=lambda k: (grid["grid"][memory_key(batch_size, k, dtype)]["peak"], k))


def lowest_peak_checkpointing(model: nn.Module, segments: int, images: torch.Tensor, labels: torch.Tensor,
                              dtype: str) -> tuple[nn.Module, str]:
    """The course CNN checkpointed in ``segments`` segments of equal layer counts or of equal saved bytes, whichever
    step has the lower measured peak; and which one it is (``"layers"`` or ``"bytes"``)."""
    from .memory import training_step_memory, with_checkpointing  # noqa: PLC0415

    candidates = {"layers": with_checkpointing(model, segments), "bytes": with_checkpointing(model, segments, images)}
    peaks = {balance: training_step_memory(m, MEMORY_OPTIMIZER, images, labels, dtype).peak
             for balance, m in candidates.items()}
    balance = min(peaks, key=lambda b: (peaks[b], b != "layers"))
    return candidates[balance], balance


def _checkpointing_grid(progress: bool) -> dict:
    """Course CNN training steps: peak memory and step time for every batch size, segment count and dtype."""
    from .memory import compare_step_time, saved_activations, training_step_memory  # noqa: PLC0415

    cnn = load_reference("course_cnn")
    grid, per_sample = {}, {}
    configs = [(b, d) for b in MEMORY_BATCH_SIZES for d in MEMORY_DTYPES]
    for batch, dtype in tqdm(configs, desc="batch sizes x dtypes", disable=not progress):
        images, labels = _training_batch(batch)
        models = {k: lowest_peak_checkpointing(cnn, k, images, labels, dtype) for k in MEMORY_SEGMENTS}
        times = compare_step_time({str(k): m for k, (m, _) in models.items()}, MEMORY_OPTIMIZER, images, labels,
                                  dtypes={str(k): dtype for k in models}, rounds=5)
        for k, (model, balance) in models.items():
            mem = training_step_memory(model, MEMORY_OPTIMIZER, images, labels, dtype)
            grid[memory_key(batch, k, dtype)] = {"peak": mem.peak, "step_peak": mem.step_peak,
                                                 "step_ms": round(times[str(k)].median_ms, 2),
                                                 "starts": model.features.starts, "balance": balance}
    return {"optimizer": MEMORY_OPTIMIZER, "batch_sizes": list(MEMORY_BATCH_SIZES), "segments": list(MEMORY_SEGMENTS),
            "dtypes": list(MEMORY_DTYPES), "weights": parameter_bytes(cnn), "grid": grid,
            **saved_bytes_model(cnn)}


def saved_bytes_model(cnn: nn.Module) -> dict:
    """Per layer and dtype: the bytes saved for backward per example and once per batch (autocast's low-precision
    weight copies), from two batch sizes, and each layer's output bytes per example (what a checkpoint keeps)."""
    from .memory import layer_output_bytes, saved_activations  # noqa: PLC0415

    small, large = _training_batch(MEMORY_BATCH_SIZES[0])[0], _training_batch(MEMORY_BATCH_SIZES[1])[0]
    extra = len(large) - len(small)
    per_sample, constant, outputs = {}, {}, {}
    for dtype in MEMORY_DTYPES:
        a, b = saved_activations(cnn, small, dtype=dtype), saved_activations(cnn, large, dtype=dtype)
        per_sample[dtype] = {layer: round((b[layer] - a.get(layer, 0)) / extra) for layer in b}
        constant[dtype] = {layer: b[layer] - len(large) * per_sample[dtype][layer] for layer in b}
        outputs[dtype] = {layer: size // len(small) for layer, size in
                          layer_output_bytes(cnn, small, dtype=dtype).items()}
    return {"saved_per_sample": per_sample, "saved_per_batch": constant, "output_per_sample": outputs}


def _deep_mlp_checkpointing(progress: bool) -> dict:
    """Chen et al.'s experiment on a deep residual MLP: peak memory and step time against the number of segments."""
    from .efficient import DeepMLP  # noqa: PLC0415
    from .memory import compare_step_time, training_step_memory, with_checkpointing  # noqa: PLC0415

    setup(seed=0)
    model = DeepMLP(DEEP_MLP_DEPTH, DEEP_MLP_WIDTH)
    images, labels = _training_batch(DEEP_MLP_BATCH)
    models = {k: with_checkpointing(model, k, attribute="blocks") for k in DEEP_MLP_SEGMENTS}
    times = compare_step_time({str(k): m for k, m in models.items()}, MEMORY_OPTIMIZER, images, labels, rounds=7)
    rows = {}
    for k, m in tqdm(models.items(), desc="segments", disable=not progress):
        mem = training_step_memory(m, MEMORY_OPTIMIZER, images, labels)
        rows[str(k)] = {"peak": mem.peak, "step_peak": mem.step_peak, "step_ms": round(times[str(k)].median_ms, 2)}
    return {"depth": DEEP_MLP_DEPTH, "width": DEEP_MLP_WIDTH, "batch_size": DEEP_MLP_BATCH, "segments": rows}


def _trained_val_accuracy(model: nn.Module, epochs: int = SHARING_EPOCHS) -> float:
    train_model(model, epochs=epochs, **SHARING_RECIPE)
    return val_accuracy(model)


def dense_mlp_with(parameters: int) -> nn.Module:
    """A LeNet-300-100-shaped MLP (hidden layers 3:1) scaled down to about ``parameters`` parameters: HashedNets'
    fair comparison, a small dense network with the same storage."""
    from .models import LeNet300100  # noqa: PLC0415

    # 784 h + h + h (h / 3) + h / 3 + (h / 3) 10 + 10 = parameters, solved for the first hidden width h
    a, b, c = 1 / 3, 784 + 1 + 1 / 3 + 10 / 3, 10 - parameters
    hidden = max(3, round((-b + (b * b - 4 * a * c) ** 0.5) / (2 * a)))
    return LeNet300100(hidden=(hidden, max(1, round(hidden / 3))))


def _parameter_sharing(progress: bool) -> dict:
    """Hashed LeNet-300-100 at several compressions vs dense MLPs of the same size; tied vs untied deep MLPs."""
    from .efficient import DeepMLP, hashed_mlp  # noqa: PLC0415
    from .measure import serialized_bytes  # noqa: PLC0415

    hashed = {}
    for compression in tqdm(HASHED_COMPRESSIONS, desc="hashed compressions", disable=not progress):
        setup(seed=0)
        model = hashed_mlp(compression)
        params = count_parameters(model)
        setup(seed=0)
        dense = dense_mlp_with(params)
        hashed[f"{compression:.6f}"] = {
            "compression": compression, "parameters": params, "bytes": serialized_bytes(model),
            "val_accuracy": _trained_val_accuracy(model),
            "dense_parameters": count_parameters(dense), "dense_hidden": [dense.fc1.out_features, dense.fc2.out_features],
            "dense_val_accuracy": _trained_val_accuracy(dense)}
    tied = {}
    for label, depth, is_tied in (("untied", TIED_DEPTH, False), ("tied", TIED_DEPTH, True), ("one block", 1, False)):
        setup(seed=0)
        model = DeepMLP(depth, TIED_WIDTH, tied=is_tied)
        tied[label] = {"depth": depth, "parameters": count_parameters(model), "bytes": serialized_bytes(model),
                       "val_accuracy": _trained_val_accuracy(model)}
    return {"epochs": SHARING_EPOCHS, "hashed": hashed, "tied": tied}


def _bf16_training(progress: bool) -> dict:
    """A short training of the course CNN from scratch in float32 and with bf16 autocast: accuracy and time."""
    import time  # noqa: PLC0415

    from .memory import autocast_loss  # noqa: PLC0415

    out = {}
    for dtype in tqdm(MEMORY_DTYPES, desc="activation dtypes", disable=not progress):
        model = initial_model("course_cnn")
        start = time.perf_counter()
        recipe = dict(RECIPES["course_cnn"], epochs=1, augment=False)
        train_model(model, steps_per_epoch=BF16_STEPS, loss_fn=autocast_loss(dtype), progress=False,
                    evaluate_every_epoch=False, **recipe)
        out[dtype] = {"val_accuracy": val_accuracy(model), "seconds": round(time.perf_counter() - start, 1)}
    return {"steps": BF16_STEPS, "batch_size": RECIPES["course_cnn"]["batch_size"], "runs": out}


def attention_inputs(length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One sequence of ``length`` real tokens: the Wikipedia validation sentences, tokenized and concatenated."""
    from . import minilm  # noqa: PLC0415
    from .data import load_wikipedia_sentences  # noqa: PLC0415

    text = " ".join(load_wikipedia_sentences()[1])
    ids = minilm.tokenize([text], max_length=1_000_000)["input_ids"][:, :length]
    if ids.shape[1] < length:
        raise ValueError(f"the validation sentences give only {ids.shape[1]} tokens, fewer than {length}")
    return ids, torch.ones_like(ids)


def compare_attention(explicit: nn.Module, fused: nn.Module, inputs: tuple, rounds: int) -> dict:
    """The same MiniLM with explicit and with fused attention on the same inputs: peak inference memory and latency
    (alternating rounds) of each, and the largest difference between their outputs."""
    from .measure import compare_latency, peak_memory_bytes  # noqa: PLC0415

    times = compare_latency({"explicit": explicit, "sdpa": fused}, inputs, rounds=rounds, warmup=1)
    with torch.inference_mode():
        difference = (explicit(*inputs) - fused(*inputs)).abs().max().item()
    return {"explicit_peak": peak_memory_bytes(explicit, *inputs), "sdpa_peak": peak_memory_bytes(fused, *inputs),
            "explicit": times["explicit"], "sdpa": times["sdpa"], "max_difference": difference}


def _attention(progress: bool) -> dict:
    """MiniLM at growing lengths: peak inference memory, latency and agreement of explicit vs fused attention."""
    from . import minilm  # noqa: PLC0415

    model = minilm.with_copied_positions(minilm.load_minilm(), max(ATTENTION_LENGTHS))
    explicit = minilm.use_fused_attention(copy.deepcopy(model), False)
    fused = minilm.use_fused_attention(model, True)
    rows = {}
    for length in tqdm(ATTENTION_LENGTHS, desc="sequence lengths", disable=not progress):
        compared = compare_attention(explicit, fused, attention_inputs(length), rounds=5)
        rows[str(length)] = {"explicit_peak": compared["explicit_peak"], "sdpa_peak": compared["sdpa_peak"],
                             "explicit_ms": round(compared["explicit"].median_ms, 2),
                             "sdpa_ms": round(compared["sdpa"].median_ms, 2),
                             "max_difference": compared["max_difference"]}
    return {"batch_size": 1, "heads": model.cfg.heads, "lengths": rows}


def memory(progress: bool = True) -> dict:
    """Training memory of the course CNN and LeNet-300-100, checkpointing (course CNN and a deep MLP), bf16
    autocast, parameter sharing (hashing, tying) and MiniLM's attention memory against length."""
    return {"dataset": SWEEP_DATASET, "breakdown": _memory_breakdown(), "checkpointing": _checkpointing_grid(progress),
            "deep_mlp": _deep_mlp_checkpointing(progress), "bf16": _bf16_training(progress),
            "sharing": _parameter_sharing(progress), "attention": _attention(progress)}


def pipeline(progress: bool = True) -> dict:
    """The course CNN's hybrid pipeline: recipe chosen on validation, checkpoint shipped (see course_lib.pipeline)."""
    from .pipeline import sweep  # noqa: PLC0415

    return sweep(progress)


SWEEPS: dict[str, Callable[..., dict]] = {"quantization": quantization, "pruning": pruning, "sharing": sharing,
                                          "distillation": distillation, "decomposition": decomposition,
                                          "memory": memory, "pipeline": pipeline}


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
