"""Revocation records in Redis: what lets a cached session be proven unrevoked in one round trip.

Owns three kinds of keys under `shared.prefix`:
* `<prefix>:epoch`, the counter every confirmed revocation moves forward; a session validated
  by whoami carries the epoch read *before* its whoami was sent, and the generation read with
  it (`stamp`);
* `<prefix>:rev:s:<session id>`: that session was revoked at epoch N (or "open": a revocation
  is being relayed to Kratos right now);
* `<prefix>:rev:i:<identity id>`, a hash: field `*` (all its sessions) or the id of the one
  session spared (revoke others) → epoch N or "open";
* `<prefix>:rev:all`: a process' whole cache was cleared (`gate.cache.clear()`) at epoch N.
A cached entry is still valid when no record concerns it with an epoch above its own, none is
open, and Redis still holds the data set its epoch was read from: `still_valid` reads the
records and `<prefix>:generation` (`revocations.py`) in one pipelined call. Records live twice
`cache.ttl` (at least two minutes) plus `ory.timeout`, longer than any entry that predates them.

**Redis restarted empty or flushed.** The records go with the data, so what was proven before
proves nothing after. The generation key goes too (a follower writes a new one), so an entry is
valid only while the generation read now equals both the one stamped on the entry and the one
this process' revocation follower trusts (`trusted`, wired by gate.py / middleware.py): a
mismatch, or no trusted generation yet, is "not provable", a miss (whoami again), never a
refusal while Redis answers. And epochs never go backwards: `confirm` moves the counter to
max(counter + 1, Redis' clock in microseconds), so every epoch written after a restart (even
one that kept an older generation key: an old snapshot, a replica that lagged) is above every
epoch read before it, as long as Redis' clock does not go back.

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
import hashlib
from collections.abc import Callable
from typing import Any

from redis.exceptions import NoScriptError

from sessiongate.cache import CachedSession, Revocation
from sessiongate.config import Shared
from sessiongate.shared_redis import Batcher, key

OPEN = b"open"
ALL = "*"

#: (epoch, generation) read before a whoami: what `tag` puts on the entry it validates
Stamp = tuple[int, bytes]


def _untrusted() -> bytes | None:
    return None


class RevocationRecords:
    def __init__(self, redis: Any, shared: Shared, *, keep: float) -> None:
        self.redis = redis
        self.shared = shared
        self.timeout = shared.timeout
        self.keep_ms = int(keep * 1000)
        self.epoch_key = key(shared, "epoch")
        self.all_key = key(shared, "rev", "all")
        self.generation_key = key(shared, "generation")
        # the generation this process' revocation follower trusts (None: not following)
        self.trusted: Callable[[], bytes | None] = _untrusted
        self._generations: dict[bytes, bytes] = {}  # one bytes object per generation seen
        self._confirm = redis.register_script(_CONFIRM)
        self._abort = redis.register_script(_ABORT)
        self._checks = Batcher(redis, self.timeout)  # see `still_valid`
        self._loading: asyncio.Future[Any] | None = None

    def _target(self, rev: Revocation) -> tuple[str, str]:
        if rev.session_id:
            return key(self.shared, "rev", "s", rev.session_id), ""
        return key(self.shared, "rev", "i", rev.identity_id), rev.except_session or ALL

    def stamp_commands(self, pipe: Any) -> None:
        """The generation, then the epoch. In this order: a flush between the two reads leaves
        the old generation on the entry (refused later), never a new one on an old epoch."""
        pipe.get(self.generation_key)
        pipe.get(self.epoch_key)

    def stamp_of(self, generation: Any, epoch: Any) -> Stamp:
        """`stamp_commands`' replies as a Stamp (no generation yet: b"", never valid)."""
        if not generation:
            return int(epoch or 0), b""
        if len(self._generations) > 16:
            self._generations.clear()
        return int(epoch or 0), self._generations.setdefault(generation, generation)

    async def stamp(self) -> Stamp:
        async with asyncio.timeout(self.timeout):
            pipe = self.redis.pipeline(transaction=False)
            self.stamp_commands(pipe)
            return self.stamp_of(*await pipe.execute())

    @staticmethod
    def tag(entry: CachedSession, stamp: Stamp) -> None:
        entry.epoch, entry.generation = stamp

    async def still_valid(self, entry: CachedSession) -> bool:
        """No revocation of this session or identity since the entry's whoami, in the data set
        it was validated against, which this process still follows: one round trip.

        Checks asked for in the same turn of the event loop share that round trip (one
        pipeline, `Batcher`): each is still read after it was asked for, so a revocation
        recorded before a request arrived is always seen by it.
        """
        sid, iid = entry.session_id, entry.identity_id
        keys = (self.all_key, key(self.shared, "rev", "s", sid), key(self.shared, "rev", "i", iid))

        def commands(pipe: Any) -> None:
            # one script, not four commands: a quarter of the client's work per cache hit
            pipe.execute_command("EVALSHA", _CHECK_SHA, 4, *keys, self.generation_key)

        try:
            reply = await self._checks.run(commands, share=(sid, iid))
        except NoScriptError:  # Redis restarted or SCRIPT FLUSH: load it once, ask again
            await self._load_check()
            reply = await self._checks.run(commands, share=(sid, iid))
        cleared, session_record, flat_identity_records, generation = reply[0]
        pairs = flat_identity_records
        identity_records = dict(zip(pairs[::2], pairs[1::2], strict=True))
        if generation is None or generation != entry.generation or generation != self.trusted():
            return False  # Redis lost (or never had) the records that would prove it
        if cleared is not None and _after(cleared, entry.epoch):
            return False
        return _valid(entry, session_record, identity_records)

    async def _load_check(self) -> None:
        """SCRIPT LOAD of the check, shared by every caller that met NOSCRIPT meanwhile."""
        if self._loading is None or self._loading.done():
            self._loading = asyncio.ensure_future(self.redis.script_load(_CHECK))
        async with asyncio.timeout(self.timeout):
            await asyncio.shield(self._loading)

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


