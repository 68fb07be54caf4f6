"""Debian's headless chromium opens the dashboard, publishes its fake camera over WHIP, and sees
the stream appear with live state; a screenshot is saved under tests/e2e/artifacts/. The alert
feed survives a reload and an event-log reset; the token stays out of URLs and logs. A hung,
stopped or refusing service is shown as such, not as live; scores are explained against the
configured policy; open alerts stay in the feed after a reload; the CSP allows only this origin."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import shutil
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Page, Request, Response, Route, async_playwright, expect

from monitor.alerts.eventlog import EventLog
from monitor.config import Settings, load_settings
from monitor.types import AlertData, Event, EventType, Severity, StreamState, StreamStatusData
from tests.support.service import ServiceProcess, running_service

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
            # In the fragment: a browser never sends it, so not even the page's own request has it
            # (?token= works too, tested below, but reaches the server and proxies once).
            opened = f"{svc.base}/#token={TOKEN}"
            requests: list[Request] = []
            page.on("request", lambda req: requests.append(req))
            ws_urls: list[str] = []
            page.on("websocket", lambda ws: ws_urls.append(ws.url))

            async def token_leaks() -> list[str]:
                """Where the token showed up: a URL (servers and proxies log them, and the page was
                opened with it in the fragment, which is never sent), a Referer, a line of uvicorn's log."""
                leaks = [url for url in [r.url for r in requests] + ws_urls if TOKEN in url]
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


async def test_a_websocket_that_died_without_a_close_is_reopened_without_a_gap(tmp_path: Path) -> None:
    settings = load_settings(None, data_dir=tmp_path / "data", demo=False)
    async with running_service(settings) as svc:
        async with chromium_page(tmp_path) as page:
            bus = svc.runtime.bus
            await page.goto(f"{svc.base}/")
            await expect(page.locator("#ws-state")).to_have_text("alerts live", timeout=10_000)
            await bus.publish([status_event("first", 0)])
            await expect(page.locator("#feed li")).to_have_count(1, timeout=10_000)
            # Up to date and quiet: the socket is left alone past WS_BEHIND_MS (10 s).
            await page.evaluate("() => { window.firstSocket = ws; }")
            await page.wait_for_timeout(11_500)
            assert await page.evaluate("() => ws === window.firstSocket")

            # The connection dies without a close (a proxy or NAT dropped it): the page's socket
            # stays "open" and nothing more arrives. Before, it read "alerts live" for ever.
            await page.evaluate("() => { ws.onmessage = null; }")
            await bus.publish([status_event("missed", 1)])
            await bus.publish([status_event("missed-too", 2)])
            await expect(page.locator("#feed li")).to_have_count(3, timeout=20_000)
            assert await page.evaluate(FEED) == ["missed-too", "missed", "first"]
            assert await page.evaluate("() => ws !== window.firstSocket && ws.url.endsWith(`?since=1&epoch=${lastEpoch}`)")
            await expect(page.locator("#ws-state")).to_have_text("alerts live", timeout=10_000)


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


async def test_a_token_with_a_plus_in_the_fragment_is_kept_as_it_is(tmp_path: Path) -> None:
    # URLSearchParams read "+" as a space: a base64 token opened as #token=... was refused.
    token = "ab+cd/ef+" + "g" * 24
    settings = load_settings(None, data_dir=tmp_path / "data", demo=False, server={"token": token})
    async with running_service(settings) as svc:
        async with chromium_page(tmp_path) as page:
            await page.goto(f"{svc.base}/?view=1#token={token.replace('/', '%2F')}&x=1")
            await expect(page.locator("#api-state")).to_have_text("API live", timeout=10_000)
            assert await page.evaluate("() => sessionStorage.getItem('token')") == token
            assert page.url.endswith("/?view=1#x=1")  # the rest of the address stays


