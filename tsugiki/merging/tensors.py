"""What every tensor source and sink shares: safetensors dtype codes, where a tensor lies in a file,
and the interface the planner and executor read models through."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch

SAFETENSORS_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}
DTYPE_CODES: dict[torch.dtype, str] = {v: k for k, v in SAFETENSORS_DTYPES.items()}


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    file: Path
    offset: int  # absolute byte offset of the data in `file`
    nbytes: int


class TensorSource(Protocol):
    """What the planner and executor need from a model: names, shapes, dtypes and tensors."""

    label: str

    def names(self) -> list[str]: ...

    def info(self, name: str) -> TensorInfo: ...

    def read(self, name: str) -> torch.Tensor: ...

    def view(self, name: str) -> torch.Tensor: ...

    def release(self, name: str) -> None: ...


def element_size(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()
