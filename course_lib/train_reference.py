"""Train the course's reference checkpoints and record them with their SHA-256.

    python -m course_lib.train_reference [--models lenet_300_100 lenet5 course_cnn]
    python -m course_lib.train_reference --minilm-student

Writes ``data/checkpoints/<model>.safetensors`` (atomically), ``data/checkpoints/reference.json``
(recipe, test accuracy, training time) and updates ``data/SHA256SUMS``. Same seed, same recipe,
same machine type: same weights. Trains on the 55,000-image training split; the 5,000 validation images
are never seen. Takes about 17 minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from safetensors.torch import save_file

from course_lib.data import DATA_DIR, load_fashion_mnist, record_checksum, sha256_of
from course_lib.io import atomic_path
from course_lib.models import MODEL_BUILDERS, build_model, checkpoint_name
from course_lib.runtime import setup
from course_lib.train import evaluate, train

RECIPES: dict[str, dict] = {
    "lenet_300_100": dict(epochs=15, lr=2e-3, optimizer="adam", weight_decay=1e-4, batch_size=128, augment=False),
    "lenet5": dict(epochs=12, lr=2e-3, optimizer="adam", weight_decay=1e-4, batch_size=128, augment=False),
    "course_cnn": dict(epochs=20, lr=0.1, optimizer="sgd", weight_decay=5e-4, batch_size=128, augment=True),
    "course_cnn_ds": dict(epochs=15, lr=0.1, optimizer="sgd", weight_decay=5e-5, batch_size=128, augment=True),
}


def initial_model(name: str, seed: int = 0) -> torch.nn.Module:
    """The untrained model that the reference recipe starts from with ``seed`` (lottery tickets rewind to it)."""
    setup(seed=seed, device="cpu")
    return build_model(name)


def train_one(name: str, seed: int = 0) -> dict:
    """Train one reference model, save it atomically, and return its record."""
    model = initial_model(name, seed)
    start = time.perf_counter()
    history = train(model, seed=seed, evaluate_every_epoch=False, **RECIPES[name])
    seconds = time.perf_counter() - start
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    target = DATA_DIR / checkpoint_name(name)
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(target) as tmp:
        save_file(state, str(tmp))
    return {
        "recipe": RECIPES[name], "seed": seed,
        "val_accuracy": round(evaluate(model, load_fashion_mnist("val")), 4), "test_accuracy": round(evaluate(model), 4),
        "final_train_loss": round(history.train_loss[-1], 4), "train_seconds": round(seconds, 1),
        "torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "sha256": sha256_of(target),
    }


MINILM_STUDENT_RECIPE = dict(epochs=2, lr=2e-4, batch_size=32, seed=0)


def train_minilm_student() -> dict:
    """Distil all-MiniLM-L6-v2 into its 2-layer student on the Wikipedia training sentences, save the student's own
    tensors (half precision) atomically, and return its record (cosines to the teacher on the validation
    sentences, before and after)."""
    from course_lib import minilm  # noqa: PLC0415 (the Fashion-MNIST checkpoints do not need it)
    from course_lib.data import load_wikipedia_sentences  # noqa: PLC0415
    from course_lib.distill import distill_embeddings  # noqa: PLC0415

    setup(seed=0, device="cpu")
    train_sentences, val_sentences, _ = load_wikipedia_sentences()
    teacher = minilm.load_minilm()
    student = minilm.truncated_minilm(teacher, minilm.STUDENT_LAYERS)
    val_reference = minilm.embed(teacher, val_sentences)

    def val_cosine(model: torch.nn.Module) -> float:
        return round(torch.nn.functional.cosine_similarity(minilm.embed(model, val_sentences), val_reference).mean().item(), 4)

    before = val_cosine(student)
    start = time.perf_counter()
    losses = distill_embeddings(student, minilm.embed(teacher, train_sentences), train_sentences,
                                **MINILM_STUDENT_RECIPE)
    seconds = time.perf_counter() - start
    target = DATA_DIR / minilm.STUDENT_CHECKPOINT
    with atomic_path(target) as tmp:
        save_file(minilm.student_state(student), str(tmp))
    shipped = minilm.load_student_state(minilm.truncated_minilm(teacher, minilm.STUDENT_LAYERS),
                                        minilm.student_state(student))
    return {"recipe": MINILM_STUDENT_RECIPE, "layers": list(minilm.STUDENT_LAYERS),
            "train_sentences": len(train_sentences), "val_cosine_truncated": before,
            "val_cosine_distilled": val_cosine(shipped), "epoch_losses": [round(x, 4) for x in losses],
            "train_seconds": round(seconds, 1), "torch": torch.__version__,
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "sha256": sha256_of(target)}


def _record(records: dict, record_path, name: str, checkpoint: str) -> None:
    """Write the records and the checkpoint's SHA-256 into data/SHA256SUMS."""
    with atomic_path(record_path) as tmp:
        tmp.write_text(json.dumps(records, indent=2, sort_keys=True) + "\n")
    if record_checksum(checkpoint) != records[name]["sha256"]:
        raise RuntimeError(f"{checkpoint} changed while its record was written: train it again")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODEL_BUILDERS), choices=list(MODEL_BUILDERS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--minilm-student", action="store_true",
                        help="distil the 2-layer MiniLM student instead (about 10 minutes)")
    parser.add_argument("--fraud", action="store_true",
                        help="train the case study's fraud scorers on SYNTHETIC transactions instead (~3 minutes)")
    args = parser.parse_args(argv)
    record_path = DATA_DIR / "checkpoints" / "reference.json"
    records = json.loads(record_path.read_text()) if record_path.exists() else {}
    if args.fraud:
        from course_lib.fraud import CHECKPOINTS, train_reference_scorers  # noqa: PLC0415

        setup(seed=0, device="cpu")
        for name, record in train_reference_scorers().items():
            records[name] = record | {"sha256": sha256_of(DATA_DIR / CHECKPOINTS[name])}
            print(f"{name}: validation PR-AUC {record['val_pr_auc']}")
            _record(records, record_path, name, CHECKPOINTS[name])
        return
    if args.minilm_student:
        from course_lib.minilm import STUDENT_CHECKPOINT  # noqa: PLC0415

        records["minilm_student"] = train_minilm_student()
        print(f"minilm_student: validation cosine {records['minilm_student']['val_cosine_truncated']} -> "
              f"{records['minilm_student']['val_cosine_distilled']} in {records['minilm_student']['train_seconds']} s")
        _record(records, record_path, "minilm_student", STUDENT_CHECKPOINT)
        return
    for name in args.models:
        records[name] = train_one(name, seed=args.seed)
        print(f"{name}: test accuracy {records[name]['test_accuracy']:.4f} in {records[name]['train_seconds']} s")
        _record(records, record_path, name, checkpoint_name(name))


if __name__ == "__main__":
    main()
