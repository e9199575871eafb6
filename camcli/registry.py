"""Every model camcli knows, in one table (in the style of timm's model registry).

A :class:`ModelSpec` says how to build one ImageNet classifier from ``keras.applications``, which
``preprocess_input`` goes with it, the input size its ImageNet weights were trained at, which
layer Grad-CAM explains by default and whether its ImageNet weights ship inside the package
(:class:`BundledWeights`: such a model works offline). Everything else in camcli asks this
module, so adding a model means adding one row below.

Why the facts are literals rather than computed: listing models, resolving names and printing
"did you mean" must be instant, so this module never imports TensorFlow or Keras at import time
(Keras is imported inside :meth:`ModelSpec.build` and :meth:`ModelSpec.preprocess_input` only).
The default layers were computed by ``tools/compute_default_layers.py`` and are re-checked against
real models by the slow test in ``tests/test_registry.py``.
"""

from __future__ import annotations

import collections
import contextlib
import difflib
import fnmatch
import os
import re
from dataclasses import dataclass
from pathlib import Path

from camcli.errors import UnknownNameError


@dataclass(frozen=True)
class BundledWeights:
    """ImageNet weights shipped inside the package (``camcli/data/<file>``): no download.

    ``sha256`` and ``size`` are what the file must be; the loader checks them before use, so a
    damaged install fails with a message instead of giving wrong maps.
    """

    file: str  # file name in camcli/data
    sha256: str
    size: int  # bytes

    def to_dict(self) -> dict:
        return {"file": self.file, "sha256": self.sha256, "bytes": self.size}


def normalize(name: str) -> str:
    """The lookup key: lower-case, '-' and '_' dropped ("ResNet-50" == "resnet_50" == "resnet50").

    '.' is kept so that "mobilenet_v1_0.25_224" and "mobilenet_v1_0.5_224" stay distinct.
    """
    return name.lower().replace("-", "").replace("_", "")


@dataclass(frozen=True)
class ModelSpec:
    """One ImageNet classifier: how to build it, preprocess for it and explain it."""

    name: str  # canonical lower-case name, e.g. "resnet50"
    constructor: str  # attribute of keras.applications, e.g. "ResNet50"
    family: str  # keras.applications submodule whose preprocess_input applies, e.g. "resnet"
    input_size: tuple[int, int]  # (height, width) the ImageNet weights expect
    default_layer: str  # last layer with a 4-D output larger than 1x1: the Grad-CAM target
    aliases: tuple[str, ...] = ()
    options: tuple[tuple[str, object], ...] = ()  # extra constructor kwargs, e.g. alpha
    bundled: BundledWeights | None = None  # ImageNet weights in the package: work offline

    def build(self, weights: str | None = None):
        """Build the Keras model returning logits (``classifier_activation=None``).

        ``weights`` is passed through: None (random), "imagenet" or a weights-file path. Every
        entry's ``input_size`` is the size its ImageNet weights exist for, so the same call is
        valid for "imagenet" (Keras refuses other sizes with ``include_top=True``). Models with
        preprocessing built in (MobileNetV3, EfficientNet, EfficientNetV2, ConvNeXt) keep it on
        (their ``preprocess_input`` is then a pass-through), as their ImageNet weights expect.
        Channels-last input is assumed, as everywhere in camcli.
        """
        import keras  # deferred: importing Keras loads TensorFlow, which takes seconds

        height, width = self.input_size
        constructor = getattr(keras.applications, self.constructor)
        with _fresh_layer_names():
            return constructor(
                include_top=True,
                weights=weights,
                input_shape=(height, width, 3),
                classifier_activation=None,
                **dict(self.options),
            )

    @property
    def parameters(self) -> int | None:
        """The model's parameter count (the generated :mod:`camcli.applications_table`)."""
        from camcli.applications_table import APPLICATIONS

        return APPLICATIONS.get(self.name, (None, None))[0]

    def weights_status(self) -> str:
        """Where ``--weights imagenet`` comes from: ``bundled`` (in the package), ``cached`` (the
        Keras cache, ``KERAS_HOME`` honoured, holds the file) or ``download``. No TF import."""
        from camcli.applications_table import APPLICATIONS

        if self.bundled:
            return "bundled"
        fname = APPLICATIONS.get(self.name, (None, None))[1]
        return "cached" if fname and (keras_cache() / "models" / fname).is_file() else "download"

    def preprocess_input(self):
        """The ``preprocess_input`` function of ``keras.applications.<family>``."""
        import keras  # deferred, see build()

        return getattr(keras.applications, self.family).preprocess_input

    def to_dict(self) -> dict:
        """JSON-friendly description, for ``camcli models --json``."""
        return {
            "name": self.name,
            "constructor": self.constructor,
            "family": self.family,
            "input_size": list(self.input_size),
            "default_layer": self.default_layer,
            "aliases": list(self.aliases),
            "options": dict(self.options),
            "bundled_weights": self.bundled.to_dict() if self.bundled else None,
            "source": "keras.applications",
            "parameters": self.parameters,
            "weights": self.weights_status(),
        }


