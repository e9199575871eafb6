"""Tests for camcli.engine: batched Grad-CAM against an independent per-image reference.

Models are small and randomly initialised (weights=None); nothing is downloaded.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from camcli.engine import Engine, Targets
from camcli.loading import default_layer

TOL = 1e-4


# ---------------------------------------------------------------- models


@pytest.fixture(scope="module")
def mobilenet():
    keras.utils.set_random_seed(0)
    return keras.applications.MobileNetV2(
        alpha=0.35, weights=None, input_shape=(96, 96, 3), classifier_activation=None
    )


@pytest.fixture(scope="module")
def small_cnn():
    """A functional CNN with batch norm; explained at an inner 12x12 layer, not the last one."""
    keras.utils.set_random_seed(1)
    inputs = keras.Input((48, 48, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", name="c1")(inputs)
    x = keras.layers.BatchNormalization(name="bn1")(x)
    x = keras.layers.ReLU(name="r1")(x)
    x = keras.layers.MaxPooling2D(name="p1")(x)
    x = keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="c2")(x)
    x = keras.layers.MaxPooling2D(name="p2")(x)  # 12x12
    x = keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="c3")(x)
    x = keras.layers.MaxPooling2D(name="p3")(x)  # 6x6
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(10, name="logits")(x)
    model = keras.Model(inputs, outputs, name="small_cnn")
    # Non-trivial batch-norm statistics, so inference mode differs from training mode.
    bn = model.get_layer("bn1")
    rng = np.random.default_rng(1)
    gamma, beta, _, _ = bn.get_weights()
    bn.set_weights([gamma * 1.5, beta + 0.1, rng.normal(0, 0.2, 8), rng.uniform(0.5, 2.0, 8)])
    return model


MODELS = {"mobilenet": ("mobilenet", None), "small_cnn": ("small_cnn", "c3")}


def _images(n: int, size: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, size=(n, size, size, 3)).astype(np.float32)


# ---------------------------------------------------------------- independent reference


def reference_gradcam(model, layer, images, targets=None, top=1):
    """Textbook Grad-CAM, one image at a time, through a sub-model ending at ``layer``.

    ``targets``: class indices to explain for every image; otherwise each image's ``top``
    best classes. Returns (classes (n, k), cams (n, k, h, w) scaled to max 1, logits (n, C)).
    """
    sub = keras.Model(model.inputs, [layer.output, model.output])
    all_classes, all_cams, all_logits = [], [], []
    for image in images:
        with tf.GradientTape(persistent=True) as tape:
            activations, logits = sub([image[None]], training=False)
            logits_np = logits.numpy()[0]
            classes = list(targets) if targets else list(np.argsort(-logits_np)[:top])
            scores = [logits[0, c] for c in classes]
        cams = []
        for score in scores:
            grads = tape.gradient(score, activations)[0].numpy()
            weights = grads.mean(axis=(0, 1))
            cam = np.maximum((activations[0].numpy() * weights).sum(axis=-1), 0.0)
            cams.append(cam / cam.max() if cam.max() > 0 else cam)
        del tape
        all_classes.append(classes)
        all_cams.append(cams)
        all_logits.append(logits_np)
    return np.array(all_classes), np.array(all_cams), np.array(all_logits)


# ---------------------------------------------------------------- agreement with the reference


@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "eager"])
@pytest.mark.parametrize(
    "targets", [Targets(), Targets(classes=(3, 7)), Targets(top=3)], ids=["top1", "classes", "top3"]
)
@pytest.mark.parametrize("which", sorted(MODELS))
def test_engine_matches_independent_reference(request, make_loaded, which, targets, compiled):
    fixture, layer = MODELS[which]
    model = request.getfixturevalue(fixture)
    loaded = make_loaded(model, layer)
    size = loaded.input_size[0]
    images = _images(6, size, seed=10)
    classes, expected, logits = reference_gradcam(
        model, loaded.layer, images, targets.classes, targets.top
    )

    out = Engine(loaded, targets, compiled=compiled).run(images)

    k = targets.count
    assert out.cams.shape == (6, k, *expected.shape[2:])
    assert out.empty.shape == out.targets.shape == out.target_scores.shape == (6, k)
    np.testing.assert_array_equal(out.targets, classes)
    np.testing.assert_allclose(out.logits, logits, atol=TOL, rtol=1e-5)
    # Empty exactly where the reference has no positive evidence; most maps do have some.
    np.testing.assert_array_equal(out.empty, expected.max(axis=(2, 3)) == 0)
    assert (~out.empty).sum() >= out.empty.size // 2, "too few maps with evidence to compare"
    diff = np.abs(out.cams - expected).max()
    print(f"{which} {targets} compiled={compiled}: max |engine - reference| = {diff:.2e}")
    assert diff <= TOL, f"max |engine - reference| = {diff:.2e}"


def test_engine_explains_a_layer_inside_a_nested_model(make_loaded):
    keras.utils.set_random_seed(2)
    inner_in = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="c1")(inner_in)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Conv2D(12, 3, padding="same", activation="relu", name="c2")(x)
    backbone = keras.Model(inner_in, x, name="backbone")
    model = keras.Sequential(
        [keras.Input((32, 32, 3)), backbone, keras.layers.GlobalAveragePooling2D(),
         keras.layers.Dense(5)]
    )
    assert default_layer(model).path == "backbone/c2"
    loaded = make_loaded(model)
    images = _images(4, 32, seed=11)

    # Reference without a sub-model (which a nested Sequential cannot give): split by hand.
    expected = []
    for image in images:
        with tf.GradientTape() as tape:
            activations = backbone(image[None], training=False)
            tape.watch(activations)
            logits = model.layers[2](model.layers[1](activations))
            score = logits[0, int(tf.argmax(logits[0]))]
        weights = tape.gradient(score, activations)[0].numpy().mean(axis=(0, 1))
        cam = np.maximum((activations[0].numpy() * weights).sum(-1), 0.0)
        expected.append(cam / cam.max())

    for compiled in (True, False):
        out = Engine(loaded, compiled=compiled).run(images)
        assert np.abs(out.cams[:, 0] - np.array(expected)).max() <= TOL


# ---------------------------------------------------------------- batching


def test_each_image_map_is_the_same_alone_and_in_a_batch_of_32(mobilenet, make_loaded):
    engine = Engine(make_loaded(mobilenet), Targets(top=2), compiled=True)
    images = _images(32, 96, seed=12)
    batched = engine.run(images)
    for i in range(32):
        alone = engine.run(images[i : i + 1])
        np.testing.assert_array_equal(alone.targets[0], batched.targets[i])
        diff = np.abs(alone.cams[0] - batched.cams[i]).max()
        assert diff <= TOL, f"image {i}: max diff {diff:.2e} between batch of 1 and of 32"
        np.testing.assert_allclose(alone.logits[0], batched.logits[i], atol=TOL, rtol=1e-5)


#: Run in a fresh process whose oneDNN is held to its AVX2 kernels (set before TensorFlow loads):
#: there TensorFlow computes a lone image differently from a batch (logits 1e-5 apart), which
#: camcli.engine.MIN_BATCH must hide. Every image is explained in several batches, eagerly and
#: compiled, by a gradient method and by both channel-scoring ones (whose chunks of masked
#: inputs also come out at one), by Finer-CAM (a contrastive score), by the noisy methods
#: (their noisy copies and masks are model calls too; Smooth Grad-CAM++ below the last layer,
#: whose gradient is the same for every input) and by the methods with passes of their own
#: (ShapleyCAM, FullGrad, guided Grad-CAM); each must give the whole batch's bits.
_BATCHINGS = """
import json
from pathlib import Path
import numpy as np
from PIL import Image
from camcli.api import Explainer
photos = [np.asarray(Image.open(p).convert("RGB").resize((224, 224)))
          for p in sorted(Path("sample_images").glob("*.*g"))]
