"""The grader on real submissions of notebook 00, and its handling of broken ones."""

import copy
import csv
import json

import nbformat
import pytest

from course_lib import grade
from course_lib.notebooks import NOTEBOOK_DIR, checker_cell_index, exercise_cells, student_path

SOLVED = NOTEBOOK_DIR / "00_welcome.ipynb"


def _write(notebook, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(notebook, str(path))
    return path


def _answer(notebook, exercise, source):
    """A copy of ``notebook`` whose exercise cell holds ``source`` under its exercise line."""
    notebook = copy.deepcopy(notebook)
    cell = notebook.cells[exercise_cells(notebook)[exercise]]
    cell.source = cell.source.splitlines()[0] + "\n" + source
    return notebook


def _exercises_only(notebook):
    """Notebook 00 from its first exercise cell to the last checker (0.1 to 0.3), after its import: quick to run."""
    cells = exercise_cells(notebook)
    short = copy.deepcopy(notebook)
    short.cells = [nbformat.v4.new_code_cell("import torch")] + notebook.cells[
        cells["0.1"]:checker_cell_index(notebook, cells["0.3"]) + 1]
    return short


@pytest.fixture(scope="module")
def graded_room(tmp_path_factory):
    """Four learners handing in notebook 00, graded with the command line: the solved notebook, the untouched
    student copy, the solved notebook with 0.2 wrong (8 bytes per fp32 weight), and the student copy with 0.1 right
    and a syntax error in 0.2 (the last two: only the exercises' part of the notebook, to save time)."""
    room = tmp_path_factory.mktemp("room")
    solved = nbformat.read(str(SOLVED), as_version=4)
    student = nbformat.read(str(student_path(SOLVED)), as_version=4)
    _write(solved, room / "alice" / SOLVED.name)
    _write(student, room / "bob" / SOLVED.name)
    _write(_answer(_exercises_only(solved), "0.2", "n_bytes = 8 * n_parameters"), room / "carol" / SOLVED.name)
    dave = _answer(_exercises_only(student), "0.1", "n_parameters = (784 * 300 + 300) + (300 * 100 + 100) + (100 * 10 + 10)")
    _write(_answer(dave, "0.2", "n_bytes = 4 * n_parameters)"), room / "dave" / SOLVED.name)
    before = {path: path.read_bytes() for path in room.rglob("*.ipynb")}
    table = room / "grades.csv"
    assert grade.main([str(room), "--csv", str(table), "--timeout", "300"]) == 0
    with table.open() as handle:
        rows = list(csv.DictReader(handle))
    return rows, before


def _scores(rows, learner):
    return {row["exercise"]: float(row["points"]) for row in rows if row["learner"] == learner}


def _messages(rows, learner):
    return {row["exercise"]: row["message"] for row in rows if row["learner"] == learner}


def test_solved_notebook_scores_full_marks(graded_room):
    rows, _ = graded_room
    assert _scores(rows, "alice") == {"0.1": 1.0, "0.2": 1.0, "0.3": 1.0}
    assert all(row["result"] == "passed" and not row["message"] for row in rows if row["learner"] == "alice")


def test_untouched_student_copy_scores_zero(graded_room):
    rows, _ = graded_room
    assert _scores(rows, "bob") == {"0.1": 0.0, "0.2": 0.0, "0.3": 0.0}
    assert all("not attempted" in message for message in _messages(rows, "bob").values())


def test_one_wrong_answer_loses_exactly_that_exercise(graded_room):
    rows, _ = graded_room
    assert _scores(rows, "carol") == {"0.1": 1.0, "0.2": 0.0, "0.3": 1.0}
    message = _messages(rows, "carol")["0.2"]
    assert message.startswith("ExerciseError: Exercise 0.2") and "Hint" in message


def test_syntax_error_is_reported_for_its_exercise(graded_room):
    rows, _ = graded_room
    assert _scores(rows, "dave") == {"0.1": 1.0, "0.2": 0.0, "0.3": 0.0}
    assert _messages(rows, "dave")["0.2"].startswith("SyntaxError")


def test_submissions_are_never_modified(graded_room):
    _, before = graded_room
    assert all(path.read_bytes() == content for path, content in before.items())


def test_endless_loop_is_reported_and_grading_goes_on(tmp_path):
    """A notebook that hangs stops at the time limit, keeps what passed before it, and the next learner is graded."""
    short = _exercises_only(nbformat.read(str(SOLVED), as_version=4))
    hangs = _answer(short, "0.2", "while True:\n    pass")
    _write(hangs, tmp_path / "erin" / "00_welcome.ipynb")
    _write(short, tmp_path / "frank" / "00_welcome.ipynb")
    erin, frank = grade.grade([tmp_path], timeout_s=10, echo=False)
    assert "time limit" in erin.problem
    assert [(r.exercise, r.points) for r in erin.results] == [("0.1", 1.0), ("0.2", 0.0), ("0.3", 0.0)]
    assert all("time limit" in r.message for r in erin.results[1:])
    assert not frank.problem and [r.points for r in frank.results] == [1.0, 1.0, 1.0]


def test_unreadable_and_foreign_notebooks_are_reported_per_learner(tmp_path):
    (tmp_path / "gina").mkdir()
    (tmp_path / "gina" / "00_welcome.ipynb").write_text("{ this is not json")
    foreign = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("print('hello')")])
    _write(foreign, tmp_path / "hal" / "intro.ipynb")
    gina, hal = grade.grade([tmp_path], echo=False)
    assert "gina/00_welcome.ipynb is not a readable notebook" in gina.problem and "re-save" in gina.problem
    assert "has no exercises of this course" in hal.problem and "another course" in hal.problem
    rows = grade.csv_rows([gina, hal])
    assert [row["result"] for row in rows] == ["problem", "problem"]


