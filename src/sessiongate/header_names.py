"""Header names with a meaning to proxies: hop-by-hop, and those only trusted proxies may send.

Shared by the proxy (what it drops or passes on) and the settings (names the gate may not take
for its own headers).
"""

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
FORWARDED = frozenset(
    {b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"forwarded", b"x-real-ip"}
)
# Headers some servers and frameworks honour to rewrite the path, scheme, host or client
# address (IIS/Symfony X-Original-URL, Spring X-Forwarded-Prefix, Akamai True-Client-IP...):
# passed on only from `forwarded.trusted_proxies`, like X-Forwarded-*.
ROUTING = frozenset(
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
TRUSTED_ONLY = FORWARDED | ROUTING
