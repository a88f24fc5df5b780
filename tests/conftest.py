"""Shared fixtures: small datasets, a trained tiny demo model in a throwaway workspace, AppTest helpers."""

from __future__ import annotations

import os
import sys
import types
from pathlib import Path

import numpy as np
import pytest

if os.environ.get("PYTEST_XDIST_WORKER"):
    # Two workers (and the servers they start) share the 2 cores: OpenMP threads that spin while they wait for work
    # take the other worker's core. Two processes running ResNet-18 at 64 px on 2 threads each: 5-9 s each with the
    # default spinning, 2.0 s each when waiting threads sleep (read by libgomp when torch loads it, just below).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# The whole suite uses an isolated workspace and data folder, digits as default data, and few epochs.
# NNLAB_TEST_WORKDIR reuses one folder across runs (the trained digits demo survives) while iterating locally.
_SESSION_TMP = Path(os.environ.get("NNLAB_TEST_WORKDIR") or f"/tmp/nnlab-tests-{os.getpid()}")
os.environ["NNLAB_WORKSPACE"] = str(_SESSION_TMP / "workspace")
os.environ["NNLAB_DATA"] = str(_SESSION_TMP / "data")
os.environ["NNLAB_DEBIAN_FASHION_MNIST"] = str(_SESSION_TMP / "no-debian-fashion-mnist")
os.environ["NNLAB_DEFAULT_DATASET"] = "digits"
os.environ["NNLAB_DEMO_EPOCHS"] = "3"
os.environ["NNLAB_DEVICE"] = "cpu"
os.environ.setdefault("NNLAB_LATENCY_ROUNDS", "2")  # every figure measured and stated; speed is bench/'s job
os.environ.setdefault("NNLAB_RAY", "0")  # searches run in-process; the Ray tests start their own clusters
os.environ.setdefault("NNLAB_ALLOWED_ROOTS", os.pathsep.join([str(_SESSION_TMP), "/tmp"]))
torch.set_num_threads(2)

from nnlab.base import ensure_demo  # noqa: E402
from nnlab.data.sets import ImageDataset, load_digits  # noqa: E402
from nnlab.workspace import Workspace  # noqa: E402


# Browser tests drive the running server in headless chromium: these files by name, any test of the shared
# server, and any test module that uses tests/browser.py (the server, chromium's path or flags).
# `make test-fast` leaves them out (-m "not browser and not slow").
BROWSER_FILES = ("test_diagnose_browser.py", "test_inside_browser.py")


# Tests over ~10 s alone in files this change may not edit (others were editing them): marked here by name until
# their files carry @pytest.mark.slow themselves.
SLOW_ELSEWHERE = {
    "tests/test_inside_pages.py::test_page_vgg16_rgb",  # its first page measures VGG-16: ~70 s on 2 cores
    "tests/test_datacache.py::test_killed_build_resumes_then_grows_and_lists_damaged_files",  # ~14 s
}


def _uses_browser_helpers(module: types.ModuleType | None) -> bool:
    for value in vars(module).values() if module is not None else ():
        if isinstance(value, types.ModuleType):
            if value.__name__ == "tests.browser":
                return True
        elif getattr(value, "__module__", None) == "tests.browser":
            return True
    return False


# Files that start Ray (a local instance or a cluster of their own): under pytest-xdist they are one piece of work,
# one file after another on one worker, so two Ray instances never start on this machine at once.
RAY_FILES = ("test_browser_ray.py", "test_distributed.py", "test_distributed_cluster.py", "test_distributed_local.py",
             "test_pieces_engine.py")


def pytest_collection_modifyitems(config, items) -> None:
    """Mark every browser test ``browser``; ``slow`` is set on each test that takes more than ~10 s alone (in its
    file, or in SLOW_ELSEWHERE).

    In a pytest-xdist worker (``make test`` runs ``-n 2 --dist loadfile``), files holding a browser or slow test come
    first: the longest pieces are handed out first, so no worker is left alone with a long file at the end (the order
    within a file is kept; every worker sorts alike, as xdist requires).
    """
    heavy: set[str] = set()
    for item in items:
        name = item.path.name
        if (name.startswith("test_browser_") or name in BROWSER_FILES or "shared_server" in item.fixturenames
                or _uses_browser_helpers(getattr(item, "module", None))):
            item.add_marker(pytest.mark.browser)
        if item.nodeid.split("[")[0] in SLOW_ELSEWHERE:
            item.add_marker(pytest.mark.slow)
        if item.get_closest_marker("browser") or item.get_closest_marker("slow"):
            heavy.add(name)
    if hasattr(config, "workerinput"):
        if heavy & set(RAY_FILES):  # one piece of work (see pytest_xdist_make_scheduler): heavy as a whole
            heavy |= set(RAY_FILES)
        order: dict[str, int] = {}
        for item in items:
            order.setdefault(item.path.name, len(order))
        items.sort(key=lambda i: (i.path.name not in heavy, order[i.path.name]))


