"""Checkers for notebook 02 (quantization): scale and zero-point, fake quantization, per-channel scales,
integer accumulation, PT2E int8 of the course CNN, and an int8 MiniLM that keeps its embeddings."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from course_lib.exercises import ExerciseError, call_answer, diagnose, fail, passed, require_number
from course_lib.quantize import DynamicInt8Linear, qparams_from_range


def _as_tensor(exercise: str, name: str, value: object, dtype_kind: str = "float") -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        fail(exercise, f"{name} as a torch.Tensor", type(value).__name__, "build it with torch operations.")
    if dtype_kind == "float" and not value.is_floating_point():
        fail(exercise, f"{name} as floats", str(value.dtype), "dequantized values are floats: convert with .float().")
    return value


def check_affine_qparams(affine_qparams: Callable[[float, float, int], tuple[float, int]]) -> None:
    """Exercise 2.1: ``affine_qparams(low, high, bits) -> (scale, zero_point)`` for the unsigned grid [0, 2^b - 1]."""
    for low, high, bits in [(-1.0, 3.0, 8), (-2.0, 2.5, 4), (0.0, 6.0, 8), (0.5, 3.0, 8), (-4.0, -1.0, 8)]:
        answer = call_answer("2.1", affine_qparams, low, high, bits)
        if not isinstance(answer, tuple) or len(answer) != 2:
            fail("2.1", "a tuple (scale, zero_point)", repr(answer), "return scale, zero_point")
        scale = require_number("2.1", "scale", answer[0])
        zero_point = require_number("2.1", "zero_point", answer[1])
        right = qparams_from_range(torch.tensor(low), torch.tensor(high), bits, symmetric=False)
        expected_scale, expected_zp = right.scale.item(), int(right.zero_point.item())
        case = f"affine_qparams({low}, {high}, {bits})"
        if not math.isclose(scale, expected_scale, rel_tol=1e-5):
            hint = diagnose(scale, {
                (high - low) / 2 ** bits: "a b-bit grid has 2^b - 1 steps between its 2^b levels.",
                (high - low) / (2 ** (bits - 1) - 1): "the affine grid is unsigned: 0 ... 2^b - 1.",
            }, rel_tol=1e-5, default="the range must contain 0 (widen it if needed); the scale is the width of one of "
                                     "the grid's steps.")
            fail("2.1", f"scale {expected_scale:.6g} for {case}", f"{scale:.6g}", hint)
        if isinstance(zero_point, float) and zero_point == expected_zp:
            fail("2.1", f"zero_point {expected_zp} as a Python int", repr(zero_point),
                 "integer codes are ints: return int(...) of the rounded value.")
        if not isinstance(zero_point, int) or zero_point != expected_zp:
            hint = diagnose(float(zero_point), {
                low / expected_scale: "the zero-point has the opposite sign: it is the code that 0.0 maps to.",
                float(round(low / expected_scale)): "the zero-point has the opposite sign: it is the code that 0.0 "
                                                    "maps to.",
                -low / expected_scale: "the zero-point must be an integer: round it.",
            }, rel_tol=1e-5, default="the zero-point is the integer code that 0.0 maps to (low maps to code 0).")
            fail("2.1", f"zero_point {expected_zp} (an int) for {case}", repr(zero_point), hint)
    passed("2.1", "scale and zero-point are right, including ranges that do not contain 0")


def check_fake_quant(fake_quant: Callable[[torch.Tensor, float, int, int], torch.Tensor]) -> None:
    """Exercise 2.2: ``fake_quant(x, scale, zero_point, bits)``: quantize to [0, 2^b - 1] and dequantize."""
    generator = torch.Generator().manual_seed(2)
    x = torch.randn(1000, generator=generator) * 3
    for scale, zero_point, bits in [(0.05, 128, 8), (0.4, 7, 4), (0.02, 0, 8)]:
        got = _as_tensor("2.2", "the result", call_answer("2.2", fake_quant, x.clone(), scale, zero_point, bits))
        if got.shape != x.shape:
            fail("2.2", f"shape {tuple(x.shape)}", str(tuple(got.shape)), "work elementwise; do not reduce.")
        expected = torch.fake_quantize_per_tensor_affine(x, scale, zero_point, 0, 2 ** bits - 1)
        if torch.allclose(got, expected, atol=1e-6):
            continue
        q = torch.round(x / scale) + zero_point
        typical = {
            "unclamped": (q - zero_point) * scale,
            "floored": (torch.clamp(torch.floor(x / scale) + zero_point, 0, 2 ** bits - 1) - zero_point) * scale,
            "no zero-point on the way back": torch.clamp(q, 0, 2 ** bits - 1) * scale,
            "codes": torch.clamp(q, 0, 2 ** bits - 1),
        }
        hints = {
            "unclamped": "values outside the range must saturate: clamp the codes to [0, 2^b - 1] before "
                         "dequantizing (this is the clipping error).",
            "floored": "round to the nearest code (torch.round), not down: flooring doubles the error.",
            "no zero-point on the way back": "dequantize subtracts the zero-point: (q - zero_point) * scale.",
            "codes": "these are the integer codes: map them back to floats (dequantize).",
        }
        hint = next((hints[k] for k, v in typical.items() if torch.allclose(got, v, atol=1e-6)),
                    "follow the two formulas above the exercise: quantize (round, shift, clamp), then dequantize.")
        worst = (got - expected).abs().argmax()
        fail("2.2", f"{expected[worst].item():.4f} for x = {x[worst].item():.4f} (scale {scale}, zero-point "
                    f"{zero_point}, {bits} bits)", f"{got[worst].item():.4f}", hint)
    passed("2.2", "fake_quant matches torch.fake_quantize_per_tensor_affine, rounding and clipping included")


def check_per_channel_scales(per_channel_scales: Callable[[torch.Tensor, int], torch.Tensor]) -> None:
    """Exercise 2.3: symmetric per-output-channel scales ``max|w_c| / (2^(b-1) - 1)`` for a conv or linear weight."""
    generator = torch.Generator().manual_seed(3)
    for shape, bits in [((16, 8, 3, 3), 8), ((10, 20), 4), ((4, 1, 5, 5), 3)]:
        w = torch.randn(shape, generator=generator) * torch.logspace(-2, 0, shape[0]).reshape(-1, *[1] * (len(shape) - 1))
        got = _as_tensor("2.3", "the scales", call_answer("2.3", per_channel_scales, w.clone(), bits))
        absmax = w.abs().flatten(1).amax(dim=1)
        expected = absmax / (2 ** (bits - 1) - 1)
        if got.shape == expected.shape and torch.allclose(got, expected, rtol=1e-5):
            continue
        if got.numel() == 1:
            hint = "one scale for the whole tensor is per-tensor: compute one scale per output channel (dim 0)."
        elif got.shape == (shape[1],):
            hint = "dim 1 is the input channels: scales go per output channel, dim 0."
        elif got.shape != expected.shape:
            hint = f"return one scale per output channel: a tensor of shape ({shape[0]},)."
        elif torch.allclose(got, absmax / 2 ** (bits - 1), rtol=1e-5):
            hint = "the symmetric grid ends at 2^(b-1) - 1 (127 for 8 bits), not 2^(b-1)."
        elif torch.allclose(got, w.flatten(1).amax(dim=1) / (2 ** (bits - 1) - 1), rtol=1e-5):
            hint = "use the largest magnitude |w|, not the largest value: negative weights count too."
        else:
            hint = "each channel's scale maps its largest |w| to the top code 2^(b-1) - 1."
        fail("2.3", f"scales of shape ({shape[0]},) for a weight of shape {shape} at {bits} bits",
             f"shape {tuple(got.shape)}, first values {got.flatten()[:3].tolist()}", hint)
    passed("2.3", "per-channel scales are right for conv and linear weights")


def check_accumulate(accumulate: Callable[[torch.Tensor, int, torch.Tensor], torch.Tensor]) -> None:
    """Exercise 2.4: ``accumulate(x_q, x_zero_point, w_q)``: integer ``(x_q - z) @ w_q.T`` without overflow."""
    generator = torch.Generator().manual_seed(4)
    x_q = torch.randint(0, 256, (8, 300), generator=generator, dtype=torch.uint8)
    w_q = torch.randint(-127, 128, (5, 300), generator=generator, dtype=torch.int8)
    zero_point = 97
    got = call_answer("2.4", accumulate, x_q.clone(), zero_point, w_q.clone(),
                      hint="convert the codes to torch.int32 before subtracting and multiplying.")
    if not isinstance(got, torch.Tensor):
        fail("2.4", "a torch.Tensor", type(got).__name__, "return the matrix product as a tensor.")
    expected = (x_q.to(torch.int64) - zero_point) @ w_q.to(torch.int64).T
    if got.is_floating_point():
        fail("2.4", "an integer tensor (int32 accumulators)", str(got.dtype),
             "int8 hardware multiplies integers and adds them into int32: keep everything in integers (.int()).")
    if got.shape != expected.shape:
        fail("2.4", f"shape {tuple(expected.shape)} (batch x outputs)", str(tuple(got.shape)),
             "multiply by the transposed weight: (x_q - z) @ w_q.T.")
    if torch.equal(got.to(torch.int64), expected):
        passed("2.4", f"{tuple(expected.shape)} int32 accumulators, largest magnitude {expected.abs().max().item():,}")
        return
    if torch.equal(got.to(torch.int64), x_q.to(torch.int64) @ w_q.to(torch.int64).T):
        hint = "subtract the activation zero-point first: x_q encodes x = (x_q - z) * scale."
    elif got.dtype in (torch.uint8, torch.int8, torch.int16):
        hint = f"{got.dtype} overflows: one sum here reaches {expected.abs().max().item():,}; accumulate in int32."
    else:
        hint = "convert x_q and w_q to torch.int32, subtract the zero-point from x_q, then x @ w.T."
    fail("2.4", "the exact integer products", f"a {got.dtype} tensor with different values", hint)


def _quantize_op_count(module: nn.Module) -> int:
    graph = getattr(module, "graph", None)
    if graph is None:
        return 0
    return sum(1 for node in graph.nodes if "quantize_per" in str(node.target))


def check_pt2e_model(converted: object, fp32_model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> None:
    """Exercise 2.5: a converted PT2E model: int8 quantize ops in its graph, accuracy close to fp32."""
    if not isinstance(converted, torch.fx.GraphModule):
        fail("2.5", "the torch.fx.GraphModule returned by convert_pt2e", type(converted).__name__,
             "export the model (torch.export.export(...).module()), then prepare_pt2e, calibrate, convert_pt2e.")
    if any("observer" in type(m).__name__.lower() for m in converted.modules()):
        fail("2.5", "a converted model", "a model that still holds observers",
             "after calibrating, call convert_pt2e(prepared): it replaces the observers by quantize/dequantize ops.")
    count = _quantize_op_count(converted)
    if count == 0:
        fail("2.5", "quantize/dequantize ops in the graph", "none",
             "prepare_pt2e(exported, quantizer) with the X86InductorQuantizer set to its default global config.")
    with torch.no_grad():
        try:
            accuracy = (converted(images).argmax(1) == labels).float().mean().item()
        except Exception as error:  # typically a batch size fixed at export
            raise ExerciseError(f"Exercise 2.5: running the converted model on {len(images)} images raised "
                                f"{type(error).__name__}: {str(error)[:200]}\nHint: export with a dynamic batch "
                                "dimension (dynamic_shapes=({0: torch.export.Dim('batch', ...)},)) so that any batch "
                                "size works.") from error
        reference = (fp32_model(images).argmax(1) == labels).float().mean().item()
    if accuracy < reference - 0.02:
        fail("2.5", f"accuracy within 2 points of fp32 ({reference:.2%}) on {len(images)} test images",
             f"{accuracy:.2%}", "export the model in eval mode, then run a few hundred real training images through "
                                "the prepared model before convert_pt2e: observers that saw no real data give "
                                "useless scales.")
    passed("2.5", f"{count} quantize/dequantize ops in the graph, {accuracy:.2%} vs fp32 {reference:.2%} on {len(images)} images")


def check_int8_minilm(model: object, reference_embeddings: torch.Tensor,
                      embed: Callable[[nn.Module], torch.Tensor], target: float = 0.99) -> float:
    """Exercise 2.6: every Linear of MiniLM runs in int8 and the mean cosine to fp32 embeddings reaches ``target``."""
    if not isinstance(model, nn.Module):
        fail("2.6", "a MiniLM model (nn.Module)", type(model).__name__, "return the quantized copy of the model.")
    float_linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    int8_count = sum(isinstance(m, DynamicInt8Linear) or type(m).__module__.startswith("torch.ao.nn.quantized.dynamic")
                     and type(m).__name__ == "Linear" for m in model.modules())
    if float_linears:
        fail("2.6", "all 36 Linear layers in int8", f"{len(float_linears)} still float (e.g. {float_linears[0]})",
             "quantize every Linear; make the sensitive ones accurate instead of leaving them in float.")
    if int8_count == 0:
        fail("2.6", "int8 Linear layers", "none", "use quantize_dynamic from course_lib.quantize.")
    cosine = nn.functional.cosine_similarity(embed(model), reference_embeddings).mean().item()
    if cosine < target:
        fail("2.6", f"mean cosine to fp32 of at least {target}", f"{cosine:.4f}",
             "the simulation showed the culprits: 7-bit activations (reduce_range=True) and per-tensor weight "
             "scales; SmoothQuant (smooth_alpha with absmax from linear_input_absmax) tames the outlier channels.")
    passed("2.6", f"all {int8_count} Linear layers int8, mean cosine to fp32 {cosine:.4f}")
    return cosine

