"""Re-measure a topic's headline results on this machine.

    python -m course_lib.bench TOPIC [--json] [--device cpu|cuda] [--threads N]

TOPIC is one of the course's topics or ``all``. Each row compares a (compressed) variant with its
uncompressed baseline measured in the same run, on the same inputs: accuracy on the real test set,
bytes of the written-and-reloaded file, and latency (median of alternating timed rounds, with p10-p90).
``--json`` prints only a JSON list of rows on stdout. Exit status 2 for an unknown topic or device.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import statistics
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from course_lib import deep_compression
from course_lib.data import Dataset, load_fashion_mnist, load_lee_background, load_lee_corpus
from course_lib.dataflow import LINEAR_SHAPE, measure_machine
from course_lib.measure import LatencyStats, compare_latency, count_parameters, save_state_dict, serialized_bytes
from course_lib.minilm import MiniLM, embed, lee_correlation, load_minilm, tokenize
from course_lib.models import StudentCNN, build_model, load_reference
from course_lib.prune import (RETRAIN_RECIPE, l1_filter_selection, load_sparse, make_permanent, prune_and_retrain,
                              remove_filters, save_sparse, sparsity_of)
from course_lib.quantize import (compile_for_cpu, linear_input_absmax, load_dynamic_int8, load_int8, quantize_dynamic,
                                 quantize_embeddings, quantize_static, save_dynamic_int8, save_int8)
from course_lib.runtime import Runtime, setup
from course_lib.share import load_model
from course_lib.train import evaluate, fine_tune

TOPICS = ("baseline", "dataflow", "quantization", "pruning", "sharing", "distillation", "decomposition",
          "memory", "pipeline")
FASHION_MODELS = ("lenet_300_100", "lenet5", "course_cnn")
BATCH_SIZES = (1, 64)
MINILM_SEQUENCE_LENGTH = 128


@dataclass
class Row:
    """One scoreboard row (the schema of COURSE.md section 4, plus spread and hardware)."""

    topic: str
    model: str
    variant: str
    device: str
    batch_size: int
    threads: int
    metric_name: str
    metric: float
    baseline_metric: float
    size_bytes: int
    baseline_size_bytes: int
    compression: float
    latency_ms: float
    baseline_latency_ms: float
    speedup: float
    latency_p10_ms: float
    latency_p90_ms: float
    cpu_capability: str
    torch_version: str
    kept_fraction: float | None = None  # pruning: fraction of the weights left
    metric_std: float | None = None  # distillation: standard deviation of the metric over the seeds
    seeds: int | None = None  # distillation: how many seeds the metric is the mean of
    seed_metrics: list[float] | None = None  # distillation: the metric of each seed, in seed order (paired)
    pearson_lee: float | None = None  # MiniLM students: Pearson r with the Lee corpus' human ratings
    baseline_pearson_lee: float | None = None
    rank: int | None = None  # decomposition of MiniLM: the rank of every feed-forward layer
    peak_memory_bytes: int | None = None  # memory: peak of a training step or an inference call (see variant)
    baseline_peak_memory_bytes: int | None = None
    tokens: int | None = None  # memory of MiniLM's attention: the sequence length
    parameters: int | None = None  # memory-efficient blocks: parameters and multiply-adds per image
    baseline_parameters: int | None = None
    macs: int | None = None
    baseline_macs: int | None = None
    fp32_compiled_latency_ms: float | None = None  # pipeline: fp32 compiled, timed in the same alternating rounds
    recall_at_fpr: float | None = None  # fraud: recall at 0.1% false-positive rate (test split)
    baseline_recall_at_fpr: float | None = None
    max_rate_at_p99: int | None = None  # fraud: highest Poisson arrival rate (per second) within the p99 budget
    baseline_max_rate_at_p99: int | None = None
    p99_budget_ms: float | None = None
    runtime: str | None = None  # fraud: how the model is served ("precision / runtime", the fastest found)


def make_row(rt: Runtime, topic: str, model: str, variant: str, batch_size: int, metric_name: str,
             metric: float, baseline_metric: float, size_bytes: int, baseline_size_bytes: int,
             latency: LatencyStats, baseline_latency: LatencyStats) -> Row:
    """Assemble a row; compression and speedup are derived from the measured values."""
    return Row(
        topic=topic, model=model, variant=variant, device=rt.device.type, batch_size=batch_size,
        threads=rt.threads, metric_name=metric_name, metric=round(metric, 4),
        baseline_metric=round(baseline_metric, 4), size_bytes=size_bytes, baseline_size_bytes=baseline_size_bytes,
        compression=round(baseline_size_bytes / size_bytes, 3), latency_ms=round(latency.median_ms, 3),
        baseline_latency_ms=round(baseline_latency.median_ms, 3),
        speedup=round(baseline_latency.median_ms / latency.median_ms, 3),
        latency_p10_ms=round(latency.p10_ms, 3), latency_p90_ms=round(latency.p90_ms, 3),
        cpu_capability=rt.cpu_capability, torch_version=rt.torch_version,
    )


def _load_dense(path: Path, skeleton: nn.Module) -> nn.Module:
    """``skeleton`` with the tensors of a safetensors file, in eval mode."""
    skeleton.load_state_dict(load_file(str(path)))
    return skeleton.eval()


def _write_and_reload(model: nn.Module, rebuild: Callable[[], nn.Module], folder: Path, name: str,
                      device: torch.device) -> tuple[nn.Module, int]:
    """Save the model to the file we would ship, reload it into a fresh model, return both with the size."""
    path = folder / f"{name}.safetensors"
    size = save_state_dict(model, path)
    return _load_dense(path, rebuild()).to(device), size


def _baseline_fashion(rt: Runtime, name: str, folder: Path) -> list[Row]:
    model, size = _write_and_reload(load_reference(name), lambda: build_model(name), folder, name, rt.device)
    accuracy = evaluate(model, device=rt.device)
    images = load_fashion_mnist("test").images
    rows = []
    for batch in BATCH_SIZES:
        x = images[:batch].to(rt.device)
        latency = compare_latency({"fp32": model}, (x,), rounds=30 if batch == 1 else 15)["fp32"]
        rows.append(make_row(rt, "baseline", name, "fp32", batch, "accuracy", accuracy, accuracy, size, size,
                             latency, latency))
    return rows


def minilm_inputs(batch_size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch of Lee-corpus documents as token ids and mask, padded/truncated to 128 tokens."""
    documents, _ = load_lee_corpus()
    chosen = [documents[i % len(documents)] for i in range(batch_size)]
    tokens = tokenize(chosen, max_length=MINILM_SEQUENCE_LENGTH, pad_to=MINILM_SEQUENCE_LENGTH)
    return tokens["input_ids"].to(device), tokens["attention_mask"].to(device)


