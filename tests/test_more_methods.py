"""The methods of issue 24 (part A), each checked where its answer is known.

1. Formulas on hand-made arrays against independent implementations written here (loops,
   another eigen-solver, the by-hand rule of the reference library).
2. On models: CAM equals Grad-CAM on a global-average-pooling + dense head (a known identity)
   and is a usage error elsewhere; Finer-CAM's gradient is the contrast's closed form on an
   analytic head; the noisy methods reduce to their noiseless parents; the seeded methods are
   reproducible and do not depend on the batch. Pointing at the object on the shapes CNN is
   checked with every other method in test_method_family.py; the random baseline here.
3. The CLI: ``--method cam`` on a model with and without the head, ``--method-option``.
"""

from __future__ import annotations

import json
import statistics
import subprocess
from dataclasses import replace

import keras
import numpy as np
import pytest
from cli_helpers import SMALL_MODEL, finish, start_explain, stop
from PIL import Image
from synthetic import point_in_box

from camcli.engine import Engine, Targets
from camcli.errors import UsageError
from camcli.heatmaps import map_stats
from camcli.labels import generic_labels
from camcli.loading import _output_activation
from camcli.methods import (
    KERNELS,
    METHODS,
    combine,
    fem,
    get_method,
    gradcam_elementwise,
    gradcam_plus_plus,
    image_keys,
    kernel_pca_component,
    parse_method_options,
    random_channels,
    smooth_gradcam_plus_plus,
)

TOL = 1e-5


def _normalised(raw: np.ndarray) -> np.ndarray:
    raw = np.maximum(np.asarray(raw, np.float64), 0.0)
    peaks = raw.reshape(len(raw), -1).max(axis=1)
    assert (peaks > 0).all(), "a reference map is empty: the example proves less"
    return raw / peaks[:, None, None]


# =========================================================================== 1. formulas


def test_gradcam_elementwise_sums_the_positive_products_by_hand():
    rng = np.random.default_rng(0)
    a, g = rng.normal(size=(2, 3, 4, 5)), rng.normal(size=(2, 3, 4, 5))
    expected = np.zeros((2, 3, 4))
    for n, i, j, k in np.ndindex(a.shape):
        expected[n, i, j] += max(a[n, i, j, k] * g[n, i, j, k], 0.0)
    np.testing.assert_allclose(combine(gradcam_elementwise(a, g)), expected, atol=1e-12)
    # Not Grad-CAM's or HiResCAM's map: negative products no longer cancel positive ones.
    assert not np.allclose(expected, np.maximum((a * g).sum(axis=-1), 0))


def test_eigengradcam_is_the_first_component_of_gradient_times_activation():
    rng = np.random.default_rng(1)
    a = rng.uniform(0, 1, size=(3, 4, 5, 6))
    g = rng.normal(size=(3, 4, 5, 6)) + rng.normal(size=(3, 1, 1, 6))
    got = METHODS["eigengradcam"].cam(a, g)
    for n in range(3):
        matrix = (a[n] * g[n]).reshape(-1, 6)
        _, vectors = np.linalg.eigh(matrix.T @ matrix)  # another route than the SVD
        projection = matrix @ vectors[:, -1]
        if projection @ matrix.sum(axis=1) < 0:
            projection = -projection
        np.testing.assert_allclose(got[n].ravel(), np.maximum(projection, 0), atol=1e-9)


def _kernel_by_hand(x: np.ndarray, kernel: str, gamma: float, coef0: float) -> np.ndarray:
    m = len(x)
    out = np.empty((m, m))
    for i in range(m):
        for j in range(m):
            dot = float(np.dot(x[i], x[j]))
            out[i, j] = {
                "linear": dot,
                "sigmoid": np.tanh(gamma * dot + coef0),
                "poly": (gamma * dot + coef0) ** 3,
                "rbf": np.exp(-gamma * np.sum((x[i] - x[j]) ** 2)),
                "cosine": dot / (np.linalg.norm(x[i]) * np.linalg.norm(x[j])),
            }[kernel]
    return out


