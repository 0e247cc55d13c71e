"""Where bytes and time go in inference: per-layer profiles, this machine's roofline, batch-size sweeps.

A layer *moves* its weights, its input and its output activations between memory and the processor and
*computes* its multiply-accumulates (MACs). Its arithmetic intensity is FLOPs per byte moved (2 FLOPs per
MAC). The roofline says a layer can run at most at ``min(peak FLOP/s, bandwidth x intensity)``: below the
ridge point (peak / bandwidth) it is memory-bound, above it compute-bound.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils._pytree import tree_leaves
from torch.utils.flop_counter import FlopCounterMode
from tqdm.auto import tqdm

from course_lib.measure import LatencyStats, compare_latency, measure_latency


def _tensor_bytes(value: object) -> int:
    return sum(t.numel() * t.element_size() for t in tree_leaves(value) if isinstance(t, torch.Tensor))


def _first_shape(value: object) -> tuple[int, ...]:
    return next((tuple(t.shape) for t in tree_leaves(value) if isinstance(t, torch.Tensor)), ())


@dataclass(frozen=True)
class LayerStats:
    """What one leaf layer stores, moves and computes for one forward call."""

    name: str
    kind: str
    parameters: int
    weight_bytes: int
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    input_bytes: int
    output_bytes: int
    macs: int

    @property
    def activation_bytes(self) -> int:
        """Bytes of the input and output activations."""
        return self.input_bytes + self.output_bytes

    @property
    def moved_bytes(self) -> int:
        """Bytes that must travel from and to memory at least once: weights, input, output."""
        return self.weight_bytes + self.activation_bytes

    @property
    def intensity(self) -> float:
        """Arithmetic intensity: FLOPs per byte moved (0 for layers that compute nothing)."""
        return 2 * self.macs / self.moved_bytes if self.moved_bytes else 0.0

    def at_batch(self, batch: int) -> LayerStats:
        """The same layer at another batch size: activations and MACs scale with the batch, weights do not."""
        if batch < 1:
            raise ValueError(f"batch must be at least 1, got {batch}")
        current = self.input_shape[0]
        scale = batch / current

        def rescale(shape: tuple[int, ...]) -> tuple[int, ...]:
            return (batch, *shape[1:]) if shape else shape

        return LayerStats(self.name, self.kind, self.parameters, self.weight_bytes, rescale(self.input_shape),
                          rescale(self.output_shape), round(self.input_bytes * scale),
                          round(self.output_bytes * scale), round(self.macs * scale))


def _leaves(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(name, module) for name, module in model.named_modules() if name and not list(module.children())]


def layer_profile(model: nn.Module, *inputs: torch.Tensor) -> list[LayerStats]:
    """Per leaf layer, in execution order: parameters, weight bytes, activation shapes and bytes, MACs.

    Shapes and bytes come from forward hooks, MACs from PyTorch's FlopCounterMode. A layer called
    several times (none of the course's models does that) is reported once per call.
    """
    records: list[tuple[str, nn.Module, object, object]] = []
    handles = [module.register_forward_hook(lambda m, args, out, name=name: records.append((name, m, args, out)))
               for name, module in _leaves(model)]
    try:
        with torch.inference_mode(), FlopCounterMode(display=False) as counter:
            model(*inputs)
    finally:
        for handle in handles:
            handle.remove()
    flops = counter.get_flop_counts()
    root = type(model).__name__
    stats = []
    for name, module, args, out in records:
        parameters = sum(p.numel() for p in module.parameters(recurse=False))
        weight_bytes = _tensor_bytes((*module.parameters(recurse=False), *module.buffers(recurse=False)))
        macs = sum(flops.get(f"{root}.{name}", {}).values()) // 2
        stats.append(LayerStats(name, type(module).__name__, parameters, weight_bytes, _first_shape(args),
                                _first_shape(out), _tensor_bytes(args), _tensor_bytes(out), macs))
    return stats


def layer_inputs(model: nn.Module, *inputs: torch.Tensor) -> dict[str, tuple]:
    """The positional arguments each leaf layer receives in one forward call (cloned, for timing it alone)."""
    captured: dict[str, tuple] = {}

    def hook(module: nn.Module, args: tuple, name: str) -> None:
        captured[name] = tuple(a.clone() if isinstance(a, torch.Tensor) else a for a in args)

    handles = [module.register_forward_pre_hook(lambda m, args, name=name: hook(m, args, name))
               for name, module in _leaves(model)]
    try:
        with torch.inference_mode():
            model(*inputs)
    finally:
        for handle in handles:
            handle.remove()
    return captured


def layer_latencies(model: nn.Module, *inputs: torch.Tensor, rounds: int = 10,
                    names: Sequence[str] | None = None) -> dict[str, LatencyStats]:
    """Latency of each leaf layer run alone on the input it sees inside the model (all or ``names``)."""
    modules = dict(_leaves(model))
    captured = layer_inputs(model, *inputs)
    chosen = names if names is not None else list(captured)
    return {name: measure_latency(modules[name], captured[name], rounds=rounds, warmup=2)
            for name in tqdm(chosen, desc="timing layers", leave=False)}


def paired_layer_latencies(variants: dict[str, nn.Module], *inputs: torch.Tensor, rounds: int = 5
                           ) -> dict[str, dict[str, LatencyStats]]:
    """Each leaf layer of several variants of one model (same layer names, e.g. fp32 and int8), timed alone
    in alternating rounds on the input the first variant's layer sees: ``{layer: {variant: stats}}``."""
    reference = next(iter(variants.values()))
    captured = layer_inputs(reference, *inputs)
    leaves = {name: dict(_leaves(model)) for name, model in variants.items()}
    missing = {v: sorted(set(captured) - set(layers)) for v, layers in leaves.items() if set(captured) - set(layers)}
    if missing:
        raise ValueError(f"the variants do not have the same layers: missing {missing}")
    return {layer: compare_latency({v: leaves[v][layer] for v in variants}, args, rounds=rounds, warmup=2)
            for layer, args in tqdm(captured.items(), desc="timing layers", leave=False)}


def gemm_rates(n: int = 1024, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu",
               rounds: int = 10) -> dict[str, float]:
    """Measured fp32 rate, in GFLOP/s, of PyTorch's two compute-bound workhorses.

    * an ``n x n x n`` matrix product (``torch.matmul``: the BLAS library, MKL on x86 CPUs, cuBLAS on GPUs);
    * a 3x3 convolution, 256 -> 256 channels on 32x32 maps, batch 8, channels-last (oneDNN on CPUs, cuDNN on GPUs).

    They can differ a lot: MKL, for example, does not use AVX-512 on AMD processors while oneDNN does.
    The faster one is the practical compute peak of the machine.
    """
    if n < 64:
        raise ValueError(f"n={n} is too small to measure a peak: use n >= 64 (e.g. 1024)")
    a, b = torch.randn(n, n, dtype=dtype, device=device), torch.randn(n, n, dtype=dtype, device=device)
    image = torch.randn(8, 256, 32, 32, dtype=dtype, device=device).contiguous(memory_format=torch.channels_last)
    weight = torch.randn(256, 256, 3, 3, dtype=dtype, device=device).contiguous(memory_format=torch.channels_last)
    matmul = measure_latency(torch.matmul, (a, b), rounds=rounds, warmup=2)
    conv = measure_latency(lambda x, w: nn.functional.conv2d(x, w, padding=1), (image, weight), rounds=rounds,
                           warmup=2)
    conv_flops = 2 * 8 * 32 * 32 * 256 * 256 * 9
    return {"torch.matmul (BLAS)": 2 * n**3 / (matmul.median_ms * 1e-3) / 1e9,
            "3x3 convolution (oneDNN / cuDNN)": conv_flops / (conv.median_ms * 1e-3) / 1e9}


def int8_matmul_gops(n: int = 1024, device: torch.device | str = "cpu", rounds: int = 10) -> float:
    """Measured rate of an int8 ``n x n`` matrix product with int32 accumulation (``torch._int_mm``), in GOP/s."""
    a = torch.randint(-128, 128, (n, n), dtype=torch.int8, device=device)
    b = torch.randint(-128, 128, (n, n), dtype=torch.int8, device=device)
    stats = measure_latency(torch._int_mm, (a, b), rounds=rounds, warmup=2)
    return 2 * n**3 / (stats.median_ms * 1e-3) / 1e9


def int8_matmul_available(device: torch.device | str = "cpu") -> bool:
    """Whether this PyTorch build multiplies int8 matrices with int32 accumulation on ``device``."""
    try:
        a = torch.ones(64, 64, dtype=torch.int8, device=device)
        torch._int_mm(a, a)
        return True
    except (RuntimeError, NotImplementedError):
        return False


def memory_bandwidth_gbs(megabytes: int = 256, device: torch.device | str = "cpu", rounds: int = 10) -> float:
    """Measured memory bandwidth of copying a large buffer, in GB/s (bytes read + bytes written).

    The buffer must be far larger than the CPU caches (tens of MB) so that the copy really goes to memory.
    """
    if megabytes < 16:
        raise ValueError(f"{megabytes} MB fits in a CPU cache and would measure the cache, not memory: use >= 16")
    source = torch.ones(megabytes * 2**20 // 4, dtype=torch.float32, device=device)
    target = torch.empty_like(source)
    stats = measure_latency(target.copy_, (source,), rounds=rounds, warmup=2)
    return 2 * source.numel() * 4 / (stats.median_ms * 1e-3) / 1e9


def attainable_gflops(intensity: float, peak_gflops: float, bandwidth_gbs: float) -> float:
    """The roofline: the best rate a layer of this intensity can reach on this machine."""
    return min(peak_gflops, bandwidth_gbs * intensity)


@dataclass(frozen=True)
class Machine:
    """This machine's measured roofline: the best fp32 GEMM rate, the copy bandwidth, the int8 GEMM rate."""

    device: str
    peak_gflops: float
    bandwidth_gbs: float
    int8_peak_gops: float | None = None
    gemm_rates: tuple[tuple[str, float], ...] = ()

    @property
    def ridge_intensity(self) -> float:
        """FLOPs per byte above which a layer is compute-bound."""
        return self.peak_gflops / self.bandwidth_gbs


def measure_machine(device: torch.device | str = "cpu", matmul_size: int = 1024, copy_megabytes: int = 256) -> Machine:
    """Measure the fp32 peak (the faster of the two GEMM libraries), memory bandwidth and the int8 GEMM rate."""
    rates = gemm_rates(matmul_size, device=device)
    int8 = int8_matmul_gops(matmul_size, device) if int8_matmul_available(device) else None
    return Machine(torch.device(device).type, max(rates.values()), memory_bandwidth_gbs(copy_megabytes, device),
                   int8, tuple(rates.items()))


def latency_vs_batch(model: Callable, make_inputs: Callable[[int], tuple], batch_sizes: Sequence[int],
                     rounds: Callable[[int], int] = lambda batch: 10) -> dict[int, LatencyStats]:
    """Latency of ``model(*make_inputs(b))`` for each batch size ``b`` (``rounds(b)`` timed rounds each)."""
    results = {}
    for batch in tqdm(batch_sizes, desc="batch sizes", leave=False):
        results[batch] = measure_latency(model, make_inputs(batch), rounds=rounds(batch),
                                         warmup=1 if batch >= 64 else 3)
    return results


def format_profile(layers: Sequence[LayerStats], computing_only: bool = False) -> str:
    """A per-layer table: parameters, weight and activation bytes, MACs, bytes moved and intensity."""
    header = (f"{'layer':<26} {'kind':<13} {'params':>9} {'weight B':>10} {'output shape':<20} "
              f"{'activation B':>12} {'MACs':>13} {'moved B':>11} {'FLOP/B':>7}")
    lines = [header, "-" * len(header)]
    for layer in layers:
        if computing_only and layer.macs == 0:
            continue
        lines.append(f"{layer.name:<26} {layer.kind:<13} {layer.parameters:>9,} {layer.weight_bytes:>10,} "
                     f"{str(layer.output_shape):<20} {layer.activation_bytes:>12,} {layer.macs:>13,} "
                     f"{layer.moved_bytes:>11,} {layer.intensity:>7.2f}")
    total = LayerStats("total", "", sum(l.parameters for l in layers), sum(l.weight_bytes for l in layers), (), (),
                       sum(l.input_bytes for l in layers), sum(l.output_bytes for l in layers),
                       sum(l.macs for l in layers))
    lines.append("-" * len(header))
    lines.append(f"{'total':<26} {'':<13} {total.parameters:>9,} {total.weight_bytes:>10,} {'':<20} "
                 f"{total.activation_bytes:>12,} {total.macs:>13,} {total.moved_bytes:>11,} {total.intensity:>7.2f}")
    return "\n".join(lines)
