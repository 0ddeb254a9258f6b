"""The exception hierarchy of raytron's core.

Every raytron error derives from :class:`RaytronError`; each subsystem has one root beneath it
(`ClusterError` here; `DataError`, `TrainError` and `ServingError` live with their subsystems).
Messages say what happened, with the values involved, and which setting to change. All errors
are plain picklable exceptions so they survive being raised inside a Ray worker.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "RaytronError",
    "ClusterError",
    "SpecError",
    "SpecProblem",
    "HeadError",
    "ConnectionFailed",
    "JobNotFound",
]


class RaytronError(Exception):
    """Root of every error raytron raises on purpose."""

    #: Process exit code the CLI uses for this error (2: bad input, 1: a run failed).
    exit_code: int = 1


class ClusterError(RaytronError):
    """Root of the core's errors: specs, the Ray connection, the local head, jobs."""


@dataclass(frozen=True)
class SpecProblem:
    """One thing wrong with a spec: where (`path`), what was given (`value`) and what is allowed."""

    path: str
    message: str
    value: object = None
    has_value: bool = True

    def render(self) -> str:
        where = f"`{self.path}`" if self.path else "the spec"
        if self.has_value:
            return f"{where} ({_short_repr(self.value)}): {self.message}"
        return f"{where}: {self.message}"


class SpecError(ClusterError):
    """A job spec (or an override of it) is invalid. Nothing was submitted."""

    exit_code = 2

    def __init__(self, problems: list[SpecProblem] | SpecProblem, *, source: str = "spec"):
        if isinstance(problems, SpecProblem):
            problems = [problems]
        self.problems = list(problems)
        self.source = source
        super().__init__(self._render())

    def __reduce__(self):
        return (_rebuild_spec_error, (type(self), self.problems, self.source))

    def _render(self) -> str:
        count = len(self.problems)
        head = f"{self.source} is invalid ({count} problem{'s' if count != 1 else ''}); nothing was submitted:"
        return "\n".join([head, *(f"  - {p.render()}" for p in self.problems)])

    @property
    def paths(self) -> list[str]:
        """The field paths that were rejected, in order."""
        return [p.path for p in self.problems]


class HeadError(ClusterError):
    """The embedded local Ray head could not be started, found or stopped."""


class ConnectionFailed(ClusterError):
    """The Ray cluster's Jobs API could not be reached at the given address."""


class JobNotFound(ClusterError):
    """No job with the given submission id exists on the cluster."""

    exit_code = 2


def _rebuild_spec_error(cls: type[SpecError], problems: list[SpecProblem], source: str) -> SpecError:
    return cls(problems, source=source)


def _short_repr(value: object, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
