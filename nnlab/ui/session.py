"""Streamlit glue shared by every page: the sidebar pickers, the selected dataset and model, following jobs.
The only module of :mod:`nnlab` (with :mod:`nnlab.ui.widgets`) that imports streamlit.

Pages call :func:`current` for the selected dataset and model, :func:`evaluation` for the one stored pass over a
split, and :func:`follow` / :func:`run_job` to show a background job's live progress with a Cancel button. Long
work never runs in a page script: it is a job (:mod:`nnlab.jobs.manager`) that survives reruns, navigation and closed
tabs, shared by every session that asks for the same thing. Models and datasets are shared by every session:
never mutate them (deep-copy first).

The sidebar's choices are a *draft* (issue 22): choosing a dataset, an architecture, weights, an upload or the
preprocessing starts nothing heavy. Once the draft is complete and valid (the folder lists, the checkpoint's
tensors fit the architecture and the dataset's class count, the preprocessing is known: cheap checks only), the
**Load** button makes it the *loaded* selection, the one :func:`current` serves and the URL carries. Loading
another selection releases this session's jobs for the one it leaves (cancelled when no other session owns them).
The jobs a loaded selection needs (decoding, measuring, evaluating) go first in the heavy-slot queue; nnlab's demo
model is trained only when the user asks for it. A session's first run loads what its link (or the defaults) name.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import os
import runpy
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import streamlit as st
import torch
from torch import nn

import nnlab.jobs.kinds  # noqa: F401 - registers the foundation's job kinds
from nnlab import config, i18n
from nnlab.base import demo_id
from nnlab.data.preprocess import Preprocessing, PreprocessingError
from nnlab.data.sets import DATASETS, DatasetError, ImageDataset, Source, dataset_id
from nnlab.evaluate import EvalResult
from nnlab.i18n import N_, _, num
from nnlab.jobs import manager as jobs
from nnlab.jobs import refs
from nnlab.jobs.kinds import check_upload, load_evaluation, stash_upload, user_model_id
from nnlab.models.registry import ARCHITECTURES, CheckpointError, arch_label
from nnlab.records import Record
from nnlab.workspace import Workspace, WorkspaceError

# the Weights radio's options (its values, in English; shown through _())
UPLOAD = N_("Upload a checkpoint (.pt/.pth/.safetensors)")
PRETRAINED = N_("torchvision pretrained weights")
RANDOM = N_("Random weights (untrained)")
NNLAB_TRAINED = N_("Trained by nnlab")
TRAINED = N_("Your models trained in nnlab")
_SOURCE = {UPLOAD: "upload", PRETRAINED: "pretrained", RANDOM: "random"}


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
        data_ref: The dataset's reference (what jobs receive instead of the dataset).
    """

    data: ImageDataset
    model: nn.Module
    model_id: str
    arch: str
    record: Record
    history: list[dict]
    data_ref: dict


def workspace() -> Workspace:
    return Workspace()


def default_dataset() -> str:
    return os.environ.get("NNLAB_DEFAULT_DATASET", "fashion-mnist")


def owner() -> str:
    """This browser session's id (recorded on the jobs it asks for)."""
    return st.session_state.setdefault("nnlab_owner", uuid.uuid4().hex[:12])


# --- following jobs ---------------------------------------------------------------------------------------

def _fmt_seconds(s: float) -> str:
    s = max(0.0, float(s))
    return _("{n} s").format(n=i18n.num(s, ".0f")) if s < 90 else _("{n} min").format(n=i18n.num(s / 60, ".1f"))


def waiting_reason(key: str) -> str:
    """Why a queued job waits: "waiting for a free worker" and, when known, behind which job(s)."""
    ahead = jobs.manager().ahead_of(key)
    if not ahead:
        return _("waiting for a free worker")
    text = _("waiting for a free worker behind: {job}").format(job=ahead[0].label)
    return text + (" " + _("(and {n} more)").format(n=len(ahead) - 1) if len(ahead) > 1 else "")


def progress_text(snap: dict) -> str:
    """One line: percent, message, metrics, elapsed and estimated remaining time (plain text, no emoji)."""
    parts = [f"{snap['fraction']:.0%}", snap["message"]]
    m = snap.get("metrics") or {}
    v = m.get("loss")
    if isinstance(v, (int, float)):
        parts.append(_("loss {v}").format(v=i18n.num(v, ".3f")))
    v = m.get("accuracy")
    if isinstance(v, (int, float)):
        parts.append(_("accuracy {v}").format(v=i18n.num(100 * v, ".1f") + "%"))
    if snap["status"] == jobs.QUEUED:
        parts.append(_("queued: {reason}").format(reason=waiting_reason(snap["key"])))
    elif snap["elapsed"]:
        eta = snap.get("eta")
        parts.append(_("{t} elapsed").format(t=_fmt_seconds(snap["elapsed"]))
                     + (_(", about {t} left").format(t=_fmt_seconds(eta)) if eta else ""))
    return " · ".join(p for p in parts if p)


def queue_controls(job: jobs.Job, key: str) -> None:
    """For a queued job: move it up, or cancel the job it waits behind (buttons; their clicks rerun the page)."""
    ahead = jobs.manager().ahead_of(job.key)
    if not ahead:
        return
    blocker = ahead[0]
    c1, c2 = st.columns(2)
    c1.button(_("Move it up"), key=f"{key}_up_{job.key}", icon=":material/arrow_upward:",
              on_click=jobs.manager().move_up, args=(job.key,),
              help=_("Run this job next, as soon as a worker is free (the running job is not stopped)"))
    c2.button(_("Cancel what it waits for"), key=f"{key}_block_{job.key}", icon=":material/block:",
              on_click=blocker.cancel, help=_("Cancel “{job}” (for every session that waits on it)").format(
                  job=blocker.label))


