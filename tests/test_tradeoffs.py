"""Choosing a variant under a budget: Pareto front, budgets, download times, loading bench rows, the budget widget's
logic and plot, and the fraud metrics (PR-AUC, recall at a false-positive rate)."""

import json

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from sklearn.metrics import average_precision_score  # noqa: E402

from course_lib.metrics import pr_auc, recall_at_fpr  # noqa: E402
from course_lib.plots import pareto_plot  # noqa: E402
from course_lib.tradeoffs import (LINKS, Budget, choose, download_seconds, load_rows, metric_loss,  # noqa: E402
                                  pareto_front)
from course_lib.widgets import budget_explorer, draw_budget, summarize_budget  # noqa: E402


def _row(model, variant, metric, latency_ms, size_bytes, baseline_metric=0.91, batch_size=64,
         metric_name="accuracy", topic="quantization"):
    return {"model": model, "variant": variant, "topic": topic, "batch_size": batch_size, "metric_name": metric_name,
            "metric": metric, "baseline_metric": baseline_metric, "size_bytes": size_bytes, "latency_ms": latency_ms}


ROWS = [
    _row("course_cnn", "fp32", 0.91, 10.0, 400_000),
    _row("course_cnn", "int8", 0.905, 4.0, 110_000),
    _row("course_cnn", "int4", 0.87, 3.5, 60_000),
    _row("lenet5", "fp32", 0.89, 2.0, 250_000, baseline_metric=0.89),
    _row("lenet5", "shared", 0.885, 2.0, 30_000, baseline_metric=0.89, topic="sharing"),
]


def _dominates(a, b):
    return a[0] >= b[0] and a[1] <= b[1] and a != b


_POINTS = st.lists(st.tuples(st.sampled_from([0.5, 0.7, 0.8, 0.9]) | st.floats(0, 1),
                             st.sampled_from([1.0, 2.0, 5.0]) | st.floats(0.1, 100)), max_size=25)


@settings(max_examples=200, deadline=None)
@given(_POINTS)
def test_pareto_front_keeps_exactly_the_non_dominated_points(points):
    front = pareto_front(points)
    assert all(not _dominates(q, points[i]) for i in front for q in points), "a returned point is dominated"
    omitted = set(range(len(points))) - set(front)
    assert all(any(_dominates(points[i], points[j]) or points[i] == points[j] for i in front) for j in omitted), \
        "an omitted point is neither dominated by nor a copy of a returned one"
    assert [points[i][1] for i in front] == sorted(points[i][1] for i in front)
    assert len({points[i] for i in front}) == len(front), "one copy of each duplicate"


@settings(max_examples=100, deadline=None)
@given(_POINTS)
def test_pareto_front_can_minimize_both(points):
    assert pareto_front(points, maximize_first=False) == pareto_front([(-q, c) for q, c in points])


def test_pareto_front_on_ties_keeps_the_first_duplicate():
    points = [(0.9, 4.0), (0.9, 4.0), (0.8, 4.0), (0.9, 6.0), (0.7, 1.0)]
    assert pareto_front(points) == [4, 0]


def test_pareto_front_rejects_nan_and_malformed_points():
    with pytest.raises(ValueError, match="point 1 .* NaN"):
        pareto_front([(0.9, 1.0), (float("nan"), 2.0)])
    with pytest.raises(ValueError, match=r"give \(quality, cost\) pairs"):
        pareto_front([(0.9, 1.0, 3.0)])
    assert pareto_front([]) == []


def test_budget_validates_its_limits():
    assert Budget().describe() == "no limit"
    assert Budget(2, 100_000, 0.015).describe() == "latency ≤ 2 ms, size ≤ 100 kB, loss ≤ 1.5 points"
    Budget(max_metric_loss=0.0)  # no loss at all is a valid budget
    for kwargs, message in (({"max_latency_ms": 0}, "max_latency_ms must be > 0"),
                            ({"max_size_bytes": -5}, "max_size_bytes must be > 0"),
                            ({"max_metric_loss": -0.01}, "max_metric_loss must be >= 0"),
                            ({"max_latency_ms": float("nan")}, "a number or None"),
                            ({"max_size_bytes": "1 MB"}, "a number or None")):
        with pytest.raises(ValueError, match=message):
            Budget(**kwargs)


def test_choose_the_fastest_feasible_variant():
    choice = choose(ROWS, Budget(max_latency_ms=5.0, max_size_bytes=200_000, max_metric_loss=0.01))
    assert choice.feasible == [1, 4]
    assert choice.best == 4
    assert choice.closest is None
    assert choice.message == ("2 of 5 variants meet the budget; the fastest is lenet5 shared (batch 64: 2.00 ms, "
                              "30.0 kB, loss 0.50 points).")


def test_choose_breaks_objective_ties_by_the_higher_metric():
    choice = choose(ROWS, Budget(max_latency_ms=2.5))
    assert choice.feasible == [3, 4]
    assert choice.best == 3, "lenet5 fp32 and shared both take 2.0 ms: fp32 is more accurate"


