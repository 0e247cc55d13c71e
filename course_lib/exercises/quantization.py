"""Checkers for notebook 02 (quantization): scale and zero-point, fake quantization, per-channel scales,
integer accumulation, requantization, a straight-through estimator, PT2E int8 of the course CNN, and an int8
MiniLM that keeps its embeddings."""

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


def _requantize_case(per_channel: bool) -> tuple[torch.Tensor, float, float | torch.Tensor, float, int]:
    """int32 accumulators and scales whose outputs cross both ends of [0, 255] and fall between codes."""
    generator = torch.Generator().manual_seed(25 + per_channel)
    acc = torch.randint(-200_000, 200_000, (12, 6), generator=generator, dtype=torch.int32)
    w_scale = torch.logspace(-3.3, -2.3, 6) if per_channel else 0.0021
    return acc, 0.031, w_scale, 0.07, 61


def _requantized(acc: torch.Tensor, multiplier: torch.Tensor | float, y_zero_point: int, rounding: Callable,
                 clamp: bool = True) -> torch.Tensor:
    codes = rounding(acc.to(torch.float64) * multiplier) + y_zero_point
    return codes.clamp(0, 255) if clamp else codes


def check_requantize(requantize: Callable[..., torch.Tensor]) -> None:
    """Exercise 2.5: ``requantize(acc, x_scale, w_scale, y_scale, y_zero_point)``: uint8 codes
    ``clamp(round(acc * x_scale * w_scale / y_scale) + y_zero_point, 0, 255)``, ``w_scale`` per tensor or per output
    channel (the last dimension of ``acc``)."""
    for per_channel in (False, True):
        acc, x_scale, w_scale, y_scale, y_zero_point = _requantize_case(per_channel)
        scales = torch.as_tensor(w_scale, dtype=torch.float64)
        m = x_scale * scales / y_scale
        got = call_answer("2.5", requantize, acc.clone(), x_scale, w_scale, y_scale, y_zero_point,
                          hint="w_scale is a float or a tensor of one scale per output channel, the last dimension "
                               "of acc: plain broadcasting (acc * w_scale) lines them up.")
        if not isinstance(got, torch.Tensor):
            fail("2.5", "a torch.Tensor of codes", type(got).__name__, "return the codes as a tensor.")
        if got.shape != acc.shape:
            fail("2.5", f"shape {tuple(acc.shape)}", str(tuple(got.shape)), "requantize elementwise; do not reduce.")
        if got.is_floating_point():
            fail("2.5", "integer codes (torch.uint8)", str(got.dtype),
                 "the next layer takes 8-bit codes: round, add the zero-point, clamp, then .to(torch.uint8).")
        real = acc.to(torch.float64) * m
        near_tie = ((real - real.floor()) - 0.5).abs() < 1e-4  # float32 vs float64 may round these either way
        expected = _requantized(acc, m, y_zero_point, torch.round)
        got64 = got.to(torch.float64)
        if bool(((got64 == expected) | (near_tie & ((got64 - expected).abs() <= 1))).all()):
            continue
        case = f"{'per-channel' if per_channel else 'per-tensor'} w_scale"
        typical = {
            "without the zero-point": _requantized(acc, m, 0, torch.round),
            "with M inverted": _requantized(acc, 1 / m, y_zero_point, torch.round),
            "unclamped": _requantized(acc, m, y_zero_point, torch.round, clamp=False),
            "wrapped": _requantized(acc, m, y_zero_point, torch.round, clamp=False).remainder(256),
            "truncated": _requantized(acc, m, y_zero_point, torch.trunc),
            "floored": _requantized(acc, m, y_zero_point, torch.floor),
            "signed": _requantized(acc, m, y_zero_point, torch.round, clamp=False).clamp(-128, 127),
        }
        hints = {
            "without the zero-point": "add the output zero-point after rounding: code 0 is not the value 0.0.",
            "with M inverted": "the multiplier is M = x_scale * w_scale / y_scale: the accumulator counts steps of "
                               "x_scale * w_scale, the output counts steps of y_scale. Multiply by M, do not divide.",
            "unclamped": "codes must saturate: clamp to [0, 255] (uint8) before converting.",
            "wrapped": "converting to uint8 without clamping wraps around (256 becomes 0): clamp to [0, 255] first.",
            "truncated": "round to the nearest code (torch.round); converting to an integer type truncates "
                         "toward zero.",
            "floored": "round to the nearest code (torch.round), not down.",
            "signed": "the outputs are activations on the affine uint8 grid, like x_q in exercise 2.4: clamp to "
                      "[0, 255], not [-128, 127].",
        }
        mistake = next((k for k, v in typical.items() if (got64 == v).float().mean() > 0.98), "")
        if not mistake and (got64.min() < 0 or got64.max() > 255):
            mistake = "unclamped"
        if mistake:
            hint = hints[mistake]
        elif per_channel:  # right with one scale (the first case passed), wrong with one per channel
            hint = ("w_scale holds one scale per output channel: use each channel's own scale (acc * w_scale "
                    "broadcasts over the last dimension of acc), not one scale for all.")
        else:
            hint = "q_y = clamp(round(acc * M) + y_zero_point, 0, 255) with M = x_scale * w_scale / y_scale."
        worst = ((got64 - expected).abs()).flatten().argmax()
        fail("2.5", f"code {int(expected.flatten()[worst])} for acc = {int(acc.flatten()[worst]):,} ({case})",
             f"{int(got64.flatten()[worst])}", hint)
    passed("2.5", "rounding, zero-point, saturation at 0 and 255, and per-channel scales are right")


