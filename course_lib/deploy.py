"""Deployment runtimes next to the course's PyTorch path (notebook 08): ONNX export, ONNX Runtime sessions (fp32
and its own int8 quantization), an AOTInductor package, and a profile of where a call's time goes.

ONNX Runtime's worker threads spin after each call by default, waiting for the next one, and steal the CPU from
whatever runs next: :func:`ort_model` switches spinning off so that alternating-round timings stay fair.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from torch import nn

from course_lib.io import atomic_path

_TOOL_LOGGERS = ("", "torch.onnx", "torch.onnx._internal.exporter._registration", "onnxscript", "onnx_ir")


@contextmanager
def _quiet_tools():
    """The exporter's and quantizer's notes (missing torchvision ops, deprecated pytree calls inside torch, shared
    batch-axis names, "consider pre-processing" from ONNX Runtime's quantizer on the root logger) are not the
    learner's business: silence them while those tools run."""
    levels = {name: logging.getLogger(name).level for name in _TOOL_LOGGERS}
    for name in _TOOL_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.filterwarnings("ignore", message=".*axis name.*will not be used")
            yield
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


def export_onnx(model: nn.Module, example: Sequence[torch.Tensor], path: str | os.PathLike,
                input_names: Sequence[str]) -> int:
    """Export ``model`` (eval mode) to an ONNX file with a dynamic batch dimension (``torch.onnx.export`` with
    the dynamo exporter); written atomically; returns the file's bytes."""
    if len(input_names) != len(example):
        raise ValueError(f"give one input name per example input: {len(input_names)} names, {len(example)} inputs")
    batch = torch.export.Dim("batch", min=1)
    dynamic = tuple({0: batch} for _ in example)
    path = Path(path)
    with _quiet_tools(), torch.no_grad():
        program = torch.onnx.export(model.eval(), tuple(example), dynamo=True, dynamic_shapes=dynamic,
                                    input_names=list(input_names), verbose=False)
        with atomic_path(path) as tmp:
            program.save(str(tmp))
    return path.stat().st_size


def _ort():
    import onnxruntime  # noqa: PLC0415 (only deployment needs it)

    onnxruntime.set_default_logger_severity(3)
    return onnxruntime


def quantize_onnx_static(fp32_path: str | os.PathLike, int8_path: str | os.PathLike,
                         calibration: Sequence[dict[str, np.ndarray]]) -> int:
    """ONNX Runtime's static int8 (QDQ format, per-channel int8 weights, uint8 activations calibrated with min-max
    on ``calibration`` batches: ``{input name: array}``); written atomically; returns the file's bytes."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static  # noqa: PLC0415
    from onnxruntime.quantization.shape_inference import quant_pre_process  # noqa: PLC0415

    if not calibration:
        raise ValueError("static quantization needs at least one calibration batch")

    class _Batches(CalibrationDataReader):
        def __init__(self) -> None:
            self._batches = iter(calibration)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._batches, None)

    _ort()
    int8_path = Path(int8_path)
    with atomic_path(int8_path) as tmp:
        prepared = Path(str(tmp) + ".pre.onnx")
        try:
            with _quiet_tools():
                quant_pre_process(str(fp32_path), str(prepared))
                quantize_static(str(prepared), str(tmp), _Batches(), quant_format=QuantFormat.QDQ, per_channel=True,
                                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
        finally:
            prepared.unlink(missing_ok=True)
    return int8_path.stat().st_size


def quantize_onnx_dynamic(fp32_path: str | os.PathLike, int8_path: str | os.PathLike,
                          op_types: Sequence[str] = ("MatMul", "Gemm", "Gather")) -> int:
    """ONNX Runtime's dynamic int8 (weights int8 per tensor, activations quantized on the fly; ``Gather`` also
    stores embedding tables as int8); written atomically; returns the file's bytes."""
    from onnxruntime.quantization import QuantType, quantize_dynamic  # noqa: PLC0415

    _ort()
    int8_path = Path(int8_path)
    with atomic_path(int8_path) as tmp, _quiet_tools():
        quantize_dynamic(str(fp32_path), str(tmp), weight_type=QuantType.QInt8, op_types_to_quantize=list(op_types))
    return int8_path.stat().st_size


class InferenceOnly:
    """Called like a PyTorch model in eval mode, which is the only mode it has: ``course_lib.train.evaluate`` and
    ``compare_latency`` can use it like a module."""

    training = False

    def train(self, mode: bool = True) -> InferenceOnly:
        """Like ``nn.Module.train``: only ``mode=False`` is possible."""
        if mode:
            raise NotImplementedError(f"a {type(self).__name__} only infers: it cannot be trained")
        return self

    def eval(self) -> InferenceOnly:
        """Like ``nn.Module.eval``: always in inference mode already."""
        return self


class OrtModel(InferenceOnly):
    """An ONNX Runtime session called like a PyTorch model: tensors in, a tensor out (CPU, fixed threads, no
    spinning)."""

    def __init__(self, path: str | os.PathLike, threads: int | None = None) -> None:
        ort = _ort()
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        """Run the session on CPU copies of ``inputs`` (in the model's input order); the first output."""
        if len(inputs) != len(self.input_names):
            raise ValueError(f"the model takes {len(self.input_names)} inputs ({', '.join(self.input_names)}), "
                             f"got {len(inputs)}")
        feed = {name: x.detach().cpu().numpy() for name, x in zip(self.input_names, inputs)}
        return torch.from_numpy(self.session.run(None, feed)[0])


class AotiModel(InferenceOnly):
    """A loaded AOTInductor package called like a PyTorch model."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.package = torch._inductor.aoti_load_package(str(path))

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        """Run the compiled package; the inputs must have the shapes it was compiled for."""
        return self.package(*inputs)


def aoti_package(model: nn.Module, example: Sequence[torch.Tensor], path: str | os.PathLike) -> AotiModel:
    """Compile ``model`` ahead of time for the example's shapes with AOTInductor (``torch.export`` + Inductor,
    weights frozen into the package) and load it: one C++ call per batch, no Python guards. Written atomically.
    A PT2E int8 graph (already in eval mode, where ``.eval()`` is refused) is exported as it is."""
    path = Path(path)
    if not isinstance(model, torch.fx.GraphModule):
        model.eval()
    with torch.no_grad():
        program = torch.export.export(model, tuple(example))
        with atomic_path(path, suffix=".pt2") as tmp:
            torch._inductor.aoti_compile_and_package(program, package_path=str(tmp),
                                                     inductor_configs={"freezing": True})
    return AotiModel(path)


@contextmanager
def _native_stderr_silenced():
    """The profiler's C++ start/stop notes go straight to file descriptor 2: park it on /dev/null meanwhile."""
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def profile_ops(fn: Callable, inputs: Sequence[torch.Tensor], calls: int = 50, top: int = 8
                ) -> list[tuple[str, float, int]]:
    """Where one call's time goes: the ``top`` operators by self CPU time, as (name, microseconds per call, calls
    per call), from ``torch.profiler`` over ``calls`` calls after two warm-up calls."""
    from torch.profiler import ProfilerActivity, profile  # noqa: PLC0415

    with torch.inference_mode():
        for _ in range(2):
            fn(*inputs)
        with _native_stderr_silenced(), profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(calls):
                fn(*inputs)
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)[:top]
    return [(e.key, e.self_cpu_time_total / calls, round(e.count / calls)) for e in events]
