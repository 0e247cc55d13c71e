"""Interactive widgets. Each has a pure update function (tested headless) and a thin ipywidgets wrapper."""

from __future__ import annotations

import ipywidgets as widgets
import matplotlib.pyplot as plt
import torch
from IPython.display import display

from course_lib.data import FASHION_MNIST_CLASSES
from course_lib.plots import PALETTE


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
