"""Streamlit glue shared by every page: the sidebar pickers, cached dataset/model loading, the shared
evaluation pass. The only module of :mod:`nnlab` that imports streamlit.

Pages call :func:`current` for the selected dataset and model, and :func:`evaluation` for the one cached
pass over a split. Cached models are shared by every browser session: never mutate them (deep-copy first).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

import streamlit as st
import torch
from torch import nn

from nnlab import config
from nnlab.base import demo_id, ensure_demo, profile_model
from nnlab.data import DATASETS, DatasetError, ImageDataset, load_dataset
from nnlab.evaluate import EvalResult, evaluate
from nnlab.models import ARCHITECTURES, CheckpointError, create_model, load_into, output_shape_ok, read_state_dict
from nnlab.records import Record
from nnlab.train import Progress
from nnlab.workspace import Workspace

UPLOAD = "Upload a checkpoint (.pt/.pth/.safetensors)"
PRETRAINED = "torchvision pretrained weights"
RANDOM = "Random weights (untrained)"
NNLAB_TRAINED = "Trained by nnlab"


@dataclass(eq=False)
class Current:
    """The selection every page works on.

    Attributes:
        data: The dataset.
        model: The model in eval mode, shared by all sessions: never mutate it.
        model_id: Stable id (workspace id or content hash) used as cache key.
        arch: Architecture key.
        record: The model's measured record.
        history: Per-epoch training history (empty when unknown).
    """

    data: ImageDataset
    model: nn.Module
    model_id: str
    arch: str
    record: Record
    history: list[dict]


def workspace() -> Workspace:
    return Workspace()


def default_dataset() -> str:
    return os.environ.get("NNLAB_DEFAULT_DATASET", "fashion-mnist")


@st.cache_resource(show_spinner="Loading the dataset…", max_entries=4)
def load_data(key: str, path: str = "") -> ImageDataset:
    """Cached dataset by registry key (and folder path for ImageFolder)."""
    return load_dataset(key, path=path) if DATASETS[key].needs_path else load_dataset(key)


@st.cache_resource(show_spinner="Loading the demo model…", max_entries=8)
def _load_demo(dataset_key: str, dataset_path: str, model_id: str, arch: str) -> tuple[nn.Module, Record, list[dict]]:
    data = load_data(dataset_key, dataset_path)
    model, record, history = ensure_demo(data, workspace(), arch=arch)
    return model, record, history


@st.cache_resource(show_spinner="Measuring the model…", max_entries=8)
def _load_user_model(dataset_key: str, dataset_path: str, arch: str, weights: str, content_hash: str,
                     _data_bytes: bytes | None, filename: str) -> tuple[nn.Module, Record]:
    data = load_data(dataset_key, dataset_path)
    c, h, w = data.input_shape
    model = create_model(arch, c, data.num_classes, (h, w), pretrained=(weights == PRETRAINED))
    if _data_bytes is not None:
        load_into(model, read_state_dict(_data_bytes, filename))
    model.eval()
    output_shape_ok(model, data.input_shape, data.num_classes)
    model_id = f"{arch}-{data.id}-{content_hash}"
    record = profile_model(model, data, model_id, f"{ARCHITECTURES[arch].label} ({weights.split(' (')[0]})",
                           arch, None, latency_repeats=5)
    return model, record


@st.cache_data(show_spinner="Evaluating the model…", max_entries=32)
def _evaluation(model_id: str, dataset_id: str, split: str, _model: nn.Module, _data: ImageDataset) -> EvalResult:
    return evaluate(_model, _data, split)


def sidebar() -> None:
    """Render the dataset and model pickers; their values live in ``st.session_state``."""
    st.sidebar.header("Data and model")
    keys = list(DATASETS)
    st.session_state.setdefault("dataset", default_dataset())
    st.sidebar.selectbox("Dataset", keys, key="dataset", format_func=lambda k: DATASETS[k].label)
    if DATASETS[st.session_state["dataset"]].needs_path:
        st.sidebar.text_input("Folder of class subfolders", key="dataset_path",
                              help="Only folders under the allowed roots can be read (NNLAB_ALLOWED_ROOTS).")
    archs = list(ARCHITECTURES)
    st.session_state.setdefault("arch", "demo-cnn")
    st.sidebar.selectbox("Architecture", archs, key="arch", format_func=lambda k: ARCHITECTURES[k].label)
    arch = st.session_state["arch"]
    options = ([NNLAB_TRAINED] if arch.startswith("demo") else []) + [UPLOAD] + (
        [PRETRAINED] if ARCHITECTURES[arch].pretrained_available else []) + [RANDOM]
    if st.session_state.get("weights") not in options:
        st.session_state["weights"] = options[0]
    st.sidebar.radio("Weights", options, key="weights")
    if st.session_state["weights"] == UPLOAD:
        st.sidebar.file_uploader("Checkpoint (state dict only; never run as code)",
                                 type=["pt", "pth", "safetensors", "bin"], key="checkpoint")


@st.cache_data(ttl=30, show_spinner=False)
def workspace_writable(root: str) -> bool:
    """Whether the workspace accepts writes now (checked at most every 30 s)."""
    return Workspace(root).writable()


def _train_demo_with_progress(data: ImageDataset, arch: str) -> None:
    """First start: train the demo model with a visible progress bar (epoch, loss, accuracy)."""
    ws = workspace()
    if ws.has_model(demo_id(data, arch)) or not workspace_writable(str(ws.root)):
        return  # cached already, or read-only: the cached loader trains in memory under a spinner
    st.info(f"First start: nnlab is training its demo CNN on {data.name} "
            f"({len(data.y_train):,} images). It is cached on disk, so this happens once.")
    bar = st.progress(0.0, text="Starting…")

    def report(p: Progress) -> None:
        acc = "" if p.accuracy != p.accuracy else f", test accuracy {p.accuracy:.1%}"
        bar.progress(p.fraction, text=f"{p.message}{acc}")

    ensure_demo(data, ws, progress=report, arch=arch)
    bar.progress(1.0, text="Demo model trained and saved.")


def ensure_frame() -> None:
    """Make sure the page runs inside app.py's frame (navigation and sidebar pickers).

    On a fresh server, a deep link (``/inside_filters``) reaches Streamlit before app.py ever called
    ``st.navigation``; Streamlit then falls back to its legacy ``pages/`` folder mode and runs the page
    alone. Leave that mode and rerun: the rerun goes through app.py, which resolves the same page.
    """
    from streamlit import config as st_config
    from streamlit.runtime.pages_manager import PagesManager

    # AppTest resets this flag before every run and would lose a pending button click on the rerun; its
    # tests preset st.session_state instead of using the sidebar.
    if PagesManager.uses_pages_directory and not st_config.get_option("global.appTest"):
        PagesManager.uses_pages_directory = False
        st.rerun()


def current() -> Current:
    """The selected dataset and model; on a problem, show a clear message and stop the page."""
    ensure_frame()
    key = st.session_state.get("dataset", default_dataset())
    path = st.session_state.get("dataset_path", "") or ""
    if DATASETS[key].needs_path and not path:
        st.info("Type the path of a folder of class subfolders in the sidebar.")
        st.stop()
    try:
        data = load_data(key, path)
    except (DatasetError, OSError) as exc:
        st.error(f"The dataset cannot be used: {exc}")
        st.stop()
    if data.fallback_reason:
        st.warning(data.fallback_reason, icon="⚠️")
    ws_root = str(workspace().root)
    if not workspace_writable(ws_root):
        st.warning(f"The workspace {ws_root} is not writable (read-only or disk full). nnlab keeps running "
                   "read-only: nothing new (trained models, variants) will be saved.", icon="🔒")
    arch = st.session_state.get("arch", "demo-cnn")
    weights = st.session_state.get("weights", NNLAB_TRAINED if arch.startswith("demo") else RANDOM)
    try:
        if weights == NNLAB_TRAINED:
            _train_demo_with_progress(data, arch)
            model, record, history = _load_demo(key, path, demo_id(data, arch), arch)
            return Current(data, model, demo_id(data, arch), arch, record, history)
        blob, filename = None, ""
        if weights == UPLOAD:
            up = st.session_state.get("checkpoint")
            if up is None:
                st.info("Upload a checkpoint in the sidebar (a state dict saved with `torch.save(model.state_dict())` "
                        "or safetensors).")
                st.stop()
            blob, filename = up.getvalue(), up.name
        digest = hashlib.sha1(blob).hexdigest()[:12] if blob is not None else weights.split()[0].lower()
        model, record = _load_user_model(key, path, arch, weights, digest, blob, filename)
        return Current(data, model, record.id, arch, record, [])
    except (CheckpointError, DatasetError, ValueError, RuntimeError) as exc:
        st.error(f"The model cannot be used: {exc}")
        st.stop()


def evaluation(split: str = "test", cur: Current | None = None) -> EvalResult:
    """The one cached evaluation pass of the current model over ``split``."""
    cur = cur or current()
    return _evaluation(cur.model_id, cur.data.id, split, cur.model, cur.data)


def device_note() -> str:
    return f"device {config.device()}, {torch.get_num_threads()} CPU threads"
