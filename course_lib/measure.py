"""Measure what compression changes: parameters, nonzeros, file bytes, FLOPs, latency, throughput, memory.

Every figure is measured, never estimated: sizes are the length of a written file, latencies are
timed with warm-up, fixed threads and ``torch.inference_mode()``, and models being compared are timed
in alternating rounds so that background noise hits all of them alike.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import tempfile
import time
import weakref
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.flop_counter import FlopCounterMode, flop_registry, register_flop_formula, sdpa_flop_count

from course_lib.io import atomic_path

_CPU_FUSED_ATTENTION = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu.default
if _CPU_FUSED_ATTENTION not in flop_registry:  # PyTorch counts the GPU kernels of fused attention, not the CPU one
    @register_flop_formula(torch.ops.aten._scaled_dot_product_flash_attention_for_cpu)
    def _cpu_fused_attention_flops(query_shape, key_shape, value_shape, *args, **kwargs) -> int:
        """FLOPs of the CPU's fused attention kernel: the two matrix products, as for the GPU kernels."""
        return sdpa_flop_count(query_shape, key_shape, value_shape)


def report_claim(holds: bool, claim: str, caveat: str) -> None:
    """Print whether a timing claim held on this run; never fail (a busy laptop must not break a notebook).

    Timings are observations: the bench (``python -m course_lib.bench``) measures them with more rounds."""
    if holds:
        print(f"✓ on this run: {claim}")
    else:
        print(f"⚠ not on this run: {claim}. {caveat} Timings vary with the machine and its load; "
              "re-run the cell, or measure with more rounds: `python -m course_lib.bench`.")


def count_parameters(model: nn.Module) -> int:
    """Number of parameters (every element of every parameter tensor)."""
    return sum(p.numel() for p in model.parameters())


def count_nonzeros(model: nn.Module) -> int:
    """Number of parameters that are not exactly zero (what pruning reduces)."""
    return sum(int(torch.count_nonzero(p)) for p in model.parameters())


def save_state_dict(model: nn.Module, path: str | os.PathLike) -> int:
    """Write the model's ``state_dict`` as safetensors (atomically) and return the file's size in bytes.

    A tensor shared by several names (tied layers) is written once, under its first name; load such a file with
    ``load_state_dict(..., strict=False)`` into a model that ties the same layers."""
    state, written = {}, set()
    for name, tensor in model.state_dict().items():
        storage = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape))
        if tensor.numel() and storage in written:
            continue
        written.add(storage)
        state[name] = tensor.detach().contiguous().cpu()
    with atomic_path(path) as tmp:
        save_file(state, str(tmp))
    return Path(path).stat().st_size


def serialized_bytes(model: nn.Module) -> int:
    """Bytes of the model's safetensors file (written to a temporary folder, counted, deleted)."""
    with tempfile.TemporaryDirectory() as folder:
        return save_state_dict(model, Path(folder) / "model.safetensors")


def count_flops(model: Callable, *inputs: torch.Tensor) -> int:
    """Floating-point operations of one call ``model(*inputs)``, counted by PyTorch's FlopCounterMode.

    One multiply-accumulate (MAC) counts as 2 FLOPs; use :func:`count_macs` for MACs.
    """
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model(*inputs)
    return counter.get_total_flops()


def count_macs(model: Callable, *inputs: torch.Tensor) -> int:
    """Multiply-accumulates of one call ``model(*inputs)`` (FLOPs / 2)."""
    return count_flops(model, *inputs) // 2


@dataclass(frozen=True)
class LatencyStats:
    """Wall-clock latency of repeated calls, in milliseconds."""

    median_ms: float
    p10_ms: float
    p90_ms: float
    samples_ms: tuple[float, ...]

    def throughput(self, batch_size: int) -> float:
        """Samples per second at the median latency."""
        return batch_size * 1000.0 / self.median_ms

    def __str__(self) -> str:
        return f"{self.median_ms:.2f} ms (p10-p90 {self.p10_ms:.2f}-{self.p90_ms:.2f})"


def latency_stats(samples: list[float]) -> LatencyStats:
    """Median and p10-p90 of latency samples (ms)."""
    ordered = sorted(samples)
    if len(ordered) >= 2:
        deciles = statistics.quantiles(ordered, n=10, method="inclusive")
        p10, p90 = deciles[0], deciles[-1]
    else:
        p10 = p90 = ordered[0]
    median = statistics.median(ordered)
    # Interpolation can round a hair past equal samples: keep min <= p10 <= median <= p90 <= max.
    p10 = max(min(p10, median), ordered[0])
    p90 = min(max(p90, median), ordered[-1])
    return LatencyStats(median, p10, p90, tuple(samples))


