"""Checkers for notebook 01 (data flow): MACs, arithmetic intensity, memory-bound or not, Amdahl's law."""

from __future__ import annotations

import math
from collections.abc import Callable

from course_lib.exercises import call_answer, check_number, diagnose, fail, passed, require_number

# features.3 of the course CNN: 3x3 conv, 32 -> 32 channels, padding 1, on 28x28 maps, batch 1.
CONV_MACS = 28 * 28 * 32 * 32 * 3 * 3


def check_conv_macs(answer: object) -> None:
    """Exercise 1.1: MACs of the course CNN's second convolution for one image."""
    check_number("1.1", "the number of MACs", answer, CONV_MACS, mistakes={
        2 * CONV_MACS: "that is FLOPs (2 per MAC): count multiply-accumulates.",
        32 * 32 * 3 * 3: "that is the number of weights: each weight is used at every output pixel.",
        28 * 28 * 32 * 32: "you left out the 3x3 kernel: each output sums over in_channels x 3 x 3 products.",
        26 * 26 * 32 * 32 * 3 * 3: "with padding=1 the output stays 28x28 (not 26x26).",
        28 * 28 * 32 * 3 * 3: "each of the 32 output channels sums over all 32 input channels.",
    }, hint="MACs = output pixels (28 x 28) x output channels x input channels x kernel height x kernel width.")


def reference_linear_intensity(n_in: int, n_out: int, batch: int) -> float:
    """FLOPs per byte of an fp32 ``Linear(n_in, n_out)`` on ``batch`` inputs (weights + bias + input + output)."""
    flops = 2 * batch * n_in * n_out
    moved = 4 * (n_in * n_out + n_out + batch * n_in + batch * n_out)
    return flops / moved


def check_linear_intensity(linear_intensity: Callable[[int, int, int], float]) -> None:
    """Exercise 1.2: ``linear_intensity(n_in, n_out, batch)`` in FLOPs per byte."""
    for args in [(784, 300, 1), (784, 300, 64), (384, 1536, 32), (10, 10, 1000)]:
        got = require_number("1.2", "the intensity", call_answer("1.2", linear_intensity, *args))
        expected = reference_linear_intensity(*args)
        if math.isclose(got, expected, rel_tol=1e-6):
            continue
        n_in, n_out, batch = args
        hint = diagnose(got, {
            expected / 2: "that is MACs per byte: one MAC is 2 FLOPs.",
            expected / 4: "that counts 1 byte per number: fp32 takes 4 bytes.",
            expected * 4: "that divides by the number of values moved, not their bytes (4 per fp32 value).",
            2 * batch * n_in * n_out / (4 * (n_in * n_out + n_out)):
                "you counted only the weights: the input and output activations move too.",
        }, default="FLOPs = 2 x batch x n_in x n_out; bytes = 4 x (weights + biases + batch x n_in inputs "
                   "+ batch x n_out outputs).")
        fail("1.2", f"{expected:.4f} FLOPs/byte for linear_intensity{args}", f"{got:.4f}", hint)
    passed("1.2", "linear_intensity is right at batch 1, 32, 64 and 1000")


def check_is_memory_bound(is_memory_bound: Callable[[float, float, float], bool]) -> None:
    """Exercise 1.3: ``is_memory_bound(intensity, peak_gflops, bandwidth_gbs)``."""
    cases = [(0.5, 100.0, 20.0, True), (50.0, 100.0, 20.0, False), (4.9, 100.0, 20.0, True),
             (5.1, 100.0, 20.0, False), (10.0, 1000.0, 50.0, True)]
    for intensity, peak, bandwidth, expected in cases:
        got = call_answer("1.3", is_memory_bound, intensity, peak, bandwidth)
        if not isinstance(got, bool):
            fail("1.3", "True or False", f"{type(got).__name__} {got!r}", "return a comparison, e.g. a < b.")
        if got != expected:
            ridge = peak / bandwidth
            fail("1.3", f"{expected} for intensity {intensity} FLOPs/byte on a machine with {peak} GFLOP/s "
                 f"and {bandwidth} GB/s (ridge point {ridge:g} FLOPs/byte)", str(got),
                 "a layer is memory-bound when its intensity is below the ridge point peak / bandwidth: "
                 "memory cannot feed the processor fast enough.")
    passed("1.3", "is_memory_bound agrees with the roofline on every case")


def check_amdahl(amdahl_speedup: Callable[[float, float], float]) -> None:
    """Exercise 1.4: ``amdahl_speedup(fraction, factor)``: overall speedup when ``fraction`` of the time gets ``factor``x faster."""
    for fraction, factor in [(0.8, 2.0), (0.5, 4.0), (1.0, 3.0), (0.0, 10.0), (0.9, 1.4)]:
        got = require_number("1.4", "the speedup", call_answer("1.4", amdahl_speedup, fraction, factor))
        expected = 1 / ((1 - fraction) + fraction / factor)
        if math.isclose(got, expected, rel_tol=1e-6):
            continue
        hint = diagnose(got, {
            fraction * factor + (1 - fraction): "you averaged the speedups: average the *times* instead "
                                                "(the unchanged part still takes 1 - fraction).",
            factor: "only the accelerated part gets faster: the rest of the time stays.",
        }, default="new time = (1 - fraction) + fraction / factor (old time = 1); speedup = old time / new time.")
        fail("1.4", f"{expected:.4f} for fraction={fraction}, factor={factor}", f"{got:.4f}", hint)
    passed("1.4", "amdahl_speedup is right, including the edge cases 0% and 100%")
