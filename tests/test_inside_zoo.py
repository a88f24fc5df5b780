"""Look-inside computations on real architectures at 224 (random, seeded weights), and the layouts they rely
on (channels-last blocks, a vision transformer's tokens) checked against Captum and hand computations."""

from __future__ import annotations

import functools
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from diagnostics import activations as A
from diagnostics import attributions as AT
from diagnostics import features as FE
from diagnostics import filters as FI
from diagnostics.hooks import capture_outputs, hook_count
from nnlab.models.archinfo import TokenLayout, arch_info, check_method
from nnlab.models.registry import create_model, model_hash

VIT_REASON = ("channel pruning cannot be applied to this model: its 12 attention layer(s) (first: blocks.0.attn) "
              "split their query/key/value channels into heads, and removing channels would break that split. Use "
              "unstructured pruning, weight quantization or clustering instead.")

# arch: (first conv, last conv, classifier, Grad-CAM layer, a deep layer and its channel-first shape)
ARCHS = {
    "tv:resnet18": ("conv1", "layer4.1.conv2", "fc", "layer4.1.conv2", "layer4", (512, 7, 7)),
    "tv:resnet50": ("conv1", "layer4.2.conv3", "fc", "layer4.2.conv3", "layer4", (2048, 7, 7)),
    "tv:mobilenet_v2": ("features.0.0", "features.18.0", "classifier.1", "features.18.0", "features", (1280, 7, 7)),
    "timm:efficientnet_b0": ("conv_stem", "conv_head", "classifier", "conv_head", "bn2", (1280, 7, 7)),
    "timm:convnext_atto": ("stem.0", "stages.3.blocks.1.mlp.fc2", "head.fc", "stages.3.blocks.1.mlp.fc2", "stages",
                           (320, 7, 7)),
    "timm:vit_tiny_patch16_224": ("patch_embed.proj", "patch_embed.proj", "head", "blocks.11.norm1", "blocks.11",
                                  (192, 14, 14)),
}


@functools.cache
def _model(arch: str) -> nn.Module:
    return create_model(arch, 3, 10, (224, 224), seed=0).eval()


def _x() -> torch.Tensor:
    return torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("arch", list(ARCHS))
def test_arch_info(arch: str) -> None:
    first, last, head, cam, _, _ = ARCHS[arch]
    info = arch_info(_model(arch))
    assert (info.first_conv, info.last_conv, info.classifier, info.gradcam_layer) == (first, last, (head,), cam)
    vit = arch.endswith("vit_tiny_patch16_224")
    assert info.kind == ("vit" if vit else "cnn")
    assert info.tokens == (TokenLayout(1, (16, 16)) if vit else None)
    assert info.channel_pruning == (not vit)
    assert info.channel_pruning_reason == (VIT_REASON if vit else "")
    if vit:
        assert info.gradcam_reshape((224, 224))(torch.zeros(2, 197, 192)).shape == (2, 192, 14, 14)
        with pytest.raises(ValueError, match=VIT_REASON[:40]):
            check_method(_model(arch), "prune-channels")
    check_method(_model(arch), "prune-unstructured")


@pytest.mark.parametrize("arch", list(ARCHS))
def test_look_inside_at_224(arch: str) -> None:
    first, _, _, cam, deep, deep_shape = ARCHS[arch]
    model, x = _model(arch), _x()
    before = model_hash(model)
    # filters: the first conv (a ViT's patch embedding) in colour
    convs = FI.conv_layers(model)
    assert convs[0].name == first
    g = FI.filter_grid(FI.conv_weight(model, first), "rgb", max_filters=16, cell=16)
    assert g.image.dtype == np.uint8 and len(g.order) == 16
    assert len(FI.weight_table(model)) == len(FI.weight_layers(model))
    # feature maps: shapes channel-first, a deep layer's maps equal to the raw output laid out by hand
    infos = {li.name: li for li in FE.layer_shapes(model, (3, 224, 224))}
    assert infos[deep].shape == deep_shape
    assert infos[deep].layout == ("tokens" if "vit" in arch else "chw")
    maps = FE.feature_maps(model, x, deep)
    with capture_outputs(model, [deep]) as store, torch.no_grad():
        model(x)
    raw = store[deep][0]
    expected = raw[1:].reshape(14, 14, 192).permute(2, 0, 1) if "vit" in arch else raw
    assert torch.equal(maps, expected)
    # activations over a batch of one
    stats = A.activation_stats(model, x, kind="activations")
    assert stats and all(np.isfinite(s.mean) for s in stats)
    # attributions: saliency and Grad-CAM at the recommended layer
    prep = AT.prepare(model, x)
    assert AT.gradcam_layers(prep.model)[0] == cam
    sal = AT.attribute(prep, x, "saliency", 3)
    gc = AT.attribute(prep, x, "gradcam", 3, layer=cam)
    assert sal.values.shape == (3, 224, 224) and gc.values.shape == (1, 224, 224)
    assert np.isfinite(sal.values).all() and np.abs(sal.values).max() > 0
    assert np.isfinite(gc.values).all() and gc.values.min() >= 0
    assert hook_count(model) == 0 and hook_count(prep.model) == 0
    assert model_hash(model) == before


