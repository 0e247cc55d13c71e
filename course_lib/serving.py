"""Serve a model in real time: transactions arrive one at a time and a micro-batching scorer groups them.

The scorer follows one rule, both in the simulation and on the real clock: when the server is free and
requests are waiting, it starts a batch as soon as ``max_batch`` requests are waiting or the oldest one
has waited ``max_wait_s``, whichever comes first; the batch takes the oldest ``min(waiting, max_batch)``.
From measured per-batch service times, :func:`max_rate_at_p99` finds the highest arrival rate that
keeps the p99 latency within a budget; :func:`run_realtime` checks it with real model calls.
"""

from __future__ import annotations

import math
import operator
import time
from bisect import bisect_right
from itertools import pairwise
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

SPIN_BELOW_S = 0.5e-3  # run_realtime sleeps until this close to its next event, then spins: sleep overshoots
LOWEST_RATE_IN_BUDGETS = 1e-3  # max_rate_at_p99 starts at one request per 1000 budgets, where nothing queues
BRACKET_FACTOR = 4.0  # and multiplies the rate by this until the p99 misses the budget
RATE_PRECISION = 1.01  # then bisects until the highest rate that meets it is known to 1%
SIMULATED_BUDGETS = 100  # each rate is simulated for at least this many p99 budgets of arrivals, so that a queue
# that grows slowly has the time to show it


def poisson_arrivals(rate_per_s: float, count: int, seed: int = 0) -> np.ndarray:
    """``count`` sorted arrival times in seconds from 0, with exponential gaps of mean ``1 / rate_per_s``.

    The same seed at another rate gives the same arrivals scaled by the ratio of the rates."""
    if not (math.isfinite(rate_per_s) and rate_per_s > 0):
        raise ValueError(f"arrival rate must be > 0 transactions per second, got {rate_per_s}: "
                         "pass a positive, finite rate (e.g. 500.0)")
    if operator.index(count) < 1:
        raise ValueError(f"count must be at least 1 arrival, got {count}: pass how many transactions to generate")
    return np.random.default_rng(seed).standard_exponential(count).cumsum() / rate_per_s


def percentile(latencies: Sequence[float] | np.ndarray, q: float) -> float:
    """The ``q``-th percentile (0 to 100) of the latencies, linearly interpolated as ``np.percentile`` does."""
    values = np.asarray(latencies, dtype=float)
    if values.ndim != 1 or values.size == 0:
        raise ValueError(f"percentile needs a non-empty 1-D list of latencies, got shape {values.shape}: "
                         "pass one latency per request")
    if not 0 <= q <= 100:
        raise ValueError(f"q must be a percentile from 0 to 100, got {q}: e.g. 99 for the p99")
    if np.isnan(values).any():
        raise ValueError(f"{int(np.isnan(values).sum())} latencies are NaN: measure every request before "
                         "taking a percentile")
    return float(np.percentile(values, q))


def p99(latencies: Sequence[float] | np.ndarray) -> float:
    """The 99th percentile of the latencies: 1% of the requests took longer."""
    return percentile(latencies, 99)


