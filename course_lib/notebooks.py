"""Notebook tooling for authors and teachers: student copies and execution.

    python -m course_lib.notebooks students            # regenerate notebooks/student/*.ipynb
    python -m course_lib.notebooks execute [NB ...]    # re-execute notebooks in place (default: all)

Exercise cells have one source: the solved notebook. A solution sits between ``### BEGIN SOLUTION`` and
``### END SOLUTION`` (nbgrader's markers) in a code cell whose first line is ``# Exercise N.M: <task>``.
The student copy replaces each such block with ``raise NotImplementedError("Exercise N.M: <task> ...")``,
rewrites the sentences that place a collapsed solution in the notebook itself (the student copy has none) to
point at the solved notebook, keeps everything else, and drops all outputs.
"""

from __future__ import annotations

import argparse
import copy
import re
from pathlib import Path

import nbformat

from course_lib.data import PROJECT_ROOT
from course_lib.io import atomic_path

NOTEBOOK_DIR = PROJECT_ROOT / "notebooks"
STUDENT_DIR = NOTEBOOK_DIR / "student"
KERNEL_NAME = "compression-course"
BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"
_EXERCISE_LINE = re.compile(r"^# (Exercise \d+\.\d+): (.+)$")
# A sentence of markdown: from a capital letter (after a space, a bracket or the start) to its full stop, within
# one paragraph, list item or heading; a full stop inside a word ("N.M", "0.5", ".ipynb") does not end it.
_SENTENCE = re.compile(r"(?<![^\s(])[*_]*[A-Z](?:[^.!?\n]|\.(?=\w)|\n(?![ \t]*(?:[-*+#|>\n]|\d+\.)))*[.!?]")
_CHECKER_CALL = re.compile(r"(?:^|[\s.(=])check_\w+\(", re.M)
_SOLUTION, _HIDDEN = re.compile(r"\bsolutions?\b", re.I), re.compile(r"\b(?:collapsed|hidden)\b", re.I)


class NotebookFormatError(ValueError):
    """A notebook breaks the exercise conventions (unbalanced markers, missing exercise line)."""


def solved_notebooks() -> list[Path]:
    """The course's solved notebooks, in order."""
    return sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))


def is_solution_cell(cell: dict) -> bool:
    """Whether a cell holds an exercise's solution."""
    return cell["cell_type"] == "code" and BEGIN in cell["source"]


def exercise_of(cell: dict) -> tuple[str, str]:
    """``("Exercise N.M", task)`` from a solution cell's first line."""
    first_line = cell["source"].splitlines()[0]
    match = _EXERCISE_LINE.match(first_line)
    if not match:
        raise NotebookFormatError(f"a solution cell must start with '# Exercise N.M: <task>', found {first_line!r}")
    return match.group(1), match.group(2)


def strip_solution(source: str, message: str) -> str:
    """Replace every ``BEGIN``/``END SOLUTION`` block in ``source`` by a ``raise NotImplementedError``."""
    out: list[str] = []
    inside = False
    for line in source.splitlines():
        stripped = line.strip()
        if stripped == BEGIN:
            if inside:
                raise NotebookFormatError(f"nested '{BEGIN}' in:\n{source}")
            inside = True
            indent = line[: len(line) - len(line.lstrip())]
            out.append(f"{indent}raise NotImplementedError({message!r})")
        elif stripped == END:
            if not inside:
                raise NotebookFormatError(f"'{END}' without '{BEGIN}' in:\n{source}")
            inside = False
        elif not inside:
            out.append(line)
    if inside:
        raise NotebookFormatError(f"'{BEGIN}' without '{END}' in:\n{source}")
    return "\n".join(out)


def point_to_solved_notebook(markdown: str, solved_name: str) -> str:
    """Rewrite the sentences of ``markdown`` that say a solution is collapsed (or hidden) to name the solved notebook.

    E.g. "(Stuck? The solution cell is collapsed above the checker.)": the student copy has no such cell. Sentences
    that already name "the solved notebook(s)" stay, as they are true in both copies.
    """
    pointer = f"The solution is in the solved notebook `notebooks/{solved_name}`."

    def rewrite(match: re.Match) -> str:
        sentence = match.group(0)
        about_hidden_solution = _SOLUTION.search(sentence) and _HIDDEN.search(sentence)
        return pointer if about_hidden_solution and "solved notebook" not in sentence.lower() else sentence

    return _SENTENCE.sub(rewrite, markdown)


def make_student_copy(notebook: nbformat.NotebookNode, solved_name: str) -> nbformat.NotebookNode:
    """The student version of the solved notebook ``solved_name``: solutions replaced by stubs, sentences about
    collapsed solutions pointed at the solved notebook, no outputs."""
    student = copy.deepcopy(notebook)
    for cell in student.cells:
        if cell["cell_type"] == "markdown":
            cell["source"] = point_to_solved_notebook(cell["source"], solved_name)
        elif cell["cell_type"] == "code":
            if is_solution_cell(cell):
                exercise, task = exercise_of(cell)
                message = f"{exercise}: {task} (replace this line with your code)"
                cell["source"] = strip_solution(cell["source"], message)
                cell["metadata"].pop("jupyter", None)
            cell["outputs"] = []
            cell["execution_count"] = None
    student.metadata.pop("widgets", None)
    return student


