"""sessiongate's settings: the YAML file, `SESSIONGATE_<SECTION>__<KEY>` overrides, validation.

The key names are an interface (other tools write these files), so they are fixed and every one
is documented in `config.example.yaml` and the README. Durations accept plain seconds or
`500ms`/`30s`/`5m`/`1h`. Secrets never come from the file: the Ory API key is read from the
environment (`ORY_API_KEY`) by `ory_api_key()`.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

_log = logging.getLogger("sessiongate.config")
ENV_PREFIX = "SESSIONGATE_"
CONFIG_ENV = "SESSIONGATE_CONFIG"
API_KEY_ENV = "ORY_API_KEY"
ADMIN_KEYS_ENV = "SESSIONGATE_ADMIN_KEYS"  # a secret, not a settings override
LOGIN_PATH = "/self-service/login/browser"  # Kratos' browser login flow
# The shared mode's secrets (environment only, never the file)
# keys every digest and MAC kept in Redis; >= 32 bytes
SECRET_ENV = "SESSIONGATE_SECRET"  # noqa: S105 (a variable name)
REDIS_PASSWORD_ENV = "SESSIONGATE_REDIS_PASSWORD"  # noqa: S105
SENTINEL_PASSWORD_ENV = "SESSIONGATE_SENTINEL_PASSWORD"  # noqa: S105
SECRET_MIN_BYTES = 32

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNITS = {None: 1.0, "ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_HEADER_NAME = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")
_JSON_PATH = re.compile(r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$")
# Headers an identity header must never replace: framing, routing, and the credentials.
_RESERVED_HEADERS = {
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "upgrade",
    "te",
    "trailer",
    "keep-alive",
    "proxy-connection",
    "cookie",
    "authorization",
    "x-session-token",
    "set-cookie",
    "content-type",
    # the gate sets these itself (README, "Access logs" and "Traces")
    "x-request-id",
    "traceparent",
    "tracestate",
}


# Request headers proxy.py treats specially (they live here, below it, so that settings can
# refuse them as a header the gate sets):
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"proxy-authenticate",
        b"proxy-authorization",
    }
)
_FORWARDED = frozenset(
    {b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"forwarded", b"x-real-ip"}
)
# Headers some servers and frameworks honour to rewrite the path, scheme, host or client
# address (IIS/Symfony X-Original-URL, Spring X-Forwarded-Prefix, Akamai True-Client-IP...):
# passed on only from `forwarded.trusted_proxies`, like X-Forwarded-*.
_ROUTING = frozenset(
    {
        b"x-original-url",
        b"x-original-uri",
        b"x-rewrite-url",
        b"x-forwarded-prefix",
        b"x-forwarded-port",
        b"x-forwarded-scheme",
        b"x-forwarded-server",
        b"x-forwarded-ssl",
        b"x-forwarded-uri",
        b"x-forwarded-path",
        b"x-forwarded",
        b"forwarded-for",
        b"x-url-scheme",
        b"front-end-https",
        b"true-client-ip",
        b"x-client-ip",
        b"x-cluster-client-ip",
        b"cf-connecting-ip",
        b"fastly-client-ip",
        b"x-host",
        b"x-original-host",
        b"x-http-host-override",
    }
)
#: Passed on to the app only from `forwarded.trusted_proxies` (proxy.py)
TRUSTED_PROXY_HEADERS = _FORWARDED | _ROUTING


def parse_duration(value: Any) -> float:
    """Seconds from a number or a string such as `90`, `30s`, `5m`, `1h`, `250ms`."""
    if isinstance(value, bool):
        raise ValueError("a duration is a number of seconds or a string such as 30s or 5m")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (match := _DURATION.match(value)):
        seconds = float(match.group(1)) * _UNITS[match.group(2)]
    else:
        raise ValueError(
            f"invalid duration {value!r}: use seconds (60) or a unit: 500ms, 30s, 5m, 1h"
        )
    if seconds != seconds or seconds in (float("inf"), float("-inf")):
        raise ValueError("a duration must be a finite number of seconds")
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    return seconds


Duration = Annotated[float, BeforeValidator(parse_duration)]


def _http_url(value: str, *, field: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"must be an absolute http(s) URL, got {value!r}")
    if parts.query or parts.fragment:
        raise ValueError(f"{field} must not carry a query or fragment")
    return value.rstrip("/")


def origin_of(url: str) -> str:
    """`scheme://host[:port]` in lower case, default ports dropped."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if ":" in host:
        host = f"[{host}]"
    port = parts.port
    if port is None or (scheme, port) in (("http", 80), ("https", 443)):
        return f"{scheme}://{host}"
    return f"{scheme}://{host}:{port}"


def glob_regex(glob: str) -> str:
    """A path glob as a regex: `*` and `?` stay inside one segment, `**` crosses `/`.

    `[...]` is a character class as in fnmatch (`[!...]` negates) and never matches `/`.
    """
    out, i, n = [], 0, len(glob)
    while i < n:
        if glob.startswith("**", i):
            out.append(".*")
            i += 2
            continue
        ch = glob[i]
        i += 1
        if ch == "*":
            out.append("[^/]*")
        elif ch == "?":
            out.append("[^/]")
        elif ch == "[" and (end := glob.find("]", i + 2 if glob.startswith("!", i) else i + 1)) > 0:
            # as fnmatch: a `]` right after `[` or `[!` is a member, not the end
            body = glob[i:end]
            negate = body.startswith("!")
            body = re.sub(r"([\\\[\]^&~|])", r"\\\1", body[1:] if negate else body)
            out.append("(?!/)[" + ("^" if negate else "") + body + "]")
            i = end + 1
        else:
            out.append(re.escape(ch))
    return "".join(out)


def path_globs_pattern(globs: list[str] | tuple[str, ...]) -> re.Pattern[str] | None:
    """One compiled pattern for all globs (a single match per request), None for no globs."""
    if not globs:
        return None
    return re.compile("(?:" + "|".join(f"(?:{glob_regex(g)})" for g in globs) + r")\Z", re.DOTALL)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Listen(_Section):
    host: str = "127.0.0.1"
    port: int = Field(default=4455, ge=0, le=65535)
    # granian: ~20% more req/s and a p99 at c=256 25x lower than uvicorn here (bench/README.md)
    server: Literal["granian", "uvicorn"] = "granian"
    workers: int = Field(default=1, ge=1, le=64)  # processes; each has its own session cache


