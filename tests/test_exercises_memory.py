"""The checkers of notebook 07 accept the solutions and reject the typical mistakes with the matching hint."""

import warnings

import pytest
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from course_lib import memory as M
from course_lib.efficient import hashed_indices, mix32
from course_lib.exercises import ExerciseError
from course_lib.exercises import memory as check
from course_lib.models import CourseCNN


def _bytes(parameters, optimizer, saved, batch, dtype, slots=None, weight_bytes=4, activation_bytes=None):
    slots = M.OPTIMIZER_STATE_SLOTS[optimizer] if slots is None else slots
    per_element = M.bytes_per_element(dtype) if activation_bytes is None else activation_bytes
    return weight_bytes * parameters * (2 + slots) + batch * saved * per_element


def test_training_bytes_checker():
    check.check_training_bytes(check.reference_training_bytes)
    wrong = {
        "optimiser state is missing": lambda p, o, s, b, d: 8 * p + b * s * M.bytes_per_element(d),
        "gradients are missing": lambda p, o, s, b, d: 4 * p * (1 + M.OPTIMIZER_STATE_SLOTS[o]) + b * s * M.bytes_per_element(d),
        "stores 2 bytes per element, not 4": lambda p, o, s, b, d: _bytes(p, o, s, b, d, activation_bytes=4),
        "grow with the batch": lambda p, o, s, b, d: _bytes(p, o, s, 1, d),
        "Adam keeps two tensors": lambda p, o, s, b, d: _bytes(p, o, s, b, d, slots={"adam": 1}.get(o)),
        "autocast lowers the activations only": lambda p, o, s, b, d: _bytes(p, o, s, b, d,
                                                                            weight_bytes=M.bytes_per_element(d)),
        "a plain Python number": lambda p, o, s, b, d: str(_bytes(p, o, s, b, d)),
    }
    for hint, answer in wrong.items():
        with pytest.raises(ExerciseError, match=hint):
            check.check_training_bytes(answer)


def test_training_bytes_checker_names_the_momentum_mix_up():
    """Momentum counted as two tensors, once the earlier (Adam) cases are right."""
    def two_for_momentum(p, o, s, b, d):
        return _bytes(p, o, s, b, d, slots={"momentum": 2}.get(o))
    with pytest.raises(ExerciseError, match="one tensor \\(the velocity\\), not two"):
        check.check_training_bytes(two_for_momentum)


def test_peak_live_bytes_checker():
    check.check_peak_live_bytes(M.peak_live_bytes)
    wrong = {
        "sum of all activations": M.total_activation_bytes,
        "largest single buffer": lambda ops: max(op.output_bytes for op in ops),
        "inputs are still alive while it runs": check._peak_without_reader,
        "sum the alive sizes": lambda ops: M.peak_live_bytes(ops) + 1,
    }
    for hint, answer in wrong.items():
        with pytest.raises(ExerciseError, match=hint):
            check.check_peak_live_bytes(answer)


def _key_hash(key_fn):
    def answer(rows, cols, buckets, seed):
        keys = key_fn(torch.arange(rows)[:, None], torch.arange(cols)[None, :], cols, seed)
        return mix32(2 * keys) % buckets, (mix32(2 * keys + 1) & 1) * 2 - 1
    return answer


def test_hash_indices_checker():
    check.check_hash_indices(hashed_indices)
    check.check_hash_indices(_key_hash(lambda i, j, cols, seed: i * cols + j + 1_000_003 * seed))
    wrong = {
        "a function of \\(i, j, seed\\) only": lambda r, c, b, s: (torch.randint(0, b, (r, c)),
                                                                   torch.randint(0, 2, (r, c)) * 2 - 1),
        "not i, j or i \\+ j alone": _key_hash(lambda i, j, cols, seed: i + j + 1000 * seed),
        "unique to each position": _key_hash(lambda i, j, cols, seed: i + 0 * j + 1000 * seed),
        "mix the seed into the key": _key_hash(lambda i, j, cols, seed: i * cols + j),
        "modulo buckets": lambda r, c, b, s: (mix32(torch.arange(r * c).reshape(r, c) + s), torch.ones(r, c)),
        "signs of \\+1 or -1": lambda r, c, b, s: (hashed_indices(r, c, b, s)[0], torch.ones(r, c) * 0.5),
        "independent hash": lambda r, c, b, s: (hashed_indices(r, c, b, s)[0], torch.ones(r, c)),
        "shape": lambda r, c, b, s: (hashed_indices(r, c, b, s)[0].flatten(), hashed_indices(r, c, b, s)[1]),
    }
    for hint, answer in wrong.items():
        with pytest.raises(ExerciseError, match=hint):
            check.check_hash_indices(answer)


def _checkpointed(reentrant=False, last_too=False, drop_last_layer=False):
    def forward(layers, x, segments):
        size = -(-len(layers) // segments)
        starts = list(range(0, len(layers), size))
        end = len(layers) - 1 if drop_last_layer else len(layers)

        def run(first, last):
            def segment(h):
                for i in range(first, min(last, end)):
                    h = layers[i](h)
                return h
            return segment
        for start in starts[:-1]:
            x = checkpoint(run(start, start + size), x, use_reentrant=reentrant)
        last = run(starts[-1], len(layers))
        return checkpoint(last, x, use_reentrant=reentrant) if last_too else last(x)
    return forward


@pytest.mark.filterwarnings("ignore:None of the inputs have requires_grad=True:UserWarning")
def test_checkpointed_forward_checker():
    check.check_checkpointed_forward(_checkpointed())
    check.check_checkpointed_forward(_checkpointed(last_too=True))  # wasteful but correct
    wrong = {
        "use_reentrant=False": _checkpointed(reentrant=True),
        "drop none": _checkpointed(drop_last_layer=True),
        "training peak well below": lambda layers, x, segments: layers(x),
        "calling it with": lambda layers, x, segments: layers(x, segments),
    }
    for hint, answer in wrong.items():
        with pytest.raises(ExerciseError, match=hint):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                check.check_checkpointed_forward(answer)


def test_memory_budget_checker():
    from course_lib.models import load_reference

    trained = load_reference("course_cnn")
    images = torch.zeros(32, 1, 28, 28)
    labels = torch.zeros(32, dtype=torch.long)
    baseline = M.training_step_memory(trained, "momentum", images, labels).peak
    small = M.with_checkpointing(trained, 6)
    check.check_memory_budget(small, "sgd", "bfloat16", baseline // 2, 32)
    with pytest.raises(ExerciseError, match="within .* MB at batch 32"):
        check.check_memory_budget(trained, "momentum", "float32", baseline // 2, 32)
    with pytest.raises(ExerciseError, match="validation accuracy of at least 80%"):
        check.check_memory_budget(M.with_checkpointing(CourseCNN(), 6), "sgd", "bfloat16", baseline // 2, 32)
