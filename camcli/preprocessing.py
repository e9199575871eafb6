"""Input preprocessing for user models: the named formulas ``--preprocess`` accepts.

Every function takes float32 RGB pixels in [0, 255], shaped (batch, height, width, channels),
and returns what the model expects. The ``tf``, ``caffe`` and ``torch`` modes are Keras' own
(``keras.applications.imagenet_utils.preprocess_input``), so they match the applications:

- ``none``:    x                                   (the model rescales inside, or wants 0-255)
- ``scale01``: x / 255                             → [0, 1]
- ``tf``:      x / 127.5 - 1                       → [-1, 1] (MobileNet, Inception, Xception)
- ``caffe``:   RGB → BGR, minus the ImageNet means (103.939, 116.779, 123.68)   (VGG, ResNet)
- ``torch``:   (x / 255 - (0.485, 0.456, 0.406)) / (0.229, 0.224, 0.225)       (DenseNet)
- any registry model name: that model family's ``preprocess_input``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

Preprocess = Callable[[np.ndarray], np.ndarray]
MODES = ("none", "scale01", "tf", "caffe", "torch")


def _identity(x: np.ndarray) -> np.ndarray:
    return x


def _scale01(x: np.ndarray) -> np.ndarray:
    return x / 255.0


def _keras_mode(mode: str) -> Preprocess:
    def preprocess(x: np.ndarray) -> np.ndarray:
        from keras.applications import imagenet_utils

        if mode != "tf" and x.shape[-1] != 3:  # tf (x / 127.5 - 1) is per pixel, any channels
            raise ValueError(f"--preprocess {mode} needs 3-channel input, not {x.shape[-1]}")
        return imagenet_utils.preprocess_input(x, mode=mode)

    return preprocess


def get_preprocess(name: str) -> tuple[Preprocess, str]:
    """The function for ``name`` (a mode above or a registry model) and its canonical name."""
    key = name.strip().lower()
    if key == "none":
        return _identity, "none"
    if key == "scale01":
        return _scale01, "scale01"
    if key in ("tf", "caffe", "torch"):
        return _keras_mode(key), key
    from camcli import registry
    from camcli.errors import UnknownNameError

    try:
        spec = registry.get_spec(name)
    except UnknownNameError:
        raise UnknownNameError("preprocessing", name, MODES) from None
    return spec.preprocess_input(), spec.family
