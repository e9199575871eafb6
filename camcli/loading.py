"""Building or loading a model and finding what to explain in it.

This module (with :mod:`camcli.engine`) is where Keras is used. It turns ``--model`` (a registry
name, or a ``.keras``/``.h5`` file of the user's) into a :class:`LoadedModel`: the Keras model, the
target layer (found in nested models too), the input geometry, the preprocessing, the class names,
and how to reach the pre-activation class scores when the model ends in softmax or sigmoid.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np

from camcli import precision as precisions
from camcli import registry
from camcli.errors import UnknownNameError, UsageError, WeightsError
from camcli.labels import Labels, generic_labels, imagenet_labels, load_label_file
from camcli.preprocessing import get_preprocess

MODEL_FILE_SUFFIXES = (".keras", ".h5", ".hdf5")
#: Input size used when a fully convolutional model does not fix one.
FALLBACK_INPUT_SIZE = (224, 224)


@dataclass(frozen=True)
class Patch:
    """Replace ``layer.<attribute>`` by ``value`` while camcli runs the model, then restore it."""

    layer: object
    attribute: str
    value: object


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
    extra_layers: tuple[tuple[str, object], ...] = ()  # more (path, layer) targets, fused
    output_index: int = 0
    activation: str = "none"  # the output activation camcli removed: softmax, sigmoid or none
    binary: bool = False  # one sigmoid unit: scores become (negative, positive) = (-z, z)
    patches: tuple[Patch, ...] = field(default=())
    precision: str = precisions.DEFAULT  # the arithmetic the network runs in (--precision)
    #: Per target layer (same order as :attr:`target_layers`), what turns its output into a grid
    #: (camcli.adapters); empty: every target is a 4-D feature map.
    adapters: tuple = ()
    converter: object = None  # a keras-hub image converter camcli applies (camcli.hub.Converter)

    def adapter(self, index: int):
        """The adapter of target layer ``index``: its output as an (n, h, w, c) grid."""
        if self.adapters:
            return self.adapters[index]
        from camcli.adapters import Spatial

        return Spatial(tuple(self.target_layers[index][1].output.shape[1:]))

    @property
    def resample(self) -> str:
        """How images are resized to the input: a keras-hub converter's interpolation when
        Pillow has that filter, else bilinear."""
        wanted = getattr(self.converter, "interpolation", "bilinear").lower()
        return wanted if wanted in ("nearest", "bilinear", "bicubic", "lanczos") else "bilinear"

    @property
    def target_layers(self) -> list[tuple[str, object]]:
        """Every (path, layer) whose maps are computed; several are fused (``--layer`` twice)."""
        return [(self.layer_path, self.layer), *self.extra_layers]

    @property
    def score(self) -> str:
        """The score a map explains, as recorded in the JSON."""
        if self.binary:
            return "logit (class 1), negated logit (class 0)"
        return "logit" if self.activation != "none" else "output"

    @property
    def probability(self) -> str:
        """How reported probabilities are computed from the scores."""
        return "sigmoid" if self.activation == "sigmoid" else "softmax"

    def probabilities(self, scores: np.ndarray) -> np.ndarray:
        """Probabilities from one image's scores (sigmoid per class for sigmoid heads)."""
        scores = np.asarray(scores, dtype=np.float64)
        if self.probability == "sigmoid":
            return 1.0 / (1.0 + np.exp(-scores))
        shifted = np.exp(scores - scores.max())
        return shifted / shifted.sum()

    def describe(self) -> dict:
        return {
            "name": self.name,
            "weights": self.weights,
            "layer": " + ".join(path for path, _ in self.target_layers),
            "input_size": list(self.input_size),
            "preprocess": self.preprocess_name,
            "output_index": self.output_index,
            "output_activation": self.activation,
            "precision": self.precision,
            **self._hub_facts(),
        }

    def _hub_facts(self) -> dict:
        """The token grid of transformer targets and a keras-hub image converter, when any."""
        facts = {}
        if any(adapter.kind == "tokens" for adapter in self.adapters):
            facts["target_grid"] = [adapter.describe() for adapter in self.adapters]
        if self.converter is not None:
            facts["image_converter"] = self.converter.describe()
        return facts


