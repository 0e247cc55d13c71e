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


def requantize(acc, x_scale, w_scale, y_scale, y_zero_point):
    return torch.clamp(torch.round(acc * (x_scale * w_scale / y_scale)) + y_zero_point, 0, 255).to(torch.uint8)


def test_requantize(capsys):
    check.check_requantize(requantize)
    check.check_requantize(lambda acc, sx, sw, sy, z: requantize(acc.double(), sx, sw, sy, z).int())  # int32 is fine
    assert "Exercise 2.5 passed" in capsys.readouterr().out


@pytest.mark.parametrize("wrong,hint", [
    (lambda acc, sx, sw, sy, z: torch.clamp(torch.round(acc * (sx * sw / sy)), 0, 255).to(torch.uint8),
     "add the output zero-point"),
    (lambda acc, sx, sw, sy, z: torch.clamp(torch.round(acc / (sx * sw / sy)) + z, 0, 255).to(torch.uint8),
     "Multiply by M, do not divide"),
    (lambda acc, sx, sw, sy, z: (torch.round(acc * (sx * sw / sy)) + z).int(), "clamp to \\[0, 255\\]"),
    (lambda acc, sx, sw, sy, z: (torch.round(acc * (sx * sw / sy)) + z).int().to(torch.uint8), "wraps around"),
    (lambda acc, sx, sw, sy, z: torch.clamp((acc * (sx * sw / sy)).int() + z, 0, 255).to(torch.uint8),
     "truncates toward zero"),
    (lambda acc, sx, sw, sy, z: torch.clamp(torch.floor(acc * (sx * sw / sy)) + z, 0, 255).to(torch.uint8),
     "not down"),
    (lambda acc, sx, sw, sy, z: torch.clamp(torch.round(acc * (sx * torch.as_tensor(sw).max() / sy)) + z, 0, 255)
     .to(torch.uint8), "one scale per output channel"),
    (lambda acc, sx, sw, sy, z: torch.clamp(torch.round(acc * (sx * torch.as_tensor(sw).reshape(-1)[0] / sy)) + z,
                                            0, 255).to(torch.uint8), "one scale per output channel"),
    (lambda acc, sx, sw, sy, z: torch.clamp(torch.round(acc * (sx * sw / sy)) + z, -128, 127).to(torch.int8),
     "not \\[-128, 127\\]"),
    (lambda acc, sx, sw, sy, z: torch.clamp(torch.round(acc * (sx * sw / sy)) + z, 0, 255), "takes 8-bit codes"),
])
def test_requantize_rejects_typical_mistakes(wrong, hint):
    with pytest.raises(ExerciseError, match=f"(?s)Exercise 2.5: expected .*Hint: .*{hint}"):
        check.check_requantize(wrong)


class FakeQuantSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, scale, zero_point, bits):
        codes = torch.round(x / scale) + zero_point
        inside = (codes >= 0) & (codes <= 2 ** bits - 1)
        ctx.save_for_backward(inside)
        return (torch.clamp(codes, 0, 2 ** bits - 1) - zero_point) * scale

    @staticmethod
    def backward(ctx, grad_output):
        (inside,) = ctx.saved_tensors
        return grad_output * inside, None, None, None


def _ste(backward, forward=FakeQuantSTE.forward):
    """A FakeQuantSTE variant with another backward (or forward)."""
    return type("WrongSTE", (torch.autograd.Function,), {"forward": staticmethod(forward),
                                                          "backward": staticmethod(backward)})


def _inside_of(x, scale, zero_point, bits):
    """The unclamped range by value, not by rounded code: right away from the grid's ends."""
    return (x >= -zero_point * scale) & (x <= (2 ** bits - 1 - zero_point) * scale)


def _forward_by_value(ctx, x, scale, zero_point, bits):
    ctx.save_for_backward(_inside_of(x, scale, zero_point, bits))
    ctx.scale = scale
    return (torch.clamp(torch.round(x / scale) + zero_point, 0, 2 ** bits - 1) - zero_point) * scale


def test_ste(capsys):
    check.check_ste(FakeQuantSTE)
    check.check_ste(_ste(lambda ctx, g: (g * ctx.saved_tensors[0], None, None, None), _forward_by_value))
    assert "Exercise 2.6 passed" in capsys.readouterr().out


class RoundThrough(torch.autograd.Function):  # no custom gradient: autograd through round gives zero
    @staticmethod
    def forward(ctx, x, scale, zero_point, bits):
        return FakeQuantSTE.forward(ctx, x, scale, zero_point, bits)

    @staticmethod
    def backward(ctx, grad_output):
        return grad_output * 0, None, None, None


