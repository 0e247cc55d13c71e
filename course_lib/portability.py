"""The portability check: strict nbval of the committed notebooks under another instruction set.

    python -m course_lib.portability [NOTEBOOK ...]      # or: make portability

Notebooks are executed (``make notebooks``) on the author's CPU, and must pass strict nbval on every learner's
CPU, whose vector instructions round floats differently (AVX-512 vs AVX2 vs plain SSE). This re-runs them with
PyTorch, oneDNN and MKL limited to a *different* instruction set than this CPU's best, which reproduces another
machine's numerics: AVX-512 machines check as AVX2, AVX2 machines as the ``default`` (SSE) kernels. Run it before
committing executed notebooks; any output that changes must be rounded, or tagged ``nbval-ignore-output`` with its
claim asserted within a tolerance.
"""

from __future__ import annotations

import os
import subprocess
import sys

import torch

from course_lib.notebooks import solved_notebooks

# This CPU's best PyTorch capability -> the variables that make PyTorch, oneDNN and MKL use a lesser one.
ALTERNATIVE_ISA: dict[str, dict[str, str]] = {
    "AVX512": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"},
    "AVX2": {"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41", "MKL_ENABLE_INSTRUCTIONS": "SSE4_2"},
}
EXPECTED_CAPABILITY = {"avx2": "AVX2", "default": "DEFAULT"}


def alternative_isa(native: str) -> dict[str, str]:
    """The environment variables that emulate another CPU than one whose PyTorch capability is ``native``."""
    if native not in ALTERNATIVE_ISA:
        raise ValueError(f"no alternative instruction set is known for cpu_capability {native!r} "
                         f"(known: {', '.join(ALTERNATIVE_ISA)}): run strict nbval on another machine instead")
    return ALTERNATIVE_ISA[native]


def capability_under(env: dict[str, str]) -> str:
    """PyTorch's CPU capability in a fresh process with ``env`` applied (proves the override takes effect)."""
    probe = [sys.executable, "-c", "import torch; print(torch.backends.cpu.get_cpu_capability())"]
    return subprocess.run(probe, env={**os.environ, **env}, capture_output=True, text=True, check=True).stdout.strip()


def main(argv: list[str] | None = None) -> int:
    notebooks = (argv if argv is not None else sys.argv[1:]) or [str(p) for p in solved_notebooks()]
    native = torch.backends.cpu.get_cpu_capability()
    env = alternative_isa(native)
    emulated = capability_under(env)
    if emulated != EXPECTED_CAPABILITY[env["ATEN_CPU_CAPABILITY"]]:
        raise SystemExit(f"the override did not take effect: PyTorch reports {emulated!r} under {env}")
    print(f"portability check: notebooks executed on {native}, verified as {emulated} "
          f"({' '.join(f'{k}={v}' for k, v in env.items())})", flush=True)
    command = [sys.executable, "-m", "pytest", "-q", *notebooks]
    return subprocess.run(command, env={**os.environ, **env}).returncode


if __name__ == "__main__":
    sys.exit(main())