@dataclass(frozen=True)
class SpatialLayer:
    """A layer whose output is a 4-D (batch, height, width, channels) feature map."""

    path: str  # "name", or "nested_model/name" through nested models
    layer: object
    shape: tuple  # (height, width, channels)

    @property
    def adapter(self):
        from camcli.adapters import Spatial

        return Spatial(self.shape)


@contextlib.contextmanager
def patched(patches: tuple[Patch, ...]):
    """Apply ``patches`` for the duration of the block; the model is restored afterwards."""
    saved = [(p, p.layer.__dict__.get(p.attribute, _MISSING)) for p in patches]
    try:
        for patch in patches:
            setattr(patch.layer, patch.attribute, patch.value)
        yield
    finally:
        for patch, old in reversed(saved):
            if old is _MISSING:
                with contextlib.suppress(AttributeError):
                    delattr(patch.layer, patch.attribute)
            else:
                setattr(patch.layer, patch.attribute, old)


_MISSING = object()


def keras_cache_dir() -> Path:
    """Where ``keras.utils.get_file`` keeps downloaded weights (``KERAS_HOME`` honoured)."""
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return Path(home) / "models"


def is_model_file(model: str) -> bool:
    return model.lower().endswith(MODEL_FILE_SUFFIXES) or os.path.isfile(model)


def load(
    model: str,
    weights: str = "imagenet",
    layer: str | Sequence[str] | None = None,
    preprocess: str | None = None,
    labels: str | os.PathLike | None = None,
    output: str | int | None = None,
    unsafe: bool = False,
    precision: str = precisions.DEFAULT,
) -> LoadedModel:
    """Build a registry model, or load a user's model file, ready to explain.

    Registry models use ``weights`` ("imagenet", "none" or a weights file), ImageNet labels and
    their family's preprocessing. Model files bring their own weights; their preprocessing
    defaults to ``none`` and their classes are ``class_<i>`` unless ``labels`` names a file.
    ``precision`` (float32, bfloat16, float16) is the arithmetic the network runs in.
    """
    precisions.check(precision)
    opened = _open(model, weights, unsafe)
    keras_model, name, weights_label = opened.model, opened.name, opened.weights
    keras_model = with_precision(keras_model, precision, unsafe)
    output_index = _choose_output(keras_model, output)
    activation, patches = _output_activation(keras_model, output_index)
    n_outputs = int(_output_shapes(keras_model)[output_index][-1])
    binary = activation == "sigmoid" and n_outputs == 1
    n_classes = 2 if binary else n_outputs
    class_labels = _choose_labels(labels, opened.labels, n_classes)
    if preprocess is None and opened.converter is not None:
        preprocess_fn, preprocess_name = opened.converter, "image_converter"
    else:
        preprocess_fn, preprocess_name = get_preprocess(preprocess or opened.preprocess)
    height, width, channels = _input_geometry(keras_model, opened.input_size)
    chosen = _choose_layers(keras_model, layer, output_index, (height, width), channels)
    target = chosen[0]
    try:  # fail now, not after decoding: caffe/torch need 3 channels
        preprocess_fn(np.zeros((1, height, width, channels), np.float32))
    except Exception as exc:
        reason = _first_line(exc)
        if not reason.startswith("--preprocess"):
            reason = f"--preprocess {preprocess_name} does not fit the model's input: {reason}"
        raise UsageError(f"{reason} (the model takes {channels}-channel images)") from exc
    return LoadedModel(
        model=keras_model,
        name=name,
        weights=weights_label,
        layer=target.layer,
        layer_path=target.path,
        extra_layers=tuple((t.path, t.layer) for t in chosen[1:]),
        input_size=(height, width),
        channels=channels,
        preprocess=preprocess_fn,
        preprocess_name=preprocess_name,
        labels=class_labels,
        output_index=output_index,
        activation=activation,
        binary=binary,
        patches=patches,
        precision=precision,
        adapters=tuple(t.adapter for t in chosen) if any(_is_tokens(t) for t in chosen) else (),
        converter=opened.converter if preprocess_fn is opened.converter else None,
    )


def _is_tokens(target) -> bool:
    return target.adapter.kind == "tokens"


@dataclass
class _Opened:
    """A model as built or loaded, before the target layer and the outputs are chosen."""

    model: object
    name: str
    weights: str  # what the record says about the weights
    preprocess: str  # the default --preprocess
    labels: Labels | None  # the default labels (None: class_<i> unless --labels)
    converter: object = None  # a keras-hub image converter (camcli.hub.Converter)
    input_size: tuple[int, int] | None = None  # when the model leaves it open


