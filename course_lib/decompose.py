"""Low-rank and tensor decomposition of trained layers, turned into chains of smaller real layers.

* ``svd``: a ``Linear`` (out x in) becomes ``Linear(in, r, bias=False)`` then ``Linear(r, out)``, from the
  truncated SVD (the best rank-r approximation, Eckart-Young), or from the SVD of the weight *whitened* by the
  covariance of the layer's real inputs (:func:`whitened_svd_linear`, as in ASVD / SVD-LLM).
* ``tucker2``: a ``Conv2d`` kernel (out x in x k x k) becomes 1x1 (in -> r_in), k x k (r_in -> r_out), 1x1
  (r_out -> out) (Kim et al. 2016), from tensorly's partial Tucker decomposition of the two channel modes.
* ``cp``: a ``Conv2d`` kernel becomes 1x1 (in -> R), depthwise k x 1, depthwise 1 x k, 1x1 (R -> out)
  (Lebedev et al. 2015), from tensorly's CP decomposition (alternating least squares).

A *plan* maps layer names to ``(method, ranks)``; :func:`decompose` applies it to a copy of a model,
:func:`save_decomposed` writes the result with its plan, and :func:`load_decomposed` rebuilds it from the file.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Callable, Iterable, Mapping
from typing import Literal

import tensorly as tl
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from tensorly.decomposition import parafac, partial_tucker
from torch import nn

from .io import atomic_path

tl.set_backend("pytorch")

Method = Literal["svd", "tucker2", "cp"]
Ranks = int | tuple[int, int]
Plan = dict[str, tuple[Method, Ranks]]
METHODS: tuple[str, ...] = ("svd", "tucker2", "cp")
PLAN_KEY = "course_lib.decompose.plan"


# ---------------------------------------------------------------- checks


def _check_finite(name: str, weight: torch.Tensor) -> None:
    if not torch.isfinite(weight).all():
        raise ValueError(f"{name}: the weight holds NaN or infinite values; decompose a trained, finite layer "
                         "(check the checkpoint or the training run that produced it)")


def _check_rank(name: str, what: str, rank: object, limit: int) -> int:
    if isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank <= limit:
        raise ValueError(f"{name}: {what} must be an integer from 1 to {limit} (what this layer's shape allows), "
                         f"got {rank!r}")
    return rank


def _check_conv(name: str, layer: nn.Module) -> nn.Conv2d:
    if not isinstance(layer, nn.Conv2d):
        raise TypeError(f"{name} is a {type(layer).__name__}: Tucker-2 and CP decompose Conv2d kernels only "
                        "(use 'svd' for a Linear)")
    if layer.groups != 1:
        raise TypeError(f"{name} is a grouped convolution (groups={layer.groups}): its kernel is already split "
                        "by channel group; only ordinary convolutions (groups=1) can be decomposed here")
    if layer.padding_mode != "zeros" or isinstance(layer.padding, str):
        raise TypeError(f"{name}: only numeric zero padding is supported, got padding={layer.padding!r} "
                        f"({layer.padding_mode})")
    return layer


def _check_linear(name: str, layer: nn.Module) -> nn.Linear:
    if not isinstance(layer, nn.Linear):
        raise TypeError(f"{name} is a {type(layer).__name__}: SVD decomposes Linear layers only "
                        "(use 'tucker2' or 'cp' for a Conv2d)")
    return layer


def max_cp_rank(shape: Iterable[int]) -> int:
    """An upper bound on the CP rank of a tensor: the product of every dimension but the largest."""
    dims = sorted(shape)
    bound = 1
    for d in dims[:-1]:
        bound *= d
    return bound


# ---------------------------------------------------------------- matrices


def low_rank_factors(weight: torch.Tensor, rank: int, name: str = "weight") -> tuple[torch.Tensor, torch.Tensor]:
    """``(first, second)`` with ``second @ first`` the best rank-``rank`` approximation of ``weight`` (out x in):
    ``first = diag(s_r) V_r^T`` (rank x in) and ``second = U_r`` (out x rank)."""
    _check_finite(name, weight)
    _check_rank(name, "the rank", rank, min(weight.shape))
    u, s, vh = torch.linalg.svd(weight.double(), full_matrices=False)
    return (s[:rank, None] * vh[:rank]).to(weight.dtype), u[:, :rank].to(weight.dtype)


def energy_rank(singular_values: torch.Tensor, energy: float) -> int:
    """The smallest rank whose singular values keep at least ``energy`` of the sum of their squares."""
    if not 0.0 < energy <= 1.0:
        raise ValueError(f"energy must be a fraction in (0, 1] (0.9 keeps 90% of the squared singular values), "
                         f"got {energy!r}")
    squares = singular_values.double().sort(descending=True).values ** 2
    kept = squares.cumsum(0) / squares.sum()
    return int((kept < energy - 1e-12).sum().item()) + 1


def svd_parameters(in_features: int, out_features: int, rank: int, bias: bool = True) -> int:
    """Parameters of the two-Linear chain of rank ``rank``."""
    return rank * (in_features + out_features) + (out_features if bias else 0)


def _linear_chain(layer: nn.Linear, rank: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(layer.in_features, rank, bias=False),
                         nn.Linear(rank, layer.out_features, bias=layer.bias is not None))


def _fill_linear_chain(chain: nn.Sequential, layer: nn.Linear, first: torch.Tensor, second: torch.Tensor) -> None:
    with torch.no_grad():
        chain[0].weight.copy_(first)
        chain[1].weight.copy_(second)
        if layer.bias is not None:
            chain[1].bias.copy_(layer.bias)


def svd_linear(layer: nn.Linear, rank: int, name: str = "linear") -> nn.Sequential:
    """The Linear as two thinner Linears from its truncated SVD."""
    _check_linear(name, layer)
    chain = _linear_chain(layer, _check_rank(name, "the rank", rank, min(layer.weight.shape)))
    _fill_linear_chain(chain, layer, *low_rank_factors(layer.weight.detach(), rank, name))
    return chain


def whitened_svd_linear(layer: nn.Linear, rank: int, covariance: torch.Tensor, name: str = "linear",
                        damping: float = 1e-4) -> nn.Sequential:
    """The Linear as two thinner Linears that minimise the error of the layer's *outputs* on inputs with second
    moment ``covariance`` (in x in, E[x x^T]), not the error of the weights: with ``S`` the Cholesky factor of the
    covariance, the truncated SVD of ``W S`` is mapped back by ``S^-1`` (SVD-LLM's whitening). ``damping`` (a
    fraction of the mean diagonal) keeps ``S`` invertible when some input directions never vary."""
    _check_linear(name, layer)
    _check_rank(name, "the rank", rank, min(layer.weight.shape))
    weight = layer.weight.detach()
    _check_finite(name, weight)
    if covariance.shape != (layer.in_features, layer.in_features):
        raise ValueError(f"{name}: the covariance must be {layer.in_features} x {layer.in_features} (one row per "
                         f"input feature), got {tuple(covariance.shape)}")
    _check_finite(f"{name} (input covariance)", covariance)
    cov = covariance.double()
    cov = cov + damping * cov.diagonal().mean() * torch.eye(len(cov), dtype=cov.dtype)
    root = torch.linalg.cholesky(cov)  # cov = root @ root.T
    u, s, vh = torch.linalg.svd(weight.double() @ root, full_matrices=False)
    first = torch.linalg.solve_triangular(root, s[:rank, None] * vh[:rank], upper=False, left=False)
    chain = _linear_chain(layer, rank)
    _fill_linear_chain(chain, layer, first.to(weight.dtype), u[:, :rank].to(weight.dtype))
    return chain


def input_covariances(model: nn.Module, names: Iterable[str], run: Callable[[], object]) -> dict[str, torch.Tensor]:
    """E[x x^T] of the inputs of the named Linear layers while ``run()`` feeds data through ``model`` (every
    token or example is one sample; padding tokens are included if ``run`` feeds them)."""
    names = list(names)
    modules = dict(model.named_modules())
    sums: dict[str, torch.Tensor] = {}
    counts = dict.fromkeys(names, 0)

    def hook(name: str):
        def record(_module, inputs, _output):
            x = inputs[0].detach().reshape(-1, inputs[0].shape[-1]).double()
            sums[name] = sums.get(name, 0) + x.T @ x
            counts[name] += len(x)
        return record

    handles = [_check_linear(n, modules.get(n)).register_forward_hook(hook(n)) for n in names]
    try:
        with torch.inference_mode():
            run()
    finally:
        for handle in handles:
            handle.remove()
    missing = [n for n in names if counts[n] == 0]
    if missing:
        raise ValueError(f"run() never called {', '.join(missing)}: feed data through the model in run()")
    return {n: (sums[n] / counts[n]).float() for n in names}


# ---------------------------------------------------------------- convolution kernels


def tucker2_factors(kernel: torch.Tensor, ranks: tuple[int, int], name: str = "kernel"
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(core, out_factor, in_factor)`` of a partial Tucker decomposition of a conv kernel (out x in x kh x kw)
    along its two channel modes: ``kernel ≈ core ×_0 out_factor ×_1 in_factor`` with core (r_out x r_in x kh x kw),
    out_factor (out x r_out) and in_factor (in x r_in). ``ranks`` is ``(r_in, r_out)``."""
    _check_finite(name, kernel)
    r_in, r_out = _tucker_ranks(name, ranks, tuple(kernel.shape))
    (core, (out_factor, in_factor)), _ = partial_tucker(kernel.detach().double(), rank=[r_out, r_in], modes=[0, 1],
                                                        init="svd", n_iter_max=50)
    return core.to(kernel.dtype), out_factor.to(kernel.dtype), in_factor.to(kernel.dtype)


