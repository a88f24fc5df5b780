"""The packed artifact: every tensor stored in its smallest honest encoding, loadable into a working model.

Encodings (seed 001, Deep Compression's storage idea):

- ``dense``: raw bytes in the tensor's dtype.
- ``sparse``: the nonzero positions, as a bitmask (1 bit per element) or as run-length codes (2–8 bits
  per nonzero, Deep Compression's relative indices, whichever is smaller), plus the nonzero values (fp32).
- ``clustered``: k centroids (fp32) plus each element's centroid index bit-packed at ⌈log2 k⌉ bits;
  with the nonzero positions (as above) when zeros are kept out of the clusters (prune, then cluster).
- ``quantized``: integers bit-packed at ``bits`` plus scale and zero-point (per tensor or per channel
  along ``axis``); loads back as ``s·(q − z)`` (seed 000, Algorithm 3). For the quantization methods.

File layout: ``b"NNLP1\\n"``, a little-endian uint32 header length, a JSON header (tensors with their
encoding, shape, dtype and byte ranges, plus free-form ``meta``), then the blobs.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from nnlab.workspace import atomic_write_bytes

MAGIC = b"NNLP1\n"
FORMAT = "nnlab-packed"


@dataclass
class QuantSpec:
    """An integer-quantized tensor: ``q`` (int tensor), ``scale`` and ``zero_point`` (scalars or per channel).

    Args:
        q: Integer values, the tensor's shape, within ``[qmin, qmin + 2**bits - 1]``.
        scale: Scale ``s`` (0-d or 1-d along ``axis``).
        zero_point: Zero-point ``z`` (same shape as ``scale``).
        bits: Bit width (1–16).
        axis: Channel axis of per-channel parameters (None: per tensor).
        qmin: Smallest representable integer (0 for unsigned, −2^(b−1) for signed).
    """

    q: torch.Tensor
    scale: torch.Tensor
    zero_point: torch.Tensor
    bits: int
    axis: int | None = None
    qmin: int = 0

    def dequantize(self) -> torch.Tensor:
        s, z = self.scale.float(), self.zero_point.float()
        if self.axis is not None and s.ndim == 1:
            view = [1] * self.q.ndim
            view[self.axis] = -1
            s, z = s.view(view), z.view(view)
        return s * (self.q.float() - z)


# --- bit packing ----------------------------------------------------------------------------------------

def pack_bits(values: np.ndarray, bits: int) -> bytes:
    """Pack non-negative integers ``< 2**bits`` into a little-endian bit stream."""
    v = np.asarray(values, dtype=np.uint32).reshape(-1)
    if bits < 1 or bits > 32:
        raise ValueError(f"bits must be 1–32, got {bits}")
    if v.size and int(v.max()) >= (1 << bits):
        raise ValueError(f"value {int(v.max())} does not fit in {bits} bits")
    planes = ((v[:, None] >> np.arange(bits, dtype=np.uint32)) & 1).astype(np.uint8)
    return np.packbits(planes.reshape(-1), bitorder="little").tobytes()


def unpack_bits(data: bytes, bits: int, count: int) -> np.ndarray:
    """Inverse of :func:`pack_bits`: ``count`` integers of ``bits`` bits each."""
    flat = np.unpackbits(np.frombuffer(data, dtype=np.uint8), bitorder="little", count=count * bits)
    planes = flat.reshape(count, bits).astype(np.uint32)
    return (planes << np.arange(bits, dtype=np.uint32)).sum(axis=1).astype(np.uint32)


def index_bits(k: int) -> int:
    """Bits per index for ``k`` centroids (at least 1)."""
    return max(1, math.ceil(math.log2(max(2, k))))


# --- positions of nonzeros: a bitmask, or run lengths (Deep Compression's relative indices) ------------

def encode_gaps(mask: np.ndarray, bits: int) -> np.ndarray:
    """Relative positions of the True entries as ``bits``-bit codes.

    Code ``g < M`` (``M = 2**bits − 1``) means "skip g zeros, then one element"; code ``M`` means "skip M
    zeros" (a filler for gaps longer than the code can hold).
    """
    pos = np.flatnonzero(mask)
    gaps = np.diff(np.r_[-1, pos]) - 1
    big = 2 ** bits - 1
    n_fill = gaps // big
    codes = np.full(int(n_fill.sum()) + len(gaps), big, dtype=np.uint32)
    ends = np.cumsum(n_fill + 1) - 1  # each gap's own code comes after its fillers
    codes[ends] = gaps % big
    return codes


def decode_gaps(codes: np.ndarray, bits: int, numel: int) -> np.ndarray:
    """Boolean mask of ``numel`` entries from :func:`encode_gaps` codes."""
    big = 2 ** bits - 1
    codes = np.asarray(codes, dtype=np.int64)
    filler = codes == big
    advance = np.where(filler, big, codes + 1)
    pos = np.cumsum(advance)[~filler] - 1
    mask = np.zeros(numel, bool)
    mask[pos] = True
    return mask


def encode_positions(mask: np.ndarray) -> tuple[dict, bytes]:
    """The smaller of a 1-bit-per-element bitmask and 2–8-bit run-length codes."""
    best = ({"positions": "bitmask"}, np.packbits(mask, bitorder="little").tobytes())
    if mask.size and mask.mean() < 0.5:
        for bits in range(2, 9):
            codes = encode_gaps(mask, bits)
            if (len(codes) * bits + 7) // 8 < len(best[1]):
                best = ({"positions": "gaps", "gap_bits": bits, "codes": int(len(codes))},
                        pack_bits(codes, bits))
    return best


def decode_positions(head: dict, blob: bytes, numel: int) -> np.ndarray:
    if head.get("positions", "bitmask") == "gaps":
        return decode_gaps(unpack_bits(blob, head["gap_bits"], head["codes"]), head["gap_bits"], numel)
    return np.unpackbits(np.frombuffer(blob, np.uint8), bitorder="little", count=numel).astype(bool)


# --- encoders ---------------------------------------------------------------------------------------

def _encode_dense(t: torch.Tensor) -> tuple[dict, list[bytes]]:
    arr = t.detach().cpu().contiguous()
    raw = arr.reshape(-1).view(torch.uint8).numpy().tobytes() if arr.numel() else b""
    return {"encoding": "dense"}, [raw]


def _encode_sparse(t: torch.Tensor) -> tuple[dict, list[bytes]]:
    flat = t.detach().cpu().float().reshape(-1).numpy()
    mask = flat != 0
    head, positions = encode_positions(mask)
    return {"encoding": "sparse", "nnz": int(mask.sum()), **head}, [positions, flat[mask].astype(np.float32).tobytes()]


def _encode_clustered(t: torch.Tensor, keep_zero_mask: bool) -> tuple[dict, list[bytes]]:
    flat = t.detach().cpu().float().reshape(-1).numpy()
    mask = flat != 0 if keep_zero_mask else np.ones(flat.shape, bool)
    vals = flat[mask]
    centroids, idx = np.unique(vals, return_inverse=True)
    bits = index_bits(len(centroids))
    head = {"encoding": "clustered", "k": int(len(centroids)), "bits": bits, "masked": bool(keep_zero_mask),
            "count": int(vals.size)}
    blobs = [centroids.astype(np.float32).tobytes(), pack_bits(idx, bits)]
    if keep_zero_mask:
        pos_head, positions = encode_positions(mask)
        head.update(pos_head)
        blobs.append(positions)
    return head, blobs


def _encode_quantized(spec: QuantSpec) -> tuple[dict, list[bytes]]:
    q = spec.q.detach().cpu().to(torch.int64).reshape(-1).numpy()
    shifted = q - spec.qmin
    if shifted.size and (shifted.min() < 0 or shifted.max() >= (1 << spec.bits)):
        raise ValueError(f"quantized values outside [{spec.qmin}, {spec.qmin + (1 << spec.bits) - 1}]")
    head = {"encoding": "quantized", "bits": int(spec.bits), "axis": spec.axis, "qmin": int(spec.qmin),
            "params_shape": list(spec.scale.shape)}
    return head, [pack_bits(shifted, spec.bits), spec.scale.detach().cpu().float().numpy().tobytes(),
                  spec.zero_point.detach().cpu().float().numpy().tobytes()]


def choose_encoding(t: torch.Tensor) -> tuple[dict, list[bytes]]:
    """The smallest of dense / sparse / clustered for a floating tensor (dense for the rest)."""
    candidates = [_encode_dense(t)]
    if t.is_floating_point() and t.numel() >= 16:
        flat = t.detach().reshape(-1)
        nz = flat != 0
        if int(nz.sum()) < flat.numel():
            candidates.append(_encode_sparse(t))
        if torch.unique(flat).numel() <= 256:
            candidates.append(_encode_clustered(t, keep_zero_mask=False))
        if int(nz.sum()) < flat.numel() and torch.unique(flat[nz]).numel() <= 256:
            candidates.append(_encode_clustered(t, keep_zero_mask=True))
    return min(candidates, key=lambda c: sum(len(b) for b in c[1]))


# --- file -----------------------------------------------------------------------------------------------

def pack_state(state: dict[str, torch.Tensor], quantized: dict[str, QuantSpec] | None = None,
               meta: dict | None = None) -> tuple[bytes, list[dict]]:
    """Encode a state dict; returns the file bytes and one row per tensor (name, encoding, bytes)."""
    quantized = quantized or {}
    entries: list[dict] = []
    blobs: list[bytes] = []
    offset = 0
    for name, t in state.items():
        head, parts = _encode_quantized(quantized[name]) if name in quantized else choose_encoding(t)
        ranges = []
        for p in parts:
            ranges.append([offset, len(p)])
            blobs.append(p)
            offset += len(p)
        entries.append({"name": name, "shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch."),
                        "blobs": ranges, **head})
    header = json.dumps({"tensors": entries, "meta": meta or {}}, separators=(",", ":")).encode()
    data = MAGIC + struct.pack("<I", len(header)) + header + b"".join(blobs)
    rows = [{"name": e["name"], "encoding": e["encoding"], "bytes": sum(n for _, n in e["blobs"])} for e in entries]
    return data, rows


def save_packed(path: str | Path, state: dict[str, torch.Tensor], quantized: dict[str, QuantSpec] | None = None,
                meta: dict | None = None) -> list[dict]:
    """Write the packed file atomically; returns per-tensor rows (name, encoding, bytes)."""
    data, rows = pack_state(state, quantized, meta)
    atomic_write_bytes(Path(path), data)
    return rows


def unpack_state(data: bytes) -> tuple[dict[str, torch.Tensor], dict]:
    """Decode packed bytes to ``(state_dict, meta)``; quantized tensors come back dequantized."""
    if not data.startswith(MAGIC):
        raise ValueError("not an nnlab packed file (bad magic)")
    (hlen,) = struct.unpack("<I", data[len(MAGIC):len(MAGIC) + 4])
    start = len(MAGIC) + 4
    header = json.loads(data[start:start + hlen])
    body = memoryview(data)[start + hlen:]
    state: dict[str, torch.Tensor] = {}
    for e in header["tensors"]:
        parts = [bytes(body[o:o + n]) for o, n in e["blobs"]]
        state[e["name"]] = _decode(e, parts)
    return state, header.get("meta", {})


def _decode(e: dict[str, Any], parts: list[bytes]) -> torch.Tensor:
    shape = tuple(e["shape"])
    dtype = getattr(torch, e["dtype"])
    numel = int(np.prod(shape)) if shape else 1
    enc = e["encoding"]
    if enc == "dense":
        return torch.frombuffer(bytearray(parts[0]), dtype=torch.uint8).view(dtype).reshape(shape).clone() \
            if numel else torch.zeros(shape, dtype=dtype)
    if enc == "sparse":
        mask = decode_positions(e, parts[0], numel)
        out = np.zeros(numel, np.float32)
        out[mask] = np.frombuffer(parts[1], np.float32)
    elif enc == "clustered":
        centroids = np.frombuffer(parts[0], np.float32)
        idx = unpack_bits(parts[1], e["bits"], e["count"])
        out = np.zeros(numel, np.float32)
        if e["masked"]:
            out[decode_positions(e, parts[2], numel)] = centroids[idx]
        else:
            out[:] = centroids[idx]
    elif enc == "quantized":
        q = unpack_bits(parts[0], e["bits"], numel).astype(np.int64) + e["qmin"]
        pshape = tuple(e["params_shape"])
        spec = QuantSpec(torch.from_numpy(q.reshape(shape)),
                         torch.from_numpy(np.frombuffer(parts[1], np.float32).reshape(pshape).copy()),
                         torch.from_numpy(np.frombuffer(parts[2], np.float32).reshape(pshape).copy()),
                         e["bits"], e["axis"], e["qmin"])
        return spec.dequantize().to(dtype)
    else:
        raise ValueError(f"unknown encoding {enc!r} for {e['name']}")
    return torch.from_numpy(out.reshape(shape)).to(dtype)


def load_packed(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Read a packed file: ``(state_dict, meta)``."""
    return unpack_state(Path(path).read_bytes())


