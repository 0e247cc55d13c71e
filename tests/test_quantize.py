"""course_lib.quantize: the arithmetic (property tests), model-level simulation, QAT, and the real int8 paths."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from course_lib import quantize as Q
from course_lib.minilm import MiniLM, MiniLMConfig
from course_lib.models import build_model
from course_lib.runtime import CompilerMissingError, cpp_compiler, is_x86

floats = st.floats(min_value=-1e3, max_value=1e3, allow_nan=False, allow_infinity=False, width=32)


@st.composite
def tensors(draw, min_size=1, max_size=64):
    values = draw(st.lists(floats, min_size=min_size, max_size=max_size))
    return torch.tensor(values, dtype=torch.float32)


@settings(max_examples=200, deadline=None)
@given(x=tensors(), bits=st.integers(2, 16), symmetric=st.booleans())
def test_error_within_range_is_at_most_half_a_step(x, bits, symmetric):
    qp = Q.compute_qparams(x, bits, symmetric)
    q = Q.quantize(x, qp)
    assert q.dtype == torch.int32 and int(q.min()) >= qp.qmin and int(q.max()) <= qp.qmax
    error = (Q.dequantize(q, qp) - x).abs()
    float_slack = 8 * torch.finfo(torch.float32).eps * x.abs().max()  # fp32 rounding of (q - z) * scale
    assert bool((error <= qp.scale / 2 + float_slack + 1e-7).all())


@settings(max_examples=100, deadline=None)
@given(x=tensors(min_size=2), bits=st.integers(2, 8))
def test_zero_is_exact_and_affine_grid_spans_the_range(x, bits):
    qp = Q.compute_qparams(x, bits, symmetric=False)
    zero = torch.zeros(1)
    assert Q.dequantize(Q.quantize(zero, qp), qp).item() == 0.0
    assert 0 <= int(qp.zero_point) <= 2 ** bits - 1


@settings(max_examples=100, deadline=None)
@given(x=tensors(min_size=2), bits=st.integers(2, 8))
def test_values_outside_the_range_saturate(x, bits):
    qp = Q.compute_qparams(x, bits, symmetric=True)
    far = torch.tensor([1.0, -1.0]) * qp.scale * (qp.qmax + 2)  # two steps beyond the grid on either side
    assert Q.quantize(far, qp).tolist() == [qp.qmax, qp.qmin]


def test_integer_ranges_and_ternary():
    assert Q.integer_range(8, True) == (-127, 127) and Q.integer_range(8, False) == (0, 255)
    assert Q.integer_range(2, True) == (-1, 1)
    w = torch.tensor([[-0.9, 0.05, 0.7], [0.2, -0.3, 0.01]])
    assert set(Q.quantize_tensor(w, 2)[0].div(0.9).round().tolist()) <= {-1.0, 0.0, 1.0}


def test_matches_pytorch_fake_quantize():
    x = torch.randn(1000) * 2
    qp = Q.compute_qparams(x, 8, symmetric=False)
    ours = Q.dequantize(Q.quantize(x, qp), qp)
    theirs = torch.fake_quantize_per_tensor_affine(x, qp.scale.item(), int(qp.zero_point), 0, 255)
    assert torch.allclose(ours, theirs, atol=1e-6)


def test_per_channel_beats_per_tensor_when_channel_ranges_differ():
    w = torch.randn(16, 32, generator=torch.Generator().manual_seed(0)) * torch.logspace(-3, 0, 16).unsqueeze(1)

    def relative_error(per_channel):
        return ((Q.quantize_tensor(w, 4, per_channel=per_channel) - w).norm(dim=1) / w.norm(dim=1))

    per_tensor, per_channel = relative_error(False), relative_error(True)
    assert bool((per_channel < 0.25).all()) and per_tensor[0] == 1.0  # the smallest channel rounds to all zeros
    assert per_channel.mean() < per_tensor.mean() / 3


def test_clipping_calibration_trades_outliers_for_resolution():
    generator = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(10_000, generator=generator), torch.tensor([40.0])])
    errors = {m: (Q.dequantize(Q.quantize(x, qp := Q.compute_qparams(x, 4, method=m)), qp) - x).pow(2).mean()
              for m in Q.CALIBRATIONS}
    assert errors["mse"] <= errors["minmax"] and errors["percentile"] < errors["minmax"]
    low, high = Q.calibrate_range(x, "percentile", percentile=99.9)
    assert high < 5 < 40


def test_binarize_keeps_sign_and_mean_magnitude_per_channel():
    w = torch.tensor([[1.0, -3.0], [0.5, 0.5]])
    assert Q.binarize(w).tolist() == [[2.0, -2.0], [0.5, 0.5]]


@pytest.mark.parametrize("bits", [0, 17, 2.5, True])
def test_bits_outside_the_supported_range_are_refused(bits):
    with pytest.raises(ValueError, match="bits must be an integer from 1 to 16"):
        Q.quantize_tensor(torch.randn(4, 4), bits)


def test_bad_inputs_get_clear_errors():
    qp = Q.QParams(torch.tensor(0.0), torch.tensor(0), 8, True)
    with pytest.raises(ValueError, match="scale must be positive"):
        Q.quantize(torch.randn(3), qp)
    with pytest.raises(ValueError, match="empty"):
        Q.compute_qparams(torch.empty(0))
    with pytest.raises(TypeError, match="floating-point"):
        Q.compute_qparams(torch.arange(5))
    with pytest.raises(ValueError, match="unknown calibration method 'max'"):
        Q.calibrate_range(torch.randn(5), "max")
    with pytest.raises(ValueError, match="calibration set is empty"):
        Q.quantize_static(build_model("lenet5"), torch.empty(0, 1, 28, 28))


def test_unsupported_layers_are_named_with_the_fix():
    model = nn.Sequential(nn.Linear(4, 8), nn.GRU(8, 8))
    with pytest.raises(Q.UnsupportedLayerError, match=r"1 \(GRU\).*skip=\['1'\]"):
        Q.quantize_weights(model, 8)
    assert Q.check_supported(model, skip=["1"]) == ["0"]
    with pytest.raises(Q.UnsupportedLayerError, match="no Conv2d or Linear"):
        Q.prepare_qat(nn.Sequential(nn.ReLU()), 4)
    with pytest.raises(Q.UnsupportedLayerError, match=r"0 \(Conv1d\)"):
        Q.quantize_static(nn.Sequential(nn.Conv1d(1, 2, 3), nn.Flatten(), nn.Linear(12, 2)), torch.randn(4, 1, 8))


def test_quantize_weights_copies_and_rounds_only_conv_and_linear():
    model = build_model("course_cnn").eval()
    quantized = Q.quantize_weights(model, 3)
    conv = quantized.features[0].weight
    assert len(torch.unique(conv[0])) <= 7 and not torch.equal(conv, model.features[0].weight)
    assert torch.equal(quantized.features[1].weight, model.features[1].weight)  # batch norm stays float


def test_integer_linear_matches_float_within_output_step():
    generator = torch.Generator().manual_seed(1)
    x, w, b = torch.randn(8, 64, generator=generator), torch.randn(16, 64, generator=generator) * 0.1, torch.randn(16)
    x_qp = Q.compute_qparams(x, 8, symmetric=False)
    w_qp = Q.compute_qparams(w, 8, symmetric=True, axis=0)
    reference = nn.functional.linear(Q.dequantize(Q.quantize(x, x_qp), x_qp), Q.dequantize(Q.quantize(w, w_qp), w_qp), b)
    out_qp = Q.compute_qparams(reference, 8, symmetric=False)
    y_q = Q.integer_linear(Q.quantize(x, x_qp), x_qp, Q.quantize(w, w_qp), w_qp, b, out_qp)
    assert (Q.dequantize(y_q, out_qp) - reference).abs().max() <= out_qp.scale * 0.51 + 1e-6
    with pytest.raises(TypeError, match="int32 codes"):
        Q.integer_linear(x, x_qp, Q.quantize(w, w_qp), w_qp, b, out_qp)


def test_fixed_point_multiplier_is_accurate():
    m, shift = Q.fixed_point_multiplier(torch.tensor([0.3, 0.00123]))
    assert torch.allclose(m.double() / 2 ** shift, torch.tensor([0.3, 0.00123], dtype=torch.float64), rtol=1e-7)
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        Q.fixed_point_multiplier(torch.tensor([1.5]))


def test_fake_quant_passes_gradients_straight_through():
    w = torch.randn(6, 5, requires_grad=True)
    layer = Q.FakeQuantWeight(4)
    out = layer(w)
    out.sum().backward()
    assert torch.equal(w.grad, torch.ones_like(w))
    assert len(torch.unique(out[0].detach())) <= 15


def test_qat_trains_fake_quantized_weights_and_bakes_them():
    model = build_model("lenet_300_100")
    prepared = Q.prepare_qat(model, 4)
    opt = torch.optim.SGD(prepared.parameters(), lr=0.1)
    x, y = torch.randn(16, 1, 28, 28), torch.randint(0, 10, (16,))
    before = prepared.fc1.parametrizations.weight.original.detach().clone()
    nn.functional.cross_entropy(prepared(x), y).backward()
    opt.step()
    assert not torch.equal(before, prepared.fc1.parametrizations.weight.original)
    Q.finish_qat(prepared)
    assert type(prepared.fc1.weight) is nn.Parameter and len(torch.unique(prepared.fc1.weight[0])) <= 15
    assert torch.equal(Q.quantize_weights(prepared, 4).fc1.weight, prepared.fc1.weight)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_weights_are_refused_with_the_layer_name(bad):
    w = torch.randn(4, 4)
    w[1, 2] = bad
    with pytest.raises(Q.NonFiniteWeightsError, match=r"conv\.weight holds .*cannot be quantized.*diverged"):
        Q.quantize_tensor(w, 8, name="conv.weight")
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    with torch.no_grad():
        model[2].weight[0, 0] = bad
    with pytest.raises(Q.NonFiniteWeightsError, match=r"^2\.weight holds"):
        Q.quantize_weights(model, 4)
    with pytest.raises(Q.NonFiniteWeightsError, match="1 infinite|1 NaN"):
        Q.quantize_tensor(w, 1)  # binary weights too


requires_x86 = pytest.mark.skipif(not is_x86(), reason="the int8 CPU kernels (PT2E) exist only on x86-64")


@pytest.fixture(scope="module")
def tiny_int8_file(tmp_path_factory):
    """A two-convolution net on 8x8 inputs, quantized with PT2E and saved: seconds, not minutes."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.Flatten(), nn.Linear(64, 3)).eval()
    images = torch.randn(32, 1, 8, 8)
    converted = Q.quantize_static(model, images)
    path = tmp_path_factory.mktemp("int8") / "tiny.pt2"
    Q.save_int8(converted, images, path)
    return path, converted, images


