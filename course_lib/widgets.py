"""Interactive widgets. Each has a pure update function (tested headless) and a thin ipywidgets wrapper."""

from __future__ import annotations

import html

import ipywidgets as widgets
import matplotlib.pyplot as plt
import torch
from IPython.display import display

from course_lib.data import FASHION_MNIST_CLASSES
from course_lib.dataflow import LayerStats, Machine, attainable_gflops
from course_lib.plots import PALETTE, draw_roofline


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
    output = widgets.Output()
    with output:
        fig = plt.figure(figsize=(7.5, 3.0))
        plt.close(fig)

    def update(change: dict | None = None) -> None:
        index = slider.value
        draw_prediction(fig, images[index], int(labels[index]), probabilities[index], model_name)
        output.clear_output(wait=True)
        with output:
            display(fig)

    def next_mistake(_: widgets.Button) -> None:
        later = [i for i in mistakes if i > slider.value] or mistakes
        if later:
            slider.value = later[0]

    slider.observe(update, names="value")
    button.on_click(next_mistake)
    update()
    return widgets.VBox([widgets.HBox([slider, button]), output])


def describe_layer(layer: LayerStats, machine: Machine) -> str:
    """A layer's bytes, MACs and intensity, and what the roofline predicts for it on ``machine``."""
    bound = "memory-bound" if layer.intensity < machine.ridge_intensity else "compute-bound"
    memory_us = layer.moved_bytes / (machine.bandwidth_gbs * 1e9) * 1e6
    compute_us = 2 * layer.macs / (machine.peak_gflops * 1e9) * 1e6
    return (f"{layer.name} ({layer.kind}), batch {layer.input_shape[0] if layer.input_shape else '?'}\n"
            f"  parameters {layer.parameters:,} = {layer.weight_bytes:,} bytes of weights\n"
            f"  activations in {layer.input_shape} + out {layer.output_shape} = {layer.activation_bytes:,} bytes\n"
            f"  MACs {layer.macs:,}; intensity {layer.intensity:.2f} FLOPs/byte "
            f"(ridge point {machine.ridge_intensity:.2f}) -> {bound}\n"
            f"  roofline time: at least {max(memory_us, compute_us):.1f} us "
            f"(moving bytes {memory_us:.1f} us, computing {compute_us:.1f} us)")


def draw_layer_roofline(fig: plt.Figure, machine: Machine, layers: list[LayerStats], highlight: str) -> None:
    """The roofline with every computing layer of a model at its attainable rate, one highlighted."""
    fig.clear()
    ax = fig.subplots()
    points = [(layer.name, layer.intensity, attainable_gflops(layer.intensity, machine.peak_gflops,
                                                               machine.bandwidth_gbs))
              for layer in layers if layer.macs > 0]
    draw_roofline(ax, machine.peak_gflops, machine.bandwidth_gbs, points, highlight=highlight)
    ax.set_title("where each layer sits on this machine's roofline (attainable rate)")
    fig.tight_layout()


def roofline_explorer(profiles: dict[str, list[LayerStats]], machine: Machine,
                      batch_sizes: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256)) -> widgets.VBox:
    """Pick a model, a layer and a batch size; see its bytes, MACs, intensity and place on the roofline.

    ``profiles`` maps a model name to its :func:`~course_lib.dataflow.layer_profile` (any batch size);
    other batch sizes are derived exactly, since activations and MACs scale with the batch.
    """
    computing = {name: [layer for layer in layers if layer.macs > 0] for name, layers in profiles.items()}
    model = widgets.Dropdown(options=list(computing), description="model")
    layer = widgets.Dropdown(options=[l.name for l in computing[model.value]], description="layer")
    batch = widgets.SelectionSlider(options=list(batch_sizes), value=batch_sizes[0], description="batch size",
                                    continuous_update=False)
    text = widgets.HTML()
    plot = widgets.Output()
    with plot:
        fig = plt.figure(figsize=(7.5, 4.2))
        plt.close(fig)

    def update(change: dict | None = None) -> None:
        layers = [l.at_batch(batch.value) for l in computing[model.value]]
        chosen = next(l for l in layers if l.name == layer.value)
        draw_layer_roofline(fig, machine, layers, chosen.name)
        text.value = f"<pre>{html.escape(describe_layer(chosen, machine))}</pre>"
        plot.clear_output(wait=True)
        with plot:
            display(fig)

    def change_model(change: dict) -> None:
        layer.options = [l.name for l in computing[model.value]]  # triggers update through layer's observer

    model.observe(change_model, names="value")
    layer.observe(update, names="value")
    batch.observe(update, names="value")
    update()
    return widgets.VBox([widgets.HBox([model, layer]), batch, text, plot])
