"""Shared test setup: a fixed thread count and seeds, as in the notebooks."""

import pytest

import course_lib


@pytest.fixture(autouse=True)
def _course_setup():
    course_lib.setup(device="cpu")
