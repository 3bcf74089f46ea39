"""Reading a safetensors file with integrity checks and one-line errors.

The format is ``<u64 little-endian header length N><N bytes of JSON header><data>``; the
header gives every tensor's byte range. Before anything is read, the file size must equal
``8 + N + end of the last tensor``: a truncated (or padded) file is refused with both byte
counts instead of a parser error deep inside a run. Nothing is unpickled.
"""

from __future__ import annotations

import json
from pathlib import Path

from torch import Tensor

from bitsmith.errors import InputError
from bitsmith.userspec import one_line


def read_safetensors(path: str | Path, *, what: str, error: type[InputError]
                     ) -> dict[str, Tensor]:
    """All tensors of a safetensors file (CPU), after the size check.

    Args:
        path: the file.
        what: how the file is named in messages (e.g. ``"checkpoint"``, ``"data file"``).
        error: the :class:`InputError` subclass to raise.

    Raises:
        error: truncated, padded, a corrupt header, or unreadable.
    """
    path = Path(path)
    label = f"{what} {str(path)!r}"
    size = path.stat().st_size
    with open(path, "rb") as fh:
        n = int.from_bytes(fh.read(8), "little")
        if size < 8 + n:
            raise error(f"{label} is truncated: its safetensors header says {n:,} header bytes "
                        f"but the file has {size:,} bytes in all; copy it again")
        try:
            header = json.loads(fh.read(n))
            ends = [int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"]
        except (ValueError, KeyError, TypeError, IndexError, AttributeError) as err:
            raise error(f"{label} has a corrupt safetensors header ({one_line(err)}); "
                        "copy it again") from err
    expected = 8 + n + max(ends, default=0)
    if size != expected:
        kind = "truncated" if size < expected else "corrupt (extra bytes after the tensors)"
        raise error(f"{label} is {kind}: its header describes {expected:,} bytes, the file "
                    f"has {size:,}; copy it again")
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, ValueError, OSError) as err:
        raise error(f"{label} cannot be read as safetensors: {one_line(err)}; "
                    "copy it again") from err
