"""Checkers for notebook 03 (pruning): a magnitude mask, global pruning with torch, the cubic schedule, the exact
Hessian diagonal of a classifier layer, the bytes of a CSR weight, and a filter-pruned course CNN that is fast."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

from course_lib.exercises import call_answer, diagnose, fail, passed, require_number
from course_lib.measure import compare_latency, count_parameters
from course_lib.prune import cubic_schedule, masks_from_scores
from course_lib.train import evaluate


def _mask_answer(exercise: str, value: object, shape: torch.Size) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        fail(exercise, "a torch.Tensor mask", type(value).__name__, "build the mask with torch operations.")
    if value.shape != shape:
        fail(exercise, f"a mask of the weight's shape {tuple(shape)}", str(tuple(value.shape)),
             "the mask multiplies the weight elementwise: reshape it back to the weight's shape.")
    if not bool(((value == 0) | (value == 1)).all()):
        fail(exercise, "a mask of 0s and 1s", "other values", "1 keeps a weight, 0 removes it.")
    return value.float()


def check_magnitude_mask(magnitude_mask: Callable[[torch.Tensor, float], torch.Tensor]) -> None:
    """Exercise 3.1: ``magnitude_mask(weight, sparsity)``: 0 for the ``sparsity`` fraction of smallest |w|, else 1."""
    generator = torch.Generator().manual_seed(3)
    for shape, sparsity in [((30, 20), 0.5), ((64, 10), 0.9), ((8, 3, 3, 3), 0.3), ((50,), 0.0)]:
        weight = torch.randn(shape, generator=generator)
        got = _mask_answer("3.1", call_answer("3.1", magnitude_mask, weight.clone(), sparsity), weight.shape)
        expected = masks_from_scores({"w": weight.abs()}, sparsity, "layer")["w"]
        if torch.equal(got, expected):
            continue
        removed = int((got == 0).sum())
        wanted = int(round(sparsity * weight.numel()))
        case = f"a {tuple(shape)} weight at sparsity {sparsity}"
        if torch.equal(got, 1 - expected) or (sparsity and torch.equal(got, _keep_smallest(weight.abs(), sparsity))):
            hint = "1 means keep: keep the largest magnitudes and remove the smallest."
        elif torch.equal(got, masks_from_scores({"w": weight}, sparsity, "layer")["w"]):
            hint = "rank by magnitude |w|: a large negative weight matters as much as a large positive one."
        elif removed == weight.numel() - wanted and sparsity:
            hint = "sparsity is the fraction removed, not the fraction kept."
        elif removed != wanted:
            hint = f"remove exactly round(sparsity × numel) = {wanted} weights (sort the magnitudes, or use topk)."
        else:
            hint = "the removed weights must be the ones with the smallest |w|."
        fail("3.1", f"{wanted} zeros in the mask for {case}", f"{removed} zeros, not all at the smallest |w|"
             if removed == wanted else f"{removed} zeros", hint)
    passed("3.1", "the mask removes exactly the requested fraction of smallest-magnitude weights")


def _keep_smallest(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """The inverted mistake: remove the largest ``sparsity`` fraction."""
    return masks_from_scores({"w": -scores}, sparsity, "layer")["w"]


def check_global_pruning(model: nn.Module, sparsity: float = 0.9) -> None:
    """Exercise 3.2: LeNet-300-100 pruned in place with ``torch.nn.utils.prune.global_unstructured`` (L1) to 90%."""
    layers = {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear)}
    unpruned = [name for name, m in layers.items() if not torch_prune.is_pruned(m)]
    if unpruned:
        fail("3.2", "every Linear pruned with torch.nn.utils.prune (a weight_mask buffer on each)",
             f"no mask on {', '.join(unpruned)}", "pass all three (module, 'weight') pairs to "
             "prune.global_unstructured(..., pruning_method=prune.L1Unstructured, amount=0.9); do not call "
             "prune.remove yet.")
    masks = {name: m.weight_mask for name, m in layers.items()}
    total = sum(m.numel() for m in masks.values())
    removed = sum(int((m == 0).sum()) for m in masks.values()) / total
    if not math.isclose(removed, sparsity, abs_tol=1e-3):
        fail("3.2", f"{sparsity:.0%} of the weights removed", f"{removed:.2%}",
             "amount is the fraction to remove (amount=0.9), counted over all the layers together.")
    per_layer = {name: float((m == 0).float().mean()) for name, m in masks.items()}
    if all(math.isclose(s, sparsity, abs_tol=2e-3) for s in per_layer.values()):
        fail("3.2", "a global threshold (layers pruned to different sparsities)",
             "every layer pruned to the same sparsity", "global_unstructured ranks all layers' weights together; "
             "pruning each layer with l1_unstructured is the layer-wise variant.")
    expected = masks_from_scores({name: m.weight_orig.detach().abs() for name, m in layers.items()}, sparsity)
    agreement = sum(int((masks[n] == expected[n]).sum()) for n in masks) / total
    if agreement < 0.999:
        fail("3.2", "the masks of a global magnitude (L1) ranking", f"{agreement:.2%} agreement",
             "use pruning_method=prune.L1Unstructured, and prune the trained reference weights.")
    shown = ", ".join(f"{n} {s:.1%}" for n, s in per_layer.items())
    passed("3.2", f"{removed:.1%} of the weights removed by one global threshold ({shown})")


def check_cubic_sparsity(cubic_sparsity: Callable[[int, int, float], float]) -> None:
    """Exercise 3.3: ``cubic_sparsity(step, total_steps, final_sparsity)`` (Zhu & Gupta, starting from 0)."""
    for total, final in [(10, 0.9), (4, 0.5), (100, 0.97)]:
        for step in dict.fromkeys((1, total // 2, total - 1, total, 0)):  # distinct mistakes differ first at step 1
            got = require_number("3.3", "the sparsity", call_answer("3.3", cubic_sparsity, step, total, final))
            expected = cubic_schedule(step, total, final)
            if math.isclose(got, expected, rel_tol=1e-9, abs_tol=1e-12):
                continue
            t = step / total
            hint = diagnose(got, {
                final * t: "that is a linear ramp: the cubic schedule prunes fast at first, then slowly.",
                final * t ** 3: "this prunes slowly first and fast at the end: use (1 - t/T)^3, not (t/T)^3.",
                final * (1 - t) ** 3: "at the end the sparsity must reach the final value: s_f (1 - (1 - t/T)^3).",
                final: "the sparsity starts at 0 and rises to the final value over the steps.",
            }, default="s_t = s_f + (s_i - s_f)(1 - t/T)^3 with s_i = 0.", rel_tol=1e-9)
            fail("3.3", f"{expected:.6f} at step {step} of {total} (final {final})", f"{got:.6f}", hint)
    passed("3.3", "the cubic schedule matches Zhu & Gupta's formula")


def check_last_layer_hessian(last_layer_hessian: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> None:
    """Exercise 3.4: the exact diagonal of the mean cross-entropy's Hessian w.r.t. the last Linear's weight,
    from the softmax ``probabilities [N, C]`` and the layer's inputs ``activations [N, D]``: ``[C, D]``."""
    generator = torch.Generator().manual_seed(4)
    probabilities = torch.softmax(torch.randn(32, 5, generator=generator) * 2, dim=1)
    activations = torch.rand(32, 7, generator=generator) * 3
    got = call_answer("3.4", last_layer_hessian, probabilities.clone(), activations.clone())
    if not isinstance(got, torch.Tensor):
        fail("3.4", "a torch.Tensor", type(got).__name__, "compute it with torch operations on the two inputs.")
    expected = (probabilities * (1 - probabilities)).T @ activations ** 2 / len(activations)
    if got.shape != expected.shape:
        fail("3.4", f"shape {tuple(expected.shape)} (one value per weight: classes × inputs)", str(tuple(got.shape)),
             "the weight is [C, D]; average over the batch, do not keep a batch dimension.")
    if torch.allclose(got.float(), expected, rtol=1e-4, atol=1e-7):
        passed("3.4", "the exact Hessian diagonal of the classifier weights")
        return
    p, a, n = probabilities, activations, len(activations)
    typical = {
        "summed over the batch": (expected * n, "the loss is a mean over the batch: divide by N."),
        "p instead of p(1 - p)": (p.T @ a ** 2 / n, "the second derivative of cross-entropy w.r.t. a logit is "
                                                    "p (1 - p), not p."),
        "activations not squared": ((p * (1 - p)).T @ a / n, "the logit is linear in the weight with slope a_j, "
                                                             "so the second derivative carries a_j²."),
        "p squared": ((p ** 2).T @ a ** 2 / n, "the softmax derivative is p (1 - p)."),
    }
    for value, hint in typical.values():
        if torch.allclose(got.float(), value, rtol=1e-4, atol=1e-7):
            fail("3.4", "mean over n of p_ni (1 - p_ni) a_nj²", "a different matrix", hint)
    fail("3.4", "mean over n of p_ni (1 - p_ni) a_nj²", "a different matrix",
         "write the logit z_i = Σ_j W_ij a_j and differentiate the loss twice w.r.t. W_ij.")