@dataclass(frozen=True)
class ServiceTime:
    """Time to score one batch, from measured (batch size, seconds) pairs: linear in between, and linear
    from the last two measurements beyond the largest (never below the largest's time)."""

    batch_sizes: tuple[int, ...]
    seconds: tuple[float, ...]

    def __post_init__(self) -> None:
        sizes = tuple(operator.index(size) for size in self.batch_sizes)
        seconds = tuple(float(value) for value in self.seconds)
        if len(sizes) != len(seconds):
            raise ValueError(f"{len(sizes)} batch sizes but {len(seconds)} times: pass one time per batch size")
        if len(sizes) < 2:
            raise ValueError(f"need service times for at least two batch sizes (1 and a larger one), got {sizes}: "
                             "one size cannot tell how the time grows with the batch")
        if sizes[0] != 1 or any(later <= earlier for earlier, later in pairwise(sizes)):
            raise ValueError(f"batch sizes must start at 1 and strictly increase, got {sizes}: "
                             "sort them and measure batch size 1")
        if not all(math.isfinite(value) and value > 0 for value in seconds):
            raise ValueError(f"service times must be > 0 seconds and finite, got {seconds}: "
                             "pass measured times in seconds")
        object.__setattr__(self, "batch_sizes", sizes)
        object.__setattr__(self, "seconds", seconds)

    @classmethod
    def from_latency(cls, stats: Mapping[int, object], statistic: str = "median_ms") -> ServiceTime:
        """From ``{batch_size: stats}`` where each ``stats.<statistic>`` (``median_ms`` or e.g. ``p90_ms``) is the
        batch's latency in milliseconds (e.g. :class:`course_lib.measure.LatencyStats`)."""
        missing = [size for size, measured in stats.items() if not hasattr(measured, statistic)]
        if missing:
            raise ValueError(f"the stats of batch sizes {missing} have no {statistic}: pass measured LatencyStats")
        sizes = sorted(stats)
        return cls(tuple(sizes), tuple(getattr(stats[size], statistic) / 1000.0 for size in sizes))

    def __call__(self, batch: int) -> float:
        """Seconds to score one batch of ``batch`` requests."""
        if operator.index(batch) < 1:
            raise ValueError(f"batch size must be at least 1, got {batch}: a batch holds at least one request")
        sizes, seconds = self.batch_sizes, self.seconds
        if batch >= sizes[-1]:
            slope = (seconds[-1] - seconds[-2]) / (sizes[-1] - sizes[-2])
            return max(seconds[-1], seconds[-1] + slope * (batch - sizes[-1]))
        above = bisect_right(sizes, batch)
        fraction = (batch - sizes[above - 1]) / (sizes[above] - sizes[above - 1])
        return seconds[above - 1] + fraction * (seconds[above] - seconds[above - 1])


def _checked_arrivals(arrivals: np.ndarray) -> np.ndarray:
    """The arrival times as a float array, or a clear error if they are not sorted seconds from 0."""
    times = np.asarray(arrivals, dtype=float)
    if times.ndim != 1 or times.size == 0:
        raise ValueError(f"arrivals must be a non-empty 1-D array of times in seconds, got shape {times.shape}: "
                         "e.g. poisson_arrivals(rate, count)")
    if not np.isfinite(times).all() or times[0] < 0:
        raise ValueError(f"arrival times must be finite and >= 0 seconds, got a first of {times[0]} and "
                         f"{int((~np.isfinite(times)).sum())} non-finite: pass offsets from the start")
    if (np.diff(times) < 0).any():
        raise ValueError("arrival times must be sorted (non-decreasing): pass np.sort(arrivals)")
    return times


def _check_batching(max_batch: int, max_wait_s: float) -> None:
    """A clear error for a batch size limit below 1 or a negative or non-finite wait."""
    if operator.index(max_batch) < 1:
        raise ValueError(f"max_batch must be at least 1 request, got {max_batch}: 1 scores each request alone")
    if not (math.isfinite(max_wait_s) and max_wait_s >= 0):
        raise ValueError(f"max_wait_s must be >= 0 seconds and finite, got {max_wait_s}: 0 never waits "
                         "for a batch to fill")


def _batch_start(times: list[float], oldest: int, max_batch: int, max_wait_s: float) -> float:
    """When the batch beginning at request ``oldest`` may start, once the server is free: when ``max_batch``
    requests are waiting or when the oldest has waited ``max_wait_s``, whichever comes first."""
    start = times[oldest] + max_wait_s
    last_of_full_batch = oldest + max_batch - 1
    if last_of_full_batch < len(times) and times[last_of_full_batch] < start:
        start = times[last_of_full_batch]
    return start


def _batch_size(times: list[float], oldest: int, max_batch: int, now: float) -> int:
    """How many requests the batch beginning at request ``oldest`` takes at time ``now``."""
    return bisect_right(times, now, oldest, min(oldest + max_batch, len(times))) - oldest


