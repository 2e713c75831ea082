from __future__ import annotations

import codecs
import os
from pathlib import Path

import pytest

from gateway.cli import main
from gateway.config import ConfigFileError, GatewayConfig, load_config, read_password


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "gateway.toml"
    path.write_text(text)
    return path


def test_empty_file_is_a_runnable_config(tmp_path: Path) -> None:
    loaded = load_config(write(tmp_path, ""))
    assert loaded.config == GatewayConfig()
    assert loaded.config.db_path == Path("var/gateway.db")
    assert loaded.config.mqtt.brokers == []


def test_unknown_key_names_file_line_and_suggests(tmp_path: Path) -> None:
    path = write(tmp_path, '[gateway]\nid = "gw-1"\n\n[mqtt]\nkeepalve_s = 30\n')
    with pytest.raises(ConfigFileError) as err:
        load_config(path)
    (issue,) = err.value.issues
    assert issue.line == 5
    assert issue.key == "mqtt.keepalve_s"
    assert "did you mean 'keepalive_s'" in issue.message
    assert str(issue).startswith(f"{path}:5: mqtt.keepalve_s")


def test_every_problem_is_reported_with_its_line(tmp_path: Path) -> None:
    text = (
        "[store]\nbatch_max_rows = 0\n[store.lanes.p2]\nquota_mb = -1\n"
        "[mqtt]\ninflight_window = 5000\n"
    )
    with pytest.raises(ConfigFileError) as err:
        load_config(write(tmp_path, text))
    got = {(i.key, i.line) for i in err.value.issues}
    assert got == {
        ("store.batch_max_rows", 2),
        ("store.lanes.p2.quota_mb", 4),
        ("mqtt.inflight_window", 6),
    }


def test_plaintext_to_a_remote_broker_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigFileError) as err:
        load_config(write(tmp_path, '[mqtt]\nbrokers = ["mqtt://platform.example.cn:1883"]\n'))
    assert "plaintext MQTT to a remote host" in str(err.value)
    ok = load_config(write(tmp_path, '[mqtt]\nbrokers = ["mqtts://platform.example.cn"]\n'))
    assert ok.config.mqtt.brokers == ["mqtts://platform.example.cn"]


def test_bad_broker_url_and_half_a_client_certificate(tmp_path: Path) -> None:
    text = '[mqtt]\nbrokers = ["http://x"]\n[mqtt.tls]\ncert_file = "c.pem"\n'
    with pytest.raises(ConfigFileError) as err:
        load_config(write(tmp_path, text))
    messages = " ".join(i.message for i in err.value.issues)
    assert "mqtts://host:8883" in messages
    assert "cert_file and key_file go together" in messages


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("mqtts://platform.example.cn;8883", "'platform.example.cn;8883' is not a host name"),
        ("mqtts://platform example.cn:8883", "'platform example.cn:8883' is not a host name"),
        ("mqtts://platform.example.cn:0", "port 0 is not between 1 and 65535"),
        ("mqtts://platform.example.cn:88830", "port 88830 is not between 1 and 65535"),
        ("mqtts://platform.example.cn:8883/eldercare", "no path, query or fragment"),
        ("mqtts://platform.example.cn:8883?keepalive=30", "no path, query or fragment"),
        ("mqtts://platform.example.cn:8883#backup", "no path, query or fragment"),
    ],
)
def test_a_typo_in_a_broker_url_stops_validate_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], url: str, says: str
) -> None:
    """Passed, it would be a gateway that never connects, or connects elsewhere than meant."""
    text = f'[mqtt]\nbrokers = ["mqtts://platform.example.cn", "{url}"]\n'
    assert main(["validate-config", str(write(tmp_path, text))]) == 2
    err = capsys.readouterr().err
    assert "gateway.toml:2: mqtt.brokers[1]: " in err and says in err


def test_host_names_and_bracketed_ipv6_addresses_are_broker_hosts(tmp_path: Path) -> None:
    urls = ["mqtts://gw-1.platform.example.cn:8883/", "mqtts://[2001:db8::1]:8883", "mqtt://[::1]"]
    text = f"[mqtt]\nbrokers = {urls!r}\n".replace("'", '"')
    assert load_config(write(tmp_path, text)).config.mqtt.brokers == urls


