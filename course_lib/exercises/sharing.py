"""Checkers for notebook 04 (weight sharing): k-means from scratch, the compression rate of a shared layer,
the codebook gradient, Huffman code lengths from scratch, LeNet-5 compressed with your own per-layer recipe, and a
per-layer bit allocation that fits the course CNN into a size target. Files are graded on the test set."""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path

import torch

from course_lib import share as S
from course_lib.data import Dataset, load_fashion_mnist
from course_lib.exercises import ExerciseError, call_answer, check_number, fail, passed
from course_lib.measure import serialized_bytes
from course_lib.models import build_model, load_reference
from course_lib.prune import prunable_layers
from course_lib.share import (CorruptFileError, decode_model, entropy_bits, huffman_code_lengths, huffman_decode,
                              huffman_encode, kmeans_1d, load_model)
from course_lib.train import evaluate


def _inertia(values: torch.Tensor, centroids: torch.Tensor) -> float:
    """Sum of squared distances of each value to its nearest centroid."""
    return float(((values[:, None] - centroids[None, :]) ** 2).min(1).values.sum())


def _lloyd_from_linear(values: torch.Tensor, clusters: int, max_iterations: int = 300) -> torch.Tensor:
    """The centroids of the exercise's algorithm: Lloyd's iterations from the linear start until no label changes."""
    centroids = torch.linspace(float(values.min()), float(values.max()), clusters)
    labels = None
    for _ in range(max_iterations):
        new_labels = (values[:, None] - centroids[None, :]).abs().argmin(1)
        if labels is not None and torch.equal(new_labels, labels):
            break
        labels = new_labels
        for k in range(clusters):
            if (labels == k).any():
                centroids[k] = values[labels == k].mean()
    return centroids


def check_kmeans(kmeans: Callable[[torch.Tensor, int], tuple[torch.Tensor, torch.Tensor]],
                 layer_weights: torch.Tensor, max_error_ratio: float = 1.1) -> None:
    """Exercise 4.1: ``kmeans(values, clusters)`` from linear initialisation returns converged (centroids, labels):
    each value labelled with its nearest centroid, each used centroid the mean of its values, ``clusters``
    distinct centroids, and the linear start's result (or a squared error at most ``max_error_ratio`` times
    scikit-learn's KMeans from the same start)."""
    generator = torch.Generator().manual_seed(4)
    cases = [(torch.cat([torch.randn(300, generator=generator) * 0.1 - 1, torch.randn(500, generator=generator) * 0.2
                         + 1]), 4),
             (layer_weights.detach().flatten().float(), 16)]
    ratios = []
    for values, clusters in cases:
        answer = call_answer("4.1", kmeans, values.clone(), clusters)
        if not (isinstance(answer, tuple) and len(answer) == 2):
            fail("4.1", "a pair (centroids, labels)", type(answer).__name__, "return centroids, labels.")
        centroids, labels = (torch.as_tensor(a) for a in answer)
        if centroids.shape != (clusters,) or labels.shape != values.shape:
            fail("4.1", f"{clusters} centroids and one label per value ({tuple(values.shape)})",
                 f"shapes {tuple(centroids.shape)} and {tuple(labels.shape)}", "one centroid per cluster, one label "
                 "per weight: labels[i] is the index of the centroid of values[i].")
        centroids, labels = centroids.float(), labels.long()
        nearest = (values[:, None] - centroids[None, :]).abs().argmin(1)
        if not torch.equal(centroids[labels], centroids[nearest]):
            fail("4.1", "each value labelled with its nearest centroid", "labels that are not the nearest",
                 "after the last centroid update, assign again: labels = |values - centroids|.argmin(1).")
        distinct = len(torch.unique(centroids))
        if distinct < clusters:
            hint = ("every centroid has the same value: start them spread out, evenly from values.min() to "
                    "values.max() (torch.linspace), not all at one value." if distinct == 1 else
                    "some centroids coincide, so fewer values are really shared: start from the linear "
                    "initialisation (distinct, evenly spaced) and leave an empty cluster's centroid where it is.")
            fail("4.1", f"{clusters} distinct centroids for {len(values):,} values", f"{distinct} distinct", hint)
        start = torch.linspace(float(values.min()), float(values.max()), clusters)
        used = labels.unique()
        means = torch.stack([values[labels == k].mean() for k in used])
        if not torch.allclose(centroids[used], means, rtol=1e-4, atol=1e-6):
            hint = ("the centroids are still the linear start: move each centroid to the mean of the values "
                    "assigned to it, and repeat." if torch.allclose(centroids, start) else
                    "repeat assign → update until the labels stop changing (start from torch.linspace(min, max, "
                    "clusters)).")
            fail("4.1", "converged k-means: every centroid the mean of the values labelled with it",
                 "centroids that are not their clusters' means", hint)
        ratio = _inertia(values, centroids) / _inertia(values, kmeans_1d(values, clusters, "linear")[0])
        linear = _lloyd_from_linear(values, clusters)
        if ratio > max_error_ratio and not torch.allclose(centroids.sort().values, linear, rtol=1e-4, atol=1e-6):
            fail("4.1", f"the result of the linear initialisation (a squared error at most {max_error_ratio}× "
                        f"scikit-learn's from the same start, {clusters} clusters)", f"{ratio:.2f}×",
                 "k-means only finds a local optimum that depends on its start: a random start can leave two "
                 "centroids in one mode of the weights and none in another. Start from torch.linspace(values.min(), "
                 "values.max(), clusters).")
        ratios.append(ratio)
    passed("4.1", "converged k-means; your squared error is " + " and ".join(f"{r:.3f}×" for r in ratios)
           + " scikit-learn's from the same linear start")


