"""Training and inference memory: the tracker extended to training steps, saved activations, checkpointing,
liveness, bf16 autocast; bad input gets clear errors."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from course_lib import memory as M
from course_lib.efficient import DeepMLP
from course_lib.measure import peak_memory_bytes
from course_lib.models import CourseCNN, LeNet300100


def _batch(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 28, 28, generator=generator), torch.randint(0, 10, (n,), generator=generator)


def test_bytes_per_element_and_unknown_dtypes():
    assert [M.bytes_per_element(d) for d in ("float32", "bfloat16", "float16")] == [4, 2, 2]
    assert M.bytes_per_element(torch.bfloat16) == 2
    with pytest.raises(ValueError, match="unknown activation dtype 'int4'.*bfloat16"):
        M.bytes_per_element("int4")


@pytest.mark.parametrize("optimizer, slots", [("sgd", 0), ("momentum", 1), ("adam", 2)])
def test_optimizer_state_is_measured_per_parameter(optimizer, slots):
    torch.manual_seed(0)
    model = LeNet300100()
    images, labels = _batch(32)
    step = M.training_step_memory(model, optimizer, images, labels)
    assert step.weights == 4 * sum(p.numel() for p in model.parameters())
    assert step.optimizer_state == slots * step.weights


def test_training_peak_holds_gradients_and_saved_activations():
    """The step peak is at least the gradients (they outlive backward) and grows with the batch by about the saved
    activations."""
    torch.manual_seed(0)
    model = LeNet300100()
    small, large = M.training_step_memory(model, "sgd", *_batch(16)), M.training_step_memory(model, "sgd", *_batch(512))
    assert small.step_peak >= small.weights, "the gradients are as large as the weights"
    saved_growth = sum(M.saved_activations(model, _batch(512)[0]).values()) - \
        sum(M.saved_activations(model, _batch(16)[0]).values())
    growth = large.step_peak - small.step_peak
    assert 0.8 * saved_growth <= growth <= 1.6 * saved_growth


def test_saved_activations_count_shared_buffers_once_and_leave_the_model_alone():
    model = CourseCNN().eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    images = _batch(8)[0]
    saved = M.saved_activations(model, images)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()), "batch-norm statistics untouched"
    assert not model.training
    # features.2 is an in-place ReLU: it saves its output, the batch-norm output buffer, which features.1 did not save
    assert saved["features.1"] == 8 * 32 * 28 * 28 * 4 + 2 * 32 * 4  # its input, and the batch mean / inverse std
    assert "features.0" not in saved, "the first conv saves only the input batch, which exists anyway"
    assert saved["features.2"] == 8 * 32 * 28 * 28 * 4
    half = M.saved_activations(model, images, dtype="bfloat16")
    assert sum(half.values()) < 0.75 * sum(saved.values())


def test_peak_memory_bytes_in_training_mode_sees_backward():
    model = LeNet300100()
    images, labels = _batch(64)

    def forward_only(x: torch.Tensor, y: torch.Tensor) -> None:
        nn.functional.cross_entropy(model(x), y)

    def forward_backward(x: torch.Tensor, y: torch.Tensor) -> None:
        nn.functional.cross_entropy(model(x), y).backward()

    model.zero_grad(set_to_none=True)
    assert peak_memory_bytes(forward_backward, images, labels, training=True) > \
        peak_memory_bytes(forward_only, images, labels)


def test_checkpointing_gives_the_same_gradients_with_less_memory():
    torch.manual_seed(0)
    model = DeepMLP(depth=16, width=64)
    images, labels = _batch(256)
    checkpointed = M.with_checkpointing(model, M.sqrt_segments(16), attribute="blocks")
    grads = []
    for m in (model, checkpointed):
        m.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(m(images), labels).backward()
        grads.append(torch.cat([p.grad.flatten() for p in m.parameters()]))
    torch.testing.assert_close(grads[0], grads[1])
    plain = M.training_step_memory(model, "momentum", images, labels)
    less = M.training_step_memory(checkpointed, "momentum", images, labels)
    assert less.step_peak < 0.6 * plain.step_peak
    assert checkpointed.state_dict().keys() == model.state_dict().keys(), "checkpoints load unchanged"


def test_checkpointed_course_cnn_never_starts_a_segment_on_an_in_place_relu():
    cnn = CourseCNN()
    images, labels = _batch(16)
    for segments in range(1, 9):
        for example in (None, images):
            model = M.with_checkpointing(cnn, segments, example)
            assert not any(isinstance(model.features[s], nn.ReLU) for s in model.features.starts)
            M.training_step_memory(model, "sgd", images, labels)  # backward would raise on an overwritten input


@given(st.lists(st.integers(0, 1000), min_size=2, max_size=30), st.integers(1, 30))
@settings(max_examples=60, deadline=None)
def test_segment_starts_are_increasing_and_inside(weights, segments):
    layers = nn.Sequential(*[nn.Identity() for _ in weights])
    segments = min(segments, len(weights))
    for layer_bytes in (None, weights):
        starts = M.segment_starts(layers, segments, layer_bytes)
        assert starts == sorted(set(starts)) and all(0 < s < len(weights) for s in starts)
        assert len(starts) <= segments - 1
    assert len(M.segment_starts(layers, segments)) == segments - 1, "equal layer counts always give k segments"


@pytest.mark.parametrize("segments, message", [(0, "at least 1"), (-2, "at least 1"), (2.5, "whole number"),
                                               (22, "22 segments for 21 layers.*at most 21")])
def test_bad_segment_counts(segments, message):
    with pytest.raises(ValueError, match=message):
        M.with_checkpointing(CourseCNN(), segments)


def test_bad_inputs_name_the_problem():
    with pytest.raises(ValueError, match="batch size must be a whole number of at least 1"):
        M.check_batch_size(0)
    with pytest.raises(ValueError, match="batch size"):
        M.training_step_memory(LeNet300100(), "sgd", torch.zeros(0, 1, 28, 28), torch.zeros(0, dtype=torch.long))
    with pytest.raises(ValueError, match="unknown optimiser 'rmsprop'"):
        M.make_optimizer("rmsprop", LeNet300100().parameters())
    with pytest.raises(ValueError, match="no nn.Sequential called 'blocks'"):
        M.with_checkpointing(CourseCNN(), 2, attribute="blocks")
    with pytest.raises(ValueError, match="steps must be at least 1"):
        M.train_steps(LeNet300100(), "sgd", 0, 8)


def test_sqrt_schedule():
    assert [M.sqrt_segments(n) for n in (1, 4, 16, 36, 50)] == [1, 2, 4, 6, 7]
    with pytest.raises(ValueError):
        M.sqrt_segments(0)


def _chain(sizes: list[int]) -> list[M.Op]:
    return [M.Op(str(i), s, (i - 1,) if i else ()) for i, s in enumerate(sizes)]


@given(st.lists(st.integers(0, 10_000), min_size=1, max_size=40))
def test_liveness_of_a_chain_is_the_largest_neighbouring_pair(sizes):
    expected = max([sizes[0]] + [a + b for a, b in zip(sizes, sizes[1:])])
    assert M.peak_live_bytes(_chain(sizes)) == expected
    assert M.peak_live_bytes(_chain(sizes)) <= M.total_activation_bytes(_chain(sizes))


def test_op_graph_of_a_real_model_and_its_peak():
    model = CourseCNN().eval()
    images = _batch(16)[0]
    ops = M.op_graph(model, images)
    assert ops[0].name in ("conv2d", "convolution") and ops[0].output_bytes == 16 * 32 * 28 * 28 * 4
    assert all(max(op.reads, default=-1) < i for i, op in enumerate(ops))
    live, total = M.peak_live_bytes(ops), M.total_activation_bytes(ops)
    assert live < total / 2, "a chain reuses its buffers"
    measured = peak_memory_bytes(model, images)
    assert 0.9 * live <= measured <= 1.5 * live


def test_bf16_step_saves_memory_and_trains():
    torch.manual_seed(0)
    model = CourseCNN()
    images, labels = _batch(32)
    fp32 = M.training_step_memory(model, "momentum", images, labels)
    bf16 = M.training_step_memory(model, "momentum", images, labels, "bfloat16")
    assert bf16.step_peak < 0.8 * fp32.step_peak and bf16.weights == fp32.weights
    losses = M.train_steps(LeNet300100(), "adam", 30, 64, "bfloat16", lr=1e-3, progress=False)
    assert len(losses) == 30 and sum(losses[-5:]) < sum(losses[:5])
