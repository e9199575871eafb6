"""Building or loading a model and finding the layer to explain.

This is the only module (with :mod:`camcli.engine`) that imports Keras. It turns a model name
from the registry plus a weights choice into a :class:`LoadedModel`: the Keras model built to
return pre-softmax scores, the target layer, the input geometry, the preprocessing function and
the class names.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from camcli import registry
from camcli.errors import UnknownNameError, UsageError, WeightsError
from camcli.labels import Labels, imagenet_labels

WEIGHT_CHOICES = ("imagenet", "none")


@dataclass
class LoadedModel:
    """A model ready for the engine, and the facts about it the outputs record."""

    model: object  # keras.Model; typed loosely so this module's users need not import Keras
    name: str
    weights: str
    layer: object
    layer_path: str
    input_size: tuple[int, int]  # (height, width)
    channels: int
    preprocess: Callable[[np.ndarray], np.ndarray]
    preprocess_name: str
    labels: Labels
    score: str = "logit"

    def describe(self) -> dict:
        return {
            "name": self.name,
            "weights": self.weights,
            "layer": self.layer_path,
            "input_size": list(self.input_size),
            "preprocess": self.preprocess_name,
        }


@dataclass(frozen=True)
class SpatialLayer:
    """A layer whose output is a 4-D (batch, height, width, channels) feature map."""

    path: str  # "name" or "nested_model/name"
    layer: object
    shape: tuple  # (height, width, channels)


def keras_cache_dir() -> Path:
    """Where ``keras.utils.get_file`` keeps downloaded weights (``KERAS_HOME`` honoured)."""
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return Path(home) / "models"


def load(model: str, weights: str = "imagenet", layer: str | None = None) -> LoadedModel:
    """Build registry model ``model`` with ``weights`` ("imagenet", "none" or a file path)."""
    spec = registry.get_spec(model)
    keras_model, weights_label = _build_with_weights(spec, weights)
    target = resolve_layer(keras_model, layer) if layer else _registry_default(keras_model, spec)
    height, width = spec.input_size
    return LoadedModel(
        model=keras_model,
        name=spec.name,
        weights=weights_label,
        layer=target.layer,
        layer_path=target.path,
        input_size=(height, width),
        channels=3,
        preprocess=spec.preprocess_input(),
        preprocess_name=spec.family,
        labels=imagenet_labels(),
    )


def _build_with_weights(spec: registry.ModelSpec, weights: str):
    choice = weights.strip()
    if choice.lower() == "none":
        return spec.build(weights=None), "none"
    if choice.lower() == "imagenet":
        try:
            return spec.build(weights="imagenet"), "imagenet"
        except Exception as exc:  # Keras raises bare Exception/URLError/OSError when offline
            raise WeightsError(
                f"could not get ImageNet weights for {spec.name} "
                f"({_first_line(exc)}); Keras looks for them in {keras_cache_dir()} — "
                "put the file there, pass --weights PATH to use a local weights file, "
                "or --weights none for random weights"
            ) from exc
    path = Path(choice).expanduser()
    if not path.is_file():
        raise WeightsError(
            f"weights file {choice!r} not found (use --weights imagenet, none or a file path)"
        )
    keras_model = spec.build(weights=None)
    try:
        keras_model.load_weights(str(path))
    except Exception as exc:
        raise WeightsError(
            f"{path}: cannot load as weights for {spec.name}: {_first_line(exc)}"
        ) from exc
    return keras_model, str(path)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def spatial_layers(model, prefix: str = "") -> Iterator[SpatialLayer]:
    """Every layer with a 4-D spatial output, in forward order, descending into nested models."""
    for layer in model.layers:
        path = f"{prefix}{layer.name}"
        if hasattr(layer, "layers") and layer.layers:
            yield from spatial_layers(layer, prefix=f"{path}/")
            continue
        shape = _output_shape(layer)
        if shape is not None and len(shape) == 4:
            yield SpatialLayer(path=path, layer=layer, shape=tuple(shape[1:]))


def _output_shape(layer):
    try:
        output = layer.output
    except (AttributeError, ValueError):
        return None
    if isinstance(output, (list, tuple)):
        return None
    return tuple(output.shape)


def _is_spatial(shape: tuple) -> bool:
    height, width = shape[0], shape[1]
    return height is not None and width is not None and height > 1 and width > 1


def default_layer(model) -> SpatialLayer:
    """The last layer whose output is a feature map with more than one cell in each direction."""
    candidates = [s for s in spatial_layers(model) if _is_spatial(s.shape)]
    if not candidates:
        raise UsageError("the model has no layer with a 4-D spatial output to explain")
    return candidates[-1]


def _registry_default(model, spec: registry.ModelSpec) -> SpatialLayer:
    return resolve_layer(model, spec.default_layer)


def resolve_layer(model, path: str) -> SpatialLayer:
    """Find the layer at ``path`` ("name" or "outer/inner/name"); did-you-mean on failure."""
    layers = list(spatial_layers(model))
    for candidate in layers:
        if candidate.path == path:
            return candidate
    # A bare name is enough when it is unique among the nested layers.
    by_name = [c for c in layers if c.path.rsplit("/", 1)[-1] == path]
    if len(by_name) == 1:
        return by_name[0]
    import difflib

    names = [c.path for c in layers]
    close = difflib.get_close_matches(path, names, n=5, cutoff=0.5)
    if not close:
        close = names[-3:]
    raise UnknownNameError("layer", path, close)
