"""Errors of the face stage that callers are expected to handle by type."""


class VisionError(Exception):
    """Base class: something in the face stage cannot be used as configured."""


class ModelError(VisionError):
    """A model file is missing, altered, or not what the manifest declares."""


class BadImage(VisionError):
    """An image or frame that cannot be used; ``reason`` is a short machine-readable word."""

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


class GalleryError(VisionError):
    """The face gallery cannot be opened or written (missing key, wrong key, bad file)."""
