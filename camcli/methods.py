"""CAM formulas: pure functions from a layer's activations and gradients to raw maps.

Each method takes ``activations`` and ``gradients`` shaped ``(batch, height, width, channels)``
(the gradient of each image's own target score with respect to its own activations) and returns
raw, unnormalised maps shaped ``(batch, height, width)``. They know nothing of models or files,
so they are tested on hand-made arrays. Normalisation to [0, 1] lives in :mod:`camcli.heatmaps`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

CamFormula = Callable[[np.ndarray, np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Method:
    """A CAM method: its name, formula and the paper it comes from."""

    name: str
    formula: CamFormula
    reference: str


def gradcam(activations: np.ndarray, gradients: np.ndarray) -> np.ndarray:
    """Grad-CAM (Selvaraju et al. 2017, arXiv:1610.02391, eq. 1–2).

    Channel weights are the spatial mean of the score's gradient,
    ``alpha_k = mean_ij dy/dA_ij^k``; the map is ``ReLU(sum_k alpha_k A^k)``.
    """
    weights = gradients.mean(axis=(1, 2), keepdims=True)
    return np.maximum((weights * activations).sum(axis=-1), 0.0)


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("gradcam", gradcam, "Selvaraju et al. 2017, arXiv:1610.02391"),
    )
}


def get_method(name: str) -> Method:
    """The method called ``name`` (case-insensitive); a usage error lists the known ones."""
    from camcli.errors import UnknownNameError

    key = name.strip().lower().replace("_", "").replace("-", "")
    for method in METHODS.values():
        if method.name.replace("+", "").replace("-", "") == key.replace("+", ""):
            return method
    raise UnknownNameError("method", name, sorted(METHODS))