def _tucker_ranks(name: str, ranks: object, shape: tuple[int, ...]) -> tuple[int, int]:
    """Valid (r_in, r_out) for a kernel of ``shape`` (out, in, kh, kw): each at most its channels and at most the
    other side of its unfolding (out * kh * kw for r_in), and each at most the other rank times kh * kw."""
    if not isinstance(ranks, (tuple, list)) or len(ranks) != 2:
        raise ValueError(f"{name}: Tucker-2 needs two ranks (r_in, r_out), got {ranks!r}")
    out_channels, in_channels, kh, kw = shape
    r_in = _check_rank(name, "r_in", ranks[0], min(in_channels, out_channels * kh * kw))
    r_out = _check_rank(name, "r_out", ranks[1], min(out_channels, in_channels * kh * kw))
    if r_in > r_out * kh * kw or r_out > r_in * kh * kw:
        raise ValueError(f"{name}: Tucker ranks ({r_in}, {r_out}) do not fit a {kh}x{kw} core: each rank can be at most "
                         f"the other times {kh * kw} (the core's unfolding has no more columns)")
    return r_in, r_out


def tucker2_parameters(in_channels: int, out_channels: int, kernel_size: tuple[int, int], r_in: int, r_out: int,
                       bias: bool = False) -> int:
    """Parameters of the 1x1 -> k x k -> 1x1 chain."""
    kh, kw = kernel_size
    return in_channels * r_in + r_in * r_out * kh * kw + r_out * out_channels + (out_channels if bias else 0)