def _baseline_minilm(rt: Runtime, folder: Path) -> list[Row]:
    model, size = _write_and_reload(load_minilm(), MiniLM, folder, "minilm", rt.device)
    correlation = lee_correlation(model)
    rows = []
    for batch in BATCH_SIZES:
        latency = compare_latency({"fp32": model}, minilm_inputs(batch, rt.device), rounds=15 if batch == 1 else 7,
                                  warmup=2)["fp32"]
        rows.append(make_row(rt, "baseline", "minilm", "fp32", batch, "lee_pearson_r", correlation, correlation,
                             size, size, latency, latency))
    return rows


def baseline(rt: Runtime) -> list[Row]:
    """fp32 reference models: accuracy (MiniLM: Lee-corpus Pearson r), file bytes, latency at batch 1 and 64."""
    with tempfile.TemporaryDirectory() as folder:
        rows = [row for name in FASHION_MODELS for row in _baseline_fashion(rt, name, Path(folder))]
        return rows + _baseline_minilm(rt, Path(folder))


DATAFLOW_BATCH_SIZES = (1, 8, 64)


def _machine_row(rt: Runtime, variant: str, metric_name: str, value: float) -> Row:
    """A row that reports a property of the machine (no model: no size, no latency)."""
    return Row(topic="dataflow", model="machine", variant=variant, device=rt.device.type, batch_size=0,
               threads=rt.threads, metric_name=metric_name, metric=round(value, 2), baseline_metric=round(value, 2),
               size_bytes=0, baseline_size_bytes=0, compression=1.0, latency_ms=0.0, baseline_latency_ms=0.0,
               speedup=1.0, latency_p10_ms=0.0, latency_p90_ms=0.0, cpu_capability=rt.cpu_capability,
               torch_version=rt.torch_version)


def dataflow(rt: Runtime) -> list[Row]:
    """The machine's rooflines (fp32 peak of the matrix-product and the convolution library, copy bandwidth, the
    fixed cost of a layer call, int8 vs fp32 on one Linear shape) and fp32 latency vs batch size (1, 8, 64)."""
    machine = measure_machine(rt.device)
    shape = "x".join(map(str, LINEAR_SHAPE))
    rows = [_machine_row(rt, "fp32-matmul-peak", "gflops", machine.matmul_gflops),
            _machine_row(rt, "fp32-conv-peak", "gflops", machine.conv_gflops),
            _machine_row(rt, "memory-bandwidth", "gbytes_per_s", machine.bandwidth_gbs),
            _machine_row(rt, "layer-call-overhead", "microseconds", machine.call_overhead_us)]
    if machine.int8_linear_speedup:
        rows += [_machine_row(rt, f"fp32-linear-{shape}", "gflops", machine.linear_fp32_gflops),
                 _machine_row(rt, f"int8-linear-{shape}", "gops", machine.linear_int8_gops)]
    cnn, minilm = load_reference("course_cnn", rt.device), load_minilm(rt.device)
    cnn_accuracy, correlation = evaluate(cnn, device=rt.device), lee_correlation(minilm)
    cnn_bytes, minilm_bytes = serialized_bytes(cnn), serialized_bytes(minilm)
    images = load_fashion_mnist("test").images
    for batch in DATAFLOW_BATCH_SIZES:
        stats = compare_latency({"fp32": cnn}, (images[:batch].to(rt.device),), rounds=20)["fp32"]
        rows.append(make_row(rt, "dataflow", "course_cnn", "fp32", batch, "accuracy", cnn_accuracy, cnn_accuracy,
                             cnn_bytes, cnn_bytes, stats, stats))
    for batch in DATAFLOW_BATCH_SIZES:
        stats = compare_latency({"fp32": minilm}, minilm_inputs(batch, rt.device), rounds=10 if batch < 64 else 5,
                                warmup=2)["fp32"]
        rows.append(make_row(rt, "dataflow", "minilm", "fp32", batch, "lee_pearson_r", correlation, correlation,
                             minilm_bytes, minilm_bytes, stats, stats))
    return rows


CALIBRATION_IMAGES = 512
SMOOTHQUANT_ALPHA = 0.7
SMOOTHED_LAYERS = tuple(f"layers.{i}.ffn.{kind}" for i in range(6) for kind in ("intermediate", "output"))


def _static_int8_rows(rt: Runtime, name: str, folder: Path, batch_sizes: tuple[int, ...],
                      with_compiled_fp32: bool = True) -> list[Row]:
    """PT2E static int8 (saved as .pt2, reloaded, compiled) against fp32 eager (the baseline) and, optionally,
    fp32 compiled, timed in alternating rounds; one row per variant and batch size."""
    fp32, fp32_size = _write_and_reload(load_reference(name), lambda: build_model(name), folder, name, rt.device)
    calibration = load_fashion_mnist("train").images[:CALIBRATION_IMAGES]
    int8_path = folder / f"{name}-int8.pt2"
    int8_size = save_int8(quantize_static(fp32, calibration), calibration, int8_path)
    candidates = {"fp32": fp32, "int8-static": compile_for_cpu(load_int8(int8_path))}
    if with_compiled_fp32:
        candidates["fp32-compiled"] = compile_for_cpu(fp32)
    test = load_fashion_mnist("test")
    accuracy = evaluate(fp32, test)
    int8_accuracy = evaluate(candidates["int8-static"], test, batch_size=max(batch_sizes), fixed_batch=True)
    measured = {"fp32": (fp32_size, accuracy), "fp32-compiled": (fp32_size, accuracy),
                "int8-static": (int8_size, int8_accuracy)}
    rows = []
    for batch in batch_sizes:
        latency = compare_latency(candidates, (test.images[:batch],), rounds=30 if batch == 1 else 15, warmup=3)
        for variant in ("fp32", "fp32-compiled", "int8-static"):
            if variant in candidates:
                size, metric = measured[variant]
                rows.append(make_row(rt, "quantization", name, variant, batch, "accuracy", metric, accuracy, size,
                                     fp32_size, latency[variant], latency["fp32"]))
    return rows


