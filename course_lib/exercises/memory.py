"""Checkers for notebook 07 (memory-efficient networks): training memory on paper, the peak of live activations,
activation checkpointing, a deterministic weight hash, and the hands-on training under a memory budget."""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import nn

from course_lib import memory as M
from course_lib.efficient import DeepMLP
from course_lib.data import load_fashion_mnist
from course_lib.exercises import call_answer, fail, passed, require_number
from course_lib.train import evaluate

_PAPER_CASES = (  # parameters, optimizer, saved activation elements per sample, batch, activation dtype
    (584_618, "momentum", 832_000, 64, "float32"),
    (266_610, "adam", 1_300, 256, "float32"),
    (584_618, "adam", 832_000, 128, "bfloat16"),
    (1_000, "sgd", 10, 1, "float16"),
)


def reference_training_bytes(parameters: int, optimizer: str, saved_per_sample: int, batch_size: int,
                             dtype: str) -> int:
    """Weights, gradients and optimiser state in float32, plus the saved activations in ``dtype``."""
    return 4 * parameters * (2 + M.OPTIMIZER_STATE_SLOTS[optimizer]) + \
        batch_size * saved_per_sample * M.bytes_per_element(dtype)


def check_training_bytes(training_bytes: Callable[[int, str, int, int, str], int]) -> None:
    """Exercise 7.1: predict the bytes of a training step on paper."""
    for parameters, optimizer, saved, batch, dtype in _PAPER_CASES:
        got = require_number("7.1", "the predicted bytes",
                             call_answer("7.1", training_bytes, parameters, optimizer, saved, batch, dtype))
        expected = reference_training_bytes(parameters, optimizer, saved, batch, dtype)
        if got == expected:
            continue
        slots = M.OPTIMIZER_STATE_SLOTS[optimizer]
        activations = batch * saved * M.bytes_per_element(dtype)
        mistakes = [
            (4 * parameters * 2 + activations, f"the optimiser state is missing: {optimizer} keeps {slots} tensor(s) "
                                              "the size of the parameters between steps."),
            (4 * parameters * (1 + slots) + activations, "the gradients are missing: backward writes one gradient "
                                                         "per parameter, as large as the parameters."),
            (4 * parameters * (2 + slots) + batch * saved * 4, f"{dtype} stores {M.bytes_per_element(dtype)} bytes "
                                                               "per element, not 4."),
            (4 * parameters * (2 + slots) + batch * saved, "activations are not 1 byte per element: use the dtype's "
                                                           "size (torch.empty((), dtype=...).element_size())."),
            (4 * parameters * (2 + slots) + saved * M.bytes_per_element(dtype), "the activations grow with the "
                                                                                "batch: multiply by the batch size."),
            (M.bytes_per_element(dtype) * parameters * (2 + slots) + activations, "autocast lowers the activations "
                "only: weights, gradients and optimiser state stay float32 (4 bytes)."),
            (4 * parameters * 3 + activations if slots == 2 else None, "Adam keeps two tensors per parameter (the "
                                                                       "first and second moments), not one."),
            (4 * parameters * 4 + activations if slots == 1 else None, "SGD with momentum keeps one tensor (the "
                                                                       "velocity), not two."),
        ]
        hint = " Or: ".join(h for value, h in mistakes if value == got) or \
            "weights + gradients + optimiser state (all float32) + batch x saved elements x bytes per element."
        fail("7.1", f"{expected:,} bytes for {parameters:,} parameters, {optimizer}, {saved:,} saved elements per "
                    f"sample, batch {batch}, {dtype} activations", f"{got:,}", hint)
    passed("7.1", "weights + gradients + optimiser state + saved activations, each with its own dtype and count")


def _ops(sizes: list[int], reads: list[tuple[int, ...]]) -> list[M.Op]:
    return [M.Op(f"op{i}", size, read) for i, (size, read) in enumerate(zip(sizes, reads))]


_LIVENESS_CASES = (
    # a residual: op 0's output is read again by op 3
    _ops([100, 10, 10, 10, 1], [(), (0,), (1,), (0, 2), (3,)]),
    # a chain: each op reads only the previous one
    _ops([10, 20, 30, 40, 5], [(), (0,), (1,), (2,), (3,)]),
    # a buffer nobody reads (e.g. max-pool indices) and an op that reads two earlier ones
    _ops([8, 50, 8, 2, 30, 4], [(), (0,), (0,), (2,), (3, 2), (4, 3)]),
)


