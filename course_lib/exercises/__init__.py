"""Checkers for the course's exercises, one module per notebook.

A checker prints a short confirmation when the answer is right and raises :class:`ExerciseError`
when it is wrong, with what was expected, what was seen, and a hint. Checkers never reveal the
solution outright: they say what kind of mistake the answer looks like.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path

import torch

from course_lib.data import PROJECT_ROOT
from course_lib.io import atomic_path
from course_lib.progress import record_pass

PREDICTIONS_FILE = PROJECT_ROOT / "notebooks" / "my_predictions.json"
PREDICTIONS_ENV = "COURSE_PREDICTIONS_FILE"  # set by the tests, so that `make test` never touches a learner's file


class ExerciseError(AssertionError):
    """A wrong answer to an exercise; the message says what was expected and gives a hint."""


def passed(exercise: str, what: str) -> None:
    """Print the confirmation for a correct answer and record it in the learner's progress file."""
    record_pass(exercise)
    print(f"✅ Exercise {exercise} passed: {what}")


def fail(exercise: str, expected: str, got: str, hint: str) -> None:
    """Raise :class:`ExerciseError` with the course's three-part message."""
    raise ExerciseError(f"Exercise {exercise}: expected {expected}, got {got}.\nHint: {hint}")


def require_number(exercise: str, name: str, value: object) -> float:
    """The answer as a number, or a clear error if it is not one (e.g. a tensor or a string)."""
    if hasattr(value, "item") and getattr(value, "numel", lambda: 1)() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        fail(exercise, f"{name} as a plain Python number", f"{type(value).__name__} {value!r}",
             "convert with int(...) or float(...) (for a one-element tensor: .item()).")
    if isinstance(value, float) and not math.isfinite(value):
        fail(exercise, f"a finite {name}", repr(value), "check for a division by zero or an overflow.")
    return value


def diagnose(got: float, mistakes: Mapping[float, str], default: str, rel_tol: float = 1e-6) -> str:
    """The hint of the typical mistake whose value ``got`` matches, else ``default``."""
    for wrong, hint in mistakes.items():
        if math.isclose(got, wrong, rel_tol=rel_tol):
            return hint
    return default


def call_answer(exercise: str, fn: object, *args: object, hint: str = "") -> object:
    """Call the learner's function; a crash becomes an :class:`ExerciseError` naming the arguments.

    ``NotImplementedError`` (an exercise not yet done) passes through unchanged.
    """
    if not callable(fn):
        fail(exercise, "a function", type(fn).__name__, "define it with def ...(...):")
    try:
        return fn(*args)
    except NotImplementedError:
        raise
    except Exception as error:  # the learner's code crashed: say with which arguments
        shown = ", ".join(repr(a) if not hasattr(a, "shape") else f"tensor of shape {tuple(a.shape)}" for a in args)
        raise ExerciseError(f"Exercise {exercise}: calling it with ({shown}) raised {type(error).__name__}: {error}"
                            + (f"\nHint: {hint}" if hint else "")) from error


def check_number(exercise: str, name: str, value: object, expected: float, rel_tol: float = 0.0,
                 mistakes: Mapping[float, str] | None = None, hint: str = "") -> None:
    """Check a numeric answer; ``mistakes`` maps the values of typical wrong answers to targeted hints."""
    got = require_number(exercise, name, value)
    if math.isclose(got, expected, rel_tol=rel_tol, abs_tol=0.0 if rel_tol else 1e-12):
        passed(exercise, f"{name} = {got:,}")
        return
    mistake_hint = diagnose(got, mistakes or {}, default="", rel_tol=max(rel_tol, 1e-9))
    bare = name.removeprefix("the ")  # "the number of MACs" -> "a different number of MACs", not "a different the ..."
    if mistake_hint:
        fail(exercise, f"a different {bare}", f"{got:,}", mistake_hint)
    direction = "too small" if got < expected else "too large"
    fail(exercise, f"{name} within {rel_tol:.0%} of the right value" if rel_tol else f"the exact {bare}",
         f"{got:,} ({direction})", hint)


def compiled_wrapper(model: object) -> bool:
    """Whether ``model`` is a compiled or exported stand-in for a network rather than the network itself."""
    wraps = any(callable(getattr(model, name, None)) for name in ("_orig_mod", "compiled"))
    return wraps or isinstance(model, torch.fx.GraphModule)


def predictions_file() -> Path:
    """Where predictions are kept: ``$COURSE_PREDICTIONS_FILE`` if set, else ``notebooks/my_predictions.json``."""
    return Path(os.environ.get(PREDICTIONS_ENV) or PREDICTIONS_FILE)


def record_prediction(key: str, value: float | None, note: str = "") -> None:
    """Write down a prediction (in :func:`predictions_file`, not tracked by git) to check in a later notebook.

    ``None`` (the guess not filled in yet) is refused with a note, not an error, so that "Run All" gets through.
    """
    if value is None:
        print(f"✋ No prediction recorded for {key}: replace None by your guess (a number) and run this cell again.")
        return
    number = require_number("prediction", key, value)
    path = predictions_file()
    predictions = json.loads(path.read_text()) if path.exists() else {}
    predictions[key] = {"value": number, "note": note}
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(predictions, indent=2) + "\n")
    print(f"recorded prediction {key} = {number}" + (f" ({note})" if note else ""))


def recall_prediction(key: str) -> float | None:
    """A prediction recorded earlier with :func:`record_prediction`, or ``None`` if there is none."""
    path = predictions_file()
    if not path.exists():
        return None
    entry = json.loads(path.read_text()).get(key)
    return None if entry is None else entry["value"]