pixels = np.stack([*photos, photos[0][:, ::-1]])
differ = []
methods = (("gradcam", {}), ("scorecam", {"scorecam_channels": 4, "scorecam_batch": 3}),
           ("ablationcam", {"scorecam_batch": 7}), ("finercam", {}),
           ("smoothgradcam++", {"layer": "conv_pw_12_relu", "method_option": {"samples": 2}}),
           ("sscam", {"scorecam_channels": 4, "scorecam_batch": 3,
                      "method_option": {"samples": 2}}),
           ("shapleycam", {}), ("fullgrad", {}), ("guided-gradcam", {}))
for method, options in methods:
    explainer = Explainer(model="mobilenet_v1_0.25_224", method=method, top_k_cams=2, **options)
    whole = explainer.explain_arrays(pixels, compiled=True)
    for compiled in (True, False):
        for order in ([0], [4], [3, 1], [2, 0, 4]):
            part = explainer.explain_arrays(pixels[order], compiled=compiled)
            for j, i in enumerate(order):
                for field in ("logits", "targets", "target_scores", "cams", "empty"):
                    if not np.array_equal(getattr(part, field)[j], getattr(whole, field)[i]):
                        differ.append(f"{method}: image {i} in {order}, {compiled=}: {field}")
print(json.dumps(differ))
"""


def test_an_images_bits_do_not_depend_on_the_batch_it_is_in():
    """What lets a Ray run, a resumed run or one with failed inputs (all batched differently
    from a plain local run) write the same bytes: real weights, exact equality."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = dict(os.environ, ONEDNN_MAX_CPU_ISA="AVX2", TF_CPP_MIN_LOG_LEVEL="3")
    done = subprocess.run([sys.executable, "-c", _BATCHINGS], env=env, capture_output=True,
                          text=True, timeout=600, cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.splitlines()[-1]) == []