async def test_an_alert_shows_what_the_monitor_saw(tmp_path: Path) -> None:
    # A real file through MediaPipe and the detector, thresholds near 0 so its face alerts; under a
    # proxy prefix, with a token: the images are fetched with the token in a header, as blobs.
    from monitor.sources.demo_media import write_clip

    clip = write_clip(tmp_path / "face.mp4", 3.0, fps=15, width=640, height=480)
    settings = load_settings(
        None, data_dir=tmp_path / "data", demo=False, server={"token": TOKEN},
        policy={"suspicious_enter": 0.001, "alert_enter": 0.001, "hysteresis": 0.0, "min_alert_s": 0.2},
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


DEAD_RTSP = "rtsp://127.0.0.1:9/none"  # refused at once: a stream that exists (reconnecting), at no cost


def lobby_settings(tmp_path: Path, **overrides: Any) -> Settings:
    """The service with one stream, `lobby`, at DEAD_RTSP: a card on the dashboard, no video."""
    return load_settings(None, data_dir=tmp_path / "data", demo=False, streams=[{"id": "lobby", "url": DEAD_RTSP}], **overrides)
STALE = re.compile(r"\bstale\b")
CARD_IDS = "() => [...document.querySelectorAll('#streams article')].map((a) => a.dataset.stream)"


async def test_a_hung_or_stopped_service_is_shown_stale(tmp_path: Path) -> None:
    # Before: with the service SIGSTOPped both pills stayed green for ever, a poll was started
    # every second and none ended, and the cards and counts stayed as if current. Stopped, only
    # the pill changed: the cards still read "running", the header still counted their verdicts.
    config = {
        "demo": False, "data_dir": str(tmp_path / "data"), "server": {"token": TOKEN},
        "streams": [{"id": "cam-10", "url": DEAD_RTSP}, {"id": "cam-2", "url": DEAD_RTSP}],
    }
    svc = ServiceProcess(tmp_path, config)
    await asyncio.to_thread(svc.start)
    try:
        async with chromium_page(tmp_path) as page:
            polls: set[Request] = set()
            most = [0]

            def started(request: Request) -> None:
                if request.url.endswith("/api/streams"):
                    polls.add(request)
                    most[0] = max(most[0], len(polls))

            page.on("request", started)
            page.on("requestfinished", lambda request: polls.discard(request))
            page.on("requestfailed", lambda request: polls.discard(request))
            api, alerts, streams = page.locator("#api-state"), page.locator("#ws-state"), page.locator("#streams")
            await page.goto(f"{svc.base}/?token={TOKEN}")
            await expect(api).to_have_text("API live", timeout=10_000)
            await expect(alerts).to_have_text("alerts live", timeout=10_000)
            await expect(page.locator("#streams article")).to_have_count(2, timeout=10_000)
            assert await page.evaluate(CARD_IDS) == ["cam-2", "cam-10"]  # numbers in ids sort as numbers
            await expect(page.locator("#summary")).to_contain_text("no verdict")

            assert svc.proc is not None
            svc.proc.send_signal(signal.SIGSTOP)
            try:
                not_answering = re.compile(r"^API not answering · last answer \d+ s ago$")
                await expect(api).to_have_text(not_answering, timeout=8_000)
                await expect(api).to_have_class("pill bad")
                # The websocket stays open (the kernel keeps the connection), but nothing would
                # come through it: it is no more "live" than the API.
                await expect(alerts).to_have_text("alerts stale")
                await expect(streams).to_have_class(STALE)
                note = re.compile(r"^Stale since \d\d:\d\d:\d\d \(API not answering\)")
                await expect(page.locator("#stale-note")).to_have_text(note)
                await expect(page.locator("#summary")).to_have_text("no current counts")
                await page.wait_for_timeout(5_000)  # another poll aborted, and another begun
            finally:
                svc.proc.send_signal(signal.SIGCONT)
            assert most[0] == 1  # never two polls at once
            await expect(api).to_have_text("API live", timeout=10_000)
            await expect(alerts).to_have_text("alerts live", timeout=10_000)
            await expect(streams).not_to_have_class(STALE)
            await expect(page.locator("#stale-note")).to_be_hidden()
            await expect(page.locator("#summary")).to_contain_text("no verdict")

            await asyncio.to_thread(svc.stop)
            await expect(api).to_have_text(re.compile(r"^API unreachable"), timeout=10_000)
            await expect(alerts).to_have_text("alerts reconnecting…", timeout=10_000)
            await expect(streams).to_have_class(STALE)
            await expect(page.locator("#summary")).to_have_text("no current counts")
            await expect(page.locator("#streams article")).to_have_count(2)  # the last answer, greyed
    finally:
        if svc.proc is not None:
            svc.proc.send_signal(signal.SIGCONT)
        await asyncio.to_thread(svc.stop)


def face_track(state: str, score: float | None) -> dict[str, Any]:
    return {
        "track_id": 1, "state": state, "score": score, "raw_score": score,
        "reasons": [], "since_t": 0.0, "first_t": 0.0,
    }


async def add_a_face(page: Page, track: dict[str, Any]) -> None:
    """Every /api/streams answer as the service gave it (its policy included), with ``track``
    added to each stream: a face in a given state, without video and a detector to make it."""

    async def handle(route: Route) -> None:
        response = await route.fetch()
        streams = await response.json()
        for stream in streams:
            stream["tracks"] = [track]
        await route.fulfill(response=response, json=streams)

    await page.route("**/api/streams", handle)


ROWS = """(levels) => {
    // How many pixels of the right half (clear of the "no score yet" text) of the timeline's
    // bitmap row at each level are painted.
    const c = document.querySelector('article[data-stream="lobby"] canvas');
    const h = c.clientHeight, dpr = c.width / c.clientWidth;
    return levels.map((level) => {
        const y = Math.floor(Math.min(Math.max(h - level * h, 0.5), h - 0.5) * dpr);
        const row = c.getContext("2d").getImageData(c.width / 2, y, c.width / 2, 1).data;
        let painted = 0;
        for (let i = 3; i < row.length; i += 4) if (row[i] > 0) painted++;
        return painted;
    });
}"""


async def test_scores_are_explained_against_the_configured_policy(tmp_path: Path) -> None:
    # Before: a card explained a score as "(50% suspicious, 70% alert)" and its timeline drew
    # guide lines at 50% and 70% whatever the policy said; the API did not expose the policy.
    settings = lobby_settings(tmp_path, server={"token": TOKEN}, policy={"suspicious_enter": 0.3, "alert_enter": 0.85})
    async with running_service(settings) as svc:
        async with chromium_page(tmp_path, device_scale_factor=2) as page:
            await add_a_face(page, face_track("clear", None))
            await page.goto(f"{svc.base}/?token={TOKEN}")
            why = page.locator('article[data-stream="lobby"] .track .reasons')
            await expect(why).to_have_text("why: score – (30% suspicious, 85% alert)", timeout=10_000)
            canvas = page.locator('article[data-stream="lobby"] canvas')
            await expect(canvas).to_have_attribute("role", "img")
            await expect(canvas).to_have_attribute("aria-label", "score timeline: no score yet")
            # Its bitmap is its size on screen in device pixels, not a fixed 600x46 stretched.
            size = await canvas.evaluate("(c) => [c.width, c.height, c.clientWidth, c.clientHeight]")
            assert size[:2] == [2 * size[2], 2 * size[3]], size
            thirty, eighty_five, fifty, seventy = await page.evaluate(ROWS, [0.3, 0.85, 0.5, 0.7])
            assert thirty > 0 and eighty_five > 0 and fifty == 0 and seventy == 0


async def test_an_open_alert_stays_in_the_feed_after_a_reload(tmp_path: Path) -> None:
    # Before: a load showed the newest 30 events of any kind. Behind them, an alert still open
    # (its face in state alert on the card) dropped out of the feed with its evidence button.
    settings = lobby_settings(tmp_path, server={"token": TOKEN})
    async with running_service(settings) as svc:
        bus = svc.runtime.bus

        def opened(alert_id: str, track: int) -> Event:
            now = time.time()
            evidence = f"/api/alerts/{alert_id}/evidence"
            data = AlertData(alert_id, track, 0.91, ("score_above_threshold",), (), 0.0, None, now, evidence)
            return Event(EventType.ALERT_OPENED, "lobby", Severity.CRITICAL, now, data)

        await bus.publish([opened("a-open", 1)])
        # More than one page (1000) of /api/events after it: the page looks further back.
        await bus.publish([status_event(f"other{i}", i) for i in range(1100)])
        async with chromium_page(tmp_path) as page:
            await add_a_face(page, face_track("alert", 0.91))
            await page.goto(f"{svc.base}/?token={TOKEN}")
            await expect(page.locator("#ws-state")).to_have_text("alerts live", timeout=10_000)
            alert = page.locator('#feed li[data-type$=".alert.opened.v1"]')
            await expect(alert).to_have_count(1, timeout=10_000)
            await expect(alert.locator(".evidence-show")).to_be_visible()
            # The newest 30 and the open alert, oldest at the bottom; not the 1,100 in between.
            await expect(page.locator("#feed li")).to_have_count(31)
            assert await page.locator("#feed li").last.get_attribute("data-type") == EventType.ALERT_OPENED.value
            assert await page.locator("#announcer p").count() == 0  # shown, not announced: it is not new

            # A new alert, live over the websocket, is told to screen readers (a polite log).
            await bus.publish([opened("a-new", 2)])
            announced = ["Alert: lobby face #2 91%, score above threshold"]
            await expect(page.locator("#announcer p")).to_have_text(announced, timeout=10_000)
            await expect(page.locator("#announcer")).to_have_attribute("aria-live", "polite")


async def test_a_refused_token_stops_polling_until_another_is_typed(tmp_path: Path) -> None:
    # Before: a wrong token read "token needed", the page polled (a 401) every second and the
    # websocket retried every 5 s for ever, the streams pane said "No streams yet." with streams
    # there, and a wrong token typed after a good one left the last verdicts up as current.
    settings = lobby_settings(tmp_path, server={"token": TOKEN})
    async with running_service(settings) as svc:
        async with chromium_page(tmp_path) as page:
            polls: list[str] = []
            sockets: list[str] = []
            page.on("request", lambda r: polls.append(r.url) if r.url.endswith("/api/streams") else None)
            page.on("websocket", lambda ws: sockets.append(ws.url))
            api, alerts, streams = page.locator("#api-state"), page.locator("#ws-state"), page.locator("#streams")

            async def type_token(value: str) -> None:
                await page.fill("#token", value)
                await page.dispatch_event("#token", "change")

            async def nothing_more_asked(seconds: float) -> None:
                asked = (len(polls), len(sockets))
                await page.wait_for_timeout(seconds * 1000)
                assert (len(polls), len(sockets)) == asked

            await page.goto(f"{svc.base}/?token=wrong-{TOKEN}")
            await expect(api).to_have_text("API: token rejected", timeout=10_000)
            await expect(alerts).to_have_text("alerts: token rejected")
            await expect(streams).to_have_text("Token rejected: enter the service's token above to see its streams.")
            await nothing_more_asked(3)
            assert len(polls) == 1 and sockets == []

            await type_token(TOKEN)
            await expect(api).to_have_text("API live", timeout=10_000)
            await expect(alerts).to_have_text("alerts live", timeout=10_000)
            await expect(page.locator('article[data-stream="lobby"]')).to_be_visible()
            await expect(page.locator("#summary")).to_contain_text("no verdict")

            await type_token("wrong-again")
            await expect(api).to_have_text("API: token rejected", timeout=10_000)
            await expect(alerts).to_have_text("alerts: token rejected")
            await expect(streams).to_have_class(STALE)
            await expect(page.locator("#stale-note")).to_contain_text("(token rejected)")
            await expect(page.locator("#summary")).to_have_text("no current counts")
            await nothing_more_asked(3)

            await type_token("")
            await expect(api).to_have_text("API: token needed", timeout=10_000)
            await type_token(TOKEN)
            await expect(api).to_have_text("API live", timeout=10_000)
            await expect(streams).not_to_have_class(STALE)


async def test_the_page_has_a_strict_csp_a_quiet_console_and_steady_text(tmp_path: Path) -> None:
    # Before: connect-src allowed a websocket to any host (ws: wss:); the camera id's pattern and
    # the missing favicon logged console errors on each load; #summary (aria-live) and the cards
    # were rebuilt every second (read out again, selection lost); a phone scrolled sideways; feed
    # times had no date, zone or datetime.
    settings = lobby_settings(tmp_path)
    async with running_service(settings) as svc:
        await svc.runtime.bus.publish([status_event("long-ago", 0)])  # 2023-11-14 22:13:20 UTC
        phone = {"width": 375, "height": 800}
        async with chromium_page(tmp_path, viewport=phone, timezone_id="America/New_York") as page:
            errors: list[str] = []
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            await page.add_init_script(
                "document.addEventListener('securitypolicyviolation', (e) => "
                "(window.violations = window.violations || []).push(e.violatedDirective + ' ' + e.blockedURI))"
            )
            response = await page.goto(f"{svc.base}/")
            assert response is not None
            csp = await response.header_value("content-security-policy") or ""
            assert "connect-src 'self';" in csp and "ws:" not in csp and "wss:" not in csp, csp
            # The page's own websocket (same origin) still connects under connect-src 'self'.
            await expect(page.locator("#ws-state")).to_have_text("alerts live", timeout=10_000)
            await expect(page.locator('article[data-stream="lobby"]')).to_be_visible(timeout=10_000)
            await svc.runtime.bus.publish([status_event("today", int(time.time() - 1.7e9))])
            old = page.locator("#feed li", has_text="long-ago").locator("time")
            new = page.locator("#feed li", has_text="today").locator("time")
            await expect(new).to_have_count(1, timeout=10_000)
            await expect(old).to_have_attribute("datetime", "2023-11-14T22:13:20.000Z")
            await expect(old).to_have_text("Nov 14, 2023 17:13:20")
            zone = re.compile(r"Nov 14, 2023.*17:13:20 EST \(America/New_York\); 2023-11-14T22:13:20\.000Z")
            await expect(old).to_have_attribute("title", zone)
            await expect(new).to_have_text(re.compile(r"^\d\d:\d\d:\d\d$"))  # today: no date

            await page.evaluate(
                """() => {
                    window.summaryChanges = 0;
                    const watch = { childList: true, subtree: true, characterData: true };
                    new MutationObserver((m) => { window.summaryChanges += m.length; })
                        .observe(document.getElementById("summary"), watch);
                    const range = document.createRange();
                    range.selectNodeContents(document.querySelector('article[data-stream="lobby"] .stream-id'));
                    getSelection().removeAllRanges();
                    getSelection().addRange(range);
                }"""
            )
            await page.wait_for_timeout(3_000)  # three polls
            assert await page.evaluate("() => [window.summaryChanges, getSelection().toString()]") == [0, "lobby"]
            assert await page.evaluate("() => document.documentElement.scrollWidth <= innerWidth")
            assert await page.evaluate("() => window.violations || []") == []
            assert errors == []

            # connect-src 'self' refuses a websocket to another origin (ws: let every host through).
            other = svc.base.replace("127.0.0.1", "localhost").replace("http:", "ws:") + "/ws/alerts"
            await page.evaluate("(url) => { try { new WebSocket(url); } catch (e) { /* refused */ } }", other)
            refused = "() => (window.violations || []).some((v) => v.startsWith('connect-src'))"
            await page.wait_for_function(refused, timeout=5_000)
