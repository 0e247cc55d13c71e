"""Every checker accepts the solution and rejects typical wrong answers with an actionable message."""

import pytest
import torch

from course_lib.exercises import ExerciseError, check_number, require_number
from course_lib.exercises.welcome import (LENET_300_100_PARAMETERS, check_accuracy_function, check_fp32_bytes,
                                          check_lenet_parameters)


def test_generic_number_check(capsys):
    check_number("9.9", "x", 3, 3)
    assert "✅ Exercise 9.9 passed" in capsys.readouterr().out
    with pytest.raises(ExerciseError, match=r"(?s)expected x within 5% .*got 2.0 \(too small\).*Hint: more"):
        check_number("9.9", "x", 2.0, 3.0, rel_tol=0.05, hint="more")
    assert require_number("9.9", "x", torch.tensor(4)) == 4
    with pytest.raises(ExerciseError, match="plain Python number.*Tensor"):
        require_number("9.9", "x", torch.ones(3))
    with pytest.raises(ExerciseError, match="finite"):
        require_number("9.9", "x", float("nan"))


def test_lenet_parameters(capsys):
    check_lenet_parameters(266_610)
    assert "266,610" in capsys.readouterr().out


@pytest.mark.parametrize("wrong,hint", [
    (784 * 300 + 300 * 100 + 100 * 10, "weights only"),
    (784 * 300 + 300, "only the first layer"),
    (784 * 300 + 300 * 100 + 100 * 10 + 400, "biases of the last layer"),
    (123, "n inputs and m outputs"),
])
def test_lenet_parameters_rejects_typical_mistakes(wrong, hint):
    with pytest.raises(ExerciseError, match=f"(?s)Exercise 0.1: expected .*got {wrong:,}.*Hint: .*{hint}"):
        check_lenet_parameters(wrong)


def test_lenet_parameters_rejects_non_numbers():
    with pytest.raises(ExerciseError, match="plain Python number"):
        check_lenet_parameters("266610")


def test_fp32_bytes(capsys):
    check_fp32_bytes(4 * LENET_300_100_PARAMETERS)
    assert "passed" in capsys.readouterr().out


@pytest.mark.parametrize("wrong,hint", [
    (32 * LENET_300_100_PARAMETERS, "bits, not bytes"),
    (LENET_300_100_PARAMETERS, "one byte per parameter"),
    (4 * LENET_300_100_PARAMETERS / 1024, "KiB"),
    (4 * LENET_300_100_PARAMETERS / 1e6, "MB"),
    (2 * LENET_300_100_PARAMETERS, "bytes of one fp32 number"),
])
def test_fp32_bytes_rejects_typical_mistakes(wrong, hint):
    with pytest.raises(ExerciseError, match=f"(?s)Exercise 0.2.*Hint: .*{hint}"):
        check_fp32_bytes(wrong)


def test_accuracy_function_accepts_solution(capsys):
    check_accuracy_function(lambda logits, labels: (logits.argmax(1) == labels).float().mean().item())
    assert "passed" in capsys.readouterr().out


@pytest.mark.parametrize("wrong,hint", [
    (lambda lg, lb: (lg.argmax(1) == lb).sum().item(), "number of correct predictions"),
    (lambda lg, lb: 100 * (lg.argmax(1) == lb).float().mean().item(), "percentage"),
    (lambda lg, lb: (lg.argmax(0)[: len(lb)] == lb).float().mean().item(), r"logits has shape \[N, classes\]"),
    (lambda lg, lb: (lg.argmin(1) == lb).float().mean().item(), "largest logit"),
    (lambda lg, lb: (lg.argmax(1) == lb).float().mean(), None),  # a one-element tensor is accepted
    (lambda lg, lb: (lg.argmax(1) == lb), "Python float"),
    (lambda lg, lb: lg.argmax(2), "raised IndexError"),
])
def test_accuracy_function_rejects_typical_mistakes(wrong, hint):
    if hint is None:
        check_accuracy_function(wrong)
        return
    with pytest.raises(ExerciseError, match=f"(?s)Exercise 0.3.*{hint}"):
        check_accuracy_function(wrong)


def test_accuracy_stub_propagates_not_implemented():
    def stub(logits, labels):
        raise NotImplementedError("Exercise 0.3: write accuracy")

    with pytest.raises(NotImplementedError, match="Exercise 0.3"):
        check_accuracy_function(stub)


# ---- notebook 01 ----------------------------------------------------------------------------------------------
from course_lib.exercises.dataflow import (CONV_MACS, check_amdahl, check_conv_macs,  # noqa: E402
                                           check_is_memory_bound, check_linear_intensity, reference_linear_intensity)


def test_conv_macs(capsys):
    check_conv_macs(28 * 28 * 32 * 32 * 9)
    assert "7,225,344" in capsys.readouterr().out


