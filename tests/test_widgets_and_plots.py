import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from course_lib.data import FASHION_MNIST_CLASSES  # noqa: E402
from course_lib import plots  # noqa: E402
from course_lib.plots import bar_panels, show_images, use_course_style  # noqa: E402
from course_lib.widgets import draw_prediction, prediction_browser  # noqa: E402

IMAGES = torch.randint(0, 255, (5, 28, 28), dtype=torch.uint8)
LABELS = torch.tensor([0, 1, 2, 3, 4])
PROBS = torch.nn.functional.one_hot(torch.tensor([0, 1, 9, 3, 9]), 10).float()


def test_draw_prediction_shows_image_probabilities_and_verdict():
    fig = plt.figure()
    draw_prediction(fig, IMAGES[2], 2, PROBS[2], "cnn")
    image_ax, probs_ax = fig.axes
    assert image_ax.get_title() == f"true: {FASHION_MNIST_CLASSES[2]}"
    assert "Ankle boot (100%, wrong)" in probs_ax.get_title()
    assert probs_ax.get_xlabel() == "probability"
    plt.close(fig)


def test_browser_follows_slider_and_jumps_to_mistakes():
    box = prediction_browser(IMAGES, LABELS, PROBS, "cnn")
    slider, button = box.children[0].children
    assert slider.max == 4
    button.click()
    assert slider.value == 2, "the first mistake is image 2"
    button.click()
    assert slider.value == 4
    button.click()
    assert slider.value == 2, "wraps around to the first mistake"


def test_browser_rejects_mismatched_lengths():
    with pytest.raises(ValueError, match="same length"):
        prediction_browser(IMAGES, LABELS[:3], PROBS)


def test_plots_have_labelled_axes():
    use_course_style()
    fig = bar_panels(["a", "b"], [("size (MB)", [1.0, 2.0], ".1f"), ("latency (ms)", [3.0, 4.0], ".1f")])
    assert [ax.get_xlabel() for ax in fig.axes] == ["size (MB)", "latency (ms)"]
    fig = show_images(IMAGES, LABELS.tolist(), predictions=[0, 1, 9, 3, 4], columns=3)
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert len(titles) == 5 and titles[2].startswith("Ankle boot")
    plt.close("all")


def test_log_panels_say_so_on_the_axis():
    fig = bar_panels(["a", "b"], [("size (MB)", [0.01, 100.0], ".2f")], log=True)
    assert fig.axes[0].get_xscale() == "log" and fig.axes[0].get_xlabel() == "size (MB), log scale"
    plt.close("all")


def _explorer_inputs():
    from course_lib.dataflow import Machine, layer_profile
    from course_lib.models import build_model

    machine = Machine("cpu", matmul_gflops=100.0, conv_gflops=300.0, bandwidth_gbs=20.0, call_overhead_us=5.0)
    profiles = {name: layer_profile(build_model(name), torch.zeros(1, 1, 28, 28))
                for name in ("lenet_300_100", "course_cnn")}
    return machine, profiles


def test_describe_layer_says_memory_or_compute_bound():
    from course_lib.widgets import describe_layer

    machine, profiles = _explorer_inputs()
    fc1 = profiles["lenet_300_100"][0]
    assert "memory-bound" in describe_layer(fc1, machine)
    assert "compute-bound" in describe_layer(fc1.at_batch(256), machine)
    assert "942,000 bytes of weights" in describe_layer(fc1, machine) and "ridge of BLAS 5.00" in describe_layer(fc1, machine)
    assert "overhead-bound" in describe_layer(profiles["lenet_300_100"][2], machine)
    conv = next(l for l in profiles["course_cnn"] if l.name == "features.3")
    assert "ridge of oneDNN 15.00" in describe_layer(conv, machine)
    relu = next(l for l in profiles["course_cnn"] if l.name == "features.2")
    assert "no MACs" in describe_layer(relu.at_batch(256), machine) and "memory-bound" in describe_layer(relu.at_batch(256), machine)


