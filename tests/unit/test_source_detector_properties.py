"""What the file and RTSP sources, the baseline detector and the small nets promise
(monitor/sources/av_source.py, monitor/detect/baseline.py, monitor/detect/nets.py): stream time
from the container's start, sampling on a fixed grid, no credentials in errors, the pixel limit,
the baseline's documented logistic, ensembles as the mean of their members, `realtime: false`,
playlists refused, silent video noticed. Each test was written against a one-line change of the
code that the rest of the suite let through. Media generated here."""

from __future__ import annotations

import asyncio
import functools
import math
import os
import socket
import threading
from fractions import Fraction
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from monitor.errors import SourceEnded, SourceError
from monitor.metrics import Metrics
from monitor.sources.av_source import FileSource, sample_video
from monitor.sources.demo_media import render_frame, write_clip
from tests.support.media import garbage_video_ts, timestamped_ts

# --- stream time counts from the container's start time, as a player shows it -------------

def _ts_with_audio_from(path: Path, audio_start_s: float, video_start_s: float, seconds: float = 1.0, fps: int = 10) -> Path:
    """MPEG-TS whose audio starts at ``audio_start_s`` (the container's start) and video at ``video_start_s``."""
    with av.open(str(path), mode="w", format="mpegts") as container:
        video = container.add_stream("libx264", rate=fps, options={"preset": "ultrafast", "tune": "zerolatency"})
        video.width, video.height, video.pix_fmt = 160, 120, "yuv420p"
        video.codec_context.time_base = Fraction(1, fps)
        audio = container.add_stream("mp2", rate=48000)
        audio.layout = "mono"
        first_a = round(audio_start_s * 48000)
        for i in range(0, round((video_start_s - audio_start_s + seconds) * 48000), 1152):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1152), np.int16), format="s16", layout="mono")
            frame.sample_rate, frame.pts, frame.time_base = 48000, first_a + i, Fraction(1, 48000)
            container.mux(audio.encode(frame))
        container.mux(audio.encode(None))
        first = round(video_start_s * fps)
        for i in range(round(seconds * fps)):
            frame = av.VideoFrame.from_ndarray(render_frame(i / fps, 160, 120), format="rgb24")
            frame.pts, frame.time_base = first + i, Fraction(1, fps)
            container.mux(video.encode(frame))
        container.mux(video.encode(None))
    return path


def test_stream_time_counts_from_a_small_container_start(tmp_path: Path) -> None:
    # The common MPEG-TS recording: timestamps start at 1.4 s. A player shows its first frame at 0.
    clip = timestamped_ts(tmp_path / "rec.ts", 1.0, start_s=1.4)
    frames = list(sample_video(str(clip), 10.0))
    assert frames[0].pts_s == pytest.approx(0.0, abs=1e-3)
    assert frames[-1].pts_s == pytest.approx(0.9, abs=0.02)


def test_video_starting_after_the_container_start_keeps_its_offset(tmp_path: Path) -> None:
    # Audio from 1 s (the container's start), video from 3 s: a player shows the first frame at 2 s.
    clip = _ts_with_audio_from(tmp_path / "av.ts", audio_start_s=1.0, video_start_s=3.0)
    with av.open(str(clip)) as c:
        assert c.start_time / 1e6 == pytest.approx(1.0, abs=0.05)  # what this test is about
    frames = list(sample_video(str(clip), 10.0))
    assert frames[0].pts_s == pytest.approx(2.0, abs=0.05)


# --- sample_video samples at the fps asked for, on a fixed grid ----------------------------

@pytest.mark.parametrize("fps", [5.0, 2.0])
def test_sample_video_samples_at_the_requested_rate(tmp_path: Path, fps: float) -> None:
    clip = timestamped_ts(tmp_path / "rec.ts", 2.0, start_s=0.0, fps=10)
    times = [f.pts_s for f in sample_video(str(clip), fps)]
    assert len(times) == round(2.0 * fps)
    assert np.diff(times) == pytest.approx([1.0 / fps] * (len(times) - 1), abs=0.02)


