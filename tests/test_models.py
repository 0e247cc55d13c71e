import pytest
import torch

from course_lib.measure import count_parameters
from course_lib.models import CourseCNN, build_model, checkpoint_name, load_reference, reference_info
from course_lib.train import evaluate

# Parameter counts of the published architectures (Han et al.: LeNet-300-100 267K, LeNet-5 431K).
EXPECTED_PARAMETERS = {"lenet_300_100": 266_610, "lenet5": 431_080, "course_cnn": 584_618}
MINIMUM_ACCURACY = {"lenet_300_100": 0.89, "lenet5": 0.90, "course_cnn": 0.93}


@pytest.mark.parametrize("name", sorted(EXPECTED_PARAMETERS))
def test_architecture(name):
    model = build_model(name)
    assert count_parameters(model) == EXPECTED_PARAMETERS[name]
    assert model(torch.zeros(5, 1, 28, 28)).shape == (5, 10)


def test_unknown_model_name_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown model 'resnet'.*course_cnn.*lenet5.*lenet_300_100"):
        build_model("resnet")
    with pytest.raises(ValueError, match="unknown model"):
        checkpoint_name("vgg16")
    with pytest.raises(ValueError, match=r"no training record for 'vgg16'.*fraud_mlp"):
        reference_info("vgg16")


def test_course_cnn_is_a_flat_conv_bn_relu_chain():
    """Later notebooks rely on this layout to prune channels and to export the model."""
    kinds = [type(m).__name__ for m in CourseCNN().features]
    assert kinds == (["Conv2d", "BatchNorm2d", "ReLU"] * 2 + ["MaxPool2d"]) * 3


@pytest.mark.parametrize("name", sorted(MINIMUM_ACCURACY))
def test_reference_checkpoint_reaches_its_accuracy(name):
    model = load_reference(name)
    assert not model.training
    accuracy = evaluate(model)
    assert accuracy >= MINIMUM_ACCURACY[name]
    # Same weights, same test set: the recorded accuracy repeats (up to a few flipped borderline images
    # on a CPU with other vector instructions).
    assert accuracy == pytest.approx(reference_info(name)["test_accuracy"], abs=0.002)


def test_fold_batch_norms_keeps_the_function_and_removes_the_norms():
    from course_lib.models import fold_batch_norms

    torch.manual_seed(0)
    model = build_model("course_cnn").eval()
    for module in model.modules():  # non-trivial statistics, so that folding has something to fold
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-1, 1)
            module.running_var.uniform_(0.5, 2)
            module.weight.data.uniform_(0.5, 2)
    folded = fold_batch_norms(model)
    x = torch.randn(3, 1, 28, 28)
    with torch.inference_mode():
        assert torch.allclose(folded(x), model(x), atol=1e-4)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()), "the original is untouched"
    with pytest.raises(ValueError, match="nothing to fold"):
        fold_batch_norms(build_model("lenet_300_100"))
