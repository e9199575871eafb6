"""Check registry models in this process and print one JSON line per model.

The slow test in ``tests/test_registry.py`` runs two of these, each on half of the registry,
clearing the Keras session between models so memory stays bounded (TensorFlow's start-up is paid
twice, not eighty times). By hand::

    python tests/registry_worker.py resnet50 mobilenet_v2

Per model: it builds with random weights through camcli's own loading path (once), checks the
stored default layer is the last >1x1 feature map, then runs one Grad-CAM through the engine.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _is_spatial(layer) -> bool:
    """Output is (batch, height, width, channels) with height > 1 and width > 1."""
    shape = getattr(layer.output, "shape", None)  # a list/tuple output has no shape
    return (
        shape is not None
        and len(shape) == 4
        and all(dim is not None and dim > 1 for dim in shape[1:3])
    )


def check(name: str) -> dict:
    """Build registry model ``name`` with random weights through camcli's own loading path,
    check its stored ``default_layer`` and run one Grad-CAM on it.

    The model is built once: ``loading.load(name, weights="none")`` is ``spec.build(weights=None)``
    (float32, so not rebuilt) and its ``LoadedModel.model`` is that very Keras model, so the
    structural checks and the Grad-CAM see the same build (building is half the cost here).
    """
    import keras

    from camcli import loading, registry

    spec = registry.get_spec(name)
    # Create auto-named layers first: the stored names (NASNet's and MobileNetV3's are auto-names)
    # must not depend on what the process built before.
    keras.layers.Activation("relu"), keras.layers.ReLU(), keras.layers.Add()

    start = time.perf_counter()
    loaded = loading.load(spec.name, weights="none")
    model = loaded.model
    result = {"name": spec.name, "default_layer": spec.default_layer, "problems": []}
    problems = result["problems"]
    result["build_seconds"] = round(time.perf_counter() - start, 1)

    height, width = spec.input_size
    if tuple(model.input_shape) != (None, height, width, 3):
        problems.append(f"input shape {model.input_shape}, expected {(None, height, width, 3)}")
    if tuple(model.output_shape) != (None, 1000):
        problems.append(f"output shape {model.output_shape}, expected (None, 1000)")
    if model.count_params() != spec.parameters:  # the generated table `camcli models` shows
        problems.append(f"{model.count_params()} parameters, the table says {spec.parameters}")

    names = [layer.name for layer in model.layers]
    if spec.default_layer not in names:
        problems.append(f"no layer named {spec.default_layer!r}")
    else:
        index = names.index(spec.default_layer)
        layer = model.layers[index]
        result["layer_shape"] = list(layer.output.shape)[1:]
        if not _is_spatial(layer):
            problems.append(f"{layer.name} output {layer.output.shape} is not a >1x1 feature map")
        later = [other.name for other in model.layers[index + 1 :] if _is_spatial(other)]
        if later:
            problems.append(f"not the last >1x1 feature map; later: {', '.join(later)}")

    del model
    start = time.perf_counter()
    _one_gradcam(spec, loaded, problems)
    result["gradcam_seconds"] = round(time.perf_counter() - start, 1)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    return result


def _one_gradcam(spec, loaded, problems: list[str]) -> None:
    """One image through camcli's own path: loading (rule-based default layer) and the engine."""
    import numpy as np

    from camcli.engine import Engine

    if loaded.layer_path != spec.default_layer:
        problems.append(f"loading chose {loaded.layer_path!r}, not {spec.default_layer!r}")
    height, width = spec.input_size
    pixels = np.random.default_rng(0).uniform(0, 255, (1, height, width, 3)).astype("float32")
    output = Engine(loaded, compiled=False).run(loaded.preprocess(pixels))
    cam = output.cams[0, 0]
    if cam.shape != tuple(loaded.layer.output.shape[1:3]):
        problems.append(f"map shape {cam.shape}, layer {loaded.layer.output.shape}")
    if not np.isfinite(cam).all() or cam.min() < 0 or cam.max() > 1:
        problems.append("map not finite or outside [0, 1]")


def main(argv: list[str]) -> int:
    if not argv:
        print("usage: registry_worker.py MODEL [MODEL ...]", file=sys.stderr)
        return 2
    sys.path.insert(0, str(ROOT))
    import gc

    import keras

    from camcli import engine, loading  # noqa: F401  (imported before the freeze below)

    # One image runs alone, not beside a copy of itself: what is checked here is each model's
    # structure and one finite map, not the batch-independent bits MIN_BATCH buys (test_engine
    # checks those); the copy would double the largest models' time (EfficientNetB7: 28 s).
    engine.MIN_BATCH = 1

    # What is loaded so far (TensorFlow, Keras, camcli: ~270,000 objects) stays for the whole
    # process: freeze it out of the garbage collector's sweeps, so that each collection (the
    # automatic ones while a model is built, clear_session's after it) walks only the objects
    # made since, i.e. the models. Collection itself is unchanged: models are still freed.
    gc.freeze()
    for name in argv:
        try:
            result = check(name)
        except Exception as exc:  # report, so the slow test can list every failing model
            result = {"name": name, "problems": [f"{type(exc).__name__}: {exc}"]}
        print(json.dumps(result), flush=True)
        keras.backend.clear_session()  # and gc.collect(): memory stays bounded
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
