"""Alert evidence end to end: a real file stream through MediaPipe and the detector raises an
alert (thresholds near 0), its evidence is saved and served with the token, and only then."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest

from monitor.config import load_settings
from monitor.sources.demo_media import write_clip
from tests.support.service import running_service

pytestmark = pytest.mark.integration
TOKEN = "evidence-test-token-0123456789"
ALERT_ALL = {"suspicious_enter": 0.001, "alert_enter": 0.001, "hysteresis": 0.0, "min_alert_s": 0.2}


async def first_alert(client: httpx.AsyncClient, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        events = (await client.get("/api/events", params={"since": 0, "limit": 1000})).json()
        opened = [e for e in events if e["type"].endswith("alert.opened.v1")]
        if opened:
            return opened[0]["data"]
        await asyncio.sleep(0.2)
    raise AssertionError("no alert opened")


@pytest.mark.parametrize("evidence", [True, False])
async def test_an_alert_comes_with_its_evidence_for_token_holders_only(tmp_path: Path, evidence: bool) -> None:
    clip = write_clip(tmp_path / "face.mp4", 3.0, fps=15, width=640, height=480)
    settings = load_settings(
        None, data_dir=tmp_path / "data", demo=False, policy=ALERT_ALL, alerts={"evidence": evidence},
        server={"token": TOKEN}, streams=[{"id": "cam", "url": str(clip), "loop": True}],
    )
    async with running_service(settings) as svc:
        auth = {"Authorization": f"Bearer {TOKEN}"}
        async with httpx.AsyncClient(base_url=svc.base, headers=auth, timeout=10) as client:
            data = await first_alert(client)
            url = f"/api/alerts/{data['alert_id']}/evidence"
            if not evidence:
                assert data.get("evidence") is None
                assert (await client.get(url)).status_code == 404
                assert not (tmp_path / "data" / "evidence" / data["alert_id"]).exists()
                return
            assert data["evidence"] == url
            deadline = time.monotonic() + 20
            while (r := await client.get(url)).status_code == 404 and time.monotonic() < deadline:
                await asyncio.sleep(0.1)  # named once queued; written by the store's own thread
            assert r.status_code == 200 and r.headers["cache-control"] == "no-store"
            manifest = r.json()
            assert manifest["stream_id"] == "cam" and manifest["track_id"] == data["track_id"]
            assert manifest["alert"]["alert_id"] == data["alert_id"] and manifest["faces"]
            x0, y0, x1, y1 = manifest["frame"]["bbox"]
            assert 0 <= x0 < x1 <= 640 and 0 <= y0 < y1 <= 480  # MediaPipe's box on the real frame
            for name in ["frame.jpg"] + [f["file"] for f in manifest["faces"]]:
                image = await client.get(f"{url}/{name}")
                assert image.status_code == 200 and image.headers["content-type"] == "image/jpeg"
                pixels = cv2.imdecode(np.frombuffer(image.content, np.uint8), cv2.IMREAD_COLOR)
                assert pixels is not None and pixels.shape[2] == 3
            for bad in ("evidence.json", "..%2Fevents.sqlite3", "face-9.png"):
                assert (await client.get(f"{url}/{bad}")).status_code == 404
            assert (await client.get("/api/alerts/../../evidence")).status_code == 404
        async with httpx.AsyncClient(base_url=svc.base, timeout=10) as anonymous:
            assert (await anonymous.get(url)).status_code == 401
            assert (await anonymous.get(f"{url}/frame.jpg")).status_code == 401
    on_disk = json.loads((tmp_path / "data" / "evidence" / data["alert_id"] / "evidence.json").read_text())
    assert on_disk["alert"]["alert_id"] == data["alert_id"]
