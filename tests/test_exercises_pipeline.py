"""The checkers of notebook 08 accept the solutions and reject the typical mistakes with the matching hint."""

import math

import numpy as np
import pytest
from sklearn.metrics import auc, average_precision_score, precision_recall_curve, roc_auc_score

from course_lib.exercises import ExerciseError
from course_lib.exercises import pipeline as check
from course_lib.metrics import pr_auc, recall_at_fpr
from course_lib.tradeoffs import pareto_front


def _kept_unless(dominates, skip_self=True):
    def answer(points):
        return [i for i, p in enumerate(points)
                if not any(dominates(q, p) for j, q in enumerate(points) if j != i or not skip_self)]
    return answer


def _by_definition(points):
    """At least as good on both and strictly better on one: keeps both copies of a duplicate, in reverse order."""
    kept = _kept_unless(lambda q, p: q[0] >= p[0] and q[1] <= p[1] and q != p)(points)
    return kept[::-1]


def test_pareto_front_checker():
    check.check_pareto_front(pareto_front)
    check.check_pareto_front(_by_definition)
    check.check_pareto_front(lambda points: set(pareto_front(points)))
    wrong = {
        "sorted by latency and kept every point": lambda points: sorted(range(len(points)), key=lambda i: points[i][1]),
        "skip j == i": _kept_unless(lambda q, p: q[0] >= p[0] and q[1] <= p[1], skip_self=False),
        "those are the dominated points": lambda points: sorted(set(range(len(points))) - set(pareto_front(points))),
        "not strictly better on both": _kept_unless(lambda q, p: q[0] > p[0] and q[1] < p[1]),
        "do not dominate each other": _kept_unless(lambda q, p: q[0] >= p[0] and q[1] <= p[1]),
        "compared accuracy only": _kept_unless(lambda q, p: q[0] > p[0]),
        "compared latency only": _kept_unless(lambda q, p: q[1] < p[1]),
        "not the points themselves": lambda points: [points[i] for i in pareto_front(points)],
        "each index at most once": lambda points: pareto_front(points) * 2,
        "indices between 0 and": lambda points: [i + 1 for i in pareto_front(points)],
        "with at least one strict": lambda points: pareto_front(points)[1:],
        "calling it with": lambda points: points[100],
    }
    for hint, answer in wrong.items():
        with pytest.raises(ExerciseError, match=hint):
            check.check_pareto_front(answer)


def _per_rank_average_precision(labels, scores):
    """Precision at each fraud's rank, ties split by position: the usual first attempt."""
    hits = labels[np.argsort(-scores, kind="stable")]
    return float((np.cumsum(hits) / np.arange(1, len(hits) + 1))[hits == 1].mean())


def test_pr_auc_checker():
    check.check_pr_auc(pr_auc)
    check.check_pr_auc(average_precision_score)
    wrong = {
        "that is the ROC-AUC: with 0.5% positives": roc_auc_score,
        "trapezoidal area": lambda y, s: auc(*precision_recall_curve(y, s)[1::-1]),
        "the positive class is fraud": lambda y, s: average_precision_score(1 - y, s),
        "by decreasing score": lambda y, s: average_precision_score(y, -s),
        "looks like an accuracy": lambda y, s: float(np.mean(y == (s >= 0.5))),
        "share one threshold": _per_rank_average_precision,
        "for each distinct score": lambda y, s: average_precision_score(y, s) + 0.01,
        "a plain Python number": lambda y, s: str(average_precision_score(y, s)),
    }
    for hint, answer in wrong.items():
        with pytest.raises(ExerciseError, match=hint):
            check.check_pr_auc(answer)


def _flag_above_threshold(y, s, fpr, allowed=None, inclusive=False, report="recall"):
    """Flag the scores above the (allowed + 1)-th highest legitimate score (at or above it if ``inclusive``)."""
    negatives = np.sort(s[y == 0])[::-1]
    allowed = math.floor(fpr * len(negatives) + 1e-9) if allowed is None else allowed
    threshold = negatives[allowed] if allowed < len(negatives) else -np.inf
    flagged = s >= threshold if inclusive else s > threshold
    return {"recall": (flagged & (y == 1)).sum() / y.sum(), "fpr": (flagged & (y == 0)).sum() / (y == 0).sum(),
            "precision": (flagged & (y == 1)).sum() / max(1, flagged.sum())}[report]


def test_recall_at_fpr_checker():
    check.check_recall_at_fpr(recall_at_fpr)
    check.check_recall_at_fpr(_flag_above_threshold)
    wrong = {
        "not fpr x positives": lambda y, s, f: _flag_above_threshold(y, s, f, allowed=math.floor(f * y.sum())),
        "that is the false-positive rate": lambda y, s, f: _flag_above_threshold(y, s, f, report="fpr"),
        "not a count of false positives": lambda y, s, f: _flag_above_threshold(y, s, f, allowed=math.floor(f)),
        "not of all transactions": lambda y, s, f: y[np.argsort(-s)[:math.floor(f * len(y))]].sum() / y.sum(),
        "precision of the flagged": lambda y, s, f: _flag_above_threshold(y, s, f, report="precision"),
        "not a percentage": lambda y, s, f: 100 * recall_at_fpr(y, s, f),
        "round fpr x negatives down": lambda y, s, f: _flag_above_threshold(y, s, f,
                                                                           allowed=math.ceil(f * (y == 0).sum())),
        "never splits tied scores": lambda y, s, f: _flag_above_threshold(y, s, f, inclusive=True),
        "whole groups of equal scores": lambda y, s, f: recall_at_fpr(y, s, f) / 2,
    }
    for hint, answer in wrong.items():
        with pytest.raises(ExerciseError, match=hint):
            check.check_recall_at_fpr(answer)


def test_p99_checker():
    check.check_p99(lambda latencies: float(np.percentile(latencies, 99)))
    check.check_p99(lambda latencies: sorted(latencies)[math.ceil(0.99 * len(latencies)) - 1])  # nearest rank
    check.check_p99(lambda latencies: float(np.quantile(latencies, 0.99, method="higher")))
    wrong = {
        "sort first": lambda latencies: latencies[98],
        "that is the mean": lambda latencies: float(np.mean(latencies)),
        "that is the maximum": max,
        "that is the median": lambda latencies: float(np.median(latencies)),
        "index 98 is the 99th percentile only of exactly 100 values": lambda latencies: sorted(latencies)[98],
        "np.percentile takes a percent": lambda latencies: float(np.percentile(latencies, 0.99)),
        "1st percentile": lambda latencies: sorted(latencies, reverse=True)[int(0.99 * len(latencies))],
        "position 0.99 x \\(n - 1\\)": lambda latencies: float(np.percentile(latencies, 95)),
    }
    for hint, answer in wrong.items():
        with pytest.raises(ExerciseError, match=hint):
            check.check_p99(answer)


def test_p99_checker_names_the_unsorted_position():
    def unsorted_position(latencies):
        return latencies[int(0.99 * len(latencies))]
    with pytest.raises(ExerciseError, match="sort first"):
        check.check_p99(unsorted_position)


def test_p99_checker_does_not_depend_on_the_answer_sorting_in_place():
    def sorts_in_place(latencies):
        latencies.sort()
        return latencies[98]
    with pytest.raises(ExerciseError, match="index 98"):
        check.check_p99(sorts_in_place)
    check.check_p99(lambda latencies: float(np.percentile(latencies, 99)))
