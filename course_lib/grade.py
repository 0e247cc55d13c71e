"""Grade learners' notebooks: run each in a fresh kernel and record which exercises its checkers accepted.

    python -m course_lib.grade submissions/                  # one subfolder per learner
    python -m course_lib.grade alice/03_pruning.ipynb bob/03_pruning.ipynb --csv grades.csv --timeout 900

Each notebook runs on a copy in a temporary folder (the submission is never modified), with the course kernel,
every cell even after an error, and a time limit for the whole notebook. An exercise scores its points when its
checker accepted the answer (checkers record each pass in the file ``$COURSE_PROGRESS_FILE``, which the grader
points at a file of its own). A notebook that crashes, hangs or cannot be read is reported for that learner, and
grading goes on with the others. The score table is printed and written as CSV, one row per exercise.
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import nbformat

from course_lib.exercises import PREDICTIONS_ENV
from course_lib.io import atomic_path
from course_lib.notebooks import KERNEL_NAME, checker_cell_index, exercise_cells, nbgrader_id, solved_notebooks
from course_lib.progress import PROGRESS_ENV, passed_exercises

DEFAULT_TIMEOUT_S = 900  # the longest notebook runs in ~4 minutes on 2 cores
CSV_FIELDS = ("learner", "notebook", "exercise", "points", "max_points", "result", "message")


class SubmissionError(ValueError):
    """A path that cannot be graded; the message names the file and the fix."""


@dataclass
class ExerciseResult:
    exercise: str  # "N.M"
    points: float
    max_points: float
    message: str = ""  # why it scored nothing (empty when it passed)


@dataclass
class GradedNotebook:
    learner: str
    notebook: Path
    results: list[ExerciseResult] = field(default_factory=list)
    problem: str = ""  # a crash, a time-out or an unreadable file, for the whole notebook

    @property
    def score(self) -> float:
        return sum(r.points for r in self.results)

    @property
    def max_score(self) -> float:
        return sum(r.max_points for r in self.results)


def find_submissions(paths: list[Path]) -> list[tuple[str, Path]]:
    """``(learner, notebook)`` pairs: a notebook file is graded for the learner named by its folder; a folder of
    notebooks is one learner; a folder of folders is one learner per subfolder."""
    found: list[tuple[str, Path]] = []
    for path in paths:
        if not path.exists():
            raise SubmissionError(f"{path}: no such file or folder; check the path (a notebook, or a folder of "
                                  "submissions with one subfolder per learner)")
        if path.is_file():
            if path.suffix != ".ipynb":
                raise SubmissionError(f"{path} is not a notebook (.ipynb): pass the learner's .ipynb file or the "
                                      "folder that holds the submissions")
            found.append((path.resolve().parent.name, path))
            continue
        notebooks = _notebooks_in(path)
        if notebooks:
            found += [(path.resolve().name, notebook) for notebook in notebooks]
        else:
            found += [(learner.name, notebook) for learner in sorted(p for p in path.iterdir() if p.is_dir()
                                                                     and not p.name.startswith("."))
                      for notebook in _notebooks_in(learner)]
    if not found:
        raise SubmissionError(f"no notebooks (.ipynb) found in {', '.join(map(str, paths))}: a folder of "
                              "submissions holds one subfolder per learner with their notebooks")
    return found


def _notebooks_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("*.ipynb") if p.is_file())


def read_submission(path: Path) -> nbformat.NotebookNode:
    """The notebook at ``path``, or :class:`SubmissionError` saying why it cannot be graded and what to do."""
    try:
        notebook = nbformat.read(str(path), as_version=4)
        nbformat.validate(notebook)
    except Exception as error:  # not JSON, not a notebook, an unsupported format: all mean the same to a teacher
        raise SubmissionError(f"{path} is not a readable notebook ({type(error).__name__}: {str(error)[:200]}); "
                              "ask the learner to re-save it from JupyterLab (File > Save) and submit it "
                              "again") from error
    if not exercise_cells(notebook):
        raise SubmissionError(f"{path} has no exercises of this course (no code cell starts with "
                              "'# Exercise N.M:'): is it a notebook from another course, or one of "
                              "notebooks/student/*.ipynb with its exercise cells deleted?")
    return notebook


def expected_exercises(found: dict[str, int]) -> dict[str, float]:
    """The exercises a submission must answer with their points: those of the course notebook it was handed
    out from (so deleting an exercise cell does not remove it from the grade), else the ones it has."""
    chapters = {exercise.split(".")[0] for exercise in found}
    if len(chapters) == 1:
        chapter = int(chapters.pop())
        for solved in solved_notebooks():
            if solved.name.startswith(f"{chapter:02d}_"):
                return exercise_points(nbformat.read(str(solved), as_version=4))
    return dict.fromkeys(found, 1.0)


def exercise_points(notebook: nbformat.NotebookNode) -> dict[str, float]:
    """``{"N.M": points}`` from the nbgrader metadata of the checker cells (1 point where there is none)."""
    points = dict.fromkeys(exercise_cells(notebook), 1.0)
    checkers = {cell.metadata.get("nbgrader", {}).get("grade_id"): cell for cell in notebook.cells}
    for exercise in points:
        checker = checkers.get(nbgrader_id(exercise, "check"))
        if checker is not None:
            points[exercise] = float(checker.metadata["nbgrader"]["points"])
    return points


def run_notebook(notebook: nbformat.NotebookNode, timeout_s: float) -> tuple[dict[str, str], str, int]:
    """Execute ``notebook`` in place in a fresh kernel in a temporary folder, every cell even after errors, for
    at most ``timeout_s`` seconds. Returns (exercises passed, problem or "", index of the last cell run)."""
    from jupyter_client.kernelspec import NoSuchKernel
    from nbclient import NotebookClient
    from nbclient.exceptions import CellTimeoutError, DeadKernelError

    with tempfile.TemporaryDirectory(prefix="course-grade-") as work:
        env = dict(os.environ, **{PROGRESS_ENV: str(Path(work) / "progress.json"),
                                  PREDICTIONS_ENV: str(Path(work) / "predictions.json")})
        client = NotebookClient(notebook, kernel_name=KERNEL_NAME, allow_errors=True, timeout=int(timeout_s),
                                resources={"metadata": {"path": work}})
        deadline = time.monotonic() + timeout_s
        problem, last = "", -1
        try:
            # the kernel process's own stderr carries only transport notices, never a cell's output
            with client.setup_kernel(env=env, cwd=work, stderr=subprocess.DEVNULL):
                for index, cell in enumerate(notebook.cells):
                    client.timeout = max(1, int(deadline - time.monotonic()))
                    last = index
                    client.execute_cell(cell, index)
        except CellTimeoutError:
            problem = (f"stopped after the {timeout_s:.0f} s time limit in cell {last + 1} (an endless loop, or a "
                       "much slower computation than the solution's?)")
        except DeadKernelError:
            problem = f"the Python kernel died in cell {last + 1} (out of memory, or a crash in native code)"
        except NoSuchKernel as error:
            raise SubmissionError(f"the course kernel '{KERNEL_NAME}' is not installed ({error}); run `make setup` "
                                  "first") from error
        return passed_exercises(Path(work) / "progress.json"), problem, last


def _error_in(notebook: nbformat.NotebookNode, first: int, last: int) -> str:
    for cell in notebook.cells[first:last + 1]:
        for output in cell.get("outputs", []):
            if output.get("output_type") == "error":
                if output["ename"] == "NotImplementedError":
                    return "not attempted (the exercise cell still raises NotImplementedError)"
                return f"{output['ename']}: {output['evalue']}".strip()[:500]
    return ""


def grade_notebook(learner: str, path: Path, timeout_s: float = DEFAULT_TIMEOUT_S) -> GradedNotebook:
    """Grade one submission; any problem with it is recorded in the result, never raised."""
    graded = GradedNotebook(learner, path)
    try:
        notebook = read_submission(path)
    except SubmissionError as error:
        graded.problem = str(error)
        return graded
    found = exercise_cells(notebook)
    expected = expected_exercises(found)
    passed, graded.problem, last_run = run_notebook(notebook, timeout_s)
    for exercise, points in expected.items():
        if exercise in passed:
            graded.results.append(ExerciseResult(exercise, points, points))
            continue
        if exercise not in found:
            message = "missing: the notebook has no '# Exercise " + exercise + ":' cell (deleted?)"
        else:
            check = checker_cell_index(notebook, found[exercise])
            end = check if check is not None else found[exercise]
            if graded.problem and end >= last_run:
                message = graded.problem
            else:
                message = _error_in(notebook, found[exercise], end) or (
                    "its checker cell is missing (deleted?)" if check is None else "the checker did not accept it")
        graded.results.append(ExerciseResult(exercise, 0.0, points, message))
    return graded


def grade(paths: list[Path], timeout_s: float = DEFAULT_TIMEOUT_S, echo: bool = True) -> list[GradedNotebook]:
    """Grade every submission found under ``paths``, one fresh kernel each."""
    graded = []
    for learner, path in find_submissions(paths):
        if echo:
            print(f"grading {learner}: {path} ...", file=sys.stderr, flush=True)
        graded.append(grade_notebook(learner, path, timeout_s))
    return graded


def csv_rows(graded: list[GradedNotebook]) -> list[dict[str, object]]:
    """One row per exercise (and one per notebook that could not be read), as written to the CSV file."""
    rows = []
    for item in graded:
        base = {"learner": item.learner, "notebook": item.notebook.name}
        if not item.results:
            rows.append(dict(base, exercise="", points=0, max_points=0, result="problem", message=item.problem))
        for result in item.results:
            rows.append(dict(base, exercise=result.exercise, points=result.points, max_points=result.max_points,
                             result="passed" if result.points == result.max_points else "failed",
                             message=result.message))
    return rows


def write_csv(graded: list[GradedNotebook], path: Path) -> None:
    """Write the score table as CSV (atomically)."""
    with atomic_path(path, suffix=".csv") as tmp:
        with tmp.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=CSV_FIELDS)
            writer.writeheader()
            writer.writerows(csv_rows(graded))


def score_table(graded: list[GradedNotebook]) -> str:
    """The printed summary: one line per learner and notebook, with the exercises that scored nothing."""
    lines = [f"{'learner':<16} {'notebook':<26} {'score':>7}  not passed"]
    for item in graded:
        missed = [f"{r.exercise} ({r.message})" for r in item.results if r.points < r.max_points]
        problem = [f"PROBLEM: {item.problem}"] if item.problem else []
        score = f"{item.score:g}/{item.max_score:g}" if item.results else "-"
        lines.append(f"{item.learner:<16} {item.notebook.name:<26} {score:>7}  "
                     + ("; ".join(problem + missed) or "-"))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Grade learners' course notebooks by running their checkers.")
    parser.add_argument("paths", nargs="+", type=Path,
                        help="notebooks, or folders of submissions (one subfolder per learner)")
    parser.add_argument("--csv", type=Path, default=Path("grades.csv"), help="where to write the score table")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S,
                        help=f"seconds allowed per notebook (default {DEFAULT_TIMEOUT_S})")
    args = parser.parse_args(argv)
    try:
        graded = grade(args.paths, args.timeout)
    except SubmissionError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(score_table(graded))
    write_csv(graded, args.csv)
    print(f"wrote {args.csv}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
