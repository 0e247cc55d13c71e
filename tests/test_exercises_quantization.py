"""Notebook 02's checkers accept the solutions and reject typical wrong answers with the matching hint."""

import pytest
import torch
from torch import nn

from course_lib import quantize as Q
from course_lib.exercises import ExerciseError
from course_lib.exercises import quantization as check
from course_lib.minilm import MiniLM, MiniLMConfig
from course_lib.models import load_reference


def affine_qparams(low, high, bits):
    low, high = min(low, 0.0), max(high, 0.0)
    scale = (high - low) / (2 ** bits - 1)
    return scale, round(-low / scale)


def test_affine_qparams(capsys):
    check.check_affine_qparams(affine_qparams)
    assert "Exercise 2.1 passed" in capsys.readouterr().out


@pytest.mark.parametrize("wrong,hint", [
    (lambda lo, hi, b: ((hi - lo) / 2 ** b, round(-lo / ((hi - lo) / 2 ** b))), "2\\^b - 1 steps"),
    (lambda lo, hi, b: ((hi - lo) / (2 ** b - 1), -lo / ((hi - lo) / (2 ** b - 1))), "must be an integer"),
    (lambda lo, hi, b: ((hi - lo) / (2 ** b - 1), round(lo / ((hi - lo) / (2 ** b - 1)))), "opposite sign"),
    (lambda lo, hi, b: ((hi - lo) / (2 ** b - 1), round(-lo / ((hi - lo) / (2 ** b - 1)))), "must contain 0"),
    (lambda lo, hi, b: (1.0,), "return scale, zero_point"),
])
def test_affine_qparams_rejects_typical_mistakes(wrong, hint):
    with pytest.raises(ExerciseError, match=f"(?s)Exercise 2.1: expected .*Hint: .*{hint}"):
        check.check_affine_qparams(wrong)


def fake_quant(x, scale, zero_point, bits):
    return (torch.clamp(torch.round(x / scale) + zero_point, 0, 2 ** bits - 1) - zero_point) * scale


def test_fake_quant(capsys):
    check.check_fake_quant(fake_quant)
    assert "Exercise 2.2 passed" in capsys.readouterr().out


@pytest.mark.parametrize("wrong,hint", [
    (lambda x, s, z, b: (torch.round(x / s) + z - z) * s, "saturate"),
    (lambda x, s, z, b: (torch.clamp(torch.floor(x / s) + z, 0, 2 ** b - 1) - z) * s, "nearest code"),
    (lambda x, s, z, b: torch.clamp(torch.round(x / s) + z, 0, 2 ** b - 1) * s, "subtracts the zero-point"),
    (lambda x, s, z, b: torch.clamp(torch.round(x / s) + z, 0, 2 ** b - 1), "integer codes"),
    (lambda x, s, z, b: fake_quant(x, s, z, b).sum(), "elementwise"),
])
def test_fake_quant_rejects_typical_mistakes(wrong, hint):
    with pytest.raises(ExerciseError, match=f"(?s)Exercise 2.2: expected .*Hint: .*{hint}"):
        check.check_fake_quant(wrong)


def test_per_channel_scales(capsys):
    check.check_per_channel_scales(lambda w, b: w.abs().flatten(1).amax(dim=1) / (2 ** (b - 1) - 1))
    assert "Exercise 2.3 passed" in capsys.readouterr().out


@pytest.mark.parametrize("wrong,hint", [
    (lambda w, b: w.abs().max() / (2 ** (b - 1) - 1), "per-tensor"),
    (lambda w, b: w.abs().flatten(1).amax(dim=1) / 2 ** (b - 1), "2\\^\\(b-1\\) - 1"),
    (lambda w, b: w.flatten(1).amax(dim=1) / (2 ** (b - 1) - 1), "largest magnitude"),
    (lambda w, b: w.abs().transpose(0, 1).flatten(1).amax(dim=1) / (2 ** (b - 1) - 1), "input channels"),
])
def test_per_channel_scales_rejects_typical_mistakes(wrong, hint):
    with pytest.raises(ExerciseError, match=f"(?s)Exercise 2.3: expected .*Hint: .*{hint}"):
        check.check_per_channel_scales(wrong)