class MetricsSettings(_Section):
    """The Prometheus listener of `sessiongate serve` (middleware mode opens none: the host
    mounts `SessionGateMiddleware.metrics_app`)."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(default=9464, ge=0, le=65535)  # 0: a free port, logged at start-up


class Ory(_Section):
    public_url: str = "http://127.0.0.1:4433"
    admin_url: str | None = None  # defaults to public_url (Ory Network: admin under /admin)
    session_cookies: list[str] = Field(
        default_factory=lambda: ["ory_kratos_session", "ory_session_*"], min_length=1
    )
    timeout: Duration = 5.0
    # whoami calls at once: a cold start of 1000 sessions passes, a flood of junk is bounded
    max_inflight: int = Field(default=1024, ge=1, le=10_000)

    @field_validator("public_url")
    @classmethod
    def _public(cls, v: str) -> str:
        return _http_url(v, field="ory.public_url")

    @field_validator("admin_url")
    @classmethod
    def _admin(cls, v: str | None) -> str | None:
        return None if v in (None, "") else _http_url(v, field="ory.admin_url")

    @field_validator("session_cookies")
    @classmethod
    def _cookies(cls, v: list[str]) -> list[str]:
        for name in v:
            if not name or not _HEADER_NAME.match(name.replace("*", "x")):
                raise ValueError(f"invalid cookie name or glob {name!r}")
        return v

    @field_validator("timeout")
    @classmethod
    def _timeout(cls, v: float) -> float:
        if v <= 0:
            raise ValueError("ory.timeout must be greater than zero")
        return v

    @property
    def admin_base(self) -> str:
        return self.admin_url or self.public_url


DEFAULT_UPSTREAM_URL = "http://127.0.0.1:8080"


class Upstream(_Section):
    # None only for a decision service (forward_auth on, no app of its own; see Settings)
    url: str | None = DEFAULT_UPSTREAM_URL
    timeout: Duration = 60.0
    connect_timeout: Duration = 5.0
    max_connections: int = Field(default=256, ge=1, le=100_000)
    # Budgets that keep slow or long-lived exchanges from taking every connection (README:
    # "Upstream limits"; sessiongate.upstream_limits)
    pool_timeout: Duration = 2.0  # longest wait for a free connection, then 503
    max_connections_per_client: int = Field(default=64, ge=1, le=100_000)
    max_streaming_uploads: int = Field(default=64, ge=1, le=100_000)
    max_websockets: int = Field(default=1024, ge=1, le=100_000)
    # responses streaming past pool_timeout, and SSE: their own budget, apart from the pool
    max_long_responses: int = Field(default=1024, ge=1, le=100_000)
    body_timeout: Duration = 300.0  # a request body's whole transfer, then 408
    buffer_request_body: int = Field(default=65_536, ge=0, le=64 * 1024 * 1024)  # bytes
    # the Ory session cookie, X-Session-Token and an `Authorization: Bearer` (README, Security)
    strip_credentials: bool = True

    @model_validator(mode="before")
    @classmethod
    def _deprecated_strip_session_cookie(cls, data: Any) -> Any:
        """The old name `strip_session_cookie` still works: honoured unless the new key is set."""
        if not isinstance(data, dict) or "strip_session_cookie" not in data:
            return data
        data = dict(data)
        old = data.pop("strip_session_cookie")
        if "strip_credentials" in data:
            _log.warning(
                "upstream.strip_session_cookie is deprecated and ignored: "
                "upstream.strip_credentials is set"
            )
        else:
            _log.warning(
                "upstream.strip_session_cookie is deprecated: use upstream.strip_credentials "
                "(it also strips X-Session-Token and Authorization: Bearer)"
            )
            data["strip_credentials"] = old
        return data

    @property
    def strip_session_cookie(self) -> bool:
        """The deprecated name of `strip_credentials`, for code that still reads it."""
        return self.strip_credentials

    @field_validator("url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        return None if v is None else _http_url(v, field="upstream.url")

    @field_validator("body_timeout")
    @classmethod
    def _body_timeout(cls, v: float) -> float:
        if v <= 0:
            raise ValueError("upstream.body_timeout must be greater than zero")
        return v


class Cache(_Section):
    ttl: Duration = 60.0
    max_entries: int = Field(default=100_000, ge=1)
    negative_ttl: Duration = 2.0


def redact_url(url: str) -> str:
    """`url` without its userinfo (user and password), for errors and logs."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return parts._replace(netloc="***@" + parts.netloc.rpartition("@")[2]).geturl()


def _host_port(node: str) -> tuple[str, int]:
    host, sep, port = node.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"sentinel nodes are host:port, got {redact_url(node)!r}")
    return host, int(port)


class Sentinel(_Section):
    """Redis Sentinel instead of a URL: the gate asks the sentinels for the master's address."""

    master: str = Field(min_length=1)
    nodes: list[str] = Field(min_length=1)  # host:port of each sentinel
    tls: bool = False  # TLS to the sentinels and to the master

    @field_validator("nodes")
    @classmethod
    def _nodes(cls, v: list[str]) -> list[str]:
        for node in v:
            _host_port(node)
        return v

    def addresses(self) -> list[tuple[str, int]]:
        return [_host_port(node) for node in self.nodes]


class Shared(_Section):
    """The shared mode (README, "Several cores"): off unless `redis_url` or `sentinel` is set."""

    redis_url: str | None = None  # redis://, rediss:// (TLS) or unix://; no password here
    sentinel: Sentinel | None = None
    prefix: str = "sessiongate"  # every key the gate writes starts with `<prefix>:`
    cache_sessions: bool = True  # validated sessions shared in Redis (one whoami per fleet)
    degraded_ttl: Duration = 5.0  # longest a cache entry lives while Redis is unreachable
    timeout: Duration = 0.25  # each Redis call; an append past it is retried in the background
    consistency: Literal["eventual", "strict"] = "eventual"

    @field_validator("redis_url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v in (None, ""):
            return None
        try:
            parts = urlsplit(v)
            parts.port  # noqa: B018 (raises on a bad port)
        except ValueError:
            raise ValueError(
                f"not a URL: {redact_url(v)!r}; use redis://host:port/db, rediss://... or "
                "unix:///path/to/redis.sock"
            ) from None
        if parts.scheme not in ("redis", "rediss", "unix"):
            raise ValueError(
                f"scheme must be redis://, rediss:// (TLS) or unix://, got {redact_url(v)!r}"
            )
        if parts.scheme == "unix" and not parts.path:
            raise ValueError(f"a unix:// URL names a socket path, got {redact_url(v)!r}")
        if parts.scheme != "unix" and not parts.hostname:
            raise ValueError(f"the URL has no host: {redact_url(v)!r}")
        db = parts.path.lstrip("/")
        if parts.scheme != "unix" and db and not db.isdigit():
            raise ValueError(f"the path is a database number (/0), got {redact_url(v)!r}")
        return v

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9_.:-]{1,64}", v):
            raise ValueError(f"prefix is 1-64 of A-Z a-z 0-9 _ . : -, got {v!r}")
        return v

    @field_validator("timeout")
    @classmethod
    def _timeout(cls, v: float) -> float:
        if v <= 0:
            raise ValueError("shared.timeout must be greater than zero")
        return v

    @model_validator(mode="after")
    def _one_source(self) -> Shared:
        if self.redis_url and self.sentinel:
            raise ValueError("set shared.redis_url or shared.sentinel, not both")
        if self.consistency == "strict" and not self.enabled:
            raise ValueError("consistency: strict needs shared.redis_url or shared.sentinel")
        return self

    @property
    def enabled(self) -> bool:
        return bool(self.redis_url or self.sentinel)