def keras_cache() -> Path:
    """The folder ``keras.utils.get_file`` caches in, chosen as Keras chooses it: ``KERAS_HOME``,
    else ``~/.keras`` (``/tmp/.keras`` when home is not writable); ``/tmp/.keras`` when that
    folder is not writable (or does not exist yet)."""
    home = os.environ.get("KERAS_HOME")
    if home is None:
        base = Path("~").expanduser()
        home = str((base if os.access(base, os.W_OK) else Path("/tmp")) / ".keras")
    folder = Path(home).expanduser()
    return folder if os.access(folder, os.W_OK) else Path("/tmp/.keras")


@contextlib.contextmanager
def _fresh_layer_names():
    """Give the layers built inside the block the names they get in a fresh Python process.

    Some applications leave layers unnamed (NASNet's final ReLU, MobileNetV3's activations), so
    Keras numbers them with a per-session counter: NASNetMobile's last ReLU is "activation_187"
    in a fresh process but gets another number if any layer was created before. The stored
    ``default_layer`` is the fresh-process name, so we build with a fresh counter; afterwards the
    session counter becomes the maximum of both, so later auto-names cannot collide with this
    model's. This touches Keras' private global state; if that moves, we build as-is.
    """
    try:
        from keras.src.backend.common import global_state
    except ImportError:  # pragma: no cover - depends on the Keras version
        yield
        return
    key = "object_name_uids"
    saved = global_state.get_global_attribute(key) or collections.defaultdict(int)
    fresh = collections.defaultdict(int)
    global_state.set_global_attribute(key, fresh)
    try:
        yield
    finally:
        for prefix, count in fresh.items():
            saved[prefix] = max(saved[prefix], count)
        global_state.set_global_attribute(key, saved)


