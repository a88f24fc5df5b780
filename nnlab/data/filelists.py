"""Image sources as file lists: what to decode, with labels, splits and a fingerprint per file.

A :class:`FileList` is columnar (a million entries cost tens of MB, not gigabytes): relative paths, labels,
split names and, per file, the fingerprint ``(size, stamp)`` that decides whether the data cache may reuse
what it decoded before. For files the stamp is ``st_mtime_ns``; for in-memory arrays (the built-in sets)
it is a 63-bit hash of the image's bytes. Three sources:

* :func:`image_folder` — class subfolders, optionally under ``train/``, ``val/``, ``test/``;
* :func:`list_file` — a CSV or JSON list of ``path,label`` (optional ``split``), paths relative to the list;
* :func:`array_source` — uint8 arrays already in memory (Fashion-MNIST/MNIST IDX, digits, CIFAR).

A file that is listed but missing keeps its place with size ``-1``; the cache build lists it as unreadable.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from nnlab.i18n import _

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"})
SPLITS = ("train", "val", "test")
SPLIT_ALIASES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
                 "test": "test", "testing": "test"}
ALL = "all"  # the split name of a source without splits (the caller splits it, seeded)
MAX_LIST_BYTES = 2 * 1024**3


class FileListError(ValueError):
    """A source that cannot be listed (missing, empty, malformed), with a message meant for the user."""


@dataclass(eq=False)
class FileList:
    """Every image of a source, in a fixed order.

    Attributes:
        kind: ``"imagefolder"``, ``"csv"``, ``"json"`` or ``"arrays"``.
        source: What identifies the source: the resolved folder or list file, or ``arrays:<name>``.
        root: The folder that relative paths start from (empty for arrays).
        classes: Class names; ``labels`` index into them.
        relpaths: One entry per image: a path relative to ``root`` (absolute where a list says so), or
            ``<split>/<index>`` for arrays.
        labels: ``int64`` class index per image.
        splits: Split name per image (``"train"``, ``"val"``, ``"test"``, or ``"all"``).
        sizes: ``int64`` file size in bytes (array sources: bytes of the image), ``-1`` when missing.
        stamps: ``int64`` ``st_mtime_ns`` (array sources: a hash of the bytes).
        problems: ``(relpath, reason)`` of listed images that cannot be used (missing, outside the allowed
            folders); they are also in the columns, with size ``-1``.
        channels: 1 when every image is known to be greyscale (the cache then stores one channel), else None.
        arrays: For array sources: ``{split: uint8 N×C×H×W}``; the relpath ``<split>/<i>`` points into it.
    """

    kind: str
    source: str
    root: str
    classes: list[str]
    relpaths: list[str]
    labels: np.ndarray
    splits: np.ndarray
    sizes: np.ndarray
    stamps: np.ndarray
    problems: list[tuple[str, str]] = field(default_factory=list)
    channels: int | None = None
    arrays: dict[str, np.ndarray] | None = None

    def __post_init__(self) -> None:
        n = len(self.relpaths)
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        self.splits = np.asarray(self.splits, dtype=object).reshape(-1)
        self.sizes = np.asarray(self.sizes, dtype=np.int64).reshape(-1)
        self.stamps = np.asarray(self.stamps, dtype=np.int64).reshape(-1)
        if not all(len(a) == n for a in (self.labels, self.splits, self.sizes, self.stamps)):
            raise FileListError(_("a file list needs one label, split, size and stamp per path"))

    def __len__(self) -> int:
        return len(self.relpaths)

    @property
    def split_names(self) -> list[str]:
        """The splits present, in the order train, val, test, all."""
        present = set(self.splits.tolist())
        return [s for s in (*SPLITS, ALL) if s in present]

    def indices(self, split: str) -> np.ndarray:
        """Positions of ``split``'s images in the list (in list order)."""
        if split not in (*SPLITS, ALL):
            raise FileListError(_("unknown split {split!r}; the splits are {value}").format(
                split=split, value=', '.join((*SPLITS, ALL))))
        return np.flatnonzero(self.splits == split)

    def path(self, i: int) -> str:
        """The absolute path of entry ``i`` (array sources: its relpath)."""
        return os.path.join(self.root, self.relpaths[i]) if self.root else self.relpaths[i]

    def identity(self) -> str:
        """A short hash of what identifies the source (not its content: changed files are found by fingerprint)."""
        return hashlib.sha1(f"{self.kind}\n{self.source}".encode()).hexdigest()[:16]

    def describe(self) -> str:
        counts = ", ".join(f"{s} {int((self.splits == s).sum()):,}" for s in self.split_names)
        missing = f"; {len(self.problems)} listed but unusable" if self.problems else ""
        return f"{self.kind} {self.source}: {len(self):,} images, {len(self.classes)} classes ({counts}){missing}"