@pytest.mark.parametrize("wrong,hint", [
    (RoundThrough, "true derivative of round"),
    (_ste(lambda ctx, g: (g, None, None, None)), "also flows where x was clipped"),
    (_ste(lambda ctx, g: (g * ctx.saved_tensors[0] * ctx.scale, None, None, None), _forward_by_value),
     "the gradient is scaled"),
    (_ste(lambda ctx, g: (g * ctx.saved_tensors[0] / ctx.scale, None, None, None), _forward_by_value),
     "the gradient is scaled"),
    (_ste(lambda ctx, g: (ctx.saved_tensors[0].float(), None, None, None)), "multiply the incoming gradient"),
    (_ste(lambda ctx, g: (g * ctx.saved_tensors[0], None, None, None),
          lambda ctx, x, s, z, b: FakeQuantSTE.forward(ctx, x, s, z, b) + s), "forward is your fake_quant"),
    (_ste(lambda ctx, g: g * ctx.saved_tensors[0]), "raised"),
    (lambda x: x, "subclass of torch.autograd.Function"),
])
def test_ste_rejects_typical_mistakes(wrong, hint):
    with pytest.raises(ExerciseError, match=f"(?s)Exercise 2.6: .*{hint}"):
        check.check_ste(wrong)


@pytest.fixture(scope="module")
def lenet5_and_data():
    from course_lib.data import load_fashion_mnist
    test, train = load_fashion_mnist("test"), load_fashion_mnist("train")
    return load_reference("lenet5").eval(), train.images[:256], test.images[:300], test.labels[:300]


def test_pt2e_model(lenet5_and_data, capsys):
    model, calibration, images, labels = lenet5_and_data
    check.check_pt2e_model(Q.quantize_static(model, calibration), model, images, labels)
    assert "Exercise 2.7 passed" in capsys.readouterr().out


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


def _linear_names(model):
    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]


def test_int8_minilm(tiny_minilm, capsys):
    model, embed, reference = tiny_minilm
    absmax = Q.linear_input_absmax(model, lambda: embed(model))
    feed_forward = [n for n in _linear_names(model) if ".ffn." in n]
    solution_like = Q.quantize_dynamic(model, per_channel=True, reduce_range=False, smooth_alpha=0.7, absmax=absmax,
                                       smooth_names=feed_forward)
    assert check.check_int8_minilm(solution_like, model, reference, embed) > 0.99
    assert "Exercise 2.8 passed: all 12 Linear layers" in capsys.readouterr().out
    torch_int8 = torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)
    check.check_int8_minilm(torch_int8, model, reference, embed, target=0.9)  # PyTorch's own int8 Linear counts


class FloatWrapper(nn.Module):
    """Looks like a replacement, runs in float."""

    def __init__(self, linear):
        super().__init__()
        self.weight, self.bias = linear.weight, linear.bias

    def forward(self, x):
        return nn.functional.linear(x, self.weight, self.bias)


def test_int8_minilm_rejects_float_layers_and_low_fidelity(tiny_minilm):
    model, embed, reference = tiny_minilm
    names = _linear_names(model)
    with pytest.raises(ExerciseError, match="(?s)all 12 Linear layers in int8, got 12 not int8.*leaving them in float"):
        check.check_int8_minilm(model, model, reference, embed)
    with pytest.raises(ExerciseError, match=r"got 11 not int8"):
        check.check_int8_minilm(Q.quantize_dynamic(model, names=names[:1]), model, reference, embed)
    with pytest.raises(ExerciseError, match=r"got 1 not int8 \(e.g. layers.0.attention.query: Linear"):
        check.check_int8_minilm(Q.quantize_dynamic(model, names=names[1:]), model, reference, embed)
    identity = Q.replace_linears(model, lambda n, linear: nn.Identity() if ".value" in n else
                                 Q.DynamicInt8Linear.from_linear(linear))
    with pytest.raises(ExerciseError, match="(?s)got 2 not int8.*Identity.*not removed or wrapped"):
        check.check_int8_minilm(identity, model, reference, embed)
    wrapped = Q.replace_linears(model, lambda n, linear: FloatWrapper(linear))
    with pytest.raises(ExerciseError, match="(?s)got 12 not int8.*FloatWrapper.*not removed or wrapped"):
        check.check_int8_minilm(wrapped, model, reference, embed)
    simulated = Q.replace_linears(model, lambda n, linear: Q.SimulatedQuantLinear(linear))
    with pytest.raises(ExerciseError, match="(?s)got 12 not int8.*imitates int8 in float"):
        check.check_int8_minilm(simulated, model, reference, embed)
    with pytest.raises(ExerciseError, match="(?s)mean cosine to fp32 of at least 0.99999.*7-bit activations"):
        check.check_int8_minilm(Q.quantize_dynamic(model, per_channel=False, reduce_range=True), model, reference,
                                embed, target=0.99999)
    with pytest.raises(ExerciseError, match="a MiniLM model"):
        check.check_int8_minilm(None, model, reference, embed)