@contextmanager
def fixed_threads(threads: int | None) -> Iterator[None]:
    """Run a block with ``torch.set_num_threads(threads)`` (``None``: leave as is), restoring it afterwards."""
    before = torch.get_num_threads()
    if threads is not None:
        if threads < 1:
            raise ValueError(f"threads must be at least 1, got {threads}")
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _synchronize(inputs: tuple) -> None:
    if any(isinstance(t, torch.Tensor) and t.is_cuda for t in tree_leaves(inputs)):
        torch.cuda.synchronize()


def _time_once(fn: Callable, inputs: tuple, calls: int) -> float:
    _synchronize(inputs)
    start = time.perf_counter()
    for _ in range(calls):
        fn(*inputs)
    _synchronize(inputs)
    return (time.perf_counter() - start) * 1000.0 / calls


def compare_latency(
    candidates: Mapping[str, Callable],
    inputs: tuple,
    rounds: int = 15,
    warmup: int = 3,
    calls_per_round: int = 1,
    threads: int | None = None,
    training: bool = False,
) -> dict[str, LatencyStats]:
    """Time several models on the same inputs in alternating rounds (A, B, A, B, ...).

    Each candidate is warmed up first (``warmup`` calls, which also triggers any compilation),
    then each round times ``calls_per_round`` calls of every candidate in turn. Alternating means
    that noise from other processes hits all candidates alike. Runs under ``torch.inference_mode()``, or with
    autograd on when ``training`` (the candidates are then whole training steps).
    """
    if not candidates:
        raise ValueError("compare_latency needs at least one candidate")
    if rounds < 1 or calls_per_round < 1 or warmup < 0:
        raise ValueError(f"need rounds >= 1, calls_per_round >= 1, warmup >= 0; got {rounds}, "
                         f"{calls_per_round}, {warmup}")
    samples: dict[str, list[float]] = {name: [] for name in candidates}
    with fixed_threads(threads), (contextlib.nullcontext() if training else torch.inference_mode()):
        for fn in candidates.values():
            for _ in range(warmup):
                fn(*inputs)
        for _ in range(rounds):
            for name, fn in candidates.items():
                samples[name].append(_time_once(fn, inputs, calls_per_round))
    return {name: latency_stats(values) for name, values in samples.items()}


def measure_latency(model: Callable, inputs: tuple, rounds: int = 15, warmup: int = 3,
                    calls_per_round: int = 1, threads: int | None = None) -> LatencyStats:
    """Latency of ``model(*inputs)``: warm-up, then the median (and p10-p90) of ``rounds`` timed rounds."""
    return compare_latency({"model": model}, inputs, rounds, warmup, calls_per_round, threads)["model"]


class _LiveTensorBytes(TorchDispatchMode):
    """Tracks the bytes of tensors created inside the block that are still alive, and their peak."""

    def __init__(self) -> None:
        super().__init__()
        self.references: dict[int, int] = {}
        self.sizes: dict[int, int] = {}
        self.live = 0
        self.peak = 0

    def _release(self, pointer: int) -> None:
        self.references[pointer] -= 1
        if self.references[pointer] == 0:
            del self.references[pointer]
            self.live -= self.sizes.pop(pointer)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        input_storages = {t.untyped_storage().data_ptr() for t in tree_leaves((args, kwargs))
                          if isinstance(t, torch.Tensor)}
        for tensor in tree_leaves(out):
            if not isinstance(tensor, torch.Tensor):
                continue
            pointer = tensor.untyped_storage().data_ptr()
            if pointer == 0:
                continue
            if pointer in self.references:
                self.references[pointer] += 1
            elif pointer in input_storages:
                continue  # a view of a tensor that existed before the block (a weight, the input)
            else:
                self.references[pointer] = 1
                self.sizes[pointer] = tensor.untyped_storage().nbytes()
                self.live += self.sizes[pointer]
                self.peak = max(self.peak, self.live)
            weakref.finalize(tensor, self._release, pointer)
        return out


def peak_memory_bytes(fn: Callable, *inputs: torch.Tensor, training: bool = False) -> int:
    """Peak bytes of the tensors that one call ``fn(*inputs)`` allocates (activations, workspaces, outputs).

    On CUDA this is the allocator's own peak (``torch.cuda.max_memory_allocated``) above what was
    allocated before the call. On CPU, where PyTorch keeps no allocator statistics, every tensor an
    operator creates is tracked until it is freed; weights and inputs that existed before are not counted.

    ``training=False`` runs the call under ``torch.inference_mode()`` (an inference call). ``training=True``
    runs it with autograd on, for a whole training step (forward, backward, optimiser step): the peak then
    also holds the activations saved for backward, the gradients and any optimiser state created by the call.
    """
    mode = contextlib.nullcontext() if training else torch.inference_mode()
    if any(isinstance(t, torch.Tensor) and t.is_cuda for t in inputs):
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        with mode:
            fn(*inputs)
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before
    tracker = _LiveTensorBytes()
    with mode, tracker:
        fn(*inputs)
    return tracker.peak
