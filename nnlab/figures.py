"""Static exports of Plotly figures (PNG, SVG) rendered by kaleido 1.x in the system's Chromium, offline.

kaleido 1.x drives a Chromium-based browser (through choreographer) instead of shipping its own. nnlab uses
the browser already on the machine (Debian's ``chromium``): ``BROWSER_PATH`` when set, else the first of
:data:`BROWSER_NAMES` on ``PATH``, else ``/usr/bin/chromium``. Nothing is ever downloaded: no call here
reaches ``kaleido.get_chrome``/``choreo_get_chrome``, the page kaleido renders in loads plotly.js from the
installed plotly package (a ``file://`` URL) with MathJax off, and the browser runs with the flags the
project uses for chromium everywhere (:data:`CHROMIUM_FLAGS`).

One browser is started on the first export and kept for the next ones (starting it costs seconds, a render
a fraction of a second); it closes after :data:`IDLE_SECONDS` without exports and at exit. Exports may be
asked for from any thread (Streamlit runs deferred downloads in their own threads): they are serialised
through one lock onto the renderer's own event loop.

No streamlit here; :func:`nnlab.ui.widgets.chart` is the page-side helper.
"""

from __future__ import annotations

import asyncio
import atexit
import json
import os
import re
import shutil
import threading
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

import plotly.graph_objects as go

from nnlab.i18n import _, num

BROWSER_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
DEBIAN_CHROMIUM = "/usr/bin/chromium"
# The flags tests/browser.py starts chromium with; choreographer already adds --no-sandbox and --disable-gpu
# (sandbox and GPU are off by default) and --no-first-run, --disable-component-update, --disable-sync.
CHROMIUM_FLAGS = ("--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-quic",
                  "--no-first-run", "--disable-component-update", "--disable-sync")
FORMATS = {"png": "image/png", "svg": "image/svg+xml"}
DEFAULT_WIDTH, DEFAULT_HEIGHT, PNG_SCALE = 1000, 500, 2
RENDER_TIMEOUT = 60.0  # seconds for one image
START_TIMEOUT = 60.0  # seconds to start the browser
IDLE_SECONDS = 300.0  # the browser closes after this long without exports

Figurish = go.Figure | dict


class FigureExportError(RuntimeError):
    """The figure cannot be exported (the message says why and what to do)."""


def browser_path() -> str | None:
    """The Chromium-based browser kaleido will drive: ``BROWSER_PATH``, else ``PATH``, else Debian's path."""
    env = os.environ.get("BROWSER_PATH", "").strip()
    if env:
        return env if os.access(env, os.X_OK) else None
    for name in BROWSER_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return DEBIAN_CHROMIUM if os.access(DEBIAN_CHROMIUM, os.X_OK) else None


def available() -> bool:
    """True when PNG/SVG exports can run here (kaleido importable and a browser found)."""
    return unavailable_reason() is None


def unavailable_reason() -> str | None:
    """Why exports cannot run here, in words a user can act on (None when they can)."""
    try:
        import choreographer  # noqa: F401
        import kaleido  # noqa: F401
    except ImportError:
        return _("PNG/SVG export needs the kaleido package (pinned in requirements.txt), which is not installed")
    if browser_path() is None:
        env = os.environ.get("BROWSER_PATH", "").strip()
        where = _("BROWSER_PATH={path} is not an executable").format(path=repr(env)) if env else (
            _("no {names} on PATH and no {debian}").format(names=" / ".join(BROWSER_NAMES[:2]), debian=DEBIAN_CHROMIUM))
        return _("PNG/SVG export needs a Chromium browser ({where}): install Debian's chromium (apt-get install "
                 "chromium) or set BROWSER_PATH; nnlab never downloads one").format(where=where)
    return None


def page_html() -> str:
    """The page kaleido renders figures in: local plotly.js, no MathJax, no network URL."""
    from kaleido import PageGenerator

    return PageGenerator(mathjax=False).generate_index()