def simulate(arrivals: np.ndarray, service: Callable[[int], float], max_batch: int, max_wait_s: float) -> np.ndarray:
    """Latency in seconds (completion - arrival) of each request, in arrival order, through a single FIFO
    micro-batching server whose batch of ``n`` requests takes ``service(n)`` seconds."""
    arrival_times = _checked_arrivals(arrivals)
    _check_batching(max_batch, max_wait_s)
    times = arrival_times.tolist()
    durations = [float(service(size)) for size in range(1, min(max_batch, len(times)) + 1)]
    bad = [(size, duration) for size, duration in enumerate(durations, 1) if not (0 < duration < math.inf)]
    if bad:
        raise ValueError(f"service(batch) must return a time > 0 seconds and finite, got {bad[:3]} as (batch, time): "
                         "check the service times")
    completions, sizes = [], []
    free_at, oldest = 0.0, 0
    while oldest < len(times):
        start = max(free_at, _batch_start(times, oldest, max_batch, max_wait_s))
        size = _batch_size(times, oldest, max_batch, start)
        free_at = start + durations[size - 1]
        completions.append(free_at)
        sizes.append(size)
        oldest += size
    return np.repeat(completions, sizes) - arrival_times


def capacity(service: Callable[[int], float], max_batch: int) -> float:
    """The most requests per second the server can score flat out: the best ``batch / service(batch)`` for batches
    up to ``max_batch``. At an arrival rate at or above it the queue grows without bound."""
    return max(batch / float(service(batch)) for batch in range(1, operator.index(max_batch) + 1))


def _scaled_arrivals(rate: float, requests: int, duration_s: float, seed: int) -> np.ndarray:
    """Poisson arrivals at ``rate``: at least ``requests`` of them and at least ``duration_s`` seconds' worth."""
    return poisson_arrivals(1.0, max(requests, math.ceil(rate * duration_s)), seed) / rate


def max_rate_at_p99(service: Callable[[int], float], p99_budget_s: float, max_batch: int, max_wait_s: float,
                    requests: int = 20_000, seed: int = 0) -> float:
    """Highest Poisson arrival rate (requests/s, to 1%) whose simulated p99 stays within the budget, going up from a
    low rate. Each rate is simulated for at least ``requests`` arrivals and :data:`SIMULATED_BUDGETS` budgets of
    time, and only rates below the server's :func:`capacity` count: above it the queue grows all run long, however
    short a run hides it."""
    if not (math.isfinite(p99_budget_s) and p99_budget_s > 0):
        raise ValueError(f"a p99 budget must be > 0 seconds and finite, got {p99_budget_s}: e.g. 0.05 for 50 ms")
    if operator.index(requests) < 100:
        raise ValueError(f"a p99 needs at least 100 simulated requests, got {requests}: e.g. 20_000")
    _check_batching(max_batch, max_wait_s)
    alone_s = float(service(1))
    if alone_s > p99_budget_s:
        raise ValueError(f"the model's single-request service time {alone_s * 1e3:.3g} ms already exceeds the p99 "
                         f"budget {p99_budget_s * 1e3:.3g} ms: no arrival rate meets it; use a faster model or "
                         "a larger budget")
    if max_wait_s + alone_s > p99_budget_s:
        raise ValueError(f"at low load every request waits max_wait_s {max_wait_s * 1e3:.3g} ms for its batch, then "
                         f"{alone_s * 1e3:.3g} ms of service: over the p99 budget {p99_budget_s * 1e3:.3g} ms; "
                         "lower max_wait_s to at most the budget minus the single-request service time")
    most = capacity(service, max_batch)

    def meets_budget(rate: float) -> bool:
        if rate >= most:
            return False
        arrivals = _scaled_arrivals(rate, requests, SIMULATED_BUDGETS * p99_budget_s, seed)
        return p99(simulate(arrivals, service, max_batch, max_wait_s)) <= p99_budget_s

    low = LOWEST_RATE_IN_BUDGETS / p99_budget_s
    if not meets_budget(low):
        raise ValueError(f"even at {low:.3g} requests per second the p99 misses the budget "
                         f"{p99_budget_s * 1e3:.3g} ms: check the service times")
    high = low * BRACKET_FACTOR
    while meets_budget(high):  # ends: no rate at or above the capacity meets it
        low, high = high, high * BRACKET_FACTOR
    while high / low > RATE_PRECISION:
        middle = math.sqrt(low * high)
        if meets_budget(middle):
            low = middle
        else:
            high = middle
    return low


