"""The dashboard (monitor/api/static/app.js): promises that tests/e2e/test_dashboard.py left
unchecked, found by a mutation audit (each test fails when its promise is broken)."""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Route, expect

from monitor.alerts.eventlog import EventLog
from monitor.config import load_settings
from monitor.types import AlertData, Event, EventType, Severity, Signal, TrackState, TrackStateData
from tests.e2e.test_dashboard import (  # noqa: F401  (chromium_installed: the autouse fixture)
    CARD_IDS,
    DEAD_RTSP,
    FEED,
    TOKEN,
    add_a_face,
    chromium_installed,
    chromium_page,
    face_track,
    lobby_settings,
    status_event,
)
from tests.support.service import running_service

pytestmark = pytest.mark.e2e


def track_state(track: int, state: TrackState, score: float | None, reasons: tuple[str, ...],
                signals: tuple[Signal, ...] = ()) -> Event:
    data = TrackStateData(track, state, None, score, score, reasons, signals, 0.0, 0.0)
    return Event(EventType.TRACK_STATE, "lobby", Severity.INFO, time.time(), data)


def alert(kind: EventType, alert_id: str, track: int) -> Event:
    now = time.time()
    closed = kind == EventType.ALERT_CLOSED
    data = AlertData(alert_id, track, 0.91, ("score_above_threshold",), (), 0.0, 1.0 if closed else None, now,
                     None if closed else f"/api/alerts/{alert_id}/evidence")
    return Event(kind, "lobby", Severity.CRITICAL, now, data)


async def test_explanations_thresholds_signals_and_ended_tracks(tmp_path: Path) -> None:
    # A threshold such as 67.5% is not rounded away; the signals shown are the three that weigh
    # most; a face that left takes its explanation with it (the id may name another face later).
    settings = lobby_settings(tmp_path, server={"token": TOKEN}, policy={"suspicious_enter": 0.675, "alert_enter": 0.85})
    async with running_service(settings) as svc:
        async with chromium_page(tmp_path) as page:
            await add_a_face(page, face_track("clear", 0.42))
            await page.goto(f"{svc.base}/?token={TOKEN}")
            why = page.locator('article[data-stream="lobby"] .track .reasons')
            await expect(why).to_have_text("why: score 42% (67.5% suspicious, 85% alert)", timeout=10_000)
            # Several polls of a 42% face: its timeline says so (not "no score yet").
            canvas = page.locator('article[data-stream="lobby"] canvas')
            await expect(canvas).to_have_attribute(
                "aria-label", "score timeline, last 60 s: now 42%, lowest 42%, highest 42%", timeout=10_000
            )
            await expect(page.locator("#ws-state")).to_have_text("alerts live", timeout=10_000)

            signals = (Signal("weak_one", 0.10, 0.1), Signal("strong_one", 0.90, 0.9),
                       Signal("middle_one", 0.50, 0.5), Signal("fairly_strong", 0.70, 0.7))
            await svc.runtime.bus.publish([track_state(1, TrackState.CLEAR, 0.42, (), signals)])
            await expect(why).to_have_text(
                "why: signals: strong one 90%, fairly strong 70%, middle one 50%", timeout=10_000
            )
            # The poll carries no reasons for this face: those of its last state change are shown.
            await svc.runtime.bus.publish([track_state(1, TrackState.SUSPICIOUS, 0.42, ("blurred",), signals)])
            await expect(why).to_have_text(
                "why: blurred · signals: strong one 90%, fairly strong 70%, middle one 50%", timeout=10_000
            )
            await svc.runtime.bus.publish([track_state(1, TrackState.INCONCLUSIVE, None, ("track_ended",))])
            await expect(page.locator('#feed li[data-type$=".track.state.v1"]')).to_have_count(3, timeout=10_000)
            await expect(why).to_have_text("why: score 42% (67.5% suspicious, 85% alert)", timeout=10_000)


async def test_an_api_error_is_named_with_its_status(tmp_path: Path) -> None:
    settings = lobby_settings(tmp_path)
    async with running_service(settings) as svc:
        async with chromium_page(tmp_path) as page:
            await page.goto(f"{svc.base}/")
            api = page.locator("#api-state")
            await expect(api).to_have_text("API live", timeout=10_000)

            async def broken(route: Route) -> None:
                await route.fulfill(status=503, json={"error": "overloaded"})

            await page.route("**/api/streams", broken)
            await expect(api).to_have_text(re.compile(r"^API error 503"), timeout=10_000)
            await expect(page.locator("#stale-note")).to_contain_text("(API error 503)")


