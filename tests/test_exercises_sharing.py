"""Notebook 04's checkers accept the solutions and reject typical wrong answers with the matching hint."""

import heapq
import math

import pytest
import torch

from course_lib import share as S
from course_lib.exercises import ExerciseError
from course_lib.exercises import sharing as check
from course_lib.models import load_reference
from course_lib.prune import apply_masks, layer_magnitude_masks, magnitude_masks, make_permanent
from course_lib.train import evaluate


def kmeans(values, clusters, iterations=300):
    centroids = torch.linspace(float(values.min()), float(values.max()), clusters)
    labels = None
    for _ in range(iterations):
        new = (values[:, None] - centroids[None, :]).abs().argmin(1)
        if labels is not None and torch.equal(new, labels):
            break
        labels = new
        for k in range(clusters):
            if (labels == k).any():
                centroids[k] = values[labels == k].mean()
    return centroids, (values[:, None] - centroids[None, :]).abs().argmin(1)


@pytest.fixture(scope="module")
def fc3_weight():
    return load_reference("lenet_300_100").fc3.weight.detach()


def test_kmeans(fc3_weight, capsys):
    check.check_kmeans(kmeans, fc3_weight)
    assert "Exercise 4.1 passed" in capsys.readouterr().out


def _stale_labels(values, clusters):
    start = torch.linspace(float(values.min()), float(values.max()), clusters)
    labels = (values[:, None] - start[None, :]).abs().argmin(1)
    centroids, _ = kmeans(values, clusters)
    return centroids, labels


@pytest.mark.parametrize("wrong,hint", [
    (lambda v, k: kmeans(v, k, iterations=0), "still the linear start"),
    (lambda v, k: kmeans(v, k, iterations=1), "repeat assign"),
    (_stale_labels, "assign again"),
    (lambda v, k: (kmeans(v, k)[0][:-1], kmeans(v, k)[1]), "one centroid per cluster"),
    (lambda v, k: kmeans(v, k)[0], "a pair"),
])
def test_kmeans_mistakes(fc3_weight, wrong, hint):
    with pytest.raises(ExerciseError, match=hint):
        check.check_kmeans(wrong, fc3_weight)


def _random_start(values, clusters, seed=7):  # a seed whose start lands in a bad local optimum
    """Lloyd's iterations from a random sample of the values (the wrong initialisation)."""
    generator = torch.Generator().manual_seed(seed)
    centroids = values[torch.randperm(len(values), generator=generator)[:clusters]].sort().values.clone()
    for _ in range(300):
        labels = (values[:, None] - centroids[None, :]).abs().argmin(1)
        for k in range(clusters):
            if (labels == k).any():
                centroids[k] = values[labels == k].mean()
    return centroids, (values[:, None] - centroids[None, :]).abs().argmin(1)


def _all_equal(values, clusters):
    return torch.full((clusters,), float(values.mean())), torch.zeros(len(values), dtype=torch.long)


def _one_duplicate(values, clusters):
    centroids, _ = kmeans(values, clusters - 1)
    centroids = torch.cat([centroids, centroids[-1:]])
    return centroids, (values[:, None] - centroids[None, :]).abs().argmin(1)


@pytest.mark.parametrize("wrong,hint", [
    (_all_equal, "(?s)4 distinct centroids.*got 1 distinct.*not all at one value"),
    (_one_duplicate, "(?s)distinct centroids.*got 3 distinct.*some centroids coincide"),
    (_random_start, "(?s)result of the linear initialisation.*a random start"),
])
def test_kmeans_rejects_degenerate_and_badly_started_answers(fc3_weight, wrong, hint):
    with pytest.raises(ExerciseError, match=hint):
        check.check_kmeans(wrong, fc3_weight)


def test_compression_rate(capsys):
    check.check_compression_rate(lambda n, k: 32 * n / (n * max(1, math.ceil(math.log2(k))) + 32 * k))
    assert "Exercise 4.2 passed" in capsys.readouterr().out


@pytest.mark.parametrize("wrong,hint", [
    (lambda n, k: 32 * n / (n * math.log2(k)), "whole number of bits"),
    (lambda n, k: 32 / math.ceil(math.log2(k)), "count the codebook"),
    (lambda n, k: (n * math.ceil(math.log2(k)) + 32 * k) / (32 * n), "original bits / compressed"),
    (lambda n, k: 32 * n / (n * math.ceil(math.log2(k)) + k), "32 bits per codebook entry"),
])
def test_compression_rate_mistakes(wrong, hint):
    with pytest.raises(ExerciseError, match=hint):
        check.check_compression_rate(wrong)


def test_codebook_gradient(capsys):
    check.check_codebook_gradient(lambda g, i, k: torch.zeros(k).index_add_(0, i.flatten(), g.flatten()))
    assert "Exercise 4.3 passed" in capsys.readouterr().out


