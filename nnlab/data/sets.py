"""Image datasets: one registry of sources, each seen through a model's preprocessing, in bounded memory.

A *source* (:class:`Source`) is a file list (:mod:`nnlab.data.filelists`): an ImageFolder, a CSV/JSON list, or a
built-in set (Fashion-MNIST, MNIST, digits, CIFAR-10) held as arrays. :func:`load_dataset` turns a source into
an :class:`ImageDataset` at a :class:`~nnlab.data.preprocess.Preprocessing`: the images are decoded and
preprocessed once into the on-disk data cache (:mod:`nnlab.data.cache`) and read back in batches
(:class:`~nnlab.data.diskimages.DiskImages`), so no split is ever held in RAM. Without a preprocessing a source is
seen at its *native* one (its own size, its training set's channel statistics): the demo CNN's view.

An :class:`ImageDataset` can also be built directly from uint8 tensors (tests, small synthetic sets).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nnlab import config
from nnlab.data.preprocess import Preprocessing, PreprocessingError, native
from nnlab.i18n import N_, _

FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                   "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
NATIVE_MAX_SIDE = 128  # a folder's native size: its most common image side, at most this (the demo CNN's view)


class DatasetError(ValueError):
    """A dataset that cannot be used, with a message meant for the user."""


@dataclass(eq=False)
class ImageDataset:
    """A labelled image dataset with a train and a test split, as one model sees it.

    Attributes:
        id: Stable id (cache keys, records): the source's id, plus ``@<preprocessing key>`` when seen through a
            preprocessing other than the native one.
        name: For pages.
        source: Where the images come from.
        classes: Class names.
        x_train, x_test: uint8 ``N×C×H×W`` images after the pixel half of the preprocessing: a tensor, or a
            :class:`~nnlab.data.diskimages.DiskImages` read from the data cache on demand. Greyscale sources keep
            one channel even for a 3-channel model (:meth:`normalize` repeats it).
        y_train, y_test: int64 labels.
        mean, std: The normalisation (the preprocessing's).
        fallback_reason: Why this is not the dataset that was asked for (Fashion-MNIST missing).
        preprocessing: What the model sees: size, resize, crop, mean/std, channels.
        paths: Per split, the source file of each image (relative to ``root``), where there are files.
        root: The folder the paths start from.
        unreadable: ``(path, reason)`` of the source's images that could not be used (skipped).
    """

    id: str
    name: str
    source: str
    classes: list[str]
    x_train: Any
    y_train: torch.Tensor
    x_test: Any
    y_test: torch.Tensor
    mean: tuple[float, ...] = field(default=())
    std: tuple[float, ...] = field(default=())
    fallback_reason: str = ""
    preprocessing: Preprocessing | None = None
    paths: dict[str, list[str]] = field(default_factory=dict)
    root: str = ""
    unreadable: list[tuple[str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        for split in ("train", "test"):
            x, y = self.images(split), self.labels(split)
            if x.dtype != torch.uint8 or x.ndim != 4:
                raise DatasetError(_("{split} images must be uint8 N×C×H×W, got {dtype} {value}").format(
                    split=split, dtype=x.dtype, value=tuple(x.shape)))
            if len(x) != len(y):
                raise DatasetError(_("{split}: {n_x} images but {n_y} labels").format(
                    split=split, n_x=len(x), n_y=len(y)))
        if len(self.x_train) == 0 or len(self.x_test) == 0:
            raise DatasetError(_("{name}: a split is empty (train {n_x_train}, test {n_x_test})").format(
                name=self.name, n_x_train=len(self.x_train), n_x_test=len(self.x_test)))
        if len(self.classes) < 2:
            raise DatasetError(_("{name}: needs at least two classes, found {n_classes}").format(
                name=self.name, n_classes=len(self.classes)))
        if self.preprocessing is None:
            if not self.mean:
                self.mean, self.std = channel_stats(self.x_train)
            self.preprocessing = native(tuple(self.x_train.shape[1:]), self.mean, self.std)
        self.mean, self.std = tuple(self.preprocessing.mean), tuple(self.preprocessing.std)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one model input."""
        return self.preprocessing.input_shape

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def images(self, split: str) -> Any:
        """uint8 images of ``split`` ("train" or "test"): a tensor or a lazily read store."""
        return {"train": self.x_train, "test": self.x_test}[split]

    def labels(self, split: str) -> torch.Tensor:
        return {"train": self.y_train, "test": self.y_test}[split]

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 (or 0–1 float) images to the float input the model sees (the model's preprocessing)."""
        return self.preprocessing.normalize(x)

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """Model input back to 0–1 floats for display."""
        return self.preprocessing.denormalize(x)

    def tensors(self, split: str, indices: np.ndarray | list[int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised inputs and labels of ``split`` (a subset: whole splits are for small in-memory sets)."""
        x, y = self.images(split), self.labels(split)
        if indices is not None:
            idx = torch.as_tensor(np.asarray(indices), dtype=torch.long)
            x, y = x[idx], y[idx]
        else:
            x = x[:]
        return self.normalize(x), y

    def batches(self, split: str, batch_size: int = 256, shuffle: bool = False, seed: int = 0,
                indices: np.ndarray | list[int] | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Normalised ``(x, y)`` batches of ``split``, read batch by batch; shuffled with ``seed`` when asked."""
        x_all, y_all = self.images(split), self.labels(split)
        order = torch.arange(len(y_all)) if indices is None else torch.as_tensor(np.asarray(indices), dtype=torch.long)
        if shuffle:
            g = torch.Generator().manual_seed(seed)
            order = order[torch.randperm(len(order), generator=g)]
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            yield self.normalize(x_all[idx]), y_all[idx]

    def stream(self, split: str, batch_size: int = 256, indices: np.ndarray | list[int] | None = None,
               prefetch: int = 2) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Like :meth:`batches` (in order), with the next batches read and normalised in a background thread
        while the caller runs the model on this one: bulk passes spend their time in the model, not in I/O."""
        import queue
        import threading

        q: queue.Queue = queue.Queue(maxsize=max(1, prefetch))
        stop = threading.Event()
        done = object()

        def produce() -> None:
            try:
                for item in self.batches(split, batch_size, indices=indices):
                    while not stop.is_set():
                        try:
                            q.put(item, timeout=0.1)
                            break
                        except queue.Full:
                            continue
                    if stop.is_set():
                        return
                q.put(done)
            except BaseException as exc:  # noqa: BLE001 - handed to the consumer, raised there
                q.put(exc)

        worker = threading.Thread(target=produce, name="nnlab-prefetch", daemon=True)
        worker.start()
        try:
            while True:
                item = q.get()
                if item is done:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()
            worker.join(timeout=5)

    def class_counts(self, split: str) -> np.ndarray:
        return np.bincount(self.labels(split).numpy(), minlength=self.num_classes)

    def path_of(self, split: str, index: int) -> Path | None:
        """The source file of an image (None for built-in sets)."""
        names = self.paths.get(split)
        if not names or not self.root:
            return None
        return Path(self.root) / names[index]

    def describe(self) -> dict:
        c, h, w = self.input_shape
        return {"id": self.id, "name": self.name, "source": self.source, "classes": list(self.classes),
                "train": len(self.y_train), "test": len(self.y_test), "input_shape": [c, h, w],
                "mean": list(self.mean), "std": list(self.std), "fallback_reason": self.fallback_reason,
                "preprocessing": self.preprocessing.to_dict(), "unreadable": len(self.unreadable)}


def channel_stats(x: Any, max_images: int = 20000, batch: int = 2048) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 images on the 0–1 scale (over at most ``max_images``, in batches)."""
    n = min(len(x), max_images)
    s = ss = None
    count = 0
    for start in range(0, n, batch):
        b = x[start:min(n, start + batch)].double() / 255.0
        bs, bss = b.sum(dim=(0, 2, 3)), (b * b).sum(dim=(0, 2, 3))
        s, ss = (bs, bss) if s is None else (s + bs, ss + bss)
        count += b.shape[0] * b.shape[2] * b.shape[3]
    mean = s / count
    std = (ss / count - mean**2).clamp_min(0).sqrt() * (count / max(1, count - 1)) ** 0.5
    std = std.clamp_min(1e-3)
    return tuple(round(float(v), 6) for v in mean), tuple(round(float(v), 6) for v in std)


# --- IDX files (MNIST, Fashion-MNIST) ---------------------------------------------------------

def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (gzipped or not) into a numpy array."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise DatasetError(_("{name} is not an IDX file").format(name=path.name))
    dtype_code, ndim = data[2], data[3]
    if dtype_code != 0x08:
        raise DatasetError(_("{name}: only unsigned-byte IDX files are supported").format(name=path.name))
    dims = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
    arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if arr.size != int(np.prod(dims)):
        raise DatasetError(_("{name}: expected {value} values, found {size} (truncated?)").format(
            name=path.name, value=int(np.prod(dims)), size=arr.size))
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
        raise DatasetError(_("{folder}: IDX files missing ({missing})").format(
            folder=folder, missing=', '.join(missing)))
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
        raise DatasetError(_("torchvision {cls_name} is not under {root} and could not be downloaded ({error}: "
                             "{detail})").format(
            cls_name=cls_name, root=root, error=type(exc).__name__, detail=str(exc)[:200])) from exc

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
    digits.fallback_reason = _("Fashion-MNIST was not found ({tried}), so nnlab uses scikit-learn's bundled digits "
                               "instead. Install Debian's dataset-fashion-mnist or run `make run`.").format(
        tried="; ".join(tried))
    return digits


# --- sources and the registry -----------------------------------------------------------------------------

def check_allowed(path: str | Path) -> Path:
    """Resolve a user-typed path and refuse it unless it lies under one of the allowed roots."""
    p = Path(path).expanduser().resolve()
    roots = config.allowed_roots()
    if not any(p == r or r in p.parents for r in roots):
        raise DatasetError(_("{path} is outside the folders nnlab may read ({value}); set NNLAB_ALLOWED_ROOTS to "
                             "allow another folder").format(path=path, value=', '.join(map(str, roots))))
    return p


@dataclass(eq=False)
class Source:
    """A dataset before any preprocessing: its file list and how to split it.

    Attributes:
        key: Registry key ("fashion-mnist", "imagefolder" …).
        id: Stable id of the source (the native dataset's id).
        name: For pages.
        description: Where the images come from.
        files: The file list (:mod:`nnlab.data.filelists`).
        fallback_reason: Why this is not the source that was asked for.
        test_fraction: Share held out as the test split when the source has no test/val split.
        seed: Seed of that split.
        image_size: The native side for folders (None: from the images).
    """

    key: str
    id: str
    name: str
    description: str
    files: Any
    fallback_reason: str = ""
    test_fraction: float = 0.2
    seed: int = 0
    image_size: int | None = None
    _native: Preprocessing | None = field(default=None, repr=False)

    @property
    def classes(self) -> list[str]:
        return list(self.files.classes)

    def native(self, workspace: str | Path | None = None) -> Preprocessing:
        """The source's own view: its image size (folders: the most common side, at most 128, squashed to a
        square) and its training split's channel statistics."""
        if self._native is None:
            self._native = _native_preprocessing(self, workspace)
        return self._native


def _split_positions(src: Source) -> dict[str, np.ndarray]:
    """Positions of the file list in the train and test split (val serves as test when there is no test)."""
    f = src.files
    names = set(f.split_names)
    if "train" in names and ({"test", "val"} & names):
        test = "test" if "test" in names else "val"
        return {"train": f.indices("train"), "test": f.indices(test)}
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(f))
    counts = np.bincount(f.labels, minlength=len(f.classes))
    strat = f.labels if counts[counts > 0].min() >= 2 and len(idx) * src.test_fraction >= len(f.classes) else None
    tr, te = train_test_split(idx, test_size=src.test_fraction, random_state=src.seed, stratify=strat)
    return {"train": np.sort(tr), "test": np.sort(te)}


def _native_preprocessing(src: Source, workspace: str | Path | None) -> Preprocessing:
    f = src.files
    if f.arrays is not None:
        train = f.arrays.get("train", next(iter(f.arrays.values())))
        mean, std = channel_stats(torch.from_numpy(train))
        return native(tuple(train.shape[1:]), mean, std, source=f"{src.name}: its own size, training-set statistics")
    side, channels = src.image_size, f.channels
    if side is None or channels is None:
        side_, channels_ = _sample_geometry(f)
        side, channels = side or side_, channels or channels_
    pixels = Preprocessing(size=(side, side), channels=channels, resize_mode="squash", resize=side, crop="center",
                           interpolation="bilinear", mean=(0.5,) * channels, std=(0.25,) * channels,
                           source=f"{src.name}: its own size, training-set statistics")
    mean, std = _folder_stats(src, pixels, workspace)
    return Preprocessing(**{**pixels.to_dict(), "mean": mean, "std": std})


def _sample_geometry(f: Any, samples: int = 200) -> tuple[int, int]:
    """The most common side (capped at 128) and the channels (1 when every sampled image is greyscale)."""
    from PIL import Image

    picks = np.random.default_rng(0).permutation(len(f))[:samples]
    sizes: list[int] = []
    grey = True
    for i in picks:
        try:
            with Image.open(Path(f.root) / f.relpaths[int(i)]) as im:
                sizes.append(max(im.size))
                grey = grey and im.mode in ("L", "1", "I", "I;16", "F", "LA")
        except Exception:  # noqa: BLE001 - unreadable files are the cache's business; they are listed there
            continue
    if not sizes:
        return 32, 3
    common = max(set(sizes), key=sizes.count)
    return int(min(common, NATIVE_MAX_SIDE)), 1 if grey else 3


def _folder_stats(src: Source, pixels: Preprocessing, workspace: str | Path | None) -> tuple[tuple, tuple]:
    """Channel statistics of a folder's training split at its native size (cached beside the data cache)."""
    from nnlab.data.cache import DataCache

    cache = DataCache(src.files, pixels, workspace)
    stats_file = cache.path / "native-stats.json"
    if stats_file.is_file():
        d = json.loads(stats_file.read_text())
        return tuple(d["mean"]), tuple(d["std"])
    if not cache.status().complete:
        cache.build()
    images = cache.images_at(_split_positions(src)["train"])
    mean, std = channel_stats(images)
    from nnlab.workspace import atomic_write_text

    atomic_write_text(stats_file, json.dumps({"mean": mean, "std": std}))
    return mean, std


def image_folder_source(path: str | Path, image_size: int | None = None, test_fraction: float = 0.2,
                        seed: int = 0) -> Source:
    """An ImageFolder: class subfolders, or ``train/``, ``val/``, ``test/`` each of class subfolders (else a
    seeded, stratified split)."""
    from nnlab.data.filelists import FileListError, image_folder

    root = check_allowed(path)
    try:
        files = image_folder(root)
    except FileListError as exc:
        raise DatasetError(str(exc)) from exc
    if len(files.classes) < 2:
        raise DatasetError(_("{path} has a single class ({value}); a classifier needs at least two").format(
            path=path, value=files.classes[0]))
    counts = np.bincount(files.labels, minlength=len(files.classes))
    if (counts == 0).any():
        raise DatasetError(_("class folder {value!r} in {path} holds no images").format(
            value=files.classes[int(np.argmin(counts))], path=path))
    digest = hashlib.sha1(f"{root}|{test_fraction}|{seed}".encode()).hexdigest()[:10]
    return Source("imagefolder", f"imagefolder-{digest}", f"ImageFolder {root.name}", f"ImageFolder {root}", files,
                  test_fraction=test_fraction, seed=seed, image_size=image_size)


def list_file_source(path: str | Path, test_fraction: float = 0.2, seed: int = 0) -> Source:
    """A CSV or JSON list of ``path,label[,split]`` (paths relative to the list, under the allowed roots)."""
    from nnlab.data.filelists import FileListError, list_file

    p = check_allowed(path)
    try:
        files = list_file(p, roots=config.allowed_roots())
    except FileListError as exc:
        raise DatasetError(str(exc)) from exc
    if len(files.classes) < 2:
        raise DatasetError(_("{path} names a single class; a classifier needs at least two").format(path=path))
    digest = hashlib.sha1(f"{p}|{test_fraction}|{seed}".encode()).hexdigest()[:10]
    return Source("filelist", f"filelist-{digest}", f"List {p.name}", f"file list {p}", files,
                  test_fraction=test_fraction, seed=seed)


def array_dataset_source(ds: ImageDataset, key: str | None = None) -> Source:
    """A built-in (in-memory) dataset as a source, so it goes through the same cache as files."""
    from nnlab.data.filelists import array_source

    files = array_source(ds.id, {"train": (ds.x_train, ds.y_train), "test": (ds.x_test, ds.y_test)},
                         list(ds.classes))
    src = Source(key or ds.id, ds.id, ds.name, ds.source, files, fallback_reason=ds.fallback_reason)
    src._native = ds.preprocessing
    return src


@dataclass(frozen=True)
class DatasetEntry:
    """A registered dataset: a name for menus and a loader of its :class:`Source` (keyword options)."""

    key: str
    label: str
    loader: Callable[..., Source]
    needs_path: bool = False


DATASETS: dict[str, DatasetEntry] = {}


def register_dataset(key: str, label: str, loader: Callable[..., Source], needs_path: bool = False) -> None:
    DATASETS[key] = DatasetEntry(key, label, loader, needs_path)


def _arrays(load: Callable[[], ImageDataset], key: str) -> Callable[..., Source]:
    def loader(**_: Any) -> Source:
        return array_dataset_source(load(), key)
    return loader


register_dataset("fashion-mnist", N_("Fashion-MNIST (default)"), _arrays(load_fashion_mnist, "fashion-mnist"))
register_dataset("digits", N_("Digits (scikit-learn, 8×8)"), _arrays(load_digits, "digits"))
register_dataset("mnist", "MNIST (torchvision)", _arrays(lambda: load_torchvision("mnist"), "mnist"))
register_dataset("cifar10", "CIFAR-10 (torchvision)", _arrays(lambda: load_torchvision("cifar10"), "cifar10"))
register_dataset("imagefolder", N_("ImageFolder (a folder of class subfolders)"), image_folder_source, needs_path=True)
register_dataset("filelist", N_("A CSV or JSON list of path,label"), list_file_source, needs_path=True)


def list_datasets() -> list[str]:
    """Keys of the registered datasets, default first."""
    return list(DATASETS)


def open_source(key: str, path: str | Path = "") -> Source:
    """The source a registry key (and a path, for folder datasets) names."""
    if key not in DATASETS:
        raise DatasetError(_("unknown dataset {key!r}; choose one of {choices}").format(
            key=key, choices=', '.join(DATASETS)))
    entry = DATASETS[key]
    if entry.needs_path:
        if not path:
            raise DatasetError(_("{label} needs a path").format(label=_(entry.label)))
        return entry.loader(path)
    return entry.loader()


def dataset_id(src: Source, pre: Preprocessing | None) -> str:
    """The id of a source seen through ``pre`` (the source's id when ``pre`` is its native view)."""
    if pre is None or pre == src.native():
        return src.id
    return f"{src.id}@{pre.key()}"


def cache_for(src: Source, pre: Preprocessing | None = None, workspace: str | Path | None = None) -> Any:
    """The data cache of a source at a preprocessing (native when None); not built yet maybe."""
    from nnlab.data.cache import DataCache

    return DataCache(src.files, pre or src.native(workspace), workspace)


def dataset_at(src: Source, pre: Preprocessing | None = None, workspace: str | Path | None = None,
               progress: Callable[[str, float], None] | None = None,
               cancel: Callable[[], bool] | None = None) -> ImageDataset:
    """A source seen through a preprocessing, read from the data cache (built first when incomplete).

    Raises:
        DatasetError: no image could be read, or a split or class ends up empty.
    """
    from nnlab.data.cache import DataCacheError

    pre = pre or src.native(workspace)
    cache = cache_for(src, pre, workspace)
    try:
        if not cache.status().complete:
            cache.build(progress=progress, cancel=cancel)
        positions = _split_positions(src)
        readable = cache.readable_mask()
    except DataCacheError as exc:
        raise DatasetError(str(exc)) from exc
    f = src.files
    split = {k: v[readable[v]] for k, v in positions.items()}
    unreadable = cache.unreadable()
    present = set(f.labels[split["train"]].tolist())
    if len(present) < len(f.classes):
        missing = next(i for i in range(len(f.classes)) if i not in present)
        where = {rel: why for rel, why in unreadable}
        bad = [f"{f.relpaths[i]} cannot be read ({where.get(f.relpaths[i], 'unreadable')})"
               for i in np.flatnonzero((f.labels == missing) & ~readable)][:3]
        raise DatasetError(f"class folder {f.classes[missing]!r} holds no readable image in the training split"
                           + (": " + "; ".join(bad) if bad else ""))
    return ImageDataset(
        id=dataset_id(src, pre), name=src.name, source=src.description, classes=list(f.classes),
        x_train=cache.images_at(split["train"]), y_train=torch.from_numpy(f.labels[split["train"]]),
        x_test=cache.images_at(split["test"]), y_test=torch.from_numpy(f.labels[split["test"]]),
        fallback_reason=src.fallback_reason, preprocessing=pre, root=f.root,
        paths={k: [f.relpaths[i] for i in v] for k, v in split.items()} if f.arrays is None else {},
        unreadable=unreadable)


def load_dataset(key: str, path: str | Path = "", preprocessing: Preprocessing | dict | None = None,
                 workspace: str | Path | None = None, progress: Callable[[str, float], None] | None = None,
                 cancel: Callable[[], bool] | None = None) -> ImageDataset:
    """Load a registered dataset through the data cache, at ``preprocessing`` (native when None)."""
    if isinstance(preprocessing, dict):
        try:
            preprocessing = Preprocessing.from_dict(preprocessing)
        except PreprocessingError as exc:
            raise DatasetError(_("the preprocessing is not valid: {exc}").format(exc=exc)) from exc
    return dataset_at(open_source(key, path), preprocessing, workspace, progress, cancel)


def load_image_folder(path: str | Path, image_size: int | None = None, test_fraction: float = 0.2,
                      seed: int = 0, workspace: str | Path | None = None) -> ImageDataset:
    """An ImageFolder at its native view (``image_size`` overrides the side), through the data cache."""
    return dataset_at(image_folder_source(path, image_size, test_fraction, seed), None, workspace)
