"""Finding inputs and decoding them: files, folders, globs and stdin; every Pillow mode to RGB.

No TensorFlow here. Each input is decoded once, at the smallest size that covers both the
model's input and the overlay: JPEGs at a reduced DCT scale (Pillow's draft mode, libjpeg-turbo's
scaled decoding), other formats whole; both views are then reduced from that one frame. Only a
full-resolution overlay (``--max-overlay-side 0``) is decoded again, from the same bytes, behind
the model, so that queued inputs never hold full-size pictures.
"""

from __future__ import annotations

import glob
import io
import os
import sys
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from camcli import storage
from camcli.errors import InputError
from camcli.limits import DEFAULT_MAX_PIXELS, DEFAULT_READ_LIMIT, read_limit, too_large
from camcli.outputs import is_camcli_output

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".jpe", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
)
_ROTATING_ORIENTATIONS = {5, 6, 7, 8}  # EXIF orientations that swap width and height


@dataclass
class DecodedImage:
    """One input, decoded for the model; ``data`` keeps the file's bytes for the overlay."""

    path: Path
    data: bytes
    size: tuple[int, int]  # (width, height) of the upright full-resolution image
    pixels: np.ndarray  # (height, width, channels) uint8 at the model's input size
    picture: Image.Image | None = None  # the overlay's RGB picture, when decoded with the pixels


# --------------------------------------------------------------------------- discovery


def discover(
    paths: Iterable[str],
    recursive: bool = False,
    stdin: Iterable[str] | None = None,
    storage_options: storage.StorageOptions = storage.NO_OPTIONS,
    follow_symlinks: bool = True,
) -> Iterator[Path | storage.Url]:
    """Yield each input once, in the order given.

    ``paths`` holds files, folders (their images; all levels with ``recursive``), glob patterns,
    URLs (:mod:`camcli.storage`: a prefix is a folder, patterns work), or ``-`` for one path or
    URL per line read from ``stdin``. Named paths that do not exist are still yielded so they
    fail, and are reported, like any other unreadable input. Images camcli wrote itself are
    skipped, and a file reached twice (two names, a symlink, a loop) is yielded once. URLs are
    listed as a stream; only URLs reached from several arguments take memory to deduplicate.
    Folders follow their symbolic links (to folders, even out of the tree, and to files);
    with ``follow_symlinks=False`` they contribute none of them (paths given are followed).
    """
    paths = list(paths)
    seen: set[str] = set()
    dedupe_urls = len(paths) > 1 or "-" in paths  # one listing never yields a key twice
    for argument in paths:
        if argument == "-":
            lines = stdin if stdin is not None else sys.stdin
            candidates: Iterable = (
                storage.location(line.rstrip("\r\n"), storage_options)
                for line in lines
                if line.strip()
            )
        elif storage.is_url(argument):
            found = storage.location(argument, storage_options)
            candidates = (
                _expand(str(found), recursive, follow_symlinks)
                if isinstance(found, Path)
                else storage.expand(found, recursive, IMAGE_EXTENSIONS)
            )
        else:
            candidates = _expand(argument, recursive, follow_symlinks)
        for path in candidates:
            if is_camcli_output(path.name):
                continue
            if isinstance(path, storage.Url):
                key = path.text if dedupe_urls else None
            else:
                key = os.path.realpath(path)
            if key in seen:
                continue
            if key is not None:
                seen.add(key)
            yield path


def _expand(argument: str, recursive: bool, follow: bool = True) -> Iterator[Path]:
    path = Path(argument)
    if path.is_dir():
        yield from _walk(path, recursive, follow)
    elif not path.exists() and glob.has_magic(argument):
        for match in sorted(_glob(argument)):
            match_path = Path(match)
            if match_path.is_dir():
                yield from _walk(match_path, recursive, follow)
            else:
                yield match_path
    else:
        yield path


def _glob(pattern: str) -> list[str]:
    """``glob.glob(pattern, recursive=True)``, except that ``**`` skips symlinked folders.

    glob's ``**`` follows symlinked folders without a loop check, so one symlink loop made it
    run for ever; pathlib's ``**`` does not descend them (Python 3.10 to 3.13). Hidden names
    stay unmatched unless the pattern spells a leading dot, as with glob.
    """
    if "**" not in pattern:
        return glob.glob(pattern)
    parts = Path(pattern).parts
    first = next(i for i, part in enumerate(parts) if glob.has_magic(part))
    root = Path(*parts[:first])
    dotted = any(part.startswith(".") for part in parts[first:])
    return [
        str(match)
        for match in root.glob(str(Path(*parts[first:])))
        if dotted or not any(part.startswith(".") for part in match.relative_to(root).parts)
    ]


