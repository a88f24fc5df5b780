"""Hardening, table-driven: bad checkpoints, images and dataset folders each get a clear message in the page
(no traceback), nothing is written to the workspace and nothing uploaded runs as code."""

from __future__ import annotations

import io
import os
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save as st_save

from nnlab.data import images as I
from nnlab.models.registry import DemoCNN, create_model
from tests.conftest import app_test

UPLOAD = "Upload a checkpoint (.pt/.pth/.safetensors)"

MARK = Path(os.environ["NNLAB_WORKSPACE"]).parent / "evil-ran"


class _Evil:
    def __reduce__(self):
        return (os.system, (f"touch {MARK}",))


def _save(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _demo_sd(classes: int = 10) -> dict:
    return create_model("demo-cnn", 1, classes, (8, 8)).state_dict()


def _zip_not_checkpoint() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("hello.txt", "not a checkpoint")
    return buf.getvalue()


def _nan_sd() -> dict:
    sd = {k: v.clone() for k, v in _demo_sd().items()}
    sd["classifier.2.weight"][0, 0] = float("inf")
    return sd


def _missing_key_safetensors() -> bytes:
    sd = dict(_demo_sd())
    sd.pop("features.4.weight")
    return st_save(sd)


CHECKPOINTS = [
    ("empty", "m.pt", lambda: b"", "the file is empty"),
    ("truncated", "m.pt", lambda: _save(_demo_sd())[:3000], "truncated or damaged"),
    ("random bytes", "m.pt", lambda: np.random.default_rng(0).bytes(4096), "not a readable PyTorch checkpoint"),
    ("zip, not a checkpoint", "m.pt", _zip_not_checkpoint, "not a readable PyTorch checkpoint|truncated or damaged"),
    ("whole pickled model", "m.pt", lambda: _save(DemoCNN(1, 10, (8, 8))), "never runs code"),
    ("code-running pickle", "m.pt", lambda: _save({"w": _Evil()}), "never runs code"),
    ("raw pickle with code", "m.pth", lambda: pickle.dumps(_Evil()), "cannot be used"),
    ("another architecture", "m.pt", lambda: _save(create_model("resnet18", 1, 10, (8, 8)).state_dict()),
     "does not fit this architecture: tensor 'features.0.weight'"),
    ("wrong number of classes", "m.pt", lambda: _save(_demo_sd(3)), r"tensor 'classifier.5.weight' has shape \(3, 128\)"),
    ("NaN/Inf weights", "m.pt", lambda: _save(_nan_sd()), "NaN or Inf"),
    ("safetensors missing keys", "m.safetensors", _missing_key_safetensors, "'features.4.weight'.*missing"),
    ("corrupt safetensors", "m.safetensors", lambda: b"\x10\x00\x00\x00\x00\x00\x00\x00{bad json}", "not a valid safetensors"),
    ("not a dict of tensors", "m.pt", lambda: _save({"epoch": 3, "lr": 0.1}), "no state dict|not a tensor"),
]


def _files() -> set[str]:
    """Every stored file of the workspace (the writability probe and other jobs' state excluded)."""
    root = Path(os.environ["NNLAB_WORKSPACE"])
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and p.name != ".write-test"
            and not p.name.endswith(".tmp") and p.parent.name != "jobs"}


@pytest.mark.parametrize("case, filename, make, message", CHECKPOINTS, ids=[c[0] for c in CHECKPOINTS])
def test_bad_checkpoint_gets_clear_message(demo, case, filename, make, message):
    from nnlab.jobs import manager as jobs

    at = app_test()
    at.session_state["weights"] = UPLOAD  # the first run goes through app.py's frame, which shows the uploader
    at.run()
    # what the page wrote for the default dataset (its data cache, when this test runs first) is not the upload's
    before, registered = _files(), len(jobs.manager().list(kind="register-model"))
    at.file_uploader(key="checkpoint").set_value((filename, make(), "application/octet-stream")).run()
    assert not at.exception, at.exception
    errors = " ".join(e.value for e in at.error)
    assert errors, f"no message shown for {case}"
    import re

    assert re.search(message, errors), errors
    assert not MARK.exists(), "uploaded code ran"
    assert _files() - before == set(), "a bad upload wrote to the workspace"
    assert len(jobs.manager().list(kind="register-model")) == registered, "a bad upload started a job"


def test_good_checkpoint_is_accepted(demo):
    model = demo[0]
    at = app_test()
    at.session_state["weights"] = UPLOAD  # the first run goes through app.py's frame, which shows the uploader
    at.run()
    at.file_uploader(key="checkpoint").set_value(("mine.safetensors", st_save(model.state_dict()),
                                                  "application/octet-stream")).run()
    assert not at.exception and not at.error
    at.button(key="sel_load").click().run()  # the sidebar's choices are a draft until loaded (issue 22)
    assert not at.exception and not at.error
    assert {m.label: m.value for m in at.metric}["Test accuracy"] == f"{demo[1].accuracy:.2%}"


