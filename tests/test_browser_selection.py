"""Work only on what the user chose (issue 22), through the real server in headless chromium.

- On a fresh workspace a user picks an RGB ImageFolder, torchvision's ResNet-18 and uploaded weights (a 10-class
  state dict saved DataParallel-style, "module." prefixes), in both orders. The sidebar is a draft until Load: the
  workspace's job records show no job for a combination the user did not end on, and the final one's jobs ran.
- A link copied on the Errors-by-class page after choosing a model and dataset opens, in a new browser context, the
  same model, dataset and page.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest
import torch

from nnlab.data.synthetic import make_shapes_folder
from tests.browser import (CHROMIUM, CHROMIUM_ARGS, choose, no_exception, pick_image_folder, require_chromium, settle,
                           server)
from tests.waiting import wait_for

UPLOAD = "Upload a checkpoint (.pt/.pth/.safetensors)"
LOAD_ENABLED = """() => { const b = document.querySelector('.st-key-sel_load button'); return !!b && !b.disabled; }"""


def _checkpoint(path: Path) -> Path:
    """A 10-class torchvision ResNet-18 (random init, no download) saved as nn.DataParallel would: "module." keys."""
    from torchvision.models import resnet18

    torch.manual_seed(0)
    state = resnet18(num_classes=10).state_dict()
    torch.save({f"module.{k}": v for k, v in state.items()}, path)
    return path


def _pick_model(page, ckpt: Path) -> None:
    query = page.locator(".st-key-arch_query input")
    query.fill("resnet18")
    query.press("Enter")
    settle(page, timeout_ms=120_000)
    choose(page, page.locator(".st-key-arch"), page.get_by_role("option", name=re.compile(r"^resnet18 · torchvision")))
    settle(page, timeout_ms=120_000)
    page.get_by_text(UPLOAD).first.click()
    settle(page, timeout_ms=120_000)
    page.locator(".st-key-checkpoint input[type=file]").set_input_files(str(ckpt))
    settle(page, timeout_ms=120_000)


def _pick_folder(page, folder: Path) -> None:
    pick_image_folder(page, folder)
    settle(page, timeout_ms=120_000)


def _records(ws: Path) -> dict[str, dict]:
    folder = ws / "jobs"
    return {p.stem: json.loads(p.read_text()) for p in folder.glob("*.json")} if folder.is_dir() else {}


@pytest.mark.slow
def test_only_the_combination_the_user_ends_on_is_worked_on_in_both_orders(tmp_path):
    from playwright.sync_api import sync_playwright

    ws = tmp_path / "ws"
    ckpt = _checkpoint(tmp_path / "resnet18_dp.pt")
    folders = [make_shapes_folder(tmp_path / f"shapes{i}", per_class=4, size=64, classes=10, seed=i)
               for i in (1, 2)]  # 10 classes × 4 RGB images of 64 px each
    require_chromium()
    # the test is about which jobs run, not runtimes: the server measures models in eager PyTorch alone
    with server({"NNLAB_WORKSPACE": str(ws), "NNLAB_RUNTIMES": "pytorch"}) as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            for order, folder in zip(("model first", "folder first"), folders):
                before = set(_records(ws))
                page = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
                page.set_default_timeout(240_000)
                page.goto(url)
                # a fresh workspace: nnlab's demo model is offered, not trained
                page.get_by_role("button", name="Train nnlab's demo model").wait_for()
                if order == "model first":
                    _pick_model(page, ckpt)
                    # complete and valid with the default dataset (10 classes too), yet nothing starts before Load
                    page.wait_for_function(LOAD_ENABLED)
                    _pick_folder(page, folder)
                else:
                    _pick_folder(page, folder)
                    _pick_model(page, ckpt)
                assert set(_records(ws)) == before, (order, "a draft started a job")
                page.wait_for_function(LOAD_ENABLED)
                page.locator(".st-key-sel_load button").first.click()
                page.get_by_text("Test accuracy").first.wait_for()
                settle(page, timeout_ms=120_000)
                no_exception(page)
                assert f"path={folder}" in unquote(page.url) and "arch=tv:resnet18" in unquote(page.url), page.url
                # the first accuracy shows while the register job goes on measuring (its test pass is the evaluation)
                wait_for(lambda: any(v["kind"] == "register-model" and v["status"] == "done"
                                     for k, v in _records(ws).items() if k not in before), 240, 0.3,
                         what="the register-model job to finish")
                new = {k: v for k, v in _records(ws).items() if k not in before}
                kinds = {v["kind"] for v in new.values() if v["status"] == "done"}
                assert {"build-dataset", "register-model"} <= kinds, (order, new)
                for rec in new.values():  # every job of this session is for the final combination
                    params = json.dumps(rec["params"])
                    assert str(folder) in params and "digits" not in params, (order, rec["label"], params)
                    assert rec["kind"] != "train-demo", (order, rec["label"])
                    if rec["kind"] == "register-model":
                        assert rec["params"]["arch"] == "tv:resnet18" and rec["params"]["source"]["kind"] == "upload"
                page.context.close()
        finally:
            browser.close()


def test_a_copied_link_reopens_the_same_model_dataset_and_page(demo, shared_server):
    from playwright.sync_api import sync_playwright

    require_chromium()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
            page.set_default_timeout(180_000)
            page.goto(shared_server)
            page.get_by_text("Test accuracy").first.wait_for()
            page.get_by_role("link", name="Errors by class").first.click()
            page.get_by_text("Macro precision").first.wait_for()
            page.get_by_text("Random weights (untrained)").first.click()  # another model: demo-cnn, random weights
            page.wait_for_function(LOAD_ENABLED)
            page.locator(".st-key-sel_load button").first.click()
            page.wait_for_function("() => location.search.includes('weights=random')")
            page.get_by_text("Macro precision").first.wait_for()
            settle(page, timeout_ms=120_000)
            no_exception(page)
            link = page.url
            shown = page.get_by_text(re.compile(r"test images, error")).first.inner_text()

            other = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()  # no shared state
            other.set_default_timeout(180_000)
            other.goto(link)
            other.get_by_role("heading", name="Errors by class").first.wait_for()
            other.get_by_text("Macro precision").first.wait_for()
            settle(other, timeout_ms=120_000)
            no_exception(other)
            assert urlparse(other.url).path.endswith("/diagnose_classes")
            assert other.get_by_role("combobox", name="Dataset").input_value() == page.get_by_role(
                "combobox", name="Dataset").input_value()
            assert other.get_by_role("combobox", name="Architecture").input_value().startswith(
                page.get_by_role("combobox", name="Architecture").input_value())
            assert other.get_by_role("radio", name="Random weights (untrained)").is_checked()
            assert other.get_by_text(re.compile(r"test images, error")).first.inner_text() == shown
        finally:
            browser.close()