def _open(model: str, weights: str, unsafe: bool) -> _Opened:
    """Build a registry model, or load a model file, a keras-hub preset folder or preset name."""
    from camcli import hub, hub_presets

    if hub.is_preset_folder(model) or hub_presets.get(model) is not None:
        return _open_hub_preset(model, weights)
    if is_model_file(model):
        keras_model = _load_model_file(Path(model), unsafe)
        weights_label = "file"
        choice = weights.strip().lower()
        if choice == "none":
            raise UsageError("--weights none applies to registry models; a model file has weights")
        if choice not in ("imagenet", "file"):  # the default, or a weights file to load on top
            keras_model, weights_label = _load_weights(keras_model, weights, str(model))
        return _Opened(keras_model, str(model), weights_label, "none", None)
    try:
        spec = registry.get_spec(model)
    except UnknownNameError as exc:  # keras-hub presets are names too
        hub_close = hub_presets.suggestions(model)
        key = registry.normalize(model)
        completes = any(registry.normalize(n).startswith(key) for n in exc.suggestions)
        close = [*exc.suggestions, *hub_close] if completes else [*hub_close, *exc.suggestions]
        raise UnknownNameError("model", model, close[:6]) from None
    keras_model, weights_label = _build_with_weights(spec, weights)
    return _Opened(keras_model, spec.name, weights_label, spec.name, imagenet_labels())


def _open_hub_preset(model: str, weights: str) -> _Opened:
    """A keras-hub ``ImageClassifier`` preset: its converter gives the preprocessing and, when
    the model leaves it open, the input size."""
    from camcli import hub, hub_presets

    entry = hub_presets.get(model)
    source = entry.name if entry is not None else model
    choice = weights.strip().lower()
    keras_model = hub.load_preset(source, load_weights=choice != "none")
    weights_label = "none" if choice == "none" else "preset"
    if choice not in ("none", "imagenet", "preset"):
        keras_model, weights_label = _load_weights(keras_model, weights, source)
    converter = hub.converter_of(keras_model)
    size = converter.image_size if converter is not None else None
    return _Opened(keras_model, source, weights_label, "none", imagenet_labels(), converter, size)


def _choose_labels(labels, default_labels: Labels | None, n_classes: int) -> Labels:
    if labels is not None:
        return load_label_file(labels, expected=n_classes)
    if default_labels is not None and len(default_labels) == n_classes:
        return default_labels
    return generic_labels(n_classes)


def _choose_layers(keras_model, layer, output_index: int, input_size, channels) -> list:
    """The target layers: those asked for (each must feed the output), else the default.

    The rule, not the registry's stored name, picks the default: auto-generated layer names
    (NASNet, MobileNetV3) depend on what the process built before. The registry test checks
    that the rule gives the stored name in a fresh process. A model without a 4-D target (a
    transformer) is explained at a token layer (:mod:`camcli.token_layers`).
    """
    requested = [layer] if isinstance(layer, str) else list(layer or ())
    tokens = _Tokens(keras_model, input_size, channels)
    if not requested:
        try:
            return [default_layer(keras_model, output_index)]
        except UsageError:
            found = tokens.default()
            if found is None:
                raise
            return [found[0]]
    chosen = [_resolve(keras_model, path, tokens) for path in dict.fromkeys(requested)]
    feeding = _feeding_layers(keras_model, output_index)
    for target in chosen:
        if feeding is not None and not _is_tokens(target) and id(target.layer) not in feeding:
            raise UsageError(
                f"layer {target.path!r} does not feed output "
                f"{_output_names(keras_model)[output_index]!r}: nothing to explain there"
            )
    return chosen


class _Tokens:
    """The model's token layers, found (one probing forward pass) only when asked for."""

    def __init__(self, keras_model, input_size, channels):
        self.model, self.input_size, self.channels = keras_model, input_size, channels
        self._layers = None

    @property
    def layers(self) -> list:
        if self._layers is None:
            from camcli import token_layers

            self._layers = token_layers.token_layers(self.model, self.input_size, self.channels)
        return self._layers

    def default(self):
        from camcli import token_layers

        return token_layers.default_token_layer(self.model, self.layers)