@pytest.mark.parametrize("kernel", KERNELS)
def test_kpcacam_is_the_first_kernel_principal_component(kernel):
    rng = np.random.default_rng(2)
    a = rng.uniform(0, 1, size=(2, 4, 3, 5))
    a[:, 1:3, 1, :2] += 2.0  # a strong "object" in two channels
    gamma, coef0 = 0.3, 0.5
    got = kernel_pca_component(a, kernel, gamma, coef0)
    assert got.shape == (2, 4, 3, 1)
    for n in range(2):
        x = a[n].reshape(-1, 5)
        k = _kernel_by_hand(x - x.mean(axis=0), kernel, gamma, coef0)
        centring = np.eye(len(k)) - 1.0 / len(k)  # feature-space centring H K H
        values, vectors = np.linalg.eig(centring @ k @ centring)  # a general solver
        top = int(np.argmax(values.real))
        expected = vectors[:, top].real / np.linalg.norm(vectors[:, top].real)
        expected *= np.sqrt(values[top].real)
        component = got[n].ravel()
        np.testing.assert_allclose(np.abs(component), np.abs(expected), atol=1e-8)
        assert component @ x.sum(axis=1) >= 0  # sign: correlates with the channel sum


def test_kpcacam_with_a_linear_kernel_is_centred_pca_and_gamma_defaults_to_one_over_c():
    rng = np.random.default_rng(3)
    a = rng.normal(size=(1, 5, 4, 6))
    x = a[0].reshape(-1, 6)
    centred = x - x.mean(axis=0)
    _, _, vt = np.linalg.svd(centred)
    pca = centred @ vt[0]  # the textbook identity: linear kernel PCA == PCA of centred data
    got = kernel_pca_component(a, "linear")[0].ravel()
    np.testing.assert_allclose(np.abs(got), np.abs(pca), atol=1e-9)
    np.testing.assert_array_equal(kernel_pca_component(a), kernel_pca_component(a, gamma=1 / 6))
    assert not np.allclose(kernel_pca_component(a), kernel_pca_component(a, gamma=1.0))


def test_fem_weights_are_the_share_of_positions_above_k_sigma():
    rng = np.random.default_rng(4)
    a = rng.exponential(size=(2, 5, 6, 4))
    for k in (2.0, 1.0, 0.5):
        expected = np.zeros_like(a)
        for n in range(2):
            for c in range(4):
                values = a[n, :, :, c].ravel().tolist()
                threshold = statistics.fmean(values) + k * statistics.pstdev(values)
                share = sum(v > threshold for v in values) / len(values)
                expected[n, :, :, c] = share * a[n, :, :, c]
        np.testing.assert_allclose(fem(a, k), expected, atol=1e-12)
    assert METHODS["fem"].k == 2.0  # the paper's and pytorch-grad-cam's default


def test_randomcam_weights_are_uniform_reproducible_and_keyed_by_image():
    # One-hot activations: position j holds channel j only, so the channel sum is the weights.
    channels = 5000
    eye = np.eye(channels)[None, None]  # (1, 1, c, c)

    def weights(keys, seed=0):
        return np.stack([random_channels(eye, [key], seed)[0, 0].sum(axis=-1) for key in keys])

    w = weights([11, 11, 12])
    assert w.min() >= -1 and w.max() < 1 and abs(w.mean()) < 0.03
    assert abs(np.mean(w[0] < 0) - 0.5) < 0.03  # half the channels argue against
    np.testing.assert_array_equal(w[0], w[1])  # same image: same draws
    assert not np.allclose(w[0], w[2])  # another image: other draws
    assert not np.allclose(w[0], weights([11], seed=1)[0])  # another seed: other draws


