"""The SYNTHETIC transaction generator, its features, the scorer, and the credit-card CSV loader."""

from dataclasses import replace

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from course_lib import fraud as F
from course_lib.metrics import pr_auc

SMALL = F.GeneratorConfig(transactions=20_000, cards=2_000, merchants=3_000, compromised_merchants=10)


def test_generator_is_deterministic_time_ordered_and_rare():
    a, b = F.generate_transactions(SMALL), F.generate_transactions(SMALL)
    for column in ("time_s", "card", "merchant", "amount", "label"):
        np.testing.assert_array_equal(getattr(a, column), getattr(b, column))
    assert np.all(np.diff(a.time_s) >= 0)
    assert 0.002 < a.label.mean() < 0.008
    assert set(np.unique(a.pattern[a.label == 1])) == {1, 2, 3} and np.all(a.pattern[a.label == 0] == 0)
    other = F.generate_transactions(replace(SMALL, seed=1))
    assert not np.array_equal(a.amount[:100], other.amount[:100])


def test_generator_amounts_are_heavy_tailed_and_identifiers_many():
    tx = F.generate_transactions(SMALL)
    q50, q999 = np.quantile(tx.amount, [0.5, 0.999])
    assert q999 > 20 * q50  # a heavy tail: the 99.9th percentile is tens of times the median
    assert len(np.unique(tx.merchant)) > 1_000 and len(np.unique(tx.card)) > 1_500


def test_every_fraud_trait_is_common_among_genuine_rows():
    """Only combinations separate fraud: each trait alone covers many more genuine rows than fraud rows."""
    tx = F.generate_transactions()
    genuine = tx.label == 0
    for trait in (tx.hour < 5, tx.distance_km > 200, tx.amount < 3):
        assert (trait & genuine).sum() > 5 * (trait & ~genuine).sum()


def test_card_history_uses_only_earlier_transactions():
    card = np.array([0, 1, 0, 0, 1])
    time_s = np.array([0.0, 10.0, 100.0, F.DAY_S + 50.0, 20.0])
    velocity, since, usual = F._card_history(card, time_s, np.array([1.0, 2.0, 3.0, 5.0, 4.0]))
    np.testing.assert_array_equal(velocity, [0, 0, 1, 1, 1])  # card 0's third is 24 h after its first
    np.testing.assert_array_equal(since, [np.inf, np.inf, 100.0, F.DAY_S - 50.0, 10.0])
    np.testing.assert_allclose(usual, [np.nan, np.nan, 1.0, 2.0, 2.0])


def test_card_history_never_counts_a_transaction_at_the_same_time_or_exactly_a_day_before():
    velocity, since, usual = F._card_history(np.array([3, 3, 3]), np.array([5.0, 5.0, 5.0 + F.DAY_S]),
                                             np.array([1.0, 2.0, 4.0]))
    np.testing.assert_array_equal(velocity, [0, 0, 0])
    np.testing.assert_array_equal(since, [np.inf, np.inf, F.DAY_S])
    np.testing.assert_allclose(usual, [np.nan, np.nan, 1.5])


def test_split_is_in_time_order_and_validated():
    train, val, test = F.split_by_time(1000)
    assert (train.stop, val.start, val.stop, test.start, test.stop) == (700, 700, 850, 850, 1000)
    with pytest.raises(ValueError, match="summing to 1"):
        F.split_by_time(1000, (0.5, 0.2, 0.2))
    with pytest.raises(ValueError, match="leave a part empty"):
        F.split_by_time(50, (0.01, 0.01, 0.98))
    with pytest.raises(ValueError, match="fraud is the rare class"):
        F.GeneratorConfig(fraud_rate=0.6)


def test_features_are_standardised_on_the_training_rows_only():
    tx = F.generate_transactions(SMALL)
    train, _, test = F.split_by_time(len(tx))
    features = F.build_features(tx, train)
    assert features.dense.shape == (len(tx), len(F.DENSE_FEATURES)) == (len(tx), 9) and features.ids.dtype == torch.int64
    np.testing.assert_allclose(features.dense[train].mean(0).numpy(), 0, atol=1e-4)
    assert torch.isfinite(features.dense).all()


