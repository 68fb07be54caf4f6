"""`monitor serve` options merge with the file and env before validation (CLI > env > YAML)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Annotated

import pytest
import yaml
from pydantic import AliasChoices, BaseModel, ConfigDict, Field
from typer.testing import CliRunner

import monitor.app
from monitor.cli import app
from monitor.config import Settings, load_settings
from monitor.errors import ConfigError
from monitor.plugins import plugin_config

EXPOSED = "server:\n  host: 0.0.0.0\n  port: 9000\n"


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> list[Settings]:
    """Settings `monitor serve` would run with; nothing is served."""
    got: list[Settings] = []

    async def fake_serve(settings: Settings) -> None:
        got.append(settings)

    monkeypatch.setattr(monitor.app, "serve", fake_serve)
    for name in ("MONITOR_SERVER__HOST", "MONITOR_SERVER__PORT", "MONITOR_SERVER__TOKEN"):
        monkeypatch.delenv(name, raising=False)
    return got


def test_cli_host_rescues_a_file_exposed_without_token(
    tmp_path: Path, served: list[Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(EXPOSED)
    r = CliRunner().invoke(app, ["serve", "-c", str(cfg), "--host", "127.0.0.1", "--data-dir", str(tmp_path / "d")])
    assert r.exit_code == 0, r.output
    assert served[-1].server.host == "127.0.0.1" and served[-1].server.port == 9000  # the file's port stays
    # CLI beats env beats YAML, key by key.
    monkeypatch.setenv("MONITOR_SERVER__PORT", "7000")
    r = CliRunner().invoke(app, ["serve", "-c", str(cfg), "--host", "localhost"])
    assert r.exit_code == 0, r.output
    assert (served[-1].server.host, served[-1].server.port) == ("localhost", 7000)
    r = CliRunner().invoke(app, ["serve", "-c", str(cfg), "--host", "localhost", "--port", "7100"])
    assert r.exit_code == 0, r.output
    assert served[-1].server.port == 7100
    # An env override rescues the file the same way.
    monkeypatch.setenv("MONITOR_SERVER__HOST", "127.0.0.1")
    assert load_settings(cfg).server.host == "127.0.0.1"


def test_still_invalid_after_merging_names_the_key(tmp_path: Path, served: list[Settings]) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(EXPOSED)
    r = CliRunner().invoke(app, ["serve", "-c", str(cfg), "--port", "9100"])
    assert r.exit_code == 2 and not served
    assert "server.host='0.0.0.0' is not loopback" in r.stderr and "server.token" in r.stderr
    assert "Traceback" not in r.stderr


def test_unknown_and_bad_keys_are_named(tmp_path: Path, served: list[Settings], monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("server:\n  hots: 127.0.0.1\nstreams:\n  - {id: 'bad id', url: 'rtsp://x'}\n")
    r = CliRunner().invoke(app, ["serve", "-c", str(cfg), "--host", "127.0.0.1"])
    assert r.exit_code == 2 and not served
    assert "server.hots: unknown key" in r.stderr
    assert "streams[0].id: stream id must be" in r.stderr and "'bad id'" in r.stderr
    monkeypatch.setenv("MONITOR_SERVER__PORT", "eighty")
    with pytest.raises(ConfigError, match=r"server\.port: .*integer.*'eighty'"):
        load_settings(None)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["evaluate", "{bad}"], "bad.tsv:2: label 'maybe' is not real, fake or attack"),
        (["evaluate", "{ok}", "--degrade", "5x"], "unknown degradation '5x'"),
        (["train", "--source", "tsv:{bad}", "--out", "{tmp}/b"], "bad.tsv:2: label 'maybe'"),
        (["train", "--source", "nope:x", "--out", "{tmp}/b"], "unknown training source 'nope:x'"),
        (["train", "--source", "tsv:{tmp}/missing.tsv", "--out", "{tmp}/b"], "missing.tsv: No such file or directory"),
        (["train", "--source", "tsv:{ok}", "--out", "{tmp}/b", "--width", "4"], "width"),
        (["sbi", "pack", "--source", "tsv:{bad}", "--out", "{tmp}/p.npz"], "bad.tsv:2: label 'maybe'"),
        (["sbi", "pack", "--source", "tsv:{ok}", "--out", "{tmp}/p.npz", "--max-clip-s", "0"], "--max-clip-s must be at least 0.5"),
        (["evaluate"], "give a manifest or at least one --source"),
        (["evaluate", "{ok}", "--source", "tsv:{ok}"], "give a manifest or --source, not both"),
        (["evaluate", "--source", "real:{tmp}/none"], "real:{tmp}/none"),
        # Reported and written, then exit 2: before, a wrong --root or a broken mount exited 0.
        (["evaluate", "{ok}", "--workers", "1", "-q"], "1 of 1 clips could not be read"),
        (["train", "--source", "tsv:{ok}", "--source", "tsv:{ok}", "--out", "{tmp}/b"], "the same video is in two sources"),
        (["sbi", "pack", "--source", "tsv:{ok}", "--source", "tsv:{ok}", "--out", "{tmp}/p.npz"], "the same video is in two sources"),
    ],
)
def test_training_commands_reject_bad_input_with_a_one_line_error(tmp_path: Path, args: list[str], message: str) -> None:
    (tmp_path / "bad.tsv").write_text("path\tlabel\na.mp4\tmaybe\n")
    (tmp_path / "ok.tsv").write_text("path\tlabel\na.mp4\treal\n")
    argv = [a.format(bad=tmp_path / "bad.tsv", ok=tmp_path / "ok.tsv", tmp=tmp_path) for a in args]
    r = CliRunner().invoke(app, argv)
    assert r.exit_code == 2, r.output
    assert r.stderr.startswith("error: ") and message.format(tmp=tmp_path) in r.stderr
    assert "Traceback" not in r.output + r.stderr


def test_sbi_pack_reads_as_much_of_each_clip_as_asked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # --max-clip-s existed only on `monitor train`: a pack of FF++ read 60 s of every clip.
    from monitor.training import sbi

    got: dict[str, object] = {}
    monkeypatch.setattr(sbi, "build_pack", lambda *args, **kwargs: got.update(kwargs) or {})
    (tmp_path / "ok.tsv").write_text("path\tlabel\na.mp4\treal\n")
    r = CliRunner().invoke(app, ["sbi", "pack", "--source", f"tsv:{tmp_path / 'ok.tsv'}", "--out", str(tmp_path / "p.npz"), "--max-clip-s", "5"])
    assert r.exit_code == 0, r.output
    assert got["max_clip_s"] == 5.0
    r = CliRunner().invoke(app, ["sbi", "pack", "--source", f"tsv:{tmp_path / 'ok.tsv'}", "--out", str(tmp_path / "p.npz"),
                                 "--validation-preset", "dev-v1", "--validation", "extra"])
    assert r.exit_code == 0, r.output
    assert got["validation"] == [*sbi.VALIDATION_PRESETS["dev-v1"], "extra"]


def test_a_bug_in_training_is_not_dressed_up_as_bad_input(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Only InputError (and OS errors) become a one-line `error:`; any other exception keeps
    its traceback, so a defect is not mistaken for a user's mistake."""
    from monitor.training import train

    def broken(*args: object, **kwargs: object) -> None:
        raise ValueError("operands could not be broadcast together")

    monkeypatch.setattr(train, "run_training", broken)
    (tmp_path / "ok.tsv").write_text("path\tlabel\na.mp4\treal\n")
    r = CliRunner().invoke(app, ["train", "--source", f"tsv:{tmp_path / 'ok.tsv'}", "--out", str(tmp_path / "b")])
    assert isinstance(r.exception, ValueError) and r.exit_code == 1
    assert "error: operands" not in r.stderr