def _half_precision_rows(rt: Runtime, folder: Path) -> list[Row]:
    """On a GPU: fp32 vs fp16 of the course CNN (tensor cores), both compiled."""
    fp32, fp32_size = _write_and_reload(load_reference("course_cnn"), lambda: build_model("course_cnn"), folder,
                                        "course_cnn", rt.device)
    fp16, fp16_size = _write_and_reload(load_reference("course_cnn").half(), lambda: build_model("course_cnn").half(),
                                        folder, "course_cnn-fp16", rt.device)
    test = load_fashion_mnist("test")
    accuracy, fp16_accuracy = evaluate(fp32, test, device=rt.device), evaluate(fp16, Dataset(test.images.half(),
                                                                                             test.labels), device=rt.device)
    rows = []
    for batch in BATCH_SIZES:
        x = test.images[:batch].to(rt.device)
        latency = compare_latency({"fp32": torch.compile(fp32), "fp16": torch.compile(fp16)}, (x,), rounds=30)
        rows.append(make_row(rt, "quantization", "course_cnn", "fp16", batch, "accuracy", fp16_accuracy, accuracy,
                             fp16_size, fp32_size, latency["fp16"], latency["fp32"]))
    return rows


def minilm_calibration_absmax(model: nn.Module, documents: int = 64) -> dict[str, torch.Tensor]:
    """Per-channel input ranges of MiniLM's Linear layers on Lee background documents (not the evaluated 50)."""
    background = load_lee_background()[:documents]
    return linear_input_absmax(model, lambda: embed(model, background))


def _dynamic_int8_minilm_row(rt: Runtime, folder: Path) -> Row:
    """MiniLM with every Linear in dynamic int8 (per-channel weights, 8-bit activations, SmoothQuant on the
    feed-forward layers, the sensitive ones with outlier input channels) and int8 embedding tables (per row),
    against fp32 with fused attention (``scaled_dot_product_attention``), the fair baseline."""
    fp32, fp32_size = _write_and_reload(load_minilm(), MiniLM, folder, "minilm", rt.device)
    documents, _ = load_lee_corpus()
    reference = embed(fp32, documents)
    int8 = quantize_embeddings(quantize_dynamic(fp32, per_channel=True, reduce_range=False,
                                                smooth_alpha=SMOOTHQUANT_ALPHA, absmax=minilm_calibration_absmax(fp32),
                                                smooth_names=SMOOTHED_LAYERS))
    size = save_dynamic_int8(int8, folder / "minilm-int8.safetensors")
    reloaded = load_dynamic_int8(folder / "minilm-int8.safetensors", MiniLM())
    cosine = nn.functional.cosine_similarity(embed(reloaded, documents), reference).mean().item()
    latency = compare_latency({"fp32": fp32, "int8-dynamic": reloaded}, minilm_inputs(32, rt.device), rounds=9,
                              warmup=2)
    return make_row(rt, "quantization", "minilm", "int8-dynamic", 32, "cosine_to_fp32", cosine, 1.0, size,
                    fp32_size, latency["int8-dynamic"], latency["fp32"])


def quantization(rt: Runtime) -> list[Row]:
    """CPU: PT2E static int8 of the course CNN (batch 64 and 1) and LeNet-5 (batch 64), dynamic int8 MiniLM
    (batch 32 x 128 tokens). GPU: fp16 of the course CNN (the CPU int8 kernels do not run there)."""
    with tempfile.TemporaryDirectory() as folder:
        if rt.device.type == "cuda":
            return _half_precision_rows(rt, Path(folder))
        return (_static_int8_rows(rt, "course_cnn", Path(folder), (64, 1))
                + [r for r in _static_int8_rows(rt, "lenet5", Path(folder), (64,), with_compiled_fp32=False)
                   if r.variant == "int8-static"]
                + [_dynamic_int8_minilm_row(rt, Path(folder))])


# Recipes chosen on the validation split (validation accuracy; dense LeNet-300-100 90.84%, course CNN 94.68%):
# last round of 8 epochs 89.64%, gradual (cubic, 12 epochs) 89.68-89.84%, last round of 16 epochs 90.02%;
# filters kept 50% (4 or 6 epochs) 94.16% / 94.00%, 60% (4 epochs) 94.36% (48.5% of the parameters).
PRUNING_SCHEDULE = ((0.5, 2), (0.75, 2), (0.9, 16))  # (sparsity, retraining epochs) per round
PRUNING_TRAINING = dict(RETRAIN_RECIPE, progress=False)
FILTER_KEEP_FRACTION, FILTER_FINE_TUNE_EPOCHS = 0.6, 4


def _magnitude_pruned_row(rt: Runtime, folder: Path) -> Row:
    """LeNet-300-100 pruned by magnitude to 90% in three rounds with retraining, stored sparse (each weight in its
    smallest format: dense, bitmask or CSR) and reloaded."""
    dense, dense_size = _write_and_reload(load_reference("lenet_300_100"), lambda: build_model("lenet_300_100"),
                                          folder, "lenet_300_100", rt.device)
    model = load_reference("lenet_300_100", rt.device)
    sparsities, epochs = zip(*PRUNING_SCHEDULE, strict=True)
    prune_and_retrain(model, sparsities, epochs, device=rt.device, **PRUNING_TRAINING)
    size = save_sparse(make_permanent(model), folder / "lenet_300_100-sparse.safetensors")
    reloaded = load_sparse(folder / "lenet_300_100-sparse.safetensors", build_model("lenet_300_100")).to(rt.device)
    x = load_fashion_mnist("test").images[:64].to(rt.device)
    latency = compare_latency({"dense": dense, "pruned": reloaded}, (x,), rounds=30)
    row = make_row(rt, "pruning", "lenet_300_100", "magnitude-retrained", 64, "accuracy",
                   evaluate(reloaded, device=rt.device), evaluate(dense, device=rt.device), size, dense_size,
                   latency["pruned"], latency["dense"])
    return dataclasses.replace(row, kept_fraction=round(1 - sparsity_of(reloaded), 4))


def _filter_pruned_row(rt: Runtime, folder: Path) -> Row:
    """Course CNN with 40% of every convolution's filters (smallest L1) removed, fine-tuned, saved, reloaded."""
    dense, dense_size = _write_and_reload(load_reference("course_cnn"), lambda: build_model("course_cnn"), folder,
                                          "course_cnn", rt.device)
    selection = l1_filter_selection(dense, FILTER_KEEP_FRACTION)
    small = remove_filters(load_reference("course_cnn"), selection)
    fine_tune(small, epochs=FILTER_FINE_TUNE_EPOCHS, augment=True, device=rt.device, evaluate_every_epoch=False,
              **PRUNING_TRAINING)
    small, size = _write_and_reload(small, lambda: remove_filters(build_model("course_cnn"), selection), folder,
                                    "course_cnn-filter-pruned", rt.device)
    x = load_fashion_mnist("test").images[:64].to(rt.device)
    latency = compare_latency({"dense": dense, "pruned": small}, (x,), rounds=15)
    row = make_row(rt, "pruning", "course_cnn", "filter-pruned", 64, "accuracy", evaluate(small, device=rt.device),
                   evaluate(dense, device=rt.device), size, dense_size, latency["pruned"], latency["dense"])
    return dataclasses.replace(row, kept_fraction=round(count_parameters(small) / count_parameters(dense), 4))


