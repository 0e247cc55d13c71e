"""course_lib.prune: masks, schedules, saliency, structured removal that really shrinks, sparse storage."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from course_lib import prune as P
from course_lib.models import build_model


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5, True, "0.5"])
def test_sparsity_outside_0_1_is_refused(bad):
    with pytest.raises(ValueError, match=r"sparsity must be a fraction in \[0, 1\)"):
        P.magnitude_masks(build_model("lenet_300_100"), bad)


def test_unsupported_layers_and_names_get_clear_errors():
    with pytest.raises(TypeError, match="only Linear and Conv2d"):
        P.prunable_layers(build_model("course_cnn"), ["features.1"])
    with pytest.raises(ValueError, match="no layer 'fc9'"):
        P.prunable_layers(build_model("lenet_300_100"), ["fc9"])
    with pytest.raises(ValueError, match="no Linear or Conv2d"):
        P.prunable_layers(nn.Sequential(nn.ReLU()))


@settings(max_examples=30, deadline=None)
@given(sparsity=st.floats(0.0, 0.99), scope=st.sampled_from(["global", "layer"]))
def test_magnitude_masks_remove_the_requested_fraction_of_smallest_weights(sparsity, scope):
    torch.manual_seed(0)
    model = build_model("lenet_300_100")
    masks = P.magnitude_masks(model, sparsity, scope)
    removed = sum(int((m == 0).sum()) for m in masks.values()) / sum(m.numel() for m in masks.values())
    assert abs(removed - sparsity) < 1e-3
    kept_min = min(model.get_submodule(n).weight.abs()[m == 1].min() for n, m in masks.items() if m.any())
    if scope == "global" and any((m == 0).any() for m in masks.values()):
        dropped_max = max(model.get_submodule(n).weight.abs()[m == 0].max() for n, m in masks.items()
                          if (m == 0).any())
        assert dropped_max <= kept_min


def test_masks_survive_training_and_become_permanent():
    model = build_model("lenet_300_100")
    P.apply_masks(model, P.magnitude_masks(model, 0.8))
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    nn.functional.cross_entropy(model(torch.randn(8, 1, 28, 28)), torch.randint(0, 10, (8,))).backward()
    opt.step()
    assert abs(P.sparsity_of(model) - 0.8) < 1e-3
    P.make_permanent(model)
    assert type(model.fc1.weight) is nn.Parameter and abs(P.sparsity_of(model) - 0.8) < 1e-3


def test_cubic_schedule():
    assert P.cubic_schedule(0, 10, 0.9) == 0.0 and P.cubic_schedule(10, 10, 0.9) == pytest.approx(0.9)
    values = [P.cubic_schedule(t, 10, 0.9) for t in range(11)]
    steps = [b - a for a, b in zip(values, values[1:])]
    assert all(s > 0 for s in steps) and steps == sorted(steps, reverse=True), "fast first, then slow"
    with pytest.raises(ValueError, match="step"):
        P.cubic_schedule(11, 10, 0.9)


@pytest.mark.parametrize("granularity,group_shape", [("filter", (1, 4, 3, 3)), ("kernel", (1, 1, 3, 3)),
                                                    ("vector", (1, 1, 1, 3))])
def test_structured_masks_remove_whole_groups(granularity, group_shape):
    conv = nn.Conv2d(4, 8, 3)
    model = nn.Sequential(conv)
    mask = P.structured_masks(model, 0.5, granularity)["0"]
    blocks = mask.reshape(8 // group_shape[0], group_shape[0], 4 // group_shape[1], group_shape[1],
                            3 // group_shape[2], group_shape[2], 3 // group_shape[3], group_shape[3])
    per_group = blocks.amin(dim=(1, 3, 5, 7)) == blocks.amax(dim=(1, 3, 5, 7))
    assert bool(per_group.all()) and abs(float((mask == 0).float().mean()) - 0.5) < 0.2
    with pytest.raises(ValueError, match="kernel granularity needs a convolution"):
        P.structured_masks(nn.Sequential(nn.Linear(4, 4)), 0.5, "kernel")


def test_hutchinson_estimates_a_known_hessian_diagonal():
    layer = nn.Linear(3, 1, bias=False)
    x = torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 3.0]])
    # loss = mean over the batch of (w.x)^2 / 2: its Hessian is x^T x / 3 = diag(1, 4, 9) / 3
    diagonal = P.hutchinson_hessian_diagonal(nn.Sequential(layer), lambda out, _: out.pow(2).mean() / 2,
                                             [(x, None)], samples=4)["0"]
    assert torch.allclose(diagonal, torch.tensor([[1.0, 4.0, 9.0]]) / 3, atol=1e-5)
    saliency = P.obd_saliency(nn.Sequential(layer), {"0": diagonal})["0"]
    assert torch.allclose(saliency, 0.5 * diagonal * layer.weight.detach() ** 2)
    with pytest.raises(ValueError, match="no batch"):
        P.hutchinson_hessian_diagonal(nn.Sequential(layer), lambda o, _: o.sum(), [])


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 3), min_size=1, max_size=40), st.lists(st.integers(0, 3), min_size=1, max_size=40),
       st.floats(0.0, 0.99))
def test_global_masks_remove_exactly_the_requested_count_even_with_ties(first, second, sparsity):
    scores = {"a": torch.tensor(first, dtype=torch.float32), "b": torch.tensor(second, dtype=torch.float32)}
    masks = P.masks_from_scores(scores, sparsity)
    removed = sum(int((m == 0).sum()) for m in masks.values())
    assert removed == round(sparsity * (len(first) + len(second)))
    kept = torch.cat([s[m == 1] for s, m in zip(scores.values(), masks.values())])
    dropped = torch.cat([s[m == 0] for s, m in zip(scores.values(), masks.values())])
    assert not len(kept) or not len(dropped) or dropped.max() <= kept.min(), "only the lowest scores go"


def test_gauss_newton_diagonal_is_the_exact_hessian_diagonal_of_a_relu_network():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 4))
    x, y = torch.randn(12, 5), torch.randint(0, 4, (12,))
    batches = [(x[:6], y[:6]), (x[6:], y[6:])]
    diagonal = P.gauss_newton_diagonal(model, batches)
    for name, index in (("0", 0), ("2", 2)):
        weight = model[index].weight

        def loss_of(w, index=index, weight=weight):
            params = {f"{index}.weight": w}
            return nn.functional.cross_entropy(torch.func.functional_call(model, params, (x,)), y)

        exact = torch.autograd.functional.hessian(loss_of, weight.detach()).reshape(weight.numel(), -1).diagonal()
        assert torch.allclose(diagonal[name].flatten(), exact, atol=1e-6), name
    assert all(bool((d >= 0).all()) for d in diagonal.values()), "a Gauss–Newton diagonal is never negative"
    with pytest.raises(TypeError, match="Linear layers only"):
        P.gauss_newton_diagonal(nn.Sequential(nn.Conv2d(1, 2, 3)), batches)
    with pytest.raises(ValueError, match="no batch"):
        P.gauss_newton_diagonal(model, [])


def test_removing_a_channel_whose_output_is_zero_leaves_the_network_unchanged():
    torch.manual_seed(0)
    model = build_model("course_cnn").eval()
    bn = model.features[1]
    with torch.no_grad():  # make channel 5 of the first block output exactly zero after batch norm and ReLU
        bn.weight[5], bn.bias[5] = 0.0, -1.0
    keep = {"features.0": torch.tensor([c for c in range(32) if c != 5])}
    smaller = P.remove_filters(model, keep)
    assert not any(m.training for m in smaller.modules()), "rebuilt layers keep the model's eval mode"
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        assert torch.allclose(model(x), smaller(x), atol=1e-5)
    assert smaller.features[0].out_channels == 31 and smaller.features[3].in_channels == 31


def test_removing_filters_of_the_last_conv_shrinks_the_classifier_and_keeps_kept_channels():
    model = build_model("course_cnn").eval()
    kept = torch.arange(0, 128, 2)
    smaller = P.remove_filters(model, {"features.17": kept}).eval()
    assert smaller.classifier[1].in_features == 64 * 9
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.allclose(model.features(x)[:, kept], smaller.features(x), atol=1e-5)
    with pytest.raises(ValueError, match="cannot remove every channel"):
        P.remove_filters(model, {"features.0": []})
    with pytest.raises(ValueError, match="not convolutions"):
        P.remove_filters(model, {"features.1": [0]})


def test_sparse_file_roundtrips_and_counts_its_indices(tmp_path):
    model = build_model("lenet_300_100")
    P.apply_masks(model, P.magnitude_masks(model, 0.9))
    size = P.save_sparse(model, tmp_path / "sparse.safetensors", formats=("csr",))
    weights = sum(m.weight.numel() for m in P.prunable_layers(model).values())
    kept = int(weights * 0.1)
    assert kept * (4 + 2) < size < kept * (4 + 2) + 16_000  # values + uint16 columns, plus rows, biases, header
    reloaded = P.load_sparse(tmp_path / "sparse.safetensors", build_model("lenet_300_100"))
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(reloaded(x), model(x))


@pytest.mark.parametrize("sparsity,expected", [(0.0, "dense"), (0.5, "bitmask"), (0.99, "csr")])
def test_each_weight_is_stored_in_its_smallest_format_and_reloads_exactly(tmp_path, sparsity, expected):
    model = build_model("lenet_300_100")
    if sparsity:
        P.apply_masks(model, P.magnitude_masks(model, sparsity, "layer"))
    path = tmp_path / "model.safetensors"
    size = P.save_sparse(model, path)
    assert set(P.stored_formats(path).values()) == {expected}
    for layer in P.prunable_layers(model).values():
        sizes = P.sparse_format_bytes(layer.weight)
        assert sizes[expected] == min(sizes.values())
    reloaded = P.load_sparse(path, build_model("lenet_300_100"))
    for name, layer in P.prunable_layers(model).items():
        assert torch.equal(reloaded.get_submodule(name).weight, layer.weight.detach())
    assert size <= P.save_sparse(model, tmp_path / "csr.safetensors", formats=("csr",))
    with pytest.raises(ValueError, match="formats must be chosen from"):
        P.save_sparse(model, tmp_path / "x.safetensors", formats=("coo",))


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 40), st.integers(1, 40), st.floats(0.0, 1.0))
def test_format_byte_counts_match_their_definitions(rows, columns, density):
    generator = torch.Generator().manual_seed(rows * 41 + columns)
    kept_positions = torch.rand(rows, columns, generator=generator) < density
    weight = torch.randn(rows, columns, generator=generator) * kept_positions
    kept = int(weight.count_nonzero())
    sizes = P.sparse_format_bytes(weight)
    assert sizes == {"dense": 4 * rows * columns, "csr": 6 * kept + 4 * (rows + 1),
                     "bitmask": -(-rows * columns // 8) + 4 * kept}
    assert torch.equal(P._unpack_bits(P._pack_bits(weight != 0), weight.numel()), (weight != 0).flatten())


def test_l1_filter_selection_keeps_the_largest_filters():
    model = build_model("course_cnn")
    selection = P.l1_filter_selection(model, 0.25)
    assert len(selection["features.0"]) == 8 and len(selection["features.17"]) == 32
    norms = P.filter_l1_norms(model.features[0])
    assert norms[selection["features.0"]].min() >= norms.sort(descending=True).values[7]
    with pytest.raises(ValueError, match="keep_fraction"):
        P.l1_filter_selection(model, 0.0)


def test_gradual_prune_follows_the_cubic_schedule_step_by_step(monkeypatch):
    model = build_model("lenet_300_100")
    seen = []
    original_apply = P.apply_masks
    monkeypatch.setattr(P, "apply_masks", lambda m, masks: seen.append(P.sparsity_of(original_apply(m, masks))))
    used = P.gradual_prune(model, 0.8, epochs=3, pruning_epochs=2, every_steps=2, lr=0.01, steps_per_epoch=4,
                           progress=False)
    monkeypatch.undo()
    assert seen == pytest.approx([P.cubic_schedule(s, 8, 0.8) for s in (2, 4, 6, 8)], abs=1e-4)
    assert used == pytest.approx([P.cubic_schedule(4, 8, 0.8), 0.8, 0.8], abs=1e-4)
    assert abs(P.sparsity_of(model) - 0.8) < 1e-3
    with pytest.raises(ValueError, match="pruning_epochs"):
        P.gradual_prune(model, 0.8, epochs=2, pruning_epochs=3)
    with pytest.raises(ValueError, match="every_steps"):
        P.gradual_prune(model, 0.8, epochs=2, pruning_epochs=1, every_steps=0)


def test_new_masks_replace_old_ones_in_place_so_an_optimiser_keeps_training_the_layer():
    model = build_model("lenet_300_100")
    P.apply_masks(model, P.magnitude_masks(model, 0.5))
    parameter = model.fc1.weight_orig
    optimiser = torch.optim.SGD(model.parameters(), lr=0.1)
    P.apply_masks(model, P.magnitude_masks(model, 0.7))
    assert model.fc1.weight_orig is parameter and P.sparsity_of(model) == pytest.approx(0.7, abs=1e-4)
    before = model.fc1.weight.detach().clone()
    model(torch.randn(8, 1, 28, 28)).sum().backward()
    optimiser.step()
    after = P._weight(model.fc1)
    assert not torch.equal(before, after), "the optimiser still updates the layer after its mask changed"
    assert bool((after[model.fc1.weight_mask == 0] == 0).all()), "pruned weights stay zero"


def test_gradual_prune_reaches_each_layers_own_target():
    model = build_model("lenet_300_100")
    targets = {"fc1": 0.9, "fc2": 0.5, "fc3": 0.0}
    P.gradual_prune(model, targets, epochs=2, pruning_epochs=2, lr=0.01, steps_per_epoch=2, progress=False)
    for name, target in targets.items():
        assert P.sparsity_of(model, [name]) == pytest.approx(target, abs=1e-3)


def test_layer_sensitivity_prunes_one_layer_at_a_time():
    from course_lib.data import Dataset, load_fashion_mnist
    from course_lib.train import evaluate

    model = build_model("lenet_300_100")
    full = load_fashion_mnist("test")
    small = Dataset(full.images[:200], full.labels[:200])
    curves = P.layer_sensitivity(model, [0.0, 0.99], dataset=small)
    assert set(curves) == {"fc1", "fc2", "fc3"}
    assert all(curve[0] == pytest.approx(evaluate(model, small)) for curve in curves.values())
    assert P.sparsity_of(model) == 0.0, "the model itself is left untouched"


def test_allocate_sparsities_prunes_robust_layers_more_and_hits_the_target():
    sparsities = [0.0, 0.5, 0.9, 0.99]
    curves = {"robust": [0.9, 0.9, 0.9, 0.85], "fragile": [0.9, 0.85, 0.5, 0.1]}
    sizes = {"robust": 900, "fragile": 100}
    chosen = P.allocate_sparsities(sparsities, curves, sizes, baseline=0.9, target=0.9)
    overall = (chosen["robust"] * 900 + chosen["fragile"] * 100) / 1000
    assert chosen["robust"] > chosen["fragile"] and 0.9 <= overall < 0.905
    with pytest.raises(ValueError, match="cannot remove 0.995"):
        P.allocate_sparsities(sparsities, curves, sizes, baseline=0.9, target=0.995)


def test_remove_conv_block_drops_a_shape_preserving_layer_only():
    model = build_model("course_cnn").eval()
    smaller = P.remove_conv_block(model, "features.17").eval()
    assert count_convs(smaller) == 5 and smaller(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    with pytest.raises(ValueError, match=r"changes the shape \(64 → 128 channels, stride \(1, 1\)\)"):
        P.remove_conv_block(model, "features.14")
    with pytest.raises(ValueError, match="not a convolution"):
        P.remove_conv_block(model, "features.1")


def count_convs(model):
    return sum(isinstance(m, nn.Conv2d) for m in model.modules())


def test_filter_pruned_file_reloads_into_the_right_shapes(tmp_path):
    from course_lib.measure import save_state_dict

    model = build_model("course_cnn").eval()
    smaller = P.remove_filters(model, P.l1_filter_selection(model, 0.5)).eval()
    save_state_dict(smaller, tmp_path / "small.safetensors")
    reloaded = P.load_filter_pruned(tmp_path / "small.safetensors", build_model("course_cnn"))
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(reloaded(x), smaller(x))
    assert reloaded.features[17].out_channels == 64


def test_initial_model_is_the_reference_recipes_starting_point():
    from course_lib.train_reference import initial_model

    first, again, other = (initial_model("lenet_300_100", s) for s in (0, 0, 1))
    assert torch.equal(first.fc1.weight, again.fc1.weight) and not torch.equal(first.fc1.weight, other.fc1.weight)