def test_credentials_in_a_broker_url_are_refused_and_never_echoed(tmp_path: Path) -> None:
    """They would be ignored (the connection uses mqtt.username / password_file) and quoted
    in every message about the url."""
    for url in ("mqtts://canteen:Secr3tPass@platform.example.cn", "mqtt://canteen:Secr3tPass@x"):
        with pytest.raises(ConfigFileError) as err:
            load_config(write(tmp_path, f'[mqtt]\nbrokers = ["{url}"]\n'))
        assert "must not hold a user or password" in str(err.value)
        assert "Secr3tPass" not in str(err.value)


def test_a_password_file_that_is_not_utf8_is_a_config_error(tmp_path: Path) -> None:
    secret = tmp_path / "mqtt.pw"
    secret.write_bytes("密码".encode("utf-16"))
    secret.chmod(0o600)
    path = write(tmp_path, f'[mqtt]\nusername = "gw"\npassword_file = "{secret}"\n')
    with pytest.raises(ConfigFileError, match="not UTF-8 text"):
        read_password(load_config(path).config.mqtt)
    assert main(["run", "--config", str(path)]) == 2


def test_a_password_file_that_is_a_directory_says_so(tmp_path: Path) -> None:
    folder = tmp_path / "mqtt.pw"
    folder.mkdir(mode=0o755)
    path = write(tmp_path, f'[mqtt]\nusername = "gw"\npassword_file = "{folder}"\n')
    with pytest.raises(ConfigFileError, match=r"cannot read: .*Is a directory"):
        read_password(load_config(path).config.mqtt)


def test_a_password_file_every_user_can_read_is_refused(tmp_path: Path) -> None:
    secret = tmp_path / "mqtt.pw"
    secret.write_text("s3cret\n")
    path = write(tmp_path, f'[mqtt]\nusername = "gw"\npassword_file = "{secret}"\n')
    for mode, readable in ((0o644, True), (0o640, False), (0o600, False)):
        secret.chmod(mode)
        if readable:
            with pytest.raises(ConfigFileError, match="readable by every user"):
                read_password(load_config(path).config.mqtt)
        else:
            assert read_password(load_config(path).config.mqtt) == "s3cret"


def test_a_password_in_a_config_every_user_can_read_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, '[mqtt]\nusername = "gw"\npassword = "s3cret"\n')
    path.chmod(0o644)
    with pytest.raises(ConfigFileError, match=r"mqtt\.password: a secret in a file readable"):
        load_config(path)
    path.chmod(0o640)
    assert read_password(load_config(path).config.mqtt) == "s3cret"


@pytest.mark.parametrize(
    "source",
    [
        "rtsp://admin:Secr3t@192.168.1.64:554/Streaming/Channels/101",
        "http://192.168.1.64/videostream.cgi?user=admin&pwd=Secr3t",
    ],
)
def test_a_camera_password_in_a_config_every_user_can_read_is_refused(
    tmp_path: Path, source: str
) -> None:
    """Any local user who can read it could watch the elders at the counter."""
    path = write(tmp_path, f'[vision.camera]\nsource = "{source}"\n')
    path.chmod(0o644)
    with pytest.raises(ConfigFileError, match=r"vision\.camera\.source: a secret in a file"):
        load_config(path)
    path.chmod(0o640)
    assert load_config(path).config.vision.camera.source == source
    for plain in ("rtsp://192.168.1.64:554/Streaming/Channels/101", "/dev/video0", "0"):
        path = write(tmp_path, f'[vision.camera]\nsource = "{plain}"\n')
        path.chmod(0o644)
        assert load_config(path).config.vision.camera.source == plain


def test_validate_config_reads_the_secret_files_the_start_reads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """ "ok" from validate-config, then a service that exits at start and stays down, is what
    an installer must never see: both check the password file and the TLS files alike, and
    name every one to fix at once (a bad password file hid a bad CA or client key)."""
    secret = tmp_path / "mqtt.pw"
    secret.write_text("s3cret\n")
    secret.chmod(0o644)
    key = tmp_path / "client.key"
    key.write_text("not a key\n")
    key.chmod(0o644)
    path = write(
        tmp_path,
        '[mqtt]\nbrokers = ["mqtts://broker.example:8883"]\nusername = "gw"\n'
        f'password_file = "{secret}"\n[mqtt.tls]\nca_file = "{tmp_path / "no-ca.pem"}"\n'
        f'cert_file = "{tmp_path / "client.pem"}"\nkey_file = "{key}"\n',
    )
    no_ca = f"{path}:6: mqtt.tls.ca_file: {tmp_path / 'no-ca.pem'}: cannot load CA"
    for args in (["validate-config", str(path)], ["run", "--config", str(path)]):
        assert main(args) == 2
        err = capsys.readouterr().err
        assert f"{path}:4: mqtt.password_file: {secret}: readable by every user" in err
        assert no_ca in err
        assert f"{path}:8: mqtt.tls.key_file: {key}: readable by every user" in err
    secret.chmod(0o600)
    key.unlink()
    assert main(["validate-config", str(path)]) == 2
    err = capsys.readouterr().err
    assert no_ca in err
    assert f"{path}:7: mqtt.tls.cert_file/key_file: " in err  # no such key file
    assert main(["run", "--config", str(path)]) == 2  # not 1: systemd would restart it for ever
    assert no_ca in capsys.readouterr().err


