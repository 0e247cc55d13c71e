"""Shared test setup: a fixed thread count and seeds, as in the notebooks; a private predictions file."""

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest

import course_lib
from course_lib.exercises import PREDICTIONS_ENV


def _isolate_predictions() -> None:
    """Point ``record_prediction`` at a temporary file, so that `make test` never overwrites a learner's
    ``notebooks/my_predictions.json``. Set at import, before nbval starts its kernels: they inherit it."""
    folder = tempfile.mkdtemp(prefix="course-predictions-")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    os.environ[PREDICTIONS_ENV] = str(Path(folder) / "my_predictions.json")


_isolate_predictions()


@pytest.fixture(autouse=True)
def _course_setup():
    course_lib.setup(device="cpu")
