"""One record of a result: a base model or a compressed variant, measured the same way, as JSON."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from nnlab.i18n import _


@dataclass
class Record:
    """Everything nnlab measured about one model.

    Attributes:
        id: Stable identifier (folder name in the workspace).
        name: Display name (users may rename variants).
        method: "base" or a compression method key (or "a+b" for a pipeline).
        config: The method's configuration (a pipeline: ``{"steps": [...]}``).
        parent: The id of the model this one was made from ("" for a base model).
        arch: Architecture key.
        dataset: Dataset id.
        accuracy: Top-1 accuracy on the test split.
        per_class_accuracy: Test accuracy per class.
        train_accuracy: Top-1 accuracy on (a sample of) the train split, when measured.
        size_bytes: Bytes of the artifact on disk.
        size_gzip_bytes: Bytes of the artifact gzipped.
        size_dense_bytes: Bytes of the same weights stored dense in fp32 (for comparison).
        latency: Batch size (as a string key) → latency dict (median_ms, p90_ms, threads, runtime, precision,
            harness …) in the runtime that executes the model (a base model: its fastest fp32 runtime).
        latencies: A base model: runtime → batch → latency dict, the fp32 model in every runtime available,
            timed in one interleaved run (:func:`nnlab.measure.fp32_latencies`).
        baseline: A variant: the base as fp32 in the variant's runtime, timed in the same interleaved run as
            the variant: ``{"runtime", "latency": {batch: dict}}`` (:func:`nnlab.measure.against_base`).
        macs: Multiply-accumulates for one input.
        params: Parameter count.
        nonzero_params: Nonzero parameter count.
        layers: Per-layer details (sparsity, bit-width, clusters …).
        artifact: Path of the artifact, relative to the workspace.
        artifact_format: "safetensors", "onnx-int8", "nnlab-packed" …
        created: Unix time of creation.
        status: "ok", or "failed: …".
        extra: Anything method-specific (history, notes).
    """

    id: str
    name: str
    method: str
    config: dict = field(default_factory=dict)
    parent: str = ""
    arch: str = ""
    dataset: str = ""
    accuracy: float = float("nan")
    per_class_accuracy: list[float] = field(default_factory=list)
    train_accuracy: float = float("nan")
    size_bytes: int = 0
    size_gzip_bytes: int = 0
    size_dense_bytes: int = 0
    latency: dict[str, dict] = field(default_factory=dict)
    latencies: dict[str, dict[str, dict]] = field(default_factory=dict)
    baseline: dict = field(default_factory=dict)
    macs: int = 0
    params: int = 0
    nonzero_params: int = 0
    layers: list[dict] = field(default_factory=list)
    artifact: str = ""
    artifact_format: str = ""
    created: float = 0.0
    status: str = "ok"
    extra: dict = field(default_factory=dict)

    def latency_ms(self, batch: int = 1) -> float:
        """Median latency at ``batch`` in ms (NaN when not measured)."""
        lat = self.latency.get(str(batch))
        return float(lat["median_ms"]) if lat else float("nan")

    @property
    def sparsity(self) -> float:
        return 1.0 - self.nonzero_params / self.params if self.params else 0.0

    def to_dict(self) -> dict[str, Any]:
        return _clean(asdict(self))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True, allow_nan=False)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Record:
        names = {f.name for f in fields(cls)}
        missing = {"id", "name", "method"} - set(d)
        if missing:
            raise ValueError(_("record lacks {value}").format(value=', '.join(sorted(missing))))
        kwargs = {k: _restore(v) for k, v in d.items() if k in names}
        return cls(**kwargs)

    @classmethod
    def from_json(cls, text: str) -> Record:
        return cls.from_dict(json.loads(text))


def _clean(obj: Any) -> Any:
    """NaN/Inf are not JSON: store them as the strings "nan"/"inf"/"-inf"."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return "nan" if math.isnan(obj) else ("inf" if obj > 0 else "-inf")
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item):  # numpy / torch scalars
        return _clean(obj.item())
    return obj


def _restore(obj: Any) -> Any:
    if isinstance(obj, str) and obj in ("nan", "inf", "-inf"):
        return float(obj)
    if isinstance(obj, dict):
        return {k: _restore(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_restore(v) for v in obj]
    return obj
