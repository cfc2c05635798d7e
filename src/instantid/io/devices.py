"""Device and dtype names as every surface spells them; cheap to import (torch is imported when a dtype is made)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from instantid.errors import InvalidInputError

if TYPE_CHECKING:
    import torch

# Our dtype names and the torch dtypes they stand for (resolved lazily: torch is slow to import).
DTYPE_NAMES = ("fp16", "bf16", "fp32")
DEVICES = ("cuda", "mps", "cpu")


def torch_dtype(name: str) -> torch.dtype:
    import torch

    table = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
    if name not in table:
        raise InvalidInputError(f"unknown dtype {name!r}; choose one of {', '.join(DTYPE_NAMES)}")
    return table[name]
