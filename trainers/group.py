"""A group of Ray actors running one DDP training: started, watched, restarted from checkpoints.

Ray Train's TorchTrainer spends 10-13 s starting and 3-5 s tearing down on 2 cores (measured,
shared/environment.md), more than a small job's whole run under torchrun. This group keeps the
guarantees that matter (one process per rank with its own resources, a process group with a
timeout, restart from the last checkpoint up to `max_failures`, failures reported with the ranks
involved) with one actor per rank and nothing else.

Each actor runs the training loop in one thread and answers `progress()` in another, so when a
collective times out the driver can say which ranks never arrived, and what they were doing.
"""

from __future__ import annotations

import socket
import sys
from typing import Any

import ray

from raytron.cluster.errors import RaytronError
from raytron.trainers.errors import CollectiveTimeout, TrainError, WorkerFailed, first_line
from raytron.trainers.phases import COLLECTIVE_PHASES
from raytron.trainers.spec import TrainJobSpec

__all__ = ["TrainWorker", "run_group"]


@ray.remote(max_concurrency=2)
class TrainWorker:
    """One rank. `max_concurrency=2`: `progress` answers while `train` runs."""

    def __init__(self, spec_json: str, rank: int, world_size: int):
        # torch is imported here, in the worker, never in the job's driver (it cost the driver 1.5 s).
        from raytron.trainers.loop import new_loop

        self.loop = new_loop(TrainJobSpec.model_validate_json(spec_json), rank=rank, world_size=world_size)

    def address(self) -> tuple[str, int]:
        """This node's IP and a free port on it, for rank 0's rendezvous."""
        ip = ray.util.get_node_ip_address()
        with socket.socket() as s:
            s.bind((ip, 0))
            return ip, s.getsockname()[1]

    def train(self, master_addr: str, master_port: int) -> dict[str, Any]:
        self.loop.join(master_addr, master_port)
        # On an exception the process group is left as it is: the driver kills every actor, and
        # peers blocked in a collective see a closed connection rather than waiting out the timeout.
        result = self.loop.run()
        self.loop.leave()
        return result

    def progress(self) -> dict[str, Any]:
        return self.loop.progress()


def run_group(spec: TrainJobSpec, *, poll_interval_s: float = 0.5) -> dict[str, Any]:
    """Train with `resources.num_workers` actors; restart from the last checkpoint on failure.

    Returns:
        Rank 0's result (final step, metrics, history), plus `attempts`.

    Raises:
        CollectiveTimeout: a collective timed out and `max_failures` restarts are used up.
        WorkerFailed: a worker died or raised and `max_failures` restarts are used up.
    """
    r, t = spec.resources, spec.train
    failures = 0
    while True:
        workers = [
            TrainWorker.options(num_cpus=r.cpus_per_worker, num_gpus=r.gpus_per_worker, max_restarts=0).remote(spec.to_json(), rank, r.num_workers)
            for rank in range(r.num_workers)
        ]
        try:
            addr, port = ray.get(workers[0].address.remote())
            refs = [w.train.remote(addr, port) for w in workers]
            result = _watch(workers, refs, t.collective_timeout_s, poll_interval_s)
            result["attempts"] = failures + 1
            return result
        except TrainError as exc:
            failures += 1
            if failures > t.max_failures:
                if t.max_failures:
                    raise type(exc)(f"{exc} (after {failures - 1} restart(s); `train.max_failures` is {t.max_failures})") from None
                raise
            print(f"raytron: attempt {failures} failed: {exc}\nraytron: restarting all {r.num_workers} workers from the last checkpoint "
                  f"({failures}/{t.max_failures} restarts)", flush=True)
        finally:
            for w in workers:
                ray.kill(w, no_restart=True)


def _watch(workers: list, refs: list, timeout_s: float, poll_interval_s: float) -> dict[str, Any]:
    pending = list(refs)
    results: dict[int, Any] = {}
    while pending:
        done, pending = ray.wait(pending, num_returns=1, timeout=poll_interval_s)
        for ref in done:
            rank = refs.index(ref)
            try:
                results[rank] = ray.get(ref)
            except ray.exceptions.RayActorError as exc:
                raise WorkerFailed(f"worker rank {rank} died: {first_line(exc)}") from None
            except ray.exceptions.RayTaskError as exc:
                cause = exc.cause if getattr(exc, "cause", None) is not None else exc
                if _is_collective_timeout(cause):
                    raise _timeout_error(workers, rank, cause, timeout_s) from None
                if isinstance(cause, TrainError):
                    raise type(cause)(f"rank {rank}: {cause}") from None
                if not isinstance(cause, RaytronError):
                    # Not raised on purpose (a bug, or the user's model function): the one-line error the
                    # job ends with cannot show where, so the rank's own traceback goes to the logs first.
                    print(f"raytron: worker rank {rank} raised (its traceback):\n{exc}", file=sys.stderr, flush=True)
                raise WorkerFailed(f"worker rank {rank} failed: {type(cause).__name__}: {first_line(cause)}") from None
    return results[0]


def _is_collective_timeout(exc: BaseException) -> bool:
    text = str(exc).lower()
    return isinstance(exc, (RuntimeError, TimeoutError)) and any(s in text for s in ("timed out", "timeout", "connection closed by peer", "connection reset"))


def _timeout_error(workers: list, reporting_rank: int, cause: BaseException, timeout_s: float) -> CollectiveTimeout:
    """Ask every rank where it is; those that do not answer or are behind are the missing ones."""
    probes = {rank: w.progress.remote() for rank, w in enumerate(workers)}
    ready, _ = ray.wait(list(probes.values()), num_returns=len(probes), timeout=5.0)
    states: dict[int, dict | None] = {}
    for rank, ref in probes.items():
        try:
            states[rank] = ray.get(ref) if ref in ready else None
        except ray.exceptions.RayError:
            states[rank] = None
    answered = {r: s for r, s in states.items() if s is not None}
    front = max((s["step"] for s in answered.values()), default=0)
    # A rank that is not inside a collective, or is behind the others, is the one not arriving.
    missing = sorted(
        r for r, s in states.items()
        if r != reporting_rank and (s is None or s["step"] < front or s["phase"] not in COLLECTIVE_PHASES)
    )
    detail = "; ".join(
        f"rank {r}: " + ("no answer (hung or dead)" if s is None else f"step {s['step']}, {s['phase']}, last change {s['age_s']:.1f} s ago")
        for r, s in sorted(states.items())
    )
    return CollectiveTimeout(
        f"a collective timed out after {timeout_s:g} s (`train.collective_timeout_s`) on rank {reporting_rank}: "
        f"missing rank(s) {missing or 'unknown'}. Where every rank was: {detail}. Cause: {first_line(cause)}",
        missing_ranks=tuple(missing),
    )
