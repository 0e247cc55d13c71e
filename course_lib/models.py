"""The course's Fashion-MNIST models and their shipped reference checkpoints.

* ``lenet_300_100``: the fully connected LeNet-300-100 of Han et al. (784-300-100-10, ReLU).
* ``lenet5``: the Caffe LeNet-5 of Han et al. (conv 20@5x5, pool, conv 50@5x5, pool, fc 500, fc 10).
* ``course_cnn``: a VGG-style CNN (three stages of two 3x3 conv + batch norm + ReLU, then max-pool),
  heavy enough (~58 MFLOPs per image) that int8 and structured pruning pay off on a CPU.
* ``course_cnn_ds``: the course CNN rebuilt from MobileNet's depthwise-separable blocks (notebook 07).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable

import torch
from safetensors.torch import load_file
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from course_lib.data import DATA_DIR, data_file

INPUT_SHAPE = (1, 28, 28)
NUM_CLASSES = 10


class LeNet300100(nn.Module):
    """784-300-100-10 multilayer perceptron (Han et al. 2015, LeNet-300-100)."""

    def __init__(self, hidden: tuple[int, int] = (300, 100), num_classes: int = NUM_CLASSES):
        super().__init__()
        self.fc1 = nn.Linear(28 * 28, hidden[0])
        self.fc2 = nn.Linear(hidden[0], hidden[1])
        self.fc3 = nn.Linear(hidden[1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(x, 1)
        x = torch.relu(self.fc1(x))
        x = torch.relu(self.fc2(x))
        return self.fc3(x)


class LeNet5(nn.Module):
    """Caffe's LeNet-5 as used by Han et al.: 20 and 50 5x5 filters, a 500-unit hidden layer."""

    def __init__(self, num_classes: int = NUM_CLASSES):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 20, kernel_size=5)
        self.conv2 = nn.Conv2d(20, 50, kernel_size=5)
        self.fc1 = nn.Linear(50 * 4 * 4, 500)
        self.fc2 = nn.Linear(500, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.max_pool2d(self.conv1(x), 2)
        x = torch.max_pool2d(self.conv2(x), 2)
        x = torch.relu(self.fc1(torch.flatten(x, 1)))
        return self.fc2(x)


def _conv_bn_relu(in_channels: int, out_channels: int) -> list[nn.Module]:
    return [
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    ]


class CourseCNN(nn.Module):
    """VGG-style CNN for 28x28 images: 3 stages of (conv-bn-relu) x2 + max-pool, then two linear layers.

    ``features`` and ``classifier`` are flat ``nn.Sequential`` blocks so that later notebooks can
    walk conv -> batch norm -> next conv chains (structured pruning) and export the model (int8).
    """

    def __init__(self, widths: tuple[int, int, int] = (32, 64, 128), hidden: int = 256,
                 num_classes: int = NUM_CLASSES, dropout: float = 0.3):
        super().__init__()
        layers: list[nn.Module] = []
        in_channels = 1
        for width in widths:
            layers += _conv_bn_relu(in_channels, width) + _conv_bn_relu(width, width)
            layers.append(nn.MaxPool2d(2))
            in_channels = width
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(widths[-1] * 3 * 3, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class StudentCNN(nn.Module):
    """A small CNN for 28x28 images, the student of notebook 05: one conv-bn-relu + max-pool per stage, then one
    linear layer. The default widths (16, 32, 64) give 29,178 parameters, 20x fewer than the course CNN."""

    def __init__(self, widths: tuple[int, ...] = (16, 32, 64), num_classes: int = NUM_CLASSES):
        super().__init__()
        if not widths or any(w < 1 for w in widths) or len(widths) > 4:
            raise ValueError(f"widths must be 1 to 4 positive channel counts, got {widths}")
        layers: list[nn.Module] = []
        in_channels, size = 1, 28
        for width in widths:
            layers += _conv_bn_relu(in_channels, width) + [nn.MaxPool2d(2)]
            in_channels, size = width, size // 2
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(widths[-1] * size * size, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def depthwise_separable(in_channels: int, out_channels: int) -> list[nn.Module]:
    """MobileNet's replacement for a 3x3 conv-bn-relu: a depthwise 3x3 (one filter per channel, ``groups``) and a
    pointwise 1x1 that mixes the channels, each followed by batch norm and ReLU."""
    return (
        [nn.Conv2d(in_channels, in_channels, kernel_size=3, padding=1, groups=in_channels, bias=False),
         nn.BatchNorm2d(in_channels), nn.ReLU(inplace=True)]
        + [nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=False), nn.BatchNorm2d(out_channels),
           nn.ReLU(inplace=True)]
    )


class DepthwiseSeparableCNN(nn.Module):
    """The course CNN's three stages of two 3x3 convolutions and a max-pool, every convolution but the first (it sees
    one input channel) replaced by a depthwise-separable block, and the classifier a single linear layer on the
    flattened 3x3 maps (the course CNN's 295k-parameter hidden layer is half of its weights). The default widths
    (48, 96, 192) give 95,770 parameters, 6.1x fewer than the course CNN, and 3.5x fewer multiply-adds."""

    def __init__(self, widths: tuple[int, int, int] = (48, 96, 192), num_classes: int = NUM_CLASSES):
        super().__init__()
        layers: list[nn.Module] = _conv_bn_relu(1, widths[0])
        in_channels = widths[0]
        for stage, width in enumerate(widths):
            layers += depthwise_separable(in_channels, width)
            if stage > 0:
                layers += depthwise_separable(width, width)
            layers.append(nn.MaxPool2d(2))
            in_channels = width
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(widths[-1] * 3 * 3, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


MODEL_BUILDERS: dict[str, Callable[[], nn.Module]] = {
    "lenet_300_100": LeNet300100,
    "lenet5": LeNet5,
    "course_cnn": CourseCNN,
    "course_cnn_ds": DepthwiseSeparableCNN,
}


def _check_name(name: str) -> None:
    if name not in MODEL_BUILDERS:
        raise ValueError(f"unknown model {name!r}: choose one of {sorted(MODEL_BUILDERS)}")


def build_model(name: str) -> nn.Module:
    """A freshly initialised model by name (``lenet_300_100``, ``lenet5`` or ``course_cnn``)."""
    _check_name(name)
    return MODEL_BUILDERS[name]()


def checkpoint_name(name: str) -> str:
    """File name, relative to ``data/``, of a model's reference checkpoint."""
    _check_name(name)
    return f"checkpoints/{name}.safetensors"


def load_reference(name: str, device: torch.device | str = "cpu") -> nn.Module:
    """The model with its shipped, SHA-256-verified reference weights, in eval mode."""
    model = build_model(name)
    model.load_state_dict(load_file(data_file(checkpoint_name(name))))
    return model.to(device).eval()


def reference_info(name: str) -> dict:
    """Training record of a checkpoint trained by ``course_lib.train_reference`` (epochs, recipe, accuracy or
    PR-AUC, train time): the models of this module, MiniLM's student and the fraud scorers."""
    records = json.loads((DATA_DIR / "checkpoints" / "reference.json").read_text())
    if name not in records:
        raise ValueError(f"no training record for {name!r}: choose one of {sorted(records)}")
    return records[name]


def fold_batch_norms(model: nn.Module) -> nn.Module:
    """A copy of ``model`` (in eval mode) where every BatchNorm2d that directly follows a Conv2d in a
    ``nn.Sequential`` is folded into that convolution's weights and bias and replaced by ``nn.Identity``.

    The result computes the same function (to float rounding) with one layer, and one pass over the
    activations, fewer per folded pair.
    """
    folded = copy.deepcopy(model).eval()
    pairs = 0
    for container in folded.modules():
        if not isinstance(container, nn.Sequential):
            continue
        for index in range(len(container) - 1):
            conv, norm = container[index], container[index + 1]
            if isinstance(conv, nn.Conv2d) and isinstance(norm, nn.BatchNorm2d):
                container[index] = fuse_conv_bn_eval(conv, norm)
                container[index + 1] = nn.Identity()
                pairs += 1
    if not pairs:
        raise ValueError("no Conv2d followed by BatchNorm2d in an nn.Sequential: nothing to fold")
    return folded