def token_targets(keras_model, input_size, channels) -> tuple[list, tuple | None]:
    """The model's token layers (possible ``--layer`` targets of a transformer) and the default
    with the reason it is the default (None without token layers)."""
    tokens = _Tokens(keras_model, input_size, channels)
    return tokens.layers, tokens.default()


def _resolve(keras_model, path: str, tokens: _Tokens):
    """``path`` among the 4-D layers, else among the token layers."""
    from camcli import token_layers

    try:
        return resolve_layer(keras_model, path)
    except UnknownNameError as exc:
        maybe_tokens = any(isinstance(child, _keras_layers().LayerNormalization)
                           for _, child in token_layers.layer_tree(keras_model))
        if not maybe_tokens or not tokens.layers:  # a CNN: the 4-D layers' suggestions
            raise
        found = token_layers.find(tokens.layers, path)
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            raise UsageError(f"layer name {path!r} is ambiguous: "
                             + ", ".join(c.path for c in found[:6])) from None
        import difflib

        names = [c.path for c in tokens.layers]
        close = difflib.get_close_matches(path, names, n=5, cutoff=0.3) or names[-3:]
        raise UnknownNameError("layer", path, close) from exc


def _keras_layers():
    import keras

    return keras.layers


# --------------------------------------------------------------------------- building


def _build_with_weights(spec: registry.ModelSpec, weights: str):
    choice = weights.strip()
    if choice.lower() == "none":
        return spec.build(weights=None), "none"
    if choice.lower() == "imagenet" and spec.bundled is not None:
        return _load_bundled(spec), "imagenet"
    if choice.lower() == "imagenet":
        try:
            return spec.build(weights="imagenet"), "imagenet"
        except Exception as exc:  # Keras raises bare Exception/URLError/OSError when offline
            raise WeightsError(
                f"could not get ImageNet weights for {spec.name} "
                f"({_first_line(exc)}); Keras looks for them in {keras_cache_dir()} — "
                "put the file there, pass --weights PATH to use a local weights file, "
                f"or --weights none for random weights{_offline_alternative()}"
            ) from exc
    return _load_weights(spec.build(weights=None), choice, spec.name)


def _offline_alternative() -> str:
    """The registry's bundled models, offered when a download fails."""
    names = [f"--model {spec.name}" for spec in registry.bundled_models()]
    if not names:
        return ""
    return f"; or, with no download, {' or '.join(names)} (ImageNet weights bundled with camcli)"


# --------------------------------------------------------------------------- bundled weights


def bundled_weights_path(bundled: registry.BundledWeights) -> Path:
    """Where the installed package keeps a bundled weights file (``camcli/data``)."""
    return Path(str(resources.files("camcli").joinpath("data", bundled.file)))


def verify_weights_file(path: Path, bundled: registry.BundledWeights) -> None:
    """Raise :class:`WeightsError` unless ``path`` has the size and sha256 the registry states.

    A truncated file (an interrupted copy), a disk error or an edited file would otherwise load
    as plausible-looking wrong weights, or crash deep inside h5py.
    """
    advice = "reinstall camcli (pip install --force-reinstall camcli)"
    try:
        size = path.stat().st_size
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if size == bundled.size else ""
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise WeightsError(f"{path}: cannot read the bundled weights ({reason}); {advice}") from exc
    if size != bundled.size:
        problem = f"{size:,} bytes, expected {bundled.size:,}"
    elif digest != bundled.sha256:
        problem = f"sha256 {digest[:12]}…, expected {bundled.sha256[:12]}…"
    else:
        return
    raise WeightsError(f"{path}: the bundled weights are damaged ({problem}); {advice}")


def _load_bundled(spec: registry.ModelSpec):
    """Build ``spec`` and load its bundled ImageNet weights: no network, no Keras cache."""
    path = bundled_weights_path(spec.bundled)
    verify_weights_file(path, spec.bundled)  # before the (slow) build: fail fast
    return _load_weights(spec.build(weights=None), str(path), spec.name)[0]


def _load_weights(keras_model, weights: str, name: str):
    path = Path(weights).expanduser()
    if not path.is_file():
        raise WeightsError(
            f"weights file {weights!r} not found (use --weights imagenet, none or a file path)"
        )
    try:
        keras_model.load_weights(str(path))
    except Exception as exc:
        reason = _first_line(exc)
        raise WeightsError(f"{path}: cannot load as weights for {name}: {reason}") from exc
    return keras_model, str(path)