def pruning(rt: Runtime) -> list[Row]:
    """Magnitude pruning with retraining of LeNet-300-100 (sparse file) and real filter pruning of the course CNN."""
    with tempfile.TemporaryDirectory() as folder:
        return [_magnitude_pruned_row(rt, Path(folder)), _filter_pruned_row(rt, Path(folder))]


def _stage_models(result: deep_compression.Result, device: torch.device) -> dict[str, nn.Module]:
    """Every stage's model, reloaded from its file (all compute with dense weights once decoded)."""
    name = result.model_name
    loaders = {"fp32": _load_dense, "pruned": load_sparse, "pruned-shared": load_model, "deep-compression": load_model}
    return {s.name: loaders[s.name](s.path, build_model(name)).to(device) for s in result.stages}


def sharing(rt: Runtime) -> list[Row]:
    """Deep Compression of LeNet-300-100 and LeNet-5: one row per stage after the dense one (pruned,
    pruned-shared, deep-compression) with the bytes of its real file and the accuracy of the model decoded from
    it; latency at batch 64 of the decoded model against the fp32 reference (decoded weights are dense)."""
    rows = []
    x = load_fashion_mnist("test").images[:64].to(rt.device)
    with tempfile.TemporaryDirectory() as folder:
        for name in ("lenet_300_100", "lenet5"):
            result = deep_compression.run(name, folder, device=rt.device)
            latency = compare_latency(_stage_models(result, rt.device), (x,), rounds=15)
            dense = result.stage("fp32")
            for stage in result.stages[1:]:
                row = make_row(rt, "sharing", name, stage.name, 64, "accuracy", stage.accuracy, dense.accuracy,
                               stage.size_bytes, dense.size_bytes, latency[stage.name], latency["fp32"])
                rows.append(dataclasses.replace(row, kept_fraction=stage.kept_fraction))
    return rows


def distillation(rt: Runtime, epochs: int | None = None, steps_per_epoch: int | None = None) -> list[Row]:
    """The student CNN trained alone and distilled from the course CNN (T and alpha chosen on the validation split
    by ``python -m course_lib.sweeps distillation``), 3 seeds each, same recipe, data order and initial weights:
    mean test accuracy of the reloaded files, against the teacher (size, latency at batch 64). ``epochs`` and
    ``steps_per_epoch`` shorten the training (for tests); the figures come from the full recipe."""
    from course_lib import distill as KD  # noqa: PLC0415 (only this topic needs it)
    from course_lib.sweeps import DISTILL_SEEDS, load_results  # noqa: PLC0415

    chosen = load_results("distillation")["chosen"]
    recipe = {k: v for k, v in (("epochs", epochs), ("steps_per_epoch", steps_per_epoch)) if v is not None}
    with tempfile.TemporaryDirectory() as folder:
        teacher, teacher_size = _write_and_reload(load_reference("course_cnn"), lambda: build_model("course_cnn"),
                                                  Path(folder), "course_cnn", rt.device)
        teacher_accuracy = evaluate(teacher, device=rt.device)
        targets = KD.teacher_logits(teacher, load_fashion_mnist("train").images)
        losses = {"alone": KD.label_loss(), "distilled": KD.cached_distillation_loss(chosen["temperature"],
                                                                                     chosen["alpha"])}
        accuracies: dict[str, list[float]] = {variant: [] for variant in losses}
        students: dict[str, nn.Module] = {}
        for seed in DISTILL_SEEDS:
            for variant, loss_fn in losses.items():
                student = KD.train_student(StudentCNN, targets, loss_fn, seed=seed, device=rt.device, **recipe)
                students[variant], size = _write_and_reload(student, StudentCNN, Path(folder), f"student-{variant}",
                                                            rt.device)
                accuracies[variant].append(evaluate(students[variant], device=rt.device))
        x = load_fashion_mnist("test").images[:64].to(rt.device)
        latency = compare_latency({"teacher": teacher, "student": students["distilled"]}, (x,), rounds=30)
        rows = [dataclasses.replace(
            make_row(rt, "distillation", "student_cnn", variant, 64, "accuracy", statistics.mean(values),
                     teacher_accuracy, size, teacher_size, latency["student"], latency["teacher"]),
            metric_std=round(statistics.stdev(values), 4), seeds=len(values),
            seed_metrics=[round(v, 4) for v in values]) for variant, values in accuracies.items()]
        return rows + _minilm_student_rows(rt, Path(folder))


def _minilm_student_rows(rt: Runtime, folder: Path) -> list[Row]:
    """The 2-layer MiniLM student before (truncated) and after distillation (the checkpoint made by
    ``python -m course_lib.train_reference --minilm-student``), files written and reloaded: mean cosine to the
    teacher on the held-out Wikipedia sentences, Lee Pearson r, bytes and latency at batch 32 x 128 tokens."""
    from course_lib.data import load_wikipedia_sentences  # noqa: PLC0415
    from course_lib.minilm import STUDENT_LAYERS, load_minilm_student, truncated_minilm  # noqa: PLC0415

    held_out = load_wikipedia_sentences()[2]
    teacher, teacher_size = _write_and_reload(load_minilm(), MiniLM, folder, "minilm", rt.device)
    reference = embed(teacher, held_out)
    teacher_r = lee_correlation(teacher)
    skeleton = lambda: truncated_minilm(MiniLM(), STUDENT_LAYERS)  # noqa: E731 (the student's shape, any weights)
    students = {variant: _write_and_reload(load_minilm_student(distilled=variant == "distilled-student"), skeleton,
                                           folder, variant, rt.device)
                for variant in ("truncated-student", "distilled-student")}
    latency = compare_latency({"teacher": teacher, **{v: m for v, (m, _) in students.items()}},
                              minilm_inputs(32, rt.device), rounds=7, warmup=2)
    rows = []
    for variant, (student, size) in students.items():
        cosine = nn.functional.cosine_similarity(embed(student, held_out), reference).mean().item()
        row = make_row(rt, "distillation", "minilm", variant, 32, "cosine_to_fp32", cosine, 1.0, size, teacher_size,
                       latency[variant], latency["teacher"])
        rows.append(dataclasses.replace(row, pearson_lee=round(lee_correlation(student), 4),
                                        baseline_pearson_lee=round(teacher_r, 4)))
    return rows


