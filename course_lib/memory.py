"""Where a network's memory goes, measured: weights, gradients, optimiser state, saved activations, live buffers.

* Training: :func:`saved_activations` counts what autograd keeps for backward, per layer
  (``torch.autograd.graph.saved_tensors_hooks``); :func:`training_step_memory` measures the peak of a real
  training step (forward, backward, optimiser step) with :func:`course_lib.measure.peak_memory_bytes`.
* Recomputation: :func:`with_checkpointing` runs a network's ``nn.Sequential`` in segments whose activations are
  recomputed in backward (``torch.utils.checkpoint``, non-reentrant).
* Inference: :func:`op_graph` records the buffers a call creates and which later operators read them, the input
  of a liveness analysis (a buffer can be reused once its last reader has run).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.checkpoint import checkpoint

from course_lib.measure import LatencyStats, _LiveTensorBytes, compare_latency, peak_memory_bytes

ACTIVATION_DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16,
                                             "float16": torch.float16}
OPTIMIZERS = ("sgd", "momentum", "adam")
OPTIMIZER_STATE_SLOTS = {"sgd": 0, "momentum": 1, "adam": 2}  # tensors of the parameters' shape kept per parameter


def activation_dtype(name: str | torch.dtype) -> torch.dtype:
    """The dtype called ``name`` (``float32``, ``bfloat16`` or ``float16``), or a clear error."""
    if isinstance(name, torch.dtype) and name in ACTIVATION_DTYPES.values():
        return name
    if name not in ACTIVATION_DTYPES:
        raise ValueError(f"unknown activation dtype {name!r}: choose one of {sorted(ACTIVATION_DTYPES)}")
    return ACTIVATION_DTYPES[name]


def bytes_per_element(dtype: str | torch.dtype) -> int:
    """Bytes of one element of ``dtype`` (4 for float32, 2 for bfloat16 and float16)."""
    return torch.empty((), dtype=activation_dtype(dtype)).element_size()


def check_batch_size(batch_size: int) -> int:
    """``batch_size`` if it is a whole number of at least 1, else a clear error."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch size must be a whole number of at least 1, got {batch_size!r}")
    return batch_size


def make_optimizer(name: str, parameters: Iterator[nn.Parameter], lr: float = 0.01) -> torch.optim.Optimizer:
    """``sgd`` (plain), ``momentum`` (SGD with momentum 0.9: one state tensor per parameter) or ``adam`` (two)."""
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimiser {name!r}: choose one of {OPTIMIZERS}")
    if name == "adam":
        return torch.optim.Adam(parameters, lr=lr)
    return torch.optim.SGD(parameters, lr=lr, momentum=0.9 if name == "momentum" else 0.0)


def parameter_bytes(model: nn.Module) -> int:
    """Bytes of the model's (unique) parameters."""
    return sum(p.numel() * p.element_size() for p in model.parameters())


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes of the tensors an optimiser keeps between steps (momentum, Adam's two moments; not the step counter)."""
    return sum(t.numel() * t.element_size() for state in optimizer.state.values() for t in state.values()
               if isinstance(t, torch.Tensor) and t.dim() > 0)


def _leaf_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(name, module) for name, module in model.named_modules() if not list(module.children())]


def saved_activations(model: nn.Module, *inputs: torch.Tensor,
                      dtype: str | torch.dtype = "float32") -> dict[str, int]:
    """Bytes that autograd saves for backward during one forward pass, per leaf module (in execution order).

    Counted with ``torch.autograd.graph.saved_tensors_hooks`` on a copy of the model in training mode (so batch
    norm statistics and dropout behave as in training; the model itself is untouched). A buffer saved twice (a
    ReLU's output is also the next layer's input) is counted once, where it is first saved; parameters and the
    inputs, which exist anyway, are not counted. ``dtype`` other than float32 runs the forward under autocast.
    Tensors saved outside any module (e.g. by a loss) are reported under ``"(outside modules)"``.
    """
    model = copy.deepcopy(model).train()
    dtype = activation_dtype(dtype)
    existing = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers(), *inputs]}
    seen: set[int] = set()
    per_layer: dict[str, int] = {}
    current = ["(outside modules)"]

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        pointer = storage.data_ptr()
        if pointer and pointer not in existing and pointer not in seen:
            seen.add(pointer)
            per_layer[current[-1]] = per_layer.get(current[-1], 0) + storage.nbytes()
        return tensor

    def enter(name: str) -> Callable:
        def hook(_module: nn.Module, _args: tuple) -> None:
            current.append(name)
        return hook

    def leave(_module: nn.Module, _args: tuple, _output: object) -> None:
        current.pop()

    handles = []
    for name, module in _leaf_modules(model):
        handles.append(module.register_forward_pre_hook(enter(name)))
        handles.append(module.register_forward_hook(leave))
    try:
        with _autocast(dtype, inputs), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model(*inputs)
    finally:
        for handle in handles:
            handle.remove()
    return per_layer


