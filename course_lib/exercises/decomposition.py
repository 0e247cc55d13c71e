"""Checkers for notebook 06 (decomposition): the truncated SVD's two factors, the rank that keeps a share of the
energy, a tensor's mode-n unfolding, one alternating-least-squares update of CP, a Tucker-2 convolution chain,
and the hands-on decomposed course CNN."""

from __future__ import annotations

from collections.abc import Callable

import tensorly as tl
import torch
from torch import nn

from course_lib import decompose as D
from course_lib.data import load_fashion_mnist
from course_lib.exercises import call_answer, compiled_wrapper, fail, passed
from course_lib.measure import compare_latency, count_macs, count_parameters
from course_lib.train import evaluate


def _matrix(exercise: str, value: object, shape: tuple[int, ...], what: str, hint: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        fail(exercise, f"{what} as a torch.Tensor", type(value).__name__, "build it with torch operations.")
    if tuple(value.shape) != shape:
        fail(exercise, f"{what} of shape {shape}", str(tuple(value.shape)), hint)
    return value.detach().double()


def _test_matrix(rows: int, cols: int, seed: int) -> torch.Tensor:
    """A matrix with distinct, decaying singular values (like a trained layer's)."""
    generator = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(rows, rows, generator=generator, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(cols, cols, generator=generator, dtype=torch.float64))
    s = 3.0 * 0.8 ** torch.arange(min(rows, cols), dtype=torch.float64) + 0.05
    return (u[:, :len(s)] * s) @ v[:, :len(s)].T


def check_low_rank_factors(low_rank_factors: Callable[[torch.Tensor, int], tuple[torch.Tensor, torch.Tensor]]
                           ) -> None:
    """Exercise 6.1: ``low_rank_factors(weight, rank) -> (first, second)``, first (rank x in), second (out x rank),
    with ``second @ first`` the best rank-``rank`` approximation of ``weight`` (out x in)."""
    for rows, cols, rank in ((12, 20, 3), (30, 16, 5)):
        weight = _test_matrix(rows, cols, seed=rows)
        answer = call_answer("6.1", low_rank_factors, weight.clone(), rank,
                             hint="torch.linalg.svd(weight, full_matrices=False) returns U, S and V^T (Vh).")
        if not isinstance(answer, (tuple, list)) or len(answer) != 2:
            fail("6.1", "a pair (first, second)", type(answer).__name__, "return first, second.")
        shapes_hint = (f"first feeds the input (in = {cols} features) into rank = {rank} channels, second maps them to "
                       f"the {rows} outputs: first is rank x in, second is out x rank (U and V^T: check which is which).")
        first = _matrix("6.1", answer[0], (rank, cols), "first", shapes_hint)
        second = _matrix("6.1", answer[1], (rows, rank), "second", shapes_hint)
        product = second @ first
        u, s, vh = torch.linalg.svd(weight, full_matrices=False)
        best = (u[:, :rank] * s[:rank]) @ vh[:rank]
        if torch.allclose(product, best, atol=1e-4):
            continue
        mistakes = {
            "the singular values are missing: scale the rows of V^T (or the columns of U) by them.":
                u[:, :rank] @ vh[:rank],
            "the singular values appear twice (squared): put S in one factor only, or sqrt(S) in each.":
                (u[:, :rank] * s[:rank] ** 2) @ vh[:rank],
            "these are the smallest singular values: torch.linalg.svd sorts them largest first, keep the first r.":
                (u[:, -rank:] * s[-rank:]) @ vh[-rank:],
        }
        hint = next((h for h, m in mistakes.items() if torch.allclose(product, m, atol=1e-4)),
                    "second @ first must equal U_r diag(S_r) V_r^T, built from the r largest singular values.")
        error = (product - best).norm() / best.norm()
        fail("6.1", f"second @ first = the best rank-{rank} approximation (Eckart-Young)",
             f"a product {error:.1%} away from it", hint)
    passed("6.1", "second @ first is the best rank-r approximation, with the right shapes for two Linear layers")


def check_rank_for_energy(rank_for_energy: Callable[[torch.Tensor, float], int]) -> None:
    """Exercise 6.2: the smallest rank whose singular values keep at least ``energy`` of the sum of their squares."""
    singular_values = torch.tensor([5.0, 3.0, 2.0, 1.0, 0.5, 0.25])
    for energy in (0.5, 0.9, 0.97, 0.99, 1.0, 0.7353):
        got = call_answer("6.2", rank_for_energy, singular_values.clone(), energy)
        if hasattr(got, "item") and getattr(got, "numel", lambda: 2)() == 1:
            got = got.item()
        if isinstance(got, bool) or not isinstance(got, int):
            fail("6.2", "a rank (a plain int)", f"{type(got).__name__} {got!r}", "convert with int(...).")
        expected = D.energy_rank(singular_values, energy)
        if got == expected:
            continue
        amplitudes = singular_values.cumsum(0) / singular_values.sum()
        by_amplitude = int((amplitudes < energy - 1e-12).sum()) + 1
        if got == expected - 1:
            hint = "that is an index, not a count: a rank of r keeps the first r values (indices 0 to r-1)."
        elif got == by_amplitude:
            hint = "energy is measured by the squares of the singular values (the Frobenius norm), not the values."
        elif got == expected + 1:
            hint = "keep the *smallest* rank that reaches the energy: stop at the first one that gets there."
        else:
            hint = "cumulative sum of s**2 divided by the total; the first rank where it reaches the energy."
        fail("6.2", f"rank {expected} for energy {energy:g} of s = {singular_values.tolist()}", str(got), hint)
    passed("6.2", "the smallest rank that keeps the requested energy, measured by squared singular values")


def _kolda_unfold(tensor: torch.Tensor, mode: int) -> torch.Tensor:
    """The mode-n unfolding with the other indices in Kolda & Bader's order (the first one varying fastest)."""
    moved = torch.movedim(tensor, mode, 0)
    return moved.permute(0, *range(moved.ndim - 1, 0, -1)).reshape(tensor.shape[mode], -1)


def check_unfold(unfold: Callable[[torch.Tensor, int], torch.Tensor]) -> None:
    """Exercise 6.3: the mode-n unfolding in the course's (and tensorly's) convention."""
    tensor = torch.arange(2 * 3 * 4 * 5, dtype=torch.float64).reshape(2, 3, 4, 5)
    for mode in range(4):
        got = call_answer("6.3", unfold, tensor.clone(), mode)
        expected = tl.unfold(tensor, mode)
        if isinstance(got, torch.Tensor) and got.shape == expected.shape and torch.equal(got.double(), expected):
            continue
        other = tensor.numel() // tensor.shape[mode]
        if not isinstance(got, torch.Tensor):
            fail("6.3", "a torch.Tensor", type(got).__name__, "build it with torch.movedim and reshape.")
        if tuple(got.shape) == (other, tensor.shape[mode]):
            hint = "the rows are the mode's index: transpose, so that the result is (size of mode) x (the rest)."
        elif tuple(got.shape) != tuple(expected.shape):
            hint = f"mode {mode} has {tensor.shape[mode]} indices: one row each, {other} columns."
        elif torch.equal(got.double(), tensor.reshape(tensor.shape[mode], -1)):
            hint = "a plain reshape mixes indices of different modes into one row: move the mode to the front first."
        elif torch.equal(got.double(), _kolda_unfold(tensor, mode)):
            hint = ("those columns run in the other (Kolda & Bader, first index fastest) order; this course follows "
                    "tensorly: move the mode to the front, then reshape in PyTorch's row-major order.")
        else:
            hint = "torch.movedim(tensor, mode, 0).reshape(tensor.shape[mode], -1)."
        fail("6.3", f"the mode-{mode} unfolding of a 2x3x4x5 tensor (as tensorly.unfold)", "other entries", hint)
    passed("6.3", "mode-n unfoldings match tensorly's for every mode of a 4-way tensor")


def reference_als_update(tensor: torch.Tensor, factors: list[torch.Tensor], mode: int) -> torch.Tensor:
    """The least-squares update of ``factors[mode]`` with the others fixed (tensorly's unfolding convention)."""
    others = [f for i, f in enumerate(factors) if i != mode]
    gram = torch.ones(factors[0].shape[1], factors[0].shape[1], dtype=tensor.dtype)
    for f in others:
        gram = gram * (f.T @ f)
    return tl.unfold(tensor, mode) @ tl.tenalg.khatri_rao(others) @ torch.linalg.pinv(gram)


def check_als_update(als_update: Callable[[torch.Tensor, list[torch.Tensor], int], torch.Tensor]) -> None:
    """Exercise 6.4: one CP alternating-least-squares step: the best ``factors[mode]`` with the others fixed."""
    generator = torch.Generator().manual_seed(64)
    shape, rank = (5, 6, 7), 3
    tensor = torch.randn(*shape, generator=generator, dtype=torch.float64)
    factors = [torch.randn(n, rank, generator=generator, dtype=torch.float64) for n in shape]
    for mode in range(3):
        got = call_answer("6.4", als_update, tensor.clone(), [f.clone() for f in factors], mode,
                          hint="use tensorly.tenalg.khatri_rao and torch.linalg.pinv.")
        got = _matrix("6.4", got, (shape[mode], rank), f"the new factor of mode {mode}",
                      "one row per index of the mode, one column per rank-one component.")
        expected = reference_als_update(tensor, factors, mode)
        if torch.allclose(got, expected, atol=1e-6):
            continue
        others = [f for i, f in enumerate(factors) if i != mode]
        gram_all = torch.ones(rank, rank, dtype=torch.float64)
        for f in factors:
            gram_all = gram_all * (f.T @ f)
        mistakes = {
            "the Khatri-Rao product must list the other factors in mode order (with this unfolding, "
            "khatri_rao([B, C]) for mode 0), not reversed.":
                tl.unfold(tensor, mode) @ tl.tenalg.khatri_rao(others[::-1]) @ torch.linalg.pinv(
                    torch.prod(torch.stack([f.T @ f for f in others]), 0)),
            "the normal equations need the inverse of the Hadamard product of the other factors' Gram matrices "
            "(torch.linalg.pinv of it); without it the scale is wrong.": tl.unfold(tensor, mode) @ tl.tenalg.khatri_rao(others),
            "the Gram matrices of the *other* factors only: the factor being updated is unknown.":
                tl.unfold(tensor, mode) @ tl.tenalg.khatri_rao(others) @ torch.linalg.pinv(gram_all),
        }
        hint = next((h for h, m in mistakes.items() if torch.allclose(got, m, atol=1e-6)),
                    "unfold(X, mode) @ khatri_rao(others) @ pinv(Hadamard product of the others' F^T F).")
        fail("6.4", f"the least-squares update of mode {mode}", "another matrix", hint)
    passed("6.4", "one ALS step gives the least-squares factor of every mode")


def check_tucker2_chain(tucker2_chain: Callable[..., nn.Module]) -> None:
    """Exercise 6.5: ``tucker2_chain(conv, core, out_factor, in_factor)`` -> 1x1, k x k, 1x1 ``nn.Conv2d`` chain that
    computes ``conv`` with the kernel ``core ×_0 out_factor ×_1 in_factor``."""
    torch.manual_seed(65)
    conv = nn.Conv2d(12, 20, 3, stride=2, padding=1, bias=True)
    core, out_factor, in_factor = D.tucker2_factors(conv.weight.detach(), (5, 7))
    chain = call_answer("6.5", tucker2_chain, conv, core, out_factor, in_factor,
                        hint="three nn.Conv2d: 1x1 (in -> r_in), k x k (r_in -> r_out), 1x1 (r_out -> out).")
    if not isinstance(chain, nn.Module):
        fail("6.5", "an nn.Module (e.g. nn.Sequential of three Conv2d)", type(chain).__name__, "return nn.Sequential(...).")
    convs = [m for m in chain.modules() if isinstance(m, nn.Conv2d)]
    shapes = [tuple(m.weight.shape) for m in convs]
    expected_shapes = [(5, 12, 1, 1), (7, 5, 3, 3), (20, 7, 1, 1)]
    if shapes != expected_shapes:
        fail("6.5", f"three convolutions with weights {expected_shapes}", str(shapes),
             "in_factor is in x r_in: the first 1x1 weight is its transpose; out_factor is out x r_out: the last one "
             "is out_factor itself; the core (r_out x r_in x k x k) is the middle kernel as it is.")
    placement = [(m.stride, m.padding) for m in convs]
    expected_placement = [((1, 1), (0, 0)), (conv.stride, conv.padding), ((1, 1), (0, 0))]
    if placement != expected_placement:
        fail("6.5", f"(stride, padding) per layer {expected_placement}", str(placement),
             "the stride and the padding belong to the k x k core only; the 1x1 layers keep the size as it is.")
    x = torch.randn(2, 12, 9, 9)
    reconstructed = nn.functional.conv2d(x, tl.tucker_to_tensor((core, [out_factor, in_factor, torch.eye(3),
                                                                         torch.eye(3)])),
                                         conv.bias, stride=2, padding=1)
    with torch.no_grad():
        got = chain(x)
    if torch.allclose(got, reconstructed - conv.bias[None, :, None, None], atol=1e-4):
        fail("6.5", "the convolution's bias in the output", "no bias", "give the last 1x1 layer conv's bias.")
    if not torch.allclose(got, reconstructed, atol=1e-4):
        hint = ("the bias belongs to the last layer only (a bias before the core would pass through it)."
                if any(m.bias is not None for m in convs[:2]) else
                "check which factor goes where: in_factor.T for the first 1x1, out_factor for the last.")
        fail("6.5", "the output of the convolution with the Tucker-2 kernel", "another output", hint)
    passed("6.5", "the 1x1 -> 3x3 -> 1x1 chain computes the convolution with the Tucker-2 kernel (stride 2, bias)")


def check_decomposed_cnn(model: object, reference: nn.Module, batch: torch.Tensor, min_mac_reduction: float = 2.0,
                         max_accuracy_loss: float = 0.01) -> dict:
    """Exercise 6.6: a decomposed course CNN with at least ``min_mac_reduction`` times fewer multiply-adds and within
    ``max_accuracy_loss`` of the reference's test accuracy. Latency (eager, at ``batch``) is printed, not graded."""
    if not isinstance(model, nn.Module):
        fail("6.6", "the decomposed model (nn.Module)", type(model).__name__, "pass the model decompose() returned.")
    if compiled_wrapper(model):
        fail("6.6", "the decomposed network itself", f"a compiled module ({type(model).__name__})",
             "grade the network decompose() returned; compile it afterwards for deployment.")
    model, reference = model.cpu().eval(), reference.cpu().eval()
    macs, reference_macs = count_macs(model, batch[:1]), count_macs(reference, batch[:1])
    if reference_macs / macs < min_mac_reduction:
        fail("6.6", f"at least {min_mac_reduction}× fewer multiply-adds per image than the course CNN "
                    f"({reference_macs:,})", f"{macs:,} ({reference_macs / macs:.2f}× fewer)",
             "lower the ranks of the big convolutions (features.3, .10 and .17 hold most of the multiply-adds).")
    test_set = load_fashion_mnist("test")
    accuracy, reference_accuracy = evaluate(model, test_set), evaluate(reference, test_set)
    if accuracy < reference_accuracy - max_accuracy_loss:
        fail("6.6", f"test accuracy of at least {reference_accuracy - max_accuracy_loss:.2%}", f"{accuracy:.2%}",
             "fine-tune longer (augment=True, as the reference was trained), or raise the ranks of the layers the "
             "sensitivity scan found fragile.")
    latency = compare_latency({"reference": reference, "decomposed": model}, (batch,), rounds=15)
    params, reference_params = count_parameters(model), count_parameters(reference)
    passed("6.6", f"{reference_macs / macs:.2f}× fewer multiply-adds, {reference_params / params:.2f}× fewer "
                  f"parameters, test accuracy {accuracy:.2%} (reference {reference_accuracy:.2%})")
    speedup = latency["reference"].median_ms / latency["decomposed"].median_ms
    print(f"eager latency at batch {len(batch)} on this run (not graded): reference "
          f"{latency['reference'].median_ms:.1f} ms, decomposed {latency['decomposed'].median_ms:.1f} ms "
          f"({speedup:.2f}× faster)")
    return {"mac_reduction": reference_macs / macs, "accuracy": accuracy, "reference_accuracy": reference_accuracy,
            "parameters": params, "reference_parameters": reference_params, "latency": latency}