def follow(job: jobs.Job, title: str = "", poll: float = 0.3) -> jobs.Job:
    """Show a job's live progress and a Cancel button until it ends; returns the job (then finished).

    The page script waits here while the work runs in the job's own thread: a click elsewhere, or a closed
    tab, stops this script, not the job, and any page that asks for the same job follows it again.
    """
    if not job.active:
        return job
    def line(snap: dict) -> str:
        return f"{snap['label']}: {progress_text(snap)}" + (" · " + _("cancelling…") if snap["cancel_requested"]
                                                            else "")

    slot = st.empty()
    with slot.container(border=True):
        if title:
            st.markdown(title)
        snap = job.snapshot()
        bar = st.progress(min(1.0, snap["fraction"]), text=line(snap))
        if st.button(_("Cancel"), key=f"cancel_{job.key}", help=_("Stop this job (for every session that waits on it)")):
            job.cancel()
        if snap["status"] == jobs.QUEUED:
            queue_controls(job, "follow")
    while job.active:
        job.wait(poll)
        snap = job.snapshot()
        bar.progress(min(1.0, snap["fraction"]), text=line(snap))
    slot.empty()
    return job


def show_outcome(job: jobs.Job, what: str) -> bool:
    """Say why a job did not finish (failed, cancelled, interrupted), with a button to run it again.

    Returns True when the job finished well.
    """
    if job.status == jobs.DONE:
        return True
    if job.status == jobs.CANCELLED:
        st.warning(_("{what}: cancelled; nothing was stored.").format(what=what))
    elif job.status == jobs.INTERRUPTED:
        st.warning(_("{what}: interrupted ({error}).").format(what=what, error=job.error))
    else:
        st.error(_("{what} failed: {error}").format(what=what, error=job.error))
        if job.detail and not job.error.startswith(("CheckpointError", "DatasetError", "ValueError")):
            with st.expander(_("Details")):
                st.code(job.detail)
    if st.button(_("Run again"), key=f"rerun_{job.key}"):
        jobs.manager().rerun(job.key, owner=owner())
        st.rerun()
    return False


def run_job(kind: str, params: dict, title: str = "", what: str = "", retry: bool = False,
            selection: bool = False) -> jobs.Job:
    """Submit (or join) the job of ``kind`` on ``params``, follow it, and stop the page unless it succeeded.

    A job that failed, was cancelled or interrupted earlier is not re-run by merely opening the page again
    (its reason is shown with a "Run again" button) unless ``retry`` (the user clicked to run it).

    ``selection``: the loaded selection needs this job (decoding, measuring, evaluating the chosen model): it goes
    ahead of background work in the queue, belongs to this selection (released when the user loads another), and,
    cancelled before the user loaded this selection (e.g. when it was left earlier), it runs again.
    """
    old = jobs.find(kind, params)
    stuck = old is not None and old.status in (jobs.FAILED, jobs.INTERRUPTED, jobs.CANCELLED)
    if stuck and selection and old.status == jobs.CANCELLED and old.finished < st.session_state.get(
            "nnlab_loaded_at", 0.0):
        retry = True
    priority = jobs.SELECTION if selection else jobs.BACKGROUND
    job = old if stuck and not retry else jobs.submit(kind, params, owner=owner(), priority=priority)
    if selection:
        mine = st.session_state.setdefault("nnlab_sel_jobs", [])
        if job.key not in mine:
            mine.append(job.key)
    job = follow(job, title)
    if not show_outcome(job, what or job.label):
        st.stop()
    return job


# --- the selection ----------------------------------------------------------------------------------------

_WEIGHTS_CODE = {NNLAB_TRAINED: "demo", UPLOAD: "upload", PRETRAINED: "pretrained", RANDOM: "random",
                 TRAINED: "trained"}
_URL_KEYS = ("dataset", "path", "arch", "weights", "model", "upload")


def apply_language() -> str:
    """Set this run's language before anything is drawn: the sidebar switch's value, first read from ``?lang=``.

    The choice is kept per session (``st.session_state["lang"]``) and carried in the URL (``?lang=ru``; nothing for
    the default English), so a shared link opens in the same language."""
    if "lang" not in st.session_state:
        st.session_state["lang"] = i18n.normalize(st.query_params.get("lang"))
    lang = i18n.set_language(st.session_state["lang"])
    if lang != i18n.DEFAULT and st.query_params.get("lang") != lang:
        st.query_params["lang"] = lang
    elif lang == i18n.DEFAULT and "lang" in st.query_params:
        del st.query_params["lang"]
    return lang


def _session_language() -> str | None:
    from streamlit.runtime.scriptrunner import get_script_run_ctx

    return st.session_state.get("lang") if get_script_run_ctx(suppress_warning=True) is not None else None


i18n.set_fallback(_session_language)  # a fragment's rerun (a fresh thread, no router) speaks the session's language


def language_switch() -> None:
    """The sidebar's language switch (its label is bilingual, so either reader finds it)."""
    st.sidebar.radio("Язык · Language", list(i18n.LANGUAGES), key="lang", horizontal=True,
                     format_func=lambda k: i18n.LANGUAGES[k])


def selection_from_url() -> None:
    """On a session's first run, take the selection from the URL, so a copied link opens the same view.

    ``?dataset=KEY&path=FOLDER&arch=ARCH&weights=demo|trained|upload|pretrained|random&model=ID&upload=SHA``; the
    page is the URL's path. An uploaded checkpoint travels by its workspace id (the hash it is stored under), never
    as a file. Unknown values are ignored (the defaults stay).
    """
    if st.session_state.get("_url_read"):
        return
    st.session_state["_url_read"] = True
    q = st.query_params
    if q.get("dataset") in DATASETS:
        st.session_state["dataset"] = q["dataset"]
    if q.get("path"):
        st.session_state["dataset_path"] = q["path"]
    if q.get("arch") and (q["arch"] in ARCHITECTURES or _known_zoo_key(q["arch"])):
        st.session_state["arch"] = q["arch"]
    by_code = {v: k for k, v in _WEIGHTS_CODE.items()}
    if q.get("weights") in by_code:
        st.session_state["weights"] = by_code[q["weights"]]
    if q.get("model"):
        st.session_state["trained_model"] = q["model"]
    if q.get("upload") and all(c in "0123456789abcdef" for c in q["upload"]):
        st.session_state["upload_sha"] = q["upload"]