def pytest_xdist_make_scheduler(config, log):  # noqa: ANN001, ANN201 - pytest-xdist's hook
    """``--dist loadfile``: a file's tests run on one worker (module fixtures are built once), and the Ray files are
    one piece of work together, so two Ray instances never start on this machine at once; pieces are handed out in
    the collection order above (``--no-loadscope-reorder``). Other ``--dist`` modes keep xdist's own scheduler."""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class FilesAndRay(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            return "ray" if Path(path).name in RAY_FILES else path

    return FilesAndRay(config, log)


@pytest.fixture(scope="session")
def digits() -> ImageDataset:
    """scikit-learn digits (1 347 train / 450 test, 1×8×8)."""
    return load_digits()


@pytest.fixture(scope="session")
def demo(digits: ImageDataset):
    """The demo CNN trained on digits in the suite's workspace: ``(model, record, history)``.

    Pages under AppTest find the same model, so nothing trains twice.
    """
    torch.manual_seed(0)
    return ensure_demo(digits, Workspace())


@pytest.fixture()
def tiny_data() -> ImageDataset:
    """A 3-class, 1×8×8 synthetic dataset (60 train / 30 test) with learnable structure."""
    g = np.random.default_rng(0)

    def make(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = np.arange(n) % 3
        x = g.integers(0, 40, size=(n, 1, 8, 8))
        for i, c in enumerate(y):
            x[i, 0, :, c * 2:(c * 2) + 3] += 180
        return torch.from_numpy(x.clip(0, 255).astype(np.uint8)), torch.from_numpy(y.astype(np.int64))

    xtr, ytr = make(60)
    xte, yte = make(30)
    return ImageDataset(id="tiny", name="tiny", source="synthetic", classes=["a", "b", "c"],
                        x_train=xtr, y_train=ytr, x_test=xte, y_test=yte)


@pytest.fixture(scope="session")
def _shared_server(tmp_path_factory):
    """The one server with default settings (the suite's workspace) that browser tests share: ``(url, process,
    log)``. Started once, on first use: a server start and its first page's imports cost many seconds each."""
    from tests.browser import server

    log = tmp_path_factory.mktemp("shared-server") / "server.log"
    with server(log=log) as url:
        yield url, server.proc, log


@pytest.fixture()
def shared_server(_shared_server) -> str:
    """The URL of the shared server. Each test opens its own browser sessions (Streamlit keeps each session's
    state apart), so no test sees another's widgets; jobs and the workspace are shared, as between users."""
    url, proc, log = _shared_server
    if proc.poll() is not None:
        pytest.fail(f"the shared server exited earlier (code {proc.returncode}): "
                    f"{log.read_text(errors='replace')[-2000:]}", pytrace=False)
    return url


def app_test(page: str | None = None, timeout: float = 120, settle: bool = True):
    """An AppTest of ``app.py`` switched to ``page`` (e.g. "pages/overview.py"), not yet run.

    ``settle``: a page that loads a fresh model shows the model's first accuracy and stops while the register-model
    job measures it (issue 22); in a browser its fragment runs the whole page again when the job ends. Here every
    run (``at.run()``, a widget's ``.run()``) then waits for that job and runs again, so a test sees the measured
    page; ``settle=False`` shows what the page shows meanwhile.
    """
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=timeout)
    if page:
        at.switch_page(page)
    if settle:
        raw = at._run

        def run(widget_state=None, timeout=None):  # noqa: ANN001, ANN202 - AppTest._run's own signature
            from nnlab.jobs import manager as jobs

            out = raw(widget_state, timeout)
            for _ in range(3):
                loading = jobs.manager().list("register-model", status=jobs.ACTIVE)
                if not loading:
                    break
                for job in loading:
                    job.wait(timeout or at.default_timeout)
                out = raw(at._tree.get_widget_states(), timeout)
            return out

        at._run = run
    return at


def forget_model(ws: Workspace, model_id: str, data_id: str) -> None:
    """The suite's workspace outlives tests (and under pytest-xdist a worker's tests run in any order): make a model
    fresh — no weights, record, stored test pass or register-model job."""
    import shutil

    from nnlab.jobs import manager as jobs
    from nnlab.jobs import refs
    from nnlab.jobs.kinds import eval_key

    shutil.rmtree(ws.model_dir(model_id), ignore_errors=True)
    refs.forget_model(model_id, ws.root)
    ws.result_path(eval_key(model_id, data_id, "test")).unlink(missing_ok=True)
    for job in jobs.manager().list("register-model"):
        if job.params.get("model_id") == model_id:
            jobs.manager().forget(job.key)


def small_preprocessing(at, arch: str, side: int = 16, channels: int = 1) -> None:
    """Preset the sidebar's preprocessing for a zoo architecture to a small square view (fast tests)."""
    values = {"pp_arch": arch, "pp_size": side, "pp_resize_mode": "squash", "pp_resize": side, "pp_crop": "center",
              "pp_interpolation": "bilinear", "pp_channels": channels, "pp_mean": ", ".join(["0.3"] * channels),
              "pp_std": ", ".join(["0.3"] * channels), "pp_convert": "pil", "pp_source": "test"}
    for k, v in values.items():
        at.session_state[k] = v
