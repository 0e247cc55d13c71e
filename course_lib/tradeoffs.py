"""Choosing among compressed variants under a budget: the Pareto front of quality against cost, the variants that
meet a latency / size / quality-loss budget (or the closest one when none does), and download times.

A row is one benchmark result as written by ``python -m course_lib.bench all --json``: a dict with at least the
keys of :data:`REQUIRED_KEYS`. A row's metric loss is ``baseline_metric - metric`` in the metric's units (0.015 is
1.5 points of accuracy); messages give it in points (hundredths of the metric).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

REQUIRED_KEYS = ("model", "variant", "topic", "batch_size", "metric_name", "metric", "baseline_metric", "size_bytes",
                 "latency_ms")
OBJECTIVES = {"latency_ms": "fastest", "size_bytes": "smallest"}
LINKS = {"3G (1 Mbit/s)": 1.0, "home broadband (50 Mbit/s)": 50.0}  # link name -> megabits per second
BENCH_COMMAND = "python -m course_lib.bench all --json > {path}"
_ROUNDING_DECIMALS = 9  # metrics have 4 decimals: 0.9123 - 0.8973 must be 0.015, not 0.015000000000000013


def pareto_front(points: Sequence[tuple[float, float]], maximize_first: bool = True) -> list[int]:
    """Indices of the non-dominated ``(quality, cost)`` points, sorted by cost (the cheapest first).

    Quality is maximized (minimized if ``maximize_first`` is False), cost minimized. A point is dominated if another
    is at least as good on both and strictly better on one; of exact duplicates only the first is kept.
    """
    for i, point in enumerate(points):
        if len(point) != 2:
            raise ValueError(f"point {i} is {point!r}: give (quality, cost) pairs")
        if any(math.isnan(value) for value in point):
            raise ValueError(f"point {i} is {point!r}: NaN cannot be ranked; drop or re-measure that point")
    sign = 1.0 if maximize_first else -1.0
    by_cost = sorted(range(len(points)), key=lambda i: (points[i][1], -sign * points[i][0], i))
    front: list[int] = []
    for i in by_cost:  # along increasing cost, a point is on the front only if it beats every cheaper one
        if not front or sign * points[i][0] > sign * points[front[-1]][0]:
            front.append(i)
    return front


@dataclass(frozen=True)
class Budget:
    """Limits a variant must meet; ``None`` leaves that quantity unconstrained.

    ``max_metric_loss`` is in the metric's units (0.015 = 1.5 points of accuracy below the baseline).
    """

    max_latency_ms: float | None = None
    max_size_bytes: int | None = None
    max_metric_loss: float | None = None

    def __post_init__(self) -> None:
        for name in ("max_latency_ms", "max_size_bytes", "max_metric_loss"):
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
                raise ValueError(f"{name} must be a number or None (unconstrained), got {value!r}")
            if name == "max_metric_loss" and value < 0:
                raise ValueError(f"max_metric_loss must be >= 0 (0 = no loss allowed), got {value!r}")
            if name != "max_metric_loss" and value <= 0:
                raise ValueError(f"{name} must be > 0, or None for no limit; got {value!r}")

    def describe(self) -> str:
        """The limits in words, e.g. ``latency ≤ 2 ms, size ≤ 100 kB, loss ≤ 1.5 points``."""
        parts = []
        if self.max_latency_ms is not None:
            parts.append(f"latency ≤ {self.max_latency_ms:g} ms")
        if self.max_size_bytes is not None:
            parts.append(f"size ≤ {self.max_size_bytes / 1e3:g} kB")
        if self.max_metric_loss is not None:
            parts.append(f"loss ≤ {self.max_metric_loss * 100:g} points")
        return ", ".join(parts) or "no limit"


@dataclass(frozen=True)
class Choice:
    """What :func:`choose` found: row indices meeting the budget, the best of them, the closest miss, in words."""

    feasible: list[int]
    best: int | None
    closest: int | None
    message: str


def check_rows(rows: Sequence[dict], source: str = "") -> None:
    """Raise ValueError naming the first row that is not a dict or lacks a key of :data:`REQUIRED_KEYS`."""
    where = f" of {source}" if source else ""
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise ValueError(f"row {i}{where} is a {type(row).__name__}, not a dict: pass benchmark rows as written "
                             f"by `{BENCH_COMMAND.format(path='rows.json')}`")
        missing = [key for key in REQUIRED_KEYS if key not in row]
        if missing:
            raise ValueError(f"row {i}{where} has no {missing[0]!r} key: every row needs {', '.join(REQUIRED_KEYS)} "
                             f"(as written by `{BENCH_COMMAND.format(path='rows.json')}`)")


def metric_loss(row: dict) -> float:
    """How far the row's metric falls below its baseline, in the metric's units (negative: it improved)."""
    return round(row["baseline_metric"] - row["metric"], _ROUNDING_DECIMALS)


def violations(row: dict, budget: Budget) -> dict[str, float]:
    """For each constrained quantity, how far the row exceeds its limit: relative (0.2 = 20 % over) for latency
    and size, relative to the limit for the metric loss too, or absolute when that limit is 0. 0 when met."""
    excess = {}
    if budget.max_latency_ms is not None:
        excess["latency"] = row["latency_ms"] / budget.max_latency_ms - 1
    if budget.max_size_bytes is not None:
        excess["size"] = row["size_bytes"] / budget.max_size_bytes - 1
    if budget.max_metric_loss is not None:
        over = metric_loss(row) - budget.max_metric_loss
        excess["loss"] = over / budget.max_metric_loss if budget.max_metric_loss > 0 else over
    return {name: max(0.0, round(over, _ROUNDING_DECIMALS)) for name, over in excess.items()}


def describe_row(row: dict) -> str:
    """``MODEL VARIANT (batch B: L ms, S kB, loss X points)``."""
    return (f"{row['model']} {row['variant']} (batch {row['batch_size']}: {row['latency_ms']:.2f} ms, "
            f"{row['size_bytes'] / 1e3:,.1f} kB, loss {metric_loss(row) * 100:.2f} points)")


def _misses(row: dict, budget: Budget, excess: dict[str, float]) -> str:
    """``latency by 20% (2.40 ms) and loss by 0.30 points (1.80 points)``: each limit the row exceeds."""
    shown = {"latency": f"{row['latency_ms']:.2f} ms", "size": f"{row['size_bytes'] / 1e3:,.1f} kB",
             "loss": f"{metric_loss(row) * 100:.2f} points"}
    parts = []
    for name, over in excess.items():
        if over <= 0:
            continue
        if name == "loss" and budget.max_metric_loss == 0:
            parts.append(f"loss by {over * 100:.2f} points")
        else:
            parts.append(f"{name} by {over:.0%} ({shown[name]})")
    return " and ".join(parts)


def choose(rows: Sequence[dict], budget: Budget, objective: str = "latency_ms") -> Choice:
    """The rows meeting every limit of ``budget``, the one of them minimizing ``objective`` ("latency_ms" or
    "size_bytes"; ties go to the higher metric), or, when none meets it, the row with the smallest total relative
    violation (see :func:`violations`), with a plain-English message."""
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown objective {objective!r}: choose one of {', '.join(OBJECTIVES)}")
    if not rows:
        raise ValueError("no rows to choose from: load them with load_rows(PATH) after "
                         f"`{BENCH_COMMAND.format(path='PATH')}`")
    check_rows(rows)
    excess = [violations(row, budget) for row in rows]
    feasible = [i for i, over in enumerate(excess) if not any(over.values())]
    if feasible:
        best = min(feasible, key=lambda i: (rows[i][objective], -rows[i]["metric"], i))
        message = (f"{len(feasible)} of {len(rows)} variants meet the budget; the {OBJECTIVES[objective]} is "
                   f"{describe_row(rows[best])}.")
        return Choice(feasible, best, None, message)
    closest = min(range(len(rows)), key=lambda i: (sum(excess[i].values()), rows[i][objective], -rows[i]["metric"], i))
    message = (f"No variant meets the budget ({budget.describe()}). The closest is {describe_row(rows[closest])}: "
               f"it misses {_misses(rows[closest], budget, excess[closest])}.")
    return Choice([], None, closest, message)


def download_seconds(size_bytes: int, link_mbit_s: float) -> float:
    """Seconds to download ``size_bytes`` over a link of ``link_mbit_s`` megabits per second (see :data:`LINKS`)."""
    if size_bytes <= 0:
        raise ValueError(f"size_bytes must be > 0, got {size_bytes!r}: pass the file's size in bytes")
    if link_mbit_s <= 0:
        raise ValueError(f"link_mbit_s must be > 0, got {link_mbit_s!r}: pass the link's speed in Mbit/s, e.g. "
                         f"{next(iter(LINKS.values()))}")
    return size_bytes * 8 / (link_mbit_s * 1e6)


def load_rows(path: str | Path) -> list[dict]:
    """The benchmark rows saved by ``python -m course_lib.bench all --json > PATH``, checked."""
    path = Path(path)
    make_it = f"make it with `{BENCH_COMMAND.format(path=path)}`"
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: {make_it}")
    try:
        rows = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON ({error}): {make_it} (with --json, nothing else on stdout)"
                         ) from error
    if not isinstance(rows, list):
        raise ValueError(f"{path} holds a JSON {type(rows).__name__}, not a list of rows: {make_it}")
    check_rows(rows, source=str(path))
    return rows