def _known_zoo_key(key: str) -> bool:
    from nnlab.models.zoo import is_known

    try:
        return is_known(key)
    except Exception:  # noqa: BLE001 - a malformed key from a URL is simply not a known architecture
        return False


def selection_to_url() -> None:
    """Write the loaded selection into the URL (only what changed, so the browser history stays short).

    The URL names what the pages show, never an unloaded draft: a copied link opens the same view."""
    sel = loaded()
    if sel is None:
        return
    want = {"dataset": sel["dataset"], "arch": sel["arch"], "weights": _WEIGHTS_CODE.get(sel["weights"], "")}
    if sel["path"]:
        want["path"] = sel["path"]
    if sel["weights"] == TRAINED and sel["model"]:
        want["model"] = sel["model"]
    if sel["weights"] == UPLOAD and sel["upload"] and not sel["upload"].startswith("file:"):
        want["upload"] = sel["upload"]
    for k in _URL_KEYS:
        if k in want and want[k] and st.query_params.get(k) != want[k]:
            st.query_params[k] = want[k]
        elif k not in want and k in st.query_params:
            del st.query_params[k]


# --- the draft and the loaded selection ---------------------------------------------------------------------

def _upload_token() -> str:
    """The draft's checkpoint: the workspace id of a stored upload, or ``file:<id>`` of one not stored yet."""
    up = st.session_state.get("checkpoint")
    if up is None:
        return st.session_state.get("upload_sha", "") or ""
    fid = getattr(up, "file_id", "") or f"{up.name}:{up.size}"
    return st.session_state.get("nnlab_upload_files", {}).get(fid) or f"file:{fid}"


def draft() -> dict:
    """The sidebar's choices now (a plain dict, comparable with :func:`loaded`)."""
    ss = st.session_state
    key = ss.get("dataset", default_dataset())
    arch = ss.get("arch", "demo-cnn")
    weights = ss.get("weights", NNLAB_TRAINED if arch.startswith("demo") else RANDOM)
    sel = {"dataset": key, "path": (ss.get("dataset_path") or "").strip() if DATASETS[key].needs_path else "",
           "arch": arch, "weights": weights, "model": "", "upload": "", "pp": None}
    if weights == TRAINED:
        sel["model"] = ss.get("trained_model") or ""
    if weights == UPLOAD:
        sel["upload"] = _upload_token()
    if weights not in (NNLAB_TRAINED, TRAINED) and arch_preprocessing(arch) is not None:
        if any(k not in ss for k in _PP_KEYS) or ss.get("pp_arch") != arch:
            _set_pp_state(arch_preprocessing(arch))
            ss["pp_arch"] = arch
        try:
            sel["pp"] = _pp_from_state().to_dict()
        except PreprocessingError as exc:
            sel["pp"] = {"error": str(exc)}
    return sel


def loaded() -> dict | None:
    """The loaded selection (what every page works on); None before the session's first run loaded one."""
    return st.session_state.get("nnlab_loaded")


def _upload_bytes(token: str) -> tuple[bytes, str] | None:
    """The draft checkpoint's bytes and file name (from the uploader, or from the workspace by its id)."""
    if token.startswith("file:"):
        up = st.session_state.get("checkpoint")
        return (up.getvalue(), up.name) if up is not None else None
    stashed = _stashed_upload(workspace(), token)
    return ((workspace().root / stashed[0]).read_bytes(), stashed[0]) if stashed else None


def _check(sel: dict) -> tuple[str, str] | None:
    """What keeps ``sel`` from being loaded: ``(level, message)``, or None when it is complete and valid.

    Cheap checks only: the dataset lists, the preprocessing is known, the checkpoint's tensors fit the
    architecture at the dataset's class count and input (read without running code, nothing stored)."""
    if DATASETS[sel["dataset"]].needs_path and not sel["path"]:
        return "info", _("Type the path of a folder of class subfolders (or of a CSV/JSON list) in the sidebar.")
    try:
        src = refs.load_source(refs.data_ref(sel["dataset"], sel["path"]))
    except (DatasetError, OSError) as exc:
        return "error", _("The dataset cannot be used: {error}").format(error=exc)
    if sel["pp"] and "error" in sel["pp"]:
        return "error", _("The preprocessing is not valid: {error}").format(error=sel["pp"]["error"])
    if sel["weights"] == TRAINED and not sel["model"]:
        return "info", _("Train a model on the *Train or fine-tune* page first.")
    if sel["weights"] == UPLOAD:
        blob = _upload_bytes(sel["upload"]) if sel["upload"] else None
        if blob is None:
            return "info", _("Upload a checkpoint in the sidebar (a state dict saved with "
                             "`torch.save(model.state_dict())` or safetensors).")
        try:
            pre = Preprocessing.from_dict(sel["pp"]) if sel["pp"] else src.native(workspace().root)
            shape = SimpleNamespace(input_shape=(pre.channels, *pre.size), num_classes=len(src.classes))
            check_upload(blob[0], blob[1], sel["arch"], shape)  # type: ignore[arg-type] - shape and classes only
        except (CheckpointError, ValueError, RuntimeError, DatasetError, OSError) as exc:
            return "error", _("The model cannot be used: {error}").format(error=exc)
    return None


def _checked(sel: dict) -> tuple[str, str] | None:
    """:func:`_check` of ``sel``, once per distinct draft in this session (reruns do not repeat it)."""
    sig = json.dumps(sel, sort_keys=True, default=str)
    last = st.session_state.get("nnlab_draft_check")
    if last is None or last[0] != sig:
        last = (sig, _check(sel))
        st.session_state["nnlab_draft_check"] = last
    return last[1]