def cp_parameters(in_channels: int, out_channels: int, kernel_size: tuple[int, int], rank: int,
                  bias: bool = False) -> int:
    """Parameters of the 1x1 -> depthwise k x 1 -> depthwise 1 x k -> 1x1 chain."""
    kh, kw = kernel_size
    return rank * (in_channels + kh + kw + out_channels) + (out_channels if bias else 0)


def _tucker2_chain(conv: nn.Conv2d, r_in: int, r_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(conv.in_channels, r_in, 1, bias=False),
        nn.Conv2d(r_in, r_out, conv.kernel_size, stride=conv.stride, padding=conv.padding, dilation=conv.dilation,
                  bias=False),
        nn.Conv2d(r_out, conv.out_channels, 1, bias=conv.bias is not None))


def tucker2_conv(conv: nn.Conv2d, ranks: tuple[int, int], name: str = "conv") -> nn.Sequential:
    """The convolution as 1x1 (in -> r_in), k x k (r_in -> r_out, the original stride and padding), 1x1 (r_out ->
    out, the original bias): the same function as ``conv`` with its Tucker-2-approximated kernel."""
    _check_conv(name, conv)
    r_in, r_out = _tucker_ranks(name, ranks, tuple(conv.weight.shape))
    core, out_factor, in_factor = tucker2_factors(conv.weight.detach(), (r_in, r_out), name)
    chain = _tucker2_chain(conv, r_in, r_out)
    with torch.no_grad():
        chain[0].weight.copy_(in_factor.T[:, :, None, None])
        chain[1].weight.copy_(core)
        chain[2].weight.copy_(out_factor[:, :, None, None])
        if conv.bias is not None:
            chain[2].bias.copy_(conv.bias)
    return chain