def test_vit_attributions_at_224() -> None:
    arch = "timm:vit_tiny_patch16_224"
    model, x = _model(arch), _x()
    prep = AT.prepare(model, x)
    notes = " ".join(prep.notes())
    assert "Vision transformer" in notes and "plain gradient" in notes and "blocks.11.norm1" in notes
    xi = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(prep.model(xi)[0, 2], xi)
    for method in ("deconvnet", "guided_backprop"):  # no ReLU to rectify: the plain gradient
        np.testing.assert_allclose(AT.attribute(prep, x, method, 2).values, grad[0].double().numpy(), atol=1e-9)
    ig = AT.attribute(prep, x, "integrated_gradients", 2, ig_steps=4)
    assert ig.values.shape == (3, 224, 224) and np.isfinite(ig.delta)
    occ = AT.attribute(prep, x, "occlusion", 2, window=112)
    assert occ.values.shape == (3, 224, 224) and len(np.unique(occ.values[0])) > 1
    cam = AT.layer_gradcam(prep, x, "blocks.11.norm1", 2)
    assert cam.shape == (1, 1, 14, 14) and float(cam.max()) > 0
    # the last block's own output: the classifier reads only the class token, so patch tokens get no gradient
    assert float(AT.layer_gradcam(prep, x, "blocks.11", 2).abs().max()) == 0
    ggc = AT.attribute(prep, x, "guided_gradcam", 2, layer="blocks.11.norm1").values
    up = F.interpolate(cam, size=(224, 224), mode="nearest")[0].double().numpy()
    np.testing.assert_allclose(ggc, grad[0].double().numpy() * up, atol=1e-9)
    assert hook_count(prep.model) == 0


# --- layouts on tiny hand-built models ------------------------------------------------------------------------


