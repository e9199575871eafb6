"""Pictures for the audit report: overlays with the object's boxes or mask outline drawn on top,
and small inline thumbnails.

The overlay itself is :func:`camcli.render.overlay` (the same colours as ``camcli explain``);
this module only adds the ground truth, so a reader sees at a glance whether the heat is on it.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from camcli import render
from camcli.report.thumbnails import data_uri, jpeg_thumbnail

BOX_COLOUR = (0, 255, 0)
THUMBNAIL_SIDE = 220


def draw_regions(
    picture: Image.Image,
    image_size: tuple[int, int],
    boxes=(),
    mask: Image.Image | None = None,
) -> Image.Image:
    """A copy of ``picture`` with ``boxes`` (image pixels) and the outline of ``mask`` drawn.

    ``picture`` may be a scaled copy of the image (``image_size`` is the original's): the boxes
    are scaled with it.
    """
    out = picture.convert("RGB").copy()
    sx, sy = out.width / image_size[0], out.height / image_size[1]
    line = max(1, round(max(out.size) / 200))
    if mask is not None:
        region = mask.convert("L").resize(out.size, Image.Resampling.NEAREST).point(
            lambda v: 255 if v else 0
        )
        inner = region.filter(ImageFilter.MinFilter(2 * line + 1))
        edge = np.asarray(region, dtype=bool) & ~np.asarray(inner, dtype=bool)
        pixels = np.array(out)
        pixels[edge] = BOX_COLOUR
        out = Image.fromarray(pixels)
    draw = ImageDraw.Draw(out)
    for x0, y0, x1, y1 in boxes:
        rectangle = [x0 * sx, y0 * sy, max(x0 * sx, x1 * sx - 1), max(y0 * sy, y1 * sy - 1)]
        draw.rectangle(rectangle, outline=BOX_COLOUR, width=line)
    return out


def audit_overlay(
    full: Image.Image,
    cam: np.ndarray,
    image_size: tuple[int, int],
    boxes=(),
    mask: Image.Image | None = None,
    colormap: str = "jet",
    alpha: float = 0.4,
) -> Image.Image:
    """The explain overlay of ``cam`` on ``full`` with the ground truth drawn on top."""
    return draw_regions(render.overlay(full, cam, colormap, alpha), image_size, boxes, mask)


def thumbnail_uri(picture: Image.Image, side: int = THUMBNAIL_SIDE) -> str:
    """A small JPEG as a ``data:`` URI, so the HTML report is one self-contained file."""
    return data_uri(jpeg_thumbnail(picture, side))