def _data_ref_for(sel: dict) -> dict | None:
    """The data reference a selection's decoding job uses (None when it cannot be known cheaply)."""
    try:
        src = refs.load_source(refs.data_ref(sel["dataset"], sel["path"]))
        pre = Preprocessing.from_dict(sel["pp"]) if sel["pp"] and "error" not in sel["pp"] else None
        return refs.data_ref(sel["dataset"], sel["path"],
                             pre.to_dict() if pre is not None and pre != src.native() else None)
    except Exception:  # noqa: BLE001 - only used to keep a shared decoding job alive; unknown is fine
        return None


def load_selection(sel: dict) -> None:
    """Make ``sel`` the loaded selection. This session's jobs for the selection it leaves are released: those no
    other session owns are cancelled (the new selection's decoding job, when it is the same, is kept)."""
    old = loaded()
    if old is not None and old != sel:
        keep = set()
        dref = _data_ref_for(sel)
        if dref is not None:
            keep.add(jobs.job_key("build-dataset", {"data": dref}))
        mine = st.session_state.get("nnlab_sel_jobs", [])
        jobs.manager().release(owner(), [k for k in mine if k not in keep])
        st.session_state["nnlab_sel_jobs"] = [k for k in mine if k in keep]
    st.session_state["nnlab_loaded"] = dict(sel)
    st.session_state["nnlab_loaded_at"] = time.time()


def _load_clicked() -> None:
    """The Load button: store a new upload in the workspace (content-addressed), then load the draft."""
    sel = draft()
    if _checked(sel) is not None:
        return
    st.session_state.pop("nnlab_load_error", None)
    if sel["weights"] == UPLOAD and sel["upload"].startswith("file:"):
        up = st.session_state.get("checkpoint")
        try:
            _, sha = stash_upload(workspace(), up.getvalue(), up.name)
        except WorkspaceError:
            st.session_state["nnlab_load_error"] = _("The workspace is not writable, so the checkpoint cannot be "
                                                     "stored for measuring.")
            return
        st.session_state.setdefault("nnlab_upload_files", {})[sel["upload"][5:]] = sha
        st.session_state["upload_sha"] = sha
        sel["upload"] = sha
    load_selection(sel)


def use_trained_model(model_id: str) -> None:
    """Put a model trained by nnlab in the sidebar and load it (the Train page's "Use this model")."""
    st.session_state["weights"] = TRAINED
    st.session_state["trained_model"] = model_id
    sel = draft()
    if _checked(sel) is None:
        load_selection(sel)


def describe(sel: dict) -> str:
    """A selection in one line for the sidebar."""
    ds = DATASETS[sel["dataset"]].label + (f" ({Path(sel['path']).name})" if sel["path"] else "")
    return _("{arch} · {weights} on {dataset}").format(arch=arch_label(sel["arch"]), weights=_(sel["weights"]),
                                                        dataset=ds)


def load_panel() -> None:
    """The sidebar's Load button and what it would load, or why it cannot yet (explicit loading, stated)."""
    sel = draft()
    if loaded() is None:  # a session's first run loads what its link (or the defaults) name
        load_selection(sel)
    cur = loaded()
    changed = sel != cur
    problem = _checked(sel) if changed else None
    if changed and problem is not None:
        (st.sidebar.error if problem[0] == "error" else st.sidebar.info)(problem[1])
    st.sidebar.button(_("Load"), key="sel_load", type="primary", icon=":material/play_arrow:", width="stretch",
                      disabled=not changed or problem is not None, on_click=_load_clicked,
                      help=_("Load this dataset and model: decoding, measuring and evaluating start only then"))
    if st.session_state.get("nnlab_load_error"):
        st.sidebar.error(st.session_state["nnlab_load_error"])
    if changed:
        st.sidebar.caption(_("Your choices above are a draft: nothing is computed until you press **Load**. "
                             "Shown now: {current}.").format(current=describe(cur)))
    else:
        st.sidebar.caption(_("Loaded: {current}. Changes above take effect when you press **Load**.").format(
            current=describe(cur)))


def sidebar() -> None:
    """Render the dataset and model pickers (a draft) and the Load button; the loaded selection is in the URL."""
    selection_from_url()
    st.sidebar.header(_("Data and model"))
    keys = list(DATASETS)
    st.session_state.setdefault("dataset", default_dataset())
    st.sidebar.selectbox(_("Dataset"), keys, key="dataset", format_func=lambda k: DATASETS[k].label)
    if DATASETS[st.session_state["dataset"]].needs_path:
        st.sidebar.text_input(_("Folder of class subfolders"), key="dataset_path",
                              help=_("Only folders under the allowed roots can be read (NNLAB_ALLOWED_ROOTS)."))
    st.session_state.setdefault("arch", "demo-cnn")
    query = st.sidebar.text_input(_("Search architectures"), key="arch_query",
                                  placeholder=_("e.g. resnet50, vit, convnext"),
                                  help=_("Every torchvision and timm classifier (tv:… and timm:…) and nnlab's own"))
    archs = architecture_choices(query, st.session_state["arch"])
    shown = _("{n} shown").format(n=i18n.num(len(archs), ",d"))
    st.sidebar.selectbox(_("Architecture"), archs, key="arch", format_func=arch_label,
                         help=shown + (" " + _("for “{query}”").format(query=query) if query else ""))
    arch = st.session_state["arch"]
    pretrained_ok = _has_pretrained(arch)
    options = ([NNLAB_TRAINED] if arch.startswith("demo") else []) + [UPLOAD] + (
        [PRETRAINED] if pretrained_ok else []) + [RANDOM]
    trained = trained_models(arch, st.session_state["dataset"])
    if trained:
        options.insert(1 if arch.startswith("demo") else 0, TRAINED)
    if st.session_state.get("weights") not in options:
        st.session_state["weights"] = options[0]
    st.sidebar.radio(_("Weights"), options, key="weights", format_func=_)
    if st.session_state["weights"] == TRAINED:
        names = {r.id: f"{r.name} · {i18n.num(100 * r.accuracy, '.1f')}%" for r in trained}
        if st.session_state.get("trained_model") not in names:
            st.session_state["trained_model"] = trained[0].id
        st.sidebar.selectbox(_("Trained model"), list(names), key="trained_model", format_func=names.get)
    if st.session_state["weights"] == UPLOAD:
        st.sidebar.file_uploader(_("Checkpoint (state dict only; never run as code)"),
                                 type=["pt", "pth", "safetensors", "bin"], key="checkpoint")
    if st.session_state["weights"] not in (NNLAB_TRAINED, TRAINED):
        preprocessing_editor(arch)
    load_panel()
    selection_to_url()
    jobs_summary()


