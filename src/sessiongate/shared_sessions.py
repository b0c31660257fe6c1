"""Stage 2b: validated sessions shared through Redis, so the fleet asks whoami once per session.

Owns the Redis side of the session cache (`shared.cache_sessions`), consulted only on a miss in
the local `SessionCache` (a local hit never touches Redis):
* keys are HMAC-SHA256 of the credential under `SESSIONGATE_SECRET`, never the credential;
* values are the local cache's compact encoding (ids, `expires_at`, the deflated whoami body,
  the revocation epoch and generation read before whoami was sent) followed by an HMAC-SHA256
  over key and value, checked on read: whoever can write to Redis cannot forge or alter a
  session (a bad MAC is a miss, and logged); identity headers are recomputed from the body on
  read;
* an entry lives as the local one does (min(cache.ttl, expires_at, Ory-Session-Cache-For)),
  401s `cache.negative_ttl`;
* concurrent misses for one credential across processes make one whoami call: the first takes a
  lock (`SET NX PX ory.timeout`), the others wait for its PUBLISH on `<prefix>:filled` (one
  subscriber connection per process wakes its waiters; no polling) and read the entry; a lock
  holder that died only delays them until the lock lapses (`ory.timeout`), then they ask whoami;
* an entry read from Redis is admitted only if no revocation record (`strict.RevocationRecords`)
  was written for its session or identity after its whoami began, its generation is Redis'
  (one validated before Redis restarted empty, then stored after, is not) and the one this
  process follows, and not against a local tombstone (an eviction this process already
  applied);
* every Redis failure (down, slow past `shared.timeout`, error replies) degrades to what a gate
  without Redis does: its own whoami. Never a refusal.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import os
import struct
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any

from sessiongate.cache import NEGATIVE, UNAVAILABLE, CachedSession, SessionCache
from sessiongate.config import SECRET_ENV, Settings, Shared, shared_secret
from sessiongate.credentials import Credential
from sessiongate.shared_redis import Batcher, RedisError, connect, key
from sessiongate.strict import RevocationRecords, Stamp

if TYPE_CHECKING:
    from sessiongate.authenticate import Authenticator

log = logging.getLogger("sessiongate.shared")

_VERSION = 2
_SESSION, _NEGATIVE = b"S", b"N"
# version, kind, expires_at, epoch, whoami start (wall), lengths of session id, identity id and
# generation
_HEAD = struct.Struct(">BcdqdHHH")
_MAC_BYTES = 32
_FAILURES = (RedisError, OSError, TimeoutError, asyncio.TimeoutError)
#: "unavailable" is logged at most this often (s); each one is followed by "available again"
FLAP_LOG_INTERVAL = 30.0


def derive(secret: bytes, purpose: bytes) -> bytes:
    """A sub-key of `SESSIONGATE_SECRET` for one purpose (credential digests, entry MACs)."""
    return hmac.new(secret, b"sessiongate/" + purpose, hashlib.sha256).digest()


def credential_digest(key_digest: bytes, credential: Credential) -> str:
    """HMAC-SHA256 of the credential: the name of its entry in Redis (hex)."""
    material = f"{credential.kind}\x00{credential.cookie_name}\x00{credential.value}".encode()
    return hmac.new(key_digest, material, hashlib.sha256).hexdigest()


def encode(entry: CachedSession | None, started_wall: float) -> bytes:
    """An entry's bytes (MAC excluded): a session, or None for a 401."""
    if entry is None:
        return _HEAD.pack(_VERSION, _NEGATIVE, 0.0, 0, started_wall, 0, 0, 0)
    sid, iid, gen = entry.session_id.encode(), entry.identity_id.encode(), entry.generation
    head = _HEAD.pack(
        _VERSION,
        _SESSION,
        entry.expires_at,
        entry.epoch,
        started_wall,
        len(sid),
        len(iid),
        len(gen),
    )
    return head + sid + iid + gen + entry.deflated


def decode(payload: bytes) -> tuple[CachedSession | None, float]:
    """(entry or None for a 401, when its whoami began); ValueError if not an entry."""
    try:
        version, kind, expires_at, epoch, started, nsid, niid, ngen = _HEAD.unpack_from(payload)
    except struct.error as exc:
        raise ValueError("short entry") from exc
    if version != _VERSION or kind not in (_SESSION, _NEGATIVE):
        raise ValueError("unknown entry")
    if kind == _NEGATIVE:
        return None, started
    at = _HEAD.size
    sid, iid = payload[at : at + nsid].decode(), payload[at + nsid : at + nsid + niid].decode()
    at += nsid + niid
    entry = CachedSession(sid, iid, expires_at, payload[at + ngen :])
    entry.epoch, entry.generation = epoch, payload[at : at + ngen]
    return entry, started


