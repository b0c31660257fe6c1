"""What happened to one request, for whoever watches the gate (metrics, access log, traces).

The gate puts a `RequestRecord` in the scope (`RECORD`) as a request comes in, when anyone
observes; each stage fills in what it decided (the gatekeeper: the decision and its reason;
the proxy: when it called the app and how that failed; the relay: its route) and the gate hands
the finished record to every `Observer` once the answer is sent. Decisions and reasons come
from the fixed sets below: metrics use them as label values, so nothing a client sends can add
a label value (`bounded`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol

from starlette.types import Message, Scope, Send

#: Scope key of the request's record (absent when nobody observes).
RECORD = "sessiongate.record"

#: What the gate decided; `relay`: a session-management call relayed to Kratos; `gate`: the
#: gate's own endpoints (health, a decision service's 404, the sessions page).
DECISIONS = frozenset(
    {"allowed", "public", "denied", "redirected", "unavailable", "bad_request", "relay", "gate"}
)

#: Why (empty for an allowed request). Denials map from `authenticate.Denial.kind`.
REASONS = frozenset(
    {
        "",
        "no_credential",  # no cookie, token or Bearer at all
        "invalid_session",  # Kratos (or the cache) said 401
        "aal2_required",
        "malformed_credential",
        "kratos_unavailable",  # Kratos down, slow, failing, or Redis in strict mode: 503
        "rate_limited",  # Kratos answered 429: 429
        "overloaded",  # ory.max_inflight whoami calls in flight: shed with 503
        "bad_target",  # not a path: 400
        "bad_host",  # not exactly one Host: 400
        "foreign_origin",  # a cross-site WebSocket handshake
        "untrusted_caller",  # forward auth from outside trusted_callers
        "bad_forwarded",  # forward auth without a well-formed original request
        "preflight",  # a CORS preflight, passed without a session
        "health",
        "jwks",  # the identity token's public keys (identity_token.jwks_path)
        "no_app",  # a decision service's other paths: 404
        "sessions_page",  # the gate's sessions page (sessions_page.py)
    }
)

#: authenticate.Denial.kind → (decision, reason); "anonymous" is refined by `denied`.
_DENIALS: dict[str, tuple[str, str]] = {
    "anonymous": ("denied", "invalid_session"),
    "aal": ("denied", "aal2_required"),
    "malformed": ("bad_request", "malformed_credential"),
    "unavailable": ("unavailable", "kratos_unavailable"),
    "rate_limited": ("unavailable", "rate_limited"),
    "overloaded": ("unavailable", "overloaded"),
}


@dataclass(slots=True)
class RequestRecord:
    """One request, as the observers see it. Times are `time.perf_counter()` seconds."""

    started: float
    method: str
    path: str  # the path only: never the query string
    kind: str = "http"  # http | websocket
    decision: str = ""
    reason: str = ""
    status: int = 0  # what the client got (0: nothing was sent)
    upstream_at: float = 0.0  # when the app was called (0: it was not)
    upstream_error: str = ""  # the proxy's own answer instead of the app's: 408 | 502 | 503 | 504
    route: str = ""  # the relay route (relay_routes.py) for decision "relay"
    identity_id: str = ""  # the session's identity, for allowed requests
    request_id: str = ""  # X-Request-Id (tracing.RequestIds): a trusted proxy's, or the gate's
    finished: float = 0.0

    def decide(self, decision: str, reason: str = "") -> None:
        self.decision, self.reason = decision, reason

    def denied(self, kind: str, *, redirected: bool, credential: bool) -> None:
        """A `Denial` of this kind was answered (a login redirect instead when `redirected`)."""
        decision, reason = _DENIALS.get(kind, ("unavailable", "kratos_unavailable"))
        if kind == "anonymous" and not credential:
            reason = "no_credential"
        self.decision, self.reason = ("redirected" if redirected else decision), reason

    @property
    def overhead(self) -> float:
        """The gate's own time: request in → app called; the whole time when it was not."""
        end = self.upstream_at or self.finished
        return max(0.0, end - self.started)

    @property
    def duration(self) -> float:
        return max(0.0, self.finished - self.started)


def bounded(record: RequestRecord) -> tuple[str, str]:
    """(decision, reason) from the fixed sets: anything else is reported as unknown."""
    decision = record.decision if record.decision in DECISIONS else "unknown"
    reason = record.reason if record.reason in REASONS else "unknown"
    return decision, reason


class Observer(Protocol):
    def finish(self, scope: Scope, record: RequestRecord) -> None:
        """Called once per request after its answer was sent (or the client left). Must not
        block nor raise: it runs on the request's task."""


class Observers:
    """The gate's observers; `watch` starts a request's record, `finish` hands it over."""

    def __init__(self, observers: list[Observer] | None = None) -> None:
        self.observers: list[Observer] = list(observers or [])

    def __bool__(self) -> bool:
        return bool(self.observers)

    def add(self, observer: Observer) -> None:
        self.observers.append(observer)

    def start(
        self, scope: Scope, send: Send, tag: list[tuple[bytes, bytes]] | None = None
    ) -> tuple[RequestRecord, Send]:
        """A record in the scope, and a `send` that notes the status the client gets (and adds
        the `tag` headers to every answer: one wrapper per message instead of two)."""
        record = RequestRecord(
            time.perf_counter(),
            scope.get("method", "GET"),
            scope.get("path", ""),
            scope["type"],
        )
        scope[RECORD] = record

        async def noting(message: Message) -> None:
            kind = message["type"]
            if kind == "http.response.start" or kind == "websocket.accept":
                if not record.status:
                    record.status = message["status"] if kind == "http.response.start" else 101
                if tag:
                    message = with_headers(message, tag)
            elif kind == "websocket.close" and not record.status:
                record.status = 403  # closed before accept: the server answers 403
            await send(message)

        return record, noting

    def finish(self, scope: Scope, record: RequestRecord) -> None:
        record.finished = time.perf_counter()
        for observer in self.observers:
            observer.finish(scope, record)


def with_headers(message: Message, headers: list[tuple[bytes, bytes]]) -> Message:
    """A response start (or WebSocket accept) with `headers` added after its own."""
    return {**message, "headers": [*message.get("headers", ()), *headers]}


def record_of(scope: Scope) -> RequestRecord | None:
    """The request's record, or None when nobody observes."""
    return scope.get(RECORD)  # type: ignore[no-any-return]