def test_image_keys_depend_on_the_image_only():
    rng = np.random.default_rng(5)
    images = rng.normal(size=(3, 4, 4, 3)).astype(np.float32)
    keys = image_keys(images)
    assert len(set(keys.tolist())) == 3 and (keys >= 0).all()
    np.testing.assert_array_equal(image_keys(images[::-1]), keys[::-1])
    np.testing.assert_array_equal(image_keys(images[1:2]), keys[1:2])


def test_smooth_gradcam_plus_plus_averages_the_gradient_powers():
    rng = np.random.default_rng(6)
    a = rng.uniform(0.1, 1, size=(2, 3, 3, 4))
    noisy = rng.normal(size=(2, 5, 3, 3, 4))
    # One sample: Grad-CAM++ itself.
    np.testing.assert_allclose(smooth_gradcam_plus_plus(a, noisy[:, :1]),
                               gradcam_plus_plus(a, noisy[:, 0]), atol=1e-12)
    expected = np.zeros_like(a)
    for n in range(2):
        for c in range(4):
            d1, d2, d3 = (noisy[n, :, :, :, c] ** p for p in (1, 2, 3))
            m1, m2, m3 = d1.mean(axis=0), d2.mean(axis=0), d3.mean(axis=0)
            alpha = m2 / (2 * m2 + a[n, :, :, c].sum() * m3)
            expected[n, :, :, c] = (alpha * np.maximum(m1, 0)).sum() * a[n, :, :, c]
    np.testing.assert_allclose(smooth_gradcam_plus_plus(a, noisy), expected, atol=1e-10)


def _finer_by_hand(logits, targets, alpha, compared):
    """pytorch-grad-cam's rule: sort classes by |y - y_t|; positions 1..compared are the
    comparison classes; the score is sum_j (y_t - alpha y_j)."""
    out = np.zeros(targets.shape)
    for n, row in enumerate(logits):
        for j, t in enumerate(targets[n]):
            order = np.argsort(np.abs(row - row[t]), kind="stable")
            assert order[0] == t
            out[n, j] = sum(row[t] - alpha * row[c] for c in order[1 : compared + 1])
    return out


@pytest.mark.parametrize(("alpha", "compared"), [(1.0, 3), (0.5, 2), (1.0, 10)])
def test_finercam_explains_the_contrast_with_the_nearest_classes(alpha, compared):
    rng = np.random.default_rng(7)
    logits = rng.normal(size=(4, 7)).astype(np.float32)
    targets = np.array([[0, 3], [6, 1], [2, 2], [5, 4]], np.int32)
    scores = np.take_along_axis(logits, targets, axis=1)
    method = get_method("finercam", alpha=alpha, compared=compared)
    got = np.asarray(method.explained_scores(logits, targets, scores))
    expected = _finer_by_hand(logits.astype(np.float64), targets, alpha, min(compared, 6))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_sscam_and_iscam_masked_inputs():
    rng = np.random.default_rng(8)
    images = rng.normal(size=(3, 6, 6, 3))
    masks = rng.uniform(size=(3, 6, 6, 1))
    keys = np.array([[5, 0], [5, 1], [9, 0]])
    integrated = list(get_method("iscam", samples=4).masked_inputs(images, masks, keys))
    for variant, coefficient in zip(integrated, (0.25, 0.75, 1.5, 2.5), strict=True):
        np.testing.assert_allclose(variant, images * masks * coefficient, atol=1e-12)
    sscam = get_method("sscam", samples=3, noise=0.4)
    smoothed = list(sscam.masked_inputs(images, masks, keys))
    assert len(smoothed) == 3
    # A pair's draws depend on its key only, not on the other pairs of the chunk.
    alone = list(sscam.masked_inputs(images[2:], masks[2:], keys[2:]))
    for both, one in zip(smoothed, alone, strict=True):
        np.testing.assert_array_equal(both[2:], one)
    noise = (smoothed[0] / images) - masks
    assert 0.25 < noise.std() < 0.55  # the mask's noise has the asked std (0.4)
    assert np.allclose(list(get_method("sscam", noise=0.0).masked_inputs(images, masks, keys))[0],
                       images * masks)