Ask = Callable[[], Awaitable[Any]]


class SharedSessions:
    def __init__(
        self,
        redis: Any,
        cache: SessionCache,
        records: RevocationRecords,
        *,
        shared: Shared,
        secret: bytes,
        lock_timeout: float,
        identity_headers: Callable[[dict[str, Any]], Any],
        subscriber: Any = None,
        fail_closed: bool = False,
    ) -> None:
        self.redis = redis
        self.cache = cache
        self.records = records
        self.shared = shared
        self.timeout = shared.timeout
        self.ttl = cache.ttl  # as configured (the degraded mode lowers cache.ttl for a while)
        # writes run in the background (no client waits for them): they may take as long as a
        # lock lives, so a busy event loop does not cost the fleet its shared entry
        self.write_timeout = max(shared.timeout, lock_timeout)
        self._tasks: set[asyncio.Task[None]] = set()
        # a burst of misses (a cold start) shares a few round trips instead of queueing for
        # connections: past shared.timeout a reader would ask whoami itself
        self._reads = Batcher(redis, shared.timeout)
        self._writes = Batcher(redis, self.write_timeout)
        self.lock_timeout = lock_timeout
        self.identity_headers = identity_headers
        self._subscriber_client = subscriber
        self.fail_closed = fail_closed  # strict mode: Redis trouble is 503, not our own whoami
        self._key_digest = derive(secret, b"credential")
        self._mac_key = derive(secret, b"entry-mac")
        self._channel = key(shared, "filled")
        self._waiters: dict[str, asyncio.Future[None]] = {}
        self._listener: asyncio.Task[None] | None = None
        self._down = False
        self._logged_down = -FLAP_LOG_INTERVAL  # when "unavailable" was last logged
        self._down_logged = False  # ... and not yet followed by "available again"
        self.redis_hits = 0  # for tests and the benchmark

    # -- the miss path --------------------------------------------------------------------------
    async def validate(self, credential: Credential, cache_key: bytes, ask: Ask) -> Any:
        """The session for a local miss: from Redis, else from `ask()` (whoami), stored for all.

        Returns what `ask` returns, a CachedSession read from Redis (already in the local
        cache), or NEGATIVE for a 401 another process already saw.
        """
        digest = credential_digest(self._key_digest, credential)
        entry_key, lock_key = key(self.shared, "s", digest), key(self.shared, "lock", digest)
        self._ensure_listener()
        woken = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(digest, woken)  # before the lock attempt: no lost wake-up
        token = os.urandom(12).hex()
        try:
            try:
                raw, pttl, stamp, locked = await self._read(entry_key, (lock_key, token))
                self._up()
            except _FAILURES as exc:
                self._failed(exc)
                if self.fail_closed:
                    return UNAVAILABLE
                # Redis may have taken our lock before the deadline: lead anyway (our whoami),
                # then store and unlock in the background, so no waiter waits for the lock to lapse
                return await self._lead(
                    cache_key, entry_key, lock_key, token, digest, (0, b""), ask
                )
            found = await self._admit(cache_key, entry_key, raw, pttl)
            if found is not None:
                if locked:
                    unlock = self._release(lock_key, token, digest, store=None)
                    self._background(unlock, unlock=True)
                return found
            if locked:
                return await self._lead(cache_key, entry_key, lock_key, token, digest, stamp, ask)
            # another process is asking whoami: wait for its word, at most one lock lifetime
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(woken), self.lock_timeout)
            try:
                raw, pttl, stamp, _ = await self._read(entry_key)
            except _FAILURES as exc:
                self._failed(exc)
                return UNAVAILABLE if self.fail_closed else await ask()
            found = await self._admit(cache_key, entry_key, raw, pttl)
            if found is not None:
                return found
            # the holder died, failed, or met Kratos trouble: ask ourselves (and share it)
            return await self._store_after(cache_key, entry_key, stamp, ask)
        finally:
            if self._waiters.get(digest) is woken:
                del self._waiters[digest]

    async def _read(self, entry_key: str, lock: tuple[str, str] | None = None) -> list[Any]:
        """One round trip: the entry, its remaining life, the revocation stamp (epoch and
        generation) and, given (lock key, token), whether this process took the lock (else
        None)."""

        def commands(pipe: Any) -> None:
            pipe.get(entry_key)
            pipe.pttl(entry_key)
            self.records.stamp_commands(pipe)
            if lock is not None:
                pipe.set(lock[0], lock[1], nx=True, px=int(self.lock_timeout * 1000))

        if lock is not None:
            raw, pttl, generation, epoch, locked = await self._reads.run(commands)
        else:
            raw, pttl, generation, epoch = await self._reads.run(commands, share=entry_key)
            locked = None
        return [raw, pttl, self.records.stamp_of(generation, epoch), locked]

    async def _lead(
        self,
        cache_key: bytes,
        entry_key: str,
        lock_key: str,
        token: str,
        digest: str,
        stamp: Stamp,
        ask: Ask,
    ) -> Any:
        stored: bytes | None = None
        px = 0
        try:
            started = time.time()
            result = await ask_stamped(ask, stamp)
            stored, px = self._entry_for(cache_key, result, started)
            return result
        finally:
            # in the background: the client need not wait for Redis, waiters are woken by it
            self._background(
                self._release(lock_key, token, digest, store=(entry_key, stored, px)), unlock=True
            )

    async def _store_after(self, cache_key: bytes, entry_key: str, stamp: Stamp, ask: Ask) -> Any:
        started = time.time()
        result = await ask_stamped(ask, stamp)
        stored, px = self._entry_for(cache_key, result, started)
        if stored is not None:
            self._background(self._store(entry_key, stored, px))
        return result

    async def _store(self, entry_key: str, payload: bytes, px: int) -> None:
        signed = self._sign(entry_key, payload)
        with contextlib.suppress(*_FAILURES):
            await self._writes.run(lambda pipe: pipe.set(entry_key, signed, px=px))

    def _background(self, work: Coroutine[Any, Any, None], *, unlock: bool = False) -> None:
        if self._down and not unlock:  # Redis failing: no plain writes pile up behind it
            work.close()
            return
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _entry_for(self, cache_key: bytes, result: Any, started: float) -> tuple[bytes | None, int]:
        """What to store for whoami's result: what the local cache kept, for as long."""
        now = time.monotonic()
        if isinstance(result, CachedSession):
            if result.deadline <= now or self.cache.get(cache_key) is not result:
                return None, 0  # not cacheable (revoked meanwhile, expired, Kratos said no-cache)
            if not result.generation:
                return None, 0  # stamped without Redis, or before a generation: provable nowhere
            # the local rule without the degraded mode's cap (revocations.py): a Redis entry is
            # checked against the revocation records whenever it is read
            lifetime = min(self.ttl, result.expires_at - time.time())
            if result.cache_for is not None:
                lifetime = min(lifetime, result.cache_for)
            return encode(result, started), int(lifetime * 1000)
        if self.cache.get(cache_key) is NEGATIVE and self.cache.negative_ttl > 0:
            return encode(None, started), int(self.cache.negative_ttl * 1000)
        return None, 0

    async def _release(
        self, lock_key: str, token: str, digest: str, *, store: tuple[str, bytes | None, int] | None
    ) -> None:
        """Store the entry (if any), drop our lock, and wake the fleet's waiters: one round trip."""
        signed = None
        if store is not None and store[1] is not None and store[2] > 0:
            signed = (store[0], self._sign(store[0], store[1]), store[2])

        def commands(pipe: Any) -> None:
            if signed is not None:
                pipe.set(signed[0], signed[1], px=signed[2])
            pipe.eval(_UNLOCK, 1, lock_key, token)
            pipe.publish(self._channel, digest)

        try:
            await self._writes.run(commands)
        except _FAILURES as exc:  # waiters then wait for the lock to lapse (ory.timeout)
            self._failed(exc)

    async def _admit(self, cache_key: bytes, entry_key: str, raw: Any, pttl: Any) -> Any:
        """A Redis entry, checked (MAC, revocation records, tombstones), put in the local cache."""
        if raw is None:
            return None
        payload = self._verified(entry_key, raw)
        if payload is None:
            return None
        try:
            entry, started_wall = decode(payload)
        except ValueError:
            log.warning("shared session entry with a valid MAC but unreadable; ignored")
            return None
        if entry is None:
            self.cache.put_negative(cache_key)
            return NEGATIVE
        self.records.tag(entry, self.records.stamp_of(entry.generation, entry.epoch))
        try:
            if not await self.records.still_valid(entry):
                return None
        except _FAILURES as exc:
            self._failed(exc)
            return UNAVAILABLE if self.fail_closed else None
        try:
            entry.identity_headers = tuple(self.identity_headers(entry.session))
        except ValueError:
            return None
        # as if this process had sent that whoami: a local eviction since then refuses it
        started = time.monotonic() - max(0.0, time.time() - started_wall)
        remaining = pttl / 1000 if isinstance(pttl, int) and pttl > 0 else None
        if remaining is None or not self.cache.put(
            cache_key, entry, started=started, cache_for=remaining
        ):
            return None
        self.redis_hits += 1
        return entry

    # -- MACs ---------------------------------------------------------------------------------
    def _sign(self, entry_key: str, payload: bytes) -> bytes:
        mac = hmac.new(self._mac_key, entry_key.encode() + b"\x00" + payload, hashlib.sha256)
        return payload + mac.digest()

    def _verified(self, entry_key: str, raw: bytes) -> bytes | None:
        payload, mac = raw[:-_MAC_BYTES], raw[-_MAC_BYTES:]
        good = hmac.new(self._mac_key, entry_key.encode() + b"\x00" + payload, hashlib.sha256)
        if len(raw) <= _MAC_BYTES or not hmac.compare_digest(mac, good.digest()):
            log.warning("shared session entry with a bad MAC: ignored (a miss)")
            return None
        return payload

    # -- wake-ups -----------------------------------------------------------------------------
    def _ensure_listener(self) -> None:
        if self._subscriber_client is None:
            return
        if self._listener is None or self._listener.done():
            self._listener = asyncio.get_running_loop().create_task(self._listen())

    async def _listen(self) -> None:
        """One subscriber per process wakes every local waiter of a filled entry.

        When the subscription breaks, and when it is back, every waiter is woken: a wake-up
        may have been lost meanwhile, and a holder whose unlock failed with Redis would
        otherwise keep them waiting until its lock lapses (`ory.timeout`). A woken waiter
        reads again and, finding nothing, asks whoami itself."""
        lost = False
        while True:
            pubsub = self._subscriber_client.pubsub()
            try:
                await pubsub.subscribe(self._channel)
                if lost:
                    lost = False
                    self._wake_all()
                while True:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                    if message is None:
                        continue
                    data = message.get("data")
                    digest = data.decode() if isinstance(data, bytes) else str(data)
                    waiter = self._waiters.get(digest)
                    if waiter is not None and not waiter.done():
                        waiter.set_result(None)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._failed(exc)
                lost = True
                self._wake_all()
                await asyncio.sleep(0.5)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()

    def _wake_all(self) -> None:
        for waiter in self._waiters.values():
            if not waiter.done():
                waiter.set_result(None)

    # -- state --------------------------------------------------------------------------------
    def _failed(self, exc: BaseException) -> None:
        if not self._down:
            self._down = True
            # a Redis at the edge of shared.timeout flaps: one line per FLAP_LOG_INTERVAL
            now = time.monotonic()
            if now - self._logged_down >= FLAP_LOG_INTERVAL:
                self._logged_down = now
                self._down_logged = True
                log.warning(
                    "shared session cache unavailable (%s); validating sessions locally",
                    type(exc).__name__,
                )

    def _up(self) -> None:
        if self._down:
            self._down = False
            if self._down_logged:
                self._down_logged = False
                log.warning("shared session cache available again")

    async def aclose(self) -> None:
        for task in list(self._tasks):  # give pending writes their deadline, then stop
            with contextlib.suppress(BaseException):
                await task
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(BaseException):
                await self._listener
            self._listener = None


