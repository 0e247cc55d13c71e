"""Parameter sharing and memory-efficient blocks (notebook 07).

* Cross-layer tying (ALBERT, Lan et al. 2020): :class:`DeepMLP` with ``tied=True`` applies one residual block at
  every depth, so depth costs activations and time but no extra parameters.
* The hashing trick (HashedNets, Chen et al. 2015): :class:`HashedLinear` draws every weight ``W[i, j]`` from a
  small shared vector at index ``h(i, j)`` with a sign ``s(i, j)``, both from a deterministic hash, so the file
  holds only the shared vector.
* MobileNetV2's inverted-residual bottleneck (Sandler et al. 2018): :class:`InvertedResidual`.
"""

from __future__ import annotations

import torch
from torch import nn

from course_lib.models import INPUT_SHAPE, NUM_CLASSES

_HASH_MULTIPLIER = 0x45D9F3B  # a well-mixing odd 32-bit multiplier (products stay below 2**63 in int64)
_MASK_32 = 0xFFFFFFFF


def mix32(keys: torch.Tensor) -> torch.Tensor:
    """A deterministic 32-bit integer hash of every element of an int64 tensor (two multiply-xorshift rounds).

    The same keys give the same values on every run and machine (unlike Python's ``hash`` of a string, which is
    salted per process, or a random generator)."""
    x = keys & _MASK_32
    x = (((x >> 16) ^ x) * _HASH_MULTIPLIER) & _MASK_32
    x = (((x >> 16) ^ x) * _HASH_MULTIPLIER) & _MASK_32
    return (x >> 16) ^ x


def hashed_indices(rows: int, cols: int, buckets: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Bucket index ``h(i, j)`` in ``[0, buckets)`` and sign ``s(i, j)`` in ``{-1, +1}`` of every weight of a
    ``rows x cols`` matrix (HashedNets): a hash of the position ``i * cols + j`` and the seed, so that the layer
    can rebuild its weights from the shared vector alone."""
    if buckets < 1:
        raise ValueError(f"a hashed layer needs at least 1 bucket, got {buckets}")
    if rows < 1 or cols < 1:
        raise ValueError(f"a weight matrix needs at least one row and column, got {rows} x {cols}")
    positions = torch.arange(rows * cols, dtype=torch.int64).reshape(rows, cols)
    index = mix32(positions * 2 + seed * 0x9E3779B1) % buckets
    sign = mix32(positions * 2 + 1 + seed * 0x9E3779B1) & 1
    return index, sign.to(torch.float32) * 2 - 1


class HashedLinear(nn.Module):
    """A linear layer whose ``out x in`` weights are drawn from ``buckets`` shared values by a hash (HashedNets).

    Only the shared vector and the bias are parameters (and saved); the hash indices are recomputed from the seed.
    The full weight matrix is still built in every forward pass: hashing saves storage, not compute."""

    def __init__(self, in_features: int, out_features: int, buckets: int, seed: int = 0):
        super().__init__()
        index, sign = hashed_indices(out_features, in_features, buckets, seed)
        self.register_buffer("index", index, persistent=False)
        self.register_buffer("sign", sign, persistent=False)
        bound = in_features ** -0.5
        self.shared = nn.Parameter(torch.empty(buckets).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.zeros(out_features))
        self.in_features, self.out_features, self.buckets, self.seed = in_features, out_features, buckets, seed

    def weight(self) -> torch.Tensor:
        """The virtual ``out x in`` weight matrix: ``shared[h(i, j)] * s(i, j)``."""
        return self.shared[self.index] * self.sign

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x, self.weight(), self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, buckets={self.buckets}"


def hashed_mlp(compression: float, hidden: tuple[int, int] = (300, 100), seed: int = 0) -> nn.Sequential:
    """LeNet-300-100 with every layer hashed to ``compression`` of its weights (HashedNets' 1/8, 1/64 ...)."""
    if not 0 < compression <= 1:
        raise ValueError(f"compression is the fraction of weights kept, in (0, 1], got {compression}")
    sizes = [INPUT_SHAPE[1] * INPUT_SHAPE[2], *hidden, NUM_CLASSES]
    layers: list[nn.Module] = [nn.Flatten()]
    for index, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(HashedLinear(n_in, n_out, max(1, round(n_in * n_out * compression)), seed + index))
        if index < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class ResidualBlock(nn.Module):
    """``x + relu(linear(layer_norm(x)))``: a pre-norm residual block that stays trainable at depth."""

    def __init__(self, width: int):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.fc = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.relu(self.fc(self.norm(x)))


class DeepMLP(nn.Module):
    """A deep residual MLP for Fashion-MNIST: a stem (784 -> width), ``depth`` residual blocks in an
    ``nn.Sequential`` called ``blocks`` (checkpointable), a head (width -> 10). ``tied=True`` repeats one block
    (ALBERT's cross-layer sharing): the same parameters at every depth."""

    def __init__(self, depth: int = 16, width: int = 256, tied: bool = False):
        super().__init__()
        if depth < 1 or width < 1:
            raise ValueError(f"depth and width must be at least 1, got depth={depth}, width={width}")
        self.stem = nn.Sequential(nn.Flatten(), nn.Linear(INPUT_SHAPE[1] * INPUT_SHAPE[2], width))
        shared = ResidualBlock(width)
        self.blocks = nn.Sequential(*(shared if tied else ResidualBlock(width) for _ in range(depth)))
        self.head = nn.Linear(width, NUM_CLASSES)
        self.tied = tied

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)))


class InvertedResidual(nn.Module):
    """MobileNetV2's bottleneck: expand with a 1x1 conv (``expansion`` times the channels), filter with a depthwise
    3x3, project back with a linear 1x1 (no ReLU: the narrow ends carry the information), and add the input when the
    shapes allow. Only the narrow ends cross block boundaries, so what must be kept between blocks stays small."""

    def __init__(self, in_channels: int, out_channels: int, expansion: int = 6, stride: int = 1):
        super().__init__()
        hidden = in_channels * expansion
        self.residual = stride == 1 and in_channels == out_channels
        self.block = nn.Sequential(
            nn.Conv2d(in_channels, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, hidden, 3, stride=stride, padding=1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden), nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return x + out if self.residual else out