def test_method_options_are_parsed_checked_and_recorded():
    assert parse_method_options("fem", ["k=1.5"]) == {"k": 1.5}
    parsed = parse_method_options("kpcacam", ["kernel=rbf", "gamma=0.5"])
    assert parsed == {"kernel": "rbf", "gamma": 0.5}
    assert get_method("kpcacam", **parsed).recorded_options() == {
        "kernel": "rbf", "gamma": 0.5, "coef0": 1.0}
    assert parse_method_options("smoothgradcam++", {"samples": 8}) == {"samples": 8}
    finer = get_method("finercam", **parse_method_options("finercam", ["base=Layer-CAM"]))
    assert finer.formula is METHODS["layercam"].formula
    assert finer.recorded_options() == {"base": "layercam", "alpha": 1.0, "compared": 3}
    for name, options, message in [
        ("fem", ["kk=1"], "not an option of fem"),
        ("gradcam", ["k=1"], "not an option of gradcam"),
        ("iscam", ["samples=many"], "wants a int"),
        ("kpcacam", ["kernel=laplace"], "kernel must be one of"),
        ("finercam", ["base=scorecam"], "must be a gradient method"),
        ("randomcam", ["seed=-1"], "seed must be at least 0"),
    ]:
        with pytest.raises(UsageError, match=message):
            get_method(name, **parse_method_options(name, options))


# =========================================================================== 2. on models


@pytest.fixture(scope="module")
def cnn(shapes_cnn, make_loaded):
    loaded = make_loaded(shapes_cnn.model, shapes_cnn.layer, name="shapes_cnn")
    return loaded, shapes_cnn.held_out.images[-6:]


@pytest.fixture(scope="module")
def cnn_conv3(shapes_cnn, make_loaded):
    """The same CNN explained at ``conv3`` (16x16): a conv and a ReLU lie between it and the
    pooling, so its gradients depend on the input (at ``features`` they are W / (h w) for
    every input, and noisy copies would all give the same gradients)."""
    loaded = make_loaded(shapes_cnn.model, "conv3", name="shapes_cnn")
    return loaded, shapes_cnn.held_out.images[-6:]


def test_cam_equals_gradcam_on_a_global_average_pooling_dense_head(cnn):
    # y_c = sum_k W_kc mean(A_k) + b_c, so dy_c/dA_k = W_kc / (h w) everywhere: Grad-CAM's
    # weights are CAM's divided by h w, and the normalised maps are equal.
    loaded, images = cnn
    targets = Targets(classes=(0, 1, 2))
    cam = Engine(loaded, targets, "cam", compiled=False).run(images)
    grad = Engine(loaded, targets, "gradcam", compiled=False).run(images)
    assert not cam.empty.all()
    np.testing.assert_allclose(cam.cams, grad.cams, atol=TOL)