def test_a_bad_log_level_is_a_config_error_naming_the_key(
    tmp_path: Path, served: list[Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MONITOR_LOG_LEVEL", "verbose")
    with pytest.raises(ConfigError, match=r"log_level: must be one of DEBUG, INFO.*'verbose'"):
        load_settings(None)
    r = CliRunner().invoke(app, ["serve", "--data-dir", str(tmp_path / "d")])
    assert r.exit_code == 2 and not served, r.output
    assert "log_level" in r.stderr and "Traceback" not in r.stderr
    monkeypatch.setenv("MONITOR_LOG_LEVEL", "debug")  # any case; what logging and uvicorn take
    assert load_settings(None).log_level == "DEBUG"


@pytest.mark.parametrize(
    "name",
    [
        "MONITOR_SERVR__PORT", "MONITOR_TOKENS", "monitor_severs__host",
        # Silently ignored before: the platform name with a user's value, a key under a plain value.
        "MONITOR_PORT", "MONITOR_DATA_DIR__PATH", "MONITOR_DEMO__X",
    ],
)
def test_a_misspelt_environment_variable_is_an_error(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    monkeypatch.setenv(name, "7000")
    with pytest.raises(ConfigError, match=name):
        load_settings(None)


def test_the_client_tools_and_platforms_variables_are_not_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MONITOR_TOKEN", "read-by-monitor-alerts-only")
    monkeypatch.setenv("MONITOR_PROGRESS", "1")
    # What Kubernetes sets in every pod of a namespace with a Service named "monitor".
    for name, value in {
        "MONITOR_SERVICE_HOST": "10.0.0.7", "MONITOR_SERVICE_PORT": "8080", "MONITOR_SERVICE_PORT_HTTP": "8080",
        "MONITOR_PORT": "tcp://10.0.0.7:8080", "MONITOR_PORT_8080_TCP": "tcp://10.0.0.7:8080",
        "MONITOR_PORT_8080_TCP_PROTO": "tcp", "MONITOR_PORT_8080_TCP_PORT": "8080", "MONITOR_PORT_8080_TCP_ADDR": "10.0.0.7",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("MONITOR_LOG_LEVEL", "warning")
    assert load_settings(None).server.token is None


SECRETS = {
    "token": "server-token-0123456789",
    "credential": "turn-credential-42",
    "secret": "webhook-secret-0123456789",
    "authorization": "Bearer receiver-key-987",
    "password": "rtsp-pass-1",
}


def test_config_show_hides_every_credential(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("MONITOR_SERVER__HOST", "MONITOR_SERVER__TOKEN"):
        monkeypatch.delenv(name, raising=False)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({
        "server": {"token": SECRETS["token"]},
        "webrtc": {"ice_servers": [
            {"urls": ["turn:turn.example:3478"], "username": "u", "credential": SECRETS["credential"]},
            {"urls": ["stun:stun.example:3478"]},
        ]},
        "sinks": [{"name": "webhook", "options": {
            "url": "https://hooks.example/in", "secret": SECRETS["secret"],
            "headers": {"Authorization": SECRETS["authorization"], "X-Team": "soc"},
        }}],
        "streams": [{"id": "cam1", "url": f"rtsp://admin:{SECRETS['password']}@10.0.0.5/live"}],
    }))
    r = CliRunner().invoke(app, ["config", "show", "-c", str(cfg)])
    assert r.exit_code == 0, r.output
    for what, value in SECRETS.items():
        assert value not in r.stdout, what
    shown = json.loads(r.stdout)
    assert shown["server"]["token"] == "***"
    assert [s["credential"] for s in shown["webrtc"]["ice_servers"]] == ["***", None]  # unset stays null
    options = shown["sinks"][0]["options"]
    assert options["secret"] == "***" and options["headers"] == {"Authorization": "***", "X-Team": "***"}
    assert options["url"] == "https://hooks.example/***"  # Slack's, Discord's hold their secret in the path
    assert shown["streams"][0]["url"] == "rtsp://***@10.0.0.5/live"


class _SecretPlugin:
    """Declares its options like the webhook sink: a `secret` and free-form `headers`."""

    class Config(BaseModel):
        model_config = ConfigDict(extra="forbid")
        secret: str | None = Field(None, min_length=16)
        headers: dict[str, str] = Field(default_factory=dict)
        retries: int = 3


def test_validation_errors_do_not_echo_credentials() -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(None, server={"host": "0.0.0.0", "token": "shortsecret"})
    assert "shortsecret" not in str(err.value)
    assert "server.token: String should have at least 16 characters (got 11 characters)" in str(err.value)
    with pytest.raises(ConfigError) as err:
        plugin_config(_SecretPlugin, {"secret": "tooshort", "headers": {"Authorization": ["Bearer k3y"]}})
    message = str(err.value)
    assert "tooshort" not in message and "k3y" not in message
    assert "secret: String should have at least 16 characters (got 8 characters)" in message
    assert "headers.Authorization" in message
    # Values of other options are still quoted: they help find the mistake.
    with pytest.raises(ConfigError, match=r"retries: .*'three'"):
        plugin_config(_SecretPlugin, {"retries": "three"})


def test_the_retired_detector_threads_key_still_loads_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    import logging

    with caplog.at_level(logging.WARNING, logger="monitor.config"):
        settings = load_settings(None, data_dir=tmp_path, analysis={"detector_threads": 4})
    assert "detector_threads is retired and ignored" in caplog.text
    assert "detector_threads" not in settings.analysis.model_dump()


@pytest.mark.parametrize("bad", ["abc\n", "abc\r\n", "\nabc", "a" * 65, "-abc", "a b"])
def test_stream_ids_are_matched_whole(bad: str) -> None:
    from monitor.config import is_stream_id

    assert not is_stream_id(bad)
    with pytest.raises(ConfigError, match=r"streams\[0\]\.id: stream id must be"):
        load_settings(None, streams=[{"id": bad, "url": "rtsp://127.0.0.1:9/x"}])
    assert is_stream_id("cam-1.front_2") and is_stream_id("a" * 64)


def test_webrtc_track_and_mdns_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    webrtc = load_settings(None).webrtc
    assert webrtc.max_video_tracks == 4 and webrtc.resolve_mdns is False
    for bad in (0, -1, 65, "many"):
        with pytest.raises(ConfigError, match=r"webrtc\.max_video_tracks"):
            load_settings(None, webrtc={"max_video_tracks": bad})
    monkeypatch.setenv("MONITOR_WEBRTC__RESOLVE_MDNS", "true")
    monkeypatch.setenv("MONITOR_WEBRTC__MAX_VIDEO_TRACKS", "2")
    webrtc = load_settings(None).webrtc
    assert webrtc.resolve_mdns is True and webrtc.max_video_tracks == 2


TURN = {"username": "u", "credential": "c"}


@pytest.mark.parametrize(
    ("servers", "message"),
    [
        # Before, each of these loaded, and aiortc found out per session: every WHIP offer then
        # failed as the publisher's "malformed SDP", or a server was dropped without a word.
        ([{"urls": ["stun.internal.example:3478"]}], "is not a stun: or turn: URL"),
        ([{"urls": ["stun:a.internal:3478", "stun:b.internal:3478"]}], r"one STUN server and would ignore \['stun:b"),
        ([{"urls": ["turn:t.internal:3478"]}], "needs `username` and `credential`"),
        ([{"urls": ["turn:t.internal:3478?transport=tls"], **TURN}], "TURN over udp or tcp"),
        ([{"urls": ["stuns:s.internal:5349"]}], "does not use stuns:"),
        ([{"urls": ["turn:a.internal"], **TURN}, {"urls": ["turns:b.internal:5349"], **TURN}], "one TURN server"),
    ],
)
def test_ice_servers_are_checked_as_aiortc_reads_them(servers: list[dict], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(None, webrtc={"ice_servers": servers})


def test_ice_server_errors_hide_a_password_in_the_url() -> None:
    for servers in ([{"urls": ["turn:alice:S3cretPw@turn.example:3478"]}],
                    [{"urls": ["stun:a.internal:3478", "stun:bob:S3cretPw@b.internal:3478"]}]):
        with pytest.raises(ConfigError) as err:
            load_settings(None, webrtc={"ice_servers": servers})
        assert "S3cretPw" not in str(err.value) and "***@" in str(err.value)


def test_good_ice_servers_and_host_addresses_load() -> None:
    webrtc = load_settings(None, webrtc={
        "ice_servers": [{"urls": ["stun:stun.internal:3478"]}, {"urls": ["turns:turn.internal:5349?transport=tcp"], **TURN}],
        "host_addresses": ["192.0.2.7", "2001:db8::7"],
    }).webrtc
    assert len(webrtc.ice_servers) == 2 and webrtc.host_addresses == ("192.0.2.7", "2001:db8::7")
    with pytest.raises(ConfigError, match="'cam.local' is not an IP address"):  # looked up by DNS per session
        load_settings(None, webrtc={"host_addresses": ["cam.local"]})


@pytest.mark.parametrize("token", ["0123456789abcdéf0123", "0123456789abcdef012 ", "0123456789 abcdef0123"])
def test_a_token_that_cannot_travel_in_a_header_is_refused(token: str) -> None:
    with pytest.raises(ConfigError, match="printable ASCII without spaces") as err:
        load_settings(None, server={"token": token})
    assert token.strip() not in str(err.value)


def test_config_show_checks_plugin_names_and_options_like_serve(tmp_path: Path) -> None:
    # The schema cannot check them (each plugin validates its own options), so `config show`
    # printed this file as valid and `serve` refused it.
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({
        "detector": {"name": "nosuch"},
        "sinks": [{"name": "webhook", "options": {"url": "https://hooks.example/in", "secret": SECRETS["secret"], "retires": 3}},
                  {"name": "redis", "options": {"url": "redis://127.0.0.1:6379", "streem": "alerts"}}],
        "streams": [
            {"id": "cam", "url": f"rtsp://admin:{SECRETS['password']}@10.0.0.5/live", "options": {"read_timout_s": 3}},
            {"id": "sfu", "url": f"ftp://u:{SECRETS['password']}@sfu.example/whep", "source": "whep"},
            {"id": "ok", "url": "rtsp://10.0.0.6/live"},
            # A typo in a WHEP option would pull without the token.
            {"id": "pull", "url": "https://sfu.example/whep", "source": "whep", "options": {"tokne": SECRETS["secret"]}},
        ],
    }))
    r = CliRunner().invoke(app, ["config", "show", "-c", str(cfg)])
    assert r.exit_code == 2, r.output
    for problem in ("detector: unknown plugin 'nosuch'", "sinks[0] (webhook)", "retires: unknown key",
                    "streams[cam]", "read_timout_s: unknown key", "streams[sfu]", "http(s)://",
                    "streams[pull]", "tokne: unknown key", "sinks[1] (redis)", "streem: unknown key"):
        assert problem in r.output, (problem, r.output)
    assert "streams[ok]" not in r.output
    for value in SECRETS.values():
        assert value not in r.output


@pytest.mark.parametrize(("options", "message"), [
    ({"model_dir": "/nonexistent"}, "/nonexistent/manifest.json is missing"),
    ({"manifest_sha256": "00"}, "does not match the pinned 00"),
])
def test_config_show_checks_the_detectors_weights_like_serve(tmp_path: Path, options: dict, message: str) -> None:
    # Only the options' form was checked: `config show` passed a file that `serve` refused to start with.
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"detector": {"name": "temporal-v1", "options": options}}))
    r = CliRunner().invoke(app, ["config", "show", "-c", str(cfg)])
    assert r.exit_code == 2 and "detector: " in r.stderr and message in r.stderr, r.output


@pytest.mark.parametrize(("value", "expected"), [("", False), ("0", False), ("false", False), (" No ", False), ("off", False),
                                                 ("1", True), ("TRUE", True), ("yes", True), ("on", True)])
def test_yes_no_environment_variables_read_as_users_mean_them(monkeypatch: pytest.MonkeyPatch, value: str, expected: bool) -> None:
    # MONITOR_PROGRESS=0 turned the progress bar on: any non-empty value did.
    from monitor.cli import _env_flag

    monkeypatch.setenv("MONITOR_PROGRESS", value)
    assert _env_flag("MONITOR_PROGRESS") is expected


def test_config_schema_lists_every_plugins_options() -> None:
    r = CliRunner().invoke(app, ["config", "schema"])
    assert r.exit_code == 0, r.output
    plugins = json.loads(r.stdout)["x-plugin-options"]
    assert "redirect_origins" in plugins["sources"]["whep"]["properties"]
    assert "read_timeout_s" in plugins["sources"]["rtsp"]["properties"]
    assert "backend" in plugins["detectors"]["temporal-v1"]["properties"]
    assert plugins["sinks"]["webhook"]["required"] == ["url"]
    assert plugins["sources"]["rtsp"]["additionalProperties"] is False


def test_a_broken_plugin_is_a_config_error_and_does_not_hide_the_schema(monkeypatch: pytest.MonkeyPatch) -> None:
    from importlib.metadata import EntryPoint

    import monitor.components
    import monitor.plugins
    from monitor.plugins import SOURCE_GROUP, load_plugin

    real = monitor.plugins.available

    def with_broken(group: str) -> dict[str, EntryPoint]:
        eps = dict(real(group))
        if group == SOURCE_GROUP:
            eps["broken"] = EntryPoint("broken", "no_such_module_for_monitor_tests:Source", group)
        return eps

    monkeypatch.setattr(monitor.plugins, "available", with_broken)
    monkeypatch.setattr(monitor.components, "available", with_broken)
    with pytest.raises(ConfigError, match="'broken' .* cannot be loaded: ModuleNotFoundError"):
        load_plugin(SOURCE_GROUP, "broken")
    r = CliRunner().invoke(app, ["config", "schema"])
    assert r.exit_code == 0, r.output
    sources = json.loads(r.stdout)["x-plugin-options"]["sources"]
    assert "ModuleNotFoundError" in sources["broken"]["x-error"] and "properties" in sources["rtsp"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        # Each of these ended in a traceback with exit code 1 (for `scan`, "an alert was raised").
        (["config", "show", "-c", "{latin1}"], "not UTF-8 text"),
        (["scan", "-c", "{latin1}", "/nonexistent.mp4"], "not UTF-8 text"),
        (["serve", "--data-dir", "{a_file}"], "cannot open the event log in data_dir"),
        (["alerts", "--url", "ws://127.0.0.1:99999/ws/alerts"], "Port out of range"),
        (["alerts", "--url", "http://127.0.0.1:8080/ws/alerts"], "not a ws:// or wss:// URL"),
        (["alerts", "--token", "héllo-wörld-0123456789"], "printable ASCII"),
        (["alerts", "--url", "ws://[::1/ws/alerts"], "Invalid IPv6 URL"),
        (["alerts", "--url", "ws://[::1/ws/alerts?access_token=x"], "Invalid IPv6 URL"),
    ],
)
def test_bad_input_to_the_cli_is_a_one_line_error_with_exit_code_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str], message: str
) -> None:
    monkeypatch.setenv("MONITOR_DEMO", "false")
    latin1 = tmp_path / "latin1.yaml"
    latin1.write_bytes("# caf\xe9\nlog_level: INFO\n".encode("latin-1"))
    a_file = tmp_path / "not-a-folder"
    a_file.write_text("")
    args = [a.format(latin1=latin1, a_file=a_file) for a in args]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 2, (r.exit_code, r.output, r.exception)
    assert message in r.output and "Traceback" not in r.output


