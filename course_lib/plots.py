"""One consistent plotting style for the course, and the plots more than one notebook needs."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib as mpl
import matplotlib.pyplot as plt
import torch

from course_lib.data import FASHION_MNIST_CLASSES

PALETTE = ("#1f5f8b", "#e07a24", "#3a9d5d", "#c0392b", "#7d5ba6", "#8c6d3f", "#d35fb7", "#6b7b8c")


def use_course_style() -> None:
    """Apply the course's matplotlib style (called by every notebook after setup)."""
    mpl.rcParams.update({
        "figure.figsize": (7.0, 4.0), "figure.dpi": 100, "axes.grid": True, "grid.alpha": 0.3,
        "axes.spines.top": False, "axes.spines.right": False, "axes.titleweight": "bold",
        "axes.prop_cycle": mpl.cycler(color=PALETTE), "font.size": 10, "legend.frameon": False,
    })


def show_images(images: torch.Tensor, labels: Sequence[int], predictions: Sequence[int] | None = None,
                columns: int = 8) -> plt.Figure:
    """A grid of ``uint8`` Fashion-MNIST images with their labels (and predictions: red when wrong)."""
    rows = (len(images) + columns - 1) // columns
    fig, axes = plt.subplots(rows, columns, figsize=(columns * 1.2, rows * 1.45), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i >= len(images):
            continue
        ax.imshow(images[i].numpy(), cmap="gray_r")
        title = FASHION_MNIST_CLASSES[labels[i]]
        color = "black"
        if predictions is not None:
            title = f"{FASHION_MNIST_CLASSES[predictions[i]]}\n(true: {title})"
            color = "black" if predictions[i] == labels[i] else PALETTE[3]
        ax.set_title(title, fontsize=7, color=color)
    fig.tight_layout()
    return fig


def bar_panels(names: Sequence[str], panels: Sequence[tuple[str, Sequence[float], str]],
               title: str = "", log: bool = False) -> plt.Figure:
    """Side-by-side horizontal bar charts over the same names; ``panels`` = (axis label, values, number format).

    ``log=True`` uses logarithmic axes, for values that span orders of magnitude.
    """
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 0.5 * len(names) + 1.6), sharey=True)
    axes = [axes] if len(panels) == 1 else list(axes)
    for ax, (label, values, fmt) in zip(axes, panels):
        bars = ax.barh(list(names), list(values), color=PALETTE[: len(names)])
        ax.bar_label(bars, labels=[format(v, fmt) for v in values], padding=3, fontsize=8)
        if log:
            ax.set_xscale("log")
            ax.set_xlim(min(values) / 2, max(values) * 8)
            ax.set_xlabel(f"{label}, log scale")
        else:
            ax.set_xlim(0, max(values) * 1.35)
            ax.set_xlabel(label)
        ax.grid(axis="y", visible=False)
    axes[0].invert_yaxis()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig
