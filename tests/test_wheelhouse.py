"""The offline classroom: a wheelhouse folder that setup installs from with no network."""

import os
import subprocess
import sys
import venv

import pytest

from course_lib import wheelhouse
from course_lib.data import PROJECT_ROOT

SCRIPT = PROJECT_ROOT / "course_lib" / "wheelhouse.py"


def test_pins_are_read_and_anything_else_refused(tmp_path):
    good = tmp_path / "r.txt"
    good.write_text("# a comment\ntorch==2.13.0  # why\n\nscikit-learn==1.9.1\n")
    assert wheelhouse.pins(good) == [("torch", "2.13.0"), ("scikit-learn", "1.9.1")]
    loose = tmp_path / "loose.txt"
    loose.write_text("numpy>=2\n")
    with pytest.raises(wheelhouse.WheelhouseError, match="'numpy>=2' is not an exact pin"):
        wheelhouse.pins(loose)


def test_every_course_requirement_is_an_exact_pin():
    assert len(wheelhouse.pins(wheelhouse.REQUIREMENTS)) >= 15
    assert wheelhouse.pins(wheelhouse.DATA_REQUIREMENTS)


def test_check_names_each_missing_package_and_the_fix(tmp_path):
    house = tmp_path / "wheelhouse"
    house.mkdir()
    for name in ("torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl", "scikit_learn-1.9.1-cp311-cp311-x.whl",
                 "gensim-4.4.0.tar.gz", "numpy-2.4.5-cp311-cp311-x.whl"):
        (house / name).touch()
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("torch==2.13.0\nscikit-learn==1.9.1\ngensim==4.4.0\nnumpy==2.4.6\ntqdm==4.70.1\n")
    assert wheelhouse.missing_pins(house, [requirements]) == ["numpy==2.4.6", "tqdm==4.70.1"]
    with pytest.raises(wheelhouse.WheelhouseError) as error:
        wheelhouse.check(house, [requirements])
    message = str(error.value)
    assert "lacks numpy==2.4.6, tqdm==4.70.1" in message
    assert "pip download --dest" in message and "make wheelhouse" in message


def test_setup_with_an_incomplete_wheelhouse_stops_before_installing(tmp_path):
    (tmp_path / "wheelhouse").mkdir()
    run = subprocess.run([sys.executable, str(SCRIPT), "install", "--wheelhouse", str(tmp_path / "wheelhouse")],
                         capture_output=True, text=True)
    assert run.returncode == 1
    assert "lacks torch==2.13.0" in run.stderr and "make wheelhouse" in run.stderr


def test_install_from_the_wheelhouse_with_the_network_ruled_out(tmp_path):
    """Download a small set of pins (and the build backend) once, then install them, the data list and the course
    itself into a fresh virtual environment with pip's network cut off: a dead proxy, no configuration files."""
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("tqdm==4.70.1\n")
    data_requirements = tmp_path / "requirements-data.txt"
    data_requirements.write_text("# no data packages in this test\n")
    house = tmp_path / "wheelhouse"
    wheelhouse.download(house, requirements, data_requirements)
    assert {f.name.split("-")[0] for f in house.iterdir()} >= {"tqdm", "setuptools"}

    venv.create(tmp_path / "venv", with_pip=True)
    python = tmp_path / "venv" / "bin" / "python"
    offline = dict(os.environ, PIP_CONFIG_FILE=os.devnull, PIP_PROXY="http://127.0.0.1:9", PIP_RETRIES="0",
                   PIP_TIMEOUT="2", HTTPS_PROXY="http://127.0.0.1:9", HTTP_PROXY="http://127.0.0.1:9",
                   PIP_NO_CACHE_DIR="1")
    run = subprocess.run([str(python), str(SCRIPT), "install", "--wheelhouse", str(house), "--requirements",
                          str(requirements), "--data-requirements", str(data_requirements)],
                         capture_output=True, text=True, env=offline)
    assert run.returncode == 0, run.stderr
    assert "installing offline from" in run.stdout
    shown = subprocess.run([str(python), "-m", "pip", "show", "tqdm", "course_lib"], capture_output=True,
                           text=True, env=offline).stdout
    assert "Version: 4.70.1" in shown and str(PROJECT_ROOT) in shown
