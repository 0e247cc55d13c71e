"""Learner progress: the exercises a learner has passed, and the course map that notebook 00 shows.

Every checker that accepts an answer records the exercise in ``notebooks/my_progress.json`` (not tracked by git),
or in ``$COURSE_PROGRESS_FILE`` when that is set: the tests and the grader point it at a file of their own.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path

import nbformat

from course_lib.io import atomic_path
from course_lib.notebooks import NOTEBOOK_DIR, exercise_of, is_solution_cell, solved_notebooks

PROGRESS_FILE = NOTEBOOK_DIR / "my_progress.json"
PROGRESS_ENV = "COURSE_PROGRESS_FILE"

# What a learner needs to read, run and do the exercises of each notebook (an estimate, in minutes); the
# machine's share of it is measured separately from the committed notebooks' execution times.
STUDY_MINUTES = {0: 20, 1: 60, 2: 120, 3: 120, 4: 90, 5: 90, 6: 90, 7: 90, 8: 120}


class ProgressFileError(ValueError):
    """The progress file exists but cannot be read."""


def progress_file() -> Path:
    """Where progress is kept: ``$COURSE_PROGRESS_FILE`` if set, else ``notebooks/my_progress.json``."""
    return Path(os.environ.get(PROGRESS_ENV) or PROGRESS_FILE)


def passed_exercises(path: Path | None = None) -> dict[str, str]:
    """``{"N.M": when it was first passed (ISO time)}`` from the progress file (empty if there is none yet)."""
    path = path or progress_file()
    if not path.exists():
        return {}
    try:
        recorded = json.loads(path.read_text())
        if not isinstance(recorded, dict) or not all(isinstance(v, str) for v in recorded.values()):
            raise ValueError("expected an object mapping exercise numbers to times")
    except ValueError as error:
        raise ProgressFileError(f"{path} is not a readable progress file ({error}); delete it and re-run the "
                                "checkers of the exercises you have done to rebuild it") from error
    return recorded


def record_pass(exercise: str) -> None:
    """Record that ``exercise`` ("N.M") was passed; an unreadable progress file is reported, not overwritten."""
    path = progress_file()
    try:
        recorded = passed_exercises(path)
    except ProgressFileError as error:
        print(f"(progress not recorded: {error})")
        return
    if exercise in recorded:
        return
    recorded[exercise] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(recorded, indent=2, sort_keys=True) + "\n")


@dataclass(frozen=True)
class NotebookProgress:
    """One row of the course map."""

    number: int
    name: str
    exercises: tuple[str, ...]
    passed: tuple[str, ...]
    study_minutes: int
    run_seconds: float | None  # measured when the committed notebook was executed (2 CPU cores); None if unknown

    @property
    def status(self) -> str:
        if not self.passed:
            return "not started"
        return "done" if len(self.passed) == len(self.exercises) else "in progress"


def _timestamp(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


@lru_cache(maxsize=None)
def notebook_outline(path: Path) -> tuple[tuple[str, ...], float | None]:
    """The exercises ("N.M") of a solved notebook and the wall time of its committed execution in seconds."""
    notebook = nbformat.read(str(path), as_version=4)
    exercises = tuple(exercise_of(cell)[0].removeprefix("Exercise ") for cell in notebook.cells
                      if is_solution_cell(cell))
    times = [cell.metadata.get("execution", {}) for cell in notebook.cells if cell.cell_type == "code"]
    starts = [_timestamp(t["iopub.execute_input"]) for t in times if "iopub.execute_input" in t]
    ends = [_timestamp(t["shell.execute_reply"]) for t in times if "shell.execute_reply" in t]
    run_seconds = (max(ends) - min(starts)).total_seconds() if starts and ends else None
    return exercises, run_seconds


def course_map(progress: dict[str, str] | None = None) -> list[NotebookProgress]:
    """Every notebook with its exercises, those passed (from the progress file by default) and its time."""
    progress = passed_exercises() if progress is None else progress
    rows = []
    for path in solved_notebooks():
        number = int(re.match(r"\d+", path.name).group())
        exercises, run_seconds = notebook_outline(path)
        rows.append(NotebookProgress(number, path.stem, exercises, tuple(e for e in exercises if e in progress),
                                     STUDY_MINUTES.get(number, 60), run_seconds))
    return rows


def format_course_map(rows: list[NotebookProgress]) -> str:
    """The course map as a plain-text table."""
    lines = [f"{'notebook':<22} {'exercises passed':>16}  {'study':>7}  {'runs in':>9}  status",
             f"{'':<22} {'':>16}  {'(est.)':>7}  {'(2 cores)':>9}"]
    for row in rows:
        runs = "?" if row.run_seconds is None else f"{row.run_seconds / 60:.0f} min"
        runs = "<1 min" if row.run_seconds is not None and row.run_seconds < 60 else runs
        lines.append(f"{row.name:<22} {len(row.passed):>8} of {len(row.exercises):<5}  "
                     f"{row.study_minutes:>3} min  {runs:>9}  {row.status}")
    done = sum(len(r.passed) for r in rows)
    total = sum(len(r.exercises) for r in rows)
    lines.append(f"{'all':<22} {done:>8} of {total:<5}  {sum(r.study_minutes for r in rows) / 60:>5.1f} h")
    return "\n".join(lines)
