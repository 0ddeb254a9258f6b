"""The datasets subsystem's exception root.

Note on layout: this folder deliberately has no `__init__.py`. It imports as `raytron.datasets`
through the package mapping in pyproject.toml, and without an `__init__.py` a top-level
`import datasets` (run from the repository root, where the current directory comes first on
`sys.path`) still finds Hugging Face's `datasets` package instead of this folder.
"""

from __future__ import annotations

from raytron.cluster.errors import RaytronError

__all__ = ["DataError"]


class DataError(RaytronError):
    """Root of the errors raised while building or reading shards."""