def _peak_without_reader(ops: list[M.Op]) -> int:
    """A typical mistake: free every input before its reader runs (only outputs alive)."""
    last = {i: max([i] + [j for j, op in enumerate(ops) if i in op.reads]) for i in range(len(ops))}
    return max(sum(o.output_bytes for i, o in enumerate(ops) if i <= t < last[i] or i == t) for t in range(len(ops)))


def check_peak_live_bytes(peak_live_bytes: Callable[[list[M.Op]], int]) -> None:
    """Exercise 7.2: the peak of the bytes alive at once when buffers are freed after their last reader."""
    for ops in _LIVENESS_CASES:
        got = require_number("7.2", "the peak live bytes", call_answer("7.2", peak_live_bytes, list(ops)))
        expected = M.peak_live_bytes(ops)
        if got == expected:
            continue
        mistakes = {
            M.total_activation_bytes(ops): "that is the sum of all activations: a buffer can be reused once its "
                                           "last reader has run, so only the buffers still needed count.",
            max(op.output_bytes for op in ops): "that is the largest single buffer: while an op runs, its inputs "
                                                "and everything read later are alive too.",
            _peak_without_reader(ops): "an op's inputs are still alive while it runs: free a buffer after its last "
                                       "reader, not before.",
        }
        hint = mistakes.get(got, "buffer i is alive from step i to its last reader (or only at step i if nothing "
                                 "reads it); sum the alive sizes at each step and take the maximum.")
        fail("7.2", f"a peak of {expected} bytes for ops {[(o.output_bytes, o.reads) for o in ops]}", str(got), hint)
    passed("7.2", "peak of live buffers, each freed after its last reader")


def check_hash_indices(hash_indices: Callable[[int, int, int, int], tuple[torch.Tensor, torch.Tensor]]) -> None:
    """Exercise 7.4: ``hash_indices(rows, cols, buckets, seed) -> (index, sign)`` for HashedNets."""
    rows, cols, buckets = 60, 80, 50
    torch.manual_seed(1234)
    first = call_answer("7.4", hash_indices, rows, cols, buckets, 0)
    torch.manual_seed(98765)
    again = call_answer("7.4", hash_indices, rows, cols, buckets, 0)
    if not isinstance(first, (tuple, list)) or len(first) != 2:
        fail("7.4", "a pair (index, sign)", type(first).__name__, "return index, sign.")
    index, sign = first
    for name, value in (("index", index), ("sign", sign)):
        if not isinstance(value, torch.Tensor) or tuple(value.shape) != (rows, cols):
            fail("7.4", f"{name} as a tensor of shape ({rows}, {cols})",
                 f"{type(value).__name__} {tuple(getattr(value, 'shape', ()))}", "one entry per weight W[i, j].")
    if not (torch.equal(index, again[0]) and torch.equal(sign, again[1])):
        fail("7.4", "the same indices and signs on every call", "different ones after the random generator moved on",
             "the hash must be a function of (i, j, seed) only: no torch.randint without a fixed generator, no "
             "Python hash() of a string (salted per process). Use course_lib.efficient.mix32 on an integer key.")
    if index.dtype.is_floating_point or int(index.min()) < 0 or int(index.max()) >= buckets:
        fail("7.4", f"integer bucket indices in [0, {buckets})",
             f"{index.dtype}, from {index.min().item()} to {index.max().item()}", "take the hash modulo buckets.")
    if not bool(((sign == 1) | (sign == -1)).all()):
        fail("7.4", "signs of +1 or -1", f"values {sorted(set(sign.flatten().tolist()))[:5]}",
             "map one bit of a second hash to -1 / +1: bit * 2 - 1.")
    other_seed = call_answer("7.4", hash_indices, rows, cols, buckets, 1)
    if torch.equal(other_seed[0], index):
        fail("7.4", "a different pattern for another seed", "the same indices for seeds 0 and 1",
             "mix the seed into the key, so that each layer shares its weights differently.")
    counts = torch.bincount(index.flatten().long(), minlength=buckets).float()
    expected_count = rows * cols / buckets
    if counts.min() < 0.5 * expected_count or counts.max() > 1.5 * expected_count:
        fail("7.4", f"about {expected_count:.0f} weights per bucket", f"from {int(counts.min())} to {int(counts.max())}",
             "hash a key unique to each position (i * cols + j), not i, j or i + j alone.")
    if sign.float().mean().abs() > 0.1:
        fail("7.4", "about as many -1 as +1 signs", f"a mean sign of {sign.mean().item():.2f}",
             "take the sign from an independent hash (e.g. of a different key), one bit of it.")
    passed("7.4", "deterministic bucket indices spread over all buckets, with independent +-1 signs")


