"""Shared test setup: a fixed thread count and seeds, as in the notebooks; private predictions and progress files."""

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest

import course_lib
from course_lib.exercises import PREDICTIONS_ENV
from course_lib.progress import PROGRESS_ENV


def _isolate_learner_files() -> None:
    """Point ``record_prediction`` and the checkers' progress records at temporary files, so that `make test`
    never touches a learner's ``notebooks/my_predictions.json`` or ``my_progress.json``. Set at import, before
    nbval starts its kernels: they inherit it."""
    folder = tempfile.mkdtemp(prefix="course-learner-files-")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    os.environ[PREDICTIONS_ENV] = str(Path(folder) / "my_predictions.json")
    os.environ[PROGRESS_ENV] = str(Path(folder) / "my_progress.json")


_isolate_learner_files()


@pytest.fixture(autouse=True)
def _course_setup():
    course_lib.setup(device="cpu")
