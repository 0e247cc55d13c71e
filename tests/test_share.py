"""course_lib.share: clustering, Huffman coding, relative indexing and the checksummed file round-trip exactly."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from course_lib import share as S


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 9), min_size=1, max_size=400))
def test_huffman_decoding_recovers_the_input_and_meets_the_entropy_bound(symbols):
    counts = [symbols.count(s) for s in range(10)]
    lengths = S.huffman_code_lengths(counts)
    encoded = S.huffman_encode(symbols, lengths)
    assert S.huffman_decode(encoded, lengths, len(symbols)) == symbols
    coded_bits = sum(c * n for c, n in zip(counts, lengths))
    entropy = S.entropy_bits(counts)
    assert entropy - 1e-9 <= coded_bits <= entropy + len(symbols) + 1e-9  # within 1 bit per symbol of the bound
    assert len(encoded) == math.ceil(coded_bits / 8)


def test_canonical_codes_are_prefix_free():
    codes = S.canonical_codes(S.huffman_code_lengths([50, 20, 10, 10, 5, 5, 0, 1]))
    words = [format(code, f"0{length}b") for code, length in codes.values()]
    assert not any(a != b and b.startswith(a) for a in words for b in words)
    assert 6 not in codes, "an unused symbol gets no code"


@settings(max_examples=50, deadline=None)
@given(rows=st.integers(1, 30), cols=st.integers(1, 60), density=st.floats(0.0, 1.0), gap_bits=st.integers(0, 8),
       clusters=st.integers(1, 15), seed=st.integers(0, 1000), huffman=st.booleans(), half=st.booleans())
def test_random_sparse_layers_round_trip_through_the_file(tmp_path_factory, rows, cols, density, gap_bits, clusters,
                                                          seed, huffman, half):
    generator = torch.Generator().manual_seed(seed)
    indices = torch.randint(1, clusters + 1, (rows, cols), generator=generator)
    indices[torch.rand(rows, cols, generator=generator) >= density] = 0
    layer = S.SharedLayer(torch.cat([torch.zeros(1), torch.randn(clusters, generator=generator)]), indices)
    bias = torch.randn(rows, generator=generator)
    path = tmp_path_factory.mktemp("file") / "model.dcmp"
    size = S.encode_model(path, {"fc.weight": layer}, {"fc.bias": bias}, gap_bits=gap_bits, huffman=huffman,
                          dense_dtype=torch.float16 if half else torch.float32)
    tensors, header = S.decode_model(path)
    assert torch.equal(tensors["fc.weight"], layer.weight())
    assert torch.equal(tensors["fc.bias"], bias.half().float() if half else bias)
    assert size == path.stat().st_size and header["layers"][0]["gap_bits"] == gap_bits


def _naive_gaps(flat: list[int], gap_bits: int) -> tuple[list[int], list[int]]:
    """Han et al.'s relative indexing written as the plain loop it is."""
    gaps, values, previous, limit = [], [], -1, 1 << gap_bits
    for position, value in enumerate(flat):
        if value:
            while position - previous > limit:
                previous += limit
                gaps.append(limit - 1)
                values.append(0)
            gaps.append(position - previous - 1)
            values.append(value)
            previous = position
    return gaps, values


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 3).map(lambda v: v if v < 3 else 0), max_size=300), st.integers(1, 6))
def test_vectorised_gaps_match_the_plain_loop(flat, gap_bits):
    assert S.to_gaps(torch.tensor(flat, dtype=torch.long), gap_bits) == _naive_gaps(flat, gap_bits)


def test_fixed_width_packing_spends_exactly_the_width_and_huffman_less():
    generator = torch.Generator().manual_seed(0)
    indices = torch.randint(1, 16, (200, 100), generator=generator)  # 15 values used: 4 bits each
    indices[torch.rand(200, 100, generator=generator) < 0.9] = 0
    layer = S.SharedLayer(torch.cat([torch.zeros(1), torch.randn(15)]), indices)
    gaps, values = S.to_gaps(indices, 5)
    fixed = S.layer_bytes(layer, 5, huffman=False)
    used_gap_symbols = len(set(gaps))
    expected = 4 * 16 + 16 + math.ceil(4 * len(values) / 8) + 32 + math.ceil(
        len(gaps) * math.ceil(math.log2(used_gap_symbols)) / 8)
    assert fixed == expected
    assert S.layer_bytes(layer, 5, huffman=True) < fixed
    best = S.best_gap_bits(layer)
    assert all(S.layer_bytes(layer, best) <= S.layer_bytes(layer, b) for b in range(13))


def test_a_dense_shared_layer_stores_no_positions(tmp_path):
    layer = S.share_weight(torch.randn(30, 20), clusters=16)
    assert S.best_gap_bits(layer) == 0, "with no zeros, every position is stored: gaps would only waste bits"
    size = S.encode_model(tmp_path / "dense.dcmp", {"w": layer}, {}, huffman=False)
    assert size < 30 * 20 * 4 // 8 + 400, "4 bits per weight plus codebook, tables and header"


def test_gaps_insert_fillers_for_long_runs_of_zeros():
    indices = torch.zeros(40, dtype=torch.long)
    indices[[0, 3, 39]] = torch.tensor([2, 1, 3])
    gaps, values = S.to_gaps(indices, gap_bits=3)  # gaps up to 8
    assert values == [2, 1, 0, 0, 0, 0, 3] and gaps == [0, 2, 7, 7, 7, 7, 3]  # fillers at 11, 19, 27, 35
    assert torch.equal(S.from_gaps(gaps, values, 40), indices)