def _decomposed_and_fine_tuned(rt: Runtime, name: str, plan: dict, folder: Path, epochs: int, recipe: dict
                               ) -> tuple[nn.Module, int]:
    """The reference model decomposed by ``plan``, fine-tuned, written with its plan, reloaded; and the file's bytes."""
    from course_lib import decompose as D  # noqa: PLC0415 (only this topic needs it)

    model = D.decompose(load_reference(name), plan)
    fine_tune(model, epochs=epochs, evaluate_every_epoch=False, device=rt.device, **recipe)
    size = D.save_decomposed(model, plan, folder / f"{name}-decomposed.safetensors")
    return D.load_decomposed(folder / f"{name}-decomposed.safetensors", build_model(name)).to(rt.device), size


def _decomposed_cnn_rows(rt: Runtime, folder: Path, steps_per_epoch: int | None) -> list[Row]:
    """The course CNN decomposed with the plan chosen on validation by ``python -m course_lib.sweeps decomposition``
    (Tucker-2 of five convolutions, SVD of the first classifier layer), fine-tuned, written and reloaded; timed at
    batch 64 against the reference, both compiled (the fair baseline: BN folded, ops fused) and both eager."""
    from course_lib import decompose as D  # noqa: PLC0415 (only this topic needs it)
    from course_lib.sweeps import DECOMPOSITION_RETRAIN, RECOVERY_EPOCHS, load_results  # noqa: PLC0415

    results = load_results("decomposition")["course_cnn"]
    plan = D.plan_from_json(results["selection"][results["chosen"]]["plan"])
    reference, reference_size = _write_and_reload(load_reference("course_cnn"), lambda: build_model("course_cnn"),
                                                  folder, "course_cnn", rt.device)
    reloaded, size = _decomposed_and_fine_tuned(rt, "course_cnn", plan, folder, RECOVERY_EPOCHS,
                                                {**DECOMPOSITION_RETRAIN, "steps_per_epoch": steps_per_epoch})
    accuracy, reference_accuracy = evaluate(reloaded, device=rt.device), evaluate(reference, device=rt.device)
    x = load_fashion_mnist("test").images[:64].to(rt.device)
    compile_fn = compile_for_cpu if rt.device.type == "cpu" else torch.compile
    compiled = compare_latency({"fp32": compile_fn(reference), "tucker2": compile_fn(reloaded)}, (x,), rounds=20,
                               warmup=3)
    eager = compare_latency({"fp32": reference, "tucker2": reloaded}, (x,), rounds=15)
    return [make_row(rt, "decomposition", "course_cnn", variant, 64, "accuracy", accuracy, reference_accuracy, size,
                     reference_size, timed["tucker2"], timed["fp32"])
            for variant, timed in (("tucker2", compiled), ("tucker2-eager", eager))]


def _decomposed_lenet_row(rt: Runtime, folder: Path, steps_per_epoch: int | None) -> Row:
    """LeNet-300-100 with fc1 (and fc2) factored by truncated SVD at the ranks chosen on validation, fine-tuned."""
    from course_lib.sweeps import LENET_EPOCHS, LENET_RETRAIN, lenet_svd_plan, load_results  # noqa: PLC0415

    results = load_results("decomposition")["lenet_300_100"]
    dense, dense_size = _write_and_reload(load_reference("lenet_300_100"), lambda: build_model("lenet_300_100"),
                                          folder, "lenet_300_100", rt.device)
    reloaded, size = _decomposed_and_fine_tuned(rt, "lenet_300_100", lenet_svd_plan(*results["chosen_ranks"]), folder,
                                                LENET_EPOCHS, {**LENET_RETRAIN, "steps_per_epoch": steps_per_epoch})
    x = load_fashion_mnist("test").images[:64].to(rt.device)
    latency = compare_latency({"dense": dense, "svd": reloaded}, (x,), rounds=30)
    row = make_row(rt, "decomposition", "lenet_300_100", "svd", 64, "accuracy", evaluate(reloaded, device=rt.device),
                   evaluate(dense, device=rt.device), size, dense_size, latency["svd"], latency["dense"])
    return dataclasses.replace(row, kept_fraction=round(count_parameters(reloaded) / count_parameters(dense), 4))


MINILM_COMPARED_RANK = 256  # the largest rank of the sweep at which a factored feed-forward layer is smaller


def _decomposed_minilm_rows(rt: Runtime, folder: Path) -> list[Row]:
    """MiniLM's 12 feed-forward Linears by plain and by whitened (activation-aware) SVD, both at rank 256 (the
    largest swept rank that stores fewer weights) and each at the rank where it first reaches a cosine of 0.99 on the
    validation sentences, written and reloaded: cosine to fp32 on the held-out sentences, Lee Pearson r, bytes,
    latency at batch 32 x 128 tokens."""
    from course_lib import decompose as D  # noqa: PLC0415
    from course_lib.data import load_wikipedia_sentences  # noqa: PLC0415
    from course_lib.sweeps import (load_results, minilm_ffn_covariances, minilm_ffn_decomposed,  # noqa: PLC0415
                                   minilm_ffn_layers, minilm_rank_reaching)

    results = load_results("decomposition")["minilm"]
    held_out = load_wikipedia_sentences()[2]
    fp32, fp32_size = _write_and_reload(load_minilm(), MiniLM, folder, "minilm", rt.device)
    reference, fp32_r = embed(fp32, held_out), lee_correlation(fp32)
    covariances = minilm_ffn_covariances(fp32)
    reaching = {(method, minilm_rank_reaching(results, method, 0.99)) for method in ("svd", "asvd")}
    variants = {(method, MINILM_COMPARED_RANK) for method in ("svd", "asvd")} | {v for v in reaching if v[1]}
    models = {}
    for method, rank in sorted(variants, key=lambda v: (v[1], v[0])):
        decomposed = minilm_ffn_decomposed(fp32, rank, covariances if method == "asvd" else None)
        plan = {name: ("svd", rank) for name in minilm_ffn_layers()}
        path = folder / f"minilm-ffn-{method}-{rank}.safetensors"
        size = D.save_decomposed(decomposed, plan, path)
        models[(method, rank)] = (D.load_decomposed(path, MiniLM()).to(rt.device), size)
    latency = compare_latency({"fp32": fp32, **{f"{m}/{r}": model for (m, r), (model, _) in models.items()}},
                              minilm_inputs(32, rt.device), rounds=7, warmup=2)
    rows = []
    for (method, rank), (model, size) in models.items():
        cosine = nn.functional.cosine_similarity(embed(model, held_out), reference).mean().item()
        row = make_row(rt, "decomposition", "minilm", f"ffn-{method}", 32, "cosine_to_fp32", cosine, 1.0, size,
                       fp32_size, latency[f"{method}/{rank}"], latency["fp32"])
        rows.append(dataclasses.replace(row, rank=rank, pearson_lee=round(lee_correlation(model), 4),
                                        baseline_pearson_lee=round(fp32_r, 4)))
    return rows


