"""Notebook conventions, student copies in sync, and student copies stopping at their first exercise.

Strict nbval of the solved notebooks themselves runs from pytest's configuration (see pyproject.toml).
"""

import copy
import re

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

from course_lib.notebooks import (KERNEL_NAME, NotebookFormatError, checker_cell_index, exercise_cells, exercise_of,
                                  is_solution_cell, make_student_copy, mark_for_nbgrader, point_to_solved_notebook,
                                  solved_notebooks, strip_solution, student_path)

SOLVED = solved_notebooks()


def test_there_are_notebooks():
    assert [p.name for p in SOLVED][:1] == ["00_welcome.ipynb"]


@pytest.fixture(params=SOLVED, ids=lambda p: p.name)
def solved(request):
    return request.param, nbformat.read(str(request.param), as_version=4)


def test_notebook_is_committed_executed(solved):
    _, nb = solved
    code = [c for c in nb.cells if c.cell_type == "code" and c.source.strip()]
    assert code and all(c.execution_count is not None for c in code), "execute it: `make notebooks`"
    assert nb.metadata["kernelspec"]["name"] == KERNEL_NAME


def test_notebook_has_checked_exercises_with_hidden_solutions(solved):
    path, nb = solved
    solutions = [c for c in nb.cells if is_solution_cell(c)]
    assert len(solutions) >= 3, f"{path.name} needs at least 3 auto-checked exercises"
    numbers = [exercise_of(c)[0] for c in solutions]
    assert len(set(numbers)) == len(numbers), "exercise numbers are unique"
    assert all(c.metadata.get("jupyter", {}).get("source_hidden") for c in solutions)
    for cell in solutions:
        following = nb.cells[nb.cells.index(cell) + 1]
        assert "check_" in following.source, f"{exercise_of(cell)[0]} is followed by its checker call"


def test_no_warnings_or_errors_in_outputs(solved):
    _, nb = solved
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            assert output.output_type != "error"
            if output.output_type == "stream" and output.name == "stderr":
                assert "Warning" not in output.text, output.text


def test_student_copy_is_in_sync(solved):
    path, nb = solved
    committed = nbformat.read(str(student_path(path)), as_version=4)
    assert committed == make_student_copy(nb, path.name), "regenerate with `make students`"


def test_student_copy_has_no_solutions(solved):
    path, _ = solved
    text = student_path(path).read_text()
    assert "BEGIN SOLUTION" not in text and "raise NotImplementedError" in text


def test_student_copy_stops_at_its_first_exercise(solved):
    path, nb = solved
    student = make_student_copy(nb, path.name)
    first_exercise = next(exercise_of(c)[0] for c in nb.cells if is_solution_cell(c))
    client = NotebookClient(student, timeout=600, kernel_name=KERNEL_NAME,
                            resources={"metadata": {"path": str(path.parent)}})
    with pytest.raises(CellExecutionError) as error:
        client.execute()
    assert error.value.ename == "NotImplementedError"
    assert f"{first_exercise}:" in error.value.evalue and "replace this line with your code" in error.value.evalue
    executed = [c for c in student.cells if c.cell_type == "code" and c.execution_count is not None]
    failing = executed[-1]
    assert first_exercise in failing.source or "check_" in failing.source


def test_student_copy_points_to_the_solved_notebook_instead_of_a_collapsed_solution(solved):
    """The student copy has no solution cells: no sentence may place one there (checked sentence by sentence)."""
    path, nb = solved
    for cell in make_student_copy(nb, path.name).cells:
        if cell.cell_type != "markdown":
            continue
        for sentence in re.split(r"(?<=[.!?])\s+", cell.source):
            if re.search(r"solution", sentence, re.I) and re.search(r"collapsed|hidden", sentence, re.I):
                assert "solved notebook" in sentence.lower(), f"{path.name}: {sentence!r}"


POINTER = "The solution is in the solved notebook `notebooks/02_quantization.ipynb`."


@pytest.mark.parametrize("markdown,expected", [
    ("(Stuck? The solution cell is collapsed above the checker.) Next.", f"(Stuck? {POINTER}) Next."),
    ("Cells start with `# Exercise N.M: <task>`. In this (solved) notebook the solution\nis **collapsed**: click the "
     "`…` to peek. The student copies differ.", f"Cells start with `# Exercise N.M: <task>`. {POINTER} The student "
     "copies differ."),
    ("Solutions are hidden in the cell above! Then more.", f"{POINTER} Then more."),
    ("- one item\n- **The solution** is hidden below, at 0.5 of the page.\n\n| a | b |",
     f"- one item\n- {POINTER}\n\n| a | b |"),
])
def test_sentences_about_collapsed_solutions_are_rewritten(markdown, expected):
    assert point_to_solved_notebook(markdown, "02_quantization.ipynb") == expected


@pytest.mark.parametrize("markdown", [
    "In the solved notebook the solution cell is **collapsed**: click the `…` to peek.",
    "At 3 bits per-tensor min-max collapses to ~63%. The solution space is large.",
    "# A heading\n\nA hidden layer has 300 units.",
])
def test_other_sentences_stay(markdown):
    assert point_to_solved_notebook(markdown, "02_quantization.ipynb") == markdown


def test_welcome_says_where_to_work_and_where_the_solutions_are():
    """`make lab` opens the solved notebook 00: its top says where the student copies and the solutions are."""
    nb = nbformat.read(str(SOLVED[0]), as_version=4)
    top = "\n".join(c.source for c in nb.cells[:3] if c.cell_type == "markdown")
    assert "notebooks/student/" in top and "solved notebooks" in top and "peek" in top


