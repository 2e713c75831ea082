from __future__ import annotations

import contextlib
import functools
import http.server
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.vision.errors import ModelError
from gateway.vision.models import Manifest, Models, fetch, load_manifest, verify


def test_manifest_describes_every_model(manifest: Manifest) -> None:
    roles = {role: spec for role, spec in manifest.specs()}
    assert set(roles) == {"detector", "recognizer", "antispoof_v2", "antispoof_v1se"}
    assert roles["recognizer"].colour == "RGB"
    assert roles["recognizer"].mean == (0.485, 0.456, 0.406)
    assert roles["antispoof_v2"].crop_scale == 2.7
    assert roles["antispoof_v1se"].crop_scale == 4.0
    assert all(spec.licence and spec.source for spec in roles.values())


def test_shared_models_match_the_manifest(models_dir: Path, manifest: Manifest) -> None:
    checks = verify(models_dir, manifest)
    assert [c.problem for c in checks] == [None] * 4


def test_sessions_are_warmed_up_and_counted(models: Models) -> None:
    ids = models.model_ids()
    assert ids["recognizer"].startswith("mobilefacenet-foamliu-128d@b7120c09")
    assert all(s.input.name for s in models.sessions().values())


def test_an_altered_model_is_an_error_naming_it(staged: Path, manifest: Manifest) -> None:
    target = staged / manifest.recognizer.file
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF
    target.write_bytes(bytes(data))
    (staged / manifest.detector.file).unlink()
    problems = {c.role: c.problem for c in verify(staged, manifest) if not c.ok}
    assert problems["detector"] == "missing"
    assert problems["recognizer"] is not None and problems["recognizer"].startswith("sha256")
    with pytest.raises(ModelError, match=r"recognizer: .*mobilefacenet_foamliu_128d.onnx: sha256"):
        Models.open(staged, manifest, threads=1)


def test_manifest_typo_is_an_error_with_its_line(tmp_path: Path) -> None:
    text = (Path(__file__).parents[2] / "models" / "manifest.toml").read_text()
    bad = tmp_path / "manifest.toml"
    bad.write_text(text.replace('colour = "RGB"', 'color = "RGB"'))
    with pytest.raises(ModelError, match=r"manifest.toml:\d+: recognizer.color: unknown key"):
        load_manifest(bad)


def test_fetch_from_a_folder_installs_then_finds_present(
    tmp_path: Path, models_dir: Path, manifest: Manifest
) -> None:
    dest = tmp_path / "installed"
    first = fetch(str(models_dir), dest, manifest)
    assert [r.action for r in first] == ["installed"] * 4
    second = fetch(str(models_dir), dest, manifest)
    assert [r.action for r in second] == ["present"] * 4
    assert all(c.ok for c in verify(dest, manifest))
    # a link planted where the download is staged is not written through
    victim = tmp_path / "victim"
    victim.write_text("keep me")
    detector = dest / manifest.detector.file
    detector.unlink()
    (dest / f".{detector.name}.partial").symlink_to(victim)
    assert [r.action for r in fetch(str(models_dir), dest, manifest)].count("installed") == 1
    assert victim.read_text() == "keep me" and not detector.is_symlink()
    assert all(c.ok for c in verify(dest, manifest))


def test_fetch_onto_a_full_disk_names_the_disk_not_the_source(
    small_disk: Path, models_dir: Path, manifest: Manifest
) -> None:
    """The four models do not fit on this small disk: the installer is sent to free space on
    the gateway, not to look for a fault in the folder or server the models come from."""
    dest = small_disk / "models"
    results = fetch(str(models_dir), dest, manifest)
    failed = [r for r in results if r.action == "failed"]
    assert failed and all(r.action in ("installed", "failed") for r in results)
    for r in failed:
        assert r.detail.startswith(f"cannot write {dest}/"), r.detail
        assert "No space left on device" in r.detail and str(models_dir) not in r.detail
    assert sorted(p.name for p in dest.iterdir()) == sorted(
        r.file for r in results if r.action == "installed"
    )


@pytest.fixture
def http_server(staged: Path) -> Iterator[str]:
    handler = functools.partial(_QuietHandler, directory=str(staged))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


def test_fetch_from_a_url_checks_every_byte(
    tmp_path: Path, staged: Path, http_server: str, manifest: Manifest
) -> None:
    # the server holds one damaged and one truncated file: those must not be installed
    damaged = staged / manifest.antispoof_v2.file
    data = bytearray(damaged.read_bytes())
    data[100] ^= 0x01
    damaged.write_bytes(bytes(data))
    truncated = staged / manifest.antispoof_v1se.file
    truncated.write_bytes(truncated.read_bytes()[:1000])
    dest = tmp_path / "from-url"
    results = {r.role: r for r in fetch(http_server, dest, manifest)}
    assert results["detector"].action == "installed"
    assert results["recognizer"].action == "installed"
    assert results["antispoof_v2"].action == "failed"
    assert "sha256" in results["antispoof_v2"].detail
    assert results["antispoof_v1se"].action == "failed"
    assert "got 1000 bytes" in results["antispoof_v1se"].detail
    assert sorted(p.name for p in dest.iterdir()) == sorted(
        [manifest.detector.file, manifest.recognizer.file]
    )


def test_fetch_from_an_unreachable_url_fails_cleanly(tmp_path: Path, manifest: Manifest) -> None:
    results = fetch("http://127.0.0.1:9/", tmp_path / "m", manifest, timeout_s=2)
    assert {r.action for r in results} == {"failed"}
    assert not any((tmp_path / "m").iterdir())


class _BreaksOffChunked(_QuietHandler):
    """Sends the recognizer in chunks (as proxies and CDNs do) and breaks off halfway."""

    broken = ""

    def do_GET(self) -> None:
        if not self.path.endswith(self.broken):
            super().do_GET()
            return
        self.protocol_version = "HTTP/1.1"
        self.send_response(200)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.wfile.write(b"1000\r\n" + b"\0" * 4096 + b"\r\n" + b"1000\r\n" + b"\0" * 10)
        self.wfile.flush()
        self.close_connection = True


def test_fetch_from_a_server_that_breaks_off_or_is_no_web_server_fails_cleanly(
    tmp_path: Path, staged: Path, manifest: Manifest
) -> None:
    """A chunked download cut short, or a port where something else answers (ssh), raised an
    HTTP error that is no OSError: a traceback, and the models after it never tried."""
    handler = functools.partial(
        type("Broken", (_BreaksOffChunked,), {"broken": manifest.recognizer.file}),
        directory=str(staged),
    )
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    listener = socket.create_server(("127.0.0.1", 0))

    def not_http() -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = listener.accept()
                with conn:
                    conn.sendall(b"SSH-2.0-OpenSSH_9.2p1\r\n")

    threading.Thread(target=not_http, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/"
        results = {r.role: r for r in fetch(url, tmp_path / "m", manifest, timeout_s=5)}
        assert results["recognizer"].action == "failed"
        assert "cannot read from" in results["recognizer"].detail
        assert {r.action for role, r in results.items() if role != "recognizer"} == {"installed"}
        ssh = f"http://127.0.0.1:{listener.getsockname()[1]}/"
        elsewhere = fetch(ssh, tmp_path / "n", manifest, timeout_s=5)
        assert {r.action for r in elsewhere} == {"failed"}
        assert all("cannot read from" in r.detail for r in elsewhere)
    finally:
        server.shutdown()
        server.server_close()
        listener.close()
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == sorted(
        spec.file for role, spec in manifest.specs() if role != "recognizer"
    )
