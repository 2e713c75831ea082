from __future__ import annotations

import contextlib
import json
import os
import pwd
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from gateway.app import build
from gateway.cli import main
from gateway.config import ConfigFileError, load_config
from gateway.keys import create_key
from gateway.vision.gallery import Gallery, erase
from gateway.vision.models import load_manifest


def _config(tmp_path: Path, models_dir: Path, extra: str = "") -> Path:
    path = tmp_path / "gw.toml"
    path.write_text(
        f'[gateway]\ndata_dir = "{tmp_path / "data"}"\n'
        f'[vision]\nmodels_dir = "{models_dir}"\n{extra}'
    )
    return path


def test_identify_prints_decisions_as_json_lines(
    tmp_path: Path, models_dir: Path, faces_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # the audit option is for the counter's recorded decisions, not an installer's trial run
    config = _config(tmp_path, models_dir, "[vision.audit]\nenabled = true\n")
    assert (
        main(
            [
                "enroll",
                "-c",
                str(config),
                "--elder",
                "e-1",
                str(faces_dir / "deepface" / "img24.jpg"),
            ]
        )
        == 0
    )
    camera = tmp_path / "camera"
    camera.mkdir()
    shutil.copyfile(faces_dir / "deepface" / "img25.jpg", camera / "1.jpg")
    shutil.copyfile(faces_dir / "deepface" / "couple.jpg", camera / "2.jpg")
    capsys.readouterr()
    assert main(["identify", "-c", str(config), "--camera", str(camera), "--lockstep"]) == 0
    captured = capsys.readouterr()
    lines = [json.loads(line) for line in captured.out.splitlines()]
    assert [(d["outcome"], d["elder_id"]) for d in lines] == [
        ("accepted", "e-1"),
        ("multiple_faces", None),
    ]
    assert all(len(d["event_id"]) == 36 for d in lines)
    audit = tmp_path / "data" / "audit"
    assert not audit.exists() or not any(audit.iterdir())
    health = json.loads(captured.err.strip().splitlines()[-1])["health"]
    assert health["camera"]["state"] == "ended"


def test_identify_before_anyone_is_enrolled_writes_nothing(
    tmp_path: Path, models_dir: Path, faces_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An installer tries the camera (often with sudo) before the first enrolment: a gallery
    and key created then, owned by root, would keep the service's face stage from starting."""
    config = _config(tmp_path, models_dir)
    camera = tmp_path / "camera"
    camera.mkdir()
    shutil.copyfile(faces_dir / "deepface" / "img25.jpg", camera / "1.jpg")
    shutil.copyfile(faces_dir / "deepface" / "couple.jpg", camera / "2.jpg")
    assert main(["identify", "-c", str(config), "--camera", str(camera), "--lockstep"]) == 0
    captured = capsys.readouterr()
    lines = [json.loads(line) for line in captured.out.splitlines()]
    assert [d["outcome"] for d in lines] == ["unknown", "multiple_faces"]
    assert not (tmp_path / "data").exists()
    assert "no face gallery yet" in captured.err


def test_identify_with_no_such_camera_says_so(
    tmp_path: Path, models_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _config(tmp_path, models_dir)
    assert main(["identify", "-c", str(config), "--camera", "/nowhere/cam.mp4"]) == 1
    assert "no such device, folder, file or stream URL" in capsys.readouterr().err


def test_identify_on_a_camera_that_never_gives_a_frame_fails(
    tmp_path: Path, models_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An installer's check of a USB camera not plugged in (or a stream address nobody
    answers at) must not end in success: it printed the health and exited 0."""
    config = _config(tmp_path, models_dir)
    for camera in ("/dev/video-not-here", "rtsp://installer:s3cret@127.0.0.1:1/stream"):
        assert main(["identify", "-c", str(config), "--camera", camera, "--seconds", "1.5"]) == 1
        err = capsys.readouterr().err
        assert "gave no usable frame: cannot open camera" in err and "s3cret" not in err


def test_identify_at_a_frame_rate_nobody_could_be_decided_at_says_why(
    tmp_path: Path, models_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The checks the config file gets hold for --fps: at 1 frame/s each frame would be a
    track of its own, and the installer would watch the counter decide nothing."""
    config = _config(tmp_path, models_dir)
    camera = tmp_path / "camera"
    camera.mkdir()
    assert main(["identify", "-c", str(config), "--camera", str(camera), "--fps", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("configuration error:\nwith --fps 1: ") and "window_s" in err


def test_no_camera_means_no_face_stage(tmp_path: Path, models_dir: Path) -> None:
    gateway = build(load_config(_config(tmp_path, models_dir)), password=None)
    assert [s.name for s in gateway.services] == ["sync", "audit-retention"]
    with_camera = _config(tmp_path, models_dir, '[vision.camera]\nsource = "/dev/video0"\n')
    gateway = build(load_config(with_camera), password=None)
    assert [s.name for s in gateway.services] == ["sync", "audit-retention", "vision"]


def test_vision_config_errors_name_line_and_key(tmp_path: Path, models_dir: Path) -> None:
    typo = _config(tmp_path, models_dir, "[vision.decision]\naccept_treshold = 0.6\n")
    with pytest.raises(ConfigFileError) as err:
        load_config(typo)
    assert str(err.value).endswith(
        "gw.toml:6: vision.decision.accept_treshold: unknown key; did you mean 'accept_threshold'?"
    )
    inconsistent = _config(tmp_path, models_dir, "[vision.decision]\nk = 9\n")
    with pytest.raises(ConfigFileError, match="k must not exceed n"):
        load_config(inconsistent)
    crossed = "[vision.quality]\nmin_brightness = 200\nmax_brightness = 100\n"
    with pytest.raises(ConfigFileError, match="max_brightness must be above min_brightness"):
        load_config(_config(tmp_path, models_dir, crossed))
    poster = "[vision.camera]\nignore = [[0.7, 0.0, 1.0, 0.4]]\n"
    loaded = load_config(_config(tmp_path, models_dir, poster))
    assert loaded.config.vision.camera.ignore == [(0.7, 0.0, 1.0, 0.4)]
    upside_down = "[vision.camera]\nignore = [[0.7, 0.4, 1.0, 0.0]]\n"
    with pytest.raises(ConfigFileError, match=r"ignore: \[0.7, 0.4, 1, 0\] is not a part of"):
        load_config(_config(tmp_path, models_dir, upside_down))
    everyone = "[vision.camera]\nignore = [[0.0, 0.0, 1.0, 1.0]]\n"  # would hide the elder too
    with pytest.raises(ConfigFileError, match=r"ignore: \[0, 0, 1, 1\] is more than half"):
        load_config(_config(tmp_path, models_dir, everyone))


def test_models_verify_command(staged: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "verify", "--models-dir", str(staged)]) == 0
    assert capsys.readouterr().out.count(": ok") == 4
    (staged / "retinaface_mbnet0.25.onnx").unlink()
    assert main(["models", "verify", "--models-dir", str(staged)]) == 1
    assert "retinaface_mbnet0.25.onnx: BAD: missing" in capsys.readouterr().out


def test_identify_on_a_replay_that_cannot_play_fails_instead_of_waiting(
    tmp_path: Path, models_dir: Path, faces_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _config(tmp_path, models_dir)
    empty = tmp_path / "camera"
    empty.mkdir()
    assert main(["identify", "-c", str(config), "--camera", str(empty)]) == 1
    assert "camera: no photos" in capsys.readouterr().err
    not_video = faces_dir / "deepface" / "master.csv"
    assert main(["identify", "-c", str(config), "--camera", str(not_video)]) == 1
    assert f"cannot open camera {not_video}" in capsys.readouterr().err
    no_frames = tmp_path / "empty.avi"  # opens as a video, holds no frame
    cv2.VideoWriter(str(no_frames), cv2.VideoWriter.fourcc(*"MJPG"), 15, (640, 480)).release()
    assert main(["identify", "-c", str(config), "--camera", str(no_frames), "--lockstep"]) == 1
    assert f"camera {no_frames} ended without one usable frame (0 unusable)" in (
        capsys.readouterr().err
    )


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["eval", "--faces", "x", "--templates", "0"], "--templates: must be 1 or more, not 0"),
        (["eval", "--faces", "x", "--n", "-5"], "--n: must be 1 or more, not -5"),
        (["eval", "--faces", "x", "--fpir", "2"], "--fpir: must be between 0 and 1"),
        (["eval", "--faces", "x", "--n", "ten"], "--n: not a whole number: 'ten'"),
        (["identify", "--camera", "x", "--fps", "0"], "--fps: must be above 0, not 0"),
        (["identify", "--camera", "x", "--seconds", "nan"], "--seconds: must be above 0"),
    ],
)
def test_impossible_option_values_are_refused_by_name(
    args: list[str], said: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(args)
    assert exit_.value.code == 2
    assert said in capsys.readouterr().err


def _photo_folders(root: Path, photos: Path, layout: dict[str, list[str]]) -> None:
    """One sub-folder of ``root`` per name, holding copies of the named photos."""
    for name, files in layout.items():
        (root / name).mkdir(parents=True)
        for file in files:
            shutil.copyfile(photos / file, root / name / file)


def _unreadable_folder(path: Path) -> bool:
    """A sub-folder that cannot be listed: mode 000, or for root (who lists anything) a link
    to a directory the kernel refuses even to root. False where neither can be made."""
    path.mkdir(mode=0)
    with contextlib.suppress(PermissionError):
        os.listdir(path)
        path.rmdir()
        path.symlink_to("/proc/1/map_files")
        with contextlib.suppress(PermissionError):
            os.listdir(path)
            path.unlink()
            return False
    return True


def test_bulk_enrolment_command(
    tmp_path: Path, faces_dir: Path, models_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    df = faces_dir / "deepface"
    folder = tmp_path / "photos"
    layout = {
        "e-101": ["img13.jpg", "img14.jpg"],
        "e-102": ["img8.jpg"],
        "e-103": ["couple.jpg"],
        "e 104": ["img20.jpg"],  # not an elder id: refused, the others go on
        "System Volume Information": [],  # a USB stick formatted on Windows
        ".thumbnails": ["img21.jpg"],
    }
    _photo_folders(folder, df, layout)
    shutil.copyfile(df / "img17.jpg", folder / "img17.jpg")  # beside the elders' folders
    locked = _unreadable_folder(folder / "e-105")  # e.g. not the gateway user's to read
    # a site with a counter camera, whose gateway is not running now
    config = _config(tmp_path, models_dir, '[vision.camera]\nsource = "/dev/video0"\n')
    assert main(["enroll", "-c", str(config), "--folder", str(folder), "--allow-similar"]) == 2
    assert "not for every folder of a bulk run" in capsys.readouterr().err
    one = ["--elder", "e-109", str(df / "img16.jpg")]
    assert main(["enroll", "-c", str(config), *one, "--folder", str(folder)]) == 2
    assert "either --elder ID PHOTOS... or --folder DIR, not both" in capsys.readouterr().err
    code = main(["enroll", "-c", str(config), "--folder", str(folder)])
    captured = capsys.readouterr()
    assert code == 3  # elders refused
    assert "e-103: refused: no usable photo" in captured.out
    assert "couple.jpg: refused: multiple_faces" in captured.out
    assert "e 104: refused: elder id 'e 104': use letters" in captured.out
    if locked:
        assert "e-105: refused: folder cannot be read" in captured.out
    assert f"2 enrolled, {3 if locked else 2} refused, 0 flagged" in captured.out
    assert "System Volume" not in captured.out and "thumbnails" not in captured.out
    assert f"WARNING: 1 photo(s) directly in {folder} not enrolled" in captured.err
    assert "2 enrolled with fewer than 3 photos in all" in captured.out
    assert (
        f"enrolling: {5 if locked else 4}/{5 if locked else 4}" in captured.err
    )  # the progress bar, one line per tenth off a tty
    # photos straight in the folder, not in one sub-folder per elder: said, not ignored
    assert main(["enroll", "-c", str(config), "--folder", str(folder / "e-101")]) == 1
    assert "its photos are not in sub-folders" in capsys.readouterr().err
    assert main(["enroll", "-c", str(config), "--folder", str(tmp_path / "fotos")]) == 1
    assert f"{tmp_path / 'fotos'}: cannot be read: No such file or directory" in (
        capsys.readouterr().err
    )

    assert main(["gallery", "stats", "-c", str(config)]) == 0
    out = capsys.readouterr().out
    assert "elders     2    templates 3" in out
    assert "learned    0 from staff confirmations" in out
    assert main(["gallery", "unlearn", "-c", str(config), "--elder", "e-101"]) == 1
    assert "e-101: 0 learned template(s) removed, 2 left" in capsys.readouterr().out
    assert main(["gallery", "unlearn", "-c", str(config), "--elder", "e-1O1"]) == 1
    assert "e-1O1: not enrolled in " in capsys.readouterr().err
    assert main(["gallery", "remove", "-c", str(config), "--elder", "e-101"]) == 0
    assert "e-101: 2 template(s) erased" in capsys.readouterr().out
    assert main(["enroll", "-c", str(config), "--elder", "e-104", str(df / "img9.jpg")]) == 3
    out = capsys.readouterr().out
    assert out.startswith("e-104: flagged: looks like enrolled elder(s) e-102")
    # a damaged row: named, so staff can erase and enrol that elder again
    with contextlib.closing(sqlite3.connect(tmp_path / "data" / "faces.db")) as conn, conn:
        conn.execute(  # text now, and not even UTF-8
            "UPDATE templates SET ciphertext = x'ff' || ciphertext WHERE elder_id = 'e-102'"
        )
        conn.execute("UPDATE meta SET value = value + 1 WHERE key = 'generation'")
    assert main(["gallery", "stats", "-c", str(config)]) == 1
    assert "damaged    rows of e-102: erase them" in capsys.readouterr().out
    assert main(["enroll", "-c", str(config), "--elder", "e-106", str(df / "img20.jpg")]) == 0
    assert "1 templates of 1 elders fail to decrypt" in capsys.readouterr().err
    assert main(["gallery", "remove", "-c", str(config), "--elder", "e-102"]) == 0
    assert main(["gallery", "stats", "-c", str(config)]) == 0
    out = capsys.readouterr().out
    assert "damaged" not in out
    # the counter did not run since to take the erasures in
    assert "erased     2 elder(s) the counter has still to take in" in out


def test_a_bulk_enrolment_says_why_an_elders_folder_gave_nothing_to_enrol(
    tmp_path: Path, faces_dir: Path, models_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Photos in a dated sub-folder, iPhone HEIC files, an empty folder: each was refused
    with the same bare "no usable photo", even with -v, and the installer could not tell
    what to mend."""
    df = faces_dir / "deepface"
    folder = tmp_path / "photos"
    _photo_folders(folder, df, {"e-201": ["img13.jpg"]})
    (folder / "e-202" / "2024").mkdir(parents=True)
    shutil.copyfile(df / "img8.jpg", folder / "e-202" / "2024" / "front.jpg")
    (folder / "e-203").mkdir()
    for name in ("IMG_0001.HEIC", "scan.tif"):
        (folder / "e-203" / name).write_bytes(b"not read")
    (folder / "e-204").mkdir()
    code = main(["enroll", "-c", str(_config(tmp_path, models_dir)), "--folder", str(folder)])
    out = capsys.readouterr().out
    assert code == 3
    assert "e-202: refused: photos must be directly in the elder's folder, not in " in out
    assert "sub-folders (2024)" in out
    assert "e-203: refused: 2 file(s) in a format not read (.heic, .tif): export them" in out
    assert "e-204: refused: the folder is empty" in out
    assert "1 enrolled, 3 refused, 0 flagged" in out


def test_a_bulk_enrolment_stopped_with_ctrl_c_says_how_far_it_got(
    faces_dir: Path, models_dir: Path, tmp_path: Path
) -> None:
    """An installer stops a long bulk run: told how many elders were done, and the same
    command again finishes the job without enrolling anyone twice."""
    folder = tmp_path / "enrol"
    for person in sorted((faces_dir / "lfw-dev" / "images").iterdir())[:150]:
        shutil.copytree(person, folder / person.name)
    command = [sys.executable, "-m", "gateway", "enroll", "-c", str(_config(tmp_path, models_dir))]
    command += ["--folder", str(folder)]
    # a handler here, not SIG_IGN (a suite run in the background), gives the child the
    # default SIGINT a terminal does
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    finally:
        signal.signal(signal.SIGINT, before)
    assert proc.stderr is not None
    assert proc.stderr.readline().startswith("enrolling: 1/150")  # on its way
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert "Traceback" not in err
    stopped = err.splitlines()[-1]
    assert re.fullmatch(
        r"interrupted after (\d+) of 150 elders: (\d+) enrolled, (\d+) refused, (\d+) flagged; "
        r"the same command again goes on \(photos enrolled already are not added twice\)",
        stopped,
    ), stopped
    done = int(stopped.split()[2])
    assert 1 <= done < 150
    gallery = tmp_path / "data" / "faces.db"
    held = _templates_per_elder(gallery)
    assert 0 < len(held) <= done
    rerun = subprocess.run(command, check=False, capture_output=True, text=True, timeout=120)
    assert rerun.returncode in (0, 3), rerun.stderr  # 3: some photos refused or flagged
    lines = rerun.stdout.splitlines()
    assert any(re.fullmatch(r"\d+ enrolled, \d+ refused, \d+ flagged", line) for line in lines)
    after = _templates_per_elder(gallery)
    assert len(after) > len(held)
    assert {elder: after[elder] for elder in held} == held  # nobody's photos twice


def _templates_per_elder(gallery: Path) -> dict[str, int]:
    with contextlib.closing(sqlite3.connect(gallery)) as conn:
        rows = conn.execute("SELECT elder_id, count(*) FROM templates GROUP BY elder_id")
        return dict(rows.fetchall())


def test_enrol_with_a_mistyped_elder_id_makes_no_gallery(
    tmp_path: Path, models_dir: Path, faces_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A bad argument, said before the models load: a gallery and key made for it by root
    (sudo) would keep the service's face stage from starting."""
    config = _config(tmp_path, models_dir)
    photo = str(faces_dir / "deepface" / "img1.jpg")
    assert main(["enroll", "-c", str(config), "--elder", "E 1", photo]) == 2
    assert "elder id 'E 1': use letters" in capsys.readouterr().err
    assert not (tmp_path / "data").exists()


def test_enrol_with_the_wrong_key_file_says_so_and_adds_nothing(
    tmp_path: Path, models_dir: Path, faces_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A key file replaced by another: the installer is told the key is wrong, not sent to
    look for damaged rows."""
    config = _config(tmp_path, models_dir)
    df = faces_dir / "deepface"
    assert main(["enroll", "-c", str(config), "--elder", "e-1", str(df / "img1.jpg")]) == 0
    key = tmp_path / "data" / "faces.key"
    key.unlink()
    create_key(key)
    capsys.readouterr()
    assert main(["enroll", "-c", str(config), "--elder", "e-2", str(df / "img20.jpg")]) == 1
    err = capsys.readouterr().err
    assert "refusing to write with a key that does not match the gallery" in err
    assert "gallery stats" not in err
    with contextlib.closing(sqlite3.connect(tmp_path / "data" / "faces.db")) as conn:
        assert conn.execute("SELECT count(*) FROM templates").fetchone() == (1,)


def test_an_erasure_pointed_at_a_data_directory_with_nothing_in_it_says_so(
    tmp_path: Path, models_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`gateway gallery remove` without the site's config (its data directory elsewhere): not
    a count of nothing erased that reads as done, but what is missing and where."""
    config = _config(tmp_path, models_dir)
    assert main(["gallery", "remove", "-c", str(config), "--elder", "e-1"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    data = tmp_path / "data"
    assert captured.err == (
        f"error: no face gallery ({data / 'faces.db'}), journal ({data / 'gateway.db'}) or "
        f"audit frames ({data / 'audit'}), so nothing of e-1 to erase there: give the site's "
        "config (-c FILE), which says where its data directory is\n"
    )
    assert not data.exists()


def test_gallery_stats_counts_each_erased_elder_once_and_apart_those_no_counter_can_open(
    tmp_path: Path, models_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The gateway stopped meanwhile: an elder erased, enrolled again and erased again is one
    elder for the counter to take in, not two; an entry sealed with a key the gallery does not
    have is none the counter will take in."""
    config = _config(tmp_path, models_dir, '[vision.camera]\nsource = "/dev/video0"\n')
    data = tmp_path / "data"
    db, key = data / "faces.db", data / "faces.key"
    model = load_manifest().recognizer.model_id
    gallery = Gallery.open(db, key, model, create=True)
    vectors = np.random.default_rng(3).standard_normal((3, 128)).astype(np.float32)
    gallery.add("e-1", vectors[:1])
    gallery.add("e-2", vectors[1:2])
    assert erase(db, "e-1", key_path=key) == 1
    gallery.add("e-1", vectors[2:])
    assert erase(db, "e-1", key_path=key) == 1
    other = tmp_path / "other.key"
    create_key(other)
    assert erase(db, "e-2", key_path=other) == 1
    assert main(["gallery", "stats", "-c", str(config)]) == 0
    out = capsys.readouterr().out
    assert "erased     1 elder(s) the counter has still to take in" in out
    assert "1 sealed with another key" in out


def test_eval_command_on_the_deepface_pairs(
    faces_dir: Path, models_dir: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    config = _config(tmp_path, models_dir)
    folder = faces_dir / "deepface"
    code = main(
        ["eval", "-c", str(config), "--faces", str(folder), "--pairs", str(folder / "master.csv")]
    )
    out = capsys.readouterr().out
    assert code == 0
    # master.csv names its photos in pairs of every fold: the accuracy is not held out
    said = "300 pairs (0 without a face), 5-fold cross-validation (photos in several folds"
    assert f"1:1 pairs  {said}: not held out)" in out
    assert "TAR 1.0000 at FAR 0.01" in out
    # 262 different-person pairs cannot show a rate of one in a thousand
    assert "TAR at FAR 0.001: not measurable (262 impostor pairs, at least 1,000 needed)" in out


def test_eval_names_the_photos_it_could_not_use(
    faces_dir: Path, models_dir: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A site's calibration folder or pairs file with a photo missing or damaged: the report
    says which, not only how many, so the installer can mend it."""
    config = _config(tmp_path, models_dir)
    folder = tmp_path / "faces"
    df = faces_dir / "deepface"
    _photo_folders(folder, df, {"p-1": ["img1.jpg", "img2.jpg"], "p-2": ["img20.jpg"]})
    (folder / "p-2" / "cut.jpg").write_bytes((df / "img21.jpg").read_bytes()[:2000])
    pairs = tmp_path / "pairs.csv"
    pairs.write_text(
        "file_x,file_y,Decision\n"
        "p-1/img1.jpg,p-1/img2.jpg,Yes\n"
        "p-2/img20.jpg,p-2/gone.jpg,Yes\n"
        "p-1/img1.jpg,p-2/img20.jpg,No\n"
    )
    argv = ["eval", "-c", str(config), "--faces", str(folder), "--pairs", str(pairs)]
    assert main([*argv, "--jobs", "1"]) == 0
    out = capsys.readouterr().out
    assert "  cannot use p-2/gone.jpg: unreadable: " in out
    assert "  cannot use p-2/cut.jpg: truncated" in out
    assert "img20.jpg:" not in out and "img1.jpg:" not in out


def test_eval_on_a_mistyped_or_empty_folder_fails_instead_of_reporting_nothing(
    models_dir: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    config = _config(tmp_path, models_dir)
    assert main(["eval", "-c", str(config), "--faces", str(tmp_path / "facse")]) == 1
    assert "facse: no such folder of face photos" in capsys.readouterr().err
    assert main(["eval", "-c", str(config), "--faces", str(tmp_path)]) == 1
    assert "no photos" in capsys.readouterr().err


def test_eval_says_a_mistyped_errata_file_before_embedding_every_photo(
    faces_dir: Path, models_dir: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """It was read after the photos were embedded: minutes on a Pi, for a typo."""
    config = _config(tmp_path, models_dir)
    folder = tmp_path / "faces"
    _photo_folders(folder, faces_dir / "deepface", {"p-1": ["img1.jpg", "img2.jpg"]})
    argv = ["eval", "-c", str(config), "--faces", str(folder), "--errata", "erata.txt"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "erata.txt" in err and "embedding" not in err


def test_eval_on_a_folder_of_two_people_says_why_it_recommends_nothing(
    faces_dir: Path, models_dir: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    config = _config(tmp_path, models_dir)
    folder = tmp_path / "faces"
    _photo_folders(folder, faces_dir / "deepface", {"p-1": ["img1.jpg"], "p-2": ["img8.jpg"]})
    assert main(["eval", "-c", str(config), "--faces", str(folder), "--jobs", "1"]) == 0
    out = capsys.readouterr().out
    said = "no thresholds recommended: open-set figures and thresholds need usable photos"
    assert f"{said} of at least 3 people, one sub-folder each; the folder has 2" in out


def test_eval_skips_hidden_and_system_folders_as_enrolment_does(
    faces_dir: Path, models_dir: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    config = _config(tmp_path, models_dir)
    folder = tmp_path / "faces"
    df = faces_dir / "deepface"
    layout = {
        "p-1": ["img1.jpg", "img2.jpg"],
        "p-2": ["img20.jpg"],
        ".thumbnails": ["img19.jpg"],
        "System Volume Information": ["img16.jpg"],
    }
    _photo_folders(folder, df, layout)
    assert main(["eval", "-c", str(config), "--faces", str(folder), "--jobs", "1"]) == 0
    assert f"faces      {folder}: 3 photos, 2 people" in capsys.readouterr().out


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file away needs root")
def test_a_command_run_as_root_on_the_services_key_says_to_run_it_as_that_user(
    tmp_path: Path, models_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An installer's `sudo gateway gallery stats` on a site whose service made the key: the
    advice is `sudo -u`, not removing or taking the key, which would strand every enrolment."""
    from gateway.vision.gallery import Gallery

    config = _config(tmp_path, models_dir)
    cfg = load_config(config).config
    Gallery.configured(cfg.vision, cfg.gateway.data_dir, create=True)
    key = cfg.vision.gallery.key_path(cfg.gateway.data_dir)
    os.chown(key, 65534, 65534)  # the service's user
    owner = pwd.getpwuid(65534).pw_name
    assert main(["gallery", "stats", "-c", str(config)]) == 1
    err = capsys.readouterr().err
    assert f"run this command as that user (sudo -u {owner} ...)" in err
    assert "remove it" not in err and "chown" not in err
    assert key.stat().st_uid == 65534


def test_run_without_models_runs_on_without_the_face_stage(tmp_path: Path) -> None:
    """A damaged or missing model stops the face stage, not the alarms: the gateway runs on,
    says plainly what is missing, and reports it in health."""
    empty = tmp_path / "no-models"
    empty.mkdir()
    config = _config(tmp_path, empty, '[vision.camera]\nsource = "/dev/video0"\n')
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", "run", "-c", str(config)],
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    lines: list[str] = []
    for line in proc.stderr:
        lines.append(line)
        if "gateway" in line and "running" in line:
            break
    proc.send_signal(signal.SIGTERM)
    _, rest = proc.communicate(timeout=60)
    log = "".join(lines) + rest
    assert proc.returncode == 0
    assert "vision not started, the rest runs on" in log
    assert "model files in" in log and "retinaface_mbnet0.25.onnx: missing" in log
    assert "Traceback" not in log


def _children(pid: int) -> list[int]:
    found = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True, check=False)
    return [int(child) for child in found.stdout.split()]


def _gone(pids: list[int], within_s: float = 20.0) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if not any(Path(f"/proc/{pid}").exists() for pid in pids):
            return True
        time.sleep(0.1)
    return False


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_eval_stopped_midway_leaves_no_worker_behind(
    faces_dir: Path, models_dir: Path, tmp_path: Path, signum: signal.Signals
) -> None:
    """Ctrl-C reaches the whole foreground group, workers included: it ends the command with
    no traceback from them. A kill of the command alone must not leave its workers (two
    copies of the models) idle on a 2 GB box for good."""
    config = _config(tmp_path, models_dir)
    command = ["eval", "-c", str(config), "--faces", str(faces_dir / "lfw-dev"), "--jobs", "2"]
    # a handler here, not SIG_IGN (a suite run in the background), gives the child the
    # default SIGINT a terminal does
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", *command],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,  # a group of its own, as a terminal gives a command
        )
    finally:
        signal.signal(signal.SIGINT, before)
    assert proc.stderr is not None
    try:
        assert proc.stderr.readline().startswith("embedding: ")  # the workers are at it
        workers = _children(proc.pid)
        if signum == signal.SIGINT:
            os.killpg(proc.pid, signal.SIGINT)
        else:
            proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        assert _gone(workers)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # the workers, when they stayed
    err = proc.stderr.read()  # to its end: once no worker holds it open
    assert proc.returncode == (130 if signum == signal.SIGINT else -signal.SIGTERM)
    assert "Traceback" not in err
