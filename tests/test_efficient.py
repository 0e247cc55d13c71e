"""Parameter sharing (hashing, tying), memory-efficient blocks and the depthwise-separable course CNN."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file

from course_lib.efficient import DeepMLP, HashedLinear, InvertedResidual, hashed_indices, hashed_mlp, mix32
from course_lib.measure import count_macs, count_parameters, save_state_dict
from course_lib.models import CourseCNN, DepthwiseSeparableCNN, depthwise_separable


@given(st.integers(1, 40), st.integers(1, 40), st.integers(1, 500), st.integers(0, 2 ** 20))
@settings(max_examples=50, deadline=None)
def test_hashed_indices_are_in_range_and_deterministic(rows, cols, buckets, seed):
    index, sign = hashed_indices(rows, cols, buckets, seed)
    assert index.shape == sign.shape == (rows, cols)
    assert int(index.min()) >= 0 and int(index.max()) < buckets
    assert set(sign.unique().tolist()) <= {-1.0, 1.0}
    again = hashed_indices(rows, cols, buckets, seed)
    assert torch.equal(index, again[0]) and torch.equal(sign, again[1])


def test_the_hash_is_the_same_in_another_process():
    """The file stores only the shared values: another process must rebuild the same indices."""
    code = "from course_lib.efficient import hashed_indices; i, s = hashed_indices(7, 9, 13, 5); " \
           "print(i.flatten().tolist(), s.flatten().tolist())"
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    index, sign = hashed_indices(7, 9, 13, 5)
    assert other.strip() == f"{index.flatten().tolist()} {sign.flatten().tolist()}"


def test_mix32_spreads_consecutive_keys():
    values = mix32(torch.arange(100_000))
    assert int(values.max()) < 2 ** 32 and values.unique().numel() > 99_000
    assert abs((values & 1).float().mean().item() - 0.5) < 0.01


def test_hashed_linear_stores_only_the_shared_vector(tmp_path):
    layer = HashedLinear(300, 100, buckets=1000, seed=3)
    assert count_parameters(layer) == 1000 + 100
    weight = layer.weight()
    assert weight.shape == (100, 300) and set(weight.abs().flatten().tolist()) <= set(layer.shared.abs().tolist())
    size = save_state_dict(layer, tmp_path / "hashed.safetensors")
    assert set(load_file(tmp_path / "hashed.safetensors")) == {"shared", "bias"}
    assert size < 1100 * 4 + 200
    rebuilt = HashedLinear(300, 100, buckets=1000, seed=3)
    rebuilt.load_state_dict(load_file(tmp_path / "hashed.safetensors"))
    x = torch.randn(5, 300)
    torch.testing.assert_close(rebuilt(x), layer(x))


def test_hashed_gradients_accumulate_into_shared_values():
    layer = HashedLinear(20, 10, buckets=7)
    layer(torch.randn(4, 20)).sum().backward()
    assert layer.shared.grad.shape == (7,) and layer.shared.grad.abs().sum() > 0


def test_hashed_mlp_keeps_the_requested_fraction():
    model = hashed_mlp(1 / 8)
    weights = sum(m.buckets for m in model if isinstance(m, HashedLinear))
    assert weights == pytest.approx((784 * 300 + 300 * 100 + 100 * 10) / 8, rel=0.01)
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)


@pytest.mark.parametrize("call, message", [
    (lambda: hashed_indices(3, 4, 0), "at least 1 bucket, got 0"),
    (lambda: HashedLinear(3, 4, buckets=-1), "at least 1 bucket"),
    (lambda: hashed_mlp(0.0), r"fraction of weights kept, in \(0, 1\]"),
    (lambda: DeepMLP(depth=0), "depth and width must be at least 1"),
])
def test_bad_input(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_tied_mlp_shares_one_block_and_writes_it_once(tmp_path):
    untied, tied = DeepMLP(8, 32), DeepMLP(8, 32, tied=True)
    block = 32 * 32 + 32 + 2 * 32
    assert count_parameters(untied) - count_parameters(tied) == 7 * block
    size_tied = save_state_dict(tied, tmp_path / "tied.safetensors")
    size_untied = save_state_dict(untied, tmp_path / "untied.safetensors")
    assert size_tied < size_untied - 7 * block * 4 + 2000
    fresh = DeepMLP(8, 32, tied=True)
    fresh.load_state_dict(load_file(tmp_path / "tied.safetensors"), strict=False)
    x = torch.randn(3, 1, 28, 28)
    torch.testing.assert_close(fresh(x), tied(x))


def test_depthwise_separable_block_and_cnn():
    block = torch.nn.Sequential(*depthwise_separable(64, 128))
    assert count_parameters(block) == 9 * 64 + 64 * 128 + 2 * (64 + 128)
    assert block(torch.randn(2, 64, 7, 7)).shape == (2, 128, 7, 7)
    ds, cnn = DepthwiseSeparableCNN(), CourseCNN()
    assert count_parameters(ds) == 95_770 and count_parameters(cnn) / count_parameters(ds) > 6
    x = torch.zeros(1, 1, 28, 28)
    assert count_macs(cnn, x) / count_macs(ds.eval(), x) > 3


def test_inverted_residual_adds_its_input_only_when_shapes_match():
    same = InvertedResidual(16, 16).eval()
    x = torch.randn(2, 16, 8, 8)
    torch.testing.assert_close(same(x), x + same.block(x))
    strided = InvertedResidual(16, 24, stride=2).eval()
    assert not strided.residual and strided(x).shape == (2, 24, 4, 4)
