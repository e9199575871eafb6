"""The CAM method family (``--method``): every method checked where its answer is known.

1. Analytic. Tiny hand-built models whose target layer ``act`` passes the input through (a linear
   Activation, or a 2x2 average pool), followed by global average pooling and a Dense head with a
   known kernel ``W`` and bias ``b``. The class score is ``y_c = sum_k W_kc mean(A_k) + b_c``, so
   ``dy_c/dA_ij^k = g_k = W_kc / (h w)`` at every location and each method has a closed form:

   - Grad-CAM: ``alpha_k = g_k``, map ``ReLU(sum_k W_kc A_k) / (h w)``: CAM up to a positive scale;
   - XGrad-CAM: ``w_k = sum_ij (A_ij^k / S_k) g_k = g_k`` (``S_k = sum_ij A_ij^k``): CAM again;
   - HiResCAM: ``sum_k g_k A_k``: exactly Grad-CAM's raw map;
   - LayerCAM: ``ReLU(sum_k ReLU(g_k) A_k)``: only the positively weighted channels;
   - Grad-CAM++: ``a_ij^k = g^2 / (2 g^2 + S_k g^3) = 1 / (2 + S_k g_k)``, so
     ``w_k = h w ReLU(g_k) / (2 + S_k g_k)``;
   - Eigen-CAM of a rank-1 tensor ``A = u (x) v``: its first principal component (the paper's
     uncentred SVD) is ``u |v|`` (sign set by the channel sum), so the map is ``u``;
   - Score-CAM: softmax over k of ``y_c(x * m_k)``, ``m_k`` the upsampled, min-max normalised A_k;
   - Ablation-CAM: ``y_c - y_c(A_k = 0) = W_kc mean(A_k)``, so ``w_k = W_kc mean(A_k) / y_c``.

   Plus the pure functions of camcli.methods on hand-made arrays.
2. Ground truth: the synthetic-shapes CNN (trained once per session, conftest.py); every method's
   peak must fall on the object for >= 85 % of held-out images.
3. Invariances: batch size, Score-/Ablation-CAM chunk size, --scorecam-channels, fused layers,
   --aug-smooth, and Ablation-CAM's graph cut against its full-model fallback.
4. The CLI records the method, its options and the fused layers; an unknown method is a usage
   error with a did-you-mean line.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess

import keras
import numpy as np
import pytest
from cli_helpers import SMALL_MODEL, finish, start_explain, stop
from PIL import Image
from synthetic import point_in_box

from camcli.engine import CamOptions, Engine, Targets
from camcli.heatmaps import map_stats
from camcli.methods import (
    METHODS,
    Needs,
    ablationcam,
    combine,
    first_component,
    get_method,
    gradcam,
    gradcam_plus_plus,
    hirescam,
    layercam,
    scorecam,
    xgradcam,
)

TOL = 1e-4  # maps are normalised to [0, 1]: an absolute tolerance on that scale
# Methods on a target layer's activations (attention methods: tests/test_hub.py, on a ViT)
ALL_METHODS = tuple(name for name, method in METHODS.items() if not method.needs_attention)
GRADIENT_METHODS = tuple(name for name, method in METHODS.items()
                         if method.needs_gradients and not method.needs_attention)

# The analytic head: 4 channels, 3 classes; every class has positive and negative weights.
KERNEL = np.array(
    [[1.0, -0.5, 0.3], [-0.8, 1.2, 0.6], [0.5, 0.4, -1.0], [-0.3, -0.7, 0.9]], dtype=np.float32
)
BIAS = np.array([3.0, 1.5, 1.2], dtype=np.float32)  # every score > 0 (Ablation-CAM divides)
CLASSES = (0, 1, 2)


def test_the_methods_of_the_issues_are_registered():
    assert set(METHODS) >= {"gradcam", "gradcam++", "xgradcam", "hirescam", "layercam",
                            "eigencam", "scorecam", "ablationcam"}
    assert set(METHODS) >= {"shapleycam", "fullgrad", "guided-backprop", "guided-gradcam"}
    assert GRADIENT_METHODS[:5] == ("gradcam", "gradcam++", "xgradcam", "hirescam", "layercam")
    assert METHODS["eigencam"].needs is Needs.ACTIVATIONS  # gradient-free
    assert METHODS["scorecam"].needs is Needs.MASKED_INPUT_SCORES
    assert METHODS["ablationcam"].needs is Needs.ABLATION_SCORES


# =========================================================================== helpers


def _normalised(raw: np.ndarray, allow_empty: bool = False) -> np.ndarray:
    """What the engine reports: ReLU'd maps scaled so each peaks at 1; empty maps stay zero."""
    raw = np.maximum(np.asarray(raw, dtype=np.float64), 0.0)
    peaks = raw.reshape(len(raw), -1).max(axis=1)
    assert allow_empty or (peaks > 0).all(), "a reference map is empty: the example proves less"
    return raw / np.where(peaks > 0, peaks, 1.0)[:, None, None]


