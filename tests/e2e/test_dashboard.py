"""Debian's headless chromium opens the dashboard, publishes its fake camera over WHIP, and sees
the stream appear with live state; a screenshot is saved under tests/e2e/artifacts/. The alert
feed survives a reload and an event-log reset; the token stays out of URLs and logs."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Page, Request, Response, async_playwright, expect

from monitor.alerts.eventlog import EventLog
from monitor.config import load_settings
from monitor.types import Event, EventType, Severity, StreamState, StreamStatusData
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


NO_BROWSER = "MONITOR_TESTS_NO_BROWSER"  # =1: skip the browser tests on purpose


@pytest.fixture(autouse=True)
def chromium_installed() -> None:
    """Every test here drives chromium. A missing browser fails them: skipped quietly, CI stayed
    green with no browser coverage at all. Only an explicit opt-out skips them."""
    if os.environ.get(NO_BROWSER) == "1":
        pytest.skip(f"browser tests opted out ({NO_BROWSER}=1)")
    if shutil.which(CHROMIUM) is None:
        pytest.fail(
            f"Debian chromium is required at {CHROMIUM} (scripts/setup.sh --test installs it); "
            f"set {NO_BROWSER}=1 to skip the browser tests on purpose",
            pytrace=False,
        )


@contextlib.asynccontextmanager
async def chromium_page(tmp_path: Path, **options: Any) -> AsyncIterator[Page]:
    """Debian's headless chromium with a fresh profile (user-data-dir), and its first page."""
    async with async_playwright() as pw:
        browser = await pw.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"), executable_path=CHROMIUM, headless=True, args=FLAGS, **options
        )
        try:
            yield browser.pages[0] if browser.pages else await browser.new_page()
        finally:
            await browser.close()


@contextlib.asynccontextmanager
async def server_log() -> AsyncIterator[list[str]]:
    """uvicorn's own lines, INFO included (the tests run it at WARNING): what a deployment logs,
    such as each websocket handshake with its path and query string. Enter it after the service
    started: uvicorn sets its loggers' levels as it starts."""
    lines: list[str] = []

    class Record(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())

    logger, handler = logging.getLogger("uvicorn.error"), Record(logging.INFO)
    level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        yield lines
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


async def test_dashboard_publishes_the_camera_and_shows_live_state(tmp_path: Path) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    # The built-in demo stream runs too, so the page shows a face track with its timeline.
    settings = load_settings(None, data_dir=tmp_path / "data", demo=True, server={"token": TOKEN})
    async with running_service(settings) as svc, server_log() as logged:
        async with chromium_page(tmp_path, viewport={"width": 1440, "height": 900}) as page:
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            opened = f"{svc.base}/?token={TOKEN}"
            requests: list[Request] = []
            page.on("request", lambda req: requests.append(req))
            ws_urls: list[str] = []
            page.on("websocket", lambda ws: ws_urls.append(ws.url))

            async def token_leaks() -> list[str]:
                """Where the token showed up but in the URL the page was opened with: a URL
                (servers and proxies log them), a Referer, a line of uvicorn's log."""
                leaks = [url for url in [r.url for r in requests] + ws_urls if TOKEN in url and url != opened]
                leaks += [f"Referer of {r.url}" for r in requests if TOKEN in (await r.header_value("referer") or "")]
                return leaks + [line for line in logged if TOKEN in line or "access_token" in line]

            await page.goto(opened)
            await expect(page.locator("#api-state")).to_have_text("API live", timeout=10_000)
            # The token leaves the address bar (history, bookmarks) and never rides in an API URL,
            # where proxies would log it once a second.
            assert TOKEN not in page.url
            await expect(page.locator("#ws-state")).to_have_text("alerts live", timeout=10_000)
            # Nor in the websocket's: uvicorn logs each handshake with its query string. It goes
            # in a subprotocol, and the server answers with cloudevents.json only.
            assert await page.evaluate("() => ws.protocol") == "cloudevents.json"
            assert any('"WebSocket /ws/alerts' in line and "[accepted]" in line for line in logged), logged
            assert await token_leaks() == []
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
            assert len(ws_urls) >= 2 and await token_leaks() == []


