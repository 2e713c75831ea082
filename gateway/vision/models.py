"""The model manifest: what each model is, its exact bytes, and how to feed it.

Nothing runs a model file that does not match its manifest entry (size and sha256): a truncated
download or a swapped file would otherwise give plausible-looking but wrong identities.
``fetch`` installs files from a directory or a URL with the same check, writing to a temporary
name and renaming only once the hash is right, so a failed download never leaves a bad file.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import logging
import os
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import IO, Literal
from urllib.parse import urlsplit

import cv2
import numpy as np
from pydantic import Field

from gateway.configfile import ConfigFileError, Strict, load_toml_model
from gateway.vision.errors import ModelError
from gateway.vision.runtime import Session

log = logging.getLogger(__name__)

ENV_MODELS_DIR = "GATEWAY_MODELS_DIR"
CHUNK = 1 << 16
ROLES = ("detector", "recognizer", "antispoof_v2", "antispoof_v1se")


class ModelSpec(Strict):
    id: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    kind: Literal["retinaface", "arcface112", "minifasnet"]
    file: str = Field(pattern=r"^[A-Za-z0-9_.-]+\.onnx$")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    bytes: int = Field(gt=0)
    licence: str
    source: str
    input_size: tuple[int, int] = Field(description="W, H; 0 = any size.")
    layout: Literal["NCHW"]
    colour: Literal["BGR", "RGB"]
    scale: float = Field(gt=0)
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    output: str
    crop_scale: float | None = Field(None, gt=1, description="MiniFASNet: box expansion.")

    def tensor(self, image: np.ndarray) -> np.ndarray:
        """A BGR uint8 (H, W, 3) image as the model's (1, 3, H, W) float32 input:
        (pixel * scale - mean) / std per channel, in the model's colour order."""
        params = _blob_params(self.colour, self.scale, self.mean, self.std)
        blob: np.ndarray = cv2.dnn.blobFromImageWithParams(image, params)
        return blob

    @property
    def model_id(self) -> str:
        """The id decisions carry: name plus hash prefix, so a retrained file is told apart."""
        return f"{self.id}@{self.sha256[:8]}"


class Manifest(Strict):
    detector: ModelSpec
    recognizer: ModelSpec
    antispoof_v2: ModelSpec
    antispoof_v1se: ModelSpec

    def specs(self) -> Iterator[tuple[str, ModelSpec]]:
        for role in ROLES:
            yield role, getattr(self, role)


@lru_cache(maxsize=8)
def _blob_params(
    colour: str, scale: float, mean: tuple[float, float, float], std: tuple[float, float, float]
) -> cv2.dnn.Image2BlobParams:
    """OpenCV computes (pixel - m) * f in one optimised pass (5-8x faster than numpy here);
    m = mean / scale and f = scale / std give the manifest's (pixel * scale - mean) / std."""
    params = cv2.dnn.Image2BlobParams()
    params.mean = tuple(m / scale for m in mean)
    params.scalefactor = tuple(scale / s for s in std)
    params.swapRB = colour == "RGB"
    params.ddepth = cv2.CV_32F
    return params


def default_manifest_path() -> Path:
    return Path(__file__).resolve().parents[2] / "models" / "manifest.toml"


def resolve_models_dir(configured: Path | None) -> Path:
    """Config first, then $GATEWAY_MODELS_DIR, then the directory holding the manifest."""
    if configured is not None:
        return configured
    env = os.environ.get(ENV_MODELS_DIR)
    if env:
        return Path(env)
    return default_manifest_path().parent


def load_manifest(path: Path | None = None) -> Manifest:
    try:
        return load_toml_model(path or default_manifest_path(), Manifest)
    except ConfigFileError as exc:
        raise ModelError(f"model manifest is not usable:\n{exc}") from None


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class ModelCheck:
    role: str
    spec: ModelSpec
    path: Path
    problem: str | None

    @property
    def ok(self) -> bool:
        return self.problem is None


def check_file(path: Path, spec: ModelSpec) -> str | None:
    """Why this file is not the manifest's model, or None when it is."""
    if not path.is_file():
        return "missing"
    size = path.stat().st_size
    if size != spec.bytes:
        return f"size {size} bytes, manifest says {spec.bytes}"
    actual = sha256_of(path)
    if actual != spec.sha256:
        return f"sha256 {actual[:16]}..., manifest says {spec.sha256[:16]}..."
    return None


def verify(models_dir: Path, manifest: Manifest) -> list[ModelCheck]:
    return [
        ModelCheck(role, spec, models_dir / spec.file, check_file(models_dir / spec.file, spec))
        for role, spec in manifest.specs()
    ]


