"""File lists: ImageFolder with and without splits, CSV and JSON lists, in-memory arrays, clear refusals."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from nnlab.data import cache as datacache
from nnlab.data import filelists
from nnlab.data.filelists import FileListError
from nnlab.data.preprocess import Preprocessing

PRE = Preprocessing(size=(24, 24), channels=3, resize_mode="shorter", resize=28, crop="center")


def img(path: Path, value: int, size=(40, 32), mode: str = "RGB") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    a = (np.arange(size[0] * size[1] * 3).reshape(size[1], size[0], 3) * 7 + value) % 256
    im = Image.fromarray(a.astype(np.uint8))
    (im.convert(mode) if mode != "RGB" else im).save(path)
    return path


def test_image_folder_with_train_val_test(tmp_path: Path) -> None:
    for split, n in (("train", 3), ("val", 2), ("test", 1)):
        for c in ("cat", "dog"):
            for k in range(n):
                img(tmp_path / split / c / f"{k}.png", k)
    img(tmp_path / "val" / "bird" / "0.jpg", 5)  # a class seen only in val still gets its index
    (tmp_path / "train" / "cat" / "notes.txt").write_text("not an image")
    img(tmp_path / "train" / ".hidden" / "0.png", 1)
    files = filelists.image_folder(tmp_path)
    assert files.classes == ["bird", "cat", "dog"] and files.split_names == ["train", "val", "test"]
    assert [int((files.splits == s).sum()) for s in ("train", "val", "test")] == [6, 5, 2]
    assert files.relpaths[0] == os.path.join("train", "cat", "0.png")
    cache = datacache.build_cache(files, PRE, tmp_path / "ws", workers=0)
    assert len(cache.images("val")) == 5 and cache.labels("val").tolist() == [0, 1, 1, 2, 2]
    assert tuple(cache.images("test").shape) == (2, 3, 24, 24)
    with pytest.raises(FileListError, match="unknown split"):
        cache.images("holdout")


def test_image_folder_without_splits_and_nested_files(tmp_path: Path) -> None:
    img(tmp_path / "a" / "sub" / "deep" / "0.png", 1)
    img(tmp_path / "a" / "1.png", 2)
    img(tmp_path / "b" / "0.bmp", 3)
    files = filelists.image_folder(tmp_path)
    assert files.split_names == ["all"]
    assert files.relpaths == [os.path.join("a", "1.png"), os.path.join("a", "sub", "deep", "0.png"),
                              os.path.join("b", "0.bmp")]
    assert files.labels.tolist() == [0, 0, 1]
    st = os.stat(tmp_path / "b" / "0.bmp")
    assert (files.sizes[2], files.stamps[2]) == (st.st_size, st.st_mtime_ns)


@pytest.mark.parametrize("setup, message", [
    (lambda p: None, "does not exist"),
    (lambda p: p.mkdir(), "has no class subfolders"),
    (lambda p: [(p / c).mkdir(parents=True) for c in ("x", "y")], "holds no images"),
    (lambda p: (p.mkdir(), (p / "train").mkdir()), "no class subfolders or in its train/val/test"),
    (lambda p: p.write_text("a file"), "is not a folder"),
])
def test_empty_or_missing_folders_are_refused_clearly(tmp_path: Path, setup, message) -> None:
    target = tmp_path / "data"
    setup(target)
    with pytest.raises(FileListError, match=message):
        filelists.image_folder(target)


def test_csv_list_with_header_splits_missing_and_outside_files(tmp_path: Path) -> None:
    root = tmp_path / "set"
    for k in range(4):
        img(root / "images" / f"{k}.png", k)
    img(tmp_path / "outside.png", 9)
    (root / "list.csv").write_text("split,path,label\n"
                                   "train,images/0.png,cat\n"
                                   "train,images/1.png,dog\n"
                                   "# a comment line\n"
                                   "validation,images/2.png,cat\n"
                                   "test,images/3.png,dog\n"
                                   "test,images/missing.png,dog\n"
                                   "train,../outside.png,cat\n")
    files = filelists.list_file(root / "list.csv")
    assert files.kind == "csv" and files.classes == ["cat", "dog"]
    assert files.splits.tolist() == ["train", "train", "val", "test", "test", "train"]
    assert dict(files.problems) == {os.path.join("images", "missing.png"): "cannot be read: No such file or directory",
                                    os.path.join("..", "outside.png"): "outside the folders nnlab may read"}
    cache = datacache.build_cache(files, PRE, tmp_path / "ws", workers=0)
    stats = cache.last_build
    assert stats.decoded == 4 and {r for r, _ in stats.unreadable} == {r for r, _ in files.problems}
    assert cache.labels("train").tolist() == [0, 1] and cache.paths("test") == [os.path.join("images", "3.png")]
    ref = PRE.to_uint8(Image.open(root / "images" / "2.png"))
    assert np.array_equal(cache.images("val")[0].numpy(), ref)
    # the folder holding the outside file may be allowed explicitly
    wider = filelists.list_file(root / "list.csv", roots=[tmp_path])
    assert [r for r, _ in wider.problems] == [os.path.join("images", "missing.png")]


def test_csv_without_header_integer_labels_and_malformed_lines(tmp_path: Path) -> None:
    img(tmp_path / "0.png", 0)
    img(tmp_path / "1.png", 1)
    (tmp_path / "l.csv").write_text("0.png,2\n1.png,0\n")
    files = filelists.list_file(tmp_path / "l.csv")
    assert files.classes == ["0", "1", "2"] and files.labels.tolist() == [2, 0] and files.split_names == ["all"]
    named = filelists.list_file(tmp_path / "l.csv", classes=["ant", "bee", "cow"])
    assert named.classes == ["ant", "bee", "cow"] and named.labels.tolist() == [2, 0]
    (tmp_path / "bad.csv").write_text("0.png,1\n1.png\n")
    with pytest.raises(FileListError, match=r"line 2: expected path,label"):
        filelists.list_file(tmp_path / "bad.csv")
    (tmp_path / "split.csv").write_text("0.png,1,holdout\n")
    with pytest.raises(FileListError, match=r"line 1: unknown split 'holdout'"):
        filelists.list_file(tmp_path / "split.csv")
    (tmp_path / "empty.csv").write_text("path,label\n")
    with pytest.raises(FileListError, match="lists no images"):
        filelists.list_file(tmp_path / "empty.csv")
    (tmp_path / "binary.csv").write_bytes(b"\xff\xfe\x00\x81garbage")
    with pytest.raises(FileListError, match="not a UTF-8 text file"):
        filelists.list_file(tmp_path / "binary.csv")
    with pytest.raises(FileListError, match="does not exist"):
        filelists.list_file(tmp_path / "nope.csv")


def test_json_lists(tmp_path: Path) -> None:
    for k in range(3):
        img(tmp_path / "im" / f"{k}.jpg", k)
    doc = {"classes": ["zero", "one"], "items": [{"path": "im/0.jpg", "label": "one", "split": "train"},
                                                  {"path": "im/1.jpg", "label": 0, "split": "test"},
                                                  {"path": str(tmp_path / "im" / "2.jpg"), "label": "zero"}]}
    (tmp_path / "list.json").write_text(json.dumps(doc))
    files = filelists.list_file(tmp_path / "list.json")
    assert files.kind == "json" and files.classes == ["zero", "one"] and files.labels.tolist() == [1, 0, 0]
    assert files.splits.tolist() == ["train", "test", "all"] and files.problems == []
    assert files.path(2) == str(tmp_path / "im" / "2.jpg")
    (tmp_path / "rows.json").write_text(json.dumps([["im/0.jpg", "b"], ["im/1.jpg", "a", "val"]]))
    rows = filelists.list_file(tmp_path / "rows.json")
    assert rows.classes == ["a", "b"] and rows.labels.tolist() == [1, 0] and rows.splits.tolist() == ["all", "val"]
    cache = datacache.build_cache(rows, PRE, tmp_path / "ws", workers=0)
    assert cache.status().complete and len(cache.images("val")) == 1
    (tmp_path / "bad.json").write_text('{"items": [{"label": 1}]}')
    with pytest.raises(FileListError, match="item 0: needs a path"):
        filelists.list_file(tmp_path / "bad.json")
    (tmp_path / "broken.json").write_text("[{")
    with pytest.raises(FileListError, match="not valid JSON"):
        filelists.list_file(tmp_path / "broken.json")


def test_the_same_source_under_two_preprocessings_gets_two_caches(tmp_path: Path) -> None:
    img(tmp_path / "src" / "a" / "0.png", 0)
    img(tmp_path / "src" / "b" / "0.png", 1)
    files = filelists.image_folder(tmp_path / "src")
    small = datacache.build_cache(files, PRE, tmp_path / "ws", workers=0)
    other_norm = datacache.DataCache(files, PRE.with_changes(mean=(0.5,) * 3, std=(0.2,) * 3), tmp_path / "ws")
    assert other_norm.path == small.path and other_norm.status().complete  # mean/std do not change pixels
    bigger = datacache.DataCache(files, PRE.with_changes(size=(28, 28)), tmp_path / "ws")
    assert bigger.path != small.path and bigger.status().pending == 2


def test_array_sources_from_a_dataset(tmp_path: Path, tiny_data) -> None:
    files = filelists.dataset_source(tiny_data)
    assert files.kind == "arrays" and files.channels == 1 and files.split_names == ["train", "test"]
    pre = Preprocessing(size=(8, 8), channels=1, resize_mode="none", mean=(0.5,), std=(0.5,))
    cache = datacache.build_cache(files, pre, tmp_path / "ws", workers=0)
    assert torch.equal(cache.images("train")[:], tiny_data.x_train)
    assert torch.equal(torch.from_numpy(cache.labels("test")), tiny_data.y_test)
    with pytest.raises(FileListError, match="uint8"):
        filelists.array_source("x", {"train": (np.zeros((2, 2, 8, 8), np.uint8), np.zeros(2))}, ["a"])
    with pytest.raises(FileListError, match="2 images but 3 labels"):
        filelists.array_source("x", {"train": (np.zeros((2, 8, 8), np.uint8), np.zeros(3))}, ["a"])


def test_unreadable_files_are_listed_with_reasons_never_fatal(tmp_path: Path) -> None:
    img(tmp_path / "a" / "good.png", 1)
    img(tmp_path / "b" / "good.png", 2)
    Image.new("1", (7000, 6000)).save(tmp_path / "a" / "bomb.png")  # 42 M pixels: over nnlab's limit
    (tmp_path / "a" / "empty.jpg").write_bytes(b"")
    (tmp_path / "b" / "text.jpg").write_text("hello")
    img(tmp_path / "b" / "tiny.png", 3, size=(1, 1))
    cache = datacache.build_cache(filelists.image_folder(tmp_path), PRE, tmp_path / "ws", workers=1)
    reasons = dict(cache.last_build.unreadable)
    assert sorted(reasons) == [os.path.join("a", "bomb.png"), os.path.join("a", "empty.jpg"),
                               os.path.join("b", "text.jpg"), os.path.join("b", "tiny.png")]
    assert "over the limit" in reasons[os.path.join("a", "bomb.png")]
    assert "the file is empty" in reasons[os.path.join("a", "empty.jpg")]
    assert "not a readable image" in reasons[os.path.join("b", "text.jpg")]
    assert "too small" in reasons[os.path.join("b", "tiny.png")]
    assert cache.paths("all") == [os.path.join("a", "good.png"), os.path.join("b", "good.png")]
    status = cache.status()
    assert (status.ready, status.unreadable, status.pending, status.complete) == (2, 4, 0, True)
