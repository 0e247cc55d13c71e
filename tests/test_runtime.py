import pytest
import torch

from course_lib.runtime import resolve_device, setup


def test_setup_fixes_threads_and_seeds():
    rt = setup(seed=123, threads=1, device="cpu")
    assert torch.get_num_threads() == 1 and rt.threads == 1 and rt.device.type == "cpu"
    first = torch.rand(3)
    setup(seed=123, threads=2, device="cpu")
    assert torch.equal(first, torch.rand(3)), "the same seed must give the same random numbers"
    assert rt.cpu_capability in str(rt)


def test_threads_must_be_positive():
    with pytest.raises(ValueError, match="at least 1"):
        setup(threads=0)


def test_unknown_device_is_rejected():
    with pytest.raises(ValueError, match="use 'cpu' or 'cuda'"):
        resolve_device("tpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_gpu_explains_what_to_do():
    with pytest.raises(RuntimeError, match="no CUDA GPU.*device='cpu'"):
        setup(device="cuda")


def test_auto_device_follows_environment(monkeypatch):
    monkeypatch.setenv("COURSE_DEVICE", "cpu")
    assert resolve_device(None).type == "cpu"


def test_int8_cpu_features_are_read_from_cpuinfo():
    from course_lib.runtime import cpu_int8_features

    assert cpu_int8_features("flags : fpu avx2 avx512f avx512_vnni") == ["AVX-512 VNNI (int8 dot products on 512-bit vectors)"]
    assert cpu_int8_features("flags : fpu avx2") == []
    assert isinstance(cpu_int8_features(), list)