def latency_curve(service: Callable[[int], float], rates: Sequence[float], max_batch: int, max_wait_s: float,
                  requests: int = 20_000, seed: int = 0, min_duration_s: float = 1.0) -> dict[str, np.ndarray]:
    """Simulated p50 and p99 latency (seconds) at each arrival rate, each on at least ``requests`` arrivals and
    ``min_duration_s`` seconds of them (one arrival sequence, scaled): ``{"rate", "p50", "p99"}``, for a
    latency-versus-load plot."""
    rate_values = np.asarray(rates, dtype=float)
    if rate_values.ndim != 1 or rate_values.size == 0 or not (np.isfinite(rate_values) & (rate_values > 0)).all():
        raise ValueError(f"rates must be a non-empty list of arrival rates > 0 transactions per second, "
                         f"got {rates!r}: e.g. [100, 200, 400]")
    p50s, p99s = [], []
    for rate in rate_values:
        latencies = simulate(_scaled_arrivals(rate, requests, min_duration_s, seed), service, max_batch, max_wait_s)
        p50s.append(percentile(latencies, 50))
        p99s.append(p99(latencies))
    return {"rate": rate_values, "p50": np.array(p50s), "p99": np.array(p99s)}


@dataclass
class RealtimeResult:
    """What :func:`run_realtime` measured on the real clock."""

    latencies_s: np.ndarray  # of the served requests, in arrival order
    served: int
    unserved: int  # arrived within the time limit but not served
    batches: int
    wall_s: float

    @property
    def p99_ms(self) -> float:
        """The p99 latency of the served requests, in milliseconds."""
        if self.served == 0:
            raise ValueError("no request was served, so there is no p99: raise time_limit_s or lower the rate")
        return p99(self.latencies_s) * 1e3


def run_realtime(score: Callable[[int], object], arrivals: np.ndarray, max_batch: int, max_wait_s: float,
                 time_limit_s: float) -> RealtimeResult:
    """Serve requests arriving at ``arrivals`` (seconds from the start) with real calls ``score(n)``, which
    scores ``n`` transactions, under the micro-batching rule of :func:`simulate`, until all are served or
    ``time_limit_s`` passes (a batch started before then still finishes)."""
    arrival_times = _checked_arrivals(arrivals)
    _check_batching(max_batch, max_wait_s)
    if not time_limit_s > 0:
        raise ValueError(f"time_limit_s must be > 0 seconds, got {time_limit_s}: e.g. 10.0")
    times = arrival_times.tolist()
    completions, sizes = [], []
    oldest = 0
    begin = time.perf_counter()
    while oldest < len(times):
        now = time.perf_counter() - begin
        if now >= time_limit_s:
            break
        start = _batch_start(times, oldest, max_batch, max_wait_s)
        if now >= start:
            size = _batch_size(times, oldest, max_batch, now)
            score(size)
            completions.append(time.perf_counter() - begin)
            sizes.append(size)
            oldest += size
        elif min(start, time_limit_s) - now > SPIN_BELOW_S:
            time.sleep(min(start, time_limit_s) - now - SPIN_BELOW_S)
    wall_s = time.perf_counter() - begin
    return RealtimeResult(latencies_s=np.repeat(np.array(completions), sizes) - arrival_times[:oldest],
                          served=oldest, unserved=bisect_right(times, time_limit_s) - oldest,
                          batches=len(sizes), wall_s=wall_s)
