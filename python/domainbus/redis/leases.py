"""Partition leases: each partition of a stream is consumed by at most one live worker of a
group at a time, as Kafka assigns partitions to the members of a consumer group.

Keys (all in Redis, so workers on any number of machines agree):

    {stream}:{group}:lease:{p}   the lease of partition p: a random token of its holder,
                                 SET NX PX lease_ms, renewed by the holder's heartbeat
    {stream}:{group}:workers     a sorted set of live workers, scored by their last heartbeat
                                 (Redis server time, so clocks of the machines do not matter)

Every `heartbeat_s` a worker's heartbeat thread runs one Lua script (atomic in Redis): it
refreshes the worker's membership and drops members silent for `lease_ms`; renews the leases
whose token is still this worker's (PEXPIRE); and takes free partitions (SET NX PX) until the
worker holds `ceil(partitions / live workers)`. A worker holding more than that gives the extra
leases up itself, at the end of its current batch (`excess`), so a joining worker gets its
share within a heartbeat or two. Releasing is a compare-and-delete script: a lease that expired
and went to another worker is never deleted by its former holder.

A worker that dies stops renewing: its leases expire after `lease_ms` and the others take its
partitions. A worker whose renewals fail (Redis unreachable) stops processing a partition when
its local deadline passes, which is before the lease can expire in Redis (the deadline counts
from before the renewal was sent, with a margin). A handler batch longer than the lease does
not lose it: the heartbeat runs in its own thread.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
import uuid
from collections.abc import Sequence

import redis

__all__ = ["Leases"]

log = logging.getLogger("domainbus.redis")

# KEYS: the members set, then the lease key of every partition.
# ARGV: consumer name, token, lease_ms. Returns {live workers, quota, held partitions...}.
_HEARTBEAT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease = tonumber(ARGV[3])
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - lease)
redis.call('PEXPIRE', KEYS[1], lease * 10)
local live = redis.call('ZCARD', KEYS[1])
local partitions = #KEYS - 1
local quota = math.ceil(partitions / live)
local held = {}
local free = {}
for i = 2, #KEYS do
  local holder = redis.call('GET', KEYS[i])
  if holder == ARGV[2] then
    redis.call('PEXPIRE', KEYS[i], lease)
    held[#held + 1] = i - 2
  elseif not holder then
    free[#free + 1] = i - 2
  end
end
for _, p in ipairs(free) do
  if #held >= quota then break end
  if redis.call('SET', KEYS[p + 2], ARGV[2], 'NX', 'PX', lease) then
    held[#held + 1] = p
  end
end
local reply = {live, quota}
for _, p in ipairs(held) do reply[#reply + 1] = p end
return reply
"""

# KEYS: lease keys; ARGV: token. Deletes those still holding the token; returns how many.
_RELEASE = """
local released = 0
for i = 1, #KEYS do
  if redis.call('GET', KEYS[i]) == ARGV[1] then
    redis.call('DEL', KEYS[i])
    released = released + 1
  end
end
return released
"""


class Leases:
    """The leases one worker (`consumer`) holds on the partitions of `stream` for `group`."""

    def __init__(
        self,
        client: redis.Redis,
        stream: str,
        group: str,
        consumer: str,
        partitions: int,
        *,
        lease_ms: int = 5000,
        heartbeat_s: float = 0.25,
    ) -> None:
        check_timing(lease_ms, heartbeat_s)
        self.client = client
        self.consumer = consumer
        self.partitions = partitions
        self.lease_ms = lease_ms
        self.heartbeat_s = heartbeat_s
        self.token = f"{consumer}:{os.getpid()}:{uuid.uuid4().hex}"
        self.members_key = f"{stream}:{group}:workers"
        self.lease_keys = [f"{stream}:{group}:lease:{p}" for p in range(partitions)]
        self.live = 0
        self.quota = partitions
        self._heartbeat = client.register_script(_HEARTBEAT)
        self._release = client.register_script(_RELEASE)
        self._valid_until: dict[int, float] = {}  # partition -> local monotonic deadline
        self._lock = threading.Lock()  # serialises renewals and releases
        self._stop = threading.Event()
        self.changed = threading.Event()  # set when the held partitions changed
        self._thread: threading.Thread | None = None

    # -- what the worker asks --------------------------------------------------------------

    def held(self) -> set[int]:
        """The partitions this worker holds a live lease on, now."""
        now = time.monotonic()
        with self._lock:
            return {p for p, until in self._valid_until.items() if until > now}

    def holds(self, partition: int) -> bool:
        return self._valid_until.get(partition, 0.0) > time.monotonic()

    def excess(self) -> list[int]:
        """Partitions to give up (beyond this worker's share), highest first."""
        with self._lock:
            extra = len(self._valid_until) - self.quota
            return sorted(self._valid_until, reverse=True)[: max(0, extra)]

    # -- Redis -----------------------------------------------------------------------------

    def tick(self) -> None:
        """One heartbeat: membership, renewals, acquisitions (raises redis errors)."""
        with self._lock:
            started = time.monotonic()
            reply = self._heartbeat(
                keys=[self.members_key, *self.lease_keys],
                args=[self.consumer, self.token, self.lease_ms],
            )
            self.live, self.quota = int(reply[0]), int(reply[1])
            until = started + self.lease_ms * 0.8 / 1000
            held = {int(p): until for p in reply[2:]}
            if held.keys() != self._valid_until.keys():
                self.changed.set()
            self._valid_until = held

    def release(self, partitions: Sequence[int]) -> int:
        """Give up the leases of `partitions` (only those this worker still holds)."""
        if not partitions:
            return 0
        with self._lock:
            for p in partitions:
                self._valid_until.pop(p, None)
            keys = [self.lease_keys[p] for p in partitions]
            return int(self._release(keys=keys, args=[self.token]))

    def release_all(self) -> None:
        """At shutdown: release every lease and leave the members set."""
        self.stop_heartbeat()
        with self._lock:
            self._valid_until.clear()
        self._release(keys=self.lease_keys, args=[self.token])
        self.client.zrem(self.members_key, self.consumer)

    # -- the heartbeat thread --------------------------------------------------------------

    def start_heartbeat(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._beat, name=f"domainbus-heartbeat-{self.consumer}", daemon=True
        )
        self._thread.start()

    def stop_heartbeat(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        self._thread = None

    def _beat(self) -> None:
        failures = 0
        while not self._stop.is_set():
            try:
                self.tick()
                failures = 0
            except redis.RedisError as exc:
                failures += 1
                if failures == 1:
                    log.warning("domainbus worker %s: heartbeat failed: %r", self.consumer, exc)
            self._stop.wait(self.heartbeat_s)


def check_timing(lease_ms: object, heartbeat_s: object) -> None:
    """ValueError unless lease_ms >= 100 and 0 < heartbeat_s <= a third of the lease."""
    if not isinstance(lease_ms, int) or isinstance(lease_ms, bool) or lease_ms < 100:
        raise ValueError(f"lease_ms must be an int >= 100, not {lease_ms!r}")
    if not isinstance(heartbeat_s, int | float) or not 0 < heartbeat_s * 1000 <= lease_ms / 3:
        raise ValueError(
            f"heartbeat_s must be > 0 and at most a third of lease_ms ({lease_ms}), "
            f"not {heartbeat_s!r}"
        )


def quota(partitions: int, live: int) -> int:
    """The most partitions one of `live` workers holds: ceil(partitions / live)."""
    return math.ceil(partitions / max(1, live))
