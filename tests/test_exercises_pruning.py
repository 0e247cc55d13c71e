"""Notebook 03's checkers accept the solutions and reject typical wrong answers with the matching hint."""

import copy
import re

import pytest
import torch
from torch.nn.utils import prune

from course_lib import prune as P
from course_lib.exercises import ExerciseError
from course_lib.exercises import pruning as check
from course_lib.models import load_reference


def magnitude_mask(weight, sparsity):
    mask = torch.ones(weight.numel())
    mask[weight.abs().flatten().argsort()[:round(sparsity * weight.numel())]] = 0.0
    return mask.reshape(weight.shape)


def test_magnitude_mask(capsys):
    check.check_magnitude_mask(magnitude_mask)
    assert "Exercise 3.1 passed" in capsys.readouterr().out


def _signed(weight, sparsity):
    mask = torch.ones(weight.numel())
    mask[weight.flatten().argsort()[:round(sparsity * weight.numel())]] = 0.0
    return mask.reshape(weight.shape)


@pytest.mark.parametrize("wrong,hint", [
    (lambda w, s: 1 - magnitude_mask(w, s), "1 means keep"),
    (_signed, "rank by magnitude"),
    (lambda w, s: magnitude_mask(w, 1 - s) if s else magnitude_mask(w, s), "fraction removed, not the fraction kept"),
    (lambda w, s: magnitude_mask(w, max(0.0, s - 1.5 / w.numel())), "exactly round"),  # one weight too few
    (lambda w, s: magnitude_mask(w, s).flatten(), "weight's shape"),
    (lambda w, s: magnitude_mask(w, s) * w, "1 keeps a weight, 0 removes it"),
])
def test_magnitude_mask_rejects_typical_mistakes(wrong, hint):
    assert_rejects(check.check_magnitude_mask, wrong, "3.1", hint)


def assert_rejects(checker, answer, exercise, hint):
    """The checker raises the course's three-part message, and it contains the expected hint."""
    with pytest.raises(ExerciseError) as info:
        checker(answer)
    message = str(info.value)
    assert message.startswith(f"Exercise {exercise}: expected ") and "\nHint: " in message, message
    assert re.search(hint, message), message


@pytest.fixture(scope="module")
def lenet():
    return load_reference("lenet_300_100")


def test_global_pruning(lenet, capsys):
    model = copy.deepcopy(lenet)
    prune.global_unstructured([(model.fc1, "weight"), (model.fc2, "weight"), (model.fc3, "weight")],
                              pruning_method=prune.L1Unstructured, amount=0.9)
    check.check_global_pruning(model)
    assert "Exercise 3.2 passed" in capsys.readouterr().out


def test_global_pruning_rejects_layerwise_unmasked_and_wrong_amounts(lenet):
    layerwise = copy.deepcopy(lenet)
    for layer in (layerwise.fc1, layerwise.fc2, layerwise.fc3):
        prune.l1_unstructured(layer, "weight", amount=0.9)
    with pytest.raises(ExerciseError, match="(?s)global threshold.*l1_unstructured is the layer-wise"):
        check.check_global_pruning(layerwise)
    removed = copy.deepcopy(lenet)
    for layer in (removed.fc1, removed.fc2, removed.fc3):
        prune.l1_unstructured(layer, "weight", amount=0.9)
        prune.remove(layer, "weight")
    with pytest.raises(ExerciseError, match="do not call prune.remove"):
        check.check_global_pruning(removed)
    kept_90 = copy.deepcopy(lenet)
    prune.global_unstructured([(kept_90.fc1, "weight"), (kept_90.fc2, "weight"), (kept_90.fc3, "weight")],
                              pruning_method=prune.L1Unstructured, amount=0.1)
    with pytest.raises(ExerciseError, match="amount is the fraction to remove"):
        check.check_global_pruning(kept_90)
    random = copy.deepcopy(lenet)
    prune.global_unstructured([(random.fc1, "weight"), (random.fc2, "weight"), (random.fc3, "weight")],
                              pruning_method=prune.RandomUnstructured, amount=0.9)
    with pytest.raises(ExerciseError, match="(?s)global magnitude.*L1Unstructured"):
        check.check_global_pruning(random)


def test_cubic_sparsity(capsys):
    check.check_cubic_sparsity(lambda t, total, final: final * (1 - (1 - t / total) ** 3))
    assert "Exercise 3.3 passed" in capsys.readouterr().out


