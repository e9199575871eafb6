"""Pure numeric audit metrics: where a map points, how faithful it is, how it moved.

Every function here takes numpy arrays and returns numbers or arrays: no model, no files, so each
is tested on hand-made arrays. Conventions:

- A *map* is a 2-D float array in [0, 1] (a normalised CAM), already resized to the grid it is
  compared with (the model's input size for boxes and perturbations).
- A *region* is a boolean array of the same shape: the object (boxes or a mask).
- Boxes are ``(x0, y0, x1, y1)`` in the input image's own pixels, ``x1``/``y1`` exclusive, the
  frame of the manifest and of every coordinate camcli writes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

#: The share of a map's pixels that counts as its "hottest region" in map comparisons.
TOP_FRACTION = 0.2
#: Deletion/insertion baseline: Gaussian blur with σ = 10 px at 224 × 224 (scaled to other input
#: sizes), strong enough that the blurred image no longer shows the object (on the MobileNet
#: fixture, espresso falls from 0.93 to 0.02; at σ = 5 px it keeps 0.12 and the curves wander).
BLUR_SIGMA_AT_224 = 10.0
#: The pointing game (Zhang et al., 2016) accepts a peak within 15 px of the object at 224 px.
POINTING_TOLERANCE_AT_224 = 15.0


def scaled_to_input(pixels_at_224: float, input_size: tuple[int, int]) -> float:
    """A length defined at 224 px, scaled to an input whose longer side is ``max(input_size)``.

    Protocol constants from the papers are stated for 224 × 224 inputs; scaling keeps their
    meaning (a fraction of the image) for models with other input sizes.
    """
    return pixels_at_224 * max(input_size) / 224.0


# --------------------------------------------------------------------------- regions


def region_from_boxes(
    boxes: Sequence[Sequence[float]], image_size: tuple[int, int], grid: tuple[int, int]
) -> np.ndarray:
    """Rasterise boxes given in image pixels onto a ``grid`` (height, width) covering the image.

    The model sees the whole image stretched to its input size, so grid cell ``(r, c)`` covers
    the image around ``((c + 0.5) · W / w, (r + 0.5) · H / h)``; a cell is inside a box when that
    centre is. A box too small to contain any cell centre still marks the cell under its centre,
    so no box is silently lost.
    """
    width, height = image_size
    rows, cols = grid
    xs = (np.arange(cols) + 0.5) * width / cols
    ys = (np.arange(rows) + 0.5) * height / rows
    region = np.zeros(grid, dtype=bool)
    for x0, y0, x1, y1 in boxes:
        inside_x = (xs >= x0) & (xs < x1)
        inside_y = (ys >= y0) & (ys < y1)
        if inside_x.any() and inside_y.any():
            region |= inside_y[:, None] & inside_x[None, :]
        else:
            r = min(rows - 1, max(0, int((y0 + y1) / 2 * rows / height)))
            c = min(cols - 1, max(0, int((x0 + x1) / 2 * cols / width)))
            region[r, c] = True
    return region


def clip_boxes(boxes, image_size: tuple[int, int]) -> tuple[list[tuple], list[tuple]]:
    """Clip boxes to the image; returns ``(kept, outside)``, the boxes with no area left over."""
    width, height = image_size
    kept, outside = [], []
    for box in boxes:
        x0, y0, x1, y1 = box
        clipped = (max(0.0, x0), max(0.0, y0), min(float(width), x1), min(float(height), y1))
        if clipped[2] > clipped[0] and clipped[3] > clipped[1]:
            kept.append(clipped)
        else:
            outside.append(tuple(box))
    return kept, outside


# --------------------------------------------------------------------------- localisation


def peak(cam: np.ndarray) -> tuple[int, int]:
    """``(row, col)`` of the map's maximum (the first one, in raster order, on ties)."""
    return tuple(int(v) for v in np.unravel_index(int(np.argmax(cam)), cam.shape))


