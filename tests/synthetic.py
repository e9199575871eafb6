"""Seeded synthetic images whose class is decided by one object at a known place.

Every image is a noisy, low-frequency textured background with one bright object (its class) and
a few small dim distractor blobs that carry no class information. Because the object's bounding
box is known exactly, tests can check *where* an explanation points, not just that it runs:
a CAM method that works should peak on the object.

Classes (``SHAPES``): 0 = filled square, 1 = plus-shaped cross, 2 = ring (hollow disc).
Pure numpy; no TensorFlow import, so any test can use it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SHAPES = ("square", "cross", "ring")


@dataclass(frozen=True)
class ShapeImages:
    """A batch of synthetic images with their labels and object boxes."""

    images: np.ndarray  # (n, size, size, 3) float32 in [0, 1]
    labels: np.ndarray  # (n,) int64 class index into SHAPES[:classes]
    boxes: np.ndarray  # (n, 4) int64 object box (x0, y0, x1, y1), pixels, x1/y1 exclusive

    def __len__(self) -> int:
        return len(self.labels)


def background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A dim background: random base colour, low-frequency texture and pixel noise."""
    base = rng.uniform(0.05, 0.4, size=3)
    coarse = rng.uniform(-0.12, 0.12, size=(4, 4, 3))
    texture = np.kron(coarse, np.ones((size // 4, size // 4, 1)))
    noise = rng.normal(0.0, 0.05, size=(size, size, 3))
    return base + texture + noise


def shape_mask(kind: str, side: int, rng: np.random.Generator) -> np.ndarray:
    """A boolean ``side × side`` mask of one object filling its box edge to edge."""
    yy, xx = np.mgrid[0:side, 0:side]
    centre = (side - 1) / 2.0
    if kind == "square":
        return np.ones((side, side), dtype=bool)
    if kind == "cross":
        half = max(1, int(rng.integers(side // 8, side // 5 + 1)))
        lo, hi = int(round(centre)) - half, int(round(centre)) + half + 1
        return ((yy >= lo) & (yy < hi)) | ((xx >= lo) & (xx < hi))
    if kind == "ring":
        radius = np.hypot(yy - centre, xx - centre)
        outer = side / 2.0
        return (radius <= outer) & (radius >= outer * rng.uniform(0.45, 0.6))
    raise ValueError(f"unknown shape {kind!r}; choose from {SHAPES}")


def _overlaps(box, other, gap: int) -> bool:
    x0, y0, x1, y1 = box
    a0, b0, a1, b1 = other
    return not (x1 + gap <= a0 or a1 + gap <= x0 or y1 + gap <= b0 or b1 + gap <= y0)


def make_shapes(
    n: int,
    seed: int,
    size: int = 64,
    classes: int = 2,
    object_side: tuple[int, int] = (14, 22),
    distractors: tuple[int, int] = (1, 3),
) -> ShapeImages:
    """``n`` images, classes balanced and shuffled, reproducible from ``seed``.

    The object (side drawn from ``object_side``, inclusive) sits at a uniformly random place
    inside the image; ``distractors`` (inclusive range) small dim discs are placed elsewhere,
    never touching the object's box.
    """
    if not 1 <= classes <= len(SHAPES):
        raise ValueError(f"classes must be between 1 and {len(SHAPES)}")
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n) % classes)
    images = np.empty((n, size, size, 3), dtype=np.float32)
    boxes = np.empty((n, 4), dtype=np.int64)
    for i, label in enumerate(labels):
        picture = background(rng, size)
        side = int(rng.integers(object_side[0], object_side[1] + 1))
        x0, y0 = (int(v) for v in rng.integers(0, size - side + 1, size=2))
        box = (x0, y0, x0 + side, y0 + side)
        for _ in range(int(rng.integers(distractors[0], distractors[1] + 1))):
            for _attempt in range(20):
                r = int(rng.integers(2, 4))
                cx, cy = (int(v) for v in rng.integers(r, size - r, size=2))
                blob = (cx - r, cy - r, cx + r + 1, cy + r + 1)
                if not _overlaps(blob, box, gap=2):
                    yy, xx = np.ogrid[0:size, 0:size]
                    disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
                    picture[disc] = rng.uniform(0.3, 0.6, size=3)
                    break
        colour = rng.uniform(0.6, 1.0, size=3)
        colour[rng.integers(0, 3)] = 1.0  # at least one saturated channel: clearly bright
        mask = shape_mask(SHAPES[label], side, rng)
        patch = picture[y0 : y0 + side, x0 : x0 + side]
        patch[mask] = colour
        images[i] = np.clip(picture, 0.0, 1.0)
        boxes[i] = box
    return ShapeImages(images=images, labels=labels.astype(np.int64), boxes=boxes)


def point_in_box(point: tuple[float, float], box, margin: float = 0.0) -> bool:
    """Whether pixel point ``(x, y)`` lies in ``box`` (x0, y0, x1, y1) grown by ``margin``."""
    x, y = point
    x0, y0, x1, y1 = box
    return x0 - margin <= x <= x1 + margin and y0 - margin <= y <= y1 + margin
