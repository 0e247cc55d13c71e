"""Interactive widgets. Each has a pure update function (tested headless) and a thin ipywidgets wrapper."""

from __future__ import annotations

import html
import math

import ipywidgets as widgets
import matplotlib.pyplot as plt
import torch
from IPython.display import display

from course_lib.data import FASHION_MNIST_CLASSES
from course_lib.dataflow import LayerStats, Machine, attainable_gflops, layer_profile
from course_lib.plots import PALETTE, draw_roofline
from course_lib.prune import structured_masks
from course_lib.quantize import binarize, compute_qparams, dequantize, quantize
from course_lib.sweeps import weight_quantization_key


def _figure_output(figsize: tuple[float, float]) -> tuple[widgets.Output, plt.Figure]:
    """An output area and the figure a widget redraws into it (closed, so the notebook does not show it twice)."""
    output = widgets.Output()
    with output:
        fig = plt.figure(figsize=figsize)
        plt.close(fig)
    return output, fig


def _show(output: widgets.Output, fig: plt.Figure) -> None:
    """Replace what ``output`` shows with the redrawn ``fig``."""
    output.clear_output(wait=True)
    with output:
        display(fig)


def draw_prediction(fig: plt.Figure, image: torch.Tensor, label: int, probabilities: torch.Tensor,
                    model_name: str = "model") -> None:
    """Draw one test image next to the model's class probabilities (the correct class highlighted)."""
    fig.clear()
    ax_image, ax_probs = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1, 1.6]})
    ax_image.imshow(image.numpy(), cmap="gray_r")
    ax_image.axis("off")
    predicted = int(probabilities.argmax())
    verdict = "correct" if predicted == label else "wrong"
    ax_image.set_title(f"true: {FASHION_MNIST_CLASSES[label]}", fontsize=10)
    colors = [PALETTE[2] if c == label else PALETTE[0] for c in range(len(FASHION_MNIST_CLASSES))]
    ax_probs.barh(FASHION_MNIST_CLASSES, probabilities.tolist(), color=colors)
    ax_probs.invert_yaxis()
    ax_probs.set_xlim(0, 1)
    ax_probs.set_xlabel("probability")
    ax_probs.set_title(f"{model_name}: {FASHION_MNIST_CLASSES[predicted]} "
                       f"({probabilities[predicted]:.0%}, {verdict})", fontsize=10)
    fig.tight_layout()


def prediction_browser(images: torch.Tensor, labels: torch.Tensor, probabilities: torch.Tensor,
                       model_name: str = "model") -> widgets.VBox:
    """Browse test images with a model's precomputed probabilities: a slider and a 'next mistake' button."""
    if not (len(images) == len(labels) == len(probabilities)):
        raise ValueError(f"images, labels and probabilities must have the same length, got "
                         f"{len(images)}, {len(labels)}, {len(probabilities)}")
    mistakes = (probabilities.argmax(1) != labels).nonzero().flatten().tolist()
    slider = widgets.IntSlider(value=0, min=0, max=len(images) - 1, description="test image",
                               continuous_update=False, layout=widgets.Layout(width="60%"))
    button = widgets.Button(description="next mistake", icon="forward")
    output, fig = _figure_output((7.5, 3.0))

    def update(change: dict | None = None) -> None:
        index = slider.value
        draw_prediction(fig, images[index], int(labels[index]), probabilities[index], model_name)
        _show(output, fig)

    def next_mistake(_: widgets.Button) -> None:
        later = [i for i in mistakes if i > slider.value] or mistakes
        if later:
            slider.value = later[0]

    slider.observe(update, names="value")
    button.on_click(next_mistake)
    update()
    return widgets.VBox([widgets.HBox([slider, button]), output])


def describe_layer(layer: LayerStats, machine: Machine) -> str:
    """A layer's bytes, MACs and intensity, and what the roofline predicts for it on ``machine``: the three
    estimates of its time (a call's fixed cost, moving its bytes, its FLOPs at its library's peak)."""
    terms = machine.time_terms_us(layer)
    bound = machine.bound(layer)
    library = machine.library_for(layer.kind)
    compute = (f"MACs {layer.macs:,}; intensity {layer.intensity:.2f} FLOPs/byte (ridge of {library} "
               f"{machine.ridge_for(layer.kind):.2f})" if layer.macs else "no MACs: element-wise, pure memory traffic")
    return (f"{layer.name} ({layer.kind}), batch {layer.input_shape[0] if layer.input_shape else '?'}\n"
            f"  parameters {layer.parameters:,} = {layer.weight_bytes:,} bytes of weights\n"
            f"  activations in {layer.input_shape} + out {layer.output_shape} = {layer.activation_bytes:,} bytes\n"
            f"  {compute}\n"
            f"  roofline estimate {max(terms.values()):.1f} us -> {bound}-bound (call overhead {terms['overhead']:.1f} us, "
            f"moving bytes {terms['memory']:.1f} us, computing {terms['compute']:.1f} us)")


