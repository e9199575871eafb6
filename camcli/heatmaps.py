"""Pure numeric post-processing of raw CAMs: normalisation, resizing and summary statistics.

Everything here works on numpy arrays so it is testable without a model; coordinates are
returned in the pixel frame of the *input image* (the model saw the whole image stretched to its
input size, so feature-map cells map linearly onto the input).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

#: A map whose positive part is below this fraction of its magnitude is numerical noise.
RELATIVE_EPS = 1e-6
#: Below this a peak is indistinguishable from zero in float32. Not larger: CAM magnitudes follow
#: the model's scale (random-weight MobileNets give real maps peaking near 1e-21).
ABSOLUTE_EPS = float(np.finfo(np.float32).tiny)


def normalize(raw: np.ndarray, reference_scale: np.ndarray | None = None):
    """Scale each map of ``raw`` (batch, h, w) to [0, 1] by its own maximum.

    Returns ``(maps, empty)``. A map with no positive evidence (all zero after ReLU, or positive
    only at the level of float noise relative to ``reference_scale``) stays all-zero and is
    flagged empty instead of being blown up to noise or NaN.
    """
    # float64 so a map beyond float32's range is scaled, not cast to inf and dropped as empty
    raw = np.asarray(raw, dtype=np.float64)
    peak = raw.reshape(len(raw), -1).max(axis=1) if raw.size else np.zeros(len(raw))
    scale = np.abs(raw).reshape(len(raw), -1).max(axis=1) if reference_scale is None else (
        np.asarray(reference_scale, dtype=np.float64)
    )
    empty = peak <= np.maximum(ABSOLUTE_EPS, RELATIVE_EPS * scale)
    divisor = np.where(empty, 1.0, peak)[:, None, None]
    maps = np.where(empty[:, None, None], 0.0, np.clip(raw / divisor, 0.0, 1.0))
    return maps.astype(np.float32), empty


def resize(cam: np.ndarray, width: int, height: int) -> np.ndarray:
    """Bilinearly resize one map to ``width`` × ``height`` (pixel-centre aligned, as PIL does)."""
    if cam.shape == (height, width):
        return cam.astype(np.float32, copy=False)
    image = Image.fromarray(np.ascontiguousarray(cam, dtype=np.float32), mode="F")
    return np.asarray(image.resize((width, height), Image.Resampling.BILINEAR), dtype=np.float32)


@dataclass(frozen=True)
class MapStats:
    """Where a normalised map points, in input-image pixels."""

    peak: tuple[float, float]
    centroid: tuple[float, float] | None
    top20_energy_share: float

    def to_json(self) -> dict:
        return {
            "peak": {"x": round(self.peak[0], 2), "y": round(self.peak[1], 2)},
            "centroid": None
            if self.centroid is None
            else {"x": round(self.centroid[0], 2), "y": round(self.centroid[1], 2)},
            "top20_energy_share": round(self.top20_energy_share, 6),
        }


def map_stats(cam: np.ndarray, image_width: int, image_height: int) -> MapStats:
    """Peak, energy centroid and top-20 % energy share of one normalised map.

    Cell ``(i, j)`` of an ``h × w`` map covers the input pixels around
    ``((j + 0.5) * W / w, (i + 0.5) * H / h)``. Bilinear upsampling never moves the maximum
    off a cell centre, so the peak is exact at feature resolution. The energy share is measured
    at a fixed 224 × 224 resampling so it does not depend on the layer's resolution.
    """
    h, w = cam.shape
    sx, sy = image_width / w, image_height / h
    i, j = np.unravel_index(int(np.argmax(cam)), cam.shape)
    peak = ((j + 0.5) * sx, (i + 0.5) * sy)
    total = float(cam.sum())
    if total <= 0.0:
        return MapStats(peak=peak, centroid=None, top20_energy_share=0.0)
    ys, xs = np.mgrid[0:h, 0:w]
    centroid = (
        float(((xs + 0.5) * cam).sum() / total * sx),
        float(((ys + 0.5) * cam).sum() / total * sy),
    )
    fine = np.sort(resize(cam, 224, 224).ravel())[::-1]
    top = fine[: max(1, int(round(0.2 * fine.size)))]
    share = float(top.sum() / max(fine.sum(), ABSOLUTE_EPS))
    return MapStats(peak=(float(peak[0]), float(peak[1])), centroid=centroid,
                    top20_energy_share=share)