def test_cam_on_a_binary_sigmoid_head_explains_both_classes(make_loaded):
    keras.utils.set_random_seed(1)
    inputs = keras.Input((6, 6, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="features")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(1, activation="sigmoid")(keras.layers.Dropout(0.3)(x))
    model = keras.Model(inputs, outputs)
    activation, patches = _output_activation(model, 0)  # as camcli loads it: logit z, (-z, z)
    assert activation == "sigmoid"
    loaded = replace(make_loaded(model, "features"), binary=True, activation=activation,
                     patches=patches, labels=generic_labels(2))
    images = np.random.default_rng(1).uniform(size=(3, 6, 6, 3)).astype(np.float32)
    for cls in (0, 1):
        cam = Engine(loaded, Targets(classes=(cls,)), "cam", compiled=False).run(images)
        grad = Engine(loaded, Targets(classes=(cls,)), "gradcam", compiled=False).run(images)
        np.testing.assert_allclose(cam.cams, grad.cams, atol=TOL)
        np.testing.assert_array_equal(cam.empty, grad.empty)


def test_cam_without_its_head_is_a_usage_error(cnn, make_loaded):
    loaded, _ = cnn
    conv3 = make_loaded(loaded.model, "conv3")  # pooled later, but not by the head's GAP
    with pytest.raises(UsageError, match="'conv3' followed by global average pooling"):
        Engine(conv3, Targets(), "cam")
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, name="features")(inputs)
    flat = keras.Model(inputs, keras.layers.Dense(3)(keras.layers.Flatten()(x)))
    with pytest.raises(UsageError, match="does not read 'features' that way"):
        Engine(make_loaded(flat, "features"), Targets(), "cam")
    Engine(make_loaded(flat, "features"), Targets(), "gradcam")  # other methods still run


def test_finercam_gradient_is_the_contrast_on_an_analytic_head(make_loaded):
    # Target layer = the input (identity); GAP + Dense(W, b): y = mean(A) W + b, so the
    # explained score m y_t - alpha sum_j y_j has gradient (m W_t - alpha sum_j W_j) / (h w).
    h, w, c, classes = 5, 4, 6, 7
    rng = np.random.default_rng(9)
    kernel = rng.normal(size=(c, classes)).astype(np.float32)
    bias = rng.normal(size=classes).astype(np.float32)
    inputs = keras.Input((h, w, c))
    act = keras.layers.Activation("linear", name="act")(inputs)
    dense = keras.layers.Dense(classes)
    model = keras.Model(inputs, dense(keras.layers.GlobalAveragePooling2D()(act)))
    dense.set_weights([kernel, bias])
    images = rng.uniform(0, 1, size=(4, h, w, c)).astype(np.float32)
    loaded = make_loaded(model, "act")
    for alpha, compared in ((1.0, 3), (0.5, 2)):
        method = get_method("finercam", alpha=alpha, compared=compared)
        out = Engine(loaded, Targets(top=2), method, compiled=True).run(images)
        logits = images.astype(np.float64).mean(axis=(1, 2)) @ kernel + bias
        raw = np.zeros((4, 2, h, w))
        for n in range(4):
            for j, t in enumerate(out.targets[n]):
                order = np.argsort(np.abs(logits[n] - logits[n, t]))[1 : compared + 1]
                weights = compared * kernel[:, t] - alpha * kernel[:, order].sum(axis=1)
                raw[n, j] = np.maximum(images[n] @ weights, 0)
        expected = _normalised(raw.reshape(8, h, w)).reshape(raw.shape)
        np.testing.assert_allclose(out.cams, expected, atol=TOL)
        np.testing.assert_array_equal(out.targets, np.argsort(-logits, axis=1)[:, :2])


@pytest.mark.parametrize(("noisy", "options", "plain"), [
    ("smoothgradcam++", {"noise": 0.0, "samples": 2}, "gradcam++"),
    ("sscam", {"noise": 0.0, "samples": 2}, "scorecam"),
    ("iscam", {"samples": 1}, "scorecam"),
])
def test_noisy_methods_without_noise_are_their_parents(cnn_conv3, noisy, options, plain):
    loaded, images = cnn_conv3
    images = images[:3]

    def run(method, **options):
        return Engine(loaded, Targets(top=2), get_method(method, **options),
                      compiled=False).run(images).cams

    parent = run(plain)
    assert parent.max() > 0
    np.testing.assert_allclose(run(noisy, **options), parent, atol=TOL)
    noisier = {"samples": 2} if noisy == "iscam" else {**options, "noise": 0.3}
    assert np.abs(run(noisy, **noisier) - parent).max() > 1e-2  # the noise (or path) matters