def draw_layer_roofline(fig: plt.Figure, machine: Machine, layers: list[LayerStats], highlight: str) -> None:
    """The rooflines with every computing layer of a model at its attainable rate, one highlighted."""
    fig.clear()
    ax = fig.subplots()
    points = [(layer.name, layer.intensity,
               attainable_gflops(layer.intensity, machine.peak_for(layer.kind), machine.bandwidth_gbs),
               machine.library_for(layer.kind))
              for layer in layers if layer.macs > 0]
    draw_roofline(ax, machine.roofs, machine.bandwidth_gbs, points, highlight=highlight)
    ax.set_title("where each layer sits on this machine's rooflines (attainable rate)")
    fig.tight_layout()


def roofline_explorer(profiles: dict[str, list[LayerStats]], machine: Machine,
                      batch_sizes: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256)) -> widgets.VBox:
    """Pick a model, a layer and a batch size; see its bytes, MACs, intensity, what bounds it and (for layers
    that compute) its place on the roofline of the library that runs it.

    ``profiles`` maps a model name to its :func:`~course_lib.dataflow.layer_profile` (any batch size);
    other batch sizes are derived exactly, since activations and MACs scale with the batch. Element-wise layers
    (batch norm, ReLU, pooling) are listed too: they compute nothing but move their activations.
    """
    moving = {name: [layer for layer in layers if layer.moved_bytes > 0] for name, layers in profiles.items()}
    model = widgets.Dropdown(options=list(moving), description="model")
    layer = widgets.Dropdown(options=[l.name for l in moving[model.value]], description="layer")
    batch = widgets.SelectionSlider(options=list(batch_sizes), value=batch_sizes[0], description="batch size",
                                    continuous_update=False)
    text = widgets.HTML()
    plot, fig = _figure_output((7.5, 4.2))

    def update(change: dict | None = None) -> None:
        layers = [l.at_batch(batch.value) for l in moving[model.value]]
        chosen = next(l for l in layers if l.name == layer.value)
        draw_layer_roofline(fig, machine, layers, chosen.name)
        text.value = f"<pre>{html.escape(describe_layer(chosen, machine))}</pre>"
        _show(plot, fig)

    def change_model(change: dict) -> None:
        layer.options = [l.name for l in moving[model.value]]  # triggers update through layer's observer

    model.observe(change_model, names="value")
    layer.observe(update, names="value")
    batch.observe(update, names="value")
    update()
    return widgets.VBox([widgets.HBox([model, layer]), batch, text, plot])


def draw_quantized_weights(fig: plt.Figure, weight: torch.Tensor, bits: int, per_channel: bool, method: str,
                           channel: int = 0) -> str:
    """Histogram of one output channel's weights with its quantization grid; returns the error summary.

    Per-tensor, the grid comes from the whole layer: a small-range channel then gets only a few levels.
    """
    axis = 0 if per_channel else None
    row = weight[channel].flatten()
    if bits == 1:
        rebuilt = binarize(weight, axis)[channel].flatten()
        levels = torch.unique(rebuilt)
    else:
        qp = compute_qparams(weight, bits, symmetric=True, axis=axis, method=method)
        rebuilt = dequantize(quantize(weight, qp), qp)[channel].flatten()
        scale = qp.scale[channel] if per_channel else qp.scale
        levels = torch.arange(qp.qmin, qp.qmax + 1) * scale
    fig.clear()
    ax = fig.add_subplot()
    ax.hist(row.numpy(), bins=80, color=PALETTE[0], alpha=0.8)
    visible = levels[(levels >= row.min() - 1e-9) & (levels <= row.max() + 1e-9)]
    for level in visible if len(visible) <= 64 else []:
        ax.axvline(level.item(), color=PALETTE[1], linewidth=0.8, alpha=0.8)
    ax.set_xlabel("weight value")
    ax.set_ylabel("count")
    ax.set_title(f"output channel {channel}: {len(visible)} grid levels inside its range"
                 + (" (too many to draw)" if len(visible) > 64 else ""))
    error = (rebuilt - row).abs()
    return (f"{bits}-bit {'per-channel' if per_channel else 'per-tensor'} ({method}): mean |error| "
            f"{error.mean().item():.2e}, max {error.max().item():.2e}, relative RMS "
            f"{((rebuilt - row).pow(2).mean().sqrt() / row.pow(2).mean().sqrt()).item():.1%}")


