"""Writing files so that a reader never sees half of one: write to a temporary name, then rename."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["write_bytes_atomic", "write_json_atomic"]


def write_bytes_atomic(path: str | Path, data: bytes, *, mode: int | None = None) -> Path:
    """Write `data` to `path` atomically: a crash leaves either the old file or the new one.

    The temporary file lives in the same directory (a rename is only atomic within a filesystem)
    and is fsynced before the rename. `mode` defaults to what `open()` would give (0666 less the
    umask); mkstemp alone would leave every file 0600.
    """
    path = Path(path)
    if mode is None:
        umask = os.umask(0)
        os.umask(umask)
        mode = 0o666 & ~umask
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json_atomic(path: str | Path, payload: Any) -> Path:
    """Write `payload` as indented JSON to `path` atomically."""
    return write_bytes_atomic(path, (json.dumps(payload, indent=2, sort_keys=False) + "\n").encode())