def _gap_mkv(path: Path, fps: int = 30) -> Path:
    """30 fps video from 0 to 1 s, then (a 2 s gap) from 3 to 4 s."""
    with av.open(str(path), mode="w", format="matroska") as container:
        stream = container.add_stream("mjpeg", rate=fps)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuvj420p"
        stream.codec_context.time_base = Fraction(1, fps)
        pts = list(range(0, fps)) + list(range(3 * fps, 4 * fps))
        for p in pts:
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), 100, np.uint8), format="rgb24")
            frame.pts, frame.time_base = p, Fraction(1, fps)
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def test_sampling_grid_stays_on_stream_time_after_a_gap(tmp_path: Path) -> None:
    clip = _gap_mkv(tmp_path / "gap.mkv")
    times = [f.pts_s for f in sample_video(str(clip), 10.0)]
    assert times[0] == pytest.approx(0.0) and times[-1] > 3.8
    # Never two samples closer than the sampling interval: after the gap, frames are taken on
    # the 0.1 s grid, not every decoded frame until a lagging grid catches up.
    assert min(np.diff(times)) > 0.1 - 0.01, times
    assert len(times) == 20


# --- a scan of a URL names it without its credentials --------------------------------------

def test_scan_of_an_undecodable_url_names_it_without_credentials(tmp_path: Path) -> None:
    garbage_video_ts(tmp_path / "garbage.ts", packets=20)
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(tmp_path))
    handler.log_message = lambda *a, **k: None  # type: ignore[attr-defined]
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://viewer:s3cretPw@127.0.0.1:{server.server_address[1]}/garbage.ts"
        with pytest.raises(SourceError) as info:
            list(sample_video(url, 10.0, on_decode_error=lambda exc: None))
    finally:
        server.shutdown()
        server.server_close()
    assert "no decodable video frame" in str(info.value)
    assert "s3cretPw" not in str(info.value)


def test_a_relative_path_that_looks_like_an_ffmpeg_protocol_is_read_as_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A manifest's clips are paths under its root; under a root of "." (`monitor evaluate
    # manifest.tsv`), FFmpeg read `pipe:0` as standard input, `http:/host/x` as a connection that
    # could hang the run, and `file:/etc/x` as a file outside the root.
    monkeypatch.chdir(tmp_path)
    write_clip(tmp_path / "clip.mp4", 0.5, fps=10, width=160, height=120).rename(tmp_path / "pipe:0")  # a file of that name
    assert len(list(sample_video("pipe:0", 10.0))) >= 4
    with pytest.raises(SourceError, match="no such file"):
        list(sample_video("http:/127.0.0.1:9/x.mp4", 10.0))


def test_a_url_that_stalls_after_some_video_says_so(tmp_path: Path) -> None:
    # Before: "read failed: ... Immediate exit requested". PyAV's read timer runs from FFmpeg's
    # last network read, and packets it had buffered came first, so the stall was measured as
    # far shorter than the read timeout and not recognised as one.
    data = timestamped_ts(tmp_path / "long.ts", 8.0, start_s=0.0).read_bytes()
    gone = threading.Event()

    def half_then_silence(conn: socket.socket) -> None:
        with conn:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: video/mp2t\r\nContent-Length: %d\r\n\r\n" % len(data) + data[: len(data) // 2])
            gone.wait(30)

    listener = socket.create_server(("127.0.0.1", 0))
    threading.Thread(target=lambda: half_then_silence(listener.accept()[0]), daemon=True).start()
    frames = 0
    try:
        with pytest.raises(SourceError) as info:
            for _ in sample_video(f"http://127.0.0.1:{listener.getsockname()[1]}/long.ts", 10.0, on_decode_error=lambda exc: None):
                frames += 1
    finally:
        gone.set()
        listener.close()
    assert frames > 0  # some video came first
    assert str(info.value) == "no data from the server for 5 s"


# --- analysis.max_frame_pixels: frames *above* the limit fail, counted in pixels --------------

async def _first(source: FileSource) -> object:
    await source.start()
    try:
        return await asyncio.wait_for(source.recv(), 10)
    except (SourceError, SourceEnded) as exc:
        return exc
    finally:
        await source.aclose()