def require_verified(models_dir: Path, manifest: Manifest) -> None:
    bad = [c for c in verify(models_dir, manifest) if not c.ok]
    if bad:
        lines = "\n".join(f"  {c.role}: {c.path}: {c.problem}" for c in bad)
        raise ModelError(
            f"model files in {models_dir} do not match the manifest:\n{lines}\n"
            "install them with `gateway models fetch --from DIR|URL`"
        )


@dataclass(frozen=True)
class FetchResult:
    role: str
    file: str
    action: Literal["present", "installed", "failed"]
    detail: str = ""


class _CannotWrite(Exception):
    """The models directory, not the source, failed (a full disk, a read-only mount)."""


def _copy_checked(reader: IO[bytes], target: Path, spec: ModelSpec) -> str | None:
    """Stream into ``target``'s temporary sibling; rename only if size and hash match."""
    partial = target.with_name(f".{target.name}.partial")
    digest = hashlib.sha256()
    size = 0
    try:
        with _writing(partial):
            partial.unlink(missing_ok=True)  # left by an interrupted fetch, or a planted link
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
            out = os.fdopen(os.open(partial, flags, 0o644), "wb")  # the service reads them
        with out:
            while chunk := reader.read(CHUNK):
                size += len(chunk)
                if size > spec.bytes:
                    return f"more than the {spec.bytes} bytes the manifest says"
                digest.update(chunk)
                with _writing(partial):
                    out.write(chunk)
            with _writing(partial):
                out.flush()
                os.fsync(out.fileno())
        if size != spec.bytes:
            return f"got {size} bytes, manifest says {spec.bytes}"
        if digest.hexdigest() != spec.sha256:
            return f"sha256 {digest.hexdigest()[:16]}..., manifest says {spec.sha256[:16]}..."
        with _writing(target):
            os.replace(partial, target)
        return None
    finally:
        partial.unlink(missing_ok=True)


@contextlib.contextmanager
def _writing(path: Path) -> Iterator[None]:
    try:
        yield
    except OSError as exc:
        raise _CannotWrite(f"cannot write {path}: {exc.strerror or exc}") from None


def _open_source(source: str, file: str, timeout_s: float) -> IO[bytes]:
    if urlsplit(source).scheme in ("http", "https"):
        url = f"{source.rstrip('/')}/{file}"
        response: IO[bytes] = urllib.request.urlopen(url, timeout=timeout_s)
        return response
    return (Path(source) / file).open("rb")


def fetch(
    source: str, models_dir: Path, manifest: Manifest, timeout_s: float = 60.0
) -> list[FetchResult]:
    """Install every model not already present and intact, from a directory or a base URL."""
    models_dir.mkdir(parents=True, exist_ok=True)
    results = []
    for role, spec in manifest.specs():
        target = models_dir / spec.file
        if check_file(target, spec) is None:
            results.append(FetchResult(role, spec.file, "present"))
            continue
        try:
            with _open_source(source, spec.file, timeout_s) as reader:
                problem = _copy_checked(reader, target, spec)
        except _CannotWrite as exc:
            problem = str(exc)
        except (OSError, urllib.error.URLError, http.client.HTTPException) as exc:
            # HTTPException: a download cut short mid-chunk, or no web server at that port
            problem = f"cannot read from {source}: {type(exc).__name__}: {exc}"
        if problem is None:
            log.info("installed model %s (%s)", spec.model_id, spec.file)
            results.append(FetchResult(role, spec.file, "installed"))
        else:
            results.append(FetchResult(role, spec.file, "failed", problem))
    return results


@dataclass
class Models:
    """Verified, loaded and warmed-up sessions for every model in the manifest."""

    manifest: Manifest
    detector: Session
    recognizer: Session
    antispoof_v2: Session
    antispoof_v1se: Session

    @classmethod
    def open(cls, models_dir: Path, manifest: Manifest, threads: int) -> Models:
        require_verified(models_dir, manifest)
        sessions = {
            role: Session(models_dir / spec.file, threads) for role, spec in manifest.specs()
        }
        models = cls(manifest=manifest, **sessions)
        models.warm_up()
        return models

    def sessions(self) -> dict[str, Session]:
        return {role: getattr(self, role) for role in ROLES}

    def warm_up(self) -> None:
        """One inference each, so the first elder does not pay for lazy allocations."""
        for role, spec in self.manifest.specs():
            w, h = spec.input_size
            shape = (1, 3, h or 256, w or 320)
            self.sessions()[role].run(np.zeros(shape, dtype=np.float32))
        for session in self.sessions().values():
            session.calls = 0
            session.busy_s = 0.0

    def model_ids(self) -> dict[str, str]:
        return {role: spec.model_id for role, spec in self.manifest.specs()}
