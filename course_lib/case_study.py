"""The fraud case study's deployment (notebook 08 and ``python -m course_lib.bench pipeline``): the fraud scorers in
each runtime, written and reloaded, their PR-AUC, per-batch service times measured in alternating rounds, and the
highest Poisson arrival rate each sustains within a p99 latency budget (:mod:`course_lib.serving`).

The data are SYNTHETIC (:mod:`course_lib.fraud`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from course_lib import deploy, serving
from course_lib.fraud import STUDENT_CONFIG, TEACHER_CONFIG, Features, FraudScorer, load_scorer, scores
from course_lib.measure import LatencyStats, compare_latency, save_state_dict
from course_lib.metrics import pr_auc, recall_at_fpr
from course_lib.quantize import load_dynamic_int8, quantize_dynamic, quantize_embeddings, save_dynamic_int8

P99_BUDGET_MS = 10.0
MAX_BATCH = 1024
MAX_WAIT_MS = 1.0
SERVICE_BATCH_SIZES = (1, 4, 16, 64, 256, 1024)
BUDGET_RATE_FACTOR = 2.0  # the hands-on budget: twice the arrival rate the fp32 scorer sustains, measured on the spot
FPR = 0.001  # recall is reported at one false alarm per thousand genuine transactions


@dataclass
class Served:
    """One scorer in one runtime: the callable, the bytes of the file it was loaded from, and its PR-AUC and recall
    at 0.1% FPR on the split it was evaluated on."""

    name: str
    model: str
    runtime: str
    score: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    size_bytes: int
    pr_auc: float = float("nan")
    recall_at_fpr: float = float("nan")


def int8_scorer(model: FraudScorer) -> nn.Module:
    """The scorer with int8 embedding tables (one scale per row) and dynamic int8 Linears (per-channel weights,
    8-bit activations): PyTorch's path."""
    return quantize_embeddings(quantize_dynamic(model, per_channel=True, reduce_range=False))


def served_scores(score: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], data: Features) -> torch.Tensor:
    """Scores of every row in batches of :data:`MAX_BATCH`, as served (dynamic int8 picks its activation scale per
    batch, so a row's score may depend on its batch)."""
    with torch.inference_mode():
        return torch.cat([torch.as_tensor(score(data.dense[i:i + MAX_BATCH], data.ids[i:i + MAX_BATCH])).reshape(-1)
                          for i in range(0, len(data), MAX_BATCH)]).float()


def _evaluate(served: Served, data: Features) -> Served:
    labels = data.labels.numpy()
    values = served_scores(served.score, data).numpy()
    served.pr_auc, served.recall_at_fpr = pr_auc(labels, values), recall_at_fpr(labels, values, FPR)
    return served


def build_served(folder: str | os.PathLike, data: Features, which: Sequence[str] | None = None) -> dict[str, Served]:
    """Write, reload and evaluate on ``data`` (PR-AUC, recall at 0.1% FPR) every way of serving the two shipped
    scorers: the teacher (``fraud_mlp``) in PyTorch fp32 and ONNX Runtime fp32; the student (hashed tables,
    narrow MLP, distilled) in PyTorch int8 and ONNX Runtime int8 (its own dynamic quantization). ``which`` limits
    the result to some of those names."""
    folder = Path(folder)
    teacher, student = load_scorer("fraud_mlp"), load_scorer("fraud_mlp_student")
    example = (data.dense[:2], data.ids[:2])

    def pytorch_fp32() -> Served:
        size = save_state_dict(teacher, folder / "fraud_mlp.safetensors")
        reloaded = FraudScorer(**TEACHER_CONFIG)
        from safetensors.torch import load_file  # noqa: PLC0415

        reloaded.load_state_dict(load_file(folder / "fraud_mlp.safetensors"))
        return Served("fp32 / PyTorch", "fraud_mlp", "pytorch", reloaded.eval(), size)

    def ort_fp32() -> Served:
        size = deploy.export_onnx(teacher, example, folder / "fraud_mlp.onnx", ("dense", "ids"))
        return Served("fp32 / ONNX Runtime", "fraud_mlp", "onnxruntime", deploy.OrtModel(folder / "fraud_mlp.onnx"),
                      size)

    def pytorch_int8() -> Served:
        size = save_dynamic_int8(int8_scorer(student), folder / "fraud_student-int8.safetensors")
        reloaded = load_dynamic_int8(folder / "fraud_student-int8.safetensors", FraudScorer(**STUDENT_CONFIG))
        return Served("compressed / PyTorch int8", "fraud_mlp_student", "pytorch", reloaded.eval(), size)

    def ort_int8() -> Served:
        deploy.export_onnx(student, example, folder / "fraud_student.onnx", ("dense", "ids"))
        size = deploy.quantize_onnx_dynamic(folder / "fraud_student.onnx", folder / "fraud_student-int8.onnx")
        return Served("compressed / ONNX Runtime int8", "fraud_mlp_student", "onnxruntime",
                      deploy.OrtModel(folder / "fraud_student-int8.onnx"), size)

    makers = {"fp32 / PyTorch": pytorch_fp32, "fp32 / ONNX Runtime": ort_fp32,
              "compressed / PyTorch int8": pytorch_int8, "compressed / ONNX Runtime int8": ort_int8}
    if isinstance(which, str):
        raise ValueError(f"which must be a list of names, got the string {which!r}: pass [{which!r}]")
    unknown = sorted(set(which or ()) - set(makers))
    if unknown or which is not None and not which:
        raise ValueError(f"unknown scorers {unknown or 'none given'}: choose from {', '.join(makers)}")
    return {name: _evaluate(make(), data) for name, make in makers.items() if which is None or name in which}


def service_times(served: Mapping[str, Served], data: Features, batch_sizes: Sequence[int] = SERVICE_BATCH_SIZES,
                  rounds: int = 15) -> dict[str, dict[int, LatencyStats]]:
    """Per-batch service time of every scorer at every batch size, all scorers timed in alternating rounds on the
    same transactions (the first rows of ``data``)."""
    measured: dict[str, dict[int, LatencyStats]] = {name: {} for name in served}
    for batch in batch_sizes:
        if batch > len(data):
            raise ValueError(f"batch size {batch} exceeds the {len(data)} rows given")
        stats = compare_latency({name: s.score for name, s in served.items()},
                                (data.dense[:batch], data.ids[:batch]), rounds=rounds, warmup=3)
        for name, value in stats.items():
            measured[name][batch] = value
    return measured


def max_rates(times: Mapping[str, Mapping[int, LatencyStats]], p99_budget_ms: float = P99_BUDGET_MS,
              max_batch: int = MAX_BATCH, max_wait_ms: float = MAX_WAIT_MS) -> dict[str, float]:
    """The highest Poisson arrival rate (transactions per second) each scorer sustains with its p99 latency within
    the budget, by a queue simulation driven by its measured service times (:func:`service_model`)."""
    if p99_budget_ms <= 0:
        raise ValueError(f"a p99 budget must be > 0 ms, got {p99_budget_ms}")
    return {name: serving.max_rate_at_p99(service_model(stats), p99_budget_ms / 1000, max_batch, max_wait_ms / 1000)
            for name, stats in times.items()}


def service_model(stats: Mapping[int, LatencyStats]) -> serving.ServiceTime:
    """Service time per batch size for the simulation: the 90th percentile of the measured calls, not the median,
    so that the slow calls that make a p99 are not averaged away (a conservative choice)."""
    return serving.ServiceTime.from_latency(stats, "p90_ms")

