"""Does `camcli explain` keep memory flat as the number of inputs grows?

    .venv/bin/python benchmarks/bench_memory.py              # 200 vs 2,000 images
    .venv/bin/python benchmarks/bench_memory.py --model resnet50 --small 100 --large 1000
    .venv/bin/python benchmarks/bench_memory.py --phone --small 40 --large 200   # 12 MP JPEGs

Runs the real CLI on N and 10·N small generated images (random weights, so nothing is
downloaded) and prints each run's peak RSS, measured for that child process alone, and
their ratio. The goal is a ratio ≤ 1.2: every queue in the pipeline is bounded, so memory should
depend on the batch size and image sizes, not on how many images there are. ``--phone`` uses
12-megapixel JPEGs (copies of one upscaled sample photo), whose overlays' pictures are decoded
ahead of the model and queued (bounded), to show that the queues stay bounded for them too.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
from _measure import load, machine, run_measured
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def make_phone_photos(folder: Path, count: int) -> None:
    folder.mkdir(parents=True)
    with Image.open(ROOT / "sample_images" / "rocket.jpg") as photo:
        photo.convert("RGB").resize((4032, 3024), Image.Resampling.BICUBIC).save(
            folder / "photo0000.jpg", quality=92)
    for i in range(1, count):
        shutil.copyfile(folder / "photo0000.jpg", folder / f"photo{i:04d}.jpg")


def make_images(folder: Path, count: int) -> None:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        height, width = rng.integers(48, 160, size=2)
        pixels = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"img{i:05d}.jpg", quality=85)


def run(folder: Path, model: str) -> tuple[float, float]:
    """(seconds, peak RSS in MiB) of one `camcli explain` over ``folder``."""
    command = [sys.executable, "-m", "camcli.cli", "explain", str(folder), "--model", model,
               "--weights", "none", "-q"]
    code, seconds, peak, errors = run_measured(command)
    if code != 0:
        raise SystemExit(f"camcli failed: {errors[-500:]}")
    return seconds, peak / 2**20


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="mobilenet_v1_0.25_128")
    parser.add_argument("--small", type=int, default=200)
    parser.add_argument("--large", type=int, default=2000)
    parser.add_argument("--phone", action="store_true", help="12-megapixel JPEGs")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    print(f"{machine()}; {load()}")
    work = Path(tempfile.mkdtemp(prefix="camcli-memory-"))
    try:
        rows = []
        for count in (args.small, args.large):
            folder = work / str(count)
            (make_phone_photos if args.phone else make_images)(folder, count)
            seconds, rss = run(folder, args.model)
            rows.append((count, seconds, rss))
        print(f"| images | wall (s) | peak RSS (MiB) |   model {args.model}, weights none")
        print("| --- | --- | --- |")
        for count, seconds, rss in rows:
            print(f"| {count} | {seconds:.1f} | {rss:.0f} |")
        ratio = rows[1][2] / rows[0][2]
        verdict = "met" if ratio <= 1.2 else "MISSED"
        print(f"\npeak RSS ratio {args.large} / {args.small} images: {ratio:.3f} "
              f"(goal ≤ 1.2: {verdict})")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