def check_compression_rate(compression_rate: Callable[[int, int], float]) -> None:
    """Exercise 4.2: Han et al.'s rate ``32 n / (n ceil(log2 k) + 32 k)`` for n weights shared by k fp32 values."""
    for n, k in [(300, 5), (235_200, 16), (1_000, 4), (1_000_000, 256)]:
        bits = max(1, math.ceil(math.log2(k)))
        expected = 32 * n / (n * bits + 32 * k)
        got = call_answer("4.2", compression_rate, n, k)
        check_number("4.2", f"compression rate for n={n:,}, k={k}", got, expected, rel_tol=1e-6, mistakes={
            32 * n / (n * math.log2(k)): "an index is a whole number of bits (ceil(log2 k)), and the codebook's k "
                                         "fp32 values must be stored too.",
            32 * n / (n * math.log2(k) + 32 * k): "an index takes a whole number of bits: ceil(log2 k).",
            32 / bits: "count the codebook too: k shared values of 32 bits each.",
            (n * bits + 32 * k) / (32 * n): "the rate is original bits / compressed bits (> 1 when smaller).",
            32 * n / (n * bits + k): "each shared value is an fp32 number: 32 bits per codebook entry.",
        }, hint="compressed bits = n indices of ceil(log2 k) bits + k codebook values of 32 bits.")


def check_codebook_gradient(codebook_gradient: Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]) -> None:
    """Exercise 4.3: ``codebook_gradient(weight_grad, indices, clusters)``: for each cluster, the sum of the
    gradients of the weights that share it."""
    generator = torch.Generator().manual_seed(43)
    grad = torch.randn(20, 30, generator=generator)
    indices = torch.randint(0, 6, (20, 30), generator=generator)
    got = call_answer("4.3", codebook_gradient, grad.clone(), indices.clone(), 6)
    expected = torch.zeros(6).index_add_(0, indices.flatten(), grad.flatten())
    if not isinstance(got, torch.Tensor) or got.shape != (6,):
        fail("4.3", "a tensor of 6 values (one per shared value)",
             str(tuple(got.shape)) if isinstance(got, torch.Tensor) else type(got).__name__,
             "one gradient per codebook entry: torch.zeros(clusters).index_add_(0, indices.flatten(), ...).")
    if torch.allclose(got, expected, atol=1e-5):
        passed("4.3", "each shared value's gradient is the sum over its weights (what autograd computes)")
        return
    counts = torch.bincount(indices.flatten(), minlength=6).float()
    if torch.allclose(got, expected / counts, atol=1e-5):
        hint = "sum, do not average: the loss depends on the shared value through every weight that uses it."
    elif torch.allclose(got, torch.zeros(6).index_add_(0, indices.flatten(), grad.abs().flatten()), atol=1e-5):
        hint = "keep the signs of the gradients: opposite pulls cancel."
    else:
        hint = "add each weight's gradient into the entry of its cluster (indices tell which)."
    fail("4.3", f"sums per cluster {expected[:3].tolist()}…", f"{got[:3].tolist()}…", hint)