def check_csr_bytes(csr_bytes: Callable[[torch.Tensor], int]) -> None:
    """Exercise 3.5: the bytes of a 2-D weight in the course's CSR file: fp32 values, uint16 column indices
    (int32 beyond 65,536 columns), int32 row pointers."""
    generator = torch.Generator().manual_seed(5)
    for rows, cols, density in [(300, 784, 0.1), (100, 300, 0.05), (10, 100, 0.5), (4, 70_000, 0.01)]:
        weight = torch.randn(rows, cols, generator=generator) * (torch.rand(rows, cols, generator=generator) < density)
        got = require_number("3.5", "the byte count", call_answer("3.5", csr_bytes, weight.clone()))
        nnz = int(weight.count_nonzero())
        column_bytes = 2 if cols <= 65_536 else 4
        expected = nnz * (4 + column_bytes) + (rows + 1) * 4
        if got == expected:
            continue
        hint = diagnose(got, {
            nnz * (4 + column_bytes): "add the row pointers: rows + 1 int32 offsets tell where each row starts.",
            nnz * (4 + 8) + (rows + 1) * 8: "torch keeps indices as int64 in memory; the file stores columns as "
                                            "uint16 and row pointers as int32.",
            nnz * (4 + 8) + (rows + 1) * 4: "the file stores column indices as uint16 (2 bytes), not int64.",
            rows * cols * 4: "that is the dense size: count only the nonzero values and their indices.",
            nnz * 4: "every nonzero value also needs its column index.",
            nnz * 6 + (rows + 1) * 4: "beyond 65,536 columns a uint16 cannot hold the column index: use 4 bytes.",
        }, default="values (4 bytes each) + column indices (2 bytes each, 4 beyond 65,536 columns) + (rows + 1) "
                   "row pointers of 4 bytes.")
        fail("3.5", f"{expected:,} bytes for a {rows} × {cols} weight with {nnz:,} nonzeros", f"{got:,}", hint)
    passed("3.5", "CSR bytes counted with values, column indices and row pointers")


