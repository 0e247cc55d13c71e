import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from course_lib.data import FASHION_MNIST_CLASSES  # noqa: E402
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