def test_a_file_the_config_names_that_cannot_be_used_is_said_at_the_naming_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The installer fixes the config, not the missing file's name: the message gives the
    config's file, line and key, and still the file it could not use."""
    defs = Path(__file__).resolve().parents[1] / "device_configs"
    path = write(
        tmp_path,
        f'[mqtt]\nusername = "gw"\npassword_file = "{tmp_path / "no.pw"}"\n'
        f'[devices]\ndefinitions_dir = "{defs}"\n'
        '[[devices.ports]]\nname = "hall"\ndefinition = "gone.toml"\nurl = "/dev/ttyW"\n'
        '[[devices.ports]]\nname = "panel"\ndefinition = "dc09-receiver.toml"\nurl = "/dev/ttyX"\n',
    )
    assert main(["validate-config", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}:8: devices.ports[0].definition: {defs}/gone.toml: file not found" in err
    assert (
        f"{path}:12: devices.ports[1].definition: dc09-receiver.toml: a dc09 device cannot "
        "be a port"
    ) in err
    # one run lists every file there is to fix, the password file beside the definitions
    assert f"{path}:3: mqtt.password_file: {tmp_path}/no.pw: cannot read" in err
    assert main(["run", "--config", str(path)]) == 2  # and so does the service's command
    err = capsys.readouterr().err
    assert f"{path}:8: devices.ports[0].definition: {defs}/gone.toml: file not found" in err
    assert f"{path}:3: mqtt.password_file: {tmp_path}/no.pw: cannot read" in err
    text = path.read_text().split("[devices]")[0]
    path.write_text(text)
    assert main(["validate-config", str(path)]) == 2
    assert f"{path}:3: mqtt.password_file: {tmp_path}/no.pw: cannot read" in capsys.readouterr().err
    assert main(["run", "--config", str(path)]) == 2
    assert f"{path}:3: mqtt.password_file: {tmp_path}/no.pw: cannot read" in capsys.readouterr().err


def test_a_file_named_inside_an_inline_table_is_reported_at_the_table_s_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    defs = Path(__file__).resolve().parents[1] / "device_configs"
    path = write(
        tmp_path,
        f'[devices]\ndefinitions_dir = "{defs}"\n'
        'ports = [\n  { name = "hall", definition = "gone.toml", url = "/dev/ttyW" },\n]\n',
    )
    assert main(["validate-config", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}:3: devices.ports[0].definition: {defs}/gone.toml: file not found" in err
    path.write_text(f'mqtt = {{ username = "gw", password_file = "{tmp_path / "no.pw"}" }}\n')
    assert main(["validate-config", str(path)]) == 2
    assert f"{path}:1: mqtt.password_file: {tmp_path}/no.pw: cannot read" in capsys.readouterr().err


def test_a_config_not_in_utf8_names_the_line_of_the_first_bad_byte(tmp_path: Path) -> None:
    path = tmp_path / "gateway.toml"
    path.write_bytes('[gateway]\nid = "gw-1"\n# Caf\u00e9 du parc\n'.encode("latin-1"))
    with pytest.raises(ConfigFileError) as err:
        load_config(path)
    assert str(err.value) == f"{path}:3: (top level): not UTF-8 text: byte 0xe9"


def test_a_toml_error_at_the_end_of_the_file_names_its_last_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigFileError) as err:
        load_config(write(tmp_path, '[gateway]\nid = "gw-1"\nsite = """canteen\n'))
    assert err.value.issues[0].line == 3


def test_an_unknown_table_written_only_with_its_subtables_has_a_line(tmp_path: Path) -> None:
    path = write(tmp_path, '[gateway]\nid = "gw-1"\n\n[vison.camera]\nsource = "x"\n')
    with pytest.raises(ConfigFileError) as err:
        load_config(path)
    assert str(err.value) == f"{path}:4: vison: unknown key; did you mean 'vision'?"


def test_toml_syntax_error_has_a_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigFileError) as err:
        load_config(write(tmp_path, "[gateway]\nid = \n"))
    assert err.value.issues[0].line == 2


