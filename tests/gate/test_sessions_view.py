"""The sessions page's HTML (sessions_view.py): device names, escaping, what each state shows."""

from __future__ import annotations

import pytest

from sessiongate.sessions_view import Listing, SessionsView, describe_device, escape


@pytest.mark.parametrize(
    ("agent", "shown"),
    [
        (
            "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
            "Chrome/131.0.0.0 Safari/537.36",
            "Chrome 131 on Linux",
        ),
        (
            "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) "
            "Chrome/131.0.6778.81 Mobile Safari/537.36",
            "Chrome Mobile 131 on Android 14 (Pixel 8)",
        ),
        ("curl/8.5.0", "curl 8.5"),
        ("", "Unknown device"),
        ("<script>", "Unknown device"),
    ],
)
def test_device_names_come_from_the_user_agent(agent: str, shown: str) -> None:
    assert describe_device(agent) == shown


def test_escape_shows_controls_and_bidi_overrides_as_code_points() -> None:
    assert escape('<b title="x">') == "&lt;b title=&quot;x&quot;&gt;"
    assert escape("evil\u202etxt.exe\x00") == "evil[U+202E]txt.exe[U+0000]"
    assert escape("Zürich, CH") == "Zürich, CH"
    # zero-width and other invisible format characters, the Arabic letter mark, separators
    for char in ("\u061c", "\u200b", "\u200d", "\u2060", "\ufeff", "\u2028", "\u2029"):
        assert escape(f"a{char}b") == f"a[U+{ord(char):04X}]b"
    assert escape("a\u00a0b") == "a\u00a0b"  # a no-break space is shown as it is


def _view(listing: Listing, **overrides: object) -> str:
    current = {
        "id": "c0ffee00-0000-4000-8000-000000000000",
        "authenticated_at": "2026-03-20T10:11:12.123456789+01:00",
        "authenticator_assurance_level": "aal2",
        "authentication_methods": [
            {"method": "password", "aal": "aal1"},
            {"method": "totp", "aal": "aal2"},
            {"method": "oidc", "aal": "aal1", "provider": "<github>"},
        ],
        "identity": {"id": "i-1", "traits": {"username": "al<i>ce"}},
        "devices": [{"ip_address": None, "user_agent": None, "location": ""}],
    }
    fields: dict[str, object] = {
        "title": "Sessions",
        "css_url": "/p/sessions.css",
        "js_url": "/p/sessions.js",
        "stylesheet": None,
        "action": "/p",
        "current": current,
        "listing": listing,
        "max_others": 99,
        "token": "t.o.k",
        "logout_url": None,
        "return_url": None,
        "status": None,
        **overrides,
    }
    return SessionsView(**fields).render().decode()  # type: ignore[arg-type]


def test_the_current_session_card() -> None:
    page = _view(Listing())
    assert "Signed in as <strong>al&lt;i&gt;ce</strong>" in page
    # Kratos' nanoseconds and offset: UTC, ISO 8601, in a <time> the script localises
    assert '<time datetime="2026-03-20T09:11:12Z" data-local>2026-03-20T09:11:12Z</time>' in page
    assert "Password, Authenticator app, Social sign-in (&lt;github&gt;)" in page
    assert "AAL2 (two factors)" in page
    assert page.count("Unknown") == 3  # device, IP address, location
    assert "No other active sessions" in page
    assert "Sign out all other sessions" not in page  # nothing to sign out
    assert "You are using this session now.</p>" in page  # no logout link known


def test_the_others_could_not_be_read() -> None:
    page = _view(Listing(status=503))
    assert "could not be loaded" in page
    assert "Sign out all other sessions" not in page


def test_a_status_message_is_a_fixed_text() -> None:
    page = _view(Listing(), status="current", logout_url="https://gate.example/logout?t=1&x")
    assert 'role="status"' in page
    assert '<a href="https://gate.example/logout?t=1&amp;x">Sign out</a>' in page
    assert 'role="alert"' in _view(Listing(), status="expired")