def check_huffman_lengths(huffman_lengths: Callable[[list[int]], list[int]]) -> None:
    """Exercise 4.4: optimal prefix-code lengths (Huffman) for symbol counts; decoding must recover the input."""
    cases = [[45, 13, 12, 16, 9, 5], [1, 1, 1, 1], [100, 1, 0, 3, 50, 50, 2, 7], [7, 0, 0], [5, 3]]
    for counts in cases:
        lengths = call_answer("4.4", huffman_lengths, list(counts))
        if not isinstance(lengths, (list, tuple)) or len(lengths) != len(counts):
            fail("4.4", f"a list of {len(counts)} lengths (one per symbol)", repr(lengths)[:60],
                 "return lengths[s] for every symbol s, 0 for symbols that never occur.")
        lengths = [int(x) for x in lengths]
        optimal = huffman_code_lengths(counts)
        used = [s for s, c in enumerate(counts) if c]
        if any(lengths[s] < 1 for s in used) or any(lengths[s] for s, c in enumerate(counts) if not c):
            fail("4.4", "length ≥ 1 for every used symbol, 0 for unused ones", str(lengths),
                 "a symbol that occurs needs a code (even alone: 1 bit); one that never occurs needs none.")
        kraft = sum(2.0 ** -lengths[s] for s in used)
        if kraft > 1 + 1e-12:
            fail("4.4", "lengths of a prefix-free code (Σ 2^-length ≤ 1)", f"Σ 2^-length = {kraft:.3f}",
                 "codes that short cannot all be told apart: each merge of two subtrees adds one bit to all "
                 "their symbols.")
        total, best = sum(c * n for c, n in zip(counts, lengths)), sum(c * n for c, n in zip(counts, optimal))
        if total > best:
            shannon = [math.ceil(-math.log2(c / sum(counts))) if c else 0 for c in counts]
            if lengths == shannon:
                hint = ("those are Shannon's lengths ceil(-log2 p): within a bit of the entropy but not optimal. "
                        "Huffman: repeatedly merge the two least frequent subtrees (heapq).")
            elif len({lengths[s] for s in used}) == 1:
                hint = "that is a fixed-width code: frequent symbols must get shorter codes than rare ones."
            else:
                hint = ("repeatedly merge the two least frequent subtrees (heapq) and add 1 to the length of every "
                        "symbol in both.")
            fail("4.4", f"{best} bits in total for counts {counts} (optimal)", f"{total} bits", hint)
        symbols = [s for s, c in enumerate(counts) for _ in range(c)]
        if huffman_decode(huffman_encode(symbols, lengths), lengths, len(symbols)) != symbols:
            fail("4.4", "decoding to recover the input", "a different sequence", "check the lengths again.")
        assert total >= entropy_bits(counts) - 1e-9  # no code beats the entropy: a broken checker otherwise
    passed("4.4", "optimal code lengths; encoding then decoding recovers the input exactly")


def _decoded(exercise: str, path: str | os.PathLike, model_name: str) -> tuple[torch.nn.Module, dict]:
    path = Path(path)
    if not path.exists():
        fail(exercise, f"a compressed file at {path}", "no file", "write it with course_lib.share.save_shared.")
    try:
        _, header = decode_model(path)
        return load_model(path, build_model(model_name)), header
    except CorruptFileError as error:
        fail(exercise, "a file written by course_lib.share.save_shared", f"CorruptFileError: {error}",
             "write it again with save_shared(model, shared, path).")
    except RuntimeError as error:
        fail(exercise, f"a compressed {model_name}", f"tensors that do not fit it ({str(error)[:120]}…)",
             f"share every Linear/Conv2d of {model_name} and let save_shared store the rest.")
    raise AssertionError("unreachable")


def _accuracy_on(model: torch.nn.Module, dataset: Dataset | None) -> float:
    return evaluate(model, dataset or load_fashion_mnist("test"))