async def test_a_frame_exactly_at_the_pixel_limit_plays(tmp_path: Path) -> None:
    clip = write_clip(tmp_path / "c.mp4", 0.3, fps=10, width=160, height=120)
    source = FileSource("f", str(clip), metrics=Metrics(), realtime=False)
    source.max_frame_pixels = 160 * 120
    got = await _first(source)
    assert not isinstance(got, BaseException), got
    assert (got.width, got.height) == (160, 120)


async def test_a_portrait_frame_over_the_pixel_limit_fails(tmp_path: Path) -> None:
    clip = write_clip(tmp_path / "p.mp4", 0.3, fps=10, width=64, height=96)
    source = FileSource("f", str(clip), metrics=Metrics(), realtime=False)
    source.max_frame_pixels = 64 * 96 - 1  # width * width (4096) would pass it
    got = await _first(source)
    assert isinstance(got, SourceError) and "max_frame_pixels" in str(got)


# --- baseline-landmarks: the documented logistic, head roll dropping out, signal weights -----

def _baseline_window():
    from monitor.detect.baseline import LandmarkBaselineDetector
    from monitor.plugins import TrackWindow
    from monitor.types import FaceObservation, FaceQuality, readonly

    rng = np.random.default_rng(3)
    base = rng.uniform(100, 300, size=(478, 3)).astype(np.float64)
    base[234, :2], base[454, :2] = (120, 200), (280, 200)  # cheeks 160 px apart
    det = LandmarkBaselineDetector()
    window = TrackWindow("t", 1, det.window_s)
    for k in range(30):
        lm = base.copy()
        lm[:, 0] += 10 * math.sin(0.3 * k)
        lm[:, :2] += rng.normal(0, 0.8, size=(478, 2))
        lm = readonly(lm.astype(np.float32))
        obs = FaceObservation(stream_id="t", track_id=1, frame_seq=k, t=k * 0.1, received_at=0.0, landmarks=lm,
                              bbox=(0.0, 0.0, 400.0, 400.0), crop=None,
                              quality=FaceQuality(face_px=160.0, blur=500.0, out_of_frame=0.0, occlusion=0.0, confidence=1.0),
                              frame_size=(512, 512))
        window.push(obs, det.features(obs))
    return det, window


def test_baseline_probability_is_the_documented_logistic() -> None:
    from monitor.detect import baseline as b

    det, window = _baseline_window()
    x = b.window_feature_vector(window, det.config)
    assert x is not None
    # models/baseline-landmarks.md: P = sigmoid(-0.2694 + sum coef_i * (x_i - mean_i) / std_i)
    logit = -0.2694 + sum(c * (xi - m) / s for c, xi, m, s in zip(b.COEF, x, b.FEATURE_MEAN, b.FEATURE_STD))
    score = det.score(window)
    assert score.probability == pytest.approx(1 / (1 + math.exp(-logit)), rel=1e-6)
    # weight of each signal = its share of |terms|
    terms = [c * (xi - m) / s for c, xi, m, s in zip(b.COEF, x, b.FEATURE_MEAN, b.FEATURE_STD)]
    total = sum(abs(t) for t in terms)
    assert [s.weight for s in score.signals] == pytest.approx([abs(t) / total for t in terms], rel=1e-6)


def test_baseline_inner_face_frame_drops_head_roll() -> None:
    from monitor.detect.baseline import landmark_features
    from monitor.types import FaceObservation, FaceQuality

    rng = np.random.default_rng(5)
    lm = rng.uniform(100, 300, size=(478, 3)).astype(np.float32)
    lm[234, :2], lm[454, :2] = (120, 200), (280, 210)
    angle = math.radians(25)
    rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    rolled = lm.copy()
    rolled[:, :2] = ((lm[:, :2] - 200.0) @ rot.T + 200.0) * 1.3 + 17.0  # roll, zoom and move the head

    def obs(points: np.ndarray) -> FaceObservation:
        return FaceObservation(stream_id="t", track_id=1, frame_seq=0, t=0.0, received_at=0.0, landmarks=points,
                               bbox=(0.0, 0.0, 1.0, 1.0), crop=None,
                               quality=FaceQuality(face_px=100.0, blur=500.0, out_of_frame=0.0, occlusion=0.0, confidence=1.0),
                               frame_size=(600, 600))

    a, b = landmark_features(obs(lm)), landmark_features(obs(rolled))
    assert a is not None and b is not None
    assert np.allclose(a.inner, b.inner, atol=1e-4)