@pytest.mark.parametrize("wrong,hint", [
    (lambda t, total, final: final * t / total, "linear ramp"),
    (lambda t, total, final: final * (t / total) ** 3, "slowly first"),
    (lambda t, total, final: final * (1 - t / total) ** 3, "must reach the final value"),
    (lambda t, total, final: final, "starts at 0"),
    (lambda t, total, final: torch.tensor([final, final]), "plain Python number"),
])
def test_cubic_sparsity_rejects_typical_mistakes(wrong, hint):
    assert_rejects(check.check_cubic_sparsity, wrong, "3.3", hint)


def last_layer_hessian(p, a):
    return (p * (1 - p)).T @ a.pow(2) / len(a)


def test_last_layer_hessian_matches_autograd():
    """The formula the checker expects is the true Hessian diagonal (second derivatives by autograd)."""
    torch.manual_seed(0)
    a = torch.rand(6, 4)
    w = torch.randn(3, 4, requires_grad=True)
    labels = torch.randint(0, 3, (6,))
    loss = torch.nn.functional.cross_entropy(a @ w.T, labels)
    (grad,) = torch.autograd.grad(loss, w, create_graph=True)
    exact = torch.stack([torch.autograd.grad(grad.flatten()[k], w, retain_graph=True)[0].flatten()[k]
                         for k in range(w.numel())]).reshape(w.shape)
    assert torch.allclose(last_layer_hessian(torch.softmax(a @ w.T, dim=1).detach(), a), exact, atol=1e-6)


def test_last_layer_hessian(capsys):
    check.check_last_layer_hessian(last_layer_hessian)
    assert "Exercise 3.4 passed" in capsys.readouterr().out


@pytest.mark.parametrize("wrong,hint", [
    (lambda p, a: (p * (1 - p)).T @ a.pow(2), "divide by N"),
    (lambda p, a: p.T @ a.pow(2) / len(a), "p \\(1 - p\\), not p"),
    (lambda p, a: (p * (1 - p)).T @ a / len(a), "carries a_j²"),
    (lambda p, a: last_layer_hessian(p, a).T, "classes × inputs"),
    (lambda p, a: (p * (1 - p)).T @ a.pow(3) / len(a), "differentiate the loss twice"),
])
def test_last_layer_hessian_rejects_typical_mistakes(wrong, hint):
    assert_rejects(check.check_last_layer_hessian, wrong, "3.4", hint)


def csr_bytes(weight):
    return int(weight.count_nonzero()) * (4 + (2 if weight.shape[1] <= 65_536 else 4)) + (weight.shape[0] + 1) * 4


def test_csr_bytes_matches_the_file(tmp_path, capsys):
    check.check_csr_bytes(csr_bytes)
    assert "Exercise 3.6 passed" in capsys.readouterr().out
    model = torch.nn.Sequential(torch.nn.Linear(300, 100, bias=False))
    P.apply_masks(model, P.magnitude_masks(model, 0.9))
    size = P.save_sparse(model, tmp_path / "one.safetensors", formats=("csr",))
    assert 0 < size - csr_bytes(model[0].weight.detach()) < 500, "the rest is the safetensors header"


@pytest.mark.parametrize("wrong,hint", [
    (lambda w: int(w.count_nonzero()) * 6, "row pointers"),
    (lambda w: int(w.count_nonzero()) * 12 + (w.shape[0] + 1) * 8, "int64 in memory"),
    (lambda w: w.numel() * 4, "dense size"),
    (lambda w: int(w.count_nonzero()) * 6 + (w.shape[0] + 1) * 4, "uint16 cannot hold"),
    (lambda w: csr_bytes(w) + 1, "values \\(4 bytes each\\)"),
])
def test_csr_bytes_rejects_typical_mistakes(wrong, hint):
    assert_rejects(check.check_csr_bytes, wrong, "3.6", hint)


@pytest.fixture(scope="module")
def cnn_and_batch():
    from course_lib.data import load_fashion_mnist

    return load_reference("course_cnn"), load_fashion_mnist("test").images[:64]