@pytest.mark.parametrize("wrong,hint", [
    (lambda g, i, k: torch.zeros(k).index_add_(0, i.flatten(), g.flatten()) / torch.bincount(i.flatten(), minlength=k),
     "sum, do not average"),
    (lambda g, i, k: torch.zeros(k).index_add_(0, i.flatten(), g.abs().flatten()), "keep the signs"),
    (lambda g, i, k: g, "one gradient per codebook entry"),
    (lambda g, i, k: torch.zeros(k).index_add_(0, i.flatten(), g.t().flatten()), "add each weight's gradient"),
])
def test_codebook_gradient_mistakes(wrong, hint):
    with pytest.raises(ExerciseError, match=hint):
        check.check_codebook_gradient(wrong)


def huffman_lengths(counts):
    lengths = [0] * len(counts)
    heap = [(c, s, [s]) for s, c in enumerate(counts) if c]
    if len(heap) == 1:
        lengths[heap[0][1]] = 1
    heapq.heapify(heap)
    while len(heap) > 1:
        a, _, sa = heapq.heappop(heap)
        b, tie, sb = heapq.heappop(heap)
        for s in sa + sb:
            lengths[s] += 1
        heapq.heappush(heap, (a + b, tie, sa + sb))
    return lengths


def test_huffman_lengths(capsys):
    check.check_huffman_lengths(huffman_lengths)
    assert "Exercise 4.4 passed" in capsys.readouterr().out


def _shannon(counts):
    return [math.ceil(-math.log2(c / sum(counts))) if c else 0 for c in counts]


@pytest.mark.parametrize("wrong,hint", [
    (_shannon, "Shannon's lengths"),
    (lambda c: [max(1, math.ceil(math.log2(len(c))))] * len(c), "fixed-width"),
    (lambda c: [n or 1 for n in huffman_lengths(c)], "0 for unused"),
    (lambda c: [1 if n else 0 for n in c], "prefix-free"),
    (lambda c: [r + 1 if n else 0 for r, n in zip(sorted(range(len(c)), key=lambda s: -c[s]), c)], "merge"),
    (lambda c: huffman_lengths(c)[:-1], "one per symbol"),
])
def test_huffman_lengths_mistakes(wrong, hint):
    with pytest.raises(ExerciseError, match=hint):
        check.check_huffman_lengths(wrong)


@pytest.fixture(scope="module")
def pruned_lenet():
    model = load_reference("lenet_300_100")
    return make_permanent(apply_masks(model, magnitude_masks(model, 0.5)))


@pytest.fixture(scope="module")
def val_accuracy():
    from course_lib.data import load_fashion_mnist

    test_set = load_fashion_mnist("test")
    return {name: evaluate(load_reference(name), test_set) for name in ("lenet_300_100", "lenet5")}


def test_compressed_file_checker_measures_the_file(pruned_lenet, val_accuracy, tmp_path, capsys):
    path = tmp_path / "lenet.dcmp"
    S.save_shared(pruned_lenet, S.share_model(pruned_lenet, 5), path)
    reference = val_accuracy["lenet_300_100"]
    result = check.check_compressed_file("4.5", path, "lenet_300_100", 1_066_896, reference, 5.0, 0.02)
    assert result["size_bytes"] == path.stat().st_size and result["compression"] > 5
    assert "Exercise 4.5 passed" in capsys.readouterr().out
    with pytest.raises(ExerciseError, match="at least 60.0× smaller"):
        check.check_compressed_file("4.5", path, "lenet_300_100", 1_066_896, reference, 60.0, 0.02)
    with pytest.raises(ExerciseError, match="(?s)test accuracy.*retrain longer"):
        check.check_compressed_file("4.5", path, "lenet_300_100", 1_066_896, reference + 0.05, 5.0, 0.001)


def test_compressed_file_checker_rejects_partial_corrupt_and_foreign_files(pruned_lenet, tmp_path):
    partial = tmp_path / "partial.dcmp"
    shared = S.share_model(pruned_lenet, {"fc1": 4})
    S.save_shared(pruned_lenet, shared, partial)
    with pytest.raises(ExerciseError, match="fc2.weight, fc3.weight stored as plain floats"):
        check.check_compressed_file("4.5", partial, "lenet_300_100", 1_066_896, 0.8992, 1.0, 0.5)
    corrupt = tmp_path / "corrupt.dcmp"
    corrupt.write_bytes(partial.read_bytes()[:-3])
    with pytest.raises(ExerciseError, match="truncated"):
        check.check_compressed_file("4.5", corrupt, "lenet_300_100", 1_066_896, 0.8992, 1.0, 0.5)
    with pytest.raises(ExerciseError, match="do not fit it"):
        check.check_compressed_file("4.6", partial, "lenet5", 1_724_920, 0.921, 1.0, 0.5)
    with pytest.raises(ExerciseError, match="no file"):
        check.check_compressed_file("4.6", tmp_path / "missing.dcmp", "lenet5", 1_724_920, 0.921, 1.0, 0.5)


RECIPE5 = {"sparsity": {"conv1": 0.2, "conv2": 0.6, "fc1": 0.9, "fc2": 0.5},
           "bits": {"conv1": 6, "conv2": 5, "fc1": 4, "fc2": 5}}


