"""Runtimes: one Runner protocol over eager PyTorch, ONNX Runtime and OpenVINO, and the fastest one by measurement.

- :mod:`nnlab.runtimes.base` — the protocol, fidelity against PyTorch, the files of an artifact.
- :mod:`nnlab.runtimes.candidates` — the fp32 runners of a model in every runtime, the fidelity check.
- :mod:`nnlab.runtimes.torch_eager` — :class:`TorchRunner`.
- :mod:`nnlab.runtimes.onnx` — ONNX export, ONNX Runtime sessions and int8 quantization.
- :mod:`nnlab.runtimes.openvino` — OpenVINO conversion and sessions, NNCF int8, IR files.
- :mod:`nnlab.runtimes.select` — the fastest runtime per model, cached; :func:`fastest_fp32_runner`.

torchao's pt2e flow (``X86InductorQuantizer`` + ``torch.compile``) is not a backend here: with the pinned
torch 2.14.1 and torchao 0.18.0 its lowering fails on this machine. ``torch.export`` in its default
(non-strict) mode gives a graph the quantizer refuses ("Input partition has more than one output node");
in strict mode ``prepare_pt2e``/``convert_pt2e`` work, but ``torch.compile`` with freezing (needed to lower
the int8 patterns to oneDNN kernels) fails in inductor's fake-tensor pass because torchao's weight-prepack
pass inserts ``onednn.qconv_prepack``, which has no meta kernel in this torch; without freezing the
compiled model took 27 s to compile and ran no faster than eager fp32 (54 vs 52 ms, ResNet-18 at 224,
1 thread). ``bench/bench_runtimes.py`` tries it as a peer and reports the failure.

Timing and sizes are :mod:`nnlab.measure`'s (the one measurement path); this package imports nothing, so
``from nnlab.runtimes import openvino`` loads only what it names.
"""