def trained_models(arch: str, dataset_key: str) -> list[Record]:
    """Models of this architecture trained by nnlab's Train page on this dataset, newest first."""
    ws = workspace()
    folder = ws.root / "models"
    if not folder.is_dir():
        return []
    out = []
    for d in folder.iterdir():
        rec = ws.load_model_record(d.name) if d.is_dir() else None
        if rec is not None and rec.arch == arch and rec.extra.get("trained_by") == "nnlab-train" and (
                rec.dataset == dataset_key or rec.dataset.startswith(f"{dataset_key}@")
                or dataset_key == "imagefolder" and rec.dataset.startswith("imagefolder")):
            out.append(rec)
    return sorted(out, key=lambda r: r.created, reverse=True)


def architecture_choices(query: str, current: str, limit: int = 400) -> list[str]:
    """The architectures the sidebar offers: nnlab's own, then the zoo search results (the current one kept)."""
    from nnlab.models.registry import search_models

    keys = [k for k, _ in search_models(query or "", limit=limit)] if query else list(ARCHITECTURES) + [
        k for k, _ in search_models("", limit=limit) if k not in ARCHITECTURES]
    if current not in keys:
        keys.insert(0, current)
    return keys


@st.cache_data(show_spinner=False, max_entries=256)
def _has_pretrained(arch: str) -> bool:
    if arch in ARCHITECTURES:
        return ARCHITECTURES[arch].pretrained_available
    from nnlab.models.zoo import has_pretrained

    return has_pretrained(arch)


def jobs_summary() -> None:
    """A line in the sidebar: how many jobs run and wait, with a link to the Jobs page; then, for each job of this
    session's selection that waits for a worker, behind what, with buttons to move it up or cancel the blocker."""
    mgr = jobs.manager()
    counts = mgr.counts()
    running, queued = counts.get(jobs.RUNNING, 0), counts.get(jobs.QUEUED, 0)
    text = _("Jobs: {running} running, {queued} queued").format(running=running, queued=queued) \
        if running or queued else _("Jobs: none running")
    try:
        st.sidebar.page_link("pages/jobs.py", label=text, icon=":material/pending_actions:")
    except Exception:  # noqa: BLE001 - a page run alone (AppTest of one page) has no navigation to link into
        st.sidebar.caption(text)
    for key in st.session_state.get("nnlab_sel_jobs", []):
        job = mgr.get(key)
        if job is None or job.status != jobs.QUEUED or not mgr.ahead_of(key):
            continue
        with st.sidebar.container(border=True):
            st.caption(_("**{job}** is {reason}.").format(job=job.label, reason=waiting_reason(key)))
            queue_controls(job, "sidebar")


@st.cache_data(ttl=30, show_spinner=False)
def workspace_writable(root: str) -> bool:
    """Whether the workspace accepts writes now (checked at most every 30 s)."""
    return Workspace(root).writable()


_IN_FRAME: contextvars.ContextVar[bool] = contextvars.ContextVar("nnlab_in_frame", default=False)
APP = Path(__file__).resolve().parents[2] / "app.py"  # nnlab/ui/session.py → the project root


@contextlib.contextmanager
def frame() -> Iterator[None]:
    """app.py runs the selected page inside this block: the page then knows it has the app's frame."""
    token = _IN_FRAME.set(True)
    try:
        yield
    finally:
        _IN_FRAME.reset(token)


def navigation_menu(pages: dict[str, list]) -> None:
    """The sidebar menu: one caption per section, one link per page (Streamlit's own menu is switched off)."""
    with st.sidebar:
        for section, entries in pages.items():
            st.caption(section)
            for page in entries:
                st.page_link(page)


def ensure_frame() -> None:
    """Make sure the page runs inside app.py's frame (navigation menu and sidebar pickers).

    A deep link (``/inside_filters``) opened first on a fresh server reaches Streamlit before any session ran
    app.py, so Streamlit serves the page from its legacy ``pages/`` folder mode, alone. The page then runs the
    router itself: app.py's ``st.navigation`` switches the whole server to the app's navigation (Streamlit's
    documented behaviour) and runs this same page inside the frame; the frameless run stops here.
    """
    if _IN_FRAME.get():
        return
    runpy.run_path(str(APP), run_name="__main__")
    st.stop()


def _source(sel: dict) -> tuple[dict, Source]:
    key, path = sel["dataset"], sel["path"]
    if DATASETS[key].needs_path and not path:
        st.info(_("Type the path of a folder of class subfolders (or of a CSV/JSON list) in the sidebar, then "
                  "press **Load**."))
        st.stop()
    ref = refs.data_ref(key, path)
    try:
        with st.spinner(_("Listing the dataset…")):
            return ref, refs.load_source(ref)
    except (DatasetError, OSError) as exc:
        st.error(_("The dataset cannot be used: {error}").format(error=exc))
        st.stop()


def _dataset(ref: dict, src: Source) -> ImageDataset:
    """The dataset at the reference's preprocessing; decoded into the data cache by a job the first time."""
    try:
        ready = refs.data_ready(ref)
    except (DatasetError, PreprocessingError, OSError) as exc:
        st.error(_("The dataset cannot be used: {error}").format(error=exc))
        st.stop()
    if not ready:
        pre = refs.preprocessing_of(ref)
        n = i18n.num(len(src.files), ",d")
        title = (_("Decoding **{name}** ({n} images) into the data cache at the model's preprocessing ({pre}): "
                   "once per preprocessing; later pages read it from disk.").format(name=src.name, n=n,
                                                                                   pre=pre.describe())
                 if pre else _("Decoding **{name}** ({n} images) into the data cache: once per preprocessing; later "
                               "pages read it from disk.").format(name=src.name, n=n))
        run_job("build-dataset", {"data": ref}, what=_("Preparing the dataset"), title=title, selection=True)
    try:
        data = refs.load_data(ref)
    except (DatasetError, OSError) as exc:
        st.error(_("The dataset cannot be used: {error}").format(error=exc))
        st.stop()
    if data.fallback_reason:
        st.warning(data.fallback_reason, icon=":material/warning:")
    if data.unreadable:
        with st.expander(_("{n} image file(s) could not be read and are left out").format(
                n=i18n.num(len(data.unreadable), ",d")), icon=":material/broken_image:"):
            st.dataframe([{"file": f, "reason": r} for f, r in data.unreadable[:1000]], hide_index=True,
                         key="unreadable_files")
    return data


