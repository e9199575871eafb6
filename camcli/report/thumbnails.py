"""Small JPEG thumbnails of inputs and overlays, for the report pages.

The audit report inlines them as ``data:`` URIs (a few dozen images); the run report writes
them as files beside its page (thousands of images: the page stays small and the browser loads
only the ones scrolled into view).
"""

from __future__ import annotations

import base64
import io

from PIL import Image, ImageOps

#: Longer side of the run report's thumbnails, pixels: sharp on a 2x screen at ~90 px.
THUMBNAIL_SIDE = 192
QUALITY = 80


def jpeg_thumbnail(picture: Image.Image, side: int = THUMBNAIL_SIDE) -> bytes:
    """``picture`` shrunk so its longer side is at most ``side``, as JPEG bytes."""
    small = picture.convert("RGB") if picture.mode != "RGB" else picture.copy()
    small.thumbnail((side, side), Image.Resampling.BILINEAR, reducing_gap=2.0)
    buffer = io.BytesIO()
    small.save(buffer, "JPEG", quality=QUALITY, optimize=True)
    return buffer.getvalue()


def data_uri(jpeg: bytes) -> str:
    """JPEG bytes as a ``data:`` URI, for a page that must be one file."""
    return "data:image/jpeg;base64," + base64.b64encode(jpeg).decode("ascii")


def thumbnail_of_bytes(data: bytes, side: int = THUMBNAIL_SIDE) -> bytes:
    """The upright thumbnail of an encoded image (EXIF orientation applied, as camcli's
    overlays are); JPEGs are decoded at reduced scale (draft mode)."""
    with Image.open(io.BytesIO(data)) as image:
        image.draft("RGB", (side, side))  # a no-op for formats other than JPEG
        image.load()
        return jpeg_thumbnail(ImageOps.exif_transpose(image), side)
