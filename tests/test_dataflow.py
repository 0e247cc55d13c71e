import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from course_lib.dataflow import (LayerStats, Machine, attainable_gflops, format_profile, gemm_rates,
                                 int8_linear_rates, layer_call_overhead_us, layer_inputs, layer_latencies,
                                 layer_profile, layer_times_in_context, memory_bandwidth_gbs, traffic_after_fusion)
from course_lib.exercises.dataflow import reference_linear_intensity
from course_lib.minilm import MiniLM, use_fused_attention
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


def test_roofline():
    assert attainable_gflops(1.0, peak_gflops=100, bandwidth_gbs=20) == 20
    assert attainable_gflops(50.0, peak_gflops=100, bandwidth_gbs=20) == 100


def test_each_layer_gets_the_roof_of_its_library():
    machine = Machine("cpu", matmul_gflops=100.0, conv_gflops=300.0, bandwidth_gbs=20.0)
    assert machine.roofs == {"BLAS": 100.0, "oneDNN": 300.0}
    assert machine.peak_for("Linear") == 100.0 and machine.peak_for("Conv2d") == 300.0
    assert machine.ridge_for("Linear") == 5.0 and machine.ridge_for("Conv2d") == 15.0
    assert Machine("cuda", 1.0, 2.0, 3.0).library_for("Conv2d") == "cuDNN"
    assert machine.int8_linear_speedup is None
    assert Machine("cpu", 100.0, 300.0, 20.0, 10.0, 200.0, 500.0).int8_linear_speedup == 2.5


def test_three_regimes_overhead_memory_compute():
    machine = Machine("cpu", matmul_gflops=100.0, conv_gflops=300.0, bandwidth_gbs=20.0, call_overhead_us=10.0)
    lenet = layer_profile(build_model("lenet_300_100"), torch.zeros(1, 1, 28, 28))
    fc1, fc3 = lenet[0], lenet[2]
    assert machine.bound(fc1) == "memory"  # 942 kB of weights at 20 GB/s: 47 us
    assert machine.bound(fc3) == "overhead"  # 4.5 kB and 1,000 MACs: the call costs more
    assert machine.bound(fc1.at_batch(4096)) == "compute"
    terms = machine.time_terms_us(fc1)
    assert terms["memory"] == pytest.approx(fc1.moved_bytes / 20e3) and terms["overhead"] == 10.0
    conv = next(l for l in layer_profile(build_model("course_cnn"), torch.zeros(1, 1, 28, 28))
                if l.name == "features.3")
    assert machine.time_terms_us(conv)["compute"] == pytest.approx(2 * conv.macs / 300e3)


def test_fusion_removes_the_traffic_of_absorbed_element_wise_layers():
    profile = layer_profile(build_model("course_cnn"), torch.zeros(2, 1, 28, 28))
    total = sum(l.moved_bytes for l in profile)
    kinds = {kind: sum(l.moved_bytes for l in profile if l.kind == kind) for kind in ("BatchNorm2d", "ReLU")}
    assert traffic_after_fusion(profile, ()) == total
    assert traffic_after_fusion(profile, ("BatchNorm2d",)) == total - kinds["BatchNorm2d"]
    classifier_relu = next(l for l in profile if l.name == "classifier.2")  # after a Linear: fused as well
    assert traffic_after_fusion(profile, ("BatchNorm2d", "ReLU")) == total - kinds["BatchNorm2d"] - kinds["ReLU"]
    assert classifier_relu.kind == "ReLU"
    relu_first = [LayerStats("r", "ReLU", 0, 0, (1, 4), (1, 4), 16, 16, 0)] + profile
    assert traffic_after_fusion(relu_first, ("ReLU",)) - traffic_after_fusion(profile, ("ReLU",)) == 32, \
        "an element-wise layer with no computing layer before it has nothing to fuse into"


def test_layer_times_in_context_add_up_to_the_pass():
    model = build_model("course_cnn").eval()
    times = layer_times_in_context(model, torch.randn(4, 1, 28, 28), rounds=3, warmup=1)
    assert set(times.layers_ms) == {l.name for l in layer_profile(model, torch.zeros(1, 1, 28, 28))}
    assert all(ms > 0 for ms in times.layers_ms.values())
    assert sum(times.layers_ms.values()) <= times.hooked_ms + 1e-9
    assert times.other_ms == pytest.approx(times.hooked_ms - sum(times.layers_ms.values()))
    assert len(times.whole.samples_ms) == 3


def test_context_times_warn_when_parts_and_whole_disagree():
    from course_lib.dataflow import ContextTimes
    from course_lib.measure import latency_stats

    agree = ContextTimes(latency_stats([10.0]), 10.5, {"a": 9.0})
    apart = ContextTimes(latency_stats([10.0]), 12.0, {"a": 9.0})
    assert agree.warning() is None and agree.other_ms == pytest.approx(1.5)
    assert "20% apart" in apart.warning()


def test_fused_and_unfused_attention_agree_and_count_the_same_macs():
    from course_lib.measure import count_macs

    model = MiniLM().eval()
    ids, mask = torch.randint(0, 1000, (2, 16)), torch.ones(2, 16, dtype=torch.long)
    mask[1, 10:] = 0
    with torch.inference_mode():
        fused = model(ids, mask)
        unfused_macs = count_macs(use_fused_attention(model, False), ids, mask)
        unfused = model(ids, mask)
    use_fused_attention(model, True)
    assert torch.allclose(fused, unfused, atol=1e-5)
    assert count_macs(model, ids, mask) == unfused_macs
    with pytest.raises(ValueError, match="no AttentionCore"):
        use_fused_attention(build_model("lenet5"), True)


def test_machine_measurements_are_plausible_and_validated():
    rates = gemm_rates(n=256, rounds=2)
    assert set(rates) == {"matmul", "conv"}
    assert all(1 < rate < 1e5 for rate in rates.values())
    assert 0.5 < memory_bandwidth_gbs(16, rounds=2) < 5000
    assert 0 < layer_call_overhead_us(rounds=20) < 10_000
    fp32, int8 = int8_linear_rates((256, 128, 128), rounds=2)
    assert 0.1 < fp32 < 1e5 and 0.1 < int8 < 1e5
    with pytest.raises(ValueError, match="too small"):
        gemm_rates(n=8)
    with pytest.raises(ValueError, match="cache"):
        memory_bandwidth_gbs(1)


def test_format_profile_has_totals():
    text = format_profile(layer_profile(build_model("lenet_300_100"), torch.zeros(1, 1, 28, 28)))
    assert text.splitlines()[-1].split()[:3] == ["total", "266,610", "1,066,440"]