async def ask_stamped(ask: Ask, stamp: Stamp) -> Any:
    result = await ask()
    if isinstance(result, CachedSession):
        # read before whoami was sent: revocations after it count
        RevocationRecords.tag(result, stamp)
    return result


# Delete the lock only if it is still ours (it may have lapsed and been taken by another).
_UNLOCK = (
    "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"
)


def attach(authenticator: Authenticator, settings: Settings) -> list[Any]:
    """Wire the shared mode into `authenticator` (revocation records, strict mode, sessions in
    Redis) as `settings.shared` asks; returns the Redis clients to close at shutdown."""
    shared = settings.shared
    strict = shared.consistency == "strict"
    if not shared.enabled or not (shared.cache_sessions or strict):
        return []
    secret = shared_secret()
    if secret is None:
        raise ValueError(f"the shared mode needs {SECRET_ENV} in the environment")
    # no pool limit (that would fail calls): SharedSessions queues for one of REDIS_SLOTS
    redis = connect(shared, max_connections=None)
    # longer than any entry that predates a record: a whoami's answer, then one cache lifetime
    keep = 2 * max(settings.cache.ttl, 60.0) + settings.ory.timeout
    records = RevocationRecords(redis, shared, keep=keep)
    authenticator.records = records
    authenticator.strict = strict
    clients = [redis]
    # Kratos' identity token (identity_token.source: kratos) is a bearer credential for the app
    # and lives in whoami's body: it stays out of Redis, so such sessions are not shared (only
    # a whoami gives a process its token); revocations still are
    token = settings.identity_token
    if shared.cache_sessions and not (token.enabled and token.source == "kratos"):
        subscriber = connect(shared, socket_timeout=5.0, max_connections=4)
        clients.append(subscriber)
        authenticator.shared = SharedSessions(
            redis,
            authenticator.cache,
            records,
            shared=shared,
            secret=secret,
            lock_timeout=settings.ory.timeout,
            identity_headers=authenticator.identity_headers.compute,
            subscriber=subscriber,
            fail_closed=strict,
        )
    return clients
