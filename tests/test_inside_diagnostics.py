"""Filters, feature maps, activation statistics and uploads: numbers on small hand-built models."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from diagnostics import activations as act
from diagnostics import features as feat
from diagnostics import filters as filt
from diagnostics.hooks import borrowed, capture_outputs, hook_count
from nnlab.models.registry import create_model, model_hash


def _conv_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 2, 3), nn.ReLU(),
                         nn.Flatten(), nn.Linear(2 * 4 * 4, 3)).eval()


def test_filter_norms_sorting_and_grid() -> None:
    w = np.zeros((3, 2, 2, 2))
    w[0] = 1.0          # L1 8, L2 sqrt(8)
    w[1, 0, 0, 0] = -5  # L1 5, L2 5
    w[2, :, 0, 0] = 2   # L1 4, L2 sqrt(8)
    np.testing.assert_allclose(filt.filter_norms(w, "l1"), [8, 5, 4])
    np.testing.assert_allclose(filt.filter_norms(w, "l2"), [np.sqrt(8), 5, np.sqrt(8)])
    assert filt.filter_order(filt.filter_norms(w, "l1"), "ascending").tolist() == [2, 1, 0]
    assert filt.filter_order(filt.filter_norms(w, "l2"), "descending").tolist() == [1, 0, 2]  # stable tie
    shared = filt.filter_images(w, "channel", 0, "shared")
    per = filt.filter_images(w, "channel", 0, "per-filter")
    # shared scale: filter 0 (w=1, max |w| = 5) is pale red; per-filter it is full red
    np.testing.assert_allclose(shared[0][0, 0], [1.0, 0.8, 0.8])
    np.testing.assert_allclose(per[0][0, 0], [1.0, 0.0, 0.0])
    np.testing.assert_allclose(shared[1][0, 0], [0.0, 0.0, 1.0])  # -5: full blue
    np.testing.assert_allclose(filt.filter_images(w, "mean")[1][0, 0], [0.0, 0.0, 1.0])  # per mean -2.5/2.5
    g = filt.filter_grid(w, "channel", sort="descending", cell=4)
    assert g.order.tolist() == [0, 1, 2] and g.image.dtype == np.uint8
    with pytest.raises(ValueError, match="3 input channels"):
        filt.filter_images(w, "rgb")


def test_rgb_first_layer_and_weight_table() -> None:
    model = _conv_net()
    layers = filt.conv_layers(model)
    assert [c.name for c in layers] == ["0", "2"] and layers[0].params == 4 * 3 * 9 + 4
    w = filt.conv_weight(model, "0")
    ims = filt.filter_images(w, "rgb", scale="shared")
    m = np.abs(w).max()
    np.testing.assert_allclose(ims[1][2, 1], 0.5 + 0.5 * w[1, :, 2, 1] / m)
    with torch.no_grad():
        model[2].weight[:, :, 0, :] = 0.0  # a third of layer 2 set to zero
    rows = {r["layer"]: r for r in filt.weight_table(model)}
    assert rows["2"]["exact zeros"] == pytest.approx(1 / 3)
    assert rows["2"]["near zero"] >= 1 / 3
    assert rows["5"]["shape"] == "3×32" and rows["5"]["params"] == 99
    ref = model[0].weight.detach()
    assert rows["0"]["mean"] == pytest.approx(float(ref.mean()), abs=1e-7)
    assert rows["0"]["std"] == pytest.approx(float(ref.std()), rel=1e-5)
    counts, edges = filt.weight_histogram(model, "0", bins=10)
    assert counts.sum() == 108 and edges[0] == pytest.approx(float(ref.min()))


@pytest.mark.parametrize("arch,expected", [
    ("resnet18", {"conv1": (64, 16, 16), "maxpool": (64, 8, 8), "layer1": (64, 8, 8), "layer2": (128, 4, 4),
                  "layer3": (256, 2, 2), "layer4": (512, 1, 1), "layer4.1.conv2": (512, 1, 1),
                  "avgpool": (512, 1, 1), "fc": (10,)}),
    ("vgg16", {"features.0": (64, 32, 32), "features.4": (64, 16, 16), "features.9": (128, 8, 8),
               "features.16": (256, 4, 4), "features.23": (512, 2, 2), "features.28": (512, 2, 2),
               "features.30": (512, 1, 1), "avgpool": (512, 7, 7), "classifier.0": (4096,), "classifier.6": (10,)}),
])
def test_feature_map_shapes_torchvision(arch: str, expected: dict) -> None:
    torch.manual_seed(0)
    model = create_model(arch, 3, 10, (32, 32)).eval()
    shapes = {info.name: info.shape for info in feat.layer_shapes(model, (3, 32, 32))}
    for name, shape in expected.items():
        assert shapes[name] == shape, name
    if arch == "vgg16":
        assert sum(1 for n in shapes if n.startswith("features.") and model.get_submodule(n).__class__ is nn.Conv2d) == 13
        x = torch.randn(1, 3, 32, 32)
        maps = feat.feature_maps(model, x, "features.9")
        assert tuple(maps.shape) == (128, 8, 8)
    assert hook_count(model) == 0


def test_feature_maps_values_and_top_activating(tiny_data) -> None:
    model = _conv_net()
    first = nn.Sequential(nn.Conv2d(1, 2, 1, bias=False)).eval()
    with torch.no_grad():
        first[0].weight[:] = torch.tensor([1.0, -1.0]).view(2, 1, 1, 1)
    x8, x, label = feat.input_from_dataset(tiny_data, "test", 4)
    maps = feat.feature_maps(first, x, "0")
    np.testing.assert_allclose(maps[0].numpy(), x[0, 0].numpy(), atol=1e-6)
    np.testing.assert_allclose(maps[1].numpy(), -x[0, 0].numpy(), atol=1e-6)
    scores = feat.channel_scores(first, tiny_data, "0", "test", limit=20, reduce="max", batch_size=7)
    ref = tiny_data.tensors("test", np.arange(20))[0].flatten(1).amax(1).numpy()
    np.testing.assert_allclose(scores[:, 0], ref, atol=1e-6)
    idx, vals = feat.top_activating(scores, 0, k=3)
    assert idx.tolist() == np.argsort(-ref, kind="stable")[:3].tolist()
    img = feat.feature_grid(maps, "shared", cell=16)
    assert img.shape[2] == 3
    assert hook_count(first) == 0 and hook_count(model) == 0
    with pytest.raises(IndexError):
        feat.input_from_dataset(tiny_data, "test", 30)


def test_dead_fraction_on_constructed_layer() -> None:
    lin = nn.Linear(2, 8)
    with torch.no_grad():
        lin.weight.zero_()
        lin.weight[0, 0] = 1.0   # unit 0: positive only for the second sample -> alive
        lin.weight[1, 0] = -1.0  # unit 1: positive for samples 1 and 3 -> alive
        lin.bias[:] = torch.tensor([0.0, 0.0, 1.0, -1.0, 0.0, 0.5, -0.5, -2.0])  # units 3,4,6,7 never positive
    model = nn.Sequential(lin, nn.ReLU(), nn.Linear(8, 2, bias=False), nn.Sigmoid()).eval()
    with torch.no_grad():
        model[2].weight[:] = torch.tensor([[100.0] * 8, [0.0] * 8])
    x = torch.tensor([[-1.0, 0.0], [2.0, 0.0], [-3.0, 0.0]])
    stats = {s.name: s for s in act.activation_stats(model, x, kind="activations")}
    assert stats["1"].dead_fraction == pytest.approx(4 / 8)
    assert stats["1"].zero_fraction == pytest.approx(15 / 24)  # zeros per unit: 2,1,0,3,3,0,3,3
    assert np.isnan(stats["1"].saturated_fraction)
    # sigmoid output: unit 0 saturates (logits >= 150), unit 1 sits at 0.5
    assert stats["3"].saturated_fraction == pytest.approx(0.5)
    assert stats["3"].counts.sum() == 6
    conv = act.activation_stats(model, x, kind="conv/linear")
    assert [s.name for s in conv] == ["0", "2"]
    assert hook_count(model) == 0


def test_hooks_removed_after_forced_error() -> None:
    model = _conv_net()
    with pytest.raises(RuntimeError):
        with capture_outputs(model, ["0", "2"]):
            model(torch.randn(1, 5, 6, 6))  # wrong channel count
    assert hook_count(model) == 0
    with pytest.raises(KeyError):
        with capture_outputs(model, ["0", "nope"]):
            pass
    assert hook_count(model) == 0
    with pytest.raises(RuntimeError):
        act.activation_stats(model, torch.randn(2, 5, 6, 6))
    with pytest.raises(ZeroDivisionError):
        with borrowed(model):
            model[0].register_forward_hook(lambda *a: None)
            model[1].register_full_backward_hook(lambda *a: None)
            model[2].register_forward_pre_hook(lambda *a: None)
            raise ZeroDivisionError
    assert hook_count(model) == 0
    before = model_hash(model)
    feat.feature_maps(model, torch.randn(1, 3, 6, 6), "2")
    assert model_hash(model) == before and hook_count(model) == 0


def _png(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def test_uploaded_images_converted_as_dataset_expects(digits, tiny_data) -> None:
    rgba = Image.new("RGBA", (40, 30), (255, 0, 0, 255))
    rgba.putpixel((0, 0), (0, 0, 0, 0))  # transparent -> white
    x8, x = feat.input_from_upload(_png(rgba), digits)
    assert x8.shape == (1, 1, 8, 8) and x8.dtype == torch.uint8
    # red on greyscale: luminance 0.299*255 = 76
    assert int(x8[0, 0, 4, 4]) == 76
    np.testing.assert_allclose(x.numpy(), digits.normalize(x8).numpy())
    grey = Image.new("L", (3000, 2000), 200)
    x8, x = feat.input_from_upload(_png(grey), digits)
    assert x8.shape == (1, 1, 8, 8) and int(x8.min()) == 200 == int(x8.max())
    rgb_data = type(tiny_data)(id="rgb", name="rgb", source="t", classes=["a", "b"],
                               x_train=torch.zeros(4, 3, 6, 6, dtype=torch.uint8) + 100,
                               y_train=torch.tensor([0, 1, 0, 1]), x_test=torch.zeros(2, 3, 6, 6, dtype=torch.uint8),
                               y_test=torch.tensor([0, 1]), mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    x8, x = feat.input_from_upload(_png(Image.new("L", (16, 16), 51)), rgb_data)
    assert x8.shape == (1, 3, 6, 6) and (x8 == 51).all()
    np.testing.assert_allclose(x.numpy(), (0.2 - 0.5) / 0.25, atol=1e-6)
    with pytest.raises(ValueError):
        feat.input_from_upload(b"not an image", digits)


def test_compare_base_and_variant_by_layer_name() -> None:
    base = nn.Sequential(nn.Linear(2, 4), nn.ReLU()).eval()
    variant = nn.Sequential(nn.Linear(2, 4), nn.ReLU()).eval()
    with torch.no_grad():
        base[0].weight.zero_()
        base[0].bias[:] = torch.tensor([1.0, 2.0, 3.0, 4.0])
        variant[0].weight.zero_()
        variant[0].bias[:] = torch.tensor([1.0, 2.0, 0.0, -4.0])  # two units pruned dead
    x = torch.randn(5, 2)
    rows = act.compare(act.activation_stats(base, x), act.activation_stats(variant, x))
    assert len(rows) == 1 and rows[0]["layer"] == "1"
    assert rows[0]["dead_fraction (base)"] == 0.0 and rows[0]["dead_fraction (variant)"] == 0.5
    assert rows[0]["Δ mean"] == pytest.approx(0.75 - 2.5)
