"""Real models and real photos from ../shared, loaded once per test session."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from gateway.vision.analyze import Analyzer, AnalyzerSettings
from gateway.vision.config import VisionSection
from gateway.vision.evaluate import FaceSet, embed_images, list_identities
from gateway.vision.models import Manifest, Models, load_manifest

REPO = Path(__file__).resolve().parents[2]
ERRATA = REPO / "eval" / "lfw-dev-errata.txt"


@pytest.fixture(scope="session")
def models_dir(shared_dir: Path) -> Path:
    return Path(os.environ.get("GATEWAY_MODELS_DIR") or shared_dir / "models")


@pytest.fixture(scope="session")
def faces_dir(shared_dir: Path) -> Path:
    return shared_dir / "faces"


@pytest.fixture(scope="session")
def manifest() -> Manifest:
    return load_manifest()


@pytest.fixture(scope="session")
def models(models_dir: Path, manifest: Manifest) -> Models:
    return Models.open(models_dir, manifest, threads=2)


@pytest.fixture(scope="session")
def vision_cfg(models_dir: Path) -> VisionSection:
    return VisionSection(models_dir=models_dir)


@pytest.fixture(scope="session")
def analyzer(models: Models, vision_cfg: VisionSection) -> Analyzer:
    return Analyzer(models, AnalyzerSettings.from_config(vision_cfg))


@pytest.fixture(scope="session")
def lfw_faces(
    faces_dir: Path, models_dir: Path, manifest: Manifest, vision_cfg: VisionSection
) -> FaceSet:
    """Every lfw-dev photo embedded once (about a minute on two cores)."""
    items = list_identities(faces_dir / "lfw-dev")
    return embed_images(
        [p for p, _ in items],
        [label for _, label in items],
        models_dir=models_dir,
        manifest=manifest,
        settings=AnalyzerSettings.from_config(vision_cfg),
        jobs=2,
    )


@pytest.fixture
def staged(tmp_path: Path, models_dir: Path, manifest: Manifest) -> Path:
    """A copy of the model files that tests may damage."""
    folder = tmp_path / "models"
    folder.mkdir()
    for _, spec in manifest.specs():
        shutil.copyfile(models_dir / spec.file, folder / spec.file)
    return folder