def test_inconclusive_after_0_is_refused_and_slow_analysis_warns(caplog: pytest.LogCaptureFixture) -> None:
    # 0 was accepted and stopped all judging: "no usable score for less than 0 s" never held,
    # so every track stayed inconclusive for ever.
    with pytest.raises(ConfigError, match=r"policy\.inconclusive_after_s"):
        load_settings(None, policy={"inconclusive_after_s": 0})
    load_settings(None, analysis={"fps": 10}, streams=[{"id": "cam", "url": "rtsp://10.0.0.5/s", "analysis_fps": 1.5}])
    assert "streams[cam].analysis_fps=1.5: below 2 frames a second" in caplog.text
    assert "analysis.fps=" not in caplog.text


@pytest.mark.parametrize(
    ("kw", "name"),
    [
        ({"analysis": {"fps": 0.5}}, "analysis.fps=0.5 analyses a frame every 2 s"),
        ({"streams": [{"id": "cam", "url": "rtsp://10.0.0.5/s", "analysis_fps": 1}]}, "streams[cam].analysis_fps=1 analyses a frame every 1 s"),
    ],
)
def test_a_rate_that_ends_every_track_before_the_next_frame_is_refused(kw: dict[str, object], name: str) -> None:
    # Before: accepted with a mild warning; every face got a new track on every frame, so no
    # track was ever judged and no alert could open, while the stream showed "running".
    with pytest.raises(ConfigError, match=re.escape(name) + r".*analysis\.track_lost_s \(1 s\)"):
        load_settings(None, **kw)
    slower = {"analysis": {"track_lost_s": 2.5}, "policy": {"inconclusive_after_s": 3}}
    load_settings(None, **{**kw, **slower, "analysis": {**kw.get("analysis", {}), "track_lost_s": 2.5}})  # type: ignore[dict-item]