def _walk(folder: Path, recursive: bool, follow: bool = True) -> Iterator[Path]:
    """Image files under ``folder``, sorted; symlinked folders are followed once each, or
    with ``follow=False`` no symlink inside ``folder`` is (nor taken as a file)."""
    visited: set[str] = set()
    for root, dirs, files in os.walk(folder, followlinks=follow):
        real = os.path.realpath(root)
        if real in visited or not recursive and Path(root) != folder:
            dirs[:] = []
            continue
        visited.add(real)
        dirs.sort()
        for name in sorted(files):
            if Path(name).suffix.lower() in IMAGE_EXTENSIONS:
                if follow or not os.path.islink(os.path.join(root, name)):
                    yield Path(root) / name
        if not recursive:
            dirs[:] = []


# --------------------------------------------------------------------------- decoding


#: The longer side a JPEG's decoded frame covers at least (the default overlay cap,
#: ``render.DEFAULT_MAX_OVERLAY_SIDE``, so the default overlay comes from the model's own frame).
DECODE_SIDE = 1000


def read_for_model(
    path: Path,
    size: tuple[int, int],
    channels: int = 3,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    max_bytes: int | None = None,
    *,
    stop=None,
    overlay_side: int | None = None,
    resample: str = "bilinear",
) -> DecodedImage:
    """Read ``path`` and decode it at the model's ``size`` (height, width), or raise InputError.
    At most :func:`~camcli.limits.read_limit` ``(max_pixels, max_bytes)`` bytes are read;
    ``stop`` (SIGINT/SIGTERM) ends a read that waits on a web server. ``overlay_side``: see
    :func:`decode_for_model`."""
    data = read_bytes(path, read_limit(max_pixels, max_bytes), stop)
    return decode_for_model(path, data, size, channels, max_pixels, max_bytes,
                            overlay_side=overlay_side, resample=resample)


def decode_for_model(
    path: Path,
    data: bytes,
    size: tuple[int, int],
    channels: int = 3,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    max_bytes: int | None = None,
    *,
    overlay_side: int | None = None,
    resample: str = "bilinear",
) -> DecodedImage:
    """Decode ``data`` (the bytes of ``path``, already read) at the model's ``size``, or raise
    InputError naming ``path``.

    A JPEG is decoded at the smallest DCT scale whose frame covers both the model's input and
    :data:`DECODE_SIDE` pixels on its longer side, whatever the overlay's size: so the model sees
    the same pixels in every run of camcli (explain, audit, any ``--max-overlay-side``).
    ``overlay_side``: also keep the overlay's picture (``picture``: RGB, its longer side capped
    at ``overlay_side``) from that frame, when the frame covers it (``overlay_side`` at most
    :data:`DECODE_SIDE`). Otherwise (None, 0 for a full-size overlay, a larger cap, or a
    one-channel model) only the model's view; :func:`read_full` decodes the overlay's picture
    later from ``data``. ``resample``: a Pillow filter name (a keras-hub converter's
    interpolation: bilinear, bicubic, nearest, lanczos).
    """
    limit = read_limit(max_pixels, max_bytes)
    if len(data) > limit:
        raise InputError(path, too_large(limit))
    height, width = size
    keep = bool(overlay_side) and overlay_side <= DECODE_SIDE and channels == 3
    image = open_image(path, data, max_pixels)
    declared = image.size
    try:
        if image.format == "JPEG":
            side = max(height, width)  # the model's view is squeezed: both sides need this
            wide, high = draft_request(image.size, DECODE_SIDE)
            image.draft("RGB" if channels == 3 else "L", (max(side, wide), max(side, high)))
        image.load()  # before reading EXIF, which may load it and must not hide its errors
        upright = _upright_size(image, declared)
        image = decode_frame(image, channels)
        fil = Image.Resampling[resample.upper()]
        resized = image.resize((width, height), fil, reducing_gap=3.0)
        pixels = np.asarray(resized, dtype=np.uint8)
        picture = _capped(image, overlay_side) if keep else None
    except (OSError, ValueError, SyntaxError) as exc:
        raise InputError(path, f"cannot decode image: {exc}") from exc
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    return DecodedImage(path=path, data=data, size=upright, pixels=pixels, picture=picture)


def read_bytes(path: Path | storage.Url, limit: int = DEFAULT_READ_LIMIT, stop=None) -> bytes:
    """The input's bytes, at most ``limit`` of them, or an InputError saying why not: a local
    file through :func:`camcli.storage.read_file` (regular files only), a URL through
    :func:`camcli.storage.read_bytes` (which gives up when ``stop`` is set)."""
    if isinstance(path, storage.Url):
        return storage.read_bytes(path, limit, stop)
    return storage.read_file(path, limit)


