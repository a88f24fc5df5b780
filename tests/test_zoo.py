"""The torchvision/timm zoos: listing without building, search, preprocessing from metadata (pixel-exact
against torchvision's and timm's own transforms), pretrained weights offline and from the cache, and
reproducible random weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from nnlab.data.preprocess import PreprocessingError
from nnlab.models import registry as M
from nnlab.models import zoo
from nnlab.models.randinit import seeded_init

# --- listing and search ------------------------------------------------------------------------------------


def test_every_architecture_is_listed_without_building_one(monkeypatch) -> None:
    import timm
    import torchvision

    def no_build(*a, **k):
        raise AssertionError("listing must not build a model")

    monkeypatch.setattr(torchvision.models, "get_model", no_build)
    monkeypatch.setattr(timm, "create_model", no_build)
    zoo.zoo_entries.cache_clear()
    zoo._by_key.cache_clear()
    keys = zoo.zoo_keys()
    tv = torchvision.models.list_models(module=torchvision.models)
    assert set(zoo.zoo_keys("tv")) == {f"tv:{n}" for n in tv}
    assert set(zoo.zoo_keys("timm")) == {f"timm:{n}" for n in timm.list_models()}
    assert len(keys) == len(tv) + len(timm.list_models()) > 1000
    assert M.list_models() == ["demo-cnn", "demo-cnn-small", "resnet18", "vgg16", "mobilenet_v2"]
    assert M.list_models(zoos=True)[:5] == M.list_models() and len(M.list_models(zoos=True)) == len(keys) + 5
    assert zoo.zoo_label("tv:resnet50") == "resnet50 · torchvision · 25.6 M params · 224 px"
    assert zoo.zoo_label("timm:vit_tiny_patch16_224") == "vit_tiny_patch16_224 · timm · 224 px"
    assert M.is_architecture("timm:vit_tiny_patch16_224.augreg_in21k") and M.is_architecture("demo-cnn")
    assert not M.is_architecture("tv:resnet19") and not M.is_architecture("timm:vit_tiny_patch16_224.nope")


def test_search() -> None:
    keys = [k for k, _ in M.search_models("ResNet-18", 3)]
    assert keys == ["resnet18", "tv:resnet18", "timm:resnet18"]  # nnlab's key, then torchvision, then timm
    assert [k for k, _ in M.search_models("resnet 50", 2)] == ["tv:resnet50", "timm:resnet50"]
    vit = [k for k, _ in M.search_models("vit tiny patch16", 10)]
    assert "timm:vit_tiny_patch16_224" in vit and all(k.startswith("timm:") for k in vit)
    only_tv = M.search_models("tv:vit", 50)
    assert only_tv and all(k.startswith("tv:vit") or k == "tv:maxvit_t" for k, _ in only_tv)
    assert [k for k, _ in M.search_models("", 6)] == M.list_models() + ["tv:alexnet"]
    assert [k for k, _ in M.search_models("demo", 5)] == ["demo-cnn", "demo-cnn-small"]
    assert M.search_models("no-such-architecture-xyz") == []
    assert len(M.search_models("efficientnet", 7)) == 7


# --- preprocessing from metadata -----------------------------------------------------------------------


def _images() -> list[Image.Image]:
    """20 images of every awkward kind: non-square, tiny (padded by the crop), greyscale, RGBA, LA, palette,
    16- and 32-bit integer, CMYK, bilevel."""
    rng = np.random.default_rng(0)
    sizes = [(300, 200), (200, 300), (97, 513), (513, 97), (50, 40), (224, 224), (256, 256), (225, 223),
             (640, 480), (31, 700), (333, 250), (250, 333), (120, 80), (1024, 77), (260, 260), (230, 229),
             (500, 375), (64, 64), (401, 299), (299, 401)]
    modes = ["RGB", "L", "RGBA", "LA", "P", "I;16", "I", "CMYK", "1", "RGB"]
    out = []
    for i, (w, h) in enumerate(sizes):
        mode = modes[i % len(modes)]
        rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        rgb[: h // 2] //= 3  # some structure, so resampling filters matter
        if mode == "RGB":
            im = Image.fromarray(rgb)
        elif mode == "L":
            im = Image.fromarray(rgb[..., 0])
        elif mode == "RGBA":
            im = Image.fromarray(np.dstack([rgb, rng.integers(0, 256, (h, w), dtype=np.uint8)]))
        elif mode == "LA":
            im = Image.fromarray(np.dstack([rgb[..., 0], rgb[..., 1]])).convert("LA")
        elif mode == "P":
            im = Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
        elif mode == "I;16":
            im = Image.fromarray(rng.integers(0, 65536, (h, w), dtype=np.uint16))
        elif mode == "I":
            im = Image.fromarray(rng.integers(-300, 70000, (h, w)).astype(np.int32))
        elif mode == "CMYK":
            im = Image.frombytes("CMYK", (w, h), rng.integers(0, 256, (h, w, 4), dtype=np.uint8).tobytes())
        else:
            im = Image.fromarray(rgb[..., 0] > 127)
        assert im.mode == mode
        out.append(im)
    return out


TIMM_ARCHS = ["vit_tiny_patch16_224", "efficientnet_b0", "convnext_atto", "dm_nfnet_f0", "cspresnet50",
              "efficientnet_b5"]  # bicubic 0.9 / 0.875 / 0.95, squash 192, bilinear 256, squash crop 1.0 at 448


def test_preprocessing_is_pixel_exact_against_torchvision_and_timm() -> None:
    from timm.data import create_transform, resolve_data_config
    from timm.models import get_pretrained_cfg
    from torchvision.models import ResNet18_Weights

    cases = [("tv:resnet18", ResNet18_Weights.IMAGENET1K_V1.transforms())]
    for name in TIMM_ARCHS:
        cfg = resolve_data_config(pretrained_cfg=get_pretrained_cfg(name).to_dict())
        cases.append((f"timm:{name}", create_transform(**cfg)))
    import timm

    cases.append(("timm:vit_tiny_patch16_224",
                  create_transform(**resolve_data_config({}, model=timm.create_model("vit_tiny_patch16_224")))))
    assert M.default_preprocessing("resnet18") == M.default_preprocessing("tv:resnet18")
    images = _images()
    for key, ref in cases:
        pp = M.default_preprocessing(key)
        assert pp.resize_mode == ("squash" if key in ("timm:dm_nfnet_f0", "timm:efficientnet_b5") else "shorter")
        for i, im in enumerate(images):
            expected = ref(im.convert("RGB"))
            ours = pp(im)
            assert ours.shape == expected.shape == (3, *pp.size), (key, i)
            assert float((ours - expected).abs().max()) <= 1e-5, (key, i, im.mode, im.size)
            batch = pp.normalize(torch.from_numpy(pp.to_uint8(im))[None])
            assert torch.equal(batch[0], ours)


def test_preprocessing_metadata_and_native() -> None:
    pp = M.default_preprocessing("timm:vit_tiny_patch16_224")
    assert (pp.size, pp.resize, pp.interpolation, pp.mean, pp.std) == ((224, 224), 248, "bicubic", (0.5,) * 3,
                                                                          (0.5,) * 3)
    assert pp.source == "timm vit_tiny_patch16_224.augreg_in21k_ft_in1k"
    tv = M.default_preprocessing("tv:resnet50")
    assert (tv.size, tv.resize, tv.source) == ((224, 224), 232, "torchvision ResNet50_Weights.IMAGENET1K_V2")
    grey = M.default_preprocessing("tv:resnet18", channels=1)
    assert grey.channels == 1 and grey.mean == pytest.approx((np.mean([0.485, 0.456, 0.406]),))
    with pytest.raises(PreprocessingError, match="dataset's own size and statistics"):
        M.default_preprocessing("demo-cnn")
    assert M.needs_native_preprocessing("demo-cnn") and not M.needs_native_preprocessing("resnet18")
    native = M.default_preprocessing("demo-cnn", input_shape=(1, 28, 28), mean=(0.286,), std=(0.353,))
    assert (native.size, native.channels, native.resize_mode, native.mean) == ((28, 28), 1, "none", (0.286,))


# --- building and pretrained weights ----------------------------------------------------------------------


@pytest.mark.parametrize("key, shape, classes", [("tv:resnet18", (1, 64, 48), 7), ("tv:squeezenet1_1", (3, 64, 64), 5),
                                                 ("timm:resnet18", (1, 64, 64), 3),
                                                 ("timm:vit_tiny_patch16_224", (3, 64, 96), 4)])
def test_zoo_models_fit_the_data(key, shape, classes) -> None:
    m = M.create_model(key, shape[0], classes, shape[1:], seed=0).eval()
    with torch.no_grad():
        assert m(torch.randn(2, *shape)).shape == (2, classes)
    assert not any(getattr(mod, "inplace", False) is True for mod in m.modules())


def test_clear_errors_for_inputs_an_architecture_cannot_take() -> None:
    with pytest.raises(M.CheckpointError, match=r"at least 75×75"):
        M.create_model("tv:inception_v3", 3, 10, (64, 64))
    with pytest.raises(M.CheckpointError, match="unknown architecture"):
        M.create_model("resnet19", 3, 10, (64, 64))
    with pytest.raises(M.CheckpointError, match="torchvision has no classification architecture"):
        M.create_model("tv:resnet19", 3, 10, (64, 64))


def test_pretrained_offline_says_so_at_once(monkeypatch, tmp_path) -> None:
    import huggingface_hub
    import torch.hub

    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path))  # empty caches
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda *a, **k: None)
    monkeypatch.setattr(zoo, "_reachable", lambda host, timeout=zoo.HUB_TIMEOUT_S: False)
    for key in ("tv:resnet18", "resnet18", "timm:resnet18"):
        with pytest.raises(M.CheckpointError, match=r"could not be fetched: .*not in the local cache.*offline"):
            M.create_model(key, 3, 10, (64, 64), pretrained=True)
    with pytest.raises(M.CheckpointError, match="no pretrained weights"):
        M.create_model("demo-cnn", 1, 10, (28, 28), pretrained=True)


def test_reachability_probe_fails_fast_offline() -> None:
    assert zoo._reachable("nnlab-hub.invalid", timeout=1.0) is False


def test_pretrained_from_the_local_cache(monkeypatch, tmp_path) -> None:
    """A cached torchvision file is read weights-only; the head is replaced for 10 classes and seeded."""
    import torch.hub
    import torchvision

    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path))
    monkeypatch.setattr(zoo, "_reachable", lambda *a, **k: False)
    ref = torchvision.models.resnet18()
    src = zoo.pretrained_source("tv:resnet18")
    assert src.cached is None and src.num_classes == 1000
    target = zoo._hub_file(src.url)
    target.parent.mkdir(parents=True)
    torch.save(ref.state_dict(), target)
    a = M.create_model("tv:resnet18", 3, 10, (64, 64), pretrained=True, seed=3)
    b = M.create_model("tv:resnet18", 3, 10, (64, 64), pretrained=True, seed=3)
    assert M.model_hash(a) == M.model_hash(b)
    assert torch.equal(a.layer4[1].conv2.weight, ref.layer4[1].conv2.weight)
    assert a.fc.out_features == 10
    legacy = M.create_model("resnet18", 3, 1000, (64, 64), pretrained=True)
    assert M.model_hash(legacy) == M.model_hash(ref)
    torch.save({"w": torch.nn.Linear(1, 1)}, target)  # a tampered cache is refused, not unpickled
    with pytest.raises(M.CheckpointError, match="pickled Python objects"):
        M.create_model("tv:resnet18", 3, 10, (64, 64), pretrained=True)


def test_timm_pretrained_from_the_hugging_face_cache(monkeypatch, tmp_path) -> None:
    """A cached timm file is read weights-only and handed to timm, which resets the head and adapts the stem."""
    import huggingface_hub
    import timm
    from safetensors.torch import save_file

    ref = timm.create_model("resnet18")
    path = tmp_path / "model.safetensors"
    save_file(ref.state_dict(), str(path))
    asked = []

    def cache(repo, filename, *a, **k):
        asked.append((repo, filename))
        return str(path) if filename == "model.safetensors" else None

    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", cache)
    monkeypatch.setattr(zoo, "_reachable", lambda *a, **k: False)
    assert zoo.has_pretrained("timm:resnet18") and zoo.has_pretrained("tv:resnet18")
    m = M.create_model("timm:resnet18", 3, 10, (64, 64), pretrained=True, seed=0)
    assert asked[0] == ("timm/resnet18.a1_in1k", "model.safetensors")
    assert torch.equal(m.layer2[0].conv1.weight, ref.layer2[0].conv1.weight) and m.fc.out_features == 10
    assert M.model_hash(m) == M.model_hash(M.create_model("timm:resnet18", 3, 10, (64, 64), pretrained=True, seed=0))
    grey = M.create_model("timm:resnet18", 1, 10, (64, 64), pretrained=True)
    assert grey.conv1.weight.shape == (64, 1, 7, 7)
    torch.testing.assert_close(grey.conv1.weight, ref.conv1.weight.sum(1, keepdim=True))  # timm sums RGB filters


# --- reproducible random weights ------------------------------------------------------------------------


def _tiny_vit(seed: int) -> nn.Module:
    """A two-block timm ViT (class token, position embeddings) built directly, to keep the test fast."""
    import timm

    vit = timm.models.VisionTransformer(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=2, num_classes=10)
    return seeded_init(vit, seed)


@pytest.mark.parametrize("key, shape", [("demo-cnn", (1, 28, 28)), ("tv:mobilenet_v2", (3, 64, 64)),
                                        ("timm:convnext_atto", (3, 64, 64)), ("tiny-vit", (3, 32, 32))])
def test_seeded_weights_are_reproducible_without_global_rng(key, shape, monkeypatch) -> None:
    def forbidden(*a, **k):
        raise AssertionError("library code called torch.manual_seed")

    def build(seed: int) -> nn.Module:
        return _tiny_vit(seed) if key == "tiny-vit" else M.create_model(key, shape[0], 10, shape[1:], seed=seed)

    state = torch.get_rng_state()
    monkeypatch.setattr(torch, "manual_seed", forbidden)
    a = build(7)
    torch.randn(100)  # the global generator moves on: must not matter
    b, c = build(7), build(8)
    assert M.model_hash(a) == M.model_hash(b) != M.model_hash(c)
    before = torch.get_rng_state()
    seeded_init(a, 7)
    assert torch.equal(torch.get_rng_state(), before)  # seeded_init neither reads nor moves the global RNG
    assert M.model_hash(a) == M.model_hash(b)
    torch.set_rng_state(state)
    with torch.no_grad():
        out = a.eval()(torch.randn(2, *shape))
    assert torch.isfinite(out).all() and out.std() > 0


def test_seeded_init_values() -> None:
    m = M.create_model("timm:convnext_atto", 3, 10, (64, 64), seed=1)
    gammas = [p for n, p in m.named_parameters() if n.endswith("gamma")]
    assert gammas and all(torch.all(g == 1e-6) for g in gammas)  # layer scale is constant by design: kept
    conv = m.stem[0]
    fan_out = conv.out_channels * conv.kernel_size[0] * conv.kernel_size[1]
    assert float(conv.weight.detach().std()) == pytest.approx((2 / fan_out) ** 0.5, rel=0.1)
    assert torch.all(m.stem[0].bias == 0)
    norm = m.stem[1]
    assert torch.all(norm.weight == 1) and torch.all(norm.bias == 0)
    lin = nn.Linear(400, 300)
    seeded_init(lin, 0)
    assert float(lin.weight.detach().std()) == pytest.approx(0.02 * 0.88, rel=0.05)  # truncated at ±2σ
    assert float(lin.weight.detach().abs().max()) <= 0.04
    # a parameter's values depend only on (seed, its name), not on which other layers exist
    one, two = nn.Sequential(nn.Linear(4, 4)), nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
    seeded_init(one, 5)
    seeded_init(two, 5)
    assert torch.equal(one[0].weight, two[0].weight)
    fresh = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    head_before = fresh[0].weight.clone()
    seeded_init(fresh, 5, modules=["1"])
    assert torch.equal(fresh[0].weight, head_before) and torch.equal(fresh[1].bias, torch.zeros(2))
