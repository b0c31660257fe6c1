"""Who the client is: `forwarded.trusted_proxies`, and the key its per-client budget counts.

One copy of the trusted-network check for the proxy (which `X-Forwarded-*` headers to keep), the
upstream limits (whose budget an exchange counts against) and forward auth (who may ask for
decisions); each asks once per request.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable

from starlette.types import Scope

VERDICT_MEMO = 4096


class TrustedProxies:
    """Trusted networks (`forwarded.trusted_proxies`, `forward_auth.trusted_callers`), parsed
    once; the verdict for an address is remembered (the same few peers ask over and over)."""

    __slots__ = ("_verdicts", "networks")

    def __init__(self, cidrs: Iterable[str] | None = None) -> None:
        self.networks = tuple(ipaddress.ip_network(c, strict=False) for c in cidrs or ())
        self._verdicts: dict[str, bool] = {}

    def __bool__(self) -> bool:
        return bool(self.networks)

    def __contains__(self, address: str) -> bool:
        if not self.networks:
            return False
        verdict = self._verdicts.get(address)
        if verdict is None:
            verdict = self._in_networks(address)
            if len(self._verdicts) >= VERDICT_MEMO:  # addresses may come from headers: bounded
                self._verdicts.clear()
            self._verdicts[address] = verdict
        return verdict

    def _in_networks(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address.strip().split("%", 1)[0])
        except ValueError:
            return False
        # a dual-stack listener sees an IPv4 peer as ::ffff:a.b.c.d: its IPv4 networks count
        mapped = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None
        return any(ip in net or (mapped is not None and mapped in net) for net in self.networks)

    def peer_is_trusted(self, scope: Scope) -> bool:
        """The connection's peer is one of the trusted proxies (False when none is set)."""
        if not self.networks:
            return False
        client = scope.get("client")
        return bool(client) and client[0] in self

    def client_address(self, scope: Scope, peer_trusted: bool) -> str:
        """The peer or, when the peer is a trusted proxy, the rightmost `X-Forwarded-For`
        address no trusted proxy claims: what the balancer saw connect (what a client wrote
        to the left of the list is ignored)."""
        client = scope.get("client")
        peer: str = client[0] if client else ""
        if not peer_trusted:
            return peer
        hops = [
            hop.strip()
            for name, value in scope["headers"]
            if name == b"x-forwarded-for"
            for hop in value.decode("latin-1").split(",")
        ]
        for hop in reversed(hops):
            if hop and hop not in self:
                return hop
        return hops[0] if hops and hops[0] else peer


def client_key(address: str) -> str:
    """The budget key of an address: IPv4 as is, IPv6 by its /64 (one host is commonly
    handed a whole /64, so its addresses are one client)."""
    if ":" not in address:
        return address  # IPv4 (or no address): the hot path, no parsing
    return _v6_key(address)


@functools.lru_cache(maxsize=4096)
def _v6_key(address: str) -> str:
    try:
        ip = ipaddress.IPv6Address(address.strip().split("%", 1)[0])
    except ValueError:
        return address
    if ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ipaddress.IPv6Network((ip, 64), strict=False))