async def test_a_closed_alert_of_an_earlier_face_is_not_shown_as_open(tmp_path: Path) -> None:
    # The card's face 1 is in state alert, but its alert.opened is not written yet; the log's last
    # alert of a face 1 was opened and then closed (an earlier face with the same id). The load's
    # search for open alerts meets the close first and stops: that old opening is not brought back.
    settings = lobby_settings(tmp_path, server={"token": TOKEN})
    async with running_service(settings) as svc:
        bus = svc.runtime.bus
        await bus.publish([alert(EventType.ALERT_OPENED, "a-old", 1)])
        await bus.publish([alert(EventType.ALERT_CLOSED, "a-old", 1)])
        await bus.publish([status_event(f"other{i}", i) for i in range(40)])
        async with chromium_page(tmp_path) as page:
            await add_a_face(page, face_track("alert", 0.91))
            await page.goto(f"{svc.base}/?token={TOKEN}")
            await expect(page.locator("#ws-state")).to_have_text("alerts live", timeout=10_000)
            await expect(page.locator("#feed li")).to_have_count(30, timeout=10_000)
            await page.wait_for_timeout(1_000)
            assert await page.locator('#feed li[data-type$=".alert.opened.v1"]').count() == 0
            assert await page.locator("#feed li").count() == 30


async def test_a_refill_over_a_shown_feed_adds_nothing_twice(tmp_path: Path) -> None:
    # A refill and a resumed replay overlap (a reset, a typed token, a reopened socket): an event
    # already shown is not shown again.
    settings = load_settings(None, data_dir=tmp_path / "data", demo=False)
    async with running_service(settings) as svc:
        async with chromium_page(tmp_path) as page:
            await svc.runtime.bus.publish([status_event(f"ev{i}", i) for i in range(3)])
            await page.goto(f"{svc.base}/")
            await expect(page.locator("#ws-state")).to_have_text("alerts live", timeout=10_000)
            await expect(page.locator("#feed li")).to_have_count(3, timeout=10_000)
            await page.evaluate("() => refill()")
            await page.wait_for_timeout(1_000)
            assert await page.evaluate(FEED) == ["ev2", "ev1", "ev0"]


@contextlib.asynccontextmanager
async def showing_40_events_then_a_5_event_log(tmp_path: Path) -> Any:
    """A tab showing a log of 40 events (30 in the feed), and a replacement log of 5 events
    that the service has switched to; yields (service, page, replacement log)."""
    settings = load_settings(None, data_dir=tmp_path / "data", demo=False)
    with contextlib.ExitStack() as stack:
        async with running_service(settings) as svc:
            reset = EventLog(tmp_path / "reset" / "events.sqlite3", svc.runtime.settings.instance)
            stack.callback(reset.close)  # after the service stops using it
            async with chromium_page(tmp_path) as page:
                await svc.runtime.bus.publish([status_event(f"old{i}", i) for i in range(40)])
                await page.goto(f"{svc.base}/")
                await expect(page.locator("#ws-state")).to_have_text("alerts live", timeout=10_000)
                await expect(page.locator("#feed li")).to_have_count(30, timeout=10_000)
                yield svc, page, reset


def switch_log(svc: Any, reset: EventLog) -> None:
    reset.append([status_event(f"new{i}", i) for i in range(5)])
    svc.runtime.bus.log = reset


async def test_a_reset_to_a_shorter_log_restarts_the_feed(tmp_path: Path) -> None:
    # The log is replaced by one with fewer events than the tab held (5 < 40): the tab starts over
    # from the new log's newest, shows each of its events once, and resumes after its id 5.
    async with showing_40_events_then_a_5_event_log(tmp_path) as (svc, page, reset):
        switch_log(svc, reset)
        await page.evaluate("() => ws.close()")
        await page.wait_for_function(f"() => lastEventId === 5 && ws && ws.url.endsWith('?since=5&epoch={reset.epoch}')", timeout=10_000)
        await expect(page.locator("#ws-state")).to_have_text("alerts live", timeout=10_000)
        await page.wait_for_timeout(1_500)
        shown = await page.evaluate(FEED)
        assert [d for d in shown if d.startswith("new")] == [f"new{i}" for i in range(4, -1, -1)]