def quantization_explorer(model: torch.nn.Module, results: dict) -> widgets.VBox:
    """Pick a layer, a channel, bits, granularity and calibration; see the weights on their grid, the error, and
    the whole model's validation accuracy for that setting (from the cached sweep ``results``)."""
    layers = {name: m.weight.detach() for name, m in model.named_modules()
              if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))}
    layer = widgets.Dropdown(options=list(layers), description="layer")
    channel = widgets.IntSlider(value=0, min=0, max=len(layers[layer.value]) - 1, description="channel",
                                continuous_update=False)
    bits = widgets.IntSlider(value=4, min=1, max=8, description="bits", continuous_update=False)
    granularity = widgets.ToggleButtons(options=["tensor", "channel"], value="tensor", description="scale per")
    method = widgets.Dropdown(options=["minmax", "percentile", "mse"], description="calibration")
    text = widgets.HTML()
    plot, fig = _figure_output((7.5, 3.6))

    def update(change: dict | None = None) -> None:
        channel.max = len(layers[layer.value]) - 1
        summary = draw_quantized_weights(fig, layers[layer.value], bits.value, granularity.value == "channel",
                                         method.value, channel.value)
        key = weight_quantization_key(bits.value, granularity.value, method.value)
        accuracy = results["accuracy"][key]
        text.value = (f"<pre>{html.escape(summary)}\nwhole model, all layers at this setting: validation accuracy "
                      f"{accuracy:.2%} (fp32 {results['baseline_accuracy']:.2%})</pre>")
        _show(plot, fig)

    for control in (layer, channel, bits, granularity, method):
        control.observe(update, names="value")
    update()
    return widgets.VBox([widgets.HBox([layer, channel]), widgets.HBox([bits, method]), granularity, text, plot])