def check_pruned_cnn(model: object, dense: nn.Module, batch: torch.Tensor, speedup_target: float = 2.0,
                     max_accuracy_loss: float = 0.01) -> dict:
    """Exercise 3.6: a filter-pruned course CNN at least ``speedup_target`` times faster than ``dense`` on
    ``batch`` on the CPU (both models are moved there) and within ``max_accuracy_loss`` of its test accuracy;
    returns the measurements."""
    if not isinstance(model, nn.Module):
        fail("3.6", "the pruned model (nn.Module)", type(model).__name__, "return the model built by remove_filters.")
    model, dense = model.cpu().eval(), dense.cpu().eval()  # the latency target is for CPU deployment
    params, dense_params = count_parameters(model), count_parameters(dense)
    if params >= dense_params:
        fail("3.6", "fewer parameters than the dense CNN", f"{params:,} vs {dense_params:,}",
             "masks zero weights but keep every multiply: physically remove filters with remove_filters.")
    latency = compare_latency({"dense": dense, "pruned": model}, (batch,), rounds=15)
    speedup = latency["dense"].median_ms / latency["pruned"].median_ms
    accuracy, reference = evaluate(model), evaluate(dense)
    if speedup < speedup_target:
        fail("3.6", f"at least {speedup_target}× faster than the dense CNN at batch {len(batch)}", f"{speedup:.2f}×",
             "latency scales with the multiply-adds: keep fewer filters (a conv's cost falls with both its input "
             "and its output channels).")
    if accuracy < reference - max_accuracy_loss:
        fail("3.6", f"test accuracy of at least {reference - max_accuracy_loss:.2%}", f"{accuracy:.2%}",
             "fine-tune longer after removing filters (with augment=True, as the reference was trained), or keep "
             "a few more filters.")
    passed("3.6", f"{speedup:.2f}× faster, {params / dense_params:.0%} of the parameters, accuracy {accuracy:.2%} "
                  f"(dense {reference:.2%})")
    return {"speedup": speedup, "accuracy": accuracy, "reference_accuracy": reference, "latency": latency,
            "parameters": params, "dense_parameters": dense_params}

