"""Eager PyTorch as a runner: the reference every other runtime is checked against, and the fallback."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from nnlab.threads import torch_threads


class TorchRunner:
    """A PyTorch module run in inference mode with its thread count fixed during each call.

    The thread count is set only through :func:`nnlab.threads.torch_threads`: a call holds no lock across the
    forward pass (it never waits for a measurement or a job piece), and outside a timed section it leaves the
    count alone while another thread's measurement runs, so it never changes a measurement's threads halfway.

    Args:
        module: The model (put in eval mode; pass a copy if it is shared and in training mode).
        threads: Intra-op threads (default: PyTorch's current count when the runner is built).
        runtime: Name recorded with latencies.
        dtype: Input dtype the module computes in (bf16/fp16 variants).
        device: Where the module runs ("cuda": inputs are copied there and each call waits for the GPU).
    """

    def __init__(self, module: nn.Module, threads: int | None = None, runtime: str = "pytorch-eager-fp32-cpu",
                 dtype: torch.dtype = torch.float32, device: str = "cpu") -> None:
        self.module = module.eval()
        self.threads = int(threads or torch.get_num_threads())
        self.runtime = runtime
        self.dtype = dtype
        self.device = torch.device(device)

    def predict_logits(self, x: np.ndarray | torch.Tensor) -> np.ndarray:
        """Logits for normalised ``N×C×H×W`` inputs."""
        t = x.detach() if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x, np.float32))
        with torch_threads(self.threads), torch.inference_mode():
            out = self.module(t.to(self.device, self.dtype)).float()
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            return out.cpu().numpy()