async def test_the_alerts_pill_is_not_live_while_a_reset_log_is_refilled(tmp_path: Path) -> None:
    # Before: after a 4409 close the pill kept saying "alerts live" for as long as the refill
    # took (each request up to 8 s), with no socket open at all.
    async with showing_40_events_then_a_5_event_log(tmp_path) as (svc, page, reset):
        refilling = asyncio.Event()
        release = asyncio.Event()

        async def held(route: Route) -> None:
            refilling.set()  # only the 4409 path refills: the tab is past the socket's close
            await release.wait()
            await route.continue_()

        await page.route("**/api/events*", held)
        switch_log(svc, reset)
        await page.evaluate("() => ws.close()")  # the reconnect's resume gets 4409, then the refill
        await asyncio.wait_for(refilling.wait(), 30)
        await page.wait_for_function("() => ws === null && wsState === 'connecting'", timeout=10_000)
        assert await page.locator("#ws-state").text_content() != "alerts live"
        release.set()  # from now on every request goes straight through
        await expect(page.locator("#ws-state")).to_have_text("alerts live", timeout=30_000)


async def test_a_silently_dead_socket_is_noticed_after_a_log_reset(tmp_path: Path) -> None:
    # The socket died without a close, and the log was replaced meanwhile: the poll's head id (6)
    # is below the tab's newest (40), but its epoch is another log's. The socket is reopened (4409,
    # a refill) and the new log's events show.
    async with showing_40_events_then_a_5_event_log(tmp_path) as (svc, page, reset):
        await page.evaluate("() => { ws.onmessage = null; }")  # dead without a close
        switch_log(svc, reset)
        await svc.runtime.bus.publish([status_event("after-reset", 50)])
        await expect(page.locator("#feed li").first).to_contain_text("after-reset", timeout=25_000)
        assert await page.evaluate("() => lastEventId") == 6


async def test_a_token_in_the_middle_of_the_fragment_leaves_the_rest_as_it_was(tmp_path: Path) -> None:
    settings = load_settings(None, data_dir=tmp_path / "data", demo=False, server={"token": TOKEN})
    async with running_service(settings) as svc:
        async with chromium_page(tmp_path) as page:
            await page.goto(f"{svc.base}/#a=1&token={TOKEN}&b=2")
            await expect(page.locator("#api-state")).to_have_text("API live", timeout=10_000)
            assert page.url.endswith("/#a=1&b=2"), page.url


async def test_the_camera_overlay_is_not_left_current_when_the_api_fails(tmp_path: Path) -> None:
    # "The service does not answer: its last verdict is not shown as the current one."
    settings = load_settings(None, data_dir=tmp_path / "data", demo=False)
    async with running_service(settings) as svc:
        async with chromium_page(tmp_path) as page:
            await page.goto(f"{svc.base}/")
            await expect(page.locator("#api-state")).to_have_text("API live", timeout=10_000)
            await page.click("#cam-start")
            await expect(page.locator("#cam-view")).to_have_attribute("data-verdict", re.compile(r"^(?!stale)."), timeout=20_000)

            async def unreachable(route: Route) -> None:
                await route.abort()

            await page.route("**/api/streams", unreachable)
            await expect(page.locator("#cam-verdict")).to_have_text("stale", timeout=10_000)
            await expect(page.locator("#cam-view")).to_have_attribute("data-verdict", "stale")
            await expect(page.locator("#cam-score")).to_contain_text("API unreachable")
            await page.unroute("**/api/streams")
            await page.click("#cam-stop")