class TinyViT(nn.Module):
    """A patch-embedding conv whose map becomes tokens (a class token first), then a mean over patches."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(3, 4, 2, stride=2)
        self.patch_embed.patch_size = (2, 2)
        self.num_prefix_tokens = 1
        self.cls_token = nn.Parameter(torch.randn(1, 1, 4, generator=g))
        self.blocks = nn.Sequential(nn.Identity())
        self.head = nn.Linear(4, 3)
        with torch.no_grad():
            for p in (self.patch_embed.proj.weight, self.patch_embed.proj.bias, self.head.weight, self.head.bias):
                p.copy_(torch.randn(p.shape, generator=g))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.patch_embed.proj(x).flatten(2).transpose(1, 2)
        t = self.blocks(torch.cat([self.cls_token.expand(len(x), -1, -1), t], dim=1))
        return self.head(torch.relu(t[:, 1:]).mean(1) + t[:, 0])


def test_token_gradcam_equals_captum_on_the_equivalent_conv_layer() -> None:
    from captum.attr import LayerGradCam

    model = TinyViT().eval()
    x = torch.randn(1, 3, 8, 6, generator=torch.Generator().manual_seed(1))
    prep = AT.prepare(model, x)
    assert prep.info.kind == "vit" and prep.info.tokens == TokenLayout(1, (2, 2))
    ours = AT.layer_gradcam(prep, x, "blocks.0", 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = LayerGradCam(model, model.patch_embed.proj).attribute(x, target=1, relu_attributions=True)
    assert ours.shape == ref.shape == (1, 1, 4, 3)
    assert float(ref.abs().max()) > 0
    torch.testing.assert_close(ours, ref.detach(), atol=1e-6, rtol=1e-5)
    full = AT.attribute(prep, x, "gradcam", 1, layer="blocks.0").values
    np.testing.assert_allclose(full[0], F.interpolate(ref.detach(), size=(8, 6), mode="bilinear")[0, 0].numpy(),
                               atol=1e-6)
    maps = FE.feature_maps(model, x, "blocks.0")
    assert torch.allclose(maps, model.patch_embed.proj(x)[0].detach(), atol=1e-6)
    assert {li.name: li.layout for li in FE.layer_shapes(model, (3, 8, 6))}["blocks"] == "tokens"


class ChannelsLast(nn.Module):
    """conv → channels-last → Linear (a ConvNeXt-style MLP) → back; or the same with a 1×1 conv."""

    def __init__(self, last: bool) -> None:
        super().__init__()
        self.last = last
        self.conv = nn.Conv2d(3, 5, 3, padding=1)
        self.mlp = nn.Linear(5, 6) if last else nn.Conv2d(5, 6, 1)
        self.act = nn.GELU()
        self.fc = nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x)
        h = self.act(self.mlp(h.permute(0, 2, 3, 1))).permute(0, 3, 1, 2) if self.last else self.act(self.mlp(h))
        return self.fc(h.mean((2, 3)))


def test_channels_last_layers_match_their_channel_first_twin() -> None:
    from captum.attr import LayerGradCam

    g = torch.Generator().manual_seed(2)
    cl, cf = ChannelsLast(True).eval(), ChannelsLast(False).eval()
    with torch.no_grad():
        for p in cl.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
        cf.load_state_dict({k: (v.reshape(6, 5, 1, 1) if k == "mlp.weight" else v) for k, v in cl.state_dict().items()})
    x = torch.randn(1, 3, 12, 10, generator=g)
    layouts = {li.name: (li.layout, li.shape) for li in FE.layer_shapes(cl, (3, 12, 10))}
    assert layouts["mlp"] == ("hwc", (6, 12, 10)) and layouts["act"] == ("hwc", (6, 12, 10))
    assert layouts["conv"] == ("chw", (5, 12, 10))
    torch.testing.assert_close(FE.feature_maps(cl, x, "act"), FE.feature_maps(cf, x, "act"))
    ours = AT.attribute(AT.prepare(cl, x), x, "gradcam", 1, layer="mlp").values
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = LayerGradCam(cf, cf.mlp).attribute(x, target=1, relu_attributions=True).detach()
    assert float(ref.abs().max()) > 0
    np.testing.assert_allclose(ours[0], ref[0, 0].numpy(), atol=1e-6)
    a = {s.name: s for s in A.activation_stats(cl, x.repeat(3, 1, 1, 1), layers=["act"])}
    b = {s.name: s for s in A.activation_stats(cf, x.repeat(3, 1, 1, 1), layers=["act"])}
    assert a["act"].dead_channels == b["act"].dead_channels and a["act"].dead_fraction == b["act"].dead_fraction


def test_token_activation_channels_are_the_embedding_dimension() -> None:
    """A ViT's GELU output N×T×D: a channel is one of D, dead when never positive over batch and tokens."""
    model = _model("timm:vit_tiny_patch16_224")
    x = torch.cat([_x(), -_x()])
    stats = {s.name: s for s in A.activation_stats(model, x, layers=["blocks.0.mlp.act", "blocks.11.mlp.act"])}
    with capture_outputs(model, list(stats)) as store, torch.no_grad():
        model(x)
    for name, s in stats.items():
        t = store[name]
        assert t.shape == (2, 197, 768) and s.shape == (197, 768)
        dead = 1 - float((t > 0).any(1).any(0).float().mean())
        assert s.dead_channels == pytest.approx(dead)


def test_captured_outputs_are_not_changed_by_later_inplace_ops() -> None:
    class AddsInPlace(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bn = nn.BatchNorm2d(2).eval()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.bn(x)
            y += 1.0  # torchvision's BasicBlock does `out += identity` on bn2's output
            return y

    x = torch.randn(1, 2, 3, 3)
    m = AddsInPlace()
    with capture_outputs(m, ["bn"]) as store, torch.no_grad():
        m(x)
    torch.testing.assert_close(store["bn"], m.bn(x))


def test_vit_channel_scores_and_uploads_use_the_model_preprocessing() -> None:
    import io

    from PIL import Image

    from nnlab.data.sets import ImageDataset
    from nnlab.models.registry import default_preprocessing

    arch = "timm:vit_tiny_patch16_224"
    model, pp = _model(arch), default_preprocessing(arch)
    g = torch.Generator().manual_seed(3)
    x8 = torch.randint(0, 256, (3, 3, 224, 224), dtype=torch.uint8, generator=g)
    data = ImageDataset("t224", "t224", "generated", ["a", "b"], x8, torch.tensor([0, 1, 0]), x8, torch.tensor([0, 1, 0]),
                        mean=pp.mean, std=pp.std, preprocessing=pp)
    scores = FE.channel_scores(model, data, "blocks.5", limit=3, reduce="max", batch_size=2)
    assert scores.shape == (3, 192)
    maps = FE.feature_maps(model, data.normalize(x8[1:2]), "blocks.5")
    np.testing.assert_allclose(scores[1], maps.flatten(1).amax(1).numpy(), rtol=1e-5, atol=1e-6)
    buf = io.BytesIO()
    im = Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 410, 4), dtype=np.uint8))
    im.save(buf, format="PNG")
    u8, x = FE.input_from_upload(buf.getvalue(), data)  # the model's preprocessing, carried by the data
    assert u8.shape == (1, 3, 224, 224) and torch.equal(x[0], pp(im))