def status_event(detail: str, i: int) -> Event:
    data = StreamStatusData(StreamState.RUNNING, detail, 0)
    return Event(EventType.STREAM_STATUS, "cam", Severity.INFO, 1.7e9 + i, data)


FEED = """() => [...document.querySelectorAll('#feed li')].map((li) => li.querySelector('.why').textContent)"""


async def test_dashboard_shows_events_from_before_a_reload_once(tmp_path: Path) -> None:
    settings = load_settings(None, data_dir=tmp_path / "data", demo=False, server={"token": TOKEN})
    async with running_service(settings) as svc:
        async with chromium_page(tmp_path) as page:
            bus = svc.runtime.bus
            await bus.publish([status_event("before-load", 0)])  # shown from /api/events
            await page.goto(f"{svc.base}/?token={TOKEN}")
            await expect(page.locator("#ws-state")).to_have_text("alerts live", timeout=10_000)
            await bus.publish([status_event("live", 1)])  # shown from the websocket
            await expect(page.locator("#feed li")).to_have_count(2, timeout=10_000)

            # Before: the tab resumed after the id it kept, so the page came back empty.
            await page.reload()
            await expect(page.locator("#ws-state")).to_have_text("alerts live", timeout=10_000)
            await expect(page.locator("#feed li")).to_have_count(2, timeout=10_000)
            assert await page.evaluate(FEED) == ["live", "before-load"]
            assert await page.evaluate("() => [lastEventId, ws.url.endsWith(`?since=2&epoch=${lastEpoch}`)]") == [2, True]
            # The websocket resumed after them: the next event shows, and nothing twice.
            await bus.publish([status_event("after-reload", 2)])
            await expect(page.locator("#feed li")).to_have_count(3, timeout=10_000)
            await page.wait_for_timeout(500)
            assert await page.evaluate(FEED) == ["after-reload", "live", "before-load"]


async def test_dashboard_restarts_its_feed_after_an_event_log_reset(tmp_path: Path) -> None:
    settings = load_settings(None, data_dir=tmp_path / "data", demo=False)
    with contextlib.ExitStack() as stack:
        async with running_service(settings) as svc:
            reset = EventLog(tmp_path / "reset" / "events.sqlite3", svc.runtime.settings.instance)
            stack.callback(reset.close)  # after the service stops using it
            async with chromium_page(tmp_path) as page:
                bus = svc.runtime.bus
                await bus.publish([status_event(f"old{i}", i) for i in range(40)])
                await page.goto(f"{svc.base}/")
                await expect(page.locator("#ws-state")).to_have_text("alerts live", timeout=10_000)
                await expect(page.locator("#feed li")).to_have_count(30, timeout=10_000)
                assert await page.evaluate("() => lastEventId") == 40

                # The log is reset (a new data dir): its ids restart, and it has already grown past
                # the tab's 40, so only its epoch tells the logs apart (before epochs, the tab
                # resumed after 40 and silently missed the new log's first 40 events). Written
                # straight to the log, as before a restart, not sent to the open websocket.
                reset.append([status_event(f"new{i}", i) for i in range(45)])
                bus.log = reset
                await page.evaluate("() => ws.close()")
                # The server closes the resume with 4409. Before: the tab resumed from 0 and
                # replayed the whole new log (up to 30 days of it); now the newest 30, as on load.
                await page.wait_for_function(
                    f"() => lastEventId === 45 && ws.url.endsWith('?since=45&epoch={reset.epoch}')", timeout=10_000
                )
                await expect(page.locator("#ws-state")).to_have_text("alerts live", timeout=10_000)
                shown = await page.evaluate(FEED)
                assert [d for d in shown if d.startswith("new")] == [f"new{i}" for i in range(44, 14, -1)]
                await bus.publish([status_event("after-reset", 99)])
                await expect(page.locator("#feed li").first).to_contain_text("after-reset", timeout=10_000)
                assert await page.evaluate("() => lastEventId") == 46


