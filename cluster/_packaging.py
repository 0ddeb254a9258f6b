"""Stage the raytron package as one directory for Ray's `py_modules`, so every job runs the
submitter's raytron code, on any cluster, even one where raytron is not installed."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

SUBPACKAGES = ("cluster", "datasets", "trainers", "serving")
_KEEP_STAGED = 4


def staged_package(cache_root: Path) -> Path:
    """A directory named `raytron` holding the installed subpackages' sources.

    The copy is keyed by a fingerprint of the sources (paths, sizes, mtimes), made once per change,
    and atomically renamed into place; Ray then uploads it only when its content hash is new.
    """
    sources = _sources()
    entries = []
    for sub, root in sources.items():
        for path in sorted(_files(root)):
            st = path.stat()
            entries.append(f"{sub}/{path.relative_to(root)}\0{st.st_size}\0{st.st_mtime_ns}")
    digest = hashlib.sha256("\n".join(entries).encode()).hexdigest()[:16]
    target = cache_root / digest / "raytron"
    if target.is_dir():
        return target
    cache_root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".stage-", dir=cache_root))
    try:
        for sub, root in sources.items():
            for path in _files(root):
                dest = tmp / "raytron" / sub / path.relative_to(root)
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, dest)
        final = cache_root / digest
        try:
            os.rename(tmp, final)
        except OSError:  # another submit staged the same sources first
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _prune(cache_root, keep=digest)
    return target


def _sources() -> dict[str, Path]:
    sources = {}
    for sub in SUBPACKAGES:
        # find_spec locates a subpackage without executing it (its __init__ may import torch).
        spec = importlib.util.find_spec(f"raytron.{sub}")
        if spec is None or not spec.submodule_search_locations:
            continue
        for location in spec.submodule_search_locations:
            if os.path.isdir(location):
                sources[sub] = Path(location)
                break
    return sources


def _files(root: Path):
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d != "__pycache__" and not d.startswith(".")]
        for name in filenames:
            if not name.endswith((".pyc", ".pyo")) and not name.startswith("."):
                yield Path(dirpath) / name


def _prune(cache_root: Path, keep: str) -> None:
    staged = sorted((p for p in cache_root.iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: p.stat().st_mtime)
    for old in staged[:-_KEEP_STAGED]:
        if old.name != keep:
            shutil.rmtree(old, ignore_errors=True)