def layer_output_bytes(model: nn.Module, *inputs: torch.Tensor, dtype: str | torch.dtype = "float32") -> dict[str, int]:
    """Bytes of each leaf module's output in one forward pass (under autocast for a lower ``dtype``): what a
    checkpoint keeps when a segment starts after that module."""
    dtype = activation_dtype(dtype)
    sizes: dict[str, int] = {}
    handles = [module.register_forward_hook(
        lambda _m, _a, out, name=name: sizes.__setitem__(name, out.numel() * out.element_size()))
        for name, module in _leaf_modules(model)]
    try:
        with torch.no_grad(), _autocast(dtype, inputs):
            model(*inputs)
    finally:
        for handle in handles:
            handle.remove()
    return sizes


def _autocast(dtype: torch.dtype, inputs: tuple) -> object:
    if dtype == torch.float32:
        return nullcontext()
    device = next((t.device.type for t in inputs if isinstance(t, torch.Tensor)), "cpu")
    return torch.autocast(device, dtype=dtype)


def autocast_loss(dtype: str | torch.dtype) -> Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]:
    """A ``loss_fn`` for :func:`course_lib.train.train` that runs the forward in ``dtype`` (autocast)."""
    dtype = activation_dtype(dtype)

    def loss_fn(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        with _autocast(dtype, (images,)):
            return nn.functional.cross_entropy(model(images), labels)
    return loss_fn


def training_step(model: nn.Module, optimizer: torch.optim.Optimizer, images: torch.Tensor, labels: torch.Tensor,
                  dtype: str | torch.dtype = "float32") -> float:
    """One training step (gradients reset to ``None``, forward, cross-entropy, backward, optimiser step); the loss.

    ``dtype`` ``bfloat16`` or ``float16`` runs the forward under ``torch.autocast`` (the weights, gradients and
    optimiser state stay float32; the matrix products and their saved activations use the lower precision)."""
    optimizer.zero_grad(set_to_none=True)
    with _autocast(activation_dtype(dtype), (images,)):
        loss = nn.functional.cross_entropy(model(images), labels)
    loss.backward()
    optimizer.step()
    return loss.item()


def train_steps(model: nn.Module, optimizer: str, steps: int, batch_size: int, dtype: str | torch.dtype = "float32",
                lr: float = 0.05, seed: int = 0, progress: bool = True) -> list[float]:
    """Train ``model`` for ``steps`` steps of :func:`training_step` (exactly the step that
    :func:`training_step_memory` measures) on shuffled batches of the Fashion-MNIST training split; the losses."""
    from course_lib.data import make_loader  # noqa: PLC0415

    check_batch_size(batch_size)
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    model.train()
    opt = make_optimizer(optimizer, model.parameters(), lr)
    losses: list[float] = []
    bar = tqdm(total=steps, desc=f"{optimizer}, {activation_dtype(dtype)}", disable=not progress)
    while len(losses) < steps:
        for images, labels in make_loader("train", batch_size, shuffle=True, seed=seed + len(losses)):
            losses.append(training_step(model, opt, images, labels, dtype))
            bar.update()
            if len(losses) == steps:
                break
    bar.close()
    return losses


@dataclass(frozen=True)
class StepMemory:
    """Memory of one steady-state training step, in bytes."""

    weights: int  # the parameters (exist before and after the step)
    optimizer_state: int  # momentum / Adam moments (exist before and after, from the second step on)
    step_peak: int  # the most bytes the step itself has alive at once: saved activations, gradients, workspaces

    @property
    def peak(self) -> int:
        """Peak bytes of the training step: weights + optimiser state + the step's own peak."""
        return self.weights + self.optimizer_state + self.step_peak


def training_step_memory(model: nn.Module, optimizer: str, images: torch.Tensor, labels: torch.Tensor,
                         dtype: str | torch.dtype = "float32", lr: float = 0.01) -> StepMemory:
    """Measure the memory of a steady-state training step of a copy of ``model`` (the model is untouched).

    One untimed step first creates the optimiser state (as in the second step of any training run); then the next
    step runs under :func:`~course_lib.measure.peak_memory_bytes` with ``training=True``, which tracks every tensor
    the step allocates until it is freed."""
    check_batch_size(len(images))
    model = copy.deepcopy(model).train()
    opt = make_optimizer(optimizer, model.parameters(), lr)
    training_step(model, opt, images, labels, dtype)
    opt.zero_grad(set_to_none=True)
    step_peak = peak_memory_bytes(lambda x, y: training_step(model, opt, x, y, dtype), images, labels, training=True)
    return StepMemory(parameter_bytes(model), optimizer_state_bytes(opt), step_peak)


def compare_step_time(models: dict[str, nn.Module], optimizer: str, images: torch.Tensor, labels: torch.Tensor,
                      dtypes: dict[str, str] | None = None, rounds: int = 7, warmup: int = 2,
                      lr: float = 0.01) -> dict[str, LatencyStats]:
    """Latency of a training step of copies of each model, timed in alternating rounds.

    ``dtypes`` gives a model's activation dtype (default float32)."""
    check_batch_size(len(images))
    steps = {}
    for name, model in models.items():
        copy_ = copy.deepcopy(model).train()
        opt = make_optimizer(optimizer, copy_.parameters(), lr)
        dtype = (dtypes or {}).get(name, "float32")
        steps[name] = lambda x, y, m=copy_, o=opt, d=dtype: training_step(m, o, x, y, d)
    return compare_latency(steps, (images, labels), rounds=rounds, warmup=warmup, training=True)


class CheckpointedSequential(nn.Sequential):
    """An ``nn.Sequential`` that, in training, keeps only the input of each segment and recomputes the segment's
    activations during backward (``torch.utils.checkpoint``, non-reentrant). The last segment runs normally (its
    activations are needed at once), so one segment is no checkpointing. ``starts`` are the indices of the layers
    that begin segments 2, 3, ...; parameter names are the wrapped Sequential's, so state dicts load unchanged."""

    def __init__(self, layers: nn.Sequential, starts: list[int]):
        super().__init__(*layers)
        if list(starts) != sorted(set(starts)) or any(not 0 < s < len(layers) for s in starts):
            raise ValueError(f"segment starts must be increasing layer indices between 1 and {len(layers) - 1}, "
                             f"got {starts}")
        self.starts = list(starts)

    def _run(self, first: int, last: int, x: torch.Tensor) -> torch.Tensor:
        for index in range(first, last):
            x = self[index](x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bounds = [0, *self.starts, len(self)]
        checkpointing = self.training and torch.is_grad_enabled()
        for first, last in zip(bounds[:-2], bounds[1:-1]):
            x = (checkpoint(self._run, first, last, x, use_reentrant=False) if checkpointing
                 else self._run(first, last, x))
        return self._run(bounds[-2], bounds[-1], x)


def check_segments(segments: int, layers: int) -> int:
    """``segments`` if it is between 1 and the number of layers, else a clear error."""
    if isinstance(segments, bool) or not isinstance(segments, int) or segments < 1:
        raise ValueError(f"segments must be a whole number of at least 1 (1 = no checkpointing), got {segments!r}")
    if segments > layers:
        raise ValueError(f"{segments} segments for {layers} layers: each segment needs at least one layer, "
                         f"so use at most {layers}")
    return segments


def sqrt_segments(layers: int) -> int:
    """Chen et al. (2016)'s schedule: about sqrt(n) segments of sqrt(n) layers for an n-layer network."""
    if layers < 1:
        raise ValueError(f"a network needs at least one layer, got {layers}")
    return max(1, round(math.sqrt(layers)))


def _modifies_input(layer: nn.Module) -> bool:
    """An in-place layer (``ReLU(inplace=True)``) would overwrite the input that a checkpoint keeps."""
    return bool(getattr(layer, "inplace", False))


def segment_starts(layers: nn.Sequential, segments: int, layer_bytes: list[int] | None = None) -> list[int]:
    """Where segments 2..k begin: equal numbers of layers (``layer_bytes=None``, as ``checkpoint_sequential``), or
    equal saved-activation bytes per segment. A segment never begins with an in-place layer: checkpointing keeps the
    segment's input to recompute from, and autograd forbids overwriting a tensor it has saved, so such a start moves
    to the next layer."""
    check_segments(segments, len(layers))
    weights = layer_bytes if layer_bytes is not None else [1] * len(layers)
    if len(weights) != len(layers):
        raise ValueError(f"layer_bytes has {len(weights)} entries for {len(layers)} layers")
    total = sum(weights) or 1
    starts, running = [], 0
    for index, weight in enumerate(weights[:-1]):
        running += weight
        if len(starts) < segments - 1 and running >= total * (len(starts) + 1) / segments:
            start = index + 1
            while start < len(layers) and _modifies_input(layers[start]):
                start += 1
            if start < len(layers) and (not starts or start > starts[-1]):
                starts.append(start)
    return starts


def checkpoint_at(model: nn.Module, starts: list[int], attribute: str = "features") -> nn.Module:
    """A copy of ``model`` whose ``nn.Sequential`` ``model.<attribute>`` is checkpointed in segments beginning at the
    layer indices ``starts`` (the first segment begins at 0)."""
    checkpointed = copy.deepcopy(model)
    setattr(checkpointed, attribute, CheckpointedSequential(_sequential(checkpointed, attribute), starts))
    return checkpointed


def _sequential(model: nn.Module, attribute: str) -> nn.Sequential:
    layers = getattr(model, attribute, None)
    if not isinstance(layers, nn.Sequential):
        raise ValueError(f"the model has no nn.Sequential called {attribute!r} to checkpoint")
    return layers


def with_checkpointing(model: nn.Module, segments: int, example: torch.Tensor | None = None,
                       attribute: str = "features") -> nn.Module:
    """A copy of ``model`` whose ``nn.Sequential`` ``model.<attribute>`` is checkpointed in ``segments`` segments.

    With an ``example`` input the segments hold equal saved-activation bytes (measured on it), else equal numbers
    of layers (:func:`segment_starts`)."""
    layers = _sequential(model, attribute)
    layer_bytes = None
    if example is not None:
        saved = saved_activations(layers, example)
        layer_bytes = [saved.get(str(i), 0) for i in range(len(layers))]
    return checkpoint_at(model, segment_starts(layers, segments, layer_bytes), attribute)


@dataclass(frozen=True)
class Op:
    """One operator of a recorded call: the buffer it created (0 bytes for a view or an in-place update of an
    earlier buffer) and the earlier operators whose buffers it read."""

    name: str
    output_bytes: int
    reads: tuple[int, ...]


class _OpRecorder(_LiveTensorBytes):
    """The live-tensor tracker of :func:`~course_lib.measure.peak_memory_bytes`, also noting which operator created
    each live buffer and which live buffers each operator reads."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[Op] = []
        self.owner: dict[int, int] = {}  # storage pointer -> index of the op that created the live buffer there

    def _release(self, pointer: int) -> None:
        super()._release(pointer)
        if pointer not in self.references:  # freed: the allocator may hand the address to a later buffer
            del self.owner[pointer]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        reads = tuple(sorted({self.owner[t.untyped_storage().data_ptr()] for t in tree_leaves((args, kwargs))
                              if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() in self.owner}))
        out = super().__torch_dispatch__(func, types, args, kwargs)
        index = len(self.ops)
        created = [pointer for pointer in self.references if pointer not in self.owner]
        for pointer in created:
            self.owner[pointer] = index
        self.ops.append(Op(func.overloadpacket.__name__, sum(self.sizes[p] for p in created), reads))
        return out


def op_graph(fn: Callable, *inputs: torch.Tensor) -> list[Op]:
    """The operators of one inference call ``fn(*inputs)`` in execution order, with the bytes each one's output
    buffer takes and which earlier operators' buffers it reads (weights and inputs are not buffers of the call).
    A view or in-place operator creates no buffer (0 bytes); reading it counts as reading the buffer it aliases."""
    recorder = _OpRecorder()
    with torch.inference_mode(), recorder:
        fn(*inputs)
    return recorder.ops


def total_activation_bytes(ops: list[Op]) -> int:
    """What the activations take if no buffer is ever reused: the sum of every operator's output."""
    return sum(op.output_bytes for op in ops)


def peak_live_bytes(ops: list[Op]) -> int:
    """Peak of the bytes alive at once when every buffer is freed as soon as its last reader has run.

    Operator ``t`` runs with its own output and every buffer that a later (or the same) operator still reads:
    buffer ``i`` is alive from step ``i`` to its last reader (or only at step ``i`` if nothing reads it)."""
    last_use = list(range(len(ops)))
    for index, op in enumerate(ops):
        for read in op.reads:
            last_use[read] = max(last_use[read], index)
    alive_change = [0] * (len(ops) + 1)
    for index, op in enumerate(ops):
        alive_change[index] += op.output_bytes
        alive_change[last_use[index] + 1] -= op.output_bytes
    live = peak = 0
    for change in alive_change[:-1]:
        live += change
        peak = max(peak, live)
    return peak
