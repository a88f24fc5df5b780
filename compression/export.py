"""Downloads: a model as ONNX or a state dict, a variant's stored artifact, records as JSON, figures (HTML,
PNG, SVG; PNG and SVG through :mod:`nnlab.figures`).

Each function returns ``bytes`` or ``str`` (for ``st.download_button``) and raises :class:`ExportError`
with a message a user can act on when the export is impossible.
"""

from __future__ import annotations

import copy
import json
import tempfile
from pathlib import Path

import plotly.graph_objects as go
from safetensors.torch import save as st_save
from torch import nn

from nnlab.i18n import _
from nnlab.records import Record
from nnlab.workspace import Workspace

ONNX_ARTIFACT_FORMATS = ("onnx-int8",)


class ExportError(RuntimeError):
    """This export cannot be produced (the message says why)."""


def state_dict_bytes(model: nn.Module) -> bytes:
    """The model's weights as safetensors bytes (dense; runtime-backed int8 models have none)."""
    if getattr(model, "runner", None) is not None:
        raise ExportError(_("this variant runs in an int8 runtime; download its artifact (ONNX) instead"))
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if not state:
        raise ExportError(_("the model has no weights to export"))
    return st_save(state)


def onnx_bytes(model: nn.Module, input_shape: tuple[int, ...]) -> bytes:
    """The float model exported to ONNX (dynamic batch axis), read back as bytes."""
    if getattr(model, "runner", None) is not None:
        raise ExportError(_("this variant is already an ONNX int8 graph: download its artifact"))
    from compression.int8 import export_onnx

    with tempfile.TemporaryDirectory(prefix="nnlab-export-") as d:
        path = Path(d) / "model.onnx"
        try:
            export_onnx(copy.deepcopy(model), tuple(input_shape), path)  # the exporter traces: never the shared one
        except Exception as exc:  # noqa: BLE001 - both exporters failed: say so
            raise ExportError(_("ONNX export failed: {error}: {detail}").format(
                error=type(exc).__name__, detail=str(exc)[:200])) from exc
        return path.read_bytes()


def artifact_bytes(ws: Workspace, record: Record) -> tuple[bytes, str]:
    """The stored artifact of a record (packed, safetensors, int8 ONNX …) and a file name for it."""
    if not record.artifact:
        raise ExportError(_("{name} has no stored artifact").format(name=record.name))
    path = ws.root / record.artifact
    if not path.is_file():
        raise ExportError(_("the artifact of {name} is missing ({artifact})").format(
            name=record.name, artifact=record.artifact))
    return path.read_bytes(), f"{record.id}-{path.name}"


def record_json(record: Record) -> str:
    return record.to_json()


def records_json(records: list[Record]) -> str:
    return json.dumps([r.to_dict() for r in records], indent=2, sort_keys=True, allow_nan=False)


def figure_html(fig: go.Figure) -> str:
    """A standalone HTML page of the figure, plotly.js included (opens offline; about 5 MB)."""
    return fig.to_html(include_plotlyjs=True, full_html=True)


def png_available() -> bool:
    """True when figures can be rendered as PNG/SVG here (kaleido and a system Chromium, see nnlab.figures)."""
    from nnlab import figures

    return figures.available()


def figure_png(fig: go.Figure, width: int | None = None, height: int | None = None) -> bytes:
    """The figure as PNG, rendered by kaleido in the system's Chromium; :class:`ExportError` when impossible."""
    return _figure(fig, "png", width, height)


def figure_svg(fig: go.Figure, width: int | None = None, height: int | None = None) -> bytes:
    """The figure as SVG, rendered by kaleido in the system's Chromium; :class:`ExportError` when impossible."""
    return _figure(fig, "svg", width, height)


def _figure(fig: go.Figure, fmt: str, width: int | None, height: int | None) -> bytes:
    from nnlab import figures

    try:
        return figures.to_image(fig, fmt, width, height)
    except figures.FigureExportError as exc:
        raise ExportError(str(exc)) from exc


def safe_filename(name: str) -> str:
    keep = "".join(c if c.isalnum() or c in "-_." else "-" for c in name.strip())
    return keep.strip("-.")[:80] or "model"


def model_exports(model: nn.Module) -> dict[str, str]:
    """Which exports make sense for a model: format key → label."""
    if getattr(model, "runner", None) is not None:
        return {"artifact": "int8 ONNX artifact"}
    return {"artifact": "stored artifact", "onnx": "ONNX (float)", "state_dict": "state dict (safetensors)"}

