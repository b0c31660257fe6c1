"""What ties a request's calls together: its X-Request-Id, W3C trace context, OpenTelemetry spans.

* **Request ids** (`RequestIds`): a request's `X-Request-Id` is taken only from a TCP peer in
  `forwarded.trusted_proxies` and only when it is 1-128 visible ASCII characters; otherwise the
  gate makes one (16 random bytes as 32 hex digits, a trace id's size). The gate hands it to the
  app (replacing any the client sent), to Kratos, and back to the client.
* **The request's context** (`RequestContext`, in the scope under `CONTEXT` and in the context
  variable `CURRENT` while the request runs): what a call made on the request's behalf carries
  (`outgoing`). Kratos' client reads it from the context variable, so a whoami call shared by
  several requests (authenticate.py's singleflight) carries the id and trace of the request
  whose task made it, the first one.
* **Trace context without OpenTelemetry**: `traceparent` and `tracestate` pass unchanged, to the
  app (the proxy passes them with the other headers) and to Kratos (`outgoing`).
* **OpenTelemetry** (`Tracing`; `pip install 'sessiongate[otel]'`): off unless the standard
  variables ask for traces (`otel_configured`); then the gate continues the incoming trace with
  one SERVER span per request and a CLIENT span per whoami call, and the app and Kratos get the
  gate's spans as their parents. Its packages are imported only then: the core install does not
  need them.

Sits at the bottom of the modules (stdlib, starlette types and client_address only).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any

from starlette.types import Scope

from sessiongate.client_address import TrustedProxies

if TYPE_CHECKING:
    from sessiongate.observe import RequestRecord

log = logging.getLogger("sessiongate.tracing")

REQUEST_ID = b"x-request-id"
MAX_REQUEST_ID = 128
TRACE_HEADERS = frozenset({b"traceparent", b"tracestate"})
#: Scope key of the request's `RequestContext`
CONTEXT = "sessiongate.context"


def new_request_id() -> str:
    """16 random bytes, hex: unique without coordination, and cheap (one getrandom call)."""
    return os.urandom(16).hex()


def valid_request_id(value: bytes) -> bool:
    """1-128 bytes of visible ASCII: nothing a log line or a header could be broken with."""
    return 0 < len(value) <= MAX_REQUEST_ID and all(33 <= b <= 126 for b in value)


class RequestIds:
    """The request id of each request: a trusted proxy's, or a new one."""

    __slots__ = ("trusted",)

    def __init__(self, trusted_proxies: list[str] | None) -> None:
        self.trusted = TrustedProxies(trusted_proxies)

    def of(self, scope: Scope) -> str:
        if self.trusted and self.trusted.peer_is_trusted(scope):
            found = self.incoming(scope)
            if found:
                return found
        return new_request_id()

    @staticmethod
    def incoming(scope: Scope) -> str:
        """The request's own valid X-Request-Id (the last one: the nearest proxy's), or ""."""
        found = b""
        for name, value in scope["headers"]:
            if name == REQUEST_ID:
                found = value
        return found.decode("ascii") if found and valid_request_id(found) else ""


class RequestContext:
    """One request, for the calls made on its behalf and for its server span."""

    __slots__ = ("cache_hit", "headers", "otel", "request_id", "span", "token")

    def __init__(self, request_id: str, headers: list[tuple[bytes, bytes]], otel: bool) -> None:
        self.request_id = request_id  # "" in middleware mode without a trusted one
        self.headers = headers  # the request's own (its trace headers, read when needed)
        self.otel = otel  # OpenTelemetry spans: the current span's context goes out
        self.cache_hit: bool | None = None  # the session came from the cache (None: no lookup)
        self.span: Any = None  # the server span (Tracing)
        self.token: object = None  # its OpenTelemetry context token


#: The request the running task serves (None outside requests, e.g. background tasks).
CURRENT: ContextVar[RequestContext | None] = ContextVar("sessiongate.request", default=None)