@pytest.mark.parametrize(
    "url",
    [
        "https://fn.azurewebsites.net/api/hook?code=SECRETVALUE",  # Azure Functions
        "https://chat.googleapis.com/v1/spaces/x/messages?key=SECRETVALUE&token=SECRETVALUE",  # Google Chat
        "https://acct.blob.core.windows.net/c/b?sv=2024&sig=SECRETVALUE",  # Azure SAS
        "https://bucket.s3.amazonaws.com/x?X-Amz-Credential=SECRETVALUE&X-Amz-Signature=SECRETVALUE",
        "rtsp://cam.local/videoMain?usr=admin&pwd=SECRETVALUE",  # camera CGI
        "https://sfu.internal/whep/alice?auth=SECRETVALUE&codec=h264",
        "https://h.example/x?api%5Fkey=SECRETVALUE",
    ],
)
def test_credential_named_query_parameters_are_hidden(url: str) -> None:
    from monitor.config import redact_url

    shown = redact_url(url)
    assert "SECRETVALUE" not in shown and "***" in shown
    assert "codec=h264" in shown or "codec" not in url  # a word that only starts like one stays


def test_credential_named_plugin_options_are_hidden() -> None:
    from monitor.config import redact

    options = {"signing_key": "S1", "private_key": "S2", "passphrase": "S3", "auth": "S4", "accessKey": "S5", "session_idle_s": 30, "keyframe_interval": 2}
    shown = redact({"options": options})["options"]
    assert all(shown[k] == "***" for k in ("signing_key", "private_key", "passphrase", "auth", "accessKey"))
    assert shown["session_idle_s"] == 30 and shown["keyframe_interval"] == 2


