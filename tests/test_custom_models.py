"""Your own model: fine-tuned, nested, sigmoid, non-ImageNet — camcli explains it.

Every model here is built (and, where the maps must mean something, trained) inside the tests
and saved under a temporary folder, then explained the way a user would: through
``camcli.api.Explainer(model=PATH)`` or the installed ``camcli`` command in a subprocess.
Grad-CAM maps are checked against an independent reference written here (the model split by
hand at the target layer, gradients taken with a plain ``tf.GradientTape``, no camcli code), or,
for trained models, against where the evidence really is in synthetic images.

CLI start-up costs seconds, so each test starts its commands together (``_camcli_all``).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image
from synthetic import background, make_shapes, point_in_box, shape_mask

from camcli import loading
from camcli.api import Explainer
from camcli.errors import UsageError
from camcli.preprocessing import get_preprocess

CAMCLI = Path(sys.executable).with_name("camcli")
TOL = 1e-4
MIN_POINTING = 0.9


# --------------------------------------------------------------------------- helpers


def _sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


class _Saved:
    """Model files written by a fixture, with their hashes taken right after saving."""

    def __init__(self):
        self.hashes: dict[Path, str] = {}

    def save(self, model, path: Path) -> Path:
        model.save(str(path))
        self.hashes[path] = _sha256(path)
        return path

    def assert_untouched(self):
        for path, digest in self.hashes.items():
            assert _sha256(path) == digest, f"camcli modified the user's model file {path}"


def _camcli_all(*commands: list[str], cwd: Path) -> list[subprocess.CompletedProcess]:
    """Run several ``camcli`` commands at once (each start-up costs seconds); wait for all."""
    assert CAMCLI.exists(), f"the camcli entry point is not installed at {CAMCLI}"
    env = dict(os.environ, KERAS_HOME=str(cwd / "keras_home"))
    for name in ("https_proxy", "http_proxy", "HTTPS_PROXY", "HTTP_PROXY"):
        env[name] = "http://127.0.0.1:9"  # nothing here may download
    running = [
        (args, subprocess.Popen([str(CAMCLI), *map(str, args)], cwd=cwd, env=env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE))
        for args in commands
    ]
    results = []
    for args, process in running:
        stdout, stderr = process.communicate(timeout=300)
        results.append(subprocess.CompletedProcess(args, process.returncode, stdout, stderr))
    return results


def _lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def _records(run: subprocess.CompletedProcess) -> list[dict]:
    assert run.returncode == 0, f"camcli {run.args} exited {run.returncode}: {run.stderr}"
    records = [json.loads(line) for line in _lines(run.stdout)]
    assert records and all(r["ok"] for r in records), records
    return records


def _assert_usage_error(run: subprocess.CompletedProcess) -> str:
    """Exit 2, one line on stderr, no traceback; returns the message."""
    lines = _lines(run.stderr)
    assert run.returncode == 2, f"exit {run.returncode}, stderr: {run.stderr}"
    assert "Traceback" not in run.stderr
    assert len(lines) == 1, f"expected a one-line message, got:\n{run.stderr}"
    assert lines[0].startswith("camcli: error: "), lines[0]
    assert run.stdout.strip() == ""
    return lines[0]


def _heatmap(record: dict, cwd: Path, k: int = 0) -> np.ndarray:
    """The ``--save-heatmap`` map of explanation ``k`` (output paths are relative to ``cwd``)."""
    name = record["explanations"][k]["heatmap"]
    return np.load(Path(cwd) / Path(record["files"][0]).parent / name)


def _write_png(pixels: np.ndarray, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.squeeze(pixels)).save(path)
    return path


def _to_uint8(images: np.ndarray) -> np.ndarray:
    return np.round(np.clip(images, 0.0, 1.0) * 255.0).astype(np.uint8)


def _peak(cam: np.ndarray, width: int, height: int) -> tuple[float, float]:
    """The centre of the hottest map cell, in input pixels (computed here, not by camcli)."""
    i, j = np.unravel_index(int(np.argmax(cam)), cam.shape)
    return (j + 0.5) * width / cam.shape[1], (i + 0.5) * height / cam.shape[0]


def _pointing_rate(cams, boxes, size: int, margin: float) -> float:
    hits = [point_in_box(_peak(cam, size, size), box, margin)
            for cam, box in zip(cams, boxes, strict=True)]
    return float(np.mean(hits))


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max())
    return e / e.sum()


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-np.asarray(z, dtype=np.float64)))


def reference_gradcam(features_fn, head_fn, images, classes=None):
    """Textbook Grad-CAM, one image at a time, on a model split by hand at the target layer.

    ``features_fn``: preprocessed image batch -> target activations. ``head_fn``: activations ->
    pre-activation class scores. ``classes``: the class per image (default: its top class).
    Returns (classes, maps scaled to max 1, scores).
    """
    chosen, cams, all_scores = [], [], []
    for i, image in enumerate(np.asarray(images, dtype=np.float32)):
        features = tf.convert_to_tensor(features_fn(tf.constant(image[None])))
        with tf.GradientTape() as tape:
            tape.watch(features)
            scores = head_fn(features)
            c = int(np.argmax(scores[0])) if classes is None else int(classes[i])
            score = scores[0, c]
        grads = tape.gradient(score, features)[0].numpy()
        cam = np.maximum((features[0].numpy() * grads.mean(axis=(0, 1))).sum(axis=-1), 0.0)
        assert cam.max() > 0, "reference map is empty: the test model is degenerate"
        chosen.append(c)
        cams.append(cam / cam.max())
        all_scores.append(scores[0].numpy())
    return np.array(chosen), np.array(cams), np.array(all_scores)


def _dense_head(dense):
    """GAP then ``dense`` without its activation: the pre-activation scores."""
    kernel, bias = (tf.constant(w) for w in dense.get_weights())
    return lambda f: tf.reduce_mean(f, axis=(1, 2)) @ kernel + bias


def _layers_table(run: subprocess.CompletedProcess) -> tuple[list[str], list[str]]:
    """(every listed layer path, the paths marked *) from ``camcli layers`` table output."""
    assert run.returncode == 0, run.stderr
    paths, marked = [], []
    for line in run.stdout.splitlines():
        cells = [c.strip() for c in line.split("│")]
        if len(cells) >= 4 and cells[2] and "(" in cells[3]:
            paths.append(cells[2])
            if cells[1] == "*":
                marked.append(cells[2])
    return paths, marked


# --------------------------------------------------------------------------- synthetic scenes

SCENE = 64
KINDS = ("square", "ring")  # object A / "has square" = 0, object B / "has ring" = 1


def _overlaps(box, other, gap: int) -> bool:
    x0, y0, x1, y1 = box
    a0, b0, a1, b1 = other
    return not (x1 + gap <= a0 or a1 + gap <= x0 or y1 + gap <= b0 or b1 + gap <= y0)


def make_scenes(present: np.ndarray, seed: int, size: int = SCENE):
    """Images holding the objects flagged in ``present`` (n, len(KINDS)), at random places.

    Objects never touch (8 px apart at least). Returns (uint8 images, boxes (n, kinds, 4),
    -1 where an object is absent). Backgrounds and shapes come from tests/synthetic.py.
    """
    rng = np.random.default_rng(seed)
    images = np.empty((len(present), size, size, 3), dtype=np.uint8)
    boxes = np.full((len(present), len(KINDS), 4), -1, dtype=np.int64)
    for i, flags in enumerate(present):
        picture = background(rng, size)
        kinds = np.flatnonzero(flags)
        for _attempt in range(1000):  # draw whole layouts until the objects lie apart
            placed = []
            for _ in kinds:
                side = int(rng.integers(14, 21))
                x0, y0 = (int(v) for v in rng.integers(0, size - side + 1, size=2))
                placed.append((x0, y0, x0 + side, y0 + side))
            if len(placed) < 2 or not _overlaps(placed[0], placed[1], gap=8):
                break
        else:
            raise AssertionError("could not place the objects apart")
        for k, box in zip(kinds, placed, strict=True):
            x0, y0, x1, _ = box
            side = x1 - x0
            colour = rng.uniform(0.6, 1.0, size=3)
            colour[rng.integers(0, 3)] = 1.0
            patch = picture[y0 : y0 + side, x0 : x0 + side]
            patch[shape_mask(KINDS[k], side, rng)] = colour
            boxes[i, k] = box
        images[i] = _to_uint8(picture)
    return images, boxes


def _scene_cnn(units: int, activation: str | None, name: str) -> keras.Model:
    """64x64 RGB in [0, 1] -> 8x8 "features" -> GAP -> Dense(units, activation) "head"."""
    inputs = keras.Input((SCENE, SCENE, 3))
    x = inputs
    for filters in (16, 32, 48):
        x = keras.layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
        x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Conv2D(64, 3, padding="same", activation="relu", name="features")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(units, activation=activation, name="head")(x)
    return keras.Model(inputs, outputs, name=name)


def _fit(model, x, y, loss, validate, epochs: int = 6, batch_size: int = 32) -> float:
    """Train; while ``validate()`` (accuracy on separate validation images) is below 0.97,
    train a few epochs more (a small CNN sometimes needs them). Returns the last accuracy."""
    for round_epochs in (epochs, 3, 3, 3):
        steps = round_epochs * -(-len(x) // batch_size)
        model.compile(
            optimizer=keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(3e-3, steps)),
            loss=loss,
        )
        model.fit(x, y, batch_size=batch_size, epochs=round_epochs, verbose=0)
        accuracy = validate()
        if accuracy >= 0.97:
            break
    return accuracy


# =========================================================================== 1. transfer learning


@pytest.fixture(scope="module")
def transfer(tmp_path_factory):
    """MobileNetV2 base (random weights) nested in a Sequential ending in Dense(3, softmax)."""
    folder = tmp_path_factory.mktemp("transfer")
    keras.utils.set_random_seed(3)
    base = keras.applications.MobileNetV2(
        alpha=0.35, weights=None, include_top=False, input_shape=(96, 96, 3)
    )
    dense = keras.layers.Dense(3, activation="softmax", name="classes")
    model = keras.Sequential(
        [keras.Input((96, 96, 3)), base, keras.layers.GlobalAveragePooling2D(), dense],
        name="finetuned",
    )
    # Random weights make MobileNetV2's activations vanish (features near 1e-10): calibrate the
    # batch-norm statistics on a batch, as a first fine-tuning pass would, so maps are real.
    norms = [layer for layer in base.layers if isinstance(layer, keras.layers.BatchNormalization)]
    momenta = [layer.momentum for layer in norms]
    for layer in norms:
        layer.momentum = 0.0
    base(make_shapes(16, seed=4, size=96, classes=3).images * 2.0 - 1.0, training=True)
    for layer, momentum in zip(norms, momenta, strict=True):
        layer.momentum = momentum
    # Spread the class weights so the three logits clearly differ (the head is not trained).
    kernel, bias = dense.get_weights()
    rng = np.random.default_rng(3)
    dense.set_weights([rng.normal(0.0, 0.3, kernel.shape).astype(np.float32), bias])
    saved = _Saved()
    files = {ext: saved.save(model, folder / f"finetuned.{ext}") for ext in ("keras", "h5")}
    pixels = _to_uint8(make_shapes(3, seed=5, size=96, classes=3).images)
    inputs = [_write_png(p, folder / "inputs" / f"photo{i}.png") for i, p in enumerate(pixels)]
    return {"folder": folder, "model": model, "base": base, "dense": dense, "files": files,
            "saved": saved, "pixels": pixels, "inputs": inputs}


def test_transfer_model_keras_and_h5_match_the_reference_from_the_cli(transfer):
    folder, base = transfer["folder"], transfer["base"]
    runs = _camcli_all(
        *[["explain", *transfer["inputs"], "--model", transfer["files"][ext], "--preprocess",
           "tf", "--save-heatmap", "--json", "--out-dir", f"out_{ext}", "--quiet"]
          for ext in ("keras", "h5")],
        cwd=folder,
    )
    transfer["saved"].assert_untouched()

    x = transfer["pixels"].astype(np.float32) / 127.5 - 1.0  # the documented "tf" formula
    classes, expected, logits = reference_gradcam(
        lambda images: base(images, training=False), _dense_head(transfer["dense"]), x
    )
    assert np.ptp(logits, axis=1).min() > 0.1, f"degenerate test model: logits {logits}"
    for ext, run in zip(("keras", "h5"), runs, strict=True):
        records = _records(run)
        assert len(records) == 3
        for i, record in enumerate(records):
            assert record["model"]["layer"] == f"{base.name}/out_relu"
            assert record["model"]["output_activation"] == "softmax"
            assert record["model"]["preprocess"] == "tf"
            assert record["score"] == "logit"
            entry = record["explanations"][0]
            assert entry["index"] == classes[i]
            # The explained score is the logit, not the softmax probability.
            np.testing.assert_allclose(entry["logit"], logits[i, classes[i]], rtol=1e-4, atol=1e-4)
            np.testing.assert_allclose(
                entry["probability"], _softmax(logits[i])[classes[i]], atol=1e-5
            )
            cam = _heatmap(record, folder)
            assert cam.shape == expected[i].shape == (3, 3)
            assert not entry["empty"] and cam.std() > 0.05, f"degenerate map {cam}"
            diff = np.abs(cam - expected[i]).max()
            assert diff <= TOL, f"{ext} image {i}: max |camcli - reference| = {diff:.2e}"


# =========================================================================== 2. model shapes


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    """Three architectures saved as .keras, each with the reference split written by hand."""
    folder = tmp_path_factory.mktemp("shapes")
    saved = _Saved()
    cases = {}

    # (a) Sequential without an Input: built by calling it on data; non-square input.
    keras.utils.set_random_seed(11)
    seq = keras.Sequential([
        keras.layers.Conv2D(8, 3, activation="relu", name="conv_a"),
        keras.layers.MaxPooling2D(name="pool"),
        keras.layers.Conv2D(12, 3, activation="relu", name="last_conv"),
        keras.layers.GlobalAveragePooling2D(name="gap"),
        keras.layers.Dense(3, activation="softmax", name="probs"),
    ], name="plain_seq")
    seq(np.zeros((1, 40, 56, 3), np.float32))

    def seq_features(x):
        for layer in seq.layers[:3]:
            x = layer(x)
        return x

    cases["sequential"] = (seq, "last_conv", seq_features, _dense_head(seq.get_layer("probs")),
                           "softmax")

    # (b) Functional with a residual branch and a separate softmax Activation layer.
    keras.utils.set_random_seed(12)
    inputs = keras.Input((36, 36, 3))
    a = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="stem")(inputs)
    a = keras.layers.MaxPooling2D(name="pool")(a)
    b = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="branch")(a)
    merged = keras.layers.ReLU(name="merge_relu")(keras.layers.Add(name="add")([a, b]))
    x = keras.layers.GlobalAveragePooling2D()(merged)
    logits = keras.layers.Dense(4, name="logits")(x)
    func = keras.Model(inputs, keras.layers.Activation("softmax", name="softmax")(logits),
                       name="functional")
    func_features = keras.Model(inputs, merged)
    cases["functional"] = (func, "merge_relu", func_features,
                           _dense_head(func.get_layer("logits")), "softmax")

    # (c) Functional containing a Sequential containing a Sequential (no explicit Inputs).
    keras.utils.set_random_seed(13)
    inner = keras.Sequential([
        keras.layers.Conv2D(10, 3, padding="same", activation="relu", name="deep"),
        keras.layers.Conv2D(6, 3, padding="same", activation="relu", name="deeper"),
    ], name="inner")
    mid = keras.Sequential([
        keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="mid_conv"),
        keras.layers.MaxPooling2D(name="mid_pool"),
        inner,
    ], name="mid")
    inputs = keras.Input((32, 48, 3))
    x = keras.layers.GlobalAveragePooling2D()(mid(inputs))
    nested = keras.Model(inputs, keras.layers.Dense(5, name="scores")(x), name="outer")

    def nested_features(x):
        for layer in (*mid.layers[:2], *inner.layers):
            x = layer(x)
        return x

    cases["nested"] = (nested, "mid/inner/deeper", nested_features,
                       _dense_head(nested.get_layer("scores")), "none")

    files = {name: saved.save(case[0], folder / f"{name}.keras") for name, case in cases.items()}
    return {"folder": folder, "cases": cases, "files": files, "saved": saved}


@pytest.mark.parametrize("name", ["sequential", "functional", "nested"])
def test_model_shapes_match_the_reference(shapes, name):
    model, default, features_fn, head_fn, activation = shapes["cases"][name]
    explainer = Explainer(model=str(shapes["files"][name]))
    loaded = explainer.loaded
    assert loaded.layer_path == default
    assert loaded.activation == activation
    assert loaded.preprocess_name == "none"
    height, width, channels = model.input_shape[1:]
    assert loaded.input_size == (height, width) and loaded.channels == channels

    pixels = np.random.default_rng(20).integers(0, 256, (4, height, width, 3), dtype=np.uint8)
    out = explainer.explain_arrays(pixels)
    classes, expected, logits = reference_gradcam(features_fn, head_fn, pixels)

    np.testing.assert_allclose(out.logits, logits, rtol=1e-4, atol=1e-3)  # pre-activation
    np.testing.assert_array_equal(out.targets[:, 0], classes)
    assert not out.empty.any()
    diff = np.abs(out.cams[:, 0] - expected).max()
    assert diff <= TOL, f"{name}: max |camcli - reference| = {diff:.2e}"
    # The eager path (one or two images) gives the same maps.
    eager = explainer.explain_arrays(pixels[:2])
    assert np.abs(eager.cams[:, 0] - expected[:2]).max() <= TOL
    shapes["saved"].assert_untouched()


def test_layer_option_takes_a_path_through_nested_models(shapes):
    nested, *_ = shapes["cases"]["nested"]
    mid = nested.get_layer("mid")
    inner = mid.get_layer("inner")
    pixels = np.random.default_rng(21).integers(0, 256, (3, 32, 48, 3), dtype=np.uint8)

    def features_fn(x):
        for layer in (*mid.layers[:2], inner.layers[0]):
            x = layer(x)
        return x

    head = _dense_head(nested.get_layer("scores"))
    _, expected, _ = reference_gradcam(features_fn, lambda f: head(inner.layers[1](f)), pixels)
    for spelling in ("mid/inner/deep", "deep"):  # a bare name is enough when it is unique
        explainer = Explainer(model=str(shapes["files"]["nested"]), layer=spelling)
        assert explainer.loaded.layer_path == "mid/inner/deep"
        out = explainer.explain_arrays(pixels)
        assert out.cams.shape[2:] == (16, 24)
        assert np.abs(out.cams[:, 0] - expected).max() <= TOL


def test_layers_command_lists_nested_paths_and_marks_the_default(shapes):
    runs = _camcli_all(*[["layers", shapes["files"][name]] for name in shapes["cases"]],
                       cwd=shapes["folder"])
    listed = {name: _layers_table(run) for name, run in zip(shapes["cases"], runs, strict=True)}
    for name, (_paths, marked) in listed.items():
        default = shapes["cases"][name][1]
        assert marked == [default], f"{name}: marked {marked}, expected {default}"
    assert listed["sequential"][0] == ["conv_a", "pool", "last_conv"]
    # The input layer is no target: it is never called in the forward pass.
    assert listed["functional"][0] == ["stem", "pool", "branch", "add", "merge_relu"]
    assert listed["nested"][0] == ["mid/mid_conv", "mid/mid_pool", "mid/inner/deep",
                                   "mid/inner/deeper"]
    shapes["saved"].assert_untouched()


# =========================================================================== 3. ground truth


@pytest.fixture(scope="module")
def shapes_classifier(tmp_path_factory, shapes_cnn):
    """A trained CNN nested in a wrapper with its own Rescaling and a separate softmax layer.

    The CNN is the session's ``shapes_cnn`` (conftest.py: the same architecture and shapes task,
    trained once for the suite), cloned with its weights so the shared model is left as it is.
    """
    folder = tmp_path_factory.mktemp("ground_truth")
    cnn = keras.models.clone_model(shapes_cnn.model)
    cnn.set_weights(shapes_cnn.model.get_weights())
    assert cnn.name == "shapes_cnn" and shapes_cnn.size == SCENE
    inputs = keras.Input((SCENE, SCENE, 3))
    x = keras.layers.Rescaling(1 / 255.0, name="rescale")(inputs)
    outputs = keras.layers.Activation("softmax", name="probabilities")(cnn(x))
    model = keras.Model(inputs, outputs, name="wrapper")
    saved = _Saved()
    path = saved.save(model, folder / "shapes.keras")
    return {"path": path, "cnn": cnn, "held_out": shapes_cnn.held_out, "saved": saved}


def test_trained_nested_softmax_model_points_at_the_object(shapes_classifier):
    held_out = shapes_classifier["held_out"]
    explainer = Explainer(model=str(shapes_classifier["path"]))
    assert explainer.loaded.layer_path == "shapes_cnn/features"
    assert explainer.loaded.activation == "softmax"
    out = explainer.explain_arrays(_to_uint8(held_out.images))

    accuracy = float(np.mean(out.targets[:, 0] == held_out.labels))
    assert accuracy >= 0.9, f"the test model did not learn the task (accuracy {accuracy:.3f})"
    assert len(held_out) >= 100 and not out.empty.any()
    margin = SCENE / 8 / 2  # half a feature cell
    rate = _pointing_rate(out.cams[:, 0], held_out.boxes, SCENE, margin)
    print(f"\nnested softmax model: pointing rate {rate:.3f} on {len(held_out)} images")
    assert rate >= MIN_POINTING, f"peak on the object for only {rate:.1%} of held-out images"
    control = _pointing_rate(np.roll(out.cams[:, 0], 1, axis=0), held_out.boxes, SCENE, margin)
    assert control < 0.5, f"maps of other images 'point' at the object {control:.1%} of the time"
    shapes_classifier["saved"].assert_untouched()


def test_model_with_its_own_rescaling_works_with_the_default_preprocess(shapes_classifier):
    explainer = Explainer(model=str(shapes_classifier["path"]))
    assert explainer.loaded.preprocess_name == "none"
    pixels = _to_uint8(shapes_classifier["held_out"].images[:4])
    out = explainer.explain_arrays(pixels)
    # The scores are the inner CNN's logits on pixels / 255: scaled once, by the model alone.
    expected = shapes_classifier["cnn"](pixels.astype(np.float32) / 255.0).numpy()
    np.testing.assert_allclose(out.logits, expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(out.target_scores[:, 0], expected.max(axis=1), rtol=1e-4,
                               atol=1e-4)


# =========================================================================== 4. sigmoid heads


@pytest.fixture(scope="module")
def binary(tmp_path_factory):
    """One fused sigmoid unit: a square (A) is evidence for class 1, a ring (B) for class 0.

    Trained on images with A only (label 1), B only (0), neither or both (0.5: the evidence
    cancels), so the logit grows with A and falls with B. Held out: images with both objects.
    """
    folder = tmp_path_factory.mktemp("binary")
    keras.utils.set_random_seed(21)
    rng = np.random.default_rng(21)
    present = rng.integers(0, 2, size=(1600, 2))
    target = np.where(present[:, 0] == present[:, 1], 0.5, present[:, 0]).astype(np.float32)
    images, _ = make_scenes(present, seed=22)
    valid_labels = np.arange(100) % 2  # one object: A (1) or B (0)
    valid, _ = make_scenes(np.stack([valid_labels, 1 - valid_labels], axis=1), seed=24)
    model = _scene_cnn(1, "sigmoid", "binary_cnn")

    def validate():
        z = model.predict(valid / 255.0, verbose=0)[:, 0]
        return float(np.mean((z > 0.5) == valid_labels))

    _fit(model, images.astype(np.float32) / 255.0, target[:, None],
         keras.losses.BinaryCrossentropy(), validate)
    held_images, held_boxes = make_scenes(np.ones((120, 2), dtype=int), seed=23)
    only_b, _ = make_scenes(np.tile([0, 1], (10, 1)), seed=25)
    saved = _Saved()
    path = saved.save(model, folder / "binary.keras")
    return {"folder": folder, "path": path, "model": model, "images": held_images,
            "boxes": held_boxes, "only_b": only_b, "saved": saved}


def _binary_reference(model, pixels, cls):
    features = keras.Model(model.inputs, model.get_layer("features").output)
    head = _dense_head(model.get_layer("head"))
    return reference_gradcam(features, lambda f: tf.concat([-head(f), head(f)], axis=-1),
                             pixels.astype(np.float32) / 255.0, [cls] * len(pixels))


def test_binary_sigmoid_maps_point_at_each_class_evidence(binary):
    images, boxes = binary["images"], binary["boxes"]
    margin = SCENE / 8 / 2
    default = Explainer(model=str(binary["path"]), preprocess="scale01")
    assert default.loaded.binary and default.loaded.activation == "sigmoid"
    assert len(default.loaded.labels) == 2
    out = default.explain_arrays(images)
    z = out.logits[:, 1]
    np.testing.assert_allclose(out.logits[:, 0], -z, rtol=1e-6)
    # Class 1 is explained by default, whichever side of 0 the logit is.
    assert (out.targets[:, 0] == 1).all(), (
        f"default explained class 0 for {(out.targets[:, 0] == 0).sum()} of {len(z)} images "
        f"(logits from {z.min():.2f} to {z.max():.2f})"
    )
    # ... also on images the model is sure are negative (only object B).
    only_b = default.explain_arrays(binary["only_b"])
    assert (only_b.logits[:, 1] < 0).mean() >= 0.9, "the test model did not learn B -> class 0"
    assert (only_b.targets[:, 0] == 1).all(), "class 0 explained by default on B-only images"
    negative = Explainer(model=str(binary["path"]), preprocess="scale01", classes=[0])
    neg = negative.explain_arrays(images)
    np.testing.assert_allclose(neg.target_scores[:, 0], -z, rtol=1e-5, atol=1e-5)

    rate_pos = _pointing_rate(out.cams[:, 0], boxes[:, 0], SCENE, margin)
    rate_neg = _pointing_rate(neg.cams[:, 0], boxes[:, 1], SCENE, margin)
    print(f"\nbinary: class 1 -> object A {rate_pos:.3f}, class 0 -> object B {rate_neg:.3f} "
          f"on {len(images)} images")
    assert rate_pos >= MIN_POINTING, f"class-1 map peaks on A for only {rate_pos:.1%}"
    assert rate_neg >= MIN_POINTING, f"class-0 map peaks on B for only {rate_neg:.1%}"


def test_binary_from_the_cli_default_class_1_and_class_0(binary):
    folder, model = binary["folder"], binary["model"]
    pixels = binary["images"]
    z_all = model(pixels.astype(np.float32) / 255.0).numpy()[:, 0]
    # Two images the model leans positive on and two it leans negative on, where available:
    # the default must still be class 1 for the latter.
    order = np.argsort(z_all)
    pick = np.array([*order[:2], *order[-2:]])
    pixels = pixels[pick]
    inputs = [_write_png(p, folder / "inputs" / f"both{i}.png") for i, p in enumerate(pixels)]
    common = ["--model", binary["path"], "--preprocess", "scale01", "--save-heatmap", "--json",
              "--quiet"]
    default_run, negative_run = _camcli_all(
        ["explain", *inputs, *common, "--out-dir", "default"],
        ["explain", *inputs, *common, "--out-dir", "negative", "--class", "0"],
        cwd=folder,
    )
    binary["saved"].assert_untouched()
    _, expected_pos, _ = _binary_reference(model, pixels, 1)
    _, expected_neg, scores = _binary_reference(model, pixels, 0)
    z = scores[:, 1]
    for i, (pos, neg) in enumerate(zip(_records(default_run), _records(negative_run),
                                       strict=True)):
        for record in (pos, neg):
            assert record["model"]["output_activation"] == "sigmoid"
            assert "negated logit" in record["score"]
            probabilities = {p["index"]: p["probability"] for p in record["predictions"]}
            np.testing.assert_allclose(probabilities[1], _sigmoid(z[i]), atol=1e-5)
            np.testing.assert_allclose(probabilities[0], 1.0 - _sigmoid(z[i]), atol=1e-5)
        (p_entry,), (n_entry,) = pos["explanations"], neg["explanations"]
        assert p_entry["index"] == 1, f"image {i} (logit {z[i]:.2f}): default explained class 0"
        assert n_entry["index"] == 0
        np.testing.assert_allclose(p_entry["logit"], z[i], rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(n_entry["logit"], -z[i], rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(p_entry["probability"], _sigmoid(z[i]), atol=1e-5)
        np.testing.assert_allclose(n_entry["probability"], 1.0 - _sigmoid(z[i]), atol=1e-5)
        pos_map, neg_map = _heatmap(pos, folder), _heatmap(neg, folder)
        assert np.abs(pos_map - expected_pos[i]).max() <= TOL
        assert np.abs(neg_map - expected_neg[i]).max() <= TOL
        assert np.abs(pos_map - neg_map).max() > 0.5, "--class 0 gave the class-1 map"


@pytest.fixture(scope="module")
def multilabel(tmp_path_factory):
    """Two sigmoid units, "has_square" and "has_ring"; an image may hold either, both or none."""
    folder = tmp_path_factory.mktemp("multilabel")
    keras.utils.set_random_seed(31)
    present = np.random.default_rng(31).integers(0, 2, size=(1000, 2))
    images, _ = make_scenes(present, seed=32)
    valid_present = np.random.default_rng(34).integers(0, 2, size=(100, 2))
    valid, _ = make_scenes(valid_present, seed=34)
    model = _scene_cnn(2, "sigmoid", "multilabel_cnn")

    def validate():
        return float(np.mean((model.predict(valid / 255.0, verbose=0) > 0.5) == valid_present))

    _fit(model, images.astype(np.float32) / 255.0, present.astype(np.float32),
         keras.losses.BinaryCrossentropy(), validate)
    held_images, held_boxes = make_scenes(np.ones((120, 2), dtype=int), seed=33)
    saved = _Saved()
    path = saved.save(model, folder / "multilabel.keras")
    labels = folder / "labels.txt"
    labels.write_text("has_square\nhas_ring\n")
    return {"folder": folder, "path": path, "model": model, "labels": labels,
            "images": held_images, "boxes": held_boxes, "saved": saved}


def test_multilabel_maps_point_at_each_label_object(multilabel):
    images, boxes = multilabel["images"], multilabel["boxes"]
    explainer = Explainer(model=str(multilabel["path"]), preprocess="scale01",
                          labels=multilabel["labels"], classes=["has_square", "has_ring"])
    assert explainer.loaded.activation == "sigmoid" and not explainer.loaded.binary
    out = explainer.explain_arrays(images)
    margin = SCENE / 8 / 2
    rates = [_pointing_rate(out.cams[:, k], boxes[:, k], SCENE, margin) for k in (0, 1)]
    print(f"\nmulti-label: square map -> square {rates[0]:.3f}, ring map -> ring {rates[1]:.3f} "
          f"on {len(images)} images")
    assert min(rates) >= MIN_POINTING, f"pointing rates {rates}"


def test_multilabel_from_the_cli_with_class_per_label(multilabel):
    folder, model = multilabel["folder"], multilabel["model"]
    pixels = multilabel["images"][:3]
    inputs = [_write_png(p, folder / "inputs" / f"both{i}.png") for i, p in enumerate(pixels)]
    (run,) = _camcli_all(
        ["explain", *inputs, "--model", multilabel["path"], "--preprocess", "scale01",
         "--labels", multilabel["labels"], "--class", "has_square", "--class", "1",
         "--save-heatmap", "--json", "--quiet"],
        cwd=folder,
    )
    multilabel["saved"].assert_untouched()
    features = keras.Model(model.inputs, model.get_layer("features").output)
    head = _dense_head(model.get_layer("head"))
    x = pixels.astype(np.float32) / 255.0
    for i, record in enumerate(_records(run)):
        assert record["model"]["output_activation"] == "sigmoid"
        assert record["score"] == "logit" and record["probability"] == "sigmoid"
        entries = record["explanations"]
        assert [(e["index"], e["label"]) for e in entries] == [(0, "has_square"), (1, "has_ring")]
        for k, entry in enumerate(entries):
            assert entry["heatmap"] == f"both{i}.png.cam.{k}_{entry['label']}.npy"
            _, expected, scores = reference_gradcam(features, head, x[i : i + 1], [k])
            np.testing.assert_allclose(entry["logit"], scores[0, k], rtol=1e-4, atol=1e-4)
            # Each label's probability is its own sigmoid, not a softmax across labels.
            np.testing.assert_allclose(entry["probability"], _sigmoid(scores[0, k]), atol=1e-5)
            assert np.abs(_heatmap(record, folder, k) - expected[0]).max() <= TOL
            peak = _peak(_heatmap(record, folder, k), SCENE, SCENE)
            assert point_in_box(peak, multilabel["boxes"][i, k], SCENE / 16), (
                f"image {i}: the {entry['label']} map does not peak on its object"
            )


# =========================================================================== 5. preprocessing


def test_preprocess_modes_follow_the_documented_formulas():
    pixels = np.array(
        [[[[0, 128, 255], [10, 20, 30]], [[255, 255, 255], [1, 2, 3]]]], dtype=np.float32
    )
    mean = np.array([0.485, 0.456, 0.406])
    std = np.array([0.229, 0.224, 0.225])
    caffe_means = np.array([103.939, 116.779, 123.68])
    expected = {
        "none": pixels,
        "scale01": pixels / 255.0,
        "tf": pixels / 127.5 - 1.0,
        "caffe": pixels[..., ::-1] - caffe_means,
        "torch": (pixels / 255.0 - mean) / std,
    }
    for mode, want in expected.items():
        function, name = get_preprocess(mode.upper())
        assert name == mode
        got = function(pixels.copy())
        assert got.shape == pixels.shape
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4, err_msg=mode)
    # A registry model name gives its family's preprocessing.
    function, _ = get_preprocess("resnet50")
    np.testing.assert_allclose(function(pixels.copy()), expected["caffe"], atol=1e-4)
    function, _ = get_preprocess("densenet121")
    np.testing.assert_allclose(function(pixels.copy()), expected["torch"], atol=1e-4)
    with pytest.raises(UsageError, match="unknown preprocessing 'scale-01'"):
        get_preprocess("scale-01")


@pytest.fixture(scope="module")
def gray(tmp_path_factory):
    """A grayscale-input model with a non-square 48x80 input, and two colour images."""
    folder = tmp_path_factory.mktemp("gray")
    keras.utils.set_random_seed(41)
    inputs = keras.Input((48, 80, 1))
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="gray_conv")(inputs)
    x = keras.layers.MaxPooling2D(name="gray_pool1")(x)
    x = keras.layers.Conv2D(12, 3, padding="same", activation="relu", name="gray_features")(x)
    x = keras.layers.MaxPooling2D(name="gray_pool2")(x)  # 12 x 20
    scores = keras.layers.Dense(2, activation="softmax", name="head")(
        keras.layers.GlobalAveragePooling2D()(x)
    )
    model = keras.Model(inputs, scores)
    saved = _Saved()
    path = saved.save(model, folder / "gray.keras")
    rng = np.random.default_rng(41)
    exact = _write_png(rng.integers(0, 256, (48, 80, 3), dtype=np.uint8), folder / "exact.png")
    large = _write_png(rng.integers(0, 256, (120, 200, 3), dtype=np.uint8), folder / "big.png")
    # What the model must be given: the colour image converted to grayscale (Pillow's "L").
    pixels = np.asarray(Image.open(exact).convert("L"), dtype=np.uint8)[None, :, :, None]
    features = keras.Model(model.inputs, model.get_layer("gray_pool2").output)
    return {"folder": folder, "path": path, "exact": exact, "large": large, "pixels": pixels,
            "features": features, "head": _dense_head(model.get_layer("head")), "saved": saved}


def test_grayscale_non_square_model_from_the_cli(gray):
    folder = gray["folder"]
    (run,) = _camcli_all(
        ["explain", gray["exact"], gray["large"], "--model", gray["path"], "--save-heatmap",
         "--json"],
        cwd=folder,
    )
    gray["saved"].assert_untouched()
    exact_record, large_record = _records(run)
    for record, size in ((exact_record, (80, 48)), (large_record, (200, 120))):
        assert record["model"]["input_size"] == [48, 80]
        assert record["model"]["layer"] == "gray_pool2"
        assert record["model"]["preprocess"] == "none"
        assert (record["input"]["width"], record["input"]["height"]) == size
        with Image.open(folder / record["files"][0]) as picture:
            assert picture.size == size, "the overlay is not at the input image's size"
        assert _heatmap(record, folder).shape == (12, 20)
    # The model saw the colour image converted to grayscale, unscaled (--preprocess none).
    x = gray["pixels"].astype(np.float32)
    _, expected, logits = reference_gradcam(gray["features"], gray["head"], x)
    assert exact_record["explanations"][0]["index"] == int(np.argmax(logits[0]))
    assert np.abs(_heatmap(exact_record, folder) - expected[0]).max() <= TOL


def test_grayscale_model_with_per_pixel_preprocessing(gray):
    # tf and scale01 are per-pixel formulas: they apply to one channel as well as to three.
    for mode, x in (("tf", gray["pixels"] / 127.5 - 1.0), ("scale01", gray["pixels"] / 255.0)):
        explainer = Explainer(model=str(gray["path"]), preprocess=mode)
        out = explainer.explain_arrays(gray["pixels"])
        _, expected, logits = reference_gradcam(gray["features"], gray["head"], x)
        np.testing.assert_allclose(out.logits, logits, rtol=1e-4, atol=1e-4)
        assert np.abs(out.cams[:, 0] - expected).max() <= TOL, mode
    # caffe and torch are per RGB channel: refused up front, before any image is read.
    for mode in ("caffe", "torch"):
        with pytest.raises(UsageError, match=f"--preprocess {mode} needs 3-channel"):
            Explainer(model=str(gray["path"]), preprocess=mode)


# =========================================================================== 6. options and errors


@pytest.fixture(scope="module")
def multi_output(tmp_path_factory):
    """Heads: "aux" Dense(5, softmax), "cls" Dense(3), and a 4-D segmentation output "seg"."""
    folder = tmp_path_factory.mktemp("multi_output")
    keras.utils.set_random_seed(51)
    inputs = keras.Input((40, 40, 3))
    stem = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="stem")(inputs)
    x = keras.layers.MaxPooling2D(name="pool")(stem)
    x = keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="cls_features")(x)
    pooled = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    aux = keras.layers.Dense(5, activation="softmax", name="aux")(pooled)
    cls = keras.layers.Dense(3, name="cls")(pooled)
    seg = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="seg_conv")(stem)
    seg = keras.layers.Conv2D(2, 1, name="seg")(seg)
    model = keras.Model(inputs, [aux, cls, seg], name="multi")
    saved = _Saved()
    path = saved.save(model, folder / "multi.keras")
    pixels = np.random.default_rng(51).integers(0, 256, (2, 40, 40, 3), dtype=np.uint8)
    images = [_write_png(p, folder / f"in{i}.png") for i, p in enumerate(pixels)]
    return {"folder": folder, "path": path, "model": model, "pixels": pixels,
            "images": images, "saved": saved}


@pytest.fixture(scope="module")
def lambda_model(tmp_path_factory):
    """A model with a Python lambda inside: loading it runs code, so safe mode must refuse it."""
    folder = tmp_path_factory.mktemp("lambda")
    keras.utils.set_random_seed(61)
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Lambda(lambda v: v / 127.5 - 1.0, name="python_code")(inputs)
    x = keras.layers.Conv2D(6, 3, activation="relu", name="conv")(x)
    outputs = keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(x))
    model = keras.Model(inputs, outputs)
    saved = _Saved()
    paths = {ext: saved.save(model, folder / f"lambda.{ext}") for ext in ("keras", "h5")}
    image = _write_png(np.full((32, 32, 3), 90, np.uint8), folder / "in.png")
    return {"folder": folder, "paths": paths, "image": image, "saved": saved}


@pytest.fixture(scope="module")
def error_runs(shapes, multi_output, lambda_model, gray, tmp_path_factory):
    """The failing commands, run together: each must exit 2 with a one-line message."""
    folder = tmp_path_factory.mktemp("errors")
    image = _write_png(np.full((32, 48, 3), 128, np.uint8), folder / "in.png")
    wrong_labels = folder / "two.txt"
    wrong_labels.write_text("cat\ndog\n")
    nested = shapes["files"]["nested"]  # 5 classes, layers under "mid/inner/"
    names = ("layer", "labels", "output", "lambda", "preprocess")
    runs = _camcli_all(
        ["explain", image, "--model", nested, "--layer", "deepr"],
        ["explain", image, "--model", nested, "--labels", wrong_labels],
        ["explain", multi_output["images"][0], "--model", multi_output["path"]],
        ["explain", lambda_model["image"], "--model", lambda_model["paths"]["keras"]],
        ["explain", image, "--model", gray["path"], "--preprocess", "caffe"],
        cwd=folder,
    )
    for fixture in (shapes, multi_output, lambda_model, gray):
        fixture["saved"].assert_untouched()
    for used in (image, multi_output["images"][0], lambda_model["image"]):
        assert not Path(f"{used}.cam.json").exists(), f"a failed run wrote outputs for {used}"
    return dict(zip(names, runs, strict=True))


def test_unknown_layer_suggests_the_nested_path(error_runs):
    message = _assert_usage_error(error_runs["layer"])
    assert "'deepr'" in message and "did you mean" in message
    assert "mid/inner/deeper" in message


def test_labels_file_with_the_wrong_count(error_runs):
    message = _assert_usage_error(error_runs["labels"])
    assert "two.txt" in message and "2" in message and "5" in message


def test_preprocess_that_does_not_fit_a_grayscale_model(error_runs):
    message = _assert_usage_error(error_runs["preprocess"])
    assert "--preprocess caffe" in message and "1-channel" in message


def test_multi_output_model_needs_output(error_runs):
    message = _assert_usage_error(error_runs["output"])
    assert "--output" in message
    for name in ("aux", "cls", "seg"):
        assert name in message


def test_lambda_model_refused_in_safe_mode(error_runs, lambda_model):
    message = _assert_usage_error(error_runs["lambda"])
    assert "--unsafe-model" in message and "lambda.keras" in message
    # The legacy .h5 format is just as safe by default.
    with pytest.raises(UsageError, match="--unsafe-model"):
        loading.load(str(lambda_model["paths"]["h5"]))
    assert loading.load(str(lambda_model["paths"]["h5"]), unsafe=True).layer_path == "conv"


def _with_vocabulary_file(folder: Path, vocabulary: Path) -> Path:
    """A small .keras model saved here whose StringLookup's config names ``vocabulary`` (a
    file outside the archive, as a crafted file would: Keras itself stores the words)."""
    strings = keras.Input((1,), dtype="string")
    words = keras.layers.StringLookup(vocabulary=["cat", "dog"], name="lookup")(strings)
    keras.Model(strings, words).save(folder / "saved.keras")
    with zipfile.ZipFile(folder / "saved.keras") as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    config = json.loads(members["config.json"])
    (lookup,) = [layer for layer in config["config"]["layers"] if layer["name"] == "lookup"]
    assert lookup["config"]["vocabulary"] == ["cat", "dog"]
    lookup["config"]["vocabulary"] = str(vocabulary)
    members["config.json"] = json.dumps(config).encode()
    path = folder / "vocabulary.keras"
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def test_a_vocabulary_file_is_refused_for_what_it_is_not_as_a_lambda(tmp_path):
    secret = tmp_path / "private.txt"
    secret.write_text("cat\ndog\n")
    path = _with_vocabulary_file(tmp_path, secret)
    with pytest.raises(UsageError) as refused:
        loading.load(str(path))
    message = str(refused.value)
    assert message == (
        f"{path}: refused to load: a lookup layer (StringLookup, IntegerLookup…) reads its "
        f"vocabulary from a file outside the model archive ({secret}); pass --unsafe-model "
        "only if you trust this file"
    )
    assert "lambda" not in message.lower()


def test_output_by_name_and_index_and_unsafe_model_accepted(multi_output, lambda_model):
    model = multi_output["model"]
    by_name, by_index, unsafe = _camcli_all(
        ["explain", *multi_output["images"], "--model", multi_output["path"], "--output", "cls",
         "--save-heatmap", "--json", "--out-dir", "by_name"],
        ["explain", *multi_output["images"], "--model", multi_output["path"], "--output", "0",
         "--save-heatmap", "--json", "--out-dir", "by_index"],
        ["explain", lambda_model["image"], "--model", lambda_model["paths"]["keras"],
         "--unsafe-model", "--json", "--out-dir", "unsafe"],
        cwd=multi_output["folder"],
    )
    multi_output["saved"].assert_untouched()
    lambda_model["saved"].assert_untouched()
    (unsafe_record,) = _records(unsafe)
    assert unsafe_record["model"]["layer"] == "conv"
    # the Lambda's code ran: one warning line says so, before the summary; none without
    (warning, summary) = [line for line in unsafe.stderr.splitlines() if line.strip()]
    assert warning == (
        "camcli: warning: --unsafe-model: Keras' safe mode is off, so code in the model file "
        "(Lambda layers, files it names) runs with your permissions; use only files you trust"
    ), unsafe.stderr
    assert summary.startswith("camcli: 1 done, 0 failed in "), unsafe.stderr
    assert "warning" not in by_name.stderr + by_index.stderr

    features = keras.Model(model.inputs, model.get_layer("cls_features").output)
    x = multi_output["pixels"].astype(np.float32)
    for run, head, index, activation, n_classes in (
        (by_name, "cls", 1, "none", 3),
        (by_index, "aux", 0, "softmax", 5),
    ):
        classes, expected, logits = reference_gradcam(
            features, _dense_head(model.get_layer(head)), x
        )
        for i, record in enumerate(_records(run)):
            # The default layer feeds the chosen head: not the segmentation branch.
            assert record["model"]["layer"] == "cls_features"
            assert record["model"]["output_index"] == index
            assert record["model"]["output_activation"] == activation
            assert sorted(p["index"] for p in record["predictions"]) == list(range(n_classes))
            entry = record["explanations"][0]
            assert entry["index"] == classes[i]
            np.testing.assert_allclose(entry["logit"], logits[i, classes[i]], rtol=1e-4,
                                       atol=1e-4)
            assert np.abs(_heatmap(record, multi_output["folder"]) - expected[i]).max() <= TOL


def test_output_errors_and_dict_outputs(multi_output, tmp_path):
    path = str(multi_output["path"])
    with pytest.raises(UsageError, match="classification output"):
        loading.load(path, output="seg")
    with pytest.raises(UsageError, match="unknown output 'clss' — did you mean: .*cls"):
        loading.load(path, output="clss")
    with pytest.raises(UsageError, match="3 output"):
        loading.load(path, output="7")
    # A layer that does not feed the chosen head is refused up front, not mid-computation.
    with pytest.raises(UsageError, match="seg_conv"):
        loading.load(path, output="cls", layer="seg_conv")

    # Outputs given as a dict: the head named is the head explained.
    keras.utils.set_random_seed(52)
    inputs = keras.Input((24, 24, 3))
    x = keras.layers.Conv2D(6, 3, activation="relu", name="feat")(inputs)
    pooled = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, {"zeta": keras.layers.Dense(3, name="zeta")(pooled),
                                 "alpha": keras.layers.Dense(5, name="alpha")(pooled)})
    saved = _Saved()
    file = saved.save(model, tmp_path / "dict.keras")
    pixels = np.random.default_rng(52).integers(0, 256, (3, 24, 24, 3), dtype=np.uint8)
    features = keras.Model(model.inputs, model.get_layer("feat").output)
    for head, n in (("zeta", 3), ("alpha", 5)):
        out = Explainer(model=str(file), output=head).explain_arrays(pixels)
        classes, expected, logits = reference_gradcam(
            features, _dense_head(model.get_layer(head)), pixels
        )
        assert out.logits.shape == (3, n), f"--output {head} explained another head"
        np.testing.assert_allclose(out.logits, logits, rtol=1e-4, atol=1e-3)
        assert np.abs(out.cams[:, 0] - expected).max() <= TOL
    saved.assert_untouched()