# --- images ---------------------------------------------------------------------------------------------

def _img_bytes(im: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt)
    return buf.getvalue()


def _bomb() -> bytes:
    # a tiny PNG whose header claims 20 000 × 20 000 pixels: refused before decoding
    return _img_bytes(Image.new("1", (20000, 20000)))


IMAGES = [
    ("CMYK", lambda: _img_bytes(Image.new("CMYK", (30, 20), (0, 255, 255, 0)), "JPEG"), (3, 16, 16), None),
    ("16-bit", lambda: _img_bytes(Image.fromarray(np.arange(600, dtype=np.uint16).reshape(20, 30) * 100)), (1, 8, 8), None),
    ("palette", lambda: _img_bytes(Image.new("RGB", (9, 9), (255, 0, 0)).convert("P")), (3, 8, 8), None),
    ("RGBA", lambda: _img_bytes(Image.new("RGBA", (10, 10), (255, 0, 0, 0))), (3, 8, 8), None),
    ("greyscale for RGB model", lambda: _img_bytes(Image.new("L", (12, 12), 77)), (3, 8, 8), None),
    ("0x0 or 1x1", lambda: _img_bytes(Image.new("RGB", (1, 1))), (3, 8, 8), "too small"),
    ("decompression bomb", _bomb, (1, 28, 28), "too many pixels|over the limit"),
    ("not an image", lambda: b"%PDF-1.4 definitely not a png", (1, 28, 28), "not a readable image"),
    ("empty file", lambda: b"", (1, 28, 28), "empty"),
    ("truncated PNG", lambda: _img_bytes(Image.new("RGB", (64, 64), (1, 2, 3)))[:60], (3, 8, 8),
     "damaged|truncated|not a readable"),
]


@pytest.mark.parametrize("case, make, shape, message", IMAGES, ids=[c[0] for c in IMAGES])
def test_images_are_converted_or_refused(case, make, shape, message):
    if message:
        with pytest.raises(I.ImageError, match=message):
            I.prepare_image(I.load_image_bytes(make()), shape)
        return
    x = I.prepare_image(I.load_image_bytes(make()), shape)
    assert x.shape == (1, *shape) and x.dtype == torch.uint8
    if case == "RGBA":  # transparent red composited on white
        assert x[0, :, 0, 0].tolist() == [255, 255, 255]
    if case == "CMYK":  # C=0, M=Y=255, K=0 is red in RGB
        r, g, b = (float(x[0, i].float().mean()) for i in range(3))
        assert r > 200 and g < 60 and b < 60
    if case == "greyscale for RGB model":
        assert x[0, :, 3, 3].tolist() == [77, 77, 77]


# --- dataset folders, through the page ----------------------------------------------------------------------

def _folder(root: Path, layout: dict[str, list[tuple[str, tuple[int, int]]]]) -> Path:
    for cls, items in layout.items():
        (root / cls).mkdir(parents=True, exist_ok=True)
        for name, size in items:
            if name.endswith(".png"):
                Image.new("RGB", size, (10, 200, 30)).save(root / cls / name)
            else:
                (root / cls / name).write_bytes(b"not an image")
    return root


FOLDERS = [
    ("empty folder", {}, "no class subfolders"),
    ("single class", {"cats": [("1.png", (8, 8))]}, "single class"),
    ("class folder without images", {"a": [("1.png", (8, 8))], "b": []}, "holds no images"),
    ("non-image with image extension", {"a": [("1.png", (8, 8))], "b": [("2.jpg", (8, 8))]}, "cannot be read"),
]


@pytest.mark.parametrize("case, layout, message", FOLDERS, ids=[c[0] for c in FOLDERS])
def test_bad_dataset_folder_in_page(tmp_path, case, layout, message):
    root = _folder(tmp_path / "ds", layout)
    root.mkdir(exist_ok=True)
    at = app_test("pages/overview.py")
    at.session_state["dataset"] = "imagefolder"
    at.session_state["dataset_path"] = str(root)
    at.session_state["weights"] = "Random weights (untrained)"  # a model that needs the images decoded (the demo
    # model would first be offered for training: issue 22)
    at.run()
    assert not at.exception, at.exception
    assert any(message in e.value for e in at.error), [e.value for e in at.error]


def test_mixed_sizes_folder_loads(tmp_path):
    from nnlab.data.sets import load_image_folder

    root = _folder(tmp_path / "ds", {"a": [(f"{i}.png", (8 + i, 10)) for i in range(5)],
                                     "b": [(f"{i}.png", (16, 16)) for i in range(5)]})
    ds = load_image_folder(root, image_size=12)
    assert ds.input_shape == (3, 12, 12) and len(ds.y_train) + len(ds.y_test) == 10


def test_path_outside_allowed_roots_in_page():
    at = app_test("pages/overview.py")
    at.session_state["dataset"] = "imagefolder"
    at.session_state["dataset_path"] = "/etc/../etc"
    at.run()
    assert not at.exception
    assert any("outside the folders nnlab may read" in e.value for e in at.error)
