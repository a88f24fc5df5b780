"""Every page on real architectures at 224 (issue 11): MobileNetV2 and a timm ViT, random seeded
weights, on a generated RGB ImageFolder of coloured shapes seen through each architecture's own
preprocessing (shorter side 256 or 248, centre crop 224, ImageNet mean/std). No page raises; each shows the
model's 3×224×224 view; what a ViT page cannot show is said in the page, not raised."""

from __future__ import annotations

import pytest

from nnlab.data.synthetic import make_shapes_folder
from nnlab.ui.session import RANDOM
from tests.conftest import app_test

ARCHS = ["tv:mobilenet_v2", "timm:vit_tiny_patch16_224"]  # ResNet-18: tests/test_browser_zoo.py, in the browser
PAGES = ["pages/overview.py", "pages/train.py", "pages/diagnose_goal.py", "pages/diagnose_classes.py",
         "pages/diagnose_worst.py", "pages/diagnose_data.py", "pages/diagnose_curves.py", "pages/inside_filters.py",
         "pages/inside_features.py", "pages/inside_activations.py", "pages/inside_attributions.py",
         "pages/compress_lab.py", "pages/compress_pareto.py", "pages/compress_compare.py", "pages/jobs.py"]


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    # 10 classes × 5 images at 256 px: 40 train / 10 test (a stratified, seeded split: one test image a class,
    # four-fold checks on the train part). Every page still runs on the real architecture at 224; fewer images
    # only shorten the per-image work (features, data checks, activation statistics)
    return make_shapes_folder(tmp_path_factory.mktemp("shapes224") / "shapes", per_class=5, size=256)


def _texts(at) -> str:
    parts = []
    for kind in ("markdown", "caption", "info", "warning", "error", "success"):
        parts += [str(e.value) for e in getattr(at, kind)]
    return "\n".join(parts)


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHS)
def test_every_page_renders_at_224(shapes, arch, monkeypatch):
    # every page, not every runtime: the base is measured in eager PyTorch and ONNX Runtime (not compiled by
    # OpenVINO too); tests/test_honest_numbers.py and tests/test_browser_zoo.py time real models in every runtime
    monkeypatch.setenv("NNLAB_RUNTIMES", "pytorch,onnxruntime")
    said = {}
    for page in PAGES:
        at = app_test(page, timeout=600)
        at.session_state["dataset"] = "imagefolder"
        at.session_state["dataset_path"] = str(shapes)
        at.session_state["arch"] = arch
        at.session_state["weights"] = RANDOM
        at.run()
        assert not at.exception, (page, [e.value for e in at.exception])
        text = _texts(at)
        assert "Traceback" not in text, (page, text[-2000:])
        # an error box is for failures; the goal page's 'the evidence speaks against this remedy' boxes are content
        errors = [str(e.value) for e in at.error if "the evidence speaks against it" not in str(e.value)]
        assert not errors, (page, errors)
        said[page] = text
    overview = said["pages/overview.py"]
    assert "seen by the model as 3×224×224" in overview, overview[-1500:]
    assert "shorter side" in overview and "224×224" in overview  # the architecture's own preprocessing, shown
    if "vit" in arch:
        # no convolution to show filters or feature maps of: the pages say what they show instead
        inside = said["pages/inside_filters.py"] + said["pages/inside_features.py"]
        assert "ViT" in inside or "patch" in inside or "no conv" in inside.lower(), inside[-1500:]