def pointing_hit(cam: np.ndarray, region: np.ndarray, tolerance: float = 0.0) -> bool:
    """The pointing game: is the map's peak within ``tolerance`` grid cells of the region?

    An empty map (all zero) has no peak and never hits: a model that shows no evidence must not
    score by the accident of argmax landing on pixel (0, 0).
    """
    if not region.any() or float(cam.max()) <= 0.0:
        return False
    r, c = peak(cam)
    if region[r, c]:
        return True
    if tolerance <= 0:
        return False
    rows, cols = np.nonzero(region)
    return bool(np.min((rows - r) ** 2 + (cols - c) ** 2) <= tolerance * tolerance)


def energy_in_region(cam: np.ndarray, region: np.ndarray) -> float:
    """Energy-based pointing game (Score-CAM paper): the share of the map's mass in the region.

    ``Σ_region L / Σ L`` in [0, 1]; an empty map has no energy anywhere and scores 0.
    """
    total = float(np.sum(cam, dtype=np.float64))
    if total <= 0.0:
        return 0.0
    return float(np.sum(cam[region], dtype=np.float64) / total)


# --------------------------------------------------------------------------- faithfulness


def average_drop(original: np.ndarray, explained: np.ndarray) -> np.ndarray:
    """Per-image Average Drop in percent (Grad-CAM++ paper): ``max(0, Y − O) / Y · 100``.

    ``Y`` is the class probability on the image, ``O`` on the image multiplied by the map. The
    paper's dataset figure is the mean of these values. A zero ``Y`` cannot drop: 0.
    """
    y = np.asarray(original, dtype=np.float64)
    o = np.asarray(explained, dtype=np.float64)
    safe = np.where(y > 0, y, 1.0)
    return np.where(y > 0, np.maximum(0.0, y - o) / safe * 100.0, 0.0)


def increase_in_confidence(original: np.ndarray, explained: np.ndarray) -> np.ndarray:
    """Per-image Increase in Confidence in percent (Grad-CAM++ paper): 100 where ``O > Y``.

    The paper's dataset figure, "the percentage of images whose confidence increased", is the
    mean of these values.
    """
    return np.where(np.asarray(explained) > np.asarray(original), 100.0, 0.0)


