"""One registry of compression methods: a frozen config dataclass per method and a handler for it.

A method is declared in two parts (torchao's config → handler table)::

    @dataclass(frozen=True)
    class PruneConfig(MethodConfig):
        method: ClassVar[str] = "prune-unstructured"
        label: ClassVar[str] = N_("Magnitude pruning (unstructured)")
        sparsity: float = field(default=0.5, metadata={"help": N_("Fraction of weights set to zero")})

        def __post_init__(self) -> None:
            check_range(self, "sparsity", 0.0, 0.99)

    @register(PruneConfig)
    def prune(model, cfg, ctx) -> CompressResult: ...

:func:`apply` always deep-copies the model first, so a handler may edit its argument freely and the
caller's model (possibly shared by every browser session) never changes. Pipelines are lists of configs
applied in order (:func:`apply_pipeline`).
"""

from __future__ import annotations

import copy
import dataclasses
import shutil
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from nnlab.data.sets import ImageDataset
from nnlab.errors import Cancelled
from nnlab.i18n import N_, _
from nnlab.runtimes.base import Runner  # noqa: F401 - the one Runner protocol; handlers' runners follow it

ProgressFn = Callable[[str, float], None]
CancelFn = Callable[[], bool]


# --- configs ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class FieldInfo:
    """What the UI and the CLI need to know about one config field."""

    name: str
    type: str  # "float", "int", "bool", "str"
    default: Any
    help: str
    formula: str = ""
    choices: tuple = ()
    min: float | None = None
    max: float | None = None


@dataclass(frozen=True)
class MethodConfig:
    """Base of every method's config: a frozen dataclass that validates itself in ``__post_init__``.

    Class variables:
        method: Registry key (also the ``"method"`` entry of :meth:`to_dict`).
        label: Human-readable name for menus (marked with ``N_``; shown through :func:`method_label`).
        family: "pruning", "quantization", "clustering", "distillation" … (groups menus).
        description: One or two sentences for the UI and ``--help`` (``N_``; :func:`method_description`).

    Field metadata: ``help`` (one line, required, marked with ``N_``; :meth:`fields_info` translates it), and
    optionally ``formula`` (LaTeX-ish text),
    ``choices`` (allowed values), ``min`` / ``max`` (bounds for sliders).
    """

    method: ClassVar[str] = ""
    label: ClassVar[str] = ""
    family: ClassVar[str] = ""
    description: ClassVar[str] = ""

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict with a ``"method"`` key (tuples become lists)."""
        out: dict[str, Any] = {"method": self.method}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            out[f.name] = list(v) if isinstance(v, tuple) else v
        return out

    @classmethod
    def fields_info(cls) -> list[FieldInfo]:
        """Describe each field (name, type, default, help, formula, choices, bounds)."""
        hints = typing.get_type_hints(cls)
        out = []
        for f in dataclasses.fields(cls):
            md = f.metadata
            default = f.default if f.default is not dataclasses.MISSING else (
                f.default_factory() if f.default_factory is not dataclasses.MISSING else None)  # type: ignore[misc]
            out.append(FieldInfo(f.name, _type_name(hints.get(f.name, str)), default, _(md.get("help", "")),
                                 md.get("formula", ""), tuple(md.get("choices", ())), md.get("min"), md.get("max")))
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MethodConfig:
        """Build from a dict (``"method"`` optional); unknown keys are an error, values are coerced."""
        d = dict(d)
        key = d.pop("method", cls.method)
        if key != cls.method:
            raise ValueError(_("config for {key} given to {method}").format(key=repr(key), method=repr(cls.method)))
        info = {fi.name: fi for fi in cls.fields_info()}
        unknown = [k for k in d if k not in info]
        if unknown:
            raise ValueError(_("{method}: unknown parameter {name}; known: {known}").format(
                method=cls.method, name=repr(unknown[0]), known=", ".join(info) or _("(none)")))
        return cls(**{k: coerce(v, info[k].type, k) for k, v in d.items()})

    def replace(self, **changes: Any) -> MethodConfig:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)


# Families group the menus; their shown names (translated where shown, :func:`family_label`).
FAMILIES: dict[str, str] = {"pruning": N_("pruning"), "quantization": N_("quantization"),
                            "clustering": N_("clustering"), "distillation": N_("distillation")}


def family_label(family: str) -> str:
    """The family's name in the current language (the key itself for an unknown family)."""
    return _(FAMILIES[family]) if family in FAMILIES else family


def method_label(cls: type[MethodConfig]) -> str:
    """The method's menu name in the current language (``label`` is marked with ``N_``)."""
    return _(cls.label) if cls.label else cls.method


def method_description(cls: type[MethodConfig]) -> str:
    """The method's description in the current language ("" when it has none)."""
    return _(cls.description) if cls.description else ""


