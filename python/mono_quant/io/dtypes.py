"""Names of tensor dtypes: safetensors header codes and the torch names the manifest uses."""
from __future__ import annotations

from typing import Dict

import torch

from .errors import CheckpointError

__all__ = ["SAFETENSORS_DTYPES", "safetensors_code", "dtype_name", "dtype_from_name"]

# safetensors header code -> torch dtype (only the ones this torch has)
SAFETENSORS_DTYPES: Dict[str, torch.dtype] = {
    code: getattr(torch, name)
    for code, name in (
        ("BOOL", "bool"), ("U8", "uint8"), ("I8", "int8"), ("I16", "int16"), ("U16", "uint16"),
        ("I32", "int32"), ("U32", "uint32"), ("I64", "int64"), ("U64", "uint64"),
        ("F16", "float16"), ("BF16", "bfloat16"), ("F32", "float32"), ("F64", "float64"),
        ("F8_E4M3", "float8_e4m3fn"), ("F8_E5M2", "float8_e5m2"),
    )
    if hasattr(torch, name)
}
_CODE_OF = {dtype: code for code, dtype in SAFETENSORS_DTYPES.items()}


def safetensors_code(dtype: torch.dtype) -> str:
    """The safetensors header code of a torch dtype; ValueError for one it cannot store."""
    try:
        return _CODE_OF[dtype]
    except KeyError:
        raise ValueError(f"safetensors cannot store dtype {dtype}") from None


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.int8`` -> ``"int8"`` (what the manifest records)."""
    return str(dtype).replace("torch.", "")


def dtype_from_name(name) -> torch.dtype:
    """The torch dtype for a manifest name; CheckpointError for anything else."""
    value = getattr(torch, name, None) if isinstance(name, str) else None
    if not isinstance(value, torch.dtype):
        raise CheckpointError(f"unknown dtype name {name!r} in the manifest")
    return value
