"""Metrics for a rare positive class (fraud): the area under the precision-recall curve as average precision, and
the recall at a fixed false-positive rate. Label 1 is the positive (fraud) class; a higher score is more suspicious.
A threshold never splits tied scores: transactions with the same score are flagged together or not at all."""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import ArrayLike


def _checked(labels: ArrayLike, scores: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Labels as 0/1 integers and scores as floats, after checking them."""
    labels, scores = np.asarray(labels), np.asarray(scores, dtype=float)
    if labels.ndim != 1 or scores.ndim != 1:
        raise ValueError(f"labels and scores must be 1-D, got shapes {labels.shape} and {scores.shape}: "
                         "pass one label and one score per transaction")
    if len(labels) != len(scores):
        raise ValueError(f"labels and scores must have the same length, got {len(labels)} and {len(scores)}: "
                         "pass one score per labelled transaction")
    if not np.isin(labels, (0, 1)).all():
        raise ValueError(f"labels must be 0 (legitimate) or 1 (fraud), got the values {np.unique(labels)[:5]}: "
                         "binarize the label column first")
    if not np.isfinite(scores).all():
        raise ValueError("scores must be finite, got NaN or infinity: check the model's output")
    labels = labels.astype(int)
    if labels.sum() == 0:
        raise ValueError("no fraud (positive) example: PR-AUC is undefined; check the label column")
    if labels.sum() == len(labels):
        raise ValueError("no legitimate (negative) example: the false-positive rate is undefined; check the label "
                         "column")
    return labels, scores


def counts_by_threshold(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """True and false positives when flagging every score at or above each distinct score, highest first
    (``labels`` as 0/1 integers, checked by the caller)."""
    order = np.argsort(-scores, kind="stable")
    sorted_scores, sorted_labels = scores[order], labels[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(sorted_scores)), len(scores) - 1]
    true_positives = np.cumsum(sorted_labels)[last_of_tie]
    return true_positives, last_of_tie + 1 - true_positives


def pr_auc(labels: ArrayLike, scores: ArrayLike) -> float:
    """Average precision: the sum over thresholds of precision x the step in recall, without interpolation
    (the same as ``sklearn.metrics.average_precision_score``)."""
    labels, scores = _checked(labels, scores)
    true_positives, false_positives = counts_by_threshold(labels, scores)
    precision = true_positives / (true_positives + false_positives)
    recall_steps = np.diff(true_positives, prepend=0) / labels.sum()
    return float((precision * recall_steps).sum())


def false_positives_allowed(fpr: float, negatives: int) -> int:
    """At most ``floor(fpr x negatives)`` false positives (0.29 x 100 is 28.999999999999996 in floating point: 29)."""
    return math.floor(fpr * negatives + 1e-9)


def recall_at_fpr(labels: ArrayLike, scores: ArrayLike, fpr: float) -> float:
    """The recall (true-positive rate) when flagging the highest scores with at most ``floor(fpr x negatives)``
    false positives; tied scores are flagged together only if that keeps the false positives within the limit."""
    if not 0 < fpr < 1:
        raise ValueError(f"fpr must be a fraction of the negatives strictly between 0 and 1, got {fpr!r} "
                         "(e.g. 0.01 for 1 %)")
    labels, scores = _checked(labels, scores)
    true_positives, false_positives = counts_by_threshold(labels, scores)
    within = false_positives <= false_positives_allowed(fpr, len(labels) - labels.sum())
    flagged = true_positives[within][-1] if within.any() else 0
    return float(flagged / labels.sum())