# --- rebuilding a model -----------------------------------------------------------------------------

def fit_modules_to_state(model: nn.Module, state: dict[str, torch.Tensor]) -> nn.Module:
    """Resize Conv/Linear/BatchNorm modules of ``model`` (in place) to the shapes in ``state``.

    Channel pruning shrinks tensors; rebuilding the architecture and resizing its layers to the stored
    shapes gives a model that loads the pruned weights. Depthwise convolutions keep ``groups == channels``.
    """
    for name, mod in model.named_modules():
        w = state.get(f"{name}.weight" if name else "weight")
        if isinstance(mod, nn.modules.conv._ConvNd) and w is not None:
            depthwise = mod.groups > 1 and mod.groups == mod.in_channels
            out_c = w.shape[0]
            groups = out_c if depthwise else mod.groups
            mod.out_channels, mod.in_channels, mod.groups = out_c, w.shape[1] * groups, groups
            _resize(mod, name, state)
        elif isinstance(mod, nn.Linear) and w is not None:
            mod.out_features, mod.in_features = w.shape
            _resize(mod, name, state)
        elif isinstance(mod, nn.modules.batchnorm._BatchNorm):
            ref = state.get(f"{name}.running_mean", w)
            if ref is not None:
                mod.num_features = ref.shape[0]
                _resize(mod, name, state)
    return model


def _resize(mod: nn.Module, name: str, state: dict[str, torch.Tensor]) -> None:
    prefix = f"{name}." if name else ""
    for pname, p in list(mod.named_parameters(recurse=False)):
        t = state.get(prefix + pname)
        if t is not None and tuple(t.shape) != tuple(p.shape):
            setattr(mod, pname, nn.Parameter(torch.empty(t.shape, dtype=p.dtype), requires_grad=p.requires_grad))
    for bname, b in list(mod.named_buffers(recurse=False)):
        t = state.get(prefix + bname)
        if b is not None and t is not None and tuple(t.shape) != tuple(b.shape):
            mod.register_buffer(bname, torch.empty(t.shape, dtype=b.dtype))