# Every model, grouped by the keras.applications submodule whose preprocess_input it uses.
# Rows: (canonical name, keras.applications constructor, input size, default Grad-CAM layer).
# Canonical names normalize to the constructor name where possible ("inception_v3" ->
# "inceptionv3" == normalize("InceptionV3")), so constructor names resolve without aliases.
# Default layers: from tools/compute_default_layers.py (see the notes at the end of the table).
# fmt: off
_BY_FAMILY = {
    "vgg16": [
        ("vgg16", "VGG16", 224, "block5_pool"),
    ],
    "vgg19": [
        ("vgg19", "VGG19", 224, "block5_pool"),
    ],
    "resnet": [
        ("resnet50",  "ResNet50",  224, "conv5_block3_out"),
        ("resnet101", "ResNet101", 224, "conv5_block3_out"),
        ("resnet152", "ResNet152", 224, "conv5_block3_out"),
    ],
    "resnet_v2": [
        ("resnet50v2",  "ResNet50V2",  224, "post_relu"),
        ("resnet101v2", "ResNet101V2", 224, "post_relu"),
        ("resnet152v2", "ResNet152V2", 224, "post_relu"),
    ],
    "inception_v3": [
        ("inception_v3", "InceptionV3", 299, "mixed10"),
    ],
    "inception_resnet_v2": [
        ("inception_resnet_v2", "InceptionResNetV2", 299, "conv_7b_ac"),
    ],
    "xception": [
        ("xception", "Xception", 299, "block14_sepconv2_act"),
    ],
    "densenet": [
        ("densenet121", "DenseNet121", 224, "relu"),
        ("densenet169", "DenseNet169", 224, "relu"),
        ("densenet201", "DenseNet201", 224, "relu"),
    ],
    "nasnet": [
        ("nasnet_mobile", "NASNetMobile", 224, "activation_187"),
        ("nasnet_large",  "NASNetLarge",  331, "activation_259"),
    ],
    "efficientnet": [
        ("efficientnetb0", "EfficientNetB0", 224, "top_activation"),
        ("efficientnetb1", "EfficientNetB1", 240, "top_activation"),
        ("efficientnetb2", "EfficientNetB2", 260, "top_activation"),
        ("efficientnetb3", "EfficientNetB3", 300, "top_activation"),
        ("efficientnetb4", "EfficientNetB4", 380, "top_activation"),
        ("efficientnetb5", "EfficientNetB5", 456, "top_activation"),
        ("efficientnetb6", "EfficientNetB6", 528, "top_activation"),
        ("efficientnetb7", "EfficientNetB7", 600, "top_activation"),
    ],
    "efficientnet_v2": [
        ("efficientnetv2b0", "EfficientNetV2B0", 224, "top_activation"),
        ("efficientnetv2b1", "EfficientNetV2B1", 240, "top_activation"),
        ("efficientnetv2b2", "EfficientNetV2B2", 260, "top_activation"),
        ("efficientnetv2b3", "EfficientNetV2B3", 300, "top_activation"),
        ("efficientnetv2s",  "EfficientNetV2S",  384, "top_activation"),
        ("efficientnetv2m",  "EfficientNetV2M",  480, "top_activation"),
        ("efficientnetv2l",  "EfficientNetV2L",  480, "top_activation"),
    ],
    "convnext": [
        ("convnext_tiny",   "ConvNeXtTiny",   224, "convnext_tiny_stage_3_block_2_identity"),
        ("convnext_small",  "ConvNeXtSmall",  224, "convnext_small_stage_3_block_2_identity"),
        ("convnext_base",   "ConvNeXtBase",   224, "convnext_base_stage_3_block_2_identity"),
        ("convnext_large",  "ConvNeXtLarge",  224, "convnext_large_stage_3_block_2_identity"),
        ("convnext_xlarge", "ConvNeXtXLarge", 224, "convnext_xlarge_stage_3_block_2_identity"),
    ],
}

# MobileNetV3 (family "mobilenet_v3", 224x224): Keras publishes weights for alpha 0.75 and 1.0,
# and for minimalistic 1.0 (WEIGHTS_HASHES in keras/src/applications/mobilenet_v3.py).
# Rows: (name, constructor, default layer, alpha, minimalistic).
_MOBILENET_V3 = [
    ("mobilenet_v3_small_1.0_224",              "MobileNetV3Small", "activation_17", 1.0,  False),
    ("mobilenet_v3_small_0.75_224",             "MobileNetV3Small", "activation_17", 0.75, False),
    ("mobilenet_v3_small_minimalistic_1.0_224", "MobileNetV3Small", "re_lu_22",      1.0,  True),
    ("mobilenet_v3_large_1.0_224",              "MobileNetV3Large", "activation_19", 1.0,  False),
    ("mobilenet_v3_large_0.75_224",             "MobileNetV3Large", "activation_19", 0.75, False),
    ("mobilenet_v3_large_minimalistic_1.0_224", "MobileNetV3Large", "re_lu_30",      1.0,  True),
]

# MobileNet v1 (family "mobilenet"): weights for every alpha x size (keras/.../mobilenet.py).
_MOBILENET_V1_GRID = [(a, s) for a in (0.25, 0.5, 0.75, 1.0) for s in (128, 160, 192, 224)]
_MOBILENET_V1_LAYER = "conv_pw_13_relu"

