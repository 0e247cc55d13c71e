"""Micro-batched real-time serving: arrivals, percentiles, service times, the simulation and the real clock."""

import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from course_lib.measure import latency_stats
from course_lib.serving import (RealtimeResult, ServiceTime, capacity, latency_curve, max_rate_at_p99, p99,
                                percentile, poisson_arrivals, run_realtime, simulate)

SERVICE = ServiceTime((1, 8, 32), (0.002, 0.004, 0.010))  # 2 ms alone, 4 ms for 8: capacity 2000 per second


def constant_service(seconds):
    return lambda batch: seconds


def test_poisson_arrivals_have_mean_gap_one_over_rate_and_scale_with_the_rate():
    arrivals = poisson_arrivals(200.0, 20_000, seed=3)
    assert arrivals[0] > 0 and (np.diff(arrivals) >= 0).all()
    assert np.diff(arrivals).mean() == pytest.approx(1 / 200, rel=0.03)
    np.testing.assert_allclose(poisson_arrivals(50.0, 100, seed=3), poisson_arrivals(1.0, 100, seed=3) / 50)
    assert not np.array_equal(poisson_arrivals(1.0, 100, seed=3), poisson_arrivals(1.0, 100, seed=4))


@pytest.mark.parametrize("rate", [0.0, -3.0, float("inf"), float("nan")])
def test_poisson_arrivals_reject_a_rate_that_is_not_positive(rate):
    with pytest.raises(ValueError, match="arrival rate must be > 0"):
        poisson_arrivals(rate, 10)


def test_poisson_arrivals_reject_no_arrivals():
    with pytest.raises(ValueError, match="at least 1 arrival"):
        poisson_arrivals(1.0, 0)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(0, 1e3), min_size=1, max_size=200), st.floats(0, 100))
def test_percentile_matches_numpy(latencies, q):
    assert percentile(latencies, q) == pytest.approx(np.percentile(latencies, q))


def test_p99_sorts_the_latencies_first():
    latencies = [100.0 - i for i in range(100)]  # descending: the 99th element is 2.0
    assert latencies[98] == 2.0
    assert p99(latencies) == pytest.approx(99.01)


@pytest.mark.parametrize("latencies,q,problem", [([], 99, "non-empty"), ([1.0], 101, "from 0 to 100"),
                                                 ([1.0], -1, "from 0 to 100"), ([1.0, float("nan")], 50, "NaN")])
def test_percentile_rejects_bad_input(latencies, q, problem):
    with pytest.raises(ValueError, match=problem):
        percentile(latencies, q)


def test_service_time_interpolates_between_and_extrapolates_beyond_measurements():
    assert [SERVICE(b) for b in (1, 8, 32)] == [0.002, 0.004, 0.010]
    assert SERVICE(4) == pytest.approx(0.002 + 3 / 7 * 0.002)
    assert SERVICE(20) == pytest.approx(0.007)
    assert SERVICE(64) == pytest.approx(0.010 + 32 * 0.006 / 24)
    flattening = ServiceTime((1, 2), (0.003, 0.002))
    assert flattening(10) == 0.002  # extrapolation never goes below the largest measurement


@pytest.mark.parametrize("sizes,seconds,problem", [
    ((1, 8), (0.002,), "one time per batch size"),
    ((1,), (0.002,), "at least two batch sizes"),
    ((2, 8), (0.002, 0.004), "start at 1"),
    ((1, 8, 4), (0.002, 0.004, 0.003), "strictly increase"),
    ((1, 8), (0.002, 0.0), "> 0 seconds"),
    ((1, 8), (0.002, float("nan")), "> 0 seconds"),
])
def test_service_time_rejects_bad_measurements(sizes, seconds, problem):
    with pytest.raises(ValueError, match=problem):
        ServiceTime(sizes, seconds)


def test_service_time_rejects_an_empty_batch():
    with pytest.raises(ValueError, match="at least 1"):
        SERVICE(0)


def test_service_time_from_latency_stats_converts_milliseconds():
    service = ServiceTime.from_latency({8: latency_stats([4.0, 4.0, 4.0]), 1: latency_stats([2.0, 2.0])})
    assert service == ServiceTime((1, 8), (0.002, 0.004))
    with pytest.raises(ValueError, match="no median_ms"):
        ServiceTime.from_latency({1: 2.0, 8: 4.0})
    slow_calls = ServiceTime.from_latency({1: latency_stats([2.0] * 9 + [3.0]), 8: latency_stats([4.0] * 9 + [9.0])},
                                          "p90_ms")
    assert slow_calls(1) > 0.002 and slow_calls(8) > 0.004