def test_a_toml_file_nested_too_deeply_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigFileError, match="nested too deeply"):
        load_config(write(tmp_path, "[gateway]\nid = " + "[" * 3000 + "]" * 3000 + "\n"))


def test_a_nul_character_in_a_value_is_refused_by_key_before_anything_uses_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A path with a NUL would pass validation and stop the gateway at start."""
    text = (
        '[gateway]\ndata_dir = "var\\u0000x"\n'
        '[[devices.ports]]\nname = "p"\ndefinition = "aa55\\u0000.toml"\nurl = "loop://"\n'
    )
    assert main(["validate-config", str(write(tmp_path, text))]) == 2
    err = capsys.readouterr().err
    assert "gateway.toml:2: gateway.data_dir: contains a NUL character" in err
    assert "gateway.toml:5: devices.ports[0].definition: contains a NUL character" in err


def test_validate_config_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = write(tmp_path, '[gateway]\nsite = "canteen-7"\n')
    assert main(["validate-config", str(good)]) == 0
    assert "ok" in capsys.readouterr().out
    bad = tmp_path / "bad.toml"
    bad.write_text("[gateway]\nsiet = 1\n")
    assert main(["validate-config", str(bad)]) == 2
    assert "gateway.siet: unknown key; did you mean 'site'?" in capsys.readouterr().err
    assert main(["validate-config", str(tmp_path / "missing.toml")]) == 2
    assert "file not found" in capsys.readouterr().err


def test_inf_nan_and_numbers_past_their_bounds_are_refused_by_key(tmp_path: Path) -> None:
    """Each would pass as a number and break at run time: a disk floor of inf refuses every
    event (alarms too); a retention or TTL too large for SQLite fails every housekeeping."""
    text = (
        "[store]\nmin_free_disk_mb = inf\ndelivered_retention_days = 1e12\n"
        "[store.lanes.p2]\nquota_mb = 256\nttl_s = nan\n"
        "[mqtt]\nsession_expiry_s = 4294967296\nreconnect_max_s = -inf\n"
        "[downlink]\nremember_transactions = 100000000000\n"
        "[vision.decision]\ncooldown_s = inf\n"
    )
    with pytest.raises(ConfigFileError) as err:
        load_config(write(tmp_path, text))
    got = {(i.key, i.line): i.message for i in err.value.issues}
    assert set(got) == {
        ("store.min_free_disk_mb", 2),
        ("store.delivered_retention_days", 3),
        ("store.lanes.p2.ttl_s", 6),
        ("mqtt.session_expiry_s", 8),
        ("mqtt.reconnect_max_s", 9),
        ("downlink.remember_transactions", 11),
        ("vision.decision.cooldown_s", 13),
    }
    assert got[("store.min_free_disk_mb", 2)] == "Input should be a finite number"
    assert "less than or equal to 4294967295" in got[("mqtt.session_expiry_s", 8)]
    top = "[store]\nmin_free_disk_mb = 1000000\ndelivered_retention_days = 3650\n"
    assert load_config(write(tmp_path, top)).config.store.min_free_disk_mb == 1_000_000


def test_a_ttl_for_alarms_or_records_from_the_first_release_is_a_warning_not_a_refusal(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The first release took ``ttl_s`` in every lane; since 2026-11-23 alarms and records are
    never expired. A site's config that still sets it loads without it, with a warning naming
    its line: refused, it stopped the gateway, alarms and all, at the upgrade."""
    for lane in ("p0", "p1"):
        path = write(tmp_path, f"[store.lanes.{lane}]\nquota_mb = 64\nttl_s = 3600\n")
        loaded = load_config(path)
        assert getattr(loaded.config.store.lanes, lane).quota_mb == 64
        (issue,) = loaded.retired
        assert (issue.key, issue.line) == (f"store.lanes.{lane}.ttl_s", 3)
        assert "never expired" in issue.message and "delete the line" in issue.message
        assert main(["validate-config", str(path)]) == 0
        assert f"gateway.toml:3: store.lanes.{lane}.ttl_s: ignored" in capsys.readouterr().err
    ok = load_config(write(tmp_path, "[store.lanes.p2]\nquota_mb = 64\nttl_s = 3600\n"))
    assert ok.config.store.lanes.p2.ttl_s == 3600 and ok.retired == ()
    # with an error in the same file: both said, so that one edit mends the file
    both = write(tmp_path, "[store.lanes.p0]\nquota_mb = -1\nttl_s = 3600\n")
    assert main(["validate-config", str(both)]) == 2
    err = capsys.readouterr().err
    assert "gateway.toml:2: store.lanes.p0.quota_mb: " in err
    assert "warning: " in err and "gateway.toml:3: store.lanes.p0.ttl_s: ignored" in err