# MobileNetV2 (family "mobilenet_v2"): Keras accepts alpha 0.35..1.4 x size 96..224, but the 1.3
# and 1.4 weights exist at 224 only (the other URLs 404, keras-team/keras#16452), as in the
# original TF-slim release.
_MOBILENET_V2_GRID = [
    *((a, s) for a in (0.35, 0.5, 0.75, 1.0) for s in (96, 128, 160, 192, 224)),
    (1.4, 224),
    (1.3, 224),
]
_MOBILENET_V2_LAYER = "out_relu"

# Extra names, only where normalizing the canonical name does not already give them.
_ALIASES = {
    "mobilenet_v1_1.0_224": ("mobilenet", "mobilenet_v1"),  # "MobileNet" is Keras' name
    "mobilenet_v2_1.0_224": ("mobilenet_v2",),  # also "MobileNetV2", "mobilenetv2"
    "mobilenet_v3_small_1.0_224": ("mobilenet_v3_small",),  # also "MobileNetV3Small"
    "mobilenet_v3_large_1.0_224": ("mobilenet_v3_large",),  # also "MobileNetV3Large"
}

# ImageNet weights that ship in camcli/data (provenance and licence: camcli/data/NOTICE.md).
# MobileNet v1 0.25 is the smallest real ImageNet classifier (0.5 M parameters, ~50 % top-1):
# the one that lets the demo, smoke tests and CI run offline.
_BUNDLED = {
    "mobilenet_v1_0.25_224": BundledWeights(
        file="mobilenet_v1_0.25_224_imagenet.weights.h5",
        sha256="6062f8635e2a9f8e814b7289f8089be56d37001b924414f73885fa981c9e178f",
        size=2_140_432,
    ),
}
# fmt: on

# Notes on default layers (the rule is in tools/compute_default_layers.py):
# - VGG: block5_pool (7x7), not block5_conv3 (14x14): the pool is the last 4-D layer.
# - MobileNet v1/V3 heads reshape or pool to 1x1 maps and convolve them; those are skipped.
# - NASNet and MobileNetV3 leave their last activations unnamed, so the names are Keras
#   auto-names; build() makes them reproducible (see _fresh_layer_names).
# - ConvNeXt: the block's residual add is an op, not a layer, so the last 4-D *layer* is the
#   last block's residual branch ("..._identity"), not the stage output that feeds the head.


def _spec(name, constructor, family, size, layer, **options) -> ModelSpec:
    return ModelSpec(
        name=name,
        constructor=constructor,
        family=family,
        input_size=(size, size),
        default_layer=layer,
        aliases=_ALIASES.get(name, ()),
        options=tuple(options.items()),
        bundled=_BUNDLED.get(name),
    )


def _all_specs() -> list[ModelSpec]:
    """Expand the tables above into specs."""
    specs = [
        _spec(name, constructor, family, size, layer)
        for family, rows in _BY_FAMILY.items()
        for name, constructor, size, layer in rows
    ]
    specs += [
        _spec(name, constructor, "mobilenet_v3", 224, layer, alpha=alpha, minimalistic=minimal)
        for name, constructor, layer, alpha, minimal in _MOBILENET_V3
    ]
    specs += [
        _spec(f"mobilenet_v1_{a}_{s}", "MobileNet", "mobilenet", s, _MOBILENET_V1_LAYER, alpha=a)
        for a, s in _MOBILENET_V1_GRID
    ]
    specs += [
        _spec(
            f"mobilenet_v2_{a}_{s}", "MobileNetV2", "mobilenet_v2", s, _MOBILENET_V2_LAYER, alpha=a
        )
        for a, s in _MOBILENET_V2_GRID
    ]
    return sorted(specs, key=lambda spec: spec.name)


_MODELS: dict[str, ModelSpec] = {spec.name: spec for spec in _all_specs()}
if set(_BUNDLED) - set(_MODELS):  # a typo in _BUNDLED would silently bundle nothing
    raise ValueError(f"bundled weights for unknown models: {sorted(set(_BUNDLED) - set(_MODELS))}")


