"""What one overlay costs at typical photo sizes, stage by stage, and the PNG encoder choices.

    .venv/bin/python benchmarks/bench_overlay.py            # 0.1, 0.3, 1 and 2 megapixels

For photo-like JPEGs (the sample photos, resized) it times camcli's own stages -- the
full-resolution decode (``images.read_full``), drawing (``render.overlay``), encoding
(``render.encode``) and the atomic write -- then Pillow's PNG encoder at zlib level 1 with each
zlib strategy (``compress_type``), with level 6 and level 0 for reference: milliseconds per
overlay (best of several) and file size relative to level 1 with the default strategy (camcli's
encoder before this benchmark). It also runs each encoder on two threads at once, to show whether
Pillow releases the GIL while it encodes (then the writer threads encode in parallel).
"""

from __future__ import annotations

import io
import os
import sys
import tempfile
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from camcli import images, render  # noqa: E402
from camcli.outputs import OutputPaths, atomic_write  # noqa: E402

MEGAPIXELS = (0.1, 0.3, 1.0, 2.0)
ENCODERS = {
    "level 6 (Pillow's default)": dict(compress_level=6),
    "level 1": dict(compress_level=1),
    "level 1, Z_FILTERED": dict(compress_level=1, compress_type=zlib.Z_FILTERED),
    "level 1, Z_HUFFMAN_ONLY": dict(compress_level=1, compress_type=zlib.Z_HUFFMAN_ONLY),
    "level 1, Z_RLE": dict(compress_level=1, compress_type=zlib.Z_RLE),
    "level 0 (stored)": dict(compress_level=0),
}


def best_ms(fn, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * min(times)


def photos() -> list[Image.Image]:
    return [Image.open(p).convert("RGB") for p in sorted((ROOT / "sample_images").glob("*.*"))
            if p.suffix.lower() in (".png", ".jpg")]


def jpeg_at(photo: Image.Image, megapixels: float) -> bytes:
    scale = (megapixels * 1e6 / (photo.width * photo.height)) ** 0.5
    resized = photo.resize((round(photo.width * scale), round(photo.height * scale)),
                           Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    resized.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def png(picture: Image.Image, options: dict) -> bytes:
    buffer = io.BytesIO()
    picture.save(buffer, "PNG", **options)
    return buffer.getvalue()


def main() -> int:
    cam = np.random.default_rng(0).random((7, 7)).astype(np.float32)
    sources = photos()
    folder = Path(tempfile.mkdtemp(prefix="camcli-overlay-"))
    print(f"overlay cost per image, ms (best of 3; mean over {len(sources)} photos); "
          f"{os.cpu_count()} CPUs\n")
    print("| MP | decode | draw | encode (camcli) | write | total | PNG size |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    encoder_rows = {name: [] for name in ENCODERS}
    for megapixels in MEGAPIXELS:
        stages = np.zeros(5)
        for photo in sources:
            data = jpeg_at(photo, megapixels)
            full = images.read_full(data)
            picture = render.overlay(full, cam)
            encoded = render.encode(picture)
            target = OutputPaths.for_input(folder / "x.jpg", None).overlay(0, "x", False, "png")
            stages += [best_ms(lambda d=data: images.read_full(d)),
                       best_ms(lambda f=full: render.overlay(f, cam)),
                       best_ms(lambda p=picture: render.encode(p)),
                       best_ms(lambda e=encoded, t=target: atomic_write(t, e)),
                       len(encoded) / 1024]
            for name, options in ENCODERS.items():
                size = len(png(picture, options))
                reference = len(png(picture, ENCODERS["level 1"]))
                one = best_ms(lambda p=picture, o=options: png(p, o))
                with ThreadPoolExecutor(2) as pool:
                    start = time.perf_counter()
                    list(pool.map(lambda _, p=picture, o=options: png(p, o), range(4)))
                    two = 1000 * (time.perf_counter() - start) / 4
                encoder_rows[name].append((megapixels, one, two, size / reference))
        decode, draw, encode, write, size = stages / len(sources)
        total = decode + draw + encode + write
        print(f"| {megapixels:g} | {decode:.1f} | {draw:.1f} | {encode:.1f} | {write:.1f} | "
              f"{total:.1f} | {size:.0f} KiB |")

    print("\nPNG encoders, ms per overlay on one thread / per overlay with two threads at once,"
          " and size relative to level 1 (mean over the photos):\n")
    print("| encoder | " + " | ".join(f"{mp:g} MP" for mp in MEGAPIXELS) + " | size |")
    print("| --- | " + " | ".join("---" for _ in MEGAPIXELS) + " | --- |")
    for name, rows in encoder_rows.items():
        cells = []
        for megapixels in MEGAPIXELS:
            picked = [r for r in rows if r[0] == megapixels]
            cells.append(f"{np.mean([r[1] for r in picked]):.1f} / "
                         f"{np.mean([r[2] for r in picked]):.1f}")
        ratio = np.mean([r[3] for r in rows])
        print(f"| {name} | " + " | ".join(cells) + f" | {ratio:.2f} |")
    for leftover in folder.iterdir():
        leftover.unlink()
    folder.rmdir()
    return 0


if __name__ == "__main__":
    sys.exit(main())