def _bilinear(x: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Bilinear resize of ``(n, h, w, c)`` with half-pixel centres and clamped edges, by hand."""
    h, w = x.shape[1:3]

    def axis(n_in, n_out):
        src = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
        lo = np.floor(src).astype(int)
        return lo, np.minimum(lo + 1, n_in - 1), src - lo

    y0, y1, fy = axis(h, out_h)
    x0, x1, fx = axis(w, out_w)
    fy, fx = fy[None, :, None, None], fx[None, None, :, None]
    rows = x[:, y0] * (1 - fy) + x[:, y1] * fy
    return rows[:, :, x0] * (1 - fx) + rows[:, :, x1] * fx


def _gap_dense_model(shape, kernel=KERNEL, bias=BIAS, pool: int = 1, nested: bool = False):
    """Input -> act (identity, or a ``pool`` x ``pool`` average pool) -> GAP -> Dense(kernel, bias).

    ``nested``: ``act`` sits inside a nested model, so it cannot be a graph cut point.
    """
    h, w, c = shape
    act = (keras.layers.Activation("linear", name="act") if pool == 1
           else keras.layers.AveragePooling2D(pool, name="act"))
    inputs = keras.Input(shape)
    if nested:
        x = keras.Sequential([keras.Input(shape), act], name="inner")(inputs)
    else:
        x = act(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    head = keras.layers.Dense(kernel.shape[1], name="head")
    outputs = head(x)
    head.set_weights([kernel, bias])
    return keras.Model(inputs, outputs, name="nested_gap_dense" if nested else "gap_dense")


def _positive_activations(n: int, h: int, w: int, seed: int) -> np.ndarray:
    """Post-ReLU-like activations with very different channel sums (so S_k g_k matters)."""
    rng = np.random.default_rng(seed)
    scales = np.array([1.0, 3.0, 0.5, 2.0])
    return (rng.uniform(0.05, 1.0, size=(n, h, w, 4)) * scales).astype(np.float32)


def _engine(loaded, targets, method, compiled=False, **options):
    """An engine for ``method``: the method's own options (``chunk_size``, ``channels``) are
    set on the method, the others are :class:`CamOptions`."""
    cam_fields = {f.name for f in dataclasses.fields(CamOptions)}
    cam = {name: options.pop(name) for name in list(options) if name in cam_fields}
    return Engine(loaded, targets, get_method(method, **options), compiled=compiled,
                  options=CamOptions(**cam))


def _maps(loaded, method, images, targets=None, compiled=False, **options):
    """Run ``method`` (default: every class of the analytic head) and return (output, engine)."""
    engine = _engine(loaded, targets or Targets(classes=CLASSES), method, compiled, **options)
    return engine.run(images), engine


# =========================================================================== 1. pure functions


def test_first_component_is_the_principal_axis_projection_signed_by_the_channel_sum():
    rng = np.random.default_rng(0)
    values = rng.normal(size=(6, 5, 4, 7)) + rng.normal(size=(6, 1, 1, 7))
    projected = first_component(values)
    assert projected.shape == (6, 5, 4)
    for i in range(len(values)):
        matrix = values[i].reshape(-1, 7)
        # Independent: the top eigenvector of the (uncentred) Gram matrix, as in Eigen-CAM.
        _, vectors = np.linalg.eigh(matrix.T @ matrix)
        expected = matrix @ vectors[:, -1]
        got = projected[i].ravel()
        np.testing.assert_allclose(np.abs(got), np.abs(expected), atol=1e-9)
        assert np.dot(got, matrix.sum(axis=1)) >= 0  # the sign correction
    # Negating the activations negates the channel sum, so the component follows it.
    np.testing.assert_allclose(first_component(-values), -projected, atol=1e-9)


def test_first_component_of_a_rank_one_tensor_is_that_component():
    rng = np.random.default_rng(1)
    u = rng.uniform(0.0, 1.0, size=(5, 6))
    for v in (rng.uniform(0.2, 1.0, size=4), np.array([1.0, -0.5, 2.0, 0.3])):  # sum(v) > 0
        projected = first_component((u[:, :, None] * v)[None])[0]
        np.testing.assert_allclose(projected, u * np.linalg.norm(v), atol=1e-9)
        # Eigen-CAM's map is its ReLU, and u >= 0: the map is u itself (times |v|).
        eigen_map = combine((u[:, :, None] * v)[None], eigen_smooth=True)[0]
        np.testing.assert_allclose(eigen_map, u * np.linalg.norm(v), atol=1e-9)
    # A constant tensor projects to a flat positive map; an all-zero one stays zero, no NaN.
    flat = first_component(np.ones((1, 3, 3, 2)))
    np.testing.assert_allclose(flat, np.full((1, 3, 3), np.sqrt(2)), atol=1e-9)
    assert not first_component(np.zeros((1, 3, 3, 2))).any()


def test_combine_is_relu_of_the_channel_sum_or_of_the_first_component():
    rng = np.random.default_rng(2)
    weighted = rng.normal(size=(3, 4, 5, 6))
    summed = combine(weighted)
    np.testing.assert_allclose(summed, np.maximum(weighted.sum(axis=-1), 0))
    assert (summed == 0).any() and (summed > 0).any()
    np.testing.assert_allclose(combine(weighted, eigen_smooth=True),
                               np.maximum(first_component(weighted), 0))
    # Method.cam: eigen_smooth applies to any method's weighted activations; Eigen-CAM always.
    a, g = rng.uniform(0, 1, size=(2, 4, 5, 6)), rng.normal(size=(2, 4, 5, 6))
    np.testing.assert_allclose(METHODS["gradcam"].cam(a, g, eigen_smooth=True),
                               np.maximum(first_component(gradcam(a, g)), 0))
    np.testing.assert_allclose(METHODS["eigencam"].cam(a), np.maximum(first_component(a), 0))


def test_gradient_formulas_with_a_spatially_constant_gradient():
    # The GAP + Dense head by hand: g_k = W_kc / (h w) everywhere.
    h, w = 6, 5
    a = _positive_activations(2, h, w, seed=3).astype(np.float64)
    kernel = KERNEL[:, 0].astype(np.float64)
    g = np.broadcast_to(kernel / (h * w), a.shape)
    cam = np.maximum(np.einsum("nhwk,k->nhw", a, kernel), 0) / (h * w)
    np.testing.assert_allclose(combine(gradcam(a, g)), cam, atol=1e-12)
    np.testing.assert_allclose(combine(xgradcam(a, g)), cam, atol=1e-12)
    np.testing.assert_allclose(combine(hirescam(a, g)), cam, atol=1e-12)
    positive = np.maximum(kernel, 0) / (h * w)
    np.testing.assert_allclose(combine(layercam(a, g)),
                               np.einsum("nhwk,k->nhw", a, positive), atol=1e-12)
    sums = a.sum(axis=(1, 2))  # S_k per image
    gk = kernel / (h * w)
    weights = h * w * np.maximum(gk, 0) / (2 + sums * gk)  # (n, k)
    np.testing.assert_allclose(combine(gradcam_plus_plus(a, g)),
                               np.maximum(np.einsum("nhwk,nk->nhw", a, weights), 0), atol=1e-12)


def test_gradcam_plus_plus_zero_gradient_channels_get_zero_weight():
    a = np.ones((1, 2, 2, 2))
    g = np.zeros_like(a)
    g[..., 0] = 0.5
    weighted = gradcam_plus_plus(a, g)
    assert np.isfinite(weighted).all()
    assert not weighted[..., 1].any()
    # Channel 0: alpha = 1 / (2 + 4 * 0.5) = 0.25 at 4 places, w = 4 * 0.25 * 0.5 = 0.5.
    np.testing.assert_allclose(weighted[..., 0], 0.5)


def test_scorecam_formula_is_a_softmax_over_the_evaluated_channels_only():
    a = np.ones((1, 1, 1, 4))
    scores = np.array([[1.0, -np.inf, 3.0, 0.0]])  # channel 1 left out (--scorecam-channels)
    weights = scorecam(a, scores)[0, 0, 0]
    expected = np.exp([1.0, 3.0, 0.0]) / np.exp([1.0, 3.0, 0.0]).sum()
    np.testing.assert_allclose(weights, [expected[0], 0.0, expected[1], expected[2]])
    # Large scores do not overflow.
    assert np.isfinite(scorecam(a, np.array([[1000.0, 1001.0, -np.inf, 999.0]]))).all()


def test_ablationcam_formula_is_the_relative_score_drop():
    a = np.ones((1, 1, 1, 3))
    scores = np.array([[4.0, 3.0, 4.0, 6.0]])  # y = 4; channel drops 1, 0, -2
    np.testing.assert_allclose(ablationcam(a, scores)[0, 0, 0], [0.25, 0.0, -0.5])


# =========================================================================== 1. analytic models


@pytest.fixture(scope="module")
def analytic(make_loaded):
    """The GAP + Dense model at the input's resolution, and activations that are its input."""
    h, w = 6, 5
    model = _gap_dense_model((h, w, 4))
    images = _positive_activations(3, h, w, seed=4)
    cam = np.maximum(np.einsum("nhwk,kc->nchw", images, KERNEL), 0)  # (n, classes, h, w)
    assert (cam == 0).any() and (cam > 0).any()  # the examples exercise the ReLU
    return make_loaded(model, "act"), images, cam


@pytest.mark.parametrize("method", ["gradcam", "xgradcam", "hirescam"])
def test_gradcam_xgradcam_and_hirescam_reduce_to_cam_for_a_gap_dense_head(analytic, method):
    loaded, images, cam = analytic
    out, _ = _maps(loaded, method, images)
    assert out.cams.shape == (3, 3, 6, 5)
    np.testing.assert_array_equal(out.targets, [CLASSES] * 3)
    expected = _normalised(cam.reshape(9, 6, 5)).reshape(cam.shape)
    np.testing.assert_allclose(out.cams, expected, atol=1e-5)


def test_hirescam_equals_gradcam_on_the_gap_dense_head(analytic):
    loaded, images, _ = analytic
    np.testing.assert_allclose(_maps(loaded, "hirescam", images)[0].cams,
                               _maps(loaded, "gradcam", images)[0].cams, atol=1e-6)


def test_layercam_keeps_only_positively_weighted_channels(analytic):
    loaded, images, cam = analytic
    out, _ = _maps(loaded, "layercam", images)
    raw = np.einsum("nhwk,kc->nchw", images, np.maximum(KERNEL, 0))
    np.testing.assert_allclose(out.cams, _normalised(raw.reshape(9, 6, 5)).reshape(raw.shape),
                               atol=1e-5)
    assert not np.allclose(out.cams, _normalised(cam.reshape(9, 6, 5)).reshape(cam.shape),
                           atol=1e-2)


def test_gradcam_plus_plus_weights_match_the_closed_form(analytic):
    loaded, images, cam = analytic
    out, _ = _maps(loaded, "gradcam++", images)
    h, w = 6, 5
    g = KERNEL / (h * w)  # (channels, classes): dy_c/dA^k at every location
    sums = images.astype(np.float64).sum(axis=(1, 2))  # (n, channels): S_k
    weights = h * w * np.maximum(g, 0)[None] / (2 + sums[:, :, None] * g[None])  # (n, k, c)
    raw = np.einsum("nhwk,nkc->nchw", images, weights)
    expected = _normalised(raw.reshape(9, h, w)).reshape(raw.shape)
    np.testing.assert_allclose(out.cams, expected, atol=1e-5)
    # Not CAM in disguise: the S_k g_k term changes the map.
    assert not np.allclose(expected, _normalised(cam.reshape(9, h, w)).reshape(cam.shape),
                           atol=1e-2)


def test_eigencam_of_a_rank_one_activation_tensor_is_that_component(make_loaded):
    h, w = 6, 5
    rng = np.random.default_rng(5)
    u = rng.uniform(0.0, 1.0, size=(2, h, w))
    v = np.array([0.7, 1.5, 0.2, 1.0])
    images = (u[..., None] * v).astype(np.float32)
    out, _ = _maps(make_loaded(_gap_dense_model((h, w, 4)), "act"), "eigencam", images)
    expected = _normalised(u)  # the component itself, as the issue states
    for c in CLASSES:  # gradient-free: the same map whatever the class
        np.testing.assert_allclose(out.cams[:, c], expected, atol=1e-5)
    # The strongest place of u is the peak.
    for i in range(2):
        assert np.unravel_index(out.cams[i, 0].argmax(), (h, w)) == np.unravel_index(
            u[i].argmax(), (h, w))


def _scorecam_by_hand(images, kernel, bias, pool, keep=None):
    """Score-CAM for the pooled GAP + Dense model, computed with numpy only.

    Returns raw maps (n, classes, h', w'), and the channels used per image."""
    n, height, width, c = images.shape
    x = images.astype(np.float64)
    a = x.reshape(n, height // pool, pool, width // pool, pool, c).mean(axis=(2, 4))
    variance = a.reshape(n, -1, c).var(axis=1)
    used = [sorted(np.argsort(-variance[i])[: keep or c]) for i in range(n)]
    raw = np.zeros((n, kernel.shape[1], *a.shape[1:3]))
    for i in range(n):
        masks = _bilinear(a[i].transpose(2, 0, 1)[..., None], height, width)[..., 0]  # (c, H, W)
        low = masks.min(axis=(1, 2), keepdims=True)
        masks = (masks - low) / (masks.max(axis=(1, 2), keepdims=True) - low)
        masked_means = np.einsum("hwj,khw->kj", x[i], masks) / (height * width)  # (c, channels)
        scores = masked_means @ kernel + bias  # (c masks, classes)
        for cls in range(kernel.shape[1]):
            s = scores[used[i], cls]
            weights = np.exp(s - s.max()) / np.exp(s - s.max()).sum()
            raw[i, cls] = np.einsum("hwk,k->hw", a[i][..., used[i]], weights)
    return raw, used


@pytest.fixture(scope="module")
def pooled(make_loaded):
    """Score-CAM's model: a 2x2 average pool as target (masks are upsampled 4x3 -> 8x6)."""
    kernel = KERNEL * 4  # scores far enough apart for a non-trivial softmax
    model = _gap_dense_model((8, 6, 4), kernel=kernel, pool=2)
    rng = np.random.default_rng(6)
    # Per image and channel scales, so the variance order of the channels differs per image.
    images = (rng.uniform(0.0, 1.0, size=(3, 8, 6, 4))
              * rng.permuted(np.tile([0.2, 0.5, 1.0, 2.0], (3, 1)), axis=1)[:, None, None])
    return make_loaded(model, "act"), images.astype(np.float32), kernel


def test_scorecam_weights_are_the_softmax_of_the_masked_input_scores(pooled):
    loaded, images, kernel = pooled
    out, _ = _maps(loaded, "scorecam", images)
    raw, _ = _scorecam_by_hand(images, kernel, BIAS, pool=2)
    assert out.cams.shape == raw.shape == (3, 3, 4, 3)
    np.testing.assert_allclose(out.cams, _normalised(raw.reshape(9, 4, 3)).reshape(raw.shape),
                               atol=1e-5)


def test_scorecam_channels_keeps_the_highest_variance_channels(pooled):
    loaded, images, kernel = pooled
    out, _ = _maps(loaded, "scorecam", images, channels=2)
    raw, used = _scorecam_by_hand(images, kernel, BIAS, pool=2, keep=2)
    assert len({tuple(u) for u in used}) > 1  # the selection really is per image
    np.testing.assert_allclose(out.cams, _normalised(raw.reshape(9, 4, 3)).reshape(raw.shape),
                               atol=1e-5)
    every, _ = _maps(loaded, "scorecam", images)
    assert not np.allclose(out.cams, every.cams, atol=1e-3)
    # Asking for at least as many channels as the layer has is plain Score-CAM.
    np.testing.assert_allclose(_maps(loaded, "scorecam", images, channels=99)[0].cams,
                               every.cams, atol=1e-6)


def _tail_kind(engine: Engine, index: int = 0) -> str:
    function = engine._tails[index]
    return getattr(getattr(function, "python_function", function), "__name__", "")


@pytest.mark.parametrize("nested", [False, True], ids=["graph-cut", "full-model-replacement"])
def test_ablationcam_weights_are_the_relative_score_drop(make_loaded, analytic, nested):
    _, images, _ = analytic
    model = _gap_dense_model((6, 5, 4), nested=nested)
    loaded = make_loaded(model, "inner/act" if nested else "act")
    out, engine = _maps(loaded, "ablationcam", images, chunk_size=5)
    assert _tail_kind(engine) == ("with_replaced_output" if nested else "through_cut")
    means = images.astype(np.float64).mean(axis=(1, 2))  # (n, channels)
    y = means @ KERNEL + BIAS  # (n, classes)
    assert (y > 0).all()
    weights = means[:, :, None] * KERNEL[None] / y[:, None, :]  # W_kc mean(A_k) / y_c
    raw = np.einsum("nhwk,nkc->nchw", images, weights)
    expected = _normalised(raw.reshape(9, 6, 5), allow_empty=True).reshape(raw.shape)
    np.testing.assert_allclose(out.cams, expected, atol=1e-5)
    # Where no channel's removal lowers the score where it is active, the map is empty.
    np.testing.assert_array_equal(out.empty, raw.max(axis=(2, 3)) <= 0)
    assert out.empty.sum() <= 1


def test_ablationcam_without_a_clean_graph_cut_matches_ablation_by_hand(make_loaded):
    # A skip connection from *before* the target layer: the network after it cannot be cut out,
    # so the engine re-runs the whole model with the layer's output replaced.
    keras.utils.set_random_seed(7)
    inputs = keras.Input((6, 5, 3))
    c1 = keras.layers.Conv2D(4, 1, name="c1")(inputs)
    a = keras.layers.Activation("relu", name="act")(c1)
    c2 = keras.layers.Conv2D(4, 3, padding="same", name="c2")(a)
    skip = keras.layers.Add()([c2, c1])
    pooled = keras.layers.GlobalAveragePooling2D()(keras.layers.ReLU()(skip))
    model = keras.Model(inputs, keras.layers.Dense(3, name="head")(pooled))
    images = np.random.default_rng(7).normal(size=(2, 6, 5, 3)).astype(np.float32)
    out, engine = _maps(make_loaded(model, "act"), "ablationcam", images,
                        targets=Targets(classes=(0, 2)), chunk_size=3)
    assert _tail_kind(engine) == "with_replaced_output"
    assert not out.empty.all()

    def tail(activations, before):
        x = keras.layers.ReLU()(model.get_layer("c2")(activations) + before)
        return model.get_layer("head")(keras.ops.mean(x, axis=(1, 2))).numpy().astype(np.float64)

    before = model.get_layer("c1")(images)
    acts = keras.ops.relu(before).numpy()
    base = tail(acts, before)
    for i in range(2):
        for j, cls in enumerate((0, 2)):
            drops = []
            for k in range(4):
                ablated = acts[i : i + 1].copy()
                ablated[..., k] = 0
                drops.append(base[i, cls] - tail(ablated, before[i : i + 1])[0, cls])
            raw = np.maximum(np.einsum("hwk,k->hw", acts[i], np.array(drops) / base[i, cls]), 0)
            if raw.max() > 0:
                np.testing.assert_allclose(out.cams[i, j], raw / raw.max(), atol=1e-4)
            else:
                assert out.empty[i, j]


def test_ablationcam_graph_cut_and_full_model_replacement_agree(make_loaded):
    # The same weights as a flat model (cut after ``act``) and with ``act`` inside a nested model
    # (no cut possible): a real tail (conv, ReLU, pool, dense) after the layer.
    keras.utils.set_random_seed(8)
    shape = (12, 12, 3)

    def build(nested):
        first = [keras.layers.Conv2D(8, 3, padding="same", name="c1"),
                 keras.layers.ReLU(name="act")]
        inputs = keras.Input(shape)
        if nested:
            x = keras.Sequential([keras.Input(shape), *first], name="inner")(inputs)
        else:
            x = first[1](first[0](inputs))
        x = keras.layers.Conv2D(6, 3, padding="same", activation="relu", name="c2")(x)
        x = keras.layers.MaxPooling2D(name="p")(x)
        x = keras.layers.GlobalAveragePooling2D()(x)
        return keras.Model(inputs, keras.layers.Dense(4, name="head")(x))

    flat, nested = build(False), build(True)
    nested.set_weights(flat.get_weights())
    images = np.random.default_rng(8).normal(size=(3, *shape)).astype(np.float32)
    cut_out, cut_engine = _maps(make_loaded(flat, "act"), "ablationcam", images,
                                targets=Targets(top=2), compiled=True, chunk_size=7)
    full_out, full_engine = _maps(make_loaded(nested, "inner/act"), "ablationcam", images,
                                  targets=Targets(top=2), compiled=True, chunk_size=7)
    assert _tail_kind(cut_engine) == "through_cut"
    assert _tail_kind(full_engine) == "with_replaced_output"
    np.testing.assert_array_equal(cut_out.targets, full_out.targets)
    assert not cut_out.empty.all()
    np.testing.assert_allclose(cut_out.cams, full_out.cams, atol=TOL)


# =========================================================================== 2. ground truth

# Measured (2 cores, TF 2.21, first 100 held-out images): gradcam 0.99, gradcam++ 1.00,
# xgradcam 0.99, hirescam 0.99, layercam 1.00, eigencam 1.00, scorecam 1.00, ablationcam 1.00;
# scorecam --scorecam-channels 16 1.00, gradcam --aug-smooth 0.99, gradcam --eigen-smooth 0.99.
# Mismatched maps (another image's) point at the object < 40 % of the time for every method.
# Issue 24 (A), same run: cam 0.99, gradcam-elementwise 1.00, eigengradcam 1.00, kpcacam 0.98,
# fem 0.97, finercam 0.99, smoothgradcam++ 1.00; sscam (4 samples, noise 0.05) 0.98 and 1.00
# on 16 channels; iscam (3 samples) 0.95 and 1.00 on 16 channels. With torch-cam's defaults,
# SS-CAM (35 samples, noise 2.0 on [0, 1] masks) points 0.51 and IS-CAM (10 samples: inputs
# scaled up to 5.5x) 0.57 on this CNN: those defaults swamp a small CNN's inputs, so the check
# runs them lighter. randomcam is a baseline, checked in test_more_methods.py.
# Issue 24 B: shapleycam 0.99, guided-backprop 0.94, guided-gradcam 1.00; fullgrad 0.71 (its
# bias terms of late layers spread over the whole image under a GAP head: its input-gradient term
# alone scores 0.81, pytorch-grad-cam's per-channel ψ 0.69; mismatched maps 0.19).
POINTING_IMAGES = 100
MIN_POINTING = 0.85
LOWER_POINTING = {"fullgrad": 0.65}  # measured below MIN_POINTING: still far above chance
LIGHT = {"sscam": {"samples": 4, "noise": 0.05, "channels": 16},
         "iscam": {"samples": 3, "channels": 16}}
BASELINES = ("randomcam",)
GROUND_TRUTH = {
    **{name: (name, LIGHT.get(name, {})) for name in ALL_METHODS if name not in BASELINES},
    "scorecam --scorecam-channels 16": ("scorecam", {"channels": 16}),
    "gradcam --aug-smooth": ("gradcam", {"aug_smooth": True}),
    "gradcam --eigen-smooth": ("gradcam", {"eigen_smooth": True}),
}


def _pointing_rate(cams, boxes, size, margin) -> float:
    return float(np.mean([point_in_box(map_stats(cam, size, size).peak, box, margin)
                          for cam, box in zip(cams, boxes, strict=True)]))


@pytest.fixture(scope="module")
def pointing(shapes_cnn, make_loaded):
    """Top-1 maps and pointing rate per method on the first held-out images."""
    loaded = make_loaded(shapes_cnn.model, shapes_cnn.layer, name="shapes_cnn")
    cells = loaded.layer.output.shape[1]
    margin = shapes_cnn.size / cells / 2  # half a feature cell, as in test_ground_truth.py
    held_out = shapes_cnn.held_out
    images, boxes = held_out.images[:POINTING_IMAGES], held_out.boxes[:POINTING_IMAGES]
    results = {}
    for label, (method, options) in GROUND_TRUTH.items():
        out, _ = _maps(loaded, method, images, targets=Targets(), compiled=True, **options)
        accuracy = float(np.mean(out.targets[:, 0] == held_out.labels[:POINTING_IMAGES]))
        cams = out.cams[:, 0]
        results[label] = {
            "rate": _pointing_rate(cams, boxes, shapes_cnn.size, margin),
            "control": _pointing_rate(np.roll(cams, 1, axis=0), boxes, shapes_cnn.size, margin),
            "accuracy": accuracy,
            "empty": int(out.empty.sum()),
        }
    summary = ", ".join(f"{k} {v['rate']:.2f}" for k, v in results.items())
    print(f"\npointing rates on {POINTING_IMAGES} held-out images: {summary}")
    return results, summary


@pytest.mark.parametrize("label", list(GROUND_TRUTH))
def test_every_method_points_at_the_object(pointing, label):
    results, summary = pointing
    result = results[label]
    assert result["accuracy"] >= 0.9, f"the shapes CNN did not learn the task: {result}"
    assert result["empty"] == 0, f"{label}: {result['empty']} empty maps"
    need = LOWER_POINTING.get(label, MIN_POINTING)
    assert result["rate"] >= need, (
        f"{label}: peak on the object for only {result['rate']:.1%} of {POINTING_IMAGES} held-out "
        f"images (need {need:.0%}); all methods: {summary}"
    )
    # Control: another image's map (object elsewhere) must mostly miss, or the criterion is void.
    assert result["control"] < 0.4, f"{label}: mismatched maps still point {result['control']:.1%}"


# =========================================================================== 3. invariances


@pytest.fixture(scope="module")
def cnn(shapes_cnn, make_loaded):
    loaded = make_loaded(shapes_cnn.model, shapes_cnn.layer, name="shapes_cnn")
    return loaded, shapes_cnn.held_out.images[-8:]  # the images the pointing test does not use


BATCH_CASES = [(m, LIGHT.get(m, {})) for m in ALL_METHODS] + [
    ("gradcam", {"aug_smooth": True}),
    ("gradcam", {"eigen_smooth": True}),
    ("gradcam++", {"eigen_smooth": True}),
    ("ablationcam", {"aug_smooth": True}),
    ("scorecam", {"channels": 12}),
]


@pytest.mark.parametrize(("method", "options"), BATCH_CASES,
                         ids=[f"{m}{''.join(f'-{k}' for k in o)}" for m, o in BATCH_CASES])
def test_maps_do_not_depend_on_the_batch(cnn, method, options):
    loaded, images = cnn
    engine = _engine(loaded, Targets(top=2), method, **options)
    batched = engine.run(images)
    assert not batched.empty.all()
    for i in range(len(images)):
        single = engine.run(images[i : i + 1])
        np.testing.assert_array_equal(single.targets[0], batched.targets[i])
        np.testing.assert_allclose(single.cams[0], batched.cams[i], atol=TOL,
                                   err_msg=f"{method} {options}: image {i} alone vs in a batch")


@pytest.mark.parametrize(("method", "options"), [
    ("scorecam", {}), ("scorecam", {"channels": 10}), ("ablationcam", {}),
])
def test_scorecam_and_ablationcam_do_not_depend_on_the_chunk_size(cnn, method, options):
    loaded, images = cnn
    images = images[:3]  # 3 x 64 (image, channel) pairs: chunks of 7 straddle images
    maps = {}
    for chunk in (1, 7, 64):
        engine = _engine(loaded, Targets(top=2), method, chunk_size=chunk, **options)
        maps[chunk] = engine.run(images).cams
    assert maps[64].max() > 0
    for chunk in (1, 7):
        np.testing.assert_allclose(maps[chunk], maps[64], atol=TOL,
                                   err_msg=f"{method} {options}: chunk {chunk} vs 64")


@pytest.mark.parametrize("method", ["gradcam", "ablationcam"])
@pytest.mark.parametrize("fuse", ["mean", "max"])
def test_fused_layers_are_the_resized_single_layer_maps_combined(cnn, method, fuse):
    loaded, images = cnn
    model = loaded.model
    images = images[:4]
    targets = Targets(classes=(0, 2))
    coarse = Engine(loaded, targets, method).run(images).cams  # features: 8x8
    fine_loaded = dataclasses.replace(loaded, layer=model.get_layer("conv3"), layer_path="conv3")
    fine = Engine(fine_loaded, targets, method).run(images).cams  # conv3: 16x16
    assert coarse.shape[2:] == (8, 8) and fine.shape[2:] == (16, 16)
    both = dataclasses.replace(loaded, extra_layers=(("conv3", model.get_layer("conv3")),))
    assert both.describe()["layer"] == "features + conv3"
    fused = Engine(both, targets, method, options=CamOptions(fuse=fuse)).run(images)
    assert fused.cams.shape == (4, 2, 16, 16)
    upsampled = _bilinear(coarse.reshape(8, 8, 8, 1), 16, 16).reshape(4, 2, 16, 16)
    stacked = np.stack([upsampled, fine])
    expected = stacked.max(axis=0) if fuse == "max" else stacked.mean(axis=0)
    expected = _normalised(expected.reshape(8, 16, 16), allow_empty=True).reshape(4, 2, 16, 16)
    np.testing.assert_allclose(fused.cams, expected, atol=TOL)
    assert not fused.empty.all()


def test_aug_smooth_is_the_average_of_the_six_maps_mapped_back(cnn):
    # --aug-smooth: horizontal flip x scales 1, 0.875, 0.75 (zoomed out on a zero canvas, centred);
    # each map is mapped back to the original frame and the six are averaged.
    loaded, images = cnn
    images = images[:3]
    targets = Targets(classes=(0, 1))  # the same classes for every augmented copy
    plain = Engine(loaded, targets, "gradcam")
    size, cells = 64, 8
    total = np.zeros((3, 2, cells, cells))
    for flip in (False, True):
        for scale in (1.0, 0.875, 0.75):
            side = round(size * scale)
            offset = (size - side) // 2
            augmented = images[:, :, ::-1] if flip else images
            canvas = np.zeros_like(images)
            canvas[:, offset : offset + side, offset : offset + side] = _bilinear(
                augmented.astype(np.float64), side, side)
            cams = plain.run(canvas).cams.astype(np.float64)  # (3, 2, 8, 8)
            back = cams
            if scale != 1.0:
                # Back to the frame: upsample to the input, crop the image's square, average it
                # down to the map's cells (an exact block mean: 56 = 8 x 7, 48 = 8 x 6).
                full = _bilinear(cams.reshape(6, cells, cells, 1), size, size)[..., 0]
                crop = full[:, offset : offset + side, offset : offset + side]
                block = side // cells
                back = crop.reshape(6, cells, block, cells, block).mean(axis=(2, 4))
            total += back.reshape(cams.shape)[..., ::-1] if flip else back.reshape(cams.shape)
    expected = _normalised((total / 6).reshape(6, cells, cells)).reshape(3, 2, cells, cells)
    smoothed = Engine(loaded, targets, "gradcam", options=CamOptions(aug_smooth=True)).run(images)
    np.testing.assert_allclose(smoothed.cams, expected, atol=TOL)
    assert not np.allclose(smoothed.cams, plain.run(images).cams, atol=1e-2)


@pytest.mark.parametrize("method", ["gradcam", "eigencam", "scorecam"])
def test_flipping_the_image_flips_the_aug_smoothed_map(cnn, method):
    loaded, images = cnn
    images = images[:2]
    engine = _engine(loaded, Targets(classes=(1,)), method, aug_smooth=True, channels=8)
    maps = engine.run(images).cams
    flipped = engine.run(np.ascontiguousarray(images[:, :, ::-1])).cams
    np.testing.assert_allclose(flipped, maps[..., ::-1], atol=TOL)


# =========================================================================== 4. the CLI


@pytest.fixture(scope="module")
def cli_runs(tmp_path_factory) -> dict:
    """The CLI tests' runs, started together (each start-up imports TensorFlow: seconds
    of one core), each on the same photo in a folder of its own; each test waits for its own.
    Returns name -> (folder, process)."""
    pixels = np.random.default_rng(9).integers(0, 256, size=(96, 120, 3), dtype=np.uint8)
    commands = {
        "method": ["--method", "Grad-CAM++", "--eigen-smooth", "--json", "--quiet"],
        "fused": ["--layer", "conv_pw_11_relu", "--layer", "conv_pw_13_relu", "--fuse", "max",
                  "--method", "scorecam", "--scorecam-channels", "4", "--scorecam-batch", "3",
                  "--save-heatmap", "--json", "--quiet"],
        "unknown": ["--method", "gradcam+++"],
        "input_resolution": ["--method", "Guided-GradCAM", "--save-heatmap", "--json", "--quiet"],
    }
    runs = {}
    for name, options in commands.items():
        folder = tmp_path_factory.mktemp(f"cli_{name}")
        Image.fromarray(pixels).save(folder / "photo.png")
        runs[name] = (folder, start_explain(["photo.png", *SMALL_MODEL, *options], folder,
                                            stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    yield runs
    stop(*(process for _, process in runs.values()))


def _record(run: subprocess.CompletedProcess) -> dict:
    assert run.returncode == 0, run.stderr
    lines = [line for line in run.stdout.splitlines() if line.strip()]
    assert len(lines) == 1, run.stdout
    record = json.loads(lines[0])
    assert record["ok"], record
    return record


def test_cli_records_the_method_and_its_options(cli_runs):
    # camcli explain photo.png --method Grad-CAM++ --eigen-smooth --json --quiet
    picture, process = cli_runs["method"]
    run = finish(process)
    record = _record(run)
    assert record["method"] == "gradcam++"
    assert record["method_options"] == {"eigen_smooth": True, "aug_smooth": False}
    assert record["model"]["layer"] == "conv_pw_13_relu"
    written = json.loads((picture / "photo.png.cam.json").read_text())
    assert written["method"] == "gradcam++" and written["method_options"]["eigen_smooth"]


def test_cli_fuses_several_layers_and_records_them(cli_runs):
    # camcli explain photo.png --layer conv_pw_11_relu --layer conv_pw_13_relu --fuse max
    #   --method scorecam --scorecam-channels 4 --scorecam-batch 3 --save-heatmap --json --quiet
    picture, process = cli_runs["fused"]
    run = finish(process)
    record = _record(run)
    assert record["method"] == "scorecam"
    assert record["model"]["layer"] == "conv_pw_11_relu + conv_pw_13_relu"
    assert record["method_options"] == {"eigen_smooth": False, "aug_smooth": False,
                                        "fuse": "max", "scorecam_channels": 4}
    heatmap = np.load(picture / record["explanations"][0]["heatmap"])
    assert heatmap.shape == (8, 8)  # the finer layer's size (conv_pw_11_relu), not 4x4


def test_cli_unknown_method_is_a_usage_error_with_suggestions(cli_runs):
    run = finish(cli_runs["unknown"][1])  # camcli explain photo.png --method gradcam+++
    assert run.returncode == 2, run.stderr
    error = [line for line in run.stderr.splitlines() if line.startswith("camcli: error:")]
    assert len(error) == 1, run.stderr
    assert "unknown method 'gradcam+++'" in error[0]
    assert "did you mean" in error[0] and "gradcam++" in error[0]


def test_cli_writes_input_resolution_maps(cli_runs):
    # camcli explain photo.png --method Guided-GradCAM --save-heatmap --json --quiet
    # (mobilenet_v1_0.25_128: maps at the model's 128x128 input, not its 4x4 layer)
    folder, process = cli_runs["input_resolution"]
    record = _record(finish(process))
    assert record["method"] == "guided-gradcam"
    (explained,) = record["explanations"]
    heatmap = np.load(folder / explained["heatmap"])
    assert heatmap.shape == (128, 128) and heatmap.dtype == np.float32
    assert heatmap.max() == pytest.approx(1.0) and heatmap.min() >= 0
    # The record's peak is the saved map's peak, in the photo's pixels (120 x 96).
    i, j = np.unravel_index(int(np.argmax(heatmap)), heatmap.shape)
    assert explained["peak"] == {"x": round((j + 0.5) * 120 / 128, 2),
                                 "y": round((i + 0.5) * 96 / 128, 2)}
    with Image.open(folder / explained["overlay"]) as overlay:
        assert overlay.size == (120, 96)
    written = json.loads((folder / "photo.png.cam.json").read_text())
    assert written["explanations"][0]["heatmap_sha256"] == explained["heatmap_sha256"]
