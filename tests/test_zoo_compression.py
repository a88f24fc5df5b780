"""The fast compression methods on each real architecture: they work, or refuse with a clear reason.

Models are built at 64×64 (the methods do not depend on the resolution; a ViT is built for its 4×4 patch
grid) with seeded random weights; no calibration beyond four images, no fine-tuning. ResNet-50 is run through
channel pruning only (its bottleneck blocks and strided shortcuts are the structural case); the per-layer
methods meet the same Conv2d/Linear layers as in ResNet-18 and would only add a minute of k-means.
"""

from __future__ import annotations

import functools
import re

import pytest
import torch

import compression.clustering  # noqa: F401  (registers the methods)
import compression.pruning  # noqa: F401
import compression.quantization  # noqa: F401
from compression.registry import CompressContext, apply, config_from_dict
from nnlab.data.sets import ImageDataset
from nnlab.models.archinfo import check_method
from nnlab.models.registry import create_model, model_hash

ARCHS = ["tv:resnet18", "tv:resnet50", "tv:mobilenet_v2", "timm:efficientnet_b0", "timm:convnext_atto",
         "timm:vit_tiny_patch16_224"]
# channel pruning times the pruned model against its parent in one runtime: here eager PyTorch, not the fastest of
# all (choosing it converts both models to ONNX and OpenVINO, most of a case's minute at 64 px and nothing this test
# asserts; tests/test_runtimes.py covers that choice)
METHODS = {"prune-unstructured": {"sparsity": 0.5}, "quantize-weights": {"bits": 4},
           "cluster": {"k": 4}, "prune-channels": {"target": "channels", "amount": 0.3, "runtime": "pytorch"}}
REFUSED = {("timm:vit_tiny_patch16_224", "prune-channels"):
           "channel pruning cannot be applied to this model: its 12 attention layer(s) (first: blocks.0.attn) split "
           "their query/key/value channels into heads, and removing channels would break that split. Use "
           "unstructured pruning, weight quantization or clustering instead."}
SIZE = 64


@functools.cache
def _model(arch: str) -> torch.nn.Module:
    return create_model(arch, 3, 2, (SIZE, SIZE), seed=0).eval()


@functools.cache
def _data() -> ImageDataset:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (4, 3, SIZE, SIZE), dtype=torch.uint8, generator=g)
    y = torch.tensor([0, 1, 0, 1])
    return ImageDataset("tiny64", "tiny64", "generated", ["a", "b"], x, y, x.clone(), y.clone())


def compress(model, cfg, ctx):
    """What the lab does: ask the architecture first (nnlab.models.archinfo.check_method), then apply the method."""
    check_method(model, cfg)
    return apply(model, cfg, ctx)


CASES = [(a, m) for a in ARCHS for m in METHODS if a != "tv:resnet50" or m == "prune-channels"]


@pytest.mark.parametrize("arch, method", CASES)
def test_fast_methods_work_or_say_why(arch: str, method: str, tmp_path) -> None:
    model, data = _model(arch), _data()
    before = model_hash(model)
    cfg = config_from_dict({"method": method, **METHODS[method]})
    ctx = CompressContext(data=data, workdir=tmp_path, arch=arch)
    reason = REFUSED.get((arch, method))
    if reason is not None:
        with pytest.raises(ValueError, match=f"^{re.escape(reason)}$"):
            compress(model, cfg, ctx)
        return
    result = compress(model, cfg, ctx)
    x = data.normalize(data.x_test[:2])
    with torch.no_grad():
        out = result.model(x)
    assert out.shape == (2, 2) and torch.isfinite(out).all()
    assert model_hash(model) == before  # the given model is never changed
    weights = [m.weight for m in result.model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    if method == "prune-unstructured":
        zeros = sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)
        assert 0.49 <= zeros <= 0.51
    elif method == "cluster":
        assert all(len(torch.unique(w[w != 0])) <= 4 for w in weights)  # zeros are kept out of the clusters
    elif method == "quantize-weights":
        assert result.extra["bits"] == 4 and result.extra["quantized_layers"] == len(weights)
    else:
        assert result.extra["params_after"] < result.extra["params_before"]
        assert result.extra["latency_runtime"] == result.runner.runtime == "pytorch-eager-fp32-cpu"
        assert result.extra["latency_pruned_ms"] > 0 and result.extra["latency_parent_ms"] > 0
