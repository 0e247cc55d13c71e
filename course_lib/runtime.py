"""One setup call for every notebook: seeds, a fixed thread count, the device, quiet warnings."""

from __future__ import annotations

import logging
import os
import platform
import random
import shutil
import warnings
from dataclasses import dataclass

import numpy as np
import torch

DEFAULT_SEED = 0
DEFAULT_THREADS = 2


@dataclass(frozen=True)
class Runtime:
    """What :func:`setup` chose; printed at the top of every notebook."""

    device: torch.device
    threads: int
    seed: int
    torch_version: str
    cpu_capability: str

    def __str__(self) -> str:
        return (
            f"device={self.device.type} threads={self.threads} seed={self.seed} "
            f"torch={self.torch_version} cpu_capability={self.cpu_capability}"
        )


def resolve_device(device: str | None = None) -> torch.device:
    """Turn ``"cpu"``, ``"cuda"`` or ``None`` (auto: the ``COURSE_DEVICE`` variable, else cuda when present) into a device."""
    choice = device or os.environ.get("COURSE_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")
    if choice not in ("cpu", "cuda"):
        raise ValueError(f"unknown device {choice!r}: use 'cpu' or 'cuda'")
    if choice == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(
            "device 'cuda' was requested but PyTorch sees no CUDA GPU "
            f"(torch {torch.__version__}, CUDA build: {torch.version.cuda is not None}). "
            "Use device='cpu', or install the CUDA wheel of torch on a machine with an NVIDIA GPU (see README)."
        )
    return torch.device(choice)


INT8_CPU_FEATURES = {
    "avx512_vnni": "AVX-512 VNNI (int8 dot products on 512-bit vectors)",
    "avx_vnni": "AVX-VNNI (int8 dot products on 256-bit vectors)",
    "amx_int8": "AMX (int8 matrix tiles)",
}


BF16_CPU_FEATURES = {
    "avx512_bf16": "AVX-512 BF16 (bfloat16 dot products on 512-bit vectors)",
    "amx_bf16": "AMX (bfloat16 matrix tiles)",
}


def cpu_int8_features(cpuinfo: str | None = None) -> list[str] | None:
    """The CPU's fast int8 instruction sets, read from ``/proc/cpuinfo``; ``[]`` when it has none, ``None`` when
    they cannot be read on this OS (e.g. macOS, Windows)."""
    return _cpu_features(INT8_CPU_FEATURES, cpuinfo)


def cpu_bf16_features(cpuinfo: str | None = None) -> list[str] | None:
    """The CPU's native bfloat16 instruction sets (without them bf16 is emulated in float32 and often slower), read
    as :func:`cpu_int8_features` reads the int8 ones."""
    return _cpu_features(BF16_CPU_FEATURES, cpuinfo)


def _cpu_features(table: dict[str, str], cpuinfo: str | None) -> list[str] | None:
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo") as f:
                cpuinfo = f.read()
        except OSError:
            return None
    flags = set(cpuinfo.split())
    return [description for flag, description in table.items() if flag in flags]


def describe_int8_features(features: list[str] | None) -> str:
    """A learner-readable line for :func:`cpu_int8_features`'s answer."""
    if features is None:
        return "unknown on this OS (the CPU flags cannot be read here)"
    return ", ".join(features) if features else "none (int8 runs on plain AVX2/AVX-512 instructions)"


def is_x86(machine: str | None = None) -> bool:
    """Whether this is an x86-64 CPU: the course's int8 CPU kernels (oneDNN/fbgemm via PT2E) exist only there."""
    return (machine or platform.machine()).lower() in ("x86_64", "amd64", "x86-64")


INT8_UNAVAILABLE = ("int8 CPU kernels need an x86-64 CPU, and this one is {machine}: the int8 cells are skipped "
                    "(the arithmetic from scratch above still runs everywhere).")


def cpp_compiler() -> str | None:
    """The C++ compiler ``torch.compile`` would use on the CPU (``$CXX``, else ``c++``/``g++``/``clang++``), or None."""
    for name in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


class CompilerMissingError(RuntimeError):
    """``torch.compile`` on a CPU needs a C++ compiler and none was found."""


def require_compiler() -> str:
    """The C++ compiler's path, or :class:`CompilerMissingError` saying how to install one."""
    compiler = cpp_compiler()
    if compiler is None:
        raise CompilerMissingError(
            "torch.compile on a CPU needs a C++ compiler, and none was found (looked for $CXX, c++, g++, clang++). "
            "Install one (Debian/Ubuntu: `sudo apt-get install g++`; macOS: `xcode-select --install`; "
            "Windows: the MSVC build tools), or skip the compiled variants: eager PyTorch needs no compiler."
        )
    return compiler


def seed_everything(seed: int = DEFAULT_SEED) -> None:
    """Seed Python, NumPy and PyTorch (CPU and CUDA) so that runs repeat."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def quiet_warnings() -> None:
    """Silence known, harmless library warnings at their source so that notebook outputs stay clean."""
    warnings.filterwarnings("ignore", message=".*torch.ao.quantization.*is deprecated.*")
    warnings.filterwarnings("ignore", category=DeprecationWarning, module="jupyter_client")
    warnings.filterwarnings("ignore", message=".*TypedStorage is deprecated.*")
    warnings.filterwarnings("ignore", message=".*quantized tensor creation functions.*deprecated.*")
    warnings.filterwarnings("ignore", message=".*To copy construct from a tensor.*")
    warnings.filterwarnings("ignore", message=".*Sparse CSR tensor support is in beta.*")  # inside inductor's int8 lowering
    # torchao on a CPU-only machine reports CUDA extensions it cannot load, and its import makes torch log a
    # deprecation notice about an Enum it registers: both harmless here.
    for name in ("torchao", "torch.utils._pytree"):
        logging.getLogger(name).setLevel(logging.ERROR)


def setup(seed: int = DEFAULT_SEED, threads: int | None = None, device: str | None = None) -> Runtime:
    """Prepare a notebook or script: seed everything, fix the thread count, choose the device.

    ``threads`` defaults to the ``COURSE_THREADS`` environment variable, else 2 (the course's reference laptop).
    ``device`` is ``"cpu"``, ``"cuda"`` or ``None`` for the best available one.
    """
    threads = threads if threads is not None else int(os.environ.get("COURSE_THREADS", DEFAULT_THREADS))
    if threads < 1:
        raise ValueError(f"threads must be at least 1, got {threads}")
    torch.set_num_threads(threads)
    seed_everything(seed)
    quiet_warnings()
    return Runtime(
        device=resolve_device(device),
        threads=threads,
        seed=seed,
        torch_version=torch.__version__,
        cpu_capability=torch.backends.cpu.get_cpu_capability(),
    )