# The counter moves to max(counter + 1, Redis' clock in microseconds): never back, even when
# Redis lost it (a restart empty: the records of before are gone, entries of before are not).
# TIME before a write in a script needs effects replication (the default since Redis 5, which
# streams need anyway; the only kind since 7). Numbers go out as strings ('%d'): Lua's default
# format would print 1.7e+15.
_CONFIRM = """
local now = redis.call('TIME')
local n = redis.call('INCR', KEYS[1])
local us = tonumber(now[1]) * 1000000 + tonumber(now[2])
if us > n then
  n = us
  redis.call('SET', KEYS[1], string.format('%d', n))
end
n = string.format('%d', n)
if ARGV[1] == '' then
  redis.call('SET', KEYS[2], n, 'PX', ARGV[2])
else
  redis.call('HSET', KEYS[2], ARGV[1], n)
  redis.call('PEXPIRE', KEYS[2], ARGV[2])
end
return n
"""

# still_valid's reads, in this order (the generation last: a flush after the records were
# read changes it, so they are not trusted); a missing key is false, i.e. nil
_CHECK = """
return {redis.call('GET', KEYS[1]), redis.call('GET', KEYS[2]),
        redis.call('HGETALL', KEYS[3]), redis.call('GET', KEYS[4])}
"""
_CHECK_SHA = hashlib.sha1(_CHECK.encode(), usedforsecurity=False).hexdigest()

_ABORT = """
if ARGV[1] == '' then
  if redis.call('GET', KEYS[1]) == 'open' then redis.call('DEL', KEYS[1]) end
elseif redis.call('HGET', KEYS[1], ARGV[1]) == 'open' then
  redis.call('HDEL', KEYS[1], ARGV[1])
end
return 0
"""
