"""Where samples come from when building shards: `parquet:`, `npz:`, `images:`, `text:` and `digits`.

A source yields samples as `{field name: value}` and knows its schema. Fields are named by what
they are: `x` (a float32 feature vector), `y` (the label: an integer class as `cls`, or a float as
`npy`), `image` (encoded PNG/JPEG bytes), `tokens` (int32 token ids).
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from raytron.datasets.errors import SourceError
from raytron.datasets.manifest import FieldSpec

__all__ = ["SourceConfig", "Source", "open_source", "SOURCE_KINDS"]

SOURCE_KINDS = ("parquet", "npz", "images", "text", "digits")
_SOURCE_USAGE = ("parquet:PATH", "npz:PATH", "images:DIR", "text:PATH", "digits")
_IMAGE_SUFFIXES = {".png": "png", ".jpg": "jpg", ".jpeg": "jpg"}


@dataclass(frozen=True, kw_only=True)
class SourceConfig:
    """Which source to read and how to turn its records into samples."""

    spec: str
    """`parquet:PATH` (file or folder), `npz:PATH`, `images:DIR`, `text:PATH` (file or folder of .txt), or `digits`."""
    features: list[str] | None = None
    """Parquet: numeric feature columns (default: every column but the label). NPZ: the feature array (default `x`)."""
    label: str | None = None
    """Parquet: the label column (default `label` if present). NPZ: the label array (default `y`)."""
    seq_len: int = 128
    """Text: tokens per training sequence (each sample stores seq_len + 1 tokens: inputs and shifted targets)."""
    batch_rows: int = 4096
    """Parquet: rows per record batch read (bounds memory whatever the table's size)."""

    def __post_init__(self) -> None:
        if self.seq_len < 1:
            raise SourceError(f"`seq_len` ({self.seq_len}) must be >= 1")
        if self.batch_rows < 1:
            raise SourceError(f"`batch_rows` ({self.batch_rows}) must be >= 1")


@dataclass
class Source:
    """An opened source: its schema, an optional sample count, and the samples."""

    description: str
    schema: list[FieldSpec]
    samples: Iterator[dict[str, Any]]
    num_samples: int | None = None
    info: dict[str, Any] = field(default_factory=dict)
    """Extra facts for the manifest (class names, tokenizer)."""


def open_source(config: SourceConfig) -> Source:
    """Open `config.spec` for streaming.

    Raises:
        SourceError: unknown kind, missing path, or columns/arrays that do not fit.
    """
    kind, _, path = config.spec.partition(":")
    if kind not in SOURCE_KINDS:
        raise SourceError(f"`--source` ({config.spec!r}): unknown kind {kind!r}; allowed: {', '.join(_SOURCE_USAGE)}")
    if kind == "digits":
        return _digits()
    if not path:
        raise SourceError(f"`--source` ({config.spec!r}): {kind} needs a path, as {kind}:PATH")
    p = Path(path).expanduser()
    if not p.exists():
        raise SourceError(f"`--source` ({config.spec!r}): {p} does not exist")
    return {"parquet": _parquet, "npz": _npz, "images": _images, "text": _text}[kind](p, config)


# --------------------------------------------------------------------------- kinds


def _digits() -> Source:
    from sklearn.datasets import load_digits

    data = load_digits()
    x = data.data.astype(np.float32)
    y = data.target.astype(np.int64)
    schema = [FieldSpec(name="x", encoding="npy", dtype="float32", shape=[64]), FieldSpec(name="y", encoding="cls", dtype="int64", shape=[])]
    samples = ({"x": x[i], "y": int(y[i])} for i in range(len(y)))
    return Source(description="scikit-learn digits (8x8 images as 64 features, 10 classes)", schema=schema, samples=samples, num_samples=len(y), info={"num_classes": 10})


def _parquet(path: Path, config: SourceConfig) -> Source:
    import pyarrow as pa
    import pyarrow.dataset as ds

    dataset = ds.dataset(str(path), format="parquet")
    names = dataset.schema.names
    label = config.label if config.label is not None else ("label" if "label" in names else None)
    if label is not None and label not in names:
        raise SourceError(f"`--label` ({label!r}): no such column in {path}; columns: {', '.join(names)}")
    features = config.features or [n for n in names if n != label]
    missing = [f for f in features if f not in names]
    if missing:
        raise SourceError(f"`--features` ({', '.join(missing)}): no such column in {path}; columns: {', '.join(names)}")
    if not features:
        raise SourceError(f"{path}: no feature columns left (columns: {', '.join(names)}); name them with --features")
    for name in features:
        t = dataset.schema.field(name).type
        if not (pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)):
            raise SourceError(f"`--features` column {name!r} has type {t}; feature columns must be numeric scalars")
    schema = [FieldSpec(name="x", encoding="npy", dtype="float32", shape=[len(features)])]
    label_is_int = False
    if label is not None:
        t = dataset.schema.field(label).type
        label_is_int = pa.types.is_integer(t)
        if not (label_is_int or pa.types.is_floating(t)):
            raise SourceError(f"`--label` column {label!r} has type {t}; labels must be integers (classes) or floats (targets)")
        schema.append(FieldSpec(name="y", encoding="cls" if label_is_int else "npy", dtype="int64" if label_is_int else "float32", shape=[]))

    def samples() -> Iterator[dict[str, Any]]:
        columns = features + ([label] if label else [])
        # Record batches stream from disk: a table larger than memory never sits in memory.
        for batch in dataset.to_batches(columns=columns, batch_size=config.batch_rows):
            x = np.stack([batch.column(f).to_numpy(zero_copy_only=False).astype(np.float32) for f in features], axis=1)
            y = batch.column(label).to_numpy(zero_copy_only=False) if label else None
            for i in range(batch.num_rows):
                sample: dict[str, Any] = {"x": x[i]}
                if y is not None:
                    sample["y"] = int(y[i]) if label_is_int else np.float32(y[i])
                yield sample

    return Source(description=f"parquet {path} (features {', '.join(features)}; label {label or 'none'})", schema=schema, samples=samples(),
                  num_samples=dataset.count_rows(), info={"features": features, "label": label})


