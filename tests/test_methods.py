"""Tests for camcli.methods: the Grad-CAM formula on hand-made arrays, and method lookup."""

from __future__ import annotations

import numpy as np
import pytest

from camcli.errors import UnknownNameError, UsageError
from camcli.methods import METHODS, combine, get_method, gradcam


def gradcam_map(activations, gradients):
    return combine(gradcam(activations, gradients))


def _by_hand(activations: np.ndarray, gradients: np.ndarray) -> np.ndarray:
    """Grad-CAM with explicit loops: alpha_k = mean_ij dY/dA_ij^k, map = ReLU(sum_k alpha_k A^k)."""
    n, h, w, c = activations.shape
    out = np.zeros((n, h, w))
    for b in range(n):
        alphas = [sum(gradients[b, i, j, k] for i in range(h) for j in range(w)) / (h * w)
                  for k in range(c)]
        for i in range(h):
            for j in range(w):
                total = sum(alphas[k] * activations[b, i, j, k] for k in range(c))
                out[b, i, j] = max(total, 0.0)
    return out


def test_gradcam_small_example_worked_by_hand():
    # Channel weights (1, -2) everywhere; A0 = [[1, 2], [3, 4]], A1 = [[0, 1], [2, 0]].
    # 1*A0 - 2*A1 = [[1, 0], [-1, 4]]; ReLU -> [[1, 0], [0, 4]].
    a = np.stack([[[1.0, 2.0], [3.0, 4.0]], [[0.0, 1.0], [2.0, 0.0]]], axis=-1)[None]
    g = np.broadcast_to(np.array([1.0, -2.0]), a.shape)
    np.testing.assert_allclose(gradcam_map(a, g), [[[1.0, 0.0], [0.0, 4.0]]])


def test_gradcam_constant_gradient_is_relu_of_weighted_channel_sum():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(3, 5, 7, 4)).astype(np.float32)
    weights = rng.normal(size=(3, 1, 1, 4)).astype(np.float32)
    g = np.broadcast_to(weights, a.shape).astype(np.float32)
    expected = np.maximum(np.einsum("bhwc,bc->bhw", a, weights[:, 0, 0, :]), 0.0)
    cam = gradcam_map(a, g)
    assert cam.shape == (3, 5, 7)
    np.testing.assert_allclose(cam, expected, rtol=1e-5, atol=1e-6)
    assert (expected == 0).any() and (expected > 0).any()  # the example exercises the ReLU


def test_gradcam_weights_are_the_spatial_mean_of_the_gradient():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(2, 3, 4, 3))
    g = rng.normal(size=(2, 3, 4, 3))
    np.testing.assert_allclose(gradcam_map(a, g), _by_hand(a, g), rtol=1e-10, atol=1e-12)


def test_gradcam_negative_evidence_gives_zero():
    rng = np.random.default_rng(2)
    a = rng.uniform(0.1, 2.0, size=(2, 4, 4, 8))  # post-ReLU activations are non-negative
    g = -rng.uniform(0.1, 2.0, size=(2, 4, 4, 8))  # every channel argues against the class
    cam = gradcam_map(a, g)
    assert cam.shape == (2, 4, 4)
    assert np.all(cam == 0.0)


def test_gradcam_is_never_negative_and_images_do_not_mix():
    rng = np.random.default_rng(3)
    a = rng.normal(size=(4, 6, 5, 3))
    g = rng.normal(size=(4, 6, 5, 3))
    batched = gradcam_map(a, g)
    assert batched.min() >= 0.0
    for b in range(4):
        np.testing.assert_array_equal(batched[b], gradcam_map(a[b : b + 1], g[b : b + 1])[0])


@pytest.mark.parametrize("spelling", ["gradcam", "GradCAM", "GRADCAM", "Grad-CAM", "grad_cam",
                                      "  gradcam "])
def test_get_method_is_case_and_punctuation_insensitive(spelling):
    method = get_method(spelling)
    assert method.name == "gradcam"
    assert method.formula is gradcam
    assert "1610.02391" in method.reference


def test_every_registered_method_is_found_by_its_own_name():
    for name, method in METHODS.items():
        assert get_method(name) is method, name
        assert get_method(name.upper()) is method, name
        assert method.reference


@pytest.mark.parametrize("name", ["scorcam", "gradcam2", "", "cams"])
def test_unknown_method_is_a_usage_error_listing_known_methods(name):
    with pytest.raises(UnknownNameError) as info:
        get_method(name)
    assert isinstance(info.value, UsageError)
    assert info.value.kind == "method"
    assert "gradcam" in info.value.suggestions
    assert "gradcam" in str(info.value)