@requires_x86
def test_int8_file_roundtrips_with_its_checksum(tiny_int8_file):
    path, converted, images = tiny_int8_file
    assert path.read_bytes()[-64 - len(Q.INT8_FILE_MARK):-64] == Q.INT8_FILE_MARK
    with torch.no_grad():
        assert torch.equal(Q.load_int8(path)(images[:5]), converted(images[:5]))


@requires_x86
def test_compile_for_cpu_freezes_only_while_the_compiled_model_runs(tiny_int8_file):
    import torch._inductor.config as inductor_config

    if cpp_compiler() is None:
        pytest.skip("torch.compile on a CPU needs a C++ compiler")
    _, converted, images = tiny_int8_file
    compiled = Q.compile_for_cpu(converted)
    with torch.no_grad():
        out = compiled(images[:4])
    assert inductor_config.freezing is False, "freezing must not stay on for the rest of the process"
    assert out.shape == (4, 3) and torch.isfinite(out).all()


def test_compile_for_cpu_without_a_compiler_says_how_to_get_one(monkeypatch):
    monkeypatch.setenv("CXX", "no-such-compiler")
    monkeypatch.setenv("PATH", "")
    with pytest.raises(CompilerMissingError, match="needs a C\\+\\+ compiler.*apt-get install g\\+\\+"):
        Q.compile_for_cpu(nn.Linear(2, 2))


