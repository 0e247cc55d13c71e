"""ONNX export, ONNX Runtime sessions and int8, AOTInductor packages, and the operator profile."""

import numpy as np
import pytest
import torch

from course_lib import deploy
from course_lib.fraud import FraudScorer
from course_lib.models import StudentCNN


def _cnn():
    torch.manual_seed(0)
    return StudentCNN().eval()


def test_tools_print_nothing(tmp_path, capfd):
    """Exporting and quantizing leave no notes in a notebook's output."""
    model = FraudScorer(vocabulary=(100, 50, 24), dims=(4, 4, 2), hidden=(8,)).eval()
    deploy.export_onnx(model, (torch.randn(2, 9), torch.zeros(2, 3, dtype=torch.int64)), tmp_path / "s.onnx",
                       ("dense", "ids"))
    deploy.quantize_onnx_dynamic(tmp_path / "s.onnx", tmp_path / "s-int8.onnx")
    captured = capfd.readouterr()
    assert captured.out == "" and captured.err == ""


def test_onnx_export_matches_pytorch_at_any_batch_size(tmp_path):
    model = _cnn()
    size = deploy.export_onnx(model, (torch.randn(1, 1, 28, 28),), tmp_path / "cnn.onnx", ("images",))
    assert size == (tmp_path / "cnn.onnx").stat().st_size > 29_178 * 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cnn.onnx"]  # no temporary file left behind
    session = deploy.OrtModel(tmp_path / "cnn.onnx", threads=1)
    for batch in (1, 7):
        x = torch.randn(batch, 1, 28, 28)
        with torch.inference_mode():
            np.testing.assert_allclose(session(x).numpy(), model(x).numpy(), atol=1e-4)


def test_onnx_runtime_static_int8_is_smaller_and_agrees(tmp_path):
    model = _cnn()
    deploy.export_onnx(model, (torch.randn(1, 1, 28, 28),), tmp_path / "cnn.onnx", ("images",))
    calibration = [{"images": torch.randn(16, 1, 28, 28).numpy()} for _ in range(2)]
    size = deploy.quantize_onnx_static(tmp_path / "cnn.onnx", tmp_path / "cnn-int8.onnx", calibration)
    assert size < (tmp_path / "cnn.onnx").stat().st_size / 2.5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cnn-int8.onnx", "cnn.onnx"]
    x = torch.randn(64, 1, 28, 28)
    with torch.inference_mode():
        agree = (deploy.OrtModel(tmp_path / "cnn-int8.onnx")(x).argmax(1) == model(x).argmax(1)).float().mean()
    assert agree > 0.9
    with pytest.raises(ValueError, match="at least one calibration batch"):
        deploy.quantize_onnx_static(tmp_path / "cnn.onnx", tmp_path / "x.onnx", [])


def test_onnx_runtime_dynamic_int8_of_a_scorer_with_embeddings(tmp_path):
    torch.manual_seed(0)
    model = FraudScorer(vocabulary=(20_000, 8_000, 24), rows=(4_096, 8_000, 24), dims=(16, 16, 4), hidden=(32,)).eval()
    dense, ids = torch.randn(9, 9), torch.randint(0, 24, (9, 3))
    deploy.export_onnx(model, (dense[:2], ids[:2]), tmp_path / "s.onnx", ("dense", "ids"))
    size = deploy.quantize_onnx_dynamic(tmp_path / "s.onnx", tmp_path / "s-int8.onnx")
    assert size < (tmp_path / "s.onnx").stat().st_size / 3.5  # the tables dominate: int8 rows
    with torch.inference_mode():
        reference = model(dense, ids).numpy()
    np.testing.assert_allclose(deploy.OrtModel(tmp_path / "s.onnx")(dense, ids).numpy(), reference, atol=1e-5)
    np.testing.assert_allclose(deploy.OrtModel(tmp_path / "s-int8.onnx")(dense, ids).numpy(), reference, atol=0.05)


def test_ort_model_refuses_wrong_inputs_and_training(tmp_path):
    deploy.export_onnx(_cnn(), (torch.randn(1, 1, 28, 28),), tmp_path / "cnn.onnx", ("images",))
    session = deploy.OrtModel(tmp_path / "cnn.onnx")
    with pytest.raises(ValueError, match=r"takes 1 inputs \(images\), got 2"):
        session(torch.zeros(1, 1, 28, 28), torch.zeros(1))
    with pytest.raises(NotImplementedError, match="cannot be trained"):
        session.train()
    assert session.eval() is session and session.training is False
    with pytest.raises(ValueError, match="one input name per example input"):
        deploy.export_onnx(_cnn(), (torch.randn(1, 1, 28, 28),), tmp_path / "x.onnx", ("a", "b"))


@pytest.mark.filterwarnings("ignore:.*torch.jit.script_method.*:DeprecationWarning")
def test_aoti_package_runs_like_the_model(tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2)).eval()
    x = torch.randn(1, 8)
    package = deploy.aoti_package(model, (x,), tmp_path / "m.pt2")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt2"]
    with torch.inference_mode():
        torch.testing.assert_close(package(x), model(x))


@pytest.mark.filterwarnings("ignore:.*torch.jit.script_method.*:DeprecationWarning")
def test_aoti_package_takes_a_pt2e_int8_graph(tmp_path):
    """A PT2E int8 graph refuses .eval(): the package is built from it as it is, and computes what it computes."""
    from course_lib.quantize import quantize_static

    int8 = quantize_static(_cnn(), torch.randn(32, 1, 28, 28))
    x = torch.randn(1, 1, 28, 28)
    package = deploy.aoti_package(int8, (x,), tmp_path / "int8.pt2")
    with torch.inference_mode():
        torch.testing.assert_close(package(x), int8(x), atol=0.05, rtol=0.05)


def test_profile_names_the_operators_and_stays_silent(capfd):
    model = _cnn()
    ops = deploy.profile_ops(model, (torch.randn(1, 1, 28, 28),), calls=5, top=4)
    assert len(ops) == 4 and all(us >= 0 and count >= 0 for _, us, count in ops)
    assert any("conv" in name for name, _, _ in ops)
    captured = capfd.readouterr()
    assert captured.err == "" and captured.out == ""