# --- ImageFolder ---------------------------------------------------------------------------------------

def _visible_dirs(folder: Path) -> list[os.DirEntry]:
    with os.scandir(folder) as it:
        return sorted((e for e in it if not e.name.startswith(".") and e.is_dir()), key=lambda e: e.name)


def _walk_images(folder: str) -> Iterable[tuple[str, os.stat_result]]:
    """``(path, stat)`` of every image file under ``folder``, recursively, sorted, hidden entries skipped."""
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError:
        return
    for e in entries:
        if e.name.startswith("."):
            continue
        if e.is_dir():
            yield from _walk_images(e.path)
        elif os.path.splitext(e.name)[1].lower() in IMAGE_EXTENSIONS and e.is_file():
            try:
                yield e.path, e.stat()
            except OSError:
                continue


def image_folder(path: str | os.PathLike) -> FileList:
    """List an ImageFolder: class subfolders, or ``train/``, ``val/``, ``test/`` each of class subfolders.

    Without split subfolders every image gets the split ``"all"``. Class names are the union over the splits,
    sorted; images are found recursively under each class folder.

    Raises:
        FileListError: The folder does not exist, cannot be read, has no class subfolders or no images.
    """
    root = Path(path).expanduser()
    if not root.exists():
        raise FileListError(_("{path} does not exist").format(path=path))
    if not root.is_dir():
        raise FileListError(_("{path} is not a folder").format(path=path))
    root = root.resolve()
    try:
        top = _visible_dirs(root)
    except OSError as exc:
        raise FileListError(_("{path} cannot be read: {detail}").format(path=path, detail=exc.strerror or exc)) from exc
    split_dirs = {SPLIT_ALIASES[e.name.lower()]: Path(e.path) for e in top if e.name.lower() in SPLIT_ALIASES}
    roots = split_dirs if split_dirs else {ALL: root}
    class_dirs: dict[str, list[str]] = {}
    for split, r in roots.items():
        try:
            class_dirs[split] = [e.name for e in _visible_dirs(r)]
        except OSError as exc:
            raise FileListError(_("{r} cannot be read: {detail}").format(r=r, detail=exc.strerror or exc)) from exc
    classes = sorted({c for names in class_dirs.values() for c in names})
    if not classes:
        where = " or in its train/val/test folders" if split_dirs else ""
        raise FileListError(_("{path} has no class subfolders{where} (expected e.g. {path}/cat/1.jpg)").format(
            path=path, where=where))
    lookup = {c: i for i, c in enumerate(classes)}
    relpaths: list[str] = []
    labels: list[int] = []
    splits: list[str] = []
    sizes: list[int] = []
    stamps: list[int] = []
    base = str(root) + os.sep
    for split in sorted(roots, key=lambda s: (*SPLITS, ALL).index(s)):
        for c in class_dirs[split]:
            for p, st in _walk_images(str(roots[split] / c)):
                relpaths.append(p[len(base):] if p.startswith(base) else p)
                labels.append(lookup[c])
                splits.append(split)
                sizes.append(st.st_size)
                stamps.append(st.st_mtime_ns)
    if not relpaths:
        exts = ", ".join(sorted(IMAGE_EXTENSIONS))
        raise FileListError(_("{path} holds no images: its class folders ({classes}) contain no {exts} "
                              "files").format(path=path, classes=", ".join(classes[:5]) + (", …" if len(classes) > 5
                                                                                          else ""), exts=exts))
    return FileList(kind="imagefolder", source=str(root), root=str(root), classes=classes, relpaths=relpaths,
                    labels=labels, splits=splits, sizes=sizes, stamps=stamps)


# --- CSV and JSON lists ----------------------------------------------------------------------------------