# --- the model's preprocessing ------------------------------------------------------------------------------

_CROPS = (N_("center"), N_("none"))  # the crop's values (shown through _())
_PP_KEYS = ("pp_size", "pp_resize_mode", "pp_resize", "pp_crop", "pp_interpolation", "pp_channels", "pp_mean",
            "pp_std", "pp_convert")


def arch_preprocessing(arch: str) -> Preprocessing | None:
    """The preprocessing an architecture was made for (None: the dataset's own view, for nnlab's demo CNNs)."""
    if arch.startswith("demo"):
        return None
    try:
        from nnlab.models.registry import default_preprocessing  # type: ignore[attr-defined]

        return default_preprocessing(arch)
    except ImportError:
        from nnlab.data.preprocess import imagenet

        return imagenet(source=f"{arch}: ImageNet defaults")


def _set_pp_state(pre: Preprocessing) -> None:
    st.session_state.update({"pp_size": pre.size[0], "pp_resize_mode": pre.resize_mode, "pp_resize": pre.resize,
                             "pp_crop": pre.crop, "pp_interpolation": pre.interpolation, "pp_channels": pre.channels,
                             "pp_mean": ", ".join(f"{v:g}" for v in pre.mean),
                             "pp_std": ", ".join(f"{v:g}" for v in pre.std), "pp_convert": pre.convert,
                             "pp_source": pre.source})


def _pp_from_state() -> Preprocessing:
    def floats(text: str) -> tuple[float, ...]:
        try:
            return tuple(float(v) for v in str(text).replace(";", ",").split(",") if v.strip())
        except ValueError:
            raise PreprocessingError(f"{text!r} is not a list of numbers") from None

    side = int(st.session_state["pp_size"])
    return Preprocessing(size=(side, side), channels=int(st.session_state["pp_channels"]),
                         resize_mode=st.session_state["pp_resize_mode"],
                         resize=int(st.session_state["pp_resize"]) if st.session_state["pp_resize_mode"] != "none"
                         else 0, crop=st.session_state["pp_crop"], interpolation=st.session_state["pp_interpolation"],
                         mean=floats(st.session_state["pp_mean"]), std=floats(st.session_state["pp_std"]),
                         convert=st.session_state["pp_convert"], source=st.session_state.get("pp_source", "edited"))


def preprocessing_editor(arch: str) -> None:
    """Sidebar fields for the model's preprocessing (defaults from the architecture's own metadata)."""
    default = arch_preprocessing(arch)
    if default is None:
        return
    if st.session_state.get("pp_arch") != arch or any(k not in st.session_state for k in _PP_KEYS):
        _set_pp_state(default)
        st.session_state["pp_arch"] = arch
    from nnlab.data.preprocess import CONVERSIONS, INTERPOLATIONS, RESIZE_MODES

    with st.sidebar.expander(_("Preprocessing (what the model was trained on)"), icon=":material/tune:"):
        st.caption(_("Defaults: {source}. Every page feeds the model exactly this.").format(
            source=default.source or arch))
        c1, c2 = st.columns(2)
        c1.number_input(_("Input size (px)"), 8, 1024, step=8, key="pp_size")
        c2.number_input(_("Resize to (px)"), 0, 2048, step=8, key="pp_resize",
                        help=_("Shorter side (mode 'shorter') or both sides ('squash') before the crop"))
        c1.selectbox(_("Resize mode"), RESIZE_MODES, key="pp_resize_mode")
        c2.selectbox(_("Crop"), _CROPS, key="pp_crop", format_func=_)
        c1.selectbox(_("Interpolation"), list(INTERPOLATIONS), key="pp_interpolation")
        c2.selectbox(_("Channels"), (3, 1), key="pp_channels")
        st.text_input(_("Mean (per channel, 0–1)"), key="pp_mean")
        st.text_input(_("Std (per channel, 0–1)"), key="pp_std")
        st.selectbox(_("Mode conversion"), CONVERSIONS, key="pp_convert",
                     help=_("pil: what torchvision's ImageFolder loader does; scaled: 16-bit scaled, alpha on white"))
        if st.button(_("Reset to the architecture's defaults"), key="pp_reset"):
            _set_pp_state(default)
            st.rerun()


def chosen_preprocessing(sel: dict) -> Preprocessing | None:
    """The preprocessing of a selection's model (None: the dataset's native view)."""
    if sel["weights"] == NNLAB_TRAINED or arch_preprocessing(sel["arch"]) is None:
        return None
    if sel["weights"] == TRAINED:
        rec = workspace().load_model_record(sel["model"] or "")
        pre = rec.extra.get("preprocessing") if rec is not None else None
        return Preprocessing.from_dict(pre) if pre else None
    if not sel["pp"] or "error" in sel["pp"]:
        st.error(_("The preprocessing is not valid: {error}").format(error=(sel["pp"] or {}).get("error", "?")))
        st.stop()
    return Preprocessing.from_dict(sel["pp"])


def _stashed_upload(ws: Workspace, sha: str) -> tuple[str, str] | None:
    """``(relative path, sha)`` of an upload already stored in the workspace under ``sha`` (None: not there)."""
    if not sha:
        return None
    found = sorted((ws.root / "uploads").glob(f"{sha}.*")) if (ws.root / "uploads").is_dir() else []
    return (str(found[0].relative_to(ws.root)), sha) if found else None