def check_compressed_file(exercise: str, path: str | os.PathLike, model_name: str, fp32_bytes: int,
                          reference_accuracy: float, min_compression: float, max_accuracy_loss: float,
                          dataset: Dataset | None = None) -> dict:
    """Exercises 4.5 and 4.6: a compressed file that decodes into ``model_name``, at least ``min_compression``
    times smaller than the ``fp32_bytes`` file, with at most ``max_accuracy_loss`` of accuracy lost on
    ``dataset`` (default: the test set; ``reference_accuracy`` is the fp32 model's on the same data)."""
    model, header = _decoded(exercise, path, model_name)
    size = Path(path).stat().st_size
    accuracy = _accuracy_on(model, dataset)
    compression = fp32_bytes / size
    shared = {layer["name"] for layer in header["layers"]}
    missing = [n for n, p in model.named_parameters() if n.endswith("weight") and p.dim() > 1 and n not in shared]
    if missing:
        fail(exercise, "every Linear/Conv2d weight shared", f"{', '.join(missing)} stored as plain floats",
             "share every layer: share_model(model, bits) with bits for each layer.")
    if compression < min_compression:
        fail(exercise, f"a file at least {min_compression}× smaller than the fp32 file ({fp32_bytes:,} bytes)",
             f"{size:,} bytes = {compression:.1f}×", "prune the big layers harder or use fewer bits for them; "
             "Huffman coding needs huffman=True (the default).")
    if accuracy < reference_accuracy - max_accuracy_loss:
        fail(exercise, f"test accuracy of at least {reference_accuracy - max_accuracy_loss:.2%}",
             f"{accuracy:.2%}", "retrain longer after pruning, prune the small (sensitive) layers less, or give "
             "them more bits; fine-tune the codebooks.")
    passed(exercise, f"{size:,} bytes ({compression:.1f}× smaller than fp32), test accuracy {accuracy:.2%} "
                     f"(fp32 {reference_accuracy:.2%}), decoded from the file alone")
    return {"size_bytes": size, "compression": compression, "accuracy": accuracy}


def _layer_names(model_name: str) -> list[str]:
    return list(prunable_layers(build_model(model_name)))


def _check_bits(exercise: str, bits: object, model_name: str) -> dict[str, int]:
    """``bits`` as a complete dict layer name -> whole number of bits from 1 to 8, else a clear error."""
    names = _layer_names(model_name)
    if not isinstance(bits, dict):
        fail(exercise, f"bits as a dict {{layer name: bits}} for {', '.join(names)}", type(bits).__name__,
             "one entry per layer, e.g. {\"" + names[0] + "\": 6, ...}: each layer gets its own width.")
    missing, unknown = [n for n in names if n not in bits], [n for n in bits if n not in names]
    if missing or unknown:
        fail(exercise, f"bits for exactly the layers {', '.join(names)}",
             f"missing {missing or 'none'}, unknown {unknown or 'none'}", "use the names of "
             "P.prunable_layers(model) (print them), one entry each.")
    for name, width in bits.items():
        if isinstance(width, bool) or not isinstance(width, int) or not 1 <= width <= S.MAX_BITS:
            fail(exercise, f"a whole number of bits from 1 to {S.MAX_BITS} for {name}", repr(width),
                 "bits per index: 2**bits shared values (1 bit: 2 values, 8 bits: 256).")
    return dict(bits)


def _check_file_follows(exercise: str, header: dict, bits: dict[str, int]) -> None:
    """Each shared layer of the file has as many shared values as its bits allow (not more, not half or fewer)."""
    for entry in header["layers"]:
        name = entry["name"].removesuffix(".weight")
        values = entry["clusters"] - 1
        if name in bits and not 2 ** (bits[name] - 1) < values <= 2 ** bits[name]:
            fail(exercise, f"{name} shared at the {bits[name]} bits you chose (at most {2 ** bits[name]} values)",
                 f"{values} shared values in the file", "write the file from the same bits you report: "
                 "S.share_model(model, bits) with your dict, then S.save_shared.")


def _layer_damage(path: str | os.PathLike, model_name: str, dataset: Dataset) -> dict[str, float]:
    """Accuracy lost on ``dataset`` when only one layer of the reference takes the file's (decoded) weight."""
    tensors, header = S.decode_model(path)
    reference = load_reference(model_name)
    baseline = evaluate(reference, dataset)
    damage = {}
    for entry in header["layers"]:
        model = load_reference(model_name)
        model.get_parameter(entry["name"]).data.copy_(tensors[entry["name"]])
        damage[entry["name"].removesuffix(".weight")] = baseline - evaluate(model, dataset)
    return damage