def test_a_key_given_twice_in_the_file_is_an_error(tmp_path: Path) -> None:
    # YAML keeps the last one: the first `server:` block, token and all, vanished.
    cfg = tmp_path / "c.yaml"
    cfg.write_text("server:\n  host: 0.0.0.0\n  token: abcdefghijklmnopqrstuvwxyz0123456789\nstreams: []\nserver:\n  port: 9000\n")
    with pytest.raises(ConfigError, match=r"duplicate key 'server' \(first at line 1\)"):
        load_settings(cfg)
    cfg.write_text("analysis: &a\n  fps: 5\npolicy:\n  <<: {alert_enter: 0.8}\n  alert_enter: 0.9\n")  # anchors and merge keys still load
    assert load_settings(cfg).analysis.fps == 5 and load_settings(cfg).policy.alert_enter == 0.9


@pytest.mark.parametrize(("text", "key"), [("on: 1\n", "True"), ("1: x\n", "1"), ("~: x\n", "None"), ("? [a, b]\n: 1\n", "a list"),
                                         ("server:\n  yes: 1\n", "True")])
def test_a_key_that_is_not_a_name_is_an_error_with_its_line(tmp_path: Path, text: str, key: str) -> None:
    # Before: AttributeError or TypeError, a traceback (and `monitor scan` exited 1, "alert").
    cfg = tmp_path / "c.yaml"
    cfg.write_text(text)
    with pytest.raises(ConfigError, match=rf"found the key {key}: keys must be names \(YAML reads on/off/yes/no as booleans"):
        load_settings(cfg)
    result = CliRunner().invoke(app, ["scan", str(tmp_path / "none.mp4"), "-c", str(cfg)])
    assert result.exit_code == 2 and "keys must be names" in result.output