def _build_index(specs) -> dict[str, ModelSpec]:
    """Normalized canonical names and aliases -> spec; a clash is a bug in the table above."""
    index: dict[str, ModelSpec] = {}
    for spec in specs:
        for name in (spec.name, *spec.aliases):
            key = normalize(name)
            if key in index:
                raise ValueError(f"model name {name!r} clashes with {index[key].name!r}")
            index[key] = spec
    return index


_INDEX = _build_index(_MODELS.values())


def list_models(pattern: str | None = None) -> list[ModelSpec]:
    """All models sorted by name, optionally filtered by an fnmatch pattern ("resnet*").

    The pattern is case-insensitive and is tried on canonical names both as typed and
    normalized, so "mobilenet_v1*" and "MobileNetV1*" agree. A pattern that is exactly a name or
    alias ("mobilenet") selects that model too; aliases take no part in wildcard matching, where
    they would pull single grid members ("mobilenet_v2" -> mobilenet_v2_1.0_224) into "*v2".
    """
    if pattern is None:
        return list(_MODELS.values())
    raw, key = pattern.lower(), normalize(pattern)
    exact = _INDEX.get(key)
    return [
        spec
        for spec in _MODELS.values()
        if spec is exact
        or fnmatch.fnmatchcase(spec.name, raw)
        or fnmatch.fnmatchcase(normalize(spec.name), key)
    ]


def bundled_models() -> list[ModelSpec]:
    """The models whose ImageNet weights ship in the package (they work offline), by name."""
    return [spec for spec in _MODELS.values() if spec.bundled is not None]


def get_spec(name: str) -> ModelSpec:
    """The spec for ``name`` (canonical or alias; case, '-' and '_' ignored).

    Raises :class:`UnknownNameError` listing close canonical names.
    """
    spec = _INDEX.get(normalize(name))
    if spec is None:
        raise UnknownNameError("model", name, _suggestions(name))
    return spec


def _suggestions(name: str, limit: int = 5) -> list[str]:
    """Canonical names the user probably meant, best first.

    1. completions of what was typed, shortest first ("resnet5" -> resnet50);
    2. siblings: names with the same stem and the nearest number ("resnet5" -> resnet101, whose
       number is nearer 5 than 152's; "efficientnetb9" -> efficientnetb7, b6, b5) — after a
       completion only the nearest sibling, so the list stays short;
    3. typos, by difflib similarity (ties alphabetically).

    All on normalized names, aliases included. A name extending one already shown (resnet50v2
    after resnet50) is a variant and left out; ``camcli models 'resnet50*'`` lists variants.
    """
    key = normalize(name)
    completions = sorted(
        (k for k in _INDEX if key and k.startswith(key)), key=lambda k: (len(k), k)
    )
    stem, number = _stem_and_number(key)
    siblings = sorted(
        (k for k in _INDEX if stem and k not in completions and _stem_and_number(k)[0] == stem),
        key=lambda k: (abs(_stem_and_number(k)[1] - number), len(k), k),
    )
    similarity = {k: difflib.SequenceMatcher(None, key, k).ratio() for k in _INDEX}
    typos = sorted((k for k in _INDEX if similarity[k] >= 0.6), key=lambda k: (-similarity[k], k))
    found: list[str] = []

    def add(keys, room: int) -> None:
        for k in keys:
            if len(found) >= room:
                return
            canonical = _INDEX[k].name
            if not any(canonical.startswith(shown) for shown in found):
                found.append(canonical)

    add(completions, limit)
    if found:
        add(siblings, len(found) + 1)
        return found
    add(siblings, min(limit, 3))
    add(typos, limit)
    return found


def _stem_and_number(key: str) -> tuple[str, int]:
    """ "resnet101v2" -> ("resnet", 101); names without a number have no stem."""
    match = re.match(r"([a-z]+)(\d+)", key)
    return (match.group(1), int(match.group(2))) if match else ("", 0)