async def test_a_whip_location_a_proxy_already_prefixed_is_used_as_it_is(tmp_path: Path) -> None:
    # The service names its WHIP session /whip/...; a proxy that rewrites Location to carry its
    # prefix (/monitor/whip/...) must not get the prefix twice: the session's DELETE must land.
    settings = load_settings(None, data_dir=tmp_path / "data", demo=False, server={"token": TOKEN})
    async with running_service(settings, prefix="/monitor") as svc:
        async with chromium_page(tmp_path) as page:
            deletes: list[tuple[str, int]] = []
            page.on("response", lambda r: deletes.append((r.url, r.status)) if r.request.method == "DELETE" else None)

            async def rewrite(route: Route) -> None:
                response = await route.fetch()
                headers = dict(response.headers)
                if headers.get("location", "").startswith("/whip/"):
                    headers["location"] = "/monitor" + headers["location"]
                await route.fulfill(response=response, headers=headers)

            await page.route("**/monitor/whip/my-camera", rewrite)
            await page.goto(f"{svc.base}/monitor/?token={TOKEN}")
            await expect(page.locator("#api-state")).to_have_text("API live", timeout=10_000)
            await page.click("#cam-start")
            card = page.locator('article[data-stream="my-camera"]')
            await expect(card).to_have_attribute("data-state", "running", timeout=15_000)
            await page.click("#cam-stop")
            await page.wait_for_function("() => true")
            for _ in range(100):
                if deletes:
                    break
                await page.wait_for_timeout(100)
            url, status = deletes[0]
            assert url.startswith(f"{svc.base}/monitor/whip/my-camera/") and status == 200, deletes
            await expect(card).to_have_count(0, timeout=10_000)


async def test_an_empty_log_is_followed_from_its_start(tmp_path: Path) -> None:
    # The log is empty on load; an event is published after the refill read it and before the
    # websocket opens. "An empty log: resume from its start, so nothing published meanwhile is
    # missed": the websocket resumes with since=0 and the event shows.
    settings = load_settings(None, data_dir=tmp_path / "data", demo=False)
    async with running_service(settings) as svc:
        async with chromium_page(tmp_path) as page:
            published: list[int] = []

            async def meanwhile(route: Route) -> None:
                response = await route.fetch()
                if not published:
                    published.append(1)
                    await svc.runtime.bus.publish([status_event("meanwhile", 0)])
                await route.fulfill(response=response)

            await page.route("**/api/events?*", meanwhile)
            await page.goto(f"{svc.base}/")
            await expect(page.locator("#ws-state")).to_have_text("alerts live", timeout=10_000)
            await expect(page.locator("#feed li")).to_have_count(1, timeout=10_000)
            assert await page.evaluate(FEED) == ["meanwhile"]
            assert await page.evaluate("() => ws.url.includes('since=0')")


async def test_back_after_a_failure_the_socket_is_reopened_at_once(tmp_path: Path) -> None:
    # "Back after a failure: an open websocket may have died with the path to the service without
    # a close. It resumes after the newest id, losing nothing": reopened by the first good poll,
    # not WS_BEHIND_MS later.
    settings = load_settings(None, data_dir=tmp_path / "data", demo=False)
    async with running_service(settings) as svc:
        async with chromium_page(tmp_path) as page:
            bus = svc.runtime.bus
            await bus.publish([status_event("first", 0)])
            await page.goto(f"{svc.base}/")
            api = page.locator("#api-state")
            await expect(page.locator("#ws-state")).to_have_text("alerts live", timeout=10_000)
            await expect(page.locator("#feed li")).to_have_count(1, timeout=10_000)

            async def unreachable(route: Route) -> None:
                await route.abort()

            await page.route("**/api/streams", unreachable)
            await expect(api).to_have_text(re.compile(r"^API unreachable"), timeout=10_000)
            await page.evaluate("() => { window.firstSocket = ws; ws.onmessage = null; }")  # died with the path
            await bus.publish([status_event("missed", 1)])
            await page.unroute("**/api/streams")
            await expect(api).to_have_text("API live", timeout=10_000)
            # The poll that said "live" again reopened the socket before it said so.
            assert await page.evaluate("() => ws !== window.firstSocket")
            await expect(page.locator("#feed li")).to_have_count(2, timeout=10_000)
            assert await page.evaluate(FEED) == ["missed", "first"]


