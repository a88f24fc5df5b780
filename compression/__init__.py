"""Compression engine: pruning, quantization, clustering, distillation and pipelines (no UI here).

Importing the package registers every available method in :mod:`compression.registry`. Each method
module is imported on its own, so a missing or broken one does not hide the others; what failed is
listed in ``IMPORT_ERRORS``.
"""

from __future__ import annotations

import importlib

from compression.registry import (
    METHODS,
    CompressContext,
    CompressResult,
    MethodConfig,
    apply,
    apply_pipeline,
    config_from_dict,
    list_methods,
    register,
)

__all__ = ["METHODS", "CompressContext", "CompressResult", "MethodConfig", "apply", "apply_pipeline",
           "config_from_dict", "list_methods", "register", "IMPORT_ERRORS"]

IMPORT_ERRORS: dict[str, str] = {}

for _name in ("pruning", "clustering", "distillation", "quantization", "int8", "qat", "halfprec"):
    try:
        importlib.import_module(f"compression.{_name}")
    except Exception as _exc:  # noqa: BLE001 - a module not written yet, or broken: keep the others
        IMPORT_ERRORS[_name] = f"{type(_exc).__name__}: {_exc}"
