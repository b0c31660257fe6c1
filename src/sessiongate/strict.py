"""Revocation records in Redis: what lets a cached session be proven unrevoked in one round trip.

Owns three kinds of keys under `shared.prefix`:
* `<prefix>:epoch`, a counter bumped (INCR) by every confirmed revocation; a session validated
  by whoami carries the epoch read *before* its whoami was sent;
* `<prefix>:rev:s:<session id>`: that session was revoked at epoch N (or "open": a revocation
  is being relayed to Kratos right now);
* `<prefix>:rev:i:<identity id>`, a hash: field `*` (all its sessions) or the id of the one
  session spared (revoke others) → epoch N or "open";
* `<prefix>:rev:all`: a process' whole cache was cleared (`gate.cache.clear()`) at epoch N.
A cached entry is still valid when no record concerns it with an epoch above its own, and none is
open: `still_valid` reads both records in one pipelined call. Records live twice `cache.ttl`
(at least two minutes) plus `ory.timeout`, longer than any entry that predates them.

`shared.consistency: strict` uses them on every cache hit (`Authenticator`), and the relay
writes an open record before it relays a revocation to Kratos (`begin`: no record, no relay:
503), then the confirmed epoch after Kratos' 2xx (`confirm`) or removes it (`abort`). In
eventual mode only `confirm` is written, so a session shared through Redis (`shared_sessions`)
does not come back from Redis after a revocation. Every eviction published on the revocation
stream (`revocations.py`, `gate.cache.evict_*` and `clear()` included) also writes its confirmed
record in the same round trip (`append_hook`). Every call is bounded by `shared.timeout`
and raises on Redis trouble: the caller decides (strict: 503, fail closed).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from sessiongate.cache import CachedSession
from sessiongate.config import Shared
from sessiongate.shared_redis import Batcher, key

OPEN = b"open"
ALL = "*"


@dataclass(frozen=True, slots=True)
class Revocation:
    """One revocation: a session, or an identity's sessions (sparing `except_session`)."""

    session_id: str = ""
    identity_id: str = ""
    except_session: str = ""


class RevocationRecords:
    def __init__(self, redis: Any, shared: Shared, *, keep: float) -> None:
        self.redis = redis
        self.shared = shared
        self.timeout = shared.timeout
        self.keep_ms = int(keep * 1000)
        self.epoch_key = key(shared, "epoch")
        self.all_key = key(shared, "rev", "all")
        self._confirm = redis.register_script(_CONFIRM)
        self._abort = redis.register_script(_ABORT)
        self._checks = Batcher(redis, self.timeout)  # see `still_valid`

    def _target(self, rev: Revocation) -> tuple[str, str]:
        if rev.session_id:
            return key(self.shared, "rev", "s", rev.session_id), ""
        return key(self.shared, "rev", "i", rev.identity_id), rev.except_session or ALL

    async def epoch(self) -> int:
        async with asyncio.timeout(self.timeout):
            return int(await self.redis.get(self.epoch_key) or 0)

    async def still_valid(self, entry: CachedSession) -> bool:
        """No revocation of this session or identity since the entry's whoami: one round trip.

        Checks asked for in the same turn of the event loop share that round trip (one
        pipeline, `Batcher`): each is still read after it was asked for, so a revocation
        recorded before a request arrived is always seen by it.
        """
        sid, iid = entry.session_id, entry.identity_id

        def commands(pipe: Any) -> None:
            pipe.get(self.all_key)
            pipe.get(key(self.shared, "rev", "s", sid))
            pipe.hgetall(key(self.shared, "rev", "i", iid))

        cleared, session_record, identity_records = await self._checks.run(
            commands, share=(sid, iid)
        )
        if cleared is not None and _after(cleared, entry.epoch):
            return False
        return _valid(entry, session_record, identity_records)

    async def begin(self, rev: Revocation) -> None:
        """Strict mode, before relaying: an open record refuses every cached copy at once."""
        target, field = self._target(rev)
        async with asyncio.timeout(self.timeout):
            if field:
                pipe = self.redis.pipeline(transaction=True)
                pipe.hset(target, field, OPEN)
                pipe.pexpire(target, self.keep_ms)
                await pipe.execute()
            else:
                await self.redis.set(target, OPEN, px=self.keep_ms)

    async def confirm(self, rev: Revocation) -> int:
        """After Kratos' 2xx: the record gets a new epoch (entries validated before it lapse)."""
        target, field = self._target(rev)
        async with asyncio.timeout(self.timeout):
            return int(
                await self._confirm(keys=[self.epoch_key, target], args=[field, self.keep_ms])
            )

    def append_hook(self, pipe: Any, kind: str, ident: str, except_session: str) -> None:
        """For `Revocations.append_hooks`: every eviction a process publishes on the stream
        (`gate.cache.evict_*` included) gets its confirmed record in the same round trip."""
        if kind == "s":
            rev = Revocation(session_id=ident)
        elif kind == "i":
            rev = Revocation(identity_id=ident, except_session=except_session)
        elif kind == "c":  # a cache cleared: every entry validated before it lapses
            pipe.eval(_CONFIRM, 2, self.epoch_key, self.all_key, "", self.keep_ms)
            return
        else:
            return
        target, field = self._target(rev)
        pipe.eval(_CONFIRM, 2, self.epoch_key, target, field, self.keep_ms)

    async def abort(self, rev: Revocation) -> None:
        """Kratos refused the revocation: drop our open record (a closed one stays)."""
        target, field = self._target(rev)
        async with asyncio.timeout(self.timeout):
            await self._abort(keys=[target], args=[field])


def _valid(entry: CachedSession, session_record: Any, identity_records: Any) -> bool:
    if session_record is not None and _after(session_record, entry.epoch):
        return False
    for spared, value in identity_records.items():
        if spared.decode() != entry.session_id and _after(value, entry.epoch):
            return False
    return True


def _after(value: bytes, epoch: int) -> bool:
    return value == OPEN or not value.isdigit() or int(value) > epoch


_CONFIRM = """
local n = redis.call('INCR', KEYS[1])
if ARGV[1] == '' then
  redis.call('SET', KEYS[2], n, 'PX', ARGV[2])
else
  redis.call('HSET', KEYS[2], ARGV[1], n)
  redis.call('PEXPIRE', KEYS[2], ARGV[2])
end
return n
"""

_ABORT = """
if ARGV[1] == '' then
  if redis.call('GET', KEYS[1]) == 'open' then redis.call('DEL', KEYS[1]) end
elseif redis.call('HGET', KEYS[1], ARGV[1]) == 'open' then
  redis.call('HDEL', KEYS[1], ARGV[1])
end
return 0
"""