def _npz(path: Path, config: SourceConfig) -> Source:
    archive = np.load(path, allow_pickle=False)
    keys = list(archive.keys())
    x_name = (config.features or [None])[0] or ("x" if "x" in keys else "features" if "features" in keys else None)
    y_name = config.label or ("y" if "y" in keys else "label" if "label" in keys else None)
    if x_name not in keys:
        raise SourceError(f"`--features` ({x_name!r}): no such array in {path}; arrays: {', '.join(keys)}")
    if config.label and y_name not in keys:
        raise SourceError(f"`--label` ({y_name!r}): no such array in {path}; arrays: {', '.join(keys)}")
    x = archive[x_name]
    y = archive[y_name] if y_name in keys else None
    if y is not None and len(y) != len(x):
        raise SourceError(f"{path}: {x_name!r} has {len(x)} rows but {y_name!r} has {len(y)}; they must match")
    if not np.issubdtype(x.dtype, np.number):
        raise SourceError(f"{path}: array {x_name!r} has dtype {x.dtype}; features must be numeric")
    schema = [FieldSpec(name="x", encoding="npy", dtype=str(x.dtype), shape=list(x.shape[1:]))]
    y_int = y is not None and np.issubdtype(y.dtype, np.integer) and y.ndim == 1
    if y is not None:
        schema.append(FieldSpec(name="y", encoding="cls" if y_int else "npy", dtype="int64" if y_int else str(y.dtype), shape=[] if y_int else list(y.shape[1:])))

    def samples() -> Iterator[dict[str, Any]]:
        for i in range(len(x)):
            sample: dict[str, Any] = {"x": x[i]}
            if y is not None:
                sample["y"] = int(y[i]) if y_int else y[i]
            yield sample

    return Source(description=f"npz {path} (x={x_name}, y={y_name})", schema=schema, samples=samples(), num_samples=len(x), info={"features": x_name, "label": y_name})


def _images(path: Path, config: SourceConfig) -> Source:
    from PIL import Image

    if not path.is_dir():
        raise SourceError(f"`--source` images:{path}: must be a directory with one subfolder per class")
    classes = sorted(d.name for d in path.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise SourceError(f"`--source` images:{path}: no class subfolders found (expected DIR/<class>/<image>.png|jpg)")
    files = [(f, c) for c, name in enumerate(classes) for f in sorted((path / name).iterdir()) if f.suffix.lower() in _IMAGE_SUFFIXES]
    if not files:
        raise SourceError(f"`--source` images:{path}: no .png/.jpg files in its class subfolders")
    encodings = {_IMAGE_SUFFIXES[f.suffix.lower()] for f, _ in files}
    if len(encodings) > 1:
        raise SourceError(f"`--source` images:{path}: mixes {', '.join(sorted(encodings))} files; convert them to one format")
    encoding = encodings.pop()
    first = _image_shape(files[0][0])
    schema = [FieldSpec(name="image", encoding=encoding, dtype="uint8", shape=first), FieldSpec(name="y", encoding="cls", dtype="int64", shape=[])]

    def samples() -> Iterator[dict[str, Any]]:
        for f, c in files:
            data = f.read_bytes()
            try:
                with Image.open(io.BytesIO(data)) as im:
                    im.verify()  # a truncated or corrupt image fails the build, naming the file
            except Exception as exc:
                raise SourceError(f"{f}: not a readable image ({exc})") from None
            yield {"image": data, "y": c}

    return Source(description=f"images {path} ({len(classes)} classes, {encoding})", schema=schema, samples=samples(), num_samples=len(files), info={"classes": classes})


def _image_shape(path: Path) -> list[int]:
    from PIL import Image

    try:
        with Image.open(path) as im:
            bands = len(im.getbands())
            return [im.height, im.width, bands]
    except Exception as exc:
        raise SourceError(f"{path}: not a readable image ({exc})") from None


def _text(path: Path, config: SourceConfig) -> Source:
    files = sorted(path.rglob("*.txt")) if path.is_dir() else [path]
    if not files:
        raise SourceError(f"`--source` text:{path}: no .txt files")
    window = config.seq_len + 1
    schema = [FieldSpec(name="tokens", encoding="npy", dtype="int32", shape=[window])]

    def samples() -> Iterator[dict[str, Any]]:
        # Byte-level tokens (vocabulary 256): no tokenizer download, any UTF-8 text. Sequences are
        # non-overlapping windows of seq_len + 1 tokens, so inputs and targets come from one sample.
        pending = np.empty(0, dtype=np.int32)
        for f in files:
            with open(f, "rb") as fh:
                while chunk := fh.read(1 << 20):
                    pending = np.concatenate([pending, np.frombuffer(chunk, dtype=np.uint8).astype(np.int32)])
                    n = len(pending) // window
                    for i in range(n):
                        yield {"tokens": pending[i * window:(i + 1) * window].copy()}
                    pending = pending[n * window:]

    total = sum(f.stat().st_size for f in files) // window
    return Source(description=f"text {path} ({len(files)} file(s), byte tokens, seq_len {config.seq_len})", schema=schema, samples=samples(), num_samples=total,
                  info={"tokenizer": "bytes", "vocab_size": 256, "seq_len": config.seq_len})
