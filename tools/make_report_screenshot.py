"""Regenerate the README's screenshot of the run report (docs/report.png).

    .venv/bin/python tools/make_report_screenshot.py \
        --weights ../shared/fixtures/mobilenet_v1_0.25_224_imagenet.weights.h5

Explains the sample photos and a few variants of them (crops, flips, a grey copy), plus an
all-black image and a file that is not an image, with the smallest ImageNet MobileNet through
camcli's Python API, builds the run's report as ``camcli explain --report`` does, and
screenshots it in headless Chromium (tests/browser.py). Without ``--weights`` the model has
random weights (the page still shows its layout; its classes mean nothing). The PNG is reduced
to 256 colours to stay small.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from PIL import Image, ImageOps

ROOT = Path(__file__).resolve().parents[1]


def make_inputs(folder: Path) -> list[str]:
    """The sample photos, variants of them, a black image and a broken file, in ``folder``
    (a relative path, so the cards show short names)."""
    folder.mkdir(parents=True, exist_ok=True)
    for photo in sorted((ROOT / "sample_images").iterdir()):
        if photo.suffix.lower() not in (".png", ".jpg", ".jpeg"):
            continue
        with Image.open(photo) as image:
            image = image.convert("RGB")
            w, h = image.size
            variants = {
                "": image,
                "_left": image.crop((0, 0, w * 2 // 3, h)),
                "_right": image.crop((w // 3, 0, w, h)),
                "_mirror": ImageOps.mirror(image),
                "_grey": ImageOps.grayscale(image).convert("RGB"),
            }
            for suffix, variant in variants.items():
                variant.thumbnail((640, 640))
                variant.save(folder / f"{photo.stem}{suffix}.jpg", quality=90)
    Image.new("RGB", (320, 240)).save(folder / "black.png")
    (folder / "notes.jpg").write_bytes(b"this is not a JPEG")
    return [folder.as_posix()]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", default="none", help="mobilenet_v1_0.25_224 weights file")
    parser.add_argument("--model", default="mobilenet_v1_0.25_224")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "report.png")
    parser.add_argument("--size", default="1280x1000", help="browser window, WIDTHxHEIGHT")
    args = parser.parse_args()
    args.out = args.out.resolve()
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT / "tests"))
    from browser import Browser, find_chromium

    from camcli.api import Explainer, OutputOptions
    from camcli.report import RunRecorder

    width, height = (int(v) for v in args.size.split("x"))
    with tempfile.TemporaryDirectory() as temporary:
        work = Path(temporary)
        os.chdir(work)  # records name their inputs relative to the current folder
        inputs = make_inputs(Path("photos"))
        explainer = Explainer(model=args.model, weights=args.weights)
        recorder = RunRecorder(work / "out")
        for result in recorder.watch(explainer.run(inputs, OutputOptions(out_dir=work / "out"))):
            print(result.path, "ok" if result.ok else f"failed: {result.error}")
        built = recorder.finish(work / "report", title="camcli report — sample_images/")
        with Browser(find_chromium(), work / "profile", width, height) as browser:
            browser.open(built.index.as_uri(), "window.__camcliReady")
            browser.evaluate("Promise.all([...document.images].filter(i=>i.loading!=='lazy'||"
                             "i.getBoundingClientRect().top<innerHeight).map(i=>i.decode()"
                             ".catch(()=>null)))")
            shot = browser.screenshot(work / "shot.png")
            if browser.errors:
                raise SystemExit(f"the page logged errors: {browser.errors}")
        with Image.open(shot) as image:
            small = image.convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            small.save(args.out, optimize=True)
    print(f"{args.out} ({args.out.stat().st_size / 1e3:.0f} kB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
