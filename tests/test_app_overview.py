"""The Overview page through AppTest: the numbers shown are the model's."""

from __future__ import annotations

from nnlab.evaluate import evaluate
from nnlab.models.registry import create_model
from tests.conftest import app_test, small_preprocessing


def _metrics(at) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


def test_overview_shows_demo_model(demo, digits):
    model, rec, _ = demo
    at = app_test("pages/overview.py")
    at.run()
    assert not at.exception, at.exception
    shown = _metrics(at)
    assert shown["Test accuracy"] == f"{evaluate(model, digits, 'test').accuracy:.2%}"
    assert shown["Parameters"] == f"{rec.params:,}"
    assert shown["MACs / image"] == f"{rec.macs / 1e6:.2f} M"
    assert any("Layers" in s.value for s in at.subheader)
    assert not at.error


def test_sidebar_pickers_are_shared_state(demo):
    at = app_test()  # the default page through app.py's frame, where the sidebar lives
    at.run()
    assert not at.exception, at.exception
    assert at.selectbox(key="dataset").value == "digits"
    assert at.selectbox(key="arch").value == "demo-cnn"
    assert at.radio(key="weights").value == "Trained by nnlab"
    assert any(m.label == "Test accuracy" for m in at.metric)


def test_random_resnet_on_digits_is_measured(demo):
    at = app_test("pages/overview.py")
    at.session_state["arch"] = "resnet18"
    at.session_state["weights"] = "Random weights (untrained)"
    small_preprocessing(at, "resnet18", side=16, channels=1)
    at.run()
    assert not at.exception, at.exception
    shown = _metrics(at)
    expected = sum(p.numel() for p in create_model("resnet18", 1, 10, (16, 16)).parameters())
    assert shown["Parameters"] == f"{expected:,}"
    assert "ResNet-18" in at.caption[0].value
