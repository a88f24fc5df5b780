"""Image datasets held in memory as uint8 tensors, one registry of them, and the fallback order.

Every dataset is an :class:`ImageDataset`: uint8 images ``N×C×H×W``, int64 labels, class names, and the
per-channel normalisation computed on its training split. Batches are normalised on the fly, so a
60 000-image set costs 47 MB, not four times that.
"""

from __future__ import annotations

import gzip
import hashlib
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from nnlab import config

FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                   "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


class DatasetError(ValueError):
    """A dataset that cannot be used, with a message meant for the user."""


@dataclass(eq=False)
class ImageDataset:
    """A labelled image dataset with a train and a test split, held in memory."""

    id: str
    name: str
    source: str
    classes: list[str]
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    mean: tuple[float, ...] = field(default=())
    std: tuple[float, ...] = field(default=())
    fallback_reason: str = ""

    def __post_init__(self) -> None:
        for split in ("train", "test"):
            x, y = self.images(split), self.labels(split)
            if x.dtype != torch.uint8 or x.ndim != 4:
                raise DatasetError(f"{split} images must be uint8 N×C×H×W, got {x.dtype} {tuple(x.shape)}")
            if len(x) != len(y):
                raise DatasetError(f"{split}: {len(x)} images but {len(y)} labels")
        if len(self.x_train) == 0 or len(self.x_test) == 0:
            raise DatasetError(f"{self.name}: a split is empty (train {len(self.x_train)}, test {len(self.x_test)})")
        if len(self.classes) < 2:
            raise DatasetError(f"{self.name}: needs at least two classes, found {len(self.classes)}")
        if not self.mean:
            self.mean, self.std = channel_stats(self.x_train)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one image."""
        return tuple(self.x_train.shape[1:])  # type: ignore[return-value]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def images(self, split: str) -> torch.Tensor:
        """uint8 images of ``split`` ("train" or "test")."""
        return {"train": self.x_train, "test": self.x_test}[split]

    def labels(self, split: str) -> torch.Tensor:
        return {"train": self.y_train, "test": self.y_test}[split]

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 (or 0–1 float) images to the float input the model sees."""
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        return (x - mean) / std

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """Model input back to 0–1 floats for display."""
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        return (x * std + mean).clamp(0, 1)

    def tensors(self, split: str, indices: np.ndarray | list[int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised inputs and labels of ``split`` (optionally a subset)."""
        x, y = self.images(split), self.labels(split)
        if indices is not None:
            idx = torch.as_tensor(np.asarray(indices), dtype=torch.long)
            x, y = x[idx], y[idx]
        return self.normalize(x), y

    def batches(self, split: str, batch_size: int = 256, shuffle: bool = False, seed: int = 0,
                indices: np.ndarray | list[int] | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Normalised ``(x, y)`` batches of ``split``; shuffled with ``seed`` when asked."""
        x_all, y_all = self.images(split), self.labels(split)
        order = torch.arange(len(y_all)) if indices is None else torch.as_tensor(np.asarray(indices), dtype=torch.long)
        if shuffle:
            g = torch.Generator().manual_seed(seed)
            order = order[torch.randperm(len(order), generator=g)]
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            yield self.normalize(x_all[idx]), y_all[idx]

    def class_counts(self, split: str) -> np.ndarray:
        return np.bincount(self.labels(split).numpy(), minlength=self.num_classes)

    def describe(self) -> dict:
        c, h, w = self.input_shape
        return {"id": self.id, "name": self.name, "source": self.source, "classes": list(self.classes),
                "train": len(self.y_train), "test": len(self.y_test), "input_shape": [c, h, w],
                "mean": list(self.mean), "std": list(self.std), "fallback_reason": self.fallback_reason}


def channel_stats(x: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 images, on the 0–1 scale."""
    sample = x[: min(len(x), 20000)].float() / 255.0
    mean = sample.mean(dim=(0, 2, 3))
    std = sample.std(dim=(0, 2, 3)).clamp_min(1e-3)
    return tuple(round(float(v), 6) for v in mean), tuple(round(float(v), 6) for v in std)


# --- IDX files (MNIST, Fashion-MNIST) ---------------------------------------------------------

def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (gzipped or not) into a numpy array."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise DatasetError(f"{path.name} is not an IDX file")
    dtype_code, ndim = data[2], data[3]
    if dtype_code != 0x08:
        raise DatasetError(f"{path.name}: only unsigned-byte IDX files are supported")
    dims = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
    arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if arr.size != int(np.prod(dims)):
        raise DatasetError(f"{path.name}: expected {int(np.prod(dims))} values, found {arr.size} (truncated?)")
    return arr.reshape(dims)


def _find_idx(folder: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        p = folder / name
        if p.is_file():
            return p
    return None


def load_idx_folder(folder: Path, dataset_id: str, name: str, classes: list[str], source: str) -> ImageDataset:
    """Load the four standard IDX files (``train-images-idx3-ubyte[.gz]`` …) of ``folder``."""
    paths = {k: _find_idx(folder, stem) for k, stem in {
        "xtr": "train-images-idx3-ubyte", "ytr": "train-labels-idx1-ubyte",
        "xte": "t10k-images-idx3-ubyte", "yte": "t10k-labels-idx1-ubyte"}.items()}
    missing = [k for k, p in paths.items() if p is None]
    if missing:
        raise DatasetError(f"{folder}: IDX files missing ({', '.join(missing)})")
    arr = {k: read_idx(p) for k, p in paths.items()}  # type: ignore[arg-type]
    return ImageDataset(
        id=dataset_id, name=name, source=source, classes=classes,
        x_train=torch.from_numpy(arr["xtr"].copy()).unsqueeze(1), y_train=torch.from_numpy(arr["ytr"].astype(np.int64)),
        x_test=torch.from_numpy(arr["xte"].copy()).unsqueeze(1), y_test=torch.from_numpy(arr["yte"].astype(np.int64)))


# --- torchvision datasets -----------------------------------------------------------------------

_TV = {"mnist": ("MNIST", [str(i) for i in range(10)]),
       "fashion-mnist": ("FashionMNIST", FASHION_CLASSES),
       "cifar10": ("CIFAR10", ["airplane", "automobile", "bird", "cat", "deer",
                               "dog", "frog", "horse", "ship", "truck"])}


def load_torchvision(key: str, root: Path | None = None, download: bool = True) -> ImageDataset:
    """MNIST, FashionMNIST or CIFAR-10 through torchvision: a local copy under ``root``, else a download."""
    import torchvision

    cls_name, classes = _TV[key]
    root = Path(root or config.data_dir())
    cls = getattr(torchvision.datasets, cls_name)
    try:
        tr = cls(str(root), train=True, download=download)
        te = cls(str(root), train=False, download=download)
    except Exception as exc:  # offline, or a corrupt copy
        raise DatasetError(f"torchvision {cls_name} is not under {root} and could not be downloaded "
                           f"({type(exc).__name__}: {str(exc)[:200]})") from exc

    def _x(ds) -> torch.Tensor:
        x = torch.as_tensor(np.asarray(ds.data))
        return x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2).contiguous()

    return ImageDataset(id=key, name=cls_name, source=f"torchvision {cls_name} under {root}", classes=list(classes),
                        x_train=_x(tr), y_train=torch.as_tensor(np.asarray(tr.targets), dtype=torch.long),
                        x_test=_x(te), y_test=torch.as_tensor(np.asarray(te.targets), dtype=torch.long))


# --- scikit-learn digits -----------------------------------------------------------------------------

def load_digits(test_fraction: float = 0.25, seed: int = 0) -> ImageDataset:
    """scikit-learn's bundled 8×8 digits (1 797 images), split with a fixed seed, stratified."""
    from sklearn.datasets import load_digits as _load
    from sklearn.model_selection import train_test_split

    d = _load()
    x = np.clip(d.images * 16.0, 0, 255).astype(np.uint8)[:, None]
    xtr, xte, ytr, yte = train_test_split(x, d.target, test_size=test_fraction, random_state=seed, stratify=d.target)
    return ImageDataset(id="digits", name="Digits (scikit-learn)", source="scikit-learn's bundled digits",
                        classes=[str(i) for i in range(10)],
                        x_train=torch.from_numpy(xtr), y_train=torch.from_numpy(ytr.astype(np.int64)),
                        x_test=torch.from_numpy(xte), y_test=torch.from_numpy(yte.astype(np.int64)))


# --- Fashion-MNIST with its fallback order ---------------------------------------------------------

def load_fashion_mnist(allow_download: bool = True) -> ImageDataset:
    """Fashion-MNIST from Debian's package, nnlab's data folder, torchvision's download; else digits.

    The returned dataset's ``fallback_reason`` says why, when it is digits instead.
    """
    tried: list[str] = []
    for folder, source in ((config.debian_fashion_mnist_dir(), "Debian package dataset-fashion-mnist"),
                           (config.data_dir() / "fashion-mnist", "nnlab data folder"),
                           (config.data_dir() / "FashionMNIST" / "raw", "torchvision copy in nnlab data folder")):
        try:
            return load_idx_folder(folder, "fashion-mnist", "Fashion-MNIST", FASHION_CLASSES, f"{source} ({folder})")
        except (DatasetError, OSError) as exc:
            tried.append(f"{folder}: {exc}")
    if allow_download:
        try:
            return load_torchvision("fashion-mnist", download=True)
        except DatasetError as exc:
            tried.append(str(exc))
    digits = load_digits()
    digits.fallback_reason = ("Fashion-MNIST was not found (" + "; ".join(tried) + "), so nnlab uses scikit-learn's "
                              "bundled digits instead. Install Debian's dataset-fashion-mnist or run `make run`.")
    return digits


# --- ImageFolder ------------------------------------------------------------------------------------

def check_allowed(path: str | Path) -> Path:
    """Resolve a user-typed path and refuse it unless it lies under one of the allowed roots."""
    p = Path(path).expanduser().resolve()
    roots = config.allowed_roots()
    if not any(p == r or r in p.parents for r in roots):
        raise DatasetError(f"{path} is outside the folders nnlab may read ({', '.join(map(str, roots))}); "
                           "set NNLAB_ALLOWED_ROOTS to allow another folder")
    return p


def _class_dirs(folder: Path) -> list[Path]:
    return sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())


def load_image_folder(path: str | Path, image_size: int | None = None, test_fraction: float = 0.2,
                      seed: int = 0, max_images: int = 200_000) -> ImageDataset:
    """A folder of class subfolders (or ``train/`` and ``test/`` each of class subfolders).

    Images are converted to greyscale when all are greyscale, else RGB, and resized to ``image_size``
    (default: the most common size, at most 128). Without train/test subfolders the split is seeded
    and stratified.
    """
    from PIL import Image

    from nnlab.images import load_image_file

    root = check_allowed(path)
    if not root.is_dir():
        raise DatasetError(f"{path} is not a folder")
    has_split = (root / "train").is_dir() and (root / "test").is_dir()
    split_roots = {"train": root / "train", "test": root / "test"} if has_split else {"all": root}
    classes = sorted({d.name for r in split_roots.values() for d in _class_dirs(r)})
    if not classes:
        raise DatasetError(f"{path} has no class subfolders")
    if len(classes) < 2:
        raise DatasetError(f"{path} has a single class ({classes[0]}); a classifier needs at least two")
    files: dict[str, list[tuple[Path, int]]] = {}
    for split, r in split_roots.items():
        files[split] = []
        for ci, c in enumerate(classes):
            imgs = _image_files(r / c) if (r / c).is_dir() else []
            if not imgs and split != "test":
                raise DatasetError(f"class folder {c!r} in {r} holds no images")
            files[split] += [(p, ci) for p in imgs]
    total = sum(len(v) for v in files.values())
    if total == 0:
        raise DatasetError(f"{path} holds no images")
    if total > max_images:
        raise DatasetError(f"{path} holds {total} images, more than the limit of {max_images}")
    pil: list[Image.Image] = []
    labels: list[int] = []
    order: list[str] = []
    for split, items in files.items():
        for p, ci in items:
            try:
                pil.append(load_image_file(p))
            except Exception as exc:
                raise DatasetError(f"{p.relative_to(root)} cannot be read as an image: {exc}") from exc
            labels.append(ci)
            order.append(split)
    grey = all(im.mode == "L" for im in pil)
    if image_size is None:
        sizes = [im.size for im in pil]
        common = max(set(sizes), key=sizes.count)
        image_size = min(max(common), 128)
    arrs = []
    for im in pil:
        im = im.convert("L" if grey else "RGB").resize((image_size, image_size), Image.BILINEAR)
        a = np.asarray(im, dtype=np.uint8)
        arrs.append(a[None] if grey else a.transpose(2, 0, 1))
    x = torch.from_numpy(np.stack(arrs))
    y = torch.tensor(labels, dtype=torch.long)
    if has_split:
        tr = torch.tensor([s == "train" for s in order])
        xtr, ytr, xte, yte = x[tr], y[tr], x[~tr], y[~tr]
    else:
        from sklearn.model_selection import train_test_split

        counts = np.bincount(y.numpy(), minlength=len(classes))
        strat = y.numpy() if counts.min() >= 2 else None
        itr, ite = train_test_split(np.arange(len(y)), test_size=test_fraction, random_state=seed, stratify=strat)
        xtr, ytr, xte, yte = x[itr], y[itr], x[ite], y[ite]
    digest = hashlib.sha1(f"{root}|{image_size}|{total}|{seed}".encode()).hexdigest()[:10]
    return ImageDataset(id=f"imagefolder-{digest}", name=f"ImageFolder {root.name}", source=f"ImageFolder {root}",
                        classes=classes, x_train=xtr, y_train=ytr, x_test=xte, y_test=yte)


# --- the registry ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class DatasetEntry:
    """A registered dataset: a name for menus and a loader taking keyword options."""

    key: str
    label: str
    loader: Callable[..., ImageDataset]
    needs_path: bool = False


DATASETS: dict[str, DatasetEntry] = {}


def register_dataset(key: str, label: str, loader: Callable[..., ImageDataset], needs_path: bool = False) -> None:
    DATASETS[key] = DatasetEntry(key, label, loader, needs_path)


register_dataset("fashion-mnist", "Fashion-MNIST (default)", load_fashion_mnist)
register_dataset("digits", "Digits (scikit-learn, 8×8)", load_digits)
register_dataset("mnist", "MNIST (torchvision)", lambda **kw: load_torchvision("mnist", **kw))
register_dataset("cifar10", "CIFAR-10 (torchvision)", lambda **kw: load_torchvision("cifar10", **kw))
register_dataset("imagefolder", "ImageFolder (a folder of class subfolders)", load_image_folder, needs_path=True)


def list_datasets() -> list[str]:
    """Keys of the registered datasets, default first."""
    return list(DATASETS)


def load_dataset(key: str, **options) -> ImageDataset:
    """Load a registered dataset by key; ``options`` go to its loader (e.g. ``path=`` for imagefolder)."""
    if key not in DATASETS:
        raise DatasetError(f"unknown dataset {key!r}; choose one of {', '.join(DATASETS)}")
    return DATASETS[key].loader(**options)
