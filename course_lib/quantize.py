"""Quantization: the arithmetic from scratch, simulation on whole models, and the real int8 kernels.

From scratch (notebook 02 has the learner write these): integer ranges, scale and zero-point, quantize /
dequantize, calibration (min-max, percentile, MSE), per-tensor vs per-channel, an integer-only matrix multiply.
On models: weight-only simulation at any bit width (binary and ternary included), fake-quant modules with the
straight-through estimator for quantization-aware training. Real int8: PT2E static quantization for CPU
(torchao's X86 inductor quantizer) and a dynamic int8 Linear with per-channel weights, 8-bit activations and
SmoothQuant scaling for the transformer.
"""

from __future__ import annotations

import copy
import hashlib
import io
import math
import os
import warnings
import zipfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Literal

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn
from torch.nn.utils import parametrize

from .io import atomic_path
from .runtime import quiet_warnings

Calibration = Literal["minmax", "percentile", "mse"]
CALIBRATIONS: tuple[str, ...] = ("minmax", "percentile", "mse")
MIN_BITS, MAX_BITS = 1, 16
QUANTIZABLE = (nn.Conv2d, nn.Linear)
KEPT_IN_FLOAT = (nn.BatchNorm2d, nn.BatchNorm1d, nn.LayerNorm, nn.Embedding)


class UnsupportedLayerError(ValueError):
    """The model holds layers with weights that this quantizer does not know how to handle."""


def check_bits(bits: int, low: int = MIN_BITS, high: int = MAX_BITS) -> int:
    """Return ``bits`` if it is an integer in ``[low, high]``, else raise a ValueError that says what is allowed."""
    if isinstance(bits, bool) or not isinstance(bits, int) or not low <= bits <= high:
        raise ValueError(f"bits must be an integer from {low} to {high}, got {bits!r}")
    return bits


