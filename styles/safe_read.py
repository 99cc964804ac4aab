"""Read a safetensors file without trusting it: sniff pickles, check the header and the size.

Nothing here ever unpickles. The checks run on the raw bytes before safetensors maps the file.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open

from styles.errors import (
    EmptyFile,
    FileTooLarge,
    HeaderTooLarge,
    NonFiniteTensor,
    NotSafetensors,
    PickleRefused,
    TruncatedFile,
)

DTYPE_BYTES = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1,
    "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1, "U16": 2, "U32": 4, "U64": 8,
}


@dataclass(frozen=True)
class ReadLimits:
    """Server-side limits on what is read; the defaults fit every common SD/SDXL LoRA."""

    max_file_bytes: int = field(default=2 * 1024**3, metadata={"help": "refuse larger files"})
    max_header_bytes: int = field(default=16 * 1024**2, metadata={"help": "refuse larger headers"})

    def __post_init__(self) -> None:
        if self.max_file_bytes <= 0 or self.max_header_bytes <= 0:
            raise ValueError("ReadLimits must be positive")


@dataclass
class SafetensorsContent:
    """The tensors and string metadata of one checked safetensors file."""

    path: Path
    tensors: dict[str, torch.Tensor]
    metadata: dict[str, str]
    sha256: str
    dtypes: dict[str, int]


def _looks_like_pickle(head: bytes) -> str | None:
    """Name the pickle container the leading bytes show, if any."""
    if head.startswith(b"PK\x03\x04"):
        return "a zip archive (torch.save format, which holds a pickle)"
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return f"a raw pickle (protocol {head[1]})"
    if head[:6] == b"\x93NUMPY":
        return "a NumPy .npy file"
    if head.startswith(b"\x1f\x8b"):
        return "a gzip archive"
    return None


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def check_header(path: Path, limits: ReadLimits) -> tuple[dict, dict[str, str]]:
    """Validate framing, header and data extent from the bytes alone; return (entries, metadata)."""
    size = path.stat().st_size
    if size == 0:
        raise EmptyFile(path, "the file is empty (0 bytes).", "Upload the complete file again.")
    if size > limits.max_file_bytes:
        raise FileTooLarge(
            path,
            f"the file is {size / 1024**2:.0f} MB, over the "
            f"{limits.max_file_bytes / 1024**2:.0f} MB limit.",
            "LoRA files are usually under 1 GB; check that this is a LoRA, not a full checkpoint.",
        )
    with path.open("rb") as handle:
        head = handle.read(8)
        kind = _looks_like_pickle(head)
        if kind:
            refusal = PickleRefused(
                path,
                f"this is {kind}, not safetensors. Pickled files can run code when loaded, so "
                "Loratlas never opens them.",
                "Convert it to .safetensors with a tool you trust, or ask its author for the "
                "safetensors version.",
            )
            refusal.details["format"] = "pickle"
            raise refusal
        if len(head) < 8:
            raise TruncatedFile(path, f"the file is only {size} bytes long.",
                                "Upload the complete file again.")
        (header_len,) = struct.unpack("<Q", head)
        if header_len > limits.max_header_bytes:
            if header_len > size:
                raise NotSafetensors(path, "the first 8 bytes are not a safetensors header length.",
                                     "Upload a .safetensors LoRA file.")
            raise HeaderTooLarge(
                path,
                f"its header is {header_len} bytes, over the {limits.max_header_bytes} byte limit.",
                "This is not a normal LoRA file; re-export it with safetensors.",
            )
        if 8 + header_len > size:
            raise TruncatedFile(path, "the file ends inside its header.",
                                "The upload or download was cut off; get the complete file again.")
        raw = handle.read(header_len)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise NotSafetensors(path, "its header is not the JSON a safetensors file starts with.",
                             "Upload a .safetensors LoRA file.") from None
    if not isinstance(header, dict):
        raise NotSafetensors(path, "its header is not a JSON object.",
                             "Upload a .safetensors LoRA file.")
    metadata = header.pop("__metadata__", None) or {}
    data_len = size - 8 - header_len
    end_needed = 0
    for name, entry in header.items():
        try:
            dtype, shape, (start, end) = entry["dtype"], entry["shape"], entry["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise NotSafetensors(path, f"the header entry for tensor '{name}' is malformed.",
                                 "Re-export the file with safetensors.") from None
        numel = 1
        for dim in shape:
            numel *= int(dim)
        expect = numel * DTYPE_BYTES.get(dtype, 0)
        if dtype not in DTYPE_BYTES or end - start != expect or start < 0:
            raise NotSafetensors(
                path, f"tensor '{name}' declares {dtype} {shape} but {end - start} bytes.",
                "Re-export the file with safetensors.")
        end_needed = max(end_needed, end)
    if end_needed > data_len:
        raise TruncatedFile(
            path,
            f"the header describes {end_needed / 1024**2:.1f} MB of tensor data but the file holds "
            f"only {data_len / 1024**2:.1f} MB: it was cut off.",
            "The upload or download was interrupted; get the complete file again.",
        )
    if not all(isinstance(v, str) for v in metadata.values()):
        raise NotSafetensors(path, "its metadata values are not all strings.",
                             "Re-export the file with safetensors.")
    return header, metadata


def read_safetensors(path: str | Path, limits: ReadLimits | None = None) -> SafetensorsContent:
    """Check and load every tensor of a safetensors file; refuse it with a typed error."""
    path = Path(path)
    limits = limits or ReadLimits()
    header, metadata = check_header(path, limits)
    tensors: dict[str, torch.Tensor] = {}
    dtypes: dict[str, int] = {}
    try:
        with safe_open(str(path), framework="pt") as handle:
            for name in handle.keys():  # noqa: SIM118 - safe_open is not a mapping
                tensors[name] = handle.get_tensor(name)
    except Exception as exc:  # safetensors raises its own SafetensorError types
        raise NotSafetensors(path, f"safetensors could not read it ({exc}).",
                             "Re-export the file with safetensors.") from exc
    for name, tensor in tensors.items():
        dtypes[header[name]["dtype"]] = dtypes.get(header[name]["dtype"], 0) + 1
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise NonFiniteTensor(
                path, f"tensor '{name}' holds NaN or infinite values.",
                "The training run diverged; use an earlier checkpoint of this LoRA.")
    return SafetensorsContent(path, tensors, metadata, sha256_file(path), dtypes)
