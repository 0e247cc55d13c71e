"""The course installs and imports on every supported Python present on this machine (3.11, 3.12, 3.13).

Each other version gets a new virtual environment with every pin, the data packages and the course installed by
the same script as `make setup`, then runs every import the notebooks make. On Linux the package index's PyTorch is
the CUDA build (about 5 GB with its libraries), so this is opt-in: `make test-pythons` runs it.
"""

import ast
import glob
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from course_lib.data import PROJECT_ROOT
from course_lib.notebooks import solved_notebooks

SUPPORTED = ("3.11", "3.12", "3.13")
OPT_IN = "COURSE_TEST_PYTHONS"


def other_pythons() -> dict[str, str]:
    """``{"3.12": path}`` for each supported version other than this one that runs here (PATH or pyenv)."""
    found = {}
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    pyenv_root = os.environ.get("PYENV_ROOT", str(Path.home() / ".pyenv"))
    for version in SUPPORTED:
        if version == here:
            continue
        candidates = [shutil.which(f"python{version}")] + sorted(
            glob.glob(f"{pyenv_root}/versions/{version}.*/bin/python{version}"))
        for candidate in filter(None, candidates):
            run = subprocess.run([candidate, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                                 capture_output=True, text=True)
            if run.returncode == 0 and run.stdout.strip() == version:
                found[version] = candidate
                break
    return found


def notebook_imports() -> list[str]:
    """Every top-level import statement of the solved notebooks' code cells, each once."""
    statements: dict[str, None] = {}
    for path in solved_notebooks():
        for cell in nbformat.read(str(path), as_version=4).cells:
            if cell.cell_type != "code":
                continue
            try:
                tree = ast.parse(cell.source)
            except SyntaxError:  # IPython magics; none of the course's cells use them for imports
                continue
            for node in tree.body:
                if isinstance(node, (ast.Import, ast.ImportFrom)):
                    statements[ast.unparse(node)] = None
    return list(statements)


def test_the_notebooks_imports_are_collected():
    imports = notebook_imports()
    assert "import torch" in imports and any(s.startswith("from course_lib") for s in imports)


def test_makefile_and_readme_state_the_supported_range():
    makefile = (PROJECT_ROOT / "Makefile").read_text()
    assert "(3, 11) <= sys.version_info[:2] <= (3, 13)" in makefile
    assert "Python 3.11, 3.12 or 3.13" in (PROJECT_ROOT / "README.md").read_text()


@pytest.mark.skipif(not os.environ.get(OPT_IN), reason=(
    "opt-in (downloads about 5 GB per Python version): `make test-pythons` installs the course into a new virtual "
    "environment for each other supported Python on this machine"))
@pytest.mark.parametrize("version", SUPPORTED)
def test_install_and_import_on_another_python(version, tmp_path):
    python = other_pythons().get(version)
    if python is None:
        pytest.skip(f"Python {version} is this test's own interpreter, or not on this machine")
    subprocess.run([python, "-m", "venv", str(tmp_path / "venv")], check=True)
    venv_python = tmp_path / "venv" / "bin" / "python"
    install = subprocess.run([str(venv_python), str(PROJECT_ROOT / "course_lib" / "wheelhouse.py"), "install",
                              "--wheelhouse", str(tmp_path / "no-wheelhouse")], capture_output=True, text=True)
    assert install.returncode == 0, install.stderr[-3000:]
    script = "\n".join(notebook_imports()) + "\nimport sys; print('%d.%d' % sys.version_info[:2])"
    run = subprocess.run([str(venv_python), "-c", script], capture_output=True, text=True, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.strip().endswith(version)