def _offer_demo_training(sel: dict, src: Source, model_id: str) -> None:
    """nnlab's demo model is trained only when the user asks: say so, with the button (stops the page until then)."""
    asked = st.session_state.setdefault("nnlab_train_demo", [])
    job = jobs.find("train-demo", {"data": refs.data_ref(sel["dataset"], sel["path"]), "arch": sel["arch"]})
    if model_id in asked or (job is not None and job.active):
        return
    st.info(_("nnlab's demo model ({arch}) is not trained on {data} yet. Training it takes a few minutes on the "
              "CPU and is stored in the workspace, so it happens once. Or choose weights of your own in the "
              "sidebar and press **Load**.").format(arch=arch_label(sel["arch"]), data=src.name),
            icon=":material/school:")
    if st.button(_("Train nnlab's demo model"), key="train_demo", type="primary", icon=":material/model_training:"):
        asked.append(model_id)
        return
    st.stop()


def current() -> Current:
    """The loaded dataset and model; on a problem, show a clear message and stop the page.

    A model that is not in the workspace yet (an uploaded checkpoint, random or pretrained weights) is made by a
    job, started for the loaded selection only: the page shows its progress, and so does every other page and
    session that asks for the same model meanwhile. nnlab's demo model is trained when the user asks for it.
    """
    ensure_frame()
    sel = loaded() or draft()
    base_ref, src = _source(sel)
    arch, weights = sel["arch"], sel["weights"]
    pre = chosen_preprocessing(sel)
    dref = refs.data_ref(base_ref["key"], base_ref["path"],
                         pre.to_dict() if pre is not None and pre != src.native() else None)
    ws = workspace()
    demo_model = f"{arch}-{dataset_id(src, None)}"  # base.demo_id of the dataset at its native view
    ws_root = str(ws.root)
    if not workspace_writable(ws_root):
        st.warning(_("The workspace {root} is not writable (read-only or disk full). nnlab keeps running "
                     "read-only: nothing new (trained models, variants) will be saved.").format(root=ws_root),
                   icon=":material/lock:")
    if weights == NNLAB_TRAINED and not refs.has_model(demo_model):
        _offer_demo_training(sel, src, demo_model)  # before decoding: nothing starts unless asked
    data = _dataset(dref, src)
    if weights == TRAINED:
        model_id = sel["model"]
        if not model_id:
            st.info(_("Train a model on the *Train or fine-tune* page first."))
            st.stop()
    elif weights == NNLAB_TRAINED:
        model_id = demo_id(data, arch)
        if not refs.has_model(model_id):
            run_job("train-demo", {"data": dref, "arch": arch},
                    title=_("nnlab is training its demo model on {data} ({n} images), as you asked. It is stored in "
                            "the workspace, so this happens once; you may open other pages or close the tab "
                            "meanwhile.").format(data=data.name, n=i18n.num(len(data.y_train), ",d")),
                    what=_("Training the demo model"), selection=True)
    else:
        source: dict = {"kind": _SOURCE[weights]}
        if weights == UPLOAD:
            stashed = _stashed_upload(ws, sel["upload"])
            if stashed is None:
                st.info(_("Upload a checkpoint in the sidebar (a state dict saved with "
                          "`torch.save(model.state_dict())` or safetensors), then press **Load**."))
                st.stop()
            source["file"], token = stashed
        elif weights == RANDOM:
            source["seed"], token = 0, "s0"
        else:
            token = "default"
        model_id = user_model_id(arch, data, source["kind"], token)
        if not refs.has_model(model_id):
            register({"data": dref, "arch": arch, "source": source, "model_id": model_id}, data,
                     title=_("Loading and measuring **{arch}**…").format(arch=arch_label(arch)))
    try:
        model, record = refs.load_model(model_id, ws.root)
    except (KeyError, CheckpointError, ValueError, RuntimeError, OSError) as exc:
        st.error(_("The model cannot be used: {error}").format(error=exc))
        st.stop()
    history = ws.load_history(model_id)
    return Current(data, model, model_id, arch, record, history, dref)


def register(params: dict, data: ImageDataset, title: str, retry: bool = False) -> None:
    """Load and measure a user's model (the register-model job) without holding the page: while the job runs, the
    page shows its progress and the first accuracy of its test pass (which runs first: a stratified sample with its
    95 % interval, then the running accuracy), and stops there; when the job ends the whole page runs again.

    Like :func:`run_job`, a job that failed, was cancelled or interrupted is not re-run by opening a page again.
    """
    old = jobs.find("register-model", params)
    stuck = old is not None and old.status in (jobs.FAILED, jobs.INTERRUPTED, jobs.CANCELLED)
    if stuck and old.status == jobs.CANCELLED and old.finished < st.session_state.get("nnlab_loaded_at", 0.0):
        retry = True  # cancelled when the user left this selection earlier, loaded again since
    # the work the loaded selection needs goes ahead of background work where the manager ranks jobs
    rank = {"priority": jobs.SELECTION} if hasattr(jobs, "SELECTION") else {}
    job = old if stuck and not retry else jobs.submit("register-model", params, owner=owner(), **rank)
    mine = st.session_state.setdefault("nnlab_sel_jobs", [])  # released when the user loads another selection
    if job.key not in mine:
        mine.append(job.key)
    if job.active:
        _registering(job.key, params["model_id"], data.id, title)
        st.stop()
    if not show_outcome(job, _("The model")):
        st.stop()


