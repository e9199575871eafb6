"""Regenerate the README's method gallery: one overlay per method for two sample photos.

    .venv/bin/python tools/make_gallery.py

Uses the smallest ImageNet MobileNet (``mobilenet_v1_0.25_224``, whose ImageNet weights ship in
the package, so this runs offline) through camcli's own Python API, explaining each photo's
top-1 class, and writes small JPEGs to ``docs/gallery/`` so the repository stays light.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
PHOTOS = ("chelsea.png", "coffee.png")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--weights", default="imagenet", help="imagenet (bundled), none or a weights file"
    )
    parser.add_argument("--model", default="mobilenet_v1_0.25_224")
    parser.add_argument("--width", type=int, default=240, help="gallery image width")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from camcli.api import Explainer
    from camcli.methods import METHODS

    out = ROOT / "docs" / "gallery"
    out.mkdir(parents=True, exist_ok=True)
    inputs = [str(ROOT / "sample_images" / name) for name in PHOTOS]
    for name in METHODS:
        explainer = Explainer(model=args.model, weights=args.weights, method=name)
        with tempfile.TemporaryDirectory() as folder:
            for result in explainer.run(inputs, _options(folder)):
                overlay = Image.open(result.files[0]).convert("RGB")
                height = round(overlay.height * args.width / overlay.width)
                small = overlay.resize((args.width, height), Image.Resampling.LANCZOS)
                target = out / f"{Path(result.path).stem}_{name.replace('+', 'p')}.jpg"
                small.save(target, quality=85)
                label = result.record["explanations"][0]["label"]
                print(f"{target.relative_to(ROOT)}  ({name}, {label})")
    return 0


def _options(folder: str):
    from camcli.api import OutputOptions

    return OutputOptions(out_dir=Path(folder))


if __name__ == "__main__":
    sys.exit(main())
