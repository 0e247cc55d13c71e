import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from course_lib.data import Dataset
from course_lib.models import build_model
from course_lib.train import augment_flip_crop, evaluate, fine_tune, predict, reestimate_batch_norm, train


def _weights(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def test_training_is_deterministic_and_learns():
    runs = []
    for _ in range(2):
        model = build_model("lenet_300_100")
        history = train(model, epochs=1, lr=2e-3, optimizer="adam", batch_size=256, progress=False)
        runs.append((_weights(model), history))
    assert torch.equal(runs[0][0], runs[1][0]), "same seed, same recipe: the same weights"
    assert runs[0][1].val_accuracy[0] > 0.80, "one epoch of LeNet-300-100 already classifies most images"
    assert not model.training


def test_fine_tune_changes_weights_a_little():
    model = build_model("lenet_300_100")
    train(model, epochs=1, lr=2e-3, optimizer="adam", batch_size=256, progress=False, evaluate_every_epoch=False)
    before = _weights(model).clone()
    fine_tune(model, epochs=1, lr=1e-4, optimizer="adam", batch_size=512, progress=False, evaluate_every_epoch=False)
    change = (_weights(model) - before).norm() / before.norm()
    assert 0 < change < 0.2


def _counting_loss(calls: list):
    """Cross-entropy that records the batch size of every call."""
    def loss_fn(m, x, y):
        calls.append(len(y))
        return torch.nn.functional.cross_entropy(m(x), y)
    return loss_fn


def test_custom_loss_is_used():
    model = build_model("lenet_300_100")
    calls = []
    loss_fn = _counting_loss(calls)
    train(model, epochs=1, lr=1e-3, optimizer="adam", batch_size=10000, loss_fn=loss_fn, progress=False,
          evaluate_every_epoch=False)
    assert calls == [10000] * 5 + [5000], "55,000 training images"


def test_steps_per_epoch_stops_early():
    model = build_model("lenet_300_100")
    calls = []
    train(model, epochs=2, lr=1e-3, optimizer="adam", batch_size=100, loss_fn=_counting_loss(calls), progress=False,
          evaluate_every_epoch=False, steps_per_epoch=3)
    assert calls == [100] * 6
    with pytest.raises(ValueError, match="steps_per_epoch must be from 1 to 550"):
        train(model, epochs=1, lr=1e-3, batch_size=100, steps_per_epoch=551)


def test_bad_arguments():
    with pytest.raises(ValueError, match="epochs must be at least 1"):
        train(build_model("lenet5"), epochs=0, lr=0.1)
    with pytest.raises(ValueError, match="unknown optimizer 'rmsprop'"):
        train(build_model("lenet5"), epochs=1, lr=0.1, optimizer="rmsprop")


def test_evaluate_counts_correct_predictions():
    class Fixed(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.dummy = torch.nn.Parameter(torch.zeros(1))

        def forward(self, x):
            return torch.nn.functional.one_hot(x.flatten(1)[:, 0].long(), 10).float()

    images = torch.tensor([0, 1, 2, 3]).float().view(4, 1, 1, 1)
    dataset = Dataset(images, torch.tensor([0, 1, 0, 0]))
    assert evaluate(Fixed(), dataset, batch_size=3) == 0.5
    assert predict(Fixed(), images, batch_size=3).shape == (4, 10)
    shapes = []
    model = Fixed()
    model.register_forward_pre_hook(lambda m, args: shapes.append(args[0].shape[0]))
    assert evaluate(model, dataset, batch_size=3, fixed_batch=True) == 0.5
    assert shapes == [3, 3], "the last batch is padded to the same size, and the padding is dropped"


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), padding=st.integers(1, 3))
def test_augmentation_only_flips_and_shifts(seed, padding):
    images = torch.rand(6, 1, 8, 8) + 1  # strictly above the padding value
    out = augment_flip_crop(images, torch.Generator().manual_seed(seed), padding=padding)
    assert out.shape == images.shape
    for original, augmented in zip(images, out, strict=True):
        candidates = [original, original.flip(2)]
        padded = [torch.nn.functional.pad(c, (padding,) * 4, value=float(images.min())) for c in candidates]
        crops = [p[:, dy:dy + 8, dx:dx + 8] for p in padded
                 for dy in range(2 * padding + 1) for dx in range(2 * padding + 1)]
        assert any(torch.equal(augmented, crop) for crop in crops)


def test_reestimate_batch_norm_averages_the_batches_and_changes_no_weight():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3, momentum=0.3))
    images = torch.randn(256, 4) * 3 + 1
    weights = {name: p.clone() for name, p in model.named_parameters()}
    assert reestimate_batch_norm(model, images, batch_size=64) is model and not model.training
    features = model[0](images).detach()
    batches = features.split(64)
    norm = model[1]
    assert torch.allclose(norm.running_mean, features.mean(0), atol=1e-5), "the mean over all the batches"
    assert torch.allclose(norm.running_var, torch.stack([b.var(0) for b in batches]).mean(0), atol=1e-4)
    assert norm.momentum == 0.3, "the layer's own momentum is restored"
    assert all(torch.equal(p, weights[name]) for name, p in model.named_parameters())


def test_reestimate_batch_norm_refuses_what_it_cannot_do():
    with pytest.raises(ValueError, match="no batch-norm layer"):
        reestimate_batch_norm(build_model("lenet_300_100"), torch.randn(8, 1, 28, 28))
    with pytest.raises(ValueError, match="at least 2 images"):
        reestimate_batch_norm(build_model("course_cnn"), torch.randn(1, 1, 28, 28))


def test_targets_travel_with_their_images_and_subset_restricts_training():
    from course_lib.data import load_fashion_mnist
    from course_lib.train import train

    data = load_fashion_mnist("train")
    seen = []

    def loss_fn(model, images, labels, targets):
        seen.append((labels.clone(), targets.clone()))
        return torch.nn.functional.cross_entropy(model(images), labels)

    marker = data.labels.float() * 10  # a target that can be checked against its own image's label
    subset = (data.labels != 3).nonzero().flatten()
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10))
    train(model, epochs=1, lr=0.01, loss_fn=loss_fn, targets=marker, subset=subset, steps_per_epoch=5,
          evaluate_every_epoch=False, progress=False)
    assert len(seen) == 5
    for labels, targets in seen:
        assert torch.equal(targets, labels.float() * 10) and not bool((labels == 3).any())


def test_targets_are_refused_where_they_cannot_be_right():
    from course_lib.train import train

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10))
    with pytest.raises(ValueError, match="one row per training image"):
        train(model, epochs=1, lr=0.01, loss_fn=lambda m, x, y, t: m(x).sum(), targets=torch.zeros(3, 10))
    with pytest.raises(ValueError, match="augment=False"):
        train(model, epochs=1, lr=0.01, loss_fn=lambda m, x, y, t: m(x).sum(), targets=torch.zeros(55_000, 10),
              augment=True)
    with pytest.raises(ValueError, match="need a loss_fn"):
        train(model, epochs=1, lr=0.01, targets=torch.zeros(55_000, 10))
    with pytest.raises(ValueError, match="subset must hold indices"):
        train(model, epochs=1, lr=0.01, subset=torch.tensor([55_000]))