def test_a_config_from_a_pipe_is_read_once_and_applied(tmp_path: Path) -> None:
    # `-c <(sops -d monitor.yaml)`: the file was read twice, the second read of the pipe found
    # it empty, and the service ran on the defaults with no error (and no unknown-key check).
    import os
    import threading

    fifo = tmp_path / "config.fifo"

    def serve(text: str) -> threading.Thread:
        def write() -> None:
            with open(fifo, "w") as f:
                f.write(text)

        thread = threading.Thread(target=write)
        thread.start()
        return thread

    os.mkfifo(fifo)
    writer = serve("server:\n  port: 1234\n")
    assert load_settings(fifo).server.port == 1234
    writer.join(5)
    writer = serve("server:\n  port: 1234\nbogus: 1\n")
    with pytest.raises(ConfigError, match="bogus: unknown key"):
        load_settings(fifo)
    writer.join(5)


def test_offline_commands_ignore_the_servers_bind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # As in the container image: MONITOR_SERVER__HOST=0.0.0.0 and no token. `scan` opens no port;
    # before, it was refused with "set server.token".
    monkeypatch.setenv("MONITOR_SERVER__HOST", "0.0.0.0")
    r = CliRunner().invoke(app, ["scan", str(tmp_path / "none.mp4")])
    assert r.exit_code == 2 and "none.mp4" in r.output and "server.token" not in r.output, r.output
    r = CliRunner().invoke(app, ["serve", "--data-dir", str(tmp_path / "d")])
    assert r.exit_code == 2 and "server.token" in r.output


def test_a_bracketed_ipv6_host_is_bound_without_its_brackets(tmp_path: Path) -> None:
    settings = load_settings(None, server={"host": "[::1]"})
    assert settings.server.host == "::1" and settings.server.is_loopback
    with pytest.raises(ConfigError, match="set server.token"):
        load_settings(None, server={"host": "[::]"})


def test_a_plugin_name_two_packages_register_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    # Which one loaded depended on the import path's order, silently: one package could replace
    # a built-in source (`file`) or sink.
    from importlib.metadata import EntryPoint

    import monitor.plugins as plugins

    group = plugins.SOURCE_GROUP
    eps = [EntryPoint("file", "monitor.sources.av_source:FileSource", group), EntryPoint("file", "evil.sources:File", group),
           EntryPoint("rtsp", "monitor.sources.av_source:RtspSource", group), EntryPoint("rtsp", "monitor.sources.av_source:RtspSource", group)]
    monkeypatch.setattr(plugins, "entry_points", lambda group: [ep for ep in eps if ep.group == group])
    with pytest.raises(ConfigError, match=r"'file' .* registered by more than one package \(evil.sources:File, monitor"):
        plugins.load_plugin(group, "file")
    assert plugins.load_plugin(group, "rtsp").__name__ == "RtspSource"  # the same target twice: one plugin


def test_cors_origins_are_kept_as_browsers_send_them() -> None:
    from monitor.config import ServerConfig

    got = ServerConfig(cors_origins=("https://Dash.Example/", "http://x.org:80", "https://y.org:8443")).cors_origins
    assert got == ("https://dash.example", "http://x.org", "https://y.org:8443")
    for bad in ("*", "https://dash.example/app", "ftp://dash.example", "dash.example"):
        with pytest.raises(ValueError, match="is not an origin"):
            ServerConfig(cors_origins=(bad,))


def test_duplicate_stream_ids_are_named_as_streams() -> None:
    with pytest.raises(ConfigError, match=r"duplicate stream ids: \['cam'\] \(each stream needs its own `id`\)"):
        load_settings(None, streams=[{"id": "cam", "url": "rtsp://h/a"}, {"id": "cam", "url": "rtsp://h/b"}])


def test_a_track_must_end_before_it_would_go_inconclusive() -> None:
    # A face that left gets no verdict until its track ends: with track_lost_s 5 and
    # inconclusive_after_s 2 its alert stayed open 5 s after the face was gone.
    with pytest.raises(ConfigError, match=r"analysis.track_lost_s \(5\) must not exceed policy.inconclusive_after_s \(2\)"):
        load_settings(None, analysis={"track_lost_s": 5})
    assert load_settings(None, analysis={"track_lost_s": 5}, policy={"inconclusive_after_s": 6}).analysis.track_lost_s == 5


