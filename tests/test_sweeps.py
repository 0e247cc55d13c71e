"""The cached sweep results are honest: entries re-measured now match, and every configuration is present."""

import pytest

from course_lib import sweeps
from course_lib.quantize import CALIBRATIONS


def test_quantization_cache_covers_every_configuration():
    results = sweeps.load_results("quantization")
    expected = {sweeps.weight_quantization_key(b, g, m) for b in sweeps.WEIGHT_BITS for g in sweeps.GRANULARITIES
                for m in CALIBRATIONS}
    assert set(results["accuracy"]) == expected and len(expected) == 44
    assert results["accuracy"]["8-bit/channel/minmax"] > results["baseline_accuracy"] - 0.002
    assert results["accuracy"]["1-bit/tensor/mean-abs"] < 0.5


@pytest.mark.parametrize("bits,granularity,method", [(3, "tensor", "mse"), (5, "channel", "percentile")])
def test_cached_accuracy_matches_a_fresh_measurement(bits, granularity, method):
    cached = sweeps.load_results("quantization")["accuracy"][sweeps.weight_quantization_key(bits, granularity, method)]
    measured = sweeps.weight_quantization_accuracy("course_cnn", bits, granularity, method)
    assert abs(measured - cached) < 0.002, "regenerate with: python -m course_lib.sweeps quantization"


def test_missing_or_unknown_results_say_how_to_get_them(monkeypatch, tmp_path):
    with pytest.raises(ValueError, match="unknown sweep 'nope'"):
        sweeps.load_results("nope")
    monkeypatch.setattr(sweeps, "RESULTS_DIR", tmp_path)
    with pytest.raises(FileNotFoundError, match="python -m course_lib.sweeps quantization"):
        sweeps.load_results("quantization")
