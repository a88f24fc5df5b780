"""The four Look-inside pages through AppTest: the demo model, and VGG-16 on a small 3-channel ImageFolder."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import app_test, small_preprocessing

PAGES = ["pages/inside_filters.py", "pages/inside_features.py", "pages/inside_activations.py",
         "pages/inside_attributions.py"]


def _texts(at) -> str:
    parts = [m.value for m in at.metric] + [str(m.label) for m in at.metric]
    parts += [str(c.value) for c in at.caption] + [str(i.value) for i in at.info]
    return " ".join(parts)


def _frames(at) -> list:
    return [d.value for d in at.dataframe]


@pytest.mark.parametrize("page", PAGES)
def test_page_demo(demo, page: str) -> None:
    at = app_test(page).run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    frames = _frames(at)
    if page.endswith("filters.py"):
        assert at.metric[0].label.startswith("Mean L1") and float(at.metric[0].value) > 0
        table = frames[0]
        assert list(table["layer"])[:2] == ["features.0", "features.4"] and table["params"].iloc[0] == 288
        at.radio(key="filters_norm").set_value("l2").run()
        at.selectbox(key="filters_sort").set_value("ascending").run()
        assert not at.exception
        assert at.metric[0].label.startswith("Mean L2")
    elif page.endswith("features.py"):
        labels = [m.label for m in at.metric]
        assert "Predicted" in labels
        never = at.metric[labels.index("Never-positive channels")].value
        assert never.endswith("/ 32") and 0 <= int(never.split("/")[0]) <= 32
        at.number_input(key="features_index").set_value(7).run()
        assert not at.exception
        assert len(_frames(at)[-1]) == 12  # top-activating samples
    elif page.endswith("activations.py"):
        table = frames[0]
        assert len(table) == 4 and set(table["type"]) == {"ReLU"}
        assert ((table["dead units"] >= 0) & (table["dead units"] <= 1)).all()
        at.selectbox(key="acts_kind").set_value("conv/linear").run()
        assert not at.exception and len(_frames(at)[0]) == 5
    else:
        summary = frames[-1]
        assert len(summary) == 7 and np.isfinite(summary["max |value|"]).all()
        assert (summary["max |value|"] > 0).all()


def test_features_preselects_gallery_choice(demo) -> None:
    at = app_test("pages/inside_features.py")
    at.session_state["inspect_index"] = 11
    at.session_state["inspect_split"] = "train"
    at.run()
    assert not at.exception
    assert at.number_input(key="features_index").value == 11
    assert at.selectbox(key="features_split").value == "train"


@pytest.fixture(scope="module")
def rgb_folder(tmp_path_factory) -> Iterator[Path]:
    """A 2-class ImageFolder of 12×12 RGB PNGs under /tmp (an allowed root in tests)."""
    root = Path("/tmp") / f"nnlab-inside-rgb-{tmp_path_factory.getbasetemp().name}"
    g = np.random.default_rng(0)
    for ci, name in enumerate(["red", "blue"]):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(5):
            a = g.integers(0, 60, size=(12, 12, 3)).astype(np.uint8)
            a[..., 0 if ci == 0 else 2] += 150
            Image.fromarray(a, "RGB").save(root / name / f"{i}.png")
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.mark.parametrize("page", PAGES)
def test_page_vgg16_rgb(rgb_folder: Path, page: str, monkeypatch) -> None:
    # these pages look inside the model: its base is measured in eager PyTorch alone, not exported to ONNX and
    # compiled by OpenVINO (~1 min for VGG-16's 138 M parameters on 2 cores); tests/test_honest_numbers.py times
    # real architectures in every runtime
    monkeypatch.setenv("NNLAB_RUNTIMES", "pytorch")
    at = app_test(page, timeout=240)
    at.session_state["dataset"] = "imagefolder"
    at.session_state["dataset_path"] = str(rgb_folder)
    at.session_state["arch"] = "vgg16"
    at.session_state["weights"] = "Random weights (untrained)"
    small_preprocessing(at, "vgg16", side=32, channels=3)  # VGG-16 through the real preprocessing path, small
    at.session_state["acts_n"] = 4
    at.session_state["attr_ig_steps"] = 8
    at.run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    frames = _frames(at)
    if page.endswith("filters.py"):
        assert at.radio(key="filters_view").value == "rgb"  # first layer of an RGB model in colour
        assert frames[0]["shape"].iloc[0] == "64×3×3×3" and len(frames[0]) == 16
    elif page.endswith("features.py"):
        assert "Predicted" in [m.label for m in at.metric]
    elif page.endswith("activations.py"):
        assert len(frames[0]) == 15 and set(frames[0]["type"]) == {"ReLU"}
    else:
        summary = frames[-1]
        assert len(summary) == 7 and np.isfinite(summary["max |value|"]).all()


def test_attributions_target_is_selectable(demo) -> None:
    at = app_test("pages/inside_attributions.py").run()
    assert not at.exception
    key = "attr_target_test:0"
    predicted = at.selectbox(key=key).value
    other = (predicted + 1) % 10
    first = _frames(at)[-1]["sum |value|"].to_numpy()
    at.selectbox(key=key).set_value(other).run()
    assert not at.exception and not at.error
    second = _frames(at)[-1]["sum |value|"].to_numpy()
    assert at.selectbox(key=key).value == other
    assert not np.allclose(first, second)  # maps for another class differ


def test_activations_compare_with_variant(demo, monkeypatch) -> None:
    import copy

    import torch

    from nnlab.records import Record
    from nnlab.workspace import Workspace

    model, record, _ = demo
    variant = copy.deepcopy(model)
    with torch.no_grad():
        variant.features[1].bias[:16] = -100.0  # half the first block's channels can never be positive
    monkeypatch.setattr("compression.variant.load_variant_model", lambda ws, rec: variant)
    ws = Workspace()
    rec = Record(id="inside-test-variant", name="half dead", method="prune", parent=record.id,
                 arch=record.arch, dataset=record.dataset)
    ws.save_variant(rec)
    try:
        at = app_test("pages/inside_activations.py").run()
        assert not at.exception
        at.selectbox(key="acts_variant").set_value(rec.id).run()
        assert not at.exception and not at.warning
        cmp = _frames(at)[1]
        row = cmp[cmp["layer"] == "features.2"].iloc[0]
        assert row["dead_fraction (variant)"] >= 0.5 > row["dead_fraction (base)"]
        assert row["Δ dead_fraction"] >= 0.5 - row["dead_fraction (base)"] - 1e-9
    finally:
        ws.delete_variant(rec.id)