def _type_name(t: Any) -> str:
    origin = typing.get_origin(t)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(t) if a is not type(None)]
        t = args[0] if args else str
        origin = typing.get_origin(t)
    if origin in (tuple, list) or t in (tuple, list):
        return "list"
    return {float: "float", int: "int", bool: "bool", str: "str"}.get(t, "str")


def coerce(value: Any, type_name: str, name: str = "value") -> Any:
    """Convert ``value`` (possibly a CLI string) to ``type_name``; a clear ``ValueError`` otherwise."""
    try:
        if type_name == "bool":
            if isinstance(value, str):
                low = value.strip().lower()
                if low in ("1", "true", "yes", "on"):
                    return True
                if low in ("0", "false", "no", "off"):
                    return False
                raise ValueError
            return bool(value)
        if type_name == "int":
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        if type_name == "float":
            return float(value)
        if type_name == "list":
            if isinstance(value, str):
                return tuple(v.strip() for v in value.split(",") if v.strip())
            return tuple(value)
        return str(value)
    except (TypeError, ValueError):
        raise ValueError(_("{name}: cannot read {value} as {type}").format(name=name, value=repr(value),
                                                                            type=type_name)) from None


def check_range(cfg: MethodConfig, name: str, lo: float, hi: float) -> None:
    """Raise ``ValueError`` unless ``lo <= cfg.name <= hi`` (helper for ``__post_init__``)."""
    v = getattr(cfg, name)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not (lo <= v <= hi) or v != v:
        raise ValueError(_("{method}: {name} must be between {lo} and {hi}, got {value}").format(
            method=cfg.method, name=name, lo=format(lo, "g"), hi=format(hi, "g"), value=repr(v)))


def check_choice(cfg: MethodConfig, name: str, choices: tuple) -> None:
    """Raise ``ValueError`` unless ``cfg.name`` is one of ``choices``."""
    v = getattr(cfg, name)
    if v not in choices:
        raise ValueError(_("{method}: {name} must be one of {choices}, got {value}").format(
            method=cfg.method, name=name, choices=", ".join(map(str, choices)), value=repr(v)))


# --- context and result ----------------------------------------------------------------------------

@dataclass
class CompressContext:
    """What a handler may use besides the model and its config.

    Attributes:
        data: The dataset (calibration, fine-tuning, evaluation).
        progress: ``progress(message, fraction 0–1)``, or None.
        cancel: Returns True when the user asked to stop; handlers call :meth:`check_cancel`.
        workdir: Folder where the handler writes its artifact (exists when the handler runs).
        device: Where to train / calibrate (the returned model is moved to the CPU by the caller).
        arch: Architecture key of the input model ("" when unknown).
        seed: Seed for anything random.
    """

    data: ImageDataset
    progress: ProgressFn | None = None
    cancel: CancelFn | None = None
    workdir: Path = field(default_factory=lambda: Path("."))
    device: torch.device | str = "cpu"
    arch: str = ""
    seed: int = 0

    def report(self, message: str, fraction: float) -> None:
        """Send progress (fraction clipped to 0–1)."""
        if self.progress is not None:
            self.progress(message, float(min(1.0, max(0.0, fraction))))

    def check_cancel(self) -> None:
        """Raise :class:`nnlab.train.Cancelled` when the user asked to stop."""
        if self.cancel is not None and self.cancel():
            raise Cancelled(_("cancelled by the user"))

    def sub(self, start: float, end: float, workdir: Path | None = None) -> CompressContext:
        """A context whose progress maps 0–1 onto ``start``–``end`` of this one (pipeline steps)."""
        parent = self.progress

        def prog(msg: str, frac: float) -> None:
            if parent is not None:
                parent(msg, start + (end - start) * float(min(1.0, max(0.0, frac))))

        return dataclasses.replace(self, progress=prog if parent else None, workdir=workdir or self.workdir)


@dataclass
class CompressResult:
    """What a handler returns.

    Attributes:
        model: A new ``nn.Module`` usable for evaluation in PyTorch (possibly a wrapper).
        layers: Per-layer dicts: ``name`` plus any of ``sparsity``, ``bits``, ``clusters``, ``shape`` …
        artifact: File the handler wrote in ``ctx.workdir`` (None: the caller writes the default artifact,
            dense safetensors or the packed format).
        artifact_format: Format of ``artifact`` ("onnx-int8", "nnlab-packed", "safetensors" …).
        runner: Real-runtime executor used for accuracy and latency when present.
        extra: Method-specific facts (history, notes) stored in the record's ``extra``.
        arch: Architecture key of ``model`` when it differs from the input's (distillation's student).
    """

    model: nn.Module
    layers: list[dict] = field(default_factory=list)
    artifact: Path | None = None
    artifact_format: str = ""
    runner: Runner | None = None
    extra: dict = field(default_factory=dict)
    arch: str = ""


Handler = Callable[[nn.Module, MethodConfig, CompressContext], CompressResult]
METHODS: dict[str, type[MethodConfig]] = {}
HANDLERS: dict[type[MethodConfig], Handler] = {}

