"""Checkers for notebook 03 (pruning): a magnitude mask, global pruning with torch, the cubic schedule, the exact
Hessian diagonal of a classifier layer, one filter removed by hand, the bytes of a CSR weight, and a filter-pruned
course CNN with at least 2× fewer multiply-adds."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

from course_lib.exercises import call_answer, compiled_wrapper, diagnose, fail, passed, require_number
from course_lib.data import load_fashion_mnist
from course_lib.measure import compare_latency, count_macs, count_parameters
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
    """Exercise 3.6: the bytes of a 2-D weight in the course's CSR file: fp32 values, uint16 column indices
    (int32 beyond 65,536 columns), int32 row pointers."""
    generator = torch.Generator().manual_seed(5)
    for rows, cols, density in [(300, 784, 0.1), (100, 300, 0.05), (10, 100, 0.5), (4, 70_000, 0.01)]:
        weight = torch.randn(rows, cols, generator=generator) * (torch.rand(rows, cols, generator=generator) < density)
        got = require_number("3.6", "the byte count", call_answer("3.6", csr_bytes, weight.clone()))
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
        fail("3.6", f"{expected:,} bytes for a {rows} × {cols} weight with {nnz:,} nonzeros", f"{got:,}", hint)
    passed("3.6", "CSR bytes counted with values, column indices and row pointers")


def _silenced(model: nn.Module, conv_index: int, channel: int) -> nn.Module:
    """A copy of ``model`` whose channel ``channel`` of ``features[conv_index]`` outputs exactly zero: its filter
    and its batch norm's scale and shift zeroed (the ReLU of 0 is 0)."""
    silent = copy.deepcopy(model)
    conv, batch_norm = silent.features[conv_index], silent.features[conv_index + 1]
    with torch.no_grad():
        conv.weight[channel] = 0
        if conv.bias is not None:
            conv.bias[channel] = 0
        batch_norm.weight[channel] = 0
        batch_norm.bias[channel] = 0
    return silent


def _next_conv(model: nn.Module, conv_index: int) -> int:
    return next(i for i in range(conv_index + 1, len(model.features)) if isinstance(model.features[i], nn.Conv2d))


def check_remove_filter(remove_filter: Callable[[nn.Module, int, int], nn.Module], model: nn.Module,
                        images: torch.Tensor) -> None:
    """Exercise 3.5: ``remove_filter(model, conv_index, channel)`` returns a smaller copy of a course CNN without
    output channel ``channel`` of ``model.features[conv_index]``, its batch-norm entries and the matching input
    channel of the next convolution. Graded by the zero-channel test: its logits must equal those of ``model``
    with that channel silenced (filter, batch-norm scale and shift zeroed)."""
    model = copy.deepcopy(model).eval()
    convs = [i for i, m in enumerate(model.features) if isinstance(m, nn.Conv2d)][:-1]  # each followed by a conv
    cases = [(convs[1], 5), (convs[0], 0), (convs[3], model.features[convs[3]].out_channels - 1), (convs[-1], 17)]
    for conv_index, channel in cases:
        call = f"remove_filter(model, {conv_index}, {channel})"
        smaller = call_answer("3.5", remove_filter, copy.deepcopy(model), conv_index, channel)
        if not isinstance(smaller, nn.Module):
            fail("3.5", f"{call} to return the smaller model (nn.Module)", type(smaller).__name__,
                 "return the model whose layers you replaced.")
        smaller.eval()
        width = model.features[conv_index].out_channels
        following = _next_conv(model, conv_index)
        conv, batch_norm = smaller.features[conv_index], smaller.features[conv_index + 1]
        next_conv = smaller.features[following]
        if conv.weight.shape[0] != width - 1:
            fail("3.5", f"features.{conv_index} with {width - 1} filters after {call}",
                 f"{conv.weight.shape[0]} filters", "build a new nn.Conv2d with one output channel fewer and copy "
                 "the kept filters' weights (every row of the weight except row `channel`).")
        bn_sizes = {name: len(getattr(batch_norm, name)) for name in ("weight", "bias", "running_mean", "running_var")}
        if set(bn_sizes.values()) != {width - 1}:
            fail("3.5", f"the batch norm features.{conv_index + 1} with {width - 1} entries in weight, bias, "
                        "running_mean and running_var",
                 ", ".join(f"{n} {size}" for n, size in bn_sizes.items()), "the batch norm after the convolution "
                 "has one scale, shift, mean and variance per channel: drop entry `channel` of all four.")
        if next_conv.weight.shape[1] != width - 1:
            fail("3.5", f"the next convolution features.{following} reading {width - 1} input channels",
                 f"{next_conv.weight.shape[1]} input channels (running it would raise a shape error)",
                 "the next convolution's weight is [out, in, kh, kw]: remove column `channel` of dimension 1 "
                 "(weight[:, keep]) and build it with in_channels one fewer.")
        with torch.no_grad():
            try:
                got = smaller(images)
            except RuntimeError as error:
                fail("3.5", f"the smaller model to run on images ({call})", f"RuntimeError: {str(error)[:160]}",
                     "set the new layers' in_channels/out_channels (num_features for the batch norm) to match "
                     "the tensors you copy into them.")
            expected = _silenced(model, conv_index, channel)(images)
        if got.shape == expected.shape and torch.allclose(got, expected, rtol=1e-4, atol=1e-4):
            continue
        hint = ("remove the same index in all three places (filter, batch-norm entries, next convolution's input "
                "channel); keep every other channel in its order.")
        for wrong in (channel - 1, channel + 1):
            if 0 <= wrong < width and torch.allclose(got, _silenced(model, conv_index, wrong)(images),
                                                     rtol=1e-4, atol=1e-4):
                hint = (f"that removed channel {wrong}, not {channel}: an off-by-one in the kept indices (keep "
                        "every index except `channel`, e.g. [c for c in range(n) if c != channel]).")
        difference = (got - expected).abs().max().item() if got.shape == expected.shape else float("nan")
        fail("3.5", f"the logits of the model with channel {channel} of features.{conv_index} silenced ({call})",
             f"a max |logit difference| of {difference:.3g}", hint)
    passed("3.5", "removing a channel gives the logits of the model with that channel silenced")


