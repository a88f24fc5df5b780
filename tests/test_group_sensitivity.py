"""Channel-pruning sensitivity per Torch-Pruning dependency group (issue 21): residual-coupled layers are pruned
together and reported per group, never as "unpruned", and the lab's per-layer levels prune them."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from compression import sensitivity
from compression.pruning import PruneChannelsConfig, channel_groups, channel_prune
from compression.registry import config_from_dict
from nnlab.data.sets import ImageDataset
from nnlab.models.registry import create_model

SHAPE = (3, 64, 64)


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    return create_model("resnet18", 3, 10, SHAPE[1:]).eval()


@pytest.fixture(scope="module")
def rgb64() -> ImageDataset:
    g = np.random.default_rng(0)

    def make(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        return (torch.from_numpy(g.integers(0, 256, (n, *SHAPE), dtype=np.uint8)),
                torch.from_numpy((np.arange(n) % 10).astype(np.int64)))

    (xtr, ytr), (xte, yte) = make(40), make(20)
    return ImageDataset(id="rgb64", name="rgb64", source="synthetic", classes=[str(i) for i in range(10)],
                        x_train=xtr, y_train=ytr, x_test=xte, y_test=yte)


def _stem_group(groups: list[dict]) -> dict:
    return next(g for g in groups if "layer1.0.conv2" in g["members"] and "layer1.1.conv2" in g["members"])


def test_resnet_groups_couple_the_residual_layers(resnet):
    groups = channel_groups(resnet, SHAPE, 10)
    stem = _stem_group(groups)
    assert {"conv1", "layer1.0.conv2", "layer1.1.conv2"} <= set(stem["members"]) and stem["channels"] == 64
    # every conv's output channels belong to exactly one group's leading layer or its coupled members
    convs = [n for n, m in resnet.named_modules() if isinstance(m, nn.Conv2d)]
    covered = {m for g in groups for m in g["members"]}
    assert set(convs) <= covered
    assert len({g["layer"] for g in groups}) == len(groups)  # one row per group


def test_group_sensitivity_prunes_coupled_layers_and_reports_per_group(resnet, rgb64):
    groups = channel_groups(resnet, SHAPE, 10)
    stem = _stem_group(groups)
    inner = next(g for g in groups if g["layer"] == "layer1.0.conv1")  # not coupled by a residual
    table = sensitivity.layer_sensitivity(resnet, rgb64, "channels", levels=(0.5,),
                                          layers=[stem["layer"], inner["layer"]], split="test", max_samples=20,
                                          use_ray=False)
    rows = {r["layer"]: r for r in table.rows}
    assert set(rows) == {stem["layer"], inner["layer"]} and table.kind == "channels"
    s = rows[stem["layer"]]
    assert s["channels_before"] == 64 and s["channels_after"] == 32
    # the pitfall (per-layer ignored_layers prunes nothing in residual-coupled layers): every coupled conv shrank
    coupled = {"conv1", "layer1.0.conv2", "layer1.1.conv2"}
    assert coupled <= set(s["changed"]) and s["members"] == stem["members"]
    assert rows["layer1.0.conv1"]["channels_after"] == 32 and "layer1.0.conv1" in rows["layer1.0.conv1"]["changed"]
    assert all(0.0 <= r["accuracy"] <= 1.0 and np.isfinite(r["drop"]) for r in table.rows)


def test_suggested_group_levels_fill_the_channel_pruning_method(resnet):
    rows = [{"layer": la, "level": lv, "accuracy": 0.5, "drop": d, "params": 1}
            for la, d in (("conv1", 0.0), ("layer1.0.conv1", 1.0)) for lv in (0.25, 0.5)]
    table = sensitivity.SensitivityTable("channels", 0.5, rows)
    sug = sensitivity.suggest_levels(table, 0.01)
    assert sug == {"conv1": 0.5, "layer1.0.conv1": None}
    cfg = config_from_dict(sensitivity.suggested_config(table, sug))
    assert isinstance(cfg, PruneChannelsConfig) and cfg.per_layer == "conv1=0.5,layer1.0.conv1=0"
    import copy

    work = copy.deepcopy(resnet)
    channel_prune(work, SHAPE, 10, cfg.target, cfg.amount, per_group={"conv1": 0.5, "layer1.0.conv1": 0.0})
    mods = dict(work.named_modules())
    assert mods["conv1"].out_channels == mods["layer1.1.conv2"].out_channels == 32
    assert mods["layer1.0.conv1"].out_channels == 64 and mods["layer2.0.conv1"].out_channels == 128
    assert work(torch.zeros(1, *SHAPE)).shape == (1, 10)