def test_simulate_without_batching_at_low_rate_is_the_service_time():
    latencies = simulate(np.arange(50) * 1.0, constant_service(0.003), max_batch=1, max_wait_s=0.0)
    np.testing.assert_allclose(latencies, 0.003)


def test_simulate_lone_requests_wait_for_a_batch_then_are_served_alone():
    latencies = simulate(np.arange(50) * 1.0, SERVICE, max_batch=8, max_wait_s=0.005)
    np.testing.assert_allclose(latencies, 0.005 + SERVICE(1))


def test_simulate_serves_a_full_burst_at_once():
    latencies = simulate(np.full(8, 0.5), SERVICE, max_batch=8, max_wait_s=0.005)
    np.testing.assert_allclose(latencies, SERVICE(8))


def test_simulate_follows_the_batching_rule_step_by_step():
    # Two arrived by 1 ms: a full batch starts then and ends at 4 ms. The third has waited past 2 ms when the
    # server frees at 4 ms: it goes alone, ending at 7 ms. The fourth waits its 2 ms: from 12 to 15 ms.
    latencies = simulate(np.array([0.0, 0.001, 0.0015, 0.010]), constant_service(0.003), max_batch=2,
                         max_wait_s=0.002)
    np.testing.assert_allclose(latencies, [0.004, 0.003, 0.0055, 0.005])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(0, 0.1), min_size=1, max_size=60), st.integers(1, 12), st.floats(0, 0.01),
       st.floats(1e-4, 5e-3), st.floats(0, 5e-3))
def test_simulate_latencies_are_bounded_and_served_in_order(arrivals, max_batch, max_wait_s, alone_s, extra_s):
    service = ServiceTime((1, 4), (alone_s, alone_s + extra_s))
    times = np.sort(arrivals)
    latencies = simulate(times, service, max_batch, max_wait_s)
    longest_s = max(service(b) for b in range(1, max_batch + 1))
    assert latencies.shape == times.shape
    assert (latencies >= service(1) - 1e-12).all()
    assert (latencies <= len(times) * longest_s + max_wait_s + 1e-12).all()
    assert (np.diff(times + latencies) >= -1e-12).all()  # FIFO: completions never go back in time


def test_simulate_overload_makes_latencies_grow():
    latencies = simulate(poisson_arrivals(4000.0, 4000), SERVICE, max_batch=8, max_wait_s=0.001)
    assert latencies[-400:].mean() > 5 * latencies[:400].mean()
    assert latencies[-1] > 100 * SERVICE(8)


def test_simulate_is_fast_enough_for_a_bisection():
    arrivals = poisson_arrivals(1000.0, 20_000)
    simulate(arrivals, SERVICE, 8, 0.002)
    start = time.perf_counter()
    simulate(arrivals, SERVICE, 8, 0.002)
    assert time.perf_counter() - start < 0.5  # about 10 ms on a quiet laptop


@pytest.mark.parametrize("arrivals,max_batch,max_wait_s,problem", [
    (np.arange(3.0), 0, 0.0, "max_batch must be at least 1"),
    (np.arange(3.0), 4, -0.001, "max_wait_s must be >= 0"),
    (np.array([]), 4, 0.0, "non-empty"),
    (np.array([0.0, 2.0, 1.0]), 4, 0.0, "sorted"),
    (np.array([-1.0, 2.0]), 4, 0.0, ">= 0 seconds"),
])
def test_simulate_rejects_bad_input(arrivals, max_batch, max_wait_s, problem):
    with pytest.raises(ValueError, match=problem):
        simulate(arrivals, SERVICE, max_batch, max_wait_s)


def test_simulate_rejects_a_service_time_that_is_not_positive():
    with pytest.raises(ValueError, match="service"):
        simulate(np.arange(3.0), constant_service(0.0), 4, 0.0)


def test_max_rate_at_p99_meets_the_budget_and_a_5_percent_higher_rate_does_not():
    budgets = (0.005, 0.010, 0.020)
    rates = [max_rate_at_p99(SERVICE, budget, max_batch=8, max_wait_s=0.001, requests=5000) for budget in budgets]
    assert rates[0] < rates[1] < rates[2] < 2000  # below the capacity of 8 requests per 4 ms
    unit_rate_arrivals = poisson_arrivals(1.0, 5000)
    for rate, budget in zip(rates, budgets, strict=True):
        assert p99(simulate(unit_rate_arrivals / rate, SERVICE, 8, 0.001)) <= budget
        assert p99(simulate(unit_rate_arrivals / (1.05 * rate), SERVICE, 8, 0.001)) > budget