def check_lenet5_compression(recipe: object, path: str | os.PathLike, fp32_bytes: int, reference_accuracy: float,
                             min_compression: float = 35.0, max_accuracy_loss: float = 0.01) -> dict:
    """Exercise 4.5: ``recipe = {"sparsity": {layer: fraction}, "bits": {layer: bits}}`` for every layer of
    LeNet-5, and the file at ``path`` written by following it: at least ``min_compression``× smaller than fp32
    and within ``max_accuracy_loss`` of ``reference_accuracy`` on the test set."""
    names = _layer_names("lenet5")
    if not isinstance(recipe, dict) or set(recipe) != {"sparsity", "bits"}:
        fail("4.5", 'a dict {"sparsity": {...}, "bits": {...}}', repr(recipe)[:80],
             "write down your choices per layer; the stage code reads them from this dict.")
    sparsity = recipe["sparsity"]
    if not isinstance(sparsity, dict) or set(sparsity) != set(names) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v < 1 for v in sparsity.values()):
        fail("4.5", f"a sparsity from 0 to below 1 for each of {', '.join(names)}", repr(sparsity)[:120],
             "sparsity is the fraction of a layer's weights removed: 0.9 keeps one weight in ten.")
    bits = _check_bits("4.5", recipe["bits"], "lenet5")
    if len(set(sparsity.values())) == 1:
        fail("4.5", "a sparsity chosen per layer", f"{next(iter(sparsity.values()))} for every layer",
             "the layers differ in size (fc1 holds 93% of the weights, conv1 500) and in sensitivity (see the "
             "table): prune the big robust layer hard and the small ones gently.")
    model, header = _decoded("4.5", path, "lenet5")
    for name in names:
        removed = float((model.get_parameter(f"{name}.weight") == 0).float().mean())
        if abs(removed - sparsity[name]) > 0.02:
            fail("4.5", f"{name} pruned to the recipe's {sparsity[name]:.0%}", f"{removed:.1%} of its weights zero "
                 "in the file", "prune with P.gradual_prune(model, recipe['sparsity'], ...) and P.make_permanent "
                 "before sharing; write the file from that model.")
    _check_file_follows("4.5", header, bits)
    test_set = load_fashion_mnist("test")
    try:
        return check_compressed_file("4.5", path, "lenet5", fp32_bytes, reference_accuracy, min_compression,
                                     max_accuracy_loss, test_set)
    except ExerciseError as error:
        if "accuracy" not in str(error).split("\n")[0]:
            raise
        damage = _layer_damage(path, "lenet5", load_fashion_mnist("val"))  # a hint guides a choice: validation
        worst = max(damage, key=damage.get)
        raise ExerciseError(f"{error}\nAlone, each layer of your file costs (validation split): " + ", ".join(
            f"{n} {100 * d:+.2f} points" for n, d in damage.items()) + f". Start with {worst}: prune it less or "
            "give it more bits.") from None


def check_bit_allocation(bits: object, path: str | os.PathLike, max_bytes: int, reference_accuracy: float,
                         max_accuracy_loss: float = 0.01, model_name: str = "course_cnn") -> dict:
    """Exercise 4.6: bits per layer for every Conv2d/Linear of ``model_name`` and the file at ``path`` shared with
    them: at most ``max_bytes`` bytes and within ``max_accuracy_loss`` of ``reference_accuracy`` on the
    test set."""
    bits = _check_bits("4.6", bits, model_name)
    model, header = _decoded("4.6", path, model_name)
    _check_file_follows("4.6", header, bits)
    size = Path(path).stat().st_size
    if size > max_bytes:
        shares = {entry["name"].removesuffix(".weight"): sum(entry["sections"]) for entry in header["layers"]}
        biggest = max(shares, key=shares.get)
        hint = (f"a uniform {next(iter(bits.values()))} bits does not fit: " if len(set(bits.values())) == 1 else "")
        fail("4.6", f"a file of at most {max_bytes:,} bytes", f"{size:,} bytes",
             hint + f"{biggest} takes {shares[biggest] / size:.0%} of the file: give the big layers fewer bits and "
             "spend what you save on the small, sensitive ones.")
    test_set = load_fashion_mnist("test")
    try:
        return check_compressed_file("4.6", path, model_name, serialized_bytes(load_reference(model_name)),
                                     reference_accuracy, 1.0, max_accuracy_loss, test_set)
    except ExerciseError as error:
        damage = _layer_damage(path, model_name, load_fashion_mnist("val"))  # a hint guides a choice: validation
        worst = max(damage, key=damage.get)
        raise ExerciseError(f"{error}\nAlone, each layer of your file costs (validation split): " + ", ".join(
            f"{n} {100 * d:+.2f}" for n, d in damage.items()) + f" points. {worst} costs most: give it a bit more "
            "and take it from a layer that costs nothing.") from None