def test_accumulate(capsys):
    check.check_accumulate(lambda x, z, w: (x.to(torch.int32) - z) @ w.to(torch.int32).T)
    assert "Exercise 2.4 passed" in capsys.readouterr().out


@pytest.mark.parametrize("wrong,hint", [
    (lambda x, z, w: (x.float() - z) @ w.float().T, "keep everything in integers"),
    (lambda x, z, w: x.to(torch.int32) @ w.to(torch.int32).T, "zero-point first"),
    (lambda x, z, w: (x.to(torch.int16) - z) @ w.to(torch.int16).T, "overflows"),
    (lambda x, z, w: (x.to(torch.int32) - z) * w.to(torch.int32)[:1], "convert the codes|shape"),
])
def test_accumulate_rejects_typical_mistakes(wrong, hint):
    with pytest.raises(ExerciseError, match=f"(?s)Exercise 2.4: .*{hint}"):
        check.check_accumulate(wrong)


@pytest.fixture(scope="module")
def lenet5_and_data():
    from course_lib.data import load_fashion_mnist
    test, train = load_fashion_mnist("test"), load_fashion_mnist("train")
    return load_reference("lenet5").eval(), train.images[:256], test.images[:300], test.labels[:300]


def test_pt2e_model(lenet5_and_data, capsys):
    model, calibration, images, labels = lenet5_and_data
    check.check_pt2e_model(Q.quantize_static(model, calibration), model, images, labels)
    assert "Exercise 2.5 passed" in capsys.readouterr().out


def test_pt2e_model_rejects_eager_unconverted_and_uncalibrated(lenet5_and_data):
    model, calibration, images, labels = lenet5_and_data
    with pytest.raises(ExerciseError, match="GraphModule"):
        check.check_pt2e_model(model, model, images, labels)
    exported = torch.export.export(model, (calibration[:2],)).module()
    with pytest.raises(ExerciseError, match="quantize/dequantize ops"):
        check.check_pt2e_model(exported, model, images[:2], labels[:2])
    badly_calibrated = Q.quantize_static(model, torch.zeros(4, 1, 28, 28))
    with pytest.raises(ExerciseError, match="real training images"):
        check.check_pt2e_model(badly_calibrated, model, images, labels)


@pytest.fixture(scope="module")
def tiny_minilm():
    torch.manual_seed(0)
    model = MiniLM(MiniLMConfig(vocab_size=100, hidden=32, layers=2, heads=2, intermediate=64)).eval()
    ids, mask = torch.randint(0, 100, (6, 10)), torch.ones(6, 10, dtype=torch.long)

    def embed(m):
        with torch.no_grad():
            return m(ids, mask)

    return model, embed, embed(model)


def test_int8_minilm(tiny_minilm, capsys):
    model, embed, reference = tiny_minilm
    assert check.check_int8_minilm(Q.quantize_dynamic(model, per_channel=True, reduce_range=False), reference,
                                   embed) > 0.99
    assert "Exercise 2.6 passed: all 12 Linear layers" in capsys.readouterr().out


def test_int8_minilm_rejects_float_layers_and_low_fidelity(tiny_minilm):
    model, embed, reference = tiny_minilm
    with pytest.raises(ExerciseError, match="12 still float"):
        check.check_int8_minilm(model, reference, embed)
    with pytest.raises(ExerciseError, match="1 still float"):
        check.check_int8_minilm(Q.quantize_dynamic(model, names=[n for n, m in model.named_modules()
                                                                  if isinstance(m, nn.Linear)][1:]),
                                reference, embed)
    with pytest.raises(ExerciseError, match="(?s)mean cosine to fp32 of at least 0.99999.*7-bit activations"):
        check.check_int8_minilm(Q.quantize_dynamic(model, per_channel=False, reduce_range=True), reference, embed,
                                target=0.99999)
