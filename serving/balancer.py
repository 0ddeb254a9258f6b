"""The gateway's replicas: one channel each, least-outstanding-requests picking, and the health checker.

`ReplicaPool` picks a replica per *request* (not per connection): the healthy replica with the fewest
requests in flight through this gateway, ties broken round-robin so that an idle pool spreads load
evenly. `HealthChecker` is a small state machine over the pool: `step()` probes every replica once
(ServerReady) and applies the results, so tests drive it one iteration at a time; `run()` steps it
every `interval_s`. A replica that fails a probe, or that a request found UNAVAILABLE, leaves the
rotation at once and comes back after its next successful probe.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Awaitable, Callable

__all__ = ["ReplicaSlot", "ReplicaPool", "HealthChange", "HealthChecker"]

log = logging.getLogger(__name__)

_SERVICE = "/inference.GRPCInferenceService/"
_MIN_WAKE_INTERVAL_S = 0.05


@dataclass(eq=False)
class ReplicaSlot:
    """One replica as the gateway sees it."""

    address: str
    channel: object
    """The replica's shared `grpc.aio.Channel` (None in unit tests of the pool)."""
    healthy: bool = False
    outstanding: int = 0
    """Requests this gateway has in flight on the replica right now."""
    removed: bool = False
    last_error: str = ""
    last_probe_s: float | None = None
    requests_total: int = 0
    """Requests sent to this replica (retries included), for status and tests."""
    _methods: dict = field(default_factory=dict, repr=False)

    def method(self, name: str):
        """The raw (bytes in, bytes out) unary callable for an `inference.GRPCInferenceService` method."""
        callable_ = self._methods.get(name)
        if callable_ is None:
            callable_ = self._methods[name] = self.channel.unary_unary(_SERVICE + name)
        return callable_


class ReplicaPool:
    """The replicas behind a gateway; `pick` chooses one per request.

    Args:
        channel_factory: makes the shared channel of an address (the gateway passes a
            `grpc.aio.insecure_channel` with its message-size limits).
    """

    def __init__(self, channel_factory: Callable[[str], object]):
        self._channel_factory = channel_factory
        self._slots: list[ReplicaSlot] = []
        self._next = 0

    def __len__(self) -> int:
        return len(self._slots)

    def __iter__(self):
        return iter(list(self._slots))

    def get(self, address: str) -> ReplicaSlot | None:
        return next((s for s in self._slots if s.address == address), None)

    def add(self, address: str) -> ReplicaSlot:
        """Add a replica, out of rotation until its first successful probe."""
        if self.get(address) is not None:
            raise ValueError(f"replica {address} is already in the pool")
        slot = ReplicaSlot(address=address, channel=self._channel_factory(address))
        self._slots.append(slot)
        return slot

    def remove(self, address: str) -> ReplicaSlot:
        """Take a replica out of the pool (its in-flight requests finish; the caller closes its channel)."""
        slot = self.get(address)
        if slot is None:
            raise KeyError(address)
        self._slots.remove(slot)
        slot.removed, slot.healthy = True, False
        return slot

    def healthy(self) -> list[ReplicaSlot]:
        return [s for s in self._slots if s.healthy]

    def any_healthy(self) -> bool:
        return any(s.healthy for s in self._slots)

    def pick(self, exclude: list[ReplicaSlot] | None = None) -> ReplicaSlot | None:
        """The healthy replica with the fewest outstanding requests (round-robin among equals), or None."""
        slots = self._slots
        n = len(slots)
        if n == 0:
            return None
        start = self._next % n
        self._next = start + 1
        best = None
        for k in range(n):
            slot = slots[(start + k) % n]
            if not slot.healthy or (exclude and slot in exclude):
                continue
            if best is None or slot.outstanding < best.outstanding:
                best = slot
        return best

    def mark_down(self, slot: ReplicaSlot, reason: str) -> bool:
        """Take a replica out of rotation; True if it was in rotation."""
        was = slot.healthy
        slot.healthy, slot.last_error = False, reason
        if was:
            log.warning("replica %s taken out of rotation: %s", slot.address, reason)
        return was


@dataclass(frozen=True)
class HealthChange:
    """A replica entered (`healthy`) or left the rotation."""

    address: str
    healthy: bool
    reason: str = ""


class HealthChecker:
    """Probes every replica of a pool; a state machine stepped by `step()` (tests) or `run()` (the gateway).

    Args:
        pool: the replicas.
        probe: returns None when the replica is ready, else why not (it must not raise).
        interval_s: time between steps in `run()`.
        on_change: awaited with the changes of each step that changed something.
        clock: time source for `last_probe_s` (injected by tests).
    """

    def __init__(self, pool: ReplicaPool, probe: Callable[[ReplicaSlot], Awaitable[str | None]], *, interval_s: float,
                 on_change: Callable[[list[HealthChange]], Awaitable[None]] | None = None, clock: Callable[[], float] = time.monotonic):
        self.pool, self.probe, self.interval_s, self.on_change, self.clock = pool, probe, interval_s, on_change, clock
        self._wake = asyncio.Event()
        self.steps = 0

    async def check(self, slots: list[ReplicaSlot]) -> list[HealthChange]:
        """Probe `slots` now and apply the results; returns what changed."""
        results = await asyncio.gather(*(self.probe(s) for s in slots))
        now = self.clock()
        changes = []
        for slot, problem in zip(slots, results):
            if slot.removed:
                continue
            slot.last_probe_s = now
            if problem is None and not slot.healthy:
                slot.healthy, slot.last_error = True, ""
                changes.append(HealthChange(slot.address, True))
                log.info("replica %s is ready and in rotation", slot.address)
            elif problem is not None:
                if self.pool.mark_down(slot, problem):
                    changes.append(HealthChange(slot.address, False, problem))
        if changes and self.on_change is not None:
            await self.on_change(changes)
        return changes

    async def step(self) -> list[HealthChange]:
        """One iteration: probe every replica in the pool."""
        self.steps += 1
        return await self.check(list(self.pool))

    def wake(self) -> None:
        """Run the next step now rather than at the end of the interval (a request just found a replica down)."""
        self._wake.set()

    async def run(self) -> None:
        """Step forever, every `interval_s` (or sooner after `wake()`); cancel the task to stop."""
        floor_s = min(self.interval_s, _MIN_WAKE_INTERVAL_S)
        while True:
            self._wake.clear()  # a wake() during the step below triggers the next step early
            try:
                await self.step()
            except Exception:  # noqa: BLE001 - a probe bug must not stop health checking
                log.exception("health check step failed")
            await asyncio.sleep(floor_s)  # bursts of wake() cost one step each floor_s, not one per request
            try:
                await asyncio.wait_for(self._wake.wait(), self.interval_s - floor_s)
            except asyncio.TimeoutError:
                pass