async def test_the_header_counts_verdicts_and_alerting_streams_come_first(tmp_path: Path) -> None:
    settings = load_settings(
        None, data_dir=tmp_path / "data", demo=False,
        streams=[{"id": "a-quiet", "url": DEAD_RTSP}, {"id": "b-busy", "url": DEAD_RTSP}],
    )
    async with running_service(settings) as svc:
        async with chromium_page(tmp_path) as page:
            async def verdicts(route: Route) -> None:
                response = await route.fetch()
                streams = await response.json()
                for stream in streams:
                    stream["verdict"] = "alert" if stream["id"] == "b-busy" else "clear"
                await route.fulfill(response=response, json=streams)

            await page.route("**/api/streams", verdicts)
            await page.goto(f"{svc.base}/")
            await expect(page.locator("#api-state")).to_have_text("API live", timeout=10_000)
            await expect(page.locator("#summary")).to_have_text("1 alert0 suspicious1 clear0 no verdict", timeout=10_000)
            await expect(page.locator("#streams article")).to_have_count(2)
            assert await page.evaluate(CARD_IDS) == ["b-busy", "a-quiet"]


async def test_a_refused_token_also_stops_the_alerts(tmp_path: Path) -> None:
    # "Nor alerts: what the page shows follows the token typed in, not one that worked before."
    settings = load_settings(None, data_dir=tmp_path / "data", demo=False, server={"token": TOKEN})
    async with running_service(settings) as svc:
        async with chromium_page(tmp_path) as page:
            await page.goto(f"{svc.base}/#token={TOKEN}")
            await expect(page.locator("#ws-state")).to_have_text("alerts live", timeout=10_000)
            await svc.runtime.bus.publish([status_event("while-good", 0)])
            await expect(page.locator("#feed li")).to_have_count(1, timeout=10_000)
            await page.fill("#token", "wrong")
            await page.dispatch_event("#token", "change")
            await expect(page.locator("#ws-state")).to_have_text("alerts: token rejected", timeout=10_000)
            assert await page.evaluate("() => ws === null")
            await svc.runtime.bus.publish([status_event("after-refusal", 1)])
            await page.wait_for_timeout(1_500)
            assert await page.evaluate(FEED) == ["while-good"]


async def test_a_token_with_a_literal_percent_sign_in_the_fragment_works(tmp_path: Path) -> None:
    # decodeURIComponent threw "URI malformed" on a bare "%": the whole script stopped at its top
    # level, the page read "API …" for ever, and the token stayed in the address bar and history.
    token = "50%off-" + "q" * 26
    settings = load_settings(None, data_dir=tmp_path / "data", demo=False, server={"token": token})
    async with running_service(settings) as svc:
        async with chromium_page(tmp_path) as page:
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            await page.goto(f"{svc.base}/#token={token}")
            await expect(page.locator("#api-state")).to_have_text("API live", timeout=10_000)
            assert token not in page.url and errors == []


async def test_no_good_poll_for_stale_ms_reads_stale_whatever_else(tmp_path: Path) -> None:
    # STALE_MS: "no good poll for this long: stale, whatever else" (a laptop woken from sleep, a
    # throttled tab: no poll failed, none answered). White-box: the last good poll is set 6 s back.
    settings = lobby_settings(tmp_path)
    async with running_service(settings) as svc:
        async with chromium_page(tmp_path) as page:
            await page.goto(f"{svc.base}/")
            await expect(page.locator("#api-state")).to_have_text("API live", timeout=10_000)
            shown = await page.evaluate(
                """() => { lastGoodPoll = Date.now() - 6000; renderStatus();
                           return [document.getElementById("api-state").textContent,
                                   document.getElementById("streams").classList.contains("stale")]; }"""
            )
            assert shown == ["API: no answer · last answer 6 s ago", True], shown
            await expect(page.locator("#api-state")).to_have_text("API live", timeout=10_000)  # next poll


async def test_the_feed_keeps_its_newest_200(tmp_path: Path) -> None:
    # FEED_MAX: a dashboard left open for weeks keeps the newest 200 rows, not every event.
    settings = load_settings(None, data_dir=tmp_path / "data", demo=False)
    async with running_service(settings) as svc:
        async with chromium_page(tmp_path) as page:
            await page.goto(f"{svc.base}/")
            await expect(page.locator("#ws-state")).to_have_text("alerts live", timeout=10_000)
            await svc.runtime.bus.publish([status_event(f"ev{i}", i) for i in range(210)])
            await expect(page.locator("#feed li").first).to_contain_text("ev209", timeout=10_000)
            await expect(page.locator("#feed li")).to_have_count(200)
            await expect(page.locator("#feed li").last).to_contain_text("ev10")