def test_choose_the_smallest():
    choice = choose(ROWS, Budget(max_metric_loss=0.01), objective="size_bytes")
    assert choice.best == 4
    assert "the smallest is lenet5 shared" in choice.message


def test_choose_names_the_closest_when_nothing_fits():
    choice = choose(ROWS, Budget(max_latency_ms=3.0, max_size_bytes=100_000, max_metric_loss=0.004))
    assert choice.feasible == [] and choice.best is None
    assert choice.closest == 4, "lenet5 shared misses only the loss limit, by 25 %"
    assert choice.message == ("No variant meets the budget (latency ≤ 3 ms, size ≤ 100 kB, loss ≤ 0.4 points). The "
                              "closest is lenet5 shared (batch 64: 2.00 ms, 30.0 kB, loss 0.50 points): it misses "
                              "loss by 25% (0.50 points).")


def test_choose_measures_a_zero_loss_limit_in_absolute_points():
    choice = choose(ROWS[1:3], Budget(max_latency_ms=3.9, max_metric_loss=0.0))
    assert choice.closest == 0, "int8: 2.6 % too slow + 0.005 lost beats int4: fast enough but 0.04 lost"
    assert choice.message.endswith("it misses latency by 3% (4.00 ms) and loss by 0.50 points.")


def test_choose_is_not_fooled_by_rounding_in_the_loss():
    row = _row("m", "v", 0.8973, 1.0, 1_000, baseline_metric=0.9123)
    assert metric_loss(row) == 0.015
    assert choose([row], Budget(max_metric_loss=1.5 / 100)).feasible == [0]


def test_choose_rejects_bad_input():
    with pytest.raises(ValueError, match="unknown objective 'accuracy': choose one of latency_ms, size_bytes"):
        choose(ROWS, Budget(), objective="accuracy")
    incomplete = [dict(ROWS[0]), {k: v for k, v in ROWS[1].items() if k != "size_bytes"}]
    with pytest.raises(ValueError, match="row 1 has no 'size_bytes' key"):
        choose(incomplete, Budget())
    with pytest.raises(ValueError, match="no rows to choose from"):
        choose([], Budget())


def test_download_seconds():
    assert download_seconds(1_000_000, 1.0) == pytest.approx(8.0)
    assert download_seconds(1_000_000, 50.0) == pytest.approx(0.16)
    assert len(LINKS) == 2 and all(speed > 0 for speed in LINKS.values())
    with pytest.raises(ValueError, match="size_bytes must be > 0"):
        download_seconds(0, 1.0)
    with pytest.raises(ValueError, match="link_mbit_s must be > 0"):
        download_seconds(1_000, -1.0)


def test_load_rows_round_trip_and_errors(tmp_path):
    path = tmp_path / "rows.json"
    path.write_text(json.dumps(ROWS))
    assert load_rows(path) == ROWS
    with pytest.raises(FileNotFoundError, match="python -m course_lib.bench all --json > .*missing.json"):
        load_rows(tmp_path / "missing.json")
    path.write_text("Measuring ...\n[]")
    with pytest.raises(ValueError, match="is not valid JSON"):
        load_rows(path)
    path.write_text(json.dumps({"rows": ROWS}))
    with pytest.raises(ValueError, match="holds a JSON dict, not a list of rows"):
        load_rows(path)
    path.write_text(json.dumps([ROWS[0], {k: v for k, v in ROWS[1].items() if k != "latency_ms"}]))
    with pytest.raises(ValueError, match="row 1 of .*rows.json has no 'latency_ms' key"):
        load_rows(path)


MIXED_ROWS = [*ROWS, _row("course_cnn", "int8", 0.905, 0.2, 110_000, batch_size=1),
              _row("minilm", "int8", 0.79, 1.0, 20_000, baseline_metric=0.8, metric_name="lee_pearson_r")]


def test_summarize_budget_keeps_fashion_mnist_rows_at_one_batch_size():
    summary = summarize_budget(MIXED_ROWS, latency_ms=5.0, size_kb=200, loss_points=1.0)
    assert summary["rows"] == ROWS
    assert summary["feasible"] == [1, 4] and summary["best"] == 4 and summary["closest"] is None
    assert summary["budget"] == Budget(5.0, 200_000, 0.01)
    assert "the fastest is lenet5 shared" in summary["message"]
    assert "Fashion-MNIST models only (metric: accuracy), batch 64: 5 of 7 rows" in summary["message"]


def test_summarize_budget_names_the_closest_when_nothing_fits():
    summary = summarize_budget(MIXED_ROWS, latency_ms=1.0, size_kb=20, loss_points=0.2)
    assert summary["feasible"] == [] and summary["best"] is None
    assert "No variant meets the budget" in summary["message"]
    assert f"The closest is {ROWS[summary['closest']]['model']}" in summary["message"]
    with pytest.raises(ValueError, match=r"no accuracy rows at batch 8 \(accuracy rows exist at batches \[1, 64\]\)"):
        summarize_budget(MIXED_ROWS, 1.0, 20, 0.2, batch_size=8)