# Streamlit's plotly theme (its template becomes plotly's default once streamlit is imported) writes placeholder
# colours "#000001"…"#000040" into figures and lets its frontend swap them for the page's colours. A static
# export must swap them itself: these are the colours Streamlit's frontend uses outside its own theme
# (plotly's defaults; PlotlyChart.js in streamlit 1.67).
_PLACEHOLDERS = {
    **{f"#{i:06d}": c for i, c in enumerate(
        ["#636efa", "#EF553B", "#00cc96", "#ab63fa", "#FFA15A", "#19d3f3", "#FF6692", "#B6E880", "#FF97FF",
         "#FECB52"], start=1)},
    **{f"#{i:06d}": c for i, c in enumerate(
        ["#0d0887", "#46039f", "#7201a8", "#9c179e", "#bd3786", "#d8576b", "#ed7953", "#fb9f3a", "#fdca26",
         "#f0f921"], start=11)},
    **{f"#{i:06d}": c for i, c in enumerate(
        ["#8e0152", "#c51b7d", "#de77ae", "#f1b6da", "#fde0ef", "#e6f5d0", "#b8e186", "#7fbc41", "#4d9221",
         "#276419"], start=21)},
    "#000032": "#3D9970", "#000033": "#FF4136", "#000034": "#4499FF", "#000035": "#B2B5BE", "#000036": "#2a3f5f",
    "#000037": "#2a3f5f", "#000038": "#EBF0F8", "#000039": "white", "#000040": "#C8D4E3",
}
_PLACEHOLDER_RE = re.compile(r"#0000[0-4][0-9]\b", re.IGNORECASE)


def figure_dict(fig: Figurish) -> dict:
    """The figure as a JSON dict, Streamlit's placeholder colours replaced by real ones."""
    if isinstance(fig, go.Figure):
        text = fig.to_json(validate=False)
    elif isinstance(fig, dict) and "data" in fig:
        from plotly.utils import PlotlyJSONEncoder

        text = json.dumps(fig, cls=PlotlyJSONEncoder)
    else:
        raise TypeError(f"expected a plotly Figure or its dict, got {type(fig).__name__}")
    spec = json.loads(_PLACEHOLDER_RE.sub(lambda m: _PLACEHOLDERS.get(m.group(0).lower(), m.group(0)), text))
    return _with_room_for_labels(spec)


def _with_room_for_labels(spec: dict) -> dict:
    """Let every axis grow the margins to fit its tick labels and title (``automargin``).

    Pages use tight margins and Streamlit's frontend makes room for the labels itself; a static image has no
    frontend, so without this the tick labels and axis titles are cut at the border.
    """
    layout = spec.setdefault("layout", {})
    names = {k for k in layout if re.fullmatch(r"[xy]axis\d*", k)} | {"xaxis", "yaxis"}
    for name in names:
        axis = layout.get(name)
        if axis is None:
            axis = layout[name] = {}
        if isinstance(axis, dict):
            axis.setdefault("automargin", True)
    return spec


def _size(fig: dict, width: int | None, height: int | None) -> tuple[int, int]:
    layout = fig.get("layout") or {}
    w = width or layout.get("width") or DEFAULT_WIDTH
    h = height or layout.get("height") or DEFAULT_HEIGHT
    return int(w), int(h)


def to_image(fig: Figurish, fmt: str = "png", width: int | None = None, height: int | None = None,
             scale: float | None = None) -> bytes:
    """The figure as PNG or SVG bytes.

    Args:
        fig: A Plotly figure (or its JSON dict, as Streamlit's chart elements carry it).
        fmt: "png" or "svg".
        width: Pixels (default: the figure's layout width, else 1000).
        height: Pixels (default: the figure's layout height, else 500).
        scale: Resolution factor of PNGs (default 2: sharp on high-density screens and in documents).

    Raises:
        FigureExportError: No browser, kaleido missing, or the render failed (message says which).
    """
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    spec = figure_dict(fig)
    w, h = _size(spec, width, height)
    opts = {"format": fmt, "width": w, "height": h, "scale": float(scale or (PNG_SCALE if fmt == "png" else 1))}
    return _RENDERER.render(spec, opts)


def to_png(fig: Figurish, width: int | None = None, height: int | None = None, scale: float | None = None) -> bytes:
    """The figure as PNG (see :func:`to_image`)."""
    return to_image(fig, "png", width, height, scale)


def to_svg(fig: Figurish, width: int | None = None, height: int | None = None) -> bytes:
    """The figure as SVG (see :func:`to_image`)."""
    return to_image(fig, "svg", width, height)


def close() -> None:
    """Close the export browser now (it starts again on the next export)."""
    _RENDERER.close()


def browser_command() -> list[str]:
    """The command line of the running export browser (empty when none runs); for tests and diagnostics."""
    return _RENDERER.command()


# --- the renderer: one browser, one event loop thread, one lock ---------------------------------------------

def _chromium_class() -> type:
    from choreographer.browsers.chromium import Chromium

    class ProjectChromium(Chromium):
        """choreographer's Chromium with the project's flags added (it takes no free-form flags otherwise)."""

        def get_cli(self) -> list[str]:  # noqa: D102
            cli = list(super().get_cli())
            return cli + [f for f in CHROMIUM_FLAGS if f not in cli]

    return ProjectChromium


