"""Deconvnet / guided backprop against Captum and a hand-computed map; ReLU handling; hooks always removed."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from diagnostics import attributions as A
from diagnostics.hooks import hook_count

# Input 1×1×3×3; conv 1→2 (2×2, no bias); ReLU; linear 8→2. Worked by hand below.
X = torch.tensor([[[[1.0, -1.0, 2.0], [0.0, 1.0, -2.0], [3.0, -1.0, 1.0]]]])
W_CONV = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]], [[[0.0, -1.0], [1.0, 0.0]]]])
W_FC = torch.tensor([[1.0, 2.0, -1.0, -1.0, -2.0, 1.0, 1.0, 0.5], [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]])
# Pre-activations: A = [[2, -3], [-1, 2]], B = [[1, -1], [2, 1]]; ReLU masks A [[1,0],[0,1]], B [[1,0],[1,1]].
# Gradient reaching the ReLU outputs for class 0: gA = [[1, 2], [-1, -1]], gB = [[-2, 1], [1, 0.5]].
# Deconvnet: relu(g) -> rA = [[1,2],[0,0]], rB = [[0,1],[1,.5]]; guided: relu(g·mask) -> rA = [[1,0],[0,0]],
# rB = [[0,0],[1,.5]]; then the transposed convolution back to the 3×3 input.
DECONV = np.array([[1.0, 2.0, -1.0], [0.0, 1.0, 1.5], [1.0, 0.5, 0.0]])
GUIDED = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -0.5], [1.0, 0.5, 0.0]])
PLAIN = np.array([[1.0, 2.0, 0.0], [-2.0, -1.0, -0.5], [1.0, 0.5, -1.0]])  # ordinary gradient (mask only)


class TinyModule(nn.Module):
    def __init__(self, relu: str = "module") -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 2, bias=False)
        self.fc = nn.Linear(8, 2, bias=False)
        self.relu_kind = relu
        self.act = nn.ReLU(inplace=(relu == "inplace"))
        with torch.no_grad():
            self.conv.weight.copy_(W_CONV)
            self.fc.weight.copy_(W_FC)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x)
        if self.relu_kind in ("module", "inplace"):
            h = self.act(h)
        elif self.relu_kind == "functional":
            h = F.relu(h)
        elif self.relu_kind == "tensor_inplace":
            h = h.clone()
            h.relu_()
        return self.fc(h.flatten(1))


def _captum(method: str, model: nn.Module) -> np.ndarray:
    from captum.attr import Deconvolution, GuidedBackprop

    cls = Deconvolution if method == "deconvnet" else GuidedBackprop
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return cls(model).attribute(X.clone(), target=0).detach()[0, 0].double().numpy()


def test_hand_computed_maps_match_captum_and_ours() -> None:
    model = TinyModule("module").eval()
    np.testing.assert_allclose(_captum("deconvnet", model), DECONV, atol=1e-6)
    np.testing.assert_allclose(_captum("guided_backprop", model), GUIDED, atol=1e-6)
    prep = A.prepare(model, X)
    assert prep.notes() == []
    for method, expected in (("deconvnet", DECONV), ("guided_backprop", GUIDED)):
        ours = A.attribute(prep, X, method, 0).values[0]
        np.testing.assert_allclose(ours, expected, atol=1e-6)
    sal = A.attribute(prep, X, "saliency", 0).values[0]
    np.testing.assert_allclose(sal, np.abs(PLAIN), atol=1e-6)


@pytest.mark.parametrize("kind", ["inplace", "functional", "tensor_inplace"])
def test_functional_and_inplace_relus_are_handled(kind: str) -> None:
    model = TinyModule(kind).eval()
    prep = A.prepare(model, X)
    notes = " ".join(prep.notes())
    if kind == "inplace":
        assert prep.inplace_modules == 1 and "in-place" in notes
    else:
        assert prep.functional_calls == 1 and "functional ReLU" in notes
        # Captum alone would silently return the plain gradient here:
        np.testing.assert_allclose(_captum("guided_backprop", model), PLAIN, atol=1e-6)
    np.testing.assert_allclose(A.attribute(prep, X, "deconvnet", 0).values[0], DECONV, atol=1e-6)
    np.testing.assert_allclose(A.attribute(prep, X, "guided_backprop", 0).values[0], GUIDED, atol=1e-6)
    assert model.act.inplace == (kind == "inplace")  # the given model is unchanged


def _small_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 4, 3, padding=1),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)).eval()


def test_all_methods_shapes_and_no_hooks_left() -> None:
    model = _small_cnn()
    x = torch.randn(1, 3, 8, 8)
    prep = A.prepare(model, x)
    layer = A.gradcam_layers(prep.model)[0]
    assert layer == "3"
    for method in A.METHODS:
        a = A.attribute(prep, x, method, 1, ig_steps=8, layer=layer, window=2)
        assert a.values.shape == ((1, 8, 8) if method == "gradcam" else (3, 8, 8)), method
        assert np.isfinite(a.values).all()
        img = A.render(a.values, np.zeros((8, 8, 3), np.uint8), "heat")
        assert img.shape == (8, 8, 3) and img.dtype == np.uint8
    ig = A.attribute(prep, x, "integrated_gradients", 1, ig_steps=64)
    assert ig.delta < 0.05  # completeness: attributions sum to f(x) - f(baseline)
    assert hook_count(model) == 0 and hook_count(prep.model) == 0


def test_hooks_removed_after_forced_error() -> None:
    model = _small_cnn()
    x = torch.randn(1, 3, 8, 8)
    prep = A.prepare(model, x)
    for method in ("deconvnet", "guided_backprop", "gradcam", "guided_gradcam"):
        with pytest.raises((IndexError, RuntimeError, AssertionError)):
            A.attribute(prep, x, method, 99, layer="3")  # target out of range fails inside Captum
        assert hook_count(prep.model) == 0, method
    assert hook_count(model) == 0


def test_gradcam_matches_hand_computation() -> None:
    """Grad-CAM on a 1-layer net: weights = mean gradient over positions, map = relu(sum_k w_k A_k)."""
    model = TinyModule("module").eval()
    prep = A.prepare(model, X)
    cam = A.attribute(prep, X, "gradcam", 0, layer="act").values[0]
    # At the ReLU output: A_act = relu(A) = [[2,0],[0,2]], relu(B) = [[1,0],[2,1]];
    # alpha_A = mean(gA) = 0.25, alpha_B = mean(gB) = 0.125 -> [[0.625, 0], [0.25, 0.625]], then bilinear 2→3.
    small = torch.tensor([[[[0.625, 0.0], [0.25, 0.625]]]])
    expected = F.interpolate(small, size=(3, 3), mode="bilinear", align_corners=False)[0, 0].numpy()
    np.testing.assert_allclose(cam, expected, atol=1e-6)


def test_unknown_method_and_target() -> None:
    prep = A.prepare(_small_cnn(), torch.randn(1, 3, 8, 8))
    with pytest.raises(ValueError, match="unknown method"):
        A.attribute(prep, torch.randn(1, 3, 8, 8), "lime", 0)
    with pytest.raises(ValueError, match="needs a layer"):
        A.attribute(prep, torch.randn(1, 3, 8, 8), "gradcam", 0)
    with pytest.raises(ValueError, match="outside"):
        A.check_target(3, 3)


def test_resnet18_shared_relu_matches_functional_rule() -> None:
    """ResNet's blocks call one ReLU module twice; Captum's hooks must still apply the rule per call.

    Referee: the same network with every ReLU made functional and the rule applied by autograd.
    """
    import copy

    from nnlab.models.registry import create_model

    torch.manual_seed(0)
    model = create_model("resnet18", 3, 10, (16, 16)).eval()
    x = torch.randn(1, 3, 16, 16)
    prep = A.prepare(model, x)

    class FunctionalReLU(nn.Module):
        def forward(self, t: torch.Tensor) -> torch.Tensor:
            return F.relu(t)

    ref = copy.deepcopy(model).eval()
    for parent in list(ref.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.ReLU):
                setattr(parent, name, FunctionalReLU())
    for method, rule in (("guided_backprop", "guided"), ("deconvnet", "deconv")):
        xi = x.clone().requires_grad_(True)
        with A._FunctionalReLUs(rule):
            out = ref(xi)[0, 3]
        (expected,) = torch.autograd.grad(out, xi)
        ours = A.attribute(prep, x, method, 3).values
        assert float(np.abs(expected[0].double().numpy()).max()) > 0
        np.testing.assert_allclose(ours, expected[0].double().numpy(), atol=1e-7)
    assert hook_count(model) == 0 and hook_count(prep.model) == 0