def decomposition(rt: Runtime, steps_per_epoch: int | None = None, with_minilm: bool = True) -> list[Row]:
    """Tucker-2 course CNN (compiled and eager), SVD LeNet-300-100 and SVD / whitened-SVD MiniLM feed-forward
    layers, every choice made on the validation split by ``python -m course_lib.sweeps decomposition``.
    ``steps_per_epoch`` shortens the fine-tuning (for tests); the figures come from the full recipe."""
    with tempfile.TemporaryDirectory() as folder:
        rows = _decomposed_cnn_rows(rt, Path(folder), steps_per_epoch)
        rows.append(_decomposed_lenet_row(rt, Path(folder), steps_per_epoch))
        return rows + (_decomposed_minilm_rows(rt, Path(folder)) if with_minilm else [])


MEMORY_BATCH_SIZE = 64
MEMORY_TOKENS = (1024, 2048)


def _gradients(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, dtype: str) -> torch.Tensor:
    """All parameter gradients of one training-mode forward and backward (a copy of the model), as one vector; the
    random generator is reset first, so that dropout draws the same masks for every model compared."""
    from course_lib.memory import autocast_loss  # noqa: PLC0415

    model = copy.deepcopy(model).train()
    torch.manual_seed(0)
    autocast_loss(dtype)(model, images, labels).backward()
    return torch.cat([p.grad.flatten() for p in model.parameters()])


def _training_memory_row(rt: Runtime, name: str, model: nn.Module, variant: str, starts: list[int], dtype: str,
                         images: torch.Tensor, labels: torch.Tensor, attribute: str) -> Row:
    """A training step with checkpointing (and ``dtype`` activations) against the plain float32 step of the same
    model on the same batch: measured peak memory and median step time (alternating rounds); the metric is the
    relative error of the gradients against the plain step's (0 up to rounding: recomputation changes no math)."""
    from course_lib.memory import checkpoint_at, compare_step_time, training_step_memory  # noqa: PLC0415
    from course_lib.sweeps import MEMORY_OPTIMIZER  # noqa: PLC0415

    checkpointed = checkpoint_at(model, starts, attribute)
    plain_memory = training_step_memory(model, MEMORY_OPTIMIZER, images, labels)
    memory = training_step_memory(checkpointed, MEMORY_OPTIMIZER, images, labels, dtype)
    stats = compare_step_time({"plain": model, "checkpointed": checkpointed}, MEMORY_OPTIMIZER, images, labels,
                              dtypes={"checkpointed": dtype}, rounds=15, warmup=3)
    reference = _gradients(model, images, labels, "float32")
    error = ((_gradients(checkpointed, images, labels, dtype) - reference).norm() / reference.norm()).item()
    size = serialized_bytes(model)
    row = make_row(rt, "memory", name, variant, len(images), "gradient_relative_error", error, 0.0, size, size,
                   stats["checkpointed"], stats["plain"])
    return dataclasses.replace(row, peak_memory_bytes=memory.peak, baseline_peak_memory_bytes=plain_memory.peak)


def _checkpointing_rows(rt: Runtime) -> list[Row]:
    """The course CNN (batch 64) checkpointed where the sweep measured the lowest peak within 1.5x the step time,
    alone and with bf16 activations; the deep residual MLP of the sweep with Chen et al.'s sqrt(n) segments."""
    from course_lib.efficient import DeepMLP  # noqa: PLC0415
    from course_lib.memory import segment_starts, sqrt_segments  # noqa: PLC0415
    from course_lib.sweeps import (DEEP_MLP_BATCH, DEEP_MLP_DEPTH, DEEP_MLP_WIDTH, best_segments,  # noqa: PLC0415
                                   load_results, memory_key)

    train = load_fashion_mnist("train")
    images, labels = train.images[:MEMORY_BATCH_SIZE].to(rt.device), train.labels[:MEMORY_BATCH_SIZE].to(rt.device)
    grid = load_results("memory")["checkpointing"]
    cnn = load_reference("course_cnn", rt.device)
    rows = []
    for variant, dtype in (("train-checkpointed", "float32"), ("train-checkpointed-bf16", "bfloat16")):
        starts = grid["grid"][memory_key(MEMORY_BATCH_SIZE, best_segments(grid, MEMORY_BATCH_SIZE, dtype), dtype)]["starts"]
        rows.append(_training_memory_row(rt, "course_cnn", cnn, variant, starts, dtype, images, labels, "features"))
    setup(seed=0, device=rt.device.type, threads=rt.threads)
    deep = DeepMLP(DEEP_MLP_DEPTH, DEEP_MLP_WIDTH).to(rt.device)
    images, labels = train.images[:DEEP_MLP_BATCH].to(rt.device), train.labels[:DEEP_MLP_BATCH].to(rt.device)
    starts = segment_starts(deep.blocks, sqrt_segments(DEEP_MLP_DEPTH))
    rows.append(_training_memory_row(rt, "deep_mlp", deep, "train-checkpointed-sqrt", starts, "float32", images,
                                     labels, "blocks"))
    return rows


def _depthwise_separable_rows(rt: Runtime, folder: Path) -> list[Row]:
    """The depthwise-separable course CNN (reference checkpoint) against the course CNN, files written and reloaded:
    test accuracy, parameters, multiply-adds, bytes, inference peak memory and latency at batch 64, both compiled
    (the fair baseline) and both eager."""
    from course_lib.measure import count_macs, peak_memory_bytes  # noqa: PLC0415

    models = {name: _write_and_reload(load_reference(name), lambda n=name: build_model(n), folder, name, rt.device)
              for name in ("course_cnn", "course_cnn_ds")}
    (cnn, cnn_size), (ds, ds_size) = models["course_cnn"], models["course_cnn_ds"]
    x = load_fashion_mnist("test").images[:MEMORY_BATCH_SIZE].to(rt.device)
    compile_fn = compile_for_cpu if rt.device.type == "cpu" else torch.compile
    timings = {"depthwise-separable": compare_latency({"cnn": compile_fn(cnn), "ds": compile_fn(ds)}, (x,), rounds=20),
               "depthwise-separable-eager": compare_latency({"cnn": cnn, "ds": ds}, (x,), rounds=15)}
    accuracy, baseline_accuracy = evaluate(ds, device=rt.device), evaluate(cnn, device=rt.device)
    measured = dict(peak_memory_bytes=peak_memory_bytes(ds, x), baseline_peak_memory_bytes=peak_memory_bytes(cnn, x),
                    parameters=count_parameters(ds), baseline_parameters=count_parameters(cnn),
                    macs=count_macs(ds, x[:1]), baseline_macs=count_macs(cnn, x[:1]))
    return [dataclasses.replace(make_row(rt, "memory", "course_cnn_ds", variant, MEMORY_BATCH_SIZE, "accuracy",
                                         accuracy, baseline_accuracy, ds_size, cnn_size, timed["ds"], timed["cnn"]),
                                **measured)
            for variant, timed in timings.items()]


