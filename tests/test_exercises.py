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