NBGRADER_SCHEMA_VERSION = 3  # the cell metadata that nbgrader 0.9 writes; later releases upgrade it on reading


def nbgrader_id(exercise: str, role: str = "") -> str:
    """nbgrader's ``grade_id`` for an exercise's cell ("Exercise 2.3" -> ``exercise_2_3``, plus ``_check``)."""
    base = "exercise_" + exercise.removeprefix("Exercise ").replace(".", "_")
    return f"{base}_{role}" if role else base


def exercise_cells(notebook: nbformat.NotebookNode) -> dict[str, int]:
    """``{"N.M": index}`` of every code cell whose first line is ``# Exercise N.M: <task>`` (solved or student)."""
    cells: dict[str, int] = {}
    for index, cell in enumerate(notebook.cells):
        match = _EXERCISE_LINE.match(cell.source.split("\n")[0]) if cell.cell_type == "code" else None
        if match:
            cells.setdefault(match.group(1).removeprefix("Exercise "), index)
    return cells


def checker_cell_index(notebook: nbformat.NotebookNode, exercise_index: int) -> int | None:
    """The first code cell after an exercise cell that calls a checker (``check_...(``), before the next exercise."""
    for index in range(exercise_index + 1, len(notebook.cells)):
        cell = notebook.cells[index]
        if cell.cell_type == "code" and _EXERCISE_LINE.match(cell.source.split("\n")[0]):
            return None
        if cell.cell_type == "code" and _CHECKER_CALL.search(cell.source):
            return index
    return None


def mark_for_nbgrader(notebook: nbformat.NotebookNode, points: float = 1) -> None:
    """Give every exercise's solution cell and checker cell nbgrader's cell metadata (schema version 3): the
    solution cell is an editable answer cell, the checker an autograded, locked test cell worth ``points``."""
    for index, cell in enumerate(notebook.cells):
        if not is_solution_cell(cell):
            continue
        exercise, _ = exercise_of(cell)
        checker = checker_cell_index(notebook, index)
        if checker is None:
            raise NotebookFormatError(f"no checker cell (calling check_...) follows {exercise}'s solution cell")
        cell.metadata["nbgrader"] = {"grade": False, "grade_id": nbgrader_id(exercise), "locked": False,
                                     "schema_version": NBGRADER_SCHEMA_VERSION, "solution": True, "task": False}
        notebook.cells[checker].metadata["nbgrader"] = {
            "grade": True, "grade_id": nbgrader_id(exercise, "check"), "locked": True, "points": points,
            "schema_version": NBGRADER_SCHEMA_VERSION, "solution": False, "task": False}


def student_path(solved: Path) -> Path:
    """Where the student copy of a solved notebook lives."""
    return STUDENT_DIR / solved.name


def write_notebook(notebook: nbformat.NotebookNode, path: Path) -> None:
    """Write a notebook atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, suffix=".ipynb") as tmp:
        nbformat.write(notebook, str(tmp))


def write_student_copies() -> list[Path]:
    """Regenerate every student copy from its solved notebook, after bringing the solved notebook's nbgrader
    metadata up to date (in place, only if it changed)."""
    written = []
    for solved in solved_notebooks():
        notebook = nbformat.read(str(solved), as_version=4)
        before = copy.deepcopy(notebook)
        mark_for_nbgrader(notebook)
        if notebook != before:
            write_notebook(notebook, solved)
        target = student_path(solved)
        write_notebook(make_student_copy(notebook, solved.name), target)
        written.append(target)
    return written


def hide_solutions(notebook: nbformat.NotebookNode) -> None:
    """Collapse solution cells in a solved notebook so that a learner chooses whether to peek."""
    for cell in notebook.cells:
        if is_solution_cell(cell):
            cell["metadata"].setdefault("jupyter", {})["source_hidden"] = True


def execute(path: Path, timeout: int = 900) -> None:
    """Execute a notebook in place with the course kernel, hiding its solution cells."""
    from nbclient import NotebookClient

    notebook = nbformat.read(str(path), as_version=4)
    NotebookClient(notebook, timeout=timeout, kernel_name=KERNEL_NAME,
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    hide_solutions(notebook)
    mark_for_nbgrader(notebook)
    write_notebook(notebook, path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Student copies and execution of the course notebooks.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("students", help="regenerate notebooks/student/ from the solved notebooks")
    run = sub.add_parser("execute", help="execute notebooks in place (default: all solved notebooks)")
    run.add_argument("paths", nargs="*", type=Path)
    args = parser.parse_args(argv)
    if args.command == "students":
        for path in write_student_copies():
            print(f"wrote {path.relative_to(PROJECT_ROOT)}")
    else:
        for path in args.paths or solved_notebooks():
            print(f"executing {path} ...", flush=True)
            execute(path.resolve())


if __name__ == "__main__":
    main()
