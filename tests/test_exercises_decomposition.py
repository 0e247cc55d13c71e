"""The checkers of notebook 06 accept the solutions and reject the typical mistakes with the matching hint."""

import pytest
import tensorly as tl
import torch
from torch import nn

from course_lib import decompose as D
from course_lib.exercises import ExerciseError
from course_lib.exercises import decomposition as check


def _svd(weight, rank):
    u, s, vh = torch.linalg.svd(weight, full_matrices=False)
    return u[:, :rank], s[:rank], vh[:rank]


def test_low_rank_factors_checker():
    check.check_low_rank_factors(D.low_rank_factors)
    check.check_low_rank_factors(lambda w, r: (lambda u, s, vh: (s.sqrt()[:, None] * vh, u * s.sqrt()))(*_svd(w, r)))
    wrong = {
        "U and V\\^T: check which is which": lambda w, r: (lambda u, s, vh: (u * s, vh))(*_svd(w, r)),
        "singular values are missing": lambda w, r: (lambda u, s, vh: (vh, u))(*_svd(w, r)),
        "appear twice": lambda w, r: (lambda u, s, vh: (s[:, None] * vh, u * s))(*_svd(w, r)),
        "smallest singular values": lambda w, r: (lambda u, s, vh: (s[-r:, None] * vh[-r:], u[:, -r:]))(
            *torch.linalg.svd(w, full_matrices=False)),
        "a pair": lambda w, r: w,
    }
    for hint, answer in wrong.items():
        with pytest.raises(ExerciseError, match=hint):
            check.check_low_rank_factors(answer)


def test_rank_for_energy_checker():
    check.check_rank_for_energy(D.energy_rank)
    def by_amplitude(s, e):
        kept = s.cumsum(0) / s.sum()
        return int((kept < e - 1e-12).sum()) + 1
    wrong = {"an index, not a count": lambda s, e: D.energy_rank(s, e) - 1,
             "squares of the singular values": by_amplitude,
             "a plain int": lambda s, e: float(D.energy_rank(s, e))}
    for hint, answer in wrong.items():
        with pytest.raises(ExerciseError, match=hint):
            check.check_rank_for_energy(answer)


def test_unfold_checker():
    check.check_unfold(lambda t, mode: torch.movedim(t, mode, 0).reshape(t.shape[mode], -1))
    wrong = {
        "plain reshape": lambda t, mode: t.reshape(t.shape[mode], -1),
        "transpose": lambda t, mode: torch.movedim(t, mode, 0).reshape(t.shape[mode], -1).T,
        "Kolda & Bader": lambda t, mode: torch.movedim(t, mode, 0).permute(0, 3, 2, 1).reshape(t.shape[mode], -1),
    }
    for hint, answer in wrong.items():
        with pytest.raises(ExerciseError, match=hint):
            check.check_unfold(answer)


def _update(tensor, factors, mode, reverse=False, pinv=True, all_grams=False):
    others = [f for i, f in enumerate(factors) if i != mode]
    gram = torch.ones(factors[0].shape[1], factors[0].shape[1], dtype=tensor.dtype)
    for f in (factors if all_grams else others):
        gram = gram * (f.T @ f)
    product = tl.unfold(tensor, mode) @ tl.tenalg.khatri_rao(others[::-1] if reverse else others)
    return product @ torch.linalg.pinv(gram) if pinv else product


def test_als_update_checker():
    check.check_als_update(_update)
    wrong = {"not reversed": lambda t, f, m: _update(t, f, m, reverse=True),
             "inverse of the Hadamard product": lambda t, f, m: _update(t, f, m, pinv=False),
             "the \\*other\\* factors only": lambda t, f, m: _update(t, f, m, all_grams=True),
             "one row per index": lambda t, f, m: _update(t, f, m).T}
    for hint, answer in wrong.items():
        with pytest.raises(ExerciseError, match=hint):
            check.check_als_update(answer)


def test_the_als_update_converges_to_an_exact_cp_tensor():
    generator = torch.Generator().manual_seed(0)
    truth = [torch.randn(n, 2, generator=generator, dtype=torch.float64) for n in (4, 5, 6)]
    tensor = tl.cp_to_tensor((torch.ones(2, dtype=torch.float64), truth))
    factors = [torch.randn(n, 2, generator=generator, dtype=torch.float64) for n in (4, 5, 6)]
    for _ in range(200):
        for mode in range(3):
            factors[mode] = check.reference_als_update(tensor, factors, mode)
    approx = tl.cp_to_tensor((torch.ones(2, dtype=torch.float64), factors))
    assert (approx - tensor).norm() / tensor.norm() < 1e-6


def _chain(conv, core, out_factor, in_factor, stride_on_first=False, bias_first=False, transpose_in=True):
    first = nn.Conv2d(conv.in_channels, in_factor.shape[1], 1, bias=bias_first,
                      stride=conv.stride if stride_on_first else 1)
    middle = nn.Conv2d(in_factor.shape[1], out_factor.shape[1], conv.kernel_size, padding=conv.padding,
                       stride=1 if stride_on_first else conv.stride, bias=False)
    last = nn.Conv2d(out_factor.shape[1], conv.out_channels, 1, bias=not bias_first)
    with torch.no_grad():
        first.weight.copy_((in_factor.T if transpose_in else in_factor.reshape(in_factor.shape[::-1]))[:, :, None, None])
        middle.weight.copy_(core)
        last.weight.copy_(out_factor[:, :, None, None])
        if bias_first:
            first.bias.copy_(conv.bias[:first.out_channels])
        else:
            last.bias.copy_(conv.bias)
    return nn.Sequential(first, middle, last)


def test_tucker2_chain_checker():
    check.check_tucker2_chain(_chain)
    check.check_tucker2_chain(lambda conv, core, o, i: D.tucker2_conv(conv, (i.shape[1], o.shape[1])))
    wrong = {"belong to the k x k core only": lambda *a: _chain(*a, stride_on_first=True),
             "bias belongs to the last layer": lambda *a: _chain(*a, bias_first=True),
             "which factor goes where": lambda *a: _chain(*a, transpose_in=False),
             "the first 1x1 weight is its transpose": lambda conv, core, o, i: nn.Sequential(
                 nn.Conv2d(conv.in_channels, i.shape[1], 1), nn.Conv2d(i.shape[1], o.shape[1], 3),
                 nn.Conv2d(conv.out_channels, o.shape[1], 1))}
    for hint, answer in wrong.items():
        with pytest.raises(ExerciseError, match=hint):
            check.check_tucker2_chain(answer)


@pytest.mark.filterwarnings("ignore:.*torch.jit.script_method.*:DeprecationWarning")  # torch.compile's first import
def test_decomposed_cnn_checker_refuses_too_few_savings_and_compiled_models():
    from course_lib.models import load_reference
    cnn = load_reference("course_cnn")
    batch = torch.zeros(4, 1, 28, 28)
    light = D.decompose(cnn, D.uniform_plan(cnn, 0.9, ["features.3"]))
    with pytest.raises(ExerciseError, match="fewer multiply-adds"):
        check.check_decomposed_cnn(light, cnn, batch)
    with pytest.raises(ExerciseError, match="the decomposed network itself"):
        check.check_decomposed_cnn(torch.compile(light), cnn, batch)
    with pytest.raises(ExerciseError, match="nn.Module"):
        check.check_decomposed_cnn("model", cnn, batch)