def check_pruned_cnn(model: object, dense: nn.Module, batch: torch.Tensor, min_mac_reduction: float = 2.0,
                     max_accuracy_loss: float = 0.01) -> dict:
    """Exercise 3.7: a filter-pruned course CNN with at least ``min_mac_reduction`` times fewer multiply-adds than
    ``dense`` and within ``max_accuracy_loss`` of its test accuracy (both on the CPU). The latency at
    ``batch`` is measured and printed, never graded (timings depend on the machine and its load). Returns the
    measurements."""
    if not isinstance(model, nn.Module):
        fail("3.7", "the pruned model (nn.Module)", type(model).__name__, "return the model built by remove_filters.")
    if compiled_wrapper(model):
        fail("3.7", "the pruned network itself", f"a compiled or exported module ({type(model).__name__})",
             "compiling changes how the same multiply-adds run, not how many there are: grade the model that "
             "remove_filters returned (compile or quantize it afterwards, for deployment).")
    if type(model) is not type(dense):
        fail("3.7", f"a pruned {type(dense).__name__}", type(model).__name__,
             "remove_filters returns a smaller network of the same class: pass that.")
    model, dense = model.cpu().eval(), dense.cpu().eval()
    macs, dense_macs = count_macs(model, batch[:1]), count_macs(dense, batch[:1])
    reduction = dense_macs / macs
    if reduction < min_mac_reduction:
        params, dense_params = count_parameters(model), count_parameters(dense)
        hint = ("masks zero weights but keep every multiply: physically remove filters with remove_filters."
                if params == dense_params else "keep fewer filters: a convolution's multiply-adds fall with both "
                "its input and its output channels (keeping half of every layer's filters leaves about a quarter).")
        fail("3.7", f"at least {min_mac_reduction}× fewer multiply-adds per image than the dense CNN "
                    f"({dense_macs:,})", f"{macs:,} ({reduction:.2f}× fewer)", hint)
    test_set = load_fashion_mnist("test")
    accuracy, reference = evaluate(model, test_set), evaluate(dense, test_set)
    if accuracy < reference - max_accuracy_loss:
        fail("3.7", f"test accuracy of at least {reference - max_accuracy_loss:.2%}", f"{accuracy:.2%}",
             "fine-tune longer after removing filters (with augment=True, as the reference was trained), or keep "
             "a few more filters.")
    latency = compare_latency({"dense": dense, "pruned": model}, (batch,), rounds=15)
    speedup = latency["dense"].median_ms / latency["pruned"].median_ms
    params, dense_params = count_parameters(model), count_parameters(dense)
    passed("3.7", f"{reduction:.2f}× fewer multiply-adds, {params / dense_params:.0%} of the parameters, test "
                  f"accuracy {accuracy:.2%} (dense {reference:.2%})")
    print(f"latency at batch {len(batch)} on this run (not graded): dense {latency['dense'].median_ms:.1f} ms, "
          f"pruned {latency['pruned'].median_ms:.1f} ms ({speedup:.2f}× faster)")
    return {"mac_reduction": reduction, "macs": macs, "dense_macs": dense_macs, "speedup": speedup,
            "accuracy": accuracy, "reference_accuracy": reference, "latency": latency, "parameters": params,
            "dense_parameters": dense_params}