def _load_model_file(path: Path, unsafe: bool):
    """Load a ``.keras`` or legacy ``.h5`` model without compiling it, in safe mode by default."""
    import keras

    from camcli import hub

    if not path.is_file():
        raise UsageError(f"{path}: model file not found")
    if hub.file_needs_hub(path):
        hub.require()  # registers keras-hub's classes; a usage error naming the extra without it
    try:
        return keras.saving.load_model(str(path), compile=False, safe_mode=not unsafe)
    except Exception as exc:
        refused = _safe_mode_refusal(str(exc))
        if refused:
            raise UsageError(
                f"{path}: refused to load: {refused}; pass --unsafe-model only if you trust "
                "this file"
            ) from exc
        raise UsageError(f"{path}: cannot load model: {_first_line(exc)}") from exc


#: What Keras' safe mode refuses, by a phrase of its message: camcli's words for it.
_SAFE_MODE_REFUSALS = (
    ("vocabulary file", "a lookup layer (StringLookup, IntegerLookup…) reads its vocabulary "
                        "from a file outside the model archive{file}"),
    ("Python lambda", "the model contains Python code (a Lambda layer) that would run on loading"),
    ("TFSMLayer", "a TFSMLayer loads an external SavedModel, whose code would run on loading"),
    ("torch.nn.Module", "a layer holds a pickled PyTorch module, whose code would run on loading"),
)


def _safe_mode_refusal(message: str) -> str | None:
    """Why Keras' safe mode refused a model file, from its error ``message``; None when the
    error is something else."""
    if "safe_mode" not in message:
        return None
    for phrase, reason in _SAFE_MODE_REFUSALS:
        if phrase in message:
            named = re.search(r"Vocabulary file: '([^']*)'", message)
            return reason.format(file=f" ({named.group(1)})" if named else "")
    return f"Keras' safe mode refuses it ({_first_line(Exception(message))})"


def with_precision(keras_model, precision: str, unsafe: bool = False):
    """The model with every layer under ``precision``'s Keras dtype policy, same weights.

    Rebuilt from its own config with each layer's ``dtype`` replaced (nested models included),
    instead of building under ``keras.config.set_dtype_policy``: that is process-wide state a
    later model would inherit, and a model file's layers carry their saved policy anyway. The
    input layers keep their dtype: the model is still fed float32 images and casts them itself.
    Returns the model unchanged when every layer already computes in that type.
    """
    import keras

    policy = precisions.POLICIES[precision]
    computing = [layer for layer in _all_layers(keras_model)  # not inputs, not nested models
                 if not isinstance(layer, keras.layers.InputLayer) and not hasattr(layer, "layers")]
    if all(layer.dtype_policy.name == policy for layer in computing):
        return keras_model
    try:
        serialized = keras.saving.serialize_keras_object(keras_model)
        _set_policy(serialized, keras.saving.serialize_keras_object(keras.DTypePolicy(policy)))
        rebuilt = keras.saving.deserialize_keras_object(serialized, safe_mode=not unsafe)
        rebuilt.set_weights(keras_model.get_weights())
    except Exception as exc:
        raise UsageError(
            f"--precision {precision}: cannot rebuild the model under the {policy} policy "
            f"({_first_line(exc)}); use --precision float32"
        ) from exc
    return rebuilt


def _all_layers(model):
    for layer in model.layers:
        yield layer
        if hasattr(layer, "layers"):
            yield from _all_layers(layer)


def _set_policy(config, policy: dict) -> None:
    """Set ``dtype`` to ``policy`` in every layer config nested in a serialized model."""
    if isinstance(config, list):
        for item in config:
            _set_policy(item, policy)
        return
    if not isinstance(config, dict):
        return
    inner = config.get("config")
    if "class_name" in config and isinstance(inner, dict):
        if config["class_name"] != "InputLayer" and "dtype" in inner:
            inner["dtype"] = policy
    for value in config.values():
        _set_policy(value, policy)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _input_geometry(keras_model, open_size=None) -> tuple[int, int, int]:
    shape = keras_model.input_shape
    if isinstance(shape, list):
        if len(shape) != 1:
            raise UsageError(f"the model has {len(shape)} inputs; camcli explains one image input")
        shape = shape[0]
    if len(shape) != 4:
        raise UsageError(f"the model's input shape {tuple(shape)} is not (batch, h, w, channels)")
    _, height, width, channels = shape
    if channels not in (1, 3):
        raise UsageError(f"the model takes {channels}-channel images; camcli supports 1 or 3")
    if height is None or width is None:
        height, width = open_size or FALLBACK_INPUT_SIZE
    return int(height), int(width), int(channels)