def _flip_one_bit(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0x04]) + data[at + 1:]


@requires_x86
@pytest.mark.parametrize("damage,message", [
    (lambda data: data[: len(data) // 2], "not a complete int8 model file"),
    (lambda data: data[:-1], "not a complete int8 model file"),
    (lambda data: _flip_one_bit(data, 100), "is damaged: its bytes no longer match the SHA-256"),
    (lambda data: _flip_one_bit(data, len(data) // 2), "is damaged"),
    (lambda data: _flip_one_bit(data, len(data) - 3), "is damaged"),  # in the recorded digest itself
    (lambda data: bytes(range(256)) * 40, "not a complete int8 model file"),  # random bytes
])
def test_damaged_int8_files_are_refused_with_a_clear_error(tiny_int8_file, tmp_path, damage, message, capfd):
    path, _, _ = tiny_int8_file
    bad = tmp_path / "bad.pt2"
    bad.write_bytes(damage(path.read_bytes()))
    with pytest.raises(Q.Int8FileError, match=f"(?s){bad.name}.*{message}.*Q.save_int8"):
        Q.load_int8(bad)
    assert "Traceback" not in capfd.readouterr().err  # no internal torch traceback printed


@requires_x86
def test_foreign_files_are_refused(tiny_int8_file, tmp_path):
    path, converted, images = tiny_int8_file
    unsealed = tmp_path / "plain.pt2"  # a genuine ExportedProgram, but not written by save_int8
    torch.export.save(torch.export.export(converted, (images[:2],)), unsealed)
    safetensors_file = tmp_path / "weights.pt2"
    Q.save_dynamic_int8(Q.quantize_dynamic(nn.Sequential(nn.Linear(4, 4))), safetensors_file)
    for foreign in (unsealed, safetensors_file):
        with pytest.raises(Q.Int8FileError, match="not a complete int8 model file written by Q.save_int8"):
            Q.load_int8(foreign)


@requires_x86
def test_static_int8_roundtrips_through_a_pt2_file(tmp_path):
    model = build_model("lenet5").eval()
    images = torch.randn(64, 1, 28, 28)
    converted = Q.quantize_static(model, images)
    with pytest.raises(ValueError, match=r"\.pt2"):
        Q.save_int8(converted, images, tmp_path / "model.bin")
    size = Q.save_int8(converted, images, tmp_path / "model.pt2")
    fp32_bytes = sum(p.numel() * 4 for p in model.parameters())
    assert size < 0.4 * fp32_bytes
    reloaded = Q.load_int8(tmp_path / "model.pt2")
    with torch.no_grad():
        expected, got, fp32 = converted(images[:5]), reloaded(images[:5]), model(images[:5])
    assert torch.allclose(expected, got) and torch.allclose(got, fp32, atol=0.1 * fp32.abs().max().item())
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt2"]


def _tiny_minilm() -> MiniLM:
    torch.manual_seed(0)
    return MiniLM(MiniLMConfig(vocab_size=100, hidden=32, layers=2, heads=2, intermediate=64)).eval()


def test_dynamic_int8_is_close_to_float_and_roundtrips(tmp_path):
    model = _tiny_minilm()
    ids, mask = torch.randint(0, 100, (4, 12)), torch.ones(4, 12, dtype=torch.long)
    absmax = Q.linear_input_absmax(model, lambda: model(ids, mask))
    assert len(absmax) == 12
    int8 = Q.quantize_dynamic(model, per_channel=True, reduce_range=False, smooth_alpha=0.5, absmax=absmax)
    assert not any(isinstance(m, nn.Linear) for m in int8.modules())
    with torch.no_grad():
        reference, got = model(ids, mask), int8(ids, mask)
    assert nn.functional.cosine_similarity(reference, got).min() > 0.99
    Q.save_dynamic_int8(int8, tmp_path / "m.safetensors")
    reloaded = Q.load_dynamic_int8(tmp_path / "m.safetensors", MiniLM(model.cfg))
    with torch.no_grad():
        assert torch.equal(reloaded(ids, mask), got)
    with pytest.raises(ValueError, match="calibration statistics"):
        Q.quantize_dynamic(model, smooth_alpha=0.5)
    selective = Q.quantize_dynamic(model, smooth_alpha=0.5, absmax=absmax, smooth_names=["layers.1.ffn.intermediate"])
    smoothed = [n for n, m in selective.named_modules() if getattr(m, "inverse_smooth", None) is not None]
    assert smoothed == ["layers.1.ffn.intermediate"]


def test_int8_embeddings_shrink_the_file_and_roundtrip(tmp_path):
    model = _tiny_minilm()
    ids, mask = torch.randint(0, 100, (3, 10)), torch.ones(3, 10, dtype=torch.long)
    linears_only = Q.quantize_dynamic(model, per_channel=True, reduce_range=False)
    full = Q.quantize_embeddings(linears_only)
    assert isinstance(full.word_embeddings, Q.Int8Embedding) and full.word_embeddings.codes.dtype == torch.int8
    table = model.word_embeddings.weight
    error = (full.word_embeddings(torch.arange(100)) - table).abs()
    assert bool((error <= full.word_embeddings.scales[:, None] / 2 + 1e-7).all()), "at most half a step per row"
    small = Q.save_dynamic_int8(full, tmp_path / "full.safetensors")
    big = Q.save_dynamic_int8(linears_only, tmp_path / "linears.safetensors")
    assert big - small > 0.7 * 3 * table.numel()  # 4 -> 1 byte per table entry, plus one scale per row
    reloaded = Q.load_dynamic_int8(tmp_path / "full.safetensors", MiniLM(model.cfg))
    with torch.no_grad():
        assert torch.equal(reloaded(ids, mask), full(ids, mask))
        assert nn.functional.cosine_similarity(full(ids, mask), model(ids, mask)).min() > 0.99
    with pytest.raises(ValueError, match="no nn.Embedding"):
        Q.quantize_embeddings(nn.Sequential(nn.Linear(2, 2)))
    with pytest.raises(ValueError, match="one scale per row"):
        Q.Int8Embedding(torch.zeros(4, 2, dtype=torch.int8), torch.ones(3))


def test_simulated_linear_matches_the_int8_kernel():
    """With VNNI the kernel sums uint8 × int8 products into int32 and 8-bit activations are exact; on AVX2-only
    CPUs pairs of products are added in int16 (vpmaddubsw) and can saturate, so there the kernel is only exact
    with 7-bit activations (reduce_range=True), which is what the simulation is compared with."""
    from course_lib.runtime import cpu_int8_features

    vnni = bool(cpu_int8_features())
    generator = torch.Generator().manual_seed(5)
    linear = nn.Linear(64, 32)
    x = torch.randn(10, 64, generator=generator)
    simulated = Q.SimulatedQuantLinear(linear, act_bits=8 if vnni else 7)(x)
    real = Q.DynamicInt8Linear.from_linear(linear, reduce_range=not vnni)(x)
    assert (simulated - real).abs().max() < 0.02 * real.abs().max()


def test_smoothing_factors_preserve_the_product():
    linear = nn.Linear(8, 4)
    s = Q.smoothing_factors(torch.rand(8) * 10 + 0.1, linear.weight, 0.5)
    x = torch.randn(3, 8)
    assert torch.allclose((x / s) @ (linear.weight * s).T, x @ linear.weight.T, atol=1e-5)
    with pytest.raises(ValueError, match="alpha"):
        Q.smoothing_factors(torch.ones(8), linear.weight, 1.5)


def test_replace_linears_refuses_unknown_names():
    with pytest.raises(ValueError, match="not Linear layers"):
        Q.replace_linears(_tiny_minilm(), lambda n, l: l, names=["embedding_norm"])