@pytest.mark.parametrize("wrong,hint", [
    (2 * CONV_MACS, "FLOPs"), (32 * 32 * 9, "number of weights"), (28 * 28 * 32 * 32, "3x3 kernel"),
    (26 * 26 * 32 * 32 * 9, "padding=1"), (28 * 28 * 32 * 9, "all 32 input channels"), (1000, "output pixels"),
])
def test_conv_macs_rejects_typical_mistakes(wrong, hint):
    with pytest.raises(ExerciseError, match=f"(?s)Exercise 1.1.*Hint: .*{hint}"):
        check_conv_macs(wrong)


def test_linear_intensity_accepts_solution(capsys):
    check_linear_intensity(reference_linear_intensity)
    assert "passed" in capsys.readouterr().out


@pytest.mark.parametrize("wrong,hint", [
    (lambda i, o, b: reference_linear_intensity(i, o, b) / 2, "MACs per byte"),
    (lambda i, o, b: reference_linear_intensity(i, o, b) * 4, "number of values moved"),
    (lambda i, o, b: reference_linear_intensity(i, o, b) / 4, "1 byte per number"),
    (lambda i, o, b: 2 * b * i * o / (4 * (i * o + o)), "only the weights"),
    (lambda i, o, b: 2 * b * i * o / (4 * (i * o + b * i + b * o)), "biases"),
    (lambda i, o, b: "high", "plain Python number"),
    (lambda i, o: 1.0, "raised TypeError"),
])
def test_linear_intensity_rejects_typical_mistakes(wrong, hint):
    with pytest.raises(ExerciseError, match=f"(?s)Exercise 1.2.*{hint}"):
        check_linear_intensity(wrong)


def test_is_memory_bound(capsys):
    check_is_memory_bound(lambda i, p, b: i < p / b)
    assert "passed" in capsys.readouterr().out


@pytest.mark.parametrize("wrong,hint", [
    (lambda i, p, b: i > p / b, "below the ridge point"),
    (lambda i, p, b: i < b / p, "below the ridge point"),
    (lambda i, p, b: i < 1, "below the ridge point"),
    (lambda i, p, b: int(i < p / b), "True or False"),
])
def test_is_memory_bound_rejects_typical_mistakes(wrong, hint):
    with pytest.raises(ExerciseError, match=f"(?s)Exercise 1.3.*{hint}"):
        check_is_memory_bound(wrong)


def test_amdahl(capsys):
    check_amdahl(lambda f, k: 1 / ((1 - f) + f / k))
    assert "passed" in capsys.readouterr().out


@pytest.mark.parametrize("wrong,hint", [
    (lambda f, k: f * k + (1 - f), "averaged the speedups"),
    (lambda f, k: k, "only the accelerated part"),
    (lambda f, k: 1 / (f / k), "new time"),
    (lambda f, k: 1 / (1 - f + f / k) if f < 1 else 1 / 0, "raised ZeroDivisionError"),
])
def test_amdahl_rejects_typical_mistakes(wrong, hint):
    with pytest.raises(ExerciseError, match=f"(?s)Exercise 1.4.*{hint}"):
        check_amdahl(wrong)


def test_predictions_are_recorded_and_recalled(tmp_path, monkeypatch, capsys):
    from course_lib import exercises

    monkeypatch.setenv(exercises.PREDICTIONS_ENV, str(tmp_path / "p.json"))
    assert exercises.recall_prediction("x") is None
    exercises.record_prediction("x", 1.5, note="n")
    exercises.record_prediction("y", 2)
    assert exercises.recall_prediction("x") == 1.5 and exercises.recall_prediction("y") == 2
    assert "recorded prediction x = 1.5 (n)" in capsys.readouterr().out
    with pytest.raises(ExerciseError, match="plain Python number"):
        exercises.record_prediction("z", "fast")


def test_an_unfilled_prediction_is_refused_without_stopping_the_notebook(tmp_path, monkeypatch, capsys):
    from course_lib import exercises

    monkeypatch.setenv(exercises.PREDICTIONS_ENV, str(tmp_path / "p.json"))
    exercises.record_prediction("x", None, note="n")
    assert "No prediction recorded for x: replace None by your guess" in capsys.readouterr().out
    assert not (tmp_path / "p.json").exists() and exercises.recall_prediction("x") is None
    exercises.record_prediction("x", 1.2)
    exercises.record_prediction("x", None)
    assert exercises.recall_prediction("x") == 1.2, "None must not erase an earlier guess"


def test_the_predictions_file_follows_the_environment(tmp_path, monkeypatch):
    from course_lib import exercises

    monkeypatch.delenv(exercises.PREDICTIONS_ENV)
    assert exercises.predictions_file() == exercises.PREDICTIONS_FILE
    monkeypatch.setenv(exercises.PREDICTIONS_ENV, str(tmp_path / "sub" / "p.json"))
    exercises.record_prediction("x", 3)
    assert (tmp_path / "sub" / "p.json").exists()


def test_tests_never_write_the_learners_predictions_file():
    """tests/conftest.py points the predictions at a temporary file before any kernel starts (they inherit it)."""
    import os

    from course_lib import exercises

    assert os.environ.get(exercises.PREDICTIONS_ENV), "conftest.py sets COURSE_PREDICTIONS_FILE"
    assert exercises.predictions_file() != exercises.PREDICTIONS_FILE
