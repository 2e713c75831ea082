from __future__ import annotations

import os
import random
import resource
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from gateway.vision.enroll import Photo
from gateway.vision.errors import BadImage
from gateway.vision.images import as_bgr8, decode_image, fit_within, header_size, read_image


@pytest.fixture(scope="module")
def photo(faces_dir: Path) -> bytes:
    return (faces_dir / "antispoof" / "image_T1.jpg").read_bytes()


def test_a_real_jpeg_decodes_to_bgr8_upright(photo: bytes) -> None:
    # stored 640x480 with an EXIF tag saying "rotate": the face must come out upright
    assert header_size(photo) == (640, 480)
    image = decode_image(photo)
    assert image.shape == (640, 480, 3) and image.dtype == np.uint8


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty"),
        (b"this is not an image at all", "unsupported"),
        (b"\xff\xd8\xff\xe0" + b"\x00" * 64, "corrupt"),
    ],
)
def test_unusable_bytes_say_why(data: bytes, reason: str) -> None:
    with pytest.raises(BadImage) as err:
        decode_image(data)
    assert err.value.reason == reason


def test_a_truncated_photo_is_refused(photo: bytes) -> None:
    with pytest.raises(BadImage) as err:
        decode_image(photo[: len(photo) // 2])
    assert err.value.reason == "truncated"


def test_a_photo_with_bytes_after_its_end_marker_is_fine(photo: bytes) -> None:
    assert decode_image(photo + b"vendor trailer").shape == (640, 480, 3)


def test_a_phone_motion_photo_is_a_whole_photo(photo: bytes) -> None:
    """Phones (Xiaomi, Huawei, Samsung, Google) keep a short MP4 after the photo's end. Its
    bytes hold every marker by chance, one that reads as a start of scan after the last
    end-of-image among them: the photo was refused as truncated, and with it the elder's
    whole enrolment."""
    rng = random.Random(5)
    video = b"\x00\x00\x00\x18ftypmp42" + bytes(rng.randrange(256) for _ in range(4000))
    video += b"\xff\xd9" + bytes(rng.randrange(256) for _ in range(500)) + b"\xff\xda\x00\x08"
    assert decode_image(photo + video).shape == (640, 480, 3)


def test_a_truncated_photo_with_a_thumbnail_is_still_refused(photo: bytes) -> None:
    """An EXIF thumbnail is a whole JPEG of its own, end marker included, inside the photo's
    header: the photo cut off after it is still cut off."""
    small = cv2.imencode(".jpg", np.full((40, 30, 3), 90, np.uint8))[1].tobytes()
    app1 = b"\xff\xe1" + struct.pack(">H", len(small) + 8) + b"Exif\x00\x00" + small
    with_thumbnail = photo[:2] + app1 + photo[2:]
    assert decode_image(with_thumbnail).shape == (640, 480, 3)
    with pytest.raises(BadImage) as err:
        decode_image(with_thumbnail[: len(with_thumbnail) * 2 // 3])
    assert err.value.reason == "truncated"


@pytest.mark.parametrize("filler", [b"\xff", b"\xff\x00", b"\xff\xd0", b"\xff\xff\x00"])
def test_a_photo_built_of_markers_is_refused_without_walking_them_one_by_one(
    photo: bytes, filler: bytes
) -> None:
    """Megabytes of fill bytes, stuffed bytes or restart markers after a photo's first scan
    (a platform request is the size of a photo): the walk took a Python step for each, some
    ten seconds for 40 MB. Runs are now searched over in C, and a file with more markers
    than any photo has is refused as what it is."""
    scan = photo.index(b"\xff\xda") + 20
    data = photo[:scan] + filler * (4_000_000 // len(filler))
    with pytest.raises(BadImage) as err:
        decode_image(data)
    assert (err.value.reason, str(err.value)) in {
        ("truncated", "truncated: JPEG ends before its end-of-image marker"),
        ("corrupt", "corrupt: not a photo: more than 10000 markers"),
    }


def test_grey_16bit_and_alpha_become_bgr8(photo: bytes) -> None:
    colour = decode_image(photo)
    grey = cv2.cvtColor(colour, cv2.COLOR_BGR2GRAY)
    wide = grey.astype(np.uint16) * 257
    bgra = cv2.cvtColor(colour, cv2.COLOR_BGR2BGRA)
    for img in (grey, wide, bgra):
        ok, png = cv2.imencode(".png", img)
        assert ok
        out = decode_image(png.tobytes())
        assert out.shape == (640, 480, 3) and out.dtype == np.uint8
    assert np.array_equal(decode_image(cv2.imencode(".png", wide)[1].tobytes())[..., 0], grey)


def _png_header(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return (
        b"\x89PNG\r\n\x1a\n"
        + struct.pack(">I", len(ihdr))
        + chunk
        + struct.pack(">I", zlib.crc32(chunk))
    )


def test_a_huge_photo_is_refused_before_decoding() -> None:
    with pytest.raises(BadImage) as err:
        decode_image(_png_header(30_000, 20_000) + b"\x00" * 100)
    assert err.value.reason == "too_large"
    assert "30000x20000" in str(err.value)


def test_a_stray_byte_before_the_frame_header_does_not_hide_the_size(photo: bytes) -> None:
    sof = photo.index(b"\xff\xc0")
    stray = photo[:sof] + b"\x00" + photo[sof:]  # libjpeg skips it and decodes the photo
    assert header_size(stray) == (640, 480)
    assert decode_image(stray).shape == (640, 480, 3)
    huge = bytearray(stray)
    huge[sof + 6 : sof + 10] = struct.pack(">HH", 2_000, 3_000)
    with pytest.raises(BadImage, match=r"3000x2000 pixels \(limit"):  # from the header
        decode_image(bytes(huge), max_pixels=1_000_000)


def test_a_png_chunk_claiming_more_than_the_file_is_refused_before_decoding(
    photo: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """OpenCV allocates what the chunk claims before reading it: 2 GiB for these few bytes."""
    png = cv2.imencode(".png", decode_image(photo)[:64, :64])[1].tobytes()
    assert png[37:41] == b"IDAT"
    claims_2gib = png[:33] + struct.pack(">I", 0x7FFF_FFFF) + png[37:]
    cut = png[: len(png) // 2]

    def must_not_decode(*_args: object) -> None:
        raise AssertionError("decoded")

    monkeypatch.setattr(cv2, "imdecode", must_not_decode)
    for data in (claims_2gib, cut):
        with pytest.raises(BadImage) as err:
            decode_image(data)
        assert err.value.reason == "truncated" and "PNG chunk" in str(err.value)
    monkeypatch.undo()
    assert decode_image(png + b"trailer").shape == (64, 64, 3)


def _webp_extended(width: int, height: int) -> bytes:
    body = b"VP8X" + struct.pack("<I", 10) + b"\x00" * 4
    body += (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
    return b"RIFF" + struct.pack("<I", 4 + len(body)) + b"WEBP" + body


@pytest.mark.parametrize(
    ("ext", "params"),
    [
        (".webp", [cv2.IMWRITE_WEBP_QUALITY, 80]),  # lossy (VP8)
        (".webp", [cv2.IMWRITE_WEBP_QUALITY, 101]),  # lossless (VP8L)
        (".bmp", []),
    ],
)
def test_webp_and_bmp_sizes_are_read_from_the_header(
    photo: bytes, ext: str, params: list[int]
) -> None:
    image = decode_image(photo)[:477, :301]  # odd sizes: width and height not mixed up
    data = cv2.imencode(ext, image, params)[1].tobytes()
    assert header_size(data) == (301, 477)
    assert decode_image(data).shape == (477, 301, 3)


def test_a_huge_webp_is_refused_before_decoding() -> None:
    with pytest.raises(BadImage) as err:
        decode_image(_webp_extended(16_000, 16_000) + b"\x00" * 100)
    assert err.value.reason == "too_large" and "16000x16000" in str(err.value)


def _bmp_header(width: int, height: int) -> bytes:
    dib = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, 0, 2835, 2835, 0, 0)
    return b"BM" + struct.pack("<IHHI", 54 + 16, 0, 0, 54) + dib + bytes(16)


@pytest.mark.parametrize(
    "data", [_bmp_header(2_000_000, 2), _webp_extended(2_000_000, 2)], ids=["bmp", "webp"]
)
def test_a_photo_wider_than_opencv_allows_is_refused_not_raised(data: bytes) -> None:
    """Few pixels but over 2^20 a side: OpenCV's decoder would raise its own error."""
    with pytest.raises(BadImage) as err:
        decode_image(data + bytes(64))
    assert err.value.reason == "too_large" and "2000000x2" in str(err.value)


def test_an_os2_bmp_is_sized_as_decoders_read_it() -> None:
    """Its 16-bit width and height are unsigned: read as signed, 65535 x 65535 passed as 1 x 1
    and a 1-bit file a few MB long decoded to gigabytes, more than a Pi has."""
    core = struct.pack("<IHHHH", 12, 0xFFFF, 0xFFFF, 1, 1)
    data = b"BM" + struct.pack("<IHHI", 26 + 6, 0, 0, 32) + core + bytes(6)
    assert header_size(data) == (65535, 65535)
    with pytest.raises(BadImage) as err:
        decode_image(data + bytes(4096))
    assert err.value.reason == "too_large" and "65535x65535" in str(err.value)


def test_formats_whose_size_is_unknown_before_decoding_are_refused(photo: bytes) -> None:
    tiff = cv2.imencode(".tiff", decode_image(photo))[1].tobytes()
    with pytest.raises(BadImage) as err:
        decode_image(tiff)
    assert err.value.reason == "unsupported"
    assert str(err.value) == "unsupported: not a JPEG, PNG, WebP or BMP photo"


def test_a_huge_file_is_refused_by_size(tmp_path: Path, photo: bytes) -> None:
    path = tmp_path / "big.jpg"
    path.write_bytes(photo)
    with pytest.raises(BadImage) as err:
        read_image(path, max_bytes=1000)
    assert err.value.reason == "too_large"


def test_a_fifo_or_a_device_named_like_a_photo_is_refused_not_read(tmp_path: Path) -> None:
    """Their size says 0: a FIFO would block the camera's reader for good, /dev/zero would
    be read until memory runs out."""
    fifo = tmp_path / "02.jpg"
    os.mkfifo(fifo)
    zero = tmp_path / "03.jpg"
    zero.symlink_to("/dev/zero")
    for path in (fifo, zero):
        with pytest.raises(BadImage) as err:
            read_image(path)
        assert (err.value.reason, err.value.detail) == ("unreadable", "not a regular file")


def test_a_missing_file_is_unreadable(tmp_path: Path) -> None:
    with pytest.raises(BadImage) as err:
        read_image(tmp_path / "nope.jpg")
    assert err.value.reason == "unreadable"


@pytest.mark.parametrize(
    "frame",
    [None, np.zeros((0, 640, 3), np.uint8), np.zeros((480, 0, 3), np.uint8), np.zeros(5)],
)
def test_zero_size_frames_are_empty(frame: np.ndarray | None) -> None:
    with pytest.raises(BadImage) as err:
        as_bgr8(frame)
    assert err.value.reason == "empty"


def test_odd_pixel_types_are_refused() -> None:
    with pytest.raises(BadImage) as err:
        as_bgr8(np.zeros((4, 4, 3), np.int32))
    assert err.value.reason == "unsupported"
    with pytest.raises(BadImage):
        as_bgr8(np.zeros((4, 4, 2), np.uint8))


def test_fit_within_only_shrinks(photo: bytes) -> None:
    image = decode_image(photo)
    assert fit_within(image, 320).shape == (320, 240, 3)
    assert fit_within(image, 1000) is image


def test_a_platform_photo_is_held_to_a_smaller_size_and_decoded_at_8_bits() -> None:
    """A 16-bit RGBA PNG of flat colour is a few hundred KB however large it claims to be:
    decoded as it is, one of 7,000 x 7,000 took 700 MB. Platform photos stop at 16 MP, and
    every photo is decoded straight to 8-bit BGR."""
    wide = np.zeros((100, 100, 4), np.uint16)
    wide[..., 2] = 65535
    image = decode_image(cv2.imencode(".png", wide)[1].tobytes())
    assert image.dtype == np.uint8 and image.shape == (100, 100, 3)
    assert image[0, 0].tolist() == [0, 0, 255]
    big = cv2.imencode(".png", np.zeros((4100, 4000, 4), np.uint16))[1].tobytes()
    verdict = Photo.data("front", big)
    with pytest.raises(BadImage, match="too_large"):
        verdict.read()


def test_mutated_photos_are_refused_by_reason_or_decoded_to_bgr8(photo: bytes) -> None:
    """Seeded bit flips, cuts, stray bytes and 0xFF runs in the headers of every format read:
    each photo is a BadImage with a reason from the list in docs/faces.md, or 8-bit BGR, and
    none of these 3 KB photos takes hundreds of megabytes (a Pi has 2 GB) to find out."""
    small = decode_image(photo)[200:264, 200:248]
    grey = cv2.cvtColor(small, cv2.COLOR_BGR2GRAY)
    originals = [
        cv2.imencode(ext, image)[1].tobytes()
        for ext, image in [
            (".jpg", small),
            (".png", small),
            (".png", grey.astype(np.uint16) * 257),
            (".png", cv2.cvtColor(small, cv2.COLOR_BGR2BGRA)),
            (".webp", small),
            (".bmp", grey),
        ]
    ]
    rng = random.Random(11)
    outcomes: set[str] = set()
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for _ in range(400):
        data = bytearray(rng.choice(originals))
        for _ in range(rng.randint(1, 3)):
            at = rng.randrange(min(len(data), 120))
            op = rng.randrange(4)
            if op == 0:
                data[at] ^= 1 << rng.randrange(8)
            elif op == 1:
                del data[rng.randrange(len(data)) :]
            elif op == 2:
                data[at:at] = rng.randbytes(rng.randint(1, 8))
            else:
                data[at : at + 4] = b"\xff" * 4
        try:
            image = decode_image(bytes(data))
        except BadImage as exc:
            outcomes.add(exc.reason)
            continue
        outcomes.add("decoded")
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
        assert image.flags.c_contiguous
    assert outcomes <= {"decoded", "empty", "corrupt", "truncated", "too_large", "unsupported"}
    assert {"decoded", "corrupt", "truncated"} <= outcomes
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_kb < 200_000