def outgoing() -> list[tuple[str, str]]:
    """Headers for a call to Kratos made for the current request: its X-Request-Id, and its
    trace context (the current span's with OpenTelemetry, else the request's own headers)."""
    ctx = CURRENT.get()
    if ctx is None:
        return []
    out = [("X-Request-Id", ctx.request_id)] if ctx.request_id else []
    if ctx.otel:
        out.extend(_injected())
    else:
        for name, value in ctx.headers:
            if name in TRACE_HEADERS:
                out.append((name.decode("latin-1"), value.decode("latin-1")))
    return out


def for_app(ctx: RequestContext) -> list[tuple[str, str]]:
    """What the proxy adds to the app's request: the id, and with OpenTelemetry the server
    span's trace context (without, the client's trace headers pass with the others)."""
    out = [("X-Request-Id", ctx.request_id)]
    if ctx.otel:
        out.extend(_injected())
    return out


def note_cache(hit: bool) -> None:
    """The current request's session was (not) found in the cache (a span attribute)."""
    ctx = CURRENT.get()
    if ctx is not None:
        ctx.cache_hit = hit


def _injected() -> list[tuple[str, str]]:
    from opentelemetry import propagate

    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return list(carrier.items())


# -- OpenTelemetry ---------------------------------------------------------------------------
_ON_HINTS = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
_METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH", "QUERY"}
)


def otel_configured(environ: Mapping[str, str]) -> bool:
    """The switch: spans when `OTEL_TRACES_EXPORTER` names an exporter (not `none`), or, with
    it unset, when an OTLP endpoint is set (`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or
    `OTEL_EXPORTER_OTLP_ENDPOINT`: exporter `otlp`); never with `OTEL_SDK_DISABLED=true`."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporter = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter:
        return exporter != "none"
    return any(environ.get(name, "").strip() for name in _ON_HINTS)


def _exporters(environ: Mapping[str, str]) -> list[Any]:
    """The span exporters `OTEL_TRACES_EXPORTER` names (default `otlp`): `otlp` is OTLP over
    HTTP/protobuf unless the protocol variables say `grpc`; other names are looked up in the
    SDK's `opentelemetry_traces_exporter` entry points (`console`, ...)."""
    names = [n.strip() for n in environ.get("OTEL_TRACES_EXPORTER", "otlp").split(",")]
    out = []
    for name in filter(None, names):
        if name == "otlp":
            protocol = (
                environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
                or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
                or "http/protobuf"
            ).strip()
            name = "otlp_proto_grpc" if protocol == "grpc" else "otlp_proto_http"
        found = entry_points(group="opentelemetry_traces_exporter", name=name)
        if not found:
            raise LookupError(f"no OpenTelemetry span exporter {name!r} is installed")
        out.append(next(iter(found)).load()())
    return out


