"""A lean streaming reader of tar members, for the shard reader's hot path.

The standard library's `tarfile` spends about 25 us per member building TarInfo objects (measured
83% of the decode-free read of 5 KB samples); shards are plain ustar archives of small regular
files, so this reads each 512-byte header, validates its checksum, and slices out the data. It
understands what other tar writers add too: PAX extended headers (`x`, `g`) and GNU long names
(`L`); directories, links and other entries are skipped, as webdataset's iterator does.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import BinaryIO

__all__ = ["TarFormatError", "iter_members"]

_BLOCK = 512


class TarFormatError(ValueError):
    """The bytes are not a (complete) tar archive."""


def iter_members(stream: BinaryIO) -> Iterator[tuple[str, bytes]]:
    """Yield `(name, data)` for each regular file in a tar stream, in order."""
    long_name: str | None = None
    pax_path: str | None = None
    pax_size: int | None = None
    offset = 0
    while True:
        header = stream.read(_BLOCK)
        if not header:
            raise TarFormatError(f"unexpected end of data at byte {offset}: no end-of-archive marker")
        if len(header) < _BLOCK:
            raise TarFormatError(f"unexpected end of data at byte {offset}: a header is cut short")
        if header == b"\0" * _BLOCK:
            return  # end of archive (a second zero block may follow)
        _check(header, offset)
        kind = header[156:157]
        size = pax_size if pax_size is not None else _number(header[124:136], offset)
        padded = (size + _BLOCK - 1) // _BLOCK * _BLOCK
        data = stream.read(padded)
        if len(data) < padded:
            raise TarFormatError(f"unexpected end of data at byte {offset + _BLOCK}: a member of {size} bytes is cut short")
        data = data[:size]
        offset += _BLOCK + padded
        if kind in (b"x", b"g"):
            if kind == b"x":
                records = _pax(data)
                pax_path = records.get("path", pax_path)
                pax_size = int(records["size"]) if "size" in records else None
            continue
        if kind == b"L":
            long_name = data.rstrip(b"\0").decode("utf-8", "surrogateescape")
            continue
        name = pax_path or long_name or _name(header)
        long_name = pax_path = None
        pax_size = None
        if kind in (b"0", b"\0", b"7"):
            yield name, data


def _check(header: bytes, offset: int) -> None:
    stored = header[148:156]
    try:
        expected = int(stored.replace(b"\0", b" ").strip() or b"0", 8)
    except ValueError:
        raise TarFormatError(f"bad header at byte {offset}: not a tar archive") from None
    actual = sum(header[:148]) + 8 * 32 + sum(header[156:])
    if actual != expected:
        raise TarFormatError(f"bad header checksum at byte {offset}: the archive is corrupt")


def _number(field: bytes, offset: int) -> int:
    if field[0] & 0x80:  # base-256, for members of 8 GiB and more
        value = int.from_bytes(field[1:], "big")
        return value
    try:
        return int(field.replace(b"\0", b" ").strip() or b"0", 8)
    except ValueError:
        raise TarFormatError(f"bad size field at byte {offset}") from None


def _name(header: bytes) -> str:
    name = header[0:100].split(b"\0", 1)[0]
    if header[257:262] == b"ustar":
        prefix = header[345:500].split(b"\0", 1)[0]
        if prefix:
            name = prefix + b"/" + name
    return name.decode("utf-8", "surrogateescape")


def _pax(data: bytes) -> dict[str, str]:
    records = {}
    pos = 0
    while pos < len(data):
        space = data.index(b" ", pos)
        length = int(data[pos:space])
        key, _, value = data[space + 1: pos + length - 1].partition(b"=")
        records[key.decode()] = value.decode("utf-8", "surrogateescape")
        pos += length
    return records
