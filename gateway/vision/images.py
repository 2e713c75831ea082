"""Photos and frames in, 8-bit BGR out, or a BadImage saying why not.

Enrolment photos come from phones, scanners and the platform; camera frames from drivers that
occasionally hand over nothing. Every odd case becomes either a usable 8-bit BGR image or a
``BadImage`` with a short reason that is counted, so one bad input never stops the pipeline.
Image dimensions are read from the header before decoding, so a 100-megapixel photo is refused
without first allocating hundreds of megabytes on a 2 GB Pi. Only the formats whose header is
read here are decoded (JPEG, PNG, WebP, BMP); anything else OpenCV could decode (TIFF, GIF,
JPEG 2000, ...) is ``unsupported``, since its size would only be known after decoding it.
"""

from __future__ import annotations

import os
import re
import stat
import struct
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

from gateway.vision.errors import BadImage

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp"})
MAX_FILE_BYTES = 40 * 1024 * 1024
MAX_PIXELS = 50_000_000
REQUEST_MAX_PIXELS = 16_000_000  # a platform photo: asked for 640-1280 px, a phone's 12 MP fit
MAX_SIDE = 1 << 20  # OpenCV's own limit on either side (CV_IO_MAX_IMAGE_WIDTH / HEIGHT)
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def is_system_folder(name: str) -> bool:
    """Hidden and system folders hold no one's photos: a USB stick formatted on Windows has
    "System Volume Information", a photo viewer leaves ".thumbnails"."""
    return name.startswith((".", "$")) or name == "System Volume Information"


# A stuffed 0xFF00 or a restart marker inside a scan's coded data is no marker; anything else
# after 0xFF is (0xFF itself: fill before one).
_IN_SCAN = re.compile(rb"\xff[^\x00\xd0-\xd7]")
_NOT_FILL = re.compile(rb"[^\xff]")
# real photos have a few dozen segments and scans; a file with far more is built to be slow
MOST_MARKERS = 10_000


class TooManyMarkers(ValueError):
    """A JPEG walked past MOST_MARKERS markers: not a photo, and each costs a step."""


def jpeg_markers(data: bytes) -> Iterator[tuple[int, int]]:
    """(marker, offset) of each segment of the main image, in order, walked as libjpeg walks
    them: stray and fill bytes between segments skipped (libjpeg skips those with a warning),
    a segment passed by its length (so an EXIF thumbnail, a JPEG of its own inside APP1, is
    not taken for the image), a scan's coded data passed up to the next marker. Ends at the
    end-of-image marker, or where the file ends before it. The bytes are searched in C, not
    stepped through: a 40 MB file of fill bytes takes milliseconds. Raises TooManyMarkers."""
    i, scan = 2, False
    for _ in range(MOST_MARKERS):
        if scan:
            found = _IN_SCAN.search(data, i)
            if found is None:
                return
            i = found.start()
        i = data.find(b"\xff", i)  # stray bytes before it skipped
        after = _NOT_FILL.search(data, i + 1) if i >= 0 else None
        if after is None:
            return
        at, marker = after.start() - 1, data[after.start()]
        i = at + 2
        if marker in (0xD8, 0x01, 0x00) or 0xD0 <= marker <= 0xD7:
            continue  # no segment: inside a scan, its coded data goes on
        yield marker, at
        if marker == 0xD9 or at + 4 > len(data):
            return
        (length,) = struct.unpack(">H", data[at + 2 : at + 4])
        i = at + 2 + max(length, 2)
        scan = marker == 0xDA
    raise TooManyMarkers(f"more than {MOST_MARKERS} markers")


def jpeg_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from the first frame header, or None if there is none before the first
    scan: a size this cannot find, libjpeg cannot decode either."""
    for marker, i in jpeg_markers(data):
        if marker in (0xD9, 0xDA) or i + 9 > len(data):
            return None
        if marker in _JPEG_SOF:
            height, width = struct.unpack(">HH", data[i + 5 : i + 9])
            return width, height
    return None


def jpeg_complete(data: bytes) -> bool:
    """Whether the image reaches its end-of-image marker. Whatever follows it is no part of
    the image: a phone's "motion photo" keeps a whole MP4 there, whose bytes hold every
    marker by chance, so the last markers of the file say nothing."""
    return any(marker == 0xD9 for marker, _ in jpeg_markers(data))


def webp_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) of a RIFF WebP from its first chunk: lossy, lossless or extended."""
    chunk = data[12:16]
    if chunk == b"VP8 " and len(data) >= 30 and data[23:26] == b"\x9d\x01\x2a":
        width, height = struct.unpack("<HH", data[26:30])
        return width & 0x3FFF, height & 0x3FFF
    if chunk == b"VP8L" and len(data) >= 25 and data[20] == 0x2F:
        (bits,) = struct.unpack("<I", data[21:25])
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X" and len(data) >= 30:
        width = int.from_bytes(data[24:27], "little") + 1
        height = int.from_bytes(data[27:30], "little") + 1
        return width, height
    return None