def _attention_rows(rt: Runtime, folder: Path) -> list[Row]:
    """MiniLM (its 512 positions copied to 2,048) on one sequence of real tokens: explicit attention against
    PyTorch's fused ``scaled_dot_product_attention``, same weights: peak inference memory, latency, and the largest
    difference between their outputs (the metric; 0 means equal)."""
    from course_lib.minilm import use_fused_attention, with_copied_positions  # noqa: PLC0415
    from course_lib.sweeps import attention_inputs, compare_attention  # noqa: PLC0415

    fp32, size = _write_and_reload(load_minilm(), MiniLM, folder, "minilm", rt.device)
    fused = with_copied_positions(fp32, max(MEMORY_TOKENS))
    explicit = use_fused_attention(copy.deepcopy(fused), False)
    rows = []
    for tokens in MEMORY_TOKENS:
        compared = compare_attention(explicit, fused, tuple(t.to(rt.device) for t in attention_inputs(tokens)),
                                     rounds=7)
        row = make_row(rt, "memory", "minilm", "sdpa-attention", 1, "max_abs_embedding_difference", 0.0, 0.0,
                       size, size, compared["sdpa"], compared["explicit"])
        rows.append(dataclasses.replace(row, metric=float(f"{compared['max_difference']:.2g}"),  # not rounded to 0
                                        tokens=tokens, peak_memory_bytes=compared["sdpa_peak"],
                                        baseline_peak_memory_bytes=compared["explicit_peak"]))
    return rows


def memory(rt: Runtime, with_minilm: bool = True) -> list[Row]:
    """Checkpointed training steps (course CNN, deep MLP), the depthwise-separable course CNN, and MiniLM's fused
    attention at long sequences; memory measured by :func:`course_lib.measure.peak_memory_bytes`."""
    with tempfile.TemporaryDirectory() as folder:
        rows = _checkpointing_rows(rt) + _depthwise_separable_rows(rt, Path(folder))
        return rows + (_attention_rows(rt, Path(folder)) if with_minilm else [])


PIPELINE_ROUNDS = {1: 40, 64: 15}


def _pipeline_cnn_rows(rt: Runtime, folder: Path) -> list[Row]:
    """The course CNN's pipeline (filters removed and recovered by distillation: the checkpoint of ``python -m
    course_lib.sweeps pipeline``; then PT2E int8, written, reloaded, compiled) against fp32 eager, with fp32 compiled
    in the same alternating rounds (batch 64); and the reference model's int8 in the course's path (PT2E) and in
    ONNX Runtime (its own static int8), at batch 1 and 64, in the same rounds as fp32 eager and compiled; at batch 1
    also the same PT2E int8 graph as an AOTInductor package (compiled ahead of time for batch 1: no Python-side
    guards or wrapping around the kernels)."""
    from course_lib import deploy  # noqa: PLC0415 (only this topic needs ONNX Runtime)
    from course_lib.pipeline import load_pipeline_model  # noqa: PLC0415

    fp32, fp32_size = _write_and_reload(load_reference("course_cnn"), lambda: build_model("course_cnn"), folder,
                                        "course_cnn", rt.device)
    calibration = load_fashion_mnist("train").images[:CALIBRATION_IMAGES]
    test = load_fashion_mnist("test")
    sizes = {"pipeline": save_int8(quantize_static(load_pipeline_model(), calibration), calibration,
                                   folder / "pipeline.pt2"),
             "pt2e-int8": save_int8(quantize_static(fp32, calibration), calibration, folder / "int8.pt2")}
    deploy.export_onnx(fp32, (test.images[:1],), folder / "course_cnn.onnx", ("images",))
    sizes["onnxruntime-int8"] = deploy.quantize_onnx_static(
        folder / "course_cnn.onnx", folder / "course_cnn-int8.onnx",
        [{"images": calibration[i:i + 64].numpy()} for i in range(0, len(calibration), 64)])
    models = {"fp32": fp32, "fp32-compiled": compile_for_cpu(fp32),
              "pipeline": compile_for_cpu(load_int8(folder / "pipeline.pt2")),
              "pt2e-int8": compile_for_cpu(load_int8(folder / "int8.pt2")),
              "onnxruntime-int8": deploy.OrtModel(folder / "course_cnn-int8.onnx", rt.threads)}
    accuracy = {name: evaluate(model, test, batch_size=64, device="cpu", fixed_batch=True)
                for name, model in models.items() if name != "fp32-compiled"}  # compiling changes no prediction
    aoti = deploy.aoti_package(load_int8(folder / "int8.pt2"), (test.images[:1],), folder / "int8-b1.pt2")
    sizes["pt2e-int8-aoti"] = (folder / "int8-b1.pt2").stat().st_size
    accuracy["pt2e-int8-aoti"] = evaluate(aoti, test, batch_size=1, device="cpu")
    rows = []
    for batch in (64, 1):
        timed = models if batch > 1 else {**models, "pt2e-int8-aoti": aoti}  # the package serves batch 1 only
        latency = compare_latency(timed, (test.images[:batch],), rounds=PIPELINE_ROUNDS[batch], warmup=3)
        for variant in [name for name in timed if name not in ("fp32", "fp32-compiled")]:
            row = make_row(rt, "pipeline", "course_cnn", variant, batch, "accuracy", accuracy[variant],
                           accuracy["fp32"], sizes[variant], fp32_size, latency[variant], latency["fp32"])
            rows.append(dataclasses.replace(row, fp32_compiled_latency_ms=round(latency["fp32-compiled"].median_ms, 3)))
    return rows