@pytest.fixture
def written(tmp_path):
    layer = S.share_weight(torch.randn(20, 30) * (torch.rand(20, 30) < 0.3), clusters=8)
    path = tmp_path / "model.dcmp"
    S.encode_model(path, {"fc.weight": layer}, {"fc.bias": torch.zeros(20)})
    return path


@pytest.mark.parametrize("damage,message", [
    (lambda b: b[:-7], "truncated"),
    (lambda b: b[:60] + bytes([b[60] ^ 1]) + b[61:], "checksum"),
    (lambda b: b"ZZZZ" + b[4:], "not a compressed model"),
    (lambda b: b[:4] + (2).to_bytes(2, "little") + b[6:], "version 2"),
    (lambda b: b[:10], "too short"),
])
def test_damaged_files_are_refused_with_a_clear_error(written, damage, message):
    written.write_bytes(damage(written.read_bytes()))
    with pytest.raises(S.CorruptFileError, match=message):
        S.decode_model(written)


def test_share_model_fits_the_indices_in_the_bits_and_fine_tuning_keeps_them():
    from course_lib.models import build_model
    from course_lib.prune import apply_masks, magnitude_masks, make_permanent

    torch.manual_seed(0)
    model = build_model("lenet_300_100")
    make_permanent(apply_masks(model, magnitude_masks(model, 0.8)))
    shared = S.share_model(model, {"fc1": 3, "fc2": 2, "fc3": 4})
    assert {n: len(layer.codebook) for n, layer in shared.items()} == {"fc1.weight": 8, "fc2.weight": 4,
                                                                      "fc3.weight": 16}
    trained = S.fine_tune_codebooks(model, shared, epochs=1, lr=1e-3, steps_per_epoch=3, progress=False)
    for name, layer in trained.items():
        assert torch.equal(layer.indices, shared[name].indices), "assignments stay fixed"
        assert not torch.equal(layer.codebook, shared[name].codebook), "the shared values were trained"
        assert torch.equal(model.get_parameter(name), layer.weight()), "the model is left with plain weights"
    with pytest.raises(ValueError, match="bits must be a whole number from 1 to 8"):
        S.share_model(model, 9)


def test_codebook_fine_tuning_leaves_unshared_weights_alone():
    from course_lib.models import build_model

    torch.manual_seed(0)
    model = build_model("lenet_300_100")
    fc1_before, fc3_bias_before = model.fc1.weight.detach().clone(), model.fc3.bias.detach().clone()
    shared = S.share_model(model, {"fc2": 3})
    S.fine_tune_codebooks(model, shared, epochs=1, lr=1e-2, steps_per_epoch=3, progress=False)
    assert torch.equal(model.fc1.weight, fc1_before), "an unshared layer's weights stay fixed"
    assert model.fc1.weight.requires_grad, "and trainable again afterwards"
    assert not torch.equal(model.fc3.bias, fc3_bias_before), "biases train with the codebooks"


def test_clusters_out_of_range_are_refused():
    with pytest.raises(ValueError, match="at least 1"):
        S.share_weight(torch.randn(10), clusters=0)
    with pytest.raises(ValueError, match="cannot make 11 clusters from 10 weights"):
        S.share_weight(torch.randn(10), clusters=11)
    with pytest.raises(ValueError, match="unknown init"):
        S.initial_centroids(torch.randn(10), 3, "magic")


@pytest.mark.parametrize("init", S.INITS)
def test_sharing_keeps_zeros_and_uses_at_most_the_clusters(init):
    weight = torch.randn(50, 40) * (torch.rand(50, 40) < 0.5)
    layer = S.share_weight(weight, clusters=16, init=init)
    rebuilt = layer.weight()
    assert torch.equal(rebuilt == 0, weight == 0) and len(torch.unique(rebuilt[weight != 0])) <= 16
    kept = weight != 0
    assert ((rebuilt - weight)[kept] ** 2).mean() < 0.03 * weight[kept].var(), "16 levels: a few % of the variance"


def test_codebook_gradient_is_the_sum_of_its_weights_gradients():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(12, 5))
    weight = model[0].weight.detach() * (torch.rand(5, 12) < 0.6)
    layer = S.share_weight(weight, clusters=4)
    S.attach_codebooks(model, {"0.weight": layer})
    assert torch.allclose(model[0].weight, layer.weight()), "the model computes with the shared weight"
    x = torch.randn(7, 12)
    model(x).pow(2).sum().backward()
    codebook = model[0].parametrizations.weight.original
    w = layer.weight().requires_grad_()
    torch.nn.functional.linear(x, w, model[0].bias).pow(2).sum().backward()
    expected = torch.zeros(5).index_add_(0, layer.indices.flatten(), w.grad.flatten())
    assert torch.allclose(codebook.grad[1:], expected[1:], atol=1e-5) and codebook.grad[0] == 0
    assert [n for n, _ in model.named_parameters()] == ["0.bias", "0.parametrizations.weight.original"]
    with torch.no_grad():
        codebook += 0.1
    again = S.shared_layers(model)["0.weight"]
    assert torch.equal(again.indices, layer.indices) and again.codebook[0] == 0
    assert torch.allclose(again.codebook[1:], layer.codebook[1:] + 0.1)
