"""The sidebar's choices are a draft until loaded (issue 22): nothing heavy starts for a combination the user has
not loaded, the Load button loads exactly the draft, a checkpoint that does not fit is refused before anything is
stored, and the demo model trains only when asked (releasing a left selection's jobs: tests/test_jobs.py)."""

from __future__ import annotations

import torch

from nnlab.jobs import manager as jobs
from tests.conftest import app_test, small_preprocessing


def _job_count() -> int:
    return len(jobs.manager().list())


def test_a_changed_choice_starts_nothing_until_load(demo):
    at = app_test("pages/overview.py")
    at.run()
    assert not at.exception, at.exception
    assert at.button(key="sel_load").disabled  # nothing to load: the draft is what is loaded
    before = _job_count()
    at.session_state["arch"] = "resnet18"
    at.session_state["weights"] = "Random weights (untrained)"
    small_preprocessing(at, "resnet18", side=16, channels=1)
    at.run()
    assert not at.exception, at.exception
    assert _job_count() == before  # a draft starts no job
    assert not at.button(key="sel_load").disabled
    assert any("draft" in c.value for c in at.sidebar.caption)
    assert at.query_params["arch"] == "demo-cnn"  # the URL names what is shown, not the draft
    assert any(m.label == "Test accuracy" for m in at.metric)  # the page still shows the loaded demo model
    at.button(key="sel_load").click().run()
    assert not at.exception, at.exception
    assert at.query_params["arch"] == "resnet18" and at.query_params["weights"] == "random"
    assert jobs.manager().list(kind="register-model")
    assert "ResNet-18" in at.caption[0].value


def test_a_bad_checkpoint_cannot_be_loaded_and_a_good_one_is_checked_against_the_class_count(demo, tmp_path):
    import io

    at = app_test("pages/overview.py")
    at.session_state["weights"] = "Upload a checkpoint (.pt/.pth/.safetensors)"
    at.run()
    assert at.button(key="sel_load").disabled  # no file yet
    wrong = demo[0].state_dict()
    head = [k for k, v in wrong.items() if v.ndim == 2][-1]  # the classifier's weight: 10 classes → 3
    wrong = {k: (v[:3] if k == head or k == head.replace("weight", "bias") else v) for k, v in wrong.items()}
    buf = io.BytesIO()
    torch.save({f"module.{k}": v for k, v in wrong.items()}, buf)
    before = _job_count()
    at.file_uploader(key="checkpoint").set_value(("mine.pt", buf.getvalue(), "application/octet-stream")).run()
    assert not at.exception, at.exception
    assert at.button(key="sel_load").disabled and any("cannot be used" in e.value for e in at.sidebar.error)
    assert _job_count() == before


def test_the_demo_model_on_a_new_folder_is_offered_not_trained(tmp_path):
    from nnlab.data.synthetic import make_shapes_folder

    folder = make_shapes_folder(tmp_path / "shapes", per_class=4, size=16)
    at = app_test("pages/overview.py")
    at.session_state["dataset"] = "imagefolder"
    at.session_state["dataset_path"] = str(folder)
    before = {j.key for j in jobs.manager().list()}
    at.run()
    assert not at.exception, at.exception
    assert at.button(key="train_demo")  # offered
    assert {j.key for j in jobs.manager().list()} == before  # not started, nothing decoded