def check_checkpointed_forward(checkpointed_forward: Callable[[nn.Sequential, torch.Tensor, int], torch.Tensor]
                               ) -> None:
    """Exercise 7.3: ``checkpointed_forward(layers, x, segments)`` computes ``layers(x)`` with activation
    checkpointing: same output and gradients, less training memory."""
    torch.manual_seed(0)
    model = DeepMLP(depth=16, width=64)
    x = torch.randn(256, 1, 28, 28)
    labels = torch.randint(0, 10, (256,))

    def loss_and_grads(forward: Callable[[torch.Tensor], torch.Tensor]) -> tuple[torch.Tensor, list]:
        copy_ = copy.deepcopy(model).train()
        hidden = copy_.stem(x).detach()  # like an input batch: it does not require grad
        loss = nn.functional.cross_entropy(copy_.head(forward(copy_.blocks, hidden)), labels)
        if not loss.requires_grad:
            fail("7.3", "an output that autograd can differentiate", "one that does not require grad",
                 "use_reentrant=True drops the graph when the segment's input does not require grad (an image "
                 "batch does not): pass use_reentrant=False.")
        loss.backward()
        return loss.detach(), [None if p.grad is None else p.grad.clone() for p in copy_.blocks.parameters()]

    answer = lambda blocks, h: call_answer("7.3", checkpointed_forward, blocks, h, 4)  # noqa: E731
    loss, grads = loss_and_grads(answer)
    plain_loss, plain_grads = loss_and_grads(lambda blocks, h: blocks(h))
    if not torch.allclose(loss, plain_loss, atol=1e-5):
        fail("7.3", f"the same output as layers(x) (loss {plain_loss.item():.5f})", f"loss {loss.item():.5f}",
             "every layer must run exactly once in the forward, in order: segments split the layers, they drop none.")
    if any(g is None for g in grads):
        fail("7.3", "a gradient for every layer's parameters", "None for some of them",
             "use_reentrant=True ignores parameters when the segment's input does not require grad: pass "
             "use_reentrant=False.")
    if any(not torch.allclose(g, p, atol=1e-5) for g, p in zip(grads, plain_grads)):
        fail("7.3", "the same gradients as without checkpointing", "different gradients",
             "recomputation must run the same layers on the same input as the forward did.")

    def step_peak(forward: Callable) -> int:
        copy_ = copy.deepcopy(model).train()

        def step(images: torch.Tensor, targets: torch.Tensor) -> None:
            out = copy_.head(forward(copy_.blocks, copy_.stem(images).detach()))
            nn.functional.cross_entropy(out, targets).backward()
        from course_lib.measure import peak_memory_bytes  # noqa: PLC0415
        return peak_memory_bytes(step, x, labels, training=True)

    peak, plain_peak = step_peak(answer), step_peak(lambda blocks, h: blocks(h))
    if peak > 0.6 * plain_peak:
        fail("7.3", f"a training peak well below the plain {plain_peak / 1e6:.1f} MB", f"{peak / 1e6:.1f} MB",
             "checkpoint every segment but the last with torch.utils.checkpoint.checkpoint(run_segment, x, "
             "use_reentrant=False), so only the segments' inputs are kept.")
    passed("7.3", f"same output and gradients, training peak {peak / 1e6:.1f} MB instead of {plain_peak / 1e6:.1f} MB")


def check_memory_budget(model: nn.Module, optimizer: str, dtype: str, budget_bytes: int, batch_size: int,
                        min_accuracy: float = 0.8) -> None:
    """Exercise 7.5 (hands-on): a training configuration of the course CNN whose step, measured here at the
    baseline's batch size, fits the budget, and which trained to at least ``min_accuracy`` on the validation split
    (evaluated here)."""
    images = torch.zeros(batch_size, 1, 28, 28)
    labels = torch.zeros(batch_size, dtype=torch.long)
    measured = M.training_step_memory(model, optimizer, images, labels, dtype).peak
    if measured > budget_bytes:
        fail("7.5", f"a training step peak within {budget_bytes / 1e6:.1f} MB at batch {batch_size}",
             f"{measured / 1e6:.1f} MB", "combine the levers: checkpoint segments placed where the sweep measured the "
             "lowest peak, bfloat16 activations, an optimiser with less state.")
    accuracy = evaluate(model, load_fashion_mnist("val"))
    if accuracy < min_accuracy:
        fail("7.5", f"a validation accuracy of at least {min_accuracy:.0%} after the short training",
             f"{accuracy:.2%}", "did the training run with this configuration? Check the learning rate.")
    passed("7.5", f"step peak {measured / 1e6:.1f} MB within the {budget_bytes / 1e6:.1f} MB budget at batch "
                  f"{batch_size}, validation accuracy {accuracy:.2%}")
