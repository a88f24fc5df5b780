"""Checkpoints saved by torchvision's and timm's own constructors load in nnlab and predict identically."""

from __future__ import annotations

import argparse
import copy
import io

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save as st_save
from torch import nn

from nnlab.models import registry as M
from nnlab.models.checkpoints import fit_state_dict, head_names, read_state_dict


def _bytes(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _calibrated(model: nn.Module, x: torch.Tensor) -> nn.Module:
    """Set BatchNorm running statistics to those of ``x`` (one pass, cumulative average), so that eval-mode
    logits are of a realistic size and a wrongly loaded tensor shows."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.momentum = None
    with torch.no_grad():
        model.train()(x)
    return model.eval()


def _batch(arch: str) -> torch.Tensor:
    rng = np.random.default_rng(1)
    pp = M.default_preprocessing(arch)
    ims = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in ((300, 240), (240, 320))]
    return torch.stack([pp(im) for im in ims])


def _files(state: dict[str, torch.Tensor]) -> list[tuple[str, bytes]]:
    module = {f"module.{k}": v for k, v in state.items()}
    ns = argparse.Namespace(model="x", lr=0.1)
    return [("model.safetensors", st_save(state)),
            ("model.pt", _bytes(module)),
            ("wrapped.pth", _bytes({"state_dict": module, "epoch": 3})),
            ("lightning.ckpt", _bytes({"state_dict": {f"model.{k}": v for k, v in state.items()}})),
            ("timm-train.pth.tar", _bytes({"epoch": 9, "arch": "x", "args": ns, "state_dict": state,
                                           "state_dict_ema": {k: v + 1 if v.is_floating_point() else v
                                                              for k, v in state.items()}})),
            ("pytorch_model.bin", st_save(module))]  # safetensors content under another name: sniffed


@pytest.mark.parametrize("arch", ["tv:resnet18", "timm:efficientnet_b0"])
def test_constructor_checkpoints_load_with_identical_logits(arch: str) -> None:
    import timm
    import torchvision

    source, name = arch.split(":")
    x = _batch(arch)
    if source == "tv":
        original = torchvision.models.get_model(name, num_classes=10)
    else:
        original = timm.create_model(name, num_classes=10)
    original = _calibrated(original, x)
    with torch.no_grad():
        expected = original(x)
    assert float(expected.abs().max()) > 0.1  # big enough for a wrong tensor to show
    state = original.state_dict()
    template = M.create_model(arch, 3, 10, (224, 224), seed=0)
    assert M.model_hash(template) != M.model_hash(original)
    for filename, blob in _files(state):
        model = copy.deepcopy(template)
        model, notes = M.load_checkpoint(model, read_state_dict(blob, filename))
        assert M.model_hash(model) == M.model_hash(original), filename
        with torch.no_grad():
            got = model(x)
        assert float((got - expected).abs().max()) <= 1e-6, filename
        assert ("common key prefix" in " ".join(notes)) == filename.startswith("lightning")
    ema = read_state_dict(_files(state)[4][1], "t.pth.tar", prefer_ema=True)
    assert all(torch.equal(ema[k], v + 1) for k, v in state.items() if v.is_floating_point())


def test_torchvision_resnet_file_loads_into_timm_layout() -> None:
    """timm's ResNet shares torchvision's key layout: a torchvision file predicts the same in timm:resnet18."""
    import torchvision

    x = _batch("tv:resnet18")[:1]
    original = _calibrated(torchvision.models.resnet18(num_classes=5), x.repeat(2, 1, 1, 1))
    model = M.load_into(M.create_model("timm:resnet18", 3, 5, (224, 224)), read_state_dict(st_save(
        original.state_dict()), "r.safetensors"))
    with torch.no_grad():
        assert float((model(x) - original(x)).abs().max()) <= 1e-6


def test_head_with_another_class_count_is_named_or_resized() -> None:
    import torchvision

    original = torchvision.models.resnet18()  # 1000 ImageNet classes
    state = read_state_dict(_bytes(original.state_dict()), "imagenet.pt")
    model = M.create_model("tv:resnet18", 3, 10, (224, 224), seed=0)
    head_before = model.fc.weight.clone()
    with pytest.raises(M.CheckpointError, match=r"'fc\.weight' has shape \(1000, 512\), the model expects \(10, 512\)"
                                                r": the checkpoint's classifier \(fc\) has 1000 classes, the dataset "
                                                r"has 10\. Choose to resize the head"):
        M.load_into(model, state)
    model, notes = M.load_checkpoint(model, state, resize_head=True)
    assert torch.equal(model.layer3[0].conv1.weight, original.layer3[0].conv1.weight)
    assert torch.equal(model.fc.weight, head_before)  # the model's own classifier is kept
    assert notes == ["classifier fc dropped from the checkpoint and initialised anew"]
    with pytest.raises(M.CheckpointError, match=r"'features\.0\.weight' .*missing \(none of the checkpoint's "
                                                r"tensor names match"):
        M.load_into(M.create_model("demo-cnn", 1, 10, (28, 28)), state, resize_head=True)


def test_timm_filter_converts_a_vit_checkpoint_at_another_resolution() -> None:
    import timm

    original = timm.create_model("vit_tiny_patch16_224", num_classes=3)
    model = M.create_model("timm:vit_tiny_patch16_224", 3, 3, (160, 160))
    assert model.pos_embed.shape[1] == 1 + 10 * 10
    report = fit_state_dict(model, read_state_dict(_bytes(original.state_dict()), "vit.pt"))
    assert report.notes == ["converted with timm's checkpoint_filter_fn"]
    assert report.state["pos_embed"].shape == model.pos_embed.shape  # resampled from 14×14 to 10×10
    assert torch.equal(report.state["blocks.3.attn.qkv.weight"], original.state_dict()["blocks.3.attn.qkv.weight"])


def test_head_names() -> None:
    import timm
    import torchvision

    assert head_names(torchvision.models.squeezenet1_1()) == ["classifier.1"]  # a 1×1 conv classifier
    assert head_names(timm.create_model("convnext_atto")) == ["head.fc"]
    assert head_names(M.DemoCNN()) == ["classifier.5"]