class Access(_Section):
    public_paths: list[str] = Field(default_factory=lambda: ["/health/**"])
    # unset: Kratos' browser login, ory.public_url + LOGIN_PATH (filled in by Settings)
    login_url: str | None = None
    allowed_return_to: list[str] = Field(default_factory=list)

    @field_validator("login_url")
    @classmethod
    def _login(cls, v: str | None) -> str | None:
        if v in (None, ""):
            return None
        assert v is not None
        if v.startswith("/") and not v.startswith("//"):
            return v
        parts = urlsplit(v)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("access.login_url must be an http(s) URL or a path starting with /")
        return v

    @field_validator("allowed_return_to")
    @classmethod
    def _origins(cls, v: list[str]) -> list[str]:
        out = []
        for item in v:
            parts = urlsplit(item)
            if (
                parts.scheme not in ("http", "https")
                or not parts.hostname
                or (parts.path not in ("", "/") or parts.query or parts.fragment)
            ):
                raise ValueError(
                    f"allowed_return_to takes origins like https://app.example.com, got {item!r}"
                )
            out.append(origin_of(item))
        return out

    @field_validator("public_paths")
    @classmethod
    def _paths(cls, v: list[str]) -> list[str]:
        for glob in v:
            if not glob.startswith("/"):
                raise ValueError(f"public path globs start with '/', got {glob!r}")
        return v


def _ip_networks(cidrs: list[str]) -> list[str]:
    """`cidrs` if each is an IP network or address (`trusted_proxies`, `trusted_callers`)."""
    for cidr in cidrs:
        try:
            ipaddress.ip_network(cidr, strict=False)
        except ValueError as exc:
            raise ValueError(f"not an IP network: {cidr!r}") from exc
    return cidrs


class Forwarded(_Section):
    trusted_proxies: list[str] = Field(default_factory=list)

    @field_validator("trusted_proxies")
    @classmethod
    def _cidrs(cls, v: list[str]) -> list[str]:
        return _ip_networks(v)


FORWARD_AUTH_SOURCES = {
    "forwarded": "X-Forwarded-Method, -Proto, -Host and -Uri (Traefik, Caddy, nginx)",
    "original": "X-Original-Method and X-Original-URL (ingress-nginx)",
    "path": "the path after forward_auth.path (nginx auth_request, Envoy ext_authz)",
}
_ROUTE_PATH = re.compile(r"(/[A-Za-z0-9._~-]+)+")


def route_path(value: str, example: str, *, trailing_slash: bool = True) -> str:
    """A path the gate answers itself (decisions, the sessions page, the JWKS): plain
    segments, no dot segments; a ValueError naming `example` otherwise. A trailing slash is
    dropped, unless `trailing_slash` is False (then it is refused)."""
    if trailing_slash:
        value = value.rstrip("/")
    if not _ROUTE_PATH.fullmatch(value) or any(seg in (".", "..") for seg in value.split("/")):
        raise ValueError(
            f"a path such as {example}: starts with '/', segments of A-Z a-z 0-9 . _ ~ -, "
            f"no dot segments, got {value or '/'!r}"
        )
    return value


class ForwardAuth(_Section):
    """The decision endpoint for a proxy's auth requests (README, "Behind your proxy")."""

    enabled: bool = False
    path: str = "/decisions"  # answered, with every path below it; never proxied
    # which headers name the original request; required when enabled, never a fallback
    source: Literal["forwarded", "original", "path"] | None = Field(
        default=None, validate_default=True
    )
    # who may ask: the TCP peer, never a header (default: loopback only)
    trusted_callers: list[str] = Field(default_factory=lambda: ["127.0.0.0/8", "::1"])
    deny_browsers: Literal["redirect", "header"] = "redirect"

    @field_validator("path")
    @classmethod
    def _path(cls, v: str) -> str:
        return route_path(v, "/decisions")

    @field_validator("source")
    @classmethod
    def _source(cls, v: str | None, info: ValidationInfo) -> str | None:
        if v is None and info.data.get("enabled"):
            choices = "; ".join(f"{k}: {d}" for k, d in FORWARD_AUTH_SOURCES.items())
            raise ValueError(
                f"required when forward_auth.enabled is true; one of {choices}. The gate reads "
                f"the original request from that family only"
            )
        return v

    @field_validator("trusted_callers")
    @classmethod
    def _cidrs(cls, v: list[str]) -> list[str]:
        return _ip_networks(v)

    def collides_with(self, owned: str) -> bool:
        """The decision path and a path the gate owns for something else overlap (one is
        the other, or lies below it)."""
        a, b = self.path + "/", owned.rstrip("/") + "/"
        return a.startswith(b) or b.startswith(a)


#: Session fields an admin rule may read by default: set by Kratos or the operator, not the user.
ADMIN_RULE_PATHS = (
    "identity.id",
    "identity.schema_id",
    "identity.state",
    "authenticator_assurance_level",
)
ADMIN_RULE_PREFIXES = ("identity.metadata_public.",)


def _operator_controlled(path: str) -> bool:
    return path in ADMIN_RULE_PATHS or (
        path.startswith(ADMIN_RULE_PREFIXES) and len(path) > len(ADMIN_RULE_PREFIXES[0])
    )


