"""Process-wide settings read from the environment, in this one place.

| variable | meaning | default |
| --- | --- | --- |
| `RAYTRON_HOME` | where the embedded head keeps its state, token and logs | `~/.raytron` |
| `RAY_ADDRESS` | a Ray cluster's dashboard (Jobs API) address to use instead of the embedded head | unset |
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Settings"]


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Settings that come from the environment rather than from a spec or a flag."""

    home: Path
    """Directory for the embedded head's state file, auth token and log (`RAYTRON_HOME`)."""
    address: str | None
    """Cluster address from `RAY_ADDRESS`; None means the embedded local head."""

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "Settings":
        env = os.environ if environ is None else environ
        home = Path(env.get("RAYTRON_HOME") or Path.home() / ".raytron").expanduser().absolute()
        address = (env.get("RAY_ADDRESS") or "").strip() or None
        return cls(home=home, address=address)
