"""Decomposed layers compute what the decomposition says, count what the formulas say, and refuse bad input."""

import math

import pytest
import tensorly as tl
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from course_lib import decompose as D
from course_lib.models import build_model


def _trained_like(rows: int, cols: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(rows, 4, generator=generator) @ torch.randn(4, cols, generator=generator) + \
        0.01 * torch.randn(rows, cols, generator=generator)


@settings(max_examples=25, deadline=None)
@given(rows=st.integers(1, 12), cols=st.integers(1, 12), data=st.data())
def test_low_rank_factors_are_the_eckart_young_optimum(rows, cols, data):
    weight = torch.randn(rows, cols, generator=torch.Generator().manual_seed(rows * 13 + cols)).double()
    rank = data.draw(st.integers(1, min(rows, cols)))
    first, second = D.low_rank_factors(weight, rank)
    assert first.shape == (rank, cols) and second.shape == (rows, rank)
    s = torch.linalg.svdvals(weight)
    error = (weight - second @ first).norm() ** 2
    assert error.item() == pytest.approx((s[rank:] ** 2).sum().item(), abs=1e-9)  # the tail of the spectrum


@settings(max_examples=20, deadline=None)
@given(in_features=st.integers(1, 10), out_features=st.integers(1, 10), bias=st.booleans(), data=st.data())
def test_full_rank_svd_chain_reproduces_the_layer_and_counts_its_parameters(in_features, out_features, bias, data):
    torch.manual_seed(in_features * 10 + out_features)
    layer = nn.Linear(in_features, out_features, bias=bias)
    rank = data.draw(st.integers(1, min(in_features, out_features)))
    chain = D.svd_linear(layer, rank)
    assert sum(p.numel() for p in chain.parameters()) == D.svd_parameters(in_features, out_features, rank, bias)
    full = D.svd_linear(layer, min(in_features, out_features))
    x = torch.randn(5, in_features)
    assert torch.allclose(full(x), layer(x), atol=1e-5)


@settings(max_examples=15, deadline=None)
@given(c_in=st.integers(1, 6), c_out=st.integers(1, 6), k=st.sampled_from([1, 3]), stride=st.sampled_from([1, 2]),
       bias=st.booleans(), data=st.data())
def test_tucker2_chain_matches_its_kernel_and_the_parameter_formula(c_in, c_out, k, stride, bias, data):
    torch.manual_seed(c_in * 7 + c_out)
    conv = nn.Conv2d(c_in, c_out, k, stride=stride, padding=k // 2, bias=bias)
    r_in = data.draw(st.integers(1, min(c_in, c_out * k * k)))
    ranks = (r_in, data.draw(st.integers(max(1, -(-r_in // (k * k))), min(c_out, c_in * k * k, r_in * k * k))))
    chain = D.tucker2_conv(conv, ranks)
    assert sum(p.numel() for p in chain.parameters()) == D.tucker2_parameters(c_in, c_out, (k, k), *ranks, bias)
    core, out_factor, in_factor = D.tucker2_factors(conv.weight.detach(), ranks)
    kernel = tl.tenalg.multi_mode_dot(core, [out_factor, in_factor], modes=[0, 1])
    x = torch.randn(2, c_in, 7, 7)
    expected = nn.functional.conv2d(x, kernel, conv.bias, stride=stride, padding=k // 2)
    with torch.no_grad():
        assert torch.allclose(chain(x), expected, atol=1e-4)
        if ranks == (c_in, c_out):  # full rank (when the shapes allow it): the layer itself
            assert torch.allclose(D.tucker2_conv(conv, ranks)(x), conv(x), atol=1e-4)


def test_cp_chain_matches_its_kernel_and_the_parameter_formula():
    torch.manual_seed(3)
    conv = nn.Conv2d(6, 8, 3, stride=2, padding=1)
    chain = D.cp_conv(conv, 5)
    assert sum(p.numel() for p in chain.parameters()) == D.cp_parameters(6, 8, (3, 3), 5, bias=True)
    weights, factors = D.cp_factors(conv.weight.detach(), 5)
    kernel = tl.cp_to_tensor((weights, factors))
    x = torch.randn(2, 6, 9, 9)
    with torch.no_grad():
        assert torch.allclose(chain(x), nn.functional.conv2d(x, kernel, conv.bias, stride=2, padding=1), atol=1e-4)


def test_cp_of_an_exactly_low_rank_kernel_is_exact():
    generator = torch.Generator().manual_seed(0)
    factors = [torch.randn(n, 3, generator=generator) for n in (8, 6, 3, 3)]
    conv = nn.Conv2d(6, 8, 3, padding=1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(tl.cp_to_tensor((torch.ones(3), factors)))
    x = torch.randn(1, 6, 5, 5)
    with torch.no_grad():
        assert torch.allclose(D.cp_conv(conv, 3)(x), conv(x), atol=1e-3)


def test_whitened_svd_beats_plain_svd_on_the_inputs_it_was_whitened_for():
    torch.manual_seed(0)
    layer = nn.Linear(16, 12)
    scales = torch.logspace(1, -2, 16)  # a few input directions carry almost all the signal
    x = torch.randn(2000, 16) * scales
    covariance = x.T @ x / len(x)
    with torch.no_grad():
        plain = (D.svd_linear(layer, 3)(x) - layer(x)).norm()
        whitened = (D.whitened_svd_linear(layer, 3, covariance)(x) - layer(x)).norm()
        full = D.whitened_svd_linear(layer, 12, covariance, damping=0.0)(x)
    assert whitened < 0.5 * plain
    assert torch.allclose(full, layer(x), atol=1e-3)


def test_input_covariances_are_second_moments_of_the_inputs():
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    x = torch.randn(50, 3)
    covariances = D.input_covariances(model, ["0", "2"], lambda: model(x))
    assert torch.allclose(covariances["0"], x.T @ x / 50, atol=1e-5)
    hidden = torch.relu(model[0](x)).detach()
    assert torch.allclose(covariances["2"], hidden.T @ hidden / 50, atol=1e-5)
    with pytest.raises(ValueError, match="never called 2"):
        D.input_covariances(model, ["2"], lambda: None)


@pytest.mark.parametrize("singular_values,energy,rank", [([3.0, 4.0], 0.64, 1), ([4.0, 3.0], 0.65, 2),
                                                          ([1.0, 1.0, 1.0, 1.0], 0.5, 2), ([5.0, 0.0], 1.0, 1)])
def test_energy_rank(singular_values, energy, rank):
    assert D.energy_rank(torch.tensor(singular_values), energy) == rank


def test_decompose_save_and_reload_the_course_cnn(tmp_path):
    cnn = build_model("course_cnn").eval()
    plan = {"features.3": ("tucker2", (8, 12)), "features.10": ("cp", 9), "classifier.1": ("svd", 20)}
    decomposed = D.decompose(cnn, plan).eval()
    assert isinstance(cnn.features[3], nn.Conv2d), "the original model is left as it was"
    size = D.save_decomposed(decomposed, plan, tmp_path / "cnn.safetensors")
    assert size == (tmp_path / "cnn.safetensors").stat().st_size
    assert D.read_plan(tmp_path / "cnn.safetensors") == plan
    reloaded = D.load_decomposed(tmp_path / "cnn.safetensors", build_model("course_cnn"))
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(reloaded(x), decomposed(x))
    assert [p.name for p in tmp_path.iterdir()] == ["cnn.safetensors"], "no temporary file left behind"


def test_uniform_plan_and_allocation():
    cnn = build_model("course_cnn")
    plan = D.uniform_plan(cnn, 0.5, ["features.3", "features.17"], {"classifier.1": 32})
    assert plan == {"features.3": ("tucker2", (16, 16)), "features.17": ("tucker2", (64, 64)),
                    "classifier.1": ("svd", 32)}
    choice = D.allocate({"a": [1, 2, 3], "b": [1, 2, 3]}, {"a": [5, 1, 0], "b": [3, 2, 0]}, budget=4)
    assert choice == {"a": 1, "b": 1}  # loss 1 + 2 at cost 4; (2, 0) ties and comes later
    with pytest.raises(ValueError, match="cheapest options cost 2"):
        D.allocate({"a": [1, 2], "b": [1, 2]}, {"a": [0, 0], "b": [0, 0]}, budget=1)


def test_low_rank_plus_sparse_beats_either_alone_at_the_same_count():
    generator = torch.Generator().manual_seed(1)
    low = torch.randn(40, 3, generator=generator) @ torch.randn(3, 30, generator=generator)
    spikes = torch.zeros(1200)
    spikes[torch.randperm(1200, generator=generator)[:60]] = 10.0
    weight = low + spikes.view(40, 30)
    low_rank, sparse = D.low_rank_plus_sparse(weight, 3, 60)
    assert int((sparse != 0).sum()) <= 60
    both = (weight - low_rank - sparse).norm() / weight.norm()
    first, second = D.low_rank_factors(weight, 3 + math.ceil(60 / 70))
    assert both < 0.05 < ((weight - second @ first).norm() / weight.norm())


def test_bad_input_names_the_layer_and_the_limit():
    cnn = build_model("course_cnn")
    with pytest.raises(ValueError, match=r"features.3: r_in must be an integer from 1 to 32"):
        D.decompose(cnn, {"features.3": ("tucker2", (33, 8))})
    with pytest.raises(ValueError, match=r"classifier.1: the rank must be an integer from 1 to 256.*got 0"):
        D.decompose(cnn, {"classifier.1": ("svd", 0)})
    with pytest.raises(TypeError, match="features.4 is a BatchNorm2d"):
        D.decompose(cnn, {"features.4": ("svd", 3)})
    with pytest.raises(TypeError, match="classifier.1 is a Linear: Tucker-2 and CP decompose Conv2d"):
        D.decompose(cnn, {"classifier.1": ("tucker2", (3, 3))})
    with pytest.raises(ValueError, match="no layer 'features.99'"):
        D.decompose(cnn, {"features.99": ("svd", 3)})
    with pytest.raises(ValueError, match="method one of svd, tucker2, cp"):
        D.decompose(cnn, {"features.3": ("tt", 3)})
    with pytest.raises(ValueError, match=r"ranks \(8, 1\) do not fit a 1x1 core"):
        D.tucker2_conv(nn.Conv2d(8, 8, 1), (8, 1))
    with pytest.raises(ValueError, match="Tucker-2 needs two ranks"):
        D.decompose(cnn, {"features.3": ("tucker2", 3)})
    with pytest.raises(TypeError, match="grouped convolution"):
        D.tucker2_conv(nn.Conv2d(4, 4, 3, groups=2), (2, 2))
    broken = nn.Linear(4, 4)
    with torch.no_grad():
        broken.weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match="fc: the weight holds NaN"):
        D.svd_linear(broken, 2, "fc")
    with pytest.raises(ValueError, match="covariance must be 4 x 4"):
        D.whitened_svd_linear(nn.Linear(4, 3), 2, torch.eye(3))
    with pytest.raises(ValueError, match="energy must be a fraction"):
        D.energy_rank(torch.ones(3), 0.0)
    with pytest.raises(ValueError, match="the CP rank must be an integer from 1 to 36"):
        D.cp_conv(nn.Conv2d(8, 4, 3), 37)


def test_a_file_without_a_plan_is_refused(tmp_path):
    from safetensors.torch import save_file
    save_file({"w": torch.zeros(1)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(ValueError, match="holds no decomposition plan"):
        D.load_decomposed(tmp_path / "plain.safetensors", build_model("course_cnn"))