@pytest.mark.parametrize("name, expected", [("notes.txt", "is not a notebook (.ipynb)"),
                                            ("missing", "no such file or folder")])
def test_bad_paths_stop_with_a_clear_error(tmp_path, capsys, name, expected):
    (tmp_path / "notes.txt").write_text("hello")
    assert grade.main([str(tmp_path / name), "--csv", str(tmp_path / "g.csv")]) == 2
    error = capsys.readouterr().err
    assert expected in error and str(tmp_path / name) in error
    assert not (tmp_path / "g.csv").exists()


def test_empty_folder_is_an_error(tmp_path):
    with pytest.raises(grade.SubmissionError, match="one subfolder per learner"):
        grade.find_submissions([tmp_path])


def test_submission_layouts(tmp_path):
    solved = nbformat.read(str(SOLVED), as_version=4)
    single = _write(solved, tmp_path / "alice" / "00_welcome.ipynb")
    _write(solved, tmp_path / "alice" / ".ipynb_checkpoints" / "00_welcome-checkpoint.ipynb")
    _write(solved, tmp_path / "bob" / "03.ipynb")
    assert grade.find_submissions([single]) == [("alice", single)]
    assert grade.find_submissions([tmp_path / "alice"]) == [("alice", single)]
    assert [learner for learner, _ in grade.find_submissions([tmp_path])] == ["alice", "bob"]


def test_deleted_exercise_cells_still_count(tmp_path):
    """Exercises come from the course notebook the submission was handed out from, not from what is left of it."""
    solved = nbformat.read(str(SOLVED), as_version=4)
    cells = exercise_cells(solved)
    assert grade.expected_exercises({"0.1": cells["0.1"]}) == {"0.1": 1.0, "0.2": 1.0, "0.3": 1.0}
    assert grade.expected_exercises({"42.1": 3}) == {"42.1": 1.0}


def test_score_table_names_what_was_missed():
    graded = grade.GradedNotebook("bob", SOLVED, [grade.ExerciseResult("0.1", 1, 1),
                                                  grade.ExerciseResult("0.2", 0, 1, "not attempted")])
    table = grade.score_table([graded])
    assert "bob" in table and "1/2" in table and "0.2 (not attempted)" in table
    assert json.dumps(grade.csv_rows([graded]))  # plain values only
