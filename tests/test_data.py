"""Dataset loaders: IDX files in the Debian layout, the fallback order, ImageFolder, normalisation."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from nnlab.data import sets as D


def write_idx(path: Path, arr: np.ndarray) -> None:
    header = struct.pack(">BBBB", 0, 0, 0x08, arr.ndim) + struct.pack(">" + "I" * arr.ndim, *arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + arr.astype(np.uint8).tobytes())


def make_fashion_layout(folder: Path, n_train: int = 50, n_test: int = 20, seed: int = 0) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    g = np.random.default_rng(seed)
    arrays = {"train-images-idx3-ubyte": g.integers(0, 256, (n_train, 28, 28)),
              "train-labels-idx1-ubyte": np.arange(n_train) % 10,
              "t10k-images-idx3-ubyte": g.integers(0, 256, (n_test, 28, 28)),
              "t10k-labels-idx1-ubyte": (np.arange(n_test) * 3) % 10}
    for stem, arr in arrays.items():
        write_idx(folder / f"{stem}.gz", arr)
    return arrays


def test_fashion_mnist_from_debian_layout(tmp_path, monkeypatch):
    arrays = make_fashion_layout(tmp_path / "debian")
    monkeypatch.setenv("NNLAB_DEBIAN_FASHION_MNIST", str(tmp_path / "debian"))
    ds = D.load_fashion_mnist(allow_download=False)
    assert ds.id == "fashion-mnist" and "Debian" in ds.source and not ds.fallback_reason
    assert ds.x_train.shape == (50, 1, 28, 28) and ds.x_test.shape == (20, 1, 28, 28)
    assert ds.x_train.dtype == torch.uint8
    assert np.array_equal(ds.x_train[:, 0].numpy(), arrays["train-images-idx3-ubyte"])
    assert np.array_equal(ds.y_test.numpy(), arrays["t10k-labels-idx1-ubyte"])
    assert np.array_equal(ds.class_counts("train"), [5] * 10)
    assert ds.classes[0] == "T-shirt/top" and ds.classes[9] == "Ankle boot"
    # normalisation: mean/std of the training pixels on the 0–1 scale
    px = arrays["train-images-idx3-ubyte"] / 255.0
    assert ds.mean[0] == pytest.approx(px.mean(), abs=1e-5)
    assert ds.std[0] == pytest.approx(px.std(ddof=1), rel=1e-3)
    x, y = ds.tensors("train")
    assert float(x.mean()) == pytest.approx(0.0, abs=1e-4) and float(x.std()) == pytest.approx(1.0, abs=1e-2)


def test_fallback_order_data_folder_then_digits(tmp_path, monkeypatch):
    monkeypatch.setenv("NNLAB_DEBIAN_FASHION_MNIST", str(tmp_path / "absent"))
    monkeypatch.setenv("NNLAB_DATA", str(tmp_path / "data"))
    fallback = D.load_fashion_mnist(allow_download=False)
    assert fallback.id == "digits" and "Fashion-MNIST was not found" in fallback.fallback_reason
    assert fallback.input_shape == (1, 8, 8) and fallback.num_classes == 10
    make_fashion_layout(tmp_path / "data" / "fashion-mnist", n_train=30, n_test=10)
    ds = D.load_fashion_mnist(allow_download=False)
    assert ds.id == "fashion-mnist" and "nnlab data folder" in ds.source and len(ds.y_train) == 30


def test_download_failure_offline_falls_back(tmp_path, monkeypatch):
    monkeypatch.setenv("NNLAB_DEBIAN_FASHION_MNIST", str(tmp_path / "absent"))
    monkeypatch.setenv("NNLAB_DATA", str(tmp_path / "data"))

    def offline(*a, **k):
        raise D.DatasetError("offline")

    monkeypatch.setattr(D, "load_torchvision", offline)
    ds = D.load_fashion_mnist(allow_download=True)
    assert ds.id == "digits" and "offline" in ds.fallback_reason


def test_truncated_idx_is_refused(tmp_path):
    arr = np.zeros((10, 28, 28), np.uint8)
    header = struct.pack(">BBBB", 0, 0, 0x08, 3) + struct.pack(">III", 10, 28, 28)
    p = tmp_path / "x.gz"
    with gzip.open(p, "wb") as f:
        f.write(header + arr.tobytes()[:100])
    with pytest.raises(D.DatasetError, match="truncated"):
        D.read_idx(p)


def test_digits_split_is_stratified_and_seeded():
    a, b = D.load_digits(), D.load_digits()
    assert len(a.y_train) + len(a.y_test) == 1797
    assert torch.equal(a.x_test, b.x_test)
    counts = a.class_counts("test")
    assert counts.min() >= 43 and counts.max() <= 47


def _png(path: Path, color, size=(12, 10), mode="RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path)


def test_image_folder_seeded_split(tmp_path, monkeypatch):
    monkeypatch.setenv("NNLAB_ALLOWED_ROOTS", str(tmp_path))
    for i in range(10):
        _png(tmp_path / "imgs" / "cat" / f"{i}.png", (200, 10 * i, 0))
        _png(tmp_path / "imgs" / "dog" / f"{i}.png", (0, 10 * i, 200), size=(16, 16))
    ds = D.load_image_folder(tmp_path / "imgs", image_size=16)
    assert ds.classes == ["cat", "dog"] and ds.input_shape == (3, 16, 16)
    assert len(ds.y_train) == 16 and len(ds.y_test) == 4
    assert ds.class_counts("test").tolist() == [2, 2]
    # cat images are red-dominant after resizing
    cat = ds.x_train[ds.y_train == 0].float()
    assert float(cat[:, 0].mean()) > 150 and float(cat[:, 2].mean()) < 20


def test_image_folder_train_test_and_greyscale(tmp_path, monkeypatch):
    monkeypatch.setenv("NNLAB_ALLOWED_ROOTS", str(tmp_path))
    for split, n in (("train", 4), ("test", 2)):
        for c, v in (("a", 30), ("b", 220)):
            for i in range(n):
                _png(tmp_path / "f" / split / c / f"{i}.png", v, mode="L", size=(8, 8))
    ds = D.load_image_folder(tmp_path / "f")
    assert ds.input_shape == (1, 8, 8) and len(ds.y_train) == 8 and len(ds.y_test) == 4


@pytest.mark.parametrize("setup, message", [
    (lambda r: (r / "empty").mkdir(), "no class subfolders"),
    (lambda r: _png(r / "empty" / "only" / "1.png", (1, 2, 3)), "single class"),
    (lambda r: ((r / "empty" / "a").mkdir(parents=True), _png(r / "empty" / "b" / "1.png", (1, 2, 3))), "holds no images"),
])
def test_image_folder_bad_folders(tmp_path, monkeypatch, setup, message):
    monkeypatch.setenv("NNLAB_ALLOWED_ROOTS", str(tmp_path))
    setup(tmp_path)
    with pytest.raises(D.DatasetError, match=message):
        D.load_image_folder(tmp_path / "empty")


def test_path_outside_allowed_roots_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("NNLAB_ALLOWED_ROOTS", str(tmp_path / "allowed"))
    (tmp_path / "allowed").mkdir()
    with pytest.raises(D.DatasetError, match="outside the folders"):
        D.load_image_folder(tmp_path / "allowed" / ".." / "elsewhere")
    with pytest.raises(D.DatasetError, match="outside the folders"):
        D.load_image_folder("/etc")


def test_registry_lists_every_choice():
    assert D.list_datasets()[0] == "fashion-mnist"
    assert {"digits", "mnist", "cifar10", "imagefolder"} <= set(D.list_datasets())
    assert D.load_dataset("digits").id == "digits"
    with pytest.raises(D.DatasetError, match="unknown dataset"):
        D.load_dataset("nope")


def test_batches_cover_split_once(digits):
    seen = torch.cat([y for _, y in digits.batches("test", 100, shuffle=True, seed=3)])
    assert sorted(seen.tolist()) == sorted(digits.y_test.tolist())