def test_a_bad_origin_is_named_without_its_password(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(None, server={"cors_origins": ["https://u:Pw123secret@dash.example/app"]})
    assert "Pw123secret" not in str(caught.value) and "dash.example" in str(caught.value)
    cfg = tmp_path / "c.yaml"
    cfg.write_text("streams:\n  - {id: w, url: 'http://sfu/whep/a', source: whep, options: {redirect_origins: ['https://u:Pw123secret@sfu/x']}}\n")
    r = CliRunner().invoke(app, ["config", "show", "-c", str(cfg)])
    assert r.exit_code == 2 and "redirect_origins" in r.output and "Pw123secret" not in r.output, r.output


def test_a_boolean_is_not_taken_for_a_number(tmp_path: Path) -> None:
    # pydantic reads true as 1 and false as 0, and YAML's yes/no/on/off are booleans: `fps: on`
    # ran the service at 1 fps and `max_faces: no` was refused only for being below 1.
    cfg = tmp_path / "c.yaml"
    cfg.write_text("analysis:\n  fps: on\n  max_faces: no\npolicy:\n  alert_enter: true\nstreams:\n  - id: cam\n    url: demo://\n    analysis_fps: yes\n")
    with pytest.raises(ConfigError) as err:
        load_settings(cfg)
    text = str(err.value)
    for key in ("analysis.fps", "analysis.max_faces", "policy.alert_enter", "streams[0].analysis_fps"):
        assert key in text
    assert text.count("must be a number, not the boolean") == 4
    # Booleans stay booleans, numbers stay numbers, and a number given as text still loads.
    cfg.write_text("analysis:\n  fps: 12\n  max_faces: 2\nstreams:\n  - id: cam\n    url: demo://\n    realtime: no\n    analysis_fps: '5'\n")
    s = load_settings(cfg)
    assert (s.analysis.fps, s.analysis.max_faces, s.streams[0].realtime, s.streams[0].analysis_fps) == (12, 2, False, 5)


class _InnerOptions(BaseModel):
    limit: int | None = None


class _ThirdPartyPlugin:
    class Config(BaseModel):
        model_config = ConfigDict(extra="forbid")
        ratio: float = Field(0.5, alias="Ratio")
        inner: _InnerOptions = _InnerOptions()
        enabled: bool = True
        gain: Annotated[float, Field(ge=0)] | None = Field(None, validation_alias=AliasChoices("gain", "Gain"))
        extra_inner: _InnerOptions | None = None
        stages: list[_InnerOptions] = []
        weights: list[float] = []
        pair: tuple[float, bool] = (0.0, False)
        per_camera: dict[str, float] = {}
        flags: list[bool] = []
        offset: float = Field(0.0, validation_alias="Offset")


def test_a_boolean_is_not_taken_for_a_number_in_any_plugins_options(tmp_path: Path) -> None:
    # Only the settings refused them: `options: {window_fps: yes}` ran the detector thinned to
    # 1 fps and `read_timeout_s: true` gave a camera 1 s, while the README says plugins refuse
    # them too. Every installed plugin's number options, then a third-party model's.
    from monitor.config import is_number_type
    from monitor.plugins import DETECTOR_GROUP, SINK_GROUP, SOURCE_GROUP, available, load_plugin

    checked = set()
    for group in (SOURCE_GROUP, DETECTOR_GROUP, SINK_GROUP):
        for name in available(group):
            cls = load_plugin(group, name)
            for key, field in getattr(getattr(cls, "Config", None), "model_fields", {}).items():
                if is_number_type(field.annotation):
                    for value in (True, False):
                        with pytest.raises(ConfigError, match=rf"{cls.__name__}: {key}: must be a number, not the boolean {str(value).lower()}"):
                            plugin_config(cls, {key: value})
                    checked.add(f"{name}.{key}")
    assert {"rtsp.read_timeout_s", "whep.open_timeout_s", "temporal-v1.window_fps", "demo.fps", "webhook.timeout_s", "redis.maxlen"} <= checked

    # Aliases, nested models (optional, in lists), lists, tuples and dicts of numbers: pydantic
    # took each boolean for 1 or 0. Booleans where booleans belong are not named.
    everywhere = {
        "Ratio": True, "inner": {"limit": False}, "enabled": False, "Gain": True, "extra_inner": {"limit": True},
        "stages": [{"limit": 2}, {"limit": True}], "weights": [0.5, False], "pair": [True, True],
        "per_camera": {"lobby": True}, "flags": [True, False], "Offset": False,
    }
    with pytest.raises(ConfigError) as refused:
        plugin_config(_ThirdPartyPlugin, everywhere)
    named = re.findall(r"(\S+): must be a number, not the boolean (true|false) \(got (?:True|False)\)", str(refused.value))
    assert named == [
        ("Ratio", "true"), ("inner.limit", "false"), ("Gain", "true"), ("extra_inner.limit", "true"), ("stages[1].limit", "true"),
        ("weights[1]", "false"), ("pair[0]", "true"), ("per_camera.lobby", "true"), ("Offset", "false"),
    ], str(refused.value)
    # Refused with every other problem of the same options, not instead of them.
    with pytest.raises(ConfigError, match=r"Ratio: must be a number, not the boolean true \(got True\); weights\[0\]: Input should be a valid number"):
        plugin_config(_ThirdPartyPlugin, {"Ratio": True, "weights": ["x"]})
    # A list of numbers given a boolean is not "must be a number": pydantic says what it wants.
    with pytest.raises(ConfigError, match=r"weights: Input should be a valid list") as wrong:
        plugin_config(_ThirdPartyPlugin, {"weights": True})
    assert "must be a number" not in str(wrong.value)
    config = plugin_config(_ThirdPartyPlugin, {"Ratio": 1, "inner": {"limit": 3}, "enabled": False, "Gain": 2, "stages": [{"limit": 1}], "flags": [True]})
    assert config.model_dump(include={"ratio", "inner", "enabled", "gain", "stages", "flags"}) == {
        "ratio": 1.0, "inner": {"limit": 3}, "enabled": False, "gain": 2.0, "stages": [{"limit": 1}], "flags": [True]
    }

    cfg = tmp_path / "c.yaml"
    cfg.write_text("streams:\n  - id: cam\n    url: rtsp://127.0.0.1:8554/live\n    options: {read_timeout_s: yes}\n")
    r = CliRunner().invoke(app, ["config", "show", "-c", str(cfg)])
    assert r.exit_code == 2 and "read_timeout_s: must be a number, not the boolean true" in r.output, r.output


def test_infinite_numbers_are_refused_everywhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # `.inf` passed every bound and silently switched things off: min_alert_s .inf never alerted,
    # min_face_px .inf made every face too small, and 1e400 from the environment was infinity too.
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "analysis:\n  min_face_px: .inf\npolicy:\n  ema_halflife_s: .inf\n"
        "streams:\n  - id: cam\n    url: demo://\n    options: {fps: .inf}\n"
    )
    with pytest.raises(ConfigError) as err:
        load_settings(cfg)
    for key in ("analysis.min_face_px", "policy.ema_halflife_s"):
        assert key in str(err.value)
    monkeypatch.setenv("MONITOR_POLICY__MIN_ALERT_S", "1e400")
    with pytest.raises(ConfigError, match="policy.min_alert_s"):
        load_settings(None)
    monkeypatch.delenv("MONITOR_POLICY__MIN_ALERT_S")
    from monitor.sources.demo import DemoSource

    with pytest.raises(ConfigError, match="fps"):
        plugin_config(DemoSource, {"fps": float("inf")})