def check_ste(fake_quant_ste: type) -> None:
    """Exercise 2.6: ``FakeQuantSTE``, a ``torch.autograd.Function`` whose ``apply(x, scale, zero_point, bits)``
    fake-quantizes on [0, 2^b - 1] and whose backward passes the gradient where the code was not clamped, 0 elsewhere.
    """
    if not (isinstance(fake_quant_ste, type) and issubclass(fake_quant_ste, torch.autograd.Function)):
        fail("2.6", "a subclass of torch.autograd.Function", repr(fake_quant_ste),
             "class FakeQuantSTE(torch.autograd.Function): with @staticmethod forward(ctx, ...) and "
             "backward(ctx, ...).")
    generator = torch.Generator().manual_seed(26)
    for scale, zero_point, bits in [(0.05, 128, 8), (0.3, 3, 4)]:
        # codes from -0.3 to 1.3 times the top code: about a fifth of the values beyond each end of the grid
        x = (torch.rand(2000, generator=generator) * 1.6 - 0.3) * (2 ** bits - 1) * scale - zero_point * scale
        upstream = torch.randn(2000, generator=generator)
        leaf = x.clone().requires_grad_(True)
        out = call_answer("2.6", fake_quant_ste.apply, leaf, scale, zero_point, bits,
                          hint="forward(ctx, x, scale, zero_point, bits) returns a tensor; backward(ctx, grad_output) "
                               "returns one gradient per forward input: (grad_x, None, None, None).")
        reference = x.clone().requires_grad_(True)
        expected_out = torch.fake_quantize_per_tensor_affine(reference, scale, zero_point, 0, 2 ** bits - 1)
        case = f"scale {scale}, zero-point {zero_point}, {bits} bits"
        steps = x / scale  # torch multiplies by 1 / scale: near a tie between two codes either rounding is right
        tie = (steps - steps.floor() - 0.5).abs() < 1e-3
        if not isinstance(out, torch.Tensor) or out.shape != x.shape or \
                not torch.allclose(out.detach()[~tie], expected_out.detach()[~tie], atol=1e-5):
            fail("2.6", f"the forward pass to fake-quantize x ({case})", "different values",
                 "forward is your fake_quant from exercise 2.2: round, shift by the zero-point, clamp, dequantize.")
        if not out.requires_grad:
            fail("2.6", "an output connected to x's gradient", "an output without grad_fn",
                 "return the result of forward as a tensor; .apply(...) connects it to backward.")
        expected_out.backward(upstream)
        expected = reference.grad
        try:
            out.backward(upstream)
        except NotImplementedError:
            raise
        except Exception as error:
            raise ExerciseError(f"Exercise 2.6: the backward pass raised {type(error).__name__}: {error}\nHint: "
                                "return one gradient per forward input, (grad_x, None, None, None), and save what "
                                "backward needs with ctx.save_for_backward(...) in forward.") from error
        got = leaf.grad
        codes = x / scale + zero_point  # where rounding the edge of the grid is ambiguous, accept either answer
        ambiguous = ((codes - (2 ** bits - 1)).abs() <= 0.5) | (codes.abs() <= 0.5)
        if got is not None and got.shape == x.shape and torch.allclose(got[~ambiguous], expected[~ambiguous],
                                                                        atol=1e-6):
            continue
        inside = (expected != 0) & ~ambiguous
        got = torch.zeros_like(x) if got is None else got
        if torch.allclose(got[inside], torch.zeros_like(x)[inside]):
            hint = "the gradient is zero everywhere: that is the true derivative of round. The straight-through " \
                   "estimator pretends rounding is the identity: pass grad_output through where x was not clipped."
        elif torch.allclose(got[~ambiguous], upstream[~ambiguous], atol=1e-6):
            hint = "the gradient also flows where x was clipped: there the output is constant, so mask it to 0 " \
                   "(keep a mask of the codes inside [0, 2^b - 1] from forward)."
        elif torch.allclose(got[inside], upstream[inside] * scale, atol=1e-6) or \
                torch.allclose(got[inside], upstream[inside] / scale, atol=1e-4):
            hint = "the gradient is scaled: under the STE, d/dx of (round(x / s) + z - z) * s is 1, the 1/s and s " \
                   "cancel. Pass grad_output unchanged inside the range."
        elif torch.allclose(got[~ambiguous], inside.float()[~ambiguous], atol=1e-6):
            hint = "multiply the incoming gradient by the mask: grad_output * inside, not the mask alone."
        else:
            hint = "inside the range the gradient is grad_output, outside it is 0."
        worst = (got - expected).abs().masked_fill(ambiguous, 0).argmax()  # (+ 0.0 below prints -0.0 as 0.0)
        fail("2.6", f"gradient {expected[worst].item() + 0.0:.4f} at x = {x[worst].item():.4f} ({case}, incoming "
                    f"gradient {upstream[worst].item():.4f})", f"{got[worst].item():.4f}", hint)
    passed("2.6", "forward fake-quantizes; backward passes the gradient inside the range and blocks it outside")