# Artifact loaders for formats other than safetensors / nnlab-packed (e.g. "onnx-int8"):
# ``loader(path, template_model, record) -> CompressResult`` (model and/or runner filled in).
ArtifactLoader = Callable[[Path, nn.Module, Any], CompressResult]
ARTIFACT_LOADERS: dict[str, ArtifactLoader] = {}


def register(config_cls: type[MethodConfig]) -> Callable[[Handler], Handler]:
    """Decorator registering ``handler(model, cfg, ctx) -> CompressResult`` for ``config_cls``."""
    if not (isinstance(config_cls, type) and issubclass(config_cls, MethodConfig)):
        raise TypeError("register() takes a MethodConfig subclass")
    key = config_cls.method
    if not key:
        raise ValueError(f"{config_cls.__name__} has no `method` key")
    if key in METHODS and METHODS[key].__qualname__ != config_cls.__qualname__:
        raise ValueError(f"method {key!r} is already registered by {METHODS[key].__name__}")

    def deco(fn: Handler) -> Handler:
        METHODS[key] = config_cls
        HANDLERS[config_cls] = fn
        return fn

    return deco


def register_loader(artifact_format: str, loader: ArtifactLoader) -> None:
    """Teach :func:`compression.variant.load_variant_model` to read another artifact format."""
    ARTIFACT_LOADERS[artifact_format] = loader


def list_methods(family: str | None = None) -> list[type[MethodConfig]]:
    """Registered config classes (in registration order), optionally of one family."""
    return [c for c in METHODS.values() if family is None or c.family == family]


def get_method(key: str) -> type[MethodConfig]:
    if key not in METHODS:
        raise ValueError(_("unknown method {key}; available: {available}").format(
            key=repr(key), available=", ".join(METHODS) or _("(none)")))
    return METHODS[key]


def config_from_dict(d: dict[str, Any]) -> MethodConfig:
    """Rebuild a config from :meth:`MethodConfig.to_dict` output (needs the ``"method"`` key)."""
    if not isinstance(d, dict) or "method" not in d:
        raise ValueError(_("a method config needs a 'method' key"))
    return get_method(str(d["method"])).from_dict(d)


def config_from_strings(method: str, assignments: list[str]) -> MethodConfig:
    """Build a config from ``["key=value", ...]`` strings (the CLI's ``--set``)."""
    d: dict[str, Any] = {"method": method}
    for a in assignments:
        if "=" not in a:
            raise ValueError(_("expected key=value, got {value}").format(value=repr(a)))
        k, v = a.split("=", 1)
        d[k.strip()] = v.strip()
    return config_from_dict(d)


def apply(model: nn.Module, cfg: MethodConfig, ctx: CompressContext) -> CompressResult:
    """Apply one method to a deep copy of ``model``; the input model is never changed."""
    handler = HANDLERS.get(type(cfg))
    if handler is None:
        raise ValueError(_("no handler registered for {name}").format(name=type(cfg).__name__))
    from nnlab.models.archinfo import check_method

    check_method(model, cfg)  # e.g. channel pruning through attention: a clear reason, before any work
    ctx.workdir.mkdir(parents=True, exist_ok=True)
    ctx.check_cancel()
    work = copy.deepcopy(model)
    result = handler(work, cfg, ctx)
    result.model = result.model.eval()
    return result


def apply_pipeline(model: nn.Module, configs: list[MethodConfig], ctx: CompressContext) -> CompressResult:
    """Apply configs in order, each to the previous step's model.

    Intermediate steps write into ``workdir/.step<i>`` (removed afterwards); the last step writes into
    ``ctx.workdir``. Per-layer details are merged by layer name (later steps add or override keys);
    ``extra["steps"]`` holds each step's method, config and extra.
    """
    if not configs:
        raise ValueError(_("a pipeline needs at least one method"))
    n = len(configs)
    current = model
    layers: dict[str, dict] = {}
    steps: list[dict] = []
    result: CompressResult | None = None
    arch = ""
    scratch: list[Path] = []
    try:
        for i, cfg in enumerate(configs):
            last = i == n - 1
            wd = ctx.workdir if last else ctx.workdir / f".step{i}"
            if not last:
                scratch.append(wd)
            step_ctx = ctx.sub(i / n, (i + 1) / n, wd)
            if arch:
                step_ctx.arch = arch
            result = apply(current, cfg, step_ctx)
            arch = result.arch or arch
            for row in result.layers:
                layers.setdefault(row["name"], {}).update(row)
            steps.append({"method": cfg.method, "config": cfg.to_dict(), "extra": result.extra})
            current = result.model
    finally:
        for wd in scratch:
            shutil.rmtree(wd, ignore_errors=True)
    assert result is not None
    if n == 1:
        result.layers = list(layers.values())
        return result
    return CompressResult(model=result.model, layers=list(layers.values()), artifact=result.artifact,
                          artifact_format=result.artifact_format, runner=result.runner,
                          extra={"steps": steps}, arch=arch)
