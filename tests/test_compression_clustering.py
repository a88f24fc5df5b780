"""Weight clustering: exactly k values per layer, assignments equal scikit-learn's KMeans, packed size."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.cluster import KMeans

import compression  # noqa: F401
from compression import packing
from compression.clustering import ClusterConfig, initial_centroids, kmeans_1d
from compression.pruning import prunable_layers
from compression.registry import CompressContext, apply, config_from_dict
from nnlab.models.registry import create_model


def _model(seed: int = 0):
    torch.manual_seed(seed)
    return create_model("demo-cnn", 1, 10, (8, 8)).eval()


@pytest.mark.parametrize("init", ["linear", "density"])
def test_assignment_equals_sklearn_kmeans_on_a_fixed_init(init, digits, tmp_path):
    model = _model()
    res = apply(model, ClusterConfig(k=8, init=init), CompressContext(data=digits, workdir=tmp_path))
    for (name, m0), (_, m) in zip(prunable_layers(model), prunable_layers(res.model)):
        w = m0.weight.detach().double().reshape(-1, 1).numpy()
        init_c = initial_centroids(w, 8, init).reshape(-1, 1)
        km = KMeans(n_clusters=8, init=init_c, n_init=1, max_iter=300, random_state=0).fit(w)
        expected = km.cluster_centers_[km.labels_, 0].astype(np.float32)
        got = m.weight.detach().reshape(-1).numpy()
        assert np.array_equal(got, expected), name


def test_initialisations_follow_the_seed():
    v = np.array([0.0, 1.0, 2.0, 3.0, 10.0])
    assert np.allclose(initial_centroids(v, 3, "linear"), [0.0, 5.0, 10.0])
    assert np.allclose(initial_centroids(v, 2, "density"), np.quantile(v, [0.25, 0.75]))
    # k-means on two obvious groups finds them whatever the init
    x = np.r_[np.full(50, -1.0), np.full(50, 2.0)] + np.random.default_rng(0).normal(0, 0.01, 100)
    for init in ("linear", "kmeans++", "density"):
        c, lab = kmeans_1d(x, 2, init)
        assert sorted(np.round(c, 1)) == [-1.0, 2.0] and len(set(lab[:50])) == 1 and len(set(lab[50:])) == 1


@pytest.mark.parametrize("k", [2, 16, 256])
def test_exactly_k_distinct_values_per_layer(k, digits, tmp_path):
    res = apply(_model(1), ClusterConfig(k=k, init="kmeans++"), CompressContext(data=digits, workdir=tmp_path))
    for name, m in prunable_layers(res.model):
        n_distinct = torch.unique(m.weight).numel()
        assert n_distinct == min(k, m.weight.numel()), (name, n_distinct)
    assert all(r["clusters"] == k for r in res.layers)


def test_pruned_zeros_stay_zero_and_out_of_the_clusters(digits, tmp_path):
    ctx = CompressContext(data=digits, workdir=tmp_path)
    pruned = apply(_model(2), config_from_dict({"method": "prune-unstructured", "sparsity": 0.6}), ctx).model
    res = apply(pruned, ClusterConfig(k=4), ctx)
    for (_, p), (_, m) in zip(prunable_layers(pruned), prunable_layers(res.model)):
        assert torch.equal(p.weight == 0, m.weight == 0)
        assert torch.unique(m.weight[m.weight != 0]).numel() == 4
    # stored as mask + 4 centroids + 2-bit indices
    data, rows = packing.pack_state({"w": res.model.features[4].weight.detach()})
    n = res.model.features[4].weight.numel()
    nnz = int((res.model.features[4].weight != 0).sum())
    assert rows[0]["encoding"] == "clustered"
    positions = packing.encode_positions((res.model.features[4].weight != 0).reshape(-1).numpy())[1]
    assert len(positions) <= (n + 7) // 8
    assert rows[0]["bytes"] == 16 + (nnz * 2 + 7) // 8 + len(positions)


def test_centroid_finetuning_keeps_k_values_and_moves_centroids(demo, digits, tmp_path):
    model = demo[0]
    ctx = CompressContext(data=digits, workdir=tmp_path)
    plain = apply(model, ClusterConfig(k=4), ctx).model
    tuned = apply(model, ClusterConfig(k=4, finetune_epochs=1, lr=1e-3), ctx).model
    for (name, a), (_, b) in zip(prunable_layers(plain), prunable_layers(tuned)):
        assert torch.unique(b.weight).numel() == 4, name
        assert not torch.equal(torch.unique(a.weight), torch.unique(b.weight)), name
        # same assignment: weights that shared a centroid still share one
        ia = torch.unique(a.weight, return_inverse=True)[1]
        ib = torch.unique(b.weight, return_inverse=True)[1]
        assert torch.equal(ia, ib), name
    assert not any(hasattr(m, "parametrizations") for m in tuned.modules()), "parametrizations must be removed"


def test_clustering_accuracy_and_size_on_the_demo(demo, digits, tmp_path):
    from nnlab.evaluate import evaluate

    model, record, _ = demo
    res = apply(model, ClusterConfig(k=16), CompressContext(data=digits, workdir=tmp_path))
    assert evaluate(res.model, digits).accuracy >= record.accuracy - 0.01
    data, _ = packing.pack_state(res.model.state_dict())
    assert len(data) < record.size_bytes / 6  # 4-bit indices instead of 32-bit floats
