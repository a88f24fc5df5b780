"""Paths and process-wide settings, all overridable by environment variables."""

from __future__ import annotations

import os
from pathlib import Path

import torch


def _cache_folder(env: str, name: str) -> Path:
    """``$env`` when set, else ``<XDG cache or ~/.cache>/nnlab/<name>``."""
    value = os.environ.get(env)
    if value:
        return Path(value).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "nnlab" / name


def workspace_dir() -> Path:
    """The on-disk workspace: ``$NNLAB_WORKSPACE`` or ``~/.cache/nnlab/workspace``."""
    return _cache_folder("NNLAB_WORKSPACE", "workspace")


def data_dir() -> Path:
    """nnlab's own data folder: ``$NNLAB_DATA`` or ``~/.cache/nnlab/data``."""
    return _cache_folder("NNLAB_DATA", "data")


def debian_fashion_mnist_dir() -> Path:
    """Where Debian's ``dataset-fashion-mnist`` installs its IDX files (overridable for tests)."""
    return Path(os.environ.get("NNLAB_DEBIAN_FASHION_MNIST", "/usr/share/datasets/fashion-mnist"))


def allowed_roots() -> list[Path]:
    """Folders under which a user-typed dataset path may be read (``$NNLAB_ALLOWED_ROOTS``, ``:``-separated)."""
    env = os.environ.get("NNLAB_ALLOWED_ROOTS")
    roots = env.split(os.pathsep) if env else [str(data_dir()), str(Path.home()), "/usr/share/datasets"]
    return [Path(r).expanduser().resolve() for r in roots if r]


def device() -> torch.device:
    """CUDA when present and not disabled by ``NNLAB_DEVICE=cpu``, else the CPU."""
    want = os.environ.get("NNLAB_DEVICE", "").lower()
    if want == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device(want or "cuda")


def demo_epochs() -> int:
    """Epochs for the self-trained demo model (``$NNLAB_DEMO_EPOCHS``; tests set it low)."""
    return int(os.environ.get("NNLAB_DEMO_EPOCHS", "4"))


def apply_cli_args(argv: list[str]) -> None:
    """Honour ``--workspace DIR``, ``--data DIR`` and ``--ray-address ADDR`` given after ``streamlit run app.py --``.

    ``--ray-address`` attaches the job pieces to a Ray cluster ("local" starts a local Ray; see
    :mod:`nnlab.jobs.pieces`).
    """
    flags = {"--workspace": "NNLAB_WORKSPACE", "--data": "NNLAB_DATA", "--ray-address": "NNLAB_RAY_ADDRESS"}
    for i, arg in enumerate(argv):
        for flag, env in flags.items():
            if arg == flag and i + 1 < len(argv):
                os.environ[env] = argv[i + 1]
            elif arg.startswith(flag + "="):
                os.environ[env] = arg.split("=", 1)[1]