def test_draw_budget_and_explorer_headless():
    fig = plt.figure()
    draw_budget(fig, summarize_budget(ROWS, 5.0, 200, 1.0))
    labels = fig.axes[0].get_legend_handles_labels()[1]
    assert "meets the budget" in labels and "the fastest of them" in labels
    draw_budget(fig, summarize_budget(ROWS, 1.0, 20, 0.2))
    assert "the closest miss" in fig.axes[0].get_legend_handles_labels()[1]
    plt.close(fig)
    box = budget_explorer(MIXED_ROWS)
    latency, size, loss = box.children[0].children
    assert latency.options == (2.0, 5.0, 10.0) and size.options == (20.0, 50.0, 100.0, 200.0, 500.0)
    latency.value, size.value, loss.value = 2.0, 20.0, 0.0
    assert "The closest is" in box.children[1].value


def test_pareto_plot_draws_front_with_labels_and_units():
    fig, (ax_latency, ax_size) = plt.subplots(1, 2)
    pareto_plot(ax_latency, ROWS, "latency_ms", title="accuracy vs latency")
    pareto_plot(ax_size, ROWS, "size_bytes", log_x=False)
    assert ax_latency.get_xlabel() == "latency per call (ms), log scale" and ax_latency.get_xscale() == "log"
    assert ax_size.get_xlabel() == "file size (kB)" and ax_size.get_xscale() == "linear"
    assert ax_latency.get_ylabel() == "accuracy" and ax_latency.get_title() == "accuracy vs latency"
    assert {t.get_text() for t in ax_latency.texts} == {"lenet5 fp32", "course_cnn int8", "course_cnn fp32"}
    assert {t.get_text() for t in ax_size.texts} == {"lenet5 shared", "course_cnn int8", "course_cnn fp32"}
    assert ax_size.get_legend() is not None
    with pytest.raises(ValueError, match="unknown x_key 'accuracy'"):
        pareto_plot(ax_size, ROWS, "accuracy")
    plt.close(fig)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 1), st.sampled_from([0.1, 0.5, 0.9]) | st.floats(0, 1)), min_size=2,
                max_size=60).filter(lambda pairs: 0 < sum(label for label, _ in pairs) < len(pairs)))
def test_pr_auc_is_sklearns_average_precision(pairs):
    labels, scores = (np.array(column) for column in zip(*pairs))
    assert pr_auc(labels, scores) == pytest.approx(average_precision_score(labels, scores), abs=1e-12)


def test_recall_at_fpr_on_hand_made_cases():
    labels = np.array([1, 0, 1, 0, 0, 1, 0, 0, 0, 0])
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.0])
    assert recall_at_fpr(labels, scores, 0.1) == 1 / 3, "0 false positives allowed (0.1 x 7 = 0.7): only the 0.9"
    assert recall_at_fpr(labels, scores, 0.2) == 2 / 3, "1 allowed: the 0.8 flagged, the 0.6 would be the second"
    assert recall_at_fpr(labels, scores, 0.29) == 2 / 3, "2 allowed: the 0.5 would be the third, before the 0.4"
    assert recall_at_fpr(labels, scores, 0.43) == 1.0, "3 allowed: the 0.8, 0.6 and 0.5, then the 0.4 fraud"
    assert recall_at_fpr(list(labels), list(scores), 0.2) == 2 / 3, "plain lists are accepted"


def test_recall_at_fpr_never_splits_tied_scores():
    labels = np.array([1, 1, 0, 0, 1, 0, 0])
    scores = np.array([0.9, 0.7, 0.7, 0.7, 0.3, 0.2, 0.1])
    assert recall_at_fpr(labels, scores, 0.25) == 1 / 3, "1 allowed, but the 0.7s hold 2 legitimate: none flagged"
    assert recall_at_fpr(labels, scores, 0.5) == 1.0, "2 allowed: the 0.7s fit, then the 0.3 fraud"
    assert recall_at_fpr(labels, np.zeros(7), 0.5) == 0.0, "one tie of everything: nothing can be flagged"


def test_fraud_metrics_reject_bad_input():
    good_labels, good_scores = np.array([0, 1, 0]), np.array([0.1, 0.9, 0.2])
    cases = [((np.zeros(3, int), good_scores), "no fraud \\(positive\\) example: PR-AUC is undefined; check the label"),
             ((np.ones(3, int), good_scores), "no legitimate \\(negative\\) example"),
             ((np.array([0, 2, 1]), good_scores), "labels must be 0 \\(legitimate\\) or 1 \\(fraud\\)"),
             ((good_labels, good_scores[:2]), "same length, got 3 and 2"),
             ((good_labels, np.array([0.1, np.nan, 0.2])), "scores must be finite"),
             ((good_labels.reshape(3, 1), good_scores), "must be 1-D")]
    for (labels, scores), message in cases:
        with pytest.raises(ValueError, match=message):
            pr_auc(labels, scores)
        with pytest.raises(ValueError, match=message):
            recall_at_fpr(labels, scores, 0.1)
    for fpr in (0.0, 1.0, float("nan")):
        with pytest.raises(ValueError, match="fpr must be a fraction of the negatives strictly between 0 and 1"):
            recall_at_fpr(good_labels, good_scores, fpr)