def cp_factors(kernel: torch.Tensor, rank: int, name: str = "kernel", seed: int = 0, init: str = "random",
               iterations: int = 100) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """``(weights, [out, in, kh, kw factors])`` of a rank-``rank`` CP decomposition of a conv kernel (tensorly's
    alternating least squares from a random start drawn with ``seed``, or ``init='svd'``)."""
    _check_finite(name, kernel)
    _check_rank(name, "the CP rank", rank, max_cp_rank(kernel.shape))
    weights, factors = parafac(kernel.detach().double(), rank=rank, init=init, n_iter_max=iterations, tol=1e-7,
                               random_state=seed, normalize_factors=True)
    return weights.to(kernel.dtype), [f.to(kernel.dtype) for f in factors]


def _cp_chain(conv: nn.Conv2d, rank: int) -> nn.Sequential:
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = conv.kernel_size, conv.stride, conv.padding, conv.dilation
    return nn.Sequential(
        nn.Conv2d(conv.in_channels, rank, 1, bias=False),
        nn.Conv2d(rank, rank, (kh, 1), stride=(sh, 1), padding=(ph, 0), dilation=(dh, 1), groups=rank, bias=False),
        nn.Conv2d(rank, rank, (1, kw), stride=(1, sw), padding=(0, pw), dilation=(1, dw), groups=rank, bias=False),
        nn.Conv2d(rank, conv.out_channels, 1, bias=conv.bias is not None))


def cp_conv(conv: nn.Conv2d, rank: int, name: str = "conv", seed: int = 0) -> nn.Sequential:
    """The convolution as 1x1 (in -> R), depthwise kh x 1, depthwise 1 x kw, 1x1 (R -> out, the original bias),
    computing the convolution with its rank-R CP-approximated kernel."""
    _check_conv(name, conv)
    weights, (out_f, in_f, h_f, w_f) = cp_factors(conv.weight.detach(), rank, name, seed)
    chain = _cp_chain(conv, rank)
    with torch.no_grad():
        chain[0].weight.copy_(in_f.T[:, :, None, None])
        chain[1].weight.copy_(h_f.T[:, None, :, None])
        chain[2].weight.copy_(w_f.T[:, None, None, :])
        chain[3].weight.copy_((out_f * weights)[:, :, None, None])
        if conv.bias is not None:
            chain[3].bias.copy_(conv.bias)
    return chain


# ---------------------------------------------------------------- whole models