def _quantize_op_count(module: nn.Module) -> int:
    graph = getattr(module, "graph", None)
    if graph is None:
        return 0
    return sum(1 for node in graph.nodes if "quantize_per" in str(node.target))


def check_pt2e_model(converted: object, fp32_model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> None:
    """Exercise 2.7: a converted PT2E model: int8 quantize ops in its graph, accuracy close to fp32."""
    if not isinstance(converted, torch.fx.GraphModule):
        fail("2.7", "the torch.fx.GraphModule returned by convert_pt2e", type(converted).__name__,
             "export the model (torch.export.export(...).module()), then prepare_pt2e, calibrate, convert_pt2e.")
    if any("observer" in type(m).__name__.lower() for m in converted.modules()):
        fail("2.7", "a converted model", "a model that still holds observers",
             "after calibrating, call convert_pt2e(prepared): it replaces the observers by quantize/dequantize ops.")
    count = _quantize_op_count(converted)
    if count == 0:
        fail("2.7", "quantize/dequantize ops in the graph", "none",
             "prepare_pt2e(exported, quantizer) with the X86InductorQuantizer set to its default global config.")
    with torch.no_grad():
        try:
            accuracy = (converted(images).argmax(1) == labels).float().mean().item()
        except Exception as error:  # typically a batch size fixed at export
            raise ExerciseError(f"Exercise 2.7: running the converted model on {len(images)} images raised "
                                f"{type(error).__name__}: {str(error)[:200]}\nHint: export with a dynamic batch "
                                "dimension (dynamic_shapes=({0: torch.export.Dim('batch', ...)},)) so that any batch "
                                "size works.") from error
        reference = (fp32_model(images).argmax(1) == labels).float().mean().item()
    if accuracy < reference - 0.02:
        fail("2.7", f"accuracy within 2 points of fp32 ({reference:.2%}) on {len(images)} images",
             f"{accuracy:.2%}", "export the model in eval mode, then run a few hundred real training images through "
                                "the prepared model before convert_pt2e: observers that saw no real data give "
                                "useless scales.")
    passed("2.7", f"{count} quantize/dequantize ops in the graph, {accuracy:.2%} vs fp32 {reference:.2%} on {len(images)} images")


def _is_int8_linear(module: nn.Module) -> bool:
    """The course's DynamicInt8Linear or PyTorch's own dynamic int8 Linear."""
    return isinstance(module, DynamicInt8Linear) or (
        type(module).__module__.startswith("torch.ao.nn.quantized.dynamic") and type(module).__name__ == "Linear")


def check_int8_minilm(model: object, fp32_model: nn.Module, reference_embeddings: torch.Tensor,
                      embed: Callable[[nn.Module], torch.Tensor], target: float = 0.99) -> float:
    """Exercise 2.8: every Linear of the fp32 MiniLM is an int8 Linear in ``model`` (same name, same shape), and the
    mean cosine to the fp32 embeddings reaches ``target``."""
    if not isinstance(model, nn.Module):
        fail("2.8", "a MiniLM model (nn.Module)", type(model).__name__, "return the quantized copy of the model.")
    linears = {n: m for n, m in fp32_model.named_modules() if isinstance(m, nn.Linear)}
    modules = dict(model.named_modules())
    not_int8 = {n: type(modules[n]).__name__ if n in modules else "missing" for n in linears
                if not _is_int8_linear(modules.get(n, nn.Identity()))}
    if not_int8:
        kinds = sorted(set(not_int8.values()))
        name, kind = next(iter(not_int8.items()))
        if "Linear" in kinds:
            hint = "quantize every Linear; make the sensitive ones accurate instead of leaving them in float."
        elif "SimulatedQuantLinear" in kinds:
            hint = "SimulatedQuantLinear imitates int8 in float (no int8 kernel runs): use Q.quantize_dynamic."
        else:
            hint = ("each Linear must be replaced by an int8 Linear (Q.quantize_dynamic does it), not removed or "
                    "wrapped in another float layer.")
        fail("2.8", f"all {len(linears)} Linear layers in int8",
             f"{len(not_int8)} not int8 (e.g. {name}: {kind}; kinds seen: {', '.join(kinds)})", hint)
    wrong_shape = [n for n, linear in linears.items()
                   if (modules[n].in_features, modules[n].out_features) != (linear.in_features, linear.out_features)]
    if wrong_shape:
        fail("2.8", "int8 layers of the same shapes as the fp32 ones", f"other shapes at {wrong_shape[0]}",
             "quantize a copy of this MiniLM (Q.quantize_dynamic(minilm, ...)), not another model.")
    cosine = nn.functional.cosine_similarity(embed(model), reference_embeddings).mean().item()
    if cosine < target:
        fail("2.8", f"mean cosine to fp32 of at least {target}", f"{cosine:.4f}",
             "the simulation showed the culprits: 7-bit activations (reduce_range=True) and per-tensor weight "
             "scales; SmoothQuant (smooth_alpha with absmax from linear_input_absmax) tames the outlier channels.")
    passed("2.8", f"all {len(linears)} Linear layers int8, mean cosine to fp32 {cosine:.4f}")
    return cosine
