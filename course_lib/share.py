"""Weight sharing and Deep Compression's encoding: k-means codebooks, relative (gap) indexing of the sparse
positions, canonical Huffman coding, and a checksummed binary file that decodes into a normal PyTorch model.

Clustering uses scikit-learn's ``KMeans`` (the maintained implementation; notebook 04 writes it from scratch next
to it). Huffman coding is written here because it *is* the lesson, and no maintained library stores canonical code
lengths the way a compact file needs.

File format (little-endian), version 1::

    magic b"DCMP" | version u16 | header_length u32 | payload_length u64 | sha256(header + payload) (32 bytes)
    header: UTF-8 JSON {"layers": [...], "dense": [...]} describing every section of the payload, in order
    payload: per shared layer: codebook (fp32 × clusters), index code lengths (u8 × clusters),
             gap code lengths (u8 × 2^gap_bits; none when gap_bits is 0), prefix-code bitstream of the cluster
             indices, prefix-code bitstream of the gaps; then every other tensor (biases, batch-norm
             statistics) raw, as the fp32 or fp16 its header entry names.

Code lengths define canonical prefix codes: Huffman codes, or one fixed width for every used symbol (what plain
bit packing costs, to measure what Huffman coding buys).

A sparse layer is stored as a stream of (gap, cluster index) pairs over its flattened weight: the gap to the next
nonzero, minus one, fits in ``gap_bits`` bits; a longer gap inserts a filler entry whose index 0 decodes to 0.0
(Han et al.'s relative indexing); with ``gap_bits`` 0 every position is stored and there are no gaps. Index 0 of
every codebook is reserved for zero.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import math
import os
import struct
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from .io import atomic_path
from .prune import prunable_layers
from .train import fine_tune

MAGIC, VERSION = b"DCMP", 1
MAX_BITS = 8
CODEBOOK_RECIPE = dict(lr=1e-3, optimizer="adam", weight_decay=0.0)  # fine_tune settings for codebook fine-tuning
_PREAMBLE = struct.Struct("<4sHIQ32s")
Init = Literal["linear", "random", "density"]
INITS: tuple[str, ...] = ("linear", "random", "density")
_DTYPES = {torch.float32: "float32", torch.float16: "float16"}


class CorruptFileError(ValueError):
    """A compressed model file that is truncated, altered, of another format or of an unsupported version."""


# ---------------------------------------------------------------------------------------------------- clustering
def check_clusters(clusters: int, values: int) -> int:
    """``clusters`` if it is an int from 1 to the number of values to cluster, else a clear error."""
    if isinstance(clusters, bool) or not isinstance(clusters, int) or clusters < 1:
        raise ValueError(f"clusters must be a whole number of at least 1, got {clusters!r}")
    if clusters > values:
        raise ValueError(f"cannot make {clusters} clusters from {values} weights: use at most {values}")
    return clusters


def initial_centroids(values: torch.Tensor, clusters: int, init: Init = "linear", seed: int = 0) -> torch.Tensor:
    """Han et al.'s three initialisations: ``linear`` (evenly spaced from min to max), ``random`` (a random
    sample of the values), ``density`` (evenly spaced quantiles: dense regions get more centroids)."""
    values = values.detach().flatten().float()
    check_clusters(clusters, values.numel())
    if init == "linear":
        return torch.linspace(float(values.min()), float(values.max()), clusters)
    if init == "random":
        generator = torch.Generator().manual_seed(seed)
        return values[torch.randperm(values.numel(), generator=generator)[:clusters]].sort().values
    if init == "density":
        return torch.quantile(values, torch.linspace(0, 1, clusters + 2)[1:-1]) if clusters < values.numel() \
            else values.sort().values
    raise ValueError(f"unknown init {init!r}: choose one of {', '.join(INITS)}")


def kmeans_1d(values: torch.Tensor, clusters: int, init: Init = "linear", seed: int = 0,
              max_iter: int = 300) -> tuple[torch.Tensor, torch.Tensor]:
    """Cluster scalar weights with scikit-learn's KMeans from the chosen initialisation; returns the centroids
    (sorted, fp32) and each value's cluster label (int64). Starting centroids that coincide (possible only when
    the values repeat) are merged, so fewer than ``clusters`` centroids can come back: never more."""
    from sklearn.cluster import KMeans

    values = values.detach().flatten().float()
    if not bool(torch.isfinite(values).all()):
        raise ValueError("cannot cluster weights that contain NaN or infinity: the model diverged in training; "
                         "retrain it with a lower learning rate")
    start = initial_centroids(values, clusters, init, seed)
    start = torch.unique(start)  # identical starting centroids would make empty clusters
    model = KMeans(n_clusters=len(start), init=start.numpy()[:, None].astype(np.float64), n_init=1,
                   max_iter=max_iter, random_state=seed)
    model.fit(values.numpy()[:, None].astype(np.float64))
    centroids = torch.from_numpy(model.cluster_centers_[:, 0]).float()
    order = centroids.argsort()
    rank = torch.empty_like(order)
    rank[order] = torch.arange(len(order))
    return centroids[order], rank[torch.from_numpy(model.labels_.astype(np.int64))]


# ------------------------------------------------------------------------------------------- Huffman coding
def huffman_code_lengths(frequencies: Sequence[int]) -> list[int]:
    """Optimal prefix-code lengths for symbols ``0 … n-1`` with these counts (0 for an unused symbol; a single
    used symbol gets length 1)."""
    used = [(count, symbol) for symbol, count in enumerate(frequencies) if count > 0]
    lengths = [0] * len(frequencies)
    if len(used) == 1:
        lengths[used[0][1]] = 1
        return lengths
    heap = [(count, i, [symbol]) for i, (count, symbol) in enumerate(used)]
    heapq.heapify(heap)
    tie = len(heap)
    while len(heap) > 1:
        count_a, _, symbols_a = heapq.heappop(heap)
        count_b, _, symbols_b = heapq.heappop(heap)
        for symbol in symbols_a + symbols_b:  # every merge puts these symbols one level deeper
            lengths[symbol] += 1
        heapq.heappush(heap, (count_a + count_b, tie, symbols_a + symbols_b))
        tie += 1
    return lengths


def canonical_codes(lengths: Sequence[int]) -> dict[int, tuple[int, int]]:
    """Canonical Huffman codes ``symbol -> (code, length)`` from code lengths alone (what the file stores)."""
    code, previous, codes = 0, 0, {}
    for length, symbol in sorted((length, symbol) for symbol, length in enumerate(lengths) if length):
        code <<= length - previous
        codes[symbol] = (code, length)
        code, previous = code + 1, length
    return codes


def huffman_encode(symbols: Iterable[int], lengths: Sequence[int]) -> bytes:
    """Pack the symbols' canonical codes into bytes (the last byte padded with zero bits)."""
    codes = canonical_codes(lengths)
    bits = []
    try:
        for symbol in symbols:
            code, length = codes[int(symbol)]
            bits.append(format(code, f"0{length}b"))
    except KeyError as error:
        raise ValueError(f"symbol {error.args[0]} has no code (its frequency was 0)") from None
    text = "".join(bits)
    text += "0" * (-len(text) % 8)
    return int(text, 2).to_bytes(len(text) // 8, "big") if text else b""


def huffman_decode(data: bytes, lengths: Sequence[int], count: int) -> list[int]:
    """Decode ``count`` symbols from bytes written by :func:`huffman_encode` with the same code lengths."""
    decoding = {(length, code): symbol for symbol, (code, length) in canonical_codes(lengths).items()}
    longest = max(lengths, default=0)
    bits = bin(int.from_bytes(data, "big"))[2:].zfill(len(data) * 8) if data else ""
    symbols, code, length, position = [], 0, 0, 0
    while len(symbols) < count:
        if position >= len(bits) or length >= longest:
            raise CorruptFileError("a Huffman bitstream ends early or holds an invalid code")
        code, length = (code << 1) | (bits[position] == "1"), length + 1
        position += 1
        symbol = decoding.get((length, code))
        if symbol is not None:
            symbols.append(symbol)
            code, length = 0, 0
    return symbols


def entropy_bits(frequencies: Sequence[int]) -> float:
    """Shannon's bound: the fewest bits any code can use for these symbol counts, in total."""
    total = sum(frequencies)
    return -sum(c * math.log2(c / total) for c in frequencies if c)


# ---------------------------------------------------------------------------------------- relative indexing
def to_gaps(indices: torch.Tensor, gap_bits: int) -> tuple[list[int], list[int]]:
    """Relative indexing of a flattened layer whose entries are cluster indices (0 = pruned): returns the gap
    stream (distance to the next stored entry, minus one, each < 2^gap_bits) and the index stream, with filler
    entries (index 0) wherever a gap is too long. ``gap_bits=0`` stores every position (no gap stream)."""
    if not 0 <= gap_bits <= 16:
        raise ValueError(f"gap_bits must be from 0 (store every position) to 16, got {gap_bits}")
    flat = indices.flatten().cpu().numpy()
    if gap_bits == 0:
        return [], flat.tolist()
    positions = flat.nonzero()[0]
    limit = 1 << gap_bits
    distances = np.diff(positions, prepend=-1)
    fillers = (distances - 1) // limit
    last = np.cumsum(fillers + 1) - 1  # where each stored entry lands in the stream, after its fillers
    gaps = np.full(int(last[-1]) + 1 if len(last) else 0, limit - 1, dtype=np.int64)
    values = np.zeros_like(gaps)
    gaps[last] = distances - fillers * limit - 1
    values[last] = flat[positions]
    return gaps.tolist(), values.tolist()


def from_gaps(gaps: Sequence[int], values: Sequence[int], numel: int) -> torch.Tensor:
    """Invert :func:`to_gaps`: the flattened index tensor (int64, 0 where pruned). With no gaps, ``values``
    holds every position."""
    if not len(gaps):
        if len(values) not in (0, numel):
            raise CorruptFileError(f"{len(values)} stored entries without positions for a layer of {numel} weights")
        return torch.as_tensor(list(values), dtype=torch.long) if len(values) else torch.zeros(numel, dtype=torch.long)
    positions = np.cumsum(np.asarray(gaps, dtype=np.int64) + 1) - 1
    if positions[-1] >= numel:
        raise CorruptFileError(f"a position ({positions[-1]}) lies outside a layer of {numel} weights")
    flat = torch.zeros(numel, dtype=torch.long)
    flat[torch.from_numpy(positions)] = torch.as_tensor(list(values), dtype=torch.long)
    return flat


# ------------------------------------------------------------------------------------------ shared layers
@dataclass
class SharedLayer:
    """A pruned, weight-shared layer: ``codebook[0] == 0`` (pruned), ``indices`` (int64, the weight's shape)."""

    codebook: torch.Tensor
    indices: torch.Tensor

    def weight(self) -> torch.Tensor:
        """The dense weight the layer computes with."""
        return self.codebook[self.indices]


def share_weight(weight: torch.Tensor, clusters: int, init: Init = "linear", seed: int = 0) -> SharedLayer:
    """Cluster a (pruned) weight's nonzero values into ``clusters`` shared values; zeros stay zero."""
    weight = weight.detach().cpu().float()
    nonzero = weight != 0
    centroids, labels = kmeans_1d(weight[nonzero], clusters, init, seed)
    indices = torch.zeros(weight.shape, dtype=torch.long)
    indices[nonzero] = labels + 1
    return SharedLayer(torch.cat([torch.zeros(1), centroids]), indices)


class _CodebookWeight(nn.Module):
    """Parametrization ``weight = codebook[indices]`` with entry 0 pinned to zero: the optimizer trains the
    codebook, and autograd sums the gradients of all weights of a cluster into its centroid (Han et al.)."""

    def __init__(self, indices: torch.Tensor):
        super().__init__()
        self.register_buffer("indices", indices)

    def forward(self, codebook: torch.Tensor) -> torch.Tensor:
        return torch.cat([codebook.new_zeros(1), codebook[1:]])[self.indices]

    def right_inverse(self, weight: torch.Tensor) -> torch.Tensor:
        """The codebook that reproduces ``weight`` (the mean of each cluster's weights)."""
        sums = torch.zeros(int(self.indices.max()) + 1, dtype=weight.dtype, device=weight.device)
        counts = torch.zeros_like(sums)
        sums.index_add_(0, self.indices.flatten(), weight.detach().flatten())
        counts.index_add_(0, self.indices.flatten(), torch.ones_like(weight).flatten())
        return sums / counts.clamp(min=1)


def attach_codebooks(model: nn.Module, shared: dict[str, SharedLayer]) -> nn.Module:
    """Make each named layer compute with its shared weight and train only its codebook (plus, as before, the
    other parameters such as biases), in place; the cluster assignment stays fixed."""
    modules = dict(model.named_modules())
    for name, layer in shared.items():
        module = modules[name.removesuffix(".weight")]
        with torch.no_grad():
            module.weight.copy_(layer.weight().to(module.weight))
        parametrize.register_parametrization(module, "weight", _CodebookWeight(layer.indices.to(module.weight.device)),
                                             unsafe=True)
    return model


def shared_layers(model: nn.Module) -> dict[str, SharedLayer]:
    """The current codebooks and assignments of a model prepared with :func:`attach_codebooks`."""
    result = {}
    for name, module in model.named_modules():
        if parametrize.is_parametrized(module, "weight"):
            parametrization = module.parametrizations.weight
            codebook = parametrization.original.detach().cpu().clone()
            codebook[0] = 0.0
            result[f"{name}.weight"] = SharedLayer(codebook, parametrization[0].indices.cpu())
    return result


def check_bits(bits: int) -> int:
    """``bits`` if it is a whole number from 1 to 8 (the index widths weight sharing supports), else a clear error."""
    if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= MAX_BITS:
        raise ValueError(f"bits must be a whole number from 1 to {MAX_BITS} (2**bits shared values), got {bits!r}")
    return bits


def share_model(model: nn.Module, bits: int | dict[str, int], init: Init = "linear") -> dict[str, SharedLayer]:
    """Cluster every Linear/Conv2d weight (or only the layers named in ``bits``) so that its indices fit in
    ``bits`` bits: ``2**bits`` shared values, one of which is the zero of a pruned layer."""
    layers = prunable_layers(model, bits if isinstance(bits, dict) else None)
    shared = {}
    for name, layer in layers.items():
        width = check_bits(bits[name] if isinstance(bits, dict) else bits)
        weight = layer.weight.detach()
        nonzeros = int(weight.count_nonzero())
        clusters = min((1 << width) - int(nonzeros < weight.numel()), nonzeros)
        shared[f"{name}.weight"] = share_weight(weight, clusters, init)
    return shared


def use_shared_weights(model: nn.Module, shared: dict[str, SharedLayer]) -> nn.Module:
    """Overwrite the named weights with their shared versions (``codebook[indices]``), in place."""
    with torch.no_grad():
        for name, layer in shared.items():
            weight = model.get_parameter(name)
            weight.copy_(layer.weight().to(weight))
    return model


def fine_tune_codebooks(model: nn.Module, shared: dict[str, SharedLayer], epochs: int = 1,
                        **train_kwargs) -> dict[str, SharedLayer]:
    """Han et al.'s codebook fine-tuning, in place: train the shared values with the assignments fixed, and the
    biases and batch-norm parameters; the weights of layers that are not shared stay as they are. Returns the
    trained codebooks, and leaves ``model`` with plain weights equal to them. ``train_kwargs`` go to
    :func:`course_lib.train.fine_tune`."""
    frozen = [layer.weight for name, layer in prunable_layers(model).items()
              if f"{name}.weight" not in shared and layer.weight.requires_grad]
    for weight in frozen:
        weight.requires_grad_(False)
    attach_codebooks(model, shared)
    try:
        fine_tune(model, epochs=epochs, evaluate_every_epoch=False, **train_kwargs)
    finally:
        for weight in frozen:
            weight.requires_grad_(True)
    trained = shared_layers(model)
    modules = dict(model.named_modules())
    for name in shared:
        parametrize.remove_parametrizations(modules[name.removesuffix(".weight")], "weight", leave_parametrized=True)
    return trained


def save_shared(model: nn.Module, shared: dict[str, SharedLayer], path: str | os.PathLike, **encode_kwargs) -> int:
    """Encode a weight-shared model: its shared layers plus every other tensor of its state dict
    (:func:`encode_model` keyword arguments); returns the file's bytes."""
    dense = {key: value for key, value in model.state_dict().items() if key not in shared}
    return encode_model(path, shared, dense, **encode_kwargs)


# ------------------------------------------------------------------------------------------------- the file
def _symbol_counts(alphabet: int, values: Sequence[int]) -> list[int]:
    """How often each symbol ``0 … alphabet-1`` occurs in ``values``."""
    frequencies = Counter(values)
    return [frequencies.get(symbol, 0) for symbol in range(alphabet)]


def _code_lengths(counts: Sequence[int], huffman: bool) -> list[int]:
    """Huffman code lengths for symbols with these counts; with ``huffman=False`` the same fixed width for every
    used symbol (``ceil(log2(used symbols))`` bits, what plain packing needs)."""
    if huffman:
        lengths = huffman_code_lengths(counts)
    else:
        width = max(1, math.ceil(math.log2(max(1, sum(1 for c in counts if c)))))
        lengths = [width if c else 0 for c in counts]
    if max(lengths, default=0) > 255:
        raise ValueError("a Huffman code is longer than 255 bits")
    return lengths


def _coded_bytes(alphabet: int, values: Sequence[int], huffman: bool) -> int:
    """Bytes of one coded stream plus its table of code lengths (one byte per symbol)."""
    counts = _symbol_counts(alphabet, values)
    lengths = _code_lengths(counts, huffman)
    return alphabet + math.ceil(sum(length * count for length, count in zip(lengths, counts)) / 8)


def layer_bytes(layer: SharedLayer, gap_bits: int, huffman: bool = True) -> int:
    """Bytes the file spends on one shared layer's codebook, code tables and streams (header excluded)."""
    gaps, values = to_gaps(layer.indices, gap_bits)
    gap_stream = _coded_bytes(1 << gap_bits, gaps, huffman) if gap_bits else 0
    return 4 * len(layer.codebook) + _coded_bytes(len(layer.codebook), values, huffman) + gap_stream


def best_gap_bits(layer: SharedLayer, huffman: bool = True, candidates: Iterable[int] = range(13)) -> int:
    """The gap width (0 = store every position) that makes this layer's part of the file smallest."""
    return min(candidates, key=lambda bits: layer_bytes(layer, bits, huffman))


def encode_model(path: str | os.PathLike, shared: dict[str, SharedLayer], dense: dict[str, torch.Tensor],
                 gap_bits: dict[str, int] | int | None = None, huffman: bool = True,
                 dense_dtype: torch.dtype = torch.float32) -> int:
    """Write shared layers and other tensors to one checksummed file, atomically; return its size in bytes.

    Indices and gaps are Huffman-coded (``huffman=False``: packed at a fixed width, to measure what Huffman
    buys). ``gap_bits`` per layer, for all, or ``None`` to choose each layer's best (:func:`best_gap_bits`).
    Other tensors (biases, batch-norm statistics) are stored raw as ``dense_dtype`` (float32 or float16)."""
    if dense_dtype not in _DTYPES:
        raise ValueError(f"dense_dtype must be one of {', '.join(map(str, _DTYPES))}, got {dense_dtype}")
    header: dict = {"layers": [], "dense": []}
    payload = bytearray()
    for name, layer in shared.items():
        if gap_bits is None:
            bits = best_gap_bits(layer, huffman)
        else:
            bits = gap_bits if isinstance(gap_bits, int) else gap_bits[name]
        gaps, values = to_gaps(layer.indices, bits)
        index_lengths = _code_lengths(_symbol_counts(len(layer.codebook), values), huffman)
        gap_lengths = _code_lengths(_symbol_counts(1 << bits, gaps), huffman) if bits else []
        sections = [layer.codebook.float().numpy().tobytes(), bytes(index_lengths), bytes(gap_lengths),
                    huffman_encode(values, index_lengths), huffman_encode(gaps, gap_lengths) if bits else b""]
        header["layers"].append({"name": name, "shape": list(layer.indices.shape), "clusters": len(layer.codebook),
                                 "gap_bits": bits, "entries": len(values), "sections": [len(s) for s in sections]})
        payload += b"".join(sections)
    for name, tensor in dense.items():
        raw = tensor.detach().cpu().to(dense_dtype).contiguous().numpy().tobytes()
        header["dense"].append({"name": name, "shape": list(tensor.shape), "dtype": _DTYPES[dense_dtype],
                                "bytes": len(raw)})
        payload += raw
    header_bytes = json.dumps(header, separators=(",", ":")).encode()
    digest = hashlib.sha256(header_bytes + payload).digest()
    with atomic_path(path) as tmp:
        Path(tmp).write_bytes(_PREAMBLE.pack(MAGIC, VERSION, len(header_bytes), len(payload), digest)
                              + header_bytes + payload)
    return Path(path).stat().st_size


def decode_model(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict]:
    """Read a file written by :func:`encode_model`: every tensor by name (shared weights rebuilt dense) and the
    header. Truncated, altered, foreign or newer files raise :class:`CorruptFileError` that says which."""
    data = Path(path).read_bytes()
    if len(data) < _PREAMBLE.size:
        raise CorruptFileError(f"{path} is too short to be a compressed model ({len(data)} bytes)")
    magic, version, header_length, payload_length, digest = _PREAMBLE.unpack_from(data)
    if magic != MAGIC:
        raise CorruptFileError(f"{path} is not a compressed model file (magic {magic!r}, expected {MAGIC!r})")
    if version != VERSION:
        raise CorruptFileError(f"{path} has format version {version}; this course_lib reads version {VERSION}")
    body = data[_PREAMBLE.size:]
    if len(body) != header_length + payload_length:
        raise CorruptFileError(f"{path} is truncated or padded: {len(body)} bytes after the preamble, expected "
                               f"{header_length + payload_length}; write it again")
    if hashlib.sha256(body).digest() != digest:
        raise CorruptFileError(f"{path} fails its SHA-256 checksum: the file was altered or damaged; write it again")
    header = json.loads(body[:header_length])
    payload, offset, tensors = body[header_length:], 0, {}
    for layer in header["layers"]:
        parts = []
        for size in layer["sections"]:
            parts.append(payload[offset:offset + size])
            offset += size
        codebook = torch.from_numpy(np.frombuffer(parts[0], dtype="<f4").copy())
        values = huffman_decode(parts[3], list(parts[1]), layer["entries"])
        gaps = huffman_decode(parts[4], list(parts[2]), layer["entries"]) if layer["gap_bits"] else []
        indices = from_gaps(gaps, values, math.prod(layer["shape"]))
        tensors[layer["name"]] = codebook[indices].reshape(layer["shape"])
    for entry in header["dense"]:
        raw = payload[offset:offset + entry["bytes"]]
        offset += entry["bytes"]
        array = np.frombuffer(raw, dtype="<f2" if entry["dtype"] == "float16" else "<f4")
        tensors[entry["name"]] = torch.from_numpy(array.astype(np.float32)).reshape(entry["shape"])
    return tensors, header


def load_model(path: str | os.PathLike, skeleton: nn.Module) -> nn.Module:
    """Decode a compressed file into ``skeleton`` (a model of the right architecture), strictly, in eval mode."""
    tensors, _ = decode_model(path)
    skeleton.load_state_dict(tensors, strict=True)
    return skeleton.eval()