def test_baseline_jitter_is_zero_for_uniform_motion() -> None:
    from monitor.detect.baseline import _jitter

    t = np.arange(10, dtype=np.float64)[:, None, None]
    points = np.ones((10, 5, 2)) + 0.01 * t  # every point moving at constant speed: no jitter
    assert _jitter(points) == pytest.approx(0.0, abs=1e-12)
    wobble = points.copy()
    wobble[1::2] += 0.02  # alternate frames offset by 0.02: deviation from the neighbours' midpoint
    assert _jitter(wobble) == pytest.approx(0.02 * math.sqrt(2), rel=1e-6)


# --- nets: ensembles are the mean of members; inputs normalised inside the graph --------------

def test_appearance_ensemble_is_the_mean_of_its_members() -> None:
    from monitor.detect.nets import AppearanceEnsemble

    torch.manual_seed(0)
    ens = AppearanceEnsemble(8, 3).eval()
    with torch.no_grad():
        for m in ens.members:  # make members differ in their outputs
            m.head.bias.add_(torch.randn(1))
        x = torch.rand(2, 3, 112, 112) * 255
        logit, bound = ens(x)
        outs = [m(x) for m in ens.members]
    assert torch.allclose(logit, torch.stack([o[0] for o in outs]).mean(0), atol=1e-5)
    assert torch.allclose(bound, torch.stack([o[1] for o in outs]).mean(0), atol=1e-5)


def test_geometry_ensemble_is_the_mean_of_its_members() -> None:
    from monitor.detect.nets import GeometryEnsemble

    torch.manual_seed(0)
    ens = GeometryEnsemble(6, 3).eval()
    x = torch.randn(2, 12, 6)
    with torch.no_grad():
        assert torch.allclose(ens(x), torch.stack([m(x) for m in ens.members]).mean(0), atol=1e-5)


def test_appearance_input_is_scaled_to_minus_one_one() -> None:
    from monitor.detect.nets import AppearanceNet

    net = AppearanceNet(8).eval()
    seen: list[torch.Tensor] = []
    net.stem.register_forward_pre_hook(lambda mod, args: seen.append(args[0].detach().clone()))
    x = torch.zeros(1, 3, 112, 112)
    x[..., :56] = 255.0
    x[..., 56:] = 0.0
    with torch.no_grad():
        net(x)
    assert float(seen[0].max()) == pytest.approx(1.0) and float(seen[0].min()) == pytest.approx(-1.0)


def test_geometry_net_ignores_where_the_face_is() -> None:
    # "positions are centred on the window mean ... so only shape and motion count"
    from monitor.detect.nets import GeometryNet

    torch.manual_seed(0)
    net = GeometryNet(6).eval()
    x = torch.randn(2, 12, 6) * 0.05
    with torch.no_grad():
        assert torch.allclose(net(x), net(x + torch.tensor([0.3, -0.2, 0.1, 0.4, -0.5, 0.2])), atol=1e-5)


# --- realtime: false is read as fast as analysis goes: no pacing, every frame ----------------

async def test_a_file_with_realtime_false_is_not_paced(tmp_path: Path) -> None:
    from monitor.clock import FakeClock
    from tests.support.fake_time import FakeTimeFile

    clip = timestamped_ts(tmp_path / "rec.ts", 1.0, start_s=0.0)
    source = FakeTimeFile("f", str(clip), metrics=Metrics(), clock=FakeClock(), realtime=False)
    got = []
    await source.start()
    try:
        while True:
            got.append(await asyncio.wait_for(source.recv(), 10))
    except SourceEnded:
        pass
    finally:
        await source.aclose()
    assert [f.pts_s for f in got] == pytest.approx([i / 10 for i in range(10)])  # every frame, in order
    assert source.slept == []  # never waited for the file's timestamps


# --- a file stream refuses playlists and manifests -------------------------------------------

