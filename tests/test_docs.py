"""The instructor guide's measured figures agree with the committed notebooks."""

import re

from course_lib.data import PROJECT_ROOT
from course_lib.progress import course_map

GUIDE = PROJECT_ROOT / "docs" / "INSTRUCTOR.md"


def test_guide_is_linked_from_the_readme():
    assert "(docs/INSTRUCTOR.md)" in (PROJECT_ROOT / "README.md").read_text()


def test_run_times_and_exercise_counts_match_the_notebooks():
    """Each notebook's row: its exercise count and the run time of its committed execution (within 15%)."""
    rows = {match.group(1): (int(match.group(2)), int(match.group(3))) for match in re.finditer(
        r"^\| \[(\d\d) · [^]]+\]\([^)]+\) \|[^|]*\| (\d+) \| (\d+) s \|", GUIDE.read_text(), re.M)}
    notebooks = course_map({})
    assert set(rows) == {f"{row.number:02d}" for row in notebooks}
    for row in notebooks:
        exercises, seconds = rows[f"{row.number:02d}"]
        assert exercises == len(row.exercises)
        assert abs(seconds - row.run_seconds) <= 0.15 * row.run_seconds + 2, (row.name, seconds, row.run_seconds)


def test_every_exercise_is_listed():
    guide = GUIDE.read_text()
    for row in course_map({}):
        for exercise in row.exercises:
            assert re.search(rf"\b{re.escape(exercise)}\b", guide), f"exercise {exercise} is not in the guide"