def draw_pruning_mask(fig: plt.Figure, model: torch.nn.Module, layer: str, granularity: str,
                      sparsity: float) -> float:
    """Draw the mask that pruning ``layer`` of ``model`` at ``granularity`` and ``sparsity`` would apply, one
    kh × kw tile per (output, input) channel pair (white = kept); returns the fraction of weights removed."""
    mask = structured_masks(model, sparsity, granularity, [layer])[layer]
    out_channels, in_channels, kh, kw = mask.shape
    image = mask.permute(0, 2, 1, 3).reshape(out_channels * kh, in_channels * kw)
    fig.clear()
    ax = fig.add_subplot()
    ax.imshow(image.numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest", aspect="auto")
    ax.set_xlabel(f"input channel (each tile: one {kh}×{kw} kernel)")
    ax.set_ylabel("output channel (filter)")
    ticks = range(0, in_channels, max(1, in_channels // 8))
    ax.set_xticks([t * kw + kw / 2 - 0.5 for t in ticks], [str(t) for t in ticks])
    ticks = range(0, out_channels, max(1, out_channels // 8))
    ax.set_yticks([t * kh + kh / 2 - 0.5 for t in ticks], [str(t) for t in ticks])
    removed = float((mask == 0).float().mean())
    ax.set_title(f"{layer}: {granularity} pruning, {removed:.0%} of the weights removed (black)")
    return removed


def pruning_explorer(model: torch.nn.Module, results: dict) -> widgets.VBox:
    """Pick a convolution, a granularity and a sparsity: see the mask, and the whole CNN's validation accuracy with
    every convolution pruned that way (masks only, no retraining; from the cached sweep ``results``)."""
    layer = widgets.Dropdown(options=results["layers"][1:], description="layer")
    granularity = widgets.ToggleButtons(options=list(results["granularity_sweep"]), description="granularity")
    sparsity = widgets.SelectionSlider(options=results["sparsities"], value=0.5, description="sparsity",
                                       continuous_update=False)
    text = widgets.HTML()
    plot, fig = _figure_output((7.5, 5.0))

    def update(change: dict | None = None) -> None:
        draw_pruning_mask(fig, model, layer.value, granularity.value, sparsity.value)
        accuracy = results["granularity_sweep"][granularity.value][results["sparsities"].index(sparsity.value)]
        text.value = (f"<pre>all six convolutions pruned at {granularity.value} level to {sparsity.value:.0%}, no "
                      f"retraining: validation accuracy {accuracy:.2%} "
                      f"(dense {results['baseline_accuracy']:.2%})</pre>")
        _show(plot, fig)

    for control in (layer, granularity, sparsity):
        control.observe(update, names="value")
    update()
    return widgets.VBox([widgets.HBox([layer, sparsity]), granularity, text, plot])


def draw_shared_weights(fig: plt.Figure, weight: torch.Tensor, centroids: torch.Tensor, title: str = "") -> float:
    """Histogram of a layer's weights with the shared values (e.g. k-means centroids) drawn over it; each weight
    takes its nearest shared value. Returns the squared error as a fraction of the weights' variance."""
    values = weight.detach().flatten().float()
    centroids = torch.as_tensor(centroids, dtype=torch.float32).sort().values
    nearest = centroids[torch.bucketize(values, (centroids[1:] + centroids[:-1]) / 2)]
    error = float(((nearest - values) ** 2).mean() / values.var())
    fig.clear()
    ax = fig.add_subplot()
    ax.hist(values.numpy(), bins=150, color=PALETTE[0], alpha=0.8)
    for centroid in centroids.tolist():
        ax.axvline(centroid, color=PALETTE[1], linewidth=0.8)
    ax.set(xlabel="weight value", ylabel="count (log scale)", yscale="log",
           title=f"{title}{len(centroids)} shared values (orange): squared error {error:.2%} of the weights' variance")
    return error


def sharing_explorer(model: torch.nn.Module, results: dict) -> widgets.VBox:
    """Pick a layer and a number of clusters: see its weight histogram with the k-means centroids, and the
    validation accuracy with only that layer shared (no fine-tuning). Centroids and accuracies come from the cached
    sweep ``results`` (k-means on 235,200 weights takes seconds: too slow for a slider)."""
    layers = sorted({key.split("/")[0] for key in results["clusters_per_layer"]})
    counts = sorted({int(key.split("/")[1]) for key in results["clusters_per_layer"]})
    layer = widgets.Dropdown(options=layers, description="layer")
    clusters = widgets.SelectionSlider(options=counts, value=counts[len(counts) // 2], description="clusters",
                                       continuous_update=False)
    text = widgets.HTML()
    plot, fig = _figure_output((7.5, 3.5))

    def update(change: dict | None = None) -> None:
        weight = model.get_submodule(layer.value).weight
        key = f"{layer.value}/{clusters.value}"
        draw_shared_weights(fig, weight, torch.tensor(results["codebooks"][key]), f"{layer.value}: ")
        accuracy = results["clusters_per_layer"][key]
        text.value = (f"<pre>only {layer.value} shared ({clusters.value} values, {max(1, (clusters.value - 1).bit_length())}"
                      f"-bit indices), no fine-tuning: validation accuracy {accuracy:.2%} "
                      f"(fp32 {results['baseline_accuracy']:.2%})</pre>")
        _show(plot, fig)

    for control in (layer, clusters):
        control.observe(update, names="value")
    update()
    return widgets.VBox([widgets.HBox([layer, clusters]), text, plot])


def draw_soft_targets(fig: plt.Figure, image: torch.Tensor, label: int, logits: torch.Tensor,
                      temperature: float) -> None:
    """One image next to the teacher's softmax at ``temperature`` (log scale, so the small probabilities show)."""
    from course_lib.distill import soften  # noqa: PLC0415 (widgets import the lessons' modules lazily)

    probabilities = soften(logits, temperature)
    fig.clear()
    ax_image, ax_probs = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1, 1.8]})
    ax_image.imshow(image.squeeze().numpy(), cmap="gray_r")
    ax_image.axis("off")
    ax_image.set_title(f"true: {FASHION_MNIST_CLASSES[label]}", fontsize=10)
    colors = [PALETTE[2] if c == label else PALETTE[0] for c in range(len(FASHION_MNIST_CLASSES))]
    ax_probs.barh(FASHION_MNIST_CLASSES, probabilities.tolist(), color=colors)
    ax_probs.invert_yaxis()
    ax_probs.set_xscale("log")
    ax_probs.set_xlim(1e-6, 1)
    ax_probs.set_xlabel("teacher's probability (log scale)")
    ax_probs.set_title(f"teacher's soft targets at T = {temperature:g}", fontsize=10)
    fig.tight_layout()


def distillation_explorer(images: torch.Tensor, labels: torch.Tensor, teacher_logits: torch.Tensor,
                          results: dict) -> widgets.VBox:
    """A temperature slider redrawing a validation image's teacher distribution, an image slider, and T/alpha
    controls reading the student's validation accuracy from the cached sweep ``results`` (instant)."""
    if not (len(images) == len(labels) == len(teacher_logits)):
        raise ValueError(f"images, labels and teacher_logits must have the same length, got {len(images)}, "
                         f"{len(labels)}, {len(teacher_logits)}")
    from course_lib.sweeps import DISTILL_ALPHAS, DISTILL_TEMPERATURES, distillation_key  # noqa: PLC0415

    index = widgets.IntSlider(value=0, min=0, max=len(images) - 1, description="image", continuous_update=False)
    temperature = widgets.SelectionSlider(options=list(DISTILL_TEMPERATURES), value=4.0, description="T",
                                          continuous_update=False)
    alpha = widgets.SelectionSlider(options=list(DISTILL_ALPHAS), value=0.9, description="alpha",
                                    continuous_update=False)
    text = widgets.HTML()
    plot, fig = _figure_output((7.5, 3.0))

    def update(change: dict | None = None) -> None:
        i = index.value
        draw_soft_targets(fig, images[i], int(labels[i]), teacher_logits[i], temperature.value)
        accuracy = results["grid"][distillation_key(temperature.value, alpha.value)]
        alone = results["seeds"]["alone"]["0"]
        text.value = (f"<pre>student distilled at T = {temperature.value:g}, alpha = {alpha.value:g}: validation "
                      f"accuracy {accuracy:.2%} (alone {alone:.2%}, teacher {results['teacher_accuracy']:.2%}; "
                      "seed 0, from the cached sweep)</pre>")
        _show(plot, fig)

    for control in (index, temperature, alpha):
        control.observe(update, names="value")
    update()
    return widgets.VBox([widgets.HBox([index, temperature, alpha]), text, plot])


def summarize_rank_choice(model: torch.nn.Module, results: dict, fractions: dict[str, float], classifier_rank: int,
                          errors: dict | None = None) -> dict:
    """What a per-layer choice of Tucker-2 rank fractions (and the classifier's SVD rank) does to the course CNN:
    each layer's relative reconstruction error, the parameters and multiply-adds of the whole model, an accuracy
    *estimate* (the reference minus the sum of each layer's drop measured alone, before fine-tuning) and the summed
    eager latency of the convolutions (each measured alone at batch 64), all from the cached sweep ``results``.
    ``errors`` memoises the reconstruction errors (and the layers' multiply-adds) between calls."""
    from course_lib import decompose as D  # noqa: PLC0415 (widgets import the lessons' modules lazily)

    errors = {} if errors is None else errors
    if "macs" not in errors:
        errors["macs"] = {layer.name: layer.macs for layer in layer_profile(model, torch.zeros(1, 1, 28, 28))}
    original_macs = errors["macs"]
    table = results["fractions"]
    summary = {"layers": {}, "parameters": results["parameters"], "macs": results["macs"]}
    drop = 0.0
    conv_ms = reference_ms = 0.0
    for name, fraction in fractions.items():
        if fraction not in table:
            raise ValueError(f"{name}: the cache holds the rank fractions {table}, got {fraction!r}")
        i = table.index(fraction)
        conv = model.get_submodule(name)
        ranks = D.uniform_plan(model, fraction, [name])[name][1]
        if (name, fraction) not in errors:
            kernel = conv.weight.detach()
            core, out_factor, in_factor = D.tucker2_factors(kernel, ranks, name)
            approx = torch.einsum("oikl,po,qi->pqkl", core, out_factor, in_factor)
            errors[(name, fraction)] = float((approx - kernel).norm() / kernel.norm())
        parameters = D.tucker2_parameters(conv.in_channels, conv.out_channels, conv.kernel_size, *ranks)
        summary["parameters"] += parameters - conv.weight.numel()
        summary["macs"] += results["layer_macs"][name][i] - original_macs[name]
        drop += results["baseline_accuracy"] - results["sensitivity"][name][i]
        conv_ms += results["layer_ms"][name][f"{fraction:g}"]
        reference_ms += results["layer_ms"][name]["original"]
        summary["layers"][name] = {"ranks": ranks, "error": errors[(name, fraction)], "parameters": parameters}
    classifier = results["classifier"]
    if classifier_rank not in classifier["ranks"]:
        raise ValueError(f"the cache holds the classifier ranks {classifier['ranks']}, got {classifier_rank!r}")
    linear = model.get_submodule(classifier["layer"])
    factored = D.svd_parameters(linear.in_features, linear.out_features, classifier_rank, bias=False)
    summary["parameters"] += factored - linear.weight.numel()
    summary["macs"] += factored - linear.weight.numel()  # a Linear does one multiply-add per weight per example
    drop += results["baseline_accuracy"] - classifier["accuracy"][classifier["ranks"].index(classifier_rank)]
    summary.update(estimated_accuracy=results["baseline_accuracy"] - drop, conv_ms=conv_ms, reference_conv_ms=reference_ms)
    return summary


def decomposition_explorer(model: torch.nn.Module, results: dict) -> widgets.VBox:
    """One slider per convolution (the Tucker-2 ranks as a fraction of its channels) and one for the classifier's
    SVD rank: reconstruction error per layer (computed live), parameters, multiply-adds, estimated accuracy and
    summed convolution latency (from the cached sweep ``results``)."""
    sliders = {name: widgets.SelectionSlider(options=results["fractions"], value=0.375, description=name,
                                             continuous_update=False) for name in results["layers"]}
    classifier = widgets.SelectionSlider(options=results["classifier"]["ranks"], value=64,
                                         description=results["classifier"]["layer"], continuous_update=False)
    text = widgets.HTML()
    plot, fig = _figure_output((7.5, 2.8))
    errors: dict = {}

    def update(change: dict | None = None) -> None:
        s = summarize_rank_choice(model, results, {n: w.value for n, w in sliders.items()}, classifier.value, errors)
        fig.clear()
        ax = fig.add_subplot()
        names = list(s["layers"])
        ax.bar(names, [s["layers"][n]["error"] for n in names], color=PALETTE[0])
        ax.set(ylabel="relative error of the kernel", ylim=(0, 1),
               title="Tucker-2 reconstruction error per convolution (0 = exact)")
        fig.tight_layout()
        text.value = (f"<pre>parameters {s['parameters']:,} ({results['parameters'] / s['parameters']:.2f}× fewer), "
                      f"multiply-adds per image {s['macs']:,} ({results['macs'] / s['macs']:.2f}× fewer)\n"
                      f"estimated validation accuracy before fine-tuning {s['estimated_accuracy']:.2%} "
                      f"(reference {results['baseline_accuracy']:.2%}; the sum of single-layer drops, an estimate)\n"
                      f"the five convolutions, eager, batch 64, each timed alone (cached): {s['conv_ms']:.1f} ms "
                      f"(original {s['reference_conv_ms']:.1f} ms)</pre>")
        _show(plot, fig)

    for control in (*sliders.values(), classifier):
        control.observe(update, names="value")
    update()
    return widgets.VBox([widgets.HBox(list(sliders.values())[:3]), widgets.HBox([*list(sliders.values())[3:], classifier]),
                         text, plot])


FORWARD_SHARE_OF_STEP = 1 / 3  # backward costs about twice the forward, so a recomputed forward adds about a third


def summarize_memory_choice(results: dict, batch_size: int, segments: int, dtype: str) -> dict:
    """A course CNN training step predicted on paper and measured (from the cached sweep ``results``, its
    ``checkpointing`` entry): bytes of weights, gradients and optimiser state; saved activations, where a
    checkpointed step keeps the segment inputs (the outputs of the layers before them) plus the larger of the last
    segment's activations and the largest recomputed segment, and autocast's per-batch weight copies; step time,
    where the recomputed share of the forward adds its cost once more."""
    from course_lib.memory import OPTIMIZER_STATE_SLOTS  # noqa: PLC0415

    key = f"{batch_size}/{segments}/{dtype}"
    if key not in results["grid"]:
        raise ValueError(f"the cache holds batch sizes {results['batch_sizes']}, segments {results['segments']} and "
                         f"dtypes {results['dtypes']}; got {batch_size}, {segments}, {dtype!r}")
    measured = results["grid"][key]
    per_sample = results["saved_per_sample"][dtype]
    layers = [name for name in per_sample if name.startswith("features.")]
    index = {name: int(name.split(".")[1]) for name in layers}
    bounds = [0, *measured["starts"], 10 ** 6]
    segment_bytes = [sum(per_sample[n] for n in layers if lo <= index[n] < hi) for lo, hi in zip(bounds, bounds[1:])]
    outside = sum(size for name, size in per_sample.items() if name not in index)
    outputs = results["output_per_sample"][dtype]
    kept_inputs = sum(outputs[f"features.{start - 1}"] for start in measured["starts"])
    checkpointed = segment_bytes[:-1]
    activations = batch_size * (kept_inputs + max(segment_bytes[-1] + outside, max(checkpointed, default=0))) + \
        sum(results["saved_per_batch"][dtype].values())
    weights = results["weights"]
    state = weights * OPTIMIZER_STATE_SLOTS[results["optimizer"]]
    recomputed = sum(checkpointed) / max(1, sum(segment_bytes) + outside)
    plain_ms = results["grid"][f"{batch_size}/1/{dtype}"]["step_ms"]
    return {"weights": weights, "gradients": weights, "optimizer_state": state, "activations": activations,
            "predicted_peak": 2 * weights + state + activations, "measured_peak": measured["peak"],
            "predicted_ms": plain_ms * (1 + FORWARD_SHARE_OF_STEP * recomputed), "measured_ms": measured["step_ms"],
            "plain_float32_peak": results["grid"][f"{batch_size}/1/float32"]["peak"], "starts": measured["starts"]}


def memory_explorer(results: dict) -> widgets.VBox:
    """Batch size, checkpoint segments and activation dtype of a course CNN training step: the peak memory and step
    time predicted on paper next to the ones measured by the sweep (``results``: its ``checkpointing`` entry)."""
    batch = widgets.SelectionSlider(options=results["batch_sizes"], value=64, description="batch size",
                                    continuous_update=False)
    segments = widgets.SelectionSlider(options=results["segments"], value=1, description="segments",
                                       continuous_update=False)
    dtype = widgets.ToggleButtons(options=results["dtypes"], value="float32", description="activations")
    text = widgets.HTML()
    plot, fig = _figure_output((7.5, 2.8))

    def update(change: dict | None = None) -> None:
        s = summarize_memory_choice(results, batch.value, segments.value, dtype.value)
        fig.clear()
        ax = fig.add_subplot()
        parts = {"weights": s["weights"], "gradients": s["gradients"], "optimiser state": s["optimizer_state"],
                 "saved activations": s["activations"]}
        left = 0.0
        for (label, size), colour in zip(parts.items(), PALETTE):
            ax.barh(["predicted"], [size / 1e6], left=left, color=colour, label=label)
            left += size / 1e6
        ax.barh(["measured"], [s["measured_peak"] / 1e6], color="0.4", hatch="//", label="measured peak")
        ax.set(xlabel="MB", title="Training step of the course CNN (SGD with momentum)")
        ax.legend(fontsize=7, loc="lower right")
        fig.tight_layout()
        text.value = (f"<pre>peak: predicted {s['predicted_peak'] / 1e6:.1f} MB, measured {s['measured_peak'] / 1e6:.1f}"
                      f" MB ({s['plain_float32_peak'] / s['measured_peak']:.2f}x below plain float32)\n"
                      f"step time: predicted {s['predicted_ms']:.0f} ms, measured {s['measured_ms']:.0f} ms "
                      f"(cached, when the sweep ran)\nsegments start at layers {s['starts'] or 'none'}</pre>")
        _show(plot, fig)

    for control in (batch, segments, dtype):
        control.observe(update, names="value")
    update()
    return widgets.VBox([widgets.HBox([batch, segments]), dtype, text, plot])


def _one_two_five(low: float, high: float) -> list[float]:
    """The values 1, 2, 5 x 10^k from the largest one <= ``low`` to the smallest one >= ``high``."""
    values = []
    for exponent in range(math.floor(math.log10(low)), math.ceil(math.log10(high)) + 1):
        values += [float(f"{mantissa}e{exponent}") for mantissa in (1, 2, 5)]
    first = max(i for i, v in enumerate(values) if v <= low)
    last = min(i for i, v in enumerate(values) if v >= high)
    return values[first:last + 1]


BUDGET_BATCH_SIZE = 64  # most benchmark rows are measured at batch 64: latencies compare only at one batch size


def _accuracy_rows(rows: list[dict], batch_size: int) -> list[dict]:
    """The rows of Fashion-MNIST models (metric "accuracy") measured at ``batch_size``."""
    from course_lib.tradeoffs import check_rows  # noqa: PLC0415

    check_rows(rows)
    accuracy_rows = [row for row in rows if row["metric_name"] == "accuracy"]
    chosen = [row for row in accuracy_rows if row["batch_size"] == batch_size]
    if not chosen:
        batches = sorted({row["batch_size"] for row in accuracy_rows})
        raise ValueError(f"no accuracy rows at batch {batch_size} (accuracy rows exist at batches {batches}): pass "
                         "one of those, or remake the rows with `python -m course_lib.bench all --json > PATH`")
    return chosen


def summarize_budget(rows: list[dict], latency_ms: float, size_kb: float, loss_points: float,
                     batch_size: int = BUDGET_BATCH_SIZE) -> dict:
    """The Fashion-MNIST benchmark rows (metric "accuracy") at ``batch_size`` that meet a budget of latency (ms),
    file size (kB) and accuracy loss (points below each model's baseline), the fastest of them or the closest miss
    (see :func:`course_lib.tradeoffs.choose`; indices into the returned ``rows``), and the message to show."""
    from course_lib.tradeoffs import Budget, choose  # noqa: PLC0415

    chosen = _accuracy_rows(rows, batch_size)
    budget = Budget(max_latency_ms=latency_ms, max_size_bytes=round(size_kb * 1e3), max_metric_loss=loss_points / 100)
    choice = choose(chosen, budget)
    scope = (f"Fashion-MNIST models only (metric: accuracy), batch {batch_size}: {len(chosen)} of {len(rows)} rows; "
             "other metrics (e.g. MiniLM's correlation) and batch sizes are left out.")
    return {"rows": chosen, "budget": budget, "feasible": choice.feasible, "best": choice.best,
            "closest": choice.closest, "message": f"{choice.message}\n{scope}"}


def draw_budget(fig: plt.Figure, summary: dict) -> None:
    """The rows of a :func:`summarize_budget` result on an accuracy x latency plot: the Pareto front, the rows
    meeting the budget highlighted, the best (or, if none meets it, the closest) ringed, the latency limit dashed."""
    from course_lib.plots import pareto_plot  # noqa: PLC0415

    rows = summary["rows"]
    fig.clear()
    ax = fig.add_subplot()
    pareto_plot(ax, rows, "latency_ms", title="Which variants meet the budget?")
    feasible = summary["feasible"]
    ax.scatter([rows[i]["latency_ms"] for i in feasible], [rows[i]["metric"] for i in feasible], color=PALETTE[2],
               s=40, zorder=4, label="meets the budget")
    ringed, label = (summary["best"], "the fastest of them") if feasible else (summary["closest"], "the closest miss")
    ax.scatter([rows[ringed]["latency_ms"]], [rows[ringed]["metric"]], s=160, facecolors="none", linewidths=2,
               edgecolors=PALETTE[2] if feasible else PALETTE[3], zorder=5, label=label)
    ax.axvline(summary["budget"].max_latency_ms, color=PALETTE[3], ls="--", lw=1, label="latency budget")
    ax.set_ylabel("test accuracy")
    ax.legend(loc="lower right", fontsize=7)
    fig.tight_layout()


def budget_explorer(rows: list[dict]) -> widgets.VBox:
    """Sliders for a latency budget (ms), a size budget (kB) and an accuracy-loss budget (points): the Fashion-MNIST
    benchmark rows at :data:`BUDGET_BATCH_SIZE` that meet it, and the fastest of them (or the closest miss), named."""
    shown = _accuracy_rows(rows, BUDGET_BATCH_SIZE)
    latencies = sorted(row["latency_ms"] for row in shown)
    latency_options = _one_two_five(latencies[0], latencies[-1])
    sizes = _one_two_five(min(row["size_bytes"] for row in shown) / 1e3, max(row["size_bytes"] for row in shown) / 1e3)
    latency = widgets.SelectionSlider(options=latency_options, description="latency (ms)", continuous_update=False,
                                      value=min(latency_options, key=lambda v: abs(v - latencies[len(latencies) // 2])))
    size = widgets.SelectionSlider(options=sizes, value=sizes[-1], description="size (kB)", continuous_update=False)
    loss = widgets.FloatSlider(value=1.0, min=0.0, max=5.0, step=0.1, description="loss (points)",
                               continuous_update=False)
    text = widgets.HTML()
    plot, fig = _figure_output((7.5, 4.0))

    def update(change: dict | None = None) -> None:
        summary = summarize_budget(rows, latency.value, size.value, loss.value)
        draw_budget(fig, summary)
        text.value = f"<pre>{html.escape(summary['message'])}</pre>"
        _show(plot, fig)

    for control in (latency, size, loss):
        control.observe(update, names="value")
    update()
    return widgets.VBox([widgets.HBox([latency, size, loss]), text, plot])
