"""Expensive sweeps, computed once by a script and shipped as small JSON files in ``data/results/``.

A notebook plots them and feeds its widget from them (instantly), and re-measures a few entries live to show the
cache is honest; ``tests/test_sweeps.py`` does the same. Regenerate with ``python -m course_lib.sweeps TOPIC``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

from tqdm.auto import tqdm

from .data import DATA_DIR, load_fashion_mnist
from .io import atomic_path
from .models import load_reference
from .quantize import CALIBRATIONS, quantize_weights
from .runtime import setup
from .train import evaluate

RESULTS_DIR = DATA_DIR / "results"
WEIGHT_BITS = (8, 7, 6, 5, 4, 3, 2, 1)
GRANULARITIES = ("tensor", "channel")


def weight_quantization_key(bits: int, granularity: str, method: str) -> str:
    """The key of one weight-only configuration (1 bit is binary: its scale is the mean magnitude, no calibration)."""
    return f"{bits}-bit/{granularity}/{'mean-abs' if bits == 1 else method}"


def weight_quantization_accuracy(model_name: str, bits: int, granularity: str, method: str) -> float:
    """Full-test-set accuracy of a reference model with its Conv2d/Linear weights rounded to ``bits`` bits."""
    model = quantize_weights(load_reference(model_name), bits, per_channel=granularity == "channel", method=method)
    return evaluate(model)


def quantization(progress: bool = True) -> dict:
    """Course CNN, weight-only: accuracy for every bit width, granularity and calibration method."""
    configs = {weight_quantization_key(b, g, m): (b, g, m) for b in WEIGHT_BITS for g in GRANULARITIES
               for m in CALIBRATIONS}
    accuracy = {key: round(weight_quantization_accuracy("course_cnn", *config), 4)
                for key, config in tqdm(configs.items(), desc="weight-only configurations", disable=not progress)}
    return {"model": "course_cnn", "dataset": "fashion-mnist test (10,000 images)",
            "baseline_accuracy": round(evaluate(load_reference("course_cnn"), load_fashion_mnist("test")), 4),
            "accuracy": accuracy}


SWEEPS: dict[str, Callable[..., dict]] = {"quantization": quantization}


def results_path(name: str) -> Path:
    return RESULTS_DIR / f"{name}.json"


def load_results(name: str) -> dict:
    """The cached results of sweep ``name``; a clear error with the command that makes them if they are missing."""
    if name not in SWEEPS:
        raise ValueError(f"unknown sweep {name!r}: choose one of {', '.join(SWEEPS)}")
    path = results_path(name)
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: restore it with `git checkout -- data/results/{path.name}` or "
                                f"regenerate it with `python -m course_lib.sweeps {name}`")
    return json.loads(path.read_text())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m course_lib.sweeps", description=__doc__.splitlines()[0])
    parser.add_argument("name", choices=sorted(SWEEPS))
    args = parser.parse_args(argv)
    setup()
    results = SWEEPS[args.name]()
    RESULTS_DIR.mkdir(exist_ok=True)
    with atomic_path(results_path(args.name)) as tmp:
        tmp.write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {results_path(args.name)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