def test_the_prediction_starts_empty_so_that_run_all_records_nothing():
    nb = nbformat.read(str(next(p for p in SOLVED if p.name.startswith("01_"))), as_version=4)
    cell = next(c for c in nb.cells if c.cell_type == "code" and "record_prediction(" in c.source)
    assert re.search(r"^my_prediction = None\b", cell.source, re.M), cell.source
    assert "nbval-ignore-output" not in cell.metadata.get("tags", []), "its output (the refusal) is stable: compare it"


def test_strip_solution_keeps_indentation_and_code_around():
    source = "def f(x):\n    y = 1\n    ### BEGIN SOLUTION\n    return x + y\n    ### END SOLUTION\nprint(f)"
    assert strip_solution(source, "Exercise 1.1: f") == (
        "def f(x):\n    y = 1\n    raise NotImplementedError('Exercise 1.1: f')\nprint(f)")


@pytest.mark.parametrize("source,problem", [
    ("### BEGIN SOLUTION\nx = 1", "without '### END SOLUTION'"),
    ("x = 1\n### END SOLUTION", "without '### BEGIN SOLUTION'"),
    ("### BEGIN SOLUTION\n### BEGIN SOLUTION\n### END SOLUTION", "nested"),
])
def test_strip_solution_rejects_broken_markers(source, problem):
    with pytest.raises(NotebookFormatError, match=problem):
        strip_solution(source, "m")


def test_solution_cell_needs_an_exercise_line():
    cell = nbformat.v4.new_code_cell("x = 1\n### BEGIN SOLUTION\n### END SOLUTION")
    with pytest.raises(NotebookFormatError, match="must start with '# Exercise N.M"):
        exercise_of(cell)


def test_no_cell_relies_on_a_trailing_semicolon(solved):
    """nbval runs cells without storing history, so IPython ignores a trailing ';' there and shows the value
    twice (once as the result, once as the inline figure). Assign the result instead: `fig = plot(...)`."""
    _, nb = solved
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert not cell.source.rstrip().endswith(";"), cell.source


# nbgrader's documented cell metadata (schema version 3, read and upgraded by later releases): required keys, types,
# a grade_id of [a-zA-Z0-9_-] unique in the notebook, points on graded cells only, code cells for code answers.
NBGRADER_KEYS = {"schema_version": int, "grade": bool, "locked": bool, "solution": bool, "task": bool,
                 "grade_id": str, "points": (int, float)}


def _nbgrader_cells(nb):
    return [(i, c) for i, c in enumerate(nb.cells) if "nbgrader" in c.metadata]


@pytest.mark.parametrize("copy", ["solved", "student"])
def test_exercise_cells_carry_valid_nbgrader_metadata(solved, copy):
    path, nb = solved
    nb = nb if copy == "solved" else nbformat.read(str(student_path(path)), as_version=4)
    marked = _nbgrader_cells(nb)
    ids = [c.metadata.nbgrader["grade_id"] for _, c in marked]
    assert len(ids) == len(set(ids)), "grade ids are unique"
    exercises = exercise_cells(nb)
    assert len(marked) == 2 * len(exercises), "one answer cell and one checker cell per exercise"
    for index, cell in marked:
        meta = cell.metadata.nbgrader
        assert set(meta) <= set(NBGRADER_KEYS) and {"schema_version", "grade", "locked", "solution"} <= set(meta)
        assert all(isinstance(meta[k], NBGRADER_KEYS[k]) for k in meta), meta
        assert meta["schema_version"] == 3 and not meta["task"] and cell.cell_type == "code"
        assert re.fullmatch(r"[a-zA-Z0-9_\-]+", meta["grade_id"])
        assert ("points" in meta) == meta["grade"]
    for exercise, index in exercises.items():
        answer = nb.cells[index].metadata.nbgrader
        assert answer["solution"] and not answer["grade"] and not answer["locked"]
        checker = nb.cells[checker_cell_index(nb, index)].metadata.nbgrader
        assert checker["grade"] and checker["locked"] and not checker["solution"] and checker["points"] > 0
        assert checker["grade_id"] == answer["grade_id"] + "_check" == f"exercise_{exercise.replace('.', '_')}_check"


def test_nbgrader_metadata_is_up_to_date(solved):
    path, nb = solved
    marked = copy.deepcopy(nb)
    mark_for_nbgrader(marked)
    assert marked == nb, "refresh with `make students`"


def test_an_exercise_without_a_checker_is_refused():
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
        "# Exercise 9.1: x\n### BEGIN SOLUTION\nx = 1\n### END SOLUTION"), nbformat.v4.new_code_cell("print(x)")])
    with pytest.raises(NotebookFormatError, match="no checker cell"):
        mark_for_nbgrader(nb)


_FIGURE_WORDS = re.compile(r"\*Figure:\*|\b(?:plot|panel|histogram|chart|curve|heatmap|bars?|axis|axes|dots?|lines?|"
                           r"scatter|map|grid|figure|row|column)s?\b", re.I)


def test_every_figure_is_described_next_to_it(solved):
    """Accessibility: each figure has a caption, or a sentence beside it saying what it shows."""
    _, nb = solved
    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "code" or not any("image/png" in o.get("data", {}) for o in cell.get("outputs", [])):
            continue
        beside = [nb.cells[i].source for i in (index - 1, index + 1)
                  if 0 <= i < len(nb.cells) and nb.cells[i].cell_type == "markdown"]
        assert any(_FIGURE_WORDS.search(text) for text in beside), f"cell {index} draws a figure with no caption"