def _check_plan(model: nn.Module, plan: Mapping[str, tuple[str, Ranks]]) -> dict[str, nn.Module]:
    modules = dict(model.named_modules())
    layers = {}
    for name, entry in plan.items():
        if name not in modules or not name:
            decomposable = [n for n, m in modules.items() if isinstance(m, (nn.Linear, nn.Conv2d))]
            raise ValueError(f"the model has no layer {name!r}; decomposable layers: {', '.join(decomposable)}")
        if not isinstance(entry, (tuple, list)) or len(entry) != 2 or entry[0] not in METHODS:
            raise ValueError(f"{name}: a plan entry is (method, ranks) with method one of {', '.join(METHODS)}, "
                             f"got {entry!r}")
        layers[name] = modules[name]
    return layers


def replace_module(model: nn.Module, name: str, module: nn.Module) -> None:
    """Put ``module`` in ``model`` in place of the submodule called ``name`` (e.g. 'features.3')."""
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


def _build(method: str, layer: nn.Module, ranks: Ranks, name: str) -> nn.Sequential:
    if method == "svd":
        return svd_linear(_check_linear(name, layer), ranks, name)
    if method == "tucker2":
        return tucker2_conv(layer, ranks, name)
    return cp_conv(layer, ranks, name)


def decompose(model: nn.Module, plan: Mapping[str, tuple[str, Ranks]]) -> nn.Module:
    """A copy of ``model`` (mode kept) with each layer of ``plan`` (``{name: (method, ranks)}``, method 'svd' with
    one rank, 'tucker2' with (r_in, r_out), or 'cp' with one rank) replaced by its chain of smaller layers."""
    decomposed = copy.deepcopy(model)
    for name, layer in _check_plan(decomposed, plan).items():
        method, ranks = plan[name]
        replace_module(decomposed, name, _build(method, layer, ranks, name))
    return decomposed


def _empty_chain(method: str, layer: nn.Module, ranks: Ranks, name: str) -> nn.Sequential:
    if method == "svd":
        return _linear_chain(_check_linear(name, layer), _check_rank(name, "the rank", ranks, min(layer.weight.shape)))
    _check_conv(name, layer)
    if method == "tucker2":
        return _tucker2_chain(layer, *_tucker_ranks(name, ranks, tuple(layer.weight.shape)))
    return _cp_chain(layer, _check_rank(name, "the CP rank", ranks, max_cp_rank(layer.weight.shape)))


def save_decomposed(model: nn.Module, plan: Mapping[str, tuple[str, Ranks]], path: str | os.PathLike) -> int:
    """Write a decomposed model's tensors and its plan (safetensors, the plan in the metadata); return the bytes."""
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata={PLAN_KEY: json.dumps(plan_to_json(plan))})
    return os.path.getsize(path)


def plan_to_json(plan: Mapping[str, tuple[str, Ranks]]) -> dict[str, list]:
    """A plan as JSON-ready lists."""
    return {n: [m, list(r) if isinstance(r, (tuple, list)) else r] for n, (m, r) in plan.items()}


def plan_from_json(entries: Mapping[str, list]) -> Plan:
    """A plan from its JSON form (Tucker-2 ranks back to tuples)."""
    return {n: (m, tuple(r) if isinstance(r, list) else r) for n, (m, r) in entries.items()}


def read_plan(path: str | os.PathLike) -> Plan:
    """The plan stored in a file written by :func:`save_decomposed`."""
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata() or {}
    if PLAN_KEY not in metadata:
        raise ValueError(f"{path} holds no decomposition plan: it was not written by save_decomposed "
                         "(a plain checkpoint loads with load_state_dict)")
    return plan_from_json(json.loads(metadata[PLAN_KEY]))


def load_decomposed(path: str | os.PathLike, skeleton: nn.Module) -> nn.Module:
    """Rebuild a decomposed model from its file: ``skeleton`` (the undecomposed architecture, any weights) gets
    the chains of the stored plan, then the stored tensors. Returned in eval mode."""
    plan = read_plan(path)
    model = copy.deepcopy(skeleton)
    for name, layer in _check_plan(model, plan).items():
        method, ranks = plan[name]
        replace_module(model, name, _empty_chain(method, layer, ranks, name))
    model.load_state_dict(load_file(str(path)))
    return model.eval()