class Tracing:
    """OpenTelemetry spans for a gate: an Observer (`finish` ends the request's server span).

    `Tracing(provider)` uses a given `TracerProvider` (tests: an in-memory exporter);
    `Tracing.from_environment()` builds one from the `OTEL_*` variables, or returns None."""

    def __init__(self, provider: Any) -> None:
        from opentelemetry import context, propagate, trace

        from sessiongate import __version__

        self.provider = provider
        self.tracer = provider.get_tracer("sessiongate", __version__)
        self._trace, self._context, self._propagate = trace, context, propagate
        self._server, self._client = trace.SpanKind.SERVER, trace.SpanKind.CLIENT
        self._error = trace.Status(trace.StatusCode.ERROR)
        # the propagators' headers: the app gets the gate's span instead of the client's
        self.fields = frozenset(f.encode("latin-1") for f in propagate.get_global_textmap().fields)

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> Tracing | None:
        environ = os.environ if environ is None else environ
        if not otel_configured(environ):
            return None
        try:
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor
        except ImportError:
            log.warning(
                "OTEL_* variables ask for traces but OpenTelemetry is not installed "
                "(pip install 'sessiongate[otel]'): no spans; traceparent passes unchanged"
            )
            return None
        try:
            exporters = _exporters(environ)
        except (LookupError, ImportError) as exc:
            log.warning("OpenTelemetry traces are off: %s", exc)
            return None
        resource = Resource.create()  # OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES
        if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
            resource = resource.merge(Resource({"service.name": "sessiongate"}))
        provider = TracerProvider(resource=resource)  # the sampler: OTEL_TRACES_SAMPLER
        for exporter in exporters:
            provider.add_span_processor(BatchSpanProcessor(exporter))  # OTEL_BSP_*
        return cls(provider)

    # -- the server span --------------------------------------------------------------------
    def start(self, scope: Scope, ctx: RequestContext) -> None:
        """The request's SERVER span, child of the incoming trace context, made current."""
        carrier: dict[str, str] = {}
        host = user_agent = ""
        for name, value in scope["headers"]:
            text = value.decode("latin-1")
            if name == b"host":
                host = text
            elif name == b"user-agent":
                user_agent = text
            carrier[name.decode("latin-1")] = text
        parent = self._propagate.extract(carrier)
        method = scope.get("method", "GET")
        known = method in _METHODS
        attributes: dict[str, Any] = {
            "http.request.method": method if known else "_OTHER",
            "url.path": scope.get("path", ""),
            "url.scheme": scope.get("scheme", "http"),
            "network.protocol.version": scope.get("http_version", "1.1"),
            "sessiongate.request_id": ctx.request_id,
        }
        if not known:
            attributes["http.request.method_original"] = method
        if host:
            address, _, port = host.rpartition(":") if not host.endswith("]") else (host, "", "")
            if address and port.isdigit():
                attributes["server.address"], attributes["server.port"] = address, int(port)
            else:
                attributes["server.address"] = host
        client = scope.get("client")
        if client:
            attributes["client.address"] = client[0]
            attributes["network.peer.address"] = client[0]
        if user_agent:
            attributes["user_agent.original"] = user_agent
        span = self.tracer.start_span(
            method if known else "HTTP", context=parent, kind=self._server, attributes=attributes
        )
        ctx.span = span
        ctx.token = self._context.attach(self._trace.set_span_in_context(span, parent))

    def finish(self, scope: Scope, record: RequestRecord) -> None:
        """Observer: the answer's status, the decision, the cache hit; the span ends."""
        ctx: RequestContext | None = scope.get(CONTEXT)
        if ctx is None or ctx.span is None:
            return
        from sessiongate.observe import bounded

        span, ctx.span = ctx.span, None
        status = record.status
        if status:
            span.set_attribute("http.response.status_code", status)
        decision, reason = bounded(record)
        span.set_attribute("sessiongate.decision", decision)
        if reason:
            span.set_attribute("sessiongate.reason", reason)
        if ctx.cache_hit is not None:
            span.set_attribute("sessiongate.cache.hit", ctx.cache_hit)
        if record.upstream_error:
            span.set_attribute("sessiongate.upstream_error", record.upstream_error)
        if status >= 500:
            span.set_attribute("error.type", str(status))
            span.set_status(self._error)
        span.end()
        if ctx.token is not None:
            self._context.detach(ctx.token)
            ctx.token = None

    # -- whoami -----------------------------------------------------------------------------
    @contextmanager
    def whoami(self, url: str, host: str, port: int | None) -> Iterator[Any]:
        """A CLIENT span around one whoami call, current while it runs (so `outgoing` sends
        its context); a timeout or connection error sets `error.type`."""
        attributes: dict[str, Any] = {
            "http.request.method": "GET",
            "url.full": url,
            "server.address": host,
        }
        if port is not None:
            attributes["server.port"] = port
        with self.tracer.start_as_current_span(
            "GET",
            kind=self._client,
            attributes=attributes,
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            try:
                yield span
            except Exception as exc:
                cause = exc.__cause__ if exc.__cause__ is not None else exc
                span.set_attribute("error.type", type(cause).__name__)
                span.set_status(self._error)
                raise

    def answered(self, span: Any, status: int) -> None:
        span.set_attribute("http.response.status_code", status)
        if status >= 500 or status == 429:  # 401/403 are answers, not failures
            span.set_attribute("error.type", str(status))
            span.set_status(self._error)

    def shutdown(self) -> None:
        """Export what is pending (lifespan shutdown)."""
        shutdown = getattr(self.provider, "shutdown", None)
        if shutdown is not None:
            shutdown()