def open_image(path: Path, data: bytes, max_pixels: int | None) -> Image.Image:
    """Open (header only) and refuse images whose declared size exceeds ``max_pixels``."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError as exc:
        raise InputError(path, "not an image file Pillow can read") from exc
    except Image.DecompressionBombError as exc:
        raise InputError(path, f"refused: {exc}") from exc
    except (OSError, ValueError, SyntaxError) as exc:
        raise InputError(path, f"cannot decode image: {exc}") from exc
    width, height = image.size
    if max_pixels and width * height > max_pixels:
        raise InputError(
            path,
            f"refused: {width}×{height} = {width * height:,} pixels exceeds the limit of "
            f"{max_pixels:,} (--max-pixels)",
        )
    return image


def _upright_size(image: Image.Image, size: tuple[int, int]) -> tuple[int, int]:
    width, height = size
    try:
        orientation = image.getexif().get(0x0112)
    except Exception:  # a broken EXIF block only loses the rotation
        orientation = None
    return (height, width) if orientation in _ROTATING_ORIENTATIONS else (width, height)


def decode_frame(image: Image.Image, channels: int = 3) -> Image.Image:
    """The picture the model and the overlay both see: the first frame, upright, decoded.

    One function for both, so they never differ: multi-frame files (TIFF, GIF, APNG, MPO) give
    their first frame, the EXIF orientation is applied, and :func:`to_mode` makes 8-bit RGB
    (or L). Decoding errors surface here (OSError, ValueError, SyntaxError), not later.
    """
    if image.tell() != 0:
        image.seek(0)
    image = to_mode(ImageOps.exif_transpose(image), channels)
    image.load()
    return image


_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N")
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")


def to_mode(image: Image.Image, channels: int = 3) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB (or L for one channel), with nothing transparent.

    Transparency in any form (an alpha band, a palette's alpha, or one transparent colour in a
    ``tRNS`` chunk of a 1-bit, grey, 16-bit, RGB or palette image) is composited on white;
    16-bit and float images are scaled to 8 bits; CMYK, YCbCr, LAB, HSV, RGBX and palettes are
    converted. The result carries no ``transparency`` entry, so nothing drawn from it inherits
    one (an RGB overlay with an integer ``transparency`` cannot even be saved as PNG).
    """
    target = "RGB" if channels == 3 else "L"
    if image.mode in ("I", "F") or image.mode in _SIXTEEN_BIT:
        image = _eight_bit_grey(image)
    if image.mode in _ALPHA_MODES or "transparency" in image.info:
        if image.mode == "La":  # premultiplied grey converts only to LA
            image = image.convert("LA")
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, rgba)
    if image.mode not in (target, "L"):  # through RGB: some modes (LAB) convert only to RGB
        image = image.convert("RGB")
    if image.mode != target:
        image = image.convert(target)
    image.info.pop("transparency", None)
    return image


def _eight_bit_grey(image: Image.Image) -> Image.Image:
    """A 16-bit, 32-bit integer or float image as 8-bit L (LA if it had a transparent value).

    16-bit images are scaled from their 16-bit range; ``I`` and ``F`` from 0-65535 when a
    value exceeds 255 and from 0-255 otherwise.
    """
    array = np.asarray(image, dtype=np.float64)
    top = 65535.0 if image.mode in _SIXTEEN_BIT or array.max(initial=0) > 255 else 255.0
    grey = Image.fromarray(np.clip(array / top * 255.0 + 0.5, 0, 255).astype(np.uint8))
    transparent = image.info.get("transparency")
    if not isinstance(transparent, int):
        return grey
    alpha = np.where(np.asarray(image) == transparent, 0, 255).astype(np.uint8)
    return Image.merge("LA", (grey, Image.fromarray(alpha)))


def read_full(data: bytes, max_side: int | None = None) -> Image.Image:
    """The upright RGB picture the overlay is drawn on, decoded by :func:`decode_frame` as the
    model's view was: at full resolution, or with its longer side capped at ``max_side`` (never
    upscaled). A JPEG is decoded at the smallest DCT scale whose longer side still covers the
    cap (:func:`draft_request`); other formats are decoded whole and reduced by
    :meth:`~PIL.Image.Image.thumbnail` (box-reduced by integer factors, then bilinear)."""
    image = Image.open(io.BytesIO(data))
    if max_side and image.format == "JPEG":
        image.draft("RGB", draft_request(image.size, max_side))
    return _capped(decode_frame(image, 3), max_side)


def _capped(image: Image.Image, max_side: int | None) -> Image.Image:
    """``image`` with its longer side reduced to ``max_side`` (in place), never enlarged."""
    if max_side and max(image.size) > max_side:
        image.thumbnail((max_side, max_side), Image.Resampling.BILINEAR)
    return image


def draft_request(size: tuple[int, int], longer: int) -> tuple[int, int]:
    """The size to ask :meth:`~PIL.Image.Image.draft` for so that the decoded longer side is at
    least ``longer``, at the smallest scale that allows it.

    Pillow's draft keeps both requested sides, so a square request (``longer``, ``longer``)
    would hold the *shorter* side to the cap too and decode a 4032×3024 photo at 1/2 scale where
    1/4 (1008×756) covers a 1,000-pixel cap. The request has the image's own aspect ratio.
    """
    width, height = size
    if width >= height:
        return longer, max(1, -(-longer * height // width))
    return max(1, -(-longer * width // height)), longer