async def test_dashboard_works_under_a_reverse_proxy_prefix(tmp_path: Path) -> None:
    # Before: the page loaded its script and style relatively but called /api, /ws/alerts and
    # /whip at the host's root, so under a proxy's /monitor/ every call missed. And an instance
    # named "streams" made the feed take "logs/<epoch>" for the stream id.
    settings = load_settings(None, data_dir=tmp_path / "data", demo=False, instance="streams", server={"token": TOKEN})
    async with running_service(settings, prefix="/monitor") as svc:
        async with chromium_page(tmp_path) as page:
            deletes: list[tuple[str, int]] = []

            async def on_response(response: Response) -> None:
                if response.request.method == "DELETE":
                    deletes.append((response.url, response.status))

            page.on("response", on_response)
            await page.goto(f"{svc.base}/monitor/?token={TOKEN}")
            await expect(page.locator("#api-state")).to_have_text("API live", timeout=10_000)
            await expect(page.locator("#ws-state")).to_have_text("alerts live", timeout=10_000)
            assert (await page.evaluate("() => ws.url")).startswith(f"ws://{svc.base[7:]}/monitor/ws/alerts")
            await svc.runtime.bus.publish([Event(EventType.STREAM_STATUS, "lobby", Severity.INFO, 1.7e9,
                                                 StreamStatusData(StreamState.RUNNING, "behind-proxy", 0))])
            await expect(page.locator("#feed li .what").first).to_have_text(re.compile(r"\blobby$"), timeout=10_000)

            await page.click("#cam-start")  # WHIP under the prefix, and its session's DELETE too
            card = page.locator('article[data-stream="my-camera"]')
            await expect(card).to_have_attribute("data-state", "running", timeout=15_000)
            await page.click("#cam-stop")
            await expect(card).to_have_count(0, timeout=10_000)
            async with asyncio.timeout(10):
                while not deletes:
                    await asyncio.sleep(0.05)
            url, status = deletes[0]
            assert url.startswith(f"{svc.base}/monitor/whip/my-camera/") and status == 200, deletes


async def test_a_token_typed_in_resumes_the_feed_without_a_gap(tmp_path: Path) -> None:
    # Before: a token typed in refilled the newest 30 events and resumed after them, so whatever
    # happened while the websocket was refused, beyond those 30, never showed.
    settings = load_settings(None, data_dir=tmp_path / "data", demo=False, server={"token": TOKEN})
    async with running_service(settings) as svc:
        async with chromium_page(tmp_path) as page:
            bus = svc.runtime.bus
            await bus.publish([status_event("first", 0)])
            await page.goto(f"{svc.base}/?token={TOKEN}")
            await expect(page.locator("#feed li")).to_have_count(1, timeout=10_000)
            await page.evaluate("() => { ws.onclose = null; ws.close(); }")  # as a refused token leaves it
            await bus.publish([status_event(f"missed{i}", i + 1) for i in range(40)])
            await page.fill("#token", TOKEN)
            await page.dispatch_event("#token", "change")
            await expect(page.locator("#feed li")).to_have_count(41, timeout=10_000)
            assert await page.evaluate("() => lastEventId") == 41


async def test_an_alert_shows_what_the_monitor_saw(tmp_path: Path) -> None:
    # A real file through MediaPipe and the detector, thresholds at 0 so its face alerts; under a
    # proxy prefix, with a token: the images are fetched with the token in a header, as blobs.
    from monitor.sources.demo_media import write_clip

    clip = write_clip(tmp_path / "face.mp4", 3.0, fps=15, width=640, height=480)
    settings = load_settings(
        None, data_dir=tmp_path / "data", demo=False, server={"token": TOKEN},
        policy={"suspicious_enter": 0.0, "alert_enter": 0.0, "min_alert_s": 0.2},
        streams=[{"id": "desk", "url": str(clip), "loop": True}],
    )
    async with running_service(settings, prefix="/monitor") as svc:
        async with chromium_page(tmp_path) as page:
            await page.goto(f"{svc.base}/monitor/?token={TOKEN}")
            button = page.locator("#feed li .evidence-show").first
            await expect(button).to_be_visible(timeout=60_000)
            await button.click()
            frame = page.locator("#feed li .evidence img.frame").first
            await expect(frame).to_be_visible(timeout=10_000)
            assert await frame.evaluate("img => img.decode().then(() => img.naturalWidth)") == 640
            assert await page.locator("#feed li .evidence").first.locator("img.face").count() >= 1
            assert (await frame.get_attribute("src") or "").startswith("blob:")  # never a URL with the token