def bmp_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) of a BMP; a negative height only means stored top-down."""
    if len(data) < 26:
        return None
    (header,) = struct.unpack("<I", data[14:18])
    if header == 12:  # OS/2 BITMAPCOREHEADER
        width, height = struct.unpack("<HH", data[18:22])  # unsigned, as decoders read them
    else:
        width, height = struct.unpack("<ii", data[18:26])
    return abs(width), abs(height)


def png_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from the IHDR chunk, which must come first."""
    if data[12:16] != b"IHDR" or len(data) < 24:
        return None
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def png_overrun(data: bytes) -> bool:
    """Whether a PNG chunk before IEND claims more bytes than the file holds. OpenCV's reader
    allocates a chunk's claimed length before it reads it: a photo of a few hundred bytes
    whose IDAT says 2 GiB would take 2 GiB, all of a Pi's memory, and the gateway with it."""
    i = 8
    while i + 8 <= len(data):
        (length,) = struct.unpack(">I", data[i : i + 4])
        if i + 12 + length > len(data):
            return True
        if data[i + 4 : i + 8] == b"IEND":
            return False
        i += 12 + length
    return False


def image_format(data: bytes) -> str | None:
    """The format by its signature, among those whose size can be read before decoding."""
    if data[:2] == b"\xff\xd8":
        return "jpeg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    if data[:2] == b"BM":
        return "bmp"
    return None


_SIZE = {"jpeg": jpeg_size, "png": png_size, "webp": webp_size, "bmp": bmp_size}


def header_size(data: bytes) -> tuple[int, int] | None:
    """Dimensions of a JPEG, PNG, WebP or BMP without decoding it; None for another format or
    a header that cannot be read."""
    kind = image_format(data)
    return None if kind is None else _SIZE[kind](data)


def as_bgr8(image: np.ndarray | None) -> np.ndarray:
    """Any frame OpenCV may produce (grey, BGRA, 16-bit, float) as contiguous 8-bit BGR."""
    if image is None or image.size == 0 or image.ndim not in (2, 3) or min(image.shape[:2]) < 1:
        raise BadImage("empty", "zero-size or missing frame")
    if image.dtype == np.uint16:
        image = (image >> 8).astype(np.uint8)
    elif image.dtype in (np.float32, np.float64):
        image = np.clip(image * 255.0, 0, 255).astype(np.uint8)
    elif image.dtype != np.uint8:
        raise BadImage("unsupported", f"pixel type {image.dtype}")
    channels = 1 if image.ndim == 2 else image.shape[2]
    if channels == 1:
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    elif channels == 4:
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    elif channels != 3:
        raise BadImage("unsupported", f"{channels} channels")
    return np.ascontiguousarray(image)


def decode_image(
    data: bytes, max_bytes: int = MAX_FILE_BYTES, max_pixels: int = MAX_PIXELS
) -> np.ndarray:
    if not data:
        raise BadImage("empty", "no bytes")
    if len(data) > max_bytes:
        raise BadImage("too_large", f"{len(data)} bytes (limit {max_bytes})")
    # Another format's size would only be known by decoding it: too late for a bomb.
    kind = image_format(data)
    if kind is None:
        raise BadImage("unsupported", "not a JPEG, PNG, WebP or BMP photo")
    try:
        size = header_size(data)
        cut_short = kind == "jpeg" and not jpeg_complete(data)
    except TooManyMarkers as exc:
        raise BadImage("corrupt", f"not a photo: {exc}") from None
    if size is None:
        raise BadImage("corrupt", "no image size in its header")
    if size[0] * size[1] > max_pixels or max(size) > MAX_SIDE:
        raise BadImage(
            "too_large",
            f"{size[0]}x{size[1]} pixels (limit {max_pixels}, at most {MAX_SIDE} a side)",
        )
    if cut_short:
        raise BadImage("truncated", "JPEG ends before its end-of-image marker")
    if kind == "png" and png_overrun(data):
        raise BadImage("truncated", "a PNG chunk runs past the end of the file")
    buffer = np.frombuffer(data, dtype=np.uint8)
    # Straight to 8-bit BGR, 3 bytes a pixel: a 16-bit RGBA PNG decoded as it is takes 8, and
    # its conversions more again (a small file of 50 MP could take a Pi's memory). Like
    # every mode but IMREAD_UNCHANGED it applies the EXIF orientation: phone photos are
    # stored sideways more often than not.
    try:
        image = cv2.imdecode(buffer, cv2.IMREAD_COLOR)
    except cv2.error:  # a header OpenCV's decoder refuses outright rather than returning None
        image = None
    if image is None:
        raise BadImage("corrupt", "not a decodable image")
    if image.shape[0] * image.shape[1] > max_pixels:
        raise BadImage("too_large", f"{image.shape[1]}x{image.shape[0]} pixels")
    return as_bgr8(image)


def read_image(path: Path, max_bytes: int = MAX_FILE_BYTES) -> np.ndarray:
    """A photo file. Only a regular file, and never more than ``max_bytes`` of it: a FIFO
    named like a photo would block the reader for good, and a link to /dev/zero would read
    until memory runs out (their size says 0 either way). Opened without blocking, checked
    on the descriptor, read with a bound."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        with os.fdopen(fd, "rb") as fh:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise BadImage("unreadable", "not a regular file")
            if info.st_size > max_bytes:
                raise BadImage("too_large", f"{info.st_size} bytes (limit {max_bytes})")
            data = fh.read(max_bytes + 1)  # one byte over: a file grown since is refused
    except OSError as exc:
        raise BadImage("unreadable", exc.strerror or str(exc)) from None
    return decode_image(data, max_bytes)


def fit_within(image: np.ndarray, max_side: int) -> np.ndarray:
    """Shrink (never enlarge) so the longer side is at most ``max_side``, with area filtering."""
    h, w = image.shape[:2]
    if max(h, w) <= max_side:
        return image
    factor = max_side / max(h, w)
    size = (max(1, round(w * factor)), max(1, round(h * factor)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)
