"""Colouring and blending heatmaps, encoding overlays (camcli.render); no TensorFlow."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from camcli import render
from camcli.errors import UnknownNameError, UsageError


def _photo(width=37, height=23) -> Image.Image:
    rng = np.random.default_rng(1)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def _ramp(h=7, w=7) -> np.ndarray:
    return np.linspace(0.0, 1.0, h * w, dtype=np.float32).reshape(h, w)


@pytest.mark.parametrize("name", render.COLORMAPS)
def test_colormaps_are_256_entry_uint8_tables(name):
    table = render.colormap(name)
    assert table.shape == (256, 3)
    assert table.dtype == np.uint8
    assert len({tuple(c) for c in table}) > 200  # a real ramp, not a constant


def test_jet_runs_from_blue_to_red_and_gray_is_the_identity():
    jet = render.colormap("jet").astype(int)
    low, high = jet[0], jet[255]
    assert low[2] > 100 and low[0] < 30 and low[1] < 30
    assert high[0] > 100 and high[1] < 30 and high[2] < 30
    gray = render.colormap("gray")
    np.testing.assert_array_equal(gray, np.repeat(np.arange(256, dtype=np.uint8)[:, None], 3, 1))


def test_unknown_colormap_is_a_usage_error_listing_the_choices():
    with pytest.raises(UnknownNameError) as info:
        render.colormap("plasma")
    assert isinstance(info.value, UsageError)
    assert "plasma" in str(info.value)
    for name in render.COLORMAPS:
        assert name in str(info.value)


def test_colorize_maps_levels_through_the_table_at_the_requested_size():
    table = render.colormap("jet")
    cold = np.asarray(render.colorize(np.zeros((4, 4), np.float32), (10, 6), "jet"))
    hot = np.asarray(render.colorize(np.ones((4, 4), np.float32), (10, 6), "jet"))
    assert cold.shape == hot.shape == (6, 10, 3)
    assert {tuple(p) for p in cold.reshape(-1, 3)} == {tuple(table[0])}
    assert {tuple(p) for p in hot.reshape(-1, 3)} == {tuple(table[255])}


def test_overlay_keeps_the_input_size():
    for width, height in [(37, 23), (1, 1), (640, 48)]:
        picture = render.overlay(_photo(width, height), _ramp(), "turbo", 0.4)
        assert picture.size == (width, height)
        assert picture.mode == "RGB"


def test_alpha_zero_returns_the_photo_and_alpha_one_the_colour_map():
    photo, cam = _photo(), _ramp()
    for name in render.COLORMAPS:
        np.testing.assert_array_equal(
            np.asarray(render.overlay(photo, cam, name, 0.0)), np.asarray(photo)
        )
        np.testing.assert_array_equal(
            np.asarray(render.overlay(photo, cam, name, 1.0)),
            np.asarray(render.colorize(cam, photo.size, name)),
        )


def test_overlay_blends_linearly_and_accepts_rgba_photos():
    photo = Image.new("RGBA", (8, 8), (200, 100, 0, 255))
    hot = np.ones((2, 2), np.float32)
    white = render.colormap("gray")[255].astype(int)
    mixed = np.asarray(render.overlay(photo, hot, "gray", 0.25)).astype(int)
    expected = 0.75 * np.array([200, 100, 0]) + 0.25 * white
    assert np.abs(mixed - expected).max() <= 1


def test_overlay_refuses_alpha_outside_0_1():
    for alpha in (-0.01, 1.01):
        with pytest.raises(ValueError):
            render.overlay(_photo(), _ramp(), "jet", alpha)


@pytest.mark.parametrize(
    "fmt, magic, lossless",
    [
        ("png", b"\x89PNG\r\n\x1a\n", True),
        ("jpg", b"\xff\xd8\xff", False),
        ("webp", b"RIFF", False),
    ],
)
def test_encode_round_trips(fmt, magic, lossless):
    # a smooth picture, so the lossy formats stay close to it
    y, x = np.mgrid[0:48, 0:64]
    array = np.stack([x * 4, y * 5, (x + y) * 2], axis=-1).astype(np.uint8)
    picture = Image.fromarray(array)

    data = render.encode(picture, fmt)
    assert data.startswith(magic)
    decoded = Image.open(io.BytesIO(data))
    assert decoded.size == picture.size
    back = np.asarray(decoded.convert("RGB")).astype(int)
    if lossless:
        np.testing.assert_array_equal(back, array)
    else:
        assert np.abs(back - array).mean() < 4


def test_png_without_fpng_is_the_same_picture_from_pillow(monkeypatch):
    # where fpng has no wheel (Python 3.10, other platforms), Pillow writes the same pixels
    picture = render.overlay(_photo(), np.random.default_rng(1).random((7, 7)))
    fast = render.encode(picture, "png")
    monkeypatch.setattr(render, "_fpng", lambda: None)
    slow = render.encode(picture, "png")
    assert fast != slow  # two encoders...
    for data in (fast, slow):  # ...one picture
        np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(data))), picture)


def test_encode_refuses_unknown_formats():
    with pytest.raises(ValueError, match="gif"):
        render.encode(_photo(), "gif")


def test_png_overlays_of_photos_stay_lossless_and_at_most_1_5x_zlib_level_1():
    # The fast encoder (fpng) must keep the PNG lossless and the files at most 1.5x the size of
    # Pillow's zlib level 1 (the encoder before it; measured 1.25-1.4x), on real photo overlays.
    from pathlib import Path

    folder = Path(__file__).resolve().parents[1] / "sample_images"
    cam = np.random.default_rng(2).random((7, 7)).astype(np.float32)
    for path in sorted(folder.glob("*.png")) + sorted(folder.glob("*.jpg")):
        picture = render.overlay(Image.open(path).convert("RGB"), cam)
        data = render.encode(picture, "png")
        np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(data))), picture)
        plain = io.BytesIO()
        picture.save(plain, "PNG", compress_level=1)
        assert len(data) <= 1.5 * len(plain.getvalue()), path.name
        print(f"\n{path.name}: {len(data) / len(plain.getvalue()):.2f} x level 1's size")