def first_accuracy(counts: dict) -> bool:
    """The first numbers of a streamed test pass (its counts under :func:`nnlab.jobs.kinds.stream_key`): the running
    accuracy with its 95 % Wilson interval and the stratified first sample's. False while there is none yet."""
    from nnlab.estimate import wilson_interval

    def interval(correct: int, n: int) -> str:
        lo, hi = wilson_interval(correct, n)
        return _("95 % interval {lo}–{hi}").format(lo=num(lo, ".1%"), hi=num(hi, ".1%"))

    done, total, correct = int(counts.get("done", 0)), int(counts.get("total", 0)), int(counts.get("correct", 0))
    first, first_ok = int(counts.get("first_images", 0)), int(counts.get("first_correct", 0))
    if not done or counts.get("phase") not in ("gate", "rest", "done"):
        return False
    st.metric(_("Test accuracy") + " " + _("(running)"), "≈ " + num(correct / done, ".2%"),
              help=_("Top-1 on the images of the test split done so far: a sample stratified by class first, then "
                     "the rest in a random order, so the running figure estimates the whole split's."))
    st.progress(min(1.0, done / max(1, total)), text=_("{done} of {total} images · {interval}").format(
        done=num(done, ","), total=num(total, ","), interval=interval(correct, done)))
    if first:
        st.caption(_("First number: {acc} on {n} images stratified by class ({interval}), after {s} s.").format(
            acc=num(first_ok / first, ".2%"), n=num(first, ","), interval=interval(first_ok, first),
            s=num(float(counts.get("first_seconds") or 0.0), ".1f")))
    return True


@st.fragment(run_every=1.0)
def _registering(job_key: str, model_id: str, data_id: str, title: str) -> None:
    """The register-model job's progress and, as soon as its test pass has one, the model's first accuracy."""
    job = jobs.get(job_key)
    if job is None or not job.active:
        st.rerun()  # the model is measured (or the job ended otherwise): the whole page runs again
    snap = job.snapshot()
    with st.container(border=True):
        st.markdown(title)
        st.progress(min(1.0, snap["fraction"]), text=f"{snap['label']}: {progress_text(snap)}"
                    + (" · " + _("cancelling…") if snap["cancel_requested"] else ""))
        if st.button(_("Cancel"), key=f"cancel_{job_key}", help=_("Stop this job (for every session that waits on it)")):
            job.cancel()
    counts = workspace().load_run(nnlab.jobs.kinds.stream_key(model_id, data_id, "test")) or {}
    with st.container(border=True):
        if first_accuracy(counts):
            st.caption(_("The test pass runs first, so its accuracy comes before the rest of the measuring; the "
                         "latency in every runtime, the MACs and the layer table follow when the model is measured."))
        else:
            st.caption(_("Evaluating the model on the test split…"))


@st.cache_data(show_spinner=False, max_entries=32)
def _stored_evaluation(root: str, model_id: str, data_id: str, split: str, stamp: float) -> EvalResult | None:
    return load_evaluation(Workspace(root), model_id, data_id, split)


def evaluation(split: str = "test", cur: Current | None = None) -> EvalResult:
    """The one stored evaluation pass of the current model over ``split`` (run as a job the first time)."""
    cur = cur or current()
    ws = workspace()
    path = ws.result_path(nnlab.jobs.kinds.eval_key(cur.model_id, cur.data.id, split))
    stamp = path.stat().st_mtime if path.is_file() else 0.0
    res = _stored_evaluation(str(ws.root), cur.model_id, cur.data.id, split, stamp) if stamp else \
        load_evaluation(ws, cur.model_id, cur.data.id, split)
    if res is None:
        run_job("evaluate", {"model_id": cur.model_id, "data": cur.data_ref, "split": split,
                             **({"precision": "fp32"} if st.session_state.get("fp32_only") else {})},
                title=_("Evaluating the model on the {split} split…").format(split=split), what=_("The evaluation"),
                selection=True)
        stamp = path.stat().st_mtime if path.is_file() else time.time()
        res = _stored_evaluation(str(ws.root), cur.model_id, cur.data.id, split, stamp) if path.is_file() else \
            load_evaluation(ws, cur.model_id, cur.data.id, split)
        if res is None:
            st.error(_("The evaluation finished but its results cannot be read."))
            st.stop()
    return res


def device_note() -> str:
    return _("device {device}, {n} CPU threads").format(device=config.device(), n=torch.get_num_threads())


def report_panel(cur: Current, variant_ids: list[str], key: str) -> None:
    """Build (as a job) and download the one-file report of the current model with the chosen variants."""
    goal = st.session_state.get("goal_e_goal")
    params = {"model_id": cur.model_id, "data": cur.data_ref, "variant_ids": list(variant_ids),
              "e_goal": None if goal is None else float(goal) / 100}
    if i18n.get_language() != i18n.DEFAULT:  # one report per language (English keeps its old job key)
        params["lang"] = i18n.get_language()
    job = jobs.find("report", params)
    c1, c2, c3 = st.columns([2, 1, 1], vertical_alignment="center")
    clicked = c1.button(_("Build the report") if job is None or job.status != jobs.DONE else
                        _("Build the report again"), key=f"{key}_build",
                        help=_("One self-contained HTML file (and a PDF): model card, diagnosis, per-class metrics, "
                               "worst errors with attributions, data checks, variants side by side"))
    if clicked or (job is not None and job.active):
        job = run_job("report", params, title=_("Building the report…"), what=_("The report"), retry=clicked)
    if job is not None and job.status == jobs.DONE and job.result:
        ws = workspace()
        res = job.result
        html_path = ws.root / res["html"]
        if html_path.is_file():
            c2.download_button(_("Report (HTML)"), html_path.read_bytes(), file_name=f"nnlab-report-{cur.model_id}.html",
                               mime="text/html", key=f"{key}_html", icon=":material/description:")
        if res.get("pdf") and (ws.root / res["pdf"]).is_file():
            c3.download_button(_("Report (PDF)"), (ws.root / res["pdf"]).read_bytes(),
                               file_name=f"nnlab-report-{cur.model_id}.pdf", mime="application/pdf",
                               key=f"{key}_pdf", icon=":material/picture_as_pdf:")
        else:
            c3.caption(_("PDF: no browser to print it here."))
        st.caption(_("Built in {s} s, {kib} KiB").format(s=i18n.num(res.get("seconds", 0), ".1f"),
                                                        kib=i18n.num(res.get("bytes", 0) / 1024, ".0f"))
                   + (f"; {' '.join(res['notes'])}" if res.get("notes") else ""))
