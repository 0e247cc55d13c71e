"""Where bytes and time go in inference: per-layer profiles, this machine's roofline, batch-size sweeps.

A layer *moves* its weights, its input and its output activations between memory and the processor and
*computes* its multiply-accumulates (MACs). Its arithmetic intensity is FLOPs per byte moved (2 FLOPs per
MAC). The roofline says a layer can run at most at ``min(peak FLOP/s, bandwidth x intensity)``: below the
ridge point (peak / bandwidth) it is memory-bound, above it compute-bound.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn
from torch.utils._pytree import tree_leaves
from torch.utils.flop_counter import FlopCounterMode
from tqdm.auto import tqdm

from course_lib.measure import LatencyStats, compare_latency, latency_stats, measure_latency


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


@contextmanager
def _exact_fp32(device: torch.device | str) -> Iterator[None]:
    """On CUDA, switch TF32 off so that fp32 products really run in fp32 (TF32 rounds inputs to 10 bits)."""
    if torch.device(device).type != "cuda":
        yield
        return
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def gemm_rates(n: int = 1024, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu",
               rounds: int = 10) -> dict[str, float]:
    """Measured fp32 rate, in GFLOP/s, of the two libraries that run a network's layers.

    * ``"matmul"``: an ``n x n x n`` matrix product (``torch.matmul``: the BLAS library, MKL on x86 CPUs,
      cuBLAS on GPUs), which runs Linear layers and attention's products;
    * ``"conv"``: a 3x3 convolution, 256 -> 256 channels on 32x32 maps, batch 8, channels-last (oneDNN on CPUs,
      cuDNN on GPUs), which runs Conv2d layers.

    They can differ a lot (MKL, for example, does not use AVX-512 on AMD processors while oneDNN does), so each
    layer gets the roof of the library that runs it. On CUDA, TF32 is off while measuring.
    """
    if n < 64:
        raise ValueError(f"n={n} is too small to measure a peak: use n >= 64 (e.g. 1024)")
    a, b = torch.randn(n, n, dtype=dtype, device=device), torch.randn(n, n, dtype=dtype, device=device)
    image = torch.randn(8, 256, 32, 32, dtype=dtype, device=device).contiguous(memory_format=torch.channels_last)
    weight = torch.randn(256, 256, 3, 3, dtype=dtype, device=device).contiguous(memory_format=torch.channels_last)
    with _exact_fp32(device):
        matmul = measure_latency(torch.matmul, (a, b), rounds=rounds, warmup=2)
        conv = measure_latency(lambda x, w: nn.functional.conv2d(x, w, padding=1), (image, weight), rounds=rounds,
                               warmup=2)
    conv_flops = 2 * 8 * 32 * 32 * 256 * 256 * 9
    return {"matmul": 2 * n**3 / (matmul.median_ms * 1e-3) / 1e9,
            "conv": conv_flops / (conv.median_ms * 1e-3) / 1e9}


LINEAR_SHAPE = (4096, 384, 1536)  # a transformer feed-forward layer: 32 inputs x 128 tokens, 384 -> 1536 features


def int8_linear_rates(shape: tuple[int, int, int] = LINEAR_SHAPE, device: torch.device | str = "cpu",
                      rounds: int = 10) -> tuple[float, float] | None:
    """``(fp32 GFLOP/s, int8 GOP/s)`` of one Linear layer of ``shape = (rows, in, out)``, timed in alternating
    rounds: like with like, the same product through the fp32 kernel and through the int8 kernel a quantized
    layer really uses.

    On CPUs the int8 kernel is the dynamic int8 Linear of notebook 02 (FBGEMM: it also quantizes the input and
    dequantizes the output on every call); on CUDA, ``torch._int_mm``. None where int8 products do not run.
    """
    from course_lib.quantize import DynamicInt8Linear  # noqa: PLC0415 (quantize is heavy; only this needs it)

    rows, n_in, n_out = shape
    x = torch.randn(rows, n_in, device=device)
    linear = nn.Linear(n_in, n_out, device=device).eval()
    try:
        if torch.device(device).type == "cuda":
            a = torch.randint(-128, 128, (rows, n_in), dtype=torch.int8, device=device)
            b = torch.randint(-128, 128, (n_in, n_out), dtype=torch.int8, device=device)
            candidates = {"fp32": linear, "int8": lambda _: torch._int_mm(a, b)}
        else:
            candidates = {"fp32": linear, "int8": DynamicInt8Linear.from_linear(linear.cpu(), per_channel=True)}
        with _exact_fp32(device):
            stats = compare_latency(candidates, (x,), rounds=rounds, warmup=2)
    except (RuntimeError, NotImplementedError):  # no int8 kernels on this machine (e.g. ARM without FBGEMM)
        return None
    flops = 2 * rows * n_in * n_out
    return tuple(flops / (stats[name].median_ms * 1e-3) / 1e9 for name in ("fp32", "int8"))


def layer_call_overhead_us(device: torch.device | str = "cpu", rounds: int = 200) -> float:
    """The fixed cost of calling one layer, in microseconds: a 1x1 convolution on a single pixel, whose bytes
    and arithmetic are negligible (Python, the dispatcher, the library's setup; a kernel launch on GPUs)."""
    layer = nn.Conv2d(1, 1, 1).to(device).eval()
    pixel = torch.ones(1, 1, 1, 1, device=device)
    return measure_latency(layer, (pixel,), rounds=rounds, warmup=20).median_ms * 1e3


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


Bound = Literal["overhead", "memory", "compute"]


@dataclass(frozen=True)
class Machine:
    """This machine's measured rooflines: one fp32 roof per library (BLAS for matrix products, oneDNN/cuDNN for
    convolutions), the copy bandwidth, the fixed cost of a layer call, and int8 vs fp32 on one Linear shape."""

    device: str
    matmul_gflops: float
    conv_gflops: float
    bandwidth_gbs: float
    call_overhead_us: float = 0.0
    linear_fp32_gflops: float | None = None
    linear_int8_gops: float | None = None

    @property
    def roofs(self) -> dict[str, float]:
        """``{library: fp32 peak GFLOP/s}``: the matrix-product library and the convolution library."""
        gpu = self.device == "cuda"
        return {"cuBLAS" if gpu else "BLAS": self.matmul_gflops, "cuDNN" if gpu else "oneDNN": self.conv_gflops}

    def library_for(self, kind: str) -> str:
        """The library (a key of :attr:`roofs`) that runs a layer of this kind: convolutions or matrix products."""
        matmul, conv = self.roofs
        return conv if kind.startswith("Conv") else matmul

    def peak_for(self, kind: str) -> float:
        """The fp32 roof of the library that runs a layer of this kind (``"Conv2d"``: convolutions, else BLAS)."""
        return self.roofs[self.library_for(kind)]

    def ridge_for(self, kind: str) -> float:
        """FLOPs per byte above which a layer of this kind is compute-bound."""
        return self.peak_for(kind) / self.bandwidth_gbs

    @property
    def int8_linear_speedup(self) -> float | None:
        """How much faster the int8 Linear kernel ran than the fp32 one on the same product (None: no int8)."""
        if self.linear_int8_gops is None or self.linear_fp32_gflops is None:
            return None
        return self.linear_int8_gops / self.linear_fp32_gflops

    def time_terms_us(self, layer: LayerStats) -> dict[Bound, float]:
        """The roofline's three estimates of a layer's time, in microseconds: the fixed cost of a call, moving its
        bytes at the memory bandwidth, and its FLOPs at its library's peak. The largest one is what bounds it.
        Estimates, not guarantees: element-wise calls cost less than the measured convolution call, and weights
        that stay in the cache move faster than the memory bandwidth."""
        return {"overhead": self.call_overhead_us,
                "memory": layer.moved_bytes / (self.bandwidth_gbs * 1e9) * 1e6,
                "compute": 2 * layer.macs / (self.peak_for(layer.kind) * 1e9) * 1e6}

    def bound(self, layer: LayerStats) -> Bound:
        """Which of overhead, memory and compute bounds this layer on this machine (the largest time term)."""
        terms = self.time_terms_us(layer)
        return max(terms, key=terms.__getitem__)


def measure_machine(device: torch.device | str = "cpu", matmul_size: int = 1024, copy_megabytes: int = 256) -> Machine:
    """Measure both fp32 roofs, the memory bandwidth, the per-call overhead and int8 vs fp32 on one Linear."""
    rates = gemm_rates(matmul_size, device=device)
    int8 = int8_linear_rates(device=device)
    return Machine(torch.device(device).type, rates["matmul"], rates["conv"],
                   memory_bandwidth_gbs(copy_megabytes, device), layer_call_overhead_us(device),
                   *(int8 or (None, None)))


ELEMENTWISE_KINDS = ("BatchNorm1d", "BatchNorm2d", "ReLU", "GELU", "Dropout", "Identity")


def traffic_after_fusion(layers: Sequence[LayerStats], fused_kinds: Sequence[str]) -> int:
    """Bytes moved by a model once every layer of a kind in ``fused_kinds`` that directly follows a computing
    layer (or another fused one) is fused into it: its input and output never go to memory.

    ``("BatchNorm2d",)`` is batch-norm folding (the conv's weights and bias absorb it); adding ``"ReLU"`` is what
    a compiler or a fused conv+ReLU kernel does.
    """
    total, after_computing = 0, False
    for layer in layers:
        if layer.kind in fused_kinds and after_computing:
            continue
        total += layer.moved_bytes
        after_computing = layer.macs > 0
    return total


@dataclass(frozen=True)
class ContextTimes:
    """One model's time, measured whole and layer by layer inside real forward passes."""

    whole: LatencyStats  # the plain forward pass, no hooks
    hooked_ms: float  # the median forward pass with the timing hooks in place
    layers_ms: dict[str, float]  # each leaf layer's median time inside the hooked passes

    @property
    def other_ms(self) -> float:
        """Time of the hooked pass spent outside every leaf layer: reshapes, residual additions, masks, glue."""
        return max(self.hooked_ms - sum(self.layers_ms.values()), 0.0)

    @property
    def disagreement(self) -> float:
        """Relative difference between the hooked pass and the plain one (the hooks' own cost, or noise)."""
        return abs(self.hooked_ms - self.whole.median_ms) / self.whole.median_ms

    def warning(self, tolerance: float = 0.10) -> str | None:
        """A message when the parts (the hooked pass) and the whole disagree by more than ``tolerance``."""
        if self.disagreement <= tolerance:
            return None
        return (f"the hooked pass took {self.hooked_ms:.1f} ms and the plain one {self.whole.median_ms:.1f} ms "
                f"({self.disagreement:.0%} apart): the shares are unreliable; close other programs, add rounds")


def layer_times_in_context(model: nn.Module, *inputs: torch.Tensor, rounds: int = 5, warmup: int = 2
                           ) -> ContextTimes:
    """Time every leaf layer *inside* real forward passes (hooks timestamp each call), alternating with plain
    passes of the whole model. Unlike layers timed alone, the parts then add up to the pass they belong to."""
    cuda = torch.device(next(iter(inputs)).device).type == "cuda"
    starts: dict[str, float] = {}
    spent: dict[str, float] = {}

    def clock() -> float:
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    def before(name: str) -> None:
        starts[name] = clock()

    def after(name: str) -> None:
        spent[name] = spent.get(name, 0.0) + clock() - starts.pop(name)

    leaves = _leaves(model)
    per_layer: dict[str, list[float]] = {name: [] for name, _ in leaves}
    hooked: list[float] = []
    plain: list[float] = []
    with torch.inference_mode():
        for round_index in tqdm(range(warmup + rounds), desc="timed passes", leave=False):
            start = clock()
            model(*inputs)
            plain_ms = (clock() - start) * 1e3
            handles = [h for name, module in leaves for h in (
                module.register_forward_pre_hook(lambda m, a, name=name: before(name)),
                module.register_forward_hook(lambda m, a, o, name=name: after(name)))]
            spent.clear()
            try:
                start = clock()
                model(*inputs)
                hooked_ms = (clock() - start) * 1e3
            finally:
                for handle in handles:
                    handle.remove()
            if round_index >= warmup:
                plain.append(plain_ms)
                hooked.append(hooked_ms)
                for name in per_layer:
                    per_layer[name].append(spent.get(name, 0.0) * 1e3)
    return ContextTimes(latency_stats(plain), statistics.median(hooked),
                        {name: statistics.median(times) for name, times in per_layer.items()})


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