def integer_range(bits: int, symmetric: bool) -> tuple[int, int]:
    """The integers a ``bits``-bit code can hold: ``[-(2^(b-1)-1), 2^(b-1)-1]`` symmetric, ``[0, 2^b-1]`` affine.

    The symmetric range drops the most negative code so that it is symmetric around an exact zero; at 2 bits it
    is ternary {-1, 0, 1}. One bit is binary (:func:`binarize`), not an integer grid.
    """
    check_bits(bits, low=2)
    if symmetric:
        return -(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1
    return 0, 2 ** bits - 1


@dataclass(frozen=True)
class QParams:
    """How a tensor maps to integers: ``q = clamp(round(x / scale) + zero_point, qmin, qmax)``.

    ``scale`` and ``zero_point`` are scalars (per-tensor) or 1-D tensors along ``axis`` (per-channel).
    """

    scale: torch.Tensor
    zero_point: torch.Tensor
    bits: int
    symmetric: bool
    axis: int | None = None

    @property
    def qmin(self) -> int:
        return integer_range(self.bits, self.symmetric)[0]

    @property
    def qmax(self) -> int:
        return integer_range(self.bits, self.symmetric)[1]

    def broadcast(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``scale`` and ``zero_point`` shaped to broadcast against ``x``."""
        if self.axis is None:
            return self.scale, self.zero_point
        shape = [1] * x.dim()
        shape[self.axis] = -1
        return self.scale.reshape(shape), self.zero_point.reshape(shape)


def _reduce_dims(x: torch.Tensor, axis: int | None) -> list[int]:
    return [d for d in range(x.dim()) if d != (axis % x.dim() if axis is not None else None)]


def _check_float(x: torch.Tensor, name: str = "x") -> None:
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        got = x.dtype if isinstance(x, torch.Tensor) else type(x).__name__
        raise TypeError(f"{name} must be a floating-point tensor, got {got}: convert it with .float()")
    if x.numel() == 0:
        raise ValueError(f"{name} is empty: quantization needs at least one value to calibrate on")


def qparams_from_range(low: torch.Tensor, high: torch.Tensor, bits: int, symmetric: bool = True,
                       axis: int | None = None) -> QParams:
    """Scale and zero-point that map ``[low, high]`` (scalars or per-channel) onto the ``bits``-bit grid.

    The range is widened to include 0 so that zero (padding, ReLU outputs, pruned weights) stays exact. An
    all-zero range gets scale 1: every scale represents it exactly.
    """
    qmin, qmax = integer_range(bits, symmetric)
    low = torch.minimum(torch.as_tensor(low, dtype=torch.float32), torch.zeros(()))
    high = torch.maximum(torch.as_tensor(high, dtype=torch.float32), torch.zeros(()))
    if symmetric:
        scale = torch.maximum(-low, high) / qmax
        zero_point = torch.zeros_like(scale, dtype=torch.int32)
    else:
        scale = (high - low) / (qmax - qmin)
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        zero_point = (qmin - torch.round(low / scale)).clamp(qmin, qmax).to(torch.int32)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    return QParams(scale, zero_point, bits, symmetric, axis)


def quantize(x: torch.Tensor, qp: QParams) -> torch.Tensor:
    """Integers (``int32``) ``clamp(round(x / scale) + zero_point, qmin, qmax)``."""
    _check_float(x)
    if bool((qp.scale <= 0).any()) or not bool(torch.isfinite(qp.scale).all()):
        raise ValueError("scale must be positive and finite (a scale of zero maps everything to infinity): "
                         "compute it with qparams_from_range or compute_qparams")
    scale, zero_point = qp.broadcast(x)
    return (torch.round(x / scale) + zero_point).clamp(qp.qmin, qp.qmax).to(torch.int32)


def dequantize(q: torch.Tensor, qp: QParams) -> torch.Tensor:
    """Floats ``(q - zero_point) * scale``."""
    scale, zero_point = qp.broadcast(q)
    return (q.to(torch.float32) - zero_point) * scale


def fake_quantize(x: torch.Tensor, qp: QParams) -> torch.Tensor:
    """``dequantize(quantize(x))`` with a straight-through gradient (identity), for quantization-aware training."""
    return x + (dequantize(quantize(x.detach(), qp), qp).to(x.dtype) - x).detach()


def calibrate_range(x: torch.Tensor, method: Calibration = "minmax", bits: int = 8, symmetric: bool = True,
                    axis: int | None = None, percentile: float = 99.99) -> tuple[torch.Tensor, torch.Tensor]:
    """The range ``(low, high)`` to quantize ``x`` with, per tensor or per channel along ``axis``.

    ``minmax`` keeps every value (no clipping error, largest rounding error); ``percentile`` clips the rarest
    values; ``mse`` searches the clipping ratio that minimises the mean squared quantization error.
    """
    _check_float(x)
    if method not in CALIBRATIONS:
        raise ValueError(f"unknown calibration method {method!r}: choose one of {', '.join(CALIBRATIONS)}")
    flat = x.detach().float().movedim(axis, 0).reshape(x.shape[axis], -1) if axis is not None \
        else x.detach().float().reshape(1, -1)
    low, high = flat.min(dim=1).values, flat.max(dim=1).values
    if method == "percentile":
        if not 50.0 < percentile <= 100.0:
            raise ValueError(f"percentile must be in (50, 100], got {percentile}")
        sample = flat[:, :: max(1, flat.numel() // 8_000_000)]  # torch.quantile takes at most 16M values
        low = torch.quantile(sample, 1 - percentile / 100, dim=1)
        high = torch.quantile(sample, percentile / 100, dim=1)
    elif method == "mse":
        low, high = _mse_range(flat, low, high, bits, symmetric)
    return (low[0], high[0]) if axis is None else (low, high)


def _mse_range(flat: torch.Tensor, low: torch.Tensor, high: torch.Tensor, bits: int, symmetric: bool,
               steps: int = 40) -> tuple[torch.Tensor, torch.Tensor]:
    """Shrink ``[low, high]`` by the ratio (of ``steps`` from 1 down to 0.1) with the least squared error."""
    best_err = torch.full_like(low, math.inf)
    best_low, best_high = low.clone(), high.clone()
    for ratio in torch.linspace(1.0, 0.1, steps):
        qp = qparams_from_range(low * ratio, high * ratio, bits, symmetric, axis=0)
        err = (dequantize(quantize(flat, qp), qp) - flat).pow(2).mean(dim=1)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_low = torch.where(better, low * ratio, best_low)
        best_high = torch.where(better, high * ratio, best_high)
    return best_low, best_high


def compute_qparams(x: torch.Tensor, bits: int = 8, symmetric: bool = True, axis: int | None = None,
                    method: Calibration = "minmax", percentile: float = 99.99) -> QParams:
    """Calibrate ``x`` and return its quantization parameters (per tensor, or per channel along ``axis``)."""
    check_bits(bits, low=2)
    low, high = calibrate_range(x, method, bits, symmetric, axis, percentile)
    return qparams_from_range(low, high, bits, symmetric, axis)


def binarize(w: torch.Tensor, axis: int | None = 0) -> torch.Tensor:
    """1-bit weights: ``sign(w)`` times the mean magnitude (per channel along ``axis``), as in XNOR-Net."""
    _check_float(w, "w")
    dims = _reduce_dims(w, axis)
    alpha = w.abs().mean(dim=dims, keepdim=True)
    return torch.where(w >= 0, alpha, -alpha)


class NonFiniteWeightsError(ValueError):
    """Weights holding NaN or infinite values: no grid can represent them."""


def _check_finite(w: torch.Tensor, name: str) -> None:
    """Raise :class:`NonFiniteWeightsError` naming ``name`` if ``w`` holds NaN or infinite values."""
    finite = torch.isfinite(w)
    if not bool(finite.all()):
        nan, inf = int(torch.isnan(w).sum()), int(torch.isinf(w).sum())
        raise NonFiniteWeightsError(
            f"{name} holds {nan:,} NaN and {inf:,} infinite values out of {w.numel():,}: they cannot be quantized. "
            "The model probably diverged during training (check its loss curve, lower the learning rate) or was "
            "loaded from a damaged checkpoint: quantize a model whose weights are all finite.")


def quantize_tensor(w: torch.Tensor, bits: int, per_channel: bool = True, method: Calibration = "minmax",
                    symmetric: bool = True, name: str = "the tensor") -> torch.Tensor:
    """``w`` rounded to a ``bits``-bit grid and back to float (1 bit: binary; 2 bits symmetric: ternary).

    ``name`` (e.g. the layer's weight, ``"features.0.weight"``) is what the errors for bad input call it."""
    check_bits(bits)
    _check_float(w, name)
    _check_finite(w, name)
    axis = 0 if per_channel else None
    if bits == 1:
        return binarize(w, axis)
    qp = compute_qparams(w, bits, symmetric, axis, method)
    return dequantize(quantize(w, qp), qp)


def check_supported(model: nn.Module, supported: tuple[type, ...] = QUANTIZABLE,
                    kept_in_float: tuple[type, ...] = KEPT_IN_FLOAT, skip: Iterable[str] = ()) -> list[str]:
    """Names of the layers to quantize; raise :class:`UnsupportedLayerError` for any other layer with weights."""
    skip = set(skip)
    chosen, unsupported = [], []
    for name, module in model.named_modules():
        own = list(module.parameters(recurse=False))
        if not own or name in skip or isinstance(module, kept_in_float):
            continue
        (chosen if isinstance(module, supported) else unsupported).append(name)
    if unsupported:
        described = ", ".join(f"{n} ({type(model.get_submodule(n)).__name__})" for n in unsupported)
        raise UnsupportedLayerError(
            f"cannot quantize {described}: supported layers are {', '.join(t.__name__ for t in supported)}; "
            f"pass skip={unsupported!r} to keep them in float, or replace them")
    if not chosen:
        raise UnsupportedLayerError("the model has no Conv2d or Linear layer to quantize")
    return chosen


def quantize_weights(model: nn.Module, bits: int, per_channel: bool = True, method: Calibration = "minmax",
                     symmetric: bool = True, skip: Iterable[str] = ()) -> nn.Module:
    """A copy of ``model`` whose Conv2d/Linear weights are rounded to ``bits`` bits (simulated, still float)."""
    check_bits(bits)
    names = check_supported(model, skip=skip)
    quantized = copy.deepcopy(model)
    with torch.no_grad():
        for name in names:
            layer = quantized.get_submodule(name)
            layer.weight.copy_(quantize_tensor(layer.weight, bits, per_channel, method, symmetric,
                                             name=f"{name}.weight"))
    return quantized


def integer_linear(x_q: torch.Tensor, x_qp: QParams, w_q: torch.Tensor, w_qp: QParams,
                   bias: torch.Tensor | None, out_qp: QParams) -> torch.Tensor:
    """``x @ w.T + bias`` computed with integers only, as an int8 accelerator does.

    Products of ``(x_q - zx)`` and ``(w_q - zw)`` are summed exactly (int64 here; int8 hardware uses int32,
    enough for ~130,000 products of 8-bit codes); the bias is added as an integer at scale
    ``sx * sw``; the result is requantized to ``out_qp`` with a fixed-point multiplier (an integer and a right
    shift, Jacob et al. 2018). ``w_qp`` may be per-tensor or per output channel (axis 0).
    """
    if x_q.dtype != torch.int32 or w_q.dtype != torch.int32:
        raise TypeError(f"expected int32 codes from quantize(), got {x_q.dtype} and {w_q.dtype}")
    if x_q.dim() != 2 or w_q.dim() != 2 or x_q.shape[1] != w_q.shape[1]:
        raise ValueError(f"shapes do not match for x @ w.T: {tuple(x_q.shape)} and {tuple(w_q.shape)}")
    if x_qp.axis is not None or out_qp.axis is not None:
        raise ValueError("activations and outputs must be quantized per tensor (axis=None)")
    acc = (x_q - x_qp.zero_point).to(torch.int64) @ (w_q - w_qp.broadcast(w_q)[1]).to(torch.int64).T
    acc_scale = (x_qp.scale * w_qp.scale).to(torch.float64)  # scalar or [out]
    if bias is not None:
        acc = acc + torch.round(bias.to(torch.float64) / acc_scale).to(torch.int64)
    multiplier, shift = fixed_point_multiplier(acc_scale / out_qp.scale.to(torch.float64))
    rounded = (acc * multiplier + (1 << (shift - 1))) >> shift
    return (rounded + out_qp.zero_point).clamp(out_qp.qmin, out_qp.qmax).to(torch.int32)


def fixed_point_multiplier(real: torch.Tensor, mantissa_bits: int = 31) -> tuple[torch.Tensor, int]:
    """Integers ``m`` and one ``shift`` with ``m / 2**shift`` ≈ ``real`` (each value must be in (0, 1))."""
    real = torch.as_tensor(real, dtype=torch.float64)
    if bool((real <= 0).any()) or bool((real >= 1).any()):
        raise ValueError("requantization multipliers must lie in (0, 1): choose a larger output scale")
    shift = mantissa_bits + int(torch.floor(-torch.log2(real.max())).item())
    return torch.round(real * 2.0 ** shift).to(torch.int64), shift


# ---------------------------------------------------------------------------------------------------------------
# Quantization-aware training


class FakeQuantWeight(nn.Module):
    """A parametrization: the layer sees its weight fake-quantized (per output channel), gradients pass straight."""

    def __init__(self, bits: int, per_channel: bool = True, symmetric: bool = True):
        super().__init__()
        self.bits, self.per_channel, self.symmetric = check_bits(bits, low=2), per_channel, symmetric

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        qp = compute_qparams(w.detach(), self.bits, self.symmetric, 0 if self.per_channel else None)
        return fake_quantize(w, qp)


def prepare_qat(model: nn.Module, bits: int, per_channel: bool = True, skip: Iterable[str] = ()) -> nn.Module:
    """A copy of ``model`` whose Conv2d/Linear weights are fake-quantized in every forward pass (train it)."""
    names = check_supported(model, skip=skip)
    prepared = copy.deepcopy(model)
    for name in names:
        parametrize.register_parametrization(prepared.get_submodule(name), "weight",
                                             FakeQuantWeight(bits, per_channel))
    return prepared


def finish_qat(model: nn.Module) -> nn.Module:
    """Bake the fake-quantized weights into plain layers (removes the parametrizations, in place)."""
    for module in model.modules():
        if parametrize.is_parametrized(module, "weight"):
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
    return model


# ---------------------------------------------------------------------------------------------------------------
# Real int8 on CPU: PT2E static quantization (torchao's X86 inductor quantizer)


def _import_torchao() -> SimpleNamespace:
    """Import torchao and its PT2E API quietly (see ``runtime.quiet_warnings`` for its log messages); its import
    also triggers deprecation warnings inside torch, harmless for the CPU paths used here."""
    quiet_warnings()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*register_constant.*")
        warnings.filterwarnings("ignore", message=".*torch.jit.script_method.*is deprecated.*")
        import torchao  # noqa: F401  (registers the quantized ops that saved programs use)
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
        from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer
    return SimpleNamespace(prepare_pt2e=prepare_pt2e, convert_pt2e=convert_pt2e, x86=x86_inductor_quantizer)


def quantize_static(model: nn.Module, calibration_images: torch.Tensor, batch_size: int = 256) -> nn.Module:
    """Static int8 (weights and activations) with PT2E: export, insert observers, calibrate, convert.

    Returns the converted graph module: int8 numerics, but fast only once compiled (:func:`compile_for_cpu`).
    Layers with weights other than Conv2d/Linear (and batch norm, folded into the convolutions) are refused
    rather than silently left in float.
    """
    if not isinstance(calibration_images, torch.Tensor) or len(calibration_images) == 0:
        raise ValueError("the calibration set is empty: pass a few hundred training images, e.g. train.images[:512]")
    check_supported(model)
    torchao = _import_torchao()
    quantizer = torchao.x86.X86InductorQuantizer().set_global(
        torchao.x86.get_default_x86_inductor_quantization_config())
    example = calibration_images[:2]
    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    exported = torch.export.export(model.eval(), (example,), dynamic_shapes=({0: batch},)).module()
    prepared = torchao.prepare_pt2e(exported, quantizer)
    with torch.no_grad():
        for i in range(0, len(calibration_images), batch_size):
            prepared(calibration_images[i:i + batch_size])
    return torchao.convert_pt2e(prepared)


def _drop_unused_attributes(graph_module: torch.fx.GraphModule) -> None:
    """Delete parameters and buffers the converted graph no longer reads (the fp32 weights it replaced)."""
    used = {node.target for node in graph_module.graph.nodes if node.op == "get_attr"}
    for name, _ in list(graph_module.named_parameters()) + list(graph_module.named_buffers()):
        if name not in used:
            owner, _, attr = name.rpartition(".")
            delattr(graph_module.get_submodule(owner) if owner else graph_module, attr)


class _FrozenCompiled(nn.Module):
    """A compiled module whose compilations run with inductor freezing switched on, and only they."""

    def __init__(self, model: Callable):
        super().__init__()
        self.compiled = torch.compile(model, dynamic=False)

    def forward(self, *args, **kwargs):
        import torch._inductor.config as inductor_config

        # `options={"freezing": True}` does not reach the int8 prepacking pass (it then fails on
        # onednn.qconv_prepack), so the process-wide switch is set, but only while this module runs (and compiles).
        with inductor_config.patch(freezing=True):
            return self.compiled(*args, **kwargs)


def compile_for_cpu(model: Callable) -> nn.Module:
    """``torch.compile`` with inductor freezing (weights become constants, int8 kernels get prepacked).

    Freezing is switched on only while the returned module runs, not for the rest of the process. Needs a C++
    compiler (:func:`course_lib.runtime.require_compiler` says how to get one); it only changes graphs compiled
    without gradients, i.e. for inference.
    """
    from course_lib.runtime import require_compiler

    require_compiler()
    return _FrozenCompiled(model)


INT8_FILE_MARK = b"course_lib int8 sha256:"  # the zip comment of a .pt2 file written by save_int8, then the digest
_DIGEST_CHARS = 64  # a SHA-256 in hex


class Int8FileError(ValueError):
    """A ``.pt2`` int8 model file that is truncated, altered or of another kind: it is refused, never loaded."""


def save_int8(model: torch.fx.GraphModule, example: torch.Tensor, path: str | os.PathLike) -> int:
    """Export the converted int8 module with a dynamic batch size and save it (``.pt2``); return the file's bytes.

    The fp32 weights that conversion replaced by int8 constants are deleted from ``model`` first (they would
    otherwise be saved too, making the file larger than the fp32 one). The file ends with the SHA-256 of all its
    other bytes (in the zip comment), which :func:`load_int8` checks before loading anything.
    """
    path = Path(path)
    if path.suffix != ".pt2":
        raise ValueError(f"an exported program is saved as a .pt2 file, got {path.name!r}")
    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    # clone: a slice would keep (and save) the whole batch it views
    _drop_unused_attributes(model)
    program = torch.export.export(model, (example[:2].clone(),), dynamic_shapes=({0: batch},))
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    with atomic_path(path, suffix=".pt2") as tmp:
        tmp.write_bytes(_seal(_deflate_descriptions(buffer.getvalue())))
    return path.stat().st_size


def _deflate_descriptions(archive: bytes) -> bytes:
    """The ``.pt2`` archive with its JSON graph description deflate-compressed (about 116 KB of text for the
    course CNN, more than 15% of the file); weights stay stored as raw bytes. ``torch.export.load`` reads both.
    The zip comment is a placeholder of the right length for :func:`_seal`."""
    rewritten = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(archive)) as source, zipfile.ZipFile(rewritten, "w") as target:
        for info in source.infolist():
            method = zipfile.ZIP_DEFLATED if info.filename.endswith(".json") else zipfile.ZIP_STORED
            target.writestr(info.filename, source.read(info), compress_type=method)
        target.comment = INT8_FILE_MARK + b"0" * _DIGEST_CHARS
    return rewritten.getvalue()


def _seal(archive: bytes) -> bytes:
    """Replace the placeholder at the end of ``archive`` by the SHA-256 of every byte before it."""
    body = archive[:-_DIGEST_CHARS]
    return body + hashlib.sha256(body).hexdigest().encode()


def _verified_int8_bytes(path: Path) -> bytes:
    """The bytes of ``path`` if they end with the SHA-256 that :func:`save_int8` recorded; else
    :class:`Int8FileError`."""
    data = path.read_bytes()
    body, digest = data[:-_DIGEST_CHARS], data[-_DIGEST_CHARS:]
    if len(data) <= _DIGEST_CHARS or not body.endswith(INT8_FILE_MARK):
        raise Int8FileError(
            f"{path} is not a complete int8 model file written by Q.save_int8: it is truncated (an interrupted "
            "copy or download) or a file of another kind. Copy it again, or re-create it with "
            "Q.save_int8(converted_model, example_images, path).")
    if hashlib.sha256(body).hexdigest().encode() != digest:
        raise Int8FileError(
            f"{path} is damaged: its bytes no longer match the SHA-256 recorded when Q.save_int8 wrote it (a changed "
            "or lost byte, e.g. a faulty copy). It is not loaded: copy it again, or re-create it with "
            "Q.save_int8(converted_model, example_images, path).")
    return data


def load_int8(path: str | os.PathLike) -> nn.Module:
    """Load a model saved by :func:`save_int8` (a plain module; compile it for speed).

    The file's SHA-256 is checked first: a truncated, altered or foreign file raises :class:`Int8FileError`."""
    data = _verified_int8_bytes(Path(path))
    _import_torchao()  # registers the quantized ops the program uses
    return torch.export.load(io.BytesIO(data)).module()


# ---------------------------------------------------------------------------------------------------------------
# The transformer: dynamic int8 Linear, and a simulator of its error sources


def smoothing_factors(activation_absmax: torch.Tensor, weight: torch.Tensor, alpha: float) -> torch.Tensor:
    """SmoothQuant's per-input-channel factors ``s = max|X|^alpha / max|W|^(1-alpha)`` (Xiao et al. 2023).

    The layer computes ``(x / s) @ (w * s).T``: the same result, with activation outliers moved into the weights.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    w_max = weight.detach().abs().amax(dim=0).clamp(min=1e-5)
    return (activation_absmax.clamp(min=1e-5) ** alpha / w_max ** (1 - alpha)).clamp(min=1e-5)


@contextmanager
def _quantized_tensors_allowed() -> Iterator[None]:
    """PyTorch announces that quantized tensors (qint8) will go in a future release; the pinned torch has them and
    they are what its fast dynamic int8 Linear kernel takes, so the notice is silenced where they are made."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*quantized tensor creation functions.*deprecated.*")
        yield


class DynamicInt8Linear(nn.Module):
    """A Linear running on int8 kernels: int8 weights (per channel or per tensor), activations quantized per
    batch at run time (8-bit, or 7-bit like PyTorch's default ``reduce_range=True``), optional SmoothQuant factors
    (the input is multiplied by ``inverse_smooth``, the weight was multiplied by ``smooth`` before quantizing).
    """

    def __init__(self, q_weight: torch.Tensor, bias: torch.Tensor | None, reduce_range: bool = False,
                 inverse_smooth: torch.Tensor | None = None):
        super().__init__()
        if q_weight.dtype != torch.qint8 or q_weight.dim() != 2:
            raise TypeError(f"expected a 2-D qint8 weight, got {q_weight.dtype} {tuple(q_weight.shape)}")
        self.out_features, self.in_features = q_weight.shape
        if inverse_smooth is not None and inverse_smooth.shape != (self.in_features,):
            raise ValueError(f"smoothing factors must have shape ({self.in_features},), "
                             f"got {tuple(inverse_smooth.shape)}")
        self.register_buffer("inverse_smooth", inverse_smooth)
        self.packed = torch.ops.quantized.linear_prepack(q_weight, bias)
        self.reduce_range = reduce_range

    @classmethod
    def from_linear(cls, linear: nn.Linear, per_channel: bool = True, reduce_range: bool = False,
                    smooth: torch.Tensor | None = None) -> DynamicInt8Linear:
        """Quantize a float Linear's weight to int8 (symmetric, min-max; per output channel or per tensor)."""
        weight = linear.weight.detach().float()
        if smooth is not None:
            weight = weight * smooth
        qp = compute_qparams(weight, 8, symmetric=True, axis=0 if per_channel else None)
        with _quantized_tensors_allowed():
            if per_channel:
                q_weight = torch.quantize_per_channel(weight, qp.scale.double(), qp.zero_point.long(), 0,
                                                      torch.qint8)
            else:
                q_weight = torch.quantize_per_tensor(weight, float(qp.scale), 0, torch.qint8)
        bias = None if linear.bias is None else linear.bias.detach().float()
        return cls(q_weight, bias, reduce_range, None if smooth is None else 1.0 / smooth.float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.inverse_smooth is not None:
            x = x * self.inverse_smooth
        return torch.ops.quantized.linear_dynamic(x, self.packed, self.reduce_range)

    def weight_and_bias(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The int8 weight (a quantized tensor) and the float bias, as packed."""
        return torch.ops.quantized.linear_unpack(self.packed)


class SimulatedQuantLinear(nn.Module):
    """A float Linear that imitates one int8 configuration, to study each source of error on its own.

    ``weight_per_channel``: per-output-channel vs per-tensor weight scales; ``act_bits`` (None: float activations);
    ``act_per_token``: one activation scale per token instead of one per batch; ``smooth``: SmoothQuant factors.
    """

    def __init__(self, linear: nn.Linear, weight_bits: int | None = 8, weight_per_channel: bool = True,
                 act_bits: int | None = 8, act_per_token: bool = False, smooth: torch.Tensor | None = None):
        super().__init__()
        weight = linear.weight.detach().float()
        self.smooth = smooth
        if smooth is not None:
            weight = weight * smooth
        if weight_bits is not None:
            weight = quantize_tensor(weight, weight_bits, per_channel=weight_per_channel)
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.bias = linear.bias
        self.act_bits, self.act_per_token = act_bits, act_per_token

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.smooth is not None:
            x = x / self.smooth
        if self.act_bits is not None:
            axis = 0 if self.act_per_token else None
            flat = x.reshape(-1, x.shape[-1])
            qp = compute_qparams(flat, self.act_bits, symmetric=False, axis=axis)
            x = dequantize(quantize(flat, qp), qp).reshape(x.shape)
        return nn.functional.linear(x, self.weight, self.bias)


def replace_linears(model: nn.Module, make: Callable[[str, nn.Linear], nn.Module],
                    names: Sequence[str] | None = None) -> nn.Module:
    """A copy of ``model`` with each Linear (or each one named in ``names``) replaced by ``make(name, linear)``."""
    replaced = copy.deepcopy(model)
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    chosen = linears if names is None else list(names)
    unknown = sorted(set(chosen) - set(linears))
    if unknown:
        raise ValueError(f"not Linear layers of this model: {unknown}; choose from e.g. {linears[:3]}")
    for name in chosen:
        replaced.set_submodule(name, make(name, model.get_submodule(name)))
    return replaced


def linear_input_absmax(model: nn.Module, run: Callable[[], object]) -> dict[str, torch.Tensor]:
    """Per-input-channel max |x| seen by every Linear while ``run()`` executes (calibration for SmoothQuant)."""
    stats: dict[str, torch.Tensor] = {}
    hooks = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            def record(_module, inputs, _output, name=name):
                absmax = inputs[0].detach().abs().reshape(-1, inputs[0].shape[-1]).amax(dim=0)
                stats[name] = torch.maximum(stats[name], absmax) if name in stats else absmax
            hooks.append(module.register_forward_hook(record))
    try:
        run()
    finally:
        for hook in hooks:
            hook.remove()
    if not stats:
        raise ValueError("no Linear layer ran during calibration: check that run() calls the model")
    return stats


class Int8Embedding(nn.Module):
    """An embedding table kept as int8 codes with one fp32 scale per row (symmetric, min-max per row): a lookup
    gathers the rows it needs and scales them back, so the table is ~4x smaller in the file and in memory."""

    def __init__(self, codes: torch.Tensor, scales: torch.Tensor):
        super().__init__()
        if codes.dtype != torch.int8 or codes.dim() != 2 or scales.shape != codes.shape[:1]:
            raise ValueError(f"expected int8 codes [rows, width] and one scale per row, got {codes.dtype} "
                             f"{tuple(codes.shape)} and scales {tuple(scales.shape)}")
        self.register_buffer("codes", codes)
        self.register_buffer("scales", scales.float())

    @classmethod
    def from_embedding(cls, embedding: nn.Embedding) -> Int8Embedding:
        """Quantize a float embedding table row by row."""
        qp = compute_qparams(embedding.weight.detach().float(), 8, symmetric=True, axis=0)
        return cls(quantize(embedding.weight.detach().float(), qp).to(torch.int8), qp.scale)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.codes[ids].float() * self.scales[ids].unsqueeze(-1)


def quantize_embeddings(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every ``nn.Embedding`` replaced by an :class:`Int8Embedding`."""
    replaced = copy.deepcopy(model)
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Embedding)]
    if not names:
        raise ValueError("the model has no nn.Embedding to quantize")
    for name in names:
        replaced.set_submodule(name, Int8Embedding.from_embedding(model.get_submodule(name)))
    return replaced


def quantize_dynamic(model: nn.Module, per_channel: bool = False, reduce_range: bool = True,
                     smooth_alpha: float | None = None, absmax: dict[str, torch.Tensor] | None = None,
                     names: Sequence[str] | None = None, smooth_names: Sequence[str] | None = None) -> nn.Module:
    """A copy of ``model`` with its Linear layers (or those in ``names``) as :class:`DynamicInt8Linear`.

    The defaults are PyTorch's (``torch.ao.quantization.quantize_dynamic``): per-tensor weights, 7-bit activations.

    With ``smooth_alpha``, ``absmax`` (from :func:`linear_input_absmax`) gives the SmoothQuant factors, for every
    quantized layer or only those in ``smooth_names`` (each smoothed layer costs an extra multiply of its input).
    """
    if smooth_alpha is not None and absmax is None:
        raise ValueError("SmoothQuant needs calibration statistics: pass absmax=linear_input_absmax(model, run)")
    smoothed = None if smooth_names is None else set(smooth_names)

    def make(name: str, linear: nn.Linear) -> nn.Module:
        use = smooth_alpha is not None and (smoothed is None or name in smoothed)
        smooth = smoothing_factors(absmax[name], linear.weight, smooth_alpha) if use else None
        return DynamicInt8Linear.from_linear(linear, per_channel, reduce_range, smooth)

    return replace_linears(model, make, names)


def save_dynamic_int8(model: nn.Module, path: str | os.PathLike) -> int:
    """Save a model holding :class:`DynamicInt8Linear` layers (and, optionally, :class:`Int8Embedding` tables) as
    safetensors: int8 weights with their scales, everything else as stored; return the file's bytes. Reload with
    :func:`load_dynamic_int8`."""
    tensors: dict[str, torch.Tensor] = {}
    int8_layers = {n: m for n, m in model.named_modules() if isinstance(m, DynamicInt8Linear)}
    if not int8_layers:
        raise ValueError("the model has no DynamicInt8Linear layer: quantize it with quantize_dynamic first")
    for name, layer in int8_layers.items():
        weight, bias = layer.weight_and_bias()
        per_channel = weight.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric)
        scales = weight.q_per_channel_scales() if per_channel else torch.tensor([weight.q_scale()])
        tensors[f"{name}.weight_int8"] = weight.int_repr().contiguous()
        tensors[f"{name}.weight_scale"] = scales.float()
        if bias is not None:
            tensors[f"{name}.bias"] = bias.contiguous()
    for key, value in model.state_dict().items():
        tensors.setdefault(key, value.contiguous())
    metadata = {"reduce_range": ",".join(n for n, m in int8_layers.items() if m.reduce_range)}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return Path(path).stat().st_size