@pytest.mark.parametrize("head", ["#EXTM3U\n#EXT-X-VERSION:3\n", "ffconcat version 1.0\n", '<?xml version="1.0"?>\n<MPD xmlns="urn:mpeg:dash:schema:mpd:2011">'])
async def test_a_file_stream_refuses_a_playlist(tmp_path: Path, head: str) -> None:
    clip = timestamped_ts(tmp_path / "seg.ts", 0.5, start_s=0.0)
    playlist = tmp_path / "list.m3u8"
    body = {"#": f"#EXTINF:0.5,\n{clip}\n#EXT-X-ENDLIST\n", "f": f"file '{clip}'\n", "<": "</MPD>"}[head[0]]
    playlist.write_text(head + body)
    source = FileSource("f", str(playlist), metrics=Metrics(), realtime=False)
    got = await _first(source)
    assert isinstance(got, SourceError) and "playlist" in str(got), got


async def test_a_file_stream_refuses_a_fifo_instead_of_blocking_on_it(tmp_path: Path) -> None:
    # Before: the playlist check opened and read the FIFO, which blocks with no writer, in the
    # source's thread where no stop reaches it: the stream stayed "starting", and removing it
    # left the thread behind for good.
    fifo = tmp_path / "camera.pipe"
    os.mkfifo(fifo)
    source = FileSource("f", str(fifo), metrics=Metrics(), realtime=False)
    got = await asyncio.wait_for(_first(source), 10.0)
    assert isinstance(got, SourceError) and not got.retryable, got
    assert str(got) == f"{fifo} is not a regular file (a FIFO, socket or device): file streams play files"
    assert not source.left_behind()


# --- baseline-landmarks: faces cut off by the frame are not used -----------------------------

def test_baseline_skips_faces_out_of_frame() -> None:
    from monitor.detect.baseline import LandmarkBaselineDetector
    from monitor.types import FaceObservation, FaceQuality

    rng = np.random.default_rng(5)
    lm = rng.uniform(100, 300, size=(478, 3)).astype(np.float32)
    lm[234, :2], lm[454, :2] = (120, 200), (280, 210)

    def obs(out_of_frame: float) -> FaceObservation:
        return FaceObservation(stream_id="t", track_id=1, frame_seq=0, t=0.0, received_at=0.0, landmarks=lm,
                               bbox=(0.0, 0.0, 1.0, 1.0), crop=None,
                               quality=FaceQuality(face_px=100.0, blur=500.0, out_of_frame=out_of_frame, occlusion=0.0, confidence=1.0),
                               frame_size=(600, 600))

    det = LandmarkBaselineDetector()
    assert det.features(obs(0.0)) is not None
    assert det.features(obs(0.5)) is None  # half the landmarks outside the image (max_out_of_frame 0.1)


# --- a live stream whose video stops while other streams flow fails --------------------------

def test_decode_frames_fails_when_video_is_silent_while_audio_flows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import monitor.sources.av_source as avs
    from tests.support.media import late_video_ts

    class Ticking:  # each reading of the clock is one second later: no real waiting
        now = 0.0

        def monotonic(self) -> float:
            self.now += 1.0
            return self.now

    clip = late_video_ts(tmp_path / "late.ts", video_start_s=30.0, seconds=0.5)  # 2 s of audio first
    monkeypatch.setattr(avs, "time", Ticking())
    with av.open(str(clip)) as container, pytest.raises(SourceError, match="no video for"):
        list(avs.decode_frames(container, lambda exc: None, max_video_gap_s=5.0))


# --- training extraction samples at analysis.fps (sample_video) -------------------------------

def test_training_extraction_samples_at_the_analysis_rate(tmp_path: Path) -> None:
    from monitor.config import AnalysisConfig
    from monitor.training.extract import extract_clip

    clip = write_clip(tmp_path / "c.mp4", 1.0, fps=10, width=320, height=240)
    faces = extract_clip(clip, AnalysisConfig(fps=5))
    times = sorted(set(np.round(faces.t, 3).tolist()))
    assert len(times) >= 3
    assert np.diff(times) == pytest.approx([0.2] * (len(times) - 1), abs=0.02)