def _lenet5_file(folder, recipe):
    model = load_reference("lenet5")
    make_permanent(apply_masks(model, layer_magnitude_masks(model, recipe["sparsity"])))
    path = folder / "lenet5.dcmp"
    S.save_shared(model, S.share_model(model, recipe["bits"]), path)
    return path


@pytest.fixture(scope="module")
def lenet5_file(tmp_path_factory):
    return _lenet5_file(tmp_path_factory.mktemp("lenet5"), RECIPE5)


def test_lenet5_compression_checks_the_recipe_and_the_file(lenet5_file, val_accuracy, capsys):
    reference = val_accuracy["lenet5"]
    result = check.check_lenet5_compression(RECIPE5, lenet5_file, 1_724_920, reference, 15, 1.0)
    assert "Exercise 4.5 passed" in capsys.readouterr().out and result["compression"] > 15
    with pytest.raises(ExerciseError, match="(?s)at least 35.0× smaller.*prune the big layers harder"):
        check.check_lenet5_compression(RECIPE5, lenet5_file, 1_724_920, reference)
    with pytest.raises(ExerciseError,
                       match=r"(?s)test accuracy.*Alone, each layer of your file costs \(validation split\): conv1"):
        check.check_lenet5_compression(RECIPE5, lenet5_file, 1_724_920, 1.0, 15, 0.0)


@pytest.mark.parametrize("recipe,hint", [
    ({"sparsity": RECIPE5["sparsity"]}, 'a dict {"sparsity"'),
    ({**RECIPE5, "sparsity": {**RECIPE5["sparsity"], "fc2": 1.2}}, "fraction of a layer's weights removed"),
    ({**RECIPE5, "sparsity": dict.fromkeys(RECIPE5["sparsity"], 0.9)}, "(?s)chosen per layer.*fc1 holds 93%"),
    ({**RECIPE5, "bits": {"conv1": 6, "conv2": 5, "fc1": 4}}, "(?s)missing \\['fc2'\\]"),
    ({**RECIPE5, "bits": {**RECIPE5["bits"], "conv1": 9}}, "whole number of bits from 1 to 8 for conv1"),
    ({**RECIPE5, "bits": {**RECIPE5["bits"], "fc1": 2}}, "(?s)fc1 shared at the 2 bits.*same bits you report"),
    ({**RECIPE5, "sparsity": {**RECIPE5["sparsity"], "fc1": 0.95}}, "(?s)fc1 pruned to the recipe's 95%.*gradual_prune"),
])
def test_lenet5_compression_rejects_incomplete_implausible_or_unfollowed_recipes(lenet5_file, recipe, hint):
    with pytest.raises(ExerciseError, match=hint):
        check.check_lenet5_compression(recipe, lenet5_file, 1_724_920, 0.9, 15, 0.05)


def _lenet_shared(folder, bits, name="lenet.dcmp"):
    model = load_reference("lenet_300_100")
    path = folder / name
    S.save_shared(model, S.share_model(model, bits), path)
    return path


def test_bit_allocation(val_accuracy, tmp_path, capsys):
    bits = {"fc1": 2, "fc2": 4, "fc3": 6}
    path = _lenet_shared(tmp_path, bits)
    reference = val_accuracy["lenet_300_100"]
    check.check_bit_allocation(bits, path, 70_000, reference, 1.0, model_name="lenet_300_100")
    assert "Exercise 4.6 passed" in capsys.readouterr().out
    with pytest.raises(ExerciseError, match="(?s)test accuracy.*Alone, each layer.*costs most: give it a bit more"):
        check.check_bit_allocation(bits, path, 70_000, 1.0, 0.0, model_name="lenet_300_100")


@pytest.mark.parametrize("bits,claimed,hint", [
    ({"fc1": 4, "fc2": 4, "fc3": 4}, None, "(?s)at most 70,000 bytes.*a uniform 4 bits does not fit.*fc1 takes"),
    ({"fc1": 2, "fc2": 4, "fc3": 6}, {"fc1": 2, "fc2": 4, "fc3": 9}, "whole number of bits from 1 to 8 for fc3"),
    ({"fc1": 2, "fc2": 4, "fc3": 6}, {"fc1": 2, "fc2": 4, "fc3": 0}, "whole number of bits from 1 to 8 for fc3"),
    ({"fc1": 2, "fc2": 4, "fc3": 6}, {"fc1": 2, "fc2": 4}, "(?s)missing \\['fc3'\\]"),
    ({"fc1": 2, "fc2": 4, "fc3": 6}, {"fc1": 2, "fc2": 4, "fc3": 3}, "fc3 shared at the 3 bits you chose"),
    ({"fc1": 2, "fc2": 4, "fc3": 6}, [2, 4, 6], "bits as a dict"),
])
def test_bit_allocation_rejects_oversized_uniform_out_of_range_and_unfollowed_bits(tmp_path, bits, claimed, hint):
    path = _lenet_shared(tmp_path, bits)
    with pytest.raises(ExerciseError, match=hint):
        check.check_bit_allocation(bits if claimed is None else claimed, path, 70_000, 0.85, 0.05,
                                   model_name="lenet_300_100")