def list_file(path: str | os.PathLike, classes: list[str] | None = None,
              roots: Iterable[str | os.PathLike] | None = None) -> FileList:
    """List the images named by a CSV (``path,label[,split]``) or JSON file.

    CSV: an optional header naming the columns ``path``, ``label``, ``split`` (any order); without one the
    columns are path, label and optionally split. JSON: a list of ``{"path", "label", "split"?}`` objects or
    ``[path, label(, split)]`` rows, or an object ``{"classes": [...], "items": [...]}``. Labels are class
    names or integers (integers ``0..K-1`` keep their values; the classes are then ``"0"…"K-1"`` unless
    given). Relative paths start at the list's folder.

    Args:
        path: The list file (``.csv``, ``.tsv`` or ``.json``; other names are sniffed).
        classes: Class names in label order (overrides the list's own).
        roots: Folders the images may lie in (default: the list's folder); an image elsewhere is listed as
            unusable, not read.

    Raises:
        FileListError: The list is missing, unreadable or malformed (the first problems, with line numbers).
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileListError(f"{path} is not a file" if p.exists() else f"{path} does not exist")
    p = p.resolve()
    try:
        if p.stat().st_size > MAX_LIST_BYTES:
            raise FileListError(_("{name} is larger than {value} GiB").format(
                name=p.name, value=MAX_LIST_BYTES // 1024**3))
        raw = p.read_bytes()
    except OSError as exc:
        raise FileListError(_("{path} cannot be read: {detail}").format(path=path, detail=exc.strerror or exc)) from exc
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise FileListError(_("{name} is not a UTF-8 text file (a CSV or JSON list of path,label)").format(
            name=p.name)) from exc
    kind = "json" if p.suffix.lower() == ".json" or text.lstrip()[:1] in ("[", "{") else "csv"
    rows, given_classes = _parse_json(text, p.name) if kind == "json" else (_parse_csv(text, p), None)
    if not rows:
        raise FileListError(_("{name} lists no images").format(name=p.name))
    classes, labels = _resolve_labels([r[1] for r in rows], classes or given_classes, p.name)
    base = p.parent
    allowed = [Path(r).expanduser().resolve() for r in roots] if roots is not None else [base]
    relpaths, splits, sizes, stamps, problems = [], [], [], [], []
    for rel, _label, split, _line in rows:
        rel = rel if os.path.isabs(rel) else os.path.normpath(rel)
        relpaths.append(rel)
        splits.append(split)
        size, stamp, problem = _stat_allowed(base / rel, allowed)  # an absolute rel replaces base
        sizes.append(size)
        stamps.append(stamp)
        if problem:
            problems.append((rel, problem))
    return FileList(kind=kind, source=str(p), root=str(base), classes=classes, relpaths=relpaths, labels=labels,
                    splits=splits, sizes=sizes, stamps=stamps, problems=problems)


def _stat_allowed(path: Path, allowed: list[Path]) -> tuple[int, int, str]:
    """``(size, mtime_ns, "")`` of a listed file, or ``(-1, -1, why it cannot be used)``."""
    real = Path(os.path.realpath(path))  # symlinks resolved: a link may not lead outside the allowed folders
    if not any(real == a or a in real.parents for a in allowed):
        return -1, -1, "outside the folders nnlab may read"
    try:
        st = os.stat(real)
    except OSError as exc:
        return -1, -1, f"cannot be read: {exc.strerror}"
    if not os.path.isfile(real):
        return -1, -1, "not a file"
    return st.st_size, st.st_mtime_ns, ""


def _split_name(value: str, where: str) -> str:
    v = (value or "").strip().lower()
    if not v:
        return ALL
    if v not in SPLIT_ALIASES:
        raise FileListError(_("{where}: unknown split {value!r} (use train, val or test)").format(
            where=where, value=value))
    return SPLIT_ALIASES[v]


def _parse_csv(text: str, p: Path) -> list[tuple[str, str, str, int]]:
    dialect = "excel-tab" if p.suffix.lower() == ".tsv" or ("\t" in text[:4096] and "," not in text[:4096]) \
        else "excel"
    reader = csv.reader(io.StringIO(text), dialect=dialect)
    rows: list[tuple[str, str, str, int]] = []
    cols = {"path": 0, "label": 1, "split": 2}
    problems: list[str] = []
    for line, rec in enumerate(reader, start=1):
        rec = [f.strip() for f in rec]
        if not rec or not any(rec) or rec[0].startswith("#"):
            continue
        if not rows and not problems and {"path", "label"} <= {f.lower() for f in rec}:
            names = [f.lower() for f in rec]
            cols = {k: names.index(k) for k in ("path", "label", "split") if k in names}
            continue
        try:
            path, label = rec[cols["path"]], rec[cols["label"]]
            split = rec[cols["split"]] if "split" in cols and cols["split"] < len(rec) else ""
            if not path or not label:
                raise IndexError
            rows.append((path, label, _split_name(split, f"{p.name} line {line}"), line))
        except IndexError:
            problems.append(f"line {line}: expected path,label[,split], got {','.join(rec)[:80]!r}")
        except FileListError as exc:
            problems.append(str(exc))
        if len(problems) >= 5:
            break
    if problems:
        raise FileListError(f"{p.name} is not a list of path,label: " + "; ".join(problems))
    return rows


def _parse_json(text: str, name: str) -> tuple[list[tuple[str, str, str, int]], list[str] | None]:
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise FileListError(_("{name} is not valid JSON: {exc}").format(name=name, exc=exc)) from exc
    classes = None
    if isinstance(doc, Mapping):
        classes = doc.get("classes")
        if classes is not None and (not isinstance(classes, list) or not all(isinstance(c, str) for c in classes)):
            raise FileListError(_('{name}: "classes" must be a list of names').format(name=name))
        doc = doc.get("items", doc.get("images"))
    if not isinstance(doc, list):
        raise FileListError(_('{name}: expected a list of {{"path", "label"}} objects or an object with '
                              '"items"').format(name=name))
    rows = []
    for i, rec in enumerate(doc):
        where = f"{name} item {i}"
        if isinstance(rec, Mapping):
            path, label, split = rec.get("path"), rec.get("label"), rec.get("split", "")
        elif isinstance(rec, (list, tuple)) and len(rec) in (2, 3):
            path, label, split = rec[0], rec[1], rec[2] if len(rec) == 3 else ""
        else:
            raise FileListError(_('{where}: expected {{"path", "label"}} or [path, label], got {value}').format(
                where=where, value=str(rec)[:80]))
        if not isinstance(path, str) or not path or isinstance(label, bool) or not isinstance(label, (str, int)):
            raise FileListError(_("{where}: needs a path (text) and a label (name or integer)").format(where=where))
        rows.append((path, str(label), _split_name(str(split or ""), where), i))
    return rows, classes


def _resolve_labels(values: list[str], classes: list[str] | None, name: str) -> tuple[list[str], list[int]]:
    """Class names and label indices from the label column (names or integers)."""
    if classes is not None:
        lookup = {c: i for i, c in enumerate(classes)}
        out = []
        for v in values:
            if v in lookup:
                out.append(lookup[v])
            elif v.lstrip("-").isdigit() and 0 <= int(v) < len(classes):
                out.append(int(v))
            else:
                raise FileListError(_("{name}: label {v!r} is not one of the {n_classes} classes").format(
                    name=name, v=v, n_classes=len(classes)))
        return list(classes), out
    if all(v.isdigit() for v in values):
        ints = [int(v) for v in values]
        return [str(i) for i in range(max(ints) + 1)], ints
    names = sorted(set(values))
    lookup = {c: i for i, c in enumerate(names)}
    return names, [lookup[v] for v in values]


# --- in-memory arrays (the built-in sets) -----------------------------------------------------------------

def array_source(name: str, splits: Mapping[str, tuple[np.ndarray, np.ndarray]], classes: list[str]) -> FileList:
    """A file list over uint8 images already in memory, so built-in sets go through the same cache.

    Args:
        name: A stable name (``"fashion-mnist"``); with the bytes' hashes it decides what is reused.
        splits: ``{split: (images, labels)}``; images uint8 ``N×C×H×W`` (C 1 or 3) or ``N×H×W``; numpy or
            torch (converted without copying when possible).
        classes: Class names.
    """
    arrays, relpaths, labels, split_col, sizes, stamps = {}, [], [], [], [], []
    channels = set()
    for split, (x, y) in splits.items():
        split = _split_name(split, name)
        x = np.asarray(x.numpy() if hasattr(x, "numpy") else x)
        y = np.asarray(y.numpy() if hasattr(y, "numpy") else y).astype(np.int64).reshape(-1)
        if x.dtype != np.uint8 or x.ndim not in (3, 4) or (x.ndim == 4 and x.shape[1] not in (1, 3)):
            raise FileListError(_("{name} {split}: images must be uint8 N×C×H×W (C 1 or 3) or N×H×W, got {dtype} "
                                  "{shape}").format(name=name, split=split, dtype=x.dtype, shape=x.shape))
        x = x[:, None] if x.ndim == 3 else x
        if len(x) != len(y):
            raise FileListError(_("{name} {split}: {n_x} images but {n_y} labels").format(
                name=name, split=split, n_x=len(x), n_y=len(y)))
        arrays[split] = x
        channels.add(x.shape[1])
        flat = x.reshape(len(x), -1)
        relpaths += [f"{split}/{i}" for i in range(len(x))]
        labels.append(y)
        split_col += [split] * len(x)
        sizes.append(np.full(len(x), flat.shape[1], np.int64))
        stamps.append(np.fromiter((_hash63(row) for row in flat), np.int64, len(x)))
    if not relpaths:
        raise FileListError(_("{name} holds no images").format(name=name))
    return FileList(kind="arrays", source=f"arrays:{name}", root="", classes=list(classes), relpaths=relpaths,
                    labels=np.concatenate(labels), splits=split_col, sizes=np.concatenate(sizes),
                    stamps=np.concatenate(stamps), channels=1 if channels == {1} else None, arrays=arrays)


def _hash63(row: np.ndarray) -> int:
    return int.from_bytes(hashlib.blake2b(row.tobytes(), digest_size=8).digest(), "little") >> 1


def dataset_source(dataset) -> FileList:
    """The file list of an in-memory :class:`nnlab.data.sets.ImageDataset` (its train and test splits)."""
    return array_source(dataset.id, {"train": (dataset.x_train, dataset.y_train),
                                     "test": (dataset.x_test, dataset.y_test)}, list(dataset.classes))