SEEDED = [("smoothgradcam++", {}), ("sscam", {"samples": 3}), ("iscam", {"samples": 3}),
          ("randomcam", {})]


@pytest.mark.parametrize(("name", "options"), SEEDED, ids=[n for n, _ in SEEDED])
def test_seeded_methods_are_reproducible_and_batch_independent(cnn_conv3, name, options):
    loaded, images = cnn_conv3
    images = images[:4]

    def run(batch, **extra):
        method = get_method(name, **{**options, **extra})
        return Engine(loaded, Targets(top=2), method, compiled=False).run(batch).cams

    first = run(images)
    np.testing.assert_array_equal(first, run(images))  # a new engine: the same bits
    alone = run(images[2:3])  # a lone image (run beside a copy of itself)
    np.testing.assert_allclose(alone[0], first[2], atol=1e-6)
    moved = run(images[[3, 2, 0]])  # other neighbours, another position
    np.testing.assert_allclose(moved[1], first[2], atol=1e-6)
    if "seed" in METHODS[name].recorded_options():
        assert np.abs(run(images, seed=1) - first).max() > 1e-4  # the seed draws others


class _BatchSpy(keras.layers.Identity):
    """Passes its input through and notes the batch size of every (eager) call (an Identity,
    so CAM still finds its head across it)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.seen = []

    def call(self, inputs):
        if inputs.shape[0] is not None:  # not while the model is built
            self.seen.append(int(inputs.shape[0]))
        return inputs


# Attention methods need a ViT (on this CNN they are a usage error); their pass is the same
# padded ``_step`` as Grad-CAM's.
@pytest.mark.parametrize("name", [n for n, m in METHODS.items() if not m.needs_attention])
def test_the_model_never_sees_a_batch_of_one(make_loaded, name):
    # engine.MIN_BATCH, for every model call a method makes: the forward/backward pass, noisy
    # copies, masked inputs and ablated activations in chunks (of 3 here: 7 channels leave a
    # chunk of one). One image, explained eagerly so the spy sees concrete batch sizes.
    from camcli.engine import MIN_BATCH

    before, after = _BatchSpy(name="before"), _BatchSpy(name="after")  # after: in the tail
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(7, 3, padding="same", activation="relu", name="features")(
        before(inputs))
    outputs = keras.layers.Dense(4)(keras.layers.GlobalAveragePooling2D()(after(x)))
    loaded = make_loaded(keras.Model(inputs, outputs), "features")
    method = get_method(name, chunk_size=3, **({"samples": 2} if "samples" in
                                                 METHODS[name].recorded_options() else {}))
    image = np.random.default_rng(11).uniform(size=(1, 8, 8, 3)).astype(np.float32)
    before.seen.clear()
    after.seen.clear()
    Engine(loaded, Targets(top=2), method, compiled=False).run(image)
    seen = before.seen + after.seen
    assert before.seen and min(seen) >= MIN_BATCH, seen


def _pointing(cams, boxes, size, margin) -> float:
    return float(np.mean([point_in_box(map_stats(cam, size, size).peak, box, margin)
                          for cam, box in zip(cams, boxes, strict=True)]))


def test_randomcam_is_a_baseline_far_below_the_class_discriminative_methods(
        shapes_cnn, make_loaded):
    # The pointing test of test_method_family.py on the same 100 held-out images. Chance for
    # it: the share of the 8 x 8 cell centres (where a map's peak can be) inside the object's
    # box grown by half a cell, averaged over the images (about 0.17). Random channel weights
    # still beat that (about 0.45-0.6 over seeds): ReLU of any mix of this layer's
    # activations peaks where they are strong, on the bright object. What a baseline must
    # show is that it is far from a real method, and that its map ignores the class.
    loaded = make_loaded(shapes_cnn.model, shapes_cnn.layer, name="shapes_cnn")
    held_out = shapes_cnn.held_out
    images, boxes = held_out.images[:100], held_out.boxes[:100]
    size, cells = shapes_cnn.size, loaded.layer.output.shape[1]
    margin = size / cells / 2
    centres = (np.arange(cells) + 0.5) * size / cells
    chance = float(np.mean([np.mean([[point_in_box((x, y), box, margin) for x in centres]
                                     for y in centres]) for box in boxes]))
    every = Engine(loaded, Targets(classes=(0, 1, 2)), "randomcam").run(images)
    for cls in (1, 2):
        np.testing.assert_array_equal(every.cams[:, cls], every.cams[:, 0])  # class-blind
    rates = [_pointing(Engine(loaded, Targets(), get_method("randomcam", seed=seed))
                       .run(images).cams[:, 0], boxes, size, margin) for seed in (0, 1, 2)]
    gradcam = _pointing(Engine(loaded, Targets(), "gradcam").run(images).cams[:, 0],
                        boxes, size, margin)
    print(f"\npointing: chance {chance:.2f}, randomcam {rates}, gradcam {gradcam:.2f}")
    assert 0.1 < chance < 0.3
    assert max(rates) < 0.75 < gradcam, (rates, gradcam)


# =========================================================================== 3. the CLI


@pytest.fixture(scope="module")
def cli_runs(tmp_path_factory) -> dict:
    """The CLI runs, started together; each test waits for its own."""
    folder = tmp_path_factory.mktemp("cli_more_methods")
    pixels = np.random.default_rng(10).integers(0, 256, size=(96, 120, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(folder / "photo.png")
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(4, 3, activation="relu", name="features")(inputs)
    flat = keras.Model(inputs, keras.layers.Dense(3)(keras.layers.Flatten()(x)))
    flat.save(folder / "flat.keras")
    commands = {
        "cam": ["photo.png", *SMALL_MODEL, "--method", "cam", "--json", "--quiet", "-o", "cam"],
        "no_head": ["photo.png", "--model", "flat.keras", "--method", "cam", "-o", "no_head"],
        "options": ["photo.png", *SMALL_MODEL, "--method", "finercam", "--method-option",
                    "base=layercam", "--method-option", "alpha=0.5", "--json", "--quiet",
                    "-o", "options"],
    }
    runs = {name: start_explain(args, folder, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            for name, args in commands.items()}
    yield folder, runs
    stop(*runs.values())


def _record(run) -> dict:
    assert run.returncode == 0, run.stderr
    lines = [line for line in run.stdout.splitlines() if line.strip()]
    assert len(lines) == 1, run.stdout
    return json.loads(lines[0])


def test_cli_cam_runs_on_a_pooled_1x1_convolution_head(cli_runs):
    # camcli explain photo.png --model mobilenet_v1_0.25_128 --weights none --method cam
    _, runs = cli_runs
    record = _record(finish(runs["cam"]))
    assert record["ok"] and record["method"] == "cam"
    assert record["model"]["layer"] == "conv_pw_13_relu"


def test_cli_cam_on_a_model_without_the_head_is_a_usage_error(cli_runs):
    # camcli explain photo.png --model flat.keras --method cam   (conv -> flatten -> dense)
    folder, runs = cli_runs
    run = finish(runs["no_head"])
    assert run.returncode == 2, run.stderr
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("camcli: error: --method cam needs"), lines
    assert "global average pooling" in lines[0] and "Traceback" not in run.stderr
    assert not (folder / "no_head").exists()  # nothing written


def test_cli_method_options_are_recorded(cli_runs):
    # camcli explain photo.png --method finercam --method-option base=layercam
    #   --method-option alpha=0.5 --json --quiet
    _, runs = cli_runs
    record = _record(finish(runs["options"]))
    assert record["method"] == "finercam"
    assert record["method_options"] == {"eigen_smooth": False, "aug_smooth": False,
                                        "base": "layercam", "alpha": 0.5, "compared": 3}