def load_dynamic_int8(path: str | os.PathLike, skeleton: nn.Module) -> nn.Module:
    """Rebuild a model saved by :func:`save_dynamic_int8` into ``skeleton`` (a float model of the same class)."""
    with safe_open(str(path), "pt") as f:
        tensors = {key: f.get_tensor(key) for key in f.keys()}
        reduce_range = set(filter(None, (f.metadata() or {}).get("reduce_range", "").split(",")))
    embeddings = [n for n, m in skeleton.named_modules() if isinstance(m, nn.Embedding) and f"{n}.codes" in tensors]
    skeleton = copy.deepcopy(skeleton)
    for name in embeddings:
        skeleton.set_submodule(name, Int8Embedding(tensors.pop(f"{name}.codes"), tensors.pop(f"{name}.scales")))
    names = [key.removesuffix(".weight_int8") for key in tensors if key.endswith(".weight_int8")]

    def make(name: str, linear: nn.Linear) -> nn.Module:
        scales = tensors.pop(f"{name}.weight_scale").double()
        codes = tensors.pop(f"{name}.weight_int8")
        with _quantized_tensors_allowed():
            if scales.numel() == 1:
                q_weight = torch._make_per_tensor_quantized_tensor(codes, float(scales), 0)
            else:
                q_weight = torch._make_per_channel_quantized_tensor(codes, scales, torch.zeros_like(scales).long(), 0)
        return DynamicInt8Linear(q_weight, tensors.pop(f"{name}.bias", None), name in reduce_range,
                                 tensors.get(f"{name}.inverse_smooth"))

    model = replace_linears(skeleton, make, names)
    model.load_state_dict({**tensors, **{f"{n}.{b}": t for n in embeddings
                                          for b, t in model.get_submodule(n).state_dict().items()}}, strict=True)
    return model.eval()
