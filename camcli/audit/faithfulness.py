"""Faithfulness by re-scoring perturbed images: Average Drop / Increase in Confidence
(Grad-CAM++, Chattopadhyay et al. 2018) and deletion / insertion (RISE, Petsiuk et al. 2018).

The model is only a function here: ``score(images) -> probabilities``, so the protocol is tested
with any callable and a caller can pass random maps through exactly the same code. Per image,
with ``S`` steps, the distinct images scored are: the image, the image × map, the blurred image
and ``S - 1`` intermediate images of each curve (the curves' ends are the image and the blurred
image), ``2·S + 1`` in all. They are generated lazily for the whole batch of images and scored in
chunks of ``chunk`` images, so the model always sees large batches and memory stays bounded.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from camcli.audit import metrics

Scorer = Callable[[np.ndarray], np.ndarray]  # (m, h, w, c) float pixels -> (m, classes) probs


@dataclass(frozen=True)
class Protocol:
    """Everything that changes the faithfulness numbers; recorded with every audit."""

    steps: int = 20
    blur_sigma: float = 10.0  # model-input pixels
    score: str = "softmax"  # how scores become probabilities ("softmax" or "sigmoid")
    tie_seed: int = 0

    def __post_init__(self):
        if self.steps < 1:
            raise ValueError(f"steps must be at least 1, not {self.steps}")
        if self.blur_sigma < 0:
            raise ValueError(f"blur sigma must not be negative, not {self.blur_sigma}")

    def to_json(self) -> dict:
        return {
            "score": f"{self.score} probability of the explained class",
            "average_drop": "mean of max(0, Y - O) / Y * 100, Y = score(image), "
            "O = score(image * map); map bilinearly resized to the input, in [0, 1], "
            "multiplied into the 0-255 pixels before preprocessing (Grad-CAM++)",
            "increase_in_confidence": "mean of 100 * [O > Y] (Grad-CAM++)",
            "deletion": "pixels ranked by the map (hottest first, ties in a fixed random order), "
            "replaced by the baseline cumulatively; AUC of the score over the fraction "
            "removed (RISE)",
            "insertion": "the same pixels taken from the image into the baseline, hottest "
            "first; AUC of the score over the fraction inserted (RISE)",
            "baseline": {"kind": "gaussian_blur", "sigma_px": round(self.blur_sigma, 4),
                         "kernel": "separable, truncated at 3 sigma, mirrored edges"},
            "steps": self.steps,
            "auc": f"trapezoid over {self.steps + 1} evenly spaced fractions of [0, 1]",
            "tie_seed": self.tie_seed,
        }


@dataclass
class Faithfulness:
    """Scores of each image's perturbations; per-image metrics are derived from them."""

    original: np.ndarray  # (n,) Y: the class probability on the image
    explained: np.ndarray  # (n,) O: on image × map
    deletion: np.ndarray  # (n, steps + 1) from the image to the blurred image
    insertion: np.ndarray  # (n, steps + 1) from the blurred image to the image

    @property
    def average_drop(self) -> np.ndarray:
        return metrics.average_drop(self.original, self.explained)

    @property
    def increase_in_confidence(self) -> np.ndarray:
        return metrics.increase_in_confidence(self.original, self.explained)

    @property
    def deletion_auc(self) -> np.ndarray:
        return np.array([metrics.trapezoid_auc(curve) for curve in self.deletion])

    @property
    def insertion_auc(self) -> np.ndarray:
        return np.array([metrics.trapezoid_auc(curve) for curve in self.insertion])


def measure(
    score: Scorer,
    pixels: np.ndarray,
    maps: np.ndarray,
    classes: np.ndarray,
    protocol: Protocol = Protocol(),
    chunk: int = 64,
) -> Faithfulness:
    """Faithfulness of ``maps`` (n, h, w) in [0, 1] at the input size for ``pixels``
    (n, h, w, c) in 0-255, each for its class in ``classes`` (n,)."""
    pixels = np.asarray(pixels, dtype=np.float32)
    maps = np.asarray(maps, dtype=np.float32)
    classes = np.asarray(classes, dtype=np.int64)
    n = len(pixels)
    if maps.shape != pixels.shape[:3]:
        raise ValueError(f"maps {maps.shape} do not match the images {pixels.shape[:3]}")
    steps = protocol.steps
    blurred = [metrics.gaussian_blur(image, protocol.blur_sigma) for image in pixels]
    ranks = [metrics.pixel_ranks(cam, protocol.tie_seed) for cam in maps]
    counts = metrics.step_counts(maps[0].size if n else 0, steps)

    def image(job: tuple[int, str, int]) -> np.ndarray:
        i, kind, t = job
        if kind == "original":
            return pixels[i]
        if kind == "explained":
            return pixels[i] * maps[i][..., None]
        if kind == "blurred":
            return blurred[i]
        if kind == "deletion":
            return metrics.compose(pixels[i], blurred[i], ranks[i], int(counts[t]))
        return metrics.compose(blurred[i], pixels[i], ranks[i], int(counts[t]))

    results: dict[tuple[int, str, int], float] = {}
    jobs = list(_jobs(n, steps))
    for start in range(0, len(jobs), chunk):
        part = jobs[start : start + chunk]
        probabilities = np.asarray(score(np.stack([image(job) for job in part])))
        for row, job in enumerate(part):
            results[job] = float(probabilities[row, classes[job[0]]])

    original = np.array([results[(i, "original", 0)] for i in range(n)])
    explained = np.array([results[(i, "explained", 0)] for i in range(n)])
    base = np.array([results[(i, "blurred", 0)] for i in range(n)])
    deletion = np.empty((n, steps + 1))
    insertion = np.empty((n, steps + 1))
    for i in range(n):
        middle_d = [results[(i, "deletion", t)] for t in range(1, steps)]
        middle_i = [results[(i, "insertion", t)] for t in range(1, steps)]
        deletion[i] = [original[i], *middle_d, base[i]]
        insertion[i] = [base[i], *middle_i, original[i]]
    return Faithfulness(original, explained, deletion, insertion)


def _jobs(n: int, steps: int) -> Iterator[tuple[int, str, int]]:
    for i in range(n):
        yield (i, "original", 0)
        yield (i, "explained", 0)
        yield (i, "blurred", 0)
        for t in range(1, steps):
            yield (i, "deletion", t)
            yield (i, "insertion", t)
