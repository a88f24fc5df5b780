"""Shared widgets (streamlit glue): every Plotly chart with its PNG/SVG downloads (:func:`chart`); for the
Look-inside pages, pick an input (a dataset sample or an upload) and show it as the model sees it."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import plotly.graph_objects as go
import streamlit as st
import torch

from nnlab import figures
from nnlab.data.images import ImageError
from nnlab.data.inputs import input_from_dataset, input_from_upload
from nnlab.data.viz import as_image, display_scale
from nnlab.i18n import N_, _, pgettext
from nnlab.ui.session import Current

SPLITS = ("test", "train")  # split ids; shown through split_label()
SOURCES = (N_("Dataset sample"), N_("Uploaded image"))  # radio values stay English; shown through _()


def split_label(split: str) -> str:
    """A split's name as shown ("test" / "train" in the current language); the value itself stays the id."""
    return {"test": pgettext("split", "test"), "train": pgettext("split", "train")}.get(split, split)


def chart(fig: go.Figure, key: str, where: Any = None, file_name: str | None = None, **kwargs: Any) -> Any:
    """``st.plotly_chart(fig, key=key, **kwargs)`` followed by its PNG and SVG download buttons.

    Args:
        fig: The figure.
        key: The chart's widget key (the buttons get ``<key>_png`` and ``<key>_svg``).
        where: A container or column to draw into (default: the current one).
        file_name: Stem of the downloaded files (default: the key).
        **kwargs: Passed to ``st.plotly_chart`` (``on_select``, ``config`` …).

    The images are rendered only when a button is clicked (Streamlit runs the callable in its own thread,
    :mod:`nnlab.figures` serialises the renders), so a page costs nothing more to draw. Returns what
    ``st.plotly_chart`` returns (the selection event when ``on_select`` is given).
    """
    box = st if where is None else where
    event = box.plotly_chart(fig, key=key, **kwargs)
    figure_downloads(fig, key, box, file_name)
    return event


def figure_downloads(fig: go.Figure, key: str, where: Any = None, file_name: str | None = None) -> None:
    """Two small buttons, PNG and SVG, exporting ``fig`` on click (or a caption saying why they cannot)."""
    reason = figures.unavailable_reason()
    stem = figures.file_stem(file_name or key)
    box = st if where is None else where
    with box.container(horizontal=True, gap="small", key=f"{key}_export"):
        if reason:
            st.caption(reason)
            return
        for fmt in figures.FORMATS:
            st.download_button(fmt.upper(), data=lambda fmt=fmt: figures.to_image(fig, fmt),
                               file_name=f"{stem}.{fmt}", mime=figures.FORMATS[fmt], key=f"{key}_{fmt}",
                               icon=":material/download:", type="tertiary", on_click="ignore",
                               help=_("Download this figure as {fmt} (rendered when you click)").format(
                                   fmt=fmt.upper()))


@dataclass
class Choice:
    """The chosen input: uint8 and normalised ``1×C×H×W``, its label (None for uploads), a cache token."""

    x8: torch.Tensor
    x: torch.Tensor
    label: int | None
    token: str
    caption: str


def _apply_gallery_choice(prefix: str, n_test: int, n_train: int) -> None:
    """Preselect the sample sent by the worst-errors gallery (``inspect_index``/``inspect_split``) once."""
    idx, split = st.session_state.get("inspect_index"), st.session_state.get("inspect_split", "test")
    if idx is None or split not in ("test", "train"):
        return
    sent = (split, int(idx))
    if st.session_state.get(f"{prefix}_gallery_seen") == sent:
        return
    st.session_state[f"{prefix}_gallery_seen"] = sent
    if 0 <= int(idx) < (n_test if split == "test" else n_train):
        st.session_state[f"{prefix}_source"] = SOURCES[0]
        st.session_state[f"{prefix}_split"] = split
        st.session_state[f"{prefix}_index"] = int(idx)


def pick_input(cur: Current, prefix: str) -> Choice | None:
    """Input widgets (keys start with ``prefix``); returns None (with a message shown) when there is no input."""
    data = cur.data
    _apply_gallery_choice(prefix, len(data.y_test), len(data.y_train))
    source = st.radio(_("Input"), SOURCES, key=f"{prefix}_source", horizontal=True, format_func=_)
    if source == SOURCES[0]:
        c1, c2 = st.columns(2)
        split = c1.selectbox(_("Split"), SPLITS, key=f"{prefix}_split", format_func=split_label)
        n = len(data.labels(split))
        if st.session_state.get(f"{prefix}_index", 0) >= n:
            st.session_state[f"{prefix}_index"] = 0
        index = int(c2.number_input(_("Index (0–{last})").format(last=n - 1), 0, n - 1, key=f"{prefix}_index",
                                    step=1))
        x8, x, label = input_from_dataset(data, split, index)
        return Choice(x8, x, label, f"{split}:{index}", _("{split} #{index}, label {label}").format(
            split=split_label(split), index=index, label=data.classes[label]))
    up = st.file_uploader(_("Image (PNG, JPEG, …): converted to the dataset's channels, size and normalisation"),
                          type=["png", "jpg", "jpeg", "bmp", "gif", "tif", "tiff", "webp"], key=f"{prefix}_upload")
    invert = st.checkbox(_("Invert intensities (dark object on a light background)"), key=f"{prefix}_invert")
    if up is None:
        st.info(_("Upload an image, or choose a dataset sample."))
        return None
    blob = up.getvalue()
    try:
        x8, x = input_from_upload(blob, data, invert=invert)
    except ImageError as exc:
        st.error(_("The image cannot be used: {reason}").format(reason=exc))
        return None
    digest = hashlib.sha1(blob).hexdigest()[:12]
    return Choice(x8, x, None, f"upload:{digest}:{int(invert)}",
                  _("upload {name}").format(name=up.name))


def show_input(choice: Choice, cur: Current, target: int = 112) -> None:
    """The input as the model sees it (after resizing and channel conversion)."""
    c, h, w = cur.data.input_shape
    st.image(as_image(choice.x8[0], display_scale(h, target)),
             caption=_("{caption} · as the model sees it ({shape})").format(caption=choice.caption,
                                                                              shape=f"{c}×{h}×{w}"),
             output_format="PNG")


def history_columns() -> dict[str, str]:
    """Shown headers of a per-epoch history table (its columns keep their ids: epoch, train_loss, …)."""
    return {"epoch": _("epoch"), "train_loss": _("train loss"), "train_acc": _("train accuracy"),
            "test_loss": _("test loss"), "test_acc": _("test accuracy"), "seconds": _("seconds")}
