"""Architectures, safe checkpoint loading, and the named-tensor mismatch message."""

from __future__ import annotations

import io
import os
import pickle

import pytest
import torch
from safetensors.torch import save as st_save

from nnlab.models import registry as M


@pytest.mark.parametrize("arch, shape", [("demo-cnn", (1, 28, 28)), ("demo-cnn-small", (1, 8, 8)),
                                         ("resnet18", (3, 32, 32)), ("mobilenet_v2", (1, 28, 28)),
                                         ("vgg16", (1, 28, 28))])
def test_architectures_fit_the_data(arch, shape):
    torch.manual_seed(0)
    m = M.create_model(arch, shape[0], 7, shape[1:]).eval()
    with torch.no_grad():
        out = m(torch.randn(2, *shape))
    assert out.shape == (2, 7)
    assert not any(getattr(mod, "inplace", False) for mod in m.modules())


def test_demo_uses_relu_modules():
    m = M.DemoCNN()
    assert sum(isinstance(x, torch.nn.ReLU) for x in m.modules()) == 4


def _bytes(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def test_state_dict_roundtrip_pt_and_safetensors():
    m = M.create_model("demo-cnn", 1, 10, (8, 8))
    for blob, name in ((_bytes(m.state_dict()), "m.pt"), (st_save(m.state_dict()), "m.safetensors"),
                       (_bytes({"state_dict": m.state_dict()}), "wrapped.pth")):
        other = M.create_model("demo-cnn", 1, 10, (8, 8))
        M.load_into(other, M.read_state_dict(blob, name))
        assert M.model_hash(other) == M.model_hash(m)


class _Evil:
    def __reduce__(self):
        return (os.system, (f"touch {os.environ.get('NNLAB_EVIL_MARK')}",))


def test_code_carrying_pickle_is_refused_and_does_not_run(tmp_path, monkeypatch):
    mark = tmp_path / "pwned"
    monkeypatch.setenv("NNLAB_EVIL_MARK", str(mark))
    blob = _bytes({"weight": _Evil()})
    with pytest.raises(M.CheckpointError, match="never runs code"):
        M.read_state_dict(blob, "evil.pt")
    raw = pickle.dumps(_Evil())
    with pytest.raises(M.CheckpointError):
        M.read_state_dict(raw, "evil.pkl")
    assert not mark.exists()


def test_whole_pickled_model_is_refused():
    with pytest.raises(M.CheckpointError, match="pickled Python objects"):
        M.read_state_dict(_bytes(M.DemoCNN(1, 10, (8, 8))), "model.pt")


@pytest.mark.parametrize("blob, msg", [(b"", "empty"), (b"\x00" * 64, "not a readable"),
                                       (b"PK\x03\x04garbage", "truncated")])
def test_garbage_is_refused(blob, msg):
    with pytest.raises(M.CheckpointError, match=msg):
        M.read_state_dict(blob, "x.pt")


def test_truncated_checkpoint_is_refused():
    blob = _bytes(M.DemoCNN(1, 10, (8, 8)).state_dict())
    with pytest.raises(M.CheckpointError):
        M.read_state_dict(blob[: len(blob) // 2], "x.pt")


def test_mismatch_names_first_tensor():
    small = M.create_model("demo-cnn", 1, 10, (8, 8))
    other_classes = M.create_model("demo-cnn", 1, 5, (8, 8)).state_dict()
    with pytest.raises(M.CheckpointError, match=r"classifier\.5\.weight.*\(5, 128\).*\(10, 128\)"):
        M.load_into(small, other_classes)
    resnet = M.create_model("resnet18", 1, 10, (8, 8)).state_dict()
    with pytest.raises(M.CheckpointError, match=r"tensor 'features\.0\.weight' .*missing"):
        M.load_into(small, resnet)


def test_nan_weights_are_refused():
    m = M.create_model("demo-cnn", 1, 10, (8, 8))
    sd = {k: v.clone() for k, v in m.state_dict().items()}
    sd["features.0.weight"][0, 0, 0, 0] = float("nan")
    with pytest.raises(M.CheckpointError, match="NaN or Inf"):
        M.load_into(m, sd)


def test_wrong_output_shape_is_reported():
    with pytest.raises(M.CheckpointError, match=r"returns \(2, 10\).*needs \(2, 3\)"):
        M.output_shape_ok(M.create_model("demo-cnn", 1, 10, (8, 8)), (1, 8, 8), 3)


def test_pretrained_offline_gives_clear_message(monkeypatch):
    import torchvision

    def offline(*a, **k):
        raise OSError("no network")

    monkeypatch.setattr(torchvision.models, "resnet18", offline)
    with pytest.raises(M.CheckpointError, match="could not be fetched"):
        M.create_model("resnet18", 3, 10, (32, 32), pretrained=True)
