"""rtsps:// checks the camera's certificate and host name before the password goes out."""

from __future__ import annotations

import datetime
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from monitor.errors import ConfigError, SourceError
from monitor.metrics import Metrics
from monitor.plugins import plugin_config
from monitor.sources.av_source import RtspSource, sample_video


def self_signed(directory: Path, host: str) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = directory / "cert.pem", directory / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return cert_file, key_file


class TlsCamera:
    """A TLS server on loopback that asks for Basic auth: what it was sent is in ``received``."""

    def __init__(self, cert: Path, key: Path) -> None:
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(cert, key)
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.received = b""
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            try:
                with self.ctx.wrap_socket(conn, server_side=True) as tls:
                    tls.settimeout(3)
                    while chunk := tls.recv(4096):
                        self.received += chunk
                        cseq = chunk.split(b"CSeq: ", 1)[1].split(b"\r\n", 1)[0] if b"CSeq: " in chunk else b"1"
                        tls.sendall(b"RTSP/1.0 401 Unauthorized\r\nCSeq: " + cseq + b'\r\nWWW-Authenticate: Basic realm="cam"\r\n\r\n')
            except (OSError, ssl.SSLError):
                continue  # the client refused the handshake

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def camera(tmp_path: Path) -> Iterator[tuple[TlsCamera, Path]]:
    cert, key = self_signed(tmp_path, "localhost")
    cam = TlsCamera(cert, key)
    yield cam, cert
    cam.close()


def open_with(port: int, host: str = "localhost", **options: object) -> SourceError:
    config = plugin_config(RtspSource, {"open_timeout_s": 3, "read_timeout_s": 3, **options})
    source = RtspSource("cam", f"rtsps://admin:camerapass@{host}:{port}/stream", metrics=Metrics(), config=config)  # type: ignore[arg-type]
    with pytest.raises(SourceError) as failed:
        source._open()  # noqa: SLF001 - one connection attempt, no thread
    return failed.value


def test_an_untrusted_certificate_gets_no_password(camera: tuple[TlsCamera, Path]) -> None:
    # Before: the handshake completed with any certificate and the camera's password followed.
    cam, _ = camera
    err = open_with(cam.port)
    assert b"Authorization" not in cam.received and b"OPTIONS" not in cam.received
    assert "TLS:" in str(err) and "ca_file" in str(err) and "camerapass" not in str(err)


def test_a_trusted_certificate_for_the_right_host_name_is_talked_to(camera: tuple[TlsCamera, Path]) -> None:
    cam, cert = camera
    open_with(cam.port, ca_file=str(cert))  # 401 from the camera: the connection itself was made
    assert b"OPTIONS rtsps://localhost" in cam.received and b"Authorization: Basic" in cam.received
    cam.received = b""
    open_with(cam.port, host="127.0.0.1", ca_file=str(cert))  # issued for localhost, not 127.0.0.1
    assert cam.received == b""


def test_verification_can_be_turned_off_and_a_missing_ca_file_is_a_config_error(camera: tuple[TlsCamera, Path], tmp_path: Path) -> None:
    cam, _ = camera
    open_with(cam.port, tls_verify=False)
    assert b"OPTIONS" in cam.received
    with pytest.raises(ConfigError, match="no such file"):
        plugin_config(RtspSource, {"ca_file": str(tmp_path / "missing.pem")})


def scan_with(url: str, **options: object) -> None:
    # ``monitor scan``'s reader: before, it accepted any certificate for rtsps:// and https://.
    with pytest.raises(SourceError):
        for _ in sample_video(url, 5.0, max_duration_s=1.0, **options):  # type: ignore[arg-type]
            pass


@pytest.mark.parametrize("scheme", ["rtsps", "https"])
def test_a_scan_checks_the_certificate_before_the_password_goes_out(camera: tuple[TlsCamera, Path], scheme: str) -> None:
    cam, cert = camera
    url = f"{scheme}://admin:camerapass@localhost:{cam.port}/stream?token=secrettoken"
    with pytest.raises(SourceError, match="TLS:.*--ca-file") as refused:
        for _ in sample_video(url, 5.0, max_duration_s=1.0):
            pass
    assert cam.received == b"" and "camerapass" not in str(refused.value) and "secrettoken" not in str(refused.value)
    scan_with(url, ca_file=str(cert))  # trusted: the request is made (and answered with garbage)
    assert b"secrettoken" in cam.received
    cam.received = b""
    scan_with(url.replace("localhost", "127.0.0.1"), ca_file=str(cert))  # issued for another name
    assert cam.received == b""
    scan_with(url.replace("localhost", "127.0.0.1"), tls_verify=False)
    assert b"secrettoken" in cam.received


def test_scan_refuses_a_missing_ca_file(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from monitor.cli import app

    result = CliRunner().invoke(app, ["scan", "rtsps://localhost:1/x", "--ca-file", str(tmp_path / "nope.pem")])
    assert result.exit_code == 2 and "no such file" in result.output


@pytest.mark.parametrize("scheme", ["rtsps", "https"])
def test_the_systems_trusted_cas_are_used_without_a_ca_file(camera: tuple[TlsCamera, Path], monkeypatch: pytest.MonkeyPatch, scheme: str) -> None:
    # PyAV's bundled GnuTLS looks for the system's CAs at a Red Hat path only and found none on
    # Debian: a certificate from a CA the system trusts was refused. The system bundle (here
    # SSL_CERT_FILE, as OpenSSL reads it) is now handed to FFmpeg.
    cam, cert = camera
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    if scheme == "rtsps":
        open_with(cam.port)
    else:
        scan_with(f"https://localhost:{cam.port}/clip.mp4")
    assert cam.received, "the connection was refused"
