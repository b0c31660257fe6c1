"""The sessions page in a real browser (Debian's chromium, driven by Playwright).

Each browser context is one device: its own cookies and user agent, and the Cloudflare-style
location headers Kratos records at sign-in. Everything is on 127.0.0.1: the Kratos fake (with its
login page), the gate, an echo app, and for the cross-origin test a page on another port (same
site, so the SameSite=Lax session cookie does ride along: only the gate's checks stop it).
Screenshots of the page (desktop and narrow) go to $SESSIONGATE_SCREENSHOTS, else to a
directory under pytest's tmp path; the path is printed.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sessions_page_stack import PAGE, PASSWORD, PageStack, csrf_of
from starlette.types import Receive, Scope, Send

from browsers import TIMEOUT_MS, launch_options
from sessiongate.testing import UvicornThread

pytest.importorskip("playwright")

ALICE = "alice@example.com"
FIREFOX_WINDOWS = "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:133.0) Gecko/20100101 Firefox/133.0"
SAFARI_IPHONE = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1"
)
CHROME_MAC = (
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36"
)
DEVICES = {
    "firefox": (FIREFOX_WINDOWS, "Firefox 133 on Windows 10", ("Berlin", "DE")),
    "iphone": (SAFARI_IPHONE, "Mobile Safari 17.5 on iOS 17.5 (iPhone)", ("Lyon", "FR")),
    "mac": (CHROME_MAC, "Chrome 131 on Mac OS X 10.15", ("Oslo", "NO")),
}


@pytest.fixture
def screenshots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    configured = os.environ.get("SESSIONGATE_SCREENSHOTS")
    path = Path(configured) if configured else tmp_path_factory.mktemp("sessions-page-shots")
    path.mkdir(parents=True, exist_ok=True)
    print(f"\nsessions page screenshots: {path}")
    return path


async def _device(browser: Any, name: str, *, narrow: bool = False) -> Any:
    agent, _, (city, country) = DEVICES[name]
    viewport = {"width": 390, "height": 844} if narrow else {"width": 1200, "height": 900}
    context = await browser.new_context(
        user_agent=agent,
        viewport=viewport,
        extra_http_headers={"Cf-Ipcity": city, "Cf-Ipcountry": country},
    )
    context.set_default_timeout(TIMEOUT_MS)
    context.set_default_navigation_timeout(TIMEOUT_MS)
    return context


async def _sign_in(context: Any, stack: PageStack) -> Any:
    """Open the sessions page with no session: the gate sends the browser to Kratos' login
    with return_to the page; after the password, Kratos sends it back there."""
    page = await context.new_page()
    await page.goto(stack.page_url)
    assert page.url.startswith(stack.fake.public_url + "/self-service/login/browser?"), page.url
    assert "return_to=" in page.url
    await page.fill("input[name=identifier]", ALICE)
    await page.fill("input[name=password]", PASSWORD)
    await page.click("button[type=submit]")
    await page.wait_for_url(stack.page_url)
    return page


def _card(page: Any, device_name: str) -> Any:
    return page.locator("article.sg-card", has=page.locator("h3", has_text=device_name))


async def _is_sent_to_login(context: Any, stack: PageStack, path: str = "/app/home") -> bool:
    page = await context.new_page()
    await page.goto(stack.url + path)
    at_login = page.url.startswith(stack.fake.public_url + "/self-service/login/browser")
    await page.close()
    return at_login


def _alice(stack: PageStack) -> str:
    alice = stack.fake.create_identity(email=ALICE)
    stack.fake.set_password(alice, PASSWORD)
    return alice


async def test_two_devices_sign_the_other_out(
    make_page_stack: Callable[..., PageStack], screenshots: Path
) -> None:
    from playwright.async_api import async_playwright

    stack = make_page_stack()
    _alice(stack)
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(**launch_options())
        try:
            laptop = await _device(browser, "firefox")
            phone = await _device(browser, "iphone", narrow=True)
            laptop_page = await _sign_in(laptop, stack)
            phone_page = await _sign_in(phone, stack)
            await laptop_page.reload()
            login_page = stack.fake.public_url + "/self-service/login/browser?"

            # this device first, marked; the phone among the others, with what Kratos recorded
            current = laptop_page.locator("article.sg-current")
            await current.locator("h3").wait_for()
            assert "Firefox 133 on Windows 10" in await current.locator("h3").inner_text()
            assert "This device" in await current.inner_text()
            assert "Berlin, DE" in await current.inner_text()
            phone_card = _card(laptop_page, "Mobile Safari 17.5 on iOS 17.5 (iPhone)")
            assert await phone_card.count() == 1
            text = await phone_card.inner_text()
            assert "Lyon, FR" in text
            assert "127.0.0.1" in text
            assert "Password" in text
            assert "as reported at sign-in" in text
            # the sign-in time: ISO 8601 in <time datetime>, shown in the browser's locale
            time_el = phone_card.locator("time")
            iso = await time_el.get_attribute("datetime")
            assert iso is not None
            assert iso.endswith("Z")
            assert await time_el.get_attribute("title") == iso  # the script localised it
            # the current session has no sign-out form, but Kratos' logout link
            assert await current.locator("form").count() == 0
            logout = await current.get_by_role("link", name="Sign out").get_attribute("href")
            assert logout is not None
            assert "/self-service/logout?token=ory_lo_" in logout

            await laptop_page.screenshot(path=str(screenshots / "desktop.png"), full_page=True)
            await phone_page.reload()
            await phone_page.screenshot(path=str(screenshots / "narrow.png"), full_page=True)

            # sign the phone out from the laptop
            await phone_card.get_by_role("button", name="Sign out this session").click()
            await laptop_page.wait_for_url(
                re.compile(re.escape(stack.page_url + "?status=revoked&proof=") + ".+")
            )
            status = await laptop_page.get_by_role("status").inner_text()
            assert "The session was signed out" in status
            assert await _card(laptop_page, "Mobile Safari").count() == 0
            assert "No other active sessions" in await laptop_page.inner_text("main")
            await laptop_page.screenshot(
                path=str(screenshots / "desktop-after-sign-out.png"), full_page=True
            )

            # the phone's very next request, a click on its (now stale) page, is refused (it
            # signs nobody out) and offers the login, with return_to the page
            whoamis, revokes = stack.fake.count("GET", "/sessions/whoami"), stack.revokes()
            await phone_page.get_by_role("button", name="Sign out all other sessions").click()
            await phone_page.get_by_role("heading", name="Your session has ended").wait_for()
            assert stack.fake.count("GET", "/sessions/whoami") == whoamis + 1  # not the cache
            assert stack.revokes() == revokes
            await phone_page.get_by_role("link", name="Sign in again").click()
            await phone_page.wait_for_url(lambda url: url.startswith(login_page))
            assert "return_to=" in phone_page.url
            # and so is every later one
            assert await _is_sent_to_login(phone, stack)
            # the laptop goes on
            assert not await _is_sent_to_login(laptop, stack)
        finally:
            await browser.close()


async def test_sign_out_all_other_sessions_with_three_devices(
    make_page_stack: Callable[..., PageStack],
) -> None:
    from playwright.async_api import async_playwright

    stack = make_page_stack()
    _alice(stack)
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(**launch_options())
        try:
            contexts = {name: await _device(browser, name) for name in DEVICES}
            pages = {name: await _sign_in(ctx, stack) for name, ctx in contexts.items()}
            mac = pages["mac"]
            await mac.reload()
            for other in ("firefox", "iphone"):
                assert await _card(mac, DEVICES[other][1]).count() == 1
            # every device is signed in (and cached by the gate)
            for ctx in contexts.values():
                assert not await _is_sent_to_login(ctx, stack)

            await mac.get_by_role("button", name="Sign out all other sessions").click()
            await mac.wait_for_url(
                re.compile(re.escape(stack.page_url + "?status=revoked_others&proof=") + ".+")
            )
            assert (
                "All other sessions were signed out" in await mac.get_by_role("status").inner_text()
            )
            assert "Other sessions (0)" in await mac.inner_text("main")

            assert await _is_sent_to_login(contexts["firefox"], stack)
            assert await _is_sent_to_login(contexts["iphone"], stack, PAGE)
            assert not await _is_sent_to_login(contexts["mac"], stack)

            # this device ends its own session with the logout link the page offers
            await mac.get_by_role("link", name="Sign out").click()
            await mac.wait_for_load_state()
            assert await _is_sent_to_login(contexts["mac"], stack)
        finally:
            await browser.close()


class _AttackerPage:
    """A page on another origin (same site: another port on 127.0.0.1) that posts the page's
    form with a genuine token it got hold of."""

    def __init__(self) -> None:
        self.html = b""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        body = self.html
        headers = [(b"content-type", b"text/html"), (b"content-length", b"%d" % len(body))]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})


async def test_a_cross_origin_form_post_is_refused_even_with_a_valid_token(
    make_page_stack: Callable[..., PageStack],
) -> None:
    from playwright.async_api import async_playwright

    stack = make_page_stack()
    _alice(stack)
    attacker = _AttackerPage()
    evil = UvicornThread(attacker)
    evil.start()
    try:
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(**launch_options())
            try:
                laptop = await _device(browser, "firefox")
                phone = await _device(browser, "iphone")
                page = await _sign_in(laptop, stack)
                await _sign_in(phone, stack)
                await page.reload()
                token = csrf_of(await page.content())
                attacker.html = (
                    f'<!doctype html><form id="f" method="post" action="{stack.page_url}">'
                    '<input type="hidden" name="action" value="revoke_others">'
                    f'<input type="hidden" name="csrf" value="{token}"></form>'
                    "<script>document.getElementById('f').submit()</script>"
                ).encode()
                revokes = stack.revokes()
                refused = await laptop.new_page()
                async with refused.expect_navigation(url=stack.page_url):
                    await refused.goto(evil.url + "/")
                assert "Request refused" in await refused.inner_text("h1")
                assert stack.revokes() == revokes
                assert not await _is_sent_to_login(phone, stack)
                # the same token from the page itself works: only the origin differed
                await page.get_by_role("button", name="Sign out all other sessions").click()
                await page.wait_for_url(
                    re.compile(re.escape(stack.page_url + "?status=revoked_others&proof=") + ".+")
                )
                assert await _is_sent_to_login(phone, stack)
            finally:
                await browser.close()
    finally:
        evil.stop()


XSS = [
    "<script>window.__xss=1</script>",
    '"><img src=x onerror="window.__xss=1">',
    "'><svg onload=window.__xss=1>",
    "</code></dd></dl><script>window.__xss=1</script>",
    '<a href="javascript:window.__xss=1">click</a>',
    "<iframe srcdoc='<script>parent.__xss=1</script>'></iframe>",
    "&lt;b&gt;entity&lt;/b&gt; & <b>bold</b>",
    "\u202e<style>*{display:none}</style>",
]


async def test_markup_in_traits_user_agents_and_locations_is_shown_as_text(
    make_page_stack: Callable[..., PageStack], screenshots: Path
) -> None:
    from playwright.async_api import async_playwright

    stack = make_page_stack()
    fake = stack.fake
    email = '"><img src=x onerror="window.__xss=1">@example.com'
    ident = fake.create_identity(traits={"email": email, "name": "<script>window.__xss=1</script>"})
    current = fake.create_session(ident, devices=[{"user_agent": XSS[0], "location": XSS[1]}])
    for index, markup in enumerate(XSS):
        fake.create_session(
            ident,
            devices=[
                {"user_agent": markup, "location": XSS[-1 - index], "ip_address": markup[:40]}
            ],
        )
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(**launch_options())
        try:
            context = await browser.new_context(viewport={"width": 1200, "height": 900})
            context.set_default_timeout(TIMEOUT_MS)
            await context.add_cookies(
                [{"name": "ory_kratos_session", "value": current.cookie, "url": stack.url}]
            )
            dialogs: list[str] = []
            page = await context.new_page()
            page.on("dialog", lambda d: dialogs.append(d.message))
            await page.goto(stack.page_url)
            text = await page.inner_text("main")
            assert email in text
            for markup in XSS:
                assert markup.replace("\u202e", "[U+202E]") in text, markup
            assert await page.evaluate("window.__xss") is None
            injected = "main img, main svg, main iframe, main a[href^=java]"
            assert await page.locator(injected).count() == 0
            assert await page.locator("main script, main style, main b").count() == 0
            assert dialogs == []
            await page.screenshot(path=str(screenshots / "xss-corpus.png"), full_page=True)
        finally:
            await browser.close()