def gaussian_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of an ``(h, w, channels)`` image (kernel ±3σ, edges mirrored).

    Written out in numpy (not Pillow's box-blur approximation) so the deletion/insertion baseline
    is exactly the one recorded in the protocol.
    """
    image = np.asarray(image, dtype=np.float32)
    if sigma <= 0:
        return image.copy()
    radius = max(1, int(math.ceil(3.0 * sigma)))
    offsets = np.arange(-radius, radius + 1, dtype=np.float64)
    kernel = np.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = (kernel / kernel.sum()).astype(np.float32)
    out = image
    for axis in (0, 1):
        size = out.shape[axis]
        pad = [(0, 0)] * out.ndim
        pad[axis] = (radius, radius)
        padded = np.pad(out, pad, mode="reflect" if size > 1 else "edge")
        acc = np.zeros_like(out)
        for i, weight in enumerate(kernel):
            index = [slice(None)] * out.ndim
            index[axis] = slice(i, i + size)
            acc += weight * padded[tuple(index)]
        out = acc
    return out


def pixel_ranks(cam: np.ndarray, seed: int = 0) -> np.ndarray:
    """Each pixel's rank by map value, hottest first: ``ranks[r, c] = 0`` for the peak.

    Ties (the flat zero area of a ReLU map, plateaus of an upsampled one) are broken in a fixed
    pseudo-random order, not raster order: raster order would delete the image's top rows first
    wherever the map is flat, a bias that has nothing to do with the map.
    """
    flat = np.asarray(cam, dtype=np.float64).ravel()
    jitter = np.random.default_rng(seed).permutation(flat.size)
    order = np.lexsort((jitter, -flat))  # primary key: -value; ties by the random permutation
    ranks = np.empty(flat.size, dtype=np.int64)
    ranks[order] = np.arange(flat.size)
    return ranks.reshape(cam.shape)


def step_counts(n_pixels: int, steps: int) -> np.ndarray:
    """Pixels changed after each of the ``steps + 1`` steps: ``round(t / steps · n)``."""
    return np.rint(np.arange(steps + 1) / steps * n_pixels).astype(np.int64)


def compose(first: np.ndarray, second: np.ndarray, ranks: np.ndarray, count: int) -> np.ndarray:
    """``second``'s pixels where ``ranks < count`` (the ``count`` hottest), ``first`` elsewhere.

    Deletion is ``compose(image, blurred, ...)``, insertion ``compose(blurred, image, ...)``.
    """
    chosen = (ranks < count)[..., None]
    return np.where(chosen, second, first)


def trapezoid_auc(scores: np.ndarray) -> float:
    """Area under a curve sampled at ``steps + 1`` evenly spaced points of [0, 1] (trapezoids)."""
    scores = np.asarray(scores, dtype=np.float64)
    if len(scores) < 2:
        raise ValueError("a curve needs at least two points")
    steps = len(scores) - 1
    return float((scores.sum() - 0.5 * (scores[0] + scores[-1])) / steps)


# --------------------------------------------------------------------------- map similarity


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two maps on the same grid.

    Undefined when a map is constant (an empty map); then 1.0 if both maps are identical, else
    0.0, so the result is always a number a threshold can be compared with (never NaN).
    """
    x = np.asarray(a, dtype=np.float64).ravel()
    y = np.asarray(b, dtype=np.float64).ravel()
    x, y = x - x.mean(), y - y.mean()
    norm = math.sqrt(float(x @ x) * float(y @ y))
    if norm <= 0.0:
        return 1.0 if np.array_equal(a, b) else 0.0
    return float(np.clip(x @ y / norm, -1.0, 1.0))


def top_region(cam: np.ndarray, fraction: float = TOP_FRACTION) -> np.ndarray:
    """The ``ceil(fraction · size)`` hottest cells (ties: first in raster order) as a mask.

    Rank-based, not a value threshold, so the region has the same size for every map and two
    identical maps give identical regions.
    """
    flat = np.asarray(cam).ravel()
    k = max(1, int(math.ceil(fraction * flat.size)))
    order = np.argsort(-flat, kind="stable")[:k]
    mask = np.zeros(flat.size, dtype=bool)
    mask[order] = True
    return mask.reshape(np.shape(cam))


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two boolean masks (1.0 for two empty masks)."""
    union = int(np.count_nonzero(a | b))
    return 1.0 if union == 0 else int(np.count_nonzero(a & b)) / union


# --------------------------------------------------------------------------- aggregates


def bootstrap_mean_ci(
    values: Sequence[float], samples: int = 2000, level: float = 0.95, seed: int = 0
) -> tuple[float, float, float]:
    """The mean and its percentile bootstrap interval: ``(mean, low, high)``.

    Resamples the values with replacement ``samples`` times (fixed seed: the same audit gives
    the same interval). One value gives a zero-width interval.
    """
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        raise ValueError("no values to aggregate")
    mean = float(x.mean())
    if x.size == 1:
        return mean, mean, mean
    rng = np.random.default_rng(seed)
    means = np.empty(samples)
    chunk = max(1, 4_000_000 // x.size)  # bound the index array's memory on large audits
    for start in range(0, samples, chunk):
        stop = min(samples, start + chunk)
        means[start:stop] = x[rng.integers(0, x.size, size=(stop - start, x.size))].mean(axis=1)
    tail = (1.0 - level) / 2.0 * 100.0
    low, high = np.percentile(means, [tail, 100.0 - tail])
    # The mean of identical values must lie in its own interval despite float rounding.
    return mean, float(min(low, mean)), float(max(high, mean))
