"""Stage the demo site's faces from ../shared/faces (links only; no photo is copied).

- var/demo/enrol/E-00NN/: two photos of each of 12 people, enrolled under neutral elder ids
- var/demo/counter/: what the counter camera replays: another photo of each enrolled person,
  photos of people who are not enrolled, and the printed-photo and phone-screen attacks.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ENROLLED = 12
STRANGERS = 4
COUNTER_PHOTO = 3  # the fourth photo of each enrolled person: neither of the two enrolled
# Adam_Sandler_0004 has a second face beside his (the counter would say multiple_faces, rightly)
COUNTER_PHOTO_OF = {"Adam_Sandler": 2}


def link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.is_symlink() or dst.exists():
        dst.unlink()
    dst.symlink_to(src.resolve())


def main() -> int:
    shared = Path(os.environ.get("GATEWAY_SHARED", "../shared"))
    lfw = shared / "faces" / "lfw-dev" / "images"
    demo = Path(sys.argv[1] if len(sys.argv) > 1 else "var/demo")
    if not lfw.is_dir():
        print(f"no face photos at {lfw}; the demo runs without a counter camera", file=sys.stderr)
        return 1
    people = sorted(p for p in lfw.iterdir() if len(list(p.glob("*.jpg"))) >= 4)
    counter = demo / "counter"
    for n, person in enumerate(people[:ENROLLED], start=1):
        photos = sorted(person.glob("*.jpg"))
        for photo in photos[:2]:
            link(photo, demo / "enrol" / f"E-{n:04d}" / photo.name.split("_")[-1])
        shown = photos[COUNTER_PHOTO_OF.get(person.name, COUNTER_PHOTO)]
        link(shown, counter / f"{2 * n:03d}-E-{n:04d}.jpg")
    for k, person in enumerate(people[ENROLLED : ENROLLED + STRANGERS], start=1):
        link(sorted(person.glob("*.jpg"))[0], counter / f"{2 * k + 1:03d}-stranger.jpg")
    for name in ("image_F1.jpg", "image_F2.jpg"):
        link(shared / "faces" / "antispoof" / name, counter / f"099-attack-{name}")
    print(f"staged {ENROLLED} elders and {STRANGERS} strangers under {demo}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
