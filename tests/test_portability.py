"""The portability check emulates another CPU than this one, and says so when it cannot."""

import pytest
import torch

from course_lib import portability


def test_every_known_capability_maps_to_a_lesser_one():
    assert portability.alternative_isa("AVX512")["ATEN_CPU_CAPABILITY"] == "avx2"
    assert portability.alternative_isa("AVX2")["ATEN_CPU_CAPABILITY"] == "default"
    with pytest.raises(ValueError, match="run strict nbval on another machine"):
        portability.alternative_isa("ZVECTOR")


def test_the_override_takes_effect_in_a_fresh_process():
    native = torch.backends.cpu.get_cpu_capability()
    if native not in portability.ALTERNATIVE_ISA:
        pytest.skip(f"no emulation known for {native}")
    env = portability.alternative_isa(native)
    assert portability.capability_under(env) == portability.EXPECTED_CAPABILITY[env["ATEN_CPU_CAPABILITY"]] != native
