"""Debian's headless chromium opens the dashboard, publishes its fake camera over WHIP, and sees
the stream appear with live state; a screenshot is saved under tests/e2e/artifacts/."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from playwright.async_api import async_playwright, expect

from monitor.config import load_settings
from tests.support.service import running_service

pytestmark = pytest.mark.e2e

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).parent / "artifacts"
TOKEN = "e" * 32
FLAGS = [
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
    "--allow-loopback-in-peer-connection",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]


@pytest.mark.skipif(shutil.which(CHROMIUM) is None, reason="Debian chromium is not installed")
async def test_dashboard_publishes_the_camera_and_shows_live_state(tmp_path: Path) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    # The built-in demo stream runs too, so the page shows a face track with its timeline.
    settings = load_settings(None, data_dir=tmp_path / "data", demo=True, server={"token": TOKEN})
    async with running_service(settings) as svc, async_playwright() as pw:
        browser = await pw.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),  # a fresh user-data-dir
            executable_path=CHROMIUM,
            headless=True,
            args=FLAGS,
            viewport={"width": 1440, "height": 900},
        )
        try:
            page = browser.pages[0] if browser.pages else await browser.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            token_in_urls: list[str] = []
            page.on("request", lambda req: token_in_urls.append(req.url) if "/api/" in req.url and TOKEN in req.url else None)
            await page.goto(f"{svc.base}/?token={TOKEN}")
            await expect(page.locator("#api-state")).to_have_text("API live", timeout=10_000)
            # The token leaves the address bar (history, bookmarks) and never rides in an API URL,
            # where proxies would log it once a second.
            assert TOKEN not in page.url
            assert token_in_urls == []
            await expect(page.locator("#ws-state")).to_have_text("alerts live", timeout=10_000)
            await expect(page.locator('article[data-stream="demo"]')).to_be_visible(timeout=10_000)

            await page.click("#cam-start")
            card = page.locator('article[data-stream="my-camera"]')
            await expect(card).to_have_attribute("data-state", "running", timeout=15_000)
            # Live: frames arrive (fps > 0) and analysis has started (a verdict, not "waiting").
            await page.wait_for_function(
                """() => {
                    const c = document.querySelector('article[data-stream="my-camera"]');
                    const fps = c && parseFloat(c.querySelector('[data-stat="fps"] b').textContent);
                    return fps > 0 && c.dataset.verdict !== "waiting";
                }""",
                timeout=15_000,
            )
            await expect(page.locator("#cam-view")).to_have_attribute("data-verdict", "no_face", timeout=10_000)
            await expect(page.locator("#cam-verdict")).to_have_text("no face")
            assert svc.runtime.manager.get("my-camera").status().source == "whip"

            # The alerts feed resumes after its websocket drops, with ?since=<last id>.
            await page.wait_for_function("() => document.querySelectorAll('#feed li').length > 0", timeout=15_000)
            await page.evaluate("() => ws.close()")
            await expect(page.locator("#ws-state")).to_have_text("alerts live", timeout=10_000)
            resumed = await page.evaluate("() => ws.url")
            assert "since=" in resumed

            # Let the demo track build a visible timeline before the picture is taken.
            await page.wait_for_function(
                "() => document.querySelector('article[data-stream=\"demo\"] .track') !== null", timeout=20_000
            )
            await page.wait_for_timeout(3000)
            await page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)

            await page.click("#cam-stop")
            await expect(card).to_have_count(0, timeout=10_000)
            assert not svc.runtime.app.state.whip_sessions.sessions

            # A camera that ends (unplugged, permission revoked) ends the session too.
            await page.click("#cam-start")
            await expect(card).to_have_attribute("data-state", "running", timeout=15_000)
            await page.evaluate("() => cam.media.getVideoTracks()[0].dispatchEvent(new Event('ended'))")
            await expect(card).to_have_count(0, timeout=10_000)
            await expect(page.locator("#cam-note")).to_have_text("The camera stopped.")

            # A refused publish (the id is taken) lets go of the camera and can be retried.
            await page.fill("#cam-id", "demo")
            await page.click("#cam-start")
            await expect(page.locator("#cam-note")).to_contain_text("Could not start: WHIP 409", timeout=10_000)
            await expect(page.locator("#cam-start")).to_be_enabled()
            assert await page.evaluate("() => cam") is None
            assert errors == []
            assert token_in_urls == []
        finally:
            await browser.close()


@pytest.mark.skipif(shutil.which(CHROMIUM) is None, reason="Debian chromium is not installed")
async def test_dashboard_restarts_its_feed_after_an_event_log_reset(tmp_path: Path) -> None:
    from monitor.types import Event, EventType, Severity, StreamState, StreamStatusData

    def ev(i: int) -> Event:
        return Event(EventType.STREAM_STATUS, "cam", Severity.INFO, 1.7e9 + i, StreamStatusData(StreamState.RUNNING, str(i), 0))

    async with running_service(load_settings(None, data_dir=tmp_path / "data", demo=False)) as svc, async_playwright() as pw:
        browser = await pw.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"), executable_path=CHROMIUM, headless=True, args=FLAGS
        )
        try:
            page = browser.pages[0] if browser.pages else await browser.new_page()
            await svc.runtime.bus.publish([ev(i) for i in range(2)])  # the new log, after a reset
            # The tab last saw id 50 of the old log.
            await page.add_init_script("sessionStorage.setItem('lastEventId', '50')")
            await page.goto(f"{svc.base}/")
            await expect(page.locator("#feed li")).to_have_count(2, timeout=10_000)
            await expect(page.locator("#ws-state")).to_have_text("alerts live", timeout=10_000)
            assert await page.evaluate("() => [lastEventId, ws.url.endsWith('?since=0')]") == [2, True]
        finally:
            await browser.close()