def test_a_pixel_limit_beyond_what_ffmpeg_can_be_capped_at_is_refused() -> None:
    # 2**62 pixels wrapped the allocation cap to 0 (ctypes passes size_t modulo 2**64), and the
    # first stream open crashed the process.
    from monitor.sources.av_source import limit_ffmpeg_allocations

    with pytest.raises(ConfigError, match="analysis.max_frame_pixels"):
        load_settings(None, analysis={"max_frame_pixels": 1 << 62})
    assert load_settings(None, analysis={"max_frame_pixels": 1 << 30}).analysis.max_frame_pixels == 1 << 30
    for bad in (0, 1 << 64):
        with pytest.raises(ValueError, match="out of range"):
            limit_ffmpeg_allocations(bad)


def test_a_proxied_service_without_a_token_is_warned_about(caplog: pytest.LogCaptureFixture) -> None:
    # A loopback bind needs no token; behind a reverse proxy (the usual reason to list origins)
    # everyone who reached the proxy got the API, WHIP ingest and alerts, with nothing said.
    from monitor.app import warn_if_proxied_without_token

    proxied = load_settings(None, server={"cors_origins": ["https://monitor.example.org"]})
    assert warn_if_proxied_without_token(proxied)
    assert "set server.token" in caplog.text
    assert not warn_if_proxied_without_token(load_settings(None, server={"cors_origins": ["https://monitor.example.org"], "token": "t" * 32}))
    assert not warn_if_proxied_without_token(load_settings(None))


def test_a_demo_rendered_too_slowly_to_track_is_refused() -> None:
    # Only analysis rates were checked: a source that itself sends a frame every 2 s made every
    # face a new track on every frame, and nothing was ever judged while the stream ran.
    from monitor.clock import SystemClock
    from monitor.config import StreamConfig
    from monitor.metrics import Metrics
    from monitor.pipeline.manager import build_source

    settings = load_settings(None, demo=False)
    slow = StreamConfig(id="d", url="demo://astronaut", options={"fps": 0.5})
    with pytest.raises(ConfigError, match=re.escape("streams[d].options.fps=0.5") + r".*track_lost_s"):
        build_source(slow, settings, Metrics(), SystemClock())
    assert build_source(StreamConfig(id="d", url="demo://astronaut", options={"fps": 2}), settings, Metrics(), SystemClock())


def test_media_kept_to_configured_addresses_needs_one() -> None:
    import aioice.ice

    from monitor.sources.webrtc import IceHosts, extra_host_addresses, ice_host_addresses

    with pytest.raises(ConfigError, match="only_host_addresses leaves no address"):
        load_settings(None, server={"host": "0.0.0.0", "token": "t" * 32}, webrtc={"only_host_addresses": True})
    hosts = extra_host_addresses(load_settings(None, webrtc={"only_host_addresses": True}))
    assert hosts == IceHosts(("127.0.0.1",), True)
    with ice_host_addresses(hosts):
        assert aioice.ice.get_host_addresses(True, True) == ["127.0.0.1"]
    with ice_host_addresses(IceHosts(("127.0.0.1",))):  # the default: the interfaces' too
        assert "127.0.0.1" in aioice.ice.get_host_addresses(True, True)


async def test_media_addresses_this_machine_lacks_are_refused_at_start(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # Before: the settings loaded, every WHIP answer went out with no candidate (aioice skips an
    # address it cannot bind, at INFO) and each session died at its idle timeout, unexplained.
    from monitor.app import runtime

    exposed = {"host": "0.0.0.0", "token": "t" * 32}
    missing = load_settings(None, data_dir=tmp_path / "a", demo=False, server=exposed, webrtc={"only_host_addresses": True, "host_addresses": ["192.0.2.50"]})
    with pytest.raises(ConfigError, match=r"no address for WebRTC media can be bound on this machine: 192\.0\.2\.50 \("):
        async with runtime(missing):
            pass
    one_left = load_settings(None, data_dir=tmp_path / "b", demo=False, server=exposed, webrtc={"only_host_addresses": True, "host_addresses": ["192.0.2.50", "127.0.0.1"]})
    async with runtime(one_left):
        pass
    assert "cannot bind 192.0.2.50" in caplog.text and "127.0.0.1 (" not in caplog.text


def test_the_service_binds_to_loopback_unless_told_otherwise(monkeypatch: pytest.MonkeyPatch) -> None:
    # Security by default: with no file, no flag and no environment, nothing off the machine can connect.
    for name in [n for n in os.environ if n.startswith("MONITOR_")]:
        monkeypatch.delenv(name)
    settings = load_settings(None, demo=False)
    assert settings.server.host == "127.0.0.1" and settings.server.token is None
