"""Colouring a heatmap and blending it over the photo.

Colormaps are 256-entry lookup tables shipped as data (``data/colormaps.json``), applied as an
image palette; resizing and blending run inside Pillow's C code, so drawing a full-resolution
overlay costs a few milliseconds plus the encoder's time.
"""

from __future__ import annotations

import functools
import io
import json
import zlib
from importlib import resources

import numpy as np
from PIL import Image

COLORMAPS = ("jet", "turbo", "viridis", "inferno", "gray")
OVERLAY_FORMATS = ("png", "jpg", "webp")
#: PNG overlays are written by fpng (richgel999's fpng through the ``fpng`` wheel): lossless,
#: ~15x faster than Pillow's fastest setting (below) for ~30 % larger files; the encoder was
#: most of an overlay's cost, so this is the choice (README, Performance; bench_overlay.py).
#: Pillow's best setting, kept for the benchmark's comparison: zlib level 1, run-length strategy.
PILLOW_PNG_OPTIONS = {"compress_level": 1, "compress_type": zlib.Z_RLE}
JPEG_QUALITY = 90
#: The overlay's longer side unless ``--max-overlay-side`` says otherwise (0: full resolution).
#: An overlay is for looking at: 1,000 pixels fill a laptop screen's image view, and a 12 MP
#: photo's overlay is then ~1 MB of PNG instead of 6-14 MB. 1,000 rather than 1,024: the usual
#: 12 MP photo (4000-4080 pixels wide) then decodes at 1/4 DCT scale (1008 wide) instead of 1/2,
#: 30 % less decoding (README, Performance; benchmarks/bench_photos.py).
DEFAULT_MAX_OVERLAY_SIDE = 1000  # images.DECODE_SIDE: the frame the model's view is cut from
WEBP_QUALITY = 85


@functools.cache
def colormap(name: str) -> np.ndarray:
    """The ``(256, 3)`` uint8 lookup table of colormap ``name``."""
    if name not in COLORMAPS:
        from camcli.errors import UnknownNameError

        raise UnknownNameError("colormap", name, COLORMAPS)
    table = json.loads(resources.files("camcli").joinpath("data/colormaps.json").read_text())
    colours = table[name]
    return np.array([[int(c[i : i + 2], 16) for i in (1, 3, 5)] for c in colours], np.uint8)


def colorize(cam: np.ndarray, size: tuple[int, int], name: str = "jet") -> Image.Image:
    """Colour a normalised map and resize it bilinearly to ``size`` (width, height), once."""
    levels = np.clip(np.asarray(cam, np.float32) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    heat = Image.fromarray(levels, mode="L")
    if heat.size != size:
        heat = heat.resize(size, Image.Resampling.BILINEAR)
    heat.putpalette(colormap(name).tobytes())
    return heat.convert("RGB")


def overlay(image: Image.Image, cam: np.ndarray, name: str = "jet", alpha: float = 0.4):
    """``(1 - alpha) * image + alpha * colour(cam)``, at the image's own resolution."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be between 0 and 1, not {alpha}")
    rgb = image if image.mode == "RGB" else image.convert("RGB")  # convert() would copy
    return Image.blend(rgb, colorize(cam, image.size, name), alpha)


def encode(image: Image.Image, fmt: str = "png") -> bytes:
    """Encode an overlay; the settings are the measured speed/size trade-offs above."""
    if fmt == "png":
        rgb = image if image.mode in ("RGB", "RGBA") else image.convert("RGB")
        fast = _fpng()
        if fast is not None:
            return fast.from_ndarray(np.asarray(rgb))
        buffer = io.BytesIO()
        rgb.save(buffer, "PNG", **PILLOW_PNG_OPTIONS)
        return buffer.getvalue()
    buffer = io.BytesIO()
    if fmt in ("jpg", "jpeg"):
        image.save(buffer, "JPEG", quality=JPEG_QUALITY)
    elif fmt == "webp":
        image.save(buffer, "WEBP", quality=WEBP_QUALITY)
    else:
        raise ValueError(f"unknown overlay format {fmt!r}; choose from {OVERLAY_FORMATS}")
    return buffer.getvalue()


@functools.cache
def _fpng():
    """The fpng module, or None where its wheel does not exist (Python 3.10, platforms without a
    binary wheel: pyproject.toml installs it only where one does); Pillow's encoder then writes
    the same pixels, ~15x slower."""
    try:
        import fpng
    except ImportError:
        return None
    return fpng
