import time

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file
from torch import nn

from course_lib.measure import (compare_latency, count_flops, count_macs, count_nonzeros, count_parameters, latency_stats,
                                fixed_threads, measure_latency, peak_memory_bytes, save_state_dict, serialized_bytes)


def test_parameters_and_nonzeros():
    layer = nn.Linear(10, 4)
    assert count_parameters(layer) == 44
    with torch.no_grad():
        layer.weight[:2] = 0
        layer.bias.zero_()
    assert count_nonzeros(layer) == 20


def test_file_bytes_are_the_real_file(tmp_path):
    model = nn.Sequential(nn.Linear(100, 50), nn.Linear(50, 10))
    size = save_state_dict(model, tmp_path / "m.safetensors")
    assert size == (tmp_path / "m.safetensors").stat().st_size
    assert 4 * count_parameters(model) < size < 4 * count_parameters(model) + 1024, "raw numbers + a small header"
    reloaded = load_file(tmp_path / "m.safetensors")
    assert all(torch.equal(reloaded[k], v) for k, v in model.state_dict().items())
    assert serialized_bytes(model) == size
    half = model.half()
    assert serialized_bytes(half) < 0.51 * size + 1024, "fp16 halves the bytes"


def test_macs_of_linear_and_conv_layers():
    assert count_macs(nn.Linear(784, 300), torch.zeros(1, 784)) == 784 * 300
    assert count_macs(nn.Linear(784, 300), torch.zeros(64, 784)) == 64 * 784 * 300
    conv = nn.Conv2d(3, 8, kernel_size=3, padding=1)
    assert count_macs(conv, torch.zeros(2, 3, 10, 10)) == 2 * 10 * 10 * 8 * 3 * 9
    assert count_flops(conv, torch.zeros(1, 3, 10, 10)) == 2 * 10 * 10 * 8 * 3 * 9


def test_compare_latency_alternates_and_warms_up():
    calls = []
    result = compare_latency({"a": lambda x: calls.append("a"), "b": lambda x: calls.append("b")}, (None,),
                             rounds=3, warmup=2)
    assert calls == ["a", "a", "b", "b"] + ["a", "b"] * 3
    assert set(result) == {"a", "b"} and all(len(s.samples_ms) == 3 for s in result.values())


def test_latency_measures_wall_time_of_a_call():
    stats = measure_latency(lambda: time.sleep(0.01), (), rounds=3, warmup=1)
    assert stats.median_ms >= 10.0, "a call that sleeps 10 ms cannot take less"
    assert stats.throughput(batch_size=8) == pytest.approx(8000 / stats.median_ms)
    assert "ms (p10-p90" in str(stats)


def test_latency_runs_in_inference_mode_with_fixed_threads():
    seen = []
    measure_latency(lambda: seen.append((torch.is_inference_mode_enabled(), torch.get_num_threads())), (),
                    rounds=1, warmup=0, threads=1)
    assert seen == [(True, 1)]
    assert torch.get_num_threads() == 2, "the thread count is restored afterwards"


def test_bad_timing_arguments():
    with pytest.raises(ValueError, match="at least one candidate"):
        compare_latency({}, ())
    with pytest.raises(ValueError, match="rounds >= 1"):
        measure_latency(lambda: None, (), rounds=0)
    with pytest.raises(ValueError, match="threads must be at least 1"):
        with fixed_threads(0):
            pass


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(0.01, 1e4), min_size=1, max_size=40))
def test_latency_statistics_are_ordered(samples):
    stats = latency_stats(samples)
    assert min(samples) <= stats.p10_ms <= stats.median_ms <= stats.p90_ms <= max(samples)


def test_peak_memory_counts_live_intermediate_tensors():
    model = nn.Sequential(nn.Linear(1000, 2000), nn.ReLU(), nn.Linear(2000, 500))
    x = torch.randn(100, 1000)
    # Linear output and ReLU output (100 x 2000 floats each) are alive together at the peak.
    assert peak_memory_bytes(model, x) == 2 * 100 * 2000 * 4
    inplace = nn.Sequential(nn.Linear(1000, 2000), nn.ReLU(inplace=True), nn.Linear(2000, 500))
    assert peak_memory_bytes(inplace, x) == 100 * 2000 * 4 + 100 * 500 * 4


def test_peak_memory_ignores_views_of_existing_tensors():
    weight = torch.randn(1000, 1000)
    assert peak_memory_bytes(lambda w: w.t()[:10], weight) == 0
    assert peak_memory_bytes(lambda w: w * 2, weight) == 4 * 1000 * 1000