class _Renderer:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._kaleido: Any = None
        self._idle_handle: asyncio.TimerHandle | None = None
        self._atexit = False

    def _ensure_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None or self._thread is None or not self._thread.is_alive():
            loop = asyncio.new_event_loop()
            thread = threading.Thread(target=loop.run_forever, name="nnlab-figure-export", daemon=True)
            thread.start()
            self._loop, self._thread = loop, thread
        if not self._atexit:
            atexit.register(self.close)
            self._atexit = True
        return self._loop

    def _call(self, coro: Any, timeout: float) -> Any:
        fut = asyncio.run_coroutine_threadsafe(coro, self._ensure_loop())
        try:
            return fut.result(timeout)
        except FutureTimeout:
            fut.cancel()
            raise FigureExportError(_("the export browser did not answer within {seconds} s").format(
                seconds=num(timeout, ".0f"))) from None

    async def _open(self) -> Any:
        import kaleido

        path = browser_path()
        if path is None:
            raise FigureExportError(unavailable_reason() or _("no browser"))
        os.environ.setdefault("BROWSER_PATH", path)  # any other kaleido user in this process finds the same one
        k = kaleido.Kaleido(n=1, timeout=RENDER_TIMEOUT, mathjax=False, path=path, browser_cls=_chromium_class())
        await asyncio.wait_for(k.open(), START_TIMEOUT)
        return k

    async def _render(self, spec: dict, opts: dict) -> bytes:
        if self._idle_handle is not None:
            self._idle_handle.cancel()
        if self._kaleido is None:
            self._kaleido = await self._open()
        try:
            return await self._kaleido.calc_fig(spec, opts=opts)
        finally:
            self._idle_handle = asyncio.get_running_loop().call_later(IDLE_SECONDS, self._close_when_idle)

    def _close_when_idle(self) -> None:
        if self._lock.acquire(blocking=False):  # an export in flight keeps the browser
            asyncio.ensure_future(self._close_then_release())

    async def _close_then_release(self) -> None:
        try:
            await self._aclose()
        finally:
            self._lock.release()

    async def _aclose(self) -> None:
        k, self._kaleido = self._kaleido, None
        if k is not None:
            try:
                await asyncio.wait_for(k.close(), 20)
            except Exception:  # noqa: BLE001 - a browser that already died needs no closing
                pass

    def render(self, spec: dict, opts: dict) -> bytes:
        reason = unavailable_reason()
        if reason:
            raise FigureExportError(reason)
        with self._lock:
            for attempt in (0, 1):  # a browser that crashed or hung is restarted once
                try:
                    out = self._call(self._render(spec, opts), START_TIMEOUT + RENDER_TIMEOUT)
                except FigureExportError:
                    self._call(self._aclose(), 30)
                    if attempt:
                        raise
                    continue
                except Exception as exc:  # noqa: BLE001 - kaleido/choreographer errors: say what failed
                    self._call(self._aclose(), 30)
                    if attempt:
                        raise FigureExportError(_("{format} export failed: {error}").format(
                            format=opts["format"].upper(), error=f"{type(exc).__name__}: {str(exc)[:300]}")) from exc
                    continue
                if not isinstance(out, (bytes, bytearray)) or not out:
                    raise FigureExportError(_("{format} export returned nothing").format(format=opts["format"].upper()))
                return bytes(out)
        raise AssertionError("unreachable")

    def close(self) -> None:
        with self._lock:
            if self._loop is not None and self._thread is not None and self._thread.is_alive():
                try:
                    self._call(self._aclose(), 30)
                except FigureExportError:
                    pass

    def command(self) -> list[str]:
        k = self._kaleido
        proc = getattr(k, "subprocess", None) if k is not None else None
        args = getattr(proc, "args", None)
        return [str(a) for a in args] if args else []


_RENDERER = _Renderer()


def png_size(blob: bytes) -> tuple[int, int]:
    """Width and height of a PNG from its header."""
    if blob[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG")
    return int.from_bytes(blob[16:20], "big"), int.from_bytes(blob[20:24], "big")


def file_stem(title: str) -> str:
    """A file name stem from a chart key or title (letters, digits, dashes)."""
    keep = "".join(c if c.isalnum() else "-" for c in title.strip().lower())
    keep = "-".join(p for p in keep.split("-") if p)
    return keep[:80] or "figure"

