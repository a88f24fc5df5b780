"""fp16 / bf16 variants: every floating tensor stored in half precision, executed in that dtype when possible.

The artifact is a safetensors file whose tensors are fp16 or bf16 (half the fp32 bytes). The returned
``model`` is a float32 module holding the half-rounded weights (so pipelines, histograms and the layer table
keep working); the ``runner`` executes a copy in the half dtype with PyTorch on the CPU. When a half kernel is
missing on this machine the runner computes in float32 on the half-rounded weights and says so in its
``runtime`` name and the record's ``extra["compute"]``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from compression.int8 import TorchRunner
from compression.registry import CompressContext, CompressResult, MethodConfig, check_choice, register, register_loader
from nnlab.i18n import N_, _
from nnlab.workspace import load_state_dict, save_state_dict

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def round_to(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """Round every floating parameter and buffer of ``model`` (in place) through ``dtype``, keeping float32."""
    with torch.no_grad():
        for t in [*model.parameters(), *model.buffers()]:
            if t.is_floating_point():
                t.copy_(t.to(dtype).float())
    return model


def half_runner(model: nn.Module, dtype: torch.dtype, input_shape: tuple[int, ...],
                threads: int | None = None, native: bool = True) -> tuple[TorchRunner, str]:
    """A runner computing in ``dtype`` when asked and this CPU has the kernels, otherwise in float32 on the
    half-rounded weights; and which compute dtype it uses."""
    name = "fp16" if dtype == torch.float16 else "bf16"
    half = copy.deepcopy(model).cpu().eval().to(dtype)
    try:
        if not native:
            raise NotImplementedError("fp32 compute requested")
        with torch.inference_mode():
            out = half(torch.zeros(2, *input_shape, dtype=dtype))
        if not torch.isfinite(out.float()).all():
            raise RuntimeError("non-finite outputs")
        return TorchRunner(half, threads, f"pytorch-eager-cpu-{name}", dtype=dtype), name
    except (RuntimeError, NotImplementedError):
        fp32 = round_to(copy.deepcopy(model).cpu().eval().float(), dtype)
        return TorchRunner(fp32, threads, f"pytorch-eager-cpu-{name}-weights-fp32-compute"), "fp32"


@dataclass(frozen=True)
class HalfPrecisionConfig(MethodConfig):
    """Store (and run) the model in fp16 or bf16."""

    method: ClassVar[str] = "half"
    label: ClassVar[str] = N_("Half precision (fp16 / bf16)")
    family: ClassVar[str] = "quantization"
    description: ClassVar[str] = (N_("Every float tensor stored in 16 bits: fp16 (10-bit mantissa, range ±65504) or "
                                  "bf16 (fp32's range, 7-bit mantissa); run in that dtype on the CPU."))

    dtype: str = field(default="fp16", metadata={"help": N_("Half-precision format"), "choices": tuple(DTYPES)})
    compute: str = field(default="half", metadata={"help": N_("Run in the half dtype, or in fp32 on the rounded "
                                                   "weights (faster on CPUs without half kernels)"),
                                                   "choices": ("half", "fp32")})
    threads: int = field(default=0, metadata={"help": N_("Runtime threads (0: PyTorch's current setting)"),
                                              "min": 0, "max": 256})

    def __post_init__(self) -> None:
        check_choice(self, "dtype", tuple(DTYPES))
        check_choice(self, "compute", ("half", "fp32"))
        if not isinstance(self.threads, int) or not 0 <= self.threads <= 256:
            raise ValueError(_("{method}: threads must be between 0 and 256, got {threads!r}").format(
                method=self.method, threads=self.threads))


@register(HalfPrecisionConfig)
def half_handler(model: nn.Module, cfg: HalfPrecisionConfig, ctx: CompressContext) -> CompressResult:
    """Round ``model`` (a copy) to fp16/bf16, write the half-precision safetensors, build the half runner."""
    dtype = DTYPES[cfg.dtype]
    model = model.cpu().eval()
    state = {k: (v.detach().to(dtype) if v.is_floating_point() else v.detach()).contiguous()
             for k, v in model.state_dict().items()}
    path = Path(ctx.workdir) / f"model.{cfg.dtype}.safetensors"
    save_state_dict(path, state)
    round_to(model, dtype)
    runner, compute = half_runner(model, dtype, ctx.data.input_shape, cfg.threads or None, cfg.compute == "half")
    rows = [{"name": n, "bits": 16, "dtype": cfg.dtype} for n, m in model.named_modules()
            if any(True for _ in m.parameters(recurse=False))]
    note = ("" if compute != "fp32" else "computed in fp32 on the rounded weights" +
            ("" if cfg.compute == "fp32" else f" (no {cfg.dtype} CPU kernel for some op)"))
    return CompressResult(model=model, layers=rows, artifact=path, artifact_format=f"safetensors-{cfg.dtype}",
                          runner=runner, extra={"dtype": cfg.dtype, "compute": compute, "note": note})


def _loader(name: str) -> Any:
    def load(path: Path, template: nn.Module, record: Any = None) -> CompressResult:
        state = load_state_dict(path)
        model = template.cpu().eval()
        model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
        shape = tuple((getattr(record, "extra", {}) or {}).get("input_shape") or ())
        cfg = dict(getattr(record, "config", {}) or {})
        cfg = dict((cfg.get("steps") or [cfg])[-1])
        native = cfg.get("compute", "half") == "half"
        runner = half_runner(model, DTYPES[name], shape, native=native)[0] if shape else None
        return CompressResult(model=model, runner=runner, artifact=Path(path), artifact_format=f"safetensors-{name}")
    return load


for _name in DTYPES:
    register_loader(f"safetensors-{_name}", _loader(_name))