def _fraud_rows(rt: Runtime, folder: Path) -> list[Row]:
    """The fraud case study (SYNTHETIC transactions): the fp32 teacher and the compressed student, each served by
    whichever runtime sustains the higher arrival rate within the p99 budget in a first screening, then both timed
    again in fresh alternating rounds; PR-AUC and recall at 0.1% FPR on the test split, file bytes (against the fp32
    scorer's safetensors file), batch-1 latency, and the simulated maximum rates."""
    from course_lib import case_study as C  # noqa: PLC0415
    from course_lib.fraud import case_study_data  # noqa: PLC0415

    test = case_study_data().test
    served = C.build_served(folder, test)
    screening = C.max_rates(C.service_times(served, test, rounds=7))
    best = {model: max((n for n in served if served[n].model == model), key=screening.get)
            for model in ("fraud_mlp", "fraud_mlp_student")}
    chosen_pair = {name: served[name] for name in best.values()}
    times = C.service_times(chosen_pair, test)  # fresh rounds: the winners' figures are not the screening's maxima
    rates = C.max_rates(times)
    fp32, small = served[best["fraud_mlp"]], served[best["fraud_mlp_student"]]
    baseline_size = served["fp32 / PyTorch"].size_bytes  # the fp32 scorer's own file, whichever runtime serves it
    rows = []
    for variant, chosen in (("fp32", fp32), ("compressed", small)):
        row = make_row(rt, "pipeline", "fraud_mlp", variant, 1, "pr_auc", chosen.pr_auc, fp32.pr_auc,
                       chosen.size_bytes, baseline_size, times[chosen.name][1], times[fp32.name][1])
        rows.append(dataclasses.replace(
            row, recall_at_fpr=round(chosen.recall_at_fpr, 4), baseline_recall_at_fpr=round(fp32.recall_at_fpr, 4),
            max_rate_at_p99=round(rates[chosen.name]), baseline_max_rate_at_p99=round(rates[fp32.name]),
            p99_budget_ms=C.P99_BUDGET_MS, runtime=chosen.name))
    return rows


def _pipeline_gpu_row(rt: Runtime, folder: Path) -> Row:
    """On a GPU the CPU int8 kernels do not run: the pipeline's pruned model in fp16 (compiled) against the fp32
    reference, eager and compiled, at batch 64."""
    from course_lib.pipeline import load_pipeline_model  # noqa: PLC0415

    fp32, fp32_size = _write_and_reload(load_reference("course_cnn"), lambda: build_model("course_cnn"), folder,
                                        "course_cnn", rt.device)
    small = load_pipeline_model().half()
    size = save_state_dict(small, folder / "pipeline-fp16.safetensors")
    small = small.to(rt.device)
    test = load_fashion_mnist("test")
    half = Dataset(test.images.half(), test.labels)
    x = test.images[:64].to(rt.device)
    fp16_model = torch.compile(small)
    latency = compare_latency({"fp32": fp32, "fp32-compiled": torch.compile(fp32),
                               "pipeline-fp16": lambda images: fp16_model(images.half())}, (x,), rounds=30)
    row = make_row(rt, "pipeline", "course_cnn", "pipeline-fp16", 64, "accuracy",
                   evaluate(small, half, device=rt.device), evaluate(fp32, test, device=rt.device), size, fp32_size,
                   latency["pipeline-fp16"], latency["fp32"])
    return dataclasses.replace(row, fp32_compiled_latency_ms=round(latency["fp32-compiled"].median_ms, 3))


def pipeline(rt: Runtime) -> list[Row]:
    """The course CNN's hybrid pipeline and the deployment runtimes (CPU), and the fraud case study; on a GPU the
    pipeline's pruned model in fp16 (the int8 kernels and ONNX Runtime's CPU provider are CPU-only)."""
    with tempfile.TemporaryDirectory() as folder:
        if rt.device.type == "cuda":
            return [_pipeline_gpu_row(rt, Path(folder))]
        return _pipeline_cnn_rows(rt, Path(folder)) + _fraud_rows(rt, Path(folder))


IMPLEMENTED: dict[str, Callable[[Runtime], list[Row]]] = {"baseline": baseline, "dataflow": dataflow,
                                                         "quantization": quantization, "pruning": pruning,
                                                         "sharing": sharing, "distillation": distillation,
                                                         "decomposition": decomposition, "memory": memory,
                                                         "pipeline": pipeline}


def format_table(rows: list[Row]) -> str:
    """Rows as a fixed-width text table."""
    header = f"{'topic':<12} {'model':<14} {'variant':<16} {'dev':<4} {'batch':>5} {'metric':>18} " \
             f"{'size':>11} {'x':>5} {'latency ms (p10-p90)':>24} {'speedup':>7}"
    lines = [header, "-" * len(header)]
    for r in rows:
        spread = f"{r.latency_ms:.2f} ({r.latency_p10_ms:.2f}-{r.latency_p90_ms:.2f})"
        lines.append(f"{r.topic:<12} {r.model:<14} {r.variant:<16} {r.device:<4} {r.batch_size:>5} "
                     f"{r.metric_name + ' ' + format(r.metric, '.4f'):>18} {r.size_bytes:>11,} {r.compression:>5.2f} "
                     f"{spread:>24} {r.speedup:>7.2f}")
    return "\n".join(lines)


def run(topic: str, device: str, threads: int | None = None) -> list[Row]:
    """Measure a topic's rows (``all``: every implemented topic)."""
    rt = setup(device=device, threads=threads)
    topics = list(IMPLEMENTED) if topic == "all" else [topic]
    return [row for t in topics for row in IMPLEMENTED[t](rt)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m course_lib.bench", description=__doc__.splitlines()[0])
    parser.add_argument("topic", help=f"one of: {', '.join(TOPICS)}, all")
    parser.add_argument("--json", action="store_true", help="print only a JSON list of rows on stdout")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: COURSE_THREADS or 2)")
    args = parser.parse_args(argv)
    if args.topic not in (*TOPICS, "all"):
        parser.error(f"unknown topic {args.topic!r}: choose one of {', '.join(TOPICS)}, all")
    if args.topic != "all" and args.topic not in IMPLEMENTED:
        parser.error(f"topic {args.topic!r} has no benchmark yet (implemented: {', '.join(IMPLEMENTED)})")
    if args.device not in ("cpu", "cuda"):
        parser.error(f"unknown device {args.device!r}: use cpu or cuda")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda was requested but PyTorch sees no CUDA GPU: use --device cpu")
    rows = run(args.topic, args.device, args.threads)
    if args.json:
        json.dump([dataclasses.asdict(r) for r in rows], sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        print(format_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