def remove_filter(model, conv_index, channel, drop=None, next_drop=None, update_bn=True, update_next=True):
    """The solution of exercise 3.5; the keyword arguments inject the typical mistakes."""
    smaller = copy.deepcopy(model)
    features = smaller.features
    conv, bn = features[conv_index], features[conv_index + 1]
    following = next(i for i in range(conv_index + 1, len(features)) if isinstance(features[i], torch.nn.Conv2d))
    nxt = features[following]
    keep = [c for c in range(conv.out_channels) if c != (channel if drop is None else drop)]
    keep_next = [c for c in range(conv.out_channels) if c != (channel if next_drop is None else next_drop)]
    new_conv = torch.nn.Conv2d(conv.in_channels, len(keep), conv.kernel_size, conv.stride, conv.padding, bias=False)
    new_bn = torch.nn.BatchNorm2d(len(keep), eps=bn.eps)
    new_next = torch.nn.Conv2d(len(keep_next), nxt.out_channels, nxt.kernel_size, nxt.stride, nxt.padding, bias=False)
    with torch.no_grad():
        new_conv.weight.copy_(conv.weight[keep])
        for name in ("weight", "bias", "running_mean", "running_var"):
            getattr(new_bn, name).copy_(getattr(bn, name)[keep])
        new_next.weight.copy_(nxt.weight[:, keep_next])
    features[conv_index] = new_conv
    if update_bn:
        features[conv_index + 1] = new_bn
    if update_next:
        features[following] = new_next
    return smaller.eval()


@pytest.fixture(scope="module")
def cnn_and_batch():
    from course_lib.data import load_fashion_mnist

    return load_reference("course_cnn"), load_fashion_mnist("test").images[:64]


def test_remove_filter(cnn_and_batch, capsys):
    cnn, batch = cnn_and_batch
    check.check_remove_filter(remove_filter, cnn, batch)
    assert "Exercise 3.5 passed" in capsys.readouterr().out


@pytest.mark.parametrize("mistake,hint", [
    (dict(update_next=False), "(?s)next convolution features.7 reading 31.*shape error.*dimension 1"),
    (dict(update_bn=False), "(?s)batch norm features.4 with 31 entries.*drop entry `channel` of all four"),
    (dict(drop=0), "same index in all three places"),
    (dict(drop=4, next_drop=4), "off-by-one"),
    (dict(next_drop=6), "same index in all three places"),
])
def test_remove_filter_rejects_typical_mistakes(cnn_and_batch, mistake, hint):
    cnn, batch = cnn_and_batch

    def answer(model, conv_index, channel):
        return remove_filter(model, conv_index, channel, **mistake)

    with pytest.raises(ExerciseError) as info:
        check.check_remove_filter(answer, cnn, batch)
    message = str(info.value)
    assert message.startswith("Exercise 3.5: expected ") and "\nHint: " in message, message
    assert re.search(hint, message), message


@pytest.mark.filterwarnings("ignore:.*torch.jit.script_method.*:DeprecationWarning")  # torch.compile's first import
def test_pruned_cnn_rejects_compiled_masked_and_too_wide_models(cnn_and_batch):
    from course_lib.quantize import _FrozenCompiled

    cnn, batch = cnn_and_batch
    for compiled in (torch.compile(cnn), _FrozenCompiled(cnn)):
        with pytest.raises(ExerciseError, match="(?s)compiled or exported.*not how many"):
            check.check_pruned_cnn(compiled, cnn, batch)
    masked = P.make_permanent(P.apply_masks(copy.deepcopy(cnn), P.structured_masks(cnn, 0.75, "filter")))
    with pytest.raises(ExerciseError, match="(?s)fewer multiply-adds.*1.00× fewer.*physically remove filters"):
        check.check_pruned_cnn(masked, cnn, batch)
    wide = P.remove_filters(cnn, P.l1_filter_selection(cnn, 0.8))
    with pytest.raises(ExerciseError, match="(?s)at least 2.0× fewer multiply-adds.*keep fewer filters"):
        check.check_pruned_cnn(wide, cnn, batch)


def test_pruned_cnn_grades_macs_and_test_accuracy_and_only_prints_latency(cnn_and_batch, capsys):
    cnn, batch = cnn_and_batch
    half = P.remove_filters(cnn, P.l1_filter_selection(cnn, 0.5))  # not fine-tuned: accuracy lost
    with pytest.raises(ExerciseError, match="(?s)test accuracy of at least.*fine-tune longer"):
        check.check_pruned_cnn(half, cnn, batch)
    measured = check.check_pruned_cnn(half, cnn, batch, max_accuracy_loss=1.0)
    out = capsys.readouterr().out
    assert "Exercise 3.7 passed" in out and "not graded" in out
    assert measured["mac_reduction"] > 3 and measured["parameters"] < measured["dense_parameters"]
