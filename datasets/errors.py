"""The datasets subsystem's exception root.

Note on layout: this folder deliberately has no `__init__.py`. It imports as `raytron.datasets`
through the package mapping in pyproject.toml, and without an `__init__.py` a top-level
`import datasets` (run from the repository root, where the current directory comes first on
`sys.path`) still finds Hugging Face's `datasets` package instead of this folder.
"""

from __future__ import annotations

from raytron.cluster.errors import RaytronError

__all__ = ["DataError", "SourceError", "ManifestError", "ShardError", "ChecksumMismatch", "MissingKey"]


class DataError(RaytronError):
    """Root of the errors raised while building or reading shards."""


class SourceError(DataError):
    """A build source is malformed, missing, or lacks the columns or arrays asked for."""

    exit_code = 2


class ManifestError(DataError):
    """A shard directory has no readable, consistent `manifest.json`."""

    exit_code = 2  # a path or URL the user gave


class ShardError(DataError):
    """A shard could not be read: truncated, corrupt, or not a tar file."""

    # `url` has a default because PyTorch re-raises a DataLoader worker's exception as
    # `type(exc)(message)`: the type (and so `except ShardError`) survives the process boundary.
    def __init__(self, message: str, *, url: str = "", sample_key: str | None = None):
        self.url = url
        self.sample_key = sample_key
        super().__init__(message)

    def __reduce__(self):
        return (_rebuild_shard_error, (type(self), str(self), self.url, self.sample_key))


class ChecksumMismatch(ShardError):
    """A shard's sha256 differs from the one its manifest records."""


class MissingKey(ShardError):
    """A sample lacks a field the manifest's schema requires."""


def _rebuild_shard_error(cls, message, url, sample_key):
    return cls(message, url=url, sample_key=sample_key)