# --------------------------------------------------------------------------- outputs


def _output_shapes(keras_model) -> list[tuple]:
    shape = keras_model.output_shape
    return list(shape) if isinstance(shape, list) else [shape]


def _output_names(keras_model) -> list[str]:
    return [_producer(t).name for t in keras_model.outputs]


def _choose_output(keras_model, output: str | int | None) -> int:
    """The index of the classification head (``--output``), required when there are several."""
    shapes = _output_shapes(keras_model)
    names = _output_names(keras_model)
    if output is None:
        if len(shapes) > 1:
            raise UsageError(
                f"the model has {len(shapes)} outputs ({', '.join(names)}); "
                "choose the classification head with --output NAME or INDEX"
            )
        index = 0
    elif str(output).isdigit():
        index = int(output)
        if index >= len(shapes):
            raise UsageError(f"--output {index}: the model has {len(shapes)} output(s)")
    elif str(output) in names:
        index = names.index(str(output))
    else:
        raise UnknownNameError("output", str(output), names)
    if len(shapes[index]) != 2:
        raise UsageError(
            f"output {names[index]!r} has shape {tuple(shapes[index])}; "
            "camcli explains a (batch, classes) classification output"
        )
    return index


def _producer(tensor):
    """The layer that produced a symbolic tensor, looking inside nested models."""
    operation = tensor._keras_history.operation
    while hasattr(operation, "layers") and len(getattr(operation, "outputs", ())) == 1:
        operation = operation.outputs[0]._keras_history.operation
    return operation


def _output_activation(keras_model, index: int) -> tuple[str, tuple[Patch, ...]]:
    """Find a final softmax/sigmoid on output ``index`` and the patches that bypass it.

    Grad-CAM needs the pre-activation score: a softmax's gradient is nearly zero once the model
    is confident, which gives blank maps. The patches act only while camcli runs the model; the
    model object and the user's file stay as they were.
    """
    import keras

    layer = _producer(keras_model.outputs[index])
    if isinstance(layer, keras.layers.Softmax):
        return "softmax", (Patch(layer, "call", lambda inputs, *args, **kwargs: inputs),)
    function = getattr(layer, "activation", None)
    name = getattr(function, "__name__", "")
    if name in ("softmax", "sigmoid"):
        return name, (Patch(layer, "activation", keras.activations.linear),)
    return "none", ()


# --------------------------------------------------------------------------- the CAM head

#: Layers a CAM head may have between the pooling, the classifier and the output (keras layer
#: class names, subclasses too): they pass the pooled channels (or the class scores) through
#: unchanged in inference.
_PASSTHROUGH = ("Dropout", "SpatialDropout1D", "SpatialDropout2D", "GaussianDropout",
                "AlphaDropout", "Flatten", "Reshape", "Identity", "Softmax")


def _single_input(tensor):
    """The layer that produced ``tensor`` and its one input tensor (None if not exactly one)."""
    operation, node_index, _ = tensor._keras_history
    inputs = operation._inbound_nodes[node_index].input_tensors
    return operation, (inputs[0] if len(inputs) == 1 else None)


def _passes_through(operation) -> bool:
    import keras

    if isinstance(operation, tuple(getattr(keras.layers, name) for name in _PASSTHROUGH)):
        return True
    activation = getattr(getattr(operation, "activation", None), "__name__", "")
    return isinstance(operation, keras.layers.Activation) and activation in (
        "linear", "softmax", "sigmoid")


def _skip_passthrough(tensor, stop=None):
    """Walk back from ``tensor`` over pass-through layers (:data:`_PASSTHROUGH`, linear
    activations), or until ``stop`` produced it; returns the layer reached and its input."""
    while True:
        operation, source = _single_input(tensor)
        if stop is not None and _producer(tensor) is stop:
            return stop, source
        if source is None or not _passes_through(operation):
            return operation, source
        tensor = source