class AdminApi(_Section):
    enabled: bool = False
    keys_env: str = ADMIN_KEYS_ENV  # comma-separated keys, read from this variable
    # Rules on user-editable session data (traits, addresses, devices) are refused unless this
    # is set: a user who can edit the value could admit themselves. (Before allow_identities:
    # its validator reads this.)
    allow_user_controlled_rules: bool = False
    allow_identities: list[str] = Field(default_factory=list)  # ids or `path=value` rules

    @field_validator("keys_env")
    @classmethod
    def _env_name(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", v):
            raise ValueError(f"not an environment variable name: {v!r}")
        return v

    @field_validator("allow_identities")
    @classmethod
    def _rules(cls, v: list[str], info: ValidationInfo) -> list[str]:
        user_controlled_ok = info.data.get("allow_user_controlled_rules", False)
        for rule in v:
            path, sep, value = rule.partition("=")
            if sep and (not _JSON_PATH.match(path) or not value):
                raise ValueError(f"rules are an identity id or path=value, got {rule!r}")
            if sep and not user_controlled_ok and not _operator_controlled(path):
                raise ValueError(
                    f"rule {rule!r} reads {path!r}; rules may read only "
                    f"{', '.join(ADMIN_RULE_PATHS)} and identity.metadata_public.* (the rest "
                    "of a session, such as traits, addresses and devices, the user can change); "
                    "set sessions_api.admin.allow_user_controlled_rules: true to allow it"
                )
            if not sep and not re.fullmatch(r"[0-9a-fA-F-]{36}", rule):
                raise ValueError(f"{rule!r} is neither an identity id (uuid) nor path=value")
        return v

    def keys(self, environ: Mapping[str, str] | None = None) -> list[str]:
        raw = (os.environ if environ is None else environ).get(self.keys_env, "")
        return [k.strip() for k in raw.split(",") if k.strip()]


class SessionsApi(_Section):
    enabled: bool = True
    prefix: str = ""  # "" or a path such as /auth: routes become /auth/sessions...
    cookie_domain: str | None = None  # rewrite Domain= on relayed Set-Cookie headers
    admin: AdminApi = Field(default_factory=AdminApi)

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        v = v.rstrip("/")
        if v and (not v.startswith("/") or not re.fullmatch(r"(/[A-Za-z0-9._~-]+)+", v)):
            raise ValueError(f"prefix is empty or a path like /auth, got {v!r}")
        return v

    @field_validator("cookie_domain")
    @classmethod
    def _domain(cls, v: str | None) -> str | None:
        if v in (None, ""):
            return None
        if not re.fullmatch(r"\.?[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*", v):
            raise ValueError(f"not a cookie domain: {v!r}")
        return v


# what no URL written into the page may hold: controls, whitespace, quotes, `<>`, backslash
_URL_UNSAFE = re.compile(r"[\x00-\x20\x7f-\x9f\"'<>\\`]")


def _page_url(value: str) -> str:
    """A URL the sessions page writes into its HTML: a path (`/x`, not `//x`) or an absolute
    http(s) URL without user-info; nothing that could end an attribute or hide a scheme."""
    if _URL_UNSAFE.search(value) or not value.isascii():
        raise ValueError(f"must be a plain URL (no whitespace, quotes, <>, \\), got {value!r}")
    if value.startswith("/"):
        if value.startswith("//"):
            raise ValueError(f"must be a path starting with a single '/', got {value!r}")
        return value
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 (raises on a bad port)
    except ValueError:
        raise ValueError(f"must be a URL, got {value!r}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname or "@" in parts.netloc:
        raise ValueError(f"must be an http(s) URL without user-info, or a path, got {value!r}")
    return value


class SessionsPageSettings(_Section):
    """The gate's own sessions page (README, "The sessions page"): off by default."""

    enabled: bool = False
    path: str = "/.sessiongate/sessions"
    title: str = Field(default="Your sessions", min_length=1, max_length=200)
    stylesheet: str | None = None  # the app's CSS, loaded after the page's own
    return_url: str | None = None  # "back to the app"; checked like return_to
    # sessions listed (the current one included); Kratos' list is read until it has these
    max_sessions: int = Field(default=100, ge=1, le=1000)

    @field_validator("path")
    @classmethod
    def _path(cls, v: str) -> str:
        return route_path(v, "/.sessiongate/sessions")

    @field_validator("title")
    @classmethod
    def _title(cls, v: str) -> str:
        if re.search(r"[\x00-\x1f\x7f-\x9f]", v) or not v.strip():
            raise ValueError("must be one line of visible text")
        return v

    @field_validator("stylesheet")
    @classmethod
    def _stylesheet(cls, v: str | None) -> str | None:
        return None if v in (None, "") else _page_url(v)

    @field_validator("return_url")
    @classmethod
    def _return_url(cls, v: str | None) -> str | None:
        return None if v in (None, "") else _page_url(v)


_DOMAIN_TEXT = re.compile(r"[A-Za-z0-9-]+(?:\\?\.[A-Za-z0-9-]+)+")  # example\.com, example.com
_LABEL_BEFORE_DOT = re.compile(r"[A-Za-z0-9-]+(?=\\\.)")  # `app` in app\.(.*)example\.com


def origin_regex_escape(regex: str) -> str | None:
    """An origin an attacker could own that `regex` admits, or None.

    Browsers send `scheme://host[:port]`, and an attacker controls the host of any domain it
    registers. The probes: an unrelated host; and, for every domain the regex names (`D`),
    hosts that contain `D` without being `D` or under it: `evilD`, `evil-D`,
    `D.evil.invalid`, `Devil.invalid`, `D` with a dot replaced by a letter (an unescaped `.`),
    and `L.evilD` for `x` and each label `L` written before an escaped dot. Any of them
    matching means the pattern has an unanchored or un-dotted wildcard around its domain.
    """
    text = regex.replace("\\-", "-")  # re.escape writes a-b as a\-b
    domains = {m.group(0).replace("\\.", ".").lower() for m in _DOMAIN_TEXT.finditer(text)}
    labels = {"x"} | {m.group(0).lower() for m in _LABEL_BEFORE_DOT.finditer(text)}
    hosts = ["attacker.invalid"]
    for d in sorted(domains):
        hosts += [f"evil{d}", f"evil-{d}", f"{d}.evil.invalid", f"{d}evil.invalid"]
        parts = d.split(".")
        hosts += [".".join(parts[:i]) + "x" + ".".join(parts[i:]) for i in range(1, len(parts))]
        hosts += [f"{label}.evil{d}" for label in sorted(labels)]
    ports = ["", *sorted({f":{p}" for p in re.findall(r":(\d{1,5})", regex)})]
    compiled = re.compile(regex)
    for host in hosts:
        if any(host == d or host.endswith("." + d) for d in domains):
            continue
        for scheme in ("https", "http"):
            for port in ports:
                origin = f"{scheme}://{host}{port}"
                if compiled.fullmatch(origin):
                    return origin
    return None


class Cors(_Section):
    allowed_origins: list[str] = Field(default_factory=list)
    allowed_origin_regex: str | None = None
    allow_credentials: bool = True
    apply_to: Literal["sessions", "all"] = "sessions"
    max_age: int = Field(default=600, ge=0, le=86400)

    @field_validator("allowed_origins")
    @classmethod
    def _origins(cls, v: list[str]) -> list[str]:
        out = []
        for item in v:
            if item == "*":
                out.append(item)
                continue
            parts = urlsplit(item)
            if (
                parts.scheme not in ("http", "https")
                or not parts.hostname
                or (parts.path not in ("", "/") or parts.query or parts.fragment)
            ):
                raise ValueError(f"CORS origins look like https://app.example.com, got {item!r}")
            out.append(origin_of(item))
        return out

    @field_validator("allowed_origin_regex")
    @classmethod
    def _regex(cls, v: str | None) -> str | None:
        if v in (None, ""):
            return None
        try:
            re.compile(v)
        except re.error as exc:
            raise ValueError(f"invalid regular expression: {exc}") from exc
        return v

    @model_validator(mode="after")
    def _no_wildcard_with_credentials(self) -> Cors:
        if self.allow_credentials and "*" in self.allowed_origins:
            raise ValueError(
                "allowed_origins '*' together with allow_credentials would let "
                "any site read responses with the user's cookies; list origins"
            )
        if self.allow_credentials and self.allowed_origin_regex:
            escape = origin_regex_escape(self.allowed_origin_regex)
            if escape is not None and escape.endswith("//attacker.invalid"):
                raise ValueError(
                    f"allowed_origin_regex matches any origin (e.g. {escape}); "
                    f"with credentials that is unsafe"
                )
            if escape is not None:
                raise ValueError(
                    f"allowed_origin_regex admits {escape}, outside the domains it names; with "
                    f"credentials that site could read users' data. Escape the dots and anchor "
                    f"subdomains on one, e.g. https://([a-z0-9-]+\\.)*example\\.com"
                )
        return self

    @property
    def enabled(self) -> bool:
        return bool(self.allowed_origins or self.allowed_origin_regex)

    def allows(self, origin: str) -> bool:
        if origin in self.allowed_origins or "*" in self.allowed_origins:
            return True
        return bool(self.allowed_origin_regex and re.fullmatch(self.allowed_origin_regex, origin))


#: The claims the gate sets itself on every token it signs: a claim mapping cannot name them.
TOKEN_REGISTERED_CLAIMS = frozenset({"iss", "aud", "exp", "iat", "nbf", "jti"})
_CLAIM_NAME = re.compile(r"^[A-Za-z0-9_.:/-]+$")
_CLAIM_PATH = re.compile(r"^([A-Za-z0-9_-]+|\*)(\.([A-Za-z0-9_-]+|\*))*$")  # `*`: every item
DEFAULT_TOKEN_CLAIMS = {
    "sub": "identity.id",
    "sid": "id",
    "email": "identity.traits.email",
    "aal": "authenticator_assurance_level",
    "amr": "authentication_methods.*.method",
}
# Only as the identity token's header (the token's usual place), never an identity header's
_TOKEN_HEADER_OK = {"authorization"}


class IdentityToken(_Section):
    """The identity as a signed JWT for the app (README, "Identity token"): signed by the gate
    (`source: gate`, keys from `keys_file`) or by Kratos' tokenizer (`source: kratos`)."""

    enabled: bool = False
    header: str = "Authorization"  # `Bearer <jwt>`; any other header carries the bare JWT
    source: Literal["gate", "kratos"] = "gate"
    tokenize_as: str | None = None  # source kratos: the whoami tokenizer template
    issuer: str | None = None  # default public_url (never a request's Host)
    audience: str | None = None  # default the upstream's origin
    ttl: Duration | None = None  # default cache.ttl; never past the session's expires_at
    claims: dict[str, str] = Field(default_factory=lambda: dict(DEFAULT_TOKEN_CLAIMS))
    keys_file: str | None = None  # a JWKS with private keys, 0600 (signing_keys.py)
    signing_kid: str | None = None  # default the first private key in keys_file
    jwks_path: str = "/.well-known/jwks.json"  # served without a session

    @field_validator("header")
    @classmethod
    def _header(cls, v: str) -> str:
        if not _HEADER_NAME.match(v):
            raise ValueError(f"invalid header name {v!r}")
        name = v.lower().replace("_", "-")  # as the gate strips it: any case, `_` for `-`
        if name in _RESERVED_HEADERS - _TOKEN_HEADER_OK:
            raise ValueError(f"{v!r} cannot carry the identity token")
        if name.encode() in HOP_BY_HOP:
            raise ValueError(f"{v!r} is a hop-by-hop header: it never reaches the app")
        if name.encode() in TRUSTED_PROXY_HEADERS:
            raise ValueError(
                f"{v!r} is a header the gate passes on only from forwarded.trusted_proxies "
                f"(proxy addressing): pick a name of the token's own, e.g. X-Identity-Token"
            )
        return v

    @field_validator("issuer", "audience", "tokenize_as", "keys_file", "signing_kid")
    @classmethod
    def _text(cls, v: str | None) -> str | None:
        if v in (None, ""):
            return None
        assert v is not None
        if v != v.strip() or any(ord(c) < 0x20 for c in v):
            raise ValueError(f"no surrounding spaces or control characters, got {v!r}")
        return v

    @field_validator("ttl")
    @classmethod
    def _ttl(cls, v: float | None) -> float | None:
        if v is not None and v < 1:
            raise ValueError("at least 1s (a token's times are whole seconds)")
        return v

    @field_validator("claims")
    @classmethod
    def _claims(cls, v: dict[str, str]) -> dict[str, str]:
        for name, path in v.items():
            if not _CLAIM_NAME.match(name):
                raise ValueError(f"invalid claim name {name!r}")
            if name in TOKEN_REGISTERED_CLAIMS:
                raise ValueError(
                    f"{name!r} is set by the gate itself ("
                    + ", ".join(sorted(TOKEN_REGISTERED_CLAIMS))
                    + ")"
                )
            if not _CLAIM_PATH.match(path):
                raise ValueError(
                    f"invalid session path {path!r} for claim {name} (dot-separated keys, `*` "
                    f"for every item of a list, e.g. authentication_methods.*.method)"
                )
        return v

    @field_validator("jwks_path")
    @classmethod
    def _jwks_path(cls, v: str) -> str:
        return route_path(v, "/.well-known/jwks.json", trailing_slash=False)

    @model_validator(mode="after")
    def _source_fits(self) -> IdentityToken:
        if not self.enabled:
            return self
        if self.source == "kratos":
            if self.tokenize_as is None:
                raise ValueError(
                    "identity_token.tokenize_as: required with source: kratos (the name of a "
                    "template in Kratos' session.whoami.tokenizer.templates)"
                )
            # Kratos' template decides these; a setting here would silently do nothing
            for key in ("issuer", "audience", "ttl", "claims", "keys_file", "signing_kid"):
                if key in self.model_fields_set:
                    raise ValueError(
                        f"identity_token.{key}: only with source: gate (with source: kratos "
                        f"Kratos' tokenizer template decides it)"
                    )
            return self
        if self.tokenize_as is not None:
            raise ValueError("identity_token.tokenize_as: only with source: kratos")
        if self.keys_file is None:
            raise ValueError(
                "identity_token.keys_file: required with source: gate (a JWKS file with "
                "private keys; `sessiongate keys generate --out FILE` writes one)"
            )
        return self


LOG_LEVELS = ("critical", "error", "warning", "info", "debug")


class Log(_Section):
    """Logging (README, "Access logs"): the level, one access line per request, the format."""

    level: str = "info"
    # one line per request, written off the event loop; proxy mode only (in middleware mode
    # the host application logs its requests)
    access: bool = True
    format: Literal["text", "json"] = "text"  # json: one object per line, every line
    identity: bool = False  # the identity id in access lines (personal data: opt-in)

    @field_validator("level")
    @classmethod
    def _level(cls, v: str) -> str:
        if not isinstance(v, str) or v.lower() not in LOG_LEVELS:
            raise ValueError("log.level is one of " + ", ".join(LOG_LEVELS))
        return v.lower()


class Settings(_Section):
    """The whole configuration; every section has secure defaults."""

    listen: Listen = Field(default_factory=Listen)
    public_url: str | None = None  # the gate's own external URL; default: from the Host header
    ory: Ory = Field(default_factory=Ory)
    upstream: Upstream = Field(default_factory=Upstream)
    cache: Cache = Field(default_factory=Cache)
    access: Access = Field(default_factory=Access)
    identity_headers: dict[str, str] = Field(
        default_factory=lambda: {
            "X-User-Id": "identity.id",
            "X-User-Email": "identity.traits.email",
            "X-Session-Id": "id",
        }
    )
    session_header: str | None = None  # opt-in: the whole session, base64url JSON
    forwarded: Forwarded = Field(default_factory=Forwarded)
    sessions_api: SessionsApi = Field(default_factory=SessionsApi)
    cors: Cors = Field(default_factory=Cors)
    shared: Shared = Field(default_factory=Shared)
    forward_auth: ForwardAuth = Field(default_factory=ForwardAuth)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    log: Log = Field(default_factory=Log)
    identity_token: IdentityToken = Field(default_factory=IdentityToken)
    sessions_page: SessionsPageSettings = Field(default_factory=SessionsPageSettings)

    @property
    def log_level(self) -> str:
        """The deprecated name of `log.level`, for code that still reads it."""
        return self.log.level

    @model_validator(mode="before")
    @classmethod
    def _deprecated_log_level(cls, data: Any) -> Any:
        """The old top-level `log_level` still works: honoured unless `log.level` is set."""
        if not isinstance(data, dict) or "log_level" not in data:
            return data
        data = dict(data)
        old = data.pop("log_level")
        section = data.get("log")
        if isinstance(section, Log):
            section = section.model_dump(exclude_unset=True)
        if section is None:
            section = {}
        if not isinstance(section, dict):
            return data  # the section's own validation reports it
        if "level" in section:
            _log.warning("log_level is deprecated and ignored: log.level is set")
        else:
            _log.warning("log_level is deprecated: use log.level")
            data["log"] = {**section, "level": old}
        return data

    @field_validator("public_url")
    @classmethod
    def _public(cls, v: str | None) -> str | None:
        return None if v in (None, "") else _http_url(v, field="public_url")

    @field_validator("identity_headers")
    @classmethod
    def _identity_headers(cls, v: dict[str, str]) -> dict[str, str]:
        seen: set[str] = set()
        for name, path in v.items():
            if not _HEADER_NAME.match(name):
                raise ValueError(f"invalid header name {name!r}")
            if name.lower() in _RESERVED_HEADERS:
                raise ValueError(f"{name!r} cannot be an identity header")
            if not _JSON_PATH.match(path):
                raise ValueError(
                    f"invalid session path {path!r} for {name} "
                    f"(dot-separated keys, e.g. identity.traits.email)"
                )
            canon = name.lower().replace("_", "-")
            if canon in seen:
                raise ValueError(f"{name!r} is listed twice (case and '_' vs '-' are the same)")
            seen.add(canon)
        return v

    @field_validator("session_header")
    @classmethod
    def _session_header(cls, v: str | None) -> str | None:
        if v in (None, ""):
            return None
        if not _HEADER_NAME.match(v) or v.lower() in _RESERVED_HEADERS:
            raise ValueError(f"invalid session_header {v!r}")
        return v

    @model_validator(mode="before")
    @classmethod
    def _decision_service_needs_no_app(cls, data: Any) -> Any:
        """forward_auth on and `upstream.url` not given: a decision service, no app behind it."""
        if not isinstance(data, dict):
            return data
        section, upstream = data.get("forward_auth"), data.get("upstream")
        try:
            enabled = (
                section.enabled
                if isinstance(section, ForwardAuth)
                else isinstance(section, dict) and ForwardAuth.model_validate(section).enabled
            )
        except ValidationError:
            return data  # the section's own validation reports it
        if not enabled:
            return data
        if isinstance(upstream, Upstream):
            if "url" in upstream.model_fields_set:
                return data
            upstream = upstream.model_dump(exclude_unset=True)
        if upstream is None:
            upstream = {}
        if not isinstance(upstream, dict) or "url" in upstream:
            return data
        return {**data, "upstream": {**upstream, "url": None}}

    @model_validator(mode="before")
    @classmethod
    def _default_login_url(cls, data: Any) -> Any:
        """`access.login_url` unset: Kratos' browser login at `ory.public_url`."""
        if not isinstance(data, dict):
            return data
        access, ory = data.get("access"), data.get("ory")
        if isinstance(access, Access):
            access = access.model_dump()
        if access is not None and not isinstance(access, dict):
            return data  # the section's own validation reports it
        if (access or {}).get("login_url") not in (None, ""):
            return data
        if isinstance(ory, Ory):
            kratos = ory.public_url
        elif ory is None or isinstance(ory, dict):
            kratos = (ory or {}).get("public_url", Ory.model_fields["public_url"].default)
            try:
                kratos = (
                    _http_url(kratos, field="ory.public_url") if isinstance(kratos, str) else ""
                )
            except ValueError:
                kratos = ""  # reported by ory.public_url's own validation
        else:
            kratos = ""
        if kratos:
            data = {**data, "access": {**(access or {}), "login_url": kratos + LOGIN_PATH}}
        return data

    @model_validator(mode="after")
    def _cross(self) -> Settings:
        self._login_url_is_not_protected()
        self._forward_auth_fits()
        self._metrics_port_is_its_own()
        self._identity_token_fits()
        self._sessions_page_fits()
        if self.session_header and self.session_header.lower().replace("_", "-") in {
            n.lower().replace("_", "-") for n in self.identity_headers
        }:
            raise ValueError("session_header repeats an identity header")
        return self

    def gate_origins(self) -> set[str]:
        """Origins that certainly reach this gate: `public_url` and the listen address."""
        origins = {origin_of(self.public_url)} if self.public_url else set()
        host, port = self.listen.host, self.listen.port
        names = {host}
        with contextlib.suppress(ValueError):
            if ipaddress.ip_address(host).is_unspecified:  # 0.0.0.0, ::
                names = {"127.0.0.1", "localhost", "::1"}
        if names & {"127.0.0.1", "localhost"}:
            names |= {"127.0.0.1", "localhost"}  # the same loopback listener
        for name in names:
            with contextlib.suppress(ValueError):  # a host no URL can hold: nothing to match
                origins.add(
                    origin_of(f"http://[{name}]:{port}" if ":" in name else f"http://{name}:{port}")
                )
        return origins

    def _forward_auth_fits(self) -> None:
        """A decision path that does not shadow the gate's own routes; an app unless the gate
        is only a decision service. (Messages start with their key path: see _format_errors.)"""
        fa = self.forward_auth
        if self.upstream.url is None and not fa.enabled:
            raise ValueError(
                "upstream.url: required: the URL of the protected app (only a decision "
                "service, forward_auth.enabled: true, may go without one)"
            )
        if not fa.enabled:
            return
        prefix = self.sessions_api.prefix
        owned = [f"{prefix}/sessions", f"{prefix}/self-service", f"{prefix}/admin", "/health"]
        for path in owned:
            if fa.collides_with(path):
                raise ValueError(
                    f"forward_auth.path: {fa.path!r} overlaps {path!r}, which the gate answers "
                    f"itself (relay routes under sessions_api.prefix, /health/*); pick another, "
                    f"e.g. /decisions"
                )

    def _identity_token_fits(self) -> None:
        """An issuer and an audience the gate can stand behind; a header and a JWKS path of
        the token's own."""
        token = self.identity_token
        if not token.enabled:
            return
        header = token.header.lower().replace("_", "-")
        if header in self._identity_header_names():
            raise ValueError(
                f"identity_token.header: {token.header!r} is already one of the gate's headers "
                f"(identity_headers, session_header, X-Kratos-Authenticated-Identity-Id)"
            )
        if token.source != "gate":
            return
        if self.token_ttl < 1:
            # cache.ttl below 1 s (0: no cache): a token would be expired when signed
            raise ValueError(
                f"identity_token.ttl: the token's lifetime defaults to cache.ttl "
                f"({self.cache.ttl:g}s), less than 1s (a token's times are whole seconds): "
                f"set identity_token.ttl (at least 1s)"
            )
        if token.issuer is None and self.public_url is None:
            raise ValueError(
                "identity_token.issuer: required unless public_url is set (then it defaults to "
                "it); never taken from a request's Host"
            )
        if token.audience is None and self.upstream.url is None:
            raise ValueError(
                "identity_token.audience: required when there is no upstream.url (it defaults "
                "to the upstream's origin)"
            )
        if self.forward_auth.enabled and self.forward_auth.collides_with(token.jwks_path):
            raise ValueError(
                f"identity_token.jwks_path: {token.jwks_path!r} overlaps forward_auth.path"
            )
        prefix = self.sessions_api.prefix
        for path in (f"{prefix}/sessions", f"{prefix}/self-service", f"{prefix}/admin", "/health"):
            if (token.jwks_path + "/").startswith(path + "/"):
                raise ValueError(
                    f"identity_token.jwks_path: {token.jwks_path!r} is under {path!r}, which "
                    f"the gate answers itself"
                )

    @property
    def token_issuer(self) -> str:
        """The identity token's `iss`: identity_token.issuer, else public_url."""
        token = self.identity_token
        return token.issuer or self.public_url or ""

    @property
    def token_audience(self) -> str:
        """The identity token's `aud`: identity_token.audience, else the upstream's origin."""
        token = self.identity_token
        if token.audience is not None:
            return token.audience
        return origin_of(self.upstream.url) if self.upstream.url else ""

    @property
    def whoami_tokenize_as(self) -> str | None:
        """The tokenizer template every whoami asks Kratos for (identity_token source kratos)."""
        token = self.identity_token
        return token.tokenize_as if token.enabled and token.source == "kratos" else None

    @property
    def token_ttl(self) -> float:
        """The identity token's lifetime (before the session's own expiry caps it)."""
        ttl = self.identity_token.ttl
        return self.cache.ttl if ttl is None else ttl

    def _sessions_page_fits(self) -> None:
        """A page path of its own, and a return URL the gate may send a browser to."""
        page = self.sessions_page
        if not page.enabled:
            return
        public = path_globs_pattern(self.access.public_paths)
        if public is not None and public.match(page.path) is not None:
            # a public path carries no session: the page would send everyone to log in, forever
            raise ValueError(
                f"sessions_page.path: {page.path!r} is in access.public_paths; the page needs "
                f"the caller's session"
            )
        prefix = self.sessions_api.prefix
        owned = [f"{prefix}/sessions", f"{prefix}/self-service", f"{prefix}/admin", "/health"]
        if self.forward_auth.enabled:
            owned.append(self.forward_auth.path)
        if self.identity_token.enabled:
            owned.append(self.identity_token.jwks_path)
        for path in owned:
            a, b = page.path + "/", path.rstrip("/") + "/"
            if a.startswith(b) or b.startswith(a):
                raise ValueError(
                    f"sessions_page.path: {page.path!r} overlaps {path!r}, which the gate "
                    f"answers itself; pick another, e.g. /.sessiongate/sessions"
                )
        url = page.return_url
        if url is not None and not url.startswith("/"):
            allowed = self.gate_origins() | set(self.access.allowed_return_to)
            if origin_of(url) not in allowed:
                raise ValueError(
                    f"sessions_page.return_url: {url!r} is on none of the origins return_to "
                    f"may use (public_url, the listen address, access.allowed_return_to)"
                )

    def _metrics_port_is_its_own(self) -> None:
        """The metrics listener cannot share the gate's own address and port."""
        metrics, listen = self.metrics, self.listen
        if not metrics.enabled or metrics.port == 0 or metrics.port != listen.port:
            return
        hosts = {metrics.host, listen.host}
        if len(hosts) == 1 or hosts & {"0.0.0.0", "::", ""}:  # noqa: S104 (compared, not bound)
            raise ValueError(
                f"metrics.port: {metrics.port} is the gate's own port (listen.port) on the same "
                f"address; the metrics need a port of their own (default 9464, 0 picks one)"
            )

    def _login_url_is_not_protected(self) -> None:
        """A login page behind the gate itself sends a browser to log in, forever."""
        login = self.access.login_url
        if login is None:
            return
        if login.startswith("/"):
            path = urlsplit(login).path
        elif origin_of(login) in self.gate_origins():
            path = urlsplit(login).path or "/"
        else:
            return
        public = path_globs_pattern(self.access.public_paths)
        if public is None or public.match(path) is None:
            raise ValueError(
                f"access.login_url {login!r} is served by the gate itself and its path is not in "
                f"access.public_paths: browsers would be sent to log in again, forever. Use "
                f"Kratos' login (ory.public_url + {LOGIN_PATH}, the default) or make it public"
            )

    def _identity_header_names(self) -> set[str]:
        """Canonical names of the identity headers the gate sets (the token's aside)."""
        names = {n.lower().replace("_", "-") for n in self.identity_headers}
        if self.session_header:
            names.add(self.session_header.lower().replace("_", "-"))
        names.add("x-kratos-authenticated-identity-id")
        return names

    def spoofable_headers(self) -> frozenset[str]:
        """Canonical names (lower case, `_` as `-`) the gate owns and clients must not send."""
        names = self._identity_header_names()
        if self.identity_token.enabled:  # the client's copy never reaches the app, any path
            names.add(self.identity_token.header.lower().replace("_", "-"))
        return frozenset(names)


class ConfigError(Exception):
    """Every problem found, each as `key.path: message`."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def _set_path(tree: dict[str, Any], path: list[str], value: Any) -> None:
    node = tree
    for key in path[:-1]:
        child = node.get(key)
        if not isinstance(child, dict):
            child = {}
            node[key] = child
        node = child
    node[path[-1]] = value


_SCALAR_KEYS = frozenset({"public_url", "session_header", "log_level", "identity_headers"})


def env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    """`SESSIONGATE_ORY__PUBLIC_URL=...` → {"ory": {"public_url": ...}}; values parsed as YAML."""
    tree: dict[str, Any] = {}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX) or name in (CONFIG_ENV, ADMIN_KEYS_ENV):
            continue
        path = [p.lower() for p in name[len(ENV_PREFIX) :].split("__")]
        if not all(path):
            continue
        if len(path) == 1 and path[0] not in _SCALAR_KEYS:
            # SESSIONGATE_ADMIN_KEYS-like variables hold secrets or belong to other tools;
            # only the top-level scalar settings are single-segment overrides.
            continue
        try:
            value = yaml.safe_load(raw) if raw.strip() else raw
        except yaml.YAMLError:
            value = raw
        # identity_headers keys are header names: keep their case
        if path[0] == "identity_headers" and len(path) == 2:
            path[1] = name[len(ENV_PREFIX) :].split("__")[1]
        _set_path(tree, path, value)  # `null` or `~` unsets an optional key
    return tree


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


_KEYED_MESSAGE = re.compile(r"([a-z_]+(?:\.[a-z_]+)+): (.*)", re.DOTALL)


def _format_errors(err: ValidationError) -> list[str]:
    problems = []
    for item in err.errors():
        loc = ".".join(str(p) for p in item["loc"]) or "(top level)"
        msg = item["msg"].removeprefix("Value error, ")
        keyed = _KEYED_MESSAGE.match(msg)
        if keyed and (not item["loc"] or keyed.group(1).startswith(loc + ".")):
            loc, msg = keyed.group(1), keyed.group(2)  # a cross-section check names its key
        if item["type"] == "extra_forbidden":
            msg = "unknown key"
            if loc.endswith("api_key"):
                msg += f" (the Ory API key is read from the environment variable {API_KEY_ENV})"
        problems.append(f"{loc}: {msg}")
    return problems


def load_settings(
    path: str | os.PathLike[str] | None = None, environ: Mapping[str, str] | None = None
) -> Settings:
    """Read the YAML file (if any), apply environment overrides, validate everything."""
    environ = os.environ if environ is None else environ
    data: dict[str, Any] = {}
    if path is None and environ.get(CONFIG_ENV):
        path = environ[CONFIG_ENV]
    if path is not None:
        try:
            loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError([f"(file): cannot read {path}: {exc.strerror or exc}"]) from exc
        except yaml.YAMLError as exc:
            raise ConfigError([f"(file): {path} is not valid YAML: {exc}"]) from exc
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError([f"(file): {path} must hold a mapping of sections"])
        data = loaded or {}
    file_problems = _secrets_in_file(data)
    if file_problems:
        raise ConfigError(file_problems)
    data = _merge(data, env_overrides(environ))
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc)) from exc


def _secrets_in_file(data: dict[str, Any]) -> list[str]:
    """Secrets belong in the environment: a Redis URL with userinfo in the file is refused."""
    shared = data.get("shared")
    url = shared.get("redis_url") if isinstance(shared, dict) else None
    if isinstance(url, str) and "@" in urlsplit(url).netloc:
        return [
            f"shared.redis_url: the file must not hold Redis credentials "
            f"({redact_url(url)}); set the password in {REDIS_PASSWORD_ENV} "
            f"(or the whole URL in {ENV_PREFIX}SHARED__REDIS_URL)"
        ]
    return []


def shared_secret(environ: Mapping[str, str] | None = None) -> bytes | None:
    """`SESSIONGATE_SECRET`: keys every digest and MAC the shared mode keeps in Redis."""
    value = (os.environ if environ is None else environ).get(SECRET_ENV, "")
    return value.encode() if value else None


def runtime_problems(settings: Settings, environ: Mapping[str, str] | None = None) -> list[str]:
    """Problems that depend on the environment or other files as well as the settings
    (checked by check-config and at start-up)."""
    problems: list[str] = []
    if settings.shared.enabled:
        secret = shared_secret(environ)
        if secret is None or len(secret) < SECRET_MIN_BYTES:
            problems.append(
                f"shared: the shared mode needs {SECRET_ENV} in the environment, at least "
                f"{SECRET_MIN_BYTES} bytes and the same on every process"
                + ("" if secret is None else f" (it has {len(secret)})")
            )
    if settings.sessions_page.enabled:
        secret = shared_secret(environ)
        if secret is not None and len(secret) < SECRET_MIN_BYTES:
            problems.append(
                f"sessions_page: {SECRET_ENV} keys the page's CSRF tokens and must have at least "
                f"{SECRET_MIN_BYTES} bytes (it has {len(secret)})"
            )
        elif secret is None and settings.listen.workers > 1:
            problems.append(
                f"sessions_page: with listen.workers > 1 a form may be posted to any worker, "
                f"so the page's CSRF tokens need {SECRET_ENV} (at least {SECRET_MIN_BYTES} "
                f"bytes, the same on every process) in the environment"
            )
    admin = settings.sessions_api.admin
    if (
        settings.sessions_api.enabled
        and admin.enabled
        and not (admin.keys(environ) or admin.allow_identities)
    ):
        problems.append(
            f"sessions_api.admin.enabled: admin routes are on but there are neither keys "
            f"(environment variable {admin.keys_env}) nor allow_identities rules"
        )
    token = settings.identity_token
    if token.enabled and token.source == "gate" and token.keys_file is not None:
        # here, not at the top: `cryptography` loads only for a gate that signs tokens
        from sessiongate.signing_keys import KeysFileError, load_keys

        try:
            load_keys(token.keys_file, token.signing_kid)
        except KeysFileError as exc:
            problems.extend(exc.problems)
    return problems


def config_warnings(settings: Settings) -> list[str]:
    """Settings that work but are probably not what was meant (check-config and start-up)."""
    out = []
    if settings.public_url is None:
        out.append(
            "public_url: not set, so each request's Host header decides the origin used for "
            "return_to and for URLs the relay rewrites; set it to the gate's external URL"
        )
    for cidr in settings.forward_auth.trusted_callers if settings.forward_auth.enabled else ():
        if ipaddress.ip_network(cidr, strict=False).prefixlen == 0:
            out.append(
                f"forward_auth.trusted_callers: {cidr!r} lets any address ask for decisions "
                f"(and learn whose sessions are valid); list your proxies' addresses"
            )
    if settings.sessions_page.enabled and shared_secret() is None:
        out.append(
            f"sessions_page: {SECRET_ENV} is not set, so the page's CSRF tokens are keyed by a "
            f"random key of this process: a form posted to another process or replica (or "
            f"after a restart) is refused. Set it (>= {SECRET_MIN_BYTES} bytes, the same "
            f"everywhere) to run more than one"
        )
    token = settings.identity_token
    if (
        token.enabled
        and settings.forward_auth.enabled
        and settings.forward_auth.source == "path"
        and token.header.lower() == "authorization"
    ):
        out.append(
            "identity_token.header: Authorization with forward auth: each decision names "
            "authorization in x-envoy-auth-headers-to-remove (the client's Ory credential must "
            "not reach the app), and Envoy removes those after it sets the answer's headers, so "
            "behind Envoy the token never reaches the app; set identity_token.header to a name "
            "of its own (e.g. X-Identity-Token) and list it in allowed_upstream_headers "
            '(README, "Identity token")'
        )
    if (
        token.enabled
        and token.source == "kratos"
        and settings.shared.enabled
        and settings.shared.cache_sessions
    ):
        out.append(
            "shared.cache_sessions: with identity_token.source: kratos sessions are not shared "
            "through Redis (Kratos' token is a bearer credential for the app and stays out of "
            "it): each process asks whoami once per session; revocations are still shared"
        )
    for glob in settings.access.public_paths:
        if glob.endswith("/*"):
            out.append(
                f"access.public_paths: {glob!r} matches one path segment only (`*` does not "
                f"cross '/'); write {glob + '*'!r} for everything below {glob[:-2] or '/'}"
            )
    return out


def ory_api_key(environ: Mapping[str, str] | None = None) -> str | None:
    value = (os.environ if environ is None else environ).get(API_KEY_ENV, "")
    return value or None