def test_a_lane_table_that_gives_one_key_keeps_the_other_defaults(tmp_path: Path) -> None:
    """Raising the telemetry quota must not turn its expiry off, nor a ttl need a quota."""
    lanes = load_config(write(tmp_path, "[store.lanes.p2]\nquota_mb = 1024\n")).config.store.lanes
    assert (lanes.p2.quota_mb, lanes.p2.ttl_s) == (1024, 7 * 86400)
    lanes = load_config(write(tmp_path, "[store.lanes.p2]\nttl_s = 3600\n")).config.store.lanes
    assert (lanes.p2.quota_mb, lanes.p2.ttl_s) == (256, 3600)
    text = "[store.lanes.p1]\n[store.lanes.p2]\nttl_s = 0\n"
    lanes = load_config(write(tmp_path, text)).config.store.lanes
    assert lanes.p1.quota_mb == 512 and lanes.p2.ttl_s == 0


def test_a_housekeeping_interval_below_a_second_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each pass is a commit: 0.000001 s passed and wrote the SD card 2 MB a second."""
    path = write(tmp_path, "[store]\nhousekeeping_interval_s = 0.000001\n")
    assert main(["validate-config", str(path)]) == 2
    assert "gateway.toml:2: store.housekeeping_interval_s: " in capsys.readouterr().err
    path = write(tmp_path, "[store]\nhousekeeping_interval_s = 1\n")
    assert load_config(path).config.store.housekeeping_interval_s == 1


@pytest.mark.parametrize(
    ("text", "says"),
    [
        (
            '[store]\npath = "var/one.db"\n[vision.gallery]\npath = "var/one.db"\n',
            "gateway.toml:4: vision.gallery.path: var/one.db is also store.path:",
        ),
        (
            '[store]\npath = "var/faces.db"\n',
            "gateway.toml:2: store.path: var/faces.db is also vision.gallery.path (its default):",
        ),
        (
            '[vision.gallery]\nkey_file = "var/gateway.db"\n',
            "gateway.toml:2: vision.gallery.key_file: var/gateway.db is also store.path (its",
        ),
    ],
    ids=["one-database", "store-on-the-gallery", "key-on-the-journal"],
)
def test_the_journal_and_the_gallery_cannot_share_a_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, says: str
) -> None:
    """One database for both validated, and the face stage then never started: it took the
    journal for a gallery whose key was missing."""
    assert main(["validate-config", str(write(tmp_path, text))]) == 2
    assert says in capsys.readouterr().err


def test_the_journal_and_the_gallery_may_share_a_key_file(tmp_path: Path) -> None:
    """Each derives its own key from the file."""
    text = '[store]\nkey_file = "var/site.key"\n[vision.gallery]\nkey_file = "var/site.key"\n'
    gallery = load_config(write(tmp_path, text)).config.vision.gallery
    assert gallery.key_file == Path("var/site.key")


def test_reconnect_delays_too_short_for_a_real_broker_are_refused_naming_the_floor(
    tmp_path: Path,
) -> None:
    """0.001 s made over 200 connection attempts a second at a broker refusing the login."""
    text = "[mqtt]\nreconnect_min_s = 0.001\nreconnect_max_s = 0.001\nalarm_reconnect_max_s = 0.1\n"
    with pytest.raises(ConfigFileError) as err:
        load_config(write(tmp_path, text))
    got = {i.key: i.message for i in err.value.issues}
    assert got == {
        "mqtt.reconnect_min_s": "Input should be greater than or equal to 0.05",
        "mqtt.reconnect_max_s": "Input should be greater than or equal to 0.2",
        "mqtt.alarm_reconnect_max_s": "Input should be greater than or equal to 0.2",
    }
    fast = "[mqtt]\nreconnect_min_s = 0.05\nreconnect_max_s = 0.2\nalarm_reconnect_max_s = 0.2\n"
    assert load_config(write(tmp_path, fast)).config.mqtt.reconnect_max_s == 0.2


def test_face_settings_that_would_leave_elders_never_recognised_are_refused(
    tmp_path: Path,
) -> None:
    """same_person near 1 starts a new track at every frame, so none is ever decided; a
    cooldown of days keeps an elder accepted once from being accepted again."""
    text = "[vision.decision]\nsame_person = 1.0\ncooldown_s = 604800\n"
    with pytest.raises(ConfigFileError) as err:
        load_config(write(tmp_path, text))
    got = {(i.key, i.line): i.message for i in err.value.issues}
    assert got == {
        ("vision.decision.same_person", 2): "Input should be less than or equal to 0.5",
        ("vision.decision.cooldown_s", 3): "Input should be less than or equal to 43200",
    }
    ok = "[vision.decision]\nsame_person = 0.4\ncooldown_s = 43200\n"
    assert load_config(write(tmp_path, ok)).config.vision.decision.same_person == 0.4


def test_a_detector_score_that_would_find_no_face_at_the_counter_is_refused(
    tmp_path: Path,
) -> None:
    """Real frontal faces at the counter's smallest passing size score under 0.999 four times
    in five: such a setting would turn nearly every frame into `no_face`, without a word."""
    with pytest.raises(ConfigFileError) as err:
        load_config(write(tmp_path, "[vision]\ndetector_score = 0.999\n"))
    got = {(i.key, i.line): i.message for i in err.value.issues}
    assert got == {("vision.detector_score", 2): "Input should be less than or equal to 0.95"}
    ok = "[vision]\ndetector_score = 0.95\n"
    assert load_config(write(tmp_path, ok)).config.vision.detector_score == 0.95


def test_a_config_that_is_not_a_regular_file_or_is_huge_is_refused_at_once(tmp_path: Path) -> None:
    """A FIFO given as the config had validate-config wait for a writer for ever, and a
    device (/dev/zero) would be read until memory ran out."""
    fifo = tmp_path / "fifo.toml"
    os.mkfifo(fifo)
    with pytest.raises(ConfigFileError, match="not a regular file"):
        load_config(fifo)
    huge = write(tmp_path, "# " + "x" * (2 << 20) + "\n")
    with pytest.raises(ConfigFileError, match="larger than 1024 KiB"):
        load_config(huge)


def test_a_config_saved_with_a_byte_order_mark_is_read(tmp_path: Path) -> None:
    """Some Windows editors start UTF-8 files with one: "invalid statement at line 1" sent
    installers looking for a mistake they could not see."""
    plain = write(tmp_path, '[gateway]\nid = "gw-1"\nsite = "canteen-3"\n')
    marked = tmp_path / "marked.toml"
    marked.write_bytes(codecs.BOM_UTF8 + plain.read_bytes())
    assert load_config(marked).config.gateway.id == "gw-1"


def test_a_value_of_the_wrong_toml_type_is_refused_not_converted(tmp_path: Path) -> None:
    """`reserve_mb = true` read as 1 would quietly shrink the disk kept for alarms."""
    text = (
        '[gateway]\ndata_dir = ""\n[store]\nreserve_mb = true\n[mqtt]\nkeepalive_s = "30"\n'
        'allow_plaintext_remote = "yes"\n[vision.audit]\nenabled = 1\n'
    )
    with pytest.raises(ConfigFileError) as err:
        load_config(write(tmp_path, text))
    got = {(i.key, i.line, i.message.removeprefix("Value error, ")) for i in err.value.issues}
    assert got == {
        ("gateway.data_dir", 2, "must not be empty: name a file or folder"),
        ("store.reserve_mb", 4, "must be a number, not true or false"),
        ("mqtt.keepalive_s", 6, "must be a number, not text (write it without quotes)"),
        (
            "mqtt.allow_plaintext_remote",
            7,
            "must be true or false, not text (write it without quotes)",
        ),
        ("vision.audit.enabled", 9, "must be true or false, not int"),
    }
    ok = load_config(write(tmp_path, "[store]\nreserve_mb = 8\nmin_free_disk_mb = 150.5\n"))
    assert (ok.config.store.reserve_mb, ok.config.store.min_free_disk_mb) == (8.0, 150.5)


def test_a_broker_password_without_a_user_name_is_refused(tmp_path: Path) -> None:
    """MQTT sends no password without a user name: the broker would just say not authorised."""
    with pytest.raises(ConfigFileError) as err:
        load_config(write(tmp_path, '[mqtt]\npassword = "s3cret"\n'))
    assert "a password needs username too" in str(err.value)
    assert "s3cret" not in str(err.value)


def test_lines_are_right_in_arrays_of_tables_within_arrays_and_for_dotted_keys(
    tmp_path: Path,
) -> None:
    """A second receiver's key table, and a key written as a.b.c = 1, are named at their own
    lines, not at the first receiver's or the table's."""
    text = (
        "[devices]\n"
        '[[devices.dc09]]\nname = "p1"\ndefinition = "dc09-receiver.toml"\n'
        '[[devices.dc09.keys]]\naccount = "1234"\nkey = "00112233445566778899aabbccddeeff"\n'
        '[[devices.dc09]]\nname = "p2"\ndefinition = "dc09-receiver.toml"\nport = 15021\n'
        '[[devices.dc09.keys]]\naccount = "5678"\nkey = "zz112233445566778899aabbccddeeff"\n'
        "[store]\nbatch_max_rows = 10\nlanes.p3.quota_mb = 1\n"
    )
    with pytest.raises(ConfigFileError) as err:
        load_config(write(tmp_path, text))
    got = {(i.key, i.line) for i in err.value.issues}
    assert ("devices.dc09[1].keys[0].key", 14) in got
    assert ("store.lanes.p3", 17) in got


def test_a_topic_prefix_with_an_empty_level_is_refused(tmp_path: Path) -> None:
    """ "/eldercare" or "a//b" makes an empty topic level that no subscription written from
    the contract matches; several levels are fine."""
    for bad in ("/eldercare", "eldercare/", "a//b"):
        with pytest.raises(ConfigFileError, match=r"mqtt\.topic_prefix"):
            load_config(write(tmp_path, f'[mqtt]\ntopic_prefix = "{bad}"\n'))
    ok = load_config(write(tmp_path, '[mqtt]\ntopic_prefix = "city/eldercare"\n'))
    assert ok.config.mqtt.topic_prefix == "city/eldercare"


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("sokcet://127.0.0.1:4001", "sokcet:// is not a kind of port the gateway opens"),
        ("socket://127.0.0.1", "socket:// needs a host and a port"),
        ("rfc2217://:4001", "rfc2217:// needs a host and a port"),
        ("socket://10.0.0.20:99999", "socket:// needs a host and a port"),
        ("spy://", "spy:// needs the device after it"),
        ("  ", "is empty"),
    ],
)
def test_a_typo_in_a_serial_port_url_stops_validate_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], url: str, says: str
) -> None:
    """Passed, the port was reopened for ever, saying so in pyserial's words."""
    defs = Path(__file__).resolve().parents[1] / "device_configs"
    path = write(
        tmp_path,
        f'[devices]\ndefinitions_dir = "{defs}"\n[[devices.ports]]\nname = "hall"\n'
        f'definition = "aa55-reference.toml"\nurl = "{url}"\n',
    )
    assert main(["validate-config", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}:6: devices.ports[0].url: " in err and says in err


def test_the_serial_port_urls_a_site_uses_are_taken(tmp_path: Path) -> None:
    defs = Path(__file__).resolve().parents[1] / "device_configs"
    urls = [
        "/dev/serial/by-id/usb-FTDI_FT232R-if00-port0",
        "socket://10.0.0.20:4001",
        "SOCKET://[::1]:4001",
        "rfc2217://serial-server.local:2217",
        "loop://",
        "spy:///dev/ttyUSB0?file=/var/log/espa.txt",
    ]
    ports = "".join(
        f'[[devices.ports]]\nname = "p{i}"\ndefinition = "aa55-reference.toml"\nurl = "{u}"\n'
        for i, u in enumerate(urls)
    )
    path = write(tmp_path, f'[devices]\ndefinitions_dir = "{defs}"\n{ports}')
    # the scheme as the link looks for it: a SOCKET:// port got no TCP keepalive, and a path
    # to its serial server that died without a reset went unnoticed
    assert [p.url for p in load_config(path).config.devices.ports] == [
        u.replace("SOCKET://", "socket://") for u in urls
    ]