def head_weights(loaded: LoadedModel, layer) -> np.ndarray:
    """``(channels, classes)``: the weights of the classifier that reads ``layer`` through a
    global average pooling (``layer`` -> GAP -> [dropout/flatten/reshape] -> Dense or 1x1 Conv
    -> [reshape/softmax] -> the explained output), in the order of the explained scores (a
    binary sigmoid unit's two columns are ``-w, w``). A usage error naming what is missing when
    the model has no such head (CAM needs one)."""
    import keras

    why = (f"--method cam needs the target layer {layer.name!r} followed by global average "
           "pooling and a Dense (or 1x1 convolution) classifier")
    try:
        dense, pooled = _skip_passthrough(loaded.model.outputs[loaded.output_index])
        pool, source = _skip_passthrough(pooled) if pooled is not None else (None, None)
    except (AttributeError, IndexError, TypeError, ValueError):
        raise UsageError(f"{why}; the model has no graph to check that") from None
    activation = getattr(getattr(dense, "activation", None), "__name__", "linear")
    if isinstance(dense, keras.layers.Conv2D) and tuple(dense.kernel_size) == (1, 1):
        kernel = np.asarray(dense.kernel)[0, 0]
    elif isinstance(dense, keras.layers.Dense):
        kernel = np.asarray(dense.kernel)
    else:
        raise UsageError(f"{why}; the output comes from {dense.name!r}") from None
    if activation not in ("linear", "softmax", "sigmoid"):
        raise UsageError(f"{why}; {dense.name!r} has a {activation} activation")
    if not isinstance(pool, keras.layers.GlobalAveragePooling2D) or source is None or (
            _skip_passthrough(source, stop=layer)[0] is not layer):
        raise UsageError(f"{why}; {dense.name!r} does not read {layer.name!r} that way")
    kernel = kernel.astype(np.float32)
    return np.concatenate([-kernel, kernel], axis=1) if loaded.binary else kernel


# --------------------------------------------------------------------------- layers


def spatial_layers(model, prefix: str = "") -> Iterator[SpatialLayer]:
    """Every layer with a 4-D spatial output, in forward order, descending into nested models."""
    import keras

    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue  # never called in the forward pass: nothing to capture there
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
    """More than one cell each way; an open size (a fully convolutional model's, or a keras-hub
    backbone's) counts: it grows with the input."""
    return all(side is None or side > 1 for side in shape[:2])


def _feeding_layers(model, output_index: int = 0) -> set[int] | None:
    """``id`` of every layer on a path to output ``output_index``, inside nested models too.

    None when the model has no symbolic graph to walk (then no layer is ruled out).
    """
    try:
        stack = [model.outputs[output_index]]
    except (AttributeError, IndexError, TypeError, ValueError):
        return None
    feeding: set[int] = set()
    seen: set[int] = set()
    while stack:
        tensor = stack.pop()
        history = getattr(tensor, "_keras_history", None)
        if history is None or id(tensor) in seen:
            continue
        seen.add(id(tensor))
        operation, node_index, tensor_index = history
        feeding.add(id(operation))
        if hasattr(operation, "layers"):  # a nested model: go on inside it
            try:
                stack.append(operation.outputs[tensor_index])
            except (AttributeError, IndexError, TypeError, ValueError):
                return None
        nodes = getattr(operation, "_inbound_nodes", ())
        if node_index < len(nodes):
            stack.extend(nodes[node_index].input_tensors)
    return feeding


def default_layer(model, output_index: int = 0) -> SpatialLayer:
    """The last layer whose output is a feature map with more than one cell in each direction,
    among the layers that feed output ``output_index``."""
    candidates = [s for s in spatial_layers(model) if _is_spatial(s.shape)]
    feeding = _feeding_layers(model, output_index)
    if feeding is not None:
        candidates = [s for s in candidates if id(s.layer) in feeding]
    if not candidates:
        raise UsageError("the model has no layer with a 4-D spatial output to explain")
    return candidates[-1]


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
    if len(by_name) > 1:
        raise UsageError(
            f"layer name {path!r} is ambiguous: " + ", ".join(c.path for c in by_name)
        )
    import difflib

    names = [c.path for c in layers]
    leaves = {c.path.rsplit("/", 1)[-1]: c.path for c in layers}
    close = difflib.get_close_matches(path, names, n=5, cutoff=0.5)
    close += [leaves[n] for n in difflib.get_close_matches(path, list(leaves), n=5, cutoff=0.5)]
    close = list(dict.fromkeys(close))[:5] or names[-3:]
    raise UnknownNameError("layer", path, close)
