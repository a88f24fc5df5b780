"""The workspace: atomic writes, persistence, corrupt records skipped, demo model cached."""

from __future__ import annotations

import time

import pytest
import torch

from nnlab import workspace as W
from nnlab.records import Record


def test_atomic_write_keeps_old_content_on_failure(tmp_path, monkeypatch):
    p = tmp_path / "rec.json"
    W.atomic_write_text(p, "old")

    def boom(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(W.os, "replace", boom)
    with pytest.raises(W.WorkspaceError, match="No space left"):
        W.atomic_write_text(p, "new")
    assert p.read_text() == "old"
    assert [f.name for f in tmp_path.iterdir()] == ["rec.json"]  # no temporary file left behind


def test_atomic_path_removes_temp_on_error(tmp_path):
    with pytest.raises(RuntimeError):
        with W.atomic_path(tmp_path / "a.onnx") as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("exporter died")
    assert list(tmp_path.iterdir()) == []


def test_variants_persist_and_corrupt_records_are_skipped(tmp_path):
    ws = W.Workspace(tmp_path)
    for i in range(3):
        ws.save_variant(Record(id=f"v{i}", name=f"V{i}", method="prune", created=time.time() + i))
    (ws.variant_dir("v1") / "record.json").write_text('{"id": "v1", "na')  # a torn write from another tool
    again = W.Workspace(tmp_path)
    assert [r.id for r in again.list_variants()] == ["v0", "v2"]
    assert again.errors and "v1" in again.errors[0]
    again.rename_variant("v2", "renamed")
    assert W.Workspace(tmp_path).load_variant("v2").name == "renamed"
    again.delete_variant("v0")
    assert [r.id for r in W.Workspace(tmp_path).list_variants()] == ["v2"]


def test_ids_cannot_escape(tmp_path):
    ws = W.Workspace(tmp_path)
    for bad in ("../x", "a/b", "", ".hidden"):
        with pytest.raises(W.WorkspaceError):
            ws.variant_dir(bad)


def test_unwritable_workspace_is_reported(tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the workspace folder should be")
    ws = W.Workspace(blocker / "ws")
    assert not ws.writable()
    with pytest.raises(W.WorkspaceError, match="not writable"):
        ws.save_variant(Record(id="v", name="v", method="prune"))


def test_model_counts_as_present_only_with_record(tmp_path):
    ws = W.Workspace(tmp_path)
    ws.save_model("m1", {"w": torch.ones(2)}, [{"epoch": 1}])
    assert not ws.has_model("m1")  # weights without a record: an interrupted save
    ws.save_model_record("m1", Record(id="m1", name="m", method="base"))
    assert ws.has_model("m1") and ws.load_history("m1") == [{"epoch": 1}]
    assert torch.equal(ws.load_model_state("m1")["w"], torch.ones(2))


def test_demo_is_cached_not_retrained(demo, digits, monkeypatch):
    import nnlab.base as B
    from nnlab.models.registry import model_hash

    def no_training(*a, **k):
        raise AssertionError("the cached demo model must not be trained again")

    monkeypatch.setattr(B, "train_model", no_training)
    model, rec, hist = B.ensure_demo(digits, W.Workspace())
    assert model_hash(model) == model_hash(demo[0]) and rec.id == demo[1].id and hist == demo[2]


def test_cli_flag_overrides_workspace(monkeypatch, tmp_path):
    from nnlab import config

    monkeypatch.setenv("NNLAB_WORKSPACE", "/elsewhere")  # monkeypatch restores both afterwards
    monkeypatch.setenv("NNLAB_DATA", "/elsewhere")
    config.apply_cli_args(["--workspace", str(tmp_path / "ws"), "--data=" + str(tmp_path / "d")])
    assert config.workspace_dir() == tmp_path / "ws" and config.data_dir() == tmp_path / "d"
    assert W.Workspace().root == tmp_path / "ws"