def test_roofline_explorer_follows_its_controls():
    from course_lib.widgets import roofline_explorer

    machine, profiles = _explorer_inputs()
    box = roofline_explorer(profiles, machine)
    (model, layer), batch, text, _ = box.children[0].children, box.children[1], box.children[2], box.children[3]
    assert layer.options == ("fc1", "fc2", "fc3")
    batch.value = 64
    assert "batch 64" in text.value and "fc1" in text.value
    model.value = "course_cnn"
    assert "features.0" in layer.options and "features.1" in layer.options, "element-wise layers move bytes too"
    layer.value = "features.2"
    assert "features.2 (ReLU), batch 64" in text.value and "no MACs" in text.value
    layer.value = "features.3"
    assert "features.3 (Conv2d), batch 64" in text.value
    plt.close("all")


def test_draw_roofline_labels_axes():
    from course_lib.plots import draw_roofline

    fig, ax = plt.subplots()
    roofs = {"BLAS": 100.0, "oneDNN": 300.0}
    draw_roofline(ax, roofs, 20.0, [("a", 0.5, 8.0, "BLAS"), ("b", 50.0, 90.0, "oneDNN")], highlight="b",
                  int8_gops=400.0)
    assert ax.get_xscale() == "log" and "FLOPs per byte" in ax.get_xlabel() and "GFLOP/s" in ax.get_ylabel()
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert len(legend) == 4 and "BLAS: 100 GFLOP/s" in legend[0] and "oneDNN: 300 GFLOP/s" in legend[1]
    assert "20 GB/s" in legend[3]
    with pytest.raises(ValueError, match="not drawn"):
        draw_roofline(ax, {"BLAS": 100.0}, 20.0, [("c", 1.0, 1.0, "cuDNN")])
    with pytest.raises(ValueError, match="at least one roof"):
        draw_roofline(ax, {}, 20.0)
    plt.close(fig)


def test_quantization_explorer_follows_its_controls():
    from course_lib.models import build_model
    from course_lib.sweeps import load_results
    from course_lib.widgets import quantization_explorer

    results = load_results("quantization")
    box = quantization_explorer(build_model("course_cnn"), results)
    (layer, channel), (bits, method) = box.children[0].children, box.children[1].children
    granularity, text = box.children[2], box.children[3]
    assert "4-bit per-tensor (minmax)" in text.value and f"{results['accuracy']['4-bit/tensor/minmax']:.2%}" in text.value
    granularity.value = "channel"
    method.value = "mse"
    assert f"{results['accuracy']['4-bit/channel/mse']:.2%}" in text.value
    bits.value = 1
    assert f"{results['accuracy']['1-bit/channel/mean-abs']:.2%}" in text.value
    layer.value = "classifier.4"
    assert channel.max == 9
    plt.close("all")


def test_draw_quantized_weights_shows_the_grid_and_the_error():
    from course_lib.widgets import draw_quantized_weights

    fig = plt.figure()
    weight = torch.randn(4, 50) * torch.tensor([[1.0], [0.01], [1.0], [1.0]])
    summary = draw_quantized_weights(fig, weight, 3, per_channel=False, method="minmax", channel=1)
    assert "relative RMS 100.0%" in summary, "per-tensor at 3 bits rounds the small channel to zero"
    assert "per-channel" in draw_quantized_weights(fig, weight, 3, per_channel=True, method="minmax", channel=1)
    assert fig.axes[0].get_xlabel() == "weight value" and len(fig.axes[0].lines) <= 7
    plt.close(fig)


def test_pruning_explorer_follows_its_controls():
    from course_lib.models import build_model
    from course_lib.sweeps import load_results
    from course_lib.widgets import pruning_explorer

    results = load_results("pruning")["course_cnn"]
    box = pruning_explorer(build_model("course_cnn"), results)
    (layer, sparsity), granularity, text = box.children[0].children, box.children[1], box.children[2]
    index = results["sparsities"].index(0.5)
    assert f"{results['granularity_sweep']['connection'][index]:.2%}" in text.value
    granularity.value = "filter"
    sparsity.value = 0.8
    assert f"{results['granularity_sweep']['filter'][results['sparsities'].index(0.8)]:.2%}" in text.value
    layer.value = "features.17"  # the accuracy is the whole model's: a different layer's mask, the same number
    assert "filter level to 80%" in text.value
    plt.close("all")


@pytest.mark.parametrize("granularity", ["connection", "vector", "kernel", "filter"])
def test_draw_pruning_mask_removes_the_requested_fraction_in_whole_groups(granularity):
    from course_lib.models import build_model
    from course_lib.widgets import draw_pruning_mask

    fig = plt.figure()
    removed = draw_pruning_mask(fig, build_model("course_cnn"), "features.3", granularity, 0.5)
    assert abs(removed - 0.5) < 0.05
    image = fig.axes[0].images[0].get_array()
    assert image.shape == (32 * 3, 32 * 3) and set(image.flatten().tolist()) <= {0.0, 1.0}
    if granularity == "filter":
        assert all(len(set(row.tolist())) == 1 for row in image.reshape(32, -1)), "a filter is one band of rows"
    plt.close(fig)