def test_partial_last_batch_does_not_retrace(small_cnn, make_loaded):
    engine = Engine(make_loaded(small_cnn, "c3"), compiled=True)
    images = _images(37, 48, seed=13)
    outputs = [engine.run(images[a:b]) for a, b in ((0, 16), (16, 32), (32, 37))]
    assert engine.trace_count == 1
    assert [len(o.cams) for o in outputs] == [16, 16, 5]
    whole = engine.run(images)
    assert engine.trace_count == 1
    joined = np.concatenate([o.cams for o in outputs])
    assert np.abs(joined - whole.cams).max() <= TOL


# ---------------------------------------------------------------- outputs and side effects


def test_logits_equal_predict_and_default_targets_are_argmax(mobilenet, make_loaded):
    images = _images(8, 96, seed=14)
    expected = mobilenet.predict(images, verbose=0)
    for compiled in (True, False):
        out = Engine(make_loaded(mobilenet), compiled=compiled).run(images)
        np.testing.assert_allclose(out.logits, expected, atol=TOL, rtol=1e-5)
        np.testing.assert_array_equal(out.targets[:, 0], expected.argmax(axis=1))
        np.testing.assert_allclose(out.target_scores[:, 0], expected.max(axis=1), atol=TOL)


def test_top_k_targets_are_ordered_by_score(small_cnn, make_loaded):
    images = _images(5, 48, seed=15)
    logits = small_cnn.predict(images, verbose=0)
    out = Engine(make_loaded(small_cnn, "c3"), Targets(top=4)).run(images)
    np.testing.assert_array_equal(out.targets, np.argsort(-logits, axis=1)[:, :4])
    np.testing.assert_allclose(
        out.target_scores, np.take_along_axis(logits, out.targets, axis=1), atol=TOL
    )


def test_user_model_is_left_untouched(small_cnn, make_loaded):
    loaded = make_loaded(small_cnn, "c3")
    layer = loaded.layer
    images = _images(4, 48, seed=16)
    before = small_cnn(images, training=False).numpy()

    for compiled in (True, False):
        Engine(loaded, Targets(top=2), compiled=compiled).run(images)
        assert "call" not in vars(layer)
        assert layer.call.__func__ is type(layer).call
    np.testing.assert_array_equal(small_cnn(images, training=False).numpy(), before)
    np.testing.assert_allclose(small_cnn.predict(images, verbose=0), before, atol=1e-6)

    # A run failing later in the forward pass must not leave the capture hook behind either.
    head = small_cnn.get_layer("logits")

    def broken(*args, **kwargs):
        raise RuntimeError("head failed")

    head.call = broken
    try:
        with pytest.raises(RuntimeError, match="head failed"):
            Engine(loaded, compiled=False).run(images)
    finally:
        del head.call
    assert "call" not in vars(layer)
    assert layer.call.__func__ is type(layer).call


