"""Checkers for notebook 00 (welcome): counting parameters and bytes, and computing accuracy."""

from __future__ import annotations

from collections.abc import Callable

import torch

from course_lib.exercises import call_answer, check_number, diagnose, fail, passed

# LeNet-300-100: 784*300 + 300, 300*100 + 100, 100*10 + 10
LENET_300_100_PARAMETERS = 784 * 300 + 300 + 300 * 100 + 100 + 100 * 10 + 10


def check_lenet_parameters(answer: object) -> None:
    """Exercise 0.1: the number of parameters of LeNet-300-100."""
    weights_only = 784 * 300 + 300 * 100 + 100 * 10
    check_number("0.1", "the number of parameters", answer, LENET_300_100_PARAMETERS, mistakes={
        weights_only: "that is the number of weights only: every Linear layer also has one bias per output.",
        784 * 300 + 300: "that is only the first layer: add the two other Linear layers.",
        784 * 300 + 300 * 100 + 100 * 10 + 300 + 100: "you forgot the biases of the last layer (one per class).",
    }, hint="a Linear layer with n inputs and m outputs has n*m weights and m biases; LeNet-300-100 is "
            "784 -> 300 -> 100 -> 10.")


def check_fp32_bytes(answer: object) -> None:
    """Exercise 0.2: bytes needed to store LeNet-300-100's parameters in fp32."""
    expected = 4 * LENET_300_100_PARAMETERS
    check_number("0.2", "the number of bytes", answer, expected, mistakes={
        32 * LENET_300_100_PARAMETERS: "that is bits, not bytes: fp32 is 32 bits = 4 bytes per parameter.",
        LENET_300_100_PARAMETERS: "that is one byte per parameter: fp32 needs 4 bytes per parameter.",
        expected / 1024: "that is KiB: the exercise asks for bytes.",
        expected / 1e6: "that is MB: the exercise asks for bytes.",
    }, hint="multiply the number of parameters by the bytes of one fp32 number.")


_CASES = [
    (torch.tensor([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [1.0, 0.0, 5.0], [4.0, 0.0, 1.0]]), torch.tensor([0, 1, 1, 2]), 0.5),
    (torch.tensor([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]]), torch.tensor([1, 0, 1]), 1.0),
    (torch.tensor([[5.0, 0.0, 0.0, 0.0, 1.0]]), torch.tensor([4]), 0.0),
]


def check_accuracy_function(accuracy: Callable[[torch.Tensor, torch.Tensor], object]) -> None:
    """Exercise 0.3: ``accuracy(logits, labels)`` returns the fraction of correct top-1 predictions."""
    for logits, labels, expected in _CASES:
        got = call_answer("0.3", accuracy, logits.clone(), labels.clone(),
                          hint="logits has shape [N, classes], labels [N].")
        value = got.item() if isinstance(got, torch.Tensor) and got.numel() == 1 else got
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            fail("0.3", "a Python float (a fraction between 0 and 1)", f"{type(got).__name__} {got!r}",
                 "return (...).float().mean().item() to turn a tensor into a number.")
        if abs(value - expected) > 1e-6:
            hint = diagnose(value, {
                expected * len(labels): "that is the number of correct predictions: divide by the number of samples.",
                100 * expected: "that is a percentage: return a fraction between 0 and 1.",
            }, default="the predicted class is the index of the largest logit in each row: "
                       "logits.argmax(dim=1), then compare with labels.")
            fail("0.3", f"{expected} for logits {logits.tolist()} and labels {labels.tolist()}", f"{value}", hint)
    passed("0.3", "accuracy(logits, labels) is right on every test case")
