import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from course_lib.dataflow import (LayerStats, Machine, attainable_gflops, format_profile, gemm_rates,
                                 int8_matmul_available, layer_inputs, layer_latencies, layer_profile,
                                 memory_bandwidth_gbs)
from course_lib.exercises.dataflow import reference_linear_intensity
from course_lib.minilm import MiniLM
from course_lib.models import build_model


def test_profile_of_lenet_300_100_counts_every_byte():
    profile = layer_profile(build_model("lenet_300_100"), torch.zeros(3, 1, 28, 28))
    assert [l.name for l in profile] == ["fc1", "fc2", "fc3"]
    fc1 = profile[0]
    assert (fc1.parameters, fc1.weight_bytes, fc1.macs) == (235_500, 4 * 235_500, 3 * 784 * 300)
    assert fc1.input_shape == (3, 784) and fc1.output_shape == (3, 300)
    assert fc1.input_bytes == 4 * 3 * 784 and fc1.output_bytes == 4 * 3 * 300
    assert fc1.intensity == pytest.approx(reference_linear_intensity(784, 300, 3))


def test_profile_of_course_cnn_matches_conv_formula_and_covers_all_layers():
    profile = layer_profile(build_model("course_cnn"), torch.zeros(2, 1, 28, 28))
    assert len(profile) == 26  # 21 feature layers + 5 classifier layers
    conv = next(l for l in profile if l.name == "features.3")
    assert conv.macs == 2 * 28 * 28 * 32 * 32 * 9 and conv.kind == "Conv2d"
    assert sum(l.macs for l in profile) == 2 * 29_424_640
    relu = next(l for l in profile if l.name == "features.2")
    assert relu.macs == 0 and relu.intensity == 0.0 and relu.activation_bytes == 2 * 4 * 2 * 32 * 28 * 28


def test_profile_sees_attention_core_of_minilm():
    model = MiniLM().eval()
    ids, mask = torch.zeros(1, 16, dtype=torch.long), torch.ones(1, 16, dtype=torch.long)
    core = next(l for l in layer_profile(model, ids, mask) if l.name == "layers.0.attention.core")
    assert core.macs == 2 * 12 * 16 * 16 * 32  # q k^T and p v, per head
    assert core.input_bytes == 3 * 4 * 16 * 384 + 4 * 16  # q, k, v and the float mask


@settings(max_examples=20, deadline=None)
@given(batch=st.integers(1, 64), target=st.integers(1, 300))
def test_at_batch_matches_a_real_profile(batch, target):
    model = build_model("lenet5")
    derived = [l.at_batch(target) for l in layer_profile(model, torch.zeros(batch, 1, 28, 28))]
    real = layer_profile(model, torch.zeros(target, 1, 28, 28))
    assert derived == real


def test_at_batch_rejects_nonsense():
    stats = LayerStats("x", "Linear", 10, 40, (1, 4), (1, 2), 16, 8, 8)
    with pytest.raises(ValueError, match="at least 1"):
        stats.at_batch(0)


def test_layer_inputs_and_latencies_time_each_layer_alone():
    model = build_model("lenet_300_100").eval()
    x = torch.randn(2, 1, 28, 28)
    captured = layer_inputs(model, x)
    assert torch.equal(captured["fc1"][0], x.flatten(1)) and captured["fc2"][0].shape == (2, 300)
    latencies = layer_latencies(model, x, rounds=2, names=["fc2"])
    assert list(latencies) == ["fc2"] and latencies["fc2"].median_ms > 0


def test_paired_layer_latencies_time_variants_layer_by_layer():
    from course_lib.dataflow import paired_layer_latencies
    from course_lib.quantize import quantize_dynamic

    model = build_model("lenet_300_100").eval()
    x = torch.randn(4, 1, 28, 28)
    paired = paired_layer_latencies({"fp32": model, "int8": quantize_dynamic(model)}, x, rounds=2)
    assert list(paired) == ["fc1", "fc2", "fc3"]
    assert set(paired["fc1"]) == {"fp32", "int8"} and paired["fc1"]["int8"].median_ms > 0
    with pytest.raises(ValueError, match="do not have the same layers"):
        paired_layer_latencies({"a": model, "b": torch.nn.Sequential(torch.nn.Flatten())}, x)


def test_roofline():
    assert attainable_gflops(1.0, peak_gflops=100, bandwidth_gbs=20) == 20
    assert attainable_gflops(50.0, peak_gflops=100, bandwidth_gbs=20) == 100
    assert Machine("cpu", 100.0, 20.0).ridge_intensity == 5.0


def test_machine_measurements_are_plausible_and_validated():
    rates = gemm_rates(n=256, rounds=2)
    assert set(rates) == {"torch.matmul (BLAS)", "3x3 convolution (oneDNN / cuDNN)"}
    assert all(1 < rate < 1e5 for rate in rates.values())
    assert 0.5 < memory_bandwidth_gbs(16, rounds=2) < 5000
    assert isinstance(int8_matmul_available(), bool)
    with pytest.raises(ValueError, match="too small"):
        gemm_rates(n=8)
    with pytest.raises(ValueError, match="cache"):
        memory_bandwidth_gbs(1)


def test_format_profile_has_totals():
    text = format_profile(layer_profile(build_model("lenet_300_100"), torch.zeros(1, 1, 28, 28)))
    assert text.splitlines()[-1].split()[:3] == ["total", "266,610", "1,066,440"]
