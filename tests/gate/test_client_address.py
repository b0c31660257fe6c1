"""`client_address.TrustedProxies`: the one trusted-network check of the proxy, the upstream
limits and forward auth."""

from __future__ import annotations

from sessiongate.client_address import VERDICT_MEMO, TrustedProxies


def test_an_ipv4_peer_seen_by_a_dual_stack_listener_counts_as_ipv4():
    trusted = TrustedProxies(["10.0.0.0/8", "::1"])
    assert "::ffff:10.1.2.3" in trusted
    assert "10.1.2.3" in trusted
    assert "::ffff:192.0.2.1" not in trusted
    assert "::1" in trusted
    assert "fe80::1%eth0" not in trusted
    assert TrustedProxies(["fe80::/10"]).__contains__("fe80::1%eth0")


def test_junk_is_never_trusted_and_the_memo_stays_bounded():
    trusted = TrustedProxies(["0.0.0.0/0"])
    assert "not-an-address" not in trusted
    assert "" not in trusted
    for n in range(VERDICT_MEMO + 10):  # addresses from X-Forwarded-For are client-chosen
        assert f"junk-{n}" not in trusted
    assert len(trusted._verdicts) <= VERDICT_MEMO
    assert "192.0.2.1" in trusted
    assert "192.0.2.1" not in TrustedProxies()