def test_sharing_explorer_follows_its_controls():
    from course_lib.models import load_reference
    from course_lib.sweeps import load_results
    from course_lib.widgets import sharing_explorer

    results = load_results("sharing")["lenet_300_100"]
    box = sharing_explorer(load_reference("lenet_300_100"), results)
    (layer, clusters), text = box.children[0].children, box.children[1]
    layer.value, clusters.value = "fc3", 4
    assert f"{results['clusters_per_layer']['fc3/4']:.2%}" in text.value and "2-bit indices" in text.value
    plt.close("all")


def test_draw_shared_weights_marks_every_centroid_and_measures_the_error():
    from course_lib.widgets import draw_shared_weights

    fig = plt.figure()
    weight = torch.tensor([[-1.0, -0.9, 0.0], [0.1, 1.0, 1.1]])
    error = draw_shared_weights(fig, weight, torch.tensor([1.05, -0.95, 0.05]))
    expected = float((torch.full((6,), 0.05) ** 2).mean() / weight.var())
    assert error == pytest.approx(expected, rel=1e-5), "each weight takes its nearest shared value"
    ax = fig.axes[0]
    assert len(ax.lines) == 3 and ax.get_xlabel() == "weight value" and "3 shared values" in ax.get_title()
    plt.close(fig)


def test_profile_bars_show_element_wise_layers_as_traffic():
    from course_lib.dataflow import layer_profile
    from course_lib.models import build_model
    from course_lib.plots import profile_bars

    profile = layer_profile(build_model("course_cnn"), torch.zeros(1, 1, 28, 28))
    fig = profile_bars(profile)
    names = [label.get_text() for label in fig.axes[0].get_yticklabels()]
    assert "features.1" in names and "features.3" in names and len(names) == len(profile)
    plt.close(fig)


def test_distillation_explorer_follows_its_controls(monkeypatch):
    from course_lib import widgets as W

    results = {"grid": {f"T={t:g}/alpha={a:g}": 0.9 + t / 1000 + a / 100 for t in (1.0, 2.0, 4.0, 8.0, 20.0)
                        for a in (0.5, 0.9, 1.0)},
               "seeds": {"alone": {"0": 0.91}}, "teacher_accuracy": 0.95}
    images, labels = torch.zeros(3, 1, 28, 28), torch.tensor([0, 6, 2])
    logits = torch.tensor([[5.0, 0, 1, 0, 0, 0, 3, 0, 0, 0]] * 3)
    box = W.distillation_explorer(images, labels, logits, results)
    (index, temperature, alpha), text = box.children[0].children, box.children[1]
    assert "T = 4, alpha = 0.9" in text.value and "91.30%" in text.value
    temperature.value, alpha.value = 20.0, 1.0
    assert "T = 20, alpha = 1" in text.value and "93.00%" in text.value
    index.value = 1
    with pytest.raises(ValueError, match="same length"):
        W.distillation_explorer(images, labels[:2], logits, results)
    plt.close("all")


def test_decomposition_explorer_follows_its_controls():
    from course_lib import widgets as W
    from course_lib.models import load_reference
    from course_lib.sweeps import load_results

    results = load_results("decomposition")["course_cnn"]
    cnn = load_reference("course_cnn")
    box = W.decomposition_explorer(cnn, results)
    text = box.children[2]
    before = text.value
    box.children[0].children[0].value = 0.125
    assert text.value != before and "fewer" in text.value
    full = W.summarize_rank_choice(cnn, results, {n: 1.0 for n in results["layers"]}, 256)
    assert all(layer["error"] < 1e-4 for layer in full["layers"].values()), "full rank is exact"
    light = W.summarize_rank_choice(cnn, results, {n: 0.25 for n in results["layers"]}, 64)
    assert light["macs"] < full["macs"] and light["parameters"] < full["parameters"] < results["parameters"] * 1.5
    assert light["estimated_accuracy"] < results["baseline_accuracy"]
    with pytest.raises(ValueError, match="the cache holds the rank fractions"):
        W.summarize_rank_choice(cnn, results, {"features.3": 0.3}, 64)


