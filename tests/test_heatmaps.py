"""Tests for camcli.heatmaps: normalisation, resizing and where a map points (pure numpy)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from camcli.heatmaps import map_stats, normalize, resize


def _one_hot(h: int, w: int, row: int, col: int) -> np.ndarray:
    cam = np.zeros((h, w), dtype=np.float32)
    cam[row, col] = 1.0
    return cam


# ---------------------------------------------------------------- normalize


def test_normalize_scales_each_map_to_max_one_independently():
    rng = np.random.default_rng(0)
    raw = rng.uniform(0.0, 1.0, size=(3, 5, 6)).astype(np.float32)
    raw *= np.array([1e-3, 1.0, 250.0], dtype=np.float32)[:, None, None]
    maps, empty = normalize(raw)
    assert maps.shape == raw.shape and maps.dtype == np.float32
    assert not empty.any()
    np.testing.assert_allclose(maps.max(axis=(1, 2)), 1.0)
    np.testing.assert_allclose(maps, raw / raw.max(axis=(1, 2), keepdims=True), rtol=1e-6)


def test_normalize_flags_zero_and_negative_maps_empty_without_nan():
    good = np.arange(12, dtype=np.float32).reshape(3, 4)
    raw = np.stack([np.zeros((3, 4)), -np.ones((3, 4)), good, -good - 1.0]).astype(np.float32)
    maps, empty = normalize(raw)
    assert empty.tolist() == [True, True, False, True]
    assert np.isfinite(maps).all()
    assert np.all(maps[[0, 1, 3]] == 0.0)
    np.testing.assert_allclose(maps[2], good / good.max())


def test_normalize_clips_negative_cells_of_a_mixed_map_to_zero():
    raw = np.array([[[2.0, -3.0], [1.0, 0.0]]], dtype=np.float32)
    maps, empty = normalize(raw)
    assert not empty[0]
    np.testing.assert_allclose(maps[0], [[1.0, 0.0], [0.5, 0.0]])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("scale", [1e-30, 1e-21, 1e-13, 1e-9, 1e-3, 1.0, 1e6, 1e20, 1e30, 3e38])
def test_normalize_keeps_evidence_at_any_magnitude_and_never_nans(scale, dtype):
    # CAM magnitudes follow the model's scale: random-weight MobileNets peak near 1e-21.
    pattern = np.array([[0.25, 1.0, 0.0], [0.5, -1.0, 0.75]])
    raw = np.stack([pattern * scale, -np.abs(pattern) * scale]).astype(dtype)
    maps, empty = normalize(raw)
    assert np.isfinite(maps).all() and maps.min() >= 0.0 and maps.max() <= 1.0
    assert empty.tolist() == [False, True]
    np.testing.assert_allclose(maps[0], np.maximum(pattern, 0.0), rtol=1e-6)
    assert np.all(maps[1] == 0.0)


def test_normalize_treats_a_subnormal_peak_as_zero():
    raw = np.array([[[1e-42, 0.0], [-1.0, 0.0]]], dtype=np.float32)
    maps, empty = normalize(raw)
    assert empty[0] and np.all(maps == 0.0)


def test_normalize_keeps_maps_beyond_float32_range():
    # A formula computing in float64 may exceed float32's range; the map still has evidence.
    raw = np.array([[[1e300, 5e299], [0.0, -1e300]]], dtype=np.float64)
    maps, empty = normalize(raw)
    assert not empty[0]
    np.testing.assert_allclose(maps[0], [[1.0, 0.5], [0.0, 0.0]], rtol=1e-6)


def test_normalize_flags_float_noise_relative_to_reference_scale():
    raw = np.array([[[1e-9, 0.0], [0.0, 0.0]], [[0.3, 0.0], [0.0, 0.6]]], dtype=np.float32)
    maps, empty = normalize(raw, reference_scale=np.array([1.0, 1.0]))
    assert empty.tolist() == [True, False]
    assert np.all(maps[0] == 0.0)
    np.testing.assert_allclose(maps[1], [[0.5, 0.0], [0.0, 1.0]])


# ---------------------------------------------------------------- resize


@pytest.mark.parametrize(("width", "height"), [(600, 400), (31, 97), (3, 2), (7, 7)])
def test_resize_returns_height_by_width_within_unit_range(width, height):
    cam = np.random.default_rng(4).uniform(0.0, 1.0, size=(7, 7)).astype(np.float32)
    cam[2, 3], cam[5, 1] = 1.0, 0.0
    out = resize(cam, width, height)
    assert out.shape == (height, width)
    assert out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 1.0 + 1e-6


def test_resize_keeps_a_constant_map_constant_and_a_hot_cell_in_place():
    np.testing.assert_allclose(resize(np.full((4, 6), 0.7, np.float32), 60, 40), 0.7, rtol=1e-6)
    big = resize(_one_hot(7, 7, 1, 5), 600, 400)
    y, x = np.unravel_index(np.argmax(big), big.shape)
    assert abs(x - 5.5 / 7 * 600) <= 600 / 7 / 2
    assert abs(y - 1.5 / 7 * 400) <= 400 / 7 / 2


# ---------------------------------------------------------------- map_stats


def test_map_stats_single_hot_cell_on_non_square_image():
    stats = map_stats(_one_hot(7, 7, 1, 5), image_width=600, image_height=400)
    expected = (5.5 / 7 * 600, 1.5 / 7 * 400)
    np.testing.assert_allclose(stats.peak, expected)
    np.testing.assert_allclose(stats.centroid, expected)
    assert stats.top20_energy_share > 0.95


def test_map_stats_non_square_map_does_not_swap_axes():
    # 4 rows x 6 columns, hot cell at row 3, column 0, on a 300 (wide) x 500 (tall) image
    stats = map_stats(_one_hot(4, 6, 3, 0), image_width=300, image_height=500)
    np.testing.assert_allclose(stats.peak, (0.5 / 6 * 300, 3.5 / 4 * 500))


def test_map_stats_centroid_is_energy_weighted():
    cam = np.zeros((5, 10), dtype=np.float32)
    cam[0, 0], cam[4, 9] = 1.0, 0.25  # cell centres (0.5, 0.5) and (9.5, 4.5) in cell units
    stats = map_stats(cam, image_width=100, image_height=50)
    cx = (1.0 * 0.5 + 0.25 * 9.5) / 1.25 * 10
    cy = (1.0 * 0.5 + 0.25 * 4.5) / 1.25 * 10
    np.testing.assert_allclose(stats.centroid, (cx, cy), rtol=1e-6)
    np.testing.assert_allclose(stats.peak, (5.0, 5.0))


def test_map_stats_energy_share_of_uniform_map_is_one_fifth():
    stats = map_stats(np.ones((7, 7), dtype=np.float32), image_width=600, image_height=400)
    assert stats.top20_energy_share == pytest.approx(0.2, abs=0.01)
    np.testing.assert_allclose(stats.centroid, (300.0, 200.0), rtol=1e-6)


def test_map_stats_energy_share_grows_as_the_map_concentrates():
    spread = np.random.default_rng(5).uniform(0.5, 1.0, size=(14, 14)).astype(np.float32)
    blob = np.zeros((14, 14), dtype=np.float32)
    blob[3:6, 8:11] = 1.0
    s_spread = map_stats(spread, 224, 224).top20_energy_share
    s_blob = map_stats(blob, 224, 224).top20_energy_share
    assert 0.2 < s_spread < 0.35
    assert s_blob > 0.9


def test_map_stats_of_empty_map_has_no_centroid_and_serialises():
    stats = map_stats(np.zeros((7, 7), dtype=np.float32), image_width=640, image_height=480)
    assert stats.centroid is None
    assert stats.top20_energy_share == 0.0
    assert all(np.isfinite(stats.peak))
    record = json.loads(json.dumps(stats.to_json()))
    assert record["centroid"] is None and record["top20_energy_share"] == 0.0
    assert set(record["peak"]) == {"x", "y"}