@settings(max_examples=20, deadline=None)
@given(st.lists(st.integers(0, 10**6), min_size=1, max_size=50))
def test_hashed_tables_map_every_identifier_into_their_rows(ids):
    model = F.FraudScorer(vocabulary=(10**6 + 1, 10, 3), rows=(64, 10, 3), dims=(2, 2, 2), hidden=(4,))
    rows = model._row(torch.tensor(ids), 0)
    assert rows.min() >= 0 and rows.max() < 64
    assert torch.equal(rows, model._row(torch.tensor(ids), 0))


def test_scorer_shapes_and_bad_configurations():
    model = F.FraudScorer(**F.STUDENT_CONFIG)
    out = model(torch.zeros(5, 9), torch.tensor([[49_999, 39_999, 23]] * 5))
    assert out.shape == (5,)
    with pytest.raises(ValueError, match="at most one row per identifier"):
        F.FraudScorer(vocabulary=(10, 10, 10), rows=(20, 10, 10))
    too_many_cards = F.Features(torch.zeros(2, 9), torch.tensor([[9, 0, 0], [10, 0, 0]]), torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="exceed the scorer's vocabulary"):
        F.scores(F.FraudScorer(vocabulary=(10, 10, 10)), too_many_cards)


def test_a_small_scorer_learns_the_interactions_better_than_chance():
    data = F.case_study_data(SMALL)
    torch.manual_seed(0)
    model = F.FraudScorer(vocabulary=(2_000, 3_000, 24), dims=(4, 4, 2), hidden=(32,))
    history = F.train_scorer(model, data.train, data.val, epochs=3, lr=3e-3, batch_size=256, progress=False)
    chance = float(data.val.labels.mean())
    assert max(history["val_pr_auc"]) > 5 * chance
    assert pr_auc(data.val.labels.numpy(), F.scores(model, data.val)) == pytest.approx(max(history["val_pr_auc"]),
                                                                                        abs=1e-4)


def test_shipped_scorers_load_and_beat_a_linear_model():
    """The reference scorers (trained by python -m course_lib.train_reference --fraud) on the validation split."""
    from sklearn.linear_model import LogisticRegression

    data = F.case_study_data()
    labels = data.val.labels.numpy()
    linear = LogisticRegression(max_iter=1000).fit(data.train.dense.numpy(), data.train.labels.numpy())
    linear_auc = pr_auc(labels, linear.decision_function(data.val.dense.numpy()))
    for name in F.CHECKPOINTS:
        assert pr_auc(labels, F.scores(F.load_scorer(name), data.val)) > linear_auc + 0.05
    teacher = sum(p.numel() for p in F.load_scorer("fraud_mlp").parameters())
    assert 2_000_000 < teacher < 5_000_000


HEADER = "Time," + ",".join(f"V{i}" for i in range(1, 29)) + ",Amount,Class\n"


def _row(time, label, amount="1.5"):
    return f"{time}," + ",".join("0.1" for _ in range(28)) + f",{amount},{label}\n"


def test_credit_card_csv_loads(tmp_path):
    path = tmp_path / "creditcard.csv"
    path.write_text(HEADER + _row(0, 0) + _row(1, 1) + _row(2, "0.0"))
    data = F.load_credit_card_csv(path)
    assert data.features.shape == (3, 30) and data.labels.tolist() == [0, 1, 0]


@pytest.mark.parametrize("content,message", [
    (HEADER.replace(",V7", "") + _row(0, 1).replace(",0.1", "", 1), r"missing \['V7'\]"),
    (HEADER + _row(0, 1, amount="ten"), "line 2: 'ten' is not a number"),
    (HEADER + _row(0, 0) + _row(1, 2), "line 3: Class must be 0 .genuine. or 1 .fraud., got 2"),
    (HEADER + _row(0, 0) + _row(1, 0), "no row has Class 1"),
    (HEADER, "no data rows"),
    (HEADER + _row(0, 1, amount="nan"), "NaN or infinite"),
    (HEADER + "1,2,3\n", "3 fields, expected 31"),
    (HEADER.replace("Time,", "Time,V1,") + "0,0.1," + _row(0, 1), r"repeats \['V1'\]"),
    (HEADER + _row(0, 0) + '"1\n",' + _row(1, 0).split(",", 1)[1] + _row(2, "x"), "line 5: 'x' is not a number"),
])
def test_malformed_credit_card_csv_is_refused(tmp_path, content, message):
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(F.CsvFormatError, match=message):
        F.load_credit_card_csv(path)


def test_missing_csv_says_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="download the credit-card fraud CSV"):
        F.load_credit_card_csv(tmp_path / "nope.csv")