def test_memory_explorer_follows_its_controls():
    from course_lib import widgets as W
    from course_lib.sweeps import load_results

    grid = load_results("memory")["checkpointing"]
    box = W.memory_explorer(grid)
    text = box.children[2]
    before = text.value
    box.children[0].children[1].value = grid["segments"][-1]
    assert text.value != before and "measured" in text.value
    plain = W.summarize_memory_choice(grid, 64, 1, "float32")
    assert plain["starts"] == [] and plain["measured_peak"] == plain["plain_float32_peak"]
    assert 0.7 < plain["predicted_peak"] / plain["measured_peak"] < 1.3, "on paper is close for a plain step"
    assert plain["predicted_ms"] == plain["measured_ms"], "no recomputation, no extra time"
    split = W.summarize_memory_choice(grid, 64, 4, "float32")
    assert split["activations"] < plain["activations"] and split["predicted_ms"] > plain["predicted_ms"]
    half = W.summarize_memory_choice(grid, 64, 1, "bfloat16")
    assert half["activations"] < plain["activations"] and half["weights"] == plain["weights"]
    bigger = W.summarize_memory_choice(grid, 256, 1, "float32")
    assert bigger["activations"] == pytest.approx(4 * plain["activations"], rel=0.01)
    with pytest.raises(ValueError, match="the cache holds batch sizes"):
        W.summarize_memory_choice(grid, 100, 1, "float32")


# Machado, Oliveira & Fernandes (2009) simulation matrices (severity 1) in linear RGB.
_COLOUR_BLINDNESS = {
    "protanopia": [[0.152286, 1.052583, -0.204868], [0.114503, 0.786281, 0.099216], [-0.003882, -0.048116, 1.051998]],
    "deuteranopia": [[0.367322, 0.860646, -0.227968], [0.280085, 0.672501, 0.047413], [-0.011820, 0.042940, 0.968881]],
    "tritanopia": [[1.255528, -0.076749, -0.178779], [-0.078411, 0.930809, 0.147602], [0.004733, 0.691367, 0.303900]],
}


def _lab_as_seen(hex_colour, matrix):
    import numpy as np

    srgb = np.array([int(hex_colour[i:i + 2], 16) / 255 for i in (1, 3, 5)])
    linear = np.where(srgb <= 0.04045, srgb / 12.92, ((srgb + 0.055) / 1.055) ** 2.4)
    xyz = np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]]) @ np.clip(
        np.array(matrix) @ linear, 0, 1) / np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > 0.008856, np.cbrt(xyz), 7.787 * xyz + 16 / 116)
    return np.array([116 * f[1] - 16, 500 * (f[0] - f[1]), 200 * (f[1] - f[2])])


def _closest_pair_as_seen(palette, matrix):
    import itertools

    import numpy as np

    seen = [_lab_as_seen(c, matrix) for c in palette]
    return min(float(np.linalg.norm(a - b)) for a, b in itertools.combinations(seen, 2))


@pytest.mark.parametrize("deficiency", sorted(_COLOUR_BLINDNESS))
def test_palette_stays_distinguishable_with_colour_blindness(deficiency):
    """Every two palette colours stay at least 15 CIELAB units apart as a protanope, deuteranope or tritanope
    sees them (the course's first palette had a red and a green 8.7 apart for deuteranopes)."""
    matrix = _COLOUR_BLINDNESS[deficiency]
    assert _closest_pair_as_seen(plots.PALETTE, matrix) >= 15
    assert _closest_pair_as_seen(("#1f5f8b", "#e07a24", "#3a9d5d", "#c0392b", "#7d5ba6", "#8c6d3f"),
                                 _COLOUR_BLINDNESS["deuteranopia"]) < 15


def test_line_series_differ_by_style_as_well_as_colour():
    use_course_style()
    cycle = matplotlib.rcParams["axes.prop_cycle"].by_key()
    assert len(set(cycle["color"])) == len(set(map(str, cycle["linestyle"]))) == len(plots.PALETTE)
    fig, ax = plt.subplots()
    lines = [ax.plot([0, 1], [i, i + 1])[0] for i in range(4)]
    assert [line.get_linestyle() for line in lines] == ["-", "--", "-.", ":"]
    assert len({line.get_color() for line in lines}) == 4
    plt.close(fig)
