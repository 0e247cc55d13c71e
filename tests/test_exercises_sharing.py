"""Notebook 04's checkers accept the solutions and reject typical wrong answers with the matching hint."""

import heapq
import math

import pytest
import torch

from course_lib import share as S
from course_lib.exercises import ExerciseError
from course_lib.exercises import sharing as check
from course_lib.models import load_reference
from course_lib.prune import apply_masks, magnitude_masks, make_permanent


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


def test_compressed_file_checker_measures_the_file(pruned_lenet, tmp_path, capsys):
    path = tmp_path / "lenet.dcmp"
    S.save_shared(pruned_lenet, S.share_model(pruned_lenet, 5), path)
    result = check.check_compressed_file("4.5", path, "lenet_300_100", 1_066_896, 0.8992, 5.0, 0.02)
    assert result["size_bytes"] == path.stat().st_size and result["compression"] > 5
    assert "Exercise 4.5 passed" in capsys.readouterr().out
    with pytest.raises(ExerciseError, match="at least 60.0× smaller"):
        check.check_compressed_file("4.5", path, "lenet_300_100", 1_066_896, 0.8992, 60.0, 0.02)
    with pytest.raises(ExerciseError, match="retrain longer"):
        check.check_compressed_file("4.5", path, "lenet_300_100", 1_066_896, 0.95, 5.0, 0.001)


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
