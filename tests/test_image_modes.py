"""Every image Pillow opens and converts to RGB is explained, through the real ``camcli`` command.

Each case is made here with Pillow from known pixels: transparency in every form (one colour in
a ``tRNS`` chunk of a 1-bit, grey, 16-bit, RGB or palette PNG; palette alphas; alpha bands),
16-bit, 32-bit and float images, LA, PA, YCbCr, LAB, CMYK, 1-bit, and multi-frame TIFF, GIF,
APNG and MPO files (first frame). One run with ``--alpha 0`` explains them all: the overlay is
then the decoded picture itself, and it is compared with what the pixels must become, computed
here (transparent pixels composited on white, 16-bit values scaled, CMYK and YCbCr by their
formulas). In-process, the model's view is checked to be that same picture.

Random weights (``--weights none``) and a dead proxy: nothing is ever downloaded.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import SMALL_MODEL, json_lines, run_explain
from PIL import Image

from camcli import images

W, H = 40, 30
_rng = np.random.default_rng(14)
RGB = _rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
RGB[:10, :10] = (10, 20, 30)  # the transparent colour of the tRNS cases
GREY = _rng.integers(0, 256, (H, W), dtype=np.uint8)
GREY[:10, :10] = 7
WIDE = _rng.integers(0, 65536, (H, W), dtype=np.uint16)
WIDE[:10, :10] = 1000
ALPHA = _rng.integers(0, 256, (H, W), dtype=np.uint8)
BITS = (np.indices((H, W)).sum(axis=0) % 3 == 0)
PALETTE = _rng.integers(0, 256, (16, 3), dtype=np.uint8)
INDICES = _rng.integers(0, 16, (H, W), dtype=np.uint8)
FRAMES = [np.full((H, W, 3), colour, np.uint8) for colour in ((200, 30, 30), (30, 200, 30))]
WHITE = np.uint8(255)


def _save(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def _over_white(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    a = alpha.astype(np.float64)[..., None] / 255.0
    return np.round(rgb * a + 255.0 * (1.0 - a)).astype(np.uint8)


def _grey3(grey: np.ndarray) -> np.ndarray:
    return np.repeat(grey[..., None], 3, axis=2)


def _scaled16(wide: np.ndarray) -> np.ndarray:
    return np.floor(wide / 65535.0 * 255.0 + 0.5).astype(np.uint8)


def _palette_image(alphas: bytes | int | None = None) -> Image.Image:
    image = Image.fromarray(INDICES, mode="P")
    image.putpalette(PALETTE.tobytes())
    return image


def _animated(fmt: str, **options) -> bytes:
    first, *rest = [Image.fromarray(f) for f in FRAMES]
    return _save(first, fmt, save_all=True, append_images=rest, **options)


def _with_white_where(rgb: np.ndarray, mask: np.ndarray) -> np.ndarray:
    out = rgb.copy()
    out[mask] = WHITE
    return out


def _cases() -> dict[str, tuple[bytes, np.ndarray, float]]:
    """name -> (file bytes, the RGB picture camcli must see, largest allowed pixel error)."""
    key = np.all(RGB == (10, 20, 30), axis=2)
    ycc = np.stack([GREY, INDICES * 8 + 64, ALPHA // 2 + 64], axis=2).astype(np.uint8)
    y, cb, cr = (ycc[..., i].astype(np.float64) for i in range(3))
    ycc_rgb = np.stack(
        [y + 1.402 * (cr - 128), y - 0.344136 * (cb - 128) - 0.714136 * (cr - 128),
         y + 1.772 * (cb - 128)], axis=2,
    )
    cmyk = np.stack([GREY, ALPHA, INDICES * 16, GREY // 4], axis=2).astype(np.uint8)
    cmyk_rgb = (255 - cmyk[..., :3].astype(np.float64)) * (255 - cmyk[..., 3:]) / 255.0
    i32 = WIDE.astype(np.int32)
    palette_rgb = PALETTE[INDICES]
    palette_alphas = bytes(range(0, 256, 16))
    return {
        "rgb_trns.png": (
            _save(Image.fromarray(RGB), "PNG", transparency=(10, 20, 30)),
            _with_white_where(RGB, key), 0,
        ),
        "l_trns.png": (
            _save(Image.fromarray(GREY), "PNG", transparency=7),
            _with_white_where(_grey3(GREY), GREY == 7), 0,
        ),
        "bits_trns.png": (  # black is the transparent value: everything ends white
            _save(Image.fromarray(BITS), "PNG", transparency=0),
            np.full((H, W, 3), 255, np.uint8), 0,
        ),
        "bits.png": (_save(Image.fromarray(BITS), "PNG"), _grey3(BITS * WHITE), 0),
        "bits_g4.tif": (
            _save(Image.fromarray(BITS), "TIFF", compression="group4"), _grey3(BITS * WHITE), 0
        ),
        "i16.png": (_save(Image.fromarray(WIDE), "PNG"), _grey3(_scaled16(WIDE)), 0),
        "i16_trns.png": (
            _save(Image.fromarray(WIDE), "PNG", transparency=1000),
            _with_white_where(_grey3(_scaled16(WIDE)), WIDE == 1000), 0,
        ),
        "i16_big_endian.tif": (
            _save(Image.fromarray(WIDE.astype(">u2")), "TIFF"), _grey3(_scaled16(WIDE)), 0
        ),
        "i32.tif": (_save(Image.fromarray(i32), "TIFF"), _grey3(_scaled16(WIDE)), 0),
        "float.tif": (
            _save(Image.fromarray(GREY.astype(np.float32)), "TIFF"), _grey3(GREY), 0
        ),
        "palette_trns.png": (
            _save(_palette_image(), "PNG", transparency=3),
            _with_white_where(palette_rgb, INDICES == 3), 0,
        ),
        "palette_alphas.png": (
            _save(_palette_image(), "PNG", transparency=palette_alphas),
            _over_white(palette_rgb, np.frombuffer(palette_alphas, np.uint8)[INDICES]), 1,
        ),
        "palette_trns.gif": (
            _save(_palette_image(), "GIF", transparency=5),
            _with_white_where(palette_rgb, INDICES == 5), 0,
        ),
        "la.png": (
            _save(Image.merge("LA", [Image.fromarray(GREY), Image.fromarray(ALPHA)]), "PNG"),
            _over_white(_grey3(GREY), ALPHA), 1,
        ),
        "pa.tif": (
            _save(Image.merge("PA", [_palette_image(), Image.fromarray(ALPHA)]), "TIFF"),
            _over_white(palette_rgb, ALPHA), 1,
        ),
        "rgba.webp": (
            _save(Image.fromarray(np.dstack([RGB, ALPHA])), "WEBP", lossless=True, exact=True),
            _over_white(RGB, ALPHA), 1,
        ),
        "rgba.tif": (
            _save(Image.fromarray(np.dstack([RGB, ALPHA])), "TIFF"), _over_white(RGB, ALPHA), 1
        ),
        "ycbcr.tif": (
            _save(Image.fromarray(ycc, mode="YCbCr"), "TIFF"),
            np.clip(np.round(ycc_rgb), 0, 255).astype(np.uint8), 2,
        ),
        "cmyk.tif": (
            _save(Image.fromarray(cmyk, mode="CMYK"), "TIFF"),
            np.round(cmyk_rgb).astype(np.uint8), 1,
        ),
        "cmyk.jpg": (  # lossy: close to the formula, far from another picture
            _save(Image.fromarray(cmyk, mode="CMYK"), "JPEG", quality=98),
            np.round(cmyk_rgb).astype(np.uint8), 40,
        ),
        "lab.tif": (
            _save(Image.fromarray(RGB).convert("LAB"), "TIFF"),
            np.asarray(Image.fromarray(RGB).convert("LAB").convert("RGB")), 0,
        ),
        "frames.tif": (_animated("TIFF"), FRAMES[0], 0),
        "frames.gif": (_animated("GIF"), FRAMES[0], 0),
        "frames_apng.png": (_animated("PNG"), FRAMES[0], 0),
        "frames_mpo.jpg": (_animated("MPO"), FRAMES[0], 8),
    }


CASES = _cases()


@pytest.fixture(scope="module")
def explained(tmp_path_factory) -> dict[str, dict]:
    """One CLI run over every case; name -> its ``--json`` line."""
    work = tmp_path_factory.mktemp("modes")
    folder = work / "in"
    folder.mkdir()
    for name, (data, _, _) in CASES.items():
        (folder / name).write_bytes(data)
    run = run_explain(["in", "--alpha", "0", "--json", *SMALL_MODEL], work)
    results = {}
    for record in json_lines(run.stdout):
        results[Path(record["input"]["path"]).name] = record
    return {"folder": folder, "results": results, "run": run}


def test_the_run_succeeds_with_nothing_but_camcli_lines(explained):
    run = explained["run"]
    assert run.returncode == 0, run.stderr
    assert len(explained["results"]) == len(CASES)
    assert [line for line in run.stderr.splitlines() if not line.startswith("camcli: ")] == []


@pytest.mark.parametrize("name", sorted(CASES))
def test_every_mode_is_explained_with_the_right_picture(explained, name):
    result = explained["results"][name]
    assert result["ok"], result
    assert (result["input"]["width"], result["input"]["height"]) == (W, H)
    (entry,) = result["explanations"]
    with Image.open(explained["folder"] / entry["overlay"]) as overlay:
        assert overlay.mode == "RGB" and "transparency" not in overlay.info, overlay.info
        picture = np.asarray(overlay, dtype=np.int16)
    _, expected, tolerance = CASES[name]
    error = np.abs(picture - expected.astype(np.int16))
    assert error.max() <= tolerance if tolerance < 8 else error.mean() <= tolerance / 4, (
        f"{name}: largest pixel error {error.max()}, mean {error.mean():.2f}"
    )


@pytest.mark.parametrize("name", sorted(CASES))
def test_the_model_sees_the_overlays_frame(tmp_path, name):
    """read_for_model at the image's own size gives exactly the overlay's picture, whether the
    overlay is decoded later (read_full) or in the same decode (``overlay_side``)."""
    path = tmp_path / name
    path.write_bytes(CASES[name][0])
    item = images.read_for_model(path, (H, W), 3)
    full = np.asarray(images.read_full(item.data))
    assert np.array_equal(item.pixels, full)
    together = images.read_for_model(path, (H, W), 3, overlay_side=1000)
    assert together.picture.mode == "RGB" and "transparency" not in together.picture.info
    assert np.array_equal(np.asarray(together.picture), full)
    assert np.array_equal(together.pixels, full)
    one = images.read_for_model(path, (H, W), 1)
    assert one.pixels.shape == (H, W, 1)


@pytest.mark.parametrize("mode", ["HSV", "RGBX", "RGBa", "La", "LAB", "YCbCr"])
def test_in_memory_modes_convert_to_plain_rgb(mode):
    """Modes no supported file format stores (or not as such) still convert cleanly."""
    source = Image.fromarray(RGB).convert("RGBA" if mode in ("RGBa", "La") else "RGB")
    image = source.convert(mode)
    converted = images.to_mode(image, 3)
    assert converted.mode == "RGB" and converted.size == (W, H)
    assert "transparency" not in converted.info
    assert images.to_mode(image, 1).mode == "L"
