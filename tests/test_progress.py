"""Learner progress: what the checkers record, and the course map notebook 00 shows."""

import json

import pytest

from course_lib import progress
from course_lib.exercises import passed
from course_lib.notebooks import solved_notebooks


@pytest.fixture
def progress_path(tmp_path, monkeypatch):
    path = tmp_path / "my_progress.json"
    monkeypatch.setenv(progress.PROGRESS_ENV, str(path))
    return path


def test_an_accepted_answer_is_recorded_once(progress_path, capsys):
    passed("3.1", "the mask is right")
    first = json.loads(progress_path.read_text())
    passed("3.1", "the mask is right")
    passed("3.2", "global threshold")
    recorded = json.loads(progress_path.read_text())
    assert set(recorded) == {"3.1", "3.2"} and recorded["3.1"] == first["3.1"]
    assert "✅ Exercise 3.1 passed" in capsys.readouterr().out


def test_the_tests_never_write_the_learners_file():
    assert progress.progress_file() != progress.PROGRESS_FILE, "conftest.py sets COURSE_PROGRESS_FILE"


def test_default_file_sits_beside_the_notebooks_and_is_ignored_by_git(monkeypatch):
    monkeypatch.delenv(progress.PROGRESS_ENV)
    assert progress.progress_file() == progress.PROGRESS_FILE
    assert "notebooks/my_progress.json" in (progress.NOTEBOOK_DIR.parent / ".gitignore").read_text().splitlines()


def test_a_corrupt_progress_file_is_reported_not_overwritten(progress_path, capsys):
    progress_path.write_text("{ not json")
    passed("0.1", "right")
    assert progress_path.read_text() == "{ not json"
    out = capsys.readouterr().out
    assert "progress not recorded" in out and str(progress_path) in out and "delete it" in out
    with pytest.raises(progress.ProgressFileError, match="delete it"):
        progress.course_map()


def test_course_map_counts_and_statuses(progress_path):
    progress_path.write_text(json.dumps({"0.1": "t", "0.2": "t", "0.3": "t", "2.1": "t", "9.9": "t"}))
    rows = progress.course_map()
    assert [r.name for r in rows] == [p.stem for p in solved_notebooks()]
    by_number = {r.number: r for r in rows}
    assert by_number[0].status == "done" and by_number[0].passed == ("0.1", "0.2", "0.3")
    assert by_number[2].status == "in progress" and by_number[2].passed == ("2.1",)
    assert by_number[3].status == "not started"
    assert all(len(r.exercises) >= 3 for r in rows)
    assert all(r.run_seconds is not None and 5 < r.run_seconds < 300 for r in rows), "each under 5 minutes"
    table = progress.format_course_map(rows)
    assert "00_welcome" in table and "3 of 3" in table and f"4 of {sum(len(r.exercises) for r in rows)}" in table
