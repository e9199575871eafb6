"""What one overlay costs per megapixel, stage by stage, and the PNG encoders to choose from.

    .venv/bin/python benchmarks/bench_overlay.py            # 0.1, 0.3, 0.75 and 2 megapixels

For photo-like JPEGs (the sample photos, resized) it times camcli's own stages -- the decode
(``images.read_full``), drawing (``render.overlay``), encoding (``render.encode``: fpng) and the
atomic write -- then every lossless PNG encoder it can import: Pillow's zlib at levels 6, 1 (each
strategy) and 0, fpng, and, when installed, OpenCV (``opencv-python-headless``), imagecodecs'
libpng and libspng, and libvips (``pyvips`` with ``pyvips-binary``): milliseconds per overlay
(CPU time, best of several) on one thread and wall time per overlay with two threads at once
(whether the encoder releases the GIL; this one is load-sensitive), and file size relative to
Pillow's level 1. Prints the CPU's ISA and the load.
"""

from __future__ import annotations

import io
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import load, machine  # noqa: E402

from camcli.outputs import OutputPaths, atomic_write  # noqa: E402

MEGAPIXELS = (0.1, 0.3, 0.75, 2.0)  # 0.75: the default overlay of a 12 MP photo
PILLOW = {
    "Pillow level 6 (its default)": dict(compress_level=6),
    "Pillow level 1": dict(compress_level=1),
    "Pillow level 1, Z_FILTERED": dict(compress_level=1, compress_type=zlib.Z_FILTERED),
    "Pillow level 1, Z_HUFFMAN_ONLY": dict(compress_level=1, compress_type=zlib.Z_HUFFMAN_ONLY),
    "Pillow level 1, Z_RLE": dict(compress_level=1, compress_type=zlib.Z_RLE),
    "Pillow level 0 (stored)": dict(compress_level=0),
}


def encoders() -> dict:
    """name -> function(PIL RGB image) -> PNG bytes, for every encoder importable here."""
    found = {name: (lambda p, o=options: png(p, o)) for name, options in PILLOW.items()}
    found["fpng (camcli)"] = lambda p: render.encode(p, "png")
    try:
        import cv2

        rle = [cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_STRATEGY,
               cv2.IMWRITE_PNG_STRATEGY_RLE]
        found["OpenCV level 1, RLE"] = (
            lambda p: cv2.imencode(".png", np.asarray(p)[..., ::-1], rle)[1].tobytes())
    except ImportError:
        print("(OpenCV not installed: pip install opencv-python-headless to compare it)")
    try:
        import imagecodecs

        found["imagecodecs libpng level 1"] = lambda p: imagecodecs.png_encode(
            np.asarray(p), level=1)
        found["imagecodecs libspng level 1"] = lambda p: imagecodecs.spng_encode(
            np.asarray(p), level=1)
    except ImportError:
        print("(imagecodecs not installed: pip install imagecodecs to compare it)")
    try:
        import pyvips

        def vips(p):
            a = np.asarray(p)
            image = pyvips.Image.new_from_memory(a.tobytes(), a.shape[1], a.shape[0], 3, "uchar")
            return image.pngsave_buffer(compression=1, filter="all")

        found["libvips level 1, adaptive filter"] = vips
    except (ImportError, OSError):
        print("(pyvips not installed: pip install pyvips pyvips-binary to compare it)")
    return found


def best_ms(fn, repeats: int = 3) -> float:
    """The least CPU time (this process's, all threads) of ``repeats`` calls, in ms: on a shared
    machine, wall time measures the other jobs' load as much as the code."""
    times = []
    for _ in range(repeats):
        start = time.process_time()
        fn()
        times.append(time.process_time() - start)
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
    candidates = encoders()
    print(f"overlay cost per image, CPU ms (best of 3; mean over {len(sources)} photos)\n"
          f"{machine()}; {load()}\n")
    print("| MP | decode | draw | encode (camcli) | write | total | PNG size |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    encoder_rows = {name: [] for name in candidates}
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
            reference = len(png(picture, PILLOW["Pillow level 1"]))
            for name, encode in candidates.items():
                size = len(encode(picture))
                one = best_ms(lambda p=picture, e=encode: e(p))
                with ThreadPoolExecutor(2) as pool:
                    start = time.perf_counter()
                    list(pool.map(lambda _, p=picture, e=encode: e(p), range(4)))
                    two = 1000 * (time.perf_counter() - start) / 4
                encoder_rows[name].append((megapixels, one, two, size / reference))
        decode, draw, encode, write, size = stages / len(sources)
        total = decode + draw + encode + write
        print(f"| {megapixels:g} | {decode:.1f} | {draw:.1f} | {encode:.1f} | {write:.1f} | "
              f"{total:.1f} | {size:.0f} KiB |")

    print("\nPNG encoders, ms per overlay on one thread / per overlay with two threads at once,"
          f" and size relative to Pillow's level 1 (mean over the photos); {load()}:\n")
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
