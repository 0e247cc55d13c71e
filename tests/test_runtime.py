import builtins
from pathlib import Path

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
    here = cpu_int8_features()
    if Path("/proc/cpuinfo").exists():
        assert isinstance(here, list)
    else:
        assert here is None, "without /proc/cpuinfo the features are unknown, not absent"


def test_int8_cpu_features_are_unknown_where_cpuinfo_cannot_be_read(monkeypatch):
    from course_lib.runtime import cpu_int8_features, describe_int8_features

    def unreadable(*args, **kwargs):
        raise FileNotFoundError("/proc/cpuinfo")

    monkeypatch.setattr(builtins, "open", unreadable)
    assert cpu_int8_features() is None
    assert "unknown on this OS" in describe_int8_features(None)


def test_int8_cpu_features_are_described_for_a_learner():
    from course_lib.runtime import INT8_CPU_FEATURES, describe_int8_features

    assert describe_int8_features([]).startswith("none")
    both = [INT8_CPU_FEATURES["avx512_vnni"], INT8_CPU_FEATURES["amx_int8"]]
    assert describe_int8_features(both) == ", ".join(both)


@pytest.mark.parametrize("machine,expected", [
    ("x86_64", True), ("AMD64", True), ("x86-64", True), ("arm64", False), ("aarch64", False), ("ppc64le", False),
])
def test_is_x86_reads_the_machine_name(machine, expected):
    from course_lib.runtime import is_x86

    assert is_x86(machine) is expected


def test_int8_unavailable_names_the_machine():
    from course_lib.runtime import INT8_UNAVAILABLE

    assert "arm64" in INT8_UNAVAILABLE.format(machine="arm64")


def test_cpp_compiler_prefers_cxx(tmp_path, monkeypatch):
    from course_lib.runtime import cpp_compiler, require_compiler

    fake = tmp_path / "my-c++"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", "")
    monkeypatch.setenv("CXX", str(fake))
    assert cpp_compiler() == str(fake) and require_compiler() == str(fake)


def test_missing_compiler_says_how_to_install_one(monkeypatch):
    from course_lib.runtime import CompilerMissingError, cpp_compiler, require_compiler

    monkeypatch.setenv("CXX", "no-such-compiler-here")
    monkeypatch.setenv("PATH", "")
    assert cpp_compiler() is None
    with pytest.raises(CompilerMissingError, match=r"(?s)needs a C\+\+ compiler.*apt-get install g\+\+.*eager"):
        require_compiler()
