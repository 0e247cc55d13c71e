"""One consistent plotting style for the course, and the plots more than one notebook needs."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib as mpl
import matplotlib.pyplot as plt
import torch

from course_lib.data import FASHION_MNIST_CLASSES

# Okabe & Ito's colour-blind-safe palette (blue, orange, bluish green, vermillion, reddish purple, sky blue, black,
# yellow last: it is faint on white). Line series also differ by line style, in the same cycle, so that no plot
# relies on colour alone.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#000000", "#F0E442")
LINE_STYLES = ("-", "--", "-.", ":", (0, (5, 1)), (0, (3, 1, 1, 1, 1, 1)), (0, (1, 2)), (0, (8, 2, 2, 2)))
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def series_style(index: int) -> dict[str, object]:
    """Colour, line style and marker of a plot's ``index``-th series: series differ by all three, not colour alone."""
    i = index % len(PALETTE)
    return {"color": PALETTE[i], "linestyle": LINE_STYLES[i], "marker": MARKERS[i]}


def use_course_style() -> None:
    """Apply the course's matplotlib style (called by every notebook after setup)."""
    mpl.rcParams.update({
        "figure.figsize": (7.0, 4.0), "figure.dpi": 100, "axes.grid": True, "grid.alpha": 0.3,
        "axes.spines.top": False, "axes.spines.right": False, "axes.titleweight": "bold",
        "axes.prop_cycle": mpl.cycler(color=PALETTE) + mpl.cycler(linestyle=LINE_STYLES), "font.size": 10,
        "legend.frameon": False,
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
    for ax, (label, values, fmt) in zip(axes, panels, strict=True):
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


def draw_roofline(ax: plt.Axes, roofs: Mapping[str, float], bandwidth_gbs: float,
                  points: Sequence[tuple[str, float, float, str]] = (), highlight: str | None = None,
                  int8_gops: float | None = None) -> None:
    """A log-log roofline with one fp32 roof per library (``{library: peak GFLOP/s}``) under one memory slope,
    and ``(label, intensity, GFLOP/s, library)`` points coloured by the roof that applies to them."""
    if not roofs:
        raise ValueError("draw_roofline needs at least one roof, e.g. {'BLAS': 300.0}")
    colors = {library: PALETTE[i % len(PALETTE)] for i, library in enumerate(roofs)}
    unknown = sorted({p[3] for p in points} - set(roofs))
    if unknown:
        raise ValueError(f"points refer to roofs {unknown} that are not drawn; roofs: {list(roofs)}")
    intensities = [p[1] for p in points if p[1] > 0] or [1.0]
    low = min(min(intensities) / 2, 0.05)
    high = max(max(intensities) * 2, 4 * max(roofs.values()) / bandwidth_gbs)
    xs = [low * (high / low) ** (i / 200) for i in range(201)]
    for library, peak in roofs.items():
        ax.plot(xs, [min(peak, bandwidth_gbs * x) for x in xs], color=colors[library], lw=2,
                label=f"fp32 roof of {library}: {peak:.0f} GFLOP/s")
        ax.axvline(peak / bandwidth_gbs, color=colors[library], lw=0.8, ls=":")
    if int8_gops:
        ax.plot(xs, [min(int8_gops, bandwidth_gbs * x) for x in xs], color="gray", lw=1, ls="--",
                label=f"int8 Linear kernel ({int8_gops:.0f} GOP/s)")
    for label, intensity, gflops, library in points:
        chosen = label == highlight
        ax.scatter([intensity], [gflops], s=60 if chosen else 18, zorder=3, color=colors[library],
                   edgecolors="black" if chosen else "none", alpha=1.0 if chosen or highlight is None else 0.45)
        if chosen or (highlight is None and len(points) <= 12):
            ax.annotate(label, (intensity, gflops), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("arithmetic intensity (FLOPs per byte moved)")
    ax.set_ylabel("performance (GFLOP/s)")
    ax.plot([], [], color="gray", lw=0.8, ls=":", label=f"ridge points (memory slope {bandwidth_gbs:.0f} GB/s)")
    ax.legend(loc="lower right", fontsize=8)


def profile_bars(layers: Sequence, title: str = "") -> plt.Figure:
    """Per layer: weight bytes and activation bytes stacked (left), MACs (right). Element-wise layers (batch norm,
    ReLU, pooling) are included: they compute nothing but move their activations."""
    chosen = [layer for layer in layers if layer.moved_bytes > 0]
    names = [layer.name for layer in chosen]
    fig, (ax_bytes, ax_macs) = plt.subplots(1, 2, figsize=(11, 0.35 * len(names) + 1.8), sharey=True)
    weights = [layer.weight_bytes / 1e3 for layer in chosen]
    activations = [layer.activation_bytes / 1e3 for layer in chosen]
    ax_bytes.barh(names, weights, color=PALETTE[0], label="weights")
    ax_bytes.barh(names, activations, left=weights, color=PALETTE[1], label="activations (in + out)")
    ax_bytes.set_xlabel("bytes moved per forward call (kB)")
    ax_bytes.legend(loc="lower right")
    ax_macs.barh(names, [layer.macs / 1e6 for layer in chosen], color=PALETTE[2])
    ax_macs.set_xlabel("multiply-accumulates (millions)")
    ax_bytes.invert_yaxis()
    for ax in (ax_bytes, ax_macs):
        ax.grid(axis="y", visible=False)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def pareto_plot(ax: plt.Axes, rows: Sequence[dict], x_key: str, log_x: bool = True, title: str = "") -> None:
    """Benchmark rows (see :mod:`course_lib.tradeoffs`) as grey markers of metric against ``x_key`` ("latency_ms"
    or "size_bytes", drawn in kB), and their Pareto front as a coloured step line with "model variant" labels."""
    from course_lib.tradeoffs import check_rows, pareto_front  # noqa: PLC0415 (plots import the lessons lazily)

    axis_labels = {"latency_ms": "latency per call (ms)", "size_bytes": "file size (kB)"}
    if x_key not in axis_labels:
        raise ValueError(f"unknown x_key {x_key!r}: choose one of {', '.join(axis_labels)}")
    if not rows:
        raise ValueError("no rows to plot: load them with course_lib.tradeoffs.load_rows(PATH)")
    check_rows(rows)
    scale = 1e-3 if x_key == "size_bytes" else 1.0
    costs = [row[x_key] * scale for row in rows]
    metrics = [row["metric"] for row in rows]
    ax.scatter(costs, metrics, color="0.65", s=18, label="all variants", zorder=2)
    front = pareto_front(list(zip(metrics, costs)))
    ax.step([costs[i] for i in front], [metrics[i] for i in front], where="post", color=PALETTE[0], lw=1.5,
            marker="o", markersize=5, label="Pareto front (nothing is both better and cheaper)", zorder=3)
    for i in front:
        ax.annotate(f"{rows[i]['model']} {rows[i]['variant']}", (costs[i], metrics[i]), textcoords="offset points",
                    xytext=(4, -10), fontsize=7, color=PALETTE[0])
    if log_x:
        ax.set_xscale("log")
    metric_names = sorted({row["metric_name"] for row in rows})
    ax.set_xlabel(axis_labels[x_key] + (", log scale" if log_x else ""))
    ax.set_ylabel(metric_names[0] if len(metric_names) == 1 else f"metric ({', '.join(metric_names)})")
    if title:
        ax.set_title(title)
    ax.legend(loc="lower right", fontsize=8)