@pytest.mark.parametrize("budget,max_wait_s,problem", [
    (0.0, 0.0, "a p99 budget must be > 0"),
    (-1.0, 0.0, "a p99 budget must be > 0"),
    (0.001, 0.0, "single-request service time 2 ms already exceeds the p99 budget 1 ms"),
    (0.003, 0.002, "lower max_wait_s"),
])
def test_max_rate_at_p99_rejects_budgets_it_cannot_meet(budget, max_wait_s, problem):
    with pytest.raises(ValueError, match=problem):
        max_rate_at_p99(SERVICE, budget, max_batch=8, max_wait_s=max_wait_s, requests=1000)


def test_max_rate_at_p99_stays_below_the_capacity_however_short_the_run():
    """A budget long against the run: 1,000 arrivals above the capacity would still finish within it."""
    most = capacity(SERVICE, 8)
    assert most == pytest.approx(2000.0)  # 8 requests per 4 ms
    rate = max_rate_at_p99(SERVICE, 0.5, max_batch=8, max_wait_s=0.0, requests=1000)
    assert 0.9 * most < rate < most
    assert p99(simulate(poisson_arrivals(1.3 * most, 1000), SERVICE, 8, 0.0)) < 0.5  # what fooled a short run


def test_latency_curve_rises_with_the_rate():
    curve = latency_curve(SERVICE, [100, 1000, 3000], max_batch=8, max_wait_s=0.001, requests=3000)
    assert set(curve) == {"rate", "p50", "p99"}
    np.testing.assert_array_equal(curve["rate"], [100, 1000, 3000])
    assert (curve["p50"] <= curve["p99"]).all()
    assert curve["p99"][2] > 10 * curve["p99"][0]
    with pytest.raises(ValueError, match="rates must be"):
        latency_curve(SERVICE, [100, -1], max_batch=8, max_wait_s=0.001)


def sleep_one_ms(batch):
    time.sleep(0.001)


def test_run_realtime_serves_everything_at_a_low_rate():
    arrivals = poisson_arrivals(100.0, 20, seed=1)
    result = run_realtime(sleep_one_ms, arrivals, max_batch=4, max_wait_s=0.002, time_limit_s=5.0)
    assert (result.served, result.unserved) == (20, 0)
    assert result.latencies_s.shape == (20,) and (result.latencies_s >= 0.001).all()
    assert 1 <= result.batches <= 20 and result.wall_s >= arrivals[-1]
    assert result.p99_ms == pytest.approx(p99(result.latencies_s) * 1e3)
    assert result.p99_ms < 200  # about 3 ms on a quiet laptop


def test_run_realtime_serves_a_burst_in_one_batch():
    sizes = []
    result = run_realtime(sizes.append, np.zeros(8), max_batch=8, max_wait_s=0.5, time_limit_s=5.0)
    assert sizes == [8] and result.batches == 1 and result.served == 8
    assert result.wall_s < 0.4  # a full batch does not wait for max_wait_s


def test_run_realtime_counts_arrivals_it_had_no_time_to_serve():
    arrivals = poisson_arrivals(5000.0, 2000)  # 0.4 s of arrivals, five times more than one-at-a-time can serve
    result = run_realtime(sleep_one_ms, arrivals, max_batch=1, max_wait_s=0.0, time_limit_s=0.05)
    arrived = int(np.searchsorted(arrivals, 0.05, side="right"))
    assert result.unserved > 0 and result.served + result.unserved == arrived
    assert result.served == result.batches == result.latencies_s.size
    assert result.wall_s < 0.3


def test_run_realtime_rejects_bad_input_and_an_empty_result_has_no_p99():
    with pytest.raises(ValueError, match="time_limit_s must be > 0"):
        run_realtime(sleep_one_ms, np.zeros(3), max_batch=2, max_wait_s=0.0, time_limit_s=0.0)
    with pytest.raises(ValueError, match="sorted"):
        run_realtime(sleep_one_ms, np.array([1.0, 0.0]), max_batch=2, max_wait_s=0.0, time_limit_s=1.0)
    empty = RealtimeResult(latencies_s=np.array([]), served=0, unserved=3, batches=0, wall_s=1.0)
    with pytest.raises(ValueError, match="no request was served"):
        _ = empty.p99_ms