def uniform_plan(model: nn.Module, fraction: float, convs: Iterable[str], linears: Mapping[str, int] | None = None
                 ) -> Plan:
    """Tucker-2 of each named convolution with both ranks ``fraction`` of its channels (rounded, at least 1), plus
    SVD of the named Linears at the given ranks."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1] (0.5 keeps half the channels in the core), got {fraction!r}")
    modules = dict(model.named_modules())
    plan: Plan = {}
    for name in convs:
        conv = _check_conv(name, modules.get(name))
        plan[name] = ("tucker2", (max(1, round(conv.in_channels * fraction)), max(1, round(conv.out_channels * fraction))))
    for name, rank in (linears or {}).items():
        plan[name] = ("svd", rank)
    return plan


# ---------------------------------------------------------------- low rank + sparse


def low_rank_plus_sparse(weight: torch.Tensor, rank: int, nonzeros: int, iterations: int = 20
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(low_rank, sparse)`` with ``weight ≈ low_rank + sparse``, ``low_rank`` of rank ``rank`` and ``sparse``
    holding ``nonzeros`` entries, by alternating projections (GoDec, Zhou & Tao 2011): the best rank-r
    approximation of what the sparse part misses, then the largest entries of what the low-rank part misses."""
    _check_finite("weight", weight)
    _check_rank("weight", "the rank", rank, min(weight.shape))
    if isinstance(nonzeros, bool) or not isinstance(nonzeros, int) or not 0 <= nonzeros <= weight.numel():
        raise ValueError(f"nonzeros must be an integer from 0 to {weight.numel()}, got {nonzeros!r}")
    if iterations < 1:
        raise ValueError(f"iterations must be at least 1, got {iterations}")
    w = weight.detach().double()
    sparse = torch.zeros_like(w)
    for _ in range(iterations):
        first, second = low_rank_factors(w - sparse, rank)
        low_rank = second @ first
        residual = (w - low_rank).flatten()
        sparse = torch.zeros_like(residual)
        if nonzeros:
            keep = residual.abs().topk(nonzeros).indices
            sparse[keep] = residual[keep]
        sparse = sparse.view_as(w)
    return low_rank.to(weight.dtype), sparse.to(weight.dtype)


# ---------------------------------------------------------------- choosing ranks


def tucker2_energy_ranks(kernel: torch.Tensor, energy: float) -> tuple[int, int]:
    """``(r_in, r_out)``: the smallest ranks whose input- and output-channel unfoldings of the kernel keep
    ``energy`` of their squared singular values."""
    return (energy_rank(torch.linalg.svdvals(tl.unfold(kernel.detach(), 1)), energy),
            energy_rank(torch.linalg.svdvals(tl.unfold(kernel.detach(), 0)), energy))


def allocate(costs: Mapping[str, list[float]], losses: Mapping[str, list[float]], budget: float) -> dict[str, int]:
    """For each layer, the index of one option (``costs[layer][i]``, ``losses[layer][i]``) such that the summed cost
    stays within ``budget`` and the summed loss is the smallest (exhaustive search: a few layers, a few options)."""
    layers = list(costs)
    best: tuple[float, tuple[int, ...]] | None = None
    choices: list[tuple[int, ...]] = [()]
    for layer in layers:
        choices = [c + (i,) for c in choices for i in range(len(costs[layer]))]
    for choice in choices:
        if sum(costs[layer][i] for layer, i in zip(layers, choice)) > budget:
            continue
        loss = sum(losses[layer][i] for layer, i in zip(layers, choice))
        if best is None or loss < best[0]:
            best = (loss, choice)
    if best is None:
        cheapest = sum(min(c) for c in costs.values())
        raise ValueError(f"no choice fits the budget {budget:,.0f}: the cheapest options cost {cheapest:,.0f}")
    return dict(zip(layers, best[1]))
