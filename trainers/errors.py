"""The trainers' exception root and its kinds."""

from __future__ import annotations

from raytron.cluster.errors import RaytronError

__all__ = ["TrainError", "CheckpointError", "CollectiveTimeout", "WorkerFailed", "first_line"]


class TrainError(RaytronError):
    """Root of the errors raised while training."""


class CheckpointError(TrainError):
    """A checkpoint is missing, incomplete or does not fit the run."""


class CollectiveTimeout(TrainError):
    """A collective operation waited longer than `train.collective_timeout_s`; names the missing ranks."""

    def __init__(self, message: str, *, missing_ranks: tuple[int, ...] = ()):
        self.missing_ranks = tuple(missing_ranks)
        super().__init__(message)

    def __reduce__(self):
        return (_rebuild_timeout, (str(self), self.missing_ranks))


class WorkerFailed(TrainError):
    """A training worker died or raised; the group restarts from the last checkpoint if allowed."""


def _rebuild_timeout(message: str, missing: tuple[int, ...]) -> CollectiveTimeout:
    return CollectiveTimeout(message, missing_ranks=missing)


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (Ray's wrap whole tracebacks), or its type's name."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