def test_a_call_the_user_patched_on_the_layer_is_put_back(small_cnn, make_loaded):
    loaded = make_loaded(small_cnn, "c3")
    layer = loaded.layer
    seen = []

    def patched(*args, **kwargs):
        seen.append(1)
        return type(layer).call(layer, *args, **kwargs)

    layer.call = patched
    try:
        out = Engine(loaded, compiled=False).run(_images(2, 48, seed=18))
        assert seen, "the user's own call was bypassed"
        assert vars(layer)["call"] is patched
        assert out.cams.shape == (2, 1, 12, 12)
    finally:
        del layer.call


# ---------------------------------------------------------------- maps without evidence


def _constant_feature_model(bias: float, dense_kernel: np.ndarray, name: str):
    """Input -> Conv2D(4) with zero kernel and constant ``bias`` -> ReLU -> GAP -> Dense."""
    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(
        4, 3, padding="same", kernel_initializer="zeros",
        bias_initializer=keras.initializers.Constant(bias), name="conv",
    )(inputs)
    x = keras.layers.ReLU(name=name)(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    dense = keras.layers.Dense(dense_kernel.shape[1], name="logits")
    outputs = dense(x)
    dense.set_weights([dense_kernel.astype(np.float32), np.zeros(dense_kernel.shape[1])])
    return keras.Model(inputs, outputs)


@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "eager"])
def test_all_zero_activations_give_empty_maps_not_nan(make_loaded, compiled):
    kernel = np.random.default_rng(19).normal(size=(4, 3))
    model = _constant_feature_model(bias=-100.0, dense_kernel=kernel, name="dead")
    loaded = make_loaded(model, "dead")
    out = Engine(loaded, Targets(top=3), compiled=compiled).run(_images(3, 16, seed=19))
    assert np.isfinite(out.cams).all()
    assert out.empty.all()
    assert np.all(out.cams == 0.0)


@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "eager"])
def test_negative_evidence_is_empty_per_image_and_class(make_loaded, compiled):
    # Activations are 1 everywhere; class 0 weighs every channel -1, class 1 weighs it +1.
    kernel = np.stack([-np.ones(4), np.ones(4)], axis=1)
    model = _constant_feature_model(bias=1.0, dense_kernel=kernel, name="on")
    loaded = make_loaded(model, "on")
    out = Engine(loaded, Targets(classes=(0, 1)), compiled=compiled).run(_images(3, 16, seed=20))
    assert out.empty.tolist() == [[True, False]] * 3
    assert np.all(out.cams[:, 0] == 0.0)
    np.testing.assert_allclose(out.cams[:, 1], 1.0)


@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "eager"])
def test_tiny_scale_evidence_is_not_flagged_empty(make_loaded, compiled):
    # Random-weight MobileNets have activations near 1e-20; their maps are real, not noise.
    kernel = np.stack([-np.ones(4), np.linspace(0.5, 2.0, 4)], axis=1)
    model = _constant_feature_model(bias=1e-20, dense_kernel=kernel, name="tiny")
    loaded = make_loaded(model, "tiny")
    out = Engine(loaded, Targets(classes=(1, 0)), compiled=compiled).run(_images(2, 16, seed=21))
    assert out.empty.tolist() == [[False, True]] * 2
    np.testing.assert_allclose(out.cams[:, 0], 1.0)
    assert np.all(out.cams[:, 1] == 0.0)


def test_targets_out_of_range_are_rejected(small_cnn, make_loaded):
    loaded = make_loaded(small_cnn, "c3")
    with pytest.raises(ValueError, match="out of range"):
        Engine(loaded, Targets(classes=(2, 10)))
    with pytest.raises(ValueError, match="top 11"):
        Engine(loaded, Targets(top=11))
